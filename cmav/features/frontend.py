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
import functools
import numbers
import types
import typing
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
    value = {**_flat_settings(value), **overrides}
    kind = value.get("kind", "lms")
    if kind not in FRONT_ENDS:
        raise ValueError(f"unknown front end kind {kind!r}; expected one of {sorted(FRONT_ENDS)}")
    cls = FRONT_ENDS[kind][0]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"front end {kind!r} has no option(s) {unknown}; options: {sorted(known - {'kind'})}")
    hints = _option_types(cls)
    return cls(**{name: _checked_option(kind, name, hints.get(name), v) for name, v in value.items() if name != "kind"},
               kind=kind)  # fmt: skip


def merge_front_end_settings(current: Any, given: Any) -> dict[str, Any] | None:
    """``data.features`` after ``given`` (a later config file or option) is applied to ``current``.

    Options of one kind merge (``{f_max: 3000}`` over ``{kind: harmonic}`` keeps the harmonic front
    end); a ``given`` of another kind starts from that kind's defaults, so no option of the old kind
    (a harmonic n_fft, say) carries over unseen; ``None`` resets to the default (LMS). Either side may
    be a dict, a config object or the ``{class_path, init_args}`` form of an older saved config.yaml.
    """
    if given is None:
        return None
    given = _flat_settings(dataclasses.asdict(given) if dataclasses.is_dataclass(given) else given)
    if current is None:
        return given
    current = _flat_settings(dataclasses.asdict(current) if dataclasses.is_dataclass(current) else current)
    if given.get("kind", current.get("kind", "lms")) != current.get("kind", "lms"):
        return given
    return {**current, **given}


def _flat_settings(value: Any) -> dict[str, Any]:
    """A front end's settings as one dict: ``{class_path, init_args}`` (how config.yaml files wrote
    ``data.features`` while it was typed as a union of the config classes) becomes its init_args and
    kind."""
    if not isinstance(value, dict):
        raise ValueError(f"front-end config must be a dict or a config object, got {type(value).__name__}")
    if "class_path" not in value:
        return dict(value)
    name = str(value["class_path"]).rsplit(".", 1)[-1]
    kind = next((k for k, (cls, _) in FRONT_ENDS.items() if cls.__name__ == name), None)
    if kind is None:
        names = sorted(cls.__name__ for cls, _ in FRONT_ENDS.values())
        raise ValueError(f"front end class_path {value['class_path']!r} is none of {names} (or give kind: ...)")
    extra = sorted(set(value) - {"class_path", "init_args"})
    if extra:
        raise ValueError(f"front end {kind!r} has no option(s) {extra} beside class_path (put them in init_args)")
    return {**(value.get("init_args") or {}), "kind": kind}


@functools.cache
def _option_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _checked_option(kind: str, name: str, hint: Any, value: Any) -> Any:
    """``value`` as option ``name`` of the front end declares it: an int where a float is declared
    becomes a float (one cache key for ``3000`` and ``3000.0``), a list a tuple; a ValueError naming
    the option when it is no number where one is declared, or no true/false. Config files and
    ``--data.features.<option>`` give plain values, which no dataclass checks; ranges and whole
    numbers are the config's own checks."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _checked_option(kind, name, inner[0], value) if len(inner) == 1 else value
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{kind} front end: {name} must be true or false, got {value!r}")
    if hint in (int, float) and not number:
        raise ValueError(f"{kind} front end: {name} must be {'a whole number' if hint is int else 'a number'}, "
                         f"got {value!r}")  # fmt: skip
    if hint is float:
        return float(value)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    return value


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


__all__ = ["FRONT_ENDS", "FrontEndConfig", "build_front_end", "front_end_config", "front_end_differences",
           "merge_front_end_settings"]
