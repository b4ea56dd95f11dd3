"""Entry point of the ``cmav`` command."""

from __future__ import annotations

import argparse
import sys

from cmav import __version__
from cmav.cli import apply, data, experiments, judge, retrieval, robustness
from cmav.cli import human_eval as human_eval_cli

# the Lightning sub-commands (cmav/cli/train.py), with their --help lines
LIGHTNING_COMMANDS = {
    "fit": "train a model from a config (experiments/*.yaml); see `cmav fit --help`",
    "validate": "run the validation loop of a model (Lightning CLI)",
    "test": "run the test loop of a model (Lightning CLI)",
    "predict": "run prediction with a model (Lightning CLI)",
}


# `cmav evaluate X ...` is `cmav evaluate-X ...` for these X (plain `cmav evaluate` scores S2I and I2S)
EVALUATE_TOPICS = ("retrieval", "robustness", "judge")


def evaluate_alias(words: list[str]) -> list[str]:
    """``cmav evaluate retrieval|robustness|judge ...`` as ``cmav evaluate-<topic> ...``."""
    if len(words) >= 2 and words[0] == "evaluate" and words[1] in EVALUATE_TOPICS:
        return [f"evaluate-{words[1]}", *words[2:]]
    return words


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmav",
        description="Cross-modal audio<->visual generation on Sub-URMP and data sets like it.",
    )
    parser.add_argument("--version", action="version", version=f"cmav {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_parser(sub)
    experiments.add_parser(sub)  # ablate, generate, bench, evaluate
    apply.add_parser(sub)  # embed, classify
    retrieval.add_parser(sub)  # index build, search, evaluate-retrieval
    robustness.add_parser(sub)  # evaluate-robustness
    judge.add_parser(sub)  # evaluate-judge
    human_eval_cli.add_parser(sub)  # human-eval make, human-eval analyze
    for name, text in LIGHTNING_COMMANDS.items():
        # listed for --help only: main() hands these to the Lightning CLI before argparse runs
        sub.add_parser(name, help=text, add_help=False)
    return parser


RESUMABLE = {("data", "build"): "run the same command again to resume"}
"""Commands whose interrupted run can be resumed, and how (said after "interrupted")."""


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    try:
        if words and words[0] in LIGHTNING_COMMANDS:
            from cmav.cli.train import run  # imports Lightning: only when needed

            return run(argv)  # None = sys.argv, as LightningCLI expects
        args = build_parser().parse_args(evaluate_alias(words))
        return data.run(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of wherever it landed
        hint = RESUMABLE.get(tuple(words[:2]))
        print("interrupted" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
