"""A labelled grid of images: rows and columns with text labels, as one PIL image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def labelled_grid(
    cells: Sequence[Sequence[np.ndarray | Image.Image | None]],
    row_labels: Sequence[str] = (),
    col_labels: Sequence[str] = (),
    cell_size: int = 96,
    pad: int = 4,
    label_width: int = 110,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Lay ``cells[row][col]`` (uint8 HxWx3 arrays or PIL images; None = empty) on a white sheet.

    An array of another dtype is refused (``ValueError`` naming the cell): a cast would wrap floats
    in [0, 1] to 0 and 300 to 44. Convert first (:func:`cmav.viz.tensors.to_uint8_frame` for frames).

    Labels are drawn as text with Pillow's built-in font, so nothing needs to be installed.
    """
    n_rows = len(cells)
    n_cols = max((len(r) for r in cells), default=0)
    left = label_width if row_labels else 0
    top = 18 if col_labels else 0
    width = left + n_cols * (cell_size + pad) + pad
    height = top + n_rows * (cell_size + pad) + pad
    sheet = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for c, text in enumerate(col_labels):
        draw.text((left + pad + c * (cell_size + pad), 3), str(text), fill=(0, 0, 0), font=font)
    for r, row in enumerate(cells):
        y = top + pad + r * (cell_size + pad)
        if r < len(row_labels):
            draw.text((4, y + cell_size // 2 - 6), str(row_labels[r]), fill=(0, 0, 0), font=font)
        for c, cell in enumerate(row):
            if cell is None:
                continue
            if isinstance(cell, Image.Image):
                img = cell
            else:
                arr = np.asarray(cell)
                if arr.dtype != np.uint8:
                    raise ValueError(f"labelled_grid: cell [{r}][{c}] is {arr.dtype}; cells must be uint8 arrays "
                                     "(0..255) or PIL images")  # fmt: skip
                img = Image.fromarray(arr)
            img = img.convert("RGB").resize((cell_size, cell_size), Image.Resampling.BICUBIC)
            sheet.paste(img, (left + pad + c * (cell_size + pad), y))
    return sheet
