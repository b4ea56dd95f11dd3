"""`cmav data build` as a command: what it prints."""

from __future__ import annotations

import warnings

from cmav.cli.main import main
from cmav.standin.build import PRESETS, Preset, track_plan


def test_cmav_data_build_prints_its_warnings_as_note_lines(tmp_path, monkeypatch, capsys):
    # one 2-chunk train track per instrument: a build of seconds
    monkeypatch.setitem(PRESETS, "micro", Preset("micro", 1, 0, 2, 2, frame_size=32))
    root = tmp_path / "micro"
    argv = ["data", "build", "--root", str(root), "--preset", "micro", "--workers", "1"]
    assert main(argv) == 0
    capsys.readouterr()
    split, inst, track, _ = next(t for t in track_plan(PRESETS["micro"]) if t[1] == "flute")
    (root / f"chunk/{split}/{inst}/{inst}{track:02d}_600.wav").unlink()
    with warnings.catch_warnings(record=True) as caught:  # none escapes the command as a Python warning
        warnings.simplefilter("always")
        assert main(argv) == 0
    assert not [w for w in caught if issubclass(w.category, UserWarning)], [str(w.message) for w in caught]
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "files of 1 of its 2 chunk(s) are missing" in x)
    assert line.startswith(f"note: {root}: {split}/{inst}{track:02d}: ") and "UserWarning" not in err, err
    assert (root / f"chunk/{split}/{inst}/{inst}{track:02d}_600.wav").is_file()  # rendered again
