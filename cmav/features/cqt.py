"""Constant-Q front end, computed by librosa itself.

No maintained PyTorch library we could install matches ``librosa.cqt`` closely (its early
downsampling and filter normalisation are particular), so this front end calls librosa on the CPU
and returns the result on the input's device. It runs once per data set: the cache stores it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from cmav.features.base import FrontEnd, FrontEndConfigMixin, log_floor


@dataclass(frozen=True)
class CqtConfig(FrontEndConfigMixin):
    """Log-magnitude constant-Q transform, ``librosa.amplitude_to_db(abs(librosa.cqt(y, ...)))``.

    Defaults are librosa's: 84 bins, 12 per octave, from C1 (32.70 Hz) to B7, on 256-sample hops,
    so 0.5 s at 22,050 Hz gives 84 bins x 44 frames. ``hop_length`` must be divisible by
    ``2 ** (n_octaves - 1)`` (librosa's recursive downsampling).
    """

    kind: Literal["cqt"] = "cqt"
    sample_rate: int = 22050
    hop_length: int = 256
    f_min: float = 32.703195662574764
    """C1, librosa's default."""
    n_bins: int = 84
    bins_per_octave: int = 12
    amin: float = 1e-5
    top_db: float | None = None
    mono: bool = True

    def output_shape(self, duration_s: float) -> tuple[int, int, int]:
        return (1, self.n_bins, self.n_samples(duration_s) // self.hop_length + 1)


class ConstantQTransform(FrontEnd):
    """Waveform batch -> ``(batch, 1, n_bins, frames)`` log-magnitude CQT in dB (librosa, CPU)."""

    def __init__(self, config: CqtConfig | None = None) -> None:
        super().__init__(config or CqtConfig())
        c = self.config
        n_octaves = int(np.ceil(c.n_bins / c.bins_per_octave))
        if c.hop_length % (2 ** (n_octaves - 1)):
            raise ValueError(
                f"CQT hop_length={c.hop_length} must be divisible by 2**(n_octaves-1)={2 ** (n_octaves - 1)} "
                f"for {c.n_bins} bins at {c.bins_per_octave} per octave"
            )
        cutoff = _highest_filter_frequency(c)
        if cutoff > c.sample_rate / 2:
            raise ValueError(
                f"CQT's top filter reaches {cutoff:.0f} Hz, above Nyquist ({c.sample_rate / 2:.0f} Hz) at "
                f"sample_rate={c.sample_rate}: lower n_bins or f_min, or raise sample_rate"
            )

    def transform(self, waveform: Tensor) -> Tensor:
        import librosa

        c = self.config
        y = waveform.detach().to("cpu", torch.float32).numpy()
        with warnings.catch_warnings():
            # The lowest octaves' filters are longer than a 0.5-s clip after downsampling: librosa
            # zero-pads them and says so on every call; the result is still librosa's.
            warnings.filterwarnings("ignore", message="n_fft=.*is too large for input signal")
            spec = librosa.cqt(y, sr=c.sample_rate, hop_length=c.hop_length, fmin=c.f_min, n_bins=c.n_bins,
                               bins_per_octave=c.bins_per_octave)  # fmt: skip
        mag = torch.from_numpy(np.abs(spec)).to(waveform.device)
        return log_floor(mag, 20.0, c.amin, c.top_db)


def _highest_filter_frequency(c: CqtConfig) -> float:
    """The top edge of the highest CQT filter, as ``librosa.cqt`` checks it against Nyquist, at the
    highest tuning librosa may estimate for a clip (+0.5 bin): a config that passes here cannot fail
    that check in the middle of a cache build."""
    import librosa

    freqs = librosa.cqt_frequencies(c.n_bins, fmin=c.f_min * 2 ** (0.5 / c.bins_per_octave),
                                    bins_per_octave=c.bins_per_octave)  # fmt: skip
    ratio = 2 ** (2 / c.bins_per_octave)
    alpha = (ratio - 1) / (ratio + 1)  # an equal-tempered filter's relative bandwidth, librosa's own
    _, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=c.sample_rate, alpha=alpha)
    return float(cutoff)
