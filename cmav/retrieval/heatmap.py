"""Heatmap pictures: a per-location similarity map coloured and laid over its frame."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cmav.viz.tensors import lms_picture, to_uint8_frame


def colourise(heat: np.ndarray | torch.Tensor, cmap: str = "jet") -> np.ndarray:
    """Min-max normalised heat ``(H, W)`` through a matplotlib colour map -> ``(H, W, 3)`` uint8."""
    from matplotlib import colormaps

    h = torch.as_tensor(heat).float()
    h = (h - h.min()) / (h.max() - h.min()).clamp(min=1e-12)
    rgba = colormaps[cmap](h.cpu().numpy())
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def overlay(frame: np.ndarray, heat: np.ndarray | torch.Tensor, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """``frame`` ``(H, W, 3)`` uint8 blended with the coloured ``heat`` (resized bilinearly to the frame)."""
    h = torch.as_tensor(heat).float()
    if tuple(h.shape) != tuple(frame.shape[:2]):
        h = F.interpolate(h[None, None], size=frame.shape[:2], mode="bilinear", align_corners=False)[0, 0]
    colour = colourise(h, cmap).astype(np.float32)
    out = (1 - alpha) * frame.astype(np.float32) + alpha * colour
    return out.round().clip(0, 255).astype(np.uint8)


def mask_picture(mask: np.ndarray | torch.Tensor, size: int | None = None) -> np.ndarray:
    """A bool mask as a black/white ``(H, W, 3)`` uint8 picture (nearest-resized to ``size``)."""
    m = (np.asarray(torch.as_tensor(mask).cpu().numpy(), dtype=np.uint8) * 255)
    img = Image.fromarray(m)
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.NEAREST)
    return np.stack([np.asarray(img)] * 3, axis=-1)


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def heatmap_sheet(frames: Sequence[np.ndarray], heat_columns: dict[str, Sequence[torch.Tensor]],
                  row_labels: Sequence[str], masks: Sequence[torch.Tensor] | None = None,
                  cell_size: int = 128) -> Image.Image:  # fmt: skip
    """Rows: items; columns: frame | mask (if given) | one overlay per heatmap source."""
    from cmav.viz.grid import labelled_grid

    rows = []
    for i, frame in enumerate(frames):
        row = [frame]
        if masks is not None:
            row.append(mask_picture(masks[i], frame.shape[0]))
        row += [overlay(frame, heats[i]) for heats in heat_columns.values()]
        rows.append(row)
    cols = ["frame"] + (["mask"] if masks is not None else []) + list(heat_columns)
    return labelled_grid(rows, row_labels, cols, cell_size=cell_size)


__all__ = ["colourise", "heatmap_sheet", "lms_picture", "mask_picture", "overlay", "save_png", "to_uint8_frame"]
