"""Packed data sets: a root's cached splits in compressed files, opened wherever a root goes."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import pytest
import torch

from cmav.cli.main import main
from cmav.data import AudioVisualDataModule
from cmav.data.errors import DataError
from cmav.data.masks import load_split_masks
from cmav.data.pack import PACK_MANIFEST, is_pack, write_pack

from fixtures import make_suburmp_tracks, write_jpg

SIZE = 32


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("pack")
    root = make_suburmp_tracks(base / "root", tracks=(0, 1), chunks=3)
    (root / "cmav_standin.json").write_text('{"preset": "fixture"}')
    for split in ("train", "validation"):  # a mask for every frame, as the stand-in has
        for img in (root / "img" / split).rglob("*.jpg"):
            write_jpg(root / "mask" / split / img.parent.name / f"{img.stem}.png", size=(96, 96), colour=(255, 255, 255))
    out = base / "pack"
    code = main(["data", "pack", str(root), "-o", str(out), "--image-size", str(SIZE), "--cache-dir", str(base / "c")])
    assert code == 0
    return {"root": root, "pack": out, "base": base}


def _dm(root, **kw) -> AudioVisualDataModule:
    dm = AudioVisualDataModule(str(root), image_size=SIZE, progress=False, **kw)
    dm.setup("fit")
    return dm


def test_a_pack_gives_the_data_module_exactly_what_its_root_gives(packed):
    assert is_pack(packed["pack"]) and not is_pack(packed["root"])
    a = _dm(packed["root"], cache_dir=str(packed["base"] / "c"), holdout_tail=0.34, holdout_gap_ms=0)
    b = _dm(packed["pack"], holdout_tail=0.34, holdout_gap_ms=0)
    for x, y in ((a.train_full.tensors, b.train_full.tensors), (a.val.tensors, b.val.tensors)):
        for k, v in asdict(x).items():
            w = getattr(y, k)
            assert (torch.equal(v, w) if isinstance(v, torch.Tensor) else v == w), k
    assert list(a.train.indices) == list(b.train.indices) and list(a.train_holdout.indices) == list(b.train_holdout.indices)
    t = b.val.tensors
    masks = load_split_masks(b.root, "validation", t.stems, t.class_names, t.labels, SIZE)
    assert masks.shape == (len(t), SIZE, SIZE) and masks.all()  # read from the pack's own mask folder
    assert (packed["pack"] / "cmav_standin.json").read_text() == '{"preset": "fixture"}'
    manifest = json.loads((packed["pack"] / PACK_MANIFEST).read_text())
    assert manifest["splits"]["train"]["pairs"] == len(a.train_full) and manifest["features"]["kind"] == "lms"


def test_a_pack_refuses_other_settings_and_names_what_differs(packed):
    with pytest.raises(DataError, match=r"pack: packed for other settings than asked \(image_size: 32 -> 64\)"):
        AudioVisualDataModule(str(packed["pack"]), image_size=64, progress=False).setup("fit")
    with pytest.raises(DataError, match=r"n_mels: 128 -> 64.*cmav data pack"):
        _dm(packed["pack"], features={"n_mels": 64})
    with pytest.raises(DataError, match="holds features, not raw chunks: waveform augmentation needs the source root"):
        _dm(packed["pack"], augment={"gain": {"p": 1.0}})
    from cmav.data.datasets import PackedSplit

    names = PackedSplit(packed["pack"], "train", image_size=SIZE).class_names
    assert PackedSplit(packed["pack"], "train", image_size=SIZE, classes=names).class_names == names
    with pytest.raises(DataError, match=r"split 'train' holds the classes .* in that order; asked for \['drum', 'dog'\]"):
        PackedSplit(packed["pack"], "train", image_size=SIZE, classes=["drum", "dog"])  # was dropped without a word


def test_a_damaged_or_unfinished_pack_is_refused_by_name(packed, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(packed["pack"], copy)
    data = (copy / "validation.pt.xz").read_bytes()
    (copy / "validation.pt.xz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"validation\.pt\.xz: missing, half-written or damaged"):
        _dm(copy)
    (copy / PACK_MANIFEST).write_text("{not json")
    with pytest.raises(DataError, match=r"cmav_pack\.json: not a readable pack manifest"):
        _dm(copy)
    (copy / PACK_MANIFEST).unlink()  # a pack cut off before its manifest is no pack: read as a root, refused as one
    with pytest.raises(DataError):
        _dm(copy)
    with pytest.raises(DataError, match="is already a packed data set"):
        write_pack(packed["pack"], tmp_path / "again")
    # into an old pack's folder: its manifest and masks would stay beside another root's splits
    bare = shutil.copytree(packed["root"], tmp_path / "bare", ignore=shutil.ignore_patterns("mask", "cmav_*.json"))
    with pytest.raises(DataError, match=r"pack: already exists and is not an empty folder"):
        write_pack(bare, packed["pack"], image_size=SIZE)
    assert json.loads((packed["pack"] / PACK_MANIFEST).read_text())["source"] == str(packed["root"].resolve())


def test_training_runs_on_a_pack(packed):
    import lightning as L

    from cmav.tasks import ClassifierTask

    L.seed_everything(0, verbose=False)
    task = ClassifierTask(modality="audio", audio_encoder={"n_blocks": 3, "base_channels": 8, "dropout": 0.0})
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1)  # fmt: skip
    trainer.fit(task, AudioVisualDataModule(str(packed["pack"]), image_size=SIZE, batch_size=8, progress=False))
    assert trainer.global_step == 2 and torch.isfinite(torch.tensor(float(trainer.callback_metrics["train/loss"])))


def test_files_are_written_whole_with_the_usual_mode(tmp_path):
    import os
    import stat

    from cmav.data.files import atomic_write

    umask = os.umask(0)
    os.umask(umask)
    path = atomic_write(tmp_path / "a" / "f.bin", lambda tmp: open(tmp, "wb").write(b"x"))
    assert path.read_bytes() == b"x" and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600

    def fails(tmp):
        open(tmp, "wb").write(b"half")
        raise RuntimeError("cut off")

    with pytest.raises(RuntimeError, match="cut off"):
        atomic_write(tmp_path / "a" / "g.bin", fails)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["f.bin"]  # no half file, no temporary left


def test_a_pack_of_another_cache_version_or_of_none_is_refused(packed, tmp_path, monkeypatch):
    # the features a pack holds were computed under a cache version: one bumped since (a front end's
    # output changed) must not be served from an old pack, as it is not from an old cache file
    from cmav.data.cache import CACHE_VERSION

    manifest = json.loads((packed["pack"] / PACK_MANIFEST).read_text())
    assert manifest["cache_version"] == CACHE_VERSION
    copy = shutil.copytree(packed["pack"], tmp_path / "copy")
    (copy / PACK_MANIFEST).write_text(json.dumps({**manifest, "cache_version": CACHE_VERSION - 1}))
    with pytest.raises(DataError, match=rf"features computed under cache version {CACHE_VERSION - 1}; this cmav "
                                        rf"computes version {CACHE_VERSION}.*: pack again from .*cmav data pack"):  # fmt: skip
        _dm(copy)
    del manifest["cache_version"]
    (copy / PACK_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"records no cache version \(written before packs did\).*pack again from"):
        _dm(copy)
    from cmav.data import cache

    monkeypatch.setattr(cache, "CACHE_VERSION", CACHE_VERSION + 1)  # a front end's output changed: the pack is old
    with pytest.raises(DataError, match=rf"under cache version {CACHE_VERSION}; this cmav computes version {CACHE_VERSION + 1}"):
        _dm(packed["pack"])


def test_a_failed_pack_leaves_nothing_that_blocks_the_retry(packed, tmp_path):
    from cmav.data.pack import write_pack

    out = tmp_path / "p"
    with pytest.raises(ValueError, match="unknown split 'nosuch'"):  # train is packed, then the second split fails
        write_pack(packed["root"], out, image_size=SIZE, cache_dir=packed["base"] / "c", progress=False,
                   splits=("train", "nosuch"))  # fmt: skip
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no half pack, no hidden leftovers
    out.mkdir()  # an empty folder made for it is fine too
    manifest = write_pack(packed["root"], out, image_size=SIZE, cache_dir=packed["base"] / "c", progress=False,
                          splits=("validation",))  # fmt: skip
    assert is_pack(out) and sorted(manifest["splits"]) == ["validation"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"] and (out / "mask").is_dir()
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # shareable, not a temporary folder's 0700
    with pytest.raises(ValueError, match="image_size must be >= 1, got 0"):
        write_pack(packed["root"], tmp_path / "q", image_size=0)
    assert not (tmp_path / "q").exists()


def test_a_killed_packs_hidden_folder_is_cleared_once_stale(packed, tmp_path):
    import os
    import time

    from cmav.data.pack import write_pack

    old, fresh = tmp_path / ".p.abc123.partial", tmp_path / ".p.def456.partial"  # as a SIGKILLed pack leaves them
    for d in (old, fresh):
        (d / "mask").mkdir(parents=True)
        (d / "train.pt.xz").write_bytes(b"half")
    hours_ago = time.time() - 2 * 3600
    for p in (old, old / "mask", old / "train.pt.xz"):
        os.utime(p, (hours_ago, hours_ago))
    write_pack(packed["root"], tmp_path / "p", image_size=SIZE, cache_dir=packed["base"] / "c", progress=False,
               splits=("validation",))  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == [fresh.name, "p"]  # a live writer's is left alone


def test_cmav_data_check_checks_a_pack_and_never_suggests_a_rebuild(packed, tmp_path, capsys):
    assert main(["data", "check", str(packed["root"]), "--quick"]) == 0
    table = capsys.readouterr().out.split("\n\n")[0]
    assert main(["data", "check", str(packed["pack"])]) == 0
    out = capsys.readouterr().out
    assert table in out and out.rstrip().endswith(f"{packed['pack']}: OK")  # the same counts, from the packed labels
    assert f"packed from {packed['root'].resolve()}" in out
    copy = shutil.copytree(packed["pack"], tmp_path / "copy")
    data = (copy / "train.pt.xz").read_bytes()
    (copy / "train.pt.xz").write_bytes(data[: len(data) // 2])
    assert main(["data", "check", str(copy)]) == 1
    captured = capsys.readouterr()
    assert "train.pt.xz: missing, half-written or damaged" in captured.err
    assert "missing folder" not in captured.err and "data build" not in captured.out + captured.err


def test_sheet_split_players_and_build_refuse_a_pack_by_name(packed, tmp_path, capsys):
    source = packed["root"].resolve()
    before = sorted(p.name for p in packed["pack"].rglob("*"))
    for argv, command in ((["data", "sheet", str(packed["pack"]), "-o", str(tmp_path / "s.png")], "cmav data sheet"),
                          (["data", "split-players", str(packed["pack"]), "-o", str(tmp_path / "dev")],
                           "cmav data split-players")):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"error: {packed['pack']}: is a pack ({PACK_MANIFEST}): run `{command}` on its source {source}\n"
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "dev").exists()
    assert main(["data", "build", "--root", str(packed["pack"]), "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{packed['pack']}: is a pack ({PACK_MANIFEST})" in err, err
    assert sorted(p.name for p in packed["pack"].rglob("*")) == before
