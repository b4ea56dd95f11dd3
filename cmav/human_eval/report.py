"""``cmav human-eval analyze``: validate the ratings, compute the statistics, write the report.

Outputs (in ``out``, default ``<study>/report``)::

    report.md       everything below, readable; names, labels and rater ids escaped (never markup)
    summary.csv     method x question: n, mean, sd, 95% CI
    per_class.csv   method x question x class: n, mean, sd
    agreement.csv   question: Krippendorff's alpha (ordinal)
    pairwise.csv    question x method pair: Wilcoxon signed-rank, p, Holm-adjusted p, effect size
    raters.csv      every rater / file: kept, dropped (attention checks) or invalid, and why
    report.json     all of it, machine-readable
    scores.png      mean and 95% CI per method, one panel per question
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cmav.human_eval.analysis import CI_METHOD, analyze
from cmav.human_eval.errors import HumanEvalError
from cmav.human_eval.ratings import RatingsSet, load_ratings
from cmav.human_eval.study import Manifest, check_seed, load_manifest, manifest_fingerprint, verify_images
from cmav.metrics.serialise import json_safe

_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#~!])")


def md(text: Any) -> str:
    """Text for a markdown table cell or line: HTML-escaped and markdown punctuation escaped, one
    line, so a name like ``<img src=x onerror=alert(1)>`` shows as text in any renderer."""
    s = html.escape(str(text), quote=True)
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return re.sub(r"[\r\n\t]+", " ", s)


def csv_text(value: Any) -> Any:
    """A text cell that a spreadsheet will not run as a formula (=, +, -, @ first); numbers untouched."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _p(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return "< 0.001" if x < 0.001 else f"{x:.3f}"


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([csv_text(json_safe(r.get(c))) if r.get(c) is not None else "" for c in columns])


def plot_scores(result: dict[str, Any], manifest: Manifest, path: Path) -> Path:
    """Bar chart: mean rating per method with its 95% CI, one panel per question."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    qs = manifest.questions
    methods = result["methods"]
    fig = Figure(figsize=(max(3.2, 0.9 * len(methods) + 1.2) * len(qs), 3.8))
    FigureCanvasAgg(fig)
    for k, q in enumerate(qs, 1):
        ax = fig.add_subplot(1, len(qs), k)
        rows = {r["method"]: r for r in result["summary"] if r["question"] == q.id}
        means = [rows[m]["mean"] if m in rows else math.nan for m in methods]
        lo = [rows[m]["mean"] - rows[m]["ci_low"] if m in rows else 0 for m in methods]
        hi = [rows[m]["ci_high"] - rows[m]["mean"] if m in rows else 0 for m in methods]
        err = [[0 if math.isnan(v) else v for v in lo], [0 if math.isnan(v) else v for v in hi]]
        # points, not bars: a rating scale has no zero for a bar to grow from
        ax.errorbar(range(len(methods)), means, yerr=err, fmt="o", capsize=5, color="#243b6b", markersize=7)
        ax.set_xticks(range(len(methods)))
        # names are data: '$' would switch matplotlib to mathtext
        ax.set_xticklabels([m.replace("$", r"\$") for m in methods], rotation=30, ha="right")
        ax.set_xlim(-0.6, len(methods) - 0.4)
        ax.set_ylim(q.min - 0.2, q.max + 0.2)
        ax.set_title(q.id.replace("$", r"\$"))
        ax.set_ylabel(f"mean rating ({q.min}-{q.max}), 95% CI")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{result['n_raters_kept']} raters, {result['n_pairs']} pairs per method")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def dropped_why(a: dict[str, Any]) -> str:
    """Why a rater was dropped by the attention checks, in a few words."""
    why = f"failed {len(a['failed'])} of {a['n_checks']} attention check(s)"
    if a.get("uniform") is not None:
        why += f", answered {a['uniform']} on every item"
    return why


def _no_rater_left(ratings: RatingsSet, result: dict[str, Any], report_md: Path) -> str:
    """The message when nobody is left to analyse: who was left out or dropped, and why."""
    lines = [f"left out: {p}" for p in ratings.problems]
    lines += [f"dropped: rater {a['rater_id']!r} ({a['source']}) {dropped_why(a)}"
              for a in result["attention"] if a["dropped"]]  # fmt: skip
    lines += [f"not read: {f} ({why})" for f, why in ratings.ignored]
    if not result["n_raters_valid"]:
        head = "every rater was left out"
    elif not ratings.excluded:
        head = "every rater was dropped for failed attention checks"
    else:
        head = "every rater was left out (invalid) or dropped (attention checks)"
    return (f"no rater was left to analyse; {head}:" + "".join(f"\n  {x}" for x in lines)
            + f"\nthe report says so: {report_md}")  # fmt: skip


def _rater_rows(ratings: RatingsSet, result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for a in result["attention"]:
        failed = "; ".join(f"item {f['item']} (labelled {f['shown_label']}, is {f['true_class']}): answered "
                           f"{f['answer']} > {f['max_expected']}" for f in a["failed"])  # fmt: skip
        if a.get("uniform") is not None:
            failed = "; ".join(filter(None, [failed, f"answered {a['uniform']} on every item, checks included"]))
        rows.append({"rater_id": a["rater_id"], "file": a["source"],
                     "status": "dropped (attention checks)" if a["dropped"] else "kept",
                     "checks_failed": len(a["failed"]), "checks": a["n_checks"], "detail": failed})  # fmt: skip
    for file, rid, why in ratings.excluded:
        rows.append({"rater_id": rid, "file": file, "status": "invalid (left out)", "checks_failed": None,
                     "checks": None, "detail": why})  # fmt: skip
    return rows


def _n_invalid_raters(ratings: RatingsSet) -> int:
    """Raters left out as invalid (``excluded`` also holds file-level problems without a rater)."""
    return len({(file, rid) for file, rid, _ in ratings.excluded if rid})


def write_markdown(path: Path, manifest: Manifest, ratings: RatingsSet, result: dict[str, Any],
                   rater_rows: list[dict[str, Any]], warnings_: list[str]) -> None:  # fmt: skip
    L: list[str] = [f"# Human evaluation: study {md(manifest.study_id)}", ""]
    n_dropped = sum(1 for a in result["attention"] if a["dropped"])
    L += [
        f"- {len(manifest.method_names)} methods ({', '.join(md(m) for m in manifest.method_names)}; "
        f"`real` is the real frame, the reference) x {result['n_pairs']} validation pairs = "
        f"{result['n_pairs'] * len(manifest.method_names)} rated images, plus {result['n_checks']} hidden attention checks.",
        f"- Ratings files read: {len(ratings.files)}; valid raters: {result['n_raters_valid']}; "
        f"dropped for failed attention checks: {n_dropped}; left out as invalid: {_n_invalid_raters(ratings)}; "
        f"**raters analysed: {result['n_raters_kept']}**.",
        "- Questions: " + "; ".join(f"**{md(q.id)}**: {md(q.text)} ({q.min}-{q.max})" for q in manifest.questions),
        "",
    ]
    if warnings_:
        L += ["## Warnings", ""] + [f"- {md(w)}" for w in warnings_] + [""]
    if not result["n_raters_kept"]:
        L += ["**No rater left to analyse**: every rater was left out as invalid or dropped by the attention "
              "checks (see Raters below for why); `cmav human-eval analyze` exits with status 2.", ""]  # fmt: skip
    else:
        L += ["## Scores per method", "",
              f"Mean ± sd over all ratings (n = raters x pairs); 95% CI: {CI_METHOD}, "
              f"B = {result['ci']['n_boot']}, seed {result['ci']['seed']}. Attention checks excluded.", ""]  # fmt: skip
        for q in manifest.questions:
            L += [f"**{md(q.id)}**: {md(q.text)}", "", "| method | n | mean ± sd | 95% CI |", "|---|---:|---:|---:|"]
            for r in (r for r in result["summary"] if r["question"] == q.id):
                L.append(f"| {md(r['method'])} | {r['n_ratings']} | {_f(r['mean'])} ± {_f(r['sd'])} | "
                         f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}] |")  # fmt: skip
            L.append("")
        L += ["![mean rating per method with 95% CI](scores.png)", "", "## Per class", "",
              "Mean ± sd (n ratings) per instrument class of the pairs.", ""]  # fmt: skip
        classes = sorted({r["class"] for r in result["per_class"]})
        for q in manifest.questions:
            L += [f"**{md(q.id)}**", "", "| class | " + " | ".join(md(m) for m in result["methods"]) + " |",
                  "|---|" + "---:|" * len(result["methods"])]  # fmt: skip
            cell = {(r["class"], r["method"]): r for r in result["per_class"] if r["question"] == q.id}
            for c in classes:
                vals = [cell.get((c, m)) for m in result["methods"]]
                L.append(f"| {md(c)} | " + " | ".join(
                    f"{_f(v['mean'])} ± {_f(v['sd'])} ({v['n_ratings']})" if v else "" for v in vals) + " |")  # fmt: skip
            L.append("")
        L += ["## Rater agreement", "", "Krippendorff's alpha, ordinal metric, kept raters x rated images "
              "(1 = perfect agreement, 0 = chance; > 0.667 is often taken as acceptable for tentative conclusions).",
              "", "| question | alpha | raters | images | note |", "|---|---:|---:|---:|---|"]  # fmt: skip
        for a in result["agreement"]:
            L.append(f"| {md(a['question'])} | {_f(a['alpha'], 3)} | {a['n_raters']} | {a['n_images']} | {md(a['note'])} |")
        unit = ("pair (each pair's mean over raters)" if result["pairwise_unit"] == "pair"
                else "rater (each rater's mean over pairs)")  # fmt: skip
        L += ["", "## Pairwise comparisons", "",
              f"Wilcoxon signed-rank test (two-sided, scipy, zero differences dropped), paired by {unit}; "
              "p-values Holm-corrected over the comparisons of each question; r = matched-pairs rank-biserial "
              "correlation (+1: A rated above B on every pair).", "",
              "| question | A | B | n | mean diff (A-B) | W | p | p (Holm) | r | note |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in result["pairwise"]:
            star = " *" if r["significant"] else ""
            L.append(f"| {md(r['question'])} | {md(r['method_a'])} | {md(r['method_b'])} | {r['n']} | "
                     f"{_f(r['mean_diff'])} | {_f(r['statistic'], 1)} | {_p(r['p'])} | {_p(r['p_holm'])}{star} | "
                     f"{_f(r['rank_biserial'])} | {md(r['note'])} |")  # fmt: skip
        L += ["", "\\* Holm-adjusted p < 0.05.", ""]
    att_q = manifest.attention_question
    L += ["## Raters", ""]
    if att_q is not None and result["n_checks"]:
        L += [f"Attention checks: {result['n_checks']} real frames shown with a wrong label; a check fails when the "
              f"answer to **{md(att_q.id)}** is above {att_q.attention_max}. Raters with a failed check are "
              "dropped (allowed failures: see `--allowed-failures`), and so are raters who gave one answer to it "
              "on every item (the lowest everywhere passes every check).", ""]  # fmt: skip
    L += ["| rater | file | status | failed checks | detail |", "|---|---|---|---:|---|"]
    for r in rater_rows:
        fc = "" if r["checks_failed"] is None else f"{r['checks_failed']} / {r['checks']}"
        L.append(f"| {md(r['rater_id'])} | {md(r['file'])} | {md(r['status'])} | {fc} | {md(r['detail'])} |")
    if ratings.ignored:
        L += ["", "Not read from the ratings folders (hidden, not .json or .csv, or the report's own folder): "
              + ", ".join(f"{md(f)} ({md(why)})" for f, why in ratings.ignored)]  # fmt: skip
    path.write_text("\n".join(L) + "\n", encoding="utf-8")


def run_analysis(study: str | Path, ratings_paths: Iterable[str | Path], out: str | Path | None = None,
                 allowed_failures: int = 0, skip_invalid: bool = False, n_boot: int = 2000, seed: int = 0,
                 pair_by: str = "pair") -> tuple[dict[str, Any], dict[str, Path]]:  # fmt: skip
    """Validate every ratings file, analyse, write the report; returns (result, paths).

    Any invalid file or rater raises :class:`HumanEvalError` listing every problem, unless
    ``skip_invalid``: then those raters are left out and listed in the report. When no rater is
    left (all invalid, or dropped by the attention checks), the report is written, saying why, and
    then :class:`HumanEvalError` is raised all the same: there is nothing to report scores of.
    Folders are read with their subfolders, except ``out`` (a report written into a ratings folder)."""
    if allowed_failures < 0:
        raise HumanEvalError("--allowed-failures", f"{allowed_failures}: must be 0 or more")
    if n_boot < 1:
        raise HumanEvalError("--bootstrap", f"{n_boot}: the bootstrap needs at least 1 resample")
    check_seed(seed)
    manifest = load_manifest(study)
    study = Path(study)
    study_dir = study if study.is_dir() else study.parent
    out = Path(out) if out is not None else study_dir / "report"
    ratings = load_ratings(list(ratings_paths), manifest, skip=[out])
    if not ratings.files and not ratings.problems:
        not_read = "".join(f"\n  not read: {f} ({why})" for f, why in ratings.ignored)
        raise HumanEvalError(study_dir, "no ratings files given (.json or .csv, or folders holding them)" + not_read)
    if ratings.problems and not skip_invalid:
        if len(ratings.problems) == 1:
            p = ratings.problems[0]
            raise HumanEvalError(p.path, p.message + " (or pass --skip-invalid to leave such raters out, listed)")
        lines = "\n  ".join(str(p) for p in ratings.problems)
        raise HumanEvalError(study_dir, f"{len(ratings.problems)} problem(s) in the ratings:\n  {lines}\n"
                                        "fix them, or pass --skip-invalid to leave those raters out (they are listed "
                                        "in the report)")  # fmt: skip
    result = analyze(manifest, ratings.sheets, allowed_failures=allowed_failures, n_boot=n_boot, seed=seed,
                     pair_by=pair_by)  # fmt: skip
    warnings_ = verify_images(study_dir, manifest)
    if manifest.fingerprint and manifest_fingerprint(manifest) != manifest.fingerprint:
        warnings_.append(f"{study_dir / 'manifest.json'}: its fingerprint {manifest.fingerprint} does not match the "
                         "items, pairs and questions it lists: edited since the study was made?")  # fmt: skip
    if result["n_raters_kept"] == 1:
        warnings_.append("one rater only: no agreement, and CIs reflect items only")
    result["warnings"] = warnings_
    result["problems"] = [str(p) for p in ratings.problems]
    result["ignored"] = [f"{f} ({why})" for f, why in ratings.ignored]

    out.mkdir(parents=True, exist_ok=True)
    rater_rows = _rater_rows(ratings, result)
    paths = {
        "report_md": out / "report.md",
        "summary_csv": out / "summary.csv",
        "per_class_csv": out / "per_class.csv",
        "agreement_csv": out / "agreement.csv",
        "pairwise_csv": out / "pairwise.csv",
        "raters_csv": out / "raters.csv",
        "report_json": out / "report.json",
    }
    _write_csv(paths["summary_csv"], result["summary"],
               ["method", "question", "n_ratings", "n_raters", "n_pairs", "mean", "sd", "ci_low", "ci_high"])  # fmt: skip
    _write_csv(paths["per_class_csv"], result["per_class"],
               ["method", "question", "class", "n_pairs", "n_ratings", "mean", "sd"])  # fmt: skip
    _write_csv(paths["agreement_csv"], result["agreement"], ["question", "alpha", "level", "n_raters", "n_images", "note"])
    _write_csv(paths["pairwise_csv"], result["pairwise"],
               ["question", "method_a", "method_b", "n", "n_nonzero", "mean_diff", "median_diff", "statistic", "p",
                "p_holm", "significant", "rank_biserial", "note"])  # fmt: skip
    _write_csv(paths["raters_csv"], rater_rows, ["rater_id", "file", "status", "checks_failed", "checks", "detail"])
    if result["n_raters_kept"]:
        paths["scores_png"] = plot_scores(result, manifest, out / "scores.png")
    else:
        (out / "scores.png").unlink(missing_ok=True)  # an earlier run's plot must not pass for this one's
    write_markdown(paths["report_md"], manifest, ratings, result, rater_rows, warnings_)
    paths["report_json"].write_text(json.dumps(json_safe({**result, "raters": rater_rows}), indent=2, ensure_ascii=False),
                                    encoding="utf-8")  # fmt: skip
    if not result["n_raters_kept"]:
        raise HumanEvalError(study_dir, _no_rater_left(ratings, result, paths["report_md"]))
    return result, paths


__all__ = ["csv_text", "dropped_why", "md", "plot_scores", "run_analysis"]
