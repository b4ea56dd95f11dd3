"""Where does an image-to-sound generator fail on unseen players: in its condition, or in itself?

The validation players never appear in training. :func:`probe_i2s_conditions` judges the EMA
generator's LMS (one per frame, fixed noise) under the audio judge for the same validation frames
under each inference condition (``inference_condition``; the replacements come from the training
conditions, as at generation):

* ``own condition``: each frame's own condition (``own``, the paper);
* ``nearest train``: the condition of the nearest training item (``nearest``, 1 neighbour;
  Euclidean, in the condition space);
* ``k nearest mean``: the mean condition of the ``k`` nearest training items (``nearest``, ``k``);
* ``predicted class mean``: the mean training condition of the class the encoder's head predicts
  (``class_mean``);

and ``train tail``: the train players' held-out tails under the frames' own conditions (seen
players, unseen frames; needs the data module's ``holdout_tail`` > 0, and a generator and audio
judge that did not train on those frames: refused by name otherwise). The row of the task's own
inference condition (the one :func:`~cmav.evaluation.evaluate_i2s` scores with that task) is
marked ``evaluated``, and the result names that condition. A high tail and a low own-condition
score mean G does not carry over to new players; a high class-mean score means G can make every
class and the frame's own condition is what leads it astray.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cmav.evaluation.i2s import audio_judge
from cmav.evaluation.paired import check_generator_unseen, check_judge_unseen, inference_of
from cmav.metrics import judged_accuracy
from cmav.metrics.classification import NO_PREDICTION, _argmax_or_none
from cmav.models import ConditionBank
from cmav.tasks.paired_gan import condition_from


def condition_rows(k: int, task_mode: str = "own", task_neighbours: int = 1) -> dict[str, tuple[str, int]]:
    """The probe's rows under the validation frames: ``{name: (inference condition, neighbours)}``,
    own first, then the nearest training condition, the ``k`` nearest (and the task's own number of
    neighbours when it conditions on ``nearest``), then the predicted class's mean."""
    counts = sorted({1, k} | ({task_neighbours} if task_mode == "nearest" else set()))
    rows = {"own condition": ("own", 1)}
    rows.update({("nearest train" if n == 1 else f"{n} nearest mean"): ("nearest", n) for n in counts})
    rows["predicted class mean"] = ("class_mean", 1)
    return rows


def substitute_conditions(val: Tensor, train: Tensor, train_labels: Tensor, predicted: Tensor, k: int = 10) -> dict[str, Tensor]:
    """The validation conditions ``val`` (key ``validation``) and their replacements of
    :func:`condition_rows` from a :class:`~cmav.models.ConditionBank` of ``train`` (what
    ``inference_condition`` uses at generation), each ``val``-shaped.

    Args:
        val: ``(N, D)`` validation conditions.
        train: ``(M, D)`` training conditions, ``train_labels`` their ``(M,)`` classes.
        predicted: ``(N,)`` the class the encoder's head predicts for each validation item.
        k: neighbours averaged for ``k nearest mean``.
    """
    bank = ConditionBank(train.shape[1])
    bank.fill(train, train_labels)
    return {("validation" if mode == "own" else name): snap(bank, val, mode, predicted, n)
            for name, (mode, n) in condition_rows(min(k, train.shape[0])).items()}  # fmt: skip


def snap(bank: ConditionBank, cond: Tensor, mode: str, predicted: Tensor, k: int) -> Tensor:
    """``bank.snap(cond, mode, predicted, k)``, where a row with no predicted class (:data:`NO_PREDICTION`,
    the encoder's logits not all finite) gets no ``class_mean`` condition: NaN, so that the generator's
    output and the judge's verdict on it are none either (a NaN accuracy), not class 0's mean."""
    none = predicted == NO_PREDICTION
    out = bank.snap(cond, mode, torch.where(none, torch.zeros_like(predicted), predicted), k)
    if mode == "class_mean" and bool(none.any()):
        out = out.clone()
        out[none.to(out.device)] = float("nan")
    return out


@torch.no_grad()
def probe_i2s_conditions(task_or_ckpt: Any, datamodule, audio_judge_ckpt: Any, k: int | None = None, seed: int = 0,
                         batch_size: int = 256, ckpt: str | Path | None = None) -> dict:  # fmt: skip
    """Judged accuracy (overall and per class) of the generator under each condition of the module
    docstring; a JSON-ready dict ``{"inference": ..., "conditions": {name: {"split", "accuracy",
    "per_class", ...}}, "notes": [...]}``.

    ``task_or_ckpt``: an :class:`~cmav.tasks.I2STask` (with the inference condition it is
    evaluated under) or its checkpoint. The replacements come from the task's own training
    conditions (its ``condition_bank``), or from ``datamodule``'s train split when it has none.
    ``k``: the neighbours of the ``k nearest mean`` row (None: the task's ``inference_neighbours``
    when it conditions on ``nearest`` with more than one, else 10). ``ckpt``: the checkpoint a task
    given was loaded from, whose recorded data say which train items its generator trained on (a
    loaded task does not know them). The train-tail row is refused (``ValueError`` naming the
    file) when the generator or the audio judge trained on any of its frames.
    """
    from cmav.tasks.i2s import I2STask, load_i2s

    source = task_or_ckpt if isinstance(task_or_ckpt, (str, Path)) else ckpt
    task = task_or_ckpt if isinstance(task_or_ckpt, I2STask) else load_i2s(task_or_ckpt)
    net = task.ema.module.eval()
    judge = audio_judge(audio_judge_ckpt)
    datamodule.setup("validate")
    names = list(datamodule.class_names)
    notes: list[str] = []
    t, held = datamodule.split_items("holdout")
    if len(held):  # scored as frames nobody trained on: refused before anything is scored when someone did
        notes += [n for n in (check_generator_unseen(task if source is None else source, datamodule, "I2S generator"),
                              check_judge_unseen(audio_judge_ckpt, datamodule, "audio judge", split="holdout")) if n]  # fmt: skip

    def encode(images: Tensor) -> tuple[Tensor, Tensor]:
        conds, preds = [], []
        for i in range(0, len(images), batch_size):
            out = net.encoder.forward_features(images[i : i + batch_size].float().div(127.5).sub(1.0))
            conds.append(condition_from(out, net.condition_on))
            preds.append(_argmax_or_none(out.logits))
        return torch.cat(conds), torch.cat(preds)

    def judged(cond: Tensor, labels: Tensor, split: str) -> dict:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(len(cond), task.z_dim, generator=g)
        lms = (task.from_target_space(net.generator(z[i : i + batch_size], cond[i : i + batch_size]))
               for i in range(0, len(cond), batch_size))  # fmt: skip
        report = judged_accuracy(judge.model, lms, labels, names, batch_size)
        # classes absent from this split have no recall (NaN): left out
        per_class = {c: a for c, a in report.per_class.items() if not math.isnan(a)}
        return {"split": split, "accuracy": report.accuracy, "per_class": per_class}

    mode, neighbours = task.inference_condition, int(task.inference_neighbours)
    if k is None:
        k = neighbours if mode == "nearest" and neighbours > 1 else 10
    bank = task.condition_bank
    if bank is not None and len(bank) > 0:
        conditions_from = "the model's training conditions (its checkpoint's condition bank)"
    else:  # a checkpoint saved before the bank: the train split's, as evaluation fills it
        _, keep = datamodule.split_items("train")
        train_cond, _ = encode(t.images[keep])
        bank = ConditionBank(train_cond.shape[1])
        bank.fill(train_cond, t.labels[keep].long())
        conditions_from = "the data's train split"
    val = datamodule.val.tensors
    val_labels = val.labels.long()
    val_cond, predicted = encode(val.images)
    rows: dict[str, Any] = {}
    evaluated = None
    for name, (m, n) in condition_rows(min(k, len(bank)), mode, min(neighbours, len(bank))).items():
        row = judged(snap(bank, val_cond, m, predicted, n), val_labels,
                     "validation" if m == "own" else "validation, condition from train")  # fmt: skip
        row.update(inference_condition=m, **({"inference_neighbours": n} if m == "nearest" else {}))
        row["evaluated"] = m == mode and (m != "nearest" or n == min(neighbours, len(bank)))
        evaluated = name if row["evaluated"] else evaluated
        rows[name] = row
    if len(held):
        tail_cond, _ = encode(t.images[held])
        rows["train tail"] = {**judged(tail_cond, t.labels[held].long(), "train tail (seen players, unseen frames)"),
                              "inference_condition": "own", "evaluated": False}  # fmt: skip
    else:  # the row is still there, saying why it has no figure
        why = datamodule.holdout_shortfall() if hasattr(datamodule, "holdout_shortfall") else None
        rows["train tail"] = {"split": f"train tail: none held out ({why or 'data.holdout_tail is 0'})",
                              "accuracy": None, "per_class": {}, "inference_condition": "own", "evaluated": False}  # fmt: skip
    inference = {**inference_of(task), "evaluated_row": evaluated, "conditions_from": conditions_from}
    return {"inference": inference, "conditions": rows, "notes": notes}


def format_probe(report: dict) -> str:
    """A markdown table: one row per condition, the classes below 0.8 named, the row that
    :func:`~cmav.evaluation.evaluate_i2s` scores under the task's inference condition marked."""
    inf = report["inference"]
    mode = inf["inference_condition"] + (f", {inf['inference_neighbours']} nearest" if "inference_neighbours" in inf else "")
    lines = [f"inference condition: {mode} (the row marked *, what evaluate scores); training conditions from "
             f"{inf['conditions_from']}", "", "| condition | split | judged | classes below 0.8 |", "|---|---|---|---|"]  # fmt: skip
    for name, r in report["conditions"].items():
        weak = ", ".join(f"{c} {a:.2f}" for c, a in r["per_class"].items() if a < 0.8) or "-"
        judged = "n/a" if r["accuracy"] is None or math.isnan(r["accuracy"]) else f"{r['accuracy']:.3f}"
        lines.append(f"| {name}{' *' if r.get('evaluated') else ''} | {r['split']} | {judged} | {weak} |")
    lines += [f"NOTE: {n}" for n in report.get("notes") or []]
    return "\n".join(lines)


__all__ = ["condition_rows", "format_probe", "probe_i2s_conditions", "snap", "substitute_conditions"]
