"""Evaluation, ablation runner, `cmav generate` and `cmav bench` on tiny synthetic data (CPU)."""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from cmav.data.datamodule import AudioVisualDataModule
from cmav.evaluation import evaluate_s2i
from cmav.evaluation.s2i import FID_LABEL

from fixtures import make_suburmp_tracks, write_wav

SIZE = 32
SMALL_JUDGE = {"n_blocks": 3, "base_channels": 8, "max_channels": 32, "feature_dim": 32, "dropout": 0.0,
               "block_dropout": 0.0}  # fmt: skip


def _fit(task, dm, steps: int, out: Path, name: str) -> Path:
    import lightning as L

    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=str(out))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=dm)
    path = out / f"{name}.ckpt"
    trainer.save_checkpoint(str(path))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from 2 threads, and on a shared CPU OpenMP oversubscription slows them ~10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # class-coloured frames, the same pitch per class: a judge learns them in a few dozen steps
    return make_suburmp_tracks(tmp_path_factory.mktemp("evaldata"), tracks=(0, 1), chunks=4)


@pytest.fixture(scope="module")
def dm(data) -> AudioVisualDataModule:
    # tracks of 4 chunks: the held-out one shares audio with the last trained one; gap 0 keeps it (these
    # tests are about the metrics, test_cache_and_datamodule about the gap)
    d = AudioVisualDataModule(root=str(data), image_size=SIZE, batch_size=16, holdout_tail=0.25, holdout_gap_ms=0,
                              progress=False)  # fmt: skip
    d.setup("fit")
    return d


@pytest.fixture(scope="module")
def judges(dm, tmp_path_factory) -> tuple[Path, Path]:
    from cmav.tasks import ClassifierTask

    out = tmp_path_factory.mktemp("judges")
    fast = {"lr": 3e-3, "betas": (0.9, 0.999)}
    image = _fit(ClassifierTask(modality="image", image_size=SIZE, image_judge=SMALL_JUDGE, optimizer=fast),
                 dm, 80, out, "image")  # fmt: skip
    player = _fit(ClassifierTask(modality="image", target="track", image_size=SIZE, image_judge=SMALL_JUDGE),
                  dm, 30, out, "player")  # fmt: skip
    return image, player


def tiny_s2i(variant: str):
    """An S2I task small enough to train a few steps in a test, its encoder from scratch."""
    from cmav.tasks import S2ITask

    small = {"base_channels": 8, "max_channels": 32}
    return S2ITask(variant=variant, encoder_mode="scratch", image_size=SIZE, sample_every_n_steps=0,
                   encoder={**small, "feature_dim": 32}, generator={**small, "cond_proj_dim": 16},
                   discriminator={**small, "cond_proj_dim": 16})  # fmt: skip


@pytest.fixture(scope="module")
def s2i_ckpt(dm, tmp_path_factory) -> Path:
    return _fit(tiny_s2i("s2i_c"), dm, 4, tmp_path_factory.mktemp("s2i"), "s2i")


class PerfectGenerator:
    """Returns the real validation frame paired with the audio (audio -> frame is 1:1 per class here)."""

    z_dim = 10

    def __init__(self, dm) -> None:
        t = dm.val.tensors
        self.table = {a.half().numpy().tobytes(): img.float().div(127.5).sub(1.0) for a, img in zip(t.audio, t.images, strict=True)}

    def __call__(self, audio, z):
        return torch.stack([self.table[a.half().numpy().tobytes()] for a in audio])


def constant_generator(audio, z):
    return torch.zeros(audio.shape[0], 3, SIZE, SIZE)


def test_perfect_generator_scores_the_judges_own_accuracy(dm, judges, tmp_path):
    image, player = judges
    m = evaluate_s2i(PerfectGenerator(dm), dm, image, player, out_dir=tmp_path, n_diversity_draws=3)
    assert m["judge_on_real"]["accuracy"] > 0.3  # well above chance (1/13): it learned the class colours
    assert m["judged"]["accuracy"] == m["judge_on_real"]["accuracy"]
    assert m["judged"]["balanced_accuracy"] == m["judge_on_real"]["balanced_accuracy"]
    assert m["judged"]["split"] == "validation"
    assert m["fid_kid"]["fid"] == pytest.approx(0.0, abs=1e-3)
    assert m["fid_kid"]["label"] == FID_LABEL and "not Inception" in m["fid_kid"]["label"]
    assert m["diversity"]["value"] == pytest.approx(0.0, abs=1e-6)  # ignores z
    # per player: the validation players, their item counts adding up and weighting to the total
    val = dm.val.tensors
    per = m["judged"]["per_player"]
    assert {(r["class"], r["track"]) for r in per} == {(dm.class_names[c], t) for c, t in zip(val.labels.tolist(), val.tracks.tolist(), strict=True)}
    assert sum(r["n"] for r in per) == len(val.labels)
    assert sum(r["n"] * r["accuracy"] for r in per) / len(val.labels) == pytest.approx(m["judged"]["accuracy"])
    # the seen players' held-out tails (this fixture's audio is one clip per class, so the
    # "perfect" generator draws the class's validation frame there)
    h = m["judged_holdout"]
    assert h["split"] == "train_holdout" and h["n"] == 13 * 2
    assert 0.0 <= h["accuracy"] <= 1.0 and 0.0 <= h["judge_on_real_accuracy"] <= 1.0
    assert sum(r["n"] for r in h["per_player"]) == h["n"]
    p = m["player"]
    assert p["split"] == "train_holdout" and p["n"] == 13 * 2 and 0.0 <= p["accuracy"] <= 1.0
    assert 0.0 <= p["judge_on_real_accuracy"] <= 1.0
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["judged"]["accuracy"] == m["judged"]["accuracy"]
    assert (tmp_path / "confusion_generated.png").is_file() and (tmp_path / "confusion_real.png").is_file()


def test_constant_generator_is_at_chance(dm, judges):
    image, _ = judges
    m = evaluate_s2i(constant_generator, dm, image, None, n_diversity_draws=2)
    # one image for everything -> one predicted class -> exactly its share of the (balanced) items
    assert m["judged"]["accuracy"] == pytest.approx(1 / 13)
    assert m["judged"]["balanced_accuracy"] == pytest.approx(1 / 13)
    # every player, validation and held-out tails alike, is drawn wholly as that one class
    rows = m["judged"]["per_player"] + m["judged_holdout"]["per_player"]
    assert len({r["named_most"] for r in rows}) == 1 and all(r["named_most_share"] == 1.0 for r in rows)
    assert m["judged_holdout"]["accuracy"] == pytest.approx(1 / 13)
    assert m["player"] is None
    assert m["fid_kid"]["fid"] > 0.0


def test_constant_generator_names_one_player_and_so_one_instrument(dm, judges):
    """One frame for every held-out chunk: the player judge names one player for all of them, so
    its accuracy is that player's share (1 of 26) and its instrument accuracy the class's (2 of 26)."""
    image, player = judges
    p = evaluate_s2i(constant_generator, dm, image, player, n_diversity_draws=2)["player"]
    assert p["n"] == 13 * 2
    assert p["accuracy"] == pytest.approx(1 / 26)
    assert p["instrument_accuracy"] == pytest.approx(2 / 26)


def test_a_judge_is_not_handed_frames_of_another_size(data, dm, judges):
    # its convolutions end in a global pool, so a 16-px frame would be scored without a word
    image, player = judges
    small = lambda a, z: torch.zeros(a.shape[0], 3, SIZE // 2, SIZE // 2)  # noqa: E731
    small.z_dim = 10
    with pytest.raises(ValueError, match=rf"image judge was trained on {SIZE}x{SIZE} frames, the generated frames are 16x16"):
        evaluate_s2i(small, dm, image, None, n_diversity_draws=2)
    other = AudioVisualDataModule(root=str(data), image_size=SIZE // 2, batch_size=16, progress=False)
    other.setup("fit")
    with pytest.raises(ValueError, match=r"the data's frames are 16x16"):
        evaluate_s2i(small, other, image, None, n_diversity_draws=2)
    with pytest.raises(ValueError, match=r"player judge was trained on .* the generated frames are 16x16"):
        from cmav.evaluation.s2i import _player_consistency

        _player_consistency(small, 10, dm, player, seed=0, batch_size=8)


def test_a_player_judge_of_other_players_and_a_monitor_judge_of_another_size_are_refused(data, dm, judges, tmp_path):
    """Player consistency used to drop held-out chunks of players the judge did not know (a third of
    them here) and score the rest; the training monitor scored frames of any size."""
    import lightning as L

    from cmav.evaluation import JudgedAccuracyMonitor
    from cmav.tasks import S2ITask

    image, player = judges
    three = make_suburmp_tracks(tmp_path / "three", tracks=(0, 1, 2), chunks=4)
    dm3 = AudioVisualDataModule(root=str(three), image_size=SIZE, batch_size=16, holdout_tail=0.25, holdout_gap_ms=0,
                                progress=False)  # fmt: skip
    dm3.setup("fit")
    with pytest.raises(ValueError, match=r"the data's train players \(39 .*differ from the 26 this player judge was built for"):
        evaluate_s2i(constant_generator, dm3, image, player, n_diversity_draws=2)
    small = AudioVisualDataModule(root=str(data), image_size=SIZE // 2, batch_size=16, progress=False)
    tiny = {"base_channels": 8, "max_channels": 32}
    task = S2ITask(variant="s2i_c", encoder_mode="scratch", image_size=SIZE // 2, sample_every_n_steps=0,
                   encoder={**tiny, "feature_dim": 32}, generator={**tiny, "cond_proj_dim": 16},
                   discriminator={**tiny, "cond_proj_dim": 16})  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[JudgedAccuracyMonitor(str(image))], default_root_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(ValueError, match=rf"image\.ckpt: the image judge was trained on {SIZE}x{SIZE} frames, the data's frames are 16x16"):
        trainer.fit(task, datamodule=small)


def test_tails_that_share_audio_with_training_are_not_scored_and_the_report_says_why(data, judges):
    image, player = judges
    guarded = AudioVisualDataModule(root=str(data), image_size=SIZE, batch_size=16, holdout_tail=0.25, progress=False)
    guarded.setup("fit")  # 4-chunk tracks: the one held-out chunk overlaps the last trained one
    m = evaluate_s2i(constant_generator, guarded, image, player, n_diversity_draws=2)
    assert m["player"]["accuracy"] is None and "holdout_gap_ms 0" in m["player"]["note"]
    assert not m.get("judged_holdout")


def test_noise_dependent_generator_has_diversity_and_checkpoint_path_works(dm, judges, s2i_ckpt):
    image, _ = judges
    m = evaluate_s2i(str(s2i_ckpt), dm, image, None, n_diversity_draws=3)
    assert m["generator"]["variant"] == "s2i_c" and m["generator"]["generator"] == "ema"
    assert m["diversity"]["value"] >= 0.0 and 0.0 <= m["judged"]["accuracy"] <= 1.0


def test_generate_writes_a_png_from_a_wav(s2i_ckpt, tmp_path, capsys):
    from cmav.cli.main import main

    wav = write_wav(tmp_path / "clip.wav", seconds=1.2, freq=330.0)
    out = tmp_path / "grid.png"
    assert main(["generate", "--ckpt", str(s2i_ckpt), "--audio", str(wav), "-n", "4", "-o", str(out)]) == 0
    assert "first 0.5 s" in capsys.readouterr().err
    assert Image.open(out).size == (2 * (SIZE + 2) + 2,) * 2  # 2x2 grid, 2-px gaps
    one = tmp_path / "one.png"
    wav = write_wav(tmp_path / "short.wav", seconds=0.5, rate=22050, channels=1)
    assert main(["generate", "--ckpt", str(s2i_ckpt), "--audio", str(wav), "-n", "1", "-o", str(one)]) == 0
    assert Image.open(one).size == (SIZE, SIZE)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav at all")
    assert main(["generate", "--ckpt", str(s2i_ckpt), "--audio", str(bad), "-o", str(tmp_path / "x.png")]) == 2
    assert "not a readable audio file" in capsys.readouterr().err


def test_judged_accuracy_monitor_logs_what_evaluate_s2i_measures_and_keeps_the_best_epoch(dm, judges, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from cmav.evaluation import JudgedAccuracyMonitor

    image, player = judges
    L.seed_everything(0, verbose=False)
    task = tiny_s2i("s2i_c")
    monitor = JudgedAccuracyMonitor(str(image), every_n_epochs=2)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/judged_acc", mode="max", every_n_epochs=2,
                           save_top_k=1)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=3, limit_train_batches=2, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, callbacks=[monitor, best], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(tmp_path))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=dm)
    # epoch 2 (every_n_epochs) and epoch 3 (the last)
    assert [h["epoch"] for h in monitor.history] == [1, 2]
    assert 0 < monitor.history[0]["time_s"] < monitor.history[1]["time_s"]
    assert trainer.callback_metrics["val/judged_acc"].item() == pytest.approx(monitor.history[-1]["judged_acc"])
    m = evaluate_s2i(task, dm, image, None, n_diversity_draws=2)  # the same number, after training
    assert monitor.history[-1]["judged_acc"] == pytest.approx(m["judged"]["accuracy"])
    assert monitor.history[-1]["judge_on_real"] == pytest.approx(m["judge_on_real"]["accuracy"])
    assert best.best_model_score.item() == pytest.approx(monitor.history[0]["judged_acc"])  # scored at epoch 2 only
    assert all(not isinstance(v, torch.nn.Module) or "judge" not in k for k, v in task.named_children())
    # every reading is on disk too, in the run's folder, by GAN iteration (2 batches per epoch here)
    with (tmp_path / "val_judged_acc.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["iteration"]), int(r["epoch"])) for r in rows] == [(4, 1), (6, 2)]
    for row, reading in zip(rows, monitor.history, strict=True):
        assert float(row["judged_acc"]) == pytest.approx(reading["judged_acc"], abs=1e-4)
        assert float(row["judge_on_real"]) == pytest.approx(reading["judge_on_real"], abs=1e-4)
        assert float(row["train_s"]) == pytest.approx(reading["time_s"], abs=0.06) and row["judge"] == str(image)
    # a resumed run (from the epoch-2 checkpoint) adds its readings to the same file
    again = L.Trainer(accelerator="cpu", devices=1, max_epochs=4, limit_train_batches=2, limit_val_batches=1,
                      num_sanity_val_steps=0, logger=False, callbacks=[JudgedAccuracyMonitor(str(image), every_n_epochs=2)],
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      default_root_dir=str(tmp_path))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again.fit(tiny_s2i("s2i_c"), datamodule=dm, ckpt_path=best.best_model_path)
    with (tmp_path / "val_judged_acc.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["iteration"]), int(r["epoch"])) for r in rows] == [(4, 1), (6, 2), (8, 3)]
    # ... and its training seconds go on from the checkpoint's, not from zero
    saved = torch.load(best.best_model_path, weights_only=False)["callbacks"][monitor.state_key]["train_s"]
    assert monitor.history[0]["time_s"] <= saved < float(rows[2]["train_s"])

    # a player judge (target='track') or a sound classifier is not an image judge of the instrument
    bad = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, logger=False,
                    callbacks=[JudgedAccuracyMonitor(str(player))], enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"player\.ckpt.*target='track'"):
        bad.fit(task, datamodule=dm)
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        JudgedAccuracyMonitor(str(tmp_path / "nothing.ckpt")).setup(bad, task, "fit")


def test_judged_accuracy_monitor_reads_the_last_validation_of_a_run_that_ends_by_max_steps(dm, judges, tmp_path):
    import lightning as L

    from cmav.evaluation import JudgedAccuracyMonitor

    image, _ = judges
    monitor = JudgedAccuracyMonitor(str(image), every_n_epochs=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=-1, max_steps=3 * 2 * 2, limit_train_batches=2,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        callbacks=[monitor], enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))  # fmt: skip  (3 epochs of 2 GAN batches, 2 steps each)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(tiny_s2i("s2i_c"), datamodule=dm)
    assert [h["epoch"] for h in monitor.history] == [1, 2]  # epoch 2 (every_n_epochs) and epoch 3 (the last)


def test_judged_accuracy_monitor_on_the_held_out_tails_scores_those_items_only(data, dm, judges, tmp_path):
    """split='holdout' judges the generator on the train tracks' held-out tails (never the
    validation players) and logs holdout/...; without held-out tails it is refused by name."""
    import lightning as L

    from cmav.evaluation import JudgedAccuracyMonitor
    from cmav.evaluation.s2i import generate_images, make_generator_fn
    from cmav.metrics import judged_accuracy
    from cmav.tasks.classifier import load_image_judge

    image, _ = judges
    L.seed_everything(0, verbose=False)
    task = tiny_s2i("s2i_n")
    monitor = JudgedAccuracyMonitor(str(image), every_n_epochs=1, split="holdout")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=1,
                        num_sanity_val_steps=0, logger=False, callbacks=[monitor], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=dm)
    assert "holdout/judged_acc" in trainer.callback_metrics and "val/judged_acc" not in trainer.callback_metrics
    assert (tmp_path / "holdout_judged_acc.csv").is_file() and not (tmp_path / "val_judged_acc.csv").exists()

    # the same figures, computed here on the held-out items
    held = torch.as_tensor(list(dm.train_holdout.indices), dtype=torch.long)
    assert 0 < len(held) < len(dm.train_full)
    t = dm.train_full.tensors
    judge = load_image_judge(image)
    fn, z_dim, _ = make_generator_fn(task)
    fake = generate_images(fn, t.audio[held].float(), z_dim, seed=0)
    expected = judged_accuracy(judge, fake, t.labels[held], dm.class_names)
    real = judged_accuracy(judge, t.images[held].float().div(127.5).sub(1.0), t.labels[held], dm.class_names)
    assert monitor.history[-1]["judged_acc"] == pytest.approx(expected.accuracy)
    assert monitor.history[-1]["judge_on_real"] == pytest.approx(real.accuracy)
    # ... which the judge on the real items tells apart from the validation split here
    val = dm.val.tensors
    on_val = judged_accuracy(judge, val.images.float().div(127.5).sub(1.0), val.labels, dm.class_names)
    assert on_val.accuracy != pytest.approx(real.accuracy)

    whole = AudioVisualDataModule(root=str(data), image_size=SIZE, batch_size=16, holdout_tail=0.0, progress=False)
    whole.setup()
    refused = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, logger=False,
                        callbacks=[JudgedAccuracyMonitor(str(image), split="holdout")], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)  # fmt: skip
    with pytest.raises(ValueError, match="holdout_tail > 0"):
        refused.fit(task, datamodule=whole)
    with pytest.raises(ValueError, match="split must be one of"):
        JudgedAccuracyMonitor(str(image), split="test")


def test_bench_reports_both_paths(data):
    from cmav.bench.s2i import bench_s2i

    r = bench_s2i(data, steps=3, warmup=1, batch_size=8, image_size=SIZE, channels=8, device="cpu")
    assert r["lightning_images_per_s"] > 0 and r["bare_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["lightning_images_per_s"] / r["bare_images_per_s"])


def test_s2i_grid_takes_a_given_sound_classifier_and_refuses_a_judge(dm, judges, tmp_path):
    from cmav.ablation import load_grid
    from cmav.ablation.s2i import _sound_classifier
    from cmav.tasks import ClassifierTask

    cfg = load_grid(Path(__file__).parents[1] / "experiments" / "ablations" / "s2i.yaml", "quick")
    clf = _fit(ClassifierTask(modality="audio", image_size=SIZE, class_names=list(dm.class_names),
                              input_shape=list(dm.val.tensors.audio.shape[1:])), dm, 1, tmp_path, "clf")  # fmt: skip
    cfg["stages"]["audio_classifier"]["ckpt"] = str(clf)
    assert _sound_classifier(cfg, tmp_path, dm, seed=3) == clf
    assert not (tmp_path / "judges").exists()  # nothing trained
    cfg["stages"]["audio_classifier"]["ckpt"] = str(judges[0])
    with pytest.raises(ValueError, match=r"image\.ckpt.*sound classifier"):
        _sound_classifier(cfg, tmp_path, dm, seed=0)


def test_s2i_grid_stable_and_recipe_variants_are_the_yaml_overlays():
    """The grid's 'stable' and 'recipe' variants train what `cmav fit` with experiments/s2i_stable.yaml
    (and s2i_recipe.yaml) trains, so the two ways of running them cannot drift apart."""
    from cmav.ablation import load_grid
    from cmav.ablation.grid import merge

    experiments = Path(__file__).parents[1] / "experiments"
    stable, recipe = (yaml.safe_load((experiments / f"{n}.yaml").read_text())["model"]["init_args"]
                      for n in ("s2i_stable", "s2i_recipe"))  # fmt: skip
    variants = {v["name"]: v for v in load_grid(experiments / "ablations" / "s2i.yaml")["variants"]}
    for name, variant, options in (("S2I-C stable", "s2i_c", stable), ("S2I-N stable", "s2i_n", stable),
                                   ("S2I-C recipe", "s2i_c", merge(stable, recipe))):  # fmt: skip
        assert variants[name] == {"name": name, "variant": variant, **options}, name


@pytest.mark.slow
def test_quick_ablation_end_to_end(data, tmp_path):
    from cmav.cli.main import main

    out = tmp_path / "ablation"
    config = Path(__file__).parents[1] / "experiments" / "ablations" / "s2i.yaml"
    assert main(["ablate", str(config), "--preset", "quick", "-o", str(out), "--root", str(data)]) == 0
    for name in ("table.md", "table.csv", "metrics.png", "samples.png", "results.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "table.csv").open()))
    variants = ["S2I-C", "S2I-N", "AE", "S2I-C no-wrong-player", "S2I-C no-wrong-class", "S2I-C stable", "S2I-N stable",
                "S2I-C recipe"]  # fmt: skip
    assert [r["variant"] for r in rows] == variants
    assert all(r["n_seeds"] == "3" for r in rows)
    assert all(0.0 <= float(r["judged_acc_holdout_mean"]) <= 1.0 for r in rows)  # the seen players' tails
    md = (out / "table.md").read_text()
    assert all(f"| {v} |" in md for v in variants) and "not Inception FID" in md and "judged acc (seen players)" in md
    assert re.search(r"sound classifier \(the frozen audio encoder\) accuracy \d\.\d{3}, \d\.\d{3}, \d\.\d{3}", md)
    sheet = Image.open(out / "samples.png")
    assert sheet.size[0] > 64 * (1 + len(variants)) and np.asarray(sheet).std() > 0


def test_a_grid_rerun_gives_the_same_s2i_and_retrains_what_its_settings_changed(data, tmp_path):
    """A rerun into the folder reuses the classifier and judges trained under the same settings, so
    S2I starts from whatever the process drew before unless it is seeded before it is built: the
    rerun must give the same generator. A judge whose settings changed is trained again, said so."""
    from cmav.cli.main import main

    out = tmp_path / "grid"
    config = Path(__file__).parents[1] / "experiments" / "ablations" / "s2i.yaml"
    args = ["ablate", str(config), "--preset", "quick", "-o", str(out), "--root", str(data), "--set", "seeds=[0]",
            "--set", "variants=[{name: S2I-C, variant: s2i_c}]"]  # fmt: skip
    assert main(args) == 0
    ckpt = out / "runs" / "S2I-C" / "seed0" / "s2i.ckpt"
    first = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    torch.rand(1000)  # the process's generator moves on, as it would after other work
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing is retrained: no "training it again"
        warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
        warnings.filterwarnings("ignore", category=UserWarning, module="torchmetrics")
        assert main(args) == 0
    again = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    with pytest.warns(UserWarning, match=r"image_judge\.ckpt: trained under other settings; training it again"):
        assert main([*args, "--set", "stages.image_judge.steps=20"]) == 0


def test_a_seed_whose_figure_is_not_a_number_is_counted_out_in_its_cell(tmp_path):
    from cmav.ablation.s2i import summarise, write_tables

    metrics = [("judged_acc", "judged acc", lambda m: m["acc"]), ("fid", "FID", lambda m: m["fid"])]
    runs = [{"variant": "v", "metrics": {"acc": a, "fid": f}} for a, f in ((0.5, 40.0), (0.1, np.float32("nan")), (0.6, 50.0))]
    rows = summarise(runs, ["v"], metrics)
    assert rows[0]["n_seeds"] == 3 and rows[0]["fid_n"] == 2 and rows[0]["fid_mean"] == pytest.approx(45.0)
    _, md = write_tables(rows, tmp_path, metrics=metrics)
    assert "| v | 3 | 0.400 ± 0.265 | 45.00 ± 7.07 (2 of 3 seeds) |" in md.read_text()
    # one seed left: no sd to show (a "± 0.00" would read as seeds that agree); none left: n/a
    one = [{"variant": "v", "metrics": {"acc": a, "fid": f}} for a, f in ((0.5, 40.0), (0.1, float("nan")))]
    nothing = [{"variant": "w", "metrics": {"acc": 0.2, "fid": float("nan")}}]
    rows = summarise(one + nothing, ["v", "w"], metrics)
    assert rows[0]["fid_sd"] is None and rows[0]["judged_acc_sd"] == pytest.approx(0.2828, abs=1e-4)
    _, md = write_tables(rows, tmp_path, metrics=metrics)
    text = md.read_text()
    assert "| v | 2 | 0.300 ± 0.283 | 40.00 (one seed) (1 of 2 seeds) |" in text
    assert "| w | 1 | 0.200 (one seed) | n/a |" in text


def test_the_robustness_table_reads_a_missing_baseline_or_a_lost_seed(tmp_path):
    from cmav.ablation.robustness import summarise, write_tables

    def run(variant: str, in_source: float, cross: float) -> dict:
        return {"variant": variant, "groups": [], "train_root": "data/default", "in_source": in_source,
                "cross_source": cross, "in_source_balanced": in_source, "cross_source_balanced": cross, "train_s": 1.0}  # fmt: skip

    rows = summarise([run("gain", 0.9, 0.8), run("gain", 0.7, float("nan"))], ["none", "gain"])  # no `none` ran
    fonts = {k: {"name": k, "path": f"/{k}.sf2", "sha256": "0" * 64} for k in ("in_source", "cross_source")}
    _, md = write_tables(rows, tmp_path, fonts)
    text = md.read_text()
    assert "| gain | - | data/default | 0.800 ± 0.141 | 0.800 (one seed) (1 of 2 seeds) | +0.000 | n/a | n/a |" in text
    assert "met by no variant" in text


def test_judges_are_refused_in_each_others_place(dm, judges, tmp_path):
    """A sound classifier, the player judge or I2S's image classifier given where the image judge goes
    (and the image judge where the player judge goes) is refused up front, naming the file."""
    from cmav.ablation import load_grid
    from cmav.ablation.s2i import _judges
    from cmav.evaluation.s2i import evaluate_s2i
    from cmav.tasks import ClassifierTask, load_image_judge

    image, player = judges
    assert load_image_judge(image).hparams.target == "label"
    assert load_image_judge(player, target="track").hparams.target == "track"
    sound = _fit(ClassifierTask(modality="audio", image_size=SIZE, class_names=list(dm.class_names),
                                input_shape=list(dm.val.tensors.audio.shape[1:])), dm, 1, tmp_path, "sound")  # fmt: skip
    encoder = _fit(ClassifierTask(modality="image", image_model="encoder", image_size=SIZE,
                                  image_encoder={"base_channels": 8, "max_channels": 32, "feature_dim": 32}),
                   dm, 1, tmp_path, "encoder")  # fmt: skip
    for wrong, kind in ((sound, "audio/label"), (player, "image/track/judge"), (encoder, "image/label/encoder")):
        with pytest.raises(ValueError, match=rf"{wrong.name}: an {kind} classifier, not the image judge"):
            load_image_judge(wrong)
    with pytest.raises(ValueError, match=rf"{image.name}: an image/label/judge classifier, not the player judge"):
        load_image_judge(image, target="track")
    cfg = load_grid(Path(__file__).parents[1] / "experiments" / "ablations" / "s2i.yaml", "quick")
    cfg["stages"]["image_judge"]["ckpt"] = str(sound)
    with pytest.raises(ValueError, match="not the image judge"):
        _judges(cfg, tmp_path, dm)
    with pytest.raises(ValueError, match="target='track'"):
        evaluate_s2i(lambda a, z: torch.zeros(a.shape[0], 3, SIZE, SIZE), dm, image, player_judge_ckpt=load_image_judge(image))


def _evaluation_copy(data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """``(a copy of data, a folder with two stand-in font files A.sf2 and B.sf2)``: the copy plays
    the evaluation source, its audio identical to the training data's."""
    import shutil

    copy = Path(shutil.copytree(data, tmp_path / "copy"))
    fonts = tmp_path / "fonts"
    fonts.mkdir()
    (fonts / "A.sf2").write_bytes(b"font a")
    (fonts / "B.sf2").write_bytes(b"font b")
    return copy, fonts


def test_cross_source_s2i_scores_are_evaluate_s2is_and_a_copy_of_the_audio_scores_the_same(data, dm, judges, s2i_ckpt, tmp_path):
    """`evaluate robustness --s2i`: in-source is the judged accuracy `evaluate_s2i` gives (same
    generator, noise and judge); an evaluation copy with the same audio scores exactly the same."""
    from cmav.evaluation.robustness import evaluate_robustness

    image, _ = judges
    copy, fonts = _evaluation_copy(data, tmp_path)
    r = evaluate_robustness(data, copy, s2i=s2i_ckpt, image_judge=image, train_soundfont=fonts / "A.sf2",
                            eval_soundfont=fonts / "B.sf2", cache_dir=str(tmp_path / "cache"), progress=False,
                            out_dir=tmp_path / "out")  # fmt: skip
    s2i = r["models"]["s2i"]
    direct = evaluate_s2i(str(s2i_ckpt), dm, image, None, n_diversity_draws=2)
    assert s2i["in_source"]["accuracy"] == pytest.approx(direct["judged"]["accuracy"])
    assert s2i["judge_on_real"]["accuracy"] == pytest.approx(direct["judge_on_real"]["accuracy"])
    assert s2i["cross_source"] == s2i["in_source"] and s2i["in_source"]["n"] == len(dm.val.tensors)
    # trained on --root itself: its font is the one given for --root
    assert r["trained_on"]["s2i"]["root"] == str(data) and r["trained_on"]["s2i"]["font"]["name"] == "A.sf2"
    assert "| S2I-C (judged) | accuracy |" in (tmp_path / "out" / "report.md").read_text()


def test_cross_source_s2i_takes_the_inference_condition_and_a_bankless_checkpoint_gets_its_training_data(
        data, dm, judges, s2i_ckpt, tmp_path):  # fmt: skip
    """`evaluate robustness --inference-condition class_mean`: the judged accuracy is `evaluate_s2i`'s
    under that mode, the report says which condition G had, and a checkpoint saved without its
    training conditions gets them from the data it was trained on (the same bank, the same score)."""
    from cmav.evaluation.robustness import evaluate_robustness
    from cmav.tasks.s2i import load_s2i

    image, _ = judges
    copy, fonts = _evaluation_copy(data, tmp_path)
    kw = dict(image_judge=image, train_soundfont=fonts / "A.sf2", eval_soundfont=fonts / "B.sf2",
              cache_dir=str(tmp_path / "cache"), progress=False)  # fmt: skip
    r = evaluate_robustness(data, copy, s2i=s2i_ckpt, inference_condition="class_mean", out_dir=tmp_path / "out", **kw)
    s2i = r["models"]["s2i"]
    task = load_s2i(s2i_ckpt)
    assert task.inference_condition == "own" and len(task.condition_bank) > 0
    task.set_inference_condition("class_mean")
    direct = evaluate_s2i(task, dm, image, None, n_diversity_draws=2)
    assert s2i["inference_condition"] == "class_mean"
    assert s2i["in_source"]["accuracy"] == pytest.approx(direct["judged"]["accuracy"])
    assert "(inference condition `class_mean`)" in (tmp_path / "out" / "report.md").read_text()
    own = evaluate_robustness(data, copy, s2i=s2i_ckpt, **kw)["models"]["s2i"]
    assert own["inference_condition"] == "own"
    # without the bank in the checkpoint: refilled from its training data, the same figures
    old = torch.load(s2i_ckpt, map_location="cpu", weights_only=False)
    old["state_dict"] = {k: v for k, v in old["state_dict"].items() if not k.startswith("condition_bank.")}
    bankless = tmp_path / "bankless.ckpt"
    torch.save(old, bankless)
    assert len(load_s2i(bankless).condition_bank) == 0
    again = evaluate_robustness(data, copy, s2i=bankless, inference_condition="class_mean", **kw)["models"]["s2i"]
    assert again["in_source"] == s2i["in_source"] and again["cross_source"] == s2i["cross_source"]
    from cmav.cli.main import main

    assert main(["evaluate", "robustness", "--root", str(data), "--eval-root", str(copy), "--s2i", str(bankless),
                 "--image-judge", str(image), "--train-soundfont", str(fonts / "A.sf2"), "--eval-soundfont",
                 str(fonts / "B.sf2"), "--cache-dir", str(tmp_path / "cache"), "--inference-condition", "nearest",
                 "--inference-neighbours", "2", "-o", str(tmp_path / "cli")]) == 0  # fmt: skip
    nearest = json.loads((tmp_path / "cli" / "metrics.json").read_text())["models"]["s2i"]
    assert nearest["inference_condition"] == "nearest" and nearest["inference_neighbours"] == 2
    assert "(inference condition `nearest`, 2 nearest)" in (tmp_path / "cli" / "report.md").read_text()
    with pytest.raises(ValueError, match="give --s2i too"):
        evaluate_robustness(data, copy, classifier=tmp_path / "unread.ckpt", inference_condition="class_mean", **kw)


def test_an_adapted_s2i_generator_follows_the_inference_condition(s2i_ckpt, dm):
    """With `class_mean`, the AdaBN generator conditions G on the bank's mean of the class that the
    ADAPTED encoder predicts: the same noise gives one frame per predicted class."""
    from cmav.evaluation.robustness import adapted_s2i_generator
    from cmav.tasks.s2i import load_s2i

    task = load_s2i(s2i_ckpt)
    task.set_inference_condition("class_mean")
    audio = dm.val.tensors.audio.float() * 1.5 + 4.0
    fn = adapted_s2i_generator(task, audio)
    z = torch.randn(1, task.z_dim).expand(len(audio), -1)
    frames = fn(audio, z)
    with torch.no_grad():
        predicted = fn.net.encoder.forward_features(audio).logits.argmax(1)
    for c in predicted.unique():
        same = frames[predicted == c]
        assert torch.allclose(same, same[:1].expand_as(same), atol=1e-5)
    if len(predicted.unique()) > 1:
        assert not torch.allclose(frames[predicted == predicted[0]][0], frames[predicted != predicted[0]][0])


def test_s2i_generator_with_an_adapted_encoder_leaves_the_task_alone(s2i_ckpt, dm):
    """AdaBN for S2I-C: a copy of the EMA encoder takes the new audio's batch-norm statistics; the
    task's own encoder and generator are untouched, and the frames follow the adapted features."""
    from cmav.evaluation.adaptation import batch_norm_layers
    from cmav.evaluation.robustness import adapted_s2i_generator
    from cmav.evaluation.s2i import generate_images
    from cmav.tasks.s2i import load_s2i

    task = load_s2i(s2i_ckpt)
    before = {k: v.clone() for k, v in task.state_dict().items()}
    audio = dm.val.tensors.audio.float()
    shifted = audio * 1.5 + 4.0  # another source: every LMS bin at another offset and scale
    fn = adapted_s2i_generator(task, shifted)
    assert fn.z_dim == task.z_dim
    assert all(torch.equal(before[k], v) for k, v in task.state_dict().items())
    first = batch_norm_layers(task.ema.module.encoder)[0]
    adapted_first = batch_norm_layers(fn.net.encoder)[0]
    # the first batch norm sees the shifted audio's conv features: its running mean moves off the trained one
    assert not torch.allclose(adapted_first.running_mean, first.running_mean)
    plain = generate_images(lambda a, z: task.generate(a, z, use_ema=True).cpu(), shifted, task.z_dim)
    adapted = generate_images(fn, shifted, task.z_dim)
    assert adapted.shape == plain.shape and adapted.abs().max() <= 1.0
    assert not torch.allclose(adapted, plain)


def test_cmav_evaluate_reads_the_data_as_the_checkpoint_was_trained_on_unless_told(tmp_path):
    # a model trained on the paired layout with no held-out tail: evaluate used Sub-URMP and a 0.1 tail
    from cmav.evaluation.generate import datamodule_for

    ckpt = {"hyper_parameters": {"image_size": 32},
            "datamodule_hyper_parameters": {"root": str(tmp_path / "pairs"), "layout": "paired", "holdout_tail": 0.0,
                                            "holdout_gap_ms": 0, "features": {"kind": "lms", "n_mels": 64}}}  # fmt: skip
    (tmp_path / "pairs").mkdir()  # a recorded root that is not there is refused (test_real_layout.py)
    dm = datamodule_for(ckpt)
    h = dm.hparams
    assert (h.root, h.layout, h.image_size, h.holdout_tail, h.holdout_gap_ms) == (str(tmp_path / "pairs"), "paired", 32, 0.0, 0)
    assert dm.features.n_mels == 64
    told = datamodule_for(ckpt, root="elsewhere", holdout_tail=0.2, image_size=64, layout=None).hparams
    assert (told.root, told.layout, told.holdout_tail, told.image_size) == ("elsewhere", "paired", 0.2, 64)


# ---------------------------------------------------------------------------------------------
# review fixes: what the judges trained on, `cmav evaluate judge`'s data, small-sample FID/KID,
# S2I's front end, the player judge's classes and an in-memory image judge


def _tail0_judges(data: Path, out: Path) -> tuple[Path, Path]:
    """An image judge and a player judge trained (1 step: only their data matter) with no held-out
    tail: on every train chunk, the held-out tails that judged_holdout and player consistency score included."""
    from cmav.tasks import ClassifierTask

    whole = AudioVisualDataModule(root=str(data), image_size=SIZE, batch_size=16, holdout_tail=0.0, progress=False)
    image = _fit(ClassifierTask(modality="image", image_size=SIZE, image_judge=SMALL_JUDGE), whole, 1, out, "image_t0")
    player = _fit(ClassifierTask(modality="image", target="track", image_size=SIZE, image_judge=SMALL_JUDGE),
                  whole, 1, out, "player_t0")  # fmt: skip
    return image, player


def test_a_judge_that_trained_on_the_scored_held_out_tails_is_refused_by_name(data, dm, judges, tmp_path):
    """A judge trained with holdout_tail 0 trained on the very held-out chunks that judged_holdout,
    player consistency and JudgedAccuracyMonitor(split='holdout') score as 'frames nobody trained
    on': refused, naming the checkpoint and both settings. A judge holding out as much or more passes."""
    import lightning as L

    from cmav.evaluation import JudgedAccuracyMonitor
    from cmav.tasks import ClassifierTask

    image, player = judges  # holdout_tail 0.25 on this root, as the data: accepted
    image0, player0 = _tail0_judges(data, tmp_path)
    held = r"data\.holdout_tail 0 \(holdout_gap_ms None\), so 26 of the 26 held-out chunks scored here \(data\.holdout_tail 0\.25"
    with pytest.raises(ValueError, match=rf"image_t0\.ckpt: the image judge was trained on .* with {held}"):
        evaluate_s2i(constant_generator, dm, image0, None, n_diversity_draws=2)
    with pytest.raises(ValueError, match=rf"player_t0\.ckpt: the player judge was trained on .* with {held}"):
        evaluate_s2i(constant_generator, dm, image, player0, n_diversity_draws=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, logger=False,
                        callbacks=[JudgedAccuracyMonitor(str(image0), split="holdout")], enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path))  # fmt: skip
    with pytest.raises(ValueError, match=rf"image_t0\.ckpt: the image judge was trained on .* with {held}"):
        trainer.fit(tiny_s2i("s2i_c"), datamodule=dm)
    # a judge that holds out more than the data does never saw the data's (shorter) tails
    more = AudioVisualDataModule(root=str(data), image_size=SIZE, batch_size=16, holdout_tail=0.5, holdout_gap_ms=0,
                                 progress=False)  # fmt: skip
    half = _fit(ClassifierTask(modality="image", image_size=SIZE, image_judge=SMALL_JUDGE), more, 1, tmp_path, "image_t05")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing to note either: same root, settings known
        warnings.filterwarnings("ignore", message=".*rank-deficient.*")
        warnings.filterwarnings("ignore", message=COLLAPSED)  # a 1-step judge is at chance, and says so
        m = evaluate_s2i(constant_generator, dm, half, player, n_diversity_draws=2)
    assert m["judged_holdout"]["n"] == 26 and not _data_notes(m)
    # ... and the other way round, the data's longer tails reach into what that judge trained on
    with pytest.raises(ValueError, match=r"image_t0\.ckpt: .*holdout_tail 0 .*so 52 of the 52 held-out chunks"):
        evaluate_s2i(constant_generator, more, image0, None, n_diversity_draws=2)


def test_the_shipped_judge_and_generator_configs_hold_out_the_same_tails(data):
    """experiments/image_judge.yaml, player_judge.yaml and audio_classifier.yaml train on what the
    S2I and I2S YAMLs' data hold out of training: nothing of the scored tails (here on the test data)."""
    from cmav.evaluation.paired import check_judge_unseen

    experiments = Path(__file__).parents[1] / "experiments"

    def settings(name: str) -> dict:
        d = yaml.safe_load((experiments / f"{name}.yaml").read_text())["data"]
        return {k: d[k] for k in ("root", "holdout_tail", "holdout_gap_ms") if k in d}

    for generator in ("s2i_c", "s2i_n", "i2s_c"):
        g = settings(generator)
        assert g.pop("root") == "data/default"
        scored = AudioVisualDataModule(root=str(data), image_size=SIZE, progress=False, **g)
        scored.setup("fit")
        assert len(scored.train_holdout) > 0 or g.get("holdout_gap_ms") is None
        for judge in ("image_judge", "player_judge", "audio_classifier"):
            j = settings(judge)
            assert j["root"] == "data/default"
            ckpt = {"datamodule_hyper_parameters": {**j, "root": str(data)}}
            assert check_judge_unseen(ckpt, scored, judge.replace("_", " "), split="holdout") is None, (generator, judge)


def test_a_judge_trained_on_another_root_is_warned_of_and_noted(data, dm, judges, tmp_path):
    """Whether a judge trained on another root saw the scored frames cannot be checked: S2I and
    I2S evaluation warn, naming both roots, and the result's notes say so."""
    import shutil

    from cmav.data.errors import DataWarning
    from cmav.evaluation import evaluate_i2s
    from cmav.tasks import ClassifierTask

    image, player = judges
    copy = Path(shutil.copytree(data, tmp_path / "copy"))
    other = AudioVisualDataModule(root=str(copy), image_size=SIZE, batch_size=16, holdout_tail=0.25, holdout_gap_ms=0,
                                  progress=False)  # fmt: skip
    other.setup("fit")
    with pytest.warns(DataWarning, match=rf"image\.ckpt: the image judge was trained on {re.escape(str(data))}, the data "
                                         rf"scored are {re.escape(str(copy))}"):  # fmt: skip
        m = evaluate_s2i(constant_generator, other, image, player, n_diversity_draws=2)
    assert any("image.ckpt" in n for n in m["notes"]) and any("player.ckpt" in n for n in m["notes"])
    assert "cannot be checked" in m["judge_on_real"]["note"] and "cannot be checked" in m["judged_holdout"]["note"]
    assert "player.ckpt" in m["player"]["note"]

    audio = _fit(ClassifierTask(modality="audio", image_size=SIZE, audio_encoder={"n_blocks": 4, "base_channels": 8}),
                 dm, 1, tmp_path, "audio_judge")  # fmt: skip
    shape = tuple(dm.val.tensors.audio.shape[1:])

    def silence(frames, z):
        return torch.full((frames.shape[0], *shape), -40.0)

    kw = dict(n_diversity_draws=2, diversity_per_class=1, griffin_lim_iters=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # the same root: nothing to say
        warnings.filterwarnings("ignore", message=COLLAPSED)  # but that a 1-step judge is at chance
        assert not _data_notes(evaluate_i2s(silence, dm, audio, **kw))
    with pytest.warns(DataWarning, match=r"audio_judge\.ckpt: the audio judge was trained on .*, the data scored are"):
        m = evaluate_i2s(silence, other, audio, **kw)
    assert len(_data_notes(m)) == 1 and "cannot be checked" in m["judge_on_real"]["note"]


def _with_masks(root: Path) -> Path:
    for p in (root / "img").rglob("*.jpg"):
        out = root / "mask" / p.relative_to(root / "img").with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        m = np.zeros((96, 96), bool)
        m[30:60, 30:60] = True
        Image.fromarray(m).save(out)
    return root


def test_cmav_evaluate_judge_splits_the_data_as_the_judge_was_trained(tmp_path):
    """`cmav evaluate judge` read data/default with a 0.1 tail and the default gap whatever the judge
    trained on, so its 'train' and 'holdout' rows were other frames than the judge's."""
    from cmav.cli.main import main
    from cmav.tasks import ClassifierTask

    root = _with_masks(make_suburmp_tracks(tmp_path / "masked", tracks=(0, 1), chunks=4))
    trained = AudioVisualDataModule(root=str(root), image_size=SIZE, batch_size=16, holdout_tail=0.5, holdout_gap_ms=0,
                                    progress=False)  # fmt: skip
    ckpt = _fit(ClassifierTask(modality="image", image_size=SIZE, image_judge=SMALL_JUDGE), trained, 1, tmp_path, "judge")
    out = tmp_path / "probe"
    assert main(["evaluate", "judge", "--ckpt", str(ckpt), "--splits", "train", "holdout", "-o", str(out)]) == 0
    probe = json.loads((out / "judge_probe.json").read_text())
    # 26 tracks of 4 chunks: the judge trained on the first 2 of each and held out the last 2
    assert {s: v["n"] for s, v in probe["splits"].items()} == {"train": 52, "holdout": 52}
    assert main(["evaluate", "judge", "--ckpt", str(ckpt), "--root", str(root), "--holdout-tail", "0.25",
                 "--splits", "holdout", "-o", str(out)]) == 0  # fmt: skip  (told: as told)
    assert json.loads((out / "judge_probe.json").read_text())["splits"]["holdout"]["n"] == 26


def test_an_fid_from_fewer_items_than_feature_dims_is_flagged(dm, judges, tmp_path):
    """An FID from n <= d items is mostly bias (two samples of one distribution: FID ~25 at n=26,
    d=32): the result says the feature size and whether FID is reliable, and the warning is not silenced."""
    from cmav.metrics import fid_kid_from_features
    from cmav.tasks import ClassifierTask

    g = torch.Generator().manual_seed(0)
    with pytest.warns(UserWarning, match="rank-deficient"):
        r = fid_kid_from_features(torch.randn(26, 32, generator=g), torch.randn(26, 32, generator=g))
    assert r["feature_dim"] == 32 and r["fid_reliable"] is False and "not reliable" in r["note"]
    r = fid_kid_from_features(torch.randn(40, 32, generator=g), torch.randn(33, 32, generator=g))
    assert r["feature_dim"] == 32 and r["fid_reliable"] is True and "not reliable" not in r["note"]

    image, _ = judges  # 32-d features, 52 validation items
    m = evaluate_s2i(constant_generator, dm, image, None, n_diversity_draws=2)
    assert m["fid_kid"]["feature_dim"] == 32 and m["fid_kid"]["fid_reliable"] is True
    wide = _fit(ClassifierTask(modality="image", image_size=SIZE, image_judge={**SMALL_JUDGE, "feature_dim": 64}),
                dm, 1, tmp_path, "wide")  # fmt: skip
    with pytest.warns(UserWarning, match="FID with 52 samples for 64-d features: covariances are rank-deficient"):
        m = evaluate_s2i(constant_generator, dm, wide, None, n_diversity_draws=2, out_dir=tmp_path / "wide_eval")
    fk = json.loads((tmp_path / "wide_eval" / "metrics.json").read_text())["fid_kid"]
    assert fk["feature_dim"] == 64 and fk["fid_reliable"] is False and "not reliable" in fk["note"]
    assert fk["n_real"] == fk["n_fake"] == 52


def test_kid_std_over_subsets_that_cannot_differ_is_not_reported_as_zero():
    """With fewer than 4 items per set the subsets cannot be at most half the smaller set: every
    subset is (nearly) the whole set, and their spread read 0. kid_mean stays, kid_std is None."""
    from cmav.metrics import fid_kid_from_features

    g = torch.Generator().manual_seed(0)
    for n in (2, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = fid_kid_from_features(torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g) + 3, kid_subsets=10)
        assert r["kid_std"] is None and np.isfinite(r["kid_mean"]) and r["kid_mean"] > 0
        assert "kid_std" in r["note"] and "fewer than 4" in r["note"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fid_kid_from_features(torch.randn(4, 2, generator=g), torch.randn(4, 2, generator=g) + 3, kid_subsets=10)
    assert r["kid_subset_size"] == 2 and isinstance(r["kid_std"], float) and r["kid_std"] > 0


def test_s2i_evaluation_refuses_data_of_another_front_end_than_the_model_read(data, judges, s2i_ckpt):
    """The S2I model's encoder reads LMS on the scale of its own front end: data of the same shape
    from another setting is refused (as I2S's), naming the model and both settings."""
    from cmav.tasks.s2i import load_s2i

    image, _ = judges
    f_min = AudioVisualDataModule(root=str(data), image_size=SIZE, batch_size=16, holdout_tail=0.25, holdout_gap_ms=0,
                                  progress=False, features={"f_min": 30.0})  # fmt: skip
    f_min.setup("fit")
    differ = r"the S2I model was trained on another front end than the data's \(front end: f_min: 0\.0 -> 30\.0, model -> data\)"
    with pytest.raises(ValueError, match=rf"s2i\.ckpt: {differ}"):
        evaluate_s2i(str(s2i_ckpt), f_min, image, None, n_diversity_draws=2)
    with pytest.raises(ValueError, match=rf"the S2I model given: {differ}"):
        evaluate_s2i(load_s2i(s2i_ckpt), f_min, image, None, n_diversity_draws=2)


def test_a_player_judge_of_other_class_names_and_an_in_memory_non_judge_are_refused(dm, judges, tmp_path):
    """The player judge's players are (class, track) numbers: a judge of another class order would
    score player 'violin 0' as 'viola 0'. And an in-memory image classifier of I2S's encoder kind is
    no more a judge than its checkpoint is."""
    from cmav.tasks import ClassifierTask

    image, player = judges
    blob = torch.load(player, map_location="cpu", weights_only=False)
    blob["hyper_parameters"]["class_names"] = list(reversed(blob["hyper_parameters"]["class_names"]))
    renamed = tmp_path / "renamed_player.ckpt"
    torch.save(blob, renamed)
    with pytest.raises(ValueError, match=r"the player judge's classes \['violin', .*\] differ from the data's \['bassoon', "):
        evaluate_s2i(constant_generator, dm, image, renamed, n_diversity_draws=2)
    encoder = ClassifierTask(modality="image", image_model="encoder", image_size=SIZE, class_names=list(dm.class_names),
                             image_encoder={"base_channels": 8, "max_channels": 32, "feature_dim": 32})  # fmt: skip
    with pytest.raises(ValueError, match=r"the image judge given: an image/label/encoder classifier, not the image judge"):
        evaluate_s2i(constant_generator, dm, encoder, None, n_diversity_draws=2)


# ---------------------------------------------------------------------------------------------
# review fixes: the generator's own training frames, mid-epoch monitor readings, the robustness footer


def test_an_s2i_generator_that_trained_on_the_scored_held_out_tails_is_refused_by_name(data, dm, judges, tmp_path, capsys):
    """judged_holdout and player consistency score the held-out tails as frames the generator never
    saw: a generator trained with holdout_tail 0 (or scored with a larger --holdout-tail than its
    own) trained on them, and is refused naming its checkpoint and the tail it trained with."""
    from cmav.cli.main import main

    image, _ = judges
    whole = AudioVisualDataModule(root=str(data), image_size=SIZE, batch_size=16, holdout_tail=0.0, progress=False)
    task = tiny_s2i("s2i_c")
    ckpt = _fit(task, whole, 1, tmp_path, "s2i_t0")
    held = r"data\.holdout_tail 0 \(holdout_gap_ms None\), so 26 of the 26 held-out chunks scored here \(data\.holdout_tail 0\.25"
    with pytest.raises(ValueError, match=rf"s2i_t0\.ckpt: the S2I generator was trained on .* with {held}.*Score it on "
                                         r"the tails it held out \(data\.holdout_tail 0, holdout_gap_ms None"):  # fmt: skip
        evaluate_s2i(str(ckpt), dm, image, None, n_diversity_draws=2)
    with pytest.raises(ValueError, match=rf"the S2I generator given: the S2I generator was trained on .* with {held}"):
        evaluate_s2i(task, dm, image, None, n_diversity_draws=2)  # fitted in memory: its trainer's data tell
    capsys.readouterr()
    assert main(["evaluate", "--ckpt", str(ckpt), "--image-judge", str(image), "--holdout-tail", "0.25",
                 "--holdout-gap-ms", "0", "-o", str(tmp_path / "told")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"{ckpt}: the S2I generator was trained on {data} with data.holdout_tail 0 " in err
    assert not (tmp_path / "told").exists()  # refused before anything was scored or written
    # its own setting (nothing held out): no tails scored, nothing to refuse
    assert main(["evaluate", "--ckpt", str(ckpt), "--image-judge", str(image), "-o", str(tmp_path / "own")]) == 0
    assert json.loads((tmp_path / "own" / "metrics.json").read_text())["judged_holdout"] is None


def test_judged_accuracy_monitor_scores_only_the_validation_that_ends_the_epoch(dm, judges, tmp_path):
    """With val_check_interval < 1 Lightning validates several times an epoch: the reading (and a
    ModelCheckpoint monitoring it) is taken at the epoch's last validation only."""
    import lightning as L

    from cmav.evaluation import JudgedAccuracyMonitor

    image, _ = judges
    monitor = JudgedAccuracyMonitor(str(image), every_n_epochs=1)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=4, val_check_interval=0.5,
                        limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        callbacks=[monitor], enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(tiny_s2i("s2i_c"), datamodule=dm)
    assert [h["epoch"] for h in monitor.history] == [0, 1]
    with (tmp_path / "val_judged_acc.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["iteration"]), int(r["epoch"])) for r in rows] == [(4, 0), (8, 1)]  # 4 GAN batches an epoch


def test_the_robustness_footer_names_the_split_scored():
    from cmav.evaluation.robustness import format_report

    font = {"name": "FontA.sf2", "path": "/f/FontA.sf2", "sha256": "0" * 64}
    base = {"fonts": {"in_source": font, "cross_source": {**font, "name": "FontB.sf2"}}, "models": {}}
    val = format_report({**base, "split": "validation"})
    assert "In-source: the training data's validation split (players unseen in training, training font)" in val
    train = format_report({**base, "split": "train"})
    assert "players unseen" not in train
    assert "In-source: the training data's train split (the players the models trained on" in train
    assert "Cross-source: the same split rendered from the evaluation font" in train


def test_the_judge_probe_gives_no_accuracy_where_the_judge_gives_no_prediction(tmp_path):
    """A judge whose logits are not finite counted as wrong on those frames (an accuracy of 0, a
    plausible-looking number), and the table named its players '(→ None)'."""
    from cmav.data.instruments import INSTRUMENTS
    from cmav.evaluation.judge_probe import format_judge_probe, probe_image_judge
    from cmav.tasks import ClassifierTask

    from fixtures import make_unique_pairs

    root = make_unique_pairs(tmp_path / "pairs")
    dm = AudioVisualDataModule(root=str(root), image_size=SIZE, batch_size=16, progress=False,
                               cache_dir=str(tmp_path / "cache"))  # fmt: skip
    torch.manual_seed(0)
    judge = ClassifierTask(modality="image", image_size=SIZE, class_names=list(INSTRUMENTS), image_judge=SMALL_JUDGE)
    finite = probe_image_judge(judge, dm, splits=("validation",))["splits"]["validation"]["views"]
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in finite.values())
    with torch.no_grad():
        for p in judge.model.parameters():
            p.fill_(float("nan"))
    probe = probe_image_judge(judge, dm, splits=("validation",))
    views = probe["splits"]["validation"]["views"]
    assert all(np.isnan(v["accuracy"]) for v in views.values())
    text = format_judge_probe(probe)
    assert "None" not in text and "nan" not in text
    assert "| frame | n/a (13 of 13 frames without a prediction) | 0 of 13 |" in text
    assert "| violin #1 | n/a (no prediction) | n/a (no prediction) | n/a (no prediction) |" in text


COLLAPSED = ".*judges nothing here.*"


def _data_notes(m: dict) -> list[str]:
    """The result's notes on the data, without that its judge judges nothing (a judge trained 1 step)."""
    return [n for n in m["notes"] if "judges nothing here" not in n]


def _collapsed(ckpt: Path, layer: str):
    """The judge of ``ckpt`` with the ``layer`` Linear's weights and bias zeroed: a real model whose
    features (``head_features`` / ``fc_feature``) are constant, or whose logits are (``classifier``)."""
    from cmav.tasks import load_classifier

    judge = load_classifier(ckpt)
    with torch.no_grad():
        for m in getattr(judge.model, layer).modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.zero_()
                m.bias.zero_()
    return judge


def test_fid_kid_and_diversity_under_a_collapsed_judge_are_flagged_as_meaningless(dm, judges, tmp_path):
    """A judge whose features do not vary gave FID 0, KID 0 and diversity 0 with no word; one at
    chance on the real frames judges nothing. Both are warned of and noted; a trained judge is not."""
    from cmav.data.errors import DataWarning

    image, _ = judges
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # the trained judge, of the same root: nothing to say
        m = evaluate_s2i(constant_generator, dm, image, None, n_diversity_draws=2)
    assert not any("meaningless" in n for n in m["notes"])
    flat = _collapsed(image, "head_features")
    with pytest.warns(DataWarning, match=r"image judge .*features barely vary over the 52 real validation items "
                                         r"\(largest std 0,.*FID, KID and diversity .* are meaningless"):  # fmt: skip
        m = evaluate_s2i(constant_generator, dm, flat, None, n_diversity_draws=2, out_dir=tmp_path / "flat")
    assert m["fid_kid"]["fid"] == pytest.approx(0.0, abs=1e-9)  # what it measured, and why it means nothing
    saved = json.loads((tmp_path / "flat" / "metrics.json").read_text())
    assert any("meaningless" in n for n in saved["notes"]) and "meaningless" in saved["fid_kid"]["note"]
    assert "meaningless" in saved["diversity"]["note"]
    guess = _collapsed(image, "classifier")  # features as trained, one class for every frame
    with pytest.warns(DataWarning, match=r"image judge's accuracy on the 52 real validation items is 0\.077, not "
                                         r"above chance \(0\.077, 13 classes\) by the 5% binomial margin \(0\.15\)"):  # fmt: skip
        m = evaluate_s2i(constant_generator, dm, guess, None, n_diversity_draws=2)
    assert any("meaningless" in n for n in m["notes"])


def test_i2s_scores_under_a_collapsed_audio_judge_are_flagged_as_meaningless(dm, tmp_path):
    from cmav.data.errors import DataWarning
    from cmav.evaluation import evaluate_i2s
    from cmav.tasks import ClassifierTask

    fast = {"lr": 1e-2, "betas": (0.9, 0.999)}  # one pitch per class: learnt in 60 steps
    audio = _fit(ClassifierTask(modality="audio", image_size=SIZE, optimizer=fast,
                                audio_encoder={"n_blocks": 4, "base_channels": 8, "dropout": 0.0}),
                 dm, 60, tmp_path, "audio_judge")  # fmt: skip
    shape = tuple(dm.val.tensors.audio.shape[1:])

    def noise(frames, z):
        return torch.randn(frames.shape[0], *shape) * 10 - 40

    kw = dict(n_diversity_draws=2, diversity_per_class=1, griffin_lim_iters=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        m = evaluate_i2s(noise, dm, audio, **kw)
    assert m["judge_on_real"]["accuracy"] > 0.3 and not m["notes"]
    with pytest.warns(DataWarning, match=r"audio judge.*features barely vary.*are meaningless"):
        m = evaluate_i2s(noise, dm, _collapsed(audio, "fc_feature"), **kw)
    assert sum("meaningless" in n for n in m["notes"]) == 1 and "meaningless" in m["fid_kid"]["note"]
