"""Test-time adaptation of a model's batch-norm statistics to another source (AdaBN).

A model trained on one set of recordings normalises its inputs with that set's statistics; another
set puts every feature at another offset and scale. AdaBN (Li et al., "Revisiting Batch
Normalization For Practical Domain Adaptation", 2016) re-estimates the running mean and variance of
every batch-norm layer on unlabelled inputs from the new source and changes nothing else.

It is transductive: it reads the evaluation source's audio (never its labels), and it assumes that
audio covers the classes much as the training data did. So a figure measured with it is reported
apart from the plain cross-source figure, never in its place.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch-norm layer of ``model`` that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _forward_order(model: nn.Module, layers: list[nn.Module], probe: Tensor) -> list[nn.Module]:
    """``layers`` in the order ``model``'s forward first calls them (definition order need not be it);
    layers the forward never reaches are left out."""
    seen: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda m, _: seen.append(m) if m not in seen else None) for m in layers]
    try:
        model(probe)
    finally:
        for h in hooks:
            h.remove()
    return seen


class _ChannelMoments:
    """Per-channel count, mean and sum of squared deviations of a batch-norm layer's inputs, merged
    batch by batch in float64 (Chan et al.'s pairwise update: no cancellation at large means)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        dims = [0, *range(2, x.dim())]
        x = x.detach().double()
        n_b = x.numel() // x.shape[1]
        mean_b = x.mean(dims)
        m2_b = ((x - mean_b.view(1, -1, *([1] * (x.dim() - 2)))) ** 2).sum(dims)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n


@torch.no_grad()
def adapt_batch_norm(model: nn.Module, inputs: Tensor, batch_size: int = 256) -> nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are re-estimated on ``inputs``
    (unlabelled, one source); ``model`` itself is left as it was.

    Each layer gets the exact mean and (unbiased) variance of its inputs over all of ``inputs``,
    layer by layer in forward order, the layers before it already adapted (Li et al.'s
    formulation). So the result does not depend on the order of ``inputs`` or on ``batch_size``
    (which only bounds memory). Averaging per-batch statistics instead would leave out the spread
    of the batch means, which is large when a split comes sorted by class. The model stays in eval
    mode throughout: dropout and feature noise stay off.
    """
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError(f"adapt_batch_norm: {type(model).__name__} has no batch-norm layer with running statistics")
    if len(inputs) < 2:
        raise ValueError(f"adapt_batch_norm: need at least 2 inputs to estimate statistics, got {len(inputs)}")
    adapted = copy.deepcopy(model).eval()
    device = next(adapted.parameters(), torch.empty(0)).device
    chunks = torch.split(inputs, max(1, int(batch_size)))

    def batches():
        for chunk in chunks:
            yield chunk.to(device, torch.float32)

    for layer in _forward_order(adapted, batch_norm_layers(adapted), next(batches())):
        moments = _ChannelMoments()
        hook = layer.register_forward_pre_hook(lambda _, args, m=moments: m.add(args[0]))
        try:
            for x in batches():
                adapted(x)
        finally:
            hook.remove()
        if moments.n < 2:
            raise ValueError(f"adapt_batch_norm: {moments.n} value per channel reaches {layer}: too few to adapt it")
        layer.running_mean.copy_(moments.mean.to(layer.running_mean.dtype))
        layer.running_var.copy_((moments.m2 / (moments.n - 1)).to(layer.running_var.dtype))
        if layer.num_batches_tracked is not None:
            layer.num_batches_tracked.fill_(len(chunks))
    return adapted.eval()


__all__ = ["adapt_batch_norm", "batch_norm_layers"]
