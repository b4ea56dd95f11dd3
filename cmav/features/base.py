"""What every audio front end shares: batch-shape checks, mono mix-down and resampling.

A front end turns a waveform batch ``(batch, channels, samples)`` (or ``(batch, samples)``) at any
rate into a ``(batch, C, H, W)`` feature tensor at its config's rate. Subclasses implement
:meth:`FrontEnd.transform` on mono audio already at ``config.sample_rate``.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn


class FrontEndConfigMixin:
    """Methods shared by the front-end configs (frozen dataclasses with ``kind`` and ``sample_rate``)."""

    kind: str
    sample_rate: int

    def n_samples(self, duration_s: float) -> int:
        """Number of samples of a clip of ``duration_s`` seconds at the front-end rate: rounded up, as
        torchaudio's resampler (and librosa's) make it, so a clip resampled from any rate has the
        shape declared here (the rounding to 6 places keeps exact products exact)."""
        return math.ceil(round(duration_s * self.sample_rate, 6))

    def output_shape(self, duration_s: float) -> tuple[int, int, int]:  # pragma: no cover - abstract
        """``(C, H, W)`` of the features of a ``duration_s``-second clip."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (with ``kind``): what checkpoints and cache keys store."""
        return asdict(self)  # type: ignore[call-overload]


def stft_frames(n_samples: int, n_fft: int, hop_length: int, center: bool) -> int:
    """Frames of an STFT of ``n_samples`` samples (torch/librosa conventions)."""
    if center:
        return n_samples // hop_length + 1
    return (n_samples - n_fft) // hop_length + 1


class FrontEnd(nn.Module):
    """Base class: input checks, mono mix-down and resampling, then :meth:`transform`."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        if getattr(config, "mono", True) is not True:
            # the field stays so that configs saved in checkpoints load; every shape cmav declares and
            # every encoder it builds has one channel, and its readers mix every file down
            raise ValueError(
                f"{type(self).__name__}: mono={config.mono!r} is not supported; cmav's features are mono (every "
                "recording is mixed down when read, and the encoders are built for one channel)"
            )
        self.config = config
        self._resamplers = nn.ModuleDict()

    @property
    def min_samples(self) -> int:
        """Shortest clip (at the config rate) the transform accepts."""
        return 1

    def transform(self, waveform: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``(batch, 1, samples)`` at the config rate -> ``(batch, C, H, W)``."""
        raise NotImplementedError

    def _resample(self, wave: Tensor, sample_rate: int) -> Tensor:
        if sample_rate == self.config.sample_rate:
            return wave
        key = str(sample_rate)
        if key not in self._resamplers:
            self._resamplers[key] = torchaudio.transforms.Resample(sample_rate, self.config.sample_rate).to(wave.device)
        return self._resamplers[key](wave)

    def forward(self, waveform: Tensor, sample_rate: int | None = None) -> Tensor:
        name = type(self).__name__
        if waveform.dim() == 1:
            raise ValueError(
                f"{name} expects a batch: (batch, samples) or (batch, channels, samples); "
                f"got a 1-D tensor of {waveform.shape[0]} samples (add .unsqueeze(0))"
            )
        if waveform.dim() == 2:
            waveform = waveform.unsqueeze(1)
        if waveform.dim() != 3:
            raise ValueError(f"{name}: expected (batch, channels, samples), got shape {tuple(waveform.shape)}")
        if not waveform.is_floating_point():
            raise ValueError(
                f"{name}: expected float samples in [-1, 1], got {waveform.dtype} (scale integer PCM first, "
                "e.g. int16 / 32768)"
            )
        if getattr(self.config, "mono", True):
            waveform = waveform.mean(dim=1, keepdim=True)
        waveform = self._resample(waveform.float(), sample_rate or self.config.sample_rate)
        if waveform.shape[-1] < self.min_samples:
            raise ValueError(
                f"clip too short for the {self.config.kind} front end: {waveform.shape[-1]} samples at "
                f"{self.config.sample_rate} Hz, need at least {self.min_samples}"
            )
        return self.transform(waveform)


def require_positive(kind: str, **options: float) -> None:
    """``ValueError`` naming the first of ``options`` that is not > 0 (NaN included), as
    ``"<kind> front end: <name> must be > 0, got <value>"``."""
    for name, value in options.items():
        if not value > 0:
            raise ValueError(f"{kind} front end: {name} must be > 0, got {value!r}")


def require_counts(kind: str, **options: float) -> None:
    """:func:`require_positive` for options that count samples, bins or bands: each must also be a
    whole number (``1024.5`` reached torch as a TypeError naming neither the option nor the front end)."""
    require_positive(kind, **options)
    for name, value in options.items():
        if isinstance(value, bool) or not float(value).is_integer():
            raise ValueError(f"{kind} front end: {name} must be a whole number, got {value!r}")


def store_counts(config: Any, *names: str) -> None:
    """:func:`require_counts` on the fields ``names`` of a frozen front-end config, each then stored as
    an ``int``: a whole number written as a float (``256.0`` from an ablation grid's YAML, which skips
    jsonargparse's typing) passed the check but reached ``torch.stft`` or librosa as a float, a
    TypeError in the middle of a cache build, and would key a cache file apart from ``256``."""
    require_counts(config.kind, **{name: getattr(config, name) for name in names})
    for name in names:
        object.__setattr__(config, name, int(getattr(config, name)))


def check_log_options(kind: str, amin: float, top_db: float | None) -> None:
    """Refuse an ``amin`` or ``top_db`` that :func:`log_floor` would turn into useless features:
    ``amin <= 0`` gives -inf for silence (and a float16 cache of -inf), ``top_db <= 0`` raises every
    bin to the clip's peak, so every clip becomes one constant."""
    require_positive(kind, amin=amin)
    if top_db is not None and not top_db > 0:
        raise ValueError(f"{kind} front end: top_db must be > 0 dB (None: no floor), got {top_db!r}; it keeps "
                         "each clip's bins within top_db of its peak")  # fmt: skip


def log_floor(x: Tensor, multiplier: float, amin: float, top_db: float | None) -> Tensor:
    """``multiplier * log10(max(x, amin))`` with an optional per-clip ``top_db`` floor, as librosa's
    ``power_to_db`` (10) / ``amplitude_to_db`` (20) with ``ref=1``."""
    db = multiplier * torch.log10(torch.clamp(x, min=amin))
    if top_db is not None:
        # Per clip, as librosa does per call: a clip's floor must not depend on its batch-mates.
        peak = db.amax(dim=(-3, -2, -1), keepdim=True)
        db = torch.maximum(db, peak - top_db)
    return db
