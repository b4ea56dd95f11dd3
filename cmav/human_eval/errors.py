"""The one error type of ``cmav human-eval``: a study or ratings file that cannot be used."""

from __future__ import annotations

from cmav.data.errors import DataError


class HumanEvalError(DataError):
    """A study folder, run or ratings file cannot be used; the message starts with its path.

    A :class:`~cmav.data.errors.DataError` (hence a ``ValueError``), so the ``cmav`` dispatcher
    prints it as one ``error: PATH: problem`` line and exits 2, like every other input error."""
