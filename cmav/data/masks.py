"""Instrument masks for localisation metrics: ``<root>/mask/<split>/<class>/<stem>.png``.

Only cmav's stand-in has them (``cmav data build`` writes one per frame); the real Sub-URMP has
none, and :func:`load_split_masks` then raises :class:`MasksMissing` with a message saying so,
which callers turn into "localisation metrics skipped" rather than a crash.

A mask goes through exactly the frame's geometry (:func:`cmav.data.image_io.load_frame`): the
central square is cropped, then resized to the model's image size, so mask pixel (i, j) covers
frame pixel (i, j). Resizing averages the binary mask (bilinear) and thresholds at one half.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cmav.data.errors import DataError
from cmav.data.image_io import READ_ERRORS, centre_square, to_8_bit

MASK_DIR = "mask"


class MasksMissing(DataError):
    """A data set (or some of its frames) has no instrument masks."""


def mask_path(root: str | Path, split: str, class_name: str, stem: str) -> Path:
    """Where the mask of a Sub-URMP-layout pair lives."""
    return Path(root) / MASK_DIR / split / class_name / f"{stem}.png"


def load_mask(path: str | Path, size: int) -> np.ndarray:
    """A mask as bool ``(size, size)``: central square crop, resize, threshold at 0.5."""
    path = Path(path)
    if not path.is_file():
        raise MasksMissing(path, "mask file does not exist")
    try:
        with Image.open(path) as img:
            img = to_8_bit(img, path).convert("L")
            img.load()
    except DataError:
        raise
    except READ_ERRORS as exc:
        raise DataError(path, f"not a readable mask image ({exc})") from exc
    # bilinear: area-weighted coverage of each output pixel (binary masks do not survive bicubic ringing)
    return np.asarray(centre_square(img, size, Image.Resampling.BILINEAR)) >= 128


def load_split_masks(root: str | Path, split: str, stems: Sequence[str], class_names: Sequence[str],
                     labels: Sequence[int] | torch.Tensor, size: int) -> torch.Tensor:  # fmt: skip
    """Bool ``(N, size, size)`` masks of a split's pairs, in the given order.

    ``stems``, ``labels`` and ``class_names`` are those of the split's
    :class:`~cmav.data.cache.PairTensors`. Raises :class:`MasksMissing` when the data set has no
    ``mask/`` folder or any pair lacks its mask (the message counts them and names a few).
    """
    root = Path(root)
    folder = root / MASK_DIR / split
    if not folder.is_dir():
        raise MasksMissing(
            folder,
            "no instrument masks for this split (the real Sub-URMP has none; cmav's stand-in writes them: "
            "`cmav data build` adds them to an older build); localisation metrics need them",
        )
    labels = [int(x) for x in (labels.tolist() if isinstance(labels, torch.Tensor) else labels)]
    paths = [mask_path(root, split, class_names[c], s) for s, c in zip(stems, labels, strict=True)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = "\n  ".join(str(p) for p in missing[:5])
        raise MasksMissing(folder, f"{len(missing)} of {len(paths)} pairs have no mask, e.g.:\n  {shown}")
    out = torch.empty((len(paths), size, size), dtype=torch.bool)
    for i, p in enumerate(paths):
        out[i] = torch.from_numpy(load_mask(p, size))
    return out


__all__ = ["MASK_DIR", "MasksMissing", "load_mask", "load_split_masks", "mask_path"]
