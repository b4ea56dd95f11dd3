"""``cmav evaluate judge``: what an image judge looks at (the instrument, or the player around it)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cmav.evaluation.judge_probe import PROBE_SPLITS


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate-judge",
        help="probe an image judge on the stand-in: each player's accuracy on its frames, with the instrument "
        "painted out, and on the instrument alone (also `cmav evaluate judge`)",
    )
    e.add_argument("--ckpt", required=True, help="image-judge checkpoint (experiments/image_judge.yaml)")
    e.add_argument("--root", default=None,
                   help="a stand-in data set, with its instrument masks (default: the root the judge was trained on)")
    e.add_argument("--holdout-tail", type=float, default=None,
                   help="data.holdout_tail, what `train` and `holdout` are (default: the judge's own; `holdout` "
                        "reaching into the frames the judge trained on, a larger tail than its own, is refused)")  # fmt: skip
    e.add_argument("--holdout-gap-ms", type=int, default=None,
                   help="held-out chunks starting less than this after a trained one are not scored (default: the "
                        "judge's own; 0 keeps them)")  # fmt: skip
    e.add_argument("--splits", nargs="+", choices=PROBE_SPLITS, default=["train", "validation"],
                   help="train (what the judge trained on), holdout (the train tracks' held-out tails), "
                        "validation (unseen players) (default: %(default)s)")  # fmt: skip
    e.add_argument("--list-players", nargs="*", choices=PROBE_SPLITS, default=["validation"],
                   help="splits whose players get a row each in the printed table (default: %(default)s)")
    e.add_argument("-o", "--output", default="results/judge_probe", help="folder for judge_probe.json and .md")
    e.set_defaults(func=_evaluate, output_folder=True)


def _evaluate(args: argparse.Namespace) -> int:
    from cmav.evaluation.generate import datamodule_for
    from cmav.evaluation.judge_probe import format_judge_probe, probe_image_judge
    from cmav.metrics.serialise import json_safe
    from cmav.tasks.classifier import load_image_judge

    judge = load_image_judge(args.ckpt)
    # the data as the judge was trained on them (root, layout, held-out tails and gap, from its
    # checkpoint), so that `train` and `holdout` are its own; what is given replaces that
    dm = datamodule_for(args.ckpt, args.root, batch_size=64, image_size=int(judge.hparams.image_size),
                        holdout_tail=args.holdout_tail, holdout_gap_ms=args.holdout_gap_ms)  # fmt: skip
    # the checkpoint, not the task loaded from it: its recorded data say whether `holdout` is frames it trained on
    probe = probe_image_judge(args.ckpt, dm, splits=tuple(args.splits))
    text = format_judge_probe(probe, tuple(args.list_players))
    print(text)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "judge_probe.json").write_text(json.dumps(json_safe(probe), indent=2))
    (out / "judge_probe.md").write_text(text + "\n")
    print(f"wrote {out / 'judge_probe.json'} and {out / 'judge_probe.md'}")
    return 0


__all__ = ["add_parser"]
