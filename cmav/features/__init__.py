"""Audio front ends: waveform -> a ``(C, H, W)`` representation (LMS by default)."""

from cmav.features.base import FrontEnd
from cmav.features.cqt import ConstantQTransform, CqtConfig
from cmav.features.frontend import FRONT_ENDS, FrontEndConfig, build_front_end, front_end_config, front_end_differences
from cmav.features.harmonic import HarmonicConfig, HarmonicProfile
from cmav.features.logmel import LogMelConfig, LogMelSpectrogram
from cmav.features.mfcc import Mfcc, MfccConfig
from cmav.features.stft import LogStftMagnitude, StftConfig
from cmav.features.waveform import Waveform, WaveformConfig

__all__ = [
    "FRONT_ENDS",
    "ConstantQTransform",
    "CqtConfig",
    "FrontEnd",
    "FrontEndConfig",
    "HarmonicConfig",
    "HarmonicProfile",
    "LogMelConfig",
    "LogMelSpectrogram",
    "LogStftMagnitude",
    "Mfcc",
    "MfccConfig",
    "StftConfig",
    "Waveform",
    "WaveformConfig",
    "build_front_end",
    "front_end_config",
    "front_end_differences",
]
