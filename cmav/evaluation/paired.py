"""What scoring a cross-modal generator shares in both directions (S2I frames, I2S spectrograms).

A generator is ``fn(condition (N, ...), z (N, z_dim)) -> outputs (N, ...)``. It is scored against a
frozen judge (a classifier trained on REAL data of the output modality, never used in training):
judged accuracy of one output per condition (fixed noise), the judge on the real outputs (the
ceiling), FID/KID in the judge's penultimate features (not Inception: comparable only within
cmav), and diversity over noise draws of the same condition.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cmav.metrics import (
    ClassificationReport,
    JudgeFeatureExtractor,
    diversity_over_noise,
    fid_kid,
    judged_accuracy,
)

GeneratorFn = Callable[[Tensor, Tensor], Tensor]
FID_LABEL = "judge-feature FID, not Inception FID"


def inference_of(task) -> dict[str, Any]:
    """What conditions a paired task's generator at inference (``inference_condition``, and
    ``inference_neighbours`` for ``nearest``), for reports."""
    out: dict[str, Any] = {"inference_condition": task.inference_condition}
    if task.inference_condition == "nearest":
        out["inference_neighbours"] = task.inference_neighbours
    return out


def generator_fn(task_or_ckpt: Any, task_cls: type, load: Callable[[Any], Any]) -> tuple[GeneratorFn, int, dict]:
    """``(fn(condition, z) -> outputs on CPU, z_dim, info)`` from a ``task_cls`` task (its EMA
    generator), its checkpoint path (rebuilt with ``load``) or a callable (carrying ``z_dim``,
    default 10), so tests can score a "perfect" or a constant generator the same way."""
    if isinstance(task_or_ckpt, (str, Path)):
        task_or_ckpt = load(task_or_ckpt)
    if isinstance(task_or_ckpt, task_cls):
        task = task_or_ckpt

        def fn(condition: Tensor, z: Tensor) -> Tensor:
            return task.generate(condition, z, use_ema=True).float().cpu()

        info = {"variant": task.hparams.variant, "iteration": int(task.iteration), "generator": "ema", **inference_of(task)}
        return fn, task.z_dim, info
    if callable(task_or_ckpt):
        return task_or_ckpt, int(getattr(task_or_ckpt, "z_dim", 10)), {"generator": "callable"}
    raise TypeError(f"expected a {task_cls.__name__}, a checkpoint path or a callable, got {type(task_or_ckpt).__name__}")


@torch.no_grad()
def generate_outputs(fn: GeneratorFn, conditions: Tensor, z_dim: int, seed: int = 0, batch_size: int = 64) -> Tensor:
    """One output per condition, float on CPU; the noise is fixed by ``seed``."""
    z = torch.randn(conditions.shape[0], z_dim, generator=torch.Generator().manual_seed(seed))
    out = [fn(conditions[i : i + batch_size].float(), z[i : i + batch_size]).float().cpu()
           for i in range(0, conditions.shape[0], batch_size)]  # fmt: skip
    return torch.cat(out) if out else torch.zeros(0)


def subset_per_class(labels: Tensor, n_classes: int, per_class: int) -> Tensor:
    """Up to ``per_class`` items of every class, evenly spaced over the class's items."""
    rows = []
    for c in range(n_classes):
        idx = (labels == c).nonzero().flatten()
        if len(idx) == 0:
            continue
        take = torch.linspace(0, len(idx) - 1, min(per_class, len(idx))).round().long().unique()
        rows.append(idx[take])
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)


def _report(r: ClassificationReport, split: str, note: str) -> dict[str, Any]:
    return {"split": split, "n": r.n, "accuracy": r.accuracy, "balanced_accuracy": r.balanced_accuracy,
            "per_class": r.per_class, "note": note}  # fmt: skip


@torch.no_grad()
def score_generator(
    fn: GeneratorFn,
    z_dim: int,
    conditions: Tensor,
    real: Tensor,
    labels: Tensor,
    judge: nn.Module,
    class_names: list[str],
    extractor: JudgeFeatureExtractor,
    what: str,
    split: str = "validation",
    seed: int = 0,
    batch_size: int = 64,
    n_diversity_draws: int = 8,
    diversity_per_class: int = 4,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
) -> tuple[dict[str, Any], ClassificationReport, ClassificationReport, Tensor]:
    """Judged accuracy, the judge's ceiling, judge-feature FID/KID and diversity of ``fn``.

    ``what`` names the outputs in the notes ("image", "spectrogram"). Returns ``(result, report on
    generated, report on real, generated outputs)``; ``result`` has the keys ``judged``,
    ``judge_on_real``, ``fid_kid`` and ``diversity``, each naming its ``split``.
    """
    fake = generate_outputs(fn, conditions, z_dim, seed=seed, batch_size=batch_size)
    gen_report = judged_accuracy(judge, fake, labels, class_names, batch_size=batch_size)
    real_report = judged_accuracy(judge, real, labels, class_names, batch_size=batch_size)
    result: dict[str, Any] = {
        "judged": _report(gen_report, split, f"one generated {what} per {split} item (fixed noise), classified by the judge"),
        "judge_on_real": _report(real_report, split, f"the judge on the real {split} {what}s: the ceiling for judged accuracy"),
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*rank-deficient.*")
        warnings.filterwarnings("ignore", message=".*KID subset_size.*")
        fk = fid_kid(real, fake, extractor, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                     batch_size=batch_size, seed=seed)  # fmt: skip
    result["fid_kid"] = {
        "split": split, "label": FID_LABEL, "fid": fk["fid"], "kid_mean": fk["kid_mean"], "kid_std": fk["kid_std"],
        "n_real": fk["n_real"], "n_fake": fk["n_fake"], "feature": fk["feature"], "note": fk["note"],
        # the size KID used: clamped to half the smaller set when the split is small (its warning is silenced above)
        "kid_subset_size": fk["kid_subset_size"], "kid_subset_size_asked": int(kid_subset_size), "kid_subsets": kid_subsets,
    }  # fmt: skip
    sub = subset_per_class(labels, len(class_names), diversity_per_class)
    cond = conditions[sub].float()

    def one_draw(c: Tensor) -> Tensor:
        # every condition's noise drawn at once: the figure must not depend on batch_size
        z = torch.randn(len(c), z_dim)
        return torch.cat([fn(c[i : i + batch_size], z[i : i + batch_size]) for i in range(0, len(c), batch_size)])

    div = diversity_over_noise(one_draw, cond, n_draws=n_diversity_draws, feature_fn=extractor, seed=seed)
    result["diversity"] = {
        "split": split, "value": div, "n_conditions": int(len(sub)), "n_draws": n_diversity_draws,
        "note": "mean pairwise judge-feature L2 distance between noise draws of the same condition (0 = ignores z)",
    }  # fmt: skip
    return result, gen_report, real_report, fake


def save_scores(result: dict[str, Any], out_dir: str | Path, gen_report: ClassificationReport,
                real_report: ClassificationReport, class_names: list[str], judge: str, what: str) -> dict[str, Any]:  # fmt: skip
    """Write ``metrics.json`` (with both confusion matrices) and ``confusion_generated.png`` /
    ``confusion_real.png`` titled "<judge> on generated/real <what>"; returns the JSON-safe result."""
    import json

    from cmav.metrics import plot_confusion_matrix
    from cmav.metrics.serialise import json_safe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion_matrix(gen_report, out / "confusion_generated.png", title=f"{judge} on generated {what} (validation)")
    plot_confusion_matrix(real_report, out / "confusion_real.png", title=f"{judge} on real {what} (validation)")
    result["judged"]["confusion"] = gen_report.confusion.tolist()
    result["judge_on_real"]["confusion"] = real_report.confusion.tolist()
    result["class_names"] = class_names
    safe = json_safe(result)
    (out / "metrics.json").write_text(json.dumps(safe, indent=2))
    return safe


__all__ = ["FID_LABEL", "GeneratorFn", "generate_outputs", "generator_fn", "inference_of", "save_scores", "score_generator",
           "subset_per_class"]  # fmt: skip
