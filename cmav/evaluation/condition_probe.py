"""Where does an image-to-sound generator fail on unseen players: in its condition, or in itself?

The validation players never appear in training. :func:`probe_i2s_conditions` judges the EMA
generator's LMS (one per frame, fixed noise) under the audio judge for the same validation frames
with their conditions swapped for ones built from the training items:

* ``validation``: each frame's own condition (what :func:`~cmav.evaluation.evaluate_i2s` scores);
* ``nearest train``: the condition of the nearest training item (Euclidean, in the condition space);
* ``k nearest mean``: the mean condition of the ``k`` nearest training items;
* ``predicted class mean``: the mean training condition of the class the encoder's head predicts;

and ``train tail``: the train players' held-out tails (seen players, unseen frames; needs the data
module's ``holdout_tail`` > 0). A high tail and a low validation score mean G does not carry over
to new players; a high class-mean score means G can make every class and the frame's own
condition is what leads it astray. The swapped conditions use the train set; generation can use
the same ones (the tasks' ``inference_condition``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from cmav.evaluation.i2s import audio_judge
from cmav.metrics import judged_accuracy
from cmav.models import ConditionBank
from cmav.tasks.paired_gan import condition_from


def substitute_conditions(val: Tensor, train: Tensor, train_labels: Tensor, predicted: Tensor, k: int = 10) -> dict[str, Tensor]:
    """The swapped conditions of the module docstring, each ``val``-shaped (the replacements of
    :class:`~cmav.models.ConditionBank`, which ``inference_condition`` uses at generation).

    Args:
        val: ``(N, D)`` validation conditions.
        train: ``(M, D)`` training conditions, ``train_labels`` their ``(M,)`` classes.
        predicted: ``(N,)`` the class the encoder's head predicts for each validation item.
        k: neighbours averaged for ``k nearest mean``.
    """
    bank = ConditionBank(train.shape[1])
    bank.fill(train, train_labels)
    k = min(k, train.shape[0])
    return {
        "validation": val,
        "nearest train": bank.snap(val, "nearest", k=1),
        f"{k} nearest mean": bank.snap(val, "nearest", k=k),
        "predicted class mean": bank.snap(val, "class_mean", predicted),
    }


@torch.no_grad()
def probe_i2s_conditions(task_or_ckpt: Any, datamodule, audio_judge_ckpt: Any, k: int = 10, seed: int = 0,
                         batch_size: int = 256) -> dict:  # fmt: skip
    """Judged accuracy (overall and per class) of the generator under each condition of the module
    docstring; a JSON-ready dict keyed by condition name, with the split of each."""
    from cmav.tasks.i2s import I2STask, load_i2s

    task = task_or_ckpt if isinstance(task_or_ckpt, I2STask) else load_i2s(task_or_ckpt)
    net = task.ema.module.eval()
    judge = audio_judge(audio_judge_ckpt)
    datamodule.setup("validate")
    names = list(datamodule.class_names)

    def encode(images: Tensor) -> tuple[Tensor, Tensor]:
        conds, preds = [], []
        for i in range(0, len(images), batch_size):
            out = net.encoder.forward_features(images[i : i + batch_size].float().div(127.5).sub(1.0))
            conds.append(condition_from(out, net.condition_on))
            preds.append(out.logits.argmax(1))
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

    t, keep = datamodule.split_items("train")
    train_cond, _ = encode(t.images[keep])
    val = datamodule.val.tensors
    val_labels = val.labels.long()
    val_cond, predicted = encode(val.images)
    report = {name: judged(c, val_labels, "validation" if name == "validation" else "validation, condition from train")
              for name, c in substitute_conditions(val_cond, train_cond, t.labels[keep].long(), predicted, k).items()}  # fmt: skip
    _, held = datamodule.split_items("holdout")
    if len(held):
        tail_cond, _ = encode(t.images[held])
        report["train tail"] = judged(tail_cond, t.labels[held].long(), "train tail (seen players, unseen frames)")
    else:  # the row is still there, saying why it has no figure
        why = datamodule.holdout_shortfall() if hasattr(datamodule, "holdout_shortfall") else None
        report["train tail"] = {"split": f"train tail: none held out ({why or 'data.holdout_tail is 0'})",
                                "accuracy": None, "per_class": {}}  # fmt: skip
    return report


def format_probe(report: dict) -> str:
    """A markdown table: one row per condition, the classes below 0.8 named."""
    lines = ["| condition | split | judged | classes below 0.8 |", "|---|---|---|---|"]
    for name, r in report.items():
        weak = ", ".join(f"{c} {a:.2f}" for c, a in r["per_class"].items() if a < 0.8) or "-"
        judged = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        lines.append(f"| {name} | {r['split']} | {judged} | {weak} |")
    return "\n".join(lines)


__all__ = ["format_probe", "probe_i2s_conditions", "substitute_conditions"]
