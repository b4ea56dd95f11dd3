"""``cmav data split-players``: a development root of unseen train players."""

import json

import pytest

from cmav.cli.main import main
from cmav.data.check import check_dataset
from cmav.data.datasets import SubURMP
from cmav.data.errors import DataError
from cmav.data.instruments import INSTRUMENTS
from cmav.data.layout import scan_suburmp
from cmav.data.player_split import MANIFEST, split_players

from fixtures import make_suburmp_tracks, write_jpg


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = make_suburmp_tracks(tmp_path_factory.mktemp("players") / "src", tracks=(0, 1, 2), chunks=2)
    # a mask beside every train frame, as the stand-in writes
    for s in scan_suburmp(root, "train").samples:
        write_jpg(root / "mask" / "train" / s.class_name / f"{s.stem}.png", colour=(255, 255, 255))
    return root


def _tracks(root, split):
    out: dict[str, set[int]] = {}
    for s in scan_suburmp(root, split).samples:
        out.setdefault(s.class_name, set()).add(s.track)
    return out


def test_held_out_players_leave_train_and_become_validation(source, tmp_path):
    dev = tmp_path / "dev"
    m = split_players(source, dev, per_class=1, seed=0)
    train, val = _tracks(dev, "train"), _tracks(dev, "validation")
    assert sorted(train) == sorted(val) == sorted(INSTRUMENTS)
    for c in INSTRUMENTS:
        assert val[c] == set(m["held_out_tracks"][c]) and len(val[c]) == 1
        assert train[c] == {0, 1, 2} - val[c]  # every other player still trains, none lost
        assert 9 not in train[c] | val[c]  # the source's validation players are not in the dev root
    assert m["counts"]["train"]["oboe"] == 4 and m["counts"]["validation"]["oboe"] == 2
    assert json.loads((dev / MANIFEST).read_text()) == m
    # frames, audio and masks are links to the source files
    s = scan_suburmp(dev, "validation").samples[0]
    assert s.audio_path.is_symlink() and s.audio_path.resolve().parent.parent.name == "train"
    assert (dev / "mask" / "validation" / s.class_name / f"{s.stem}.png").resolve().is_file()
    assert len(SubURMP(dev, "validation", image_size=32, cache_dir=tmp_path / "cache", progress=False)) == 26


def test_a_leftover_partial_split_is_replaced_and_none_is_left(source, tmp_path):
    (tmp_path / "dev.partial" / "chunk").mkdir(parents=True)  # an interrupted earlier split
    (tmp_path / "dev.partial" / "chunk" / "stray.wav").write_bytes(b"")
    split_players(source, tmp_path / "dev")
    assert not (tmp_path / "dev.partial").exists() and not (tmp_path / "dev" / "chunk" / "stray.wav").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dev"]


def test_seed_chooses_the_players_and_is_repeatable(source, tmp_path):
    a = split_players(source, tmp_path / "a", seed=0)["held_out_tracks"]
    assert split_players(source, tmp_path / "b", seed=0)["held_out_tracks"] == a
    others = [split_players(source, tmp_path / f"s{k}", seed=k)["held_out_tracks"] for k in range(1, 4)]
    assert any(o != a for o in others)


def test_refuses_instruments_with_too_few_tracks(tmp_path):
    src = make_suburmp_tracks(tmp_path / "src", tracks=(0, 1), chunks=1, single_track=("trumpet",))
    with pytest.raises(DataError, match=r"too few train tracks: trumpet \(1\) \(--single-track tail"):
        split_players(src, tmp_path / "dev")
    with pytest.raises(DataError, match="too few train tracks"):
        split_players(src, tmp_path / "dev2", per_class=2)
    assert not (tmp_path / "dev").exists()


def test_refuses_an_existing_folder_and_a_bad_count(source, tmp_path):
    (tmp_path / "dev").mkdir()
    with pytest.raises(DataError, match="already exists"):
        split_players(source, tmp_path / "dev")
    with pytest.raises(ValueError, match="per_class must be >= 1"):
        split_players(source, tmp_path / "dev3", per_class=0)


def test_cli_names_the_held_out_players(source, tmp_path, capsys):
    assert main(["data", "split-players", str(source), "-o", str(tmp_path / "dev"), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    m = json.loads((tmp_path / "dev" / MANIFEST).read_text())
    assert f"violin{m['held_out_tracks']['violin'][0]:02d}" in out and "52 train / 26 validation" in out
    assert main(["data", "split-players", str(source), "-o", str(tmp_path / "dev")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_a_grid_makes_its_development_root_once_and_refuses_another(source, tmp_path, capsys):
    from cmav.ablation.grid import data_root

    dev = tmp_path / "dev"
    cfg = {"data": {"root": str(dev), "player_split": {"source": str(source), "seed": 2}}}
    assert data_root(cfg, tmp_path) == dev and "development root" in capsys.readouterr().out
    held = json.loads((dev / MANIFEST).read_text())["held_out_tracks"]
    assert data_root(cfg, tmp_path) == dev and capsys.readouterr().out == ""  # made once
    assert json.loads((dev / MANIFEST).read_text())["held_out_tracks"] == held
    with pytest.raises(ValueError, match="not the development root"):
        data_root({"data": {"root": str(dev), "player_split": {"source": str(source), "seed": 3}}}, tmp_path)
    with pytest.raises(ValueError, match="not the development root"):  # a folder without the split's manifest
        data_root({"data": {"root": str(source), "player_split": {"source": str(source)}}}, tmp_path)
    with pytest.raises(ValueError, match="needs data.root"):
        data_root({"data": {"root": None, "player_split": {"source": str(source)}}}, tmp_path)
    with pytest.raises(ValueError, match=r"takes \{per_class, seed, single_track, source, tail_fraction\}"):
        data_root({"data": {"root": str(dev), "player_split": {"source": str(source), "players": 2}}}, tmp_path)


def test_the_s2i_grids_dev_preset_is_its_conditions_preset_on_a_development_root():
    from pathlib import Path

    from cmav.ablation import load_grid

    grid = Path(__file__).parents[1] / "experiments" / "ablations" / "s2i.yaml"
    default = {v["name"]: v for v in load_grid(grid)["variants"]}
    cond, dev = load_grid(grid, "conditions"), load_grid(grid, "dev")
    assert {k: v for k, v in dev.items() if k not in ("data", "preset")} == {k: v for k, v in cond.items() if k not in ("data", "preset")}
    assert dev["data"] == {**cond["data"], "root": "data/default_dev", "player_split": {"source": cond["data"]["root"], "per_class": 1, "seed": 0}}
    assert cond["evaluation"]["inference_conditions"] == ["own", "nearest", "class_mean"]
    for v in cond["variants"]:  # the default grid's rows, scored with the 10 nearest for `nearest`
        assert {k: x for k, x in v.items() if k != "inference_neighbours"} == default[v["name"]] and v["inference_neighbours"] == 10


@pytest.fixture(scope="module")
def one_trumpeter(tmp_path_factory):
    """The real Sub-URMP's case: trumpet (like bassoon and double bass) has a single train track."""
    return make_suburmp_tracks(tmp_path_factory.mktemp("tail") / "src", tracks=(0, 1), chunks=10, single_track=("trumpet",))


def _times(root, split, name):
    return sorted(s.time_ms for s in scan_suburmp(root, split).samples if s.class_name == name)


def test_a_single_track_instrument_lends_the_end_of_its_track(one_trumpeter, tmp_path, capsys):
    dev = tmp_path / "dev"
    assert main(["data", "split-players", str(one_trumpeter), "-o", str(dev), "--single-track", "tail"]) == 0
    out = capsys.readouterr().out
    m = json.loads((dev / MANIFEST).read_text())
    # 10 chunks 100 ms apart: the last 20 % (2) is validation; the 4 that share audio with it are in neither split
    assert _times(dev, "validation", "trumpet") == [1300, 1400] and _times(dev, "train", "trumpet") == [500, 600, 700, 800]
    assert all(v - t >= 500 for v in _times(dev, "validation", "trumpet") for t in _times(dev, "train", "trumpet"))
    assert m["held_out_tails"] == {"trumpet": {"0": 1300}} and m["left_out_at_boundary"] == {"trumpet": 4}
    assert "trumpet" not in m["held_out_tracks"] and len(m["held_out_tracks"]) == 12
    assert m["counts"]["train"]["trumpet"] == 4 and m["counts"]["validation"]["trumpet"] == 2
    assert m["single_track"] == "tail" and m["tail_fraction"] == 0.2
    # the other instruments still move a whole player, every chunk of it
    assert _tracks(dev, "validation")["oboe"] == set(m["held_out_tracks"]["oboe"]) and m["counts"]["validation"]["oboe"] == 10
    assert "trumpet00 from 1300 ms" in out and "seen players" in out and "4 chunk(s)" in out
    # `cmav data check` reads the manifest: the trumpeter in both splits is held out in time, not a leak
    report = check_dataset(dev, deep=False, progress=False)
    assert not report.errors, report.errors
    (dev / MANIFEST).unlink()
    assert any("'trumpet' has track(s) [0] in both train and validation" in e
               for e in check_dataset(dev, deep=False, progress=False).errors)


def test_a_tail_that_leaves_nothing_to_train_on_is_refused(one_trumpeter, tmp_path):
    with pytest.raises(DataError, match="leaves no train chunk clear of the held-out ones for: trumpet"):
        split_players(one_trumpeter, tmp_path / "dev", single_track="tail", tail_fraction=0.6)
    assert not (tmp_path / "dev").exists() and not (tmp_path / "dev.partial").exists()
    with pytest.raises(ValueError, match=r"tail_fraction must be in \(0, 1\)"):
        split_players(one_trumpeter, tmp_path / "dev", single_track="tail", tail_fraction=1.0)
    with pytest.raises(ValueError, match="single_track must be"):
        split_players(one_trumpeter, tmp_path / "dev", single_track="skip")


def test_a_grid_passes_the_single_track_rule_and_checks_it(one_trumpeter, tmp_path):
    from cmav.ablation.grid import data_root

    dev = tmp_path / "dev"
    split = {"source": str(one_trumpeter), "single_track": "tail", "tail_fraction": 0.3}
    assert data_root({"data": {"root": str(dev), "player_split": split}}, tmp_path) == dev
    assert json.loads((dev / MANIFEST).read_text())["held_out_tails"] == {"trumpet": {"0": 1200}}
    with pytest.raises(ValueError, match="not the development root"):
        data_root({"data": {"root": str(dev), "player_split": {**split, "tail_fraction": 0.2}}}, tmp_path)
    with pytest.raises(DataError, match="too few train tracks"):  # the default still refuses
        data_root({"data": {"root": str(tmp_path / "dev2"), "player_split": {"source": str(one_trumpeter)}}}, tmp_path)
