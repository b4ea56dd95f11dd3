"""Validating a data set on disk and summarising it: ``cmav data check``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmav.data.audio_io import ChunkSpec
from cmav.data.cache import iter_decoded
from cmav.data.layout import SPLITS, LayoutScan, scan_paired, scan_suburmp


@dataclass
class CheckReport:
    """Counts per class and split, and every problem found."""

    root: Path
    counts: dict[str, Counter] = field(default_factory=dict)
    tracks: dict[str, dict[str, set[int]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def table(self) -> str:
        """Markdown table: one row per class, pairs and tracks per split."""
        splits = list(self.counts)
        classes = sorted({c for cnt in self.counts.values() for c in cnt})
        head = "| class | " + " | ".join(f"{s} pairs | {s} tracks" for s in splits) + " |"
        rule = "|---|" + "---:|---:|" * len(splits)
        rows = [head, rule]
        for c in classes:
            cells = []
            for s in splits:
                tr = self.tracks.get(s, {}).get(c, set())
                cells += [f"{self.counts[s].get(c, 0):,}", ",".join(f"{t:02d}" for t in sorted(tr) if t >= 0) or "-"]
            rows.append(f"| {c} | " + " | ".join(cells) + " |")
        totals = []
        for s in splits:
            # tracks < 0: the layout has none (paired folders), as the rows' "-" say
            n_tr = sum(sum(1 for t in v if t >= 0) for v in self.tracks.get(s, {}).values())
            totals += [f"{sum(self.counts[s].values()):,}", str(n_tr) if n_tr else "-"]
        rows.append("| **total** | " + " | ".join(totals) + " |")
        return "\n".join(rows)


def check_dataset(
    root: str | Path,
    layout: str = "suburmp",
    deep: bool = True,
    spec: ChunkSpec = ChunkSpec(),
    progress: bool = True,
) -> CheckReport:
    """Scan both splits; with ``deep`` also decode every wav and image to find corrupt files."""
    root = Path(root)
    report = CheckReport(root)
    scans: dict[str, LayoutScan] = {}
    classes: tuple[str, ...] | None = None  # paired layout: validation is labelled in train's class order
    for split in SPLITS:
        scan = scan_suburmp(root, split) if layout == "suburmp" else scan_paired(root, split, classes)
        if layout != "suburmp" and classes is None:
            # train's class folders, not the classes that have train pairs: a class whose train images
            # are missing is that one problem, not also "unexpected" in validation
            classes = scan.classes or None
        scans[split] = scan
        report.errors += scan.errors
        report.warnings += scan.warnings
        report.counts[split] = Counter(s.class_name for s in scan.samples)
        tracks: dict[str, set[int]] = {}
        for s in scan.samples:
            tracks.setdefault(s.class_name, set()).add(s.track)
        report.tracks[split] = tracks
        if deep and scan.samples:
            # Small frames: this pass only proves the files decode.
            for _ in iter_decoded(scan.samples, spec, image_size=16, notes=report.warnings, errors=report.errors,
                                  progress=progress, desc=f"checking {split}"):  # fmt: skip
                pass
    if layout == "suburmp":
        shared = shared_players(root, report.tracks.get("train", {}), report.tracks.get("validation", {}))
        report.errors += [f"{root}: {problem}" for problem in shared]
    return report


def tracks_by_class(labels: Sequence[int] | torch.Tensor, tracks: Sequence[int] | torch.Tensor,
                    class_names: Sequence[str]) -> dict[str, set[int]]:  # fmt: skip
    """The tracks (players) of each class of a split, from its labels and tracks (``-1``: none)."""
    out: dict[str, set[int]] = {}
    for label, track in zip(_ints(labels), _ints(tracks), strict=True):
        if track >= 0:
            out.setdefault(class_names[label], set()).add(track)
    return out


def shared_players(root: str | Path, train: Mapping[str, Iterable[int]],
                   validation: Mapping[str, Iterable[int]]) -> list[str]:  # fmt: skip
    """One problem per class whose validation split holds a track (player) of its train split.

    Validation players must be held out. Exempt: the tracks that a development root made with
    ``cmav data split-players --single-track tail`` lends the end of to validation (its manifest
    names them). Unknown tracks (negative: the paired layout has none) are never compared. Used by
    ``cmav data check`` and when a data module opens its splits."""
    seen_players = _held_out_in_time(Path(root))
    problems = []
    for c, val_tracks in validation.items():
        shared = ({t for t in val_tracks if t >= 0} & set(train.get(c, ()))) - seen_players.get(c, set())
        if shared:
            problems.append(f"class '{c}' has track(s) {sorted(shared)} in both train and validation "
                            "(validation players must be held out)")  # fmt: skip
    return problems


def _ints(x: Sequence[int] | torch.Tensor) -> list[int]:
    return [int(v) for v in (x.tolist() if isinstance(x, torch.Tensor) else x)]


def _held_out_in_time(root: Path) -> dict[str, set[int]]:
    """Tracks that a development split (``cmav data split-players --single-track tail``) keeps in
    train and lends the end of to validation: a seen player at unseen moments, not a leak."""
    import json

    from cmav.data.player_split import MANIFEST

    path = root / MANIFEST
    if not path.is_file():
        return {}
    try:
        tails = json.loads(path.read_text()).get("held_out_tails") or {}
    except (OSError, ValueError):
        return {}
    return {c: {int(t) for t in v} for c, v in tails.items()}
