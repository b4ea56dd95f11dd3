"""Audio front ends: waveform -> time-frequency representation."""

from cmav.features.logmel import LogMelConfig, LogMelSpectrogram

__all__ = ["LogMelConfig", "LogMelSpectrogram"]
