"""Classification metrics: plain reports on predictions, and judge-based accuracy of generated items.

A *judge* is a classifier trained on real data; scoring generated images (or spectrograms) with it
tells whether the generator produced something recognisable as the conditioning class.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix as _sk_confusion_matrix
from torch import Tensor, nn

from cmav.models.eval_mode import eval_mode

Batches = Tensor | Iterable[Tensor] | Iterable[Sequence[Tensor]]
"""Either one (N, ...) tensor or an iterable of batches (a tensor, or a tuple whose first item is the input)."""


@dataclass
class ClassificationReport:
    """Accuracy summary of one set of predictions.

    ``per_class`` holds the recall of each class (fraction of its items predicted correctly). A class
    absent from the targets has no recall: it is NaN there and left out of ``balanced_accuracy``
    (reporting 0 would punish a model for a class it was never asked about).
    ``confusion`` is indexed ``[true, predicted]``. ``predictions`` keeps the (N,) predicted classes in
    the targets' order, for breakdowns finer than a class (per player); ``to_dict`` leaves them out.
    A row whose logits are not all finite (a diverged model) is no prediction (:data:`NO_PREDICTION`
    in ``predictions``, outside ``confusion``); with any such row accuracy, balanced accuracy and every
    recall are NaN, and ``extra["n_nonfinite"]`` counts the rows.
    """

    accuracy: float
    balanced_accuracy: float
    per_class: dict[str, float]
    confusion: np.ndarray
    class_names: list[str]
    n: int
    extra: dict[str, Any] = field(default_factory=dict)
    predictions: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self, nan_as_none: bool = True) -> dict[str, Any]:
        """Plain-python view for loggers and JSON.

        With ``nan_as_none`` NaNs become ``None`` because strict JSON has no NaN.
        """

        def f(x: float) -> float | None:
            return None if (nan_as_none and math.isnan(x)) else float(x)

        return {
            "accuracy": f(self.accuracy),
            "balanced_accuracy": f(self.balanced_accuracy),
            "per_class": {k: f(v) for k, v in self.per_class.items()},
            "confusion": self.confusion.astype(int).tolist(),
            "class_names": list(self.class_names),
            "n": int(self.n),
            **self.extra,
        }


NO_PREDICTION = -1
"""The class given to a row whose logits are not all finite: argmax of an all-NaN row is class 0,
which would score a diverged model as the share of class 0, a plausible-looking chance level."""


def _argmax_or_none(logits: Tensor) -> Tensor:
    """``logits.argmax(1)``, :data:`NO_PREDICTION` on rows with a non-finite logit."""
    preds = logits.argmax(dim=1)
    if logits.is_floating_point():
        preds = torch.where(torch.isfinite(logits).all(dim=1), preds, torch.full_like(preds, NO_PREDICTION))
    return preds


def _to_labels(preds_or_logits: Tensor | np.ndarray | Sequence[int], n_classes: int) -> np.ndarray:
    """Class indices from either (N,) labels or (N, C) scores (:data:`NO_PREDICTION` for a row of
    scores that are not all finite)."""
    x = torch.as_tensor(preds_or_logits)
    if x.ndim == 2:
        if x.shape[1] != n_classes:
            raise ValueError(f"logits have {x.shape[1]} columns but there are {n_classes} class names")
        x = _argmax_or_none(x)
    elif x.ndim != 1:
        raise ValueError(f"expected (N,) labels or (N, C) logits, got shape {tuple(x.shape)}")
    elif x.is_floating_point():
        raise ValueError("1-D predictions must be integer class indices (pass (N, C) logits for scores)")
    return x.detach().cpu().long().numpy()


def classification_report(
    preds_or_logits: Tensor | np.ndarray | Sequence[int],
    targets: Tensor | np.ndarray | Sequence[int],
    class_names: Sequence[str],
) -> ClassificationReport:
    """Accuracy, balanced accuracy, per-class recall and confusion matrix.

    ``preds_or_logits``: (N,) integer predictions or (N, C) logits/probabilities (argmax is taken).
    ``targets``: (N,) integer labels in ``[0, C)``. A row of logits that are not all finite, or a
    prediction of :data:`NO_PREDICTION` (how :func:`judge_predictions` hands such a row on), makes the
    figures NaN and is counted in ``extra["n_nonfinite"]``.
    """
    names = list(class_names)
    c = len(names)
    preds = _to_labels(preds_or_logits, c)
    tgt = torch.as_tensor(targets).detach().cpu().long().reshape(-1).numpy()
    if preds.shape[0] != tgt.shape[0]:
        raise ValueError(f"{preds.shape[0]} predictions but {tgt.shape[0]} targets")
    none = preds == NO_PREDICTION
    n_nonfinite = int(none.sum())
    for what, arr in (("predictions", preds[~none]), ("targets", tgt)):
        if arr.size and (arr.min() < 0 or arr.max() >= c):
            raise ValueError(f"{what} contain labels outside [0, {c}) for {c} classes")

    n = int(tgt.shape[0])
    if n == n_nonfinite:
        cm = np.zeros((c, c), dtype=np.int64)
    else:
        # labels= fixes the matrix to all C classes even when some never occur.
        cm = _sk_confusion_matrix(tgt[~none], preds[~none], labels=np.arange(c)).astype(np.int64)
    support = cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
    present = ~np.isnan(recall)
    accuracy = float(np.trace(cm) / n) if n else float("nan")
    balanced = float(recall[present].mean()) if present.any() else float("nan")
    extra: dict[str, Any] = {}
    if n_nonfinite:
        # a diverged model's figures are not a number, so that the grids' finite() leaves its seed out
        accuracy = balanced = float("nan")
        recall = np.full(c, np.nan)
        extra["n_nonfinite"] = n_nonfinite
    return ClassificationReport(
        accuracy=accuracy,
        balanced_accuracy=balanced,
        per_class={name: float(r) for name, r in zip(names, recall, strict=True)},
        confusion=cm,
        class_names=names,
        n=n,
        extra=extra,
        predictions=preds,
    )


def player_table(predicted: Tensor, labels: Tensor, tracks: Tensor, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per player (class, track), sorted by class then track: frames, accuracy (share judged as the
    player's class), the class named most often and its share; a player drawn or seen wholly as
    another class reads as such. A player with a frame of :data:`NO_PREDICTION` (non-finite logits)
    has a NaN accuracy; its most named class is taken over the other frames (None when there are none)."""
    names = list(class_names)
    predicted, labels, tracks = (torch.as_tensor(x).detach().cpu().long().reshape(-1) for x in (predicted, labels, tracks))
    if not (len(predicted) == len(labels) == len(tracks)):
        raise ValueError(f"{len(predicted)} predictions, {len(labels)} labels and {len(tracks)} tracks: they must match")
    rows = []
    for c, t in sorted({(int(c), int(t)) for c, t in zip(labels.tolist(), tracks.tolist(), strict=True)}):
        sel = (labels == c) & (tracks == t)
        named = Counter(predicted[sel].tolist())
        n = int(sel.sum())
        missing = named.pop(NO_PREDICTION, 0)
        top, count = named.most_common(1)[0] if named else (None, float("nan"))
        rows.append({"class": names[c], "track": t, "n": n, "accuracy": float("nan") if missing else named[c] / n,
                     "named_most": None if top is None else names[top], "named_most_share": count / n})  # fmt: skip
    return rows


def _module_device(module: nn.Module) -> torch.device:
    """Where a module lives; CPU for a module without parameters or buffers."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _iter_batches(items: Batches, batch_size: int) -> Iterator[Tensor]:
    """Yield input tensors from one big tensor (split into ``batch_size`` chunks) or from an iterable of batches."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if isinstance(items, Tensor):
        yield from torch.split(items, batch_size)
        return
    for batch in items:
        # DataLoaders often yield (x, y, ...) tuples; the input is the first item.
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise TypeError(f"expected tensor batches, got {type(x).__name__}")
        yield from torch.split(x, batch_size)


@torch.no_grad()
def judged_accuracy(
    judge: nn.Module,
    images: Batches,
    targets: Tensor | np.ndarray | Sequence[int],
    class_names: Sequence[str],
    batch_size: int = 64,
) -> ClassificationReport:
    """Classify (generated) items with a judge and report how often it names the intended class.

    ``judge(x)`` must return (B, C) logits. It runs in eval mode under ``no_grad`` on its own device;
    every submodule's previous train/eval mode is restored afterwards so callers mid-training are not
    disturbed. Rows with non-finite logits make the figures NaN (see :func:`classification_report`).
    ``images``: (N, ...) tensor or an iterable of batches, in the order of ``targets``.
    """
    return classification_report(judge_predictions(judge, images, batch_size), targets, class_names)


@torch.no_grad()
def judge_predictions(judge: nn.Module, images: Batches, batch_size: int = 64) -> Tensor:
    """``(N,)`` int64 classes that ``judge`` (``(B, C)`` logits) names for ``images`` (a tensor or an
    iterable of batches), on CPU, :data:`NO_PREDICTION` where the logits are not all finite; run in
    eval mode, every submodule's own mode restored afterwards."""
    device = _module_device(judge)
    preds = []
    with eval_mode(judge):
        for x in _iter_batches(images, batch_size):
            logits = judge(x.to(device))
            if logits.ndim != 2:
                raise ValueError(f"judge must return (B, C) logits, got shape {tuple(logits.shape)}")
            preds.append(_argmax_or_none(logits).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def save_classification_report(report: ClassificationReport, path: str | Path) -> Path:
    """Write ``report.to_dict()`` as JSON (NaN -> null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_dict(nan_as_none=True), indent=2))
    return path


def plot_confusion_matrix(
    report: ClassificationReport,
    path: str | Path,
    title: str = "Confusion matrix (rows normalised)",
) -> Path:
    """Save a row-normalised confusion matrix as PNG; rows of absent classes are left blank."""
    # Figure + FigureCanvasAgg render off-screen without switching pyplot's global backend.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = report.confusion.astype(float)
    rows = cm.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(rows > 0, cm / np.maximum(rows, 1), np.nan)
    c = len(report.class_names)
    size = max(4.0, 0.55 * c + 2.0)
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(np.ma.masked_invalid(norm), vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(report.class_names, rotation=45, ha="right")
    ax.set_yticklabels(report.class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\nacc={report.accuracy:.3f}  bal_acc={report.balanced_accuracy:.3f}  n={report.n}")
    if c <= 20:  # beyond that the numbers overlap and only clutter
        for i in range(c):
            for j in range(c):
                if not np.isnan(norm[i, j]):
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
