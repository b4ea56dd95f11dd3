"""Finding (audio, image) pairs on disk: Sub-URMP's released layout and a generic paired layout.

Sub-URMP::

    <root>/chunk/{train,validation}/<instrument>/<instrument><NN>_<T>.wav
    <root>/img/{train,validation}/<instrument>/<instrument><NN>_<T>.jpg

Generic paired folders::

    <root>/audio/<split>/<class>/<stem>.{wav,flac}
    <root>/image/<split>/<class>/<stem>.{jpg,jpeg,png}

Pairs are matched by file stem; the label is the class folder.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from cmav.data.errors import DataError
from cmav.data.instruments import INSTRUMENTS

SPLITS: tuple[str, ...] = ("train", "validation")
AUDIO_EXTS: tuple[str, ...] = (".wav", ".flac")
IMAGE_EXTS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
SUBURMP_STEM = re.compile(r"^(?P<instrument>[a-z_]+?)(?P<track>[0-9]{2})_(?P<time>0|[1-9][0-9]*)$")
"""``<instrument><NN>_<T>``: NN = two-digit track (performance) id, T = chunk time in ms.

T is written as Sub-URMP writes it, without leading zeros, in ASCII digits: ``violin00_0600`` (or a
full-width digit, which ``int`` reads too) would be a second name for ``violin00_600``, one moment
loaded twice."""


@dataclass(frozen=True)
class Sample:
    """One (audio, image) pair as found on disk."""

    stem: str
    label: int
    class_name: str
    audio_path: Path
    image_path: Path
    track: int = -1
    """Performance id (-1 when the layout has none)."""
    time_ms: int = -1
    """Sub-URMP's ``T``: 500 for a track's first chunk, +100 per 0.1 s hop (-1 when unknown)."""


@dataclass
class LayoutScan:
    """The pairs found in one split and every problem met on the way."""

    root: Path
    split: str
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    classes: tuple[str, ...] = ()
    """The class names the split was scanned for (paired layout: the given ones, or the split's
    audio class folders), in label order."""

    def raise_if_errors(self) -> None:
        """Raise one DataError listing every problem (so a user fixes them all in one go)."""
        if self.errors:
            shown = self.errors[:20]
            more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
            raise DataError(
                self.root,
                f"{len(self.errors)} problem(s) in split '{self.split}':\n  " + "\n  ".join(shown) + more,
            )


def _files_by_stem(folder: Path, exts: tuple[str, ...], scan: LayoutScan) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or p.is_dir() or p.suffix.lower() not in exts:
            if p.is_dir() and not p.name.startswith("."):
                scan.warnings.append(f"{p}: a folder inside a class folder; ignored (pairs are read from the class "
                                     "folder itself, not from folders below it)")  # fmt: skip
            elif p.is_file() and not p.name.startswith(".") and p.suffix.lower() != ".tmp":
                scan.warnings.append(f"{p}: ignored (not one of {', '.join(exts)})")
            continue
        # Stems are compared after Unicode normalisation: macOS writes NFD names, Linux keeps NFC.
        stem = unicodedata.normalize("NFC", p.stem)
        if stem in found:
            scan.errors.append(f"{p}: same stem as {found[stem]} (two files for one pair)")
            continue
        found[stem] = p
    return found


def _pair_class_folders(
    audio_dir: Path, image_dir: Path, scan: LayoutScan
) -> list[tuple[str, Path, Path]]:
    audio = _files_by_stem(audio_dir, AUDIO_EXTS, scan)
    images = _files_by_stem(image_dir, IMAGE_EXTS, scan)
    for stem in sorted(audio.keys() - images.keys()):
        scan.errors.append(f"{audio[stem]}: audio with no image partner (expected {image_dir / stem}.*)")
    for stem in sorted(images.keys() - audio.keys()):
        scan.errors.append(f"{images[stem]}: image with no audio partner (expected {audio_dir / stem}.*)")
    return [(stem, audio[stem], images[stem]) for stem in sorted(audio.keys() & images.keys())]


def _junk(p: Path) -> bool:
    """Hidden files and what operating systems and archivers leave beside data (.DS_Store, ._*, __MACOSX)."""
    return p.name.startswith(".") or p.name in ("__MACOSX", "Thumbs.db", "desktop.ini")


def _class_folders(folder: Path, scan: LayoutScan) -> list[str]:
    names = []
    for p in sorted(folder.iterdir()):
        if _junk(p):
            continue
        if p.is_dir():
            names.append(p.name)
        else:  # a pair here has no class: read, it would be unlabelled; dropped, it must be said
            scan.warnings.append(f"{p}: a file directly in the split folder; ignored (pairs are read from its class "
                                 "folders)")  # fmt: skip
    return names


def _other_folders(side: Path, known: tuple[str, ...]) -> list[str]:
    """The folders under ``side`` (``chunk/``, ``img/`` ...) that are not one of the ``known`` splits."""
    if not side.is_dir():
        return []
    return sorted(p.name for p in side.iterdir() if p.is_dir() and not _junk(p) and p.name not in known)


def _one_level_off(root: Path, sides: tuple[str, str]) -> str | None:
    """Where the data set probably is when ``root`` holds neither of ``sides``: the one subfolder that
    holds both (an archive unzipped into a folder of its own), or the parent of a root named after a side."""
    if root.name in sides:
        return f"did you mean {root.parent}? (the root is the folder that holds {sides[0]}/ and {sides[1]}/)"
    below = [p for p in sorted(root.iterdir()) if p.is_dir() and not _junk(p) and all((p / s).is_dir() for s in sides)]
    if len(below) == 1:
        return f"did you mean {below[0]}? (it holds {sides[0]}/ and {sides[1]}/)"
    return None


def _check_split_dirs(root: Path, split: str, audio_dir: Path, image_dir: Path, scan: LayoutScan) -> bool:
    if not root.is_dir():
        raise DataError(root, "is a file, not a data set folder" if root.exists() else "data set folder does not exist")
    known = tuple(dict.fromkeys((*SPLITS, split)))
    ok = True
    for d in (audio_dir, image_dir):
        others = _other_folders(d.parent, known)
        # every split scanned names them: `cmav data check` keeps one of each
        scan.warnings += [f"{d.parent / name}: not a split folder (splits are {', '.join(known)}); ignored"
                          for name in others]  # fmt: skip
        if not d.is_dir():
            found = f" (found: {', '.join(others)})" if others else ""
            scan.errors.append(f"{d}: missing folder for split '{split}'{found}")
            ok = False
    sides = (audio_dir.parent.name, image_dir.parent.name)
    if not audio_dir.parent.is_dir() and not image_dir.parent.is_dir():
        hint = _one_level_off(root, sides)
        if hint:
            scan.errors.append(f"{root}: holds no {sides[0]}/ or {sides[1]}/ folder; {hint}")
    return ok


def scan_suburmp(
    root: str | Path,
    split: str,
    classes: tuple[str, ...] = INSTRUMENTS,
) -> LayoutScan:
    """Find the pairs of one split of a Sub-URMP-layout folder (the real data or the stand-in).

    Never raises for content problems: they are collected in ``scan.errors`` (missing/extra class
    folders, unpaired files, malformed names, empty split) so ``cmav data check`` can report them
    all; loaders call ``raise_if_errors()``.
    """
    root = Path(root)
    scan = LayoutScan(root=root, split=split)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; Sub-URMP splits are {SPLITS}")
    audio_root, image_root = root / "chunk" / split, root / "img" / split
    if not _check_split_dirs(root, split, audio_root, image_root, scan):
        return scan
    for d in (audio_root, image_root):
        present = set(_class_folders(d, scan))
        for missing in sorted(set(classes) - present):
            scan.errors.append(f"{d / missing}: missing class folder")
        for extra in sorted(present - set(classes)):
            scan.errors.append(f"{d / extra}: unexpected class folder (classes are {', '.join(classes)})")
    moments: dict[tuple[str, int, int], Path] = {}
    for label, name in enumerate(classes):
        a, i = audio_root / name, image_root / name
        if not (a.is_dir() and i.is_dir()):
            continue
        pairs = _pair_class_folders(a, i, scan)
        if not pairs:
            scan.errors.append(f"{a}: class '{name}' has no pairs in split '{split}'")
        for stem, ap, ip in pairs:
            m = SUBURMP_STEM.match(stem)
            if m is None or m["instrument"] != name:
                scan.errors.append(
                    f"{ap}: name does not follow '<instrument><NN>_<T>' with instrument '{name}'"
                )
                continue
            track, time_ms = int(m["track"]), int(m["time"])
            first = moments.setdefault((name, track, time_ms), ap)
            if first != ap:
                scan.errors.append(f"{ap}: same moment ({name} track {track:02d} at {time_ms} ms) as {first} "
                                   "(two files for one chunk)")  # fmt: skip
                continue
            scan.samples.append(Sample(stem, label, name, ap, ip, track=track, time_ms=time_ms))
    if not scan.samples and not scan.errors:
        scan.errors.append(f"{audio_root}: split '{split}' is empty")
    _check_track_times(scan)
    return scan


def _check_track_times(scan: LayoutScan) -> None:
    """Warn about gaps in a track's chunk times (Sub-URMP's T steps by exactly 100 ms)."""
    times: dict[tuple[str, int], list[int]] = defaultdict(list)
    for s in scan.samples:
        times[(s.class_name, s.track)].append(s.time_ms)
    for (name, track), ts in sorted(times.items()):
        ts.sort()
        gaps = sum(1 for a, b in pairwise(ts) if b - a != 100)
        if gaps:
            scan.warnings.append(f"{name}{track:02d}: {gaps} gap(s) in chunk times (expected steps of 100 ms)")


def scan_paired(root: str | Path, split: str, classes: tuple[str, ...] | None = None) -> LayoutScan:
    """Find the pairs of one split of a generic ``audio/`` + ``image/`` paired-folder data set.

    ``classes`` fixes the label order; by default the sorted class folders of the split (of its
    audio or its images).
    """
    root = Path(root)
    scan = LayoutScan(root=root, split=split)
    audio_root, image_root = root / "audio" / split, root / "image" / split
    if not _check_split_dirs(root, split, audio_root, image_root, scan):
        return scan
    present_audio = _class_folders(audio_root, scan)
    present_image = _class_folders(image_root, scan)
    # by default every class folder of the split, audio or image: one side missing is "missing", not "unexpected"
    names = tuple(classes) if classes is not None else tuple(sorted(set(present_audio) | set(present_image)))
    scan.classes = names
    for d, present in ((audio_root, present_audio), (image_root, present_image)):
        for missing in sorted(set(names) - set(present)):
            scan.errors.append(f"{d / missing}: missing class folder")
        for extra in sorted(set(present) - set(names)):
            scan.errors.append(f"{d / extra}: unexpected class folder")
    for label, name in enumerate(names):
        a, i = audio_root / name, image_root / name
        if not (a.is_dir() and i.is_dir()):
            continue
        pairs = _pair_class_folders(a, i, scan)
        if not pairs:
            scan.errors.append(f"{a}: class '{name}' has no pairs in split '{split}'")
        scan.samples.extend(Sample(stem, label, name, ap, ip) for stem, ap, ip in pairs)
    if not names:
        scan.errors.append(f"{audio_root}: split '{split}' has no class folders")
    return scan
