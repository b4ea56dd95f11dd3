"""Evaluation of a sound-to-image generator against frozen judges.

Every figure says which split it comes from:

* **validation** (unseen players): judged accuracy of ONE generated image per chunk (fixed noise
  from ``seed``, EMA generator) under the image judge, beside the judge's own accuracy on the real
  validation frames (its ceiling); judge-feature FID/KID generated vs real validation frames
  (**judge-feature FID, not Inception FID**: comparable only within this project); diversity over
  ``n_diversity_draws`` noise draws (mean pairwise judge-feature distance) on a class-balanced subset.
* **train_holdout** (the time-held-out end of every train track; players the player judge knows,
  frames nobody trained on): player/pose consistency = how often the player judge names the
  audio's own player (class + track) for a generated frame, beside its accuracy on the real frames.

The generator is anything with ``fn(audio (N,1,M,T), z (N,z_dim)) -> images (N,3,S,S) in [-1,1]``:
an :class:`~cmav.tasks.S2ITask` (its EMA generator), a checkpoint path, or a plain callable (tests
pass a "perfect" or a constant generator this way).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cmav.metrics import (
    JudgeFeatureExtractor,
    classification_report,
    diversity_over_noise,
    fid_kid,
    judged_accuracy,
    plot_confusion_matrix,
)
from cmav.metrics.serialise import json_safe

GeneratorFn = Callable[[Tensor, Tensor], Tensor]
FID_LABEL = "judge-feature FID, not Inception FID"


def make_generator_fn(task_or_ckpt: Any) -> tuple[GeneratorFn, int, dict]:
    """``(fn(audio, z) -> images, z_dim, info)`` from an S2ITask, its checkpoint path or a callable.

    A callable must carry ``z_dim`` (default 10)."""
    from cmav.tasks.s2i import S2ITask, load_s2i

    if isinstance(task_or_ckpt, (str, Path)):
        task_or_ckpt = load_s2i(task_or_ckpt)
    if isinstance(task_or_ckpt, S2ITask):
        task = task_or_ckpt

        def fn(audio: Tensor, z: Tensor) -> Tensor:
            return task.generate(audio, z, use_ema=True).float().cpu()

        info = {"variant": task.hparams.variant, "iteration": int(task.iteration), "generator": "ema"}
        return fn, task.z_dim, info
    if callable(task_or_ckpt):
        return task_or_ckpt, int(getattr(task_or_ckpt, "z_dim", 10)), {"generator": "callable"}
    raise TypeError(f"expected an S2ITask, a checkpoint path or a callable, got {type(task_or_ckpt).__name__}")


def _judge(judge_or_ckpt: Any):
    from cmav.tasks.classifier import ClassifierTask, load_classifier

    judge = load_classifier(judge_or_ckpt) if isinstance(judge_or_ckpt, (str, Path)) else judge_or_ckpt
    if not isinstance(judge, ClassifierTask) or judge.hparams.modality != "image":
        raise ValueError("a judge must be an image ClassifierTask (or its checkpoint)")
    return judge.eval()


@torch.no_grad()
def generate_images(fn: GeneratorFn, audio: Tensor, z_dim: int, seed: int = 0, batch_size: int = 64) -> Tensor:
    """One image per audio item, float [-1, 1] on CPU; the noise is fixed by ``seed``."""
    z = torch.randn(audio.shape[0], z_dim, generator=torch.Generator().manual_seed(seed))
    out = [fn(audio[i : i + batch_size].float(), z[i : i + batch_size]).float().cpu()
           for i in range(0, audio.shape[0], batch_size)]  # fmt: skip
    return torch.cat(out) if out else torch.zeros(0)


def _images(tensors, index: Tensor | None = None) -> Tensor:
    x = tensors.images if index is None else tensors.images[index]
    return x.float().div(127.5).sub(1.0)


def _subset_per_class(labels: Tensor, n_classes: int, per_class: int) -> Tensor:
    """Up to ``per_class`` items of every class, evenly spaced over the class's items."""
    rows = []
    for c in range(n_classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) == 0:
            continue
        take = torch.linspace(0, len(idx) - 1, min(per_class, len(idx))).round().long().unique()
        rows.append(idx[take])
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def evaluate_s2i(
    task_or_ckpt: Any,
    datamodule,
    image_judge_ckpt: Any,
    player_judge_ckpt: Any = None,
    out_dir: str | Path | None = None,
    n_diversity_draws: int = 8,
    seed: int = 0,
    diversity_per_class: int = 4,
    batch_size: int = 64,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
) -> dict:
    """Score a sound-to-image generator; see the module docstring for what and on which split.

    ``image_judge_ckpt`` / ``player_judge_ckpt``: :class:`ClassifierTask` checkpoints (or the tasks
    themselves). Returns a JSON-ready dict; with ``out_dir`` also writes ``metrics.json`` and
    ``confusion_generated.png`` / ``confusion_real.png`` there.
    """
    fn, z_dim, info = make_generator_fn(task_or_ckpt)
    datamodule.setup("validate")
    judge = _judge(image_judge_ckpt)
    names = list(judge.hparams.class_names)
    if names != list(datamodule.class_names):
        raise ValueError(f"the image judge's classes {names} differ from the data's {datamodule.class_names}")
    val = datamodule.val.tensors
    labels = val.labels.long()
    real = _images(val)

    fake = generate_images(fn, val.audio, z_dim, seed=seed, batch_size=batch_size)
    gen_report = judged_accuracy(judge, fake, labels, names, batch_size=batch_size)
    real_report = judged_accuracy(judge, real, labels, names, batch_size=batch_size)
    result: dict[str, Any] = {
        "generator": info,
        "seed": seed,
        "judged": {
            "split": "validation",
            "n": gen_report.n,
            "accuracy": gen_report.accuracy,
            "balanced_accuracy": gen_report.balanced_accuracy,
            "per_class": gen_report.per_class,
            "note": "one generated image per validation chunk (fixed noise), classified by the image judge",
        },
        "judge_on_real": {
            "split": "validation",
            "n": real_report.n,
            "accuracy": real_report.accuracy,
            "balanced_accuracy": real_report.balanced_accuracy,
            "per_class": real_report.per_class,
            "note": "the image judge on the real validation frames: the ceiling for judged accuracy",
        },
    }

    extractor = JudgeFeatureExtractor(judge.model, name="image_judge")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*rank-deficient.*")
        warnings.filterwarnings("ignore", message=".*KID subset_size.*")
        fk = fid_kid(real, fake, extractor, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                     batch_size=batch_size, seed=seed)  # fmt: skip
    result["fid_kid"] = {
        "split": "validation",
        "label": FID_LABEL,
        "fid": fk["fid"],
        "kid_mean": fk["kid_mean"],
        "kid_std": fk["kid_std"],
        "n_real": fk["n_real"],
        "n_fake": fk["n_fake"],
        "feature": fk["feature"],
        "note": fk["note"],
    }

    sub = _subset_per_class(labels, len(names), diversity_per_class)
    cond = val.audio[sub].float()
    div = diversity_over_noise(
        lambda a: torch.cat([fn(a[i : i + batch_size], torch.randn(len(a[i : i + batch_size]), z_dim))
                             for i in range(0, len(a), batch_size)]),
        cond, n_draws=n_diversity_draws, feature_fn=extractor, seed=seed,
    )  # fmt: skip
    result["diversity"] = {
        "split": "validation",
        "value": div,
        "n_conditions": int(len(sub)),
        "n_draws": n_diversity_draws,
        "note": "mean pairwise image-judge-feature L2 distance between noise draws of the same audio (0 = ignores z)",
    }

    result["player"] = None
    if player_judge_ckpt is not None:
        result["player"] = _player_consistency(fn, z_dim, datamodule, player_judge_ckpt, seed, batch_size)

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot_confusion_matrix(gen_report, out / "confusion_generated.png",
                              title="Image judge on generated frames (validation)")  # fmt: skip
        plot_confusion_matrix(real_report, out / "confusion_real.png", title="Image judge on real frames (validation)")
        result["judged"]["confusion"] = gen_report.confusion.tolist()
        result["judge_on_real"]["confusion"] = real_report.confusion.tolist()
        result["class_names"] = names
        (out / "metrics.json").write_text(json.dumps(json_safe(result), indent=2))
    return json_safe(result)


def _player_consistency(fn: GeneratorFn, z_dim: int, datamodule, player_judge: Any, seed: int, batch_size: int):
    judge = _judge(player_judge)
    if judge.hparams.target != "track":
        raise ValueError("the player judge must be a ClassifierTask with target='track'")
    holdout = getattr(datamodule, "train_holdout", None)
    if holdout is None or len(holdout) == 0:
        return {"split": "train_holdout", "accuracy": None,
                "note": "no held-out train frames (set the datamodule's holdout_tail > 0)"}  # fmt: skip
    index = torch.as_tensor(holdout.indices, dtype=torch.long)
    t = datamodule.train_full.tensors
    batch = {"label": t.labels[index].long(), "track": t.tracks[index].long()}
    targets = judge.targets(batch)
    keep = targets >= 0
    index, targets = index[keep], targets[keep]
    audio = t.audio[index]
    fake = generate_images(fn, audio, z_dim, seed=seed + 1, batch_size=batch_size)
    real = _images(t, index)
    pnames = judge.target_names
    gen = judged_accuracy(judge, fake, targets, pnames, batch_size=batch_size)
    ref = judged_accuracy(judge, real, targets, pnames, batch_size=batch_size)
    # the player judge's class (instrument) of its prediction: is at least the instrument right?
    players = torch.tensor(judge.hparams.players)
    with torch.no_grad():
        pred = torch.cat([judge(fake[i : i + batch_size]).argmax(1) for i in range(0, len(fake), batch_size)])
    inst_ok = float((players[pred, 0] == players[targets, 0]).float().mean()) if len(pred) else float("nan")
    return {
        "split": "train_holdout",
        "n": gen.n,
        "accuracy": gen.accuracy,
        "balanced_accuracy": gen.balanced_accuracy,
        "instrument_accuracy": inst_ok,
        "judge_on_real_accuracy": ref.accuracy,
        "judge_on_real_balanced_accuracy": ref.balanced_accuracy,
        "note": "player judge names the audio's own player (class+track) for frames generated from the "
        "held-out end of each train track; judge_on_real_* is its ceiling on the real frames",
    }


__all__ = ["FID_LABEL", "evaluate_s2i", "generate_images", "make_generator_fn"]
