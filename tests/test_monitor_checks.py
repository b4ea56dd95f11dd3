"""What the training-time judge monitor and the I2S condition probe check before they report a number
(tiny, CPU): an audio judge must read the I2S data's own front end, and a row of the encoder's logits
that is not finite is no predicted class."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from cmav.data import AudioVisualDataModule
from cmav.features.logmel import LogMelConfig

from fixtures import make_suburmp_tracks

SIZE = 32
TINY_ENC = {"n_blocks": 4, "base_channels": 8, "dropout": 0.0}
TINY_GAN = {"base_channels": 8, "cond_proj_dim": 16}

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
    base = tmp_path_factory.mktemp("monitor")
    root = make_suburmp_tracks(base / "suburmp", tracks=(0, 1), chunks=2, noise=0.01)
    return {"root": str(root), "cache": str(base / "cache"), "base": base}


def dm_of(data: dict, **kw) -> AudioVisualDataModule:
    return AudioVisualDataModule(data["root"], image_size=SIZE, cache_dir=data["cache"], batch_size=8, progress=False,
                                 **kw)  # fmt: skip


@pytest.fixture(scope="module")
def judges(data) -> dict[str, Path]:
    """Audio judges on the data's front end, on another top_db (features of the same shape) and on
    64 mel bands (the encoder's global pool takes 64 x 44 as well as 128 x 44)."""
    from cmav.tasks import ClassifierTask

    out = {}
    for name, features in (("same", None), ("top_db", LogMelConfig(top_db=60.0)), ("n_mels", LogMelConfig(n_mels=64))):
        L.seed_everything(0, verbose=False)
        task = ClassifierTask(modality="audio", image_size=SIZE, audio_encoder=TINY_ENC)
        tr = trainer(max_steps=3, limit_val_batches=0)
        tr.fit(task, dm_of(data) if features is None else dm_of(data, features=features))
        out[name] = data["base"] / f"judge_{name}.ckpt"
        tr.save_checkpoint(str(out[name]))
    return out


def i2s(**kw):
    from cmav.tasks import I2STask

    return I2STask(variant="i2s_c", encoder_mode="scratch", image_size=SIZE, generator=TINY_GAN, discriminator=TINY_GAN,
                   encoder=TINY_ENC, sample_every_n_steps=0, **kw)  # fmt: skip


def test_the_monitor_refuses_an_audio_judge_of_another_front_end_as_evaluate_does(data, judges, tmp_path):
    """It checked the judge's classes only: a judge of another top_db (the same shape) or of 64 mel
    bands (its global pool takes them) logged val/judged_acc, its CSV and a monitored checkpoint from
    spectrograms it reads wrongly. evaluate_i2s refuses both, naming the judge's file first."""
    from cmav.evaluation import JudgedAccuracyMonitor, evaluate_i2s

    refusals = {"top_db": r"the sound classifier was trained on another front end than the data's \(top_db: 60\.0 -> None",
                "n_mels": r"the audio encoder takes features \(1, 64, 44\), the data's are \(1, 128, 44\)"}  # fmt: skip
    for name, message in refusals.items():
        path = judges[name]
        monitor = JudgedAccuracyMonitor(str(path), every_n_epochs=1)
        tr = trainer(max_epochs=1, limit_train_batches=1, callbacks=[monitor], default_root_dir=str(tmp_path / name))
        with pytest.raises(ValueError, match=rf"^{path}: {message}"):
            tr.fit(i2s(), dm_of(data))
        assert monitor.history == [] and not monitor.record_path(tmp_path / name).exists()
        with pytest.raises(ValueError, match=rf"^{path}: {message}"):  # what the monitor now says, evaluate said
            evaluate_i2s(i2s(), dm_of(data), str(path), n_diversity_draws=2, diversity_per_class=1,
                         griffin_lim_iters=2)  # fmt: skip
    monitor = JudgedAccuracyMonitor(str(judges["same"]), every_n_epochs=1)
    trainer(max_epochs=1, limit_train_batches=1, callbacks=[monitor], default_root_dir=str(tmp_path)).fit(i2s(), dm_of(data))
    assert len(monitor.history) == 1 and math.isfinite(monitor.history[0]["judged_acc"])


def test_the_condition_probe_gives_no_class_mean_where_the_encoder_predicts_no_class(data, judges):
    """Logits that are not finite were argmax-ed into class 0, and the predicted-class-mean row scored
    every such frame with class 0's mean condition: a plausible number for a broken head."""
    from cmav.evaluation.condition_probe import probe_i2s_conditions

    L.seed_everything(0, verbose=False)
    task = i2s()
    dm = dm_of(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer(max_steps=2, max_epochs=-1, limit_val_batches=0).fit(task, dm)
    finite = probe_i2s_conditions(task, dm, str(judges["same"]), k=2)["conditions"]
    assert all(math.isfinite(r["accuracy"]) for r in finite.values() if r["accuracy"] is not None)
    head = task.ema.module.encoder.classifier
    with torch.no_grad():
        for p in head.parameters():
            p.fill_(float("nan"))  # the condition (the encoder's features) stays finite; only its class is lost
    broken = probe_i2s_conditions(task, dm, str(judges["same"]), k=2)["conditions"]
    assert math.isnan(broken["predicted class mean"]["accuracy"]) and broken["predicted class mean"]["per_class"] == {}
    for name in ("own condition", "nearest train", "2 nearest mean"):  # these never read the head
        assert broken[name]["accuracy"] == finite[name]["accuracy"]


def test_a_frame_with_no_predicted_class_gets_no_class_mean_condition():
    from cmav.evaluation.condition_probe import format_probe, substitute_conditions
    from cmav.metrics.classification import NO_PREDICTION

    train = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    val = torch.tensor([[0.9, 0.2], [9.0, 9.0]])
    out = substitute_conditions(val, train, torch.tensor([0, 0, 1, 1]), predicted=torch.tensor([NO_PREDICTION, 0]), k=2)
    assert torch.isnan(out["predicted class mean"][0]).all()
    assert torch.allclose(out["predicted class mean"][1], torch.tensor([0.5, 0.0]))
    assert torch.equal(out["nearest train"], torch.tensor([[1.0, 0.0], [10.0, 10.0]]))  # no class read
    report = {"inference": {"inference_condition": "own", "conditions_from": "the data's train split"},
              "conditions": {"predicted class mean": {"split": "validation", "accuracy": float("nan"), "per_class": {}}}}
    assert "| predicted class mean | validation | n/a | - |" in format_probe(report)
