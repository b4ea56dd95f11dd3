"""``cmav human-eval make | analyze``: blinded human rating studies of generated images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("human-eval", help="make a blinded human rating study of S2I runs; analyse its ratings",
                       description="Human evaluation: `make` writes a study folder with a self-contained rating "
                                   "page; `analyze` validates the raters' files and writes the report. "
                                   "See human_eval/README.md.")  # fmt: skip
    hsub = p.add_subparsers(dest="human_eval_command", required=True, metavar="{make,analyze}")

    m = hsub.add_parser("make", help="sample validation pairs, make one image per method, write the study folder")
    m.add_argument("--runs", nargs="+", required=True, metavar="RUN",
                   help="run folders (runs/s2i_c), checkpoints, or folders of images named <stem>.png; "
                        "NAME=PATH names a method. The real frame is always added as 'real'")  # fmt: skip
    m.add_argument("--items", type=int, default=15, help="validation pairs to rate, spread over the classes "
                                                         "(default: %(default)s)")  # fmt: skip
    m.add_argument("--seed", type=int, default=0, help="sampling, generation noise and ids (default: %(default)s)")
    m.add_argument("-o", "--output", required=True, help="study folder to write (must be new or empty)")
    m.add_argument("--data", default=None, metavar="ROOT",
                   help="data set folder (default: the one stored in the first checkpoint)")
    m.add_argument("--layout", default=None, choices=["suburmp", "paired"], help="data layout (default: stored)")
    m.add_argument("--image-size", type=int, default=None,
                   help="side the real frames are read at, at least 8 (default: the checkpoint's data, else 64)")
    m.add_argument("--size", type=int, default=None,
                   help="side every image is shown at, at least 8 (default: the largest method's)")
    m.add_argument("--checks", type=int, default=3, help="hidden attention checks (default: %(default)s)")
    m.add_argument("--questions", default=None, metavar="FILE",
                   help="questions as JSON/YAML: [{id, text ('{label}' is replaced), min, max, low, high, "
                        "attention_max}] (default: label match and realism, 1-5)")  # fmt: skip
    m.add_argument("--study-id", default=None,
                   help="study id (default: derived from the content: images, labels and questions, not paths)")
    m.add_argument("--title", default=None, help="title shown to raters")
    m.add_argument("--instructions", default=None, metavar="FILE", help="plain-text instructions for raters")
    m.add_argument("--paper-raters", nargs="+", default=(), metavar="ID",
                   help="also write paper/<ID>.html + .csv: a print sheet in each rater's own order "
                        "(each rater once)")  # fmt: skip
    m.add_argument("--force", action="store_true", help="replace a study already in --output")
    m.set_defaults(func=_make, output_folder=True)

    a = hsub.add_parser("analyze", help="validate the ratings files and write the report (markdown, CSV, plot)")
    a.add_argument("study", help="the study folder (holding manifest.json)")
    a.add_argument("ratings", nargs="+", help="ratings files (.json/.csv) or folders of them (subfolders too; "
                                              "hidden files and folders are not read, and are listed)")  # fmt: skip
    a.add_argument("-o", "--output", default=None, help="report folder (default: STUDY/report)")
    a.add_argument("--allowed-failures", type=int, default=0,
                   help="attention checks a rater may fail and still count (default: %(default)s)")
    a.add_argument("--skip-invalid", action="store_true",
                   help="leave out raters whose files have problems (listed in the report) instead of stopping")
    a.add_argument("--pair-by", default="pair", choices=["pair", "rater"],
                   help="pairing unit of the Wilcoxon tests (default: %(default)s)")
    a.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the CIs (default: %(default)s)")
    a.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    a.set_defaults(func=_analyze, output_folder=True)


def _make(args: argparse.Namespace) -> int:
    from cmav.human_eval.build import make_study
    from cmav.human_eval.errors import HumanEvalError
    from cmav.human_eval.study import load_questions

    questions = load_questions(args.questions) if args.questions else None
    instructions = None
    if args.instructions:
        try:
            instructions = Path(args.instructions).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise HumanEvalError(args.instructions, f"cannot read the instructions ({exc.strerror or exc})") from exc
    m = make_study(args.runs, args.output, n_items=args.items, seed=args.seed, data_root=args.data, layout=args.layout,
                   image_size=args.image_size, questions=questions, n_checks=args.checks, study_id=args.study_id,
                   size=args.size, title=args.title, instructions=instructions, paper_raters=args.paper_raters,
                   force=args.force)  # fmt: skip
    out = Path(args.output)
    n_checks = len(m.checks)
    print(f"study {m.study_id}: {len(m.pairs) - n_checks} pairs x {len(m.methods)} methods "
          f"({', '.join(m.method_names)}) + {n_checks} attention checks = {len(m.items)} images")  # fmt: skip
    print(f"rating page : {out / 'index.html'}  (send {out / 'for_raters.zip'}, never manifest.json)")
    print(f"paper       : {out / 'print.html'} + {out / 'ratings_template.csv'}")
    for rid, stem in m.paper_raters.items():  # typed into its own CSV: the template's order is another
        print(f"paper {rid!r}: {out / stem}.html + {out / stem}.csv")
    print(f"manifest    : {out / 'manifest.json'}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from cmav.human_eval.report import dropped_why, run_analysis

    # no rater left to analyse: run_analysis writes the report, then raises (exit 2, its message says why)
    result, paths = run_analysis(args.study, args.ratings, out=args.output, allowed_failures=args.allowed_failures,
                                 skip_invalid=args.skip_invalid, n_boot=args.bootstrap, seed=args.seed,
                                 pair_by=args.pair_by)  # fmt: skip
    for f in result["ignored"]:
        print(f"ignored: {f}", file=sys.stderr)
    for p in result["problems"]:
        print(f"left out: {p}", file=sys.stderr)
    for a in result["attention"]:
        if a["dropped"]:
            print(f"dropped: rater {a['rater_id']!r} ({a['source']}) {dropped_why(a)}", file=sys.stderr)
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{result['n_raters_kept']} rater(s) analysed")
    for r in result["summary"]:
        print(f"  {r['method']:<16} {r['question']:<10} {r['mean']:.2f} ± {r['sd']:.2f}  "
              f"95% CI [{r['ci_low']:.2f}, {r['ci_high']:.2f}]  (n={r['n_ratings']})")  # fmt: skip
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
