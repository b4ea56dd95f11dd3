"""Constant-Q front end, computed by librosa itself.

No maintained PyTorch library we could install matches ``librosa.cqt`` closely (its early
downsampling and filter normalisation are particular), so this front end calls librosa on the CPU
and returns the result on the input's device. It runs once per data set: the cache stores it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from cmav.features.base import (
    FrontEnd,
    FrontEndConfigMixin,
    check_log_options,
    log_floor,
    store_counts,
)


@dataclass(frozen=True)
class CqtConfig(FrontEndConfigMixin):
    """Log-magnitude constant-Q transform: ``librosa.amplitude_to_db(np.abs(librosa.cqt(y, sr=sample_rate,
    hop_length=hop_length, fmin=f_min, n_bins=n_bins, bins_per_octave=bins_per_octave, tuning=0.0)),
    ref=1.0, amin=amin, top_db=top_db)``. Note ``top_db``: None here (no per-clip floor), where
    ``amplitude_to_db``'s own default is 80.

    The bins are librosa's defaults: 84 bins, 12 per octave, from C1 (32.70 Hz) to B7. The hop is
    not: 256 samples (librosa's default is 512), the LMS front end's, so that 0.5 s at 22,050 Hz
    gives 84 bins x 44 frames, as many frames as the LMS. ``hop_length`` must be divisible by
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

    def __post_init__(self) -> None:
        store_counts(self, "sample_rate", "hop_length", "n_bins", "bins_per_octave")
        if not self.f_min > 0:  # librosa's frequencies must be strictly positive
            raise ValueError(f"{self.kind} front end: f_min must be > 0 Hz, got {self.f_min!r}")
        check_log_options(self.kind, self.amin, self.top_db)
        n_octaves = math.ceil(self.n_bins / self.bins_per_octave)
        if self.hop_length % (2 ** (n_octaves - 1)):
            raise ValueError(
                f"CQT hop_length={self.hop_length} must be divisible by 2**(n_octaves-1)={2 ** (n_octaves - 1)} "
                f"for {self.n_bins} bins at {self.bins_per_octave} per octave"
            )

    def output_shape(self, duration_s: float) -> tuple[int, int, int]:
        return (1, self.n_bins, self.n_samples(duration_s) // self.hop_length + 1)


TUNING = 0.0
"""The tuning (in fractions of a bin) cmav's CQT is computed at: fixed, so that a clip's bins do not
depend on a tuning estimated from the clip itself (librosa's ``tuning=None``)."""


class ConstantQTransform(FrontEnd):
    """Waveform batch -> ``(batch, 1, n_bins, frames)`` log-magnitude CQT in dB (librosa, CPU)."""

    def __init__(self, config: CqtConfig | None = None) -> None:
        super().__init__(config or CqtConfig())
        c = self.config
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
                               bins_per_octave=c.bins_per_octave, tuning=TUNING)  # fmt: skip
        mag = torch.from_numpy(np.abs(spec)).to(waveform.device)
        return log_floor(mag, 20.0, c.amin, c.top_db)


def _highest_filter_frequency(c: CqtConfig) -> float:
    """The top edge of the highest CQT filter, computed as ``librosa.vqt`` (behind ``librosa.cqt``)
    computes it before refusing a basis above Nyquist, at :data:`TUNING`, the tuning
    :meth:`ConstantQTransform.transform` asks for: a config passes here exactly when librosa computes
    it, so none fails that check in the middle of a cache build. No margin: the tuning is fixed, not
    estimated per clip."""
    import librosa

    freqs = librosa.interval_frequencies(c.n_bins, fmin=c.f_min * 2.0 ** (TUNING / c.bins_per_octave),
                                         intervals="equal", bins_per_octave=c.bins_per_octave, sort=True)  # fmt: skip
    if len(freqs) > 1:
        # librosa's relative bandwidth (filters._relative_bandwidth, private): the local octave
        # resolution from neighbouring bins, reflected at either end
        logf = np.log2(freqs)
        bpo = np.empty_like(freqs)
        bpo[0], bpo[-1] = 1 / (logf[1] - logf[0]), 1 / (logf[-1] - logf[-2])
        bpo[1:-1] = 2 / (logf[2:] - logf[:-2])
    else:
        bpo = np.full_like(freqs, c.bins_per_octave)  # librosa's equal-temperament bandwidth for one bin
    ratio = 2.0 ** (2 / bpo)
    alpha = (ratio - 1) / (ratio + 1)
    _, cutoff = librosa.filters.wavelet_lengths(freqs=freqs, sr=c.sample_rate, window="hann", filter_scale=1,
                                                gamma=0, alpha=alpha)  # fmt: skip
    return float(cutoff)
