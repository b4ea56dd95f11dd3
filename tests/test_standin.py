"""The offline stand-in: layout, formats, counts, determinism, resumability (real FluidSynth)."""

import json
import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from cmav.cli.main import main
from cmav.data.check import check_dataset
from cmav.data.datasets import SubURMP
from cmav.data.errors import DataError
from cmav.data.instruments import INSTRUMENTS
from cmav.standin.build import MANIFEST, PRESETS, TrackJob, build_standin, build_track, track_plan
from cmav.standin.music import Note, write_midi
from cmav.standin.render import DEFAULT_SOUNDFONT, render_midi

pytestmark = pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not DEFAULT_SOUNDFONT.is_file(),
    reason="needs fluidsynth + fluid-soundfont-gm (make install puts them in place)",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin") / "tiny"
    build_standin(root, preset="tiny", seed=0, progress=False)
    return root


def test_tiny_has_13_classes_by_2_splits_in_suburmp_layout(tiny):
    p = PRESETS["tiny"]
    for split, n_tracks, n_chunks in (("train", p.train_tracks, p.train_chunks_per_track),
                                      ("validation", p.validation_tracks, p.validation_chunks_per_track)):  # fmt: skip
        assert sorted(d.name for d in (tiny / "chunk" / split).iterdir()) == sorted(INSTRUMENTS)
        for inst in INSTRUMENTS:
            wavs = sorted((tiny / "chunk" / split / inst).glob("*.wav"))
            jpgs = sorted((tiny / "img" / split / inst).glob("*.jpg"))
            assert len(wavs) == len(jpgs) == n_tracks * n_chunks
            assert [w.stem for w in wavs] == [j.stem for j in jpgs]


def test_names_follow_suburmp(tiny):
    stems = sorted(p.stem for p in (tiny / "chunk/train/violin").glob("*.wav"))
    track = stems[0][len("violin"):len("violin") + 2]  # fmt: skip
    times = sorted(int(s.split("_")[-1]) for s in stems if s.startswith(f"violin{track}_"))
    assert times[0] == 500 and all(b - a == 100 for a, b in pairwise(times))


def test_wav_format_matches_suburmp(tiny):
    for wav in list((tiny / "chunk/validation/cello").glob("*.wav"))[:3]:
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 2, 22050, "PCM_16")
        assert wav.stat().st_size == 88244  # Sub-URMP's exact chunk size
        data, _ = sf.read(str(wav))
        assert np.sqrt(np.mean(data**2)) > 1e-3, "chunks must not be silent"


def test_frames_are_jpeg_at_preset_size(tiny):
    img = Image.open(next((tiny / "img/train/tuba").glob("*.jpg")))
    assert img.format == "JPEG" and img.size == (PRESETS["tiny"].frame_size,) * 2


def test_validation_tracks_are_held_out(tiny):
    report = check_dataset(tiny, progress=False)
    assert report.ok, report.errors
    for inst in INSTRUMENTS:
        assert report.tracks["train"][inst].isdisjoint(report.tracks["validation"][inst])


def test_large_preset_is_default_plus_more_train_players():
    """`large` renders every track of `default` the same way (same ids, same lengths, the same
    validation split), so a model trained on it is scored on default's validation players."""
    default, large = track_plan(PRESETS["default"]), track_plan(PRESETS["large"])
    assert set(default) < set(large)
    assert [t for t in large if t[0] == "validation"] == [t for t in default if t[0] == "validation"]
    for inst in INSTRUMENTS:
        train = [t for t in large if t[0] == "train" and t[1] == inst]
        held_out = {t[2] for t in large if t[0] == "validation" and t[1] == inst}
        assert len(train) == 3 * sum(1 for t in default if t[0] == "train" and t[1] == inst)
        assert len({t[2] for t in train}) == len(train) and not held_out & {t[2] for t in train}


def test_second_build_does_nothing(tiny):
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*.wav")}
    build_standin(tiny, preset="tiny", seed=0, progress=False)
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*.wav")} == before


def test_other_parameters_are_refused_not_mixed(tiny):
    with pytest.raises(DataError, match="already holds a stand-in"):
        build_standin(tiny, preset="tiny", seed=1, progress=False)


@pytest.mark.parametrize("option, why", [
    ({"seed": -1}, "seed must be a non-negative integer"),
    ({"frame_size": 0}, "frame_size must be an integer of at least 8 pixels"),  # 0 used to mean the preset's
    ({"frame_size": -4}, "frame_size must be an integer of at least 8 pixels"),
    ({"jpeg_quality": 0}, "jpeg_quality must be in 1..100"),
    ({"workers": -1}, "workers must be a positive integer"),  # the manifest was written before the pool failed
    ({"workers": 0}, "workers must be a positive integer"),
    ({"font_segment_s": float("inf")}, "font_segment_s must be a finite number of seconds > 0"),  # recorded as Infinity
    ({"font_segment_s": float("nan")}, "font_segment_s must be a finite number of seconds > 0"),
    ({"font_segment_s": 0.0}, "font_segment_s must be a finite number of seconds > 0"),
])  # fmt: skip
def test_bad_build_options_are_refused_before_anything_is_written(tmp_path, option, why):
    """A manifest written with a bad value would then refuse the corrected command."""
    root = tmp_path / "standin"
    with pytest.raises(ValueError, match=why):
        build_standin(root, preset="tiny", progress=False, **option)
    assert not root.exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="afile: is a file; the stand-in is built into a folder"):
        build_standin(tmp_path / "afile", preset="tiny", progress=False)


def test_a_melody_drawn_again_for_a_quiet_chunk_is_said_and_recorded(tmp_path):
    """A new melody is drawn because of how the last one sounded in this font: a build from another
    font may keep the first, so the tracks' melodies and frames would silently differ."""
    # the threshold stands in for a quiet font: seed 0's first two oboe melodies fall below it
    job = TrackJob(str(tmp_path / "a"), "train", "oboe", 0, 3, 0, str(DEFAULT_SOUNDFONT), 32, 90, silence_rms=0.04)
    with pytest.warns(UserWarning, match="oboe00: a chunk of its melody came out silent .* a new melody is drawn"):
        build_track(job)
    assert json.loads(job.marker.read_text())["melody_attempts"] == 3
    plain = TrackJob(str(tmp_path / "b"), "train", "oboe", 0, 3, 0, str(DEFAULT_SOUNDFONT), 32, 90)
    build_track(plain)
    assert "melody_attempts" not in json.loads(plain.marker.read_text())


def test_a_build_terminated_with_sigterm_takes_its_workers_with_it(tmp_path):
    """`kill PID` of a build with worker processes: the workers used to be left waiting forever."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("from cmav.standin.build import build_standin; "
              f"build_standin({str(tmp_path / 'b')!r}, preset='tiny', workers=2, progress=False)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    deadline = time.time() + 60
    while len(workers) < 2 and time.time() < deadline:  # both workers started and at work
        time.sleep(0.5)
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout
        workers = [int(w) for w in out.split()]
    alive: list[int] = []
    try:
        assert len(workers) >= 2, "the build's workers never started"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        time.sleep(1)
        for pid in workers:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        assert not alive, f"workers {alive} outlived the build"
        assert code == 128 + signal.SIGTERM  # ended by SystemExit, after the pool shut down
    finally:  # leave nothing behind, also when the test fails
        for pid in [*alive, proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_build_is_deterministic_and_resumes_after_interruption(tmp_path, tiny):
    split, inst, track, n = next(t for t in track_plan(PRESETS["tiny"]) if t[1] == "flute")
    job = TrackJob(str(tmp_path / "a"), split, inst, track, n, 0, str(DEFAULT_SOUNDFONT), 128, 90)
    build_track(job)
    wav = f"chunk/{split}/{inst}/{inst}{track:02d}_600.wav"
    jpg = f"img/{split}/{inst}/{inst}{track:02d}_600.jpg"
    assert (tmp_path / "a" / wav).read_bytes() == (tiny / wav).read_bytes()
    assert (tmp_path / "a" / jpg).read_bytes() == (tiny / jpg).read_bytes()

    # An interrupted build: a track without its marker, a missing file and a stray partial file.
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["complete"] = False
    (copy / MANIFEST).write_text(json.dumps(manifest))
    (copy / ".cmav_build" / split / f"{inst}{track:02d}.done").unlink()
    (copy / wav).unlink()
    stray = copy / "img" / split / inst / f".{inst}{track:02d}_700.jpg.x.partial"
    stray.write_bytes(b"half")
    build_standin(copy, preset="tiny", seed=0, progress=False)
    assert (copy / wav).read_bytes() == (tiny / wav).read_bytes()
    assert not stray.exists()
    assert json.loads((copy / MANIFEST).read_text())["complete"] is True


def test_loader_reads_the_standin(tiny, tmp_path):
    ds = SubURMP(tiny, "validation", image_size=64, cache_dir=tmp_path / "cache", progress=False)
    item = ds[0]
    assert item["audio"].shape == (1, 128, 44) and item["image"].shape == (3, 64, 64)
    assert len(ds) == 13 * PRESETS["tiny"].validation_chunks_per_track


def test_cli_check_prints_counts_table(tiny, capsys):
    assert main(["data", "check", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "| violin |" in out and "**total**" in out and "OK" in out


def test_cli_check_fails_on_a_broken_set(tiny, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    next((broken / "chunk/train/oboe").glob("*.wav")).write_bytes(b"junk")
    assert main(["data", "check", str(broken)]) == 1
    assert "not a readable audio file" in capsys.readouterr().err


def test_cli_sheet_writes_a_png(tiny, tmp_path):
    out = tmp_path / "sheet.png"
    assert main(["data", "sheet", str(tiny), "-o", str(out), "--per-class", "2", "--cell-size", "32"]) == 0
    assert Image.open(out).size[1] > 13 * 32


FREEPATS_CFG = Path(__file__).resolve().parents[1] / "datasets" / "freepats_orchestra.cfg"
HAVE_TIMIDITY = shutil.which("timidity") is not None and Path("/usr/share/midi/freepats").is_dir()


@pytest.mark.skipif(not HAVE_TIMIDITY, reason="needs timidity and freepats")
def test_timidity_sounds_a_first_note_at_time_zero_whose_pitch_comes_again(tmp_path):
    """TiMidity++ rendered nothing for a note at MIDI tick 0 when the next note had the same pitch:
    about one FreePats track in seven lost its first note (silent audio under a frame that plays it)."""
    rate = 44100
    first = round(0.45 * rate)  # the first note's window
    renders = {}
    for second in (60, 62):  # the same pitch again (the defect), another pitch (always sounded)
        midi = tmp_path / f"{second}.mid"
        write_midi([Note(0.0, 0.45, 60, 90, "legato"), Note(1.0, 1.45, second, 90, "legato")], 72, midi)  # clarinet
        renders[second] = render_midi(midi, FREEPATS_CFG)
    same, other = renders[60], renders[62]
    assert np.sqrt(np.mean(same[:, :first] ** 2)) > 1e-2, "the first note is silent"
    # the timing is unchanged: the first note sounds from the start (as before another pitch), the second 1 s later
    assert np.abs(same[:, :first] - other[:, :first]).max() < 0.01
    onsets = [int(np.argmax(np.abs(same[:, a:]).max(0) > 0.01)) for a in (0, rate)]
    assert onsets[0] < 0.03 * rate and abs(onsets[1] - onsets[0]) <= 2, onsets


@pytest.mark.skipif(not HAVE_TIMIDITY, reason="needs timidity and freepats")
def test_a_timidity_build_rendered_before_the_lead_in_is_named_not_reused(tiny, tmp_path):
    """A FreePats build made before TiMidity++ got its lead-in lacks the first note of about one track
    in seven: building it again was a silent no-op, and reading it gave the old audio without a word."""
    import warnings

    from cmav.data.datasets import open_split
    from cmav.data.errors import DataWarning

    today = tmp_path / "freepats"
    manifest = build_standin(today, preset="tiny", seed=0, soundfont=FREEPATS_CFG, progress=False, workers=1)
    assert manifest["timidity_lead_in_s"] == 0.1
    assert "timidity_lead_in_s" not in json.loads((tiny / MANIFEST).read_text())  # FluidSynth builds are as before
    assert not any("first note" in w for w in check_dataset(today, progress=False).warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        open_split("suburmp", today, "validation", image_size=16, cache_dir=tmp_path / "cache", progress=False)

    old = tmp_path / "freepats_old"  # the same build, with the manifest a build wrote before the lead-in
    shutil.copytree(today, old)
    manifest.pop("timidity_lead_in_s")
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="first note") as err:
        build_standin(old, preset="tiny", seed=0, soundfont=FREEPATS_CFG, progress=False)
    assert str(old) in str(err.value) and "build it again" in str(err.value)
    report = check_dataset(old, progress=False)
    assert any("first note" in w and "cmav data build --root" in w for w in report.warnings) and report.ok
    with pytest.warns(DataWarning, match="first note"):
        open_split("suburmp", old, "validation", image_size=16, cache_dir=tmp_path / "cache", progress=False)
    for pair in (old / "chunk/train/violin").glob("*_600.wav"), (old / "img/train/violin").glob("*_600.jpg"):
        next(pair).unlink()  # and the counts are still compared with the manifest's
    assert any("records" in e for e in check_dataset(old, progress=False).errors)


# --------------------------------------------------------------------------- resuming, repairing, recording
TIMGM6MB = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")


def _copy(tiny: Path, to: Path, complete: bool = True, **manifest_changes) -> Path:
    """A copy of the tiny build; ``complete=False``: as a build cut off leaves it (its manifest says so)."""
    shutil.copytree(tiny, to)
    manifest = json.loads((to / MANIFEST).read_text())
    manifest.update(complete=complete, **manifest_changes)
    (to / MANIFEST).write_text(json.dumps(manifest))
    return to


def _micro(monkeypatch, validation_tracks: int = 0) -> str:
    """A preset of one 2-chunk train track per instrument (and ``validation_tracks`` validation ones)."""
    from cmav.standin.build import Preset

    monkeypatch.setitem(PRESETS, "micro", Preset("micro", 1, validation_tracks, 2, 2, frame_size=32))
    return "micro"


def test_check_of_a_cut_off_build_says_so_first_and_sheet_refuses_it(tiny, tmp_path, capsys):
    """A build killed after a few tracks: `check` listed 40 "missing class folder" lines and cut the
    one line that explains them; `sheet` drew the classes it found without a word."""
    root = _copy(tiny, tmp_path / "cut", complete=False)
    for inst in INSTRUMENTS[2:]:  # never written
        for side in ("chunk", "img", "mask"):
            shutil.rmtree(root / side / "train" / inst)
        shutil.rmtree(root / "chunk" / "validation" / inst)
    (root / "img/train/cello/cello02_1000.jpg").unlink()  # a track being written: its wav is there, not its frame
    (root / "chunk/train/piano").mkdir()  # and a problem the cut-off does not explain
    assert main(["data", "check", str(root), "--quick"]) == 1
    errors = [line.strip() for line in capsys.readouterr().err.splitlines() if line.startswith("  ")]
    assert "build was cut off" in errors[0] and f"cmav data build --root {root} --preset tiny" in errors[0], errors
    assert not any("missing class folder" in e or "partner" in e or "more" in e for e in errors), errors
    assert any("piano: unexpected class folder" in e for e in errors[1:]), errors
    sheet = tmp_path / "sheet.png"
    assert main(["data", "sheet", str(root), "-o", str(sheet)]) == 2
    assert "build was cut off" in capsys.readouterr().err and not sheet.exists()


@pytest.mark.skipif(not TIMGM6MB.is_file(), reason="needs timgm6mb-soundfont")
def test_a_retry_after_the_font_failed_at_the_first_track_takes_the_fixed_font(tmp_path, monkeypatch):
    import hashlib

    preset = _micro(monkeypatch)
    good = TIMGM6MB.read_bytes()
    font = tmp_path / "font.sf2"
    font.write_bytes(good[:12] + bytes(len(good) - 12))  # a SoundFont header over zeros: fluidsynth cannot load it
    root = tmp_path / "m"
    with pytest.raises(RuntimeError, match="fluidsynth failed"):
        build_standin(root, preset=preset, soundfont=font, progress=False, workers=1)
    assert not list(root.rglob("*.done"))  # no track rendered
    font.write_bytes(good)  # fixed, under the same name
    manifest = build_standin(root, preset=preset, soundfont=font, progress=False, workers=1)
    assert manifest["complete"] and manifest["soundfont"]["sha256"] == hashlib.sha256(good).hexdigest()


def test_another_font_of_the_same_name_after_tracks_were_rendered_is_refused_with_the_remedy(tiny, tmp_path):
    root = _copy(tiny, tmp_path / "cut", complete=False)
    other = tmp_path / "fonts" / DEFAULT_SOUNDFONT.name
    other.parent.mkdir()
    other.write_bytes(b"another file")
    with pytest.raises(DataError, match=r"another file of the same name.*delete the folder .*or use another --root"):
        build_standin(root, preset="tiny", seed=0, soundfont=other, progress=False)


def test_a_complete_build_is_a_no_op_without_the_renderer_or_its_font(tiny, tmp_path, monkeypatch, capsys):
    """The data copied to a node without fluidsynth: `cmav data build` (make demo's first step) failed."""
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()}
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs"))
    assert main(["data", "build", "--root", str(tiny), "--preset", "tiny"]) == 0
    assert "complete: 286 train / 78 validation pairs" in capsys.readouterr().out
    absent = tmp_path / DEFAULT_SOUNDFONT.name  # nor the font
    assert build_standin(tiny, preset="tiny", soundfont=absent, progress=False)["complete"]
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*") if p.is_file()} == before
    root = _copy(tiny, tmp_path / "cut", complete=False)  # with work to do, the renderer is asked for
    next((root / ".cmav_build" / "train").glob("*.done")).unlink()
    with pytest.raises(RuntimeError, match="'fluidsynth' program is not installed"):
        build_standin(root, preset="tiny", seed=0, progress=False)


def test_a_complete_build_missing_files_is_named_by_check_and_repaired_by_the_build(tiny, tmp_path):
    split, inst, track, n = next(t for t in track_plan(PRESETS["tiny"]) if t[1] == "flute")
    name = f"{inst}{track:02d}"
    root = _copy(tiny, tmp_path / "lost")
    lost = [root / f"chunk/{split}/{inst}/{name}_600.wav", root / f"img/{split}/{inst}/{name}_600.jpg",
            root / f"mask/{split}/{inst}/{name}_900.png"]  # fmt: skip
    for p in lost:
        p.unlink()
    errors = check_dataset(root, deep=False, progress=False).errors
    assert any(f"{name} lacks the chunk(s) at 600 ms" in e for e in errors), errors
    with pytest.warns(UserWarning, match=f"{split}/{name}: .*600, 900 ms.*rendered again"):
        manifest = build_standin(root, preset="tiny", seed=0, progress=False, workers=1)
    assert manifest["complete"]
    for p in lost:  # deterministic: the very files lost
        assert p.read_bytes() == (tiny / p.relative_to(root)).read_bytes(), p
    assert check_dataset(root, deep=False, progress=False).ok
    # copied without its hidden markers (`cp -r tiny/* copy/`): still whole; a lost file renders its track only
    bare = _copy(tiny, tmp_path / "bare")
    shutil.rmtree(bare / ".cmav_build")
    (bare / f"chunk/{split}/{inst}/{name}_600.wav").unlink()
    before = {p: p.stat().st_mtime_ns for p in bare.rglob("*.wav")}
    with pytest.warns(UserWarning, match=f"{split}/{name}: files of 1 of its {n} chunk"):
        manifest = build_standin(bare, preset="tiny", seed=0, progress=False, workers=1)
    changed = {p for p in bare.rglob("*.wav") if before.get(p) != p.stat().st_mtime_ns}
    assert {p.stem.split("_")[0] for p in changed} == {name} and len(changed) == n
    assert manifest["track_records"] == json.loads((tiny / MANIFEST).read_text())["track_records"]


def test_the_manifest_records_every_track_and_its_melody_attempts(tiny, tmp_path):
    """They were only in the hidden markers (.cmav_build/*.done), which `cmav data pack` leaves behind."""
    records = json.loads((tiny / MANIFEST).read_text())["track_records"]
    assert len(records) == len(track_plan(PRESETS["tiny"])) and records["validation/oboe04"]["chunks"] == 6
    root = _copy(tiny, tmp_path / "redrawn", complete=False)
    # oboe00 rebuilt as from a quiet font: its melody drawn again (the marker alone recorded that)
    job = TrackJob(str(root), "train", "oboe", 0, 11, 0, str(DEFAULT_SOUNDFONT), 128, 90, silence_rms=0.04)
    job.marker.unlink()
    with pytest.warns(UserWarning, match="drawn"):
        build_track(job)
    attempts = json.loads(job.marker.read_text())["melody_attempts"]
    assert attempts > 1
    assert build_standin(root, preset="tiny", progress=False)["track_records"]["train/oboe00"]["melody_attempts"] == attempts


@pytest.mark.skipif(not TIMGM6MB.is_file(), reason="needs timgm6mb-soundfont")
def test_the_manifest_records_the_font_of_every_chunk_and_a_pack_keeps_it(tmp_path, monkeypatch):
    from cmav.data.pack import write_pack

    preset = _micro(monkeypatch)
    manifest = build_standin(tmp_path / "both", preset=preset, soundfont=[DEFAULT_SOUNDFONT, TIMGM6MB],
                             font_segment_s=0.3, progress=False, workers=1)  # fmt: skip
    assert manifest["track_records"]["train/oboe00"]["fonts"] == [0, 1]  # chunk centres 0.25 s, 0.35 s
    write_pack(tmp_path / "both", tmp_path / "pack", image_size=16, splits=("train",), cache_dir=tmp_path / "cache",
               progress=False)  # fmt: skip
    assert json.loads((tmp_path / "pack" / MANIFEST).read_text())["track_records"] == manifest["track_records"]


def test_the_renderer_version_is_recorded_and_a_resume_with_another_warns(tiny, tmp_path):
    import subprocess
    import warnings

    now = subprocess.run(["fluidsynth", "--version"], capture_output=True, text=True).stdout.splitlines()[0].strip()
    assert json.loads((tiny / MANIFEST).read_text())["renderers"] == {"fluidsynth": [now]}
    root = _copy(tiny, tmp_path / "elsewhere", complete=False, renderers={"fluidsynth": ["FluidSynth runtime version 1.0.0"]})
    (root / ".cmav_build/train/oboe00.done").unlink()
    with pytest.warns(UserWarning, match=r"FluidSynth runtime version 1\.0\.0.*" + now.split()[-1]):
        manifest = build_standin(root, preset="tiny", progress=False, workers=1)
    assert manifest["renderers"] == {"fluidsynth": ["FluidSynth runtime version 1.0.0", now]}
    old = _copy(tiny, tmp_path / "old", complete=False)  # built before versions were recorded: resumed silently
    manifest = json.loads((old / MANIFEST).read_text())
    del manifest["renderers"]
    (old / MANIFEST).write_text(json.dumps(manifest))
    (old / ".cmav_build/train/oboe00.done").unlink()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build_standin(old, preset="tiny", progress=False, workers=1)
    assert not [w for w in seen if "version" in str(w.message)]


def _build_process(tmp_path: Path, root: str):
    """A `cmav data build --preset tiny --workers 2` in its own process group, and its two workers once started."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "cmav.cli.main", "data", "build", "--root", str(tmp_path / root),
                             "--preset", "tiny", "--workers", "2"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    workers: list[int] = []
    deadline = time.time() + 60
    while len(workers) < 2 and time.time() < deadline:
        time.sleep(0.5)
        out = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout
        workers = [int(line.split()[0]) for line in out.splitlines() if "python" in line]
    return proc, workers


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_ctrl_c_of_a_build_is_one_line_not_a_traceback(tmp_path):
    import os
    import signal

    proc, workers = _build_process(tmp_path, "b")
    try:
        assert len(workers) == 2, "the build's workers never started"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground group
        _, err = proc.communicate(timeout=120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip() and "building tiny" not in x]
    assert lines == ["interrupted; run the same command again to resume"], err
    assert proc.returncode == 130


def test_workers_of_a_build_killed_outright_exit_with_it(tmp_path):
    """`kill -9` of the build: its pool workers were left blocked on their task queue forever."""
    import os
    import signal
    import time

    proc, workers = _build_process(tmp_path, "b")
    try:
        assert len(workers) == 2, "the build's workers never started"
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.time() + 20
        while any(map(_running, workers)) and time.time() < deadline:
            time.sleep(0.5)
        assert not [w for w in workers if _running(w)], "workers outlived the build"
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_an_empty_instrument_mask_is_warned_about_by_name(tmp_path):
    """At 8 px a flute is thinner than half a pixel: its masks came out empty without a word."""
    job = TrackJob(str(tmp_path / "a"), "train", "flute", 0, 2, 0, str(DEFAULT_SOUNDFONT), 8, 90)
    with pytest.warns(UserWarning, match=r"flute00: 2 of its 2 instrument mask\(s\) came out empty at 8 px"):
        build_track(job)
