"""Random melodies for the stand-in data set: phrases inside an instrument's range, as MIDI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mido
import numpy as np

from cmav.data.instruments import InstrumentSpec

SCALES: dict[str, tuple[int, ...]] = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "pentatonic": (0, 2, 4, 7, 9),
}


@dataclass(frozen=True)
class Note:
    """One played note. Times in seconds from the start of the track."""

    start: float
    end: float
    pitch: int  # MIDI note number
    velocity: int  # 1..127
    articulation: str  # "legato" or "staccato"

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class MelodyStyle:
    """How melodies are drawn. Durations are in beats; tempo in beats per minute.

    ``max_rest_s`` stays well under the 0.5 s chunk length so that no chunk is silent.
    """

    tempo_range: tuple[float, float] = (72.0, 132.0)
    beat_lengths: tuple[float, ...] = (0.25, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0)
    phrase_notes: tuple[int, int] = (4, 10)
    max_step: int = 3
    """Largest scale step between neighbouring notes, except for occasional leaps."""
    leap_probability: float = 0.1
    staccato_probability: float = 0.35
    staccato_fraction: float = 0.4
    """Sounding fraction of a staccato note's slot."""
    velocity_range: tuple[int, int] = (45, 120)
    max_rest_s: float = 0.15


def random_melody(
    spec: InstrumentSpec, duration_s: float, rng: np.random.Generator, style: MelodyStyle = MelodyStyle()
) -> list[Note]:
    """Phrases of notes in one key within ``spec``'s range, covering ``duration_s`` seconds.

    Each phrase has one articulation (legato or staccato) and a dynamic arc (crescendo then
    diminuendo), so that loudness and note lengths vary within a track the way a player's do.
    """
    beat = 60.0 / rng.uniform(*style.tempo_range)
    root = int(rng.integers(0, 12))
    scale = SCALES[str(rng.choice(list(SCALES)))]
    pitches = [p for p in range(spec.low, spec.high + 1) if (p - root) % 12 in scale]
    # Start in the middle of the range, where players spend most time.
    idx = len(pitches) // 2 + int(rng.integers(-2, 3))
    notes: list[Note] = []
    t = 0.0
    while t < duration_s:
        n = int(rng.integers(style.phrase_notes[0], style.phrase_notes[1] + 1))
        staccato = rng.random() < style.staccato_probability
        lo, hi = style.velocity_range
        peak = rng.uniform(lo + 0.4 * (hi - lo), hi)
        base = rng.uniform(lo, lo + 0.4 * (hi - lo))
        for k in range(n):
            if t >= duration_s:
                break
            if rng.random() < style.leap_probability:
                step = int(rng.integers(-5, 6))
            else:
                step = int(rng.integers(-style.max_step, style.max_step + 1))
            idx = int(np.clip(idx + step, 0, len(pitches) - 1))
            slot = float(rng.choice(style.beat_lengths)) * beat
            arc = np.sin(np.pi * (k + 0.5) / n)
            vel = int(np.clip(base + (peak - base) * arc + rng.normal(0, 4), 1, 127))
            # A staccato note is short, but the silence after it never exceeds max_rest_s.
            sounding = max(slot * style.staccato_fraction, slot - style.max_rest_s) if staccato else slot * 0.97
            notes.append(Note(t, t + sounding, pitches[idx], vel, "staccato" if staccato else "legato"))
            t += slot
        t += float(rng.uniform(0.0, style.max_rest_s))
    return notes


def write_midi(notes: list[Note], program: int, path: str | Path, ticks_per_beat: int = 480,
               controls: dict[int, int] | None = None, pitch_bend: int = 0) -> None:  # fmt: skip
    """Write ``notes`` as a one-track MIDI file for GM ``program`` (1-based, as in the GM table).

    ``controls``: controller number -> value sent before the first note (pan 10, reverb send 91 ...);
    ``pitch_bend``: -8192..8191 (GM's default bend range is ±2 semitones), for the whole track.
    """
    tempo = 500_000  # microseconds per beat (120 bpm): seconds map to ticks exactly
    ticks_per_s = ticks_per_beat * 1_000_000 / tempo
    events: list[tuple[int, int, mido.Message]] = []
    for n in notes:
        # Note-offs sort before note-ons at the same tick so a repeated pitch is re-struck.
        events.append((round(n.start * ticks_per_s), 1, mido.Message("note_on", note=n.pitch, velocity=n.velocity)))
        events.append((round(n.end * ticks_per_s), 0, mido.Message("note_off", note=n.pitch, velocity=0)))
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    track.append(mido.Message("program_change", program=program - 1, time=0))
    for number, value in sorted((controls or {}).items()):
        track.append(mido.Message("control_change", control=number, value=int(value), time=0))
    if pitch_bend:
        track.append(mido.Message("pitchwheel", pitch=int(pitch_bend), time=0))
    last = 0
    for tick, _, msg in events:
        track.append(msg.copy(time=tick - last))
        last = tick
    track.append(mido.MetaMessage("end_of_track", time=ticks_per_beat))
    mid = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    mid.tracks.append(track)
    mid.save(str(path))
