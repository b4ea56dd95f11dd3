"""``cmav embed`` and ``cmav classify``: a trained model applied to sound files or frames (over :mod:`cmav.api`)."""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cmav.cli.paths import input_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("embed", help="embeddings of sound files (per chunk) or frames from a trained model, as .npz")
    e.add_argument("--ckpt", required=True, help="a sound classifier, S2I or retrieval checkpoint (sound); an image "
                   "judge, image classifier or retrieval checkpoint (frames)")  # fmt: skip
    what = e.add_mutually_exclusive_group(required=True)
    what.add_argument("--audio", nargs="+", help="sound files: each is cut into the model's chunks")
    what.add_argument("--image", nargs="+", help="frames (centre square, resized to the model's size)")
    e.add_argument("--hop-s", type=float, default=None, help="seconds between chunk starts (default: one chunk)")
    e.add_argument("-o", "--output", default="embeddings.npz",
                   help=".npz with vectors (N, D), file_index (N,) into files, start_s (N,) for sound, files")  # fmt: skip
    e.set_defaults(func=_embed)

    c = sub.add_parser("classify", help="the sound classifier's class for every chunk of sound files, as a table")
    c.add_argument("--ckpt", required=True, help="a sound-classifier checkpoint (experiments/audio_classifier.yaml)")
    c.add_argument("--audio", nargs="+", required=True, help="sound files: each is cut into the model's chunks")
    c.add_argument("--hop-s", type=float, default=None, help="seconds between chunk starts (default: one chunk)")
    c.add_argument("-o", "--output", default=None,
                   help="CSV: file, start_s, label, probability, then every class's probability (default: the "
                        "table on stdout, the per-file summaries on stderr)")  # fmt: skip
    c.set_defaults(func=_classify)


@contextmanager
def _notes(category: type[Warning] | None = None) -> Iterator[None]:
    """Print every warning of ``category`` (default: DataWarning) as a ``note:`` line on stderr, when
    it is raised and without Python's file and line; other warnings as Python prints them."""
    from cmav.data.errors import DataWarning

    category = category or DataWarning
    with warnings.catch_warnings():  # restores showwarning and the filters on the way out
        warnings.simplefilter("always", category)
        show = warnings.showwarning

        def note(message: Warning | str, cat: type[Warning], filename: str, lineno: int, file: Any = None,
                 line: str | None = None) -> None:  # fmt: skip
            if issubclass(cat, category):
                print(f"note: {message}", file=sys.stderr)
            else:
                show(message, cat, filename, lineno, file, line)

        warnings.showwarning = note
        yield


def _output(path: str, inputs: list[str], suffix: str) -> Path:
    """The output file: with ``suffix`` (added when there is none; another one is refused, as numpy
    would silently append its own), and never one of the inputs, which it would overwrite."""
    out = Path(path)
    for given in inputs:
        if Path(given).exists() and out.exists() and out.resolve() == Path(given).resolve():
            raise ValueError(f"{out}: the output would overwrite an input; name another file")
    if out.suffix == "":
        out = out.with_suffix(suffix)
    elif out.suffix.lower() != suffix:
        raise ValueError(f"{out}: the output is a {suffix} file; name it so")
    return out


def _load_for_sound(ckpt: str, files: list[str], hop_s: float | None):
    """The model, with every sound file checked first (readable before the model is loaded; at least
    one of its chunks long, and ``hop_s`` usable, after): a bad file among many is an error naming
    it before any work, not after the files before it have been read and nothing written."""
    import cmav
    from cmav.data.audio_io import check_recording, hop_samples

    for path in files:
        check_recording(path)
    model = cmav.load(ckpt)
    try:
        hop_samples(hop_s, model.chunk)
    except ValueError as e:  # the API's message names its argument; here the user typed an option
        raise ValueError(str(e).replace("hop_s", "--hop-s", 1)) from None
    for path in files:
        check_recording(path, model.chunk)
    return model


def _embed(args: argparse.Namespace) -> int:
    import cmav
    from cmav.data.files import atomic_write

    if args.image and args.hop_s is not None:
        raise ValueError("--hop-s cuts sound files into chunks; frames (--image) have none")
    out_path = _output(args.output, [args.ckpt, *(args.audio or args.image)], ".npz")
    for path in args.image or ():
        input_file(path, "an image file")
    model = _load_for_sound(args.ckpt, args.audio, args.hop_s) if args.audio else cmav.load(args.ckpt)
    vectors, index, starts = [], [], []
    files = args.audio or args.image
    with _notes():
        if args.audio:
            for i, path in enumerate(files):
                out = cmav.embed_audio(model, path, hop_s=args.hop_s)
                vectors.append(out.vectors)
                index += [i] * len(out.vectors)
                starts.append(out.start_s)
        else:
            vectors.append(cmav.embed_image(model, list(files)))
            index = list(range(len(files)))
    v = np.concatenate([x.numpy() for x in vectors]).astype(np.float32)
    arrays = {"vectors": v, "file_index": np.asarray(index, dtype=np.int64), "files": np.asarray([str(f) for f in files])}
    if starts:
        arrays["start_s"] = np.concatenate([s.numpy() for s in starts])

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no suffix of its own
            np.savez(f, kind=np.asarray(model.kind), ckpt=np.asarray(str(args.ckpt)), **arrays)

    atomic_write(out_path, write)
    print(f"wrote {out_path}: {v.shape[0]} vectors of {v.shape[1]} ({model.kind} model) from {len(files)} file(s)")
    return 0


def _classify(args: argparse.Namespace) -> int:
    import cmav
    from cmav.data.files import atomic_write

    out_path = _output(args.output, [args.ckpt, *args.audio], ".csv") if args.output else None
    model = _load_for_sound(args.ckpt, args.audio, args.hop_s)
    rows = []
    with _notes():
        results = [(path, cmav.classify_audio(model, path, hop_s=args.hop_s)) for path in args.audio]
    names = results[0][1].class_names if results else []
    for path, out in results:
        p = out.probabilities
        labels = out.labels
        counts = Counter(labels)
        top, n = counts.most_common(1)[0]
        # without -o stdout is the table alone, to be piped or redirected
        print(f"{path}: {len(labels)} chunk(s); most often {top} ({n}/{len(labels)}); mean probability "
              f"{p.mean(0).max():.3f} for {names[int(p.mean(0).argmax())]}",
              file=sys.stdout if out_path is not None else sys.stderr)  # fmt: skip
        for start, label, probs in zip(out.start_s.tolist(), labels, p.tolist(), strict=True):
            rows.append([str(path), f"{start:.3f}", label, f"{max(probs):.4f}", *(f"{q:.4f}" for q in probs)])
    header = ["file", "start_s", "label", "probability", *names]
    if out_path is None:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        return 0

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(out_path, write)
    print(f"wrote {out_path}: {len(rows)} chunk(s)")
    return 0
