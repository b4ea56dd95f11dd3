"""Retrieval metrics from a score matrix and a relevance matrix, with their chance levels.

A query's gallery is ranked by score, highest first. **Ties are broken pessimistically**: at equal
scores the irrelevant items come first, so a tie never helps a model: one that outputs constant
scores gets the worst numbers there are (below chance), never whatever order the gallery happens
to be stored in. Scores keep their precision (float64 stays float64), so close scores are not
made ties.

Per query (queries with no relevant item are left out and counted):

* ``R@k``: 1 if a relevant item is in the top k;
* rank: 1-based rank of the first relevant item; ``median_rank`` is the median over queries;
* ``MRR``: mean of 1 / rank;
* ``mAP``: mean over queries of average precision (mean of precision@rank over every relevant
  item's rank).

Chance levels are the exact expectations under a uniformly random ranking of a gallery of N items
with R relevant ones (per query, then averaged as the metric is): ``R@k = 1 - C(N-R, k) / C(N, k)``,
``P(rank = r) = C(N-r, R-1) / C(N, R)``, and ``E[AP] = (H_N + (R-1)/(N-1) * (N - H_N)) / N``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def sorted_relevance(scores: Tensor, relevance: Tensor, chunk: int = 1024) -> Tensor:
    """Relevance of each query's gallery in ranked order ``(Nq, Ng)`` bool (ties: irrelevant first)."""
    if scores.shape != relevance.shape or scores.dim() != 2:
        raise ValueError(f"scores and relevance must be the same (Nq, Ng) shape, got {tuple(scores.shape)}, "
                         f"{tuple(relevance.shape)}")  # fmt: skip
    out = []
    for i in range(0, scores.shape[0], chunk):
        s = scores[i : i + chunk]
        s = s if s.is_floating_point() else s.float()
        r = relevance[i : i + chunk].bool()
        # two stable sorts = lexicographic (score desc, relevant last): pessimistic ties
        first = torch.sort(r.to(torch.uint8), dim=1, stable=True).indices
        second = torch.sort(torch.gather(s, 1, first), dim=1, descending=True, stable=True).indices
        out.append(torch.gather(torch.gather(r, 1, first), 1, second))
    return torch.cat(out) if out else relevance.bool()


def retrieval_metrics(scores: Tensor, relevance: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """``R@k``, ``median_rank``, ``MRR``, ``mAP`` and their chance levels.

    ``scores`` ``(Nq, Ng)``: higher = more similar; ``relevance`` ``(Nq, Ng)`` bool.
    Returns a JSON-ready dict: ``{"R@1": ..., "median_rank": ..., "MRR": ..., "mAP": ...,
    "chance": {same keys}, "n_queries": ..., "n_gallery": ..., "n_without_relevant": ...}``.
    """
    ranked = sorted_relevance(scores, relevance)
    n_rel = ranked.sum(1)
    keep = n_rel > 0
    ranked, n_rel = ranked[keep], n_rel[keep]
    n_gallery = int(scores.shape[1])
    result: dict = {
        "n_queries": int(keep.sum()),
        "n_gallery": n_gallery,
        "n_without_relevant": int((~keep).sum()),
    }
    if ranked.shape[0] == 0:
        nan = float("nan")
        result.update({f"R@{k}": nan for k in ks})
        result.update(median_rank=nan, MRR=nan, mAP=nan, chance={})
        return result
    first = ranked.float().argmax(1) + 1  # 1-based rank of the first relevant item
    for k in ks:
        result[f"R@{k}"] = float((first <= k).float().mean())
    result["median_rank"] = _median(first)
    result["MRR"] = float((1.0 / first.float()).mean())
    hits = ranked.float().cumsum(1)
    positions = torch.arange(1, n_gallery + 1, dtype=torch.float32)
    ap = (hits / positions * ranked.float()).sum(1) / n_rel.float()
    result["mAP"] = float(ap.mean())
    result["chance"] = chance_levels(n_gallery, n_rel.tolist(), ks)
    return result


def _median(x: Tensor) -> float:
    """The usual median (mean of the two middle values for an even count; torch takes the lower)."""
    v = torch.sort(x.double()).values
    n = v.numel()
    return float(v[n // 2]) if n % 2 else float((v[n // 2 - 1] + v[n // 2]) / 2)


def _first_rank_distribution(n: int, r: int) -> np.ndarray:
    """``P(first relevant at rank k)`` for k = 1 .. n - r + 1 under a random ranking, ``C(n-k, r-1) / C(n, r)``.

    In floats by the ratio of neighbouring terms, ``P(k+1) = P(k) (n-k-r+1) / (n-k)``: the binomials
    themselves are integers of thousands of digits at N = 10,000, too slow to take every epoch.
    """
    k = np.arange(1, n - r + 1, dtype=np.float64)
    ratios = (n - k - r + 1) / (n - k)
    return (r / n) * np.concatenate(([1.0], np.cumprod(ratios)))


def chance_levels(n_gallery: int, n_relevant: Sequence[int], ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Expected metrics under a uniformly random ranking (see the module docstring).

    ``n_relevant``: the number of relevant items of every query. ``median_rank`` is the median of
    the first-relevant rank over all queries' random rankings together.
    """
    n = n_gallery
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1, dtype=np.float64)))
    counts = Counter(int(x) for x in n_relevant)
    n_queries = sum(counts.values())
    keys = [f"R@{k}" for k in ks] + ["MRR", "mAP"]
    out = dict.fromkeys(keys, 0.0)
    # the median over queries of the first relevant rank: the median of the queries' rank distributions
    # mixed (not the median of each query's median, which is off when the relevant counts differ)
    mixture = np.zeros(n, dtype=np.float64)
    for r, count in counts.items():
        dist = _first_rank_distribution(n, r)
        weight = count / n_queries
        for k in ks:
            out[f"R@{k}"] += weight * (1.0 - (math.comb(n - r, k) / math.comb(n, k) if k <= n else 0.0))
        out["MRR"] += weight * float(np.sum(dist / np.arange(1, len(dist) + 1)))
        out["mAP"] += weight * (harmonic + (r - 1) / max(n - 1, 1) * (n - harmonic)) / n
        mixture[: len(dist)] += weight * dist
    out["median_rank"] = _distribution_median(mixture)
    return out


def _distribution_median(dist: np.ndarray) -> float:
    """The median rank of ``P(rank = k)``, k = 1 ..: exactly half at or below k puts it between k and
    k + 1, as a sample median would."""
    cum = np.cumsum(dist)
    reached = np.flatnonzero(cum >= 0.5 - 1e-12)
    if reached.size == 0:
        return float(len(dist))
    k = int(reached[0]) + 1
    return k + 0.5 if abs(cum[k - 1] - 0.5) <= 1e-12 and k < len(dist) else float(k)


def class_relevance(query_labels: Tensor, gallery_labels: Tensor) -> Tensor:
    """``(Nq, Ng)`` bool: same class (instrument)."""
    return query_labels.view(-1, 1) == gallery_labels.view(1, -1)


def instance_relevance(n: int) -> Tensor:
    """``(n, n)`` bool identity: only the paired item is relevant (queries and gallery aligned)."""
    return torch.eye(n, dtype=torch.bool)


def cross_modal_report(scores_a2i: Tensor, labels: Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Audio->image and image->audio retrieval over one split, class- and instance-level.

    ``scores_a2i`` ``(N, N)``: audio i vs image j of the same N pairs (row i and column i are a
    pair). Returns ``{"a2i": {"class": ..., "instance": ...}, "i2a": {...}}`` of
    :func:`retrieval_metrics` dicts.
    """
    labels = labels.view(-1).cpu()
    # float64 stays float64 (the module's promise: close scores are not made ties); only integers are cast
    scores_a2i = (scores_a2i if scores_a2i.is_floating_point() else scores_a2i.float()).cpu()
    cls = class_relevance(labels, labels)
    inst = instance_relevance(len(labels))
    return {
        direction: {"class": retrieval_metrics(s, cls, ks), "instance": retrieval_metrics(s, inst, ks)}
        for direction, s in (("a2i", scores_a2i), ("i2a", scores_a2i.T))
    }


def format_retrieval_table(report: dict, ks: Sequence[int] = DEFAULT_KS) -> str:
    """Markdown table of :func:`cross_modal_report`: one row per (direction, relevance), chance beside."""
    cols = [f"R@{k}" for k in ks] + ["median_rank", "MRR", "mAP"]
    head = "| direction | relevance | " + " | ".join(f"{c} (chance)" for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for direction, label in (("a2i", "audio→image"), ("i2a", "image→audio")):
        for rel in ("class", "instance"):
            m = report[direction][rel]
            cells = []
            for c in cols:
                v, ch = m.get(c, float("nan")), m.get("chance", {}).get(c, float("nan"))
                fmt = "{:.1f}" if c == "median_rank" else "{:.3f}"
                cells.append(f"{fmt.format(v)} ({fmt.format(ch)})")
            lines.append(f"| {label} | {rel} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_KS",
    "chance_levels",
    "class_relevance",
    "cross_modal_report",
    "format_retrieval_table",
    "instance_relevance",
    "retrieval_metrics",
    "sorted_relevance",
]
