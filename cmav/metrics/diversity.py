"""Diversity over noise: do different noise draws for the same condition give different outputs?

A conditional GAN that ignores its noise (mode collapse) scores 0 here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def feature_diversity(features: Tensor) -> float:
    """Mean pairwise L2 distance between draws of the same condition, averaged over conditions.

    ``features``: (n_conditions, n_draws, D) (trailing dims beyond 3 are flattened into D).
    Each condition contributes the mean over its n_draws*(n_draws-1)/2 unordered pairs. 0 means
    every draw is identical. The scale is that of the feature space, so compare within one space.
    """
    f = torch.as_tensor(features)
    if f.ndim < 3:
        raise ValueError(f"expected (n_conditions, n_draws, D), got shape {tuple(f.shape)}")
    f = f.reshape(f.shape[0], f.shape[1], -1).double()
    k = f.shape[1]
    if k < 2:
        raise ValueError("need at least 2 draws per condition to measure diversity")
    if f.shape[0] == 0:
        raise ValueError("no conditions")
    # cdist's matrix-product shortcut (taken above 25 draws) leaves rounding noise where draws are equal
    dist = torch.cdist(f, f, compute_mode="donot_use_mm_for_euclid_dist")  # (C, K, K)
    iu = torch.triu_indices(k, k, offset=1)
    return float(dist[:, iu[0], iu[1]].mean())


@torch.no_grad()
def diversity_over_noise(
    generator_fn: Callable[[Any], Tensor],
    conds: Any,
    n_draws: int = 8,
    feature_fn: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
) -> float:
    """Generate ``n_draws`` outputs per condition and return their :func:`feature_diversity`.

    ``generator_fn(conds)`` must return (n_conditions, ...) outputs and draw its noise from torch's
    global RNG; it is called ``n_draws`` times with the same ``conds``. ``feature_fn`` maps outputs
    to (n_conditions, D) (e.g. a :class:`~cmav.metrics.fidelity.JudgeFeatureExtractor`); default:
    the flattened outputs themselves. The RNG is seeded with ``seed`` inside a forked RNG state, so
    results are reproducible and the caller's RNG stream is left untouched.
    """
    if n_draws < 2:
        raise ValueError("n_draws must be >= 2")
    feats = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(n_draws):
            out = generator_fn(conds)
            f = feature_fn(out) if feature_fn is not None else out
            feats.append(f.reshape(f.shape[0], -1).double().cpu())
    return feature_diversity(torch.stack(feats, dim=1))
