"""LightningModules: negative sampler, classifier/judges, S2I variants, resume, DDP, CLI (tiny, CPU)."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from cmav.cli.main import main as cmav_main
from cmav.data import AudioVisualDataModule
from cmav.models import AudioEncoder, ConditionalGenerator, ImageJudge, PairAwareDiscriminator, StatsPoolEncoder
from cmav.tasks import ClassifierTask, I2STask, NegativeSampler, S2ITask, load_classifier, load_s2i
from cmav.tasks.common import AdamConfig, AudioEncoderConfig, ImageJudgeConfig, plain, refuse_weight_averaging
from cmav.tasks.pairs import HardNegativeMiner, NegativeSamplingWarning
from cmav.tasks.random_state import CHECKPOINT_KEY as RANDOM_STATE_KEY
from cmav.tasks.random_state import restore_random_state
from cmav.tasks.s2i import DiscriminatorConfig, GeneratorConfig

from fixtures import assert_holds_a_weight_average, make_suburmp_tracks, make_unique_pairs

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
TINY_ENC = {"n_blocks": 4, "base_channels": 8, "dropout": 0.0}
TINY_G = {"base_channels": 8}
TINY_D = {"base_channels": 8}
# the D stabilisers the paper lacks (experiments/s2i_stable.yaml), at the tiny width
TINY_STABLE = {"discriminator": {**TINY_D, "spectral_norm": True, "projection": True}, "channels_last": True,
               "diff_augment": {"enabled": True, "translate": 0.125, "colour": 0.2}}  # fmt: skip

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),  # frozen encoder + EMA copy
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore::cmav.tasks.pairs.NegativeSamplingWarning"),  # tuba: asserted where it matters
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these models are tiny, and with 2 threads a busy second core makes
    OpenMP wait-spin (100x slower linalg/conv calls)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def quiet_trainer(**kw) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)  # fmt: skip
    defaults.update(kw)
    return L.Trainer(**defaults)


# ---------------------------------------------------------------- data shared by the module


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """13 classes x 2 train tracks x 2 chunks, except tuba with one track (50 train pairs);
    26 validation pairs; cached once."""
    base = tmp_path_factory.mktemp("tasks")
    root = make_suburmp_tracks(base / "suburmp", tracks=(0, 1), chunks=2, single_track=("tuba",))
    cache = base / "cache"
    AudioVisualDataModule(str(root), image_size=32, cache_dir=str(cache), progress=False).setup("fit")
    return {"root": str(root), "cache": str(cache), "base": base}


def datamodule(data: dict, **kw) -> AudioVisualDataModule:
    kw.setdefault("batch_size", 8)
    return AudioVisualDataModule(data["root"], image_size=32, cache_dir=data["cache"], progress=False, **kw)


@pytest.fixture(scope="module")
def sound_classifier(data) -> dict:
    """A tiny sound classifier trained on the fixture, and its checkpoint (the S2I encoder)."""
    L.seed_everything(0, verbose=False)
    dm = datamodule(data, batch_size=8)
    task = ClassifierTask(modality="audio", audio_encoder=TINY_ENC, optimizer={"lr": 3e-3, "betas": (0.9, 0.999)})
    trainer = quiet_trainer(max_epochs=20)  # ~120 steps: 1.0 train accuracy over seeds 0-2
    trainer.fit(task, dm)
    path = data["base"] / "sound_classifier.ckpt"
    trainer.save_checkpoint(path)
    task.eval()
    t = dm.train_full.tensors
    with torch.no_grad():
        train_acc = float((task(t.audio.float()).argmax(1) == t.labels).float().mean())
    return {"task": task, "ckpt": str(path), "train_acc": train_acc, "metrics": dict(trainer.callback_metrics)}


# ---------------------------------------------------------------- negative sampler


def toy_split(n_classes=4, tracks=(0, 1, 2), per_track=3):
    labels, trk = [], []
    for c in range(n_classes):
        for t in tracks:
            labels += [c] * per_track
            trk += [t] * per_track
    return torch.tensor(labels), torch.tensor(trk)


def test_wrong_class_audio_is_always_another_class_and_deterministic():
    labels, tracks = toy_split()
    s = NegativeSampler(labels, tracks)
    batch = labels.repeat(20)
    idx, ok = s.wrong_class(batch, torch.Generator().manual_seed(1))
    assert ok.all() and (labels[idx] != batch).all()
    # every other class gets drawn, not just a neighbour
    assert set(labels[idx[batch == 0]].tolist()) == {1, 2, 3}
    again, _ = s.wrong_class(batch, torch.Generator().manual_seed(1))
    other, _ = s.wrong_class(batch, torch.Generator().manual_seed(2))
    assert torch.equal(idx, again) and not torch.equal(idx, other)


def test_wrong_player_frame_is_same_class_other_track():
    labels, tracks = toy_split()
    s = NegativeSampler(labels, tracks)
    assert s.wrong_player_possible and not s.single_track_classes
    b_labels, b_tracks = labels.repeat(20), tracks.repeat(20)
    idx, ok = s.wrong_player(b_labels, b_tracks, torch.Generator().manual_seed(0))
    assert ok.all()
    assert (labels[idx] == b_labels).all() and (tracks[idx] != b_tracks).all()
    assert set(tracks[idx[(b_labels == 2) & (b_tracks == 1)]].tolist()) == {0, 2}
    # a track absent from the pool (e.g. a validation player): any track of the class will do
    idx, ok = s.wrong_player(torch.tensor([1, 1]), torch.tensor([7, 7]), torch.Generator().manual_seed(0))
    assert ok.all() and (labels[idx] == 1).all()


def test_single_track_class_is_reported_once_and_masked():
    labels, tracks = toy_split(n_classes=3, tracks=(0, 1))
    keep = ~((labels == 1) & (tracks == 1))  # class 1 keeps only track 0
    labels, tracks = labels[keep], tracks[keep]
    names = ["bassoon", "cello", "clarinet"]
    with pytest.warns(NegativeSamplingWarning, match=r"1 class\(es\).*cello") as rec:
        s = NegativeSampler(labels, tracks, class_names=names)
    assert len(rec) == 1 and s.single_track_classes == ["cello"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # drawing must not warn again
        neg = s.sample(labels, tracks, torch.Generator().manual_seed(0))
    assert torch.equal(neg.wrong_player_valid, labels != 1)
    ok = neg.wrong_player_valid
    assert (labels[neg.wrong_player[ok]] == labels[ok]).all() and (tracks[neg.wrong_player[ok]] != tracks[ok]).all()
    assert neg.wrong_class_valid.all() and (labels[neg.wrong_class] != labels).all()


def test_sampler_draws_only_from_its_pool():
    labels, tracks = toy_split()
    pool = torch.arange(0, len(labels), 2)
    s = NegativeSampler(labels, tracks, pool=pool)
    neg = s.sample(labels.repeat(10), tracks.repeat(10), torch.Generator().manual_seed(0))
    allowed = set(pool.tolist())
    assert set(neg.wrong_class.tolist()) <= allowed
    assert set(neg.wrong_player[neg.wrong_player_valid].tolist()) <= allowed


def test_wrong_class_follows_given_class_probabilities_and_never_the_own_class():
    labels, tracks = toy_split()
    s = NegativeSampler(labels, tracks)
    batch = labels.repeat(50)
    probs = torch.zeros(4, 4)
    probs[0, 2] = 1.0  # class 0 -> only class 2
    probs[1] = torch.tensor([5.0, 100.0, 0.0, 5.0])  # own-class weight is ignored: 0 and 3, evenly
    probs[2, 2] = 1.0  # only its own class: no wrong class can be drawn
    probs[3] = 1.0
    idx, ok = s.wrong_class(batch, torch.Generator().manual_seed(0), probs)
    assert torch.equal(ok, batch != 2)
    drawn = labels[idx]
    assert (drawn[batch == 0] == 2).all()
    got1 = drawn[batch == 1]
    assert set(got1.tolist()) == {0, 3} and abs(float((got1 == 0).float().mean()) - 0.5) < 0.2
    assert set(drawn[batch == 3].tolist()) == {0, 1, 2}
    # within the drawn class the item is uniform: every item of class 2 comes up for class 0
    assert set(idx[batch == 0].tolist()) == set((labels == 2).nonzero().flatten().tolist())
    again, _ = s.wrong_class(batch, torch.Generator().manual_seed(0), probs)
    assert torch.equal(idx, again)
    with pytest.raises(ValueError, match=r"class_probs must be \(4, 4\)"):
        s.wrong_class(batch, None, torch.ones(3, 3))
    with pytest.raises(ValueError, match="finite and >= 0"):
        s.wrong_class(batch, None, -probs)


def test_hard_negative_miner_mixes_uniform_with_the_running_d_score():
    labels, tracks = toy_split(per_track=3)
    keep = ~((labels == 3) & (tracks > 0))  # class 3 has 3 items, the others 9
    counts = torch.bincount(labels[keep], minlength=4)
    off = HardNegativeMiner(4, fraction=0.0)
    p = off.class_probs(counts)
    # fraction 0: the sampler's uniform draw over the other classes' items
    assert torch.allclose(p[0], torch.tensor([0, 9, 9, 3], dtype=torch.float64) / 21)
    assert torch.allclose(p.sum(1), torch.ones(4, dtype=torch.float64)) and (p.diagonal() == 0).all()

    miner = HardNegativeMiner(4, fraction=0.5, momentum=0.5)
    items = torch.tensor([0, 9, 9, 3], dtype=torch.float64) / 21
    # before any D score the mined half is uniform over the other classes (not their items)
    assert torch.allclose(miner.class_probs(counts)[0], 0.5 * items + 0.5 * torch.tensor([0, 1, 1, 1], dtype=torch.float64) / 3)
    # D took (frame 0, audio 1) pairs for matches (0.9, 0.7) and (frame 0, audio 2) not (0.1)
    miner.update(torch.tensor([0, 0, 0]), torch.tensor([1, 1, 2]), torch.tensor([0.9, 0.7, 0.1]))
    assert miner.score[0, 1] == pytest.approx(0.5 * 0.5 + 0.5 * 0.8) and miner.score[0, 2] == pytest.approx(0.3)
    assert (miner.score[1:] == 0.5).all() and miner.score[0, 3] == 0.5  # unseen pairs keep their score
    p = miner.class_probs(counts)
    mined = torch.tensor([0, 0.65, 0.3, 0.5], dtype=torch.float64) / 1.45
    assert torch.allclose(p[0], 0.5 * items + 0.5 * mined)
    assert "score" in miner.state_dict()
    for bad in ({"fraction": 1.5}, {"fraction": 0.5, "momentum": 0.0}):
        with pytest.raises(ValueError, match="hard-negative"):
            HardNegativeMiner(4, **bad)


# ---------------------------------------------------------------- classifiers


def test_sound_classifier_learns_the_fixture(sound_classifier):
    assert sound_classifier["train_acc"] >= 0.9
    m = sound_classifier["metrics"]
    assert {"train/loss", "val/loss", "val/acc", "val/balanced_acc"} <= set(m)
    assert float(m["val/acc"]) >= 0.9  # validation chunks are the same pitches


def test_classifier_cosine_schedule_decays_to_zero_and_constant_keeps_the_rate(data):
    rates = {}
    for schedule in ("cosine", "constant"):
        L.seed_everything(0, verbose=False)
        task = ClassifierTask(modality="audio", audio_encoder=TINY_ENC, lr_schedule=schedule,
                              optimizer={"lr": 3e-3, "betas": (0.9, 0.999)})  # fmt: skip
        trainer = quiet_trainer(max_steps=6, limit_val_batches=0)
        trainer.fit(task, datamodule(data))
        rates[schedule] = trainer.optimizers[0].param_groups[0]["lr"]
    assert rates["cosine"] == pytest.approx(0.0, abs=1e-12) and rates["constant"] == 3e-3
    with pytest.raises(ValueError, match="lr_schedule"):
        ClassifierTask(modality="audio", lr_schedule="step")


def test_classifier_checkpoint_rebuilds_without_data(sound_classifier):
    task = load_classifier(sound_classifier["ckpt"])
    assert task.hparams.class_names == sound_classifier["task"].hparams.class_names
    x = torch.randn(3, 1, 128, 44)
    with torch.no_grad():
        assert torch.allclose(task(x), sound_classifier["task"](x))


def test_classifier_trains_under_lightnings_weight_averaging(data, tmp_path):
    """EMAWeightAveraging copies the module in its own set-up, before the task's ``setup``: the
    network is built then (``configure_model``), so the checkpoint holds every layer's average."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    L.seed_everything(0, verbose=False)
    task = ClassifierTask(modality="audio", audio_encoder=TINY_ENC, optimizer={"lr": 3e-3, "betas": (0.9, 0.999)})
    saver = ModelCheckpoint(dirpath=tmp_path, filename="ema", save_top_k=1)
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, enable_checkpointing=True,
                            callbacks=[EMAWeightAveraging(decay=0.5), saver])  # fmt: skip
    trainer.fit(task, datamodule(data))
    assert_holds_a_weight_average(tmp_path / "ema.ckpt", "model.", load_classifier)


def test_classifier_refuses_stochastic_weight_averaging_that_would_average_nothing(data):
    """Lightning's StochasticWeightAveraging copies the module before configure_model builds the
    network: it would average nothing and save the last weights as the average. Refused by name."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    task = ClassifierTask(modality="audio", audio_encoder=TINY_ENC)
    trainer = quiet_trainer(max_epochs=2, limit_val_batches=0, callbacks=[StochasticWeightAveraging(swa_lrs=1e-3)])
    with pytest.raises(ValueError, match="StochasticWeightAveraging.*average nothing.*WeightAveraging"):
        trainer.fit(task, datamodule(data))


def test_player_judge_maps_players_and_validates_on_held_out_tails(data, tmp_path):
    L.seed_everything(0, verbose=False)
    dm = datamodule(data, holdout_tail=0.5, holdout_gap_ms=0)  # the last of each track's 2 chunks is held out
    judge = ClassifierTask(
        modality="image", target="track", image_size=32,
        image_judge={"n_blocks": 2, "base_channels": 4, "feature_dim": 16, "dropout": 0.0, "block_dropout": 0.0},
        augment={"enabled": True, "translate": 0.0625, "colour": 0.1},
    )  # fmt: skip
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(judge, dm)
    assert len(judge.hparams.players) == 25 and judge.target_names[:2] == ["bassoon00", "bassoon01"]
    assert "tuba01" not in judge.target_names
    batch = {"label": torch.tensor([0, 0, 12, 3]), "track": torch.tensor([0, 1, 1, 9])}
    assert judge.targets(batch).tolist() == [0, 1, 24, -1]  # track 9 is a validation player
    assert "val/acc" in trainer.callback_metrics  # scored on dm.train_holdout
    trainer.save_checkpoint(tmp_path / "judge.ckpt")
    again = load_classifier(tmp_path / "judge.ckpt")
    assert again.hparams.players == judge.hparams.players
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(again(x), judge.eval()(x))
    # no held-out frames (the default gap leaves none of 2-chunk tracks): a checkpoint that monitors the
    # player judge's validation figure is refused with the reason, not stopped by Lightning without one
    judge = ClassifierTask(modality="image", target="track", image_size=32,
                           image_judge={"n_blocks": 2, "base_channels": 4, "feature_dim": 16})  # fmt: skip
    watch = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/balanced_acc", mode="max")
    with pytest.raises(ValueError, match=r"no held-out train frames to validate on .*monitors val/balanced_acc"):
        quiet_trainer(max_epochs=1, enable_checkpointing=True, callbacks=[watch]).fit(judge, datamodule(data, holdout_tail=0.5))


def test_image_judge_keeps_instrument_colour_with_the_train_masks_in_order(tmp_path):
    from cmav.data.masks import MasksMissing

    root = make_unique_pairs(tmp_path / "data")
    L.seed_everything(0, verbose=False)
    dm = AudioVisualDataModule(str(root), image_size=32, batch_size=13, cache_dir=str(tmp_path / "cache"),
                               progress=False)  # fmt: skip
    tiny = {"n_blocks": 2, "base_channels": 4, "feature_dim": 16, "dropout": 0.0, "block_dropout": 0.0}
    augment = {"enabled": True, "translate": 0.0625, "colour": 0.3, "colour_scramble": True,
               "keep_instrument_colour": True}  # fmt: skip
    judge = ClassifierTask(modality="image", image_size=32, image_judge=tiny, augment=augment)
    quiet_trainer(max_epochs=1).fit(judge, dm)
    masks, t = judge._train_masks, dm.train_full.tensors
    assert masks.shape == (13, 1, 32, 32)
    # each class's square sits at its own place: the masks follow the split's order, not the files'
    for i, label in enumerate(t.labels.tolist()):
        y, x = 4 + (label % 4) * 12, 4 + (label // 4) * 11
        rows, cols = masks[i, 0].nonzero(as_tuple=True)
        assert abs(rows.float().mean() * 2 - (y + 7)) < 2 and abs(cols.float().mean() * 2 - (x + 7)) < 2

    bare = make_unique_pairs(tmp_path / "nomask", with_masks=False)
    dm = AudioVisualDataModule(str(bare), image_size=32, batch_size=13, cache_dir=str(tmp_path / "cache2"),
                               progress=False)  # fmt: skip
    with pytest.raises(MasksMissing, match="real Sub-URMP has none.*keep_instrument_colour false"):
        quiet_trainer(max_epochs=1).fit(ClassifierTask(modality="image", image_size=32, image_judge=tiny,
                                                       augment=augment), dm)  # fmt: skip
    paste = {"enabled": True, "translate": 0.0, "instrument_paste": 0.5}
    with pytest.raises(MasksMissing, match="real Sub-URMP has none.*augment.instrument_paste 0 for this"):
        quiet_trainer(max_epochs=1).fit(ClassifierTask(modality="image", image_size=32, image_judge=tiny,
                                                       augment=paste), dm)  # fmt: skip


def test_instrument_paste_moves_each_instrument_onto_another_frame_with_its_instrument_painted_out():
    from cmav.tasks.common import ImageAugment, ImageAugmentConfig

    torch.manual_seed(0)
    n = 6
    frame = torch.stack([torch.full((3, 16, 16), -0.9 + 0.3 * i) for i in range(n)])  # each room its own grey
    mask = torch.zeros(n, 1, 16, 16)
    for i in range(n):  # each instrument a bright bar at its own column
        frame[i, :, 3:13, 2 * i + 1] = 1.0
        mask[i, :, 3:13, 2 * i + 1] = 1.0
    config = ImageAugmentConfig(enabled=True, translate=0.0, instrument_paste=1.0)
    out = ImageAugment(config, takes_masks=True)(frame, mask)
    assert out.shape == frame.shape and out.dtype == frame.dtype
    for i in range(n):
        bar = out[i, :, 3:13, 2 * i + 1]
        assert torch.all(bar == 1.0)  # its own instrument stays where it was
        others = [j for j in range(n) if j != i]
        # exactly one bright bar: the host's instrument was painted out with the host's room colour
        bright_columns = (out[i] == 1.0).all(0).any(0).nonzero().flatten().tolist()
        assert bright_columns == [2 * i + 1]
        room = out[i, :, 0, 0]
        host = [j for j in others if torch.allclose(room, frame[j, :, 0, 0])]
        assert len(host) == 1  # the background is another frame's, never its own
        away = torch.ones(16, 16, dtype=torch.bool)
        away[2:14, max(0, 2 * i - 1):2 * i + 4] = False  # off its own instrument and the pixel grown round it
        assert torch.allclose(out[i][:, away], frame[host[0], :, 0, 0, None].expand(3, int(away.sum())))

    assert torch.equal(ImageAugment(ImageAugmentConfig(enabled=True, translate=0.0, instrument_paste=0.0),
                                    takes_masks=True)(frame, mask), frame)  # fmt: skip
    assert torch.equal(ImageAugment(config, takes_masks=True)(frame[:1], mask[:1]), frame[:1])  # no other frame
    with pytest.raises(ValueError, match="instrument_paste needs instrument masks"):
        ImageAugment(config)  # the GAN's DiffAugment and retrieval have no masks
    with pytest.raises(ValueError, match="instrument_paste: forward.. was given no instrument masks"):
        ImageAugment(config, takes_masks=True)(frame)
    with pytest.raises(ValueError, match="probability"):
        ImageAugment(ImageAugmentConfig(enabled=True, instrument_paste=1.5), takes_masks=True)


# ---------------------------------------------------------------- classifiers: refusals


TINY_JUDGE = {"n_blocks": 2, "base_channels": 4, "feature_dim": 16, "dropout": 0.0, "block_dropout": 0.0}


def _saved(task: ClassifierTask, dm, path: Path, **trainer_kw) -> Path:
    """``task`` fitted one step on ``dm`` and saved to ``path``."""
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, **trainer_kw)
    trainer.fit(task, dm)
    trainer.save_checkpoint(path)
    return path


def test_cli_validate_refuses_a_judge_checkpoint_of_another_frame_size_in_one_line(data, tmp_path, monkeypatch, capsys):
    """The CLI links data.image_size onto the model's image_size, so the checkpoint's own size is in its
    input_shape: a 32-px judge is refused on 16-px frames, naming the file and both shapes."""
    from cmav.data.errors import DataError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cmav"])
    args = ["--config", str(EXPERIMENTS / "image_judge.yaml"), "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path / 'run'}", f"--data.root={data['root']}",
            f"--data.cache_dir={data['cache']}", "--data.batch_size=8", "--data.progress=false"]  # fmt: skip
    tiny = [f"--model.init_args.image_judge.{k}={v}" for k, v in TINY_JUDGE.items()]
    assert cmav_main(["fit", *args, *tiny, "--data.image_size=32", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                      "--trainer.limit_val_batches=1", "--model.init_args.augment.keep_instrument_colour=false",
                      "--model.init_args.augment.instrument_paste=0"]) == 0  # fmt: skip
    ckpt = tmp_path / "judge32.ckpt"
    ckpt.write_bytes((tmp_path / "run" / "checkpoints" / "last.ckpt").read_bytes())
    capsys.readouterr()
    args = ["validate", *args]
    assert cmav_main([*args, "--data.image_size=16", f"--ckpt_path={ckpt}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {ckpt}: ")
    assert "input_shape [3, 32, 32]" in err[0] and "[3, 16, 16]" in err[0]
    # the same through Python: a task built as the CLI builds it (the checkpoint's settings, the data's size)
    hp = {k: v for k, v in torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"].items()
          if not k.startswith("_")}  # fmt: skip
    with pytest.raises(DataError, match=r"judge32\.ckpt: .*input_shape \[3, 32, 32\].*\[3, 16, 16\]"):
        quiet_trainer().validate(
            ClassifierTask(**{**hp, "image_size": 16}),
            AudioVisualDataModule(data["root"], image_size=16, batch_size=8, cache_dir=data["cache"], progress=False),
            ckpt_path=ckpt,
        )
    assert cmav_main([*args, "--data.image_size=32", f"--ckpt_path={ckpt}", "--trainer.limit_val_batches=1"]) == 0


def test_sound_classifier_is_refused_on_features_of_another_shape(data, sound_classifier, tmp_path):
    """A 128-mel classifier given 64-mel data: refused when validated, resumed or loaded, naming the
    checkpoint and both shapes (its conv stack and global pooling would take them silently, and a
    resumed run's checkpoint would claim the old shape)."""
    from cmav.data.errors import DataError

    ckpt = sound_classifier["ckpt"]
    mel64 = AudioVisualDataModule(data["root"], image_size=32, batch_size=8, cache_dir=data["cache"], progress=False,
                                  features={"kind": "lms", "n_mels": 64})  # fmt: skip
    shapes = r"input_shape \[1, 128, 44\].*\[1, 64, 44\]"
    fresh = lambda: ClassifierTask(modality="audio", audio_encoder=TINY_ENC)  # noqa: E731
    with pytest.raises(DataError, match=rf"sound_classifier\.ckpt: .*{shapes}"):
        quiet_trainer().validate(fresh(), mel64, ckpt_path=ckpt)
    with pytest.raises(DataError, match=rf"sound_classifier\.ckpt: .*{shapes}"):
        quiet_trainer(max_epochs=30).fit(fresh(), mel64, ckpt_path=ckpt)
    with pytest.raises(DataError, match=rf"sound_classifier\.ckpt: .*{shapes}"):
        quiet_trainer().validate(load_classifier(ckpt), mel64)
    # the data it was trained on passes, both ways
    quiet_trainer().validate(fresh(), datamodule(data), ckpt_path=ckpt)
    quiet_trainer().validate(load_classifier(ckpt), datamodule(data))


def test_classifier_is_refused_on_data_with_other_classes(tmp_path):
    """Paired layouts name their classes by folder: a (dog, drum) classifier must not score (bell, dog)
    data as (dog, drum), nor crash deep in load_state_dict on (bell, dog, drum)."""
    from cmav.data.errors import DataError

    from fixtures import make_paired

    def dm(classes):
        root = make_paired(tmp_path / "_".join(classes), classes=classes, per_class=2)
        return AudioVisualDataModule(str(root), layout="paired", image_size=16, batch_size=4, progress=False)

    trained_on = dm(("dog", "drum"))
    task = ClassifierTask(modality="image", image_size=16, image_judge=TINY_JUDGE)
    ckpt = _saved(task, trained_on, tmp_path / "dogdrum.ckpt")
    for classes in (("bell", "dog"), ("bell", "dog", "drum")):
        other = dm(classes)
        names = re.escape("class_names ['dog', 'drum']") + ".*" + re.escape(str(list(classes)))
        with pytest.raises(DataError, match=rf"dogdrum\.ckpt: .*{names}"):
            quiet_trainer().validate(load_classifier(ckpt), other)
        with pytest.raises(DataError, match=rf"dogdrum\.ckpt: .*{names}"):
            quiet_trainer().validate(ClassifierTask(modality="image", image_size=16, image_judge=TINY_JUDGE), other,
                                     ckpt_path=ckpt)  # fmt: skip
    # no checkpoint: the fitted task itself, on other data, names that data
    with pytest.raises(DataError, match=r"bell_dog: .*class_names \['dog', 'drum'\]"):
        quiet_trainer().validate(task, dm(("bell", "dog")))
    quiet_trainer().validate(load_classifier(ckpt), trained_on)


def test_image_classifier_refuses_stats_pooling_and_loaders_name_what_a_file_holds(tmp_path):
    from cmav.models import ImageEncoder
    from cmav.tasks.classifier import load_image_classifier
    from cmav.tasks.common import EncoderConfig

    with pytest.raises(ValueError, match=r"image_encoder\.arch='stats'.*harmonic"):
        ClassifierTask(modality="image", image_model="encoder", image_encoder={"arch": "stats"})
    # a checkpoint written before the refusal: a StatsPoolEncoder in an image classifier
    good = ClassifierTask(modality="image", image_model="encoder", image_size=16, class_names=["dog", "drum"],
                          input_shape=[3, 16, 16], image_encoder={"n_blocks": 2, "base_channels": 4})  # fmt: skip
    hp = dict(good.hparams)
    hp["image_encoder"] = {**hp["image_encoder"], "arch": "stats"}
    stats = EncoderConfig(arch="stats").build(ImageEncoder, (3, 16, 16), 2)
    path = tmp_path / "stats_image.ckpt"
    torch.save({"hyper_parameters": hp, "state_dict": {f"model.{k}": v for k, v in stats.state_dict().items()}}, path)
    with pytest.raises(ValueError, match=r"stats_image\.ckpt: .*image_encoder\.arch='stats'"):
        load_image_classifier(path)


def test_player_judge_scores_its_held_out_tails_through_the_precision_plugin(data):
    """Under bf16-true the held-out tails (scored outside Lightning's loop) go through the precision
    plugin, as the loop's batches do; in fp32 the figure is the model's accuracy on them, exactly."""
    from cmav.metrics import classification_report

    def fit(precision):
        L.seed_everything(0, verbose=False)
        dm = datamodule(data, holdout_tail=0.5, holdout_gap_ms=0)
        judge = ClassifierTask(modality="image", target="track", image_size=32, image_judge=TINY_JUDGE)
        trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, precision=precision)
        trainer.fit(judge, dm)
        return judge, dm, trainer.callback_metrics

    _, _, metrics = fit("bf16-true")
    assert 0.0 <= float(metrics["val/acc"]) <= 1.0
    judge, dm, metrics = fit("32-true")
    batch = torch.utils.data.default_collate(list(dm.train_holdout))
    with torch.no_grad():
        preds = judge.eval()(batch["image"]).argmax(1)
    y = judge.targets(batch)
    report = classification_report(preds[y >= 0], y[y >= 0], judge.target_names)
    assert float(metrics["val/acc"]) == pytest.approx(report.accuracy, abs=1e-6)
    assert float(metrics["val/balanced_acc"]) == pytest.approx(report.balanced_accuracy, abs=1e-6)


def test_gathered_validation_predictions_count_each_item_once():
    """DDP's sampler pads a split to a multiple of the ranks by repeating items (13 items on 2 ranks:
    item 0 twice); the gathered predictions keep the first of each index (and drop the gather's padding)."""
    from torch.utils.data import DistributedSampler

    from cmav.tasks.classifier import first_of_each_index

    ranks = [list(DistributedSampler(range(13), num_replicas=2, rank=r, shuffle=False)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == [0, 0, *range(1, 13)]
    # all_gather of padded per-rank tensors, flattened rank by rank; -1: the gather's own padding
    index = torch.tensor(ranks[0] + [-1] + ranks[1])
    keep = first_of_each_index(index)
    assert sorted(index[keep].tolist()) == list(range(13))
    assert keep.tolist() == [i >= 0 for i in index.tolist()[:8]] + [True] * 6 + [False]
    assert first_of_each_index(torch.tensor([], dtype=torch.long)).tolist() == []


def test_audio_classifier_refuses_image_augmentation():
    with pytest.raises(ValueError, match=r"augment\.enabled.*modality='audio'.*data\.augment"):
        ClassifierTask(modality="audio", augment={"enabled": True})
    ClassifierTask(modality="audio", augment={"enabled": False, "colour": 0.2})  # off: nothing to refuse


# ---------------------------------------------------------------- S2I


def s2i(variant: str, mode: str, ckpt: str | None, **kw) -> S2ITask:
    kw.setdefault("sample_every_n_steps", 0)
    kw.setdefault("discriminator", TINY_D)
    kw.setdefault("image_size", 32)
    if mode == "scratch":  # built now, so the test can snapshot its weights (else built from the data at setup)
        kw.setdefault("audio_shape", [1, 128, 44])
    return S2ITask(variant=variant, encoder_mode=mode, audio_encoder_ckpt=ckpt, generator=TINY_G,
                   encoder=TINY_ENC, **kw)  # fmt: skip


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize(
    "variant,mode",
    [("s2i_c", "frozen"), ("s2i_n", "finetune"), ("ae", "scratch")],
)
def test_s2i_variant_trains_with_finite_losses(data, sound_classifier, tmp_path, variant, mode):
    L.seed_everything(0, verbose=False)
    tb = variant == "s2i_c"  # one variant through TensorBoard (sheets, LMS, audio), the others with no logger
    extra = {}
    if variant == "s2i_n":  # the options that are off in the paper's setting
        extra = {**TINY_STABLE, "loss_weights": {"mode_seeking": 1.0, "aux_class": 1.0}}
    model = s2i(variant, mode, sound_classifier["ckpt"] if mode != "scratch" else None,
                sample_every_n_steps=1 if tb else 0, **extra)  # fmt: skip
    assert model.wrong_class_term == model.wrong_player_term == (variant == "s2i_c")
    # a fine-tuned encoder trains in train mode (batch-norm statistics, dropout), though loaded in eval mode
    assert model.net.encoder.training == (mode != "frozen")
    if model.discriminator is not None:
        assert (model.discriminator.projection is not None) == (variant == "s2i_n")
    enc0, g0, ema0 = state(model.net.encoder), state(model.net.generator), state(model.ema)
    logger = TensorBoardLogger(str(tmp_path), name="tb") if tb else False
    steps_per_batch = 1 if variant == "ae" else 2  # global_step counts optimiser steps
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, logger=logger)
    if model.wrong_player_term:
        # tuba has a single train track: said once, and its items simply get no wrong-player term
        with pytest.warns(NegativeSamplingWarning, match=r"1 class\(es\) with a single train track.*tuba") as rec:
            trainer.fit(model, datamodule(data))
        assert len([w for w in rec if issubclass(w.category, NegativeSamplingWarning)]) == 1
    else:
        trainer.fit(model, datamodule(data))

    assert model.iteration == 3 and trainer.global_step == 3 * steps_per_batch
    keys = ["train/pixel_loss"] if variant == "ae" else ["train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"]
    if variant == "s2i_c":
        keys += ["train/d_wrong_class", "train/d_wrong_player"]
    if variant == "s2i_n":
        keys += ["train/mode_seeking", "train/d_class_ce", "train/g_class_ce"]
        assert model.discriminator.class_head.out_features == 13
    else:  # off unless asked for
        assert "train/mode_seeking" not in trainer.callback_metrics and "train/d_class_ce" not in trainer.callback_metrics
        assert model.discriminator is None or model.discriminator.class_head is None
    for k in keys + ["val/l1"]:
        assert math.isfinite(float(trainer.callback_metrics[k])), k
    assert changed(g0, model.net.generator) and changed(ema0, model.ema)
    if mode == "frozen":
        assert not changed(enc0, model.net.encoder)  # weights and BatchNorm statistics
        opt_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        assert not any(id(p) in opt_params for p in model.net.encoder.parameters())
    else:
        assert changed(enc0, model.net.encoder)

    lms = torch.randn(5, 1, 128, 44)
    z = torch.randn(5, 10)
    img = model.generate(lms, z)
    assert img.shape == (5, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    assert torch.equal(img, model.generate(lms, z))
    assert not torch.equal(img, model.generate(lms, z, use_ema=False))

    if tb:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ea = EventAccumulator(str(Path(logger.log_dir)), size_guidance={"images": 0, "audio": 0})
        ea.Reload()
        assert [e.step for e in ea.Images("samples/ema")] == [0, 1, 2]
        assert "inputs/lms/violin" in ea.Tags()["images"] and "inputs/audio/violin" in ea.Tags()["audio"]


def test_s2i_c_trains_under_bf16_autocast_on_a_cpu(data, sound_classifier):
    """`--trainer.precision bf16-mixed` on a CPU (a speed-up where it has bf16 instructions): autocast computes in bf16,
    the weights, their EMA and the generated frames stay fp32 and finite."""
    L.seed_everything(0, verbose=False)
    model = s2i("s2i_c", "frozen", sound_classifier["ckpt"], **TINY_STABLE)
    g0 = state(model.net.generator)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, precision="bf16-mixed")
    with pytest.warns(NegativeSamplingWarning):
        trainer.fit(model, datamodule(data))
    assert model.iteration == 3
    for k in ["train/d_loss", "train/g_loss", "train/d_wrong_class", "train/d_wrong_player", "val/l1"]:
        assert math.isfinite(float(trainer.callback_metrics[k])), k
    assert changed(g0, model.net.generator)
    assert all(p.dtype == torch.float32 for p in [*model.net.parameters(), *model.discriminator.parameters(),
                                                   *model.ema.parameters()])  # fmt: skip
    img = model.generate(torch.randn(4, 1, 128, 44), torch.randn(4, 10))
    assert img.dtype == torch.float32 and torch.isfinite(img).all()


def test_mode_seeking_loss_is_the_inverse_output_to_noise_distance_ratio():
    from cmav.tasks.paired_gan import mode_seeking_loss

    z_a, z_b = torch.zeros(2, 4), torch.tensor([[1.0, 1, 1, 1], [2, 2, 2, 2]])  # mean |dz| = 1 and 2
    out_a = torch.zeros(2, 3, 2, 2)
    out_b = torch.stack([torch.full((3, 2, 2), 0.5), torch.full((3, 2, 2), 4.0)]).requires_grad_()
    loss = mode_seeking_loss(out_a, out_b, z_a, z_b, eps=0.0)
    assert loss.item() == pytest.approx((1 / 0.5 + 1 / 2.0) / 2)  # ratios 0.5/1 and 4/2
    loss.backward()
    # descending the loss moves each second output away from the first one
    assert (out_b.grad < 0).all()
    # identical outputs (collapse over z) are the worst case, bounded by eps
    assert mode_seeking_loss(out_a, out_a, z_a, z_b).item() == pytest.approx(1e5)


def test_s2i_builds_128_pixel_frames():
    model = s2i("s2i_c", "scratch", None, image_size=128)
    img = model.generate(torch.randn(2, 1, 128, 44))
    assert img.shape == (2, 3, 128, 128)
    assert model.discriminator(img, torch.randn(2, 128)).shape == (2,)


@pytest.mark.parametrize("variant", ["s2i_c", "ae"])
def test_frozen_feature_cache_trains_exactly_as_the_encoder_pass(data, sound_classifier, variant):
    def train(cache: bool, **dm_kw) -> S2ITask:
        L.seed_everything(0, verbose=False)
        model = s2i(variant, "frozen", sound_classifier["ckpt"], cache_frozen_features=cache)
        quiet_trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0).fit(model, datamodule(data, **dm_kw))
        return model

    cached, plain = train(True), train(False)
    feats = cached._cached_features
    assert plain._cached_features is None and feats is not None
    assert feats.shape == (len(cached._train_tensors.labels), cached.net.encoder.feature_dim)
    t = cached._train_tensors
    with torch.no_grad():
        direct = cached.net.encoder.forward_features(t.audio[:5].float()).feature
    assert torch.allclose(feats[:5], direct, atol=1e-5)
    for a, b in zip(cached.net.generator.parameters(), plain.net.generator.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    # validation encodes once in frozen mode: it relies on the EMA encoder staying bit-identical
    ema_encoder = cached.ema.module.encoder.state_dict()
    assert cached.ema.n_updates.item() == 3
    assert all(torch.equal(v, ema_encoder[k]) for k, v in cached.net.encoder.state_dict().items())
    if variant == "s2i_c":
        for a, b in zip(cached.discriminator.parameters(), plain.discriminator.parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-4)
        # augmented audio differs every step: no cache then
        assert train(True, augment={"mask": {"p": 1.0}})._cached_features is None


def test_condition_noise_scales_with_the_feature_spread_and_is_off_at_zero(data, sound_classifier):
    torch.manual_seed(0)
    cond = torch.randn(256, 128) * 3.0  # per-dimension spread 3
    other = torch.randn(256, 128)
    off = s2i("s2i_c", "scratch", None)
    assert all(a is b for a, b in zip(off._noisy(cond, other), (cond, other), strict=True))
    model = s2i("s2i_c", "scratch", None, condition_noise=0.5)
    noisy, noisy_other, none = model._noisy(cond, other, None)
    assert none is None
    # noise of 0.5 x the batch's spread on every condition, fresh each call
    assert (noisy - cond).std().item() == pytest.approx(1.5, rel=0.05)
    assert (noisy_other - other).std().item() == pytest.approx(1.5, rel=0.05)
    assert not torch.equal(model._noisy(cond)[0], noisy)
    with pytest.raises(ValueError, match="condition_noise"):
        s2i("s2i_c", "scratch", None, condition_noise=-0.1)
    # training with it moves G and D and keeps the losses finite; generation stays noise-free
    L.seed_everything(0, verbose=False)
    model = s2i("s2i_c", "frozen", sound_classifier["ckpt"], condition_noise=0.5)
    quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(model, datamodule(data))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    audio = model._train_tensors.audio[:3].float()
    z = torch.randn(3, model.z_dim)
    assert torch.equal(model.generate(audio, z), model.generate(audio, z))


@pytest.mark.parametrize("condition_on", ["logits", "probabilities"])
def test_condition_on_the_class_head_feeds_g_and_d_its_outputs(data, sound_classifier, condition_on, tmp_path):
    with pytest.raises(ValueError, match="condition_on"):
        s2i("s2i_c", "scratch", None, condition_on="posterior")
    L.seed_everything(0, verbose=False)
    model = s2i("s2i_c", "frozen", sound_classifier["ckpt"], condition_on=condition_on)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule(data))
    enc = model.net.encoder
    n_classes = enc.n_classes
    assert model.net.generator.cond_dim == n_classes and model.discriminator.cond_dim == n_classes
    audio = model._train_tensors.audio[:4].float()
    with torch.no_grad():
        logits = enc.forward_features(audio).logits
    want = logits if condition_on == "logits" else logits.softmax(1)
    assert torch.allclose(model.net.condition(audio), want, atol=1e-5)
    # the frozen cache holds the same conditions, and generation goes through them
    assert model._cached_features.shape[1] == n_classes
    assert torch.allclose(model._cached_features[:4], want, atol=1e-4)
    z = torch.randn(4, model.z_dim)
    assert torch.allclose(model.generate_raw(audio, z), model.ema.module.generator.eval()(z, want), atol=1e-4)
    # and a checkpoint rebuilds it
    trainer.save_checkpoint(tmp_path / "s2i.ckpt")
    assert torch.allclose(load_s2i(tmp_path / "s2i.ckpt").generate_raw(audio, z), model.generate_raw(audio, z), atol=1e-4)


def test_inference_condition_takes_training_conditions_kept_in_the_checkpoint(data, sound_classifier, tmp_path):
    with pytest.raises(ValueError, match="inference_condition"):
        s2i("s2i_c", "scratch", None, inference_condition="median")
    with pytest.raises(ValueError, match="inference_neighbours"):
        s2i("s2i_c", "scratch", None, inference_neighbours=0)
    L.seed_everything(0, verbose=False)
    model = s2i("s2i_c", "frozen", sound_classifier["ckpt"], inference_condition="class_mean")
    dm = datamodule(data, holdout_tail=0.5, holdout_gap_ms=0)
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, dm)
    # the bank: the frozen encoder's features of the train split, without the held-out tails
    bank, enc = model.condition_bank, model.net.encoder
    train_index = torch.as_tensor(list(dm.train.indices))
    assert 0 < len(bank) == len(train_index) < len(model._train_tensors.labels)
    with torch.no_grad():
        train_feature = enc.forward_features(model._train_tensors.audio[train_index].float()).feature
    assert torch.allclose(bank.conditions, train_feature, atol=1e-4)
    assert torch.equal(bank.labels, model._train_tensors.labels[train_index].long())
    # generation: G gets the mean training feature of the class the encoder's head predicts
    audio = dm.val.tensors.audio[:4].float()
    with torch.no_grad():
        predicted = enc.forward_features(audio).logits.argmax(1)
    class_mean = torch.stack([train_feature[bank.labels == c].mean(0) for c in predicted])
    z = torch.randn(4, model.z_dim)
    g = model.ema.module.generator.eval()
    assert torch.allclose(model.generate_raw(audio, z), g(z, class_mean), atol=1e-4)
    # the checkpoint keeps the bank and the mode; other modes on the reloaded model
    trainer.save_checkpoint(tmp_path / "s2i.ckpt")
    again = load_s2i(tmp_path / "s2i.ckpt")
    assert again.inference_condition == "class_mean" and torch.equal(again.condition_bank.conditions, bank.conditions)
    assert torch.allclose(again.generate_raw(audio, z), model.generate_raw(audio, z), atol=1e-4)
    nearest = train_feature[torch.cdist(again.ema.module.condition(audio), train_feature).argmin(1)]
    again.set_inference_condition("nearest")
    assert torch.allclose(again.generate_raw(audio, z), g(z, nearest), atol=1e-4)
    again.set_inference_condition("own")
    assert torch.allclose(again.generate_raw(audio, z), g(z, again.ema.module.condition(audio)), atol=1e-4)
    with pytest.raises(ValueError, match="inference_condition"):
        again.set_inference_condition("median")

    # a trained encoder moves: the bank follows the EMA encoder that generation uses
    L.seed_everything(0, verbose=False)
    tuned = s2i("s2i_n", "finetune", sound_classifier["ckpt"], inference_condition="nearest")
    quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1).fit(tuned, datamodule(data))
    with torch.no_grad():
        train_audio = tuned._train_tensors.audio.float()
        ema_feature = tuned.ema.module.encoder.forward_features(train_audio).feature
        pretrained = load_classifier(sound_classifier["ckpt"]).model.eval().forward_features(train_audio).feature
    assert torch.allclose(tuned.condition_bank.conditions, ema_feature, atol=1e-4)
    assert not torch.allclose(tuned.condition_bank.conditions, pretrained, atol=1e-3)  # not the one of the fit's start

    # with no validation after the last step, the saved bank is still the EMA encoder's at the save
    L.seed_everything(0, verbose=False)
    unvalidated = s2i("s2i_n", "finetune", sound_classifier["ckpt"], inference_condition="nearest")
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(unvalidated, datamodule(data))
    path = tmp_path / "unvalidated.ckpt"
    trainer.save_checkpoint(path)
    with torch.no_grad():
        now = unvalidated.ema.module.encoder.forward_features(unvalidated._train_tensors.audio.float()).feature
    saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]["condition_bank.conditions"]
    assert torch.allclose(saved, now, atol=1e-4)


@pytest.mark.parametrize(
    ("variant", "options", "message"),
    [
        ("s2i_n", {"loss_weights": {"fake": 0.0}}, "fake must be > 0: the discriminator would never be shown"),
        ("s2i_c", {"loss_weights": {"fake": -1.0}}, r"loss_weights\.fake must be >= 0, got -1.0"),  # D loss -5e12 before
        ("s2i_c", {"loss_weights": {"mode_seeking": -5.0}}, r"loss_weights\.mode_seeking must be >= 0"),
        ("s2i_c", {"loss_weights": {"wrong_class": float("nan")}}, r"loss_weights\.wrong_class must be >= 0, got nan"),
        ("ae", {"loss_weights": {"mode_seeking": 1.0}}, r"mode_seeking is a GAN term: variant 'ae'"),
        ("ae", {"diff_augment": {"enabled": True}}, r"diff_augment augments the discriminator's inputs: variant 'ae'"),
        # S2I-N labelled so in the checkpoint and every grid row while D saw mismatched pairs
        ("s2i_n", {"wrong_class_term": True}, r"variant 's2i_n' is the discriminator without mismatched pairs, "
                                              r"but wrong_class_term is on"),
        ("s2i_n", {"wrong_player_term": True}, r"wrong_player_term is on .*train variant 's2i_c'"),
    ],
)
def test_loss_weights_and_options_that_cannot_train_are_refused(variant, options, message):
    with pytest.raises(ValueError, match=message):
        s2i(variant, "scratch", None, **options)


@pytest.mark.parametrize("variant", ["s2i_c", "ae"])
def test_fast_dev_run_n_runs_n_batches_and_reaches_validation(data, variant):
    class Counter(Callback):
        train = val = 0

        def on_train_batch_end(self, *args) -> None:
            self.train += 1

        def on_validation_batch_end(self, *args) -> None:
            self.val += 1

    count = Counter()
    model = s2i(variant, "scratch", None)
    L.Trainer(accelerator="cpu", devices=1, fast_dev_run=3, enable_progress_bar=False, enable_model_summary=False,
              callbacks=[count]).fit(model, datamodule(data))  # fmt: skip
    assert model.iteration == count.train == 3 and count.val >= 1


def test_channels_last_keeps_the_networks_outputs():
    torch.manual_seed(0)
    plain = s2i("s2i_c", "scratch", None)
    nhwc = s2i("s2i_c", "scratch", None, channels_last=True)
    nhwc.load_state_dict(plain.state_dict())
    nets = [nhwc.net.generator, nhwc.discriminator, nhwc.ema.module.generator]  # G, D and G's EMA copy
    gd = [m.weight for n in nets for m in n.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert gd and all(w.is_contiguous(memory_format=torch.channels_last) for w in gd)
    lms, z = torch.randn(4, 1, 128, 44), torch.randn(4, 10)
    img = nhwc.generate(lms, z)
    assert img.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(img, plain.generate(lms, z), atol=1e-5)
    cond = torch.randn(4, 128)
    assert torch.allclose(nhwc.discriminator(img, cond), plain.discriminator(img, cond), atol=1e-5)


def test_s2i_wrong_class_partners_are_augmented_and_d_reads_conditions_detached(data, monkeypatch):
    """With data.augment on, the wrong-class partners' conditions go through the same augmentation as
    the batch's own (else a clean condition would mark a mismatched pair); and D never passes gradient
    into a trained encoder through its condition input, in the D step or the G step."""
    L.seed_everything(0, verbose=False)
    model = s2i("s2i_c", "scratch", None)
    dm = datamodule(data, augment={"gain": {"p": 1.0, "max_db": 6.0}})
    sizes: list[int] = []
    augmented = dm.augmented_audio

    def spy(batch):
        sizes.append(batch["audio"].shape[0])
        assert "wave" in batch  # a waveform group: the partners' raw chunks come along
        return augmented(batch)

    monkeypatch.setattr(dm, "augmented_audio", spy)
    conditions_need_grad: list[bool] = []
    disc = model._disc_with_classes

    def watch(x, cond, labels):
        conditions_need_grad.append(cond.requires_grad)
        return disc(x, cond, labels)

    monkeypatch.setattr(model, "_disc_with_classes", watch)
    quiet_trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0).fit(model, dm)
    assert len(sizes) == 4, sizes  # each of the 2 training batches, then its wrong-class partners
    assert conditions_need_grad and not any(conditions_need_grad)


def test_s2i_frozen_or_finetune_needs_the_classifier_checkpoint(tmp_path):
    for mode in ("frozen", "finetune"):
        with pytest.raises(ValueError, match="audio_encoder_ckpt"):
            S2ITask(encoder_mode=mode)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        S2ITask(encoder_mode="frozen", audio_encoder_ckpt=str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="no discriminator"):
        S2ITask(variant="ae", encoder_mode="scratch", wrong_class_term=True)


def test_hard_negatives_need_the_wrong_class_term(sound_classifier):
    with pytest.raises(ValueError, match="hard_negatives.fraction > 0 mines the wrong-class term"):
        s2i("s2i_n", "frozen", sound_classifier["ckpt"], hard_negatives={"fraction": 0.5})
    with pytest.raises(ValueError, match="hard-negative fraction must be in"):
        s2i("s2i_c", "frozen", sound_classifier["ckpt"], hard_negatives={"fraction": 2.0})


def test_s2i_refuses_ddp_without_unused_parameter_detection():
    model = s2i("s2i_n", "scratch", None)
    model.trainer = L.Trainer(accelerator="cpu", devices=1, strategy="ddp", logger=False)
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        model._check_ddp()


def test_gan_tasks_refuse_lightnings_weight_averaging():
    from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging

    model = s2i("s2i_n", "scratch", None)
    for cb in (EMAWeightAveraging(), StochasticWeightAveraging(swa_lrs=1e-3)):
        model.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[cb])
        with pytest.raises(ValueError, match=f"own EMA of the generator.*remove the {type(cb).__name__}"):
            model.setup("fit")
    model.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    refuse_weight_averaging(model, "generator")  # without the callback: nothing to refuse


class Snapshot(Callback):
    """What the resumed run starts from."""

    def on_train_start(self, trainer, pl_module):
        self.global_step = trainer.global_step
        self.iteration = pl_module.iteration
        self.optimizers = [copy.deepcopy(o.state_dict()) for o in trainer.optimizers]  # Adam updates in place
        self.ema = state(pl_module.ema)
        self.rng = pl_module._rng.get_state()


@pytest.mark.parametrize(("hard", "workers"), [(0.0, 0), (0.5, 0), (0.0, 1)])
def test_resume_continues_step_optimisers_and_ema_exactly(data, sound_classifier, tmp_path, hard, workers):
    """A run killed after its second epoch and resumed ends with the weights of a run never killed:
    the same batches (the shuffle), noise, augmentation and negative pairs were drawn (with
    hard-negative mining on, from the running D scores kept in the checkpoint; with a loader
    worker, whose seed the loader draws from the same stream)."""
    ckpt_dir = tmp_path / "ckpt"

    def run(max_epochs: int, ckpt_path=None, callbacks=(), ckpt_dir=ckpt_dir):
        L.seed_everything(0, verbose=False)
        model = s2i("s2i_c", "finetune", sound_classifier["ckpt"], hard_negatives={"fraction": hard})
        ckpt = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_epochs=1)
        trainer = quiet_trainer(max_epochs=max_epochs, limit_train_batches=2, enable_checkpointing=True,
                                callbacks=[ckpt, *callbacks])  # fmt: skip
        trainer.fit(model, datamodule(data, num_workers=workers), ckpt_path=ckpt_path)
        return model, trainer

    first, _ = run(max_epochs=2)
    assert first.iteration == 4
    saved = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=True)  # weights_only must work
    assert saved["global_step"] == 8 and saved["cmav_s2i"]["iteration"] == 4
    assert any(k.startswith("ema.module.") for k in saved["state_dict"])
    if hard:  # D's scores of the mismatched class pairs drawn so far moved off their start
        assert (saved["state_dict"]["hard_negatives.score"] != 0.5).sum() > 0
    else:  # off: nothing new in the checkpoint, so older ones still load strictly
        assert first.hard_negatives is None and not any(k.startswith("hard_negatives") for k in saved["state_dict"])

    snap = Snapshot()
    second, trainer = run(max_epochs=3, ckpt_path="last", callbacks=[snap])
    assert snap.global_step == 8 and snap.iteration == 4
    assert second.iteration == 6 and trainer.global_step == 12
    for now, then in zip(snap.optimizers, saved["optimizer_states"], strict=True):
        assert len(now["state"]) == len(then["state"]) > 0
        for k, s in then["state"].items():
            for name, v in s.items():
                assert torch.equal(torch.as_tensor(now["state"][k][name]), torch.as_tensor(v)), (k, name)
    for k, v in snap.ema.items():
        assert torch.equal(v, saved["state_dict"][f"ema.{k}"]), k
    assert torch.equal(snap.rng, saved["cmav_s2i"]["sampler_rng"])
    never_killed, _ = run(max_epochs=3, ckpt_dir=tmp_path / "uninterrupted")
    assert never_killed.iteration == second.iteration
    resumed, expected = second.state_dict(), never_killed.state_dict()
    assert resumed.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(resumed[k], v), k

    # the checkpoint also rebuilds the generator for evaluation, without data or classifier ckpt
    loaded = load_s2i(ckpt_dir / "last.ckpt")
    assert loaded.iteration == 6 and loaded.trained_encoder_mode == "finetune"
    lms, z = torch.randn(3, 1, 128, 44), torch.randn(3, 10)
    assert torch.allclose(loaded.generate(lms, z), second.generate(lms, z), atol=1e-6)


def test_random_state_is_restored_only_when_a_fit_resumes(sound_classifier):
    saved = torch.load(sound_classifier["ckpt"], map_location="cpu", weights_only=True)
    assert saved[RANDOM_STATE_KEY]["cpu"].dtype == torch.uint8
    model = s2i("s2i_c", "frozen", sound_classifier["ckpt"])
    torch.manual_seed(123)
    ours = torch.get_rng_state()
    restore_random_state(model, saved)  # no trainer: loading for evaluation keeps the caller's stream
    assert torch.equal(torch.get_rng_state(), ours)
    model.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    model.trainer.state.fn = "fit"
    restore_random_state(model, saved)
    assert torch.equal(torch.get_rng_state(), saved[RANDOM_STATE_KEY]["cpu"])
    older = {k: v for k, v in saved.items() if k != RANDOM_STATE_KEY}
    with pytest.warns(UserWarning, match="no random state"):
        restore_random_state(model, older)
    assert torch.equal(torch.get_rng_state(), saved[RANDOM_STATE_KEY]["cpu"])


def test_a_checkpoint_saved_inside_an_epoch_warns_that_its_resume_is_not_exact(sound_classifier):
    saved = torch.load(sound_classifier["ckpt"], map_location="cpu", weights_only=True)
    model = s2i("s2i_c", "frozen", sound_classifier["ckpt"])
    model.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    model.trainer.state.fn = "fit"
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert progress["is_last_batch"] is True  # saved at an epoch's end: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restore_random_state(model, saved)
    inside = copy.deepcopy(saved)
    inside["loops"]["fit_loop"]["epoch_loop.batch_progress"].update(
        is_last_batch=False, current={**progress["current"], "completed": 3}
    )
    with pytest.warns(UserWarning, match="saved after batch 3 of an epoch"):
        restore_random_state(model, inside)


def _ddp_run(data: dict, cache: Path, out: Path, *extra: str) -> list[list[str]]:
    """tests/ddp_s2i_script.py on 2 CPU processes; each rank's line (checksum, iteration, built, draw)."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "ddp_s2i_script.py"), data["root"], str(cache), str(out), *extra],
        capture_output=True, text=True, timeout=180, env=env, cwd=out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DDP_OK world=2" in proc.stdout
    return [(out / f"rank{r}.txt").read_text().split() for r in (0, 1)]


def test_ddp_two_cpu_processes(data, tmp_path):
    """From an empty cache folder: rank 0 builds both splits' cache files in ``prepare_data``,
    rank 1 only reads them, and the two ranks end with the same weights. They draw from their own
    random streams (noise, DiffAugment), not the one stream ``seed_everything`` gave them both."""
    cache = tmp_path / "cache"
    ranks = _ddp_run(data, cache, tmp_path / "ddp")
    assert ranks[0][1] == ranks[1][1] == "3"  # 6 global steps: 3 G/D iterations
    assert ranks[0][0] == ranks[1][0]  # same weights on both ranks: gradients were all-reduced
    assert (ranks[0][2], ranks[1][2]) == ("built=2", "built=0")
    assert len(list(cache.glob("*.pt"))) == 2  # train and validation, written once
    assert ranks[0][3] != ranks[1][3]  # each rank its own stream
    again = _ddp_run(data, cache, tmp_path / "again")
    assert [r[3] for r in again] == [r[3] for r in ranks]  # ... forked from the seed alone


def test_ddp_resume_continues_every_ranks_stream(data, tmp_path):
    """A DDP checkpoint holds every rank's random state: a run stopped after epoch 2 and resumed on
    2 processes ends with the weights of a run never stopped (rank 1 does not restart from rank 0's
    stream)."""
    first = _ddp_run(data, tmp_path / "cache", tmp_path / "first", "2")
    saved = torch.load(tmp_path / "first" / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    states = saved[RANDOM_STATE_KEY]["ranks"]
    assert len(states) == 2 and not torch.equal(states[0]["cpu"], states[1]["cpu"])
    assert torch.equal(saved[RANDOM_STATE_KEY]["cpu"], states[0]["cpu"])
    resumed = _ddp_run(data, tmp_path / "cache", tmp_path / "resumed", "3", str(tmp_path / "first" / "ckpt" / "last.ckpt"))
    never_stopped = _ddp_run(data, tmp_path / "cache", tmp_path / "never_stopped", "3")
    assert int(resumed[0][1]) > int(first[0][1])
    assert [r[:2] for r in resumed] == [r[:2] for r in never_stopped]


# ---------------------------------------------------------------- CLI and configs


def test_cli_fit_fast_dev_run_s2i_and_classifier(data, sound_classifier, tmp_path, monkeypatch):
    """Also shows data.image_size reaching the model: the tasks refuse a size other than the data's."""
    monkeypatch.chdir(tmp_path)  # anything the CLI writes stays here
    monkeypatch.setattr(sys, "argv", ["cmav"])
    common = ["--trainer.fast_dev_run=true", "--trainer.enable_progress_bar=false", f"--data.root={data['root']}",
              f"--data.cache_dir={data['cache']}", "--data.image_size=32", "--data.batch_size=8",
              "--data.progress=false"]  # fmt: skip
    assert cmav_main(["fit", "--config", str(EXPERIMENTS / "s2i_c.yaml"), *common,
                      f"--trainer.default_root_dir={tmp_path / 's2i_c'}",
                      f"--model.init_args.audio_encoder_ckpt={sound_classifier['ckpt']}",
                      "--model.init_args.generator.base_channels=8",
                      "--model.init_args.discriminator.base_channels=8"]) == 0  # fmt: skip
    assert cmav_main(["fit", "--config", str(EXPERIMENTS / "audio_classifier.yaml"), *common,
                      f"--trainer.default_root_dir={tmp_path / 'audio_classifier'}",
                      "--model.init_args.audio_encoder.base_channels=8"]) == 0  # fmt: skip


# the augmentation each overlay sets: frames get colour jitter; an LMS (one channel of dB) none, and
# neither gets scrambling, flips (a swapped bowing hand / time reversal), zoom or rotation
STABLE_AUGMENT = {
    "s2i_stable": dict(translate=0.125, colour=0.2, erase=0.5),
    "i2s_stable": dict(translate=0.125, colour=0.0, erase=0.5),
}


@pytest.mark.parametrize(
    "variant, overlay",
    [("s2i_c", "s2i_stable"), ("s2i_n", "s2i_stable"), ("i2s_c", "i2s_stable"), ("i2s_n", "i2s_stable")],
)
def test_stable_overlay_turns_on_the_d_stabilisers_and_keeps_the_variant(variant, overlay, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cmav"])
    with pytest.raises(SystemExit):
        cmav_main(["fit", "--config", str(EXPERIMENTS / f"{variant}.yaml"),
                   "--config", str(EXPERIMENTS / f"{overlay}.yaml"), "--print_config"])  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)
    args = printed["model"]["init_args"]
    assert args["variant"] == variant and args["channels_last"] is True
    d, aug = args["discriminator"], args["diff_augment"]
    assert d["spectral_norm"] is True and d["projection"] is True
    assert (d["base_channels"], d["max_channels"]) == (64, 512)  # the paper's widths stay
    assert aug["enabled"] is True
    assert {k: aug[k] for k in STABLE_AUGMENT[overlay]} == STABLE_AUGMENT[overlay]
    assert (aug["colour_scramble"], aug["hflip"], aug["scale"], aug["degrees"]) == (False, False, 0.0, 0.0)
    assert printed["trainer"]["default_root_dir"] == f"runs/{variant}"


@pytest.mark.parametrize("branch, changed", [("i2s", {"loss_weights", "inference_condition"}), ("s2i", {"loss_weights"})])
def test_recipe_overlay_changes_only_the_measured_settings(branch, changed, capsys, monkeypatch):
    """``<branch>_recipe.yaml`` after ``<branch>_stable.yaml``: the fake pair at double weight (for
    S2I also the wrong-player pair at half; for I2S the class-mean condition); the YAMLs keep the
    paper's equal weights."""
    monkeypatch.setattr(sys, "argv", ["cmav"])

    def printed(*overlays: str) -> dict:
        with pytest.raises(SystemExit):
            cmav_main(["fit", "--config", str(EXPERIMENTS / f"{branch}_c.yaml")]
                      + [a for o in overlays for a in ("--config", str(EXPERIMENTS / f"{o}.yaml"))] + ["--print_config"])  # fmt: skip
        return yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]

    stable, recipe = printed(f"{branch}_stable"), printed(f"{branch}_stable", f"{branch}_recipe")
    assert stable["loss_weights"]["fake"] == 1.0
    measured = {"fake": 2.0} if branch == "i2s" else {"fake": 2.0, "wrong_player": 0.5}
    assert recipe["loss_weights"] == {**stable["loss_weights"], **measured}
    if branch == "i2s":
        assert (stable["inference_condition"], recipe["inference_condition"]) == ("own", "class_mean")
    else:  # the robustness recipe (s2i_harmonic.yaml) was measured before the wrong-player weight changed
        assert printed("s2i_stable", "s2i_harmonic")["loss_weights"] == {**stable["loss_weights"], "fake": 2.0}
    assert {k: v for k, v in recipe.items() if k not in changed} == {k: v for k, v in stable.items() if k not in changed}


@pytest.mark.parametrize("branch", ["s2i", "i2s"])
def test_ablation_grid_stable_variants_repeat_the_stable_overlay(branch):
    """The grid cannot include the overlay file, so it repeats its options: they must not drift apart."""
    from cmav.ablation import load_grid

    overlay = yaml.safe_load((EXPERIMENTS / f"{branch}_stable.yaml").read_text())["model"]["init_args"]
    variants = {v["name"]: v for v in load_grid(EXPERIMENTS / "ablations" / f"{branch}.yaml", None)["variants"]}
    for name in (f"{branch.upper()}-C stable", f"{branch.upper()}-N stable"):
        options = {k: v for k, v in variants[name].items() if k not in ("name", "variant")}
        assert options == overlay, name


def test_cli_last_ckpt_is_the_newest_epoch_even_when_it_is_not_the_best(data, tmp_path, monkeypatch):
    """lr 0: the weights never change, so the first epoch stays the best (a tie is no improvement);
    last.ckpt must still be the newest epoch (Lightning >= 2.6 writes ``save_last`` only with a new best)."""
    monkeypatch.chdir(tmp_path)  # the YAML's runs/audio_classifier/checkpoints land here
    monkeypatch.setattr(sys, "argv", ["cmav"])
    args = ["fit", "--config", str(EXPERIMENTS / "audio_classifier.yaml"), "--trainer.max_epochs=3",
            "--trainer.enable_progress_bar=false", f"--data.root={data['root']}", f"--data.cache_dir={data['cache']}",
            "--data.image_size=32", "--data.batch_size=8", "--data.progress=false",
            "--model.init_args.audio_encoder.base_channels=8", "--model.init_args.audio_encoder.dropout=0.0",
            "--model.init_args.optimizer.lr=0.0", "--trainer.limit_train_batches=2"]  # fmt: skip
    assert cmav_main(args) == 0
    ckpts = tmp_path / "runs" / "audio_classifier" / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (2, 6)
    best = sorted(ckpts.glob("best-*.ckpt"))
    assert len(best) == 1 and sorted(p.name for p in ckpts.iterdir()) == sorted([best[0].name, "last.ckpt"])
    # a second run into the same folder overwrites last.ckpt (no last-v1.ckpt) and resumes from it
    assert cmav_main([*args, "--trainer.max_epochs=4", "--ckpt_path=last"]) == 0
    again = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert (again["epoch"], again["global_step"]) == (3, 8) and not list(ckpts.glob("last-v*.ckpt"))


def test_cli_fit_refuses_a_half_written_checkpoint_and_bad_data_in_one_line(data, tmp_path, monkeypatch, capsys):
    """A save cut off by a kill, given to --ckpt_path (or found by `last`): the file is named, not
    torch's "failed finding central directory". Bad data: one line, exit 2, as cmav's other commands."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cmav"])
    args = ["fit", "--config", str(EXPERIMENTS / "audio_classifier.yaml"), "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false", f"--data.root={data['root']}", f"--data.cache_dir={data['cache']}",
            "--data.image_size=32", "--data.batch_size=8", "--data.progress=false",
            "--model.init_args.audio_encoder.base_channels=8", "--trainer.limit_train_batches=1"]  # fmt: skip
    whole = tmp_path / "whole.ckpt"
    assert cmav_main([*args, f"--trainer.default_root_dir={tmp_path / 'first'}"]) == 0
    whole.write_bytes((tmp_path / "first" / "checkpoints" / "last.ckpt").read_bytes())
    half = tmp_path / "half.ckpt"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    capsys.readouterr()
    assert cmav_main([*args, f"--ckpt_path={half}"]) == 2
    assert f"error: {half}: not a readable checkpoint (half-written or corrupt?)" in capsys.readouterr().err
    last = tmp_path / "runs" / "audio_classifier" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(half.read_bytes())
    assert cmav_main([*args, "--ckpt_path=last"]) == 2
    assert f"{last}: not a readable checkpoint" in capsys.readouterr().err
    assert cmav_main([*args[:5], f"--data.root={tmp_path / 'nowhere'}", *args[6:]]) == 2
    assert "nowhere" in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_a_second_s2i_run_into_its_folder_overwrites_last_ckpt(data, sound_classifier, tmp_path, monkeypatch):
    """`make demo` twice: the second S2I-C run must not write last-v1.ckpt beside the first run's
    last.ckpt, which `cmav generate --ckpt .../last.ckpt` would then still read."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cmav"])
    args = ["fit", "--config", str(EXPERIMENTS / "s2i_c.yaml"), "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", f"--data.root={data['root']}",
            f"--data.cache_dir={data['cache']}", "--data.image_size=32", "--data.batch_size=8", "--data.progress=false",
            f"--model.init_args.audio_encoder_ckpt={sound_classifier['ckpt']}", "--model.init_args.generator.base_channels=8",
            "--model.init_args.discriminator.base_channels=8", "--model.init_args.sample_every_n_steps=0"]  # fmt: skip
    ckpts = tmp_path / "runs" / "s2i_c" / "checkpoints"
    assert cmav_main(args) == 0
    first = (ckpts / "last.ckpt").stat().st_mtime_ns
    assert cmav_main([*args, "--seed_everything=1"]) == 0
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=000.ckpt", "last.ckpt"]
    assert (ckpts / "last.ckpt").stat().st_mtime_ns > first


@pytest.mark.parametrize("flags, warned", [("fpu avx2 fma", True), ("fpu avx2 avx512f avx512_bf16", False)])
def test_cli_fit_warns_before_bf16_on_a_cpu_without_bf16(flags, warned, data, tmp_path, monkeypatch):
    """On a CPU without bf16 instructions autocast emulates bf16 (22x slower than float32 on an AVX2
    EPYC); a fit that asks for it on such a CPU says so, one that has them does not."""
    import cmav.bench.cpu_bf16 as cpu_bf16

    (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(cpu_bf16, "CPUINFO", str(tmp_path / "cpuinfo"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cmav"])
    args = ["fit", "--config", str(EXPERIMENTS / "audio_classifier.yaml"), "--trainer.max_epochs=1",
            "--trainer.enable_progress_bar=false", f"--data.root={data['root']}", f"--data.cache_dir={data['cache']}",
            "--data.image_size=32", "--data.batch_size=8", "--data.progress=false", "--trainer.accelerator=cpu",
            "--model.init_args.audio_encoder.base_channels=8", "--trainer.limit_train_batches=1",
            "--trainer.limit_val_batches=1", "--trainer.precision=bf16-mixed"]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cmav_main(args) == 0
    slow = [w for w in caught if "without bf16 instructions" in str(w.message)]
    assert len(slow) == int(warned)
    if warned:
        assert "32-true" in str(slow[0].message) and str(tmp_path / "cpuinfo") in str(slow[0].message)


def test_validate_and_a_grid_stage_warn_before_bf16_on_a_cpu_without_bf16(data, tmp_path, monkeypatch):
    """`cmav validate` and an ablation grid's training stage (the GPU presets ask for bf16) give the
    same warning as `cmav fit` on a CPU without bf16 instructions; in float32 neither does."""
    import cmav.bench.cpu_bf16 as cpu_bf16
    from cmav.ablation import grid

    (tmp_path / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n")
    monkeypatch.setattr(cpu_bf16, "CPUINFO", str(tmp_path / "cpuinfo"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cmav"])

    def slow_warnings(run, *args) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(*args)
        return len([w for w in caught if "without bf16 instructions" in str(w.message)])

    args = ["validate", "--config", str(EXPERIMENTS / "audio_classifier.yaml"), "--trainer.enable_progress_bar=false",
            f"--data.root={data['root']}", f"--data.cache_dir={data['cache']}", "--data.image_size=32",
            "--data.batch_size=8", "--data.progress=false", "--trainer.accelerator=cpu",
            "--model.init_args.audio_encoder.base_channels=8", "--trainer.limit_val_batches=1"]  # fmt: skip
    assert slow_warnings(cmav_main, [*args, "--trainer.precision=bf16-mixed"]) == 1
    assert slow_warnings(cmav_main, args) == 0

    dm = datamodule(data)
    dm.setup("fit")
    for precision, want in (("bf16-mixed", 1), ("32-true", 0)):
        cfg = {"trainer": {"accelerator": "cpu", "precision": precision, "enable_progress_bar": False,
                           "enable_model_summary": False, "limit_val_batches": 0}}  # fmt: skip
        task = ClassifierTask(modality="audio", image_size=32, audio_encoder=TINY_ENC)
        ckpt = tmp_path / precision / "c.ckpt"
        assert slow_warnings(grid.fit, cfg, tmp_path / precision, dm, "audio_classifier", 0, task, ckpt, 1) == want
        assert ckpt.is_file()


def test_native_bf16_cpu_reads_x86_flags_and_arm_features(tmp_path):
    from cmav.bench.cpu_bf16 import native_bf16_cpu, slow_bf16_warning

    cases = {"flags\t: fpu avx2\nflags\t: fpu avx2\n": False, "flags\t: avx2 amx_bf16 amx_tile\n": True,
             "Features\t: fp asimd bf16 i8mm\n": True, "Features\t: fp asimd\n": False, "processor\t: 0\n": None}  # fmt: skip
    for k, (text, want) in enumerate(cases.items()):
        (tmp_path / f"c{k}").write_text(text)
        assert native_bf16_cpu(tmp_path / f"c{k}") is want, text
        assert (slow_bf16_warning(tmp_path / f"c{k}") is not None) == (want is False)
    assert native_bf16_cpu(tmp_path / "absent") is None


@pytest.mark.parametrize("name", ["audio_classifier", "image_judge", "player_judge", "image_encoder", "s2i_c", "s2i_n",
                                  "s2i_ae", "i2s_c", "i2s_n", "i2s_ae"])  # fmt: skip
def test_experiment_configs_parse_and_repeat_the_python_defaults(name, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cmav"])
    with pytest.raises(SystemExit) as exc:
        cmav_main(["fit", "--config", str(EXPERIMENTS / f"{name}.yaml"), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["root"] == "data/default" and printed["data"]["image_size"] == 64
    raw = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    ckpts = [c["init_args"] for c in raw["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    # last.ckpt every epoch: save_last on an un-monitored callback, or a "last" callback beside a monitored one
    newest = [c for c in ckpts if not c.get("monitor") and (c.get("save_last") or c.get("filename") == "last")]
    assert newest and all(c["every_n_epochs"] == 1 for c in ckpts)
    assert not any(c.get("monitor") and c.get("save_last") for c in ckpts)  # a copy of the best, since Lightning 2.6
    assert raw["trainer"]["logger"]["class_path"].endswith("TensorBoardLogger")
    args = raw["model"]["init_args"]
    if name.startswith(("s2i", "i2s")):
        # the YAML spells out the option groups, and they are the Python defaults (the paper's)
        defaults = inspect.signature(S2ITask if name.startswith("s2i") else I2STask).parameters
        for group in ("generator", "discriminator", "g_optimizer", "d_optimizer", "loss_weights", "samples",
                      "diff_augment", "hard_negatives"):  # fmt: skip
            assert args[group] == plain(defaults[group].default), group
        for key in ("pixel_loss", "ema_decay", "sample_every_n_steps", "seed", "channels_last", "cache_frozen_features",
                    "condition_noise", "condition_on", "inference_condition", "inference_neighbours"):
            assert args[key] == defaults[key].default, key
        assert args["generator"]["z_dim"] == 10 and args["g_optimizer"] == {"lr": 2e-4, "betas": [0.5, 0.999],
                                                                             "weight_decay": 0.0}  # fmt: skip
    else:
        group = "audio_encoder" if args["modality"] == "audio" else f"image_{args.get('image_model', 'judge')}"
        assert args[group] == plain(inspect.signature(ClassifierTask).parameters[group].default)
        assert args["optimizer"] == plain(inspect.signature(ClassifierTask).parameters["optimizer"].default)


def test_the_judged_accuracy_monitor_is_added_from_the_command_line(capsys, monkeypatch):
    # the README's form: appended to the YAML's callbacks, the ModelCheckpoint kept
    monkeypatch.setattr(sys, "argv", ["cmav"])
    with pytest.raises(SystemExit) as exc:
        cmav_main(["fit", "--config", str(EXPERIMENTS / "s2i_c.yaml"),
                   "--trainer.callbacks+=cmav.evaluation.JudgedAccuracyMonitor",
                   "--trainer.callbacks.judge_ckpt=runs/image_judge/checkpoints/last.ckpt",
                   "--trainer.callbacks.every_n_epochs=3", "--print_config"])  # fmt: skip
    assert exc.value.code in (0, None)
    callbacks = yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]
    assert [c["class_path"] for c in callbacks] == ["lightning.pytorch.callbacks.ModelCheckpoint",
                                                    "cmav.evaluation.JudgedAccuracyMonitor"]  # fmt: skip
    assert callbacks[1]["init_args"]["judge_ckpt"] == "runs/image_judge/checkpoints/last.ckpt"
    assert callbacks[1]["init_args"]["every_n_epochs"] == 3


def test_option_groups_mirror_the_model_defaults():
    pairs = [(AudioEncoderConfig, AudioEncoder), (ImageJudgeConfig, ImageJudge),
             (GeneratorConfig, ConditionalGenerator), (DiscriminatorConfig, PairAwareDiscriminator)]  # fmt: skip
    for config, model in pairs:
        params = inspect.signature(model).parameters
        for f in dataclasses.fields(config):
            if config is AudioEncoderConfig and f.name == "arch":
                continue  # which model the group builds, not an option of either
            owner = StatsPoolEncoder if config is AudioEncoderConfig and f.name not in params else model
            assert f.default == inspect.signature(owner).parameters[f.name].default, (config.__name__, f.name)
    assert AdamConfig() == AdamConfig(lr=2e-4, betas=(0.5, 0.999))
    assert AudioEncoderConfig().feature_dim == 128 and GeneratorConfig().z_dim == 10


def test_cmav_help_lists_the_lightning_commands(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cmav"])
    with pytest.raises(SystemExit):
        cmav_main(["--help"])
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("data", "fit", "validate", "test", "predict"))
    with pytest.raises(SystemExit) as exc:
        cmav_main(["fit", "--help"])
    assert exc.value.code == 0 and "--model" in capsys.readouterr().out


def test_half_written_checkpoint_gives_a_clear_error(tmp_path):
    from cmav.tasks.classifier import load_classifier

    bad = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, bad)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(ValueError, match="last.ckpt: not a readable checkpoint"):
        load_classifier(bad)


def test_colour_scramble_permutes_or_greys_each_frame_and_is_off_unless_enabled():
    from cmav.tasks.common import ImageAugment, ImageAugmentConfig

    torch.manual_seed(0)
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    off = ImageAugment(ImageAugmentConfig(enabled=False, translate=0.0, colour_scramble=True))
    assert off(x) is x
    aug = ImageAugment(ImageAugmentConfig(enabled=True, translate=0.0, colour_scramble=True))
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    grey = permuted = 0
    for a, b in zip(x, y, strict=True):
        if torch.allclose(b, a.mean(0, keepdim=True).expand_as(a)) and not torch.allclose(b[0], a[0]):
            grey += 1
            continue
        # every output channel is one of the input's channels, all three used once
        src = [next(i for i in range(3) if torch.equal(b[c], a[i])) for c in range(3)]
        assert sorted(src) == [0, 1, 2]
        permuted += src != [0, 1, 2]
    assert 5 <= grey <= 30 and permuted > 20  # a quarter grey on average; 5 of 6 orders move channels


def test_keep_instrument_colour_changes_only_the_pixels_outside_the_mask():
    from cmav.tasks.common import ImageAugment, ImageAugmentConfig

    torch.manual_seed(0)
    x = torch.rand(32, 3, 16, 16) * 2 - 1
    mask = torch.zeros(32, 1, 16, 16)
    mask[:, :, 4:12, 2:8] = 1.0  # the "instrument"
    config = ImageAugmentConfig(enabled=True, translate=0.0, colour=0.5, colour_scramble=True,
                                keep_instrument_colour=True)  # fmt: skip
    y = ImageAugment(config, takes_masks=True)(x, mask)
    inside, outside = mask.expand_as(x).bool(), ~mask.expand_as(x).bool()
    assert y.shape == x.shape and torch.allclose(y[inside], x[inside], atol=1e-5)
    assert (y[outside] - x[outside]).abs().mean() > 0.1  # jitter and scrambling still act there
    # without the option the same ops recolour the instrument too
    plain = ImageAugment(ImageAugmentConfig(enabled=True, translate=0.0, colour=0.5, colour_scramble=True))
    assert (plain(x, mask)[inside] - x[inside]).abs().mean() > 0.1

    # a warp moves frame and mask together: the kept pixels are the warped instrument's
    torch.manual_seed(1)
    warp = ImageAugmentConfig(enabled=True, translate=0.25, colour=0.5, keep_instrument_colour=True)
    frame = torch.full((8, 3, 16, 16), -0.5)
    frame[:, :, 4:12, 2:8] = 0.8
    out = ImageAugment(warp, takes_masks=True)(frame, mask[:8])
    bright = (out - 0.8).abs().amax(1) < 1e-4  # pixels still exactly the instrument's colour
    assert bright.float().mean((1, 2)).min() > 0.1  # the instrument kept its colour wherever it moved

    with pytest.raises(ValueError, match="keep_instrument_colour needs instrument masks"):
        ImageAugment(config)  # a caller that has no masks (the GAN's DiffAugment, retrieval)
    with pytest.raises(ValueError, match="given no instrument masks"):
        ImageAugment(config, takes_masks=True)(x)


def test_zoom_rotation_and_erasing_augment_as_configured():
    from cmav.tasks.common import ImageAugment, ImageAugmentConfig

    torch.manual_seed(0)
    # a bright square in the centre of a dark frame: a zoom changes how much of the frame it covers
    x = -torch.ones(32, 3, 32, 32)
    x[:, :, 12:20, 12:20] = 1.0
    zoom = ImageAugment(ImageAugmentConfig(enabled=True, translate=0.0, scale=0.3))
    area = (zoom(x)[:, 0] > 0).float().mean((1, 2))
    assert area.max() > area.min() * 1.3  # zoom in and out both happen
    ident = ImageAugment(ImageAugmentConfig(enabled=True, translate=0.0))
    assert not ident.active and ident(x) is x  # nothing configured: frames untouched

    erase = ImageAugment(ImageAugmentConfig(enabled=True, translate=0.0, erase=1.0))
    y = erase(torch.ones(16, 3, 32, 32))
    grey = (y.abs() < 1e-6).all(1).float().mean((1, 2))  # erased pixels are mid-grey (0 in [-1, 1])
    assert ((grey >= 0.02 * 0.9) & (grey <= 0.15 * 1.1)).all()
    assert (y[(y.abs() >= 1e-6)] == 1.0).all()  # the rest is untouched

    for bad, match in (({"scale": 1.0}, "augment.scale"), ({"erase": 1.5}, "augment.erase")):
        with pytest.raises(ValueError, match=match):
            ImageAugment(ImageAugmentConfig(enabled=True, **bad))


def test_ema_decay_out_of_range_is_refused_at_construction_even_when_the_networks_wait_for_the_data():
    """A scratch S2I encoder without audio_shape builds its networks (and the EMA copy) at setup:
    a bad decay got through construction there, and the EMA's own error did not name the option."""
    for bad in (1.5, -0.1, float("nan")):
        for lazy in (True, False):
            shapes = {} if lazy else {"audio_shape": [1, 32, 12]}
            with pytest.raises(ValueError, match=r"model\.init_args\.ema_decay must be in \[0, 1\], got"):
                S2ITask(variant="s2i_n", encoder_mode="scratch", image_size=32, generator=TINY_G, discriminator=TINY_D,
                        encoder=TINY_ENC, ema_decay=bad, **shapes)  # fmt: skip
    for fine in (0.0, 1.0):
        S2ITask(variant="s2i_n", encoder_mode="scratch", image_size=32, ema_decay=fine)


def test_out_of_range_augment_options_are_refused_with_the_option_name():
    """Negative translate/colour/degrees used to switch the op off silently (even with enabled);
    too large ones failed inside kornia ("brightness out of bounds") without naming the option."""
    from cmav.tasks.common import ImageAugment, ImageAugmentConfig

    bad = ({"translate": -0.1}, {"translate": 1.5}, {"colour": -0.3}, {"colour": 5.0}, {"degrees": -10.0},
           {"degrees": 400.0}, {"translate": float("nan")})  # fmt: skip
    for options in bad:
        (name,) = options
        with pytest.raises(ValueError, match=rf"^augment\.{name} must be in \["):
            ImageAugment(ImageAugmentConfig(enabled=True, **options))
    # the GAN's DiffAugment names its own option group
    with pytest.raises(ValueError, match=r"^diff_augment\.colour must be in \[0, 1\], got 5.0"):
        S2ITask(variant="s2i_c", encoder_mode="scratch", image_size=32, diff_augment={"enabled": True, "colour": 5.0})
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    edges = ImageAugment(ImageAugmentConfig(enabled=True, translate=1.0, colour=1.0, degrees=180.0))
    assert edges(x).shape == x.shape  # the ends of the ranges are kornia's too


def test_a_one_by_one_batch_norm_discriminator_map_is_refused_at_construction():
    """final_size 1 ends D on a 1x1 map, where batch norm (on unless spectral_norm) fails on the
    one-sample batches the wrong-class and wrong-player terms can give: refused before the data
    are even seen (the networks of a scratch S2I without audio_shape are built at setup)."""
    with pytest.raises(ValueError, match=r"discriminator\.final_size=1.*discriminator\.spectral_norm"):
        S2ITask(variant="s2i_c", encoder_mode="scratch", image_size=32, discriminator={**TINY_D, "final_size": 1})
    sn = S2ITask(variant="s2i_c", encoder_mode="scratch", image_size=32, audio_shape=[1, 32, 12],
                 discriminator={**TINY_D, "final_size": 1, "spectral_norm": True}, generator=TINY_G, encoder=TINY_ENC)  # fmt: skip
    assert sn._disc(torch.rand(1, 3, 32, 32) * 2 - 1, torch.randn(1, 128)).shape == (1,)  # no batch norm: fine
