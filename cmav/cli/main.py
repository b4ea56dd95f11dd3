"""Entry point of the ``cmav`` command."""

from __future__ import annotations

import argparse
import sys

from cmav import __version__
from cmav.cli import data, experiments, judge, retrieval, robustness
from cmav.cli import human_eval as human_eval_cli

# the Lightning sub-commands (cmav/cli/train.py), with their --help lines
LIGHTNING_COMMANDS = {
    "fit": "train a model from a config (experiments/*.yaml); see `cmav fit --help`",
    "validate": "run the validation loop of a model (Lightning CLI)",
    "test": "run the test loop of a model (Lightning CLI)",
    "predict": "run prediction with a model (Lightning CLI)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmav",
        description="Cross-modal audio<->visual generation on Sub-URMP and data sets like it.",
    )
    parser.add_argument("--version", action="version", version=f"cmav {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_parser(sub)
    experiments.add_parser(sub)  # ablate, generate, bench, evaluate
    retrieval.add_parser(sub)  # index build, search, evaluate-retrieval
    robustness.add_parser(sub)  # evaluate-robustness
    judge.add_parser(sub)  # evaluate-judge
    human_eval_cli.add_parser(sub)  # human-eval make, human-eval analyze
    for name, text in LIGHTNING_COMMANDS.items():
        # listed for --help only: main() hands these to the Lightning CLI before argparse runs
        sub.add_parser(name, help=text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    if words and words[0] in LIGHTNING_COMMANDS:
        from cmav.cli.train import run  # imports Lightning: only when needed

        return run(argv)  # None = sys.argv, as LightningCLI expects
    # `evaluate retrieval` -> evaluate-retrieval, `evaluate robustness` -> evaluate-robustness, `evaluate judge` -> ...
    args = build_parser().parse_args(judge.alias(robustness.alias(retrieval.alias(words))))
    return data.run(args)


if __name__ == "__main__":
    sys.exit(main())
