"""Evaluation of an image-to-sound generator against a frozen audio judge.

Every figure says its split (**validation**: unseen players):

* judged accuracy of ONE generated LMS per validation frame (fixed noise, EMA generator) under the
  audio judge (a sound classifier trained on real LMS, separate from anything I2S trained with),
  per class and as a confusion matrix, beside the judge's accuracy on the real validation LMS;
* FID/KID between generated and real validation LMS in the audio judge's penultimate features
  (**judge-feature FID, not Inception FID**);
* diversity: mean pairwise judge-feature distance over noise draws of the same frame;
* the round trip: the generated LMS -> Griffin-Lim audio -> LMS again -> the audio judge; does the
  sound survive inversion? Reported for the real LMS too (the inversion's own loss); ``kept_share``
  is the share of the items judged right that stay right, ``kept_fraction`` the ratio of the two
  accuracies (which can pass 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cmav.evaluation.paired import (
    GeneratorFn,
    check_judge_unseen,
    front_end_refusal,
    generate_outputs,
    generator_fn,
    note_on,
    save_scores,
    score_generator,
    scored_inputs,
)
from cmav.features.logmel import LogMelConfig
from cmav.metrics import JudgeFeatureExtractor, round_trip_accuracy
from cmav.metrics.serialise import json_safe
from cmav.tasks.common import check_encoder_input


def make_i2s_fn(task_or_ckpt: Any) -> tuple[GeneratorFn, int, dict]:
    """``(fn(frames, z) -> LMS in dB, z_dim, info)`` from an I2STask, its checkpoint or a callable
    (which must carry ``z_dim``; default 10)."""
    from cmav.tasks.i2s import I2STask, load_i2s

    return generator_fn(task_or_ckpt, I2STask, load_i2s)


def audio_judge(judge_or_ckpt: Any):
    """A sound classifier (``modality='audio', target='label'``) as a judge, in eval mode."""
    from cmav.tasks.classifier import ClassifierTask, load_classifier

    judge = load_classifier(judge_or_ckpt) if isinstance(judge_or_ckpt, (str, Path)) else judge_or_ckpt
    if not isinstance(judge, ClassifierTask) or judge.hparams.modality != "audio" or judge.hparams.target != "label":
        raise ValueError("the audio judge must be a sound ClassifierTask (modality='audio', target='label') "
                         "or its checkpoint")  # fmt: skip
    return judge.eval()


def check_i2s_fits(task_or_fn: Any, fn: GeneratorFn, z_dim: int, datamodule, source: str) -> None:
    """Refuse data an I2S generator was not made for: LMS of another shape than it generates, or of
    the same shape from another front-end setting than the one stored with the model (when it
    stores one). Judge, FID/KID and round trip would otherwise score outputs of the wrong shape or
    scale, or fail deep in the inversion. ``source`` names the checkpoint or model. The mirror of
    :func:`~cmav.evaluation.s2i.check_s2i_fits` (both refuse through
    :func:`~cmav.evaluation.paired.front_end_refusal`)."""
    from cmav.tasks.i2s import I2STask

    val = datamodule.val.tensors
    want = tuple(val.audio.shape[1:])
    if isinstance(task_or_fn, I2STask):
        task_or_fn.model  # noqa: B018  (an unbuilt model says so, not a TypeError from its missing shape)
        made, trained = task_or_fn.target_shape(), task_or_fn.trained_features
    else:  # a plain callable says nothing of its front end: its output shape is all there is to check
        made = tuple(generate_outputs(fn, val.images[:1].float().div(127.5).sub(1.0), z_dim).shape[1:])
        trained = None
    front_end_refusal(source, "I2S", "generates", made, want, trained, datamodule.features,
                      "its LMS would be judged and inverted on a scale they are not on")  # fmt: skip


@torch.no_grad()
def evaluate_i2s(
    task_or_ckpt: Any,
    datamodule,
    audio_judge_ckpt: Any,
    out_dir: str | Path | None = None,
    n_diversity_draws: int = 8,
    seed: int = 0,
    diversity_per_class: int = 4,
    batch_size: int = 64,
    griffin_lim_iters: int = 32,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    ckpt: str | Path | None = None,
) -> dict:
    """Score an image-to-sound generator (see the module docstring). ``ckpt``: the checkpoint a task
    given was loaded from, named in the result. Returns a JSON-ready dict, whose ``inputs`` name the
    checkpoint and the audio judge (path and sha256), the data and the front end; with ``out_dir``
    also ``metrics.json`` and ``confusion_generated.png`` / ``confusion_real.png``."""
    from cmav.tasks.i2s import load_i2s

    if isinstance(task_or_ckpt, (str, Path)):
        ckpt = task_or_ckpt
    source = str(ckpt) if ckpt is not None else "the I2S model given"
    if isinstance(task_or_ckpt, (str, Path)):
        task_or_ckpt = load_i2s(task_or_ckpt)
    fn, z_dim, info = make_i2s_fn(task_or_ckpt)
    datamodule.setup("validate")
    judge = audio_judge(audio_judge_ckpt)
    names = list(judge.hparams.class_names)
    if names != list(datamodule.class_names):
        raise ValueError(f"the audio judge's classes {names} differ from the data's {datamodule.class_names}")
    # a judge trained on another front-end setting of the same shape would score on a scale it never saw
    check_encoder_input(judge.model.input_shape, judge.trained_features, datamodule, str(audio_judge_ckpt))
    features = datamodule.features
    if not isinstance(features, LogMelConfig):
        raise ValueError(f"I2S evaluation needs the LMS front end (Griffin-Lim round trip), got kind={features.kind!r}")
    check_i2s_fits(task_or_ckpt, fn, z_dim, datamodule, source)
    # a judge of the same root never trained on the validation players; of another root, nobody can tell
    judge_note = check_judge_unseen(audio_judge_ckpt, datamodule, "audio judge")
    val = datamodule.val.tensors
    labels = val.labels.long()
    frames = val.images.float().div(127.5).sub(1.0)
    real = val.audio.float()
    extractor = JudgeFeatureExtractor(judge.model, input_range=(0.0, 1.0), judge_range=(0.0, 1.0), name="audio_judge")
    scores, gen_report, real_report, fake = score_generator(
        fn, z_dim, frames, real, labels, judge, names, extractor, what="spectrogram", seed=seed,
        batch_size=batch_size, n_diversity_draws=n_diversity_draws, diversity_per_class=diversity_per_class,
        kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, judge_name="audio judge",
    )  # fmt: skip
    rt_fake = round_trip_accuracy(judge, fake, labels, names, features, griffin_lim_iters, batch_size)
    rt_real = round_trip_accuracy(judge, real, labels, names, features, griffin_lim_iters, batch_size)
    judged = scores["judged"]["accuracy"]
    # of the items judged right, the share still right after the round trip (kept_fraction, the
    # ratio of the two accuracies, also counts items the round trip turns right, and can pass 1)
    right = torch.from_numpy(gen_report.predictions) == labels
    still = torch.from_numpy(rt_fake.predictions) == labels
    kept_share = float((right & still).sum() / right.sum()) if bool(right.any()) else None
    result: dict[str, Any] = {"generator": info, "seed": seed, **scores}
    result["inputs"] = scored_inputs(datamodule, ckpt, audio_judge=audio_judge_ckpt)
    for section in ("judged", "judge_on_real"):
        note_on(result[section], judge_note)
    result["notes"] = [*scores["notes"], *([judge_note] if judge_note else [])]
    result["round_trip"] = {
        "split": "validation",
        "accuracy": rt_fake.accuracy,
        "balanced_accuracy": rt_fake.balanced_accuracy,
        "kept_fraction": rt_fake.accuracy / judged if judged else None,
        "kept_share": kept_share,
        "real_accuracy": rt_real.accuracy,
        "griffin_lim_iters": griffin_lim_iters,
        "note": "the audio judge on LMS recomputed from the Griffin-Lim audio of each generated LMS; kept_fraction "
        "= round-trip accuracy / judged accuracy, a ratio of two accuracies (above 1 when the round trip turns more "
        "items right than wrong); kept_share = of the items judged right, the share still right after the round "
        "trip; real_accuracy = the same round trip on the real LMS",
    }
    if out_dir is not None:
        return save_scores(result, out_dir, gen_report, real_report, names, "Audio judge", "spectrograms")
    return json_safe(result)


__all__ = ["audio_judge", "check_i2s_fits", "evaluate_i2s", "make_i2s_fn"]
