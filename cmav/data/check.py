"""Validating a data set on disk and summarising it: ``cmav data check``."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cmav.data.audio_io import ChunkSpec
from cmav.data.cache import iter_decoded
from cmav.data.errors import DataError
from cmav.data.layout import SPLITS, LayoutScan, scan_paired, scan_suburmp
from cmav.data.tails import _ints

STANDIN_MANIFEST = "cmav_standin.json"
"""The stand-in builder's manifest (:data:`cmav.standin.build.MANIFEST`)."""
CUT_OFF_EXPLAINS = re.compile(
    r": missing class folder$|: missing folder for split '|: class '[^']+' has no pairs in split '"
    r"|: (audio with no image|image with no audio) partner \(|: split '[^']+' is empty$|: holds no \S+ or \S+ folder"
)
"""The layout problems (:mod:`cmav.data.layout`) that a stand-in build cut off leaves: folders and
files of the tracks it had not written yet, or was writing."""


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
    """Scan both splits; with ``deep`` also decode every wav and image to find corrupt files. A pack
    (``cmav data pack``'s folder) is checked as one: :func:`check_pack`."""
    from cmav.data.pack import is_pack

    root = Path(root)
    if is_pack(root):
        return check_pack(root)
    report = CheckReport(root)
    scans: dict[str, LayoutScan] = {}
    classes: tuple[str, ...] | None = None  # paired layout: validation is labelled in train's class order
    times: dict[tuple[str, str, int], set[int]] = {}  # (split, class, track) -> its chunk times (ms)
    for split in SPLITS:
        scan = scan_suburmp(root, split) if layout == "suburmp" else scan_paired(root, split, classes)
        if layout != "suburmp" and classes is None:
            # train's class folders, not the classes that have train pairs: a class whose train images
            # are missing is that one problem, not also "unexpected" in validation
            classes = scan.classes or None
        scans[split] = scan
        # what concerns the root, not a split (a folder that is no split, a root one level off) is said once
        report.errors += [e for e in scan.errors if e not in report.errors]
        report.warnings += [w for w in scan.warnings if w not in report.warnings]
        report.counts[split] = Counter(s.class_name for s in scan.samples)
        tracks: dict[str, set[int]] = {}
        for s in scan.samples:
            tracks.setdefault(s.class_name, set()).add(s.track)
            times.setdefault((split, s.class_name, s.track), set()).add(s.time_ms)
        report.tracks[split] = tracks
        if deep and scan.samples:
            # Small frames: this pass only proves the files decode.
            for _ in iter_decoded(scan.samples, spec, image_size=16, notes=report.warnings, errors=report.errors,
                                  progress=progress, desc=f"checking {split}"):  # fmt: skip
                pass
    if layout == "suburmp":
        shared = shared_players(root, report.tracks.get("train", {}), report.tracks.get("validation", {}))
        report.errors += [f"{root}: {problem}" for problem in shared]
    try:
        manifest = standin_manifest(root)
    except DataError as exc:
        report.warnings.append(str(exc))
        manifest = None
    if manifest is not None:
        unfinished = unfinished_standin(root, manifest)
        if unfinished:
            # first, and instead of the folders and files it leaves missing: those filled the list before
            explained = [e for e in report.errors if CUT_OFF_EXPLAINS.search(e)]
            left_out = (f" ({len(explained)} missing folder(s) and file(s) that follow from it are not listed)"
                        if explained else "")  # fmt: skip
            report.errors = [f"{root}: {unfinished}{left_out}"] + [e for e in report.errors if e not in explained]
        elif layout == "suburmp":
            report.errors += [f"{root}: {problem}" for problem in recorded_counts_differ(report.counts, manifest, times, root)]
        outdated = outdated_standin(root, manifest)
        if outdated:  # readable, but not what a build makes today: figures on it do not reproduce
            report.warnings.append(f"{root}: {outdated}")
    return report


def check_pack(root: str | Path) -> CheckReport:
    """Check a pack: its manifest, and every split's file against the manifest's sha256 and cache
    version (read as training reads it, with the settings it was packed for); counts per class and
    split from the packed labels and tracks. A pack holds no source files: nothing is said about them."""
    from cmav.data.pack import PACK_MANIFEST, load_packed, read_manifest

    root = Path(root)
    report = CheckReport(root)
    try:
        manifest = read_manifest(root)
    except DataError as exc:
        report.errors.append(str(exc))
        return report
    for split in SPLITS:
        report.counts[split], report.tracks[split] = Counter(), {}
        try:
            t = load_packed(root, split, image_size=manifest["image_size"], features=manifest["features"],
                            chunk=ChunkSpec(**manifest["chunk"]))  # fmt: skip
        except (DataError, KeyError, TypeError) as exc:  # a manifest lacking a key: the pack is not usable either
            report.errors.append(str(exc) if isinstance(exc, DataError) else f"{root}: unreadable pack manifest ({exc!r})")
            continue
        names = list(t["class_names"])
        report.counts[split] = Counter(names[i] for i in _ints(t["labels"]))
        report.tracks[split] = tracks_by_class(t["labels"], t["tracks"], names)
        recorded = manifest["splits"][split].get("pairs")
        if recorded is not None and recorded != sum(report.counts[split].values()):
            report.errors.append(f"{root / manifest['splits'][split]['file']}: holds {sum(report.counts[split].values())} "
                                 f"pairs; {root / PACK_MANIFEST} records {recorded}")  # fmt: skip
    if manifest.get("layout", "suburmp") == "suburmp":
        shared = shared_players(root, report.tracks["train"], report.tracks["validation"])
        report.errors += [f"{root}: {problem}" for problem in shared]
    return report


def standin_manifest(root: str | Path) -> dict | None:
    """The stand-in manifest at ``root`` (``cmav_standin.json``), None where there is none; raises
    :class:`DataError` for one that is not a JSON object."""
    import json

    path = Path(root) / STANDIN_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"unreadable stand-in manifest ({exc})") from exc
    if not isinstance(manifest, dict):
        raise DataError(path, "unreadable stand-in manifest (not a JSON object)")
    return manifest


def readable_manifest(root: str | Path) -> dict | None:
    """The stand-in manifest at ``root``, None where there is none or it cannot be read (no verdict
    then: the layout checks still run, and `cmav data check` reports the unreadable file)."""
    try:
        return standin_manifest(root)
    except DataError:
        return None


def unfinished_standin(root: str | Path, manifest: dict | None = None) -> str | None:
    """Why the stand-in at ``root`` may not be read, or None: its build was cut off (its manifest
    says ``complete: false``), so it holds part of its tracks. A manifest without the key (built
    before it was written) is complete. ``manifest``: the one read already."""
    manifest = manifest if manifest is not None else readable_manifest(root)
    if manifest is None or manifest.get("complete", True):
        return None
    return (f"its stand-in build was cut off ({STANDIN_MANIFEST} says \"complete\": false), so it holds only part "
            f"of its data: run the same build command again to finish it ({rebuild_command(root, manifest)})")  # fmt: skip


def outdated_standin(root: str | Path, manifest: dict | None = None) -> str | None:
    """Why the stand-in at ``root`` holds other audio than a build with its parameters makes today
    (:func:`cmav.standin.build.outdated_render`), with the command that rebuilds it; None otherwise."""
    from cmav.standin.build import outdated_render

    manifest = manifest if manifest is not None else readable_manifest(root)
    problem = manifest and outdated_render(manifest)
    if not problem:
        return None
    return f"{problem}: delete the folder and build it again ({rebuild_command(root, manifest)})"


def refuse_unfinished_standin(root: str | Path, manifest: dict | None = None) -> None:
    """Raise :class:`DataError` when the stand-in at ``root`` is one whose build was cut off
    (:func:`unfinished_standin`): caching, packing, splitting or training on it would silently use part of it."""
    problem = unfinished_standin(root, manifest)
    if problem:
        raise DataError(root, problem)


def rebuild_command(root: str | Path, manifest: dict) -> str:
    """The ``cmav data build`` command that builds (or finishes) the stand-in ``manifest`` describes at ``root``."""
    import shlex

    params = manifest.get("params") or {}
    words = ["cmav", "data", "build", "--root", str(root)]
    preset = params.get("preset")
    if preset is not None:
        words += ["--preset", str(preset)]
    if params.get("seed") is not None:
        words += ["--seed", str(params["seed"])]
    record = manifest.get("soundfont") or {}
    fonts = [r.get("path") for r in (record.get("fonts") or [record])] if isinstance(record, dict) else []
    if not all(fonts):  # no record of where the fonts were: their names
        names = params.get("soundfont")
        fonts = [names] if isinstance(names, str) else list(names or [])
    for font in fonts:
        words += ["--soundfont", str(font)]
    if params.get("font_segment_s") is not None:
        words += ["--font-segment-s", str(params["font_segment_s"])]
    if params.get("render") not in (None, "dry"):
        words += ["--render", str(params["render"])]
    if params.get("frame_size") is not None:
        from cmav.standin.build import PRESETS

        if preset not in PRESETS or PRESETS[preset].frame_size != params["frame_size"]:
            words += ["--frame-size", str(params["frame_size"])]
    command = shlex.join(words)
    if params.get("jpeg_quality") not in (None, 90):
        command += f", with build_standin's jpeg_quality={params['jpeg_quality']} (the command has no option for it)"
    return command


def recorded_counts_differ(counts: Mapping[str, Counter], manifest: dict,
                           times: Mapping[tuple[str, str, int], set[int]] | None = None,
                           root: str | Path | None = None) -> list[str]:  # fmt: skip
    """One problem per split and class whose number of pairs is not the one the stand-in manifest
    records (files lost or added after the build); none where the manifest records no counts.

    ``times``: the chunk times (ms) found per (split, class, track); with them, each problem names the
    tracks that lack chunks and their times (where the manifest says how many chunks each track has),
    and with ``root`` too the build command that renders them again."""
    from cmav.standin.build import chunk_times, recorded_tracks, times_text

    recorded = manifest.get("counts")
    if not isinstance(recorded, dict):
        return []
    expected = recorded_tracks(manifest) if times is not None else {}
    problems = []
    for split in SPLITS:
        want, have = recorded.get(split) or {}, counts.get(split) or Counter()
        for c in sorted(set(want) | set(have)):
            if int(want.get(c, 0)) != have.get(c, 0):
                problem = (f"{split} holds {have.get(c, 0)} {c} pair(s); its stand-in manifest {STANDIN_MANIFEST} "
                           f"records {want.get(c, 0)}")  # fmt: skip
                lacking = []
                for (s, name, track), n in sorted(expected.items()):
                    found = (times or {}).get((s, name, track), set())
                    missing = [t for t in chunk_times(n) if t not in found] if (s, name) == (split, c) else []
                    if missing:
                        lacking.append(f"{name}{track:02d} lacks the chunk(s) at {times_text(missing)} ms")
                if lacking:
                    problem += ": " + "; ".join(lacking)
                    if root is not None:
                        problem += f" (the build renders them again: {rebuild_command(root, manifest)})"
                problems.append(problem)
    return problems


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
