"""Procedural video frames for the Sub-URMP stand-in: a player holding one of the 13 instruments.

Each frame shows one player (``PlayerStyle``: colours and camera framing, fixed per track) in a
pose that follows the music at that instant (``Pose`` from ``pose_at``): the bow moves through its
stroke, the trombone slide follows the pitch, body sway and lift follow the phrase and dynamics.
``render_frame`` also returns a mask of the instrument's visible pixels (the sound source).

Geometry is in metres in a world frame: origin on the floor under the player's centre, x to the
image right, y up. The player faces the camera, so the player's RIGHT hand is on the image LEFT
(x < 0). Instruments are drawn at their true length (``InstrumentSpec.length_m``) next to a
``PLAYER_HEIGHT_M`` tall body; instruments that point at the camera are shortened by a projection
factor (``fore``) as a camera would. Everything is drawn at ``SUPERSAMPLE`` times the output size
and downsampled with LANCZOS, which antialiases both the image and the mask.
"""

from __future__ import annotations

import bisect
import colorsys
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from cmav.data.instruments import INSTRUMENT_SPECS, InstrumentSpec
from cmav.standin.music import Note

RGB = tuple[int, int, int]
Point = tuple[float, float]

SUPERSAMPLE = 2
PLAYER_HEIGHT_M = 1.75

# ---------------------------------------------------------------------------------------------
# Body geometry, metres, for a PLAYER_HEIGHT_M tall adult (anthropometric proportions).
# Heights are above the pelvis (hip joint line) so one table serves seated and standing players.
# ---------------------------------------------------------------------------------------------
BODY: dict[str, float] = {
    "shoulder_above_pelvis": 0.52,
    "head_above_pelvis": 0.69,  # centre of the face ellipse
    "shoulder_half": 0.195,  # half the shoulder width (joint to joint)
    "waist_half": 0.145,
    "hip_half": 0.165,
    "head_rx": 0.085,  # face ellipse half-axes
    "head_ry": 0.112,
    "neck_r": 0.04,
    "upper_arm": 0.31,  # shoulder -> elbow
    "forearm": 0.27,  # elbow -> wrist
    "reach_comfort": 0.85,  # hands held in front of the body sit at this fraction of full reach
    "upper_arm_r": 0.046,
    "forearm_r": 0.036,
    "hand_r": 0.04,
    "thigh_r": 0.075,
    "shin_r": 0.055,
    "mouth_below_head": 0.062,  # from the face centre
    "eye_dx": 0.032,
    "eye_dy": 0.014,
    "eye_r": 0.009,
}


@dataclass(frozen=True)
class Posture:
    """How the player sits or stands, and how the camera frames that (metres, world frame)."""

    pelvis_y: float
    knee: Point  # (half spread, height) of the knees
    ankle: Point  # (half spread, height) of the ankles
    view_h: float  # world height visible in the frame at style.scale == 1
    cam_y: float  # world height at the image centre at style.camera_height == 0
    seat: str  # "chair" or "stool"


POSTURES: dict[str, Posture] = {
    # Seated: knees come towards the camera, so in a frontal view they sit near hip height.
    "seated": Posture(0.50, (0.15, 0.47), (0.18, 0.07), view_h=1.58, cam_y=0.87, seat="chair"),
    # High stool (double bass): pelvis at 0.8 m keeps the bow hand in reach of the bridge.
    "stool": Posture(0.80, (0.16, 0.74), (0.22, 0.07), view_h=2.02, cam_y=1.02, seat="stool"),
}

SEAT_M: dict[str, float] = {
    "chair_seat_y": 0.46,
    "chair_half": 0.22,
    "chair_back_top": 0.95,
    "chair_back_half": 0.17,
    "stool_seat_half": 0.17,
    "rung_y": 0.30,
    "leg_w": 0.025,
}

# Pose -> body displacement, metres / degrees.
MOTION: dict[str, float] = {
    "torso_sway_m": 0.045,  # shoulders shift sideways at |sway| == 1
    "head_sway_m": 0.065,
    "head_sway_deg": 5.0,
    "shoulder_lift_m": 0.014,  # breathing / accents lift the shoulders
    "head_lift_m": 0.02,
    "rest_drop_m": 0.03,  # wind instruments leave the lips a little when not playing
    "bow_lift_m": 0.025,  # the bow leaves the string in rests
}

# Framing ranges sampled by PlayerStyle.sample.
FRAMING: dict[str, tuple[float, float]] = {
    "scale": (0.87, 1.08),  # zoom; 1 shows Posture.view_h metres vertically
    "offset_x": (-0.07, 0.07),  # fraction of the frame width
    "camera_height": (-0.06, 0.06),  # metres
    "floor_depth": (0.22, 0.5),  # metres: wall-floor junction appears this high above the feet
    "build": (0.92, 1.08),  # body width factor
}

# ---------------------------------------------------------------------------------------------
# Player palettes (RGB).
# ---------------------------------------------------------------------------------------------
SKIN_TONES: tuple[RGB, ...] = (
    (255, 224, 196), (241, 198, 164), (226, 176, 134), (200, 142, 100),
    (165, 110, 74), (124, 80, 52), (90, 58, 40),
)  # fmt: skip
HAIR_COLOURS: tuple[RGB, ...] = (
    (22, 18, 16), (55, 36, 24), (98, 64, 38), (150, 105, 60), (205, 170, 110),
    (140, 58, 30), (150, 150, 150),
)  # fmt: skip
TROUSER_COLOURS: tuple[RGB, ...] = ((28, 28, 32), (35, 40, 70), (80, 80, 86), (150, 130, 95), (60, 45, 35))
FLOOR_COLOURS: tuple[RGB, ...] = ((150, 105, 65), (120, 80, 50), (175, 140, 100), (110, 110, 112), (80, 70, 75))
CHAIR_COLOURS: tuple[RGB, ...] = ((30, 30, 34), (70, 70, 76), (120, 80, 45))
HAIR_STYLES = ("short", "long", "bun", "cropped")

# ---------------------------------------------------------------------------------------------
# Instrument looks (RGB). Per-track tint varies brightness by at most INSTRUMENT_TINT so the
# classes stay separable (wood browns, black, dark brown, silver, golden and copper brass).
# ---------------------------------------------------------------------------------------------
INSTRUMENT_TINT = 0.08


@dataclass(frozen=True)
class Look:
    """Colours of one instrument: main body, accent (fingerboard / keys / trim), dark detail."""

    main: RGB
    accent: RGB
    dark: RGB


LOOKS: dict[str, Look] = {
    "violin": Look((184, 96, 34), (20, 18, 18), (60, 28, 12)),
    "viola": Look((140, 62, 28), (20, 18, 18), (50, 22, 10)),
    "cello": Look((160, 78, 32), (20, 18, 18), (55, 25, 10)),
    "double_bass": Look((112, 58, 28), (22, 20, 20), (40, 20, 10)),
    "flute": Look((206, 210, 220), (150, 155, 168), (90, 92, 100)),
    "clarinet": Look((26, 26, 30), (205, 208, 216), (8, 8, 10)),
    "oboe": Look((78, 42, 28), (215, 215, 222), (35, 18, 12)),
    "bassoon": Look((158, 78, 40), (212, 212, 218), (70, 32, 16)),
    "sax": Look((222, 176, 70), (240, 230, 205), (120, 86, 20)),
    "trumpet": Look((232, 192, 86), (210, 212, 220), (110, 78, 20)),
    "trombone": Look((226, 180, 72), (200, 202, 210), (110, 78, 20)),
    "horn": Look((208, 142, 70), (200, 202, 210), (96, 56, 20)),
    "tuba": Look((196, 158, 62), (205, 207, 215), (90, 66, 18)),
}
BOW_STICK: RGB = (70, 35, 18)
BOW_HAIR: RGB = (235, 230, 210)
BOW_FROG: RGB = (18, 16, 16)
SILVER: RGB = (200, 202, 210)
STRING_LINE: RGB = (215, 210, 190)


# ---------------------------------------------------------------------------------------------
# Bowed strings. The body outline is shared by the violin family: (b, hw) with b the height along
# the body and hw the half-width, both as fractions of the body length (measured on real violins
# and cellos, whose proportions are nearly identical). The double bass has sloped shoulders.
# ---------------------------------------------------------------------------------------------
VIOLIN_OUTLINE: tuple[tuple[float, float], ...] = (
    (0.00, 0.08), (0.02, 0.19), (0.07, 0.26), (0.17, 0.289), (0.28, 0.27), (0.355, 0.235),
    (0.385, 0.18), (0.42, 0.158), (0.50, 0.152), (0.58, 0.162), (0.61, 0.19), (0.64, 0.215),
    (0.72, 0.234), (0.80, 0.236), (0.88, 0.215), (0.95, 0.16), (0.985, 0.09), (1.0, 0.03),
)  # fmt: skip
BASS_OUTLINE: tuple[tuple[float, float], ...] = (
    (0.00, 0.09), (0.02, 0.20), (0.07, 0.28), (0.17, 0.315), (0.28, 0.30), (0.36, 0.255),
    (0.39, 0.20), (0.43, 0.172), (0.50, 0.168), (0.57, 0.178), (0.60, 0.20), (0.63, 0.225),
    (0.70, 0.234), (0.77, 0.22), (0.85, 0.17), (0.93, 0.11), (1.0, 0.05),
)  # fmt: skip


@dataclass(frozen=True)
class StringGeom:
    """Bowed-string geometry. Fractions are of the instrument's length_m unless noted."""

    body_frac: float  # body length / overall length
    outline: tuple[tuple[float, float], ...]
    fore: float  # projection factor along the instrument axis
    bow_m: float  # bow length
    bow_use: tuple[float, float]  # distance frog->contact (m) at pose.bow == 0 and == 1
    board: tuple[float, float]  # fingerboard from .. to (fraction of length)
    board_hw: tuple[float, float]  # fingerboard half-width at its two ends (fraction of length)
    hand_u: tuple[float, float]  # left hand along the neck: lowest and highest position
    endpin_m: float  # visible endpin (floor instruments), metres


STRINGS: dict[str, StringGeom] = {
    "violin": StringGeom(
        body_frac=0.59, outline=VIOLIN_OUTLINE, fore=0.85, bow_m=0.75, bow_use=(0.06, 0.56),
        board=(0.33, 0.83), board_hw=(0.036, 0.022), hand_u=(0.80, 0.63), endpin_m=0.0,
    ),
    "viola": StringGeom(
        body_frac=0.59, outline=VIOLIN_OUTLINE, fore=0.85, bow_m=0.74, bow_use=(0.06, 0.54),
        board=(0.33, 0.83), board_hw=(0.034, 0.021), hand_u=(0.80, 0.63), endpin_m=0.0,
    ),
    "cello": StringGeom(
        body_frac=0.61, outline=VIOLIN_OUTLINE, fore=0.95, bow_m=0.72, bow_use=(0.06, 0.50),
        board=(0.36, 0.84), board_hw=(0.030, 0.018), hand_u=(0.81, 0.62), endpin_m=0.20,
    ),
    "double_bass": StringGeom(
        body_frac=0.60, outline=BASS_OUTLINE, fore=0.97, bow_m=0.70, bow_use=(0.08, 0.44),
        board=(0.36, 0.84), board_hw=(0.028, 0.016), hand_u=(0.81, 0.64), endpin_m=0.10,
    ),
}

# How bowed instruments are held; angles in degrees counter-clockwise from the image x axis.
HOLD_CHIN: dict[str, float] = {
    "origin_dx": 0.075,  # tail of the instrument from the neck base, metres
    "origin_dy": 0.045,
    "angle": 6.0,  # instrument axis: nearly horizontal towards the player's left
    "lift_deg": 7.0,  # scroll rises on loud notes
    "sway_deg": 3.0,
    "bow_angle": 36.0,  # bow frog->tip, rising to the image right across the strings
    "bow_fore": 0.9,  # the bow also points a little towards the camera
    "contact_b": 0.50,  # bow contact point along the body (fraction of body length)
    "head_dx": 0.03,
    "head_tilt": -12.0,  # head leans onto the chin rest (towards the image right)
}
HOLD_FLOOR: dict[str, float] = {
    "cello_floor_x": -0.01,  # endpin on the floor
    "cello_tilt": 9.0,  # degrees from vertical, scroll towards the player's left shoulder
    "bass_floor_x": 0.25,
    "bass_tilt": -3.0,  # the bass leans back against the player
    "sway_deg": 2.0,
    "bow_angle": -5.0,  # nearly horizontal, tip slightly down
    "bass_bow_angle": -12.0,
    "contact_b": 0.50,
    "bass_contact_b": 0.57,
    "knee_spread": 1.75,  # cellists open the knees around the lower bout
}

# ---------------------------------------------------------------------------------------------
# Winds and brass, metres (scaled by length_m / ref_length where a template is used).
# ---------------------------------------------------------------------------------------------
HOLD_FLUTE: dict[str, float] = {
    "angle": 192.0,  # head joint -> foot: to the player's right (image left), drooping
    "lift_deg": -6.0,  # loud notes raise the foot
    "fore": 0.92,
    "head_overhang": 0.06,  # closed end beyond the embouchure
    "hw": 0.012,
    "left_hand_m": 0.17,  # from the closed end
    "right_hand_m": 0.44,
    "head_tilt": 6.0,
}
REED_VERTICAL: dict[str, dict[str, float]] = {
    # hw_top / hw_bottom: tube half-width; bell_hw / bell_len: flare; tilt: degrees from vertical
    "clarinet": {"hw_top": 0.0125, "hw_bottom": 0.0135, "bell_hw": 0.034, "bell_len": 0.10, "tilt": 4.0, "reed": 0.0},
    "oboe": {"hw_top": 0.0065, "hw_bottom": 0.011, "bell_hw": 0.019, "bell_len": 0.08, "tilt": -4.0, "reed": 0.035},
}
HOLD_REED: dict[str, float] = {
    "pitch_deg": 35.0,  # angle to the body: the bell points down and towards the camera
    "lift_deg": 15.0,  # loud notes lift the bell (more foreshortened)
    "left_hand_u": 0.30,
    "right_hand_u": 0.60,
    "hand_dx": 0.04,  # hand centre beside the tube, metres
    "finger_du": 0.055,  # fingertip spacing along the tube, fraction of its projected length
}
HOLD_BASSOON: dict[str, float] = {
    "boot_dx": -0.17,  # boot rests by the player's right hip, on the seat strap
    "boot_dy": -0.04,
    "tilt": 24.0,  # from vertical, bell towards the player's left
    "fore": 0.95,
    "hw": 0.022,
    "wing_hw": 0.019,
    "wing_top_u": 0.47,
    "boot_hw": 0.038,
    "left_hand_u": 0.36,
    "right_hand_u": 0.15,
}
HOLD_SAX: dict[str, float] = {
    "ref_length": 0.80,  # alto sax, the template below is in metres for this length
    "body_dx": -0.13,  # body tube: from the neck joint to the bottom bow
    "body_dy": -0.40,
    "bow_r": 0.055,
    "bell_len": 0.20,
    "lift_deg": 7.0,
}
HOLD_TRUMPET: dict[str, float] = {
    "angle": 192.0,  # forward, seen three-quarter: towards the player's right and slightly down
    "lift_deg": -12.0,  # bell rises on loud notes
    "fore": 0.85,
    "bell_r": 0.062,
    "loop_drop": 0.045,
}
HOLD_TROMBONE: dict[str, float] = {
    "angle": 207.0,
    "lift_deg": -9.0,
    "fore": 0.62,
    "slide_frac": 0.62,  # closed slide length / overall length
    "slide_ext_m": 0.57,  # 7th position extension
    "slide_gap": 0.028,  # half the distance between the two slide tubes
    "bell_r": 0.108,
    "bell_dx": 0.17,  # bell beside the face on the player's left
    "bell_dy": -0.02,
}
TROMBONE_PARTIALS: tuple[int, ...] = (46, 53, 58, 62, 65, 68, 70, 72, 74, 75, 77)
"""Harmonics of the B-flat tenor trombone (MIDI) from the 2nd up; each slide position lowers
the harmonic by one semitone, positions 1..7."""

HOLD_HORN: dict[str, float] = {
    "ref_length": 0.45,
    "coil_dx": -0.12,  # coil centre from the pelvis, metres
    "coil_dy": 0.33,
    "coil_r": 0.15,
    "tube_w": 0.017,
    "bell_len": 0.20,
    "bell_r": 0.15,
    "bell_angle": 235.0,  # bell goes down to the right thigh
}
HOLD_TUBA: dict[str, float] = {
    "ref_length": 0.95,
    "stack_dx": 0.20,  # bell stack on the player's left, beside the head
    "base_dy": 0.03,  # bottom bow rests on the lap
    "stack_hw": 0.07,
    "bell_hw": 0.22,
    "branch_dx": -0.05,
    "branch_hw": 0.05,
    "valves_u": 0.36,  # piston valves at this fraction of the height, in front of the chest
}

# ---------------------------------------------------------------------------------------------
# Music -> pose timing (seconds) and bow strokes (fractions of the bow).
# ---------------------------------------------------------------------------------------------
POSE_TIMING: dict[str, float] = {
    "staccato_stroke_s": 0.12,  # a staccato stroke is over this quickly
    "slide_move_s": 0.07,  # trombone slide travel between positions
    "sway_s": 0.35,  # body follows a change of pitch over this long
    "accent_decay_s": 0.25,
    "relax_s": 0.35,  # in rests the body returns to neutral with this time constant
    "breath_s": 0.3,  # winds inhale (lift) this long before the next note
}
BOW_STROKE: dict[str, float] = {
    "legato": 0.8,  # fraction of the bow used by a legato note at full velocity
    "legato_min": 0.55,
    "staccato": 0.28,
}
ACCENT_SUSTAIN = 0.55  # lift during a held note, relative to the onset accent

BOWED_FAMILIES = ("bowed_chin", "bowed_floor")
WIND_FAMILIES = ("flute_side", "reed_vertical", "reed_bassoon", "reed_sax")


# =============================================================================================
# Public API
# =============================================================================================
@dataclass(frozen=True)
class PlayerStyle:
    """One player's look and camera framing; fixed for a whole track (performance)."""

    skin: RGB
    hair: RGB
    shirt: RGB
    trousers: RGB
    shoes: RGB
    background: RGB  # wall
    floor: RGB
    chair: RGB
    hair_style: str  # one of HAIR_STYLES
    long_sleeves: bool
    build: float  # body width factor
    scale: float  # camera zoom (1 shows the posture's view_h metres)
    offset_x: float  # horizontal position of the player, fraction of the frame width
    camera_height: float  # metres; moves the framing up/down
    floor_depth: float  # metres; how high the wall-floor junction appears above the feet
    instrument_tint: float  # -1..1 brightness variation of the instrument (same model, other specimen)

    @classmethod
    def sample(cls, rng: np.random.Generator) -> PlayerStyle:
        """A random player; deterministic under ``rng``."""

        def pick(palette: Sequence[RGB], jitter: float) -> RGB:
            base = palette[int(rng.integers(len(palette)))]
            return _jitter(base, rng, jitter)

        def hsv(h: tuple[float, float], s: tuple[float, float], v: tuple[float, float]) -> RGB:
            r, g, b = colorsys.hsv_to_rgb(rng.uniform(*h) % 1.0, rng.uniform(*s), rng.uniform(*v))
            return (round(r * 255), round(g * 255), round(b * 255))

        skin = pick(SKIN_TONES, 10)
        hair = pick(HAIR_COLOURS, 12)
        shirt = hsv((0.0, 1.0), (0.2, 0.75), (0.3, 0.85))
        trousers = pick(TROUSER_COLOURS, 12)
        shoes = _jitter((25, 22, 22), rng, 8)
        background = hsv((0.0, 1.0), (0.04, 0.28), (0.55, 0.9))
        floor = pick(FLOOR_COLOURS, 14)
        chair = pick(CHAIR_COLOURS, 10)
        return cls(
            skin=skin,
            hair=hair,
            shirt=shirt,
            trousers=trousers,
            shoes=shoes,
            background=background,
            floor=floor,
            chair=chair,
            hair_style=HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))],
            long_sleeves=bool(rng.random() < 0.6),
            build=float(rng.uniform(*FRAMING["build"])),
            scale=float(rng.uniform(*FRAMING["scale"])),
            offset_x=float(rng.uniform(*FRAMING["offset_x"])),
            camera_height=float(rng.uniform(*FRAMING["camera_height"])),
            floor_depth=float(rng.uniform(*FRAMING["floor_depth"])),
            instrument_tint=float(rng.uniform(-1.0, 1.0)),
        )


@dataclass(frozen=True)
class Pose:
    """The player's state at one instant, derived from the music by ``pose_at``."""

    bow: float = 0.5  # 0 = frog at the string, 1 = tip at the string (bowed instruments)
    slide: float = 0.0  # 0 = 1st position, 1 = 7th position (trombone)
    sway: float = 0.0  # -1 (towards the image left) .. 1 (image right)
    lift: float = 0.0  # 0..1 accents and breathing: shoulders, head and bell rise
    playing: bool = False  # a note is sounding
    bow_dir: int = 0  # +1 down-bow (frog -> tip), -1 up-bow, 0 in rests / non-bowed
    finger: float = 0.5  # 0..1 pitch within the instrument's range: left-hand position, fingers down


def pose_at(notes: Sequence[Note], t: float, instrument: str) -> Pose:
    """The pose of a player of ``instrument`` at time ``t`` (s) while playing ``notes``.

    ``notes`` are the whole track's notes sorted by start (the bow alternates from the first one).
    Bowed: note i is a down-bow when i is even, an up-bow when odd; the bow travels through the
    stroke during the note (a short fast stroke for staccato, a longer one for louder legato).
    Trombone: the slide takes the real position of the pitch (1st..7th). Sway follows the pitch
    contour scaled by dynamics, lift follows accents (velocity) and, for winds, the breath before
    a note. In rests the body relaxes towards neutral. Deterministic.
    """
    spec = INSTRUMENT_SPECS[instrument]
    if not notes:
        return Pose()
    notes = sorted(notes, key=lambda n: n.start)  # linear time when already sorted
    starts = [n.start for n in notes]
    i = bisect.bisect_right(starts, t) - 1
    cur = notes[i] if i >= 0 and t < notes[i].end else None
    nxt = notes[i + 1] if i + 1 < len(notes) else None
    bowed = spec.family in BOWED_FAMILIES
    relax = POSE_TIMING["relax_s"]

    if cur is not None:
        finger = _pitch_frac(cur.pitch, spec)
        if bowed:
            bow, bow_dir = _bow_in_note(cur, i, t), (1 if i % 2 == 0 else -1)
        else:
            bow, bow_dir = 0.5, 0
        slide = _slide_in_note(notes, i, t) if spec.family == "brass_slide" else 0.0
        # Sway glides from the previous note's target to this one's.
        target = _sway_target(cur, spec)
        before = _sway_target(notes[i - 1], spec) if i > 0 else 0.0
        sway = before + (target - before) * _smoothstep((t - cur.start) / POSE_TIMING["sway_s"])
        since = t - cur.start
        accent = ACCENT_SUSTAIN + (1 - ACCENT_SUSTAIN) * math.exp(-since / POSE_TIMING["accent_decay_s"])
        lift = (cur.velocity / 127.0) * accent
        return Pose(bow, slide, _clip(sway, -1, 1), _clip(lift, 0, 1), True, bow_dir, finger)

    # A rest (or before the first note / after the last).
    prev = notes[i] if i >= 0 else None
    if prev is None:
        ref, since = nxt, 1e9  # before the first note: wait in the first note's position
        end_bow = 0.5
    else:
        ref, since = prev, t - prev.end
        end_bow = _bow_in_note(prev, i, prev.end) if bowed else 0.5
    decay = math.exp(-since / relax)
    assert ref is not None
    bow = 0.5 + (end_bow - 0.5) * decay if bowed else 0.5
    slide = _slide_position(ref.pitch) if spec.family == "brass_slide" else 0.0
    sway = _sway_target(prev, spec) * decay if prev is not None else 0.0
    lift = (prev.velocity / 127.0) * ACCENT_SUSTAIN * decay if prev is not None else 0.0
    if spec.family in WIND_FAMILIES or spec.family.startswith("brass"):
        # Inhale before the next entry.
        if nxt is not None and nxt.start - t < POSE_TIMING["breath_s"]:
            lift = max(lift, 0.6 * (1 - (nxt.start - t) / POSE_TIMING["breath_s"]))
    return Pose(bow, slide, _clip(sway, -1, 1), _clip(lift, 0, 1), False, 0, _pitch_frac(ref.pitch, spec))


def render_frame(
    instrument: str, style: PlayerStyle, pose: Pose, size: int = 256
) -> tuple[Image.Image, np.ndarray]:
    """Draw ``style``'s player holding ``instrument`` in ``pose``.

    Returns an RGB image ``size`` x ``size`` and a bool mask ``(size, size)`` of the instrument's
    visible pixels (the instrument and, for bowed strings, its bow and endpin; not the player).
    """
    if instrument not in INSTRUMENT_SPECS:
        raise ValueError(f"unknown instrument {instrument!r}; expected one of {sorted(INSTRUMENT_SPECS)}")
    spec = INSTRUMENT_SPECS[instrument]
    posture = _posture_for(spec)
    big = size * SUPERSAMPLE
    cv = _Canvas(big, _view(style, posture, big), _background(style, posture.seat, big))
    scene = _Scene(instrument, spec, style, pose, posture, _tinted_look(instrument, style.instrument_tint))
    body = _skeleton(scene)
    _draw_seat(cv, scene)
    _draw_body(cv, scene, body)
    FAMILY_DRAWERS[spec.family](cv, scene, body)
    image = cv.img.resize((size, size), Image.LANCZOS)
    mask = np.asarray(cv.mask.resize((size, size), Image.LANCZOS)) > 127
    return image, mask


# =============================================================================================
# Music -> pose helpers
# =============================================================================================
def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def _smoothstep(x: float) -> float:
    x = _clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _pitch_frac(pitch: int, spec: InstrumentSpec) -> float:
    return _clip((pitch - spec.low) / max(1, spec.high - spec.low), 0.0, 1.0)


def _sway_target(note: Note, spec: InstrumentSpec) -> float:
    # Players lean into high notes and loud phrases: pitch sets the side, velocity the amount.
    centre = 0.5 * (spec.low + spec.high)
    half = max(1.0, 0.5 * (spec.high - spec.low))
    return _clip((note.pitch - centre) / half, -1, 1) * (0.35 + 0.65 * note.velocity / 127.0)


def _bow_in_note(note: Note, index: int, t: float) -> float:
    direction = 1 if index % 2 == 0 else -1
    if note.articulation == "staccato":
        length = BOW_STROKE["staccato"]
        progress = (t - note.start) / max(1e-6, min(note.duration, POSE_TIMING["staccato_stroke_s"]))
    else:
        v = note.velocity / 127.0
        length = BOW_STROKE["legato_min"] + (BOW_STROKE["legato"] - BOW_STROKE["legato_min"]) * v
        progress = (t - note.start) / max(1e-6, note.duration)
    progress = _clip(progress, 0.0, 1.0)
    start = 0.5 - direction * length / 2
    return _clip(start + direction * length * progress, 0.0, 1.0)


def _slide_position(pitch: int) -> float:
    """Trombone slide extension 0 (1st position) .. 1 (7th) for ``pitch``: the shortest slide
    among the harmonics that can play it, as players choose."""
    best = None
    for partial in TROMBONE_PARTIALS:
        d = partial - pitch
        if 0 <= d <= 6 and (best is None or d < best):
            best = d
    if best is None:
        best = 6 if pitch < TROMBONE_PARTIALS[0] else 0
    return best / 6.0


def _slide_in_note(notes: Sequence[Note], i: int, t: float) -> float:
    target = _slide_position(notes[i].pitch)
    if i == 0:
        return target
    before = _slide_position(notes[i - 1].pitch)
    return before + (target - before) * _smoothstep((t - notes[i].start) / POSE_TIMING["slide_move_s"])


# =============================================================================================
# Geometry helpers (pure Python: a frame has only a few hundred points)
# =============================================================================================
def _add(p: Point, q: Point) -> Point:
    return (p[0] + q[0], p[1] + q[1])


def _sub(p: Point, q: Point) -> Point:
    return (p[0] - q[0], p[1] - q[1])


def _mul(p: Point, k: float) -> Point:
    return (p[0] * k, p[1] * k)


def _lerp(p: Point, q: Point, k: float) -> Point:
    return (p[0] + (q[0] - p[0]) * k, p[1] + (q[1] - p[1]) * k)


def _dir(deg: float) -> Point:
    r = math.radians(deg)
    return (math.cos(r), math.sin(r))


def _rot(v: Point, deg: float) -> Point:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (v[0] * c - v[1] * s, v[0] * s + v[1] * c)


def _perp(v: Point) -> Point:
    """``v`` turned 90 degrees counter-clockwise."""
    return (-v[1], v[0])


def _norm(v: Point) -> float:
    return math.hypot(v[0], v[1])


def _unit(v: Point) -> Point:
    n = _norm(v) or 1.0
    return (v[0] / n, v[1] / n)


def _box(x: float, half_w: float, y0: float, y1: float) -> list[Point]:
    """Upright rectangle centred on ``x`` from height ``y0`` to ``y1``."""
    return [(x - half_w, y0), (x + half_w, y0), (x + half_w, y1), (x - half_w, y1)]


def _bezier(p0: Point, p1: Point, p2: Point, n: int) -> list[Point]:
    out = []
    for k in range(n + 1):
        s = k / n
        a, b, c = (1 - s) ** 2, 2 * s * (1 - s), s * s
        out.append((a * p0[0] + b * p1[0] + c * p2[0], a * p0[1] + b * p1[1] + c * p2[1]))
    return out


def _arc(c: Point, r: float, a0: float, a1: float, n: int) -> list[Point]:
    return [_add(c, _mul(_dir(a0 + (a1 - a0) * k / n), r)) for k in range(n + 1)]


def _shade(c: RGB, k: float) -> RGB:
    """Darker (k < 1) or lighter (k > 1) version of ``c``."""
    if k <= 1:
        return (int(c[0] * k), int(c[1] * k), int(c[2] * k))
    return tuple(int(v + (255 - v) * (k - 1)) for v in c)  # type: ignore[return-value]


def _jitter(c: RGB, rng: np.random.Generator, amount: float) -> RGB:
    d = rng.uniform(-amount, amount, 3)
    return tuple(int(_clip(v + dv, 0, 255)) for v, dv in zip(c, d, strict=True))  # type: ignore[return-value]


def _tinted_look(instrument: str, tint: float) -> Look:
    k = 1.0 + INSTRUMENT_TINT * tint
    base = LOOKS[instrument]
    return Look(_shade(base.main, k), base.accent, base.dark)


# =============================================================================================
# Canvas: world -> pixels, image and instrument mask drawn in lockstep
# =============================================================================================
@dataclass(frozen=True)
class _View:
    ppm: float  # pixels per metre
    cx: float  # pixel column of world x = 0
    cy: float  # pixel row of world y = cam_y
    cam_y: float


def _view(style: PlayerStyle, posture: Posture, px: int) -> _View:
    ppm = px * style.scale / posture.view_h
    return _View(ppm, px * (0.5 + style.offset_x), px * 0.5, posture.cam_y + style.camera_height)


_UNIT_CIRCLE = [(math.cos(2 * math.pi * k / 28), math.sin(2 * math.pi * k / 28)) for k in range(28)]


class _Canvas:
    """Draws world-space shapes into the image; instrument shapes also set the mask, later
    player shapes clear it, so the mask ends up holding the instrument's visible pixels."""

    def __init__(self, px: int, view: _View, background: Image.Image) -> None:
        self.px = px
        self.v = view
        self.img = background.copy()
        self.draw = ImageDraw.Draw(self.img)
        self.mask = Image.new("L", (px, px), 0)
        self.mdraw = ImageDraw.Draw(self.mask)
        self.outline_px = max(1, round(px / 256))
        self._inst_drawn = False

    def P(self, p: Point) -> tuple[float, float]:
        v = self.v
        return (v.cx + p[0] * v.ppm, v.cy - (p[1] - v.cam_y) * v.ppm)

    def m(self, metres: float) -> float:
        return metres * self.v.ppm

    def _mask(self, inst: bool) -> ImageDraw.ImageDraw | None:
        if inst:
            self._inst_drawn = True
            return self.mdraw
        return self.mdraw if self._inst_drawn else None

    def polygon(self, pts: Sequence[Point], fill: RGB, inst: bool = False, outline: RGB | None = None) -> None:
        xy = [self.P(p) for p in pts]
        if outline is not None:
            self.draw.polygon(xy, fill=fill, outline=outline, width=self.outline_px)
        else:
            self.draw.polygon(xy, fill=fill)
        md = self._mask(inst)
        if md is not None:
            md.polygon(xy, fill=255 if inst else 0, outline=255 if inst else 0)

    def circle(self, c: Point, r: float, fill: RGB, inst: bool = False, outline: RGB | None = None) -> None:
        x, y = self.P(c)
        rp = max(0.5, self.m(r))
        box = (x - rp, y - rp, x + rp, y + rp)
        self.draw.ellipse(box, fill=fill, outline=outline, width=self.outline_px if outline else 0)
        md = self._mask(inst)
        if md is not None:
            md.ellipse(box, fill=255 if inst else 0)

    def ellipse(
        self, c: Point, rx: float, ry: float, fill: RGB, angle: float = 0.0, inst: bool = False,
        outline: RGB | None = None,
    ) -> None:  # fmt: skip
        """Ellipse with half-axes ``rx`` (along ``angle``) and ``ry``."""
        ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        pts = [(c[0] + rx * u * ca - ry * w * sa, c[1] + rx * u * sa + ry * w * ca) for u, w in _UNIT_CIRCLE]
        self.polygon(pts, fill, inst, outline)

    def ring(self, c: Point, r: float, width: float, colour: RGB, inst: bool = False) -> None:
        x, y = self.P(c)
        rp, wp = self.m(r + width / 2), max(1, round(self.m(width)))
        box = (x - rp, y - rp, x + rp, y + rp)
        self.draw.ellipse(box, outline=colour, width=wp)
        md = self._mask(inst)
        if md is not None:
            md.ellipse(box, outline=255 if inst else 0, width=wp)

    def line(self, pts: Sequence[Point], width: float, colour: RGB, inst: bool = False) -> None:
        xy = [self.P(p) for p in pts]
        w = max(1, round(self.m(width)))
        self.draw.line(xy, fill=colour, width=w, joint="curve")
        md = self._mask(inst)
        if md is not None:
            md.line(xy, fill=255 if inst else 0, width=w, joint="curve")

    def capsule(self, a: Point, b: Point, ra: float, rb: float, fill: RGB, inst: bool = False) -> None:
        """A limb: tapered segment with round ends."""
        n = _perp(_unit(_sub(b, a)))
        side = [_add(a, _mul(n, ra)), _add(b, _mul(n, rb)), _sub(b, _mul(n, rb)), _sub(a, _mul(n, ra))]
        self.polygon(side, fill, inst)
        self.circle(a, ra, fill, inst)
        self.circle(b, rb, fill, inst)

    def tube(
        self, pts: Sequence[Point], hw: Sequence[float] | float, fill: RGB, inst: bool = True,
        outline: RGB | None = None, highlight: bool = True,
    ) -> None:  # fmt: skip
        """A tube along the polyline ``pts`` with half-widths ``hw`` (one per point or constant)."""
        hws = [hw] * len(pts) if isinstance(hw, (int, float)) else list(hw)
        left, right = _offsets(pts, hws)
        self.polygon(left + right[::-1], fill, inst, outline)
        if highlight and len(pts) >= 2:
            # A specular stripe reads as a round, shiny tube.
            hl, _ = _offsets(pts, [w * 0.45 for w in hws])
            self.line(hl, min(hws) * 0.5, _shade(fill, 1.35), inst)


def _offsets(pts: Sequence[Point], hws: Sequence[float]) -> tuple[list[Point], list[Point]]:
    left, right = [], []
    n = len(pts)
    for k in range(n):
        a = pts[max(0, k - 1)]
        b = pts[min(n - 1, k + 1)]
        nrm = _perp(_unit(_sub(b, a)))
        left.append(_add(pts[k], _mul(nrm, hws[k])))
        right.append(_sub(pts[k], _mul(nrm, hws[k])))
    return left, right


# =============================================================================================
# Scene, background, body
# =============================================================================================
@dataclass(frozen=True)
class _Scene:
    name: str
    spec: InstrumentSpec
    style: PlayerStyle
    pose: Pose
    posture: Posture
    look: Look


def _posture_for(spec: InstrumentSpec) -> Posture:
    # A floor instrument taller than a seated player's head (the double bass) needs a high stool.
    seated = POSTURES["seated"]
    head_top = seated.pelvis_y + BODY["head_above_pelvis"] + BODY["head_ry"]
    if spec.family == "bowed_floor" and spec.length_m + STRINGS[spec.name].endpin_m > head_top + 0.2:
        return POSTURES["stool"]
    return seated


@functools.lru_cache(maxsize=16)  # one style per track: a few entries suffice
def _background(style: PlayerStyle, seat: str, px: int) -> Image.Image:
    posture = POSTURES["stool" if seat == "stool" else "seated"]
    v = _view(style, posture, px)
    floor_row = v.cy + v.cam_y * v.ppm  # pixel row of world y = 0
    junction = int(_clip(floor_row - style.floor_depth * v.ppm, 0, px))
    rows = np.arange(px, dtype=np.float32)[:, None]
    wall = np.asarray(style.background, np.float32)
    floor = np.asarray(style.floor, np.float32)
    # Walls darken towards the top (light from the front and below the ceiling).
    wall_rows = wall * (0.82 + 0.18 * np.clip(rows / max(1, junction), 0, 1))
    floor_rows = floor * (0.8 + 0.25 * np.clip((rows - junction) / max(1, px - junction), 0, 1))
    col = np.where(rows < junction, wall_rows, floor_rows)
    arr = np.broadcast_to(col[:, None, :], (px, px, 3)).clip(0, 255).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(arr), "RGB")
    d = ImageDraw.Draw(img)
    board = max(2, int(0.07 * v.ppm))
    d.rectangle((0, junction - board, px, junction), fill=_shade(style.background, 0.7))
    # Floor boards recede towards the junction.
    gap = 0.12 * v.ppm
    y = junction + gap * 0.5
    while y < px:
        d.line((0, y, px, y), fill=_shade(style.floor, 0.72), width=max(1, px // 256))
        gap *= 1.45
        y += gap
    return img


def _skeleton(sc: _Scene) -> dict[str, Point]:
    """Joint positions (world metres) for this posture, build, sway and lift."""
    pose, st, P = sc.pose, sc.style, sc.posture
    hold_tilt, hold_dx = _head_hold(sc.spec.family)
    lean = pose.sway * MOTION["torso_sway_m"]
    up = pose.lift * MOTION["shoulder_lift_m"]
    sh_y = P.pelvis_y + BODY["shoulder_above_pelvis"] + up
    half = BODY["shoulder_half"] * st.build
    spread = HOLD_FLOOR["knee_spread"] if sc.spec.family == "bowed_floor" and P.seat == "chair" else 1.0
    head = (
        lean + pose.sway * (MOTION["head_sway_m"] - MOTION["torso_sway_m"]) + hold_dx,
        P.pelvis_y + BODY["head_above_pelvis"] + up + pose.lift * MOTION["head_lift_m"],
    )
    tilt = hold_tilt - pose.sway * MOTION["head_sway_deg"]
    body = {
        "pelvis": (0.0, P.pelvis_y),
        "hip_r": (-BODY["hip_half"] * st.build, P.pelvis_y),
        "hip_l": (BODY["hip_half"] * st.build, P.pelvis_y),
        "sh_r": (lean - half, sh_y),
        "sh_l": (lean + half, sh_y),
        "neck": (lean, sh_y + 0.02),
        "head": head,
        "tilt": (tilt, 0.0),
        "mouth": _add(head, _rot((0.0, -BODY["mouth_below_head"]), tilt)),
    }
    if P.seat == "stool":
        # Right foot on the floor, left foot on the stool's rung.
        body.update(
            knee_r=(-P.knee[0], P.knee[1]), ankle_r=(-P.ankle[0], P.ankle[1]),
            knee_l=(P.knee[0], P.knee[1] - 0.04), ankle_l=(P.knee[0] + 0.02, SEAT_M["rung_y"] + 0.04),
        )  # fmt: skip
    else:
        body.update(
            knee_r=(-P.knee[0] * spread, P.knee[1]), ankle_r=(-P.ankle[0] * spread, P.ankle[1]),
            knee_l=(P.knee[0] * spread, P.knee[1]), ankle_l=(P.ankle[0] * spread, P.ankle[1]),
        )  # fmt: skip
    return body


def _head_hold(family: str) -> tuple[float, float]:
    """(tilt degrees counter-clockwise, sideways shift m) of the head for this way of playing."""
    if family == "bowed_chin":
        return HOLD_CHIN["head_tilt"], HOLD_CHIN["head_dx"]
    if family == "flute_side":
        return HOLD_FLUTE["head_tilt"], -0.01
    return 0.0, 0.0


def _draw_seat(cv: _Canvas, sc: _Scene) -> None:
    c, w = sc.style.chair, SEAT_M["leg_w"]
    dark = _shade(c, 0.75)
    if sc.posture.seat == "chair":
        y, h = SEAT_M["chair_seat_y"], SEAT_M["chair_half"]
        bh = SEAT_M["chair_back_half"]
        cv.polygon([(-bh, y), (bh, y), (bh, SEAT_M["chair_back_top"]), (-bh, SEAT_M["chair_back_top"])], dark)
        for x in (-h + w, h - w):
            cv.line([(x, y), (x * 1.05, 0.0)], w, dark)
        cv.polygon([(-h, y - 0.04), (h, y - 0.04), (h, y), (-h, y)], c)
    else:
        y, h = sc.posture.pelvis_y - 0.04, SEAT_M["stool_seat_half"]
        for x in (-h * 0.8, h * 0.8):
            cv.line([(x, y), (x * 1.6, 0.0)], w, dark)
        cv.line([(-h * 1.2, SEAT_M["rung_y"]), (h * 1.2, SEAT_M["rung_y"])], w * 0.8, dark)
        cv.polygon([(-h, y - 0.04), (h, y - 0.04), (h, y), (-h, y)], c)


def _draw_body(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    st = sc.style
    trousers, shoes = st.trousers, st.shoes
    # Legs: shins first, thighs (nearer the camera) over them.
    for side in ("r", "l"):
        knee, ankle = b[f"knee_{side}"], b[f"ankle_{side}"]
        cv.capsule(knee, ankle, BODY["shin_r"], BODY["shin_r"] * 0.85, trousers)
        sx = -1 if side == "r" else 1
        cv.ellipse((ankle[0] + 0.01 * sx, ankle[1] - 0.03), 0.055, 0.035, shoes)
    for side in ("r", "l"):
        cv.capsule(b[f"hip_{side}"], b[f"knee_{side}"], BODY["thigh_r"], BODY["thigh_r"] * 0.95, _shade(trousers, 1.08))
    # Long hair falls behind the shoulders.
    head, tilt = b["head"], b["tilt"][0]
    if st.hair_style == "long":
        rx, ry = BODY["head_rx"], BODY["head_ry"]
        pts = [(-rx * 1.3, -ry * 1.5), (rx * 1.3, -ry * 1.5), (rx * 1.25, 0.0)] + [
            (rx * 1.25 * math.cos(a), ry * 1.1 * math.sin(a) + 0.01) for a in np.linspace(0, math.pi, 9)
        ] + [(-rx * 1.25, 0.0)]  # fmt: skip
        cv.polygon([_add(head, _rot(p, tilt)) for p in pts], st.hair)
    # Torso.
    shr, shl = b["sh_r"], b["sh_l"]
    hr, hl = b["hip_r"], b["hip_l"]
    waist_y = 0.45 * shr[1] + 0.55 * hr[1]
    wx = BODY["waist_half"] * st.build
    lean = b["neck"][0]
    torso = [
        (hr[0] - 0.01, hr[1] - 0.03), (hl[0] + 0.01, hl[1] - 0.03), (lean * 0.5 + wx, waist_y),
        (shl[0] + 0.03, shl[1] - 0.06), (shl[0] - 0.02, shl[1] + 0.035), (lean + 0.05, shl[1] + 0.05),
        (lean - 0.05, shr[1] + 0.05), (shr[0] + 0.02, shr[1] + 0.035), (shr[0] - 0.03, shr[1] - 0.06),
        (lean * 0.5 - wx, waist_y),
    ]  # fmt: skip
    cv.polygon(torso, st.shirt)
    # Side shading gives the torso volume.
    side = [(lean * 0.5 + wx * 0.55, waist_y), torso[2], torso[3], torso[4], (shl[0] - 0.07, shl[1])]
    cv.polygon(side, _shade(st.shirt, 0.85))
    cv.capsule(b["neck"], _lerp(b["neck"], head, 0.6), BODY["neck_r"], BODY["neck_r"], _shade(st.skin, 0.9))
    collar = [(lean - 0.045, shl[1] + 0.045), (lean + 0.045, shl[1] + 0.045), (lean, shl[1] - 0.02)]
    cv.polygon(collar, _shade(st.skin, 0.9))
    _draw_head(cv, st, head, tilt)


def _draw_head(cv: _Canvas, st: PlayerStyle, head: Point, tilt: float) -> None:
    rx, ry = BODY["head_rx"], BODY["head_ry"]

    def at(x: float, y: float) -> Point:
        return _add(head, _rot((x, y), tilt))

    cv.ellipse(at(-rx * 0.98, 0.0), 0.016, 0.026, _shade(st.skin, 0.92), tilt)  # ears
    cv.ellipse(at(rx * 0.98, 0.0), 0.016, 0.026, _shade(st.skin, 0.92), tilt)
    cv.ellipse(head, rx, ry, st.skin, tilt)
    # Hair cap over the crown, with a fringe line above the eyes; "cropped" is a thin cap.
    thin = 0.25 if st.hair_style == "cropped" else 0.0
    arc = np.linspace(-0.15, math.pi + 0.15, 12)
    cap = [(rx * 1.08 * math.cos(a), ry * 0.02 + ry * 1.07 * math.sin(a)) for a in arc]
    fringe = [(rx * 0.55, ry * (0.6 + thin)), (-rx * 0.55, ry * (0.55 + thin))]
    cv.polygon([at(*p) for p in cap[::-1] + fringe], st.hair)
    if st.hair_style == "bun":
        cv.circle(at(0.0, ry * 1.12), 0.045, _shade(st.hair, 0.9))
    eye = _shade(st.skin, 0.25)
    for sx in (-1, 1):
        cv.circle(at(sx * BODY["eye_dx"], BODY["eye_dy"]), BODY["eye_r"], eye)
    cv.ellipse(at(0.0, -BODY["mouth_below_head"]), 0.018, 0.006, _shade(st.skin, 0.62), tilt)


def _ik(shoulder: Point, wrist: Point, hint: Point) -> Point:
    """Elbow (projected) for an arm reaching ``wrist``, bending towards ``hint``.

    A wrist close to the shoulder in the picture is really in front of the body, so the arm is
    solved in 3-D with the wrist pushed towards the camera until it sits at a comfortable reach;
    the elbow bends towards ``hint`` (sideways/down, never towards the camera) and is projected
    back. Out-of-reach targets stretch the arm a little rather than leave the hand off the
    instrument.
    """
    a, b = BODY["upper_arm"], BODY["forearm"]
    dx, dy = wrist[0] - shoulder[0], wrist[1] - shoulder[1]
    d2 = math.hypot(dx, dy)
    comfort = BODY["reach_comfort"] * (a + b)
    dz = math.sqrt(comfort * comfort - d2 * d2) if d2 < comfort else 0.0
    dist = math.sqrt(d2 * d2 + dz * dz)
    if dist > (a + b) * 0.999:
        k = dist / ((a + b) * 0.999)
        a, b = a * k, b * k
    u = (dx / dist, dy / dist, dz / dist)
    cos_t = _clip((a * a + dist * dist - b * b) / (2 * a * dist), -1.0, 1.0)
    sin_t = math.sqrt(1.0 - cos_t * cos_t)
    # Pole: the hint direction made perpendicular to the shoulder->wrist line.
    hx, hy = _unit(hint)
    dot = hx * u[0] + hy * u[1]
    w = (hx - dot * u[0], hy - dot * u[1], -dot * u[2])
    wn = math.sqrt(w[0] ** 2 + w[1] ** 2 + w[2] ** 2)
    if wn < 1e-6:  # hint along the arm: any perpendicular will do
        w, wn = (-u[1], u[0], 0.0), max(1e-6, math.hypot(u[0], u[1]))
    return (
        shoulder[0] + a * (cos_t * u[0] + sin_t * w[0] / wn),
        shoulder[1] + a * (cos_t * u[1] + sin_t * w[1] / wn),
    )


def _arm(cv: _Canvas, st: PlayerStyle, shoulder: Point, wrist: Point, hint: Point) -> None:
    elbow = _ik(shoulder, wrist, hint)
    sleeve = st.shirt if st.long_sleeves else st.skin
    cv.capsule(shoulder, elbow, BODY["upper_arm_r"], BODY["forearm_r"] * 1.1, st.shirt)
    cv.capsule(elbow, wrist, BODY["forearm_r"] * 1.05, BODY["forearm_r"] * 0.8, _shade(sleeve, 0.95))


def _hand(cv: _Canvas, st: PlayerStyle, p: Point, angle: float = 0.0, fingers: int = 0, along: Point = (0, -1)) -> None:
    """A hand at ``p``; ``fingers`` fingertips placed along direction ``along``."""
    cv.ellipse(p, BODY["hand_r"] * 1.1, BODY["hand_r"] * 0.85, st.skin, angle)
    tip = _shade(st.skin, 0.9)
    for k in range(fingers):
        cv.circle(_add(p, _mul(along, 0.03 + 0.022 * k)), 0.013, tip)


def _fingers_down(pose: Pose) -> int:
    # Lower notes close more holes: 1..4 fingertips per hand.
    return 1 + round((1.0 - pose.finger) * 3)


def _rest_drop(pose: Pose) -> float:
    return 0.0 if pose.playing else MOTION["rest_drop_m"]


# =============================================================================================
# Instrument families
# =============================================================================================
class _Frame:
    """Instrument-local coordinates: ``u`` along the axis (fraction of the projected length),
    ``v`` across it in metres (positive to the axis' left)."""

    def __init__(self, origin: Point, axis: Point, length: float) -> None:
        self.o, self.a, self.n, self.L = origin, axis, _perp(axis), length

    def __call__(self, u: float, v: float = 0.0) -> Point:
        return (
            self.o[0] + self.a[0] * u * self.L + self.n[0] * v,
            self.o[1] + self.a[1] * u * self.L + self.n[1] * v,
        )


def _violin_family_body(cv: _Canvas, sc: _Scene, f: _Frame, g: StringGeom) -> None:
    """Body, fingerboard, pegbox, scroll, f-holes, bridge and tailpiece of a violin-family
    instrument in frame ``f`` (u = 0 at the bottom of the body)."""
    look, L = sc.look, sc.spec.length_m
    body_m = g.body_frac * L
    bf = g.body_frac
    right = [f(b * bf, hw * body_m) for b, hw in g.outline]
    left = [f(b * bf, -hw * body_m) for b, hw in g.outline]
    cv.polygon(right + left[::-1], look.main, inst=True, outline=look.dark)
    # Edge shading: the back and ribs show as a darker rim on one side.
    inner = [f(b * bf, hw * body_m * 0.8) for b, hw in g.outline]
    cv.line(inner[2:-2], 0.008 * L, _shade(look.main, 1.18), inst=True)
    # Neck and pegbox (wood), scroll.
    cv.tube([f(bf, 0), f(0.93, 0)], 0.021 * L, _shade(look.main, 0.85), outline=look.dark, highlight=False)
    cv.circle(f(0.965, 0), 0.034 * L, _shade(look.main, 0.8), inst=True, outline=look.dark)
    cv.circle(f(0.965, 0), 0.014 * L, look.dark, inst=True)
    for u in (0.86, 0.9):  # pegs
        cv.line([f(u, -0.04 * L), f(u, 0.04 * L)], 0.008 * L, look.accent, inst=True)
    # Fingerboard (ebony), tailpiece, f-holes, bridge, strings.
    b0, b1 = g.board
    cv.polygon(
        [f(b0, g.board_hw[0] * L), f(b1, g.board_hw[1] * L), f(b1, -g.board_hw[1] * L), f(b0, -g.board_hw[0] * L)],
        look.accent, inst=True,
    )  # fmt: skip
    tail = [f(0.01, 0.025 * L), f(0.19 * bf, 0.045 * L), f(0.19 * bf, -0.045 * L), f(0.01, -0.025 * L)]
    cv.polygon(tail, look.accent, inst=True)
    for s in (-1, 1):
        cv.line(
            [f(0.33 * bf, s * 0.105 * body_m), f(0.42 * bf, s * 0.13 * body_m), f(0.52 * bf, s * 0.1 * body_m)],
            0.006 * L, look.dark, inst=True,
        )  # fmt: skip
    bridge = 0.42 * bf
    cv.line([f(bridge, 0.1 * body_m), f(bridge, -0.1 * body_m)], 0.008 * L, (225, 190, 140), inst=True)
    for s in (-1.5, -0.5, 0.5, 1.5):
        cv.line([f(0.19 * bf, s * 0.012 * L), f(b1 + 0.01, s * 0.007 * L)], 0.0025 * L, STRING_LINE, inst=True)


def _draw_bow(cv: _Canvas, frog: Point, d: Point, length: float, toward_string: Point) -> None:
    tip = _add(frog, _mul(d, length))
    off = _mul(toward_string, 0.012)
    cv.line([_add(frog, off), _add(tip, off)], 0.006, BOW_HAIR, inst=True)
    cv.line([frog, tip], 0.008, BOW_STICK, inst=True)
    back, front = _add(frog, _mul(d, -0.02)), _add(frog, _mul(d, 0.045))
    cv.polygon([back, front, _add(front, off), _add(back, off)], BOW_FROG, inst=True)
    cv.circle(tip, 0.008, (230, 225, 215), inst=True)


def _draw_bowed_chin(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    g, pose, st, L = STRINGS[sc.name], sc.pose, sc.style, sc.spec.length_m
    H = HOLD_CHIN
    origin = _add(b["neck"], (H["origin_dx"], H["origin_dy"]))
    angle = H["angle"] + pose.lift * H["lift_deg"] + pose.sway * H["sway_deg"]
    f = _Frame(origin, _dir(angle), L * g.fore)
    # Left hand on the neck: higher notes move it towards the body.
    hand_u = g.hand_u[0] + (g.hand_u[1] - g.hand_u[0]) * pose.finger
    grip = f(hand_u, -0.03)
    _arm(cv, st, b["sh_l"], _add(grip, (0.0, -0.03)), (0.2, -1.0))
    _violin_family_body(cv, sc, f, g)
    _hand(cv, st, grip, angle + 90, 0)
    for k in range(_fingers_down(pose)):
        cv.circle(f(hand_u - 0.03 - 0.035 * k, 0.006), 0.011, st.skin)
    # Bow: the contact point stays on the strings; the hand moves along the bow's direction.
    d = _dir(H["bow_angle"] + angle - H["angle"])
    toward = _perp(d) if _perp(d)[0] > 0 else _mul(_perp(d), -1)
    contact = f(H["contact_b"] * g.body_frac, 0.0)
    if not pose.playing:
        contact = _add(contact, _mul(f.n, MOTION["bow_lift_m"]))
    s = g.bow_use[0] + (g.bow_use[1] - g.bow_use[0]) * pose.bow
    frog = _sub(contact, _mul(d, s * H["bow_fore"]))
    _draw_bow(cv, frog, d, g.bow_m * H["bow_fore"], _mul(toward, -1))
    _arm(cv, st, b["sh_r"], _add(frog, (-0.02, -0.025)), (-0.6, -1.0))
    _hand(cv, st, _add(frog, (-0.005, -0.01)), H["bow_angle"], 0)


def _draw_bowed_floor(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    g, pose, st, L = STRINGS[sc.name], sc.pose, sc.style, sc.spec.length_m
    H = HOLD_FLOOR
    bass = sc.posture.seat == "stool"
    floor_x = H["bass_floor_x"] if bass else H["cello_floor_x"]
    tilt = (H["bass_tilt"] if bass else H["cello_tilt"]) + pose.sway * H["sway_deg"]
    axis = _dir(90.0 - tilt)
    foot = (floor_x, 0.0)
    origin = _add(foot, _mul(axis, g.endpin_m))
    f = _Frame(origin, axis, L * g.fore)
    hand_u = g.hand_u[0] + (g.hand_u[1] - g.hand_u[0]) * pose.finger
    grip = f(hand_u, -0.035)
    _arm(cv, st, b["sh_l"], _add(grip, (0.04, -0.02)), (0.7, -0.7))
    cv.line([foot, origin], 0.012, SILVER, inst=True)
    _violin_family_body(cv, sc, f, g)
    _hand(cv, st, grip, 90 - tilt, 0)
    for k in range(_fingers_down(pose)):
        cv.circle(f(hand_u - 0.025 - 0.03 * k, 0.004), 0.012, st.skin)
    d = _dir(H["bass_bow_angle"] if bass else H["bow_angle"])
    contact = f((H["bass_contact_b"] if bass else H["contact_b"]) * g.body_frac, 0.0)
    if not pose.playing:
        contact = _add(contact, (0.0, MOTION["bow_lift_m"]))
    s = g.bow_use[0] + (g.bow_use[1] - g.bow_use[0]) * pose.bow
    frog = _sub(contact, _mul(d, s))
    _draw_bow(cv, frog, d, g.bow_m, (0.0, -1.0))
    _arm(cv, st, b["sh_r"], _add(frog, (-0.015, 0.02)), (-1.0, -0.3))
    _hand(cv, st, _add(frog, (0.0, 0.01)), 0, 0)


def _draw_flute(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    pose, st, look, H = sc.pose, sc.style, sc.look, HOLD_FLUTE
    a = _dir(H["angle"] + pose.lift * H["lift_deg"])
    emb = _add(b["mouth"], (0.0, -0.016 - _rest_drop(pose)))
    head_end = _sub(emb, _mul(a, H["head_overhang"]))
    f = _Frame(head_end, a, 1.0)  # u in projected metres
    Lp = sc.spec.length_m * H["fore"]
    lh, rh = f(H["left_hand_m"], -0.02), f(H["right_hand_m"], -0.02)
    _arm(cv, st, b["sh_l"], _add(lh, (0.02, -0.03)), (0.3, -1.0))
    _arm(cv, st, b["sh_r"], _add(rh, (-0.01, -0.03)), (-1.0, -0.3))
    hw = H["hw"]
    cv.tube([f(0), f(0.25), f(Lp)], [hw * 0.9, hw, hw * 0.95], look.main, outline=look.dark)
    cv.line([f(0.24, -hw), f(0.24, hw)], 0.004, look.accent, inst=True)  # joint rings
    cv.line([f(Lp - 0.1, -hw), f(Lp - 0.1, hw)], 0.004, look.accent, inst=True)
    cv.ellipse(f(H["head_overhang"], 0.004), 0.018, 0.009, look.accent, H["angle"], inst=True)  # lip plate
    cv.ellipse(f(H["head_overhang"], 0.004), 0.006, 0.003, look.dark, H["angle"], inst=True)
    for k in range(10):  # key cups
        u = 0.29 + k * (Lp - 0.34) / 9
        cv.circle(f(u, 0.002), 0.0085, _shade(look.main, 1.1), inst=True, outline=look.accent)
    n = _fingers_down(pose)
    _hand(cv, st, lh, H["angle"], 0)
    _hand(cv, st, rh, H["angle"], 0)
    for k in range(n):
        cv.circle(f(H["left_hand_m"] + 0.035 + 0.025 * k, 0.006), 0.011, st.skin)
        cv.circle(f(H["right_hand_m"] + 0.035 + 0.025 * k, 0.006), 0.011, st.skin)


def _draw_reed_vertical(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    pose, st, look = sc.pose, sc.style, sc.look
    G, H = REED_VERTICAL[sc.name], HOLD_REED
    pitch = H["pitch_deg"] + pose.lift * H["lift_deg"]
    fore = math.cos(math.radians(pitch))
    a = _dir(-90.0 + G["tilt"] - pose.sway * 3.0)
    top = _add(b["mouth"], (0.0, -0.004 - _rest_drop(pose)))
    Lp = sc.spec.length_m * fore
    f = _Frame(top, a, Lp)  # u: 0 at the reed / mouthpiece tip, 1 at the bell rim
    lh, rh = f(H["left_hand_u"]), f(H["right_hand_u"])
    _arm(cv, st, b["sh_l"], _add(lh, (0.045, -0.02)), (1.0, -0.6))
    _arm(cv, st, b["sh_r"], _add(rh, (-0.045, -0.02)), (-1.0, -0.4))
    bell_u = 1.0 - G["bell_len"] * fore / Lp
    if sc.name == "clarinet":
        # Mouthpiece, silver ligature, barrel, joints with silver rings, flared bell.
        cv.tube([f(0), f(0.1)], [0.006, G["hw_top"]], look.main, outline=look.dark, highlight=False)
        cv.line([f(0.05, -0.011), f(0.05, 0.011)], 0.007, look.accent, inst=True)
        cv.tube([f(0.1), f(0.17)], G["hw_top"] * 1.25, look.main, outline=look.dark)
        cv.tube([f(0.17), f(bell_u)], [G["hw_top"], G["hw_bottom"]], look.main, outline=look.dark)
        flare = [G["hw_bottom"], G["bell_hw"] * 0.6, G["bell_hw"]]
        cv.tube([f(bell_u), f(0.94), f(1.0)], flare, look.main, outline=look.dark)
        for u in (0.1, 0.17, 0.52, bell_u):
            cv.line([f(u, -G["hw_top"] * 1.3), f(u, G["hw_top"] * 1.3)], 0.005, look.accent, inst=True)
        for k in range(6):
            cv.circle(f(0.24 + k * 0.1, 0.0), 0.0065, look.accent, inst=True)
        rim_deg = math.degrees(math.atan2(a[1], a[0])) + 90
        cv.ellipse(f(1.0), G["bell_hw"], G["bell_hw"] * 0.35, look.dark, rim_deg, inst=True)
    else:
        # Oboe: tan reed on a thin conical brown body, silver key-work rods, narrow bell.
        cv.tube([f(0), f(0.06)], [0.003, 0.0045], (205, 170, 110), highlight=False)
        cv.tube([f(0.06), f(bell_u)], [G["hw_top"], G["hw_bottom"]], look.main, outline=look.dark)
        bulb = [G["hw_bottom"], G["bell_hw"], G["bell_hw"] * 0.9]  # the oboe's bell closes in at the rim
        cv.tube([f(bell_u), f(0.96), f(1.0)], bulb, look.main, outline=look.dark)
        cv.line([f(0.96, -G["bell_hw"]), f(0.96, G["bell_hw"])], 0.005, look.accent, inst=True)
        for s in (-0.55, 0.55):
            cv.line([f(0.12, s * G["hw_top"]), f(bell_u - 0.02, s * G["hw_bottom"])], 0.0035, look.accent, inst=True)
        for k in range(9):
            cv.circle(f(0.15 + k * 0.075, 0.0), 0.0055, look.accent, inst=True)
        for u in (0.1, 0.5):
            cv.line([f(u, -0.013), f(u, 0.013)], 0.005, look.accent, inst=True)
    # Hands grip from the sides so the tube stays visible; fingertips close holes on it.
    ang = math.degrees(math.atan2(a[1], a[0]))
    tip = _shade(st.skin, 0.9)
    for hand_u, side in ((H["left_hand_u"], 1.0), (H["right_hand_u"], -1.0)):
        _hand(cv, st, _add(f(hand_u), (side * H["hand_dx"], 0.0)), ang, 0)
        for k in range(_fingers_down(pose)):
            cv.circle(f(hand_u - 0.05 + H["finger_du"] * k), 0.0095, tip)


def _draw_bassoon(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    pose, st, look, H = sc.pose, sc.style, sc.look, HOLD_BASSOON
    drop = _rest_drop(pose)
    a = _dir(90.0 - H["tilt"] - pose.lift * 4.0 - pose.sway * 2.0)
    boot = _add(b["hip_r"], (H["boot_dx"] - b["hip_r"][0] + b["neck"][0] * 0.5, H["boot_dy"] - drop))
    f = _Frame(boot, a, sc.spec.length_m * H["fore"])
    # Wing joint runs beside the long joint on the player's side; the bocal leaves from its top.
    side = 0.036
    lh, rh = f(H["left_hand_u"], side), f(H["right_hand_u"], side)
    _arm(cv, st, b["sh_l"], _add(lh, (0.04, -0.02)), (1.0, -0.6))
    _arm(cv, st, b["sh_r"], _add(rh, (-0.04, -0.02)), (-1.0, -0.2))
    cv.tube([f(0.0, -0.01), f(1.0, -0.01)], [H["hw"], H["hw"] * 1.15], look.main, outline=look.dark)
    cv.tube([f(0.02, side), f(H["wing_top_u"], side)], H["wing_hw"], _shade(look.main, 0.9), outline=look.dark)
    cv.tube([f(-0.02, 0.013), f(0.16, 0.013)], H["boot_hw"], _shade(look.main, 0.85), outline=look.dark)
    cv.tube([f(-0.045, 0.013), f(-0.02, 0.013)], H["boot_hw"] * 0.95, look.dark, highlight=False)
    ivory = (235, 228, 210)  # the bell's ivory-coloured ring
    cv.line([f(0.96, -0.01 - H["hw"] * 1.2), f(0.96, -0.01 + H["hw"] * 1.2)], 0.012, ivory, inst=True)
    for u in (0.16, 0.47, 0.72):
        cv.line([f(u, -0.01 - H["hw"]), f(u, -0.01 + H["hw"])], 0.005, look.accent, inst=True)
    for k in range(5):
        cv.circle(f(0.2 + 0.05 * k, side), 0.006, look.accent, inst=True)
    wing_top = f(H["wing_top_u"], side)
    mouth = b["mouth"]
    ctrl = (wing_top[0] - 0.06, mouth[1] - 0.01 - drop)
    bocal = _bezier(wing_top, ctrl, _add(mouth, (0.0, -drop)), 10)
    cv.tube(bocal, [0.007 - 0.003 * k / 10 for k in range(11)], SILVER, outline=_shade(SILVER, 0.6), highlight=False)
    n = _fingers_down(pose)
    along = _mul(a, -1)
    _hand(cv, st, lh, 90 - H["tilt"], n, along)
    _hand(cv, st, rh, 90 - H["tilt"], n, along)


def _draw_sax(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    pose, st, look, H = sc.pose, sc.style, sc.look, HOLD_SAX
    k = sc.spec.length_m / H["ref_length"]
    mouth = _add(b["mouth"], (0.0, -0.004 - _rest_drop(pose)))
    turn = pose.lift * H["lift_deg"] - pose.sway * 2.0

    def T(p: Point) -> Point:  # template (metres from the mouth) -> world, rotated by lift
        return _add(mouth, _rot(_mul(p, k), turn))

    m1 = (-0.004, -0.055)
    neck = _bezier(m1, (-0.006, -0.11), (-0.05, -0.135), 6)
    top = neck[-1]
    bottom = (top[0] + H["body_dx"], top[1] + H["body_dy"])
    a = _unit(_sub(bottom, top))
    n = _perp(a) if _perp(a)[0] > 0 else _mul(_perp(a), -1)  # across the body, to the image right
    r = H["bow_r"]
    centre = _add(bottom, _mul(n, r))
    bow_start = math.degrees(math.atan2(-n[1], -n[0]))
    bow = _arc(centre, r, bow_start, bow_start + 180 if n[0] > 0 else bow_start - 180, 8)
    bell_base = bow[-1]
    bell_top = _add(bell_base, _mul(a, -H["bell_len"]))
    body_pts = [top, _lerp(top, bottom, 0.5), bottom]
    lh = _lerp(top, bottom, 0.3)
    rh = _lerp(top, bottom, 0.72)
    _arm(cv, st, b["sh_l"], _add(T(lh), (0.04, -0.02)), (1.0, -0.6))
    _arm(cv, st, b["sh_r"], _add(T(rh), (-0.05, -0.02)), (-1.0, -0.2))
    gold, dark = look.main, look.dark
    cv.tube([T(p) for p in [(0, 0)] + [m1]], [0.007, 0.01], (25, 25, 25), highlight=False)
    cv.tube([T(p) for p in neck], [0.009 + 0.003 * i / 6 for i in range(7)], gold, outline=dark)
    cv.tube([T(p) for p in body_pts + bow[1:]], [0.016, 0.026, 0.034] + [0.036] * 8, gold, outline=dark)
    cv.tube([T(bell_base), T(_lerp(bell_base, bell_top, 0.6)), T(bell_top)], [0.036, 0.042, 0.066], gold, outline=dark)
    axis_deg = math.degrees(math.atan2(a[1], a[0])) + turn
    cv.ellipse(T(bell_top), 0.066 * k, 0.022 * k, _shade(gold, 1.15), axis_deg + 90, inst=True, outline=dark)
    cv.ellipse(T(_add(bell_top, _mul(a, 0.004))), 0.052 * k, 0.014 * k, dark, axis_deg + 90, inst=True)
    for i in range(6):  # pearl key touches
        cv.circle(T(_lerp(top, bottom, 0.18 + 0.13 * i)), 0.008, look.accent, inst=True, outline=dark)
    guard = [T(_add(_lerp(top, bottom, 0.75), _mul(n, -0.035))), T(_add(bottom, _mul(n, -0.04)))]
    cv.line(guard, 0.006, _shade(gold, 0.85), inst=True)
    fingers = _fingers_down(pose)
    ang = axis_deg
    _hand(cv, st, T(lh), ang, fingers, _rot(a, turn))
    _hand(cv, st, T(rh), ang, fingers, _rot(a, turn))


def _draw_trumpet(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    pose, st, look, H = sc.pose, sc.style, sc.look, HOLD_TRUMPET
    angle = H["angle"] + pose.lift * H["lift_deg"]
    a = _dir(angle)
    mouth = _add(b["mouth"], (0.0, -_rest_drop(pose)))
    Lp = sc.spec.length_m * H["fore"]
    f = _Frame(mouth, a, Lp)
    down = (0.0, -H["loop_drop"])
    valves = [0.36, 0.46, 0.56]
    vc = f(valves[1])
    rh_p = _add(vc, (0.0, 0.055))
    lh_p = _add(vc, (0.0, -0.065))
    _arm(cv, st, b["sh_l"], _add(lh_p, (0.035, -0.01)), (1.0, -1.0))
    gold, dark = look.main, look.dark
    cv.tube([f(0.0), f(0.05)], [0.004, 0.007], SILVER, outline=_shade(SILVER, 0.6), highlight=False)
    # Lower tubing loop below the valves.
    loop = [f(0.12), _add(f(0.12), down), _add(f(0.72), down), f(0.72)]
    cv.tube(loop, 0.007, gold, outline=dark)
    cv.tube([f(0.05), f(0.65)], [0.0065, 0.008], gold, outline=dark)
    for u in valves:
        base = f(u)
        casing = _box(base[0], 0.011, base[1] - 0.06, base[1] + 0.02)
        cv.polygon(casing, _shade(SILVER, 0.95), inst=True, outline=_shade(SILVER, 0.55))
        cv.line([_add(base, (0.0, 0.02)), _add(base, (0.0, 0.04))], 0.005, SILVER, inst=True)
        cv.ellipse(_add(base, (0.0, 0.043)), 0.011, 0.005, (240, 235, 220), inst=True)
    # Bell: flares from the valves to a rim facing the camera.
    bell = [f(0.6), f(0.8), f(0.93), f(1.0)]
    R = H["bell_r"]
    cv.tube(bell, [0.009, 0.014, 0.03, R * 0.85], gold, outline=dark)
    rim = f(1.0)
    cv.ellipse(rim, R * 0.72, R, _shade(gold, 1.1), angle, inst=True, outline=dark)
    cv.ellipse(_add(rim, _mul(a, -0.005)), R * 0.5, R * 0.72, _shade(dark, 0.8), angle, inst=True)
    _hand(cv, st, lh_p, 0, 0)
    _arm(cv, st, b["sh_r"], _add(rh_p, (0.04, 0.01)), (-0.3, -1.0))
    _hand(cv, st, rh_p, 0, 0)
    for k, u in enumerate(valves):  # pressed valves: fingertip sits lower
        pressed = (round(pose.finger * 7) >> k) & 1
        cv.circle(_add(f(u), (0.0, 0.05 - 0.012 * pressed)), 0.011, st.skin)


def _draw_trombone(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    pose, st, look, H = sc.pose, sc.style, sc.look, HOLD_TROMBONE
    angle = H["angle"] + pose.lift * H["lift_deg"]
    a = _dir(angle)
    mouth = _add(b["mouth"], (0.0, -_rest_drop(pose)))
    f = _Frame(mouth, a, 1.0)  # u in projected metres
    fore = H["fore"]
    closed = sc.spec.length_m * H["slide_frac"] * fore
    ext = pose.slide * H["slide_ext_m"] * fore
    end = closed + ext
    gap = H["slide_gap"]
    gold, dark = look.main, look.dark
    # Bell section beside the face on the player's left, its tube running back over the shoulder.
    bell_c = _add(mouth, (H["bell_dx"], H["bell_dy"]))
    R = H["bell_r"]
    throat = _sub(bell_c, _mul(a, 0.3))
    lh_p = f(0.1, -gap - 0.01)
    _arm(cv, st, b["sh_l"], _add(lh_p, (0.04, -0.03)), (1.0, -1.0))
    cv.tube([throat, _lerp(throat, bell_c, 0.6), bell_c], [0.014, 0.03, R * 0.9], gold, outline=dark)
    cv.tube([throat, _add(b["sh_l"], (0.02, 0.06))], 0.008, gold, outline=dark, highlight=False)
    # Inner slide (fixed) and outer slide (moves with pose.slide).
    cv.tube([f(0.0), f(0.04)], [0.004, 0.007], SILVER, outline=_shade(SILVER, 0.6), highlight=False)
    for s in (-gap, gap):
        inner = [f(0.03, s), f(closed * 0.78, s)]
        cv.tube(inner, 0.0065, _shade(SILVER, 0.98), outline=_shade(SILVER, 0.6), highlight=False)
        cv.tube([f(closed * 0.2 + ext, s), f(end, s)], 0.011, gold, outline=dark)
    cv.tube(_arc(f(end), gap, angle + 90, angle - 90, 8), 0.011, gold, outline=dark)
    cv.circle(_add(f(end), _mul(a, gap)), 0.009, (30, 30, 30), inst=True)  # rubber bumper
    cv.line([f(0.04, -gap), f(0.04, gap)], 0.008, gold, inst=True)  # inner brace
    brace = end - 0.13
    cv.line([f(brace, -gap), f(brace, gap)], 0.008, gold, inst=True)  # slide brace
    rim_axis = angle
    cv.ellipse(bell_c, R * 0.75, R, _shade(gold, 1.1), rim_axis, inst=True, outline=dark)
    cv.ellipse(_add(bell_c, _mul(a, -0.006)), R * 0.55, R * 0.75, _shade(dark, 0.8), rim_axis, inst=True)
    _hand(cv, st, lh_p, angle, 0)
    rh_p = f(brace, 0.0)
    _arm(cv, st, b["sh_r"], _add(rh_p, (-0.02, -0.035)), (-1.0, -1.0))
    _hand(cv, st, rh_p, angle + 90, 0)


def _draw_horn(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    pose, st, look, H = sc.pose, sc.style, sc.look, HOLD_HORN
    k = sc.spec.length_m / H["ref_length"]
    drop = _rest_drop(pose)
    c = _add(b["pelvis"], (H["coil_dx"] + b["neck"][0] * 0.6, H["coil_dy"] + pose.lift * 0.02 - drop))
    R, w = H["coil_r"] * k, H["tube_w"] * k
    gold, dark = look.main, look.dark
    bell_a = _dir(H["bell_angle"] - pose.lift * 6)
    throat = _add(c, _mul(bell_a, R * 0.9))
    rim = _add(throat, _mul(bell_a, H["bell_len"] * k))
    valves = _add(c, (R * 0.75, R * 0.55))
    _arm(cv, st, b["sh_l"], _add(valves, (0.06, 0.0)), (1.0, -0.8))
    for i, rr in enumerate((R, R * 0.82, R * 0.64)):
        cv.ring(c, rr, w, _shade(dark, 1.2), inst=True)
        cv.ring(c, rr + w * 0.1, w * 0.7, _shade(gold, 1.0 - 0.06 * i), inst=True)
    cv.tube([_add(c, _mul(bell_a, R * 0.5)), throat, _lerp(throat, rim, 0.6), rim],
            [0.02 * k, 0.03 * k, 0.06 * k, H["bell_r"] * k], gold, outline=dark)  # fmt: skip
    ang = math.degrees(math.atan2(bell_a[1], bell_a[0]))
    cv.ellipse(rim, 0.04 * k, H["bell_r"] * k, _shade(gold, 1.12), ang, inst=True, outline=dark)
    # Leadpipe from the mouthpiece down to the valves.
    mouth = _add(b["mouth"], (0.0, -drop))
    lead = _bezier(mouth, (mouth[0] - 0.02, valves[1] + 0.05), valves, 8)
    cv.tube(lead, [0.005] + [0.007] * 8, gold, outline=dark, highlight=False)
    cv.tube(lead[:2], 0.005, SILVER, highlight=False)
    for j in range(3):  # rotary valves
        cv.circle(_add(valves, (-0.028 * j, -0.012 * j)), 0.018 * k, SILVER, inst=True, outline=_shade(SILVER, 0.55))
    _hand(cv, st, _add(valves, (0.02, 0.01)), 0, _fingers_down(pose), (-1.0, 0.0))
    # Right hand rests in the bell on the right thigh.
    _arm(cv, st, b["sh_r"], _add(rim, (0.02, 0.05)), (-1.0, 0.0))
    _hand(cv, st, _add(rim, (0.02, 0.04)), ang, 0)


def _draw_tuba(cv: _Canvas, sc: _Scene, b: dict[str, Point]) -> None:
    pose, st, look, H = sc.pose, sc.style, sc.look, HOLD_TUBA
    k = sc.spec.length_m / H["ref_length"]
    drop = _rest_drop(pose)
    gold, dark = look.main, look.dark
    base_y = b["pelvis"][1] + H["base_dy"] - drop * 0.5
    x = H["stack_dx"] + b["neck"][0] * 0.5
    height = sc.spec.length_m * (1.0 + 0.02 * pose.lift)
    sx, bx = x, x + H["branch_dx"] - 0.16 * k
    bottom = base_y + 0.07 * k
    # Bell stack: widens upwards into the bell.
    ys = [0.0, 0.45, 0.75, 0.9, 1.0]
    hws = [H["stack_hw"], H["stack_hw"] * 1.3, H["stack_hw"] * 1.8, H["bell_hw"] * 0.7, H["bell_hw"]]
    stack = [(sx + 0.02 * u, bottom + u * (height - 0.07 * k)) for u in ys]
    valves_y = base_y + HOLD_TUBA["valves_u"] * height
    lh_p = (sx + H["stack_hw"] * 1.5, base_y + 0.55 * height)
    _arm(cv, st, b["sh_l"], lh_p, (1.0, -0.5))
    # Branch tube (with the valves) and the bottom bow joining it to the stack.
    cv.tube([(bx, base_y + 0.62 * height), (bx, bottom)], H["branch_hw"] * k, gold, outline=dark)
    bow = _arc(((sx + bx) / 2, bottom), (sx - bx) / 2, 180, 360, 10)
    cv.tube(bow, [H["branch_hw"] * k] * 4 + [H["stack_hw"] * k] * 7, gold, outline=dark)
    cv.tube(stack, [w * k for w in hws], gold, outline=dark)
    top = stack[-1]
    cv.ellipse(top, H["bell_hw"] * k, 0.05 * k, _shade(gold, 1.12), 0, inst=True, outline=dark)
    cv.ellipse(_add(top, (0.0, -0.006)), H["bell_hw"] * 0.82 * k, 0.032 * k, _shade(dark, 0.7), 0, inst=True)
    seam_y = base_y + 0.45 * height
    seam = [(sx - H["stack_hw"] * 1.3, seam_y), (sx + H["stack_hw"] * 1.3, seam_y)]
    cv.line(seam, 0.008, _shade(gold, 0.8), inst=True)
    # Four piston valves in front of the chest, leadpipe up to the mouth.
    vx = [bx + 0.045 + 0.032 * j for j in range(4)]
    mouth = _add(b["mouth"], (0.0, -drop))
    lead = _bezier((vx[0], valves_y + 0.08), (mouth[0] - 0.09, mouth[1] - 0.02), mouth, 8)
    cv.tube(lead, 0.009, gold, outline=dark, highlight=False)
    cv.tube(lead[-2:], 0.007, SILVER, highlight=False)
    for vxj in vx:
        casing = _box(vxj, 0.014, valves_y - 0.09, valves_y + 0.07)
        cv.polygon(casing, SILVER, inst=True, outline=_shade(SILVER, 0.55))
        cv.ellipse((vxj, valves_y + 0.085), 0.012, 0.006, (240, 235, 220), inst=True)
    rh_p = (vx[1] + 0.015, valves_y + 0.11)
    _arm(cv, st, b["sh_r"], _add(rh_p, (-0.05, 0.0)), (-1.0, -0.6))
    _hand(cv, st, rh_p, 0, 0)
    for j, vxj in enumerate(vx[:3]):
        pressed = (round(pose.finger * 7) >> j) & 1
        cv.circle((vxj, valves_y + 0.095 - 0.012 * pressed), 0.012, st.skin)
    _hand(cv, st, lh_p, 90, 0)


FAMILY_DRAWERS: dict[str, Callable[[_Canvas, _Scene, dict[str, Point]], None]] = {
    "bowed_chin": _draw_bowed_chin,
    "bowed_floor": _draw_bowed_floor,
    "flute_side": _draw_flute,
    "reed_vertical": _draw_reed_vertical,
    "reed_bassoon": _draw_bassoon,
    "reed_sax": _draw_sax,
    "brass_forward": _draw_trumpet,
    "brass_slide": _draw_trombone,
    "brass_horn": _draw_horn,
    "brass_lap": _draw_tuba,
}
