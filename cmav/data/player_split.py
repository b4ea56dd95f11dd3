"""A development split of unseen players, carved from a Sub-URMP-layout train split.

Sub-URMP's validation players never appear in train, so any choice made by looking at validation
figures (an inference condition, a snapshot, a loss weight) is a choice made on the test players.
:func:`split_players` moves ``per_class`` whole train tracks (players) of every instrument into the
validation split of a new root, and keeps the rest as its train split. A model trained on that root
and scored on its validation split is scored on players it never met, and the original validation
players stay untouched. The new root holds symbolic links to the source files, not copies, and
``cmav_player_split.json`` records which tracks were moved.

The real Sub-URMP has a single train track for bassoon, double bass and trumpet. With
``single_track="tail"`` such an instrument keeps its track and lends the end of it (in time) to the
development split instead: those figures are for a seen player at unseen moments, easier than an
unseen player, and the manifest names the instruments so split.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Literal

from cmav.data.check import refuse_unfinished_standin
from cmav.data.errors import DataError
from cmav.data.layout import Sample, scan_suburmp
from cmav.data.masks import MASK_DIR, mask_path
from cmav.data.tails import tail_holdout

MANIFEST = "cmav_player_split.json"
CHUNK_MS = 500
"""Sub-URMP's chunk length: chunks whose times differ by less than this share audio (they start
every 100 ms), so a tail split leaves out the train chunks that overlap its first held-out one."""


def split_players(root: str | Path, out: str | Path, per_class: int = 1, seed: int = 0,
                  single_track: Literal["refuse", "tail"] = "refuse", tail_fraction: float = 0.2) -> dict:  # fmt: skip
    """Make ``out``: ``root``'s train split less ``per_class`` tracks of every instrument, which become
    ``out``'s validation split. Returns the manifest written to ``out/cmav_player_split.json``.

    The held-out tracks are drawn with ``random.Random(seed)`` from each instrument's sorted train
    tracks. Instrument masks (the stand-in's ``mask/`` folder) are linked along with their frames.
    An instrument with no more than ``per_class`` train tracks would have an empty train split: it
    is refused (``single_track="refuse"``), or (``"tail"``) the last ``tail_fraction`` of each of
    its tracks in time becomes validation, and the train chunks that share audio with the first
    held-out chunk are left out of both splits. An ``out`` that already exists is refused.
    """
    root, out = Path(root).resolve(), Path(out)
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if single_track not in ("refuse", "tail"):
        raise ValueError(f"single_track must be 'refuse' or 'tail', got {single_track!r}")
    if not 0.0 < tail_fraction < 1.0:
        raise ValueError(f"tail_fraction must be in (0, 1), got {tail_fraction}")
    if out.exists():
        raise DataError(out, "already exists; a player split is written to a new folder")
    refuse_unfinished_standin(root)  # a stand-in whose build was cut off: a split of part of it
    scan = scan_suburmp(root, "train")
    scan.raise_if_errors()
    tracks: dict[str, set[int]] = defaultdict(set)
    for s in scan.samples:
        tracks[s.class_name].add(s.track)
    short = sorted(c for c, t in tracks.items() if len(t) <= per_class)
    if short and single_track == "refuse":
        detail = ", ".join(f"{c} ({len(tracks[c])})" for c in short)
        raise DataError(root / "chunk" / "train", f"a development split holds out {per_class} track(s) per "
                        f"instrument and leaves at least one to train on; these have too few train tracks: {detail} "
                        "(--single-track tail holds out the end of their tracks instead)")  # fmt: skip
    rng = random.Random(seed)
    held = {c: sorted(rng.sample(sorted(tracks[c]), per_class)) for c in sorted(tracks) if c not in short}
    lent = [s for s in scan.samples if s.class_name in short]
    keep, back = tail_holdout([s.track for s in lent], [s.label for s in lent], [s.time_ms for s in lent],
                              tail_fraction, guard_ms=CHUNK_MS, drop="kept")  # fmt: skip
    placed_tail = {lent[i].audio_path: "train" for i in keep} | {lent[i].audio_path: "validation" for i in back}
    tails: dict[str, dict[int, int]] = defaultdict(dict)  # instrument -> {track: its first validation chunk}
    for sample in (lent[i] for i in back):
        first = tails[sample.class_name]
        first[sample.track] = min(first.get(sample.track, sample.time_ms), sample.time_ms)
    counts: dict[str, dict[str, int]] = {"train": defaultdict(int), "validation": defaultdict(int)}
    dropped: dict[str, int] = defaultdict(int)
    placed: list[tuple[Sample, str]] = []
    for s in scan.samples:
        if s.class_name in short:
            split = placed_tail.get(s.audio_path)
            if split is None:  # shares audio with the first held-out chunk of its track
                dropped[s.class_name] += 1
                continue
        else:
            split = "validation" if s.track in held[s.class_name] else "train"
        counts[split][s.class_name] += 1
        placed.append((s, split))
    empty = sorted(c for c in short if not counts["train"][c])
    if empty:
        raise DataError(root / "chunk" / "train", f"a tail split of {tail_fraction:g} leaves no train chunk "
                        f"clear of the held-out ones for: {', '.join(empty)} (their tracks are too short)")  # fmt: skip
    has_masks = (root / MASK_DIR / "train").is_dir()
    # written beside `out` and renamed at the end: an interrupted split leaves no half-made root
    part = out.with_name(out.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    for s, split in placed:
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
        "single_track": single_track,
        "tail_fraction": tail_fraction,
        "held_out_tracks": held,
        # instrument -> {track: time (ms) of its first validation chunk}: a seen player, later in time
        "held_out_tails": {c: {str(t): ms for t, ms in sorted(v.items())} for c, v in sorted(tails.items())},
        "left_out_at_boundary": dict(sorted(dropped.items())),
        "counts": {k: dict(sorted(v.items())) for k, v in counts.items()},
    }
    (part / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    part.rename(out)
    return manifest
