"""Writing a file (or a folder) whole or not at all, clearing what a killed writer left, and hashing a file."""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    # read once, at import: os.umask can only be read by setting it, which must not race other threads
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _umask()
_NEW_FILE_MODE = 0o666 & ~_UMASK
_NEW_DIR_MODE = 0o777 & ~_UMASK
PARTIAL = ".partial"
"""Suffix of the hidden temporaries (``.<name>.<random>.partial``) that :func:`atomic_write` and
:func:`atomic_folder` fill before renaming them into place."""
STALE_PARTIAL_S = 3600.0
"""Age after which :func:`remove_stale_partials` takes a temporary for a killed writer's: a live
writer's is far younger (a cache file is written in seconds, once its features are computed)."""


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write ``path`` through a hidden temporary file in its folder (``write(tmp)``), renamed into
    place when it returns: a reader never sees a half-written file, and a write that fails (an
    exception, Ctrl-C) leaves none behind. A killed process (SIGKILL, out of memory) cannot clean up:
    its ``.<name>.<random>.partial`` stays until :func:`remove_stale_partials` clears it. The file
    gets the usual mode of a new file (the umask's), not the owner-only mode of a temporary file, so
    that a data set or pack written here can be shared."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _NEW_FILE_MODE)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Fill a hidden temporary sibling of ``path`` (``.<name>.<random>.partial``, yielded) in the
    ``with`` block, renamed to ``path`` when the block ends: ``path`` appears whole or not at all, and a
    block that fails removes the temporary, so nothing blocks a retry. ``path`` must not exist or be an
    empty folder (the rename replaces an empty one). The folder gets the usual mode of a new folder
    (the umask's), not mkdtemp's owner-only one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=PARTIAL, dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _NEW_DIR_MODE)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_partials(path: str | Path, older_than_s: float = STALE_PARTIAL_S) -> list[Path]:
    """Remove the hidden temporaries of ``path`` (files or folders, see :func:`atomic_write` and
    :func:`atomic_folder`) last modified more than ``older_than_s`` seconds ago: what a writer killed
    before it could clean up left. A younger one may be a live writer's and is left alone. Returns
    what was removed; one that cannot be removed is left (it is only disk space)."""
    path = Path(path)
    now = time.time()
    removed = []
    for p in path.parent.glob(f".{glob.escape(path.name)}.*{PARTIAL}"):
        try:
            newest = max([p.lstat().st_mtime] + ([c.lstat().st_mtime for c in p.iterdir()] if p.is_dir() else []))
            if now - newest < older_than_s:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        except OSError:
            continue
        removed.append(p)
    return removed


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, as hex, read a megabyte at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


__all__ = ["atomic_folder", "atomic_write", "remove_stale_partials", "sha256_file"]
