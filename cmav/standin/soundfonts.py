"""Which soundfont a stand-in was rendered from, and whether two fonts are independent sources.

A cross-source evaluation is honest only when the evaluation audio shares no recordings with the
training audio. Two fonts are the same source when they are the same file (same sha256 or the same
real path) or when they belong to one *family* of fonts built from the same samples: MuseScore
General (and FluidR3Mono) reuse FluidR3's recordings. TimGM6mb (Debian ``timgm6mb-soundfont``, Tim
Brechbill's GM set shipped with MuseScore 1.x) is built from other recordings: cmav's evaluation font.

Names are not enough: a font can reuse another's samples under any name. So when both files are
SoundFont 2 files on disk, :func:`same_source` also compares their sample data, and two fonts that
share any byte-identical sample (Debian's csound GM bank shares 323 of its 480 with TimGM6mb) are
the same source. Re-encoded copies (sf3, resampled) are caught only by the family names. When a
recorded font file is not on this machine (data built elsewhere), the samples cannot be compared:
:func:`same_source` then warns (:class:`SampleComparisonWarning`) rather than pass it silently.

A TiMidity++ ``.cfg`` source (GUS patches, :mod:`cmav.standin.render`) is compared the same way,
through the samples of the patches (and fonts) it maps: 8-bit and unsigned patch data are widened to
signed 16-bit first, as a soundfont stores them.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cmav.data.files import sha256_file
from cmav.standin.render import is_patch_set

TIMGM6MB = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
"""Where Debian's timgm6mb-soundfont puts the independent evaluation font."""

FONT_FAMILIES: dict[str, tuple[str, ...]] = {
    # family: lower-case name fragments (file name or the font's INAM) of fonts sharing its samples
    "FluidR3": ("fluidr3", "fluid r3", "musescore_general", "musescore general", "musescoregeneral"),
    "TimGM6mb": ("timgm6mb",),
    "FreePats": ("freepats",),
}
"""Fonts that share recordings. MuseScore General and FluidR3Mono are derived from FluidR3."""


class SampleComparisonWarning(UserWarning):
    """:func:`same_source` could not compare two fonts' samples: a recorded font file is not on this
    machine (data built elsewhere). The fonts were compared by sha256, real path and family only."""


def _riff_chunks(f, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(``LIST-type/id`` or ``id``, size, offset) of every leaf chunk from the file position to ``end``."""
    while f.tell() + 8 <= end:
        cid, size = struct.unpack("<4sI", f.read(8))
        start = f.tell()
        if cid == b"LIST":
            kind = f.read(4)
            for sub, n, off in _riff_chunks(f, min(start + size, end)):
                yield kind + b"/" + sub, n, off
        else:
            yield cid, size, start
        f.seek(start + size + (size & 1))


def _read_sf2(path: str | Path, wanted: Callable[[bytes], bool]) -> dict[bytes, bytes]:
    """The contents of the leaf chunks of a SoundFont 2 file whose id passes ``wanted`` (ids as
    ``LIST-type/id``: ``INFO/INAM``, ``sdta/smpl`` ...); ``{}`` for a file that is not an sf2."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:12] != b"sfbk":
                return {}
            total = struct.unpack("<I", head[4:8])[0] + 8
            found = [(cid, size, off) for cid, size, off in _riff_chunks(f, total) if wanted(cid)]
            out = {}
            for cid, size, off in found:
                f.seek(off)
                out[cid] = f.read(size)
            return out
    except (OSError, struct.error):
        return {}


def sf2_info(path: str | Path) -> dict[str, str]:
    """The INFO fields of a SoundFont 2 file (``INAM``: bank name, ``ICOP``, ``IENG`` ...); ``{}``
    for a file that is not an sf2 (an sf3 or anything else)."""
    fields = _read_sf2(path, lambda cid: cid.startswith(b"INFO/") and cid != b"INFO/ifil")
    return {cid[5:].decode("latin1"): data.split(b"\0")[0].decode("latin1") for cid, data in fields.items()}


MIN_SAMPLE_FRAMES = 64
"""Samples shorter than this (or all zero) are ignored when fonts are compared: a few frames of
silence or a one-cycle test tone match by chance."""


@functools.lru_cache(maxsize=16)
def _sample_digests(realpath: str, mtime_ns: int, size: int) -> dict[str, str]:
    # keyed by modification time and size too, so a font rewritten in place is read again
    chunks = _read_sf2(realpath, lambda cid: cid in (b"sdta/smpl", b"pdta/shdr"))
    if len(chunks) != 2:
        return {}
    pcm, headers = chunks[b"sdta/smpl"], chunks[b"pdta/shdr"]
    out: dict[str, str] = {}
    for i in range(len(headers) // 46 - 1):  # 46-byte sample headers; the last is the terminal "EOS"
        name, start, end = struct.unpack("<20sII", headers[i * 46 : i * 46 + 28])
        data = pcm[2 * start : 2 * end]
        if end - start < MIN_SAMPLE_FRAMES or not data.strip(b"\0"):
            continue
        out.setdefault(hashlib.sha1(data).hexdigest(), name.split(b"\0")[0].decode("latin1"))
    return out


def _pat_samples(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(name, signed 16-bit little-endian PCM) of every wave in a GUS ``.pat`` patch file."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"GF1PATCH" or len(data) < 239:
        raise ValueError(f"{path}: not a GUS patch file (no GF1PATCH header)")
    n_waves = struct.unpack("<H", data[85:87])[0]
    off = 129 + 63 + 47  # patch, instrument and layer headers
    for _ in range(n_waves):
        head = data[off : off + 96]
        if len(head) < 96:
            raise ValueError(f"{path}: truncated GUS patch file")
        length, modes = struct.unpack("<I", head[8:12])[0], head[55]
        raw = data[off + 96 : off + 96 + length]
        sixteen, unsigned = modes & 1, modes & 2
        pcm = np.frombuffer(raw[: len(raw) // 2 * 2] if sixteen else raw,
                            ("<u2" if unsigned else "<i2") if sixteen else ("u1" if unsigned else "i1")).astype(np.int32)  # fmt: skip
        if unsigned:
            pcm = pcm - (32768 if sixteen else 128)
        if not sixteen:
            pcm = pcm * 256
        yield head[:7].split(b"\0")[0].decode("latin1") or Path(path).stem, pcm.astype("<i2").tobytes()
        off += 96 + length


def timidity_sources(config: str | Path) -> list[Path]:
    """The patch (``.pat``) and soundfont files a TiMidity++ configuration maps, with its ``dir``
    search paths and ``source`` includes followed; a mapped file that is not found raises."""
    config = Path(config)
    dirs: list[Path] = [config.parent]
    found: list[Path] = []

    def resolve(name: str) -> Path:
        for d in [Path("/"), *reversed(dirs)] if Path(name).is_absolute() else reversed(dirs):
            if (d / name).is_file():
                return d / name
        raise FileNotFoundError(f"{config}: {name} (mapped there) not found in {', '.join(map(str, dirs))}")

    for line in config.read_text(encoding="latin1").splitlines():
        words = line.split("#")[0].split()
        if not words:
            continue
        if words[0] == "dir":
            dirs.append(Path(words[1]))
        elif words[0] == "source":
            found += timidity_sources(resolve(words[1]))
        elif words[0] == "soundfont":
            found.append(resolve(words[1].strip('"')))
        elif words[0].isdigit() and len(words) > 1:
            name = words[2].strip('"') if words[1] == "%font" else words[1]
            found.append(resolve(name if name.endswith((".pat", ".sf2")) or words[1] == "%font" else name + ".pat"))
    return list(dict.fromkeys(found))


@functools.lru_cache(maxsize=16)
def _patch_set_digests(realpath: str, mtime_ns: int, size: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for src in timidity_sources(realpath):
        if src.suffix.lower() != ".pat":
            out.update(sample_digests(src))
            continue
        for name, data in _pat_samples(src):
            if len(data) // 2 < MIN_SAMPLE_FRAMES or not data.strip(b"\0"):
                continue
            out.setdefault(hashlib.sha1(data).hexdigest(), f"{src.name}:{name}")
    return out


def sample_digests(path: str | Path) -> dict[str, str]:
    """sha1 of each sample's 16-bit PCM -> the sample's name, for a SoundFont 2 file or a TiMidity++
    ``.cfg`` (the samples of what it maps); ``{}`` for anything else (an sf3's compressed samples
    cannot be compared this way)."""
    real = os.path.realpath(path)
    st = os.stat(real)
    if is_patch_set(real):
        return dict(_patch_set_digests(real, st.st_mtime_ns, st.st_size))
    return dict(_sample_digests(real, st.st_mtime_ns, st.st_size))


def _shared(da: dict[str, str], db: dict[str, str]) -> list[str]:
    return sorted(da[h] for h in da.keys() & db.keys())


def shared_samples(a: str | Path, b: str | Path) -> list[str]:
    """Names (in ``a``) of the samples that fonts ``a`` and ``b`` share byte for byte."""
    return _shared(sample_digests(a), sample_digests(b))


def font_family(name: str, inam: str = "") -> str | None:
    """The family of a font by its file name or bank name, or None when unknown."""
    text = f"{name} {inam}".lower()
    for family, fragments in FONT_FAMILIES.items():
        if any(f in text for f in fragments):
            return family
    return None


def soundfont_record(path: str | Path) -> dict[str, Any]:
    """What identifies a font: ``name``, ``path`` (as given), ``realpath``, ``sha256``, ``bytes``,
    ``inam`` (its bank name) and ``family``. Raises FileNotFoundError naming a missing font."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: soundfont not found")
    real = Path(os.path.realpath(path))
    inam = sf2_info(real).get("INAM", "")
    record = {"name": real.name, "path": str(path.absolute()), "realpath": str(real), "sha256": sha256_file(real),
              "bytes": real.stat().st_size, "inam": inam, "family": font_family(real.name, inam)}  # fmt: skip
    if real.suffix.lower() == ".cfg":  # the sound is in the patches it maps, not in its text
        record["patches_sha256"] = patches_sha256(real)
    return record


def patches_sha256(config: str | Path) -> str:
    """One sha256 over the files a TiMidity++ configuration maps (each file's sha256, in its order)."""
    digest = hashlib.sha256()
    for source in timidity_sources(config):
        digest.update(sha256_file(source).encode())
    return digest.hexdigest()


def several_fonts_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of data rendered from several fonts: ``name`` joins theirs with " + ", ``fonts``
    holds each font's record (what :func:`same_source` compares, one by one)."""
    if len(records) < 2:
        raise ValueError("several_fonts_record takes two or more font records")
    return {"name": " + ".join(str(r.get("name")) for r in records), "fonts": list(records)}


def fonts_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The single-font records behind ``record`` (itself, or its ``fonts``)."""
    return list(record["fonts"]) if record.get("fonts") else [record]


def describe(record: dict[str, Any]) -> str:
    """``TimGM6mb.sf2 (/usr/share/..., sha256 1a2b3c4d...)``; several fonts joined with " + "."""
    if record.get("fonts"):
        return " + ".join(describe(r) for r in record["fonts"])
    return f"{record.get('name')} ({record.get('realpath') or record.get('path')}, sha256 {str(record.get('sha256'))[:12]}...)"


def same_source(train: dict[str, Any], evaluation: dict[str, Any]) -> str | None:
    """Why two font records are NOT independent sources, or None when they are: the same file, one
    family of fonts, or (both fonts on disk as sf2) byte-identical samples. A record of several fonts
    (:func:`several_fonts_record`) is independent of another only when each of its fonts is. When a
    recorded font file is not on this machine the samples are not compared: a
    :class:`SampleComparisonWarning` says so ("sample comparison not run: FILE not on this machine")."""
    if train.get("fonts") or evaluation.get("fonts"):
        for a in fonts_of(train):
            for b in fonts_of(evaluation):
                reason = same_source(a, b)
                if reason:
                    return reason
        return None
    if train.get("sha256") and train.get("sha256") == evaluation.get("sha256"):
        return "they are the same file (same sha256)"
    if train.get("realpath") and train.get("realpath") == evaluation.get("realpath"):
        return "they are the same file (same real path)"
    fam_t, fam_e = train.get("family"), evaluation.get("family")
    if fam_t and fam_t == fam_e:
        names = f"{train.get('name')} and {evaluation.get('name')}"
        text = " ".join(str(r.get(k, "")) for r in (train, evaluation) for k in ("name", "inam")).lower()
        if "musescore" in text:
            return f"MuseScore General reuses FluidR3's recordings: {names} share samples"
        return f"{names} both belong to the {fam_t} family of fonts, which share recordings"
    paths = [r.get("realpath") or r.get("path") for r in (train, evaluation)]
    missing = [str(p) for p in paths if p and not Path(p).is_file()]
    if missing:  # data built elsewhere is legitimate, but the check did not run: the caller is told
        warnings.warn(f"sample comparison not run: {' and '.join(missing)} not on this machine ({train.get('name')} "
                      f"and {evaluation.get('name')} were compared by sha256, path and font family only)",
                      SampleComparisonWarning, stacklevel=2)  # fmt: skip
    elif all(paths):
        digests = [sample_digests(p) for p in paths]
        shared = _shared(*digests)
        if shared:
            n = len(digests[0])
            shown = ", ".join(repr(x) for x in shared[:3]) + (", ..." if len(shared) > 3 else "")
            return (f"{train.get('name')} and {evaluation.get('name')} share recordings: {len(shared)} of the "
                    f"{n} samples of {train.get('name')} are byte-identical in both ({shown})")  # fmt: skip
    return None


__all__ = ["FONT_FAMILIES", "MIN_SAMPLE_FRAMES", "SampleComparisonWarning", "TIMGM6MB", "describe", "font_family", "fonts_of", "sample_digests",
           "patches_sha256", "same_source", "several_fonts_record", "sf2_info", "shared_samples", "soundfont_record", "timidity_sources"]  # fmt: skip
