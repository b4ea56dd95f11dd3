"""MFCC front end: the DCT of cmav's own log-mel spectrogram."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torchaudio
from torch import Tensor

from cmav.features.base import FrontEnd, FrontEndConfigMixin, store_counts
from cmav.features.logmel import LogMelConfig, LogMelSpectrogram, check_mel_options


@dataclass(frozen=True)
class MfccConfig(FrontEndConfigMixin):
    """MFCCs as ``librosa.feature.mfcc`` computes them by default: an orthonormal DCT-II over the
    mel axis of ``power_to_db(melspectrogram)`` with ``top_db=80``, keeping ``n_mfcc`` coefficients.

    The mel settings are the LMS front end's; 0.5 s at 22,050 Hz gives 20 x 44.
    """

    kind: Literal["mfcc"] = "mfcc"
    sample_rate: int = 22050
    n_mfcc: int = 20
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    amin: float = 1e-10
    top_db: float | None = 80.0
    """librosa.feature.mfcc's default (its ``power_to_db`` call keeps 80 dB below each clip's peak)."""
    mono: bool = True
    center: bool = True

    def __post_init__(self) -> None:
        check_mel_options(self)
        store_counts(self, "n_mfcc")  # 13.5 gave a declared shape of 13.5 rows

    def logmel(self) -> LogMelConfig:
        """The LMS config the coefficients are computed from."""
        return LogMelConfig(sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
                            n_mels=self.n_mels, f_min=self.f_min, f_max=self.f_max, amin=self.amin,
                            top_db=self.top_db, mono=self.mono, center=self.center)  # fmt: skip

    def output_shape(self, duration_s: float) -> tuple[int, int, int]:
        return (1, self.n_mfcc, self.logmel().output_shape(duration_s)[2])


class Mfcc(FrontEnd):
    """Waveform batch -> ``(batch, 1, n_mfcc, frames)``."""

    def __init__(self, config: MfccConfig | None = None) -> None:
        super().__init__(config or MfccConfig())
        c = self.config
        if not 1 <= c.n_mfcc <= c.n_mels:
            raise ValueError(f"n_mfcc must be in [1, n_mels={c.n_mels}], got {c.n_mfcc}")
        self.lms = LogMelSpectrogram(c.logmel())
        # (n_mels, n_mfcc): orthonormal DCT-II, scipy's dct(type=2, norm='ortho') as librosa uses
        self.register_buffer("dct", torchaudio.functional.create_dct(c.n_mfcc, c.n_mels, norm="ortho"))

    @property
    def min_samples(self) -> int:
        return self.lms.min_samples

    def transform(self, waveform: Tensor) -> Tensor:
        db = self.lms.transform(waveform)  # (B, 1, n_mels, T)
        return torch.einsum("bcmt,mk->bckt", db, self.dct)
