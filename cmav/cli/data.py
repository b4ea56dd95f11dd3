"""``cmav data ...``: build the stand-in, check a data set, prepare its cache, draw a contact sheet."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cmav.cli.apply import _notes
from cmav.cli.paths import image_output, refuse_outputs_under_a_file
from cmav.cli.retrieval import frame_side, positive_int
from cmav.data.errors import DataError
from cmav.standin.build import PRESETS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build, check and prepare data sets")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{build,check,cache,sheet,split-players,pack}")

    b = dsub.add_parser("build", help="build the offline stand-in for Sub-URMP (FluidSynth audio, drawn frames)")
    b.add_argument("--root", default="data/default", help="output folder (default: %(default)s)")
    b.add_argument("--preset", default="default", choices=list(PRESETS),
                   help="size: tiny (tests, seconds), default (minutes), large (default + 10 more train players per "
                        "instrument, the same validation split), full (Sub-URMP's counts)")  # fmt: skip
    b.add_argument("--seed", type=int, default=0, help="random seed; the build is deterministic under it")
    b.add_argument("--soundfont", action="append", default=None, metavar="SF2|CFG",
                   help="General MIDI .sf2 (default: Debian's FluidR3_GM.sf2), or a TiMidity++ .cfg of GUS patches "
                        "(datasets/freepats_orchestra.cfg: Debian's freepats); recorded by path and sha256 in "
                        "cmav_standin.json. A copy rendered from another font (e.g. /usr/share/sounds/sf2/TimGM6mb.sf2) "
                        "is the cross-source evaluation set of `cmav evaluate robustness`. Given twice or more: a "
                        "several-source build, each track's timeline taking the fonts in turn")  # fmt: skip
    b.add_argument("--font-segment-s", type=float, default=1.0,
                   help="several fonts: seconds of a track rendered from one font before the next (default: %(default)s)")
    b.add_argument("--render", default="dry", choices=["dry", "varied"],
                   help="dry: reverb/chorus off, notes as written (default); varied: per track random reverb, "
                        "chorus, velocity curve, articulation, pan, tuning, vibrato and gain (same melodies)")  # fmt: skip
    b.add_argument("--frame-size", type=int, default=None, help="frame side in pixels (default: the preset's)")
    b.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    b.set_defaults(func=_build)

    c = dsub.add_parser("check", help="validate a data set and print counts per class and split")
    c.add_argument("root", help="data set folder, or a pack (its manifest, sha256s and packed counts; --layout and "
                                "--quick do not apply)")  # fmt: skip
    c.add_argument("--layout", default="suburmp", choices=["suburmp", "paired"])
    c.add_argument("--quick", action="store_true", help="check names and pairing only; do not decode files")
    c.set_defaults(func=_check)

    k = dsub.add_parser("cache", help="compute the preprocessing cache (resized frames, audio features) of both splits")
    k.add_argument("root", help="data set folder")
    k.add_argument("--layout", default="suburmp", choices=["suburmp", "paired"])
    k.add_argument("--image-size", type=frame_side, default=64, help="frame side in pixels, at least 8 (default: %(default)s)")
    k.add_argument("--features", default=None, metavar="YAML",
                   help="the front end, as in a config's data.features, e.g. '{kind: cqt}' (default: the LMS)")
    k.add_argument("--cache-dir", default=None)
    k.set_defaults(func=_cache)

    s = dsub.add_parser("sheet", help="write a contact sheet of sample frames per class")
    s.add_argument("root", help="data set folder (Sub-URMP layout)")
    s.add_argument("-o", "--output", default="contact_sheet.png", help="image file (default: %(default)s)")
    s.add_argument("--split", default="train", choices=["train", "validation"])
    s.add_argument("--per-class", type=positive_int, default=4,
                   help="frames per class, >= 1, each a different sample (fewer where a class has fewer; "
                        "default: %(default)s)")  # fmt: skip
    s.add_argument("--cell-size", type=positive_int, default=96, help="side of a frame on the sheet (default: %(default)s)")
    s.set_defaults(func=_sheet)

    d = dsub.add_parser("split-players", help="a development root: some train players moved to its validation split, "
                                              "for choices that must not read the real validation players")  # fmt: skip
    d.add_argument("root", help="source data set folder (Sub-URMP layout)")
    d.add_argument("-o", "--out", required=True, help="new folder (links to the source files)")
    d.add_argument("--per-class", type=int, default=1, help="train tracks held out per instrument (default: %(default)s)")
    d.add_argument("--seed", type=int, default=0, help="which tracks are held out (default: %(default)s)")
    d.add_argument("--single-track", choices=["refuse", "tail"], default="refuse",
                   help="an instrument with no more than --per-class train tracks (the real Sub-URMP's bassoon, double "
                        "bass and trumpet): refuse the split, or hold out the end of its tracks in time (a seen "
                        "player at unseen moments; default: %(default)s)")  # fmt: skip
    d.add_argument("--tail-fraction", type=float, default=0.2,
                   help="with --single-track tail, the share of each such track held out (default: %(default)s)")  # fmt: skip
    d.set_defaults(func=_split_players)

    k = dsub.add_parser("pack", help="a data set's cached splits in a few compressed files, to train where its "
                                     "source files are not (--data.root PACK)")  # fmt: skip
    k.add_argument("root", help="data set folder")
    k.add_argument("-o", "--out", required=True, help="the pack's folder (new or empty)")
    k.add_argument("--layout", default="suburmp", choices=["suburmp", "paired"])
    k.add_argument("--image-size", type=frame_side, default=64, help="frame side in pixels, at least 8 (default: %(default)s)")
    k.add_argument("--features", default=None, metavar="YAML",
                   help="the front end, as in a config's data.features, e.g. '{kind: harmonic}' (default: the LMS)")
    k.add_argument("--cache-dir", default=None)
    k.set_defaults(func=_pack)


def _build(args: argparse.Namespace) -> int:
    from cmav.standin.build import build_standin
    from cmav.standin.render import DEFAULT_SOUNDFONT
    from cmav.standin.soundfonts import describe

    t0 = time.perf_counter()
    with _notes(UserWarning):  # the build's warnings (tracks rendered again, ...) are for the user, not a traceback
        manifest = build_standin(
            args.root, preset=args.preset, seed=args.seed, soundfont=args.soundfont or DEFAULT_SOUNDFONT,
            frame_size=args.frame_size, workers=args.workers, render=args.render, font_segment_s=args.font_segment_s,
        )  # fmt: skip
    counts = manifest["counts"]
    total = {s: sum(v.values()) for s, v in counts.items()}
    print(f"{args.root}: {args.preset} stand-in ({args.render}) complete: {total['train']:,} train / "
          f"{total['validation']:,} validation pairs from {describe(manifest.get('soundfont') or {})} "
          f"({time.perf_counter() - t0:.1f} s)")  # fmt: skip
    return 0


def _check(args: argparse.Namespace) -> int:
    from cmav.data.cache import summarise
    from cmav.data.check import check_dataset
    from cmav.data.pack import is_pack, read_manifest

    if is_pack(args.root):  # its own checks (check_pack): it holds no source folders to scan
        try:
            m = read_manifest(args.root)
            print(f"{args.root}: a pack ({m.get('layout')} layout, {m.get('image_size')}-px frames, "
                  f"{(m.get('features') or {}).get('kind')} features) packed from {m.get('source')}\n")  # fmt: skip
        except DataError:
            pass  # the report names the unreadable manifest
    report = check_dataset(args.root, layout=args.layout, deep=not args.quick)
    print(report.table())
    if report.warnings:
        print(f"\n{len(report.warnings)} warning(s):{summarise(report.warnings, 20)}")
    if report.errors:
        print(f"\n{len(report.errors)} error(s):{summarise(report.errors, 40)}", file=sys.stderr)
        return 1
    print(f"\n{args.root}: OK")
    return 0


def _features_option(text: str | None) -> dict | None:
    """``--features``: a front-end config as YAML, e.g. ``'{kind: harmonic}'`` (None: the LMS)."""
    import yaml

    try:
        features = yaml.safe_load(text) if text else None
    except yaml.YAMLError as exc:  # PyYAML's message spans lines and names no option
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        where = f" at column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"--features: not YAML ({problem}{where}): {text!r}") from exc
    if features is not None and not isinstance(features, dict):
        raise ValueError(f"--features must be a mapping such as '{{kind: harmonic}}', got {text!r}")
    return features


def _cache(args: argparse.Namespace) -> int:
    from cmav.data.cache import cache_file_used
    from cmav.data.datasets import open_split
    from cmav.data.pack import is_pack
    from cmav.features.frontend import front_end_config

    # checked before either split is opened: a bad option is not found after the train split's build
    features = front_end_config(_features_option(args.features))
    for split in ("train", "validation"):
        ds = open_split(args.layout, args.root, split, image_size=args.image_size, features=features,
                        cache_dir=args.cache_dir)  # fmt: skip
        t = ds.tensors
        where = "packed: its own cache" if is_pack(args.root) else f"cache file {cache_file_used(args.root, split)}"
        print(f"{split}: {len(ds):,} pairs; {features.kind} features {tuple(t.audio.shape[1:])} float16, "
              f"images {tuple(t.images.shape[1:])} uint8; {where}")  # fmt: skip
    return 0


def _sheet(args: argparse.Namespace) -> int:
    import numpy as np

    from cmav.data.check import refuse_unfinished_standin
    from cmav.data.image_io import load_frame
    from cmav.data.layout import scan_suburmp
    from cmav.viz.grid import labelled_grid

    image_output(args.output)
    _refuse_pack(args.root, "cmav data sheet")
    refuse_unfinished_standin(args.root)  # a build cut off: its sheet would show part of the classes, unsaid
    scan = scan_suburmp(args.root, args.split)
    scan.raise_if_errors()
    by_class: dict[str, list] = {}
    for s in scan.samples:
        by_class.setdefault(s.class_name, []).append(s)
    rows, labels = [], []
    for name, samples in sorted(by_class.items()):
        # Spread the picks over the class's samples: several tracks and several moments. Never more
        # picks than samples: with a step of at least 1 the rounded picks are all different.
        picks = np.linspace(0, len(samples) - 1, min(args.per_class, len(samples))).round().astype(int)
        rows.append([load_frame(samples[i].image_path, args.cell_size * 2) for i in picks])
        labels.append(name)
    sheet = labelled_grid(rows, labels, cell_size=args.cell_size)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    lo, hi = min(map(len, rows), default=0), max(map(len, rows), default=0)
    frames = f"{hi}" if lo == hi else f"{lo} to {hi}"
    print(f"wrote {out} ({len(rows)} classes x {frames} frames from {args.split})")
    return 0


def _pack(args: argparse.Namespace) -> int:
    from cmav.data.pack import write_pack

    features = _features_option(args.features)
    t0 = time.perf_counter()
    m = write_pack(args.root, args.out, layout=args.layout, image_size=args.image_size, features=features,
                   cache_dir=args.cache_dir)  # fmt: skip
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    pairs = ", ".join(f"{s} {v['pairs']:,}" for s, v in m["splits"].items())
    print(f"{args.out}: {pairs} pairs, {m['features']['kind']} features, {m['image_size']}-px frames, "
          f"{size / 2**20:.1f} MiB ({time.perf_counter() - t0:.0f} s); train on it with --data.root {args.out}")  # fmt: skip
    return 0


def _split_players(args: argparse.Namespace) -> int:
    from cmav.data.player_split import MANIFEST, split_players

    _refuse_pack(args.root, "cmav data split-players")
    m = split_players(args.root, args.out, per_class=args.per_class, seed=args.seed, single_track=args.single_track,
                      tail_fraction=args.tail_fraction)  # fmt: skip
    held = ", ".join(f"{c}{t:02d}" for c, ts in m["held_out_tracks"].items() for t in ts)
    n = {k: sum(v.values()) for k, v in m["counts"].items()}
    print(f"{args.out}: {n['train']:,} train / {n['validation']:,} validation pairs; validation players: {held} "
          f"(recorded in {MANIFEST})")  # fmt: skip
    if m["held_out_tails"]:
        tails = ", ".join(f"{c}{int(t):02d} from {ms} ms" for c, v in m["held_out_tails"].items() for t, ms in v.items())
        print(f"  seen players, held out in time (their validation figures are easier than an unseen player's): "
              f"{tails}; {sum(m['left_out_at_boundary'].values())} chunk(s) that overlap them left out")  # fmt: skip
    return 0


def _refuse_pack(root: str, command: str) -> None:
    """Refuse a pack where a command reads a source root's files: a pack holds none, and the layout
    scan would report every folder missing."""
    from cmav.data.pack import PACK_MANIFEST, is_pack, read_manifest

    if is_pack(root):
        source = read_manifest(root).get("source", "root (unrecorded)")
        raise DataError(root, f"is a pack ({PACK_MANIFEST}): run `{command}` on its source {source}")


def _os_error(exc: OSError) -> str:
    """An OSError in one line: ``PATH: reason`` (both paths of a failed rename or link), else its text."""
    if exc.filename is None or not exc.strerror:
        return str(exc)
    where = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 is not None else "")
    return f"{where}: {exc.strerror}"


def run(args: argparse.Namespace) -> int:
    try:
        refuse_outputs_under_a_file(args)  # every command's -o, before it loads or computes anything
        return args.func(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path under a regular file, a full disk, no permission ...: one line, not a traceback
        print(f"error: {_os_error(exc)}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
