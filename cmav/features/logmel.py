"""The log-mel-spectrogram (LMS) front end: cmav's default audio representation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torchaudio
from torch import Tensor

from cmav.features.base import (
    FrontEnd,
    FrontEndConfigMixin,
    check_log_options,
    log_floor,
    require_positive,
    stft_frames,
    store_counts,
)


@dataclass(frozen=True)
class LogMelConfig(FrontEndConfigMixin):
    """Parameters of the LMS front end; the defaults reproduce Chen et al. (2017).

    0.5 s at 22,050 Hz with ``n_fft=1024``, ``hop_length=256`` and ``center=True`` gives
    128 mel bands x 44 frames. The mel filter bank and padding follow librosa's defaults
    (Slaney mel scale and area normalisation, zero padding) so that the result can be checked
    against ``librosa.feature.melspectrogram`` + ``librosa.power_to_db``. The mel bands span
    ``0 <= f_min < f_max <= sample_rate / 2`` (``f_max=None``: ``sample_rate / 2``).
    """

    kind: Literal["lms"] = "lms"
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    power: float = 2.0
    amin: float = 1e-10
    """Floor applied to the mel power before the log (librosa's ``amin``)."""
    top_db: float | None = None
    mono: bool = True
    center: bool = True

    def __post_init__(self) -> None:
        check_mel_options(self)

    def n_frames(self, n_samples: int) -> int:
        """Number of STFT frames produced for ``n_samples`` input samples."""
        return stft_frames(n_samples, self.n_fft, self.hop_length, self.center)

    def output_shape(self, duration_s: float) -> tuple[int, int, int]:
        """(channels, n_mels, n_frames) for a clip of ``duration_s`` seconds."""
        return (1, self.n_mels, self.n_frames(self.n_samples(duration_s)))


def check_mel_options(c: LogMelConfig | Any) -> None:
    """Refuse, naming the option, mel settings the transform cannot compute or would turn into
    constant rows: shared by the LMS and MFCC configs (``c.kind`` names which)."""
    # sample_rate too: torchaudio's resampler refuses a fractional one, at the first clip of another rate
    store_counts(c, "sample_rate", "n_fft", "hop_length", "n_mels")
    if hasattr(c, "power"):  # LMS only (MFCC's mel spectrogram is a power one); 0 gives |X|**0, constant rows
        require_positive(c.kind, power=c.power)
    nyquist = c.sample_rate / 2
    f_max = nyquist if c.f_max is None else c.f_max
    if not 0 <= c.f_min < f_max:
        raise ValueError(f"{c.kind} front end: f_min must be >= 0 and below f_max ({f_max}), got {c.f_min}")
    if f_max > nyquist:  # the mel bands above Nyquist would be empty: rows of constant 10 log10(amin)
        raise ValueError(f"{c.kind} front end: f_max must be in (f_min, sample_rate / 2 = {nyquist}] "
                         f"(None: sample_rate / 2), got {c.f_max}")  # fmt: skip
    check_log_options(c.kind, c.amin, c.top_db)


class LogMelSpectrogram(FrontEnd):
    """Waveform batch -> log-mel spectrogram in dB, on CPU or GPU.

    Input: ``(batch, channels, samples)`` or ``(batch, samples)`` at ``sample_rate`` (given per
    call; resampled to the config's rate when it differs). Output: ``(batch, 1, n_mels, frames)``
    where the values are ``10 * log10(max(mel_power, amin))`` (``power_to_db`` with ``ref=1``).
    """

    def __init__(self, config: LogMelConfig | None = None) -> None:
        super().__init__(config or LogMelConfig())
        c = self.config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            f_min=c.f_min,
            f_max=c.f_max if c.f_max is not None else c.sample_rate / 2,  # librosa's (torchaudio's is sr // 2)
            n_mels=c.n_mels,
            power=c.power,
            center=c.center,
            pad_mode="constant",
            norm="slaney",
            mel_scale="slaney",
        )

    @property
    def min_samples(self) -> int:
        return self.config.n_fft // 2 + 1 if self.config.center else self.config.n_fft

    def transform(self, waveform: Tensor) -> Tensor:
        return log_floor(self.mel(waveform), 10.0, self.config.amin, self.config.top_db)
