"""Reading video frames with Pillow: centre-square crop and resize, with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cmav.data.errors import DataError


def load_frame(path: str | Path, size: int) -> np.ndarray:
    """Load a frame as uint8 ``(size, size, 3)`` RGB.

    The central square is cropped before resizing (real Sub-URMP frames are 1920x1080; the player
    is centred), so aspect ratios are never distorted. JPEG decoding uses Pillow's draft mode,
    which lets libjpeg downscale 1080p frames while decoding.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file does not exist")
    if path.stat().st_size == 0:
        raise DataError(path, "image file is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            short = min(img.size)
            if img.format == "JPEG" and short >= 2 * size:
                img.draft("RGB", (img.size[0] * 2 * size // short, img.size[1] * 2 * size // short))
            img = img.convert("RGB")
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"not a readable image ({exc})") from exc
    return np.asarray(centre_square(img, size, Image.Resampling.BICUBIC), dtype=np.uint8)


def centre_square(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """The central square of ``img``, resized to ``size`` x ``size``: how every frame (and its mask) is framed."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != size:
        img = img.resize((size, size), resample, reducing_gap=2.0)
    return img
