"""The preprocessing cache: frames resized once, LMS computed once, stored as tensors.

Training then never decodes a JPEG or resamples audio per step. A cache file is keyed by the
front-end config and image size (so switching representation never mixes entries) and records a
fingerprint of its source files (paths, sizes, modification times); a changed source or config
rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cmav.data.audio_io import ChunkSpec, decode_chunk
from cmav.data.errors import DataError, DataWarning
from cmav.data.image_io import load_frame
from cmav.data.layout import Sample
from cmav.features.frontend import FrontEndConfig, build_front_end, front_end_config

CACHE_VERSION = 1


@dataclass
class PairTensors:
    """A split held in memory: uint8 frames, float16 LMS and the per-pair metadata."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    audio: torch.Tensor  # (N, 1, n_mels, n_frames) float16
    labels: torch.Tensor  # (N,) int64
    tracks: torch.Tensor  # (N,) int64, -1 when unknown
    times: torch.Tensor  # (N,) int64 ms, -1 when unknown
    stems: list[str]
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class DecodedBatch:
    indices: list[int]
    waves: np.ndarray  # (B, n_samples) float32 mono
    images: np.ndarray  # (B, S, S, 3) uint8


def iter_decoded(
    samples: Sequence[Sample],
    spec: ChunkSpec,
    image_size: int,
    batch_size: int = 256,
    workers: int | None = None,
    notes: list[str] | None = None,
    errors: list[str] | None = None,
    progress: bool = True,
    desc: str = "decoding",
) -> Iterator[DecodedBatch]:
    """Decode pairs batch by batch with a thread pool (soundfile and Pillow release the GIL).

    Problems are collected, never dropped silently: fixes/oddities into ``notes``, unusable
    files into ``errors`` (the caller decides whether to raise); unusable pairs are skipped.
    """
    notes = notes if notes is not None else []
    errors = errors if errors is not None else []

    def decode(i: int):
        s = samples[i]
        try:
            wave, n = decode_chunk(s.audio_path, spec)
            img = load_frame(s.image_path, image_size)
            return i, wave, img, n, None
        except DataError as exc:
            return i, None, None, [], str(exc)

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=len(samples), unit="pair", desc=desc, disable=not progress
    ) as bar:
        for start in range(0, len(samples), batch_size):
            idx, waves, imgs = [], [], []
            for i, wave, img, n, err in pool.map(decode, range(start, min(start + batch_size, len(samples)))):
                notes.extend(n)
                if err is not None:
                    errors.append(err)
                else:
                    idx.append(i)
                    waves.append(wave)
                    imgs.append(img)
            bar.update(min(batch_size, len(samples) - start))
            if idx:
                yield DecodedBatch(idx, np.stack(waves), np.stack(imgs))


def source_fingerprint(samples: Sequence[Sample]) -> str:
    """Hash of every source file's path, size and modification time."""
    h = hashlib.sha1()
    for s in samples:
        for p in (s.audio_path, s.image_path):
            st = p.stat()
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_key(features: FrontEndConfig, image_size: int, spec: ChunkSpec) -> str:
    """Key of a cache file: one entry per front-end config (kind and every option), image size and chunk spec."""
    feats = front_end_config(features).to_dict()
    blob = json.dumps({"v": CACHE_VERSION, "features": feats, "image_size": image_size, "chunk": asdict(spec)},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def summarise(lines: list[str], limit: int = 10) -> str:
    shown = "\n  ".join(lines[:limit])
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"\n  {shown}{more}"


def build_tensors(
    root: Path,
    samples: Sequence[Sample],
    class_names: Sequence[str],
    features: FrontEndConfig,
    image_size: int,
    spec: ChunkSpec,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[PairTensors, list[str]]:
    """Decode every pair and compute its audio features; raises one DataError listing all unusable files."""
    features = front_end_config(features)
    front_end = build_front_end(features).to(device)
    notes: list[str] = []
    errors: list[str] = []
    audio = torch.empty((len(samples), *features.output_shape(spec.n_samples / spec.sample_rate)), dtype=torch.float16)
    images = torch.empty((len(samples), 3, image_size, image_size), dtype=torch.uint8)
    for batch in iter_decoded(samples, spec, image_size, notes=notes, errors=errors, progress=progress,
                              desc="caching"):  # fmt: skip
        with torch.no_grad():
            lms = front_end(torch.from_numpy(batch.waves).to(device), spec.sample_rate)
        idx = torch.tensor(batch.indices)
        audio[idx] = lms.to("cpu", torch.float16)
        images[idx] = torch.from_numpy(batch.images).permute(0, 3, 1, 2)
    if errors:
        raise DataError(root, f"{len(errors)} unusable file(s):{summarise(errors)}")
    tensors = PairTensors(
        images=images,
        audio=audio,
        labels=torch.tensor([s.label for s in samples], dtype=torch.long),
        tracks=torch.tensor([s.track for s in samples], dtype=torch.long),
        times=torch.tensor([s.time_ms for s in samples], dtype=torch.long),
        stems=[s.stem for s in samples],
        class_names=list(class_names),
    )
    return tensors, notes


def default_cache_dir(root: Path) -> Path:
    """``<root>/.cmav_cache`` when writable, else a per-root folder under ~/.cache/cmav."""
    local = root / ".cmav_cache"
    if os.access(root, os.W_OK):
        return local
    return Path.home() / ".cache" / "cmav" / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:12]


def load_or_build(
    samples: Sequence[Sample],
    class_names: Sequence[str],
    root: Path,
    split: str,
    features: FrontEndConfig,
    image_size: int,
    spec: ChunkSpec = ChunkSpec(),
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> PairTensors:
    """Return the split's tensors from the cache, (re)building the cache file when stale."""
    if not samples:
        raise DataError(root, f"split '{split}' has no pairs to cache")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(root)
    path = cache_dir / f"{split}-{cache_key(features, image_size, spec)}.pt"
    fingerprint = source_fingerprint(samples)
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("fingerprint") == fingerprint and blob.get("version") == CACHE_VERSION:
                if blob.get("notes"):
                    notes = blob["notes"]
                    warnings.warn(f"{len(notes)} note(s) on split '{split}' (cached):{summarise(notes)}",
                                  DataWarning, stacklevel=2)  # fmt: skip
                return PairTensors(**blob["tensors"])
        except Exception as exc:  # a half-written or foreign file: say so and rebuild
            warnings.warn(f"{path}: unreadable cache file ({exc}); rebuilding", DataWarning, stacklevel=2)
    tensors, notes = build_tensors(root, samples, class_names, features, image_size, spec, progress=progress)
    if notes:
        warnings.warn(f"{len(notes)} note(s) on split '{split}':{summarise(notes)}", DataWarning, stacklevel=2)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=cache_dir)
    os.close(fd)
    try:
        torch.save(
            {
                "version": CACHE_VERSION,
                "fingerprint": fingerprint,
                "features": front_end_config(features).to_dict(),
                "image_size": image_size,
                "notes": notes,
                "tensors": asdict(tensors),
            },
            tmp,
        )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return tensors
