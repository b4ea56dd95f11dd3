"""Image-to-sound: shapes follow the front end, variants train, inversion, evaluation, CLI (tiny, CPU)."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import lightning as L
import pytest
import soundfile as sf
import torch

from cmav.cli.main import main as cmav_main
from cmav.data import AudioVisualDataModule
from cmav.features.inversion import lms_to_audio
from cmav.features.logmel import LogMelConfig, LogMelSpectrogram
from cmav.features.scaling import RangeScaler
from cmav.metrics import judged_accuracy, round_trip_accuracy
from cmav.tasks import ClassifierTask, I2STask, load_i2s, load_image_classifier

from fixtures import make_suburmp_tracks, write_jpg

TINY_ENC = {"n_blocks": 4, "base_channels": 8, "dropout": 0.0}
TINY_G = {"base_channels": 8, "cond_proj_dim": 16}
TINY_D = {"base_channels": 8, "cond_proj_dim": 16}
SIZE = 32

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore::cmav.tasks.pairs.NegativeSamplingWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def trainer(**kw) -> L.Trainer:
    d = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0)  # fmt: skip
    d.update(kw)
    return L.Trainer(**d)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("i2s")
    # a noise floor as in recordings (a pure tone's -100 dB floor is the one thing Griffin-Lim cannot keep)
    root = make_suburmp_tracks(base / "suburmp", tracks=(0, 1), chunks=2, noise=0.01)
    cache = base / "cache"
    return {"root": str(root), "cache": str(cache), "base": base}


def dm_of(data: dict, **kw) -> AudioVisualDataModule:
    kw.setdefault("batch_size", 8)
    return AudioVisualDataModule(data["root"], image_size=SIZE, cache_dir=data["cache"], progress=False, **kw)


def fit_classifier(data: dict, name: str, steps: int, features=None, tails: bool = False, **kw) -> str:
    """``tails``: trained with the end of each train track held out (holdout_tail 0.1, gap 0)."""
    L.seed_everything(0, verbose=False)
    task = ClassifierTask(image_size=SIZE, optimizer={"lr": 3e-3, "betas": (0.9, 0.999)}, **kw)
    tr = trainer(max_steps=steps)
    held = {"holdout_tail": 0.1, "holdout_gap_ms": 0} if tails else {}
    tr.fit(task, dm_of(data, **held) if features is None else dm_of(data, features=features, **held))
    path = str(data["base"] / f"{name}.ckpt")
    tr.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def image_classifier(data) -> str:
    """The image classifier (image_model='encoder'): I2S's pretrained condition encoder."""
    return fit_classifier(data, "image_classifier", 40, modality="image", image_model="encoder", image_encoder=TINY_ENC)


@pytest.fixture(scope="module")
def audio_judge(data) -> str:
    return fit_classifier(data, "audio_judge", 80, modality="audio", audio_encoder=TINY_ENC)


def i2s(variant: str, mode: str = "scratch", ckpt: str | None = None, **kw) -> I2STask:
    kw.setdefault("sample_every_n_steps", 0)
    return I2STask(variant=variant, encoder_mode=mode, image_encoder_ckpt=ckpt, image_size=SIZE, generator=TINY_G,
                   discriminator=TINY_D, encoder=TINY_ENC, **kw)  # fmt: skip


def test_generator_and_discriminator_shapes_follow_the_front_end(data):
    """A 64-band LMS with a 512 hop gives (1, 64, 22) spectrograms: the model follows, nothing is fixed."""
    features = LogMelConfig(n_mels=64, hop_length=512)
    dm = dm_of(data, features=features)
    model = i2s("i2s_c")
    assert model.net is None  # built from the data at setup
    trainer(max_steps=2, max_epochs=-1, limit_val_batches=0).fit(model, dm)
    expected = features.output_shape(0.5)
    assert expected == (1, 64, 22) and model.target_shape() == expected
    assert model.hparams.lms_shape == list(expected)
    lms = model.generate(torch.rand(3, 3, SIZE, SIZE) * 2 - 1)
    assert lms.shape == (3, *expected)
    low, high = model.hparams.lms_range
    train_lms = dm.train_full.tensors.audio.float()
    assert low == pytest.approx(float(train_lms.min())) and high == pytest.approx(float(train_lms.max()))
    assert lms.min() >= low - 1e-4 and lms.max() <= high + 1e-4  # dB on the data's scale
    feat = model.net.encoder.embed(torch.zeros(2, 3, SIZE, SIZE))
    assert model.discriminator(model.to_target_space(lms[:2]), feat).shape == (2,)


@pytest.mark.parametrize("variant,mode", [("i2s_c", "frozen"), ("i2s_n", "finetune"), ("ae", "scratch")])
def test_variant_trains_a_few_steps_with_finite_losses(data, image_classifier, tmp_path, variant, mode):
    from lightning.pytorch.loggers import TensorBoardLogger

    L.seed_everything(0, verbose=False)
    tb = variant == "i2s_c"
    model = i2s(variant, mode, image_classifier if mode != "scratch" else None, sample_every_n_steps=1 if tb else 0)
    assert model.wrong_class_term == model.wrong_player_term == (variant == "i2s_c")
    logger = TensorBoardLogger(str(tmp_path), name="tb") if tb else False
    tr = trainer(max_epochs=1, limit_train_batches=3, logger=logger)
    enc_before = None
    if mode != "scratch":  # the pretrained encoder's weights (the model is built from the data at setup)
        enc_before = load_image_classifier(image_classifier).model.state_dict()
    tr.fit(model, dm_of(data))
    assert model.iteration == 3 and tr.global_step == 3 * (1 if variant == "ae" else 2)  # 2 optimisers per GAN batch
    keys = ["train/pixel_loss"] if variant == "ae" else ["train/d_loss", "train/g_loss", "train/d_real", "train/d_fake"]
    if variant == "i2s_c":
        keys += ["train/d_wrong_class", "train/d_wrong_player"]
    for k in keys + ["val/l1"]:
        assert math.isfinite(float(tr.callback_metrics[k])), k
    if enc_before is not None:
        after = model.net.encoder.state_dict()
        same = all(torch.equal(enc_before[k], v) for k, v in after.items())
        assert same == (mode == "frozen")
        # a fine-tuned encoder trained in train mode: its batch-norm statistics moved with the data
        moved = any(not torch.equal(enc_before[k], v) for k, v in after.items() if k.endswith("running_mean"))
        assert moved == (mode == "finetune")
    if tb:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        ea = EventAccumulator(str(Path(logger.log_dir)), size_guidance={"images": 0, "audio": 0})
        ea.Reload()
        assert [e.step for e in ea.Images("samples/ema")] == [0, 1, 2]
        audio_tags = ea.Tags()["audio"]
        assert "samples/audio/violin" in audio_tags and "inputs/audio/violin" in audio_tags


def test_wrong_player_partners_are_same_class_other_track_spectrograms(data):
    """The I2S wrong-player negative is the LMS of another player of the same instrument."""
    model = i2s("i2s_c")
    dm = dm_of(data)
    trainer(max_steps=2, max_epochs=-1, limit_val_batches=0).fit(model, dm)
    t = dm.train_full.tensors
    labels, tracks = t.labels[:16], t.tracks[:16]
    neg = model.sampler.sample(labels, tracks, torch.Generator().manual_seed(0))
    ok = neg.wrong_player_valid
    assert ok.all()
    assert torch.equal(t.labels[neg.wrong_player[ok]], labels[ok])
    assert (t.tracks[neg.wrong_player[ok]] != tracks[ok]).all()
    assert (t.labels[neg.wrong_class[neg.wrong_class_valid]] != labels[neg.wrong_class_valid]).all()
    got = model._gather_target(neg.wrong_player[ok][:3])
    assert torch.allclose(got, model.to_target_space(t.audio[neg.wrong_player[ok][:3]].float()))


def test_frozen_encoder_must_be_the_image_classifier_not_the_judge(data, tmp_path):
    judge = fit_classifier(data, "image_judge_for_refusal", 2, modality="image",
                           image_judge={"n_blocks": 2, "base_channels": 4, "feature_dim": 8})  # fmt: skip
    with pytest.raises(ValueError, match="image_model='encoder'"):
        i2s("i2s_c", "frozen", judge)
    with pytest.raises(ValueError, match="image_encoder_ckpt"):
        I2STask(encoder_mode="frozen")


def test_griffin_lim_inversion_gives_finite_audio_of_the_chunk_length_and_rate():
    cfg = LogMelConfig()
    t = torch.arange(cfg.n_samples(0.5)) / cfg.sample_rate
    wave = torch.sin(2 * math.pi * 440.0 * t)[None]
    lms = LogMelSpectrogram(cfg)(wave, sample_rate=cfg.sample_rate)
    back = lms_to_audio(lms, cfg, n_iter=16, n_samples=cfg.n_samples(0.5))
    assert back.shape == (1, cfg.n_samples(0.5)) and torch.isfinite(back).all()
    assert back.abs().max() == pytest.approx(1.0)
    # the tone survives: the strongest frequency of the rendering is 440 Hz, within the width of a mel
    # band there (~20 Hz: the mel scale keeps no finer pitch)
    spec = torch.fft.rfft(back[0]).abs()
    peak = float(spec.argmax()) * cfg.sample_rate / back.shape[-1]
    assert abs(peak - 440.0) < 20.0
    with pytest.raises(ValueError, match=r"expected LMS \(N, 1, 128, frames\)"):
        lms_to_audio(torch.zeros(1, 1, 64, 44), cfg)
    with pytest.raises(ValueError, match="needs centred frames"):  # torchaudio's Griffin-Lim centres its frames
        lms_to_audio(lms, LogMelConfig(center=False), n_samples=cfg.n_samples(0.5))


def test_griffin_lim_inversion_under_bf16_autocast_gives_the_fp32_rendering():
    # a bf16-mixed training step logs its sample audio from inside CPU autocast
    cfg = LogMelConfig()
    t = torch.arange(cfg.n_samples(0.5)) / cfg.sample_rate
    lms = LogMelSpectrogram(cfg)(torch.sin(2 * math.pi * 330.0 * t)[None], sample_rate=cfg.sample_rate)
    plain = lms_to_audio(lms, cfg, n_iter=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = lms_to_audio(lms, cfg, n_iter=4)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)


def test_round_trip_on_real_lms_is_close_to_the_judges_accuracy(data, audio_judge):
    from cmav.tasks import load_classifier

    judge = load_classifier(audio_judge)
    dm = dm_of(data)
    dm.setup("fit")
    v = dm.val.tensors
    names = list(dm.class_names)
    direct = judged_accuracy(judge, v.audio.float(), v.labels, names)
    again = round_trip_accuracy(judge, v.audio.float(), v.labels, names, dm.features, n_iter=32)
    # Griffin-Lim loses some (phase is guessed): keeps >= 0.8 of the judge's accuracy, far above chance
    # (1/13). Without the NNLS mel inversion this fixture gave 0.23.
    assert direct.accuracy >= 0.9
    assert again.accuracy >= 0.8 * direct.accuracy


def test_scaler_round_trip_and_range_checks():
    s = RangeScaler.fit(torch.tensor([-100.0, -20.0, 10.0]))
    x = torch.tensor([-100.0, -45.0, 10.0])
    assert torch.allclose(s.encode(x), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(s.decode(s.encode(x)), x)
    with pytest.raises(ValueError, match="high > low"):
        RangeScaler(1.0, 1.0)


def test_checkpoint_reloads_evaluates_and_generates_a_wav(data, audio_judge, tmp_path, capsys):
    from cmav.evaluation import evaluate_i2s

    L.seed_everything(0, verbose=False)
    model = i2s("i2s_n")
    tr = trainer(max_steps=4, max_epochs=-1, limit_val_batches=0)
    # the end of each train track held out (2-chunk tracks: the last chunk; gap 0 keeps it), as the
    # YAMLs do, so that `cmav evaluate --probe-conditions` has train tails this model never saw
    tr.fit(model, dm_of(data, holdout_tail=0.1, holdout_gap_ms=0))
    ckpt = tmp_path / "i2s.ckpt"
    tr.save_checkpoint(str(ckpt))
    again = load_i2s(ckpt)
    frames = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    z = torch.randn(2, 10)
    assert torch.equal(again.generate(frames, z), model.cpu().generate(frames, z))

    m = evaluate_i2s(ckpt, dm_of(data), audio_judge, out_dir=tmp_path / "eval", n_diversity_draws=2,
                     diversity_per_class=1, griffin_lim_iters=4)  # fmt: skip
    assert m["judge_on_real"]["accuracy"] >= 0.9 and 0.0 <= m["judged"]["accuracy"] <= 1.0
    assert math.isfinite(m["fid_kid"]["fid"]) and "not Inception" in m["fid_kid"]["label"]
    assert m["round_trip"]["split"] == "validation" and 0.0 <= m["round_trip"]["accuracy"] <= 1.0
    assert (tmp_path / "eval" / "metrics.json").is_file() and (tmp_path / "eval" / "confusion_generated.png").is_file()
    # a judge trained on another LMS setting of the same shape would score on a scale it never saw
    with pytest.raises(ValueError, match=r"audio_judge\.ckpt: the sound classifier was trained on another front end .*f_min"):
        evaluate_i2s(ckpt, dm_of(data, features={"f_min": 30.0}), audio_judge, n_diversity_draws=2)
    # the same through `cmav evaluate`, which reads the kind from the checkpoint and asks for the right judge
    assert cmav_main(["evaluate", "--ckpt", str(ckpt), "--root", data["root"], "--image-size", str(SIZE)]) == 2
    # No --image-size: the data's frames take the checkpoint's size (32 px; the option's old default was 64);
    # its held-out tails are its own (holdout_tail 0.1, gap 0: the checkpoint's, the default)
    assert cmav_main(["evaluate", "--ckpt", str(ckpt), "--audio-judge", audio_judge, "--root", data["root"],
                      "-o", str(tmp_path / "cli_eval")]) == 0  # fmt: skip
    cli = json.loads((tmp_path / "cli_eval" / "metrics.json").read_text())
    assert cli["judge_on_real"]["accuracy"] == m["judge_on_real"]["accuracy"] and "round_trip" in cli
    # generated from the same 32-px frames: exactly the same figure (the fixture's frames are flat
    # colours, so 64-px ones differ only in the 8th digit)
    assert cli["fid_kid"]["fid"] == m["fid_kid"]["fid"]
    # the probe's train tail needs an audio judge that did not train on those tails either (the
    # fixture's trained on every train chunk): one step on the same split, only its data matter here
    tail_judge = fit_classifier(data, "audio_judge_tail", 1, tails=True, modality="audio", audio_encoder=TINY_ENC)
    assert cmav_main(["evaluate", "--ckpt", str(ckpt), "--audio-judge", tail_judge, "--root", data["root"],
                      "-o", str(tmp_path / "cli_probe"), "--probe-conditions"]) == 0  # fmt: skip
    probe = json.loads((tmp_path / "cli_probe" / "condition_probe.json").read_text())
    rows = probe["conditions"]
    assert list(rows) == ["own condition", "nearest train", "10 nearest mean", "predicted class mean", "train tail"]
    assert probe["inference"]["inference_condition"] == "own" and probe["inference"]["evaluated_row"] == "own condition"
    assert rows["train tail"]["split"].startswith("train tail") and rows["own condition"]["split"] == "validation"
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["per_class"] for r in rows.values())
    # without held-out tails (the default gap leaves none of 2-chunk tracks) the row says why, it is not dropped
    assert cmav_main(["evaluate", "--ckpt", str(ckpt), "--audio-judge", tail_judge, "--root", data["root"],
                      "-o", str(tmp_path / "no_tails"), "--probe-conditions", "--holdout-gap-ms", "500"]) == 0  # fmt: skip
    tail = json.loads((tmp_path / "no_tails" / "condition_probe.json").read_text())["conditions"]["train tail"]
    assert tail["accuracy"] is None and tail["split"].startswith("train tail: none held out (data.holdout_tail 0.1 leaves")

    # `cmav generate --ckpt i2s.ckpt --image frame.jpg -o out.wav`
    frame = write_jpg(tmp_path / "frame.jpg", colour=(20, 255, 40))
    out = tmp_path / "out.wav"
    assert cmav_main(["generate", "--ckpt", str(ckpt), "--image", str(frame), "-o", str(out)]) == 0
    wave, rate = sf.read(out)
    assert rate == LogMelConfig().sample_rate and wave.shape == (LogMelConfig().n_samples(0.5),)
    assert abs(wave).max() <= 1.0 and abs(wave).max() > 0
    with pytest.raises(SystemExit):
        cmav_main(["generate", "--ckpt", str(ckpt), "--image", str(frame), "--audio", str(out), "-o", str(out)])
    # options for another kind of model are refused, not ignored
    capsys.readouterr()
    assert cmav_main(["generate", "--ckpt", str(ckpt), "--image", str(frame), "-o", str(out), "--steps", "7"]) == 2
    assert "--steps set(s) the diffusion sampler of an audio-token model; this is an i2s checkpoint" in capsys.readouterr().err
    assert cmav_main(["evaluate", "--ckpt", str(ckpt), "--audio-judge", audio_judge, "--image-judge", audio_judge,
                      "--root", data["root"]]) == 2  # fmt: skip
    assert "--image-judge judge(s) the other direction" in capsys.readouterr().err
    # an output name that is not a sound file: refused by name (soundfile's TypeError before); none: .wav
    capsys.readouterr()
    assert cmav_main(["generate", "--ckpt", str(ckpt), "--image", str(frame), "-o", str(tmp_path / "out.png")]) == 2
    assert "out.png: the sound is written as .wav or .flac" in capsys.readouterr().err
    assert cmav_main(["generate", "--ckpt", str(ckpt), "--image", str(frame), "-o", str(tmp_path / "bare")]) == 0
    assert sf.read(tmp_path / "bare.wav")[1] == rate

    # the nearest training condition instead of the frame's own: the checkpoint holds the train split's
    assert len(again.condition_bank) == len(model._bank_index) > 0
    assert cmav_main(["generate", "--ckpt", str(ckpt), "--image", str(frame), "-o", str(out),
                      "--inference-condition", "nearest"]) == 0  # fmt: skip
    # a checkpoint from before the bank: generation refuses by name, evaluation takes it from the data
    old = torch.load(ckpt, weights_only=False)
    old["state_dict"] = {k: v for k, v in old["state_dict"].items() if not k.startswith("condition_bank.")}
    torch.save(old, tmp_path / "old.ckpt")
    assert cmav_main(["generate", "--ckpt", str(tmp_path / "old.ckpt"), "--image", str(frame), "-o", str(out),
                      "--inference-condition", "class_mean"]) == 2  # fmt: skip
    assert "old.ckpt: inference condition 'class_mean' needs the training conditions" in capsys.readouterr().err
    assert cmav_main(["evaluate", "--ckpt", str(tmp_path / "old.ckpt"), "--audio-judge", audio_judge, "--root",
                      data["root"], "--image-size", str(SIZE), "-o", str(tmp_path / "near"),
                      "--inference-condition", "nearest", "--inference-neighbours", "2"]) == 0  # fmt: skip
    near = json.loads((tmp_path / "near" / "metrics.json").read_text())
    assert near["generator"]["inference_condition"] == "nearest" and near["generator"]["inference_neighbours"] == 2
    assert cli["generator"]["inference_condition"] == "own"


def test_s2i_checkpoint_given_an_image_is_refused_by_name(data, tmp_path, capsys):
    from cmav.tasks import S2ITask

    warnings.simplefilter("ignore")
    task = S2ITask(variant="ae", encoder_mode="scratch", image_size=SIZE, sample_every_n_steps=0, encoder=TINY_ENC,
                   generator=TINY_G)  # fmt: skip
    tr = trainer(max_steps=1, max_epochs=-1, limit_val_batches=0)
    tr.fit(task, dm_of(data))
    ckpt = tmp_path / "s2i.ckpt"
    tr.save_checkpoint(str(ckpt))
    frame = write_jpg(tmp_path / "f.jpg")
    # one line naming the mistake, no traceback
    assert cmav_main(["generate", "--ckpt", str(ckpt), "--image", str(frame), "-o", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: .*S2I checkpoint.*--audio", err) and "Traceback" not in err


@pytest.mark.parametrize("moved", [False, True])
def test_cli_fit_i2s_checkpoints_follow_the_default_root_dir(data, image_classifier, tmp_path, monkeypatch, moved):
    """The YAML's fit runs, and its checkpoints and log land in <default_root_dir>/checkpoints and
    <default_root_dir>/version_0: the YAML's runs/i2s_c, or wherever --trainer.default_root_dir moves the run."""
    import sys
    import warnings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cmav"])
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    args = ["fit", "--config", str(experiments / "i2s_c.yaml"), "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=0",
            "--trainer.enable_progress_bar=false", f"--data.root={data['root']}", f"--data.cache_dir={data['cache']}",
            f"--data.image_size={SIZE}", "--data.batch_size=8", "--data.progress=false",
            f"--model.init_args.image_encoder_ckpt={image_classifier}", "--model.init_args.generator.base_channels=8",
            "--model.init_args.discriminator.base_channels=8"]  # fmt: skip
    if moved:
        args.append(f"--trainer.default_root_dir={tmp_path / 'moved'}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cmav_main(args) == 0
    # the frozen encoder and the EMA generator are in eval mode on purpose: Lightning's warning is not shown
    assert not [w for w in caught if "in eval mode" in str(w.message)]
    assert not [w for w in caught if "outside trainer.default_root_dir" in str(w.message)]
    root = tmp_path / "moved" if moved else tmp_path / "runs" / "i2s_c"
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert list((root / "version_0").glob("events.out.tfevents.*"))  # the TensorBoard log moves with the run
    assert (tmp_path / "runs").exists() is not moved  # nothing written at the YAML's place


def test_quick_i2s_grid_writes_the_same_outputs_as_s2i(data, tmp_path):
    """The quick preset's grid on the fixture, one seed and fewer steps (the full quick preset runs
    3 seeds; its numbers only show the pipeline works)."""
    import csv

    from PIL import Image

    from cmav.ablation import load_grid, run_ablation

    cfg = load_grid(Path(__file__).resolve().parents[1] / "experiments" / "ablations" / "i2s.yaml", "quick")
    cfg["seeds"] = [0]
    cfg["data"].update(root=data["root"], cache_dir=data["cache"], image_size=SIZE, batch_size=8)
    for stage in cfg["stages"].values():
        stage["steps"] = 4
    out = tmp_path / "grid"
    r = run_ablation(cfg, out_dir=out)
    for name in ("table.md", "table.csv", "metrics.png", "samples.png", "results.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "table.csv").open()))
    # each trained variant scored under each inference condition, without retraining
    assert [row["variant"] for row in rows] == [f"{v}{m}" for v in ("I2S-C", "I2S-N", "AE")
                                                for m in ("", " [nearest]", " [class_mean]")]  # fmt: skip
    near = json.loads((out / "runs" / "I2S-C" / "seed0" / "inference_nearest" / "metrics.json").read_text())
    assert near["generator"]["inference_condition"] == "nearest"
    assert (out / "wavs" / "I2S-C_nearest").is_dir()
    assert "round_trip_acc_mean" in rows[0] and "not Inception FID" in (out / "table.md").read_text()
    for variant in ("I2S-C", "I2S-N", "AE", "real"):
        wavs = sorted((out / "wavs" / variant).glob("*.wav"))
        assert len(wavs) == 13, variant
        wave, rate = sf.read(wavs[0])
        assert rate == 22050 and wave.shape == (11025,)
    assert Image.open(out / "samples.png").size[0] > 96 * 5
    assert r["rows"][0]["n_seeds"] == 1


def test_judged_accuracy_monitor_scores_an_i2s_generator_with_the_audio_judge(data, audio_judge, image_classifier,
                                                                              tmp_path):  # fmt: skip
    from cmav.evaluation import JudgedAccuracyMonitor, evaluate_i2s

    L.seed_everything(0, verbose=False)
    model = i2s("i2s_c")
    monitor = JudgedAccuracyMonitor(audio_judge, every_n_epochs=1)
    tr = trainer(max_epochs=1, limit_train_batches=2, callbacks=[monitor], default_root_dir=str(tmp_path))
    dm = dm_of(data)
    tr.fit(model, dm)
    assert len(monitor.history) == 1
    assert monitor.record_path(tmp_path).read_text().splitlines()[1].startswith("2,0,")  # iteration 2, epoch 0
    m = evaluate_i2s(model, dm, audio_judge, n_diversity_draws=2, diversity_per_class=1, griffin_lim_iters=2)
    assert monitor.history[0]["judged_acc"] == pytest.approx(m["judged"]["accuracy"])
    assert monitor.history[0]["judge_on_real"] == pytest.approx(m["judge_on_real"]["accuracy"])
    assert m["judge_on_real"]["accuracy"] >= 0.9  # the ceiling is the judge on real LMS, not on frames
    # an image classifier does not judge spectrograms: refused at the start of fitting, naming the file
    tr = trainer(max_epochs=1, limit_train_batches=1, callbacks=[JudgedAccuracyMonitor(image_classifier)])
    with pytest.raises(ValueError, match=r"image_classifier\.ckpt.*audio classifier"):
        tr.fit(i2s("i2s_c"), dm_of(data))


def test_condition_probe_swaps_in_the_nearest_and_class_mean_train_conditions():
    from cmav.evaluation.condition_probe import substitute_conditions

    train = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    labels = torch.tensor([0, 0, 1, 1])
    val = torch.tensor([[0.9, 0.2], [9.0, 9.0]])
    out = substitute_conditions(val, train, labels, predicted=torch.tensor([1, 0]), k=2)
    assert torch.equal(out["validation"], val)
    assert torch.equal(out["nearest train"], torch.tensor([[1.0, 0.0], [10.0, 10.0]]))
    assert torch.allclose(out["2 nearest mean"], torch.tensor([[0.5, 0.0], [11.0, 10.0]]))
    # the class the head predicts, not the true one: here both are swapped on purpose
    assert torch.allclose(out["predicted class mean"], torch.tensor([[11.0, 10.0], [0.5, 0.0]]))


def test_grid_inference_conditions_default_to_own_and_refuse_unknown_ones():
    from cmav.ablation.grid import evaluated_name, inference_conditions

    assert inference_conditions({"evaluation": {}}) == ["own"]
    assert [evaluated_name("I2S-C", m) for m in ("own", "nearest")] == ["I2S-C", "I2S-C [nearest]"]
    for bad in (["own", "median"], ["nearest", "nearest"]):
        with pytest.raises(ValueError, match="inference_conditions must be distinct values"):
            inference_conditions({"source": "grid.yaml", "evaluation": {"inference_conditions": bad}})


def test_i2s_refuses_audio_augmentation_of_what_it_generates(data):
    with pytest.raises(ValueError, match=r"data.augment \(gain\) augments the audio, which I2STask generates"):
        trainer(max_steps=1, limit_val_batches=0).fit(i2s("i2s_n"), dm_of(data, augment={"gain": {"p": 1.0}}))


@pytest.mark.filterwarnings("ignore:.*was saved after batch")  # saved mid-epoch on purpose: only the range matters
def test_a_resumed_run_keeps_the_checkpoints_db_range_not_one_refitted_from_the_data(data, tmp_path):
    L.seed_everything(0, verbose=False)
    model = i2s("ae")
    tr = trainer(max_steps=2, max_epochs=-1, limit_val_batches=0)
    tr.fit(model, dm_of(data))
    fitted = model.hparams.lms_range
    path = tmp_path / "i2s.ckpt"
    tr.save_checkpoint(path)
    # the data changed since (a rebuilt root, another cache): the generator still speaks the old scale
    ckpt = torch.load(path, weights_only=False)
    stored = [fitted[0] - 7.0, fitted[1] + 3.0]
    ckpt["hyper_parameters"]["lms_range"] = stored
    torch.save(ckpt, path)
    resumed = i2s("ae")
    with pytest.warns(UserWarning, match="differs from the checkpoint's"):
        trainer(max_steps=3, max_epochs=-1, limit_val_batches=0).fit(resumed, dm_of(data), ckpt_path=str(path))
    assert resumed.scaler.to_list() == stored and resumed.hparams.lms_range == stored
    assert resumed.from_target_space(torch.ones(1)).item() == pytest.approx(stored[1])


SMALL_LMS = LogMelConfig(n_mels=64, hop_length=512)  # (1, 64, 22) against the default (1, 128, 44)


@pytest.fixture(scope="module")
def barely_trained_judges(data) -> dict:
    """Sound classifiers of 2 steps on three front ends: enough to pass the judge's own checks."""
    return {name: fit_classifier(data, f"judge_{name}", 2, features=features, modality="audio", audio_encoder=TINY_ENC)
            for name, features in (("default", None), ("small", SMALL_LMS), ("f_min", {"f_min": 30.0}))}  # fmt: skip


@pytest.fixture(scope="module")
def default_i2s_ckpt(data) -> Path:
    """An I2S checkpoint trained 2 steps on the default front end (128 x 44 LMS)."""
    L.seed_everything(0, verbose=False)
    model = i2s("i2s_n")
    tr = trainer(max_steps=2, max_epochs=-1, limit_val_batches=0)
    tr.fit(model, dm_of(data))
    path = data["base"] / "default_i2s.ckpt"
    tr.save_checkpoint(str(path))
    return path


def test_evaluation_refuses_data_of_another_lms_shape_or_front_end_than_the_model_generates(
        data, barely_trained_judges, default_i2s_ckpt):  # fmt: skip
    """Judged accuracy and FID/KID would score wrong-shape LMS and the round trip would fail deep in
    the inversion: the model, its shape and both front ends are named before anything is scored."""
    from cmav.evaluation import evaluate_i2s

    judges = barely_trained_judges
    kw = dict(n_diversity_draws=2, diversity_per_class=1, griffin_lim_iters=2)
    assert load_i2s(default_i2s_ckpt).trained_features == LogMelConfig()
    shape = r"the I2S model generates LMS \(1, 128, 44\), the data's are \(1, 64, 22\) \(front end: hop_length: 256 -> 512; n_mels: 128 -> 64, model -> data\)"
    with pytest.raises(ValueError, match=rf"default_i2s\.ckpt: {shape}"):
        evaluate_i2s(default_i2s_ckpt, dm_of(data, features=SMALL_LMS), judges["small"], **kw)
    with pytest.raises(ValueError, match=rf"the I2S model given: {shape}"):
        evaluate_i2s(load_i2s(default_i2s_ckpt), dm_of(data, features=SMALL_LMS), judges["small"], **kw)
    # the same shape from another setting: its dB values mean other bands
    with pytest.raises(ValueError, match=r"default_i2s\.ckpt: the I2S model was trained on another front end than "
                                         r"the data's \(front end: f_min: 0\.0 -> 30\.0, model -> data\)"):  # fmt: skip
        evaluate_i2s(default_i2s_ckpt, dm_of(data, features={"f_min": 30.0}), judges["f_min"], **kw)

    # a plain generator says nothing of its front end: its output shape is checked
    def small(frames, z):
        return torch.full((frames.shape[0], *SMALL_LMS.output_shape(0.5)), -40.0)

    with pytest.raises(ValueError, match=r"the I2S model given: the I2S model generates LMS \(1, 64, 22\), the data's are \(1, 128, 44\)"):
        evaluate_i2s(small, dm_of(data), judges["default"], **kw)


def test_the_kid_subset_size_used_is_reported_beside_the_one_asked_for(data, barely_trained_judges, tmp_path):
    """KID's subset is clamped to half the smaller set on a small split: metrics.json says the size used."""
    from cmav.evaluation import evaluate_i2s

    def quiet(frames, z):
        return torch.full((frames.shape[0], *LogMelConfig().output_shape(0.5)), -40.0) + z[:, :1, None, None]

    dm = dm_of(data)
    m = evaluate_i2s(quiet, dm, barely_trained_judges["default"], out_dir=tmp_path, n_diversity_draws=2,
                     diversity_per_class=1, griffin_lim_iters=2, kid_subset_size=1000, kid_subsets=5)  # fmt: skip
    n_val = len(dm.val)
    assert n_val // 2 < 1000
    written = json.loads((tmp_path / "metrics.json").read_text())["fid_kid"]
    assert m["fid_kid"]["kid_subset_size"] == written["kid_subset_size"] == n_val // 2
    assert written["kid_subset_size_asked"] == 1000 and written["kid_subsets"] == 5


@pytest.mark.parametrize("task_name", ["I2STask", "S2ITask"])
def test_a_scratch_encoder_without_a_class_loss_is_not_asked_for_its_class_head(task_name):
    """Only loss_weights.encoder_class trains a scratch encoder's head to classify: without it
    class_mean would snap every input to the class mean of one untrained argmax."""
    from cmav.tasks import S2ITask

    cls = {"I2STask": I2STask, "S2ITask": S2ITask}[task_name]
    base = dict(variant=task_name[:3].lower() + "_c", encoder_mode="scratch", image_size=SIZE,
                sample_every_n_steps=0, generator=TINY_G, discriminator=TINY_D)  # fmt: skip
    with pytest.raises(ValueError, match=r"encoder_mode='scratch' with loss_weights\.encoder_class=0 .*"
                                         r"inference_condition='class_mean'.*set loss_weights\.encoder_class > 0"):  # fmt: skip
        cls(**base, inference_condition="class_mean")
    cls(**base, inference_condition="class_mean", loss_weights={"encoder_class": 0.5})  # a trained head: accepted
    cls(**base)  # the paper's own feature and own condition: nothing reads the head
    cls(**base, condition_on="logits")  # G's loss trains them as a narrow condition


def test_a_checkpoint_rebuilt_for_inference_keeps_its_class_mean_condition_and_a_scratch_one_warns(data, tmp_path):
    """load_i2s rebuilds every encoder as 'scratch' (its weights come from the state dict): a model
    trained on a frozen classifier's head with class_mean is still loaded, not refused."""
    L.seed_everything(0, verbose=False)
    model = i2s("i2s_n", inference_condition="class_mean", loss_weights={"encoder_class": 1.0})
    tr = trainer(max_steps=2, max_epochs=-1, limit_val_batches=0)
    tr.fit(model, dm_of(data))
    ckpt = torch.load(_save(tr, tmp_path / "trained.ckpt"), weights_only=False)
    hp = ckpt["hyper_parameters"]
    hp.update(encoder_mode="frozen", image_encoder_ckpt="gone.ckpt", loss_weights={**hp["loss_weights"], "encoder_class": 0.0})
    torch.save(ckpt, tmp_path / "frozen.ckpt")
    again = load_i2s(tmp_path / "frozen.ckpt")
    assert again.inference_condition == "class_mean" and again.trained_encoder_mode == "frozen"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.set_inference_condition("class_mean")  # a frozen classifier's head: nothing to say
    # trained from scratch with no class loss: switching a loaded model to class_mean is the caller's
    # experiment, allowed, but said
    L.seed_everything(0, verbose=False)
    plain = i2s("i2s_n")
    trainer(max_steps=2, max_epochs=-1, limit_val_batches=0).fit(plain, dm_of(data))
    scratch = load_i2s(_save(plain.trainer, tmp_path / "scratch.ckpt"))
    with pytest.warns(UserWarning, match="trained from scratch without a class loss .* untrained head"):
        scratch.set_inference_condition("class_mean")


def _save(tr: L.Trainer, path: Path) -> Path:
    tr.save_checkpoint(str(path))
    return path


@pytest.mark.parametrize("lms_range", [None, [-100.0, 0.0]])
def test_a_given_lms_shape_that_is_not_the_datas_is_refused(data, lms_range):
    """With or without a given dB range, a given lms_shape is the user's: another one in the data
    is an error, never replaced silently by the data's."""
    model = i2s("i2s_c", lms_shape=[1, 64, 22], lms_range=lms_range)
    with pytest.raises(ValueError, match=r"\(1, 64, 22\)|\[1, 64, 22\]") as err:
        trainer(max_steps=2, max_epochs=-1, limit_val_batches=0).fit(model, dm_of(data))
    assert re.search(r"128, 44", str(err.value)), err.value
    same = i2s("i2s_c", lms_shape=[1, 128, 44])  # the data's own: accepted
    trainer(max_steps=2, max_epochs=-1, limit_val_batches=0).fit(same, dm_of(data))
    assert same.target_shape() == (1, 128, 44)


def test_the_i2s_grid_trains_on_the_same_split_as_the_cmav_fit_runs():
    """The grid's rows are compared with docs/i2s.md's `cmav fit --config experiments/i2s_c.yaml`
    tables: the same held-out tails, so the same train items and training conditions."""
    import yaml

    from cmav.ablation import load_grid

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    fit_data = yaml.safe_load((experiments / "i2s_c.yaml").read_text())["data"]
    for preset in (None, "cpu"):
        grid = load_grid(experiments / "ablations" / "i2s.yaml", preset)["data"]
        assert grid.get("holdout_tail", 0.0) == fit_data["holdout_tail"], preset


def test_cmav_evaluate_prints_n_a_where_a_figure_is_missing():
    # an early I2S checkpoint judged right on no sample has no kept share (None); `cmav evaluate`
    # used to stop on it with a TypeError after writing metrics.json, before its FID and KID lines
    from cmav.cli.experiments import _fid_kid_line
    from cmav.metrics.serialise import format_number

    assert format_number(None, ".2f") == "n/a"
    assert format_number(0.25, ".2f") == "0.25"
    line = _fid_kid_line({"label": "FID/KID", "fid": 12.5, "kid_mean": 0.01, "kid_std": None,
                          "fid_reliable": False, "note": "fewer samples than feature dimensions"})
    assert line == "FID/KID (validation): FID 12.500, KID 0.01000 ± n/a (fewer samples than feature dimensions)"


# ---------------------------------------------------------------- review fixes: the condition probe


def fit_i2s(data: dict, name: str, steps: int = 1, **held) -> str:
    """A tiny I2S-C checkpoint (its data's held-out tails ``held``: holdout_tail, holdout_gap_ms)."""
    L.seed_everything(0, verbose=False)
    tr = trainer(max_steps=steps, max_epochs=-1, limit_val_batches=0)
    tr.fit(i2s("i2s_c"), dm_of(data, **held))
    path = str(data["base"] / f"{name}.ckpt")
    tr.save_checkpoint(path)
    return path


def test_the_condition_probe_refuses_train_tails_the_generator_or_the_audio_judge_trained_on(data, audio_judge,
                                                                                             tmp_path, capsys):  # fmt: skip
    """The train-tail row is "seen players, unseen frames": `cmav evaluate --holdout-tail` on a
    generator trained without tails, or an audio judge trained on them, made it frames they trained
    on. Both are refused, naming the checkpoint and the tail it trained with."""
    from cmav.evaluation.condition_probe import probe_i2s_conditions

    tails = {"holdout_tail": 0.1, "holdout_gap_ms": 0}
    gen0 = fit_i2s(data, "i2s_tail0")
    gen = fit_i2s(data, "i2s_tail01", **tails)
    judge = fit_classifier(data, "audio_judge_tail01", 1, tails=True, modality="audio", audio_encoder=TINY_ENC)
    capsys.readouterr()
    assert cmav_main(["evaluate", "--ckpt", gen0, "--audio-judge", judge, "--probe-conditions", "--holdout-tail", "0.1",
                      "--holdout-gap-ms", "0", "-o", str(tmp_path / "told")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert (f"{gen0}: the I2S generator was trained on {data['root']} with data.holdout_tail 0 (holdout_gap_ms None), "
            "so 26 of the 26 held-out chunks scored here (data.holdout_tail 0.1, holdout_gap_ms 0)") in err
    assert not (tmp_path / "told").exists()  # refused before anything was scored
    with pytest.raises(ValueError, match=r"i2s_tail0\.ckpt: the I2S generator was trained on .* with data\.holdout_tail 0 "):
        probe_i2s_conditions(load_i2s(gen0), dm_of(data, **tails), judge, ckpt=gen0)  # a loaded task: its file tells
    with pytest.raises(ValueError, match=r"audio_judge\.ckpt: the audio judge was trained on .* with data\.holdout_tail 0 .*26 of the 26"):
        probe_i2s_conditions(gen, dm_of(data, **tails), audio_judge)
    probe = probe_i2s_conditions(gen, dm_of(data, **tails), judge)  # both held those tails out
    tail = probe["conditions"]["train tail"]
    assert tail["split"] == "train tail (seen players, unseen frames)" and 0.0 <= tail["accuracy"] <= 1.0
    assert probe["notes"] == []


def test_the_condition_probe_scores_the_inference_condition_that_evaluate_uses_and_says_which(data, audio_judge):
    """The probe takes the task as configured (`cmav evaluate --inference-condition nearest
    --inference-neighbours 3`): its marked row is what evaluate_i2s scores, and the result names the mode."""
    from cmav.evaluation import evaluate_i2s
    from cmav.evaluation.condition_probe import format_probe, probe_i2s_conditions

    ckpt = fit_i2s(data, "i2s_probe_modes", steps=4)
    dm = dm_of(data)  # no tails: the fixture's audio judge trained on every train chunk
    kw = dict(n_diversity_draws=2, diversity_per_class=1, griffin_lim_iters=1)
    for mode, k, row in (("nearest", 3, "3 nearest mean"), ("class_mean", None, "predicted class mean")):
        task = load_i2s(ckpt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # class_mean by a scratch encoder's head: warned, allowed
            task.set_inference_condition(mode, k)
        probe = probe_i2s_conditions(task, dm, audio_judge)
        assert probe["inference"]["inference_condition"] == mode and probe["inference"]["evaluated_row"] == row
        assert probe["inference"].get("inference_neighbours") == k
        rows = probe["conditions"]
        assert [name for name, r in rows.items() if r["evaluated"]] == [row]
        expected = ["own condition", "nearest train", f"{k or 10} nearest mean", "predicted class mean", "train tail"]
        assert list(rows) == expected
        m = evaluate_i2s(task, dm, audio_judge, **kw)
        assert rows[row]["accuracy"] == m["judged"]["accuracy"]
        assert rows[row]["per_class"] == {c: a for c, a in m["judged"]["per_class"].items() if a is not None and a == a}
        assert f"| {row} * |" in format_probe(probe) and f"inference condition: {mode}" in format_probe(probe)


def test_the_round_trip_says_what_share_of_the_items_judged_right_it_keeps(data, audio_judge):
    """kept_fraction is round-trip accuracy / judged accuracy, a ratio that can exceed 1 (the
    round trip can right items the judge got wrong); kept_share is the share of the items judged
    right that are still right after the round trip."""
    from cmav.evaluation import evaluate_i2s
    from cmav.metrics import judge_predictions
    from cmav.tasks import load_classifier

    dm = dm_of(data)
    dm.setup("fit")
    val = dm.val.tensors
    table = {f.numpy().tobytes(): a.float() for f, a in zip(val.images.float().div(127.5).sub(1.0), val.audio, strict=True)}

    def real_lms(frames, z):  # each frame's own real LMS: a generator the judge mostly gets right
        return torch.stack([table[f.numpy().tobytes()] for f in frames])

    m = evaluate_i2s(real_lms, dm, audio_judge, n_diversity_draws=2, diversity_per_class=1, griffin_lim_iters=2)
    rt = m["round_trip"]
    judge = load_classifier(audio_judge)
    names, labels = list(dm.class_names), val.labels.long()
    fake = real_lms(val.images.float().div(127.5).sub(1.0), None)
    right = judge_predictions(judge, fake, 64) == labels
    still = torch.from_numpy(round_trip_accuracy(judge, fake, labels, names, dm.features, 2, 64).predictions) == labels
    assert right.sum() > 0 and rt["kept_share"] == pytest.approx(float((right & still).sum() / right.sum()))
    assert 0.0 <= rt["kept_share"] <= 1.0
    assert rt["kept_fraction"] == pytest.approx(rt["accuracy"] / m["judged"]["accuracy"])
    assert "a ratio of two accuracies" in rt["note"]


def test_colour_diff_augment_is_refused_on_one_channel_spectrograms_at_construction():
    """Colour jitter and channel scrambling need RGB: on the one-channel LMS they crashed inside
    kornia at the first D step. S2I's overlay (experiments/s2i_stable.yaml, colour 0.2) put on
    an I2S config is the way it happens; I2S's own overlay is accepted and D runs on it."""
    import yaml

    experiments = Path(__file__).resolve().parents[1] / "experiments"

    def overlay(name: str) -> dict:
        return yaml.safe_load((experiments / name).read_text())["model"]["init_args"]["diff_augment"]

    known = {"lms_shape": [1, 32, 12], "lms_range": [-80.0, 0.0]}
    for shapes in (known, {}):  # built now, or lazily at setup
        with pytest.raises(ValueError, match=r"diff_augment\.colour\b.*one-channel"):
            i2s("i2s_c", diff_augment=overlay("s2i_stable.yaml"), **shapes)
        with pytest.raises(ValueError, match=r"diff_augment\.colour_scramble\b"):
            i2s("i2s_c", diff_augment={"enabled": True, "colour_scramble": True}, **shapes)
    i2s("i2s_c", diff_augment={"enabled": False, "colour": 0.2}, **known)  # off: nothing to refuse
    model = i2s("i2s_c", diff_augment=overlay("i2s_stable.yaml"), **known)
    x = torch.rand(2, 1, 32, 12) * 2 - 1
    assert model._disc(x, torch.randn(2, model.net.encoder.feature_dim)).shape == (2,)


# ---------------------------------------------------------------- review fixes: what evaluate and generate write


def test_a_rerun_without_the_probe_leaves_no_condition_probe_and_metrics_json_names_what_it_scored(data, tmp_path):
    """A rerun into the same folder without --probe-conditions used to leave the old
    condition_probe.json beside the new metrics.json; and metrics.json named neither the
    checkpoint, the audio judge, the data nor the front end."""
    from cmav.data.files import sha256_file

    tails = {"holdout_tail": 0.1, "holdout_gap_ms": 0}
    gen = fit_i2s(data, "i2s_rerun", **tails)
    judge = fit_classifier(data, "audio_judge_rerun", 1, tails=True, modality="audio", audio_encoder=TINY_ENC)
    out = tmp_path / "out"
    assert cmav_main(["evaluate", "--ckpt", gen, "--audio-judge", judge, "--probe-conditions", "-o", str(out)]) == 0
    assert (out / "condition_probe.json").is_file()
    assert cmav_main(["evaluate", "--ckpt", gen, "--audio-judge", judge, "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["confusion_generated.png", "confusion_real.png", "metrics.json"]
    inputs = json.loads((out / "metrics.json").read_text())["inputs"]
    for key, path in (("checkpoint", gen), ("audio_judge", judge)):
        assert inputs[key] == {"path": path, "resolved": str(Path(path).resolve()), "sha256": sha256_file(path)}
    assert inputs["data"]["root"] == data["root"] and inputs["data"]["holdout_tail"] == 0.1
    assert inputs["features"] == LogMelConfig().to_dict()


def test_written_sound_keeps_the_spectrograms_level_unless_asked_to_peak_normalise(data, default_i2s_ckpt, tmp_path,
                                                                                    capsys):  # fmt: skip
    """The audio judge is level-sensitive and the round trip keeps the spectrogram's level: a wav
    written peak-normalised (0.9) was judged on another dB scale than the round trip reported. The
    written sound now is image_to_sound's, at the level of the generated LMS; --normalise (and
    normalise=True) scale each clip to its peak as before."""
    import numpy as np

    import cmav
    from cmav.api import noise
    from cmav.metrics.round_trip import round_trip_lms

    frame = write_jpg(tmp_path / "frame.jpg", colour=(20, 255, 40))
    out = tmp_path / "level.wav"
    assert cmav_main(["generate", "--ckpt", str(default_i2s_ckpt), "--image", str(frame), "-o", str(out)]) == 0
    wave, rate = sf.read(out)
    model = cmav.load(default_i2s_ckpt)
    expected, _ = cmav.image_to_sound(model, frame)
    assert np.abs(wave - expected[0, 0].numpy()).max() <= 2 / 32768  # PCM_16
    # the LMS of the file is the round trip's (evaluation's), on the same dB scale
    x = cmav.api._frames(model, frame)
    lms = model.task.generate(x, noise(1, model.task.z_dim, 0))
    again = LogMelSpectrogram(model.features)(torch.from_numpy(wave).float()[None], sample_rate=rate)
    trip = round_trip_lms(lms, model.features, n_iter=64)
    assert abs(float(again.mean() - trip.mean())) < 0.5
    # peak normalisation only when asked: each clip to a peak of 1 (0.9 in the file)
    normalised, _ = cmav.image_to_sound(model, frame, n=2, normalise=True)
    assert torch.allclose(normalised.abs().amax(-1), torch.ones(1, 2))
    loud = tmp_path / "loud.wav"
    assert cmav_main(["generate", "--ckpt", str(default_i2s_ckpt), "--image", str(frame), "-o", str(loud),
                      "--normalise"]) == 0  # fmt: skip
    assert abs(np.abs(sf.read(loud)[0]).max() - 0.9) < 1e-3
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cmav_main(["generate", "--help"])
    assert "spectrogram's level" in " ".join(capsys.readouterr().out.split())


def test_sound_beyond_full_scale_is_clipped_with_a_warning_that_counts_the_samples():
    from cmav.data.errors import DataWarning
    from cmav.features.inversion import clip_to_full_scale

    wave = torch.tensor([[0.5, 1.5, -2.0, 0.1]])
    with pytest.warns(DataWarning, match=r"x\.wav: 2 of 4 samples .*beyond full scale \(peak 2\.00\).*clipped to "
                                         r"\[-1, 1\].*normalise"):  # fmt: skip
        clipped = clip_to_full_scale(wave, "x.wav")
    assert torch.equal(clipped, torch.tensor([[0.5, 1.0, -1.0, 0.1]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(clip_to_full_scale(wave / 2, "x.wav"), wave / 2)  # nothing clipped: nothing said


def test_the_grids_wavs_keep_the_spectrograms_level(data, tmp_path):
    """The I2S grid's wavs/ renderings compare variants by ear: at the spectrograms' own level, not
    each scaled to its peak."""
    from cmav.ablation.i2s import _write_wavs

    dm = dm_of(data)
    dm.setup("fit")
    real = dm.val.tensors.audio[:2].float()
    _write_wavs(tmp_path, "real", real, ["a", "b"], dm)
    front = LogMelSpectrogram(dm.features)
    for k, name in enumerate(["a", "b"]):
        wave, rate = sf.read(tmp_path / "wavs" / "real" / f"{name}.wav")
        again = front(torch.from_numpy(wave).float()[None], sample_rate=rate)
        assert abs(float(again.mean() - real[k].mean())) < 3.0
