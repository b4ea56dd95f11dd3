"""The audio front-end family behind one config key (``features``) and one builder.

``kind`` selects the representation studied in Chen et al. (2017): ``lms`` (default), ``stft``,
``cqt``, ``mfcc`` or ``waveform``; and ``harmonic``, a pitch-normalised harmonic profile
(:mod:`cmav.features.harmonic`, for robustness across recording sources). In YAML::

    data:
      features:
        kind: cqt
        bins_per_octave: 12

Every config declares ``output_shape(duration_s)``; the encoders are built from that shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cmav.features.base import FrontEnd
from cmav.features.cqt import ConstantQTransform, CqtConfig
from cmav.features.harmonic import HarmonicConfig, HarmonicProfile
from cmav.features.logmel import LogMelConfig, LogMelSpectrogram
from cmav.features.mfcc import Mfcc, MfccConfig
from cmav.features.stft import LogStftMagnitude, StftConfig
from cmav.features.waveform import Waveform, WaveformConfig

# LogMelConfig first: a config with no ``kind`` means the default LMS front end.
FrontEndConfig = LogMelConfig | StftConfig | CqtConfig | MfccConfig | WaveformConfig | HarmonicConfig

FRONT_ENDS: dict[str, tuple[type, type[FrontEnd]]] = {
    "lms": (LogMelConfig, LogMelSpectrogram),
    "stft": (StftConfig, LogStftMagnitude),
    "cqt": (CqtConfig, ConstantQTransform),
    "mfcc": (MfccConfig, Mfcc),
    "waveform": (WaveformConfig, Waveform),
    "harmonic": (HarmonicConfig, HarmonicProfile),
}


def front_end_config(value: Any = None, **overrides: Any) -> FrontEndConfig:
    """A front-end config from ``None`` (LMS defaults), a config, or a dict with an optional ``kind``.

    Raises ``ValueError`` naming the unknown kind or fields, instead of a bare ``TypeError``.
    """
    if value is None:
        value = {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise ValueError(f"front-end config must be a dict or a config object, got {type(value).__name__}")
    value = {**value, **overrides}
    kind = value.get("kind", "lms")
    if kind not in FRONT_ENDS:
        raise ValueError(f"unknown front end kind {kind!r}; expected one of {sorted(FRONT_ENDS)}")
    cls = FRONT_ENDS[kind][0]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"front end {kind!r} has no option(s) {unknown}; options: {sorted(known - {'kind'})}")
    return cls(**{**value, "kind": kind})


def build_front_end(config: Any = None) -> FrontEnd:
    """The ``nn.Module`` for a front-end config (or dict, see :func:`front_end_config`)."""
    config = front_end_config(config)
    return FRONT_ENDS[config.kind][1](config)


def front_end_differences(trained: Any, given: Any) -> list[str]:
    """What differs between two front-end configs, as ``"name: A -> B"`` lines (empty when they are
    the same front end). Two settings can give features of one shape and different meaning (a
    harmonic floor, a mel range, a hop), which a shape check does not see."""
    a, b = front_end_config(trained), front_end_config(given)
    if a.kind != b.kind:
        return [f"kind: {a.kind} -> {b.kind}"]
    da, db = a.to_dict(), b.to_dict()
    return [f"{k}: {da[k]!r} -> {db[k]!r}" for k in da if da[k] != db[k]]


__all__ = ["FRONT_ENDS", "FrontEndConfig", "build_front_end", "front_end_config", "front_end_differences"]
