"""Writing a file whole or not at all, and hashing one."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _new_file_mode() -> int:
    # read once, at import: os.umask can only be read by setting it, which must not race other threads
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_NEW_FILE_MODE = _new_file_mode()


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write ``path`` through a hidden temporary file in its folder (``write(tmp)``), renamed into
    place when it returns: a reader never sees a half-written file, and an interrupted write leaves
    none behind. The file gets the usual mode of a new file (the umask's), not the owner-only mode of
    a temporary file, so that a data set or pack written here can be shared."""
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


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, as hex, read a megabyte at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


__all__ = ["atomic_write", "sha256_file"]
