"""What does an image judge look at: the instrument, or the player and the room around it?

The stand-in writes an instrument mask beside every frame, so each frame can be shown to the judge
in three views:

* ``frame``: as it is;
* ``instrument painted out``: the instrument (grown by a pixel) filled with the mean colour of a
  ring around it (:func:`~cmav.tasks.common.paint_out_instruments`, the same fill as the
  copy-paste augmentation): what is left is the player and the room;
* ``instrument only``: everything but the grown instrument mid-grey.

For each split and view: the accuracy, and per player (class + track) the share of its frames
judged as its class and the class it is named most often. In the train split each class has a few
players; a judge that still names the TRAIN players right with their instrument painted out has
learned the players (pose, clothes, room) as well as the instruments, and on VALIDATION (unseen
players) those cues point nowhere. ``instrument only`` on validation says whether the instrument
alone would have been enough. The real Sub-URMP has no masks: the probe is for the stand-in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cmav.metrics import judge_predictions, player_table
from cmav.metrics.classification import NO_PREDICTION
from cmav.metrics.serialise import format_number, json_safe

VIEWS = ("frame", "instrument painted out", "instrument only")
PROBE_SPLITS = ("train", "holdout", "validation")


def judge_views(images: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """The three views of the module docstring for ``images`` ``(N, 3, H, W)`` in [-1, 1] and
    their instrument ``masks`` ``(N, 1, H, W)`` (bool or in [0, 1])."""
    from cmav.tasks.common import paint_out_instruments

    painted, grown = paint_out_instruments(images, masks.to(images.dtype))
    return {"frame": images, "instrument painted out": painted, "instrument only": grown * images}


@torch.no_grad()
def probe_image_judge(judge_or_ckpt: Any, datamodule, splits: tuple[str, ...] = ("train", "validation"),
                      batch_size: int = 256) -> dict[str, Any]:  # fmt: skip
    """Accuracy of the image judge per split, view and player (module docstring); a JSON-ready dict
    ``{"judge": ..., "splits": {split: {"n", "views": {view: {"accuracy", "players": [...]}}}}}``.

    ``splits``: any of ``train`` (what the judge trained on), ``holdout`` (the train tracks'
    held-out tails) and ``validation`` (unseen players). Needs the data set's instrument masks
    (:class:`~cmav.data.masks.MasksMissing`, naming the folder, when it has none). ``holdout`` is
    refused when the judge's checkpoint says it trained on any of those tails (data settings other
    than its own, :func:`~cmav.evaluation.paired.check_judge_unseen`; pass the checkpoint, a task
    loaded from one does not know its data); with no tails held out it has ``n`` 0 and a ``note``
    saying why.
    """
    from cmav.data.masks import load_split_masks
    from cmav.evaluation.paired import check_judge_unseen
    from cmav.evaluation.s2i import _judge

    unknown = [s for s in splits if s not in PROBE_SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be some of {', '.join(PROBE_SPLITS)}; got {list(splits)}")
    judge = _judge(judge_or_ckpt)
    datamodule.setup("validate")
    names = list(judge.hparams.class_names)
    if names != list(datamodule.class_names):
        raise ValueError(f"the image judge's classes {names} differ from the data's {datamodule.class_names}")
    size = int(judge.hparams.image_size)
    out: dict[str, Any] = {"judge": str(judge_or_ckpt) if isinstance(judge_or_ckpt, (str, Path)) else "in memory",
                           "views": list(VIEWS), "splits": {}, "notes": []}  # fmt: skip
    if "holdout" in splits:  # its tails are meant to be frames the judge never saw
        note = check_judge_unseen(judge_or_ckpt, datamodule, "image judge", split="holdout")
        out["notes"] += [note] if note else []
    for split in splits:
        tensors, index = datamodule.split_items(split)
        if len(index) == 0:
            why = datamodule.holdout_shortfall() if split == "holdout" and hasattr(datamodule, "holdout_shortfall") else None
            out["splits"][split] = {"n": 0, "views": {}, "note": f"none held out: {why}" if why else "no items"}
            continue
        labels, tracks = tensors.labels[index].long(), tensors.tracks[index].long()
        folder = "validation" if split == "validation" else "train"  # the holdout tails live in train/
        masks = load_split_masks(datamodule.root, folder, [tensors.stems[i] for i in index.tolist()],
                                 tensors.class_names, labels, size).unsqueeze(1)  # fmt: skip
        images = tensors.images[index].float().div(127.5).sub(1.0)
        views = {}
        for view, x in judge_views(images, masks).items():
            predicted = judge_predictions(judge, x, batch_size)
            # a frame the judge gives no class (logits not all finite) makes the figure none, not a
            # wrong answer: as in classification_report
            none = int((predicted == NO_PREDICTION).sum())
            accuracy = float((predicted == labels).float().mean()) if len(labels) and not none else float("nan")
            views[view] = {"accuracy": accuracy, "players": player_table(predicted, labels, tracks, names),
                           **({"n_no_prediction": none} if none else {})}  # fmt: skip
        out["splits"][split] = {"n": int(len(labels)), "views": views}
    return out


def format_judge_probe(probe: dict[str, Any], list_players: tuple[str, ...] = ("validation",)) -> str:
    """Markdown: per split the accuracy of each view and how many players are named right on most of
    their frames; for the splits in ``list_players`` one row per player (accuracy, and the class
    named most often where it is not the player's own)."""
    lines = [f"NOTE: {n}" for n in probe.get("notes") or []] + ([""] if probe.get("notes") else [])
    for split, s in probe["splits"].items():
        if not s["views"]:  # nothing to score, and why
            lines += [f"{split} ({s['n']} frames): {s.get('note', 'no items')}", ""]
            continue
        lines += [f"{split} ({s['n']} frames)", "", "| view | accuracy | players named right on most frames |",
                  "|---|---|---|"]  # fmt: skip
        for view, v in s["views"].items():
            right = sum(p["named_most"] == p["class"] for p in v["players"])
            acc = (f"n/a ({v['n_no_prediction']} of {s['n']} frames without a prediction)" if v.get("n_no_prediction")
                   else format_number(json_safe(v["accuracy"]), ".3f"))  # fmt: skip
            lines.append(f"| {view} | {acc} | {right} of {len(v['players'])} |")
        lines.append("")
        if split in list_players:
            views = list(s["views"])
            lines += ["| player | " + " | ".join(views) + " |", "|---" * (len(views) + 1) + "|"]
            for i, p in enumerate(s["views"][views[0]]["players"]):
                cells = []
                for view in views:
                    q = s["views"][view]["players"][i]
                    if q["named_most"] is None:  # no frame of the player given a class
                        wrong = " (no prediction)"
                    else:
                        wrong = "" if q["named_most"] == q["class"] else f" (→ {q['named_most']})"
                    cells.append(f"{format_number(json_safe(q['accuracy']), '.2f')}{wrong}")
                lines.append(f"| {p['class']} #{p['track']} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


__all__ = ["PROBE_SPLITS", "VIEWS", "format_judge_probe", "judge_views", "probe_image_judge"]
