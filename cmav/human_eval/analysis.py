"""Statistics of a human study: scores per method, per class, rater agreement, pairwise tests.

Units and choices (written into every report):

* **scores**: mean ± sd over all individual ratings of a method (n = raters x pairs), as in
  AudioToken; attention checks never count. The **95% CI** is a percentile bootstrap that
  resamples raters AND pairs (two-way, B = 2000 by default, seeded), so it widens with both
  rater and item variability (ratings of one rater or one pair are not independent).
* **per class**: mean ± sd over the ratings of the pairs of each class (few pairs: no CI).
* **agreement**: Krippendorff's alpha, ordinal metric (the ``krippendorff`` package), over the
  kept raters x all rated images, per question; attention checks left out.
* **pairwise**: for every two methods, a Wilcoxon signed-rank test (scipy, two-sided) paired by
  pair: each pair's mean rating over the raters for method A vs B (``pair_by='rater'``: each
  rater's mean over the pairs instead). Zero differences are dropped before the test, so it runs on
  the non-zero ones alone (``n_nonzero``): exact (or, with ties, an exact permutation test) for
  small n, as if the zeros had never been there. Left to scipy, zeros counted towards its choice of
  method: 5 non-zero differences with 9 zeros got a normal approximation, p = 0.041, where the
  exact p is 0.0625.
  p-values are Holm-corrected over the comparisons of each question. Effect size: matched-pairs
  rank-biserial correlation (+1: A above B on every pair).
* **attention checks**: a real frame with a wrong label; a rater whose answer to the attention
  question exceeds its ``attention_max`` fails that check; raters with more failed checks than
  ``allowed_failures`` (default 0) are dropped, and the report lists them.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cmav.human_eval.ratings import RaterSheet
from cmav.human_eval.study import Manifest, Question

CI_METHOD = "percentile bootstrap over raters and pairs (two-way resampling)"


@dataclass
class AttentionResult:
    rater_id: str
    source: str
    n_checks: int
    failed: list[dict[str, Any]]
    dropped: bool
    uniform: int | None = None  # the one answer given to the attention question on every item, if so


def attention(manifest: Manifest, sheets: Sequence[RaterSheet], allowed_failures: int = 0) -> list[AttentionResult]:
    """Each rater's attention-check record; ``dropped`` when more than ``allowed_failures`` failed,
    or when the rater gave one answer to the attention question on every item, checks and rated
    images alike. The checks catch answers that are too high; one who answers the lowest value
    throughout passes them all without looking, and is caught by the second rule."""
    q = manifest.attention_question
    checks = manifest.checks
    out = []
    for s in sheets:
        failed = []
        uniform = None
        if q is not None:
            for c in checks:
                v = s.answers[c.id][q.id]
                if v > q.attention_max:
                    failed.append({"item": c.id, "shown_label": c.label, "true_class": c.true_class, "answer": v,
                                   "question": q.id, "max_expected": q.attention_max})  # fmt: skip
            given = {a[q.id] for a in s.answers.values() if q.id in a}
            if checks and len(given) == 1:
                uniform = int(next(iter(given)))
        dropped = len(failed) > allowed_failures or uniform is not None
        out.append(AttentionResult(s.rater_id, str(s.source), len(checks), failed, dropped, uniform))
    return out


def rating_matrices(
    manifest: Manifest, sheets: Sequence[RaterSheet], question: str
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per method a ``(raters, pairs)`` float array of ratings (NaN where none), and the pair ids."""
    pair_ids = sorted({i.pair for i in manifest.items if not i.check})
    col = {p: k for k, p in enumerate(pair_ids)}
    mats = {m: np.full((len(sheets), len(pair_ids)), np.nan) for m in manifest.method_names}
    for r, s in enumerate(sheets):
        for item in manifest.items:
            if item.check or item.id not in s.answers or question not in s.answers[item.id]:
                continue
            mats[item.method][r, col[item.pair]] = s.answers[item.id][question]
    return mats, pair_ids


def mean_sd(values: np.ndarray) -> tuple[int, float, float]:
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return 0, math.nan, math.nan
    return len(v), float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan


def bootstrap_means(mats: dict[str, np.ndarray], n_boot: int, seed: int, chunk: int = 256) -> dict[str, np.ndarray]:
    """Bootstrap distribution of each method's mean, resampling raters and pairs with replacement.
    The same resamples serve every method, so differences between methods are paired too."""
    first = next(iter(mats.values()))
    n_r, n_p = first.shape
    rng = np.random.default_rng(seed)
    out = {m: np.empty(n_boot) for m in mats}
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        ri = rng.integers(0, n_r, size=(b, n_r))
        pi = rng.integers(0, n_p, size=(b, n_p))
        for m, mat in mats.items():
            sample = mat[ri[:, :, None], pi[:, None, :]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN resample: NaN, dropped below
                out[m][done : done + b] = np.nanmean(sample, axis=(1, 2))
        done += b
    return out


def percentile_ci(dist: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    d = dist[~np.isnan(dist)]
    if len(d) == 0:
        return math.nan, math.nan
    a = (1 - level) / 2
    return float(np.quantile(d, a)), float(np.quantile(d, 1 - a))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a test)."""
    p = np.asarray(pvalues, dtype=float)
    adj = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    running = 0.0
    for k, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - k) * p[i]))
        adj[i] = running
    return adj.tolist()


def rank_biserial(x: np.ndarray, y: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (zero differences dropped, average ranks for ties)."""
    from scipy.stats import rankdata

    d = np.asarray(x, float) - np.asarray(y, float)
    d = d[d != 0]
    if len(d) == 0:
        return 0.0
    r = rankdata(np.abs(d))
    return float((r[d > 0].sum() - r[d < 0].sum()) / r.sum())


def wilcoxon_paired(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of x vs y (scipy) on the non-zero differences, with effect
    size and a note. ``n``: the pairs with both values; ``n_nonzero``: those the test uses."""
    from scipy.stats import wilcoxon

    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    d = x - y
    res: dict[str, Any] = {"n": int(len(d)), "mean_diff": float(d.mean()) if len(d) else math.nan,
                           "median_diff": float(np.median(d)) if len(d) else math.nan,
                           "n_nonzero": int((d != 0).sum()), "statistic": math.nan, "p": math.nan,
                           "rank_biserial": rank_biserial(x, y) if len(d) else math.nan, "note": ""}  # fmt: skip
    if len(d) == 0:
        res["note"] = "no paired data"
    elif res["n_nonzero"] == 0:
        res.update(statistic=0.0, p=1.0, note="all differences are zero: no evidence of a difference")
    else:
        nonzero = d[d != 0]  # dropped here, not by scipy: zeros it counts push it off its exact test
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-n warnings: the note says it
            t = wilcoxon(nonzero, alternative="two-sided")
        res.update(statistic=float(t.statistic), p=float(t.pvalue))
        if res["n_nonzero"] < 6:
            res["note"] = f"only {res['n_nonzero']} non-zero differences: the test cannot reach p < 0.05"
    return res


def krippendorff_ordinal(data: np.ndarray, question: Question) -> tuple[float | None, str]:
    """Ordinal Krippendorff's alpha of a ``(raters, units)`` array (NaN = not rated) and a note."""
    import krippendorff

    if data.shape[0] < 2:
        return None, "needs at least two raters"
    if np.sum(np.sum(~np.isnan(data), axis=0) >= 2) < 1:
        return None, "no image was rated by two raters"
    values = np.unique(data[~np.isnan(data)])
    if len(values) < 2:
        return None, "every rating is the same value: alpha is undefined"
    alpha = krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal",
                               value_domain=list(range(question.min, question.max + 1)))  # fmt: skip
    return float(alpha), ""


def analyze(manifest: Manifest, sheets: Sequence[RaterSheet], allowed_failures: int = 0, n_boot: int = 2000,
            seed: int = 0, pair_by: str = "pair") -> dict[str, Any]:  # fmt: skip
    """Every statistic of the study on the raters that pass the attention checks (JSON-ready)."""
    if pair_by not in ("pair", "rater"):
        raise ValueError(f"pair_by must be 'pair' or 'rater', got {pair_by!r}")
    att = attention(manifest, sheets, allowed_failures)
    kept = [s for s, a in zip(sheets, att, strict=True) if not a.dropped]
    methods = manifest.method_names
    pairs = manifest.pair_by_id
    result: dict[str, Any] = {
        "study_id": manifest.study_id,
        "methods": methods,
        "questions": [{"id": q.id, "text": q.text, "min": q.min, "max": q.max} for q in manifest.questions],
        "n_raters_valid": len(sheets),
        "n_raters_kept": len(kept),
        "n_pairs": len({i.pair for i in manifest.items if not i.check}),
        "n_checks": len(manifest.checks),
        "ci": {"level": 0.95, "method": CI_METHOD, "n_boot": n_boot, "seed": seed},
        "pairwise_unit": pair_by,
        "attention": [a.__dict__ for a in att],
        "summary": [],
        "per_class": [],
        "agreement": [],
        "pairwise": [],
    }
    if not kept:
        return result
    for q in manifest.questions:
        mats, pair_ids = rating_matrices(manifest, kept, q.id)
        boots = bootstrap_means(mats, n_boot, seed) if n_boot > 0 else {}
        for m in methods:
            n, mean, sd = mean_sd(mats[m])
            lo, hi = percentile_ci(boots[m]) if boots else (math.nan, math.nan)
            result["summary"].append({"method": m, "question": q.id, "n_ratings": n, "n_raters": len(kept),
                                      "n_pairs": len(pair_ids), "mean": mean, "sd": sd,
                                      "ci_low": lo, "ci_high": hi})  # fmt: skip
            classes = sorted({pairs[p].class_name for p in pair_ids})
            for c in classes:
                cols = [k for k, p in enumerate(pair_ids) if pairs[p].class_name == c]
                n_c, mean_c, sd_c = mean_sd(mats[m][:, cols])
                result["per_class"].append({"method": m, "question": q.id, "class": c, "n_pairs": len(cols),
                                            "n_ratings": n_c, "mean": mean_c, "sd": sd_c})  # fmt: skip
        units = np.concatenate([mats[m] for m in methods], axis=1)
        alpha, note = krippendorff_ordinal(units, q)
        result["agreement"].append({"question": q.id, "alpha": alpha, "level": "ordinal", "n_raters": len(kept),
                                    "n_images": int(units.shape[1]), "note": note})  # fmt: skip
        rows = []
        for a, b in itertools.combinations(methods, 2):
            axis = 0 if pair_by == "pair" else 1  # mean over raters -> one value per pair, or the reverse
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                x, y = np.nanmean(mats[a], axis=axis), np.nanmean(mats[b], axis=axis)
            rows.append({"question": q.id, "method_a": a, "method_b": b, **wilcoxon_paired(x, y)})
        for row, p_adj in zip(rows, holm([r["p"] for r in rows]), strict=True):
            row["p_holm"] = p_adj
            row["significant"] = bool(p_adj < 0.05) if not math.isnan(p_adj) else False
        result["pairwise"] += rows
    return result


__all__ = ["CI_METHOD", "analyze", "attention", "bootstrap_means", "holm", "krippendorff_ordinal",
           "rank_biserial", "rating_matrices", "wilcoxon_paired"]  # fmt: skip
