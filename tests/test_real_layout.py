"""The real Sub-URMP on disk: what a user unzips, where it is read from, and how a checkpoint finds it again."""

import os
import re
import shutil

import pytest
import torch

from cmav.data import cache as cache_mod
from cmav.data.check import check_dataset
from cmav.data.datamodule import AudioVisualDataModule
from cmav.data.datasets import SubURMP
from cmav.data.errors import DataError, DataWarning
from cmav.data.layout import scan_paired, scan_suburmp

from fixtures import make_paired, make_suburmp, make_suburmp_tracks, write_jpg, write_wav

CLASSES = ("cello", "flute")


# --- 1. nothing dropped without a word ---------------------------------------------------------------
def test_pairs_directly_in_a_split_folder_are_named_not_dropped(tmp_path):
    root = make_suburmp(tmp_path / "d", CLASSES)
    wav = write_wav(root / "chunk/train/cello00_900.wav")
    jpg = write_jpg(root / "img/train/cello00_900.jpg")
    for junk in (".DS_Store", "._cello00_900.wav"):  # what macOS leaves: nobody's data
        (root / "chunk/train" / junk).write_bytes(b"\0")
    scan = scan_suburmp(root, "train", CLASSES)
    assert scan.errors == []
    assert any(w.startswith(f"{wav}: a file directly in the split folder") for w in scan.warnings), scan.warnings
    assert any(w.startswith(f"{jpg}: a file directly in the split folder") for w in scan.warnings), scan.warnings
    assert not any("DS_Store" in w or "._cello" in w for w in scan.warnings)


def test_split_folders_other_than_train_and_validation_are_named(tmp_path, capsys):
    from cmav.cli.main import main

    root = make_suburmp(tmp_path / "d")
    for side in ("chunk", "img"):
        (root / side / "validation").rename(root / side / "val")
    shutil.copytree(root / "chunk/train", root / "chunk/test")
    errors = scan_suburmp(root, "validation").errors
    assert f"{root / 'chunk/validation'}: missing folder for split 'validation' (found: test, val)" in errors
    assert f"{root / 'img/validation'}: missing folder for split 'validation' (found: val)" in errors
    report = check_dataset(root, deep=False, progress=False)
    unknown = [w for w in report.warnings if "not a split" in w]
    assert sorted(unknown) == sorted(
        f"{root / side / name}: not a split folder (splits are train, validation); ignored"
        for side, name in (("chunk", "test"), ("chunk", "val"), ("img", "val"))
    )  # fmt: skip
    assert main(["data", "check", str(root), "--quick"]) == 1
    assert "(found: val)" in capsys.readouterr().err


def test_a_test_split_beside_train_and_validation_is_warned_of(tmp_path, capsys):
    from cmav.cli.main import main

    root = make_suburmp(tmp_path / "d")
    shutil.copytree(root / "chunk/validation", root / "chunk/test")
    shutil.copytree(root / "img/validation", root / "img/test")
    assert main(["data", "check", str(root), "--quick"]) == 0
    out = capsys.readouterr().out
    assert f"{root / 'chunk/test'}: not a split folder" in out and f"{root / 'img/test'}: not a split folder" in out
    with pytest.warns(DataWarning) as caught:  # training on it says so too
        SubURMP(root, "train", image_size=16, progress=False, cache_dir=tmp_path / "c")
    said = "\n".join(str(w.message) for w in caught)
    assert f"{root / 'chunk/test'}: not a split folder" in said and f"{root / 'img/test'}: not a split folder" in said


def test_paired_layout_names_files_and_folders_it_does_not_read(tmp_path):
    root = make_paired(tmp_path / "p")
    stray = write_wav(root / "audio/train/dog_9.wav")
    (root / "image/val").mkdir()
    scan = scan_paired(root, "train")
    assert any(w.startswith(f"{stray}: a file directly in the split folder") for w in scan.warnings)
    assert f"{root / 'image/val'}: not a split folder (splits are train, validation); ignored" in scan.warnings


# --- 2. a root one level off ----------------------------------------------------------------------------
def test_a_root_one_level_too_high_suggests_the_folder_below(tmp_path):
    root = tmp_path / "download"
    make_suburmp(root / "Sub-URMP", CLASSES)
    (root / "__MACOSX").mkdir()
    errors = scan_suburmp(root, "train", CLASSES).errors
    assert any(f"did you mean {root / 'Sub-URMP'}?" in e for e in errors), errors
    report = check_dataset(root, deep=False, progress=False)
    assert sum("did you mean" in e for e in report.errors) == 1  # once, not once per split


def test_a_root_one_level_too_low_suggests_its_parent(tmp_path):
    root = make_suburmp(tmp_path / "Sub-URMP", CLASSES)
    for given in (root / "chunk", root / "img"):
        errors = scan_suburmp(given, "train", CLASSES).errors
        assert any(f"did you mean {root}?" in e for e in errors), errors


def test_paired_root_one_level_too_high_suggests_the_folder_below(tmp_path):
    make_paired(tmp_path / "up" / "pets")
    errors = scan_paired(tmp_path / "up", "train").errors
    assert any(f"did you mean {tmp_path / 'up' / 'pets'}?" in e for e in errors), errors


# --- 3. a cache prepared in a root that is now read-only -------------------------------------------------
@pytest.fixture()
def read_only(monkeypatch, tmp_path):
    """Make a root read-only for the cache: chmod, and (as root, whom chmod does not stop) the writability check."""
    made = []

    def freeze(root):
        root.chmod(0o555)
        made.append(root)
        if os.geteuid() == 0:
            real = cache_mod._writable
            monkeypatch.setattr(cache_mod, "_writable", lambda p: False if p == root else real(p))

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    yield freeze
    for root in made:
        root.chmod(0o755)


def test_a_cache_prepared_in_a_now_read_only_root_is_read_not_recomputed(tmp_path, monkeypatch, read_only):
    root = make_suburmp(tmp_path / "d", chunks=1)
    first = SubURMP(root, "train", image_size=16, progress=False)
    (local,) = (root / ".cmav_cache").glob("train-*.pt")
    stamp = local.stat().st_mtime_ns
    read_only(root)
    home = tmp_path / "home" / ".cache" / "cmav"
    real_build = cache_mod.build_tensors

    def fail(*a, **k):
        raise AssertionError("cache was rebuilt")

    monkeypatch.setattr(cache_mod, "build_tensors", fail)
    again = SubURMP(root, "train", image_size=16, progress=False)
    assert torch.equal(again.tensors.audio, first.tensors.audio) and not home.exists()
    # a stale prepared file: rebuilt into the home folder, the root's file left as it is, then read from there
    wav = root / "chunk/train/cello/cello00_500.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    monkeypatch.setattr(cache_mod, "build_tensors", real_build)
    SubURMP(root, "train", image_size=16, progress=False)
    assert len(list(home.rglob("train-*.pt"))) == 1 and local.stat().st_mtime_ns == stamp
    monkeypatch.setattr(cache_mod, "build_tensors", fail)
    SubURMP(root, "train", image_size=16, progress=False)


def test_cmav_data_cache_says_where_the_cache_files_are(tmp_path, capsys, read_only):
    from cmav.cli.main import main

    root = make_suburmp(tmp_path / "d", chunks=1)
    assert main(["data", "cache", str(root), "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    files = sorted((root / ".cmav_cache").glob("*.pt"))
    assert len(files) == 2 and all(str(f) in out for f in files), out
    (tmp_path / "c").mkdir()
    assert main(["data", "cache", str(root), "--image-size", "16", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert all(str(f) in out for f in (tmp_path / "c").glob("*.pt")) and str(root / ".cmav_cache") not in out
    read_only(root)
    assert main(["data", "cache", str(root), "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert all(str(f) in out for f in files), out  # read where it was prepared


# --- 4. a checkpoint's data root from another working folder ---------------------------------------------
def test_the_datamodule_records_the_root_as_typed_and_resolved(tmp_path, monkeypatch):
    make_suburmp(tmp_path / "data" / "real", chunks=1)
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    dm = AudioVisualDataModule(root="link/real", progress=False)
    assert dm.hparams.root == "link/real"
    assert dm.hparams.root_resolved == str((tmp_path / "data" / "real").resolve())
    torch.save(dict(dm.hparams), tmp_path / "h.pt")  # plain, for weights_only checkpoints
    assert torch.load(tmp_path / "h.pt", weights_only=True)["root_resolved"] == dm.hparams.root_resolved


def test_a_recorded_root_is_found_from_another_folder_and_a_missing_one_is_named(tmp_path, monkeypatch):
    from cmav.data.datamodule import recorded_root

    real = make_suburmp(tmp_path / "data" / "real", chunks=1).resolve()
    elsewhere = tmp_path / "elsewhere"
    make_suburmp(elsewhere / "data" / "real", chunks=1)  # another data set at the same relative path
    monkeypatch.chdir(elsewhere)
    settings = {"root": "data/real", "root_resolved": str(real)}
    assert recorded_root(settings) == real
    # moved from another machine: the absolute path is not here, the typed one is taken
    assert recorded_root({**settings, "root_resolved": "/nowhere/real"}) == (elsewhere / "data/real").resolve()
    # a checkpoint saved before the resolved root was recorded: the typed root, as before
    assert recorded_root({"root": "data/real"}) == (elsewhere / "data/real").resolve()
    with pytest.raises(DataError, match=re.escape("data/gone: the checkpoint's data root does not exist here (nor "
                                                  "/nowhere/gone, its absolute path when trained): pass --root")):  # fmt: skip
        recorded_root({"root": "data/gone", "root_resolved": "/nowhere/gone"})
    with pytest.raises(DataError, match=r"^data/gone: the checkpoint's data root does not exist here: pass --root$"):
        recorded_root({"root": "data/gone"})


def test_a_judge_trained_on_the_scored_tails_is_refused_from_another_folder(tmp_path, monkeypatch):
    from cmav.evaluation.paired import check_judge_unseen

    data = make_suburmp_tracks(tmp_path / "work" / "data", tracks=(0, 2), chunks=4, val_track=1)
    monkeypatch.chdir(tmp_path / "work")
    trained = AudioVisualDataModule(root="data", image_size=16, holdout_tail=0.0, progress=False,
                                    cache_dir=str(tmp_path / "c"))  # fmt: skip
    judge = {"datamodule_hyper_parameters": dict(trained.hparams)}
    assert judge["datamodule_hyper_parameters"]["root"] == "data"
    monkeypatch.chdir(tmp_path)  # evaluated from elsewhere, the data spelt another way
    scored = AudioVisualDataModule(root=str(data), image_size=16, holdout_tail=0.5, holdout_gap_ms=0, progress=False,
                                   cache_dir=str(tmp_path / "c"))  # fmt: skip
    scored.setup("fit")
    with pytest.raises(ValueError, match=r"the player judge was trained on data with data.holdout_tail 0"):
        check_judge_unseen(judge, scored, "player judge", split="holdout")
    # a checkpoint without the resolved root: the typed one, against the current folder, as before
    old = {"datamodule_hyper_parameters": {k: v for k, v in trained.hparams.items() if k != "root_resolved"}}
    with pytest.warns(DataWarning, match="cannot be checked"):
        assert check_judge_unseen(old, scored, "player judge", split="holdout")


def test_evaluation_opens_the_data_a_checkpoint_recorded_from_another_folder(tmp_path, monkeypatch):
    from cmav.evaluation.generate import datamodule_for

    real = make_suburmp(tmp_path / "work" / "data", chunks=1).resolve()
    monkeypatch.chdir(tmp_path / "work")
    trained = AudioVisualDataModule(root="data", image_size=16, progress=False, cache_dir=str(tmp_path / "c"))
    blob = {"datamodule_hyper_parameters": dict(trained.hparams), "hyper_parameters": {}}
    elsewhere = tmp_path / "elsewhere"
    make_suburmp(elsewhere / "data", chunks=1)  # another data set at the same relative path: never read
    monkeypatch.chdir(elsewhere)
    assert os.path.realpath(datamodule_for(blob).root) == str(real)
    shutil.rmtree(real)
    monkeypatch.chdir(tmp_path)  # neither the recorded nor the typed root is here
    with pytest.raises(DataError, match=r"the checkpoint's data root does not exist here .*: pass --root"):
        datamodule_for(blob)
