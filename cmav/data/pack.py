"""A packed data set: a data root's cached splits in a few compressed files, to train where the
source files are not (a GPU node, a cluster's scratch disk).

``cmav data pack ROOT -o PACK`` writes a folder::

    PACK/cmav_pack.json        what was packed: source root, layout, image size, front end, chunk spec,
                               cache version, splits
    PACK/<split>.pt.xz         the split's cached tensors (frames, features, labels, tracks, times, stems), lzma
    PACK/mask/...              the instrument masks, when the root has them (read as from any root)
    PACK/cmav_standin.json     the stand-in's manifest, when the root has one (and cmav_player_split.json)

Give ``PACK`` wherever a data root goes (``--data.root PACK``). It holds features for one front-end
config, image size and chunk spec: asking it for another is refused by name, as are a missing
split, a damaged file, features computed under another cache version (a front end's output changed
since; :data:`~cmav.data.cache.CACHE_VERSION`) and waveform augmentation (which needs the raw chunks).

A pack is written into a hidden sibling folder (``.PACK.<random>.partial``) renamed to ``PACK`` at the
end: a failed pack leaves nothing in the way of the retry, and one killed outright leaves the hidden
folder, removed by the next pack to ``PACK`` once it is an hour old.
"""

from __future__ import annotations

import io
import json
import lzma
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from cmav.data import cache
from cmav.data.audio_io import ChunkSpec
from cmav.data.errors import DataError
from cmav.data.files import atomic_folder, atomic_write, remove_stale_partials, sha256_file
from cmav.data.image_io import check_image_size
from cmav.features.frontend import front_end_config, front_end_differences

PACK_MANIFEST = "cmav_pack.json"
PACK_VERSION = 1
COPIED = ("cmav_standin.json", "cmav_player_split.json")
"""Files of the source root that travel with a pack (read by reports and the development split)."""


def is_pack(root: str | Path) -> bool:
    """Whether ``root`` is a packed data set (it holds ``cmav_pack.json``)."""
    return (Path(root) / PACK_MANIFEST).is_file()


def write_pack(root: str | Path, out: str | Path, layout: str = "suburmp", image_size: int = 64,
               features: Any = None, chunk: ChunkSpec | None = None, splits: tuple[str, ...] = ("train", "validation"),
               cache_dir: str | Path | None = None, preset: int = 6, progress: bool = True) -> dict:  # fmt: skip
    """Pack ``root``'s splits (cached first where needed) into the folder ``out``; returns the manifest."""
    from cmav.data.datasets import open_split

    root, out = Path(root), Path(out)
    image_size = check_image_size(image_size)
    if is_pack(root):
        raise DataError(root, "is already a packed data set")
    if out.resolve() == root.resolve():
        raise DataError(out, "the pack must go to another folder than its source root")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        # a pack copies the root's manifest and masks only when it has them: an old pack's would stay
        raise DataError(out, "already exists and is not an empty folder; a pack is written to a new folder")
    features = front_end_config(features)
    chunk = chunk or ChunkSpec()
    remove_stale_partials(out)
    manifest: dict[str, Any] = {
        "version": PACK_VERSION, "source": str(root.resolve()), "layout": layout, "image_size": image_size,
        "features": features.to_dict(), "chunk": asdict(chunk), "cache_version": cache.CACHE_VERSION, "splits": {},
    }  # fmt: skip
    classes: dict[str, tuple[str, ...]] = {}  # paired layout: every split labelled in the first one's class order
    with atomic_folder(out) as tmp:
        for split in splits:
            ds = open_split(layout, root, split, image_size=image_size, features=features, chunk=chunk,
                            cache_dir=cache_dir, progress=progress, **classes)  # fmt: skip
            if layout == "paired" and not classes:
                classes["classes"] = tuple(ds.class_names)
            tensors = {k: v for k, v in asdict(ds.tensors).items() if k != "waves"}
            buf = io.BytesIO()
            torch.save({"version": PACK_VERSION, "tensors": tensors}, buf)
            name = f"{split}.pt.xz"
            packed = lzma.compress(buf.getvalue(), preset=preset)
            atomic_write(tmp / name, lambda t, data=packed: Path(t).write_bytes(data))
            manifest["splits"][split] = {"file": name, "pairs": len(ds), "sha256": sha256_file(tmp / name)}
        if (root / "mask").is_dir():
            shutil.copytree(root / "mask", tmp / "mask", dirs_exist_ok=True)
        for name in COPIED:
            if (root / name).is_file():
                shutil.copy2(root / name, tmp / name)
        # the manifest last: a folder holding a pack's files without one is not taken for a pack
        atomic_write(tmp / PACK_MANIFEST, lambda t: Path(t).write_text(json.dumps(manifest, indent=2) + "\n"))
    return manifest


def read_manifest(root: str | Path) -> dict:
    """A pack's manifest (DataError naming the file when it is unreadable or of another version)."""
    path = Path(root) / PACK_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"not a readable pack manifest ({exc})") from exc
    if manifest.get("version") != PACK_VERSION:
        raise DataError(path, f"pack version {manifest.get('version')!r}; this cmav reads version {PACK_VERSION}: pack again")
    return manifest


def load_packed(root: str | Path, split: str, image_size: int = 64, features: Any = None,
                chunk: ChunkSpec | None = None, waves_rate: int | None = None, **_: Any) -> dict:  # fmt: skip
    """The split's tensors (a dict of :class:`~cmav.data.cache.PairTensors` fields) from a pack,
    after checking that the pack holds what is asked for."""
    root = Path(root)
    manifest = read_manifest(root)
    redo = f"pack again from {manifest['source']} (`cmav data pack`)"
    version = cache.CACHE_VERSION
    if "cache_version" not in manifest:
        raise DataError(root, f"the pack records no cache version (written before packs did), so whether its features "
                              f"are what this cmav computes (cache version {version}) is unknown: {redo}")  # fmt: skip
    if manifest["cache_version"] != version:
        raise DataError(root, f"features computed under cache version {manifest['cache_version']}; this cmav computes "
                              f"version {version} (a front end's output changed): {redo}")  # fmt: skip
    if waves_rate is not None:
        raise DataError(root, "a packed data set holds features, not raw chunks: waveform augmentation needs the "
                              "source root")  # fmt: skip
    if split not in manifest["splits"]:
        raise DataError(root, f"the pack has no split {split!r} (it has {sorted(manifest['splits'])})")
    wanted = []
    if int(image_size) != manifest["image_size"]:
        wanted.append(f"image_size: {manifest['image_size']} -> {image_size}")
    wanted += front_end_differences(manifest["features"], front_end_config(features))
    asked = asdict(chunk or ChunkSpec())
    wanted += [f"chunk.{k}: {v!r} -> {asked[k]!r}" for k, v in manifest["chunk"].items() if asked.get(k) != v]
    if wanted:
        raise DataError(root, f"packed for other settings than asked ({'; '.join(wanted)}): {redo} with these")
    entry = manifest["splits"][split]
    path = root / entry["file"]
    if not path.is_file() or sha256_file(path) != entry["sha256"]:
        raise DataError(path, f"missing, half-written or damaged (its sha256 is not the manifest's): {redo}")
    blob = torch.load(io.BytesIO(lzma.decompress(path.read_bytes())), map_location="cpu", weights_only=True)
    return blob["tensors"]


__all__ = ["PACK_MANIFEST", "is_pack", "load_packed", "read_manifest", "write_pack"]
