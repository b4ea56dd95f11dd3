"""Evaluation of retrieval/grounding checkpoints on the validation split (held-out players).

For every :class:`~cmav.tasks.retrieval.RetrievalTask` checkpoint given:

* **retrieval**: audio->image and image->audio Recall@1/5/10, median rank, MRR and mAP over the
  whole validation split as gallery, with class-level relevance (same instrument) and
  instance-level relevance (only the paired item), each beside its exact chance level. Note that
  Sub-URMP's chunks overlap (0.5 s every 0.1 s), so a pair's neighbours in time are near-copies
  of it: instance-level numbers are bounded well below 1 by construction.
* **localisation** (only where the data set has instrument masks, i.e. cmav's stand-in): the
  model's heatmap for every (audio, paired frame) against the instrument mask: AP, mIoU@0.5,
  best-threshold mIoU (optimistic) and the pointing game, beside two baselines that look at no
  audio and no pixels: a centred Gaussian and the mean training mask. Without masks the
  localisation part is skipped with a note.

Outputs (``out_dir``): ``metrics.json``, ``report.md`` (the tables) and ``heatmaps.png`` (one
validation item per class: frame | mask | each model's heatmap | centre prior), plus
``heatmaps/<stem>_<model>.png`` overlays at ``display_size``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cmav.metrics.localization import centre_prior, format_localization_table, localization_report, mean_mask_prior
from cmav.metrics.retrieval import cross_modal_report, format_retrieval_table
from cmav.metrics.serialise import json_safe

TARGET_CLASS_R1 = 0.9


def _images(t, index: Tensor | slice) -> Tensor:
    return t.images[index].float().div(127.5).sub(1.0)


@torch.no_grad()
def embed_split(task, tensors, batch_size: int = 128) -> tuple[Tensor, Tensor]:
    """Audio and image embeddings of every pair of a split (eval mode, CPU float32)."""
    audio, image = [], []
    for i in range(0, len(tensors), batch_size):
        a, v = task.embed(tensors.audio[i : i + batch_size].float(), _images(tensors, slice(i, i + batch_size)))
        audio.append(a.float().cpu())
        image.append(v.float().cpu())
    return torch.cat(audio), torch.cat(image)


@torch.no_grad()
def split_heatmaps(task, tensors, batch_size: int = 128) -> Tensor:
    """``(N, S, S)`` heatmap of every (audio, paired frame) of a split."""
    task.eval()
    out = [task.model.heatmap(tensors.audio[i : i + batch_size].float().to(task.device),
                              _images(tensors, slice(i, i + batch_size)).to(task.device)).float().cpu()
           for i in range(0, len(tensors), batch_size)]  # fmt: skip
    return torch.cat(out)


def model_name(ckpt: Any, kind: str) -> str:
    """``dense (retrieval_dense)`` for ``runs/retrieval_dense/checkpoints/last.ckpt``."""
    if isinstance(ckpt, (str, Path)):
        p = Path(ckpt)
        run = p.parent.parent.name if p.parent.name == "checkpoints" else p.stem
        return f"{kind} ({run})"
    return kind


def _masks(dm, split: str, tensors, size: int) -> tuple[Tensor | None, str | None]:
    from cmav.data.masks import MasksMissing, load_split_masks

    if dm.hparams.layout != "suburmp":
        return None, "localisation skipped: only the Sub-URMP layout has instrument masks"
    try:
        return load_split_masks(dm.root, split, tensors.stems, tensors.class_names, tensors.labels, size), None
    except MasksMissing as exc:
        return None, f"localisation skipped: {exc}"


@torch.no_grad()
def _check_front_ends(ckpts: Sequence[Any], tasks: list[Any], datamodule: Any, shape: tuple[int, ...]) -> None:
    """Every model must read the data's features: the same shape (the encoders' pooling takes any
    other without a word) and, for a checkpoint, the same front-end settings."""
    from cmav.evaluation.generate import front_end_of
    from cmav.features.frontend import front_end_differences

    for c, t in zip(ckpts, tasks, strict=True):
        expected = tuple(t.model.audio_encoder.input_shape)
        if expected != shape:
            raise ValueError(f"{c}: the model takes audio features {expected}, the data's are {shape}: "
                             "evaluate models of one front end together")  # fmt: skip
        if isinstance(c, (str, Path)):
            changed = front_end_differences(front_end_of(c)[0], datamodule.features)
            if changed:
                raise ValueError(f"{c}: trained on another front end than the data's ({'; '.join(changed)}): "
                                 "evaluate models of one front end together")  # fmt: skip


def evaluate_retrieval(
    ckpts: Sequence[Any],
    datamodule=None,
    root: str | Path | None = None,
    out_dir: str | Path | None = None,
    batch_size: int = 128,
    display_size: int = 256,
    cache_dir: str | None = None,
    split: str = "validation",
) -> dict:
    """Score retrieval/grounding checkpoints (or :class:`RetrievalTask` objects); see the module docstring.

    ``datamodule``: the data (default: rebuilt from the first checkpoint's stored data settings,
    at ``root``). Every model must take the same image size and LMS shape. ``split='train'``
    scores the training split instead (players the models have seen: a diagnostic that tells
    learning from generalising apart; the mean-mask baseline is then in-sample).
    """
    from cmav.tasks.retrieval import RetrievalTask, load_retrieval

    if not ckpts:
        raise ValueError("give at least one RetrievalTask checkpoint")
    tasks = [load_retrieval(c) if isinstance(c, (str, Path)) else c for c in ckpts]
    for c, t in zip(ckpts, tasks, strict=True):
        if not isinstance(t, RetrievalTask):
            raise TypeError(f"{c}: expected a RetrievalTask or its checkpoint")
    sizes = {int(t.hparams.image_size) for t in tasks}
    if len(sizes) > 1:
        raise ValueError(f"the models take different image sizes {sorted(sizes)}: evaluate them separately")
    if datamodule is None:
        first = next((c for c in ckpts if isinstance(c, (str, Path))), None)
        if first is None:
            raise ValueError("pass a datamodule when evaluating task objects")
        from cmav.evaluation.generate import datamodule_for

        datamodule = datamodule_for(first, root, cache_dir=cache_dir)
    if split not in ("validation", "train"):
        raise ValueError(f"split must be 'validation' or 'train', got {split!r}")
    datamodule.setup("validate")
    val = datamodule.val.tensors if split == "validation" else datamodule.train_full.tensors
    size = sizes.pop()
    if tuple(val.images.shape[-2:]) != (size, size):
        raise ValueError(f"the data's frames are {tuple(val.images.shape[-2:])}, the models take {size} px")
    _check_front_ends(ckpts, tasks, datamodule, tuple(val.audio.shape[1:]))

    names: list[str] = []
    for c, t in zip(ckpts, tasks, strict=True):
        name = model_name(c, t.kind)
        while name in names:
            name += "'"
        names.append(name)

    masks, loc_note = _masks(datamodule, split, val, size)
    result: dict[str, Any] = {"split": split, "n": len(val), "class_names": list(val.class_names),
                              "models": {}, "localization_note": loc_note}  # fmt: skip
    heatmaps: dict[str, Tensor] = {}
    for name, c, t in zip(names, ckpts, tasks, strict=True):
        a, v = embed_split(t, val, batch_size)
        report = cross_modal_report(t.model.scores(a, v), val.labels)
        entry: dict[str, Any] = {
            "kind": t.kind,
            "ckpt": str(c) if isinstance(c, (str, Path)) else None,
            "trained_encoder_mode": getattr(t, "trained_encoder_mode", t.encoder_mode),
            "retrieval": report,
            "localization": None,
        }
        if masks is not None:
            heatmaps[name] = split_heatmaps(t, val, batch_size)
            entry["localization"] = localization_report(heatmaps[name], masks)
        result["models"][name] = entry

    baselines: dict[str, Tensor] = {}
    if masks is not None:
        baselines["centre prior"] = centre_prior(size)
        train = datamodule.train_full.tensors
        train_masks, note = _masks(datamodule, "train", train, size)
        if train_masks is not None:
            baselines["mean train mask"] = mean_mask_prior(train_masks)
        elif note:
            result["localization_note"] = note.replace("localisation skipped", "mean-mask baseline skipped")
        result["localization_baselines"] = {
            k: localization_report(p.expand(len(val), -1, -1), masks) for k, p in baselines.items()
        }
    result["targets"] = _targets(result)

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(json_safe(result), indent=2))
        (out / "report.md").write_text(format_report(result))
        _write_heatmaps(out, datamodule, val, tasks, names, masks, baselines, display_size, split)
        result["paths"] = {"metrics": str(out / "metrics.json"), "report": str(out / "report.md"),
                           "heatmaps": str(out / "heatmaps.png")}  # fmt: skip
    return json_safe(result)


def _targets(result: dict) -> dict:
    """The issue's targets, checked on what was evaluated."""
    t: dict[str, Any] = {}
    for name, m in result["models"].items():
        r1 = m["retrieval"]["a2i"]["class"]["R@1"]
        t[f"{name}: class-level audio->image R@1 >= {TARGET_CLASS_R1}"] = bool(r1 >= TARGET_CLASS_R1)
    base = result.get("localization_baselines") or {}
    dense = {n: m for n, m in result["models"].items() if m["kind"] == "dense" and m["localization"]}
    glob = {n: m for n, m in result["models"].items() if m["kind"] == "global" and m["localization"]}
    for dn, dm in dense.items():
        ap = dm["localization"]["ap"]
        if "centre prior" in base:
            t[f"{dn}: localisation AP > centre prior"] = bool(ap > base["centre prior"]["ap"])
        for gn, gm in glob.items():
            t[f"{dn}: localisation AP > {gn}"] = bool(ap > gm["localization"]["ap"])
    return t


def format_report(result: dict) -> str:
    """The evaluation as markdown: one retrieval table per model, one localisation table."""
    parts = [f"# Retrieval and grounding on the {result['split']} split ({result['n']} pairs)", ""]
    for name, m in result["models"].items():
        parts += [f"## {name}", "", f"checkpoint: `{m['ckpt']}` (audio encoder: {m['trained_encoder_mode']})", "",
                  "Cells: value (chance under a random ranking).", "",
                  format_retrieval_table(m["retrieval"]), ""]  # fmt: skip
    rows = {n: m["localization"] for n, m in result["models"].items() if m["localization"]}
    rows.update(result.get("localization_baselines") or {})
    parts += ["## Localisation (heatmap of the paired audio vs the instrument mask)", ""]
    if rows:
        parts += [format_localization_table(rows), "",
                  "AP: per-frame average precision of the heatmap's pixel ranking vs the mask, mean over frames. "
                  "mIoU@0.5: per-frame min-max normalised heatmap thresholded at 0.5. Best-threshold mIoU: one "
                  "threshold for all frames, picked on this split (optimistic). Pointing game: the heatmap's "
                  "maximum lies in the mask.", ""]  # fmt: skip
    if result.get("localization_note"):
        parts += [f"Note: {result['localization_note']}", ""]
    parts += ["## Targets", ""] + [f"- {k}: {'yes' if v else 'NO'}" for k, v in result["targets"].items()] + [""]
    return "\n".join(parts)


def _display_frames(dm, val, index: list[int], size: int, split: str) -> list[np.ndarray]:
    """Frames at ``size`` from disk (the cached ones, upsampled, where the files are not found)."""
    from PIL import Image

    from cmav.data.errors import DataError
    from cmav.data.image_io import load_frame
    from cmav.data.layout import scan_paired, scan_suburmp
    from cmav.retrieval.heatmap import to_uint8_frame

    scan = scan_suburmp(dm.root, split) if dm.hparams.layout == "suburmp" else scan_paired(dm.root, split)
    paths = {(s.class_name, s.stem): s.image_path for s in scan.samples}
    frames = []
    for i in index:
        p = paths.get((val.class_names[int(val.labels[i])], val.stems[i]))
        try:
            frames.append(load_frame(p, size) if p is not None else None)
        except DataError:
            frames.append(None)
        if frames[-1] is None:
            small = Image.fromarray(to_uint8_frame(val.images[i]))
            frames[-1] = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))
    return frames


@torch.no_grad()
def _write_heatmaps(out: Path, dm, val, tasks, names, masks, baselines, display_size: int, split: str) -> None:
    from cmav.data.masks import load_mask, mask_path
    from cmav.retrieval.heatmap import heatmap_sheet, overlay, save_png

    index = []
    for c in range(len(val.class_names)):
        idx = (val.labels == c).nonzero().flatten()
        if len(idx):
            index.append(int(idx[len(idx) // 2]))
    sel = torch.tensor(index, dtype=torch.long)
    frames = _display_frames(dm, val, index, display_size, split)
    columns: dict[str, list[Tensor]] = {}
    for name, t in zip(names, tasks, strict=True):
        t.eval()
        heat = t.model.heatmap(val.audio[sel].float().to(t.device), _images(val, sel).to(t.device)).float().cpu()
        columns[name] = list(heat)
        for i, h in zip(index, heat, strict=True):
            safe = name.replace(" ", "_").replace("(", "").replace(")", "").replace("'", "p")
            save_png(overlay(frames[index.index(i)], h), out / "heatmaps" / f"{val.stems[i]}_{safe}.png")
    if "centre prior" in baselines:
        columns["centre prior"] = [baselines["centre prior"]] * len(index)
    shown_masks = None
    if masks is not None:
        shown_masks = []
        for i in index:
            p = mask_path(dm.root, split, val.class_names[int(val.labels[i])], val.stems[i])
            shown_masks.append(torch.from_numpy(load_mask(p, display_size)))
    sheet = heatmap_sheet(frames, columns, [val.stems[i] for i in index], masks=shown_masks, cell_size=128)
    sheet.save(out / "heatmaps.png")


__all__ = ["embed_split", "evaluate_retrieval", "format_report", "model_name", "split_heatmaps"]
