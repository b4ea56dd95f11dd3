"""Checks of the paths a command is given, made before it loads a model or reads data: a bad output
path found only after minutes of work wastes them, and the OS error then names the wrong path."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

from cmav.data.errors import DataError

OUTPUT_OPTIONS = ("output", "out")
"""The ``dest`` names under which cmav's commands take their ``-o`` path (a file or a folder)."""


def refuse_under_a_file(path: str | Path) -> None:
    """Raise NotADirectoryError naming ``path`` when a folder above it is a regular file (the error
    would otherwise name the first folder written below it, e.g. a hidden partial one, and come
    only when the output is written, after the work)."""
    path = Path(path)
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))


def refuse_outputs_under_a_file(args: argparse.Namespace) -> None:
    """:func:`refuse_under_a_file` for a parsed command's ``-o`` (whichever of :data:`OUTPUT_OPTIONS` it has);
    for a command whose ``-o`` is a folder (``output_folder`` set by its parser), an existing regular
    file there is refused too (it failed only when the results were written, after the work)."""
    for name in OUTPUT_OPTIONS:
        value = getattr(args, name, None)
        if isinstance(value, (str, Path)) and str(value):
            refuse_under_a_file(value)
            if getattr(args, "output_folder", False) and Path(value).exists() and not Path(value).is_dir():
                raise DataError(value, "is a file; -o names a folder here")


def image_output(path: str | Path, option: str = "-o") -> None:
    """Refuse an image output whose suffix no Pillow writer takes (none, a folder, ``.txt``), naming
    ``option``: Pillow's own "unknown file extension" names neither, and comes after the work."""
    from cmav.evaluation.generate import image_suffixes

    suffixes = image_suffixes()
    text = str(path)
    is_folder = Path(path).is_dir() or text.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep))
    if is_folder or Path(path).suffix.lower() not in suffixes:
        usual = ", ".join(x for x in (".jpg", ".bmp", ".tif", ".webp") if x in suffixes)
        raise ValueError(f"{option} {text}: write a .png (or {usual} ...: any format Pillow writes); name the "
                         "image file so")  # fmt: skip


def input_file(path: str | Path, what: str) -> None:
    """Refuse a folder given where ``what`` (e.g. ``"an image file"``) is wanted, naming it (a missing
    file is left to the reader, whose error already says so)."""
    if Path(path).is_dir():
        raise DataError(path, f"is a folder, not {what}")


__all__ = ["image_output", "input_file", "refuse_outputs_under_a_file", "refuse_under_a_file"]
