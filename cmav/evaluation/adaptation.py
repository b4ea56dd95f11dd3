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
import math

import torch
from torch import Tensor, nn


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch-norm layer of ``model`` that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def adapt_batch_norm(model: nn.Module, inputs: Tensor, batch_size: int = 256) -> nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are re-estimated on ``inputs``
    (unlabelled, one source); ``model`` itself is left as it was.

    The inputs go through in near-equal batches of at most ``batch_size`` (each batch's statistics
    count equally), with every other layer in eval mode: dropout and feature noise stay off.
    """
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError(f"adapt_batch_norm: {type(model).__name__} has no batch-norm layer with running statistics")
    if len(inputs) < 2:
        raise ValueError(f"adapt_batch_norm: need at least 2 inputs to estimate statistics, got {len(inputs)}")
    adapted = copy.deepcopy(model).eval()
    device = next(adapted.parameters(), torch.empty(0)).device
    adapted_layers = batch_norm_layers(adapted)
    for layer in adapted_layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches, not an exponential one
        layer.train()
    n_batches = math.ceil(len(inputs) / batch_size)  # >= 1: at least 2 inputs
    # near-equal batches, so a last batch of one example cannot occur
    for chunk in torch.tensor_split(inputs, n_batches):
        adapted(chunk.to(device, torch.float32))
    for layer, original in zip(adapted_layers, layers, strict=True):
        layer.momentum = original.momentum
    return adapted.eval()


__all__ = ["adapt_batch_norm", "batch_norm_layers"]
