"""``cmav index build | search | evaluate retrieval``: the retrieval/grounding branch's commands."""

from __future__ import annotations

import argparse
import sys

from cmav.cli.paths import image_output, input_file


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


MIN_FRAME_SIDE = 8
"""The smallest frame side the CLI takes (the stand-in builder's and the human-eval study's minimum too)."""


def frame_side(text: str) -> int:
    """argparse type: a frame side in pixels, an integer >= :data:`MIN_FRAME_SIDE`."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < MIN_FRAME_SIDE:
        raise argparse.ArgumentTypeError(f"must be an integer of at least {MIN_FRAME_SIDE} (pixels), got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("index", help="embedding index of a data split for `cmav search`")
    isub = i.add_subparsers(dest="index_command", required=True, metavar="{build}")
    b = isub.add_parser("build", help="embed every pair of a split with a retrieval checkpoint")
    b.add_argument("--ckpt", required=True, help="RetrievalTask checkpoint (experiments/retrieval_*.yaml)")
    b.add_argument("data", help="data set folder (Sub-URMP layout, or --layout paired)")
    b.add_argument("--split", default="validation", choices=["train", "validation"])
    b.add_argument("--layout", default="suburmp", choices=["suburmp", "paired"])
    b.add_argument("--batch-size", type=positive_int, default=256, help="pairs embedded at once (default: %(default)s)")
    b.add_argument("--cache-dir", default=None)
    b.add_argument("-o", "--output", default="index.pt", help="index file (default: %(default)s)")
    b.set_defaults(func=_index_build)

    s = sub.add_parser("search", help="top-k frames for a wav (--audio) or top-k audio for a frame (--image)")
    s.add_argument("--index", required=True, help="index file from `cmav index build`")
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--audio", help="query sound file (a clip longer than the checkpoint's chunk, 0.5 s by "
                                   "default, is cut to its first chunk)")
    q.add_argument("--image", help="query frame (centre-cropped and resized like the data)")
    s.add_argument("-k", type=positive_int, default=8, help="hits to show, >= 1 (default: %(default)s)")
    s.add_argument("--ckpt", default=None, help="model checkpoint (default: the one the index was built with)")
    s.add_argument("--backend", default="auto", choices=["auto", "torch", "faiss"],
                   help="auto: exact torch search up to 1M items, FAISS beyond for a global index (if "
                        "installed); a dense index is always searched exactly")  # fmt: skip
    s.add_argument("--faiss-factory", default="Flat", help="FAISS index type, e.g. Flat, HNSW32 (default: %(default)s)")
    s.add_argument("-o", "--output", default="search.png", help="contact sheet png (default: %(default)s)")
    s.set_defaults(func=_search)

    e = sub.add_parser("evaluate-retrieval",
                       help="score retrieval/grounding checkpoints (also `cmav evaluate retrieval`)")  # fmt: skip
    e.add_argument("--ckpt", action="append", required=True,
                   help="RetrievalTask checkpoint; repeat it to compare models in one table")  # fmt: skip
    e.add_argument("--root", default=None, help="data set folder (default: the one the first checkpoint trained on)")
    e.add_argument("--split", default="validation", choices=["validation", "train"],
                   help="validation (unseen players: the reported numbers) or train (a diagnostic)")  # fmt: skip
    e.add_argument("--batch-size", type=positive_int, default=128, help="pairs embedded at once (default: %(default)s)")
    e.add_argument("--display-size", type=positive_int, default=256, help="side of the heatmap pngs (default: %(default)s)")
    e.add_argument("--cache-dir", default=None)
    e.add_argument("-o", "--output", default="results/retrieval", help="folder for metrics.json, report.md, heatmaps")
    e.set_defaults(func=_evaluate, output_folder=True)


def _index_build(args: argparse.Namespace) -> int:
    from cmav.retrieval.index import build_index

    index = build_index(args.ckpt, args.data, split=args.split, layout=args.layout, batch_size=args.batch_size,
                        cache_dir=args.cache_dir)  # fmt: skip
    path = index.save(args.output)
    shapes = f"audio {tuple(index.audio.shape[1:])} / image {tuple(index.image.shape[1:])}"
    print(f"wrote {path}: {len(index):,} {args.split} pairs, {index.kind} model, {shapes} float16 embeddings")
    return 0


def _search(args: argparse.Namespace) -> int:
    from cmav.retrieval.search import format_hits, search

    input_file(args.index, "an index file")
    if args.image is not None:
        input_file(args.image, "an image file")
    image_output(args.output)

    out = search(args.index, audio=args.audio, image=args.image, k=args.k, ckpt=args.ckpt, output=args.output,
                 backend=args.backend, faiss_factory=args.faiss_factory)  # fmt: skip
    for note in out.notes:
        print(f"note: {note}", file=sys.stderr)
    print(format_hits(out))
    if out.sheet is not None:
        print(f"wrote {out.sheet}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cmav.evaluation.retrieval import evaluate_retrieval, format_report

    result = evaluate_retrieval(args.ckpt, root=args.root, out_dir=args.output, batch_size=args.batch_size,
                                display_size=args.display_size, cache_dir=args.cache_dir, split=args.split)  # fmt: skip
    print(format_report(result))
    for k, v in result.get("paths", {}).items():
        print(f"{k}: {v}")
    return 0


__all__ = ["MIN_FRAME_SIDE", "add_parser", "frame_side", "positive_int"]
