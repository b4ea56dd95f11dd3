"""``cmav evaluate robustness``: in-source vs cross-source scores (audio from another soundfont)."""

from __future__ import annotations

import argparse
import sys

from cmav.models.condition_bank import INFERENCE_CONDITIONS


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate-robustness",
        help="score models on audio from the training font and from an independent font "
        "(also `cmav evaluate robustness`)",
    )
    e.add_argument("--root", default="data/default", help="the training data (default: %(default)s)")
    e.add_argument("--eval-root", required=True,
                   help="the same data rendered from a DIFFERENT soundfont, e.g. data/default_timgm")  # fmt: skip
    e.add_argument("--eval-soundfont", default=None,
                   help="the evaluation font (checked against --eval-root's manifest; renders --eval-root with the "
                        "training data's preset and seed when it does not exist), e.g. "
                        "/usr/share/sounds/sf2/TimGM6mb.sf2")  # fmt: skip
    e.add_argument("--train-soundfont", default=None,
                   help="the training font (default: from --root's manifest; needed for data without one)")
    e.add_argument("--classifier", default=None, help="sound-classifier checkpoint (ClassifierTask, audio)")
    e.add_argument("--s2i", default=None, help="S2I-C checkpoint (judged accuracy needs --image-judge)")
    e.add_argument("--image-judge", default=None, help="image-judge checkpoint")
    e.add_argument("--retrieval", default=None, help="retrieval checkpoint (RetrievalTask): Recall@1")
    e.add_argument("--split", default="validation", choices=["validation", "train"],
                   help="validation (unseen players: the reported numbers) or train (a diagnostic)")  # fmt: skip
    e.add_argument("--seed", type=int, default=0, help="noise seed of the generated frames")
    e.add_argument("--cache-dir", default=None)
    e.add_argument("--adapt-batch-norm", action="store_true",
                   help="also score the classifier, and S2I-C with its audio encoder's, with the batch-norm statistics "
                        "re-estimated on each split's own unlabelled audio (AdaBN; transductive, reported apart "
                        "from the target)")  # fmt: skip
    e.add_argument("--inference-condition", choices=INFERENCE_CONDITIONS, default=None,
                   help="what conditions S2I-C's generator: own (each chunk's audio feature, the paper), nearest "
                        "(the nearest training features) or class_mean (the mean training feature of the class the "
                        "audio encoder predicts) (default: the checkpoint's)")  # fmt: skip
    e.add_argument("--inference-neighbours", type=int, default=None,
                   help="with --inference-condition nearest: how many nearest training features to average")
    e.add_argument("-o", "--output", default="results/robustness", help="folder for report.md and metrics.json")
    e.set_defaults(func=_evaluate, output_folder=True)


def _evaluate(args: argparse.Namespace) -> int:
    from cmav.evaluation.robustness import SameSourceError, evaluate_robustness, format_report

    try:
        result = evaluate_robustness(
            args.root, args.eval_root, classifier=args.classifier, s2i=args.s2i, image_judge=args.image_judge,
            retrieval=args.retrieval, train_soundfont=args.train_soundfont, eval_soundfont=args.eval_soundfont,
            split=args.split, out_dir=args.output, seed=args.seed, cache_dir=args.cache_dir,
            adapt_batch_norm=args.adapt_batch_norm, inference_condition=args.inference_condition,
            inference_neighbours=args.inference_neighbours,
        )  # fmt: skip
    except (SameSourceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(result))
    for k, v in result.get("paths", {}).items():
        print(f"{k}: {v}")
    return 0


__all__ = ["add_parser"]
