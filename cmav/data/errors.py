"""Errors and warnings about input data: each names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file or folder cannot be used. The message starts with the offending path."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DataWarning(UserWarning):
    """Data that can be used, but not as it is (resampled, mixed to mono, padded, silent...)."""
