"""Entry point of the ``cmav`` command."""

from __future__ import annotations

import argparse
import sys

from cmav import __version__
from cmav.cli import data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmav",
        description="Cross-modal audio<->visual generation on Sub-URMP and data sets like it.",
    )
    parser.add_argument("--version", action="version", version=f"cmav {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    return data.run(args)


if __name__ == "__main__":
    sys.exit(main())
