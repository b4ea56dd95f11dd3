"""Exponential moving average of a model's weights (for evaluating the generator with EMA
weights, as stylegan2-ada does).

Why not :class:`torch.optim.swa_utils.AveragedModel` with ``get_ema_multi_avg_fn``: its first
``update_parameters`` call overwrites the average with the current weights whatever the decay,
and with ``use_buffers=True`` it averages BatchNorm running statistics instead of copying them.
Here the copy is made once at construction, every update applies the decay, and buffers are
copied (stylegan2-ada semantics).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class ExponentialMovingAverage(nn.Module):
    """Holds ``module``, a frozen deep copy of a model kept in eval mode, updated as
    ``ema = decay * ema + (1 - decay) * model`` for parameters; buffers are copied.

    Being an ``nn.Module`` it follows ``.to(device)`` and lands in the owner's ``state_dict``
    (checkpoints) when assigned as an attribute; its parameters have ``requires_grad=False``.
    ``train()`` never switches the copy out of eval mode.

    Args:
        model: the model to track (copied now).
        decay: EMA decay in [0, 1]; 0 = follow the model, 1 = frozen.
        copy_buffers: copy buffers (BatchNorm running stats, spectral-norm vectors) on every
            update; if False, floating-point buffers are averaged like parameters, except the
            spectral-norm power-iteration vectors, which are always copied (an average of unit
            vectors is not one, and the eval-mode copy never renormalises it).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, copy_buffers: bool = True) -> None:
        super().__init__()
        self._check_decay(decay)
        self.decay = float(decay)
        self.copy_buffers = copy_buffers
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.module.eval()
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))

    @staticmethod
    def _check_decay(decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay (a task's ema_decay) must be in [0, 1], got {decay}")

    @staticmethod
    def _pairs(a: dict[str, Tensor], b: dict[str, Tensor], what: str) -> list[tuple[Tensor, Tensor]]:
        if a.keys() != b.keys():
            raise ValueError(f"EMA and model {what} differ: {sorted(a.keys() ^ b.keys())}")
        return [(a[k], b[k]) for k in a]

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """Move the average towards ``model``; ``decay`` overrides the default for this call
        (e.g. a ramp-up schedule)."""
        d = self.decay if decay is None else float(decay)
        self._check_decay(d)
        params = self._pairs(
            dict(self.module.named_parameters()), dict(model.named_parameters()), "parameters"
        )
        for ema_p, p in params:
            ema_p.lerp_(p.detach().to(ema_p.dtype), 1.0 - d)
        ema_bufs, bufs = dict(self.module.named_buffers()), dict(model.named_buffers())
        self._pairs(ema_bufs, bufs, "buffers")
        for name, ema_b in ema_bufs.items():
            b = bufs[name]
            if self.copy_buffers or not ema_b.is_floating_point() or _is_spectral_norm_vector(name):
                ema_b.copy_(b)
            else:
                ema_b.lerp_(b.to(ema_b.dtype), 1.0 - d)
        self.n_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights and buffers into ``model`` (same architecture)."""
        model.load_state_dict(self.module.state_dict())

    def train(self, mode: bool = True) -> ExponentialMovingAverage:
        # the averaged copy is for evaluation only; keep BN/dropout in inference mode
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, *args, **kwargs):
        """Run the averaged model."""
        return self.module(*args, **kwargs)


def _is_spectral_norm_vector(name: str) -> bool:
    """``weight_u``/``weight_v`` (``nn.utils.spectral_norm``) or ``..._u``/``..._v`` (its parametrization)."""
    return name.rsplit(".", 1)[-1] in ("weight_u", "weight_v", "_u", "_v")


def ema_decay_at(update: int, max_decay: float) -> float:
    """EMA decay at the ``update``-th update, ramped up from 0.1 so early averages are not dominated
    by the random init."""
    return min(max_decay, (1.0 + update) / (10.0 + update))


__all__ = ["ExponentialMovingAverage", "ema_decay_at"]
