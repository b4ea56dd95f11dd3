"""Reading video frames with Pillow: centre-square crop and resize, with clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cmav.data.errors import DataError

READ_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError)
"""What Pillow raises for a file it cannot decode; DecompressionBombError (a corrupt header
claiming billions of pixels) is not an OSError."""

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def to_8_bit(img: Image.Image, path: str | Path) -> Image.Image:
    """``img`` with 8 bits per channel: 16-bit greyscale (a 16-bit PNG opens as ``I;16``, or ``I``
    in older Pillow) scaled from 0..65535 to 0..255; 8-bit modes as they are. Pillow's own
    ``convert`` clips such values at 255 instead, so every frame would turn white. Modes whose
    range is unknown (32-bit integer, float) are refused by name."""
    mode = img.mode
    if mode in SIXTEEN_BIT_MODES or (mode == "I" and img.format == "PNG"):
        wide = np.asarray(img).astype(np.uint32)
        return Image.fromarray(((np.clip(wide, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8), mode="L")
    if mode.startswith("I") or mode == "F":
        kind = {"I": "32-bit integer", "F": "floating-point"}.get(mode, "integer")
        raise DataError(path, f"image of mode {mode} ({kind} pixels, range unknown); save frames as 8- or 16-bit "
                              "images")  # fmt: skip
    return img


def check_image_size(size: int, name: str = "image_size") -> int:
    """``size`` as an int, or ``ValueError`` naming ``name`` unless it is a whole number >= 1 (a frame's side)."""
    try:
        whole = not isinstance(size, bool) and int(size) == size
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise ValueError(f"{name} must be a whole number >= 1, got {size!r}")
    if size < 1:
        raise ValueError(f"{name} must be >= 1, got {size!r}")
    return int(size)


def load_frame(path: str | Path, size: int) -> np.ndarray:
    """Load a frame as uint8 ``(size, size, 3)`` RGB.

    The central square is cropped before resizing (real Sub-URMP frames are 1920x1080; the player
    is centred), so aspect ratios are never distorted. JPEG decoding uses Pillow's draft mode,
    which lets libjpeg downscale 1080p frames while decoding.
    """
    size = check_image_size(size, "size")
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
            img = to_8_bit(img, path).convert("RGB")
            img.load()
    except DataError:
        raise
    except READ_ERRORS as exc:
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
