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
    extract_features,
    fid_kid_from_features,
    judged_accuracy,
)

GeneratorFn = Callable[[Tensor, Tensor], Tensor]
FID_LABEL = "judge-feature FID, not Inception FID"
# the significance level of the binomial margin over chance a judge's accuracy must pass
CHANCE_ALPHA = 0.05
# a judge whose largest feature std over the real items is below this share of its feature scale
# (at least 1) has collapsed: FID/KID and diversity come out ~0 whatever is scored
FLAT_FEATURES = 1e-3


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


def judge_training_data(judge_or_ckpt: Any) -> dict | None:
    """The data settings a judge was trained on: its checkpoint's ``datamodule_hyper_parameters``
    (a path, or the loaded checkpoint's dict), or for a task in memory those of the data module it
    was fitted with. None when they are not known (a checkpoint without them, a task loaded from one)."""
    from cmav.tasks.classifier import checkpoint_dict
    from cmav.tasks.common import datamodule_of

    if isinstance(judge_or_ckpt, (str, Path, dict)):
        return checkpoint_dict(judge_or_ckpt).get("datamodule_hyper_parameters") or None
    dm = datamodule_of(judge_or_ckpt) if isinstance(judge_or_ckpt, nn.Module) else None
    return dict(dm.hparams) if dm is not None and getattr(dm, "hparams", None) is not None else None


def judge_trained_items(settings: dict, tensors) -> list[int]:
    """The indices (into a train split's cached ``tensors``) of the items a judge trained with data
    ``settings`` (its ``datamodule_hyper_parameters``) was trained on: what
    :class:`~cmav.data.datamodule.AudioVisualDataModule` keeps out of its held-out tails under the
    judge's ``holdout_tail`` and ``holdout_gap_ms``, on the same tensors."""
    from cmav.data.tails import tail_holdout
    from cmav.evaluation.generate import front_end_of

    spec = front_end_of({"datamodule_hyper_parameters": settings})[1]
    gap = settings.get("holdout_gap_ms")
    gap = round(1000 * spec.n_samples / spec.sample_rate) if gap is None else int(gap)
    keep, _ = tail_holdout(tensors.tracks, tensors.labels, tensors.times, float(settings.get("holdout_tail") or 0.0),
                           guard_ms=gap, stems=tensors.stems)  # fmt: skip
    return keep


def check_judge_unseen(judge_or_ckpt: Any, datamodule, what: str, split: str = "validation",
                       advice: str | None = None) -> str | None:  # fmt: skip
    """Refuse a judge that was trained on items it would score; say so when that cannot be told.

    A judge is trained on the train split of its data less that split's held-out tails
    (``data.holdout_tail``). When its recorded root is the scored data's root and ``split`` is
    ``'holdout'`` (the train tracks' held-out tails, which judged-holdout, player consistency and
    ``JudgedAccuracyMonitor(split='holdout')`` score as frames nobody trained on), the judge's own
    training items are worked out from its settings on the same tensors, and a ``ValueError``
    naming the checkpoint and both settings is raised when any scored item is among them (a judge
    trained with ``holdout_tail`` 0, or a smaller one than the data's). The validation split is
    never trained on by a judge of the same root. When the roots differ, or the judge's data are
    not recorded, a :class:`~cmav.data.errors.DataWarning` is raised and its text returned, for
    the result's notes; None when all is well. ``advice`` replaces the refusal's last sentence (how
    to train the judge) for what is not a judge (:func:`check_generator_unseen`).
    """
    from cmav.data.errors import DataWarning

    source = str(judge_or_ckpt) if isinstance(judge_or_ckpt, (str, Path)) else f"the {what} given"
    settings = judge_training_data(judge_or_ckpt)
    root = getattr(datamodule, "root", None)
    note = None
    if not settings or not settings.get("root"):
        note = (f"{source}: the data the {what} was trained on are not recorded (pass its checkpoint), so whether it "
                f"trained on the frames scored here ({split}) cannot be checked")  # fmt: skip
    elif root is None or not _same_root(settings, datamodule):
        note = (f"{source}: the {what} was trained on {settings['root']}, the data scored are {root}: whether its "
                f"training frames include those scored here ({split}) cannot be checked")  # fmt: skip
    if note is not None:
        warnings.warn(note, DataWarning, stacklevel=3)
        return note
    if split != "holdout":
        return None
    tensors, index = datamodule.split_items("holdout")
    trained = set(judge_trained_items(settings, tensors))
    seen = [i for i in index.tolist() if i in trained]
    if seen:
        h = datamodule.hparams
        gap = settings.get("holdout_gap_ms")
        advice = advice or (f"Train the {what} with data.holdout_tail {float(h.holdout_tail):g} (the data's, as the "
                            "experiments/*.yaml do) or more")  # fmt: skip
        raise ValueError(
            f"{source}: the {what} was trained on {settings['root']} with data.holdout_tail "
            f"{float(settings.get('holdout_tail') or 0.0):g} (holdout_gap_ms {gap}), so {len(seen)} of the {len(index)} "
            f"held-out chunks scored here (data.holdout_tail {float(h.holdout_tail):g}, holdout_gap_ms "
            f"{h.get('holdout_gap_ms')}) are among its own training frames: its figures there would not be on frames "
            f"nobody trained on. {advice}"
        )  # fmt: skip
    return None


def _same_root(settings: dict, datamodule) -> bool:
    """Whether a checkpoint's recorded data root is the data module's, both resolved (a relative root
    recorded elsewhere is found by its absolute path, :func:`~cmav.data.datamodule.recorded_root`)."""
    from cmav.data.datamodule import recorded_root
    from cmav.data.errors import DataError

    try:
        trained = recorded_root(settings)
    except DataError:  # not here at all: not the data scored
        return False
    scored = getattr(getattr(datamodule, "hparams", None), "root_resolved", None) or Path(datamodule.root).resolve()
    return trained == Path(scored)


def check_generator_unseen(generator: Any, datamodule, what: str) -> str | None:
    """:func:`check_judge_unseen` (``split='holdout'``) for the generator scored on the train tracks'
    held-out tails as "seen players, unseen frames" (S2I's judged holdout and player consistency, the
    I2S condition probe's train tail): refused when its training items include any of them (a
    checkpoint trained with ``data.holdout_tail`` 0, or scored with a larger ``holdout_tail`` or a
    smaller ``holdout_gap_ms`` than its own), naming it and the tail it trained with.

    ``generator``: its checkpoint (path or dict) or a task fitted in memory (its trainer's data). A
    task loaded from a checkpoint does not know its data and a plain callable has none: nothing is
    checked then (the caller holding the checkpoint checks that, as ``cmav evaluate`` does). Nothing
    is checked either when the data hold no tail out. Returns the note of an unverifiable check
    (another root, data not recorded), else None."""
    from cmav.tasks.common import datamodule_of

    if isinstance(generator, nn.Module) and datamodule_of(generator) is None:
        return None
    if not isinstance(generator, (str, Path, dict, nn.Module)):
        return None
    _, held = datamodule.split_items("holdout")
    if len(held) == 0:
        return None
    settings = judge_training_data(generator) or {}
    advice = (f"Score it on the tails it held out (data.holdout_tail {float(settings.get('holdout_tail') or 0.0):g}, "
              f"holdout_gap_ms {settings.get('holdout_gap_ms')}: `cmav evaluate`'s default without --holdout-tail and "
              "--holdout-gap-ms) or on fewer")  # fmt: skip
    return check_judge_unseen(generator, datamodule, what, split="holdout", advice=advice)


def front_end_refusal(source: str, model: str, role: str, made: tuple, want: tuple, trained: Any, features: Any,
                      consequence: str) -> None:  # fmt: skip
    """Refuse data a generator was not made for: audio features of another shape than it ``role``
    (``'generates'`` / ``'reads'``; ``made`` against the data's ``want``), or of the same shape from
    another front-end setting than the one stored with it (``trained``, None when not recorded)
    than the data's ``features``; ``consequence`` says what scoring it would do then. ``source``
    names the checkpoint or model and ``model`` its kind (S2I, I2S)."""
    from cmav.features import front_end_differences

    diffs = front_end_differences(trained, features) if trained is not None else []
    differ = f" (front end: {'; '.join(diffs)}, model -> data)" if diffs else ""
    if made is not None and tuple(made) != tuple(want):
        raise ValueError(f"{source}: the {model} model {role} LMS {tuple(made)}, the data's are {tuple(want)}{differ}: "
                         "evaluate it on data of the front end it was trained on (data.features)")  # fmt: skip
    if diffs:
        raise ValueError(f"{source}: the {model} model was trained on another front end than the data's{differ}: "
                         f"{consequence}. Evaluate it on data of its own front end (data.features)")  # fmt: skip


def file_record(path: Any) -> dict[str, str | None] | None:
    """What a result records of a checkpoint given as a path: ``{"path"`` (as given), ``"resolved"``,
    ``"sha256"}`` (None for a file not there); None for a model given in memory."""
    from cmav.data.files import sha256_file

    if not isinstance(path, (str, Path)):
        return None
    p = Path(path)
    return {"path": str(path), "resolved": str(p.resolve()), "sha256": sha256_file(p) if p.is_file() else None}


def scored_inputs(datamodule, checkpoint: Any, **judges: Any) -> dict[str, Any]:
    """What a generator was scored from, for ``metrics.json``'s ``inputs``: its checkpoint and each
    judge's (:func:`file_record`; None for a model given in memory), the data (root, layout, frame
    size, held-out tails, chunk) and the front end."""
    h = getattr(datamodule, "hparams", None) or {}
    data = {"root": str(getattr(datamodule, "root", h.get("root"))), "root_resolved": h.get("root_resolved")}
    data.update({k: h.get(k) for k in ("layout", "image_size", "holdout_tail", "holdout_gap_ms", "chunk")})
    features = getattr(datamodule, "features", None)
    return {"checkpoint": file_record(checkpoint), **{name: file_record(j) for name, j in judges.items()}, "data": data,
            "features": features.to_dict() if hasattr(features, "to_dict") else h.get("features")}  # fmt: skip


def note_on(section: dict[str, Any] | None, note: str | None) -> None:
    """Add ``note`` to a result section's ``note`` (nothing when either is None)."""
    if section is not None and note:
        section["note"] = f"{section.get('note', '')}; NOTE: {note}".lstrip("; ")


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


def above_chance_accuracy(n: int, chance: float, alpha: float = CHANCE_ALPHA) -> float:
    """The smallest accuracy over ``n`` items that a one-sided binomial test at level ``alpha`` tells
    from guessing right with probability ``chance``: ``k / n`` for the least ``k`` with
    ``P(X >= k) <= alpha``, ``X ~ Binomial(n, chance)`` (above 1 when no ``k`` is enough)."""
    if n <= 0:
        return float("inf")
    k = torch.arange(n + 1, dtype=torch.float64)
    log_p = torch.distributions.Binomial(total_count=n, probs=torch.tensor(float(chance), dtype=torch.float64)).log_prob(k)
    at_least = torch.logcumsumexp(log_p.flip(0), 0).flip(0).exp()  # P(X >= k)
    enough = (at_least <= alpha).nonzero().flatten()
    return float(enough[0]) / n if len(enough) else float("inf")


def judge_collapse_note(report: ClassificationReport, real_features: Tensor, labels: Tensor, judge: str,
                        split: str) -> str | None:  # fmt: skip
    """Why the ``judge``'s features are no measure of anything, or None when they may be: its
    accuracy on the real ``split`` items (``report``) not above chance by a binomial margin
    (:func:`above_chance_accuracy`; chance is the best constant guess, the largest class share, at
    least 1 / classes), or its features there (``real_features``, (N, D)) without spread (largest
    std below :data:`FLAT_FEATURES` of their scale): FID/KID against any outputs then come out ~0
    and diversity 0, a perfect-looking score of nothing."""
    n_classes = len(report.class_names)
    reasons = []
    f = real_features.double()
    spread = float(f.std(dim=0).max()) if f.shape[0] > 1 else float("nan")
    scale = float(f.pow(2).mean().sqrt()) if f.numel() else 0.0
    flat = spread == spread and spread <= FLAT_FEATURES * max(1.0, scale)
    if flat:
        reasons.append(f"its features barely vary over the {f.shape[0]} real {split} items (largest std {spread:.2g}, "
                       f"feature scale {scale:.2g})")  # fmt: skip
    counts = torch.bincount(labels.long(), minlength=n_classes) if len(labels) else torch.zeros(1)
    chance = max(1.0 / max(n_classes, 1), float(counts.max()) / max(len(labels), 1))
    margin = above_chance_accuracy(report.n, chance)
    if report.accuracy == report.accuracy and report.accuracy < margin:
        reasons.append(f"the {judge}'s accuracy on the {report.n} real {split} items is {report.accuracy:.3f}, not "
                       f"above chance ({chance:.3f}, {n_classes} classes) by the {CHANCE_ALPHA:.0%} binomial margin "
                       f"({min(margin, 1.0):.2g})")  # fmt: skip
    if not reasons:
        return None
    at_chance = ", and so is judged accuracy under a judge at chance" if len(reasons) > 1 or not flat else ""
    return (f"the {judge} judges nothing here: {'; '.join(reasons)}. FID, KID and diversity measured in its features are "
            f"meaningless (they may come out near 0 whatever is scored){at_chance}; train the judge longer, or score "
            "with another")


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
    judge_name: str = "judge",
) -> tuple[dict[str, Any], ClassificationReport, ClassificationReport, Tensor]:
    """Judged accuracy, the judge's ceiling, judge-feature FID/KID and diversity of ``fn``.

    ``what`` names the outputs in the notes ("image", "spectrogram"), ``judge_name`` the judge
    ("image judge"). Returns ``(result, report on generated, report on real, generated outputs)``;
    ``result`` has the keys ``judged``, ``judge_on_real``, ``fid_kid`` and ``diversity``, each naming
    its ``split``, and ``notes``: a collapsed judge's (:func:`judge_collapse_note`, also warned of as
    a :class:`~cmav.data.errors.DataWarning` and beside FID/KID and diversity), else empty.
    """
    fake = generate_outputs(fn, conditions, z_dim, seed=seed, batch_size=batch_size)
    gen_report = judged_accuracy(judge, fake, labels, class_names, batch_size=batch_size)
    real_report = judged_accuracy(judge, real, labels, class_names, batch_size=batch_size)
    result: dict[str, Any] = {
        "judged": _report(gen_report, split, f"one generated {what} per {split} item (fixed noise), classified by the judge"),
        "judge_on_real": _report(real_report, split, f"the judge on the real {split} {what}s: the ceiling for judged accuracy"),
    }  # fmt: skip
    with warnings.catch_warnings():
        # not the rank-deficient FID warning: an FID from fewer items than feature dimensions is
        # mostly bias, and says so (fid_reliable, the note) besides
        warnings.filterwarnings("ignore", message=".*KID subset_size.*")
        feature = getattr(extractor, "feature_name", None) or f"custom:{type(extractor).__name__}"
        real_f = extract_features(extractor, real, batch_size)
        fk = fid_kid_from_features(real_f, extract_features(extractor, fake, batch_size), kid_subset_size=kid_subset_size,
                                   kid_subsets=kid_subsets, seed=seed, feature=feature)  # fmt: skip
    result["fid_kid"] = {
        "split": split, "label": FID_LABEL, "fid": fk["fid"], "kid_mean": fk["kid_mean"], "kid_std": fk["kid_std"],
        "n_real": fk["n_real"], "n_fake": fk["n_fake"], "feature": fk["feature"], "feature_dim": fk["feature_dim"],
        "fid_reliable": fk["fid_reliable"], "note": fk["note"],
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
    collapsed = judge_collapse_note(real_report, real_f, labels, judge_name, split)
    if collapsed is not None:
        from cmav.data.errors import DataWarning

        warnings.warn(collapsed, DataWarning, stacklevel=3)
        for section in ("fid_kid", "diversity"):
            note_on(result[section], collapsed)
    result["notes"] = [collapsed] if collapsed else []
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


__all__ = ["FID_LABEL", "GeneratorFn", "check_generator_unseen", "check_judge_unseen", "front_end_refusal",
           "file_record", "generate_outputs", "generator_fn", "inference_of", "judge_trained_items", "judge_training_data",
           "above_chance_accuracy", "judge_collapse_note",
           "note_on", "save_scores", "score_generator", "scored_inputs", "subset_per_class"]  # fmt: skip
