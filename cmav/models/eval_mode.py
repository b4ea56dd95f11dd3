"""A module in eval mode for one call, handed back with every submodule in its own mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode inside the ``with``, then every submodule in its own mode again.

    A model left in train mode would use batch statistics and dropout, and overwrite its BatchNorm
    running statistics for good. The flags are restored one by one, not by ``train(was)``: some
    tasks keep a frozen part in eval mode under a module in train mode, and a judge in eval mode
    under a new wrapper (nn.Modules start in train mode) would be put into train mode."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
