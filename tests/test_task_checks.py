"""What the training tasks refuse before they train or score: a pretrained classifier of other classes,
a checkpoint read through another front end, an S2I-C/I2S-C without its pair terms, an I2S on a front
end it cannot turn into sound (tiny paired data sets, CPU)."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import pytest
import torch

from cmav.data import AudioVisualDataModule
from cmav.data.errors import DataError
from cmav.tasks import ClassifierTask, I2STask, S2ITask, load_classifier, load_i2s, load_s2i

from fixtures import make_paired

TINY_ENC = {"n_blocks": 2, "base_channels": 4, "max_channels": 8, "feature_dim": 8, "dropout": 0.0}
TINY_G = {"base_channels": 8, "max_channels": 16, "cond_proj_dim": 8}
TINY_D = {"base_channels": 8, "max_channels": 16, "cond_proj_dim": 8}
SIZE = 16
MFCC = {"kind": "mfcc", "n_mfcc": 128}  # 1 x 128 x 44, as the default LMS
STFT = {"kind": "stft", "n_fft": 254}  # 1 x 128 x 44 too

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*no class has two train tracks.*"),
    pytest.mark.filterwarnings("ignore::cmav.tasks.pairs.NegativeSamplingWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def trainer(**kw) -> L.Trainer:
    d = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False, limit_val_batches=1, num_sanity_val_steps=0)  # fmt: skip
    d.update(kw)
    return L.Trainer(**d)


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> dict[str, Path]:
    """Two paired data sets that share two of their three classes, at other positions."""
    base = tmp_path_factory.mktemp("checks")
    return {"A": make_paired(base / "pA", classes=("dog", "drum", "harp")),
            "B": make_paired(base / "pB", classes=("cat", "dog", "drum")), "base": base}  # fmt: skip


def dm(root: Path, **kw) -> AudioVisualDataModule:
    return AudioVisualDataModule(str(root), layout="paired", image_size=SIZE, batch_size=4, progress=False, **kw)


def fit_and_save(task: L.LightningModule, datamodule, path: Path) -> str:
    L.seed_everything(0, verbose=False)
    tr = trainer(max_steps=2, limit_val_batches=0)
    tr.fit(task, datamodule)
    tr.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def classifiers(paired) -> dict[str, str]:
    """A sound classifier and an image classifier (I2S's encoder), both trained on (dog, drum, harp)."""
    base = paired["base"]
    audio = ClassifierTask(modality="audio", audio_encoder=TINY_ENC)
    image = ClassifierTask(modality="image", image_size=SIZE, image_model="encoder", image_encoder=TINY_ENC)
    return {"audio": fit_and_save(audio, dm(paired["A"]), base / "audio.ckpt"),
            "image": fit_and_save(image, dm(paired["A"]), base / "image.ckpt")}  # fmt: skip


def s2i(**kw) -> S2ITask:
    kw.setdefault("sample_every_n_steps", 0)
    return S2ITask(image_size=SIZE, generator=TINY_G, discriminator=TINY_D, encoder=TINY_ENC, **kw)


def i2s(**kw) -> I2STask:
    kw.setdefault("sample_every_n_steps", 0)
    return I2STask(image_size=SIZE, generator=TINY_G, discriminator=TINY_D, encoder=TINY_ENC, **kw)


# ---------------------------------------------------------------- a pretrained classifier's classes

CLASSES = re.escape("class_names ['dog', 'drum', 'harp']") + ".*" + re.escape("['cat', 'dog', 'drum']")


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_s2i_refuses_a_sound_classifier_trained_on_other_classes(paired, classifiers, mode):
    """Its argmax is an index into its own classes: class_mean and val/encoder_acc would read a "harp"
    prediction as this data's "drum"."""
    task = s2i(variant="s2i_c", encoder_mode=mode, audio_encoder_ckpt=classifiers["audio"],
               inference_condition="class_mean")  # fmt: skip
    with pytest.raises(DataError, match=rf"audio\.ckpt: .*{CLASSES}"):
        trainer(max_steps=2).fit(task, dm(paired["B"]))
    with pytest.raises(DataError, match=rf"audio\.ckpt: .*{CLASSES}"):
        trainer().validate(task, dm(paired["B"]))
    # its own classes train
    task = s2i(variant="s2i_c", encoder_mode=mode, audio_encoder_ckpt=classifiers["audio"],
               inference_condition="class_mean")  # fmt: skip
    trainer(max_steps=2, limit_val_batches=0).fit(task, dm(paired["A"]))


def test_i2s_refuses_an_image_classifier_trained_on_other_classes(paired, classifiers):
    task = i2s(variant="i2s_c", encoder_mode="frozen", image_encoder_ckpt=classifiers["image"],
               inference_condition="class_mean")  # fmt: skip
    with pytest.raises(DataError, match=rf"image\.ckpt: .*{CLASSES}"):
        trainer(max_steps=2).fit(task, dm(paired["B"]))
    task = i2s(variant="i2s_c", encoder_mode="frozen", image_encoder_ckpt=classifiers["image"])
    trainer(max_steps=2, limit_val_batches=0).fit(task, dm(paired["A"]))


# ---------------------------------------------------------------- the variant names the pair terms


@pytest.mark.parametrize("build,variant", [(s2i, "s2i_c"), (i2s, "i2s_c")])
def test_a_pair_aware_variant_with_both_pair_terms_off_is_refused(build, variant):
    """It would train the *_n model under the *_c name in every checkpoint and grid row."""
    kw = {"audio_shape": [1, 128, 44]} if variant.startswith("s2i") else {}
    pair = variant[:-2] + "_n"
    with pytest.raises(ValueError, match=rf"variant '{variant}' .*wrong_class_term and wrong_player_term are both "
                                         rf"off.*variant '{pair}'"):  # fmt: skip
        build(variant=variant, encoder_mode="scratch", wrong_class_term=False, wrong_player_term=False, **kw)
    # one term off is an ablation of the pair-aware model (experiments/ablations/*.yaml)
    assert not build(variant=variant, encoder_mode="scratch", wrong_class_term=False, **kw).wrong_class_term
    assert not build(variant=variant, encoder_mode="scratch", wrong_player_term=False, **kw).wrong_player_term


# ---------------------------------------------------------------- a checkpoint's front end


def _without(ckpt: str, path: Path, hyper: bool = True, datamodule: bool = False) -> str:
    """A copy of ``ckpt`` as an older cmav wrote it: without the front end in its hyper-parameters
    (``hyper``), and without its data module's record too (``datamodule``)."""
    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    if hyper:
        c["hyper_parameters"].pop("features", None)
    if datamodule:
        c["datamodule_hyper_parameters"].pop("features", None)
    torch.save(c, path)
    return str(path)


def test_classifier_checkpoint_is_refused_on_another_front_end_of_the_same_shape(paired, classifiers, tmp_path):
    """An LMS classifier given MFCC or STFT features of its input shape: refused when validated,
    resumed or loaded, naming the checkpoint and the settings that differ."""
    ckpt = classifiers["audio"]
    mfcc, stft = dm(paired["A"], features=MFCC), dm(paired["A"], features=STFT)
    fresh = lambda: ClassifierTask(modality="audio", audio_encoder=TINY_ENC)  # noqa: E731
    with pytest.raises(DataError, match=r"audio\.ckpt: .*kind: lms -> mfcc"):
        trainer().validate(fresh(), mfcc, ckpt_path=ckpt)
    with pytest.raises(DataError, match=r"audio\.ckpt: .*kind: lms -> stft"):
        trainer(max_epochs=5).fit(fresh(), stft, ckpt_path=ckpt)
    with pytest.raises(DataError, match=r"audio\.ckpt: .*kind: lms -> mfcc"):
        trainer().validate(load_classifier(ckpt), mfcc)
    with pytest.raises(DataError, match=r"audio\.ckpt: .*f_min: 0\.0 -> 30\.0"):
        trainer().validate(load_classifier(ckpt), dm(paired["A"], features={"f_min": 30.0}))
    # an older checkpoint: its data module's record
    old = _without(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(DataError, match=r"old\.ckpt: .*kind: lms -> mfcc"):
        trainer().validate(fresh(), mfcc, ckpt_path=old)
    with pytest.raises(DataError, match=r"old\.ckpt: .*kind: lms -> mfcc"):
        trainer().validate(load_classifier(old), mfcc)
    # no record at all: only the shape can be checked
    trainer().validate(load_classifier(_without(ckpt, tmp_path / "older.ckpt", datamodule=True)), mfcc)
    # a task fitted here (no checkpoint), on another front end: the error names that data
    task = fresh()
    trainer(max_steps=1, limit_val_batches=0).fit(task, dm(paired["A"]))
    assert task.hparams.features == dm(paired["A"]).features.to_dict()
    with pytest.raises(DataError, match=r"pA: .*kind: lms -> stft"):
        trainer().validate(task, stft)
    # its own front end passes, both ways
    trainer().validate(fresh(), dm(paired["A"]), ckpt_path=ckpt)
    trainer().validate(load_classifier(ckpt), dm(paired["A"]))


def test_s2i_checkpoint_is_refused_on_another_front_end_of_the_same_shape(paired, tmp_path):
    """A scratch S2I trained on LMS: no sound classifier checks its data, so the checkpoint's front end must."""
    ckpt = fit_and_save(s2i(variant="s2i_n", encoder_mode="scratch"), dm(paired["A"]), tmp_path / "s2i.ckpt")
    mfcc = dm(paired["A"], features=MFCC)
    with pytest.raises(DataError, match=r"s2i\.ckpt: .*kind: lms -> mfcc"):
        trainer(max_steps=8).fit(s2i(variant="s2i_n", encoder_mode="scratch"), mfcc, ckpt_path=ckpt)
    with pytest.raises(DataError, match=r"s2i\.ckpt: .*kind: lms -> mfcc"):
        trainer().validate(s2i(variant="s2i_n", encoder_mode="scratch"), mfcc, ckpt_path=ckpt)
    with pytest.raises(DataError, match=r"s2i\.ckpt: .*kind: lms -> mfcc"):
        trainer().validate(load_s2i(ckpt), mfcc)
    trainer().validate(load_s2i(ckpt), dm(paired["A"]))
    trainer().validate(s2i(variant="s2i_n", encoder_mode="scratch"), dm(paired["A"]), ckpt_path=ckpt)


def test_i2s_checkpoint_is_refused_on_another_lms_setting_of_the_same_shape(paired, tmp_path):
    ckpt = fit_and_save(i2s(variant="i2s_n", encoder_mode="scratch"), dm(paired["A"]), tmp_path / "i2s.ckpt")
    other = dm(paired["A"], features={"f_min": 30.0})
    with pytest.raises(DataError, match=r"i2s\.ckpt: .*f_min: 0\.0 -> 30\.0"):
        trainer(max_steps=8).fit(i2s(variant="i2s_n", encoder_mode="scratch"), other, ckpt_path=ckpt)
    with pytest.raises(DataError, match=r"i2s\.ckpt: .*f_min: 0\.0 -> 30\.0"):
        trainer().validate(load_i2s(ckpt), other)
    trainer().validate(load_i2s(ckpt), dm(paired["A"]))


# ---------------------------------------------------------------- I2S generates what it can invert


@pytest.mark.parametrize("features,named", [(MFCC, r"data\.features\.kind is 'mfcc'"),
                                            ({"center": False}, r"data\.features\.center is false")])  # fmt: skip
def test_i2s_refuses_a_front_end_it_cannot_evaluate_or_turn_into_sound(paired, features, named):
    with pytest.raises(ValueError, match=rf"I2S generates log-mel spectrograms.*{named}"):
        trainer(max_steps=2).fit(i2s(variant="i2s_n", encoder_mode="scratch"), dm(paired["A"], features=features))


# ---------------------------------------------------------------- a diverged model's accuracy


def _poison(module: torch.nn.Module) -> None:
    """Every weight NaN: a diverged model, whose argmax would be class 0 on every row."""
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(float("nan"))


def test_a_diverged_classifier_logs_nan_accuracy_not_the_share_of_class_0(paired):
    """ModelCheckpoint treats NaN as the worst value; an all-NaN row scored as class 0 would read as chance."""
    task = ClassifierTask(modality="audio", audio_encoder=TINY_ENC)
    tr = trainer(max_steps=1)
    tr.fit(task, dm(paired["A"]))
    assert all(torch.isfinite(tr.callback_metrics[k]) for k in ("train/acc", "val/acc", "val/balanced_acc"))
    _poison(task.model)
    tr = trainer(max_steps=2)
    tr.fit(task, dm(paired["A"]))
    assert all(torch.isnan(tr.callback_metrics[k]) for k in ("train/acc", "val/acc", "val/balanced_acc"))


def test_a_diverged_player_judge_logs_nan_on_its_held_out_tails(tmp_path):
    from fixtures import make_suburmp_tracks

    root = make_suburmp_tracks(tmp_path / "tracks", tracks=(0, 1), chunks=2)
    data = AudioVisualDataModule(str(root), image_size=SIZE, batch_size=8, progress=False, holdout_tail=0.5,
                                 holdout_gap_ms=0)  # fmt: skip
    judge = ClassifierTask(modality="image", target="track", image_size=SIZE, image_judge=TINY_ENC)
    trainer(max_steps=1, limit_val_batches=0).fit(judge, data)
    tr = trainer()
    tr.validate(judge, data, verbose=False)
    assert torch.isfinite(tr.callback_metrics["val/acc"])
    _poison(judge.model)
    tr = trainer()
    tr.validate(judge, data, verbose=False)
    assert torch.isnan(tr.callback_metrics["val/acc"]) and torch.isnan(tr.callback_metrics["val/balanced_acc"])


def test_a_diverged_gan_encoder_logs_nan_encoder_accuracy(paired):
    task = s2i(variant="s2i_n", encoder_mode="scratch")
    trainer(max_steps=2, limit_val_batches=0).fit(task, dm(paired["A"]))
    tr = trainer()
    tr.validate(task, dm(paired["A"]), verbose=False)
    assert torch.isfinite(tr.callback_metrics["val/encoder_acc"])
    _poison(task.model.encoder.classifier)
    tr = trainer()
    tr.validate(task, dm(paired["A"]), verbose=False)
    assert torch.isnan(tr.callback_metrics["val/encoder_acc"])


def test_retrieval_batch_accuracy_is_nan_for_nan_embeddings_not_for_masked_negatives():
    from cmav.tasks.retrieval import RetrievalTask

    task = RetrievalTask(input_shape=[1, 128, 44], image_size=32, audio_encoder=TINY_ENC, image_encoder=TINY_ENC,
                         ignore_negatives="same_class")  # fmt: skip
    a = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    labels, tracks = torch.tensor([0, 0, 1, 1]), torch.zeros(4, dtype=torch.long)
    _, logs = task.contrastive_loss(a, a, labels, tracks)  # same-class keys masked to -inf: still a figure
    assert logs["batch_a2i_acc"] == 1.0
    _, logs = task.contrastive_loss(a, a)
    assert logs["batch_a2i_acc"] == 1.0
    nan = torch.full_like(a, float("nan"))
    for lab, tr in ((labels, tracks), (None, None)):
        _, logs = task.contrastive_loss(nan, nan, lab, tr)
        assert torch.isnan(logs["batch_a2i_acc"])


# ---------------------------------------------------------------- retrieval embeddings


def test_retrieval_embed_hands_every_submodule_its_own_mode_back():
    """A part kept in eval mode under a task in train mode (a frozen encoder) stays in eval mode."""
    from cmav.tasks.retrieval import RetrievalTask

    task = RetrievalTask(input_shape=[1, 128, 44], image_size=32, audio_encoder=TINY_ENC, image_encoder=TINY_ENC)
    task.train()
    task.model.audio_encoder.eval()
    modes = {name: m.training for name, m in task.named_modules()}
    a, v = task.embed(torch.randn(2, 1, 128, 44), torch.rand(2, 3, 32, 32) * 2 - 1)
    assert a is not None and v is not None
    assert {name: m.training for name, m in task.named_modules()} == modes


# ---------------------------------------------------------------- the audio token's sound classifier


def test_audio_token_refuses_a_sound_classifier_trained_on_other_classes(paired, classifiers, tmp_path):
    from cmav.diffusion import PixelDiffusionConfig, build_pixel_diffusion
    from cmav.tasks.audio_token import AudioTokenTask

    tiny = PixelDiffusionConfig(image_size=16, block_out_channels=(8, 16), layers_per_block=1, attention_heads=2,
                                norm_num_groups=8, text_width=16, text_layers=2, text_heads=2, max_length=10)  # fmt: skip
    pipe = build_pixel_diffusion([f"a photo of a {c} player" for c in ("cat", "dog", "drum", "harp")], tiny)
    folder = pipe.freeze().save(tmp_path / "pipe")
    task = AudioTokenTask(pipeline=str(folder), audio_encoder_ckpt=classifiers["audio"], image_size=SIZE)
    with pytest.raises(DataError, match=rf"audio\.ckpt: .*{CLASSES}"):
        trainer(max_steps=1).fit(task, dm(paired["B"]))


def test_a_player_judge_without_held_out_frames_is_told_the_smallest_holdout_tail_that_works(tmp_path):
    """Tracks of 11 chunks 100 ms apart with the default 500 ms gap: a tail of 0.3 (4 chunks) holds
    none out, and "raise holdout_tail" alone sent users to 0.3 again; the refusal names 0.37 (5 of 11,
    the first chunk 500 ms after the last trained one), which works. Tracks of 2 chunks cannot."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from fixtures import make_suburmp_tracks

    root = make_suburmp_tracks(tmp_path / "tracks", tracks=(0,), chunks=11)

    def data(tail: float) -> AudioVisualDataModule:
        return AudioVisualDataModule(str(root), image_size=SIZE, batch_size=64, progress=False, holdout_tail=tail)

    judge = ClassifierTask(modality="image", target="track", image_size=SIZE, image_judge=TINY_ENC)
    watch = ModelCheckpoint(dirpath=tmp_path / "ck", monitor="val/balanced_acc", mode="max")
    with pytest.raises(ValueError, match=r"data\.holdout_tail 0\.3 leaves no held-out chunk .*: data\.holdout_tail "
                                         r"0\.37 or more holds one out of every train track at holdout_gap_ms 500 "
                                         r"\(its tracks of 11 chunks need it\)"):  # fmt: skip
        trainer(max_steps=1, enable_checkpointing=True, callbacks=[watch]).fit(judge, data(0.3))
    from cmav.tasks.classifier import smallest_holdout_tail

    enough = data(0.37)
    enough.setup("fit")
    assert len(enough.train_holdout) == 13 and smallest_holdout_tail(enough) == (0.37, 11)
    short = AudioVisualDataModule(str(make_suburmp_tracks(tmp_path / "short", tracks=(0,), chunks=2)), image_size=SIZE,
                                  progress=False, holdout_tail=0.5)  # fmt: skip
    short.setup("fit")
    assert smallest_holdout_tail(short) == (None, 2)
