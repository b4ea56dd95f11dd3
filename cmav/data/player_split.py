"""A development split of unseen players, carved from a Sub-URMP-layout train split.

Sub-URMP's validation players never appear in train, so any choice made by looking at validation
figures (an inference condition, a snapshot, a loss weight) is a choice made on the test players.
:func:`split_players` moves ``per_class`` whole train tracks (players) of every instrument into the
validation split of a new root, and keeps the rest as its train split. A model trained on that root
and scored on its validation split is scored on players it never met, and the original validation
players stay untouched. The new root holds symbolic links to the source files, not copies, and
``cmav_player_split.json`` records which tracks were moved.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import defaultdict
from pathlib import Path

from cmav.data.errors import DataError
from cmav.data.layout import scan_suburmp
from cmav.data.masks import MASK_DIR, mask_path

MANIFEST = "cmav_player_split.json"


def split_players(root: str | Path, out: str | Path, per_class: int = 1, seed: int = 0) -> dict:
    """Make ``out``: ``root``'s train split less ``per_class`` tracks of every instrument, which become
    ``out``'s validation split. Returns the manifest written to ``out/cmav_player_split.json``.

    The held-out tracks are drawn with ``random.Random(seed)`` from each instrument's sorted train
    tracks. Instrument masks (the stand-in's ``mask/`` folder) are linked along with their frames.
    Refuses an instrument with no more than ``per_class`` train tracks (its train split would be
    empty) and an ``out`` that already exists.
    """
    root, out = Path(root).resolve(), Path(out)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if out.exists():
        raise DataError(out, "already exists; a player split is written to a new folder")
    scan = scan_suburmp(root, "train")
    scan.raise_if_errors()
    tracks: dict[str, set[int]] = defaultdict(set)
    for s in scan.samples:
        tracks[s.class_name].add(s.track)
    short = sorted(c for c, t in tracks.items() if len(t) <= per_class)
    if short:
        detail = ", ".join(f"{c} ({len(tracks[c])})" for c in short)
        raise DataError(root / "chunk" / "train", f"a development split holds out {per_class} track(s) per "
                        f"instrument and leaves at least one to train on; these have too few train tracks: {detail}")  # fmt: skip
    rng = random.Random(seed)
    held = {c: sorted(rng.sample(sorted(tracks[c]), per_class)) for c in sorted(tracks)}
    has_masks = (root / MASK_DIR / "train").is_dir()
    # written beside `out` and renamed at the end: an interrupted split leaves no half-made root
    part = out.with_name(out.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {"train": defaultdict(int), "validation": defaultdict(int)}
    for s in scan.samples:
        split = "validation" if s.track in held[s.class_name] else "train"
        counts[split][s.class_name] += 1
        links = [(s.audio_path, part / "chunk" / split / s.class_name / s.audio_path.name),
                 (s.image_path, part / "img" / split / s.class_name / s.image_path.name)]  # fmt: skip
        mask = mask_path(root, "train", s.class_name, s.stem)
        if has_masks and mask.is_file():
            links.append((mask, mask_path(part, split, s.class_name, s.stem)))
        for src, dst in links:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src.resolve(), dst)
    manifest = {
        "source": str(root),
        "seed": seed,
        "per_class": per_class,
        "held_out_tracks": held,
        "counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
    }
    (part / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    part.rename(out)
    return manifest
