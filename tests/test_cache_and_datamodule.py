import os

import pytest
import torch

from cmav.data import cache as cache_mod
from cmav.data.datamodule import AudioVisualDataModule
from cmav.data.datasets import SubURMP
from cmav.data.errors import DataWarning
from cmav.data.tails import tail_holdout
from cmav.features import LogMelConfig

from fixtures import make_suburmp


@pytest.fixture()
def root(tmp_path):
    return make_suburmp(tmp_path / "suburmp", chunks=3)


def test_dataset_items_have_documented_shapes_and_ranges(root):
    ds = SubURMP(root, "train", image_size=32, progress=False)
    assert len(ds) == 13 * 3
    item = ds[0]
    assert item["audio"].shape == (1, 128, 44) and item["audio"].dtype == torch.float32
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert int(item["label"]) == 0 and int(item["track"]) == 0 and int(item["time"]) == 500
    assert ds.tensors.audio.dtype == torch.float16 and ds.tensors.images.dtype == torch.uint8


def test_cache_is_reused_and_not_recomputed(root, monkeypatch):
    SubURMP(root, "train", image_size=32, progress=False)
    files = list((root / ".cmav_cache").glob("train-*.pt"))
    assert len(files) == 1

    def fail(*a, **k):
        raise AssertionError("cache was rebuilt")

    monkeypatch.setattr(cache_mod, "build_tensors", fail)
    assert len(SubURMP(root, "train", image_size=32, progress=False)) == 39


def test_changed_source_file_invalidates_the_cache(root, monkeypatch):
    a = SubURMP(root, "train", image_size=32, progress=False)
    wav = root / "chunk/train/cello/cello00_500.wav"
    st = wav.stat()
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    real = cache_mod.build_tensors
    monkeypatch.setattr(cache_mod, "build_tensors", lambda *a, **k: calls.append(1) or real(*a, **k))
    b = SubURMP(root, "train", image_size=32, progress=False)
    assert calls == [1] and torch.equal(a.tensors.audio, b.tensors.audio)


def test_front_end_config_gets_its_own_cache_entry(root):
    a = SubURMP(root, "train", image_size=32, progress=False)
    b = SubURMP(root, "train", image_size=32, features=LogMelConfig(n_mels=64), progress=False)
    assert a.tensors.audio.shape[2] == 128 and b.tensors.audio.shape[2] == 64
    assert len(list((root / ".cmav_cache").glob("train-*.pt"))) == 2


def test_half_written_cache_is_rebuilt_with_a_warning(root):
    SubURMP(root, "train", image_size=32, progress=False)
    (f,) = (root / ".cmav_cache").glob("train-*.pt")
    f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(DataWarning, match="unreadable cache file"):
        ds = SubURMP(root, "train", image_size=32, progress=False)
    assert len(ds) == 39


def test_tail_holdout_takes_the_end_of_each_track():
    labels = torch.tensor([0] * 10 + [1] * 10)
    tracks = torch.tensor([0] * 10 + [3] * 10)
    times = torch.tensor(list(range(1400, 400, -100)) + list(range(500, 1500, 100)))
    keep, held = tail_holdout(tracks, labels, times, 0.1)
    assert set(keep).isdisjoint(held) and len(keep) + len(held) == 20
    assert [int(times[i]) for i in held] == [1400, 1400]


def test_tail_holdout_leaves_out_held_chunks_that_share_audio_with_trained_ones():
    labels, tracks = torch.zeros(10, dtype=torch.long), torch.zeros(10, dtype=torch.long)
    times = torch.arange(500, 1500, 100)  # Sub-URMP: 500-ms chunks every 100 ms
    keep, held = tail_holdout(tracks, labels, times, 0.5, guard_ms=500)
    assert keep == tail_holdout(tracks, labels, times, 0.5)[0] == [0, 1, 2, 3, 4]  # training is the same
    # the last trained chunk starts at 900: 1000-1300 overlap it, so they are in neither list
    assert [int(times[i]) for i in held] == [1400]
    # or the last kept ones (a development split keeps every held-out chunk instead)
    keep, held = tail_holdout(tracks, labels, times, 0.5, guard_ms=500, drop="kept")
    assert [int(times[i]) for i in keep] == [500] and len(held) == 5
    assert len(tail_holdout(tracks, labels, times, 0.3)[1]) == 3  # 0.3 * 10 is 3.0000000000000004
    # unknown times (-1, a paired layout) are not guarded
    keep, held = tail_holdout(tracks, labels, torch.full((10,), -1), 0.5, guard_ms=500)
    assert len(keep) == len(held) == 5


def test_datamodule_holds_out_only_unheard_audio_and_says_when_none_is_left(root, tmp_path):
    # 3 chunks a track, 100 ms apart: the held-out 700 shares audio with the trained 600
    dm = AudioVisualDataModule(str(root), image_size=32, holdout_tail=0.3, cache_dir=str(tmp_path / "c"), progress=False)
    dm.setup("fit")
    assert len(dm.train) == 13 * 2 and len(dm.train_holdout) == 0
    assert "leaves no held-out chunk starting 500 ms" in dm.holdout_shortfall() and "holdout_gap_ms 0" in dm.holdout_shortfall()
    kept = AudioVisualDataModule(str(root), image_size=32, holdout_tail=0.3, holdout_gap_ms=0, cache_dir=str(tmp_path / "c"),
                                 progress=False)  # fmt: skip
    kept.setup("fit")
    assert len(kept.train_holdout) == 13 and kept.holdout_shortfall() is None
    none = AudioVisualDataModule(str(root), image_size=32, cache_dir=str(tmp_path / "c"), progress=False)
    none.setup("fit")
    assert "set data.holdout_tail > 0" in none.holdout_shortfall()
    with pytest.raises(ValueError, match="holdout_gap_ms must be >= 0"):
        AudioVisualDataModule(str(root), holdout_tail=0.3, holdout_gap_ms=-1)


def test_datamodule_batches(root, tmp_path):
    dm = AudioVisualDataModule(str(root), image_size=32, batch_size=8, holdout_tail=0.3, holdout_gap_ms=0,
                               cache_dir=str(tmp_path / "c"), progress=False)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (8, 1, 128, 44) and batch["image"].shape == (8, 3, 32, 32)
    assert len(dm.train) == 13 * 2 and len(dm.train_holdout) == 13
    held_times = {int(dm.train_full.tensors.times[i]) for i in dm.train_holdout.indices}
    assert held_times == {700}
    assert len(dm.val) == 39 and dm.class_names[0] == "bassoon"
    # split_items: the same items as the splits' own datasets, and the three never overlap
    t, train = dm.split_items("train")
    _, held = dm.split_items("holdout")
    v, val = dm.split_items("validation")
    assert t is dm.train_full.tensors and v is dm.val.tensors
    assert train.tolist() == list(dm.train.indices) and held.tolist() == list(dm.train_holdout.indices)
    assert not set(train.tolist()) & set(held.tolist()) and len(train) + len(held) == len(t)
    assert val.tolist() == list(range(39))
    with pytest.raises(ValueError, match="unknown split 'test'"):
        dm.split_items("test")


def test_datamodule_hparams_are_plain_for_safe_checkpoints(root, tmp_path):
    dm = AudioVisualDataModule(str(root), features=LogMelConfig(n_mels=64), cache_dir=str(tmp_path / "c"))
    torch.save(dict(dm.hparams), tmp_path / "h.pt")
    loaded = torch.load(tmp_path / "h.pt", weights_only=True)
    assert loaded["features"]["n_mels"] == 64 and dm.features.n_mels == 64


def test_datamodule_refuses_a_player_in_both_train_and_validation(tmp_path):
    import shutil

    from cmav.data.errors import DataError

    root = make_suburmp(tmp_path / "s", chunks=2)
    for kind in ("chunk", "img"):  # the train player's own files copied into validation
        for f in (root / kind / "train/violin").iterdir():
            shutil.copy(f, root / kind / "validation/violin" / f.name)
    dm = AudioVisualDataModule(str(root), image_size=16, progress=False)
    with pytest.raises(DataError, match=rf"{root}: class 'violin' has track\(s\) \[0\] in both train and validation"):
        dm.setup("fit")


def test_datamodule_accepts_a_development_root_that_lends_a_track_tail(tmp_path):
    import json

    from cmav.data import split_players
    from cmav.data.errors import DataError
    from cmav.data.player_split import MANIFEST

    from fixtures import make_suburmp_tracks

    src = make_suburmp_tracks(tmp_path / "src", tracks=(0, 1), chunks=8, single_track=("trumpet",))
    dev = tmp_path / "dev"
    split_players(src, dev, single_track="tail")
    assert json.loads((dev / MANIFEST).read_text())["held_out_tails"] == {"trumpet": {"0": 1100}}
    dm = AudioVisualDataModule(str(dev), image_size=16, progress=False)
    dm.setup("fit")  # a seen player at unseen moments: not a leak
    assert 0 in set(dm.val.tensors.tracks[dm.val.tensors.labels == dm.class_names.index("trumpet")].tolist())
    (dev / MANIFEST).unlink()
    with pytest.raises(DataError, match=r"class 'trumpet' has track\(s\) \[0\] in both"):
        AudioVisualDataModule(str(dev), image_size=16, progress=False).setup("fit")


def _paired_clips(root, n=12):
    from fixtures import write_jpg, write_wav

    for c in ("dog", "drum"):
        for split in ("train", "validation"):
            for k in range(1, n + 1):  # clip1 .. clip12, consecutive in time
                write_wav(root / "audio" / split / c / f"clip{k}.wav")
                write_jpg(root / "image" / split / c / f"clip{k}.jpg", (32, 32))
    return root


def test_paired_holdout_tail_is_the_last_files_by_natural_name_order_and_says_so(tmp_path):
    import warnings

    root = _paired_clips(tmp_path / "p")
    dm = AudioVisualDataModule(str(root), layout="paired", image_size=16, holdout_tail=0.2, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
        dm.setup("fit")
    t = dm.train_full.tensors
    held = sorted((t.stems[i] for i in dm.train_holdout.indices if t.labels[i] == 0), key=lambda s: int(s[4:]))
    assert held == ["clip10", "clip11", "clip12"]
    assert len(dm.train) == 2 * 9 and dm.holdout_shortfall() is None
    said = [str(w.message) for w in caught if issubclass(w.category, DataWarning) and "unknown" in str(w.message)]
    assert len(said) == 1 and "last files of each class by name" in said[0] and "gap" in said[0]
    # holdout_tail 0: nothing held out, nothing to say
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AudioVisualDataModule(str(root), layout="paired", image_size=16, progress=False).setup("fit")
    assert not [w for w in caught if "unknown" in str(w.message)]


def test_tail_holdout_orders_unknown_times_by_natural_name():
    stems = [f"clip{k}" for k in (1, 10, 11, 12, 2, 3, 4, 5, 6, 7, 8, 9)]  # lexicographic
    minus = torch.full((12,), -1)
    keep, held = tail_holdout(minus, torch.zeros(12, dtype=torch.long), minus, 0.25, stems=stems)
    assert sorted(stems[i] for i in held) == ["clip10", "clip11", "clip12"]
    # known times still decide, whatever the names
    times = torch.arange(500, 1700, 100)
    keep, held = tail_holdout(torch.zeros(12), torch.zeros(12), times, 0.25, stems=stems)
    assert held == [9, 10, 11]


def _count_builds(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = cache_mod.build_tensors
    monkeypatch.setattr(cache_mod, "build_tensors", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_roots_sharing_a_cache_dir_keep_a_file_each_and_a_root_is_one_root_however_spelt(tmp_path, monkeypatch):
    # `cmav evaluate robustness --cache-dir X` opens two roots with the same split and settings: they
    # overwrote one file, so every open rebuilt; and ./root then /abs/root rebuilt as well
    a = make_suburmp(tmp_path / "a", chunks=1)
    b = make_suburmp(tmp_path / "b", chunks=1)
    shared = tmp_path / "shared"
    calls = _count_builds(monkeypatch)
    for _ in range(2):
        for r in (a, b):
            SubURMP(r, "validation", image_size=16, cache_dir=shared, progress=False)
    assert len(calls) == 2 and len(list(shared.glob("validation-*.pt"))) == 2
    monkeypatch.chdir(tmp_path)
    SubURMP("a", "validation", image_size=16, cache_dir=shared, progress=False)
    (tmp_path / "link").symlink_to(a)
    SubURMP(tmp_path / "link", "validation", image_size=16, cache_dir=shared, progress=False)
    assert len(calls) == 2
    SubURMP("a", "train", image_size=16, progress=False)  # the default cache folder: <root>/.cmav_cache
    SubURMP(a, "train", image_size=16, progress=False)
    assert len(calls) == 3 and len(list((a / ".cmav_cache").glob("train-*.pt"))) == 1


def test_a_cache_file_under_the_old_name_is_rebuilt_once_and_removed(root, monkeypatch):
    # files were named <split>-<key>.pt before the root's hash went into the name
    SubURMP(root, "train", image_size=32, progress=False)
    (new,) = (root / ".cmav_cache").glob("train-*.pt")
    split, roothash, key = new.stem.split("-")
    old = new.with_name(f"{split}-{key}.pt")
    new.rename(old)
    calls = _count_builds(monkeypatch)
    assert len(SubURMP(root, "train", image_size=32, progress=False)) == 39
    assert len(SubURMP(root, "train", image_size=32, progress=False)) == 39
    assert calls == [1] and [p.name for p in (root / ".cmav_cache").glob("train-*.pt")] == [new.name]


def test_a_source_rewritten_in_place_with_its_size_and_mtime_restored_rebuilds(root, monkeypatch):
    # every stand-in chunk has the same size; `cp -p`, `rsync -a --inplace` and `tar x` restore the mtime
    import soundfile as sf

    a = SubURMP(root, "train", image_size=32, progress=False)
    wav = root / "chunk/train/cello/cello00_500.wav"
    i = a.tensors.stems.index(wav.stem)
    st = wav.stat()
    data, rate = sf.read(wav, dtype="int16")
    sf.write(wav, (data[::-1] // 4).copy(), rate, subtype="PCM_16")
    os.utime(wav, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert wav.stat().st_size == st.st_size and wav.stat().st_mtime_ns == st.st_mtime_ns
    calls = _count_builds(monkeypatch)
    b = SubURMP(root, "train", image_size=32, progress=False)
    assert calls == [1] and not torch.equal(a.tensors.audio[i], b.tensors.audio[i])


def test_a_killed_writers_hidden_file_is_cleared_once_stale(root):
    import time

    SubURMP(root, "train", image_size=32, progress=False)
    (f,) = (root / ".cmav_cache").glob("train-*.pt")
    old, fresh = f.with_name(f".{f.name}.k1ll3d.partial"), f.with_name(f".{f.name}.l1ve.partial")  # atomic_write's
    for p in (old, fresh):
        p.write_bytes(b"x" * 1000)
    hours_ago = time.time() - 2 * 3600
    os.utime(old, (hours_ago, hours_ago))
    SubURMP(root, "train", image_size=32, progress=False)  # read from the cache, not rebuilt: cleared all the same
    assert not old.exists() and fresh.exists()  # a younger one may be a live writer's


def test_frame_sizes_and_batch_sizes_below_one_are_refused_by_name(root, tmp_path):
    from cmav.data.image_io import load_frame

    with pytest.raises(ValueError, match="image_size must be >= 1, got 0"):
        SubURMP(root, "train", image_size=0, progress=False)
    with pytest.raises(ValueError, match="image_size must be >= 1, got -4"):
        AudioVisualDataModule(str(root), image_size=-4)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        AudioVisualDataModule(str(root), batch_size=0)
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):  # was a ZeroDivisionError in Pillow's draft
        load_frame(root / "img/train/cello/cello00_500.jpg", 0)
    assert load_frame(root / "img/train/cello/cello00_500.jpg", 1).shape == (1, 1, 3)
    assert not (root / ".cmav_cache").exists()
