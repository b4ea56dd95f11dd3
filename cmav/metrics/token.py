"""The diffusion-token branch's scores (AudioToken's table): AIS, IIS, AIC; FID is :func:`fid_kid_from_features`.

Every generated image ``g_i`` comes from item ``i`` of an evaluation set (its audio ``a_i``, its
real frame ``r_i``, its label ``y_i``). For each ``i``, ``k`` other items ``j != i`` are drawn at
random (:func:`random_negatives`), and:

* **AIS** (audio-image similarity): the fraction of draws where ``sim(a_i, g_i) > sim(a_j, g_i)``
  under an audio-image (retrieval) model; chance 0.5.
* **IIS** (image-image similarity): the same with ``cos(f(g_i), f(r_i)) > cos(f(g_i), f(r_j))`` in
  the image judge's feature space ``f``; chance 0.5.
* **AIC** (audio-image consistency): the fraction of ``g_i`` the image judge assigns to ``y_i``.

Ties count one half (a model that gives constant similarities scores exactly chance). A score is NaN
when any similarity, feature or logit it compares is not finite (a diverged model): a NaN compares
false both ways and would read as a score of 0, or as class 0 under argmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cmav.metrics.classification import NO_PREDICTION


def random_negatives(n: int, k: int, seed: int = 0, pool: int | None = None) -> Tensor:
    """``(n, k)`` indices into a pool of ``pool`` items (default ``n``), row ``i`` never ``i``.

    Drawn uniformly with replacement from the ``pool - 1`` other items, from ``seed`` alone.
    """
    pool = n if pool is None else int(pool)
    if pool < 2 or n > pool:
        raise ValueError(f"negatives need a pool of at least 2 items and n <= pool, got n={n}, pool={pool}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    g = torch.Generator().manual_seed(int(seed))
    draw = torch.randint(0, pool - 1, (n, k), generator=g)
    own = torch.arange(n).view(-1, 1)
    return draw + (draw >= own).long()  # skip the item itself


def paired_win_rate(scores: Tensor, negatives: Tensor) -> float:
    """Fraction of ``(i, k)`` with ``scores[i, i] > scores[i, negatives[i, k]]`` (ties: one half).

    ``scores`` ``(N, M)``, ``M >= N``: similarity of query ``i`` to candidate ``j``; query ``i``'s own
    candidate is column ``i``. ``negatives`` ``(N, K)`` column indices. NaN when a score compared is
    not finite.
    """
    if scores.dim() != 2 or scores.shape[1] < scores.shape[0]:
        raise ValueError(f"scores must be (N, M) with M >= N, got {tuple(scores.shape)}")
    if negatives.dim() != 2 or negatives.shape[0] != scores.shape[0]:
        raise ValueError(f"negatives must be (N, K) with N = {scores.shape[0]}, got {tuple(negatives.shape)}")
    s = scores.double()
    n = s.shape[0]
    pos = s[torch.arange(n), torch.arange(n)].view(-1, 1)
    neg = torch.gather(s, 1, negatives.long())
    if not (bool(torch.isfinite(pos).all()) and bool(torch.isfinite(neg).all())):
        return float("nan")
    return float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())


def audio_image_similarity(scores: Tensor, negatives: Tensor) -> float:
    """AIS from ``scores[i, j]`` = similarity of generated image ``i`` and audio ``j`` (retrieval model)."""
    return paired_win_rate(scores, negatives)


def image_image_similarity(generated: Tensor, real: Tensor, negatives: Tensor) -> float:
    """IIS from judge features of the generated images ``(N, D)`` and the real frames ``(M, D)``
    (row ``i`` of each from the same item), compared by cosine similarity."""
    if generated.shape[1:] != real.shape[1:]:
        raise ValueError(f"feature sizes differ: generated {tuple(generated.shape)}, real {tuple(real.shape)}")
    scores = F.normalize(generated.double(), dim=1) @ F.normalize(real.double(), dim=1).T
    return paired_win_rate(scores, negatives)


def audio_image_consistency(predicted: Tensor, labels: Tensor) -> float:
    """AIC: fraction of generated images whose judged class ``predicted`` equals the audio's ``labels``;
    NaN when an image has no judged class (:data:`~cmav.metrics.classification.NO_PREDICTION`, how
    :func:`~cmav.metrics.judge_predictions` marks non-finite logits)."""
    predicted, labels = torch.as_tensor(predicted).flatten(), torch.as_tensor(labels).flatten()
    if predicted.shape != labels.shape or predicted.numel() == 0:
        raise ValueError(f"need as many predictions as labels (and some), got {predicted.numel()} and {labels.numel()}")
    if bool((predicted == NO_PREDICTION).any()) or not bool(torch.isfinite(predicted).all()):
        return float("nan")
    return float((predicted.long() == labels.long()).double().mean())


__all__ = [
    "audio_image_consistency",
    "audio_image_similarity",
    "image_image_similarity",
    "paired_win_rate",
    "random_negatives",
]
