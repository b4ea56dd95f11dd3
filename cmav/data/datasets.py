"""Datasets of (LMS, frame) pairs: Sub-URMP's layout and generic paired folders, both cached, and packed data sets."""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from cmav.data.audio_io import ChunkSpec
from cmav.data.cache import PairTensors, load_or_build
from cmav.data.check import outdated_standin, readable_manifest, refuse_unfinished_standin
from cmav.data.errors import DataError, DataWarning
from cmav.data.instruments import INSTRUMENTS
from cmav.data.layout import LayoutScan, Sample, scan_paired, scan_suburmp
from cmav.data.pack import is_pack, load_packed, read_manifest
from cmav.features.frontend import FrontEndConfig, front_end_config

Layout = Literal["suburmp", "paired"]


def content_fingerprint(samples: Sequence[Sample], root: str | Path) -> str:
    """sha1 (hex) of every source file's path below ``root``, size and modification time: what tells
    whether results computed from a split (an ablation grid's runs) still describe it.

    Unlike the cache's fingerprint (:func:`cmav.data.cache.source_fingerprint`) it leaves out the
    inode, the status-change time and the absolute path: a ``chmod``, a rename of the root or a
    ``cp -a`` restore keep the contents, and should not retrain a grid (the cache, which must never
    serve stale features, is rebuilt on them). A file that cannot be looked at counts as missing."""
    h = hashlib.sha1()
    base = os.path.abspath(root)
    for s in samples:
        for p in (s.audio_path, s.image_path):
            try:
                st = p.stat()
                seen = f"{st.st_size}\0{st.st_mtime_ns}"
            except OSError:
                seen = "missing"
            h.update(f"{os.path.relpath(os.path.abspath(p), base)}\0{seen}\n".encode())
    return h.hexdigest()


def split_fingerprint(layout: Layout, root: str | Path, split: str) -> str:
    """:func:`content_fingerprint` of a split found on disk, without opening its cache; for a packed
    data set, the packed file's sha256 (the pack's manifest holds it)."""
    if is_pack(root):
        entry = read_manifest(root)["splits"].get(split)
        return f"pack:{entry['sha256']}" if entry else "pack:missing"
    if layout not in ("suburmp", "paired"):
        raise ValueError(f"unknown layout {layout!r}; use 'suburmp' or 'paired'")
    scan = scan_suburmp(root, split) if layout == "suburmp" else scan_paired(root, split)
    return content_fingerprint(scan.samples, root)


class PairDataset(Dataset):
    """Items of a cached split.

    Each item is a dict: ``audio`` float32 ``(1, n_mels, n_frames)`` LMS in dB, ``image`` float32
    ``(3, S, S)`` in [-1, 1], ``label`` (class index), ``track`` and ``time`` (ms; -1 when the
    layout has none) and ``index`` (position in the split); when the split keeps its raw chunks
    (``waves_rate``, for waveform augmentation) also ``wave``, float32 ``(n_samples,)``.

    ``samples`` (the source files) or ``fingerprint`` give :attr:`data_fingerprint`.
    """

    def __init__(self, tensors: PairTensors, root: Path, split: str, samples: Sequence[Sample] | None = None,
                 fingerprint: str | None = None) -> None:  # fmt: skip
        self.tensors = tensors
        self.root = root
        self.split = split
        self._samples = samples
        self._fingerprint = fingerprint

    @property
    def data_fingerprint(self) -> str | None:
        """What identifies the split's contents (:func:`content_fingerprint`; a pack's: its file's
        sha256), computed at the first call; None for a split made in memory."""
        if self._fingerprint is None and self._samples is not None:
            self._fingerprint = content_fingerprint(self._samples, self.root)
        return self._fingerprint

    @property
    def class_names(self) -> list[str]:
        return self.tensors.class_names

    def __len__(self) -> int:
        return len(self.tensors)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        t = self.tensors
        item = {
            "audio": t.audio[i].float(),
            "image": t.images[i].float().div(127.5).sub(1.0),
            "label": t.labels[i],
            "track": t.tracks[i],
            "time": t.times[i],
            "index": torch.tensor(i),
        }
        if t.waves is not None:
            item["wave"] = t.waves[i]
        return item


def _load(
    scan: LayoutScan,
    class_names: list[str],
    image_size: int,
    features: FrontEndConfig | None,
    chunk: ChunkSpec | None,
    cache_dir: str | Path | None,
    progress: bool,
    waves_rate: int | None = None,
) -> PairTensors:
    scan.raise_if_errors()
    for w in scan.warnings:
        warnings.warn(w, DataWarning, stacklevel=3)
    return load_or_build(
        scan.samples,
        class_names,
        scan.root,
        scan.split,
        front_end_config(features),
        image_size,
        chunk or ChunkSpec(),
        cache_dir=cache_dir,
        progress=progress,
        waves_rate=waves_rate,
    )


class SubURMP(PairDataset):
    """A split of Sub-URMP (the real archive or cmav's stand-in), cached.

    Raises DataError listing every layout problem (missing class folder, unpaired file...) and
    every unusable file; fixes (resampling, mono mix-down) are reported as DataWarnings.
    ``waves_rate``: also keep the raw chunks, resampled to that rate (for waveform augmentation).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 64,
        features: FrontEndConfig | None = None,
        chunk: ChunkSpec | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        waves_rate: int | None = None,
    ) -> None:
        scan = scan_suburmp(root, split)
        tensors = _load(scan, list(INSTRUMENTS), image_size, features, chunk, cache_dir, progress, waves_rate)
        super().__init__(tensors, scan.root, split, samples=scan.samples)


class PairedFolder(PairDataset):
    """A split of a generic ``audio/<split>/<class>`` + ``image/<split>/<class>`` data set, cached.

    ``classes`` fixes the label order (pass the same tuple for every split); by default the
    sorted class folders.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        image_size: int = 64,
        features: FrontEndConfig | None = None,
        chunk: ChunkSpec | None = None,
        classes: tuple[str, ...] | None = None,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        waves_rate: int | None = None,
    ) -> None:
        scan = scan_paired(root, split, classes)
        names = list(classes) if classes else sorted({s.class_name for s in scan.samples})
        tensors = _load(scan, names, image_size, features, chunk, cache_dir, progress, waves_rate)
        super().__init__(tensors, scan.root, split, samples=scan.samples)


class PackedSplit(PairDataset):
    """A split of a packed data set (:mod:`cmav.data.pack`): the cached tensors, without the source files.

    Takes the other splits' arguments; ``cache_dir`` and ``progress`` do not apply (a pack is its own cache).
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 64, features: FrontEndConfig | None = None,
                 chunk: ChunkSpec | None = None, waves_rate: int | None = None, classes: Sequence[str] | None = None,
                 **_: object) -> None:  # fmt: skip
        tensors = PairTensors(**load_packed(root, split, image_size, features, chunk, waves_rate))
        if classes is not None and list(classes) != list(tensors.class_names):
            # the labels are stored as indices into the pack's own order: another order or set cannot be had
            raise DataError(root, f"split {split!r} holds the classes {tensors.class_names} in that order; asked "
                                  f"for {list(classes)}")  # fmt: skip
        super().__init__(tensors, Path(root), split, fingerprint=split_fingerprint("suburmp", root, split))


def open_split(layout: Layout, root: str | Path, split: str, **kwargs) -> PairDataset:
    """Open a split of either layout by name; a packed data set (:mod:`cmav.data.pack`), whatever the layout.

    Refuses (:class:`DataError`) a stand-in whose build was cut off (its manifest says ``complete: false``)."""
    if is_pack(root):
        return PackedSplit(root, split, **kwargs)
    manifest = readable_manifest(root)  # read once for both checks
    refuse_unfinished_standin(root, manifest)  # a stand-in whose build was cut off holds part of its data
    outdated = outdated_standin(root, manifest)
    if outdated:
        warnings.warn(f"{root}: {outdated}", DataWarning, stacklevel=2)
    if layout == "suburmp":
        return SubURMP(root, split, **kwargs)
    if layout == "paired":
        return PairedFolder(root, split, **kwargs)
    raise ValueError(f"unknown layout {layout!r}; use 'suburmp' or 'paired'")
