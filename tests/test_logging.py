"""What the tasks write to TensorBoard: read back from the event files of tiny runs (CPU)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.plugins.hparams import plugin_data_pb2

from cmav.cli.train import _setting_differences
from cmav.data import AudioVisualDataModule
from cmav.tasks import ClassifierTask, I2STask, S2ITask
from cmav.tasks.common import plain
from cmav.tasks.retrieval import RetrievalTask

from fixtures import make_suburmp_tracks

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
TINY_ENC = {"n_blocks": 4, "base_channels": 8, "dropout": 0.0}  # not the default width: the loaded one shows
TINY_G = {"base_channels": 8, "cond_proj_dim": 16}
TINY_D = {"base_channels": 8, "cond_proj_dim": 16}
AMPLITUDE = 0.3  # of the fixture's sines (fixtures.write_wav)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore::cmav.tasks.pairs.NegativeSamplingWarning"),
    pytest.mark.filterwarnings("ignore:localisation metrics skipped"),  # the fixture has no instrument masks
    pytest.mark.usefixtures("one_torch_thread"),
]


def trainer(logger, **kw) -> L.Trainer:
    d = dict(accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1)  # fmt: skip
    d.update(kw)
    return L.Trainer(**d)


def tb(save_dir: Path, name: str, **kw) -> TensorBoardLogger:
    """The experiments' logger: no placeholder hp_metric."""
    kw.setdefault("default_hp_metric", False)
    return TensorBoardLogger(str(save_dir), name=name, **kw)


def events(log_dir: str | Path) -> EventAccumulator:
    ea = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "audio": 0, "tensors": 0})
    ea.Reload()
    return ea


def hparams_tab(ea: EventAccumulator) -> tuple[list[str], dict]:
    """The metric columns and the hyper-parameters of a run's HPARAMS tab (what TensorBoard reads)."""
    content = ea.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in session.hparams.items()}
    return [m.name.tag for m in experiment.metric_infos], values


def clips(ea: EventAccumulator, tag: str) -> list[np.ndarray]:
    """The samples of every clip logged under ``tag`` (TensorBoard stores 16-bit WAV)."""
    import io
    import wave

    out = []
    for e in ea.Audio(tag):
        with wave.open(io.BytesIO(e.encoded_audio_string)) as w:
            out.append(np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64) / 32767)
    return out


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


# ---------------------------------------------------------------- tiny runs shared by the module


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("logging")
    root = make_suburmp_tracks(base / "suburmp", tracks=(0, 1), chunks=2, noise=0.01)
    return {"root": str(root), "cache": str(base / "cache"), "base": base}


def dm_of(data: dict, **kw) -> AudioVisualDataModule:
    kw.setdefault("batch_size", 8)
    return AudioVisualDataModule(data["root"], image_size=SIZE, cache_dir=data["cache"], progress=False, **kw)


@pytest.fixture(scope="module")
def classifier(data) -> dict:
    """A sound classifier fitted for one epoch, then resumed for a second into the same log folder."""
    L.seed_everything(0, verbose=False)
    base = data["base"]
    task = ClassifierTask(modality="audio", image_size=SIZE, audio_encoder=TINY_ENC)
    first = trainer(tb(base, "clf"), max_epochs=1)
    first.fit(task, dm_of(data))
    ckpt = base / "clf.ckpt"
    first.save_checkpoint(ckpt)
    again = trainer(tb(base, "clf", version=0), max_epochs=2)  # `cmav fit --ckpt_path last` logs into its folder
    again.fit(ClassifierTask(modality="audio", image_size=SIZE, audio_encoder=TINY_ENC), dm_of(data), ckpt_path=str(ckpt))
    return {"ckpt": str(ckpt), "log_dir": Path(first.logger.log_dir), "task": task}


@pytest.fixture(scope="module")
def s2i_run(data, classifier) -> dict:
    """S2I-C on the frozen sound classifier: three batches (sheets every two), then the test loop."""
    L.seed_everything(0, verbose=False)
    model = S2ITask(variant="s2i_c", encoder_mode="frozen", audio_encoder_ckpt=classifier["ckpt"], image_size=SIZE,
                    generator=TINY_G, discriminator=TINY_D, sample_every_n_steps=2)  # fmt: skip
    logger = tb(data["base"], "s2i")
    tr = trainer(logger, max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    tr.fit(model, dm_of(data))
    ckpt = data["base"] / "s2i.ckpt"
    tr.save_checkpoint(ckpt)
    tested = trainer(False, limit_test_batches=1).test(model, dm_of(data), verbose=False)[0]
    return {"model": model, "log_dir": Path(logger.log_dir), "ckpt": ckpt, "tested": tested}


@pytest.fixture(scope="module")
def retrieval_run(data) -> dict:
    """A global retrieval model, one epoch of two batches with its default logger (hp_metric on), then
    the test loop through a logger of its own."""
    L.seed_everything(0, verbose=False)
    task = RetrievalTask(image_size=SIZE, audio_encoder={**TINY_ENC, "n_blocks": 3}, image_encoder={**TINY_ENC, "n_blocks": 3},
                         head={"embed_dim": 16, "hidden_dim": 32})  # fmt: skip
    logger = TensorBoardLogger(str(data["base"]), name="ret")  # Lightning's default: hp_metric=-1
    watch = ModelCheckpoint(dirpath=str(data["base"] / "ret_ckpt"), monitor="val/i2a_instance_MRR", mode="max")
    tr = trainer(logger, max_epochs=2, limit_train_batches=2, enable_checkpointing=True, callbacks=[watch])
    tr.fit(task, dm_of(data))
    test_logger = tb(data["base"], "ret_test")
    tested = trainer(test_logger).test(task, dm_of(data), verbose=False)[0]
    return {"log_dir": Path(logger.log_dir), "test_dir": Path(test_logger.log_dir), "tested": tested}


# ---------------------------------------------------------------- 1. the HPARAMS tab


def test_hparams_tab_compares_runs_by_their_validation_metrics(classifier, s2i_run, retrieval_run):
    ea = events(classifier["log_dir"])
    columns, values = hparams_tab(ea)
    assert {"val/balanced_acc", "val/acc", "val/loss"} <= set(columns)
    assert "hp_metric" not in ea.Tags()["scalars"] and "hp_metric" not in columns
    assert values["modality"] == "audio" and values["audio_encoder/base_channels"] == 8
    assert values["batch_size"] == 8  # the data's settings too, as Lightning merges them

    columns, values = hparams_tab(events(s2i_run["log_dir"]))
    assert {"val/l1", "val/encoder_acc"} <= set(columns) and values["variant"] == "s2i_c"
    # Lightning's default logger writes hp_metric too, after the task's: TensorBoard shows the first
    columns, _ = hparams_tab(events(retrieval_run["log_dir"]))
    assert {"val/a2i_class_mAP", "val/loss", "val/i2a_instance_MRR"} <= set(columns)  # the monitored one too
    assert "hp_metric" not in columns


def test_a_resumed_run_does_not_log_its_hyper_parameters_again(classifier):
    files = sorted(classifier["log_dir"].glob("events.out.tfevents*"))
    assert len(files) == 2  # the first fit and the resumed one
    per_file = [sum(v.tag == "_hparams_/experiment" for e in EventFileLoader(str(f)).Load() for v in e.summary.value)
                for f in files]  # fmt: skip
    assert per_file == [1, 0]


def test_experiment_loggers_write_no_placeholder_hp_metric():
    for path in sorted((REPO / "experiments").glob("*.yaml")):
        logger = (yaml.safe_load(path.read_text()).get("trainer") or {}).get("logger")
        if isinstance(logger, dict) and logger.get("class_path", "").endswith("TensorBoardLogger"):
            assert logger["init_args"].get("default_hp_metric") is False, path.name


# ---------------------------------------------------------------- 2. the encoder a run really used


def test_the_loaded_encoder_is_logged_and_resuming_still_compares_the_task_settings(classifier, s2i_run):
    model = s2i_run["model"]
    loaded = plain(classifier["task"].audio_encoder_config)
    assert loaded["base_channels"] == 8 and model.hparams.encoder["base_channels"] != 8  # the default: unused
    saved = yaml.safe_load((s2i_run["log_dir"] / "hparams.yaml").read_text())
    assert saved["encoder_loaded"] == loaded
    _, values = hparams_tab(events(s2i_run["log_dir"]))
    assert values["encoder_loaded/base_channels"] == 8
    # the checkpoint's settings are the task's arguments: a resume of the same config is not refused
    ckpt = torch.load(s2i_run["ckpt"], weights_only=False)
    again = S2ITask(variant="s2i_c", encoder_mode="frozen", audio_encoder_ckpt=classifier["ckpt"], image_size=SIZE,
                    generator=TINY_G, discriminator=TINY_D, sample_every_n_steps=2)  # fmt: skip
    assert _setting_differences(ckpt["hyper_parameters"], dict(again.hparams)) == []
    assert "encoder_loaded" not in ckpt["hyper_parameters"]


# ---------------------------------------------------------------- 3. and 4. the inputs


def test_input_pictures_name_the_front_end_and_the_input_sound_is_the_real_clip(data, s2i_run):
    ea = events(s2i_run["log_dir"])
    images, audio = ea.Tags()["images"], ea.Tags()["audio"]
    assert "inputs/lms/violin" in images and "inputs/griffin_lim/violin" not in audio
    (clip,) = clips(ea, "inputs/audio/violin")
    # the middle validation chunk of the class, mixed down and resampled to the front end's rate as the cache does
    samples, rate = sf.read(sorted(Path(data["root"], "chunk", "validation", "violin").glob("*.wav"))[1])
    mono = torch.from_numpy(samples.mean(1)).float()
    real = torchaudio.functional.resample(mono, rate, 22050).numpy()
    assert len(clip) == len(real) and np.abs(clip - real).max() < 1e-3  # not re-synthesised, not peak-normalised
    assert abs(float(np.abs(clip).max()) - AMPLITUDE) < 0.05


def test_a_waveform_front_end_logs_its_input_as_sound(data):
    L.seed_everything(0, verbose=False)
    model = S2ITask(variant="ae", encoder_mode="scratch", image_size=SIZE, generator=TINY_G,
                    encoder=TINY_ENC, sample_every_n_steps=1)  # fmt: skip
    logger = tb(data["base"], "s2i_wave")
    trainer(logger, max_steps=1, limit_val_batches=0).fit(model, dm_of(data, features={"kind": "waveform"}))
    ea = events(logger.log_dir)
    assert not [t for t in ea.Tags()["images"] if t.startswith("inputs/")]  # no 1 x 11,025 picture strip
    (clip,) = clips(ea, "inputs/audio/violin")
    assert ea.Audio("inputs/audio/violin")[0].sample_rate == 22050 and len(clip) == 11025
    assert abs(float(np.abs(clip).max()) - AMPLITUDE) < 0.05


def test_i2s_renders_real_and_generated_spectrograms_at_one_gain(data):
    L.seed_everything(0, verbose=False)
    model = I2STask(variant="i2s_c", encoder_mode="scratch", image_size=SIZE, generator=TINY_G, discriminator=TINY_D,
                    encoder=TINY_ENC, sample_every_n_steps=1)  # fmt: skip
    logger = tb(data["base"], "i2s")
    tr = trainer(logger, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    tr.fit(model, dm_of(data))
    ea = events(logger.log_dir)
    for name in ("violin", "tuba"):
        (real,) = clips(ea, f"inputs/audio/{name}")
        (rendered,) = clips(ea, f"inputs/griffin_lim/{name}")
        assert abs(float(np.abs(real).max()) - AMPLITUDE) < 0.05
        assert 0.7 < rms(rendered) / rms(real) < 1.4  # the real LMS's level, not a peak of 1
    peaks = [float(np.abs(c).max()) for t in ea.Tags()["audio"] if t.startswith("samples/audio/") for c in clips(ea, t)]
    assert peaks and not all(p > 0.99 for p in peaks)  # no clip scaled to full scale on its own


# ---------------------------------------------------------------- 5. steps


def test_pictures_are_logged_at_the_step_of_the_scalars_beside_them(s2i_run, retrieval_run):
    ea = events(retrieval_run["log_dir"])
    val_steps = [e.step for e in ea.Scalars("val/loss")]
    assert len(val_steps) == 2 and [e.step for e in ea.Images("heatmaps/val")] == val_steps
    ea = events(s2i_run["log_dir"])
    train_steps = {e.step for e in ea.Scalars("train/d_loss")}
    sheets = [e.step for e in ea.Images("samples/ema")]
    assert sheets == [0, 2] and set(sheets) <= train_steps  # GAN iterations, not global_step (2 per batch)


# ---------------------------------------------------------------- 6. the test loop


def test_the_test_loop_logs_under_test(s2i_run, retrieval_run):
    assert "test/l1" in s2i_run["tested"] and not [k for k in s2i_run["tested"] if k.startswith("val/")]
    tested = retrieval_run["tested"]
    assert "test/a2i_class_mAP" in tested and "test/loss" in tested
    assert not [k for k in tested if k.startswith("val/")]
    ea = events(retrieval_run["test_dir"])
    assert "heatmaps/test" in ea.Tags()["images"] and "heatmaps/val" not in ea.Tags()["images"]


# ---------------------------------------------------------------- 7. training loss names


def test_training_loss_has_a_plain_tag_and_no_duplicate(classifier, retrieval_run):
    for log_dir in (classifier["log_dir"], retrieval_run["log_dir"]):
        scalars = events(log_dir).Tags()["scalars"]
        assert {"train/loss", "train/loss_epoch"} <= set(scalars), log_dir
        assert "train/loss_step" not in scalars and "train/nce" not in scalars, log_dir
    scalars = events(retrieval_run["log_dir"]).Scalars("train/loss")
    assert len(scalars) == 4 and all(math.isfinite(e.value) for e in scalars)


# ---------------------------------------------------------------- 8. the GAN YAMLs' step note


@pytest.mark.parametrize("name", ["s2i_c", "s2i_n", "i2s_c", "i2s_n"])
def test_gan_yamls_say_what_the_tensorboard_step_and_the_checkpoint_step_count(name):
    header = "".join(line for line in (REPO / "experiments" / f"{name}.yaml").read_text().splitlines(True)
                     if line.startswith("#"))  # fmt: skip
    assert re.search(r"TensorBoard's step axis", header) and "{step}" in header, name
