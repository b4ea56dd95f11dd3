"""Log-magnitude STFT front end (the paper's "STFT" representation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torchaudio
from torch import Tensor

from cmav.features.base import (
    FrontEnd,
    FrontEndConfigMixin,
    check_log_options,
    log_floor,
    stft_frames,
    store_counts,
)


@dataclass(frozen=True)
class StftConfig(FrontEndConfigMixin):
    """Log-magnitude STFT: ``20 * log10(max(|STFT|, amin))`` on ``n_fft // 2 + 1`` linear bins.

    The STFT settings are the LMS front end's (periodic Hann window, zero padding, centred frames),
    so 0.5 s at 22,050 Hz gives 513 bins x 44 frames; the values match
    ``librosa.amplitude_to_db(abs(librosa.stft(y)), ref=1, amin=amin, top_db=top_db)``.
    """

    kind: Literal["stft"] = "stft"
    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    amin: float = 1e-5
    """Floor on the magnitude before the log (librosa ``amplitude_to_db``'s default)."""
    top_db: float | None = None
    mono: bool = True
    center: bool = True

    def __post_init__(self) -> None:
        store_counts(self, "sample_rate", "n_fft", "hop_length")
        check_log_options(self.kind, self.amin, self.top_db)

    def output_shape(self, duration_s: float) -> tuple[int, int, int]:
        frames = stft_frames(self.n_samples(duration_s), self.n_fft, self.hop_length, self.center)
        return (1, self.n_fft // 2 + 1, frames)


class LogStftMagnitude(FrontEnd):
    """Waveform batch -> ``(batch, 1, n_fft // 2 + 1, frames)`` log-magnitude STFT in dB."""

    def __init__(self, config: StftConfig | None = None) -> None:
        super().__init__(config or StftConfig())
        c = self.config
        self.spec = torchaudio.transforms.Spectrogram(
            n_fft=c.n_fft, hop_length=c.hop_length, power=1.0, center=c.center, pad_mode="constant"
        )

    @property
    def min_samples(self) -> int:
        return self.config.n_fft // 2 + 1 if self.config.center else self.config.n_fft

    def transform(self, waveform: Tensor) -> Tensor:
        return log_floor(self.spec(waveform), 20.0, self.config.amin, self.config.top_db)
