"""Training-time audio augmentation: waveform ops at the chunk rate, then SpecAugment on the features.

Ten groups, each a frozen dataclass with a per-example probability ``p`` (0 = off, the default)
and a strength whose zero value is the identity:

==========  ==================================================================  =================
group       what (per example, fresh random parameters every call)              zero strength
==========  ==================================================================  =================
gain        level change, uniform in ±``max_db`` dB                             ``max_db=0``
eq          a low shelf, ``n_bands`` peaking bands and a high shelf (RBJ        ``max_db=0``
            biquads, as torchaudio's ``bass/equalizer/treble_biquad``), each
            ±``max_db``
reverb      convolution with a synthetic room impulse response: exponentially    ``max_wet=0``
            decaying noise, RT60 in ``rt60_s``, made on the fly; wet share
            uniform in [0, ``max_wet``]; the mix is scaled back to the dry
            example's RMS (colour and tail change, the level does not)
noise       white-to-brown noise (spectral slope 0..``max_colour``) at an SNR    ``snr_db=(inf, inf)``
            uniform in ``snr_db`` (finite, or exactly ``(inf, inf)``)
pitch       pitch shift (phase-vocoder stretch + torchaudio resampling), in      ``max_semitones=0``
            ±``max_semitones``, on a grid of ``1/steps_per_semitone`` (the
            non-zero multiples of a step that fit in the range; at least one
            must: a chosen example is always shifted)
stretch     time stretch at a rate in 1 ± ``max_rate`` (phase vocoder), on a    ``max_rate=0``
            grid of ``rate_step`` (the non-zero multiples that fit in the
            range; at least one must: a chosen example is always
            stretched), cut or reflect-padded back to the same length
            around the centre
mask        SpecAugment on the front end's output: ``n_freq`` frequency masks    ``freq_width=0``,
            up to ``freq_width`` bins and ``n_time`` time masks up to           ``time_width=0``
            ``time_width`` frames (torchaudio's masking), filled with the
            example's mean
mixstyle    Freq-MixStyle (Schmid et al. 2022) on the front end's output: each  ``strength=0``
            frequency bin's mean and sd over channels and time are mixed with
            those of another example of the batch (weight of the other
            ``strength * (1 - λ)``, λ ~ Beta(``alpha``, ``alpha``)): the
            recording's spectral colour moves, what plays in it stays
tilt        a spectral tilt uniform in ±``max_db_per_octave`` dB per octave,     ``max_db_per_octave=0``
            on the harmonic profile's rows (:func:`cmav.features.harmonic.
            tilt_harmonics`: exactly what a power-law EQ does to them, without
            recomputing the front end); harmonic front end only
transpose   the harmonic profile's pitch row moved uniformly in ±``max_semitones`` ``max_semitones=0``
            (:func:`cmav.features.harmonic.transpose_pitch`: the profile of a
            sample recorded some keys away); harmonic front end only
==========  ==================================================================  =================

Every waveform op keeps the batch's shape, dtype, device and sample rate (no op changes the number
of samples). Pitch and stretch draw from a grid so one torchaudio call serves every example with the
same value. Counts (``n_bands``, ``steps_per_semitone``, the mask widths and numbers) must be whole
numbers (``2.0``, in YAML or on the command line, is read as ``2``); ``snr_db``'s ends may be written
``inf``, ``.inf`` or ``Infinity`` (strings too); every setting is checked when the config is read, and
a bad one is refused with a ``ValueError`` naming the group and option. In YAML (``data.augment``, see
:class:`cmav.data.AudioVisualDataModule`)::

    augment:
      eq: {p: 0.8, max_db: 9}
      reverb: {p: 0.5}
      mask: {p: 0.5, freq_width: 16, time_width: 6}

or on the command line: ``cmav fit ... --data.augment.eq.p 0.8 --data.augment.eq.n_bands 2
--data.augment.noise.snr_db "[inf, inf]"``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn

Count = int | float
"""A count option's type: a whole number, which a command line or YAML may write as ``2.0``. Typed
``int | float`` (not ``int``) so that jsonargparse hands ``2.0`` on; :func:`audio_augment_config`
makes it the int ``2`` and refuses ``2.5``."""

Snr = float | str
"""An end of ``noise.snr_db``: jsonargparse turns a command line's ``inf`` or ``.inf`` into the string
``'inf'`` before it checks a float, so strings get through and :func:`audio_augment_config` reads the
spellings of infinity (``inf``, ``.inf``, ``Infinity``, signed) as floats and refuses any other."""


@dataclass(frozen=True)
class GainAugment:
    """Random gain in dB, uniform in ``[-max_db, max_db]``."""

    p: float = 0.0
    max_db: float = 6.0


@dataclass(frozen=True)
class EqAugment:
    """Random EQ: a low shelf (corner log-uniform in ``low_hz``), ``n_bands`` peaking bands (centres
    in ``band_hz``, Q in ``band_q``) and a high shelf (corner in ``high_hz``), each with a gain uniform
    in ``[-max_db, max_db]``."""

    p: float = 0.0
    max_db: float = 9.0
    n_bands: Count = 1
    low_hz: tuple[float, float] = (80.0, 600.0)
    band_hz: tuple[float, float] = (300.0, 6000.0)
    band_q: tuple[float, float] = (0.5, 2.5)
    high_hz: tuple[float, float] = (1500.0, 9000.0)


@dataclass(frozen=True)
class ReverbAugment:
    """Room reverb: the dry signal mixed with its convolution by decaying noise (RT60 uniform in
    ``rt60_s``, pre-delay up to ``max_predelay_s``); the wet share is uniform in ``[0, max_wet]``,
    the mix is ``sqrt(1-w)·dry + sqrt(w)·wet`` scaled back to the dry example's RMS: the reverb
    changes the colour and adds a tail, never the level (a silent example stays as it is)."""

    p: float = 0.0
    max_wet: float = 0.6
    rt60_s: tuple[float, float] = (0.15, 1.2)
    max_predelay_s: float = 0.02


@dataclass(frozen=True)
class NoiseAugment:
    """Additive noise at an SNR uniform in ``snr_db`` (dB, against the example's own RMS; a finite
    pair, or ``(inf, inf)``: no noise, also written ``[.inf, .inf]`` or, on the command line,
    ``"[inf, inf]"``); its spectral slope is uniform in ``[0, max_colour]`` (0 white, 1 pink, 2 brown)."""

    p: float = 0.0
    snr_db: tuple[Snr, Snr] = (15.0, 40.0)
    max_colour: float = 2.0


@dataclass(frozen=True)
class PitchAugment:
    """Pitch shift uniform on the non-zero multiples of ``1/steps_per_semitone`` semitones in
    ``±max_semitones`` (with ``p > 0``, ``max_semitones`` is 0 or at least one step)."""

    p: float = 0.0
    max_semitones: float = 0.5
    steps_per_semitone: Count = 4


@dataclass(frozen=True)
class StretchAugment:
    """Time stretch (pitch kept) at a rate uniform on the non-zero multiples of ``rate_step`` in ``1 ± max_rate``
    (with ``p > 0``, ``max_rate`` is 0 or at least one step)."""

    p: float = 0.0
    max_rate: float = 0.1
    rate_step: float = 0.025


@dataclass(frozen=True)
class MaskAugment:
    """SpecAugment: ``n_freq`` masks of up to ``freq_width`` bins and ``n_time`` masks of up to
    ``time_width`` frames on the features (any front end's ``(C, H, W)``: H is frequency)."""

    p: float = 0.0
    freq_width: Count = 16
    time_width: Count = 6
    n_freq: Count = 2
    n_time: Count = 2


@dataclass(frozen=True)
class MixStyleAugment:
    """Freq-MixStyle: per-frequency statistics mixed with another example's (see the table above)."""

    p: float = 0.0
    alpha: float = 0.4
    strength: float = 1.0
    eps: float = 1e-6


@dataclass(frozen=True)
class TiltAugment:
    """Spectral tilt of the harmonic profile (see the table above); harmonic front end only."""

    p: float = 0.0
    max_db_per_octave: float = 6.0


@dataclass(frozen=True)
class TransposeAugment:
    """Pitch-row shift of the harmonic profile (see the table above); harmonic front end only."""

    p: float = 0.0
    max_semitones: float = 3.0


FEATURE_ONLY = {"tilt": "harmonic", "transpose": "harmonic"}
"""Groups that need one front end: group -> the ``features.kind`` they work on."""

WAVEFORM_GROUPS = ("gain", "eq", "reverb", "noise", "pitch", "stretch")
"""Groups applied to the waveform, in this order (``mask`` and then ``mixstyle`` come after the front end)."""


@dataclass(frozen=True)
class AudioAugmentConfig:
    """Every augmentation group; all off by default (``p=0``), so the default is the identity."""

    gain: GainAugment = field(default_factory=GainAugment)
    eq: EqAugment = field(default_factory=EqAugment)
    reverb: ReverbAugment = field(default_factory=ReverbAugment)
    noise: NoiseAugment = field(default_factory=NoiseAugment)
    pitch: PitchAugment = field(default_factory=PitchAugment)
    stretch: StretchAugment = field(default_factory=StretchAugment)
    mask: MaskAugment = field(default_factory=MaskAugment)
    mixstyle: MixStyleAugment = field(default_factory=MixStyleAugment)
    tilt: TiltAugment = field(default_factory=TiltAugment)
    transpose: TransposeAugment = field(default_factory=TransposeAugment)

    @property
    def enabled_groups(self) -> list[str]:
        """Names of the groups that can change an example (``p > 0``)."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name).p > 0]

    @property
    def needs_waveform(self) -> bool:
        """Whether any waveform group is on (then the training split keeps its raw chunks)."""
        return any(g in WAVEFORM_GROUPS for g in self.enabled_groups)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists): what hyper-parameters and YAML hold."""
        return {f.name: {k: list(v) if isinstance(v, tuple) else v
                         for k, v in dataclasses.asdict(getattr(self, f.name)).items()}
                for f in dataclasses.fields(self)}  # fmt: skip


def audio_augment_config(value: Any = None) -> AudioAugmentConfig:
    """An :class:`AudioAugmentConfig` from ``None`` (all off), a config, or a nested dict of groups.

    Raises ``ValueError`` naming an unknown group or option, or the ``group.option`` that is out of its
    range, not a whole number where a count is asked for, or gives pitch/stretch no usable grid. A
    config object is checked too (its counts handed back as ints).
    """
    from cmav.tasks.common import coerce  # one dataclass coercion for the package

    if value is None:
        return AudioAugmentConfig()
    if isinstance(value, AudioAugmentConfig):  # built in code: checked like a dict
        checked = {f.name: _checked(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)}
        same = all(checked[name] is getattr(value, name) for name in checked)
        return value if same else AudioAugmentConfig(**checked)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        raise ValueError(f"audio augmentation config must be a dict or AudioAugmentConfig, got {type(value).__name__}")
    groups = {f.name: f for f in dataclasses.fields(AudioAugmentConfig)}
    unknown = sorted(set(value) - set(groups))
    if unknown:
        raise ValueError(f"audio augmentation has no group(s) {unknown}; groups: {sorted(groups)}")
    out = {}
    for name, v in value.items():
        cls = groups[name].default_factory  # type: ignore[misc]
        if isinstance(v, dict):  # YAML lists back to the tuples the dataclasses declare
            v = {k: tuple(x) if isinstance(x, list) else x for k, x in v.items()}
        out[name] = _checked(name, coerce(cls, v))
    return AudioAugmentConfig(**out)


def _at_least(low: float) -> Any:
    return (lambda v: v >= low), f">= {low:g}"


def _interval(low: float, high: float, closed_high: bool = True) -> Any:
    if closed_high:
        return (lambda v: low <= v <= high), f"in [{low:g}, {high:g}]"
    return (lambda v: low <= v < high), f"in [{low:g}, {high:g})"


def _positive_range() -> Any:
    return (lambda v: 0 < v[0] <= v[1]), "a (low, high) pair with 0 < low <= high"


def _snr_range() -> Any:
    def ok(v: Any) -> bool:
        if not isinstance(v, (tuple, list)):  # a lone number: a TypeError below
            return False
        if tuple(v) == (math.inf, math.inf):  # the zero strength: no noise
            return True
        return len(v) == 2 and math.isfinite(v[0]) and math.isfinite(v[1]) and v[0] <= v[1]

    return ok, "a (low, high) pair with low <= high, both finite, or (inf, inf) for no noise"


_RANGES: dict[str, dict[str, Any]] = {
    "gain": {"max_db": _at_least(0)},
    "eq": {"max_db": _at_least(0), "n_bands": _at_least(0), "low_hz": _positive_range(),
           "band_hz": _positive_range(), "band_q": _positive_range(), "high_hz": _positive_range()},
    "reverb": {"max_wet": _interval(0, 1), "rt60_s": _positive_range(), "max_predelay_s": _at_least(0)},
    "noise": {"snr_db": _snr_range(), "max_colour": _at_least(0)},
    "pitch": {"max_semitones": ((lambda v: 0 <= v < math.inf), ">= 0 and finite"),
              "steps_per_semitone": _at_least(1)},
    "stretch": {"max_rate": _interval(0, 1, closed_high=False), "rate_step": ((lambda v: v > 0), "> 0")},
    "mask": {"freq_width": _at_least(0), "time_width": _at_least(0), "n_freq": _at_least(0), "n_time": _at_least(0)},
    "mixstyle": {"alpha": ((lambda v: v > 0), "> 0"), "strength": _interval(0, 1)},
    "tilt": {"max_db_per_octave": _at_least(0)},
    "transpose": {"max_semitones": _at_least(0)},
}  # fmt: skip
"""Each group's options that have a valid range: (test, what it must be). A value outside it would
fail at the first training batch deep inside torchaudio, or give non-finite audio with no error."""


def _checked(name: str, group: Any) -> Any:
    """``group`` with its counts as ints, once every option is in its range (``ValueError`` if not)."""
    group = _whole_numbers(name, _infinite_snr(name, group))
    _check_ranges(name, group)
    _check_grid(name, group)
    return group


def _whole_numbers(name: str, group: Any) -> Any:
    """The group's ``int`` options (counts) as ints: ``2.0`` (YAML, a CLI) is ``2``; ``1.5``, a string or a
    bool is refused, not left to fail at the first batch (or to draw off the documented grid)."""
    whole = {}
    for f in dataclasses.fields(group):
        if f.type not in (Count, "Count"):
            continue
        value = getattr(group, f.name)
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if not real or not (isinstance(value, numbers.Integral) or float(value).is_integer()):
            raise ValueError(f"audio augmentation {name}.{f.name} must be a whole number, got {value!r}")
        if type(value) is not int:
            whole[f.name] = int(value)
    return dataclasses.replace(group, **whole) if whole else group


def _infinite_snr(name: str, group: Any) -> Any:
    """``noise.snr_db`` with the spellings of infinity as floats (see :data:`Snr`); another string is
    refused here, not left to a ``TypeError`` in the range check."""
    ends_given = group.snr_db if name == "noise" and isinstance(group.snr_db, (tuple, list)) else ()
    if not any(isinstance(end, str) for end in ends_given):
        return group
    ends = []
    for end in group.snr_db:
        if isinstance(end, str):
            word = end.strip().lower().replace(".inf", "inf")
            if word.lstrip("+-") not in ("inf", "infinity"):
                raise ValueError(f"audio augmentation noise.snr_db must be {_snr_range()[1]}, got {list(group.snr_db)}")
            end = float(word)
        ends.append(end)
    return dataclasses.replace(group, snr_db=tuple(ends))


def _check_ranges(name: str, group: Any) -> None:
    if not 0.0 <= group.p <= 1.0:
        raise ValueError(f"audio augmentation {name}.p must be in [0, 1], got {group.p}")
    for option, (ok, must) in _RANGES.get(name, {}).items():
        value = getattr(group, option)
        if not ok(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ValueError(f"audio augmentation {name}.{option} must be {must}, got {shown}")


def _pitch_grid(c: PitchAugment) -> int:
    """How many steps of ``1/steps_per_semitone`` fit in ``max_semitones`` (the shifts are ± 1..that many steps)."""
    return int(math.floor(c.max_semitones * c.steps_per_semitone + 1e-9))  # 1e-9: float rounding (0.3 / 0.1)


def _stretch_grid(c: StretchAugment) -> int:
    """How many steps of ``rate_step`` fit in ``max_rate`` (the rates are 1 ± 1..that many steps)."""
    return int(math.floor(c.max_rate / c.rate_step + 1e-9))  # 0.3 / 0.1 is 2.9999999999999996


def _check_grid(name: str, group: Any) -> None:
    """Pitch and stretch draw from a grid inside their range: one that holds only 0 would leave an enabled
    group doing nothing (while it keeps the raw chunks); a rate of 0 or below cannot be played."""
    if name == "pitch" and group.p > 0 and group.max_semitones > 0 and _pitch_grid(group) == 0:
        raise ValueError(f"audio augmentation pitch.max_semitones must be 0 or at least one step "
                         f"(1/steps_per_semitone = {1 / group.steps_per_semitone:g}) when p > 0, got "
                         f"{group.max_semitones}: no shift on the grid fits in the range, so the group never "
                         f"changes anything")  # fmt: skip
    if name == "stretch":
        grid = _stretch_grid(group)
        if group.p > 0 and group.max_rate > 0 and grid == 0:
            raise ValueError(f"audio augmentation stretch.max_rate must be 0 or at least one step (rate_step = "
                             f"{group.rate_step:g}) when p > 0, got {group.max_rate}: no rate on the grid but 1 "
                             f"fits in the range, so the group never changes anything")  # fmt: skip
        if grid * group.rate_step >= 1:
            raise ValueError(f"audio augmentation stretch.max_rate {group.max_rate} with rate_step "
                             f"{group.rate_step:g} reaches a rate of {1 - grid * group.rate_step:g}; every rate on "
                             f"the grid must stay above 0")  # fmt: skip


def check_front_end(config: AudioAugmentConfig, features: Any) -> None:
    """Raise ``ValueError`` when an enabled group needs another front end than ``features``'s."""
    kind = getattr(features, "kind", None)
    for group, needs in FEATURE_ONLY.items():
        if group in config.enabled_groups and kind != needs:
            raise ValueError(f"audio augmentation {group} works on the {needs} front end (features.kind: {needs}), "
                             f"not on {kind!r}")  # fmt: skip


# ---------------------------------------------------------------------------------------- helpers


def _uniform(n: int, low: float, high: float, like: Tensor) -> Tensor:
    return torch.rand(n, device=like.device, dtype=like.dtype) * (high - low) + low


def _log_uniform(n: int, low: float, high: float, like: Tensor) -> Tensor:
    return torch.exp(_uniform(n, math.log(low), math.log(high), like))


def _chosen(n: int, p: float, like: Tensor) -> Tensor:
    """``(n,)`` bool: which examples an op with probability ``p`` touches."""
    return torch.rand(n, device=like.device) < p


def _grid_steps(n: int, grid: int, p: float, like: Tensor) -> Tensor:
    """``(n,)`` int steps: ``±1..grid`` for the examples chosen with probability ``p``, 0 for the rest.

    A step of 0 is never drawn for a chosen example: drawn from ``-grid..grid`` a chosen example stayed
    as it was with probability ``1/(2·grid+1)`` (a third of them at one step each side), below ``p``."""
    size = torch.randint(1, grid + 1, (n,), device=like.device)
    sign = torch.randint(0, 2, (n,), device=like.device) * 2 - 1
    return size * sign * _chosen(n, p, like)


def _rms(x: Tensor) -> Tensor:
    return x.pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-12).sqrt()


def shelf_peak_coefficients(kind: str, freq: Tensor, gain_db: Tensor, q: Tensor, sample_rate: int
                            ) -> tuple[Tensor, Tensor]:  # fmt: skip
    """``(a, b)`` ``(N, 3)`` of N biquads (RBJ cookbook, normalised by ``a0``), one per example.

    ``kind``: ``low`` shelf, ``high`` shelf or ``peak``; the formulas are torchaudio's
    ``bass_biquad``, ``treble_biquad`` and ``equalizer_biquad``. A gain of 0 dB gives ``a == b``.
    """
    w0 = 2 * math.pi * freq / sample_rate
    cos, alpha = torch.cos(w0), torch.sin(w0) / (2 * q)
    A = torch.pow(10.0, gain_db / 40)
    if kind == "peak":
        b = torch.stack([1 + alpha * A, -2 * cos, 1 - alpha * A], -1)
        a = torch.stack([1 + alpha / A, -2 * cos, 1 - alpha / A], -1)
    elif kind in ("low", "high"):
        s = 1.0 if kind == "low" else -1.0  # one formula for both shelves: s = -1 gives treble_biquad
        t1, t2, t3 = 2 * torch.sqrt(A) * alpha, (A - 1) * cos * s, (A + 1) * cos
        b = torch.stack([A * ((A + 1) - t2 + t1), 2 * s * A * ((A - 1) - s * t3), A * ((A + 1) - t2 - t1)], -1)
        a = torch.stack([(A + 1) + t2 + t1, -2 * s * ((A - 1) + s * t3), (A + 1) + t2 - t1], -1)
    else:
        raise ValueError(f"unknown biquad kind {kind!r}; expected 'low', 'high' or 'peak'")
    return a / a[:, :1], b / a[:, :1]


def decaying_noise_ir(rt60_s: Tensor, length: int, sample_rate: int, predelay_s: Tensor) -> Tensor:
    """``(N, length)`` synthetic room impulse responses, unit energy: Gaussian noise under an
    exponential envelope that falls 60 dB in ``rt60_s``, starting after ``predelay_s``."""
    n = rt60_s.shape[0]
    t = torch.arange(length, device=rt60_s.device, dtype=rt60_s.dtype) / sample_rate
    t = t.unsqueeze(0) - predelay_s.unsqueeze(1)
    env = torch.where(t >= 0, torch.exp(-3 * math.log(10) * t.clamp_min(0) / rt60_s.unsqueeze(1)), torch.zeros_like(t))
    ir = torch.randn(n, length, device=rt60_s.device, dtype=rt60_s.dtype) * env
    return ir / ir.pow(2).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()


def coloured_noise(shape: tuple[int, int], colour: Tensor, like: Tensor) -> Tensor:
    """``(N, T)`` unit-RMS noise whose power falls as ``f ** -colour`` (0 white, 1 pink, 2 brown)."""
    n, length = shape
    spec = torch.fft.rfft(torch.randn(n, length, device=like.device, dtype=like.dtype), dim=-1)
    f = torch.arange(spec.shape[-1], device=like.device, dtype=like.dtype).clamp_min(1.0)
    spec = spec * f.unsqueeze(0).pow(-colour.unsqueeze(1) / 2)
    x = torch.fft.irfft(spec, n=length, dim=-1)
    return x / _rms(x)


def fix_length(x: Tensor, length: int) -> Tensor:
    """Cut ``(..., T')`` to ``length`` samples around its centre, or reflect-pad it to ``length``."""
    extra = x.shape[-1] - length
    if extra >= 0:
        return x[..., extra // 2 : extra // 2 + length]
    left = -extra // 2
    return torch.nn.functional.pad(x.unsqueeze(1), (left, -extra - left), mode="reflect").squeeze(1)


def _grouped(x: Tensor, values: Tensor, fn) -> Tensor:
    """``fn(x[rows], v)`` for every distinct non-zero ``v`` in ``values`` (one call per value)."""
    out = x.clone()
    for v in torch.unique(values).tolist():
        if v == 0:
            continue
        rows = (values == v).nonzero().flatten()
        out[rows] = fn(x[rows], v).to(x.dtype)
    return out


# ---------------------------------------------------------------------------------------- the module


class AudioAugment(nn.Module):
    """Random augmentation of a batch: :meth:`waveform` on ``(B, T)`` / ``(B, C, T)`` audio at any
    rate, :meth:`features` (SpecAugment) on ``(B, C, H, W)`` front-end output. Both are the identity
    when their groups are off; randomness comes from torch's global generator on the batch's device."""

    def __init__(self, config: AudioAugmentConfig | dict | None = None, features: Any = None) -> None:
        super().__init__()
        self.config = audio_augment_config(config)
        check_front_end(self.config, features)
        self.front_end_config = features  # what the feature groups that need one read (tilt, transpose)
        m = self.config.mask
        self.freq_masking = torchaudio.transforms.FrequencyMasking(m.freq_width, iid_masks=True)
        self.time_masking = torchaudio.transforms.TimeMasking(m.time_width, iid_masks=True)

    @property
    def active(self) -> bool:
        return bool(self.config.enabled_groups)

    # -- waveform ops: (N, T) float -> (N, T), same dtype -------------------------------------------

    def gain(self, x: Tensor, sample_rate: int) -> Tensor:
        c = self.config.gain
        db = _uniform(len(x), -c.max_db, c.max_db, x) * _chosen(len(x), c.p, x)
        return x * torch.pow(10.0, db / 20).unsqueeze(1)

    def eq(self, x: Tensor, sample_rate: int) -> Tensor:
        c, n = self.config.eq, len(x)
        nyq = 0.45 * sample_rate
        on = _chosen(n, c.p, x)
        if c.max_db == 0 or not bool(on.any()):
            return x
        out = x[on]
        k = out.shape[0]
        filters = [("low", c.low_hz, None), *[("peak", c.band_hz, c.band_q)] * c.n_bands, ("high", c.high_hz, None)]
        for kind, (lo, hi), q in filters:
            freq = _log_uniform(k, min(lo, nyq), min(hi, nyq), out)
            qs = _uniform(k, *q, out) if q else torch.full_like(freq, 0.707)
            a, b = shelf_peak_coefficients(kind, freq, _uniform(k, -c.max_db, c.max_db, out), qs, sample_rate)
            out = torchaudio.functional.lfilter(out, a, b, clamp=False, batching=True)
        res = x.clone()
        res[on] = out
        return res

    def reverb(self, x: Tensor, sample_rate: int) -> Tensor:
        c, (n, length) = self.config.reverb, x.shape
        wet = _uniform(n, 0.0, c.max_wet, x) * _chosen(n, c.p, x)
        if not bool((wet > 0).any()):
            return x
        rows = (wet > 0).nonzero().flatten()
        k = len(rows)
        ir_len = min(length, int(math.ceil((max(c.rt60_s) + c.max_predelay_s) * sample_rate)))
        ir = decaying_noise_ir(_uniform(k, *c.rt60_s, x), ir_len, sample_rate, _uniform(k, 0.0, c.max_predelay_s, x))
        size = length + ir_len
        wet_sig = torch.fft.irfft(torch.fft.rfft(x[rows], n=size) * torch.fft.rfft(ir, n=size), n=size)[:, :length]
        w, dry = wet[rows].unsqueeze(1), x[rows]
        mixed = torch.sqrt(1 - w) * dry + torch.sqrt(w) * wet_sig
        # back to the dry RMS: the energy-keeping mix alone moved a tone's level by -15..+7 dB (the wet
        # part's energy depends on how the tone's phases meet the room); silence stays as it is
        dry_ms, mix_ms = dry.pow(2).mean(-1, keepdim=True), mixed.pow(2).mean(-1, keepdim=True)
        tiny = torch.finfo(x.dtype).tiny
        audible = (dry_ms > tiny) & (mix_ms > tiny)
        level = torch.sqrt(dry_ms / torch.where(audible, mix_ms, torch.ones_like(mix_ms)))
        out = x.clone()
        out[rows] = torch.where(audible, mixed * level, dry)
        return out

    def noise(self, x: Tensor, sample_rate: int) -> Tensor:
        c, n = self.config.noise, len(x)
        on = _chosen(n, c.p, x)
        if not math.isfinite(min(c.snr_db)) or not bool(on.any()):
            return x  # snr_db (inf, inf): no noise (one infinite end is refused when the config is read)
        snr = _uniform(n, *c.snr_db, x)
        scale = _rms(x) * torch.pow(10.0, -snr / 20).unsqueeze(1) * on.unsqueeze(1)
        return x + scale * coloured_noise((n, x.shape[-1]), _uniform(n, 0.0, c.max_colour, x), x)

    def pitch(self, x: Tensor, sample_rate: int) -> Tensor:
        c, n = self.config.pitch, len(x)
        grid = _pitch_grid(c)
        if grid == 0:
            return x
        steps = _grid_steps(n, grid, c.p, x)
        return _grouped(x, steps, lambda rows, v: pitch_shift(rows, v / c.steps_per_semitone))

    def stretch(self, x: Tensor, sample_rate: int) -> Tensor:
        c, n = self.config.stretch, len(x)
        grid = _stretch_grid(c)
        if grid == 0:
            return x
        steps = _grid_steps(n, grid, c.p, x)
        return _grouped(x, steps, lambda rows, v: time_stretch(rows, 1.0 + v * c.rate_step))

    def waveform(self, wave: Tensor, sample_rate: int) -> Tensor:
        """Every waveform group in :data:`WAVEFORM_GROUPS` order; ``(B, T)`` or ``(B, C, T)`` in and out."""
        if not self.config.needs_waveform:
            return wave
        shape = wave.shape
        x = wave.reshape(-1, shape[-1])  # channels of an example get separate draws: fine for mono chunks
        for name in WAVEFORM_GROUPS:
            if getattr(self.config, name).p > 0:
                x = getattr(self, name)(x, sample_rate)
        return x.reshape(shape)

    def features(self, feats: Tensor) -> Tensor:
        """The feature groups on ``(B, C, H, W)`` front-end output: tilt, transpose, SpecAugment, then
        Freq-MixStyle."""
        return self.mixstyle(self.mask(self.transpose(self.tilt(feats))))

    def tilt(self, feats: Tensor) -> Tensor:
        """A random spectral tilt of each chosen example's harmonic profile."""
        from cmav.features.harmonic import tilt_harmonics

        c = self.config.tilt
        if c.p <= 0 or c.max_db_per_octave == 0:
            return feats
        n = len(feats)
        slope = _uniform(n, -c.max_db_per_octave, c.max_db_per_octave, feats) * _chosen(n, c.p, feats)
        return tilt_harmonics(feats, slope, self.front_end_config)

    def transpose(self, feats: Tensor) -> Tensor:
        """A random shift of each chosen example's pitch row (harmonic profile)."""
        from cmav.features.harmonic import transpose_pitch

        c = self.config.transpose
        if c.p <= 0 or c.max_semitones == 0:
            return feats
        n = len(feats)
        shift = _uniform(n, -c.max_semitones, c.max_semitones, feats) * _chosen(n, c.p, feats)
        return transpose_pitch(feats, shift, self.front_end_config)

    def mask(self, feats: Tensor) -> Tensor:
        """SpecAugment masks on ``(B, C, H, W)`` features, filled with each example's mean."""
        c = self.config.mask
        if c.p <= 0 or (c.freq_width == 0 and c.time_width == 0):
            return feats
        keep = torch.ones_like(feats[:, :1])
        for _ in range(c.n_freq if c.freq_width > 0 and feats.shape[-2] > 1 else 0):
            keep = self.freq_masking(keep)
        for _ in range(c.n_time if c.time_width > 0 else 0):
            keep = self.time_masking(keep)
        off = ~_chosen(len(feats), c.p, feats)
        keep[off] = 1.0
        fill = feats.mean(dim=(1, 2, 3), keepdim=True)
        return feats * keep + fill * (1 - keep)

    def mixstyle(self, feats: Tensor) -> Tensor:
        """Freq-MixStyle on ``(B, C, H, W)``: every chosen example's per-bin (H) mean and sd over
        (C, W) become a mix of its own and a random other example's; the rest is untouched."""
        c = self.config.mixstyle
        if c.p <= 0 or c.strength <= 0 or len(feats) < 2:
            return feats
        n = len(feats)
        mu = feats.mean(dim=(1, 3), keepdim=True)
        sd = (feats.var(dim=(1, 3), keepdim=True) + c.eps).sqrt()
        lam = torch.distributions.Beta(c.alpha, c.alpha).sample((n, 1, 1, 1)).to(feats)
        other = c.strength * (1.0 - lam)
        perm = torch.randperm(n, device=feats.device)
        mixed = (feats - mu) / sd * (sd + other * (sd[perm] - sd)) + mu + other * (mu[perm] - mu)
        chosen = _chosen(n, c.p, feats).view(n, 1, 1, 1)
        return torch.where(chosen, mixed, feats)

    def forward(self, wave: Tensor, sample_rate: int) -> Tensor:
        return self.waveform(wave, sample_rate)


def time_stretch(x: Tensor, rate: float, n_fft: int = 1024, hop_length: int = 256, length: int | None = None
                 ) -> Tensor:  # fmt: skip
    """``(N, T)`` played ``rate`` times as fast with its pitch kept (torchaudio's phase vocoder),
    then cut or reflect-padded to ``length`` samples (default ``T``) around the centre."""
    length = x.shape[-1] if length is None else length
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    # zero padding, as librosa's: a reflected first frame holds phases that do not run on from the
    # signal's, and the vocoder, which starts every bin at frame 0's phase, then cancels neighbouring
    # bins for the rest of the clip at rate < 1 (a sine kept 0.108 of its 0.502 rms at rate 0.9)
    spec = torch.stft(x, n_fft, hop_length, window=window, return_complex=True, pad_mode="constant")
    advance = torch.linspace(0, math.pi * hop_length, spec.shape[-2], device=x.device, dtype=x.dtype)[..., None]
    spec = torchaudio.functional.phase_vocoder(spec, rate, advance)
    y = torch.istft(spec, n_fft, hop_length, window=window, length=int(round(x.shape[-1] / rate)))
    return fix_length(y, length)


def pitch_shift(x: Tensor, semitones: float, max_denominator: int = 100) -> Tensor:
    """``(N, T)`` shifted by ``semitones`` with its length kept: a phase-vocoder stretch, then
    torchaudio's resampling by the ratio ``p/q`` nearest ``2 ** (semitones / 12)`` with
    ``q <= max_denominator`` (0.1 cent off for quarter semitones; torchaudio's own ``pitch_shift``
    resamples by ``int(rate * sr) / sr``, whose sinc kernel for 44.1 kHz takes gigabytes)."""
    from fractions import Fraction

    ratio = Fraction(2 ** (semitones / 12)).limit_denominator(max_denominator)
    if ratio == 1:
        return x
    p, q = ratio.numerator, ratio.denominator
    longer = time_stretch(x, q / p, length=int(round(x.shape[-1] * p / q)))
    return fix_length(torchaudio.functional.resample(longer, p, q), x.shape[-1])


__all__ = [
    "FEATURE_ONLY",
    "WAVEFORM_GROUPS",
    "AudioAugment",
    "AudioAugmentConfig",
    "EqAugment",
    "GainAugment",
    "MaskAugment",
    "MixStyleAugment",
    "NoiseAugment",
    "PitchAugment",
    "ReverbAugment",
    "StretchAugment",
    "TiltAugment",
    "TransposeAugment",
    "audio_augment_config",
    "check_front_end",
    "coloured_noise",
    "decaying_noise_ir",
    "fix_length",
    "pitch_shift",
    "shelf_peak_coefficients",
    "time_stretch",
]
