"""The preprocessing cache: frames resized once, LMS computed once, stored as tensors.

Training then never decodes a JPEG or resamples audio per step. A cache file,
``<split>-<root>-<key>.pt``, is named by a hash of the data root's real path (roots sharing one
``cache_dir`` keep a file each) and a key of the front-end config, image size and chunk spec (so
switching representation never mixes entries). It records a fingerprint of its source files: for
each, its absolute path (the root's symbolic links resolved, so ``data/x``, ``/abs/data/x`` and a
link to it are one root), size, modification time (mtime), inode number and status-change time
(ctime), all from one ``stat()``. A changed source or config rebuilds the file. The inode and ctime
catch a file rewritten with its old size and mtime restored (``cp -p``, ``rsync -a --inplace``,
``tar x``: every stand-in chunk has the same size): a file replaced by a rename gets a new inode,
and no write can set the ctime back. The ctime also moves on ``chmod``, ``chown``, a rename or a new
hard link, and a copied or re-extracted data set has new inodes and ctimes: these rebuild the cache
once though the contents are the same, the price of never serving stale features.

Cache files go to ``<root>/.cmav_cache`` (or a given ``cache_dir``). A root that is not writable (a
shared data set) has its new files written under ``~/.cache/cmav/<root hash>``, but a current file
in ``<root>/.cmav_cache``, prepared before the root was made read-only, is read first.

Cache files written before the root went into the name (``<split>-<key>.pt``, whose fingerprints
held neither inodes nor ctimes, so none is current) are removed when their split is opened. So are
the hidden ``.<file>.<random>.partial`` files of a writer killed mid-write, once an hour old.

Training with waveform augmentation (:mod:`cmav.features.augment`) also needs the raw chunks: they
get their own cache file (``<split>-waves-<root>-<key>.pt``, keyed by the chunk spec and the front
end's rate, not by the features): float32 mono already resampled to the front end's rate, so that
the per-step front end never resamples either.
"""

from __future__ import annotations

import hashlib
import json
import os
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
from cmav.data.files import atomic_write, remove_stale_partials
from cmav.data.image_io import check_image_size, load_frame
from cmav.data.layout import Sample
from cmav.features.frontend import FrontEndConfig, build_front_end, front_end_config

CACHE_VERSION = 2
"""Bumped when a front end's output changes: 2, the harmonic profile's ``reference: fundamental``
(missing harmonics read the floor; their level depended on the fundamental's before)."""


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
    waves: torch.Tensor | None = None  # (N, n) float32 mono at the front end's rate, for augmentation

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
    image_size: int | None,
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
    ``image_size=None`` decodes the audio only (``images`` is then empty).
    """
    notes = notes if notes is not None else []
    errors = errors if errors is not None else []

    def decode(i: int):
        s = samples[i]
        try:
            wave, n = decode_chunk(s.audio_path, spec)
            img = load_frame(s.image_path, image_size) if image_size else np.zeros((0,), np.uint8)
            return i, wave, img, n, None
        except DataError as exc:
            return i, None, None, [], str(exc)
        except Exception as exc:  # a decoder's own failure: name the pair rather than abort without a name
            what = f"could not be decoded ({type(exc).__name__}: {exc})"
            return i, None, None, [], f"{s.audio_path} / {s.image_path}: {what}"

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


def _unstattable(p: Path, exc: OSError) -> str:
    """Why a source file cannot be looked at: a dangling link (a development root whose source file
    is gone), a missing file, or the OS's reason."""
    if p.is_symlink():
        try:
            target = os.readlink(p)
        except OSError:
            target = "?"
        return f"{p}: dangling symbolic link (its target {target} does not exist)"
    if isinstance(exc, FileNotFoundError):
        return f"{p}: file does not exist (removed since the folder was scanned?)"
    return f"{p}: cannot be read ({exc.strerror or exc})"


def source_fingerprint(samples: Sequence[Sample], root: str | Path | None = None) -> str:
    """Hash of every source file's absolute path, size, mtime, inode number and ctime (one ``stat()``
    each; the module docstring says why these). Paths under ``root`` are hashed below its real path,
    so that a root spelt another way (relative, absolute, through a symbolic link) is the same root.

    Raises one DataError (on ``root``, or the first sample's folder) naming every source file that
    is missing or cannot be looked at, e.g. the dangling links of a development root whose source
    files were moved."""
    h = hashlib.sha1()
    problems: list[str] = []
    given = real = ""
    if root is not None:
        # the root resolved once, not every path: a realpath per file would cost a stat per folder level
        given, real = os.path.join(os.path.abspath(root), ""), os.path.join(os.path.realpath(root), "")
    for s in samples:
        for p in (s.audio_path, s.image_path):
            try:
                st = p.stat()
            except OSError as exc:
                problems.append(_unstattable(p, exc))
                continue
            name = os.path.abspath(p)
            if given and name.startswith(given):
                name = real + name[len(given) :]
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\n".encode())
    if problems:
        where = Path(root) if root is not None else samples[0].audio_path.parent
        raise DataError(where, f"{len(problems)} source file(s) missing or unreadable:{summarise(problems)}")
    return h.hexdigest()


def root_hash(root: str | Path) -> str:
    """sha1 (hex) of ``root``'s real path: one value however the root is spelt."""
    return hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()


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


def _writable(folder: Path) -> bool:
    """Whether new files can be made in ``folder``. A function of its own so that tests, which run as
    root (whom a read-only mode does not stop), can stand in a read-only data set."""
    return os.access(folder, os.W_OK)


def default_cache_dir(root: Path) -> Path:
    """Where a root's cache files are written: ``<root>/.cmav_cache`` when the root is writable, else
    a per-root folder under ~/.cache/cmav."""
    if _writable(root):
        return root / ".cmav_cache"
    return Path.home() / ".cache" / "cmav" / root_hash(root)[:12]


def cache_dirs(root: Path, cache_dir: str | Path | None = None) -> list[Path]:
    """The folders a root's cache files are looked for in, in order; the last is where they are written.

    A given ``cache_dir`` is the only one. By default ``<root>/.cmav_cache``, and for a root that is
    not writable (a shared, read-only data set) also the folder under ~/.cache/cmav: a cache prepared
    in the root before it was made read-only is read from there, not computed again by every user."""
    if cache_dir:
        return [Path(cache_dir)]
    write = default_cache_dir(root)
    local = root / ".cmav_cache"
    return [write] if write == local else [local, write]


_USED: dict[tuple[str, str], Path] = {}
"""The feature cache file each (real root, split) was last read from or written to in this process."""


def cache_file_used(root: str | Path, split: str) -> Path | None:
    """The feature cache file that the last :func:`load_or_build` of ``root``'s ``split`` in this
    process read or wrote (for ``cmav data cache`` to say where the files are); None when none did."""
    return _USED.get((str(Path(root).resolve()), split))


def _cached_blob(path: Path, fingerprint: str, split: str) -> dict | None:
    """A cache file's contents when it is current (same sources, same version), else None."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("fingerprint") == fingerprint and blob.get("version") == CACHE_VERSION:
            if blob.get("notes"):
                notes = blob["notes"]
                warnings.warn(f"{len(notes)} note(s) on split '{split}' (cached):{summarise(notes)}",
                              DataWarning, stacklevel=4)  # fmt: skip
            return blob
    except Exception as exc:  # a half-written or foreign file: say so and rebuild
        warnings.warn(f"{path}: unreadable cache file ({exc}); rebuilding", DataWarning, stacklevel=4)
    return None


def _save_blob(path: Path, blob: dict) -> None:
    """Write a cache file whole or not at all (:func:`~cmav.data.files.atomic_write`)."""
    atomic_write(path, lambda tmp: torch.save({"version": CACHE_VERSION, **blob}, tmp))


def waves_key(spec: ChunkSpec, sample_rate: int) -> str:
    """Key of a waveform cache file: the chunk spec and the rate the waves are stored at."""
    blob = json.dumps({"v": CACHE_VERSION, "chunk": asdict(spec), "rate": int(sample_rate), "dtype": "float32"},
                      sort_keys=True)  # fmt: skip
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def build_waves(root: Path, samples: Sequence[Sample], spec: ChunkSpec, sample_rate: int,
                progress: bool = True) -> torch.Tensor:  # fmt: skip
    """``(N, n)`` float32 mono chunks resampled to ``sample_rate`` as the front ends resample
    (torchaudio's sinc resampler); raises one DataError listing every unusable file.

    float32, the samples the cached features were computed from: rounding them to int16 again after
    the mix-down and resampling added a noise floor near -100 dBFS, so every training example
    rebuilt from them (augmented or not) differed from the cached and validation features by up to
    19 dB in the quiet bins. float16 would be worse (an 11-bit mantissa).
    """
    import torchaudio

    n_out = spec.samples_at(sample_rate)
    waves = torch.zeros((len(samples), n_out), dtype=torch.float32)
    errors: list[str] = []
    for batch in iter_decoded(samples, spec, None, errors=errors, progress=progress, desc="caching waves"):
        w = torch.from_numpy(batch.waves)
        if sample_rate != spec.sample_rate:
            w = torchaudio.functional.resample(w, spec.sample_rate, sample_rate)
        waves[torch.tensor(batch.indices)] = w[:, :n_out].float()
    if errors:
        raise DataError(root, f"{len(errors)} unusable file(s):{summarise(errors)}")
    return waves


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
    waves_rate: int | None = None,
) -> PairTensors:
    """Return the split's tensors from the cache, (re)building the cache file when stale.

    ``waves_rate``: also load (or build) the raw chunks at that rate into ``tensors.waves``.
    """
    if not samples:
        raise DataError(root, f"split '{split}' has no pairs to cache")
    image_size = check_image_size(image_size)
    dirs = cache_dirs(root, cache_dir)
    # 8 hex digits tell a cache folder's few roots apart; were two to collide, the fingerprint (which
    # holds the paths) would still refuse the other's file: a rebuild, never wrong features
    tag = root_hash(root)[:8]
    key = cache_key(features, image_size, spec)
    fingerprint = source_fingerprint(samples, root)
    blob, path = _find_current(dirs, f"{split}-{tag}-{key}.pt", f"{split}-{key}.pt", fingerprint, split)
    if blob is not None:
        tensors = PairTensors(**blob["tensors"])
    else:
        tensors, notes = build_tensors(root, samples, class_names, features, image_size, spec, progress=progress)
        if notes:
            warnings.warn(f"{len(notes)} note(s) on split '{split}':{summarise(notes)}", DataWarning, stacklevel=2)
        _save_blob(path, {"fingerprint": fingerprint, "features": front_end_config(features).to_dict(),
                          "image_size": image_size, "notes": notes, "tensors": asdict(tensors)})  # fmt: skip
    _USED[(str(root.resolve()), split)] = path
    if waves_rate is not None:
        wkey = waves_key(spec, waves_rate)
        wblob, wpath = _find_current(dirs, f"{split}-waves-{tag}-{wkey}.pt", f"{split}-waves-{wkey}.pt", fingerprint,
                                     split)  # fmt: skip
        if wblob is None:
            wblob = {"fingerprint": fingerprint, "rate": int(waves_rate),
                     "waves": build_waves(root, samples, spec, waves_rate, progress=progress)}  # fmt: skip
            _save_blob(wpath, wblob)
        tensors.waves = wblob["waves"]
    return tensors


def _find_current(dirs: list[Path], name: str, legacy: str, fingerprint: str, split: str) -> tuple[dict | None, Path]:
    """The first current cache file ``name`` in ``dirs`` and its path; else None and the path to write
    (in the last folder)."""
    for d in dirs:
        path = d / name
        _tidy(path, d / legacy)
        blob = _cached_blob(path, fingerprint, split)
        if blob is not None:
            return blob, path
    return None, dirs[-1] / name


def _tidy(path: Path, legacy: Path) -> None:
    """Remove what only takes space beside the cache file ``path``: a killed writer's stale
    temporaries, and the file of the same key under the name it had before the root's hash went into
    it (``legacy``: its fingerprint is of the old kind, never current)."""
    remove_stale_partials(path)
    try:
        legacy.unlink(missing_ok=True)
    except OSError:  # a read-only shared cache folder: the old file only takes space
        pass
