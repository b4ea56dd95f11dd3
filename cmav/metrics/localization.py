"""Localisation of a sound source in its frame: heatmap vs ground-truth mask.

All functions take heatmaps ``(N, H, W)`` (any real scores, higher = "the sound comes from here")
and boolean masks of the same shape. Images whose mask is empty are left out (and counted).

* **AP** (as DenseAV scores heatmaps against ADE20K masks): per image, the average precision of
  the pixel scores ranking the mask's pixels first (step-wise, like scikit-learn's
  ``average_precision_score``: tied scores form one threshold), then the mean over images.
* **mIoU**: per image, the heatmap is min-max normalised to [0, 1] and thresholded at 0.5 (a
  fixed rule needing no tuning on the evaluated data); IoU with the mask, mean over images. Also
  ``miou_best``: the best mean IoU over a fixed sweep of thresholds on the normalised maps,
  chosen on the evaluated data itself, i.e. an optimistic upper bound, labelled as such.
* **Pointing game**: a hit when the heatmap's maximum falls inside the mask (ties: the first
  maximum in row-major order).

Baselines: :func:`centre_prior` (a centred Gaussian; real players are centred) and
:func:`mean_mask_prior` (the average training mask: where instruments usually are).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

IOU_SWEEP: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _check(heatmaps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    if heatmaps.dim() == 2:
        heatmaps, masks = heatmaps.unsqueeze(0), masks.unsqueeze(0)
    if heatmaps.shape != masks.shape or heatmaps.dim() != 3:
        raise ValueError(f"heatmaps and masks must both be (N, H, W), got {tuple(heatmaps.shape)} and "
                         f"{tuple(masks.shape)}")  # fmt: skip
    return heatmaps.float().flatten(1), masks.bool().flatten(1)


def average_precision(heatmap: Tensor, mask: Tensor) -> float:
    """AP of one heatmap's pixel scores against one mask (NaN for an empty mask)."""
    return float(per_image_ap(heatmap.unsqueeze(0), mask.unsqueeze(0))[0])


def per_image_ap(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """``(N,)`` average precision of every image (NaN where the mask is empty)."""
    h, m = _check(heatmaps, masks)
    out = torch.full((h.shape[0],), float("nan"))
    for i in range(h.shape[0]):
        pos = int(m[i].sum())
        if pos == 0:
            continue
        order = torch.argsort(h[i], descending=True)
        s, y = h[i][order], m[i][order].float()
        tp = y.cumsum(0)
        # the last index of every run of equal scores is one threshold
        last = torch.ones_like(s, dtype=torch.bool)
        last[:-1] = s[1:] != s[:-1]
        idx = last.nonzero().flatten()
        tp_t = tp[idx]
        precision = tp_t / (idx + 1).float()
        recall = tp_t / pos
        d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
        out[i] = float((d_recall * precision).sum())
    return out


def normalise(heatmaps: Tensor) -> Tensor:
    """Min-max normalise every map of ``(N, H, W)`` to [0, 1] (a constant map becomes 0)."""
    flat = heatmaps.float().flatten(1)
    lo = flat.amin(1, keepdim=True)
    hi = flat.amax(1, keepdim=True)
    return ((flat - lo) / (hi - lo).clamp(min=1e-12)).view_as(heatmaps)


def per_image_iou(heatmaps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """``(N,)`` IoU of ``normalise(heatmap) >= threshold`` with the mask (NaN for empty masks)."""
    h, m = _check(heatmaps, masks)  # (N, H*W) first: a single (H, W) map is normalised as one map
    h = normalise(h)
    pred = h >= threshold
    inter = (pred & m).sum(1).float()
    union = (pred | m).sum(1).float()
    iou = inter / union.clamp(min=1)
    return torch.where(m.any(1), iou, torch.full_like(iou, float("nan")))


def pointing_hits(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """``(N,)`` 1.0 where the heatmap's argmax is inside the mask, 0.0 outside, NaN for empty masks."""
    h, m = _check(heatmaps, masks)
    hit = torch.gather(m, 1, h.argmax(1, keepdim=True)).squeeze(1).float()
    return torch.where(m.any(1), hit, torch.full_like(hit, float("nan")))


def localization_report(heatmaps: Tensor, masks: Tensor, thresholds: Sequence[float] = IOU_SWEEP) -> dict:
    """``{"ap", "miou", "miou_best", "miou_best_threshold", "pointing", "n", "n_empty_masks"}``."""
    if heatmaps.dim() == 2:
        heatmaps, masks = heatmaps.unsqueeze(0), masks.unsqueeze(0)
    _check(heatmaps, masks)
    valid = masks.bool().flatten(1).any(1)
    h, m = heatmaps[valid].float(), masks[valid].bool()
    nan = float("nan")
    if h.shape[0] == 0:
        return {"ap": nan, "miou": nan, "miou_best": nan, "miou_best_threshold": nan, "pointing": nan,
                "n": 0, "n_empty_masks": int((~valid).sum())}  # fmt: skip
    sweep = {t: float(per_image_iou(h, m, t).mean()) for t in thresholds}
    best_t = max(sweep, key=lambda t: sweep[t])
    return {
        "ap": float(per_image_ap(h, m).mean()),
        "miou": float(per_image_iou(h, m, 0.5).mean()),
        "miou_best": sweep[best_t],
        "miou_best_threshold": best_t,
        "pointing": float(pointing_hits(h, m).mean()),
        "n": int(h.shape[0]),
        "n_empty_masks": int((~valid).sum()),
    }


def centre_prior(size: int | tuple[int, int], sigma: float = 0.25) -> Tensor:
    """A centred isotropic Gaussian ``(H, W)``; ``sigma`` as a fraction of the side."""
    hgt, wid = (size, size) if isinstance(size, int) else size
    y = (torch.arange(hgt, dtype=torch.float32) + 0.5) / hgt - 0.5
    x = (torch.arange(wid, dtype=torch.float32) + 0.5) / wid - 0.5
    return torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))


def mean_mask_prior(masks: Tensor) -> Tensor:
    """The pixel-wise frequency of the mask over a set of (training) masks ``(N, H, W)`` -> ``(H, W)``."""
    return masks.float().mean(0)


def format_localization_table(rows: dict[str, dict]) -> str:
    """Markdown table: one row per heatmap source (model or baseline)."""
    lines = ["| heatmap | AP | mIoU@0.5 | mIoU best-threshold (optimistic) | pointing game | n |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        best = f"{r['miou_best']:.3f} (t={r['miou_best_threshold']})"
        lines.append(f"| {name} | {r['ap']:.3f} | {r['miou']:.3f} | {best} | {r['pointing']:.3f} | {r['n']} |")
    return "\n".join(lines)


__all__ = [
    "IOU_SWEEP",
    "average_precision",
    "centre_prior",
    "format_localization_table",
    "localization_report",
    "mean_mask_prior",
    "normalise",
    "per_image_ap",
    "per_image_iou",
    "pointing_hits",
]
