"""The procedural frame renderer: shapes, masks, music-driven poses, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cmav.data.instruments import INSTRUMENTS
from cmav.standin import frames
from cmav.standin.frames import PlayerStyle, Pose, pose_at, render_frame
from cmav.standin.music import Note

PLAYING = Pose(bow=0.5, slide=0.3, sway=0.2, lift=0.4, playing=True, bow_dir=1, finger=0.5)


@pytest.fixture(scope="module")
def style() -> PlayerStyle:
    return PlayerStyle.sample(np.random.default_rng(1234))


def _changed_fraction(a, b) -> float:
    return float(np.mean(np.any(np.asarray(a) != np.asarray(b), axis=-1)))


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("instrument", INSTRUMENTS)
def test_every_instrument_renders_with_a_sensible_mask(instrument, size, style):
    image, mask = render_frame(instrument, style, PLAYING, size)
    assert image.mode == "RGB" and image.size == (size, size)
    assert mask.shape == (size, size) and mask.dtype == np.bool_
    area = mask.mean()
    assert area > 0.002, f"{instrument}: instrument barely visible ({area:.4f})"
    assert area < 0.5, f"{instrument}: mask covers too much ({area:.3f})"
    # The picture is not a flat colour: player, instrument and background are all drawn.
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 30


def test_instruments_keep_their_true_relative_size(style):
    area = {i: render_frame(i, style, PLAYING, 128)[1].sum() for i in ("violin", "viola", "cello", "double_bass")}
    assert area["double_bass"] > 3 * area["violin"]
    assert area["cello"] > area["viola"] > area["violin"]


def test_mask_is_the_instrument_not_the_player(style):
    # A skin colour no instrument uses: hands held over the instrument must be cut out of its mask.
    green = dataclasses.replace(style, skin=(0, 255, 0))
    for instrument in ("tuba", "cello", "clarinet"):
        image, mask = render_frame(instrument, green, PLAYING, 256)
        px = np.asarray(image)[mask].astype(int)
        skin = (px[:, 1] > 200) & (px[:, 0] < 60) & (px[:, 2] < 60)
        assert skin.mean() < 0.02, instrument


def test_bow_and_slide_poses_change_the_picture(style):
    for instrument in ("violin", "cello", "double_bass"):
        frog, _ = render_frame(instrument, style, dataclasses.replace(PLAYING, bow=0.0), 256)
        tip, _ = render_frame(instrument, style, dataclasses.replace(PLAYING, bow=1.0), 256)
        assert _changed_fraction(frog, tip) > 0.01, instrument
    closed, m0 = render_frame("trombone", style, dataclasses.replace(PLAYING, slide=0.0), 256)
    extended, m1 = render_frame("trombone", style, dataclasses.replace(PLAYING, slide=1.0), 256)
    assert _changed_fraction(closed, extended) > 0.005
    # The extended slide reaches further from the player (towards the image left).
    assert np.nonzero(m1.any(axis=0))[0].min() < np.nonzero(m0.any(axis=0))[0].min() - 5


def test_sway_and_lift_move_every_instrument(style):
    for instrument in INSTRUMENTS:
        a, _ = render_frame(instrument, style, Pose(playing=True, sway=-0.8, lift=0.0), 96)
        b, _ = render_frame(instrument, style, Pose(playing=True, sway=0.8, lift=1.0), 96)
        assert _changed_fraction(a, b) > 0.005, instrument


def test_rendering_is_deterministic(style):
    pose = Pose(bow=0.3, slide=0.6, sway=-0.4, lift=0.7, playing=False)
    a_img, a_mask = render_frame("sax", style, pose, 128)
    frames._background.cache_clear()  # the cached background must not be what makes it repeat
    b_img, b_mask = render_frame("sax", style, pose, 128)
    assert np.array_equal(np.asarray(a_img), np.asarray(b_img))
    assert np.array_equal(a_mask, b_mask)


def test_player_styles_vary_with_the_seed_and_repeat_with_it():
    a = PlayerStyle.sample(np.random.default_rng(0))
    b = PlayerStyle.sample(np.random.default_rng(1))
    assert a != b
    assert a == PlayerStyle.sample(np.random.default_rng(0))
    styles = [PlayerStyle.sample(np.random.default_rng(s)) for s in range(20)]
    assert len({s.shirt for s in styles}) == 20 and len({s.background for s in styles}) == 20
    assert 0.85 <= min(s.scale for s in styles) and max(s.scale for s in styles) <= 1.1


def test_different_players_of_one_instrument_look_different():
    a = PlayerStyle.sample(np.random.default_rng(10))
    b = PlayerStyle.sample(np.random.default_rng(11))
    img_a, _ = render_frame("flute", a, PLAYING, 128)
    img_b, _ = render_frame("flute", b, PLAYING, 128)
    assert _changed_fraction(img_a, img_b) > 0.5


def _legato(pitches, dur=0.5, velocity=90):
    return [Note(k * dur, (k + 1) * dur - 0.02, p, velocity, "legato") for k, p in enumerate(pitches)]


def test_bow_direction_alternates_note_by_note():
    notes = _legato([60, 62, 64, 65])
    for k, note in enumerate(notes):
        early = pose_at(notes, note.start + 0.05, "violin")
        late = pose_at(notes, note.end - 0.05, "violin")
        expected = 1 if k % 2 == 0 else -1
        assert early.playing and early.bow_dir == expected == late.bow_dir
        assert (late.bow - early.bow) * expected > 0.3, "the bow travels through the stroke"


def test_staccato_uses_a_short_fast_stroke():
    leg = [Note(0.0, 0.5, 60, 90, "legato")]
    stac = [Note(0.0, 0.5, 60, 90, "staccato")]
    travel_leg = pose_at(leg, 0.49, "cello").bow - pose_at(leg, 0.0, "cello").bow
    travel_stac = pose_at(stac, 0.49, "cello").bow - pose_at(stac, 0.0, "cello").bow
    assert 0 < travel_stac < travel_leg
    # The staccato stroke is already over early in the note.
    assert pose_at(stac, 0.15, "cello").bow == pytest.approx(pose_at(stac, 0.45, "cello").bow)


def test_trombone_slide_follows_pitch_like_real_positions():
    def slide(pitch):
        return pose_at([Note(0.0, 1.0, pitch, 80, "legato")], 0.5, "trombone").slide

    # Within one harmonic (F3 = 53) lower notes need a longer slide: 1st, 4th, 7th position.
    assert slide(53) == 0.0
    assert slide(53) < slide(50) < slide(47) == 1.0
    assert slide(40) == 1.0  # E2, the lowest note, is in 7th position
    assert slide(58) == 0.0  # B-flat 3 is an open (1st position) note
    # Non-trombone instruments keep the slide at rest.
    assert pose_at([Note(0.0, 1.0, 50, 80, "legato")], 0.5, "tuba").slide == 0.0


def test_pose_follows_dynamics_and_rests():
    notes = [Note(0.0, 0.4, 60, 40, "legato"), Note(0.5, 0.9, 84, 125, "legato"), Note(1.5, 2.0, 70, 80, "legato")]
    soft = pose_at(notes, 0.38, "clarinet")
    loud = pose_at(notes, 0.88, "clarinet")  # sway has glided to this note's lean
    assert loud.lift > soft.lift
    assert loud.sway > soft.sway  # high notes lean one way, low notes the other
    rest = pose_at(notes, 1.3, "clarinet")
    assert not rest.playing and abs(rest.sway) < abs(loud.sway)
    # Same track, different music at two instants -> visibly different frames.
    style = PlayerStyle.sample(np.random.default_rng(3))
    a, _ = render_frame("clarinet", style, soft, 128)
    b, _ = render_frame("clarinet", style, loud, 128)
    assert _changed_fraction(a, b) > 0.01
    assert pose_at(notes, 0.88, "clarinet") == loud
    # Lift peaks at the onset accent, then settles while the note is held.
    assert pose_at(notes, 0.5, "clarinet").lift > loud.lift
    assert pose_at([], 0.3, "violin") == Pose()
