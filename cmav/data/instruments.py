"""The 13 Sub-URMP instrument classes and the facts the stand-in builder needs about them."""

from __future__ import annotations

from dataclasses import dataclass

INSTRUMENTS: tuple[str, ...] = (
    "bassoon",
    "cello",
    "clarinet",
    "double_bass",
    "flute",
    "horn",
    "oboe",
    "sax",
    "trombone",
    "trumpet",
    "tuba",
    "viola",
    "violin",
)
"""Class names in Sub-URMP's folder spelling; the index in this tuple is the class label."""

CLASS_TO_INDEX: dict[str, int] = {name: i for i, name in enumerate(INSTRUMENTS)}


@dataclass(frozen=True)
class InstrumentSpec:
    """How an instrument sounds (General MIDI) and how big it is.

    ``gm_program`` is 1-based as printed in the GM table (MIDI program change = value - 1).
    ``low``/``high`` bound the MIDI notes the stand-in plays: inside the real playing range and
    inside what FluidR3 actually renders (its contrabass is silent above MIDI 57).
    ``length_m`` is the instrument's real overall length, used to draw it at true relative size.
    ``family`` groups instruments by how they are held and played (drives the frame renderer).
    """

    name: str
    gm_program: int
    low: int
    high: int
    length_m: float
    family: str


INSTRUMENT_SPECS: dict[str, InstrumentSpec] = {
    s.name: s
    for s in (
        InstrumentSpec("violin", 41, 55, 88, 0.60, "bowed_chin"),
        InstrumentSpec("viola", 42, 48, 81, 0.70, "bowed_chin"),
        InstrumentSpec("cello", 43, 36, 69, 1.24, "bowed_floor"),
        InstrumentSpec("double_bass", 44, 28, 55, 1.85, "bowed_floor"),
        InstrumentSpec("trumpet", 57, 55, 82, 0.48, "brass_forward"),
        InstrumentSpec("trombone", 58, 40, 72, 1.10, "brass_slide"),
        InstrumentSpec("tuba", 59, 28, 58, 0.95, "brass_lap"),
        InstrumentSpec("horn", 61, 41, 77, 0.45, "brass_horn"),
        InstrumentSpec("sax", 67, 44, 75, 0.80, "reed_sax"),
        InstrumentSpec("oboe", 69, 58, 91, 0.65, "reed_vertical"),
        InstrumentSpec("bassoon", 71, 34, 72, 1.35, "reed_bassoon"),
        InstrumentSpec("clarinet", 72, 50, 89, 0.66, "reed_vertical"),
        InstrumentSpec("flute", 74, 60, 96, 0.67, "flute_side"),
    )
}
