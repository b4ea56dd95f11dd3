"""Varied rendering (``render='varied'``): every track played and recorded its own way.

A dry build renders every track of an instrument through the same samples with the same settings,
so a model can learn one sample set's exact timbre. A varied build draws, per track, a
:class:`Performance`: FluidSynth reverb and chorus on with random amounts, a velocity curve, an
articulation (how much of each written note sounds), a stereo position, a tuning offset, a vibrato
depth and an output gain. The draw comes from its own stream of the track's seed, so the melody and
the player frames stay those of the dry build with the same seed: only the sound changes, and the
build stays deterministic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmav.standin.music import Note
from cmav.standin.render import SynthSettings

RENDERS = ("dry", "varied")
"""``dry``: reverb and chorus off, notes as written (the original stand-in); ``varied``: a random
:class:`Performance` per track."""

MAX_SHORTENING_S = 0.1
"""Articulation never shortens a note by more than this, so no chunk turns silent."""


@dataclass(frozen=True)
class Performance:
    """How one track is played (MIDI) and recorded (FluidSynth). The defaults are the dry render."""

    synth: SynthSettings = field(default_factory=SynthSettings)
    velocity_gamma: float = 1.0
    """Velocity curve ``127 * (v / 127) ** gamma``: below 1 louder and flatter, above 1 softer."""
    velocity_scale: float = 1.0
    articulation: float = 1.0
    """Sounding fraction of every note (1 = as written), at most :data:`MAX_SHORTENING_S` shorter."""
    pan: int = 64
    reverb_send: int = 40
    chorus_send: int = 0
    vibrato: int = 0
    """Modulation wheel (CC1): SoundFont 2's default modulator turns it into up to 50 cents of vibrato."""
    detune_cents: float = 0.0

    def notes(self, notes: list[Note]) -> list[Note]:
        """``notes`` with this performance's velocity curve and articulation."""
        out = []
        for n in notes:
            vel = int(np.clip(round(127 * (n.velocity / 127) ** self.velocity_gamma * self.velocity_scale), 1, 127))
            end = max(n.start + n.duration * self.articulation, n.end - MAX_SHORTENING_S)
            out.append(dataclasses.replace(n, end=end, velocity=vel))
        return out

    def controls(self) -> dict[int, int]:
        """MIDI controllers sent before the first note: pan (10), reverb (91) and chorus (93) sends, vibrato (1)."""
        return {1: self.vibrato, 10: self.pan, 91: self.reverb_send, 93: self.chorus_send}

    @property
    def pitch_bend(self) -> int:
        """The tuning offset as a pitch-bend value (GM default range ±200 cents = ±8192)."""
        return int(np.clip(round(self.detune_cents / 200 * 8192), -8192, 8191))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def random_performance(rng: np.random.Generator, sample_rate: int = 44100) -> Performance:
    """A random :class:`Performance`: reverb (room 0.1-0.9, level 0.3-0.9, send 20-100) and chorus
    (2-5 voices, depth 2-10 ms, send 0-70) always on, velocity curve gamma 0.6-1.6, articulation
    0.8-1, pan 16-112, vibrato 0-50, tuning ±15 cents, gain 0.35-1.0."""
    u = rng.uniform
    synth = SynthSettings(
        sample_rate=sample_rate, gain=round(u(0.35, 1.0), 3), reverb=True, chorus=True,
        reverb_room_size=round(u(0.1, 0.9), 3), reverb_damp=round(u(0.1, 0.9), 3),
        reverb_width=round(u(0.3, 1.0), 3), reverb_level=round(u(0.3, 0.9), 3),
        chorus_nr=int(rng.integers(2, 6)), chorus_level=round(u(0.5, 2.5), 3),
        chorus_speed=round(u(0.2, 1.2), 3), chorus_depth=round(u(2.0, 10.0), 3),
    )  # fmt: skip
    return Performance(
        synth=synth, velocity_gamma=round(float(np.exp(u(np.log(0.6), np.log(1.6)))), 3),
        velocity_scale=round(u(0.75, 1.1), 3), articulation=round(u(0.8, 1.0), 3), pan=int(rng.integers(16, 113)),
        reverb_send=int(rng.integers(20, 101)), chorus_send=int(rng.integers(0, 71)), vibrato=int(rng.integers(0, 51)),
        detune_cents=round(u(-15.0, 15.0), 2),
    )  # fmt: skip


__all__ = ["MAX_SHORTENING_S", "RENDERS", "Performance", "random_performance"]
