"""Build the offline stand-in for Sub-URMP, in Sub-URMP's exact released layout.

Each track (performance) of an instrument gets its own melody, rendered through FluidSynth with
a General MIDI soundfont, and its own player, drawn procedurally with a pose that follows the
notes. The track is cut like Sub-URMP: 0.5 s chunks every 0.1 s, named ``<instrument><NN>_<T>``
where T (ms) is the end time of the chunk (500, 600, ...), with one frame per chunk taken at the
chunk's centre. Every frame also gets the instrument's mask (``mask/<split>/<instrument>/<stem>.png``,
1-bit PNG, frame size, white = instrument pixels) for the localisation metrics.

Rendering is ``dry`` (reverb and chorus off, notes as written: the original stand-in) or
``varied`` (:mod:`cmav.standin.variation`: per track a random performance: reverb, chorus,
velocity curve, articulation, stereo position, tuning, vibrato, gain; same melodies and frames as
the dry build with the same seed). The manifest (``cmav_standin.json``) records the soundfont by
path and sha256, so a cross-source evaluation can tell fonts apart (:mod:`cmav.standin.soundfonts`).

Several soundfonts (a list) give a several-source build: every track is rendered from each font,
and its timeline is cut into ``font_segment_s`` segments that take the fonts in turn (the turn
starting one font later on each further track of the instrument in the split), so every instrument and split hears every font in
about equal shares, whatever its number of tracks. A chunk comes whole from one font: the one of
the segment its centre falls in. Frames do not depend on the font.

Building is deterministic under a seed, resumable (a finished track leaves a marker; files are
written under a hidden temporary name and renamed into place) and a no-op on a complete folder,
which then needs neither the renderer nor the font; a complete folder that lost files gets the tracks
that lack them rendered again, to the same bytes. The manifest records every track (its chunks, the
melodies drawn, the font of each chunk) and the renderer's version (:data:`RENDERERS`).
"""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from cmav.data.errors import DataError
from cmav.data.files import atomic_write
from cmav.data.instruments import CLASS_TO_INDEX, INSTRUMENT_SPECS, INSTRUMENTS
from cmav.data.masks import MASK_DIR  # mask/<split>/<instrument>/<stem>.png beside img/
from cmav.standin.music import MelodyStyle, random_melody, write_midi
from cmav.standin.render import (
    DEFAULT_SOUNDFONT,
    TIMIDITY_LEAD_IN_S,
    SynthSettings,
    check_renderer,
    ignored_settings,
    is_patch_set,
    render_midi,
    renderer_of,
    renderer_version,
)
from cmav.standin.soundfonts import fonts_of, several_fonts_record, soundfont_record
from cmav.standin.variation import RENDERS, Performance, random_performance

MANIFEST = "cmav_standin.json"
MARKERS = ".cmav_build"
RENDERERS = "renderers"
"""Manifest key: per program (``fluidsynth``, ``timidity``) the versions (first line of ``--version``) that
rendered the build's tracks, in order; a build made before they were recorded lacks it."""
BUILDER_VERSION = 1
LEAD_IN_KEY = "timidity_lead_in_s"
"""Manifest key of a build with a TiMidity++ source: the lead-in its renders had. A build made
before the lead-in (:data:`~cmav.standin.render.TIMIDITY_LEAD_IN_S`) lacks it and its audio differs."""
CHUNK_S = 0.5
HOP_S = 0.1
SAMPLE_RATE = 44100

# Sub-URMP's real track ids per instrument (train, validation), from its released archive.
SUBURMP_TRACKS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "bassoon": ((0,), (1,)),
    "cello": ((0, 2, 3, 5, 6, 7, 8, 9), (1,)),
    "clarinet": ((0, 2, 3, 5, 6, 7, 8), (1,)),
    "double_bass": ((0,), (1,)),
    "flute": ((0, 2, 5, 8, 9), (1,)),
    "horn": ((0, 1, 2, 3), (4,)),
    "oboe": ((0, 1, 2), (4,)),
    "sax": ((0, 2, 3, 4, 5, 6, 7, 9), (1, 8)),
    "trombone": ((0, 3, 4, 5, 6, 7), (2,)),
    "trumpet": ((0,), (1,)),
    "tuba": ((0, 3), (4,)),
    "viola": ((0, 3, 5, 6, 9), (1,)),
    "violin": ((1, 2, 3, 4, 5, 8, 9), (6,)),
}
# Sub-URMP's chunk counts per instrument (train, validation).
SUBURMP_COUNTS: dict[str, tuple[int, int]] = {
    "bassoon": (1735, 390), "cello": (9800, 1030), "clarinet": (8125, 945),
    "double_bass": (1270, 1180), "flute": (5690, 925), "horn": (5540, 525),
    "oboe": (4505, 390), "sax": (7615, 910), "trombone": (8690, 805),
    "trumpet": (1015, 520), "tuba": (3285, 525), "viola": (6530, 485), "violin": (7430, 945),
}  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """Size of a stand-in build. ``None`` counts mean: follow Sub-URMP's real tracks and counts."""

    name: str
    train_tracks: int | None
    validation_tracks: int | None
    train_chunks_per_track: int | None
    validation_chunks_per_track: int | None
    frame_size: int = 256


PRESETS: dict[str, Preset] = {
    "tiny": Preset("tiny", 2, 1, 11, 6, frame_size=128),
    "default": Preset("default", 5, 1, 56, 56, frame_size=256),
    # default's tracks and validation split (same seed: the same renders) plus 10 more train players
    # per instrument: 3x the training audio, for data-quantity studies (the cross-source classifier
    # of issue #8 is limited by how many notes of each sample set it has heard)
    "large": Preset("large", 15, 1, 56, 56, frame_size=256),
    "full": Preset("full", None, None, None, None, frame_size=256),
}


@dataclass(frozen=True)
class TrackJob:
    """Everything needed to build one track; picklable for worker processes."""

    root: str
    split: str
    instrument: str
    track: int
    n_chunks: int
    seed: int
    soundfont: str | tuple[str, ...]
    frame_size: int
    jpeg_quality: int
    synth: SynthSettings = field(default_factory=SynthSettings)
    melody: MelodyStyle = field(default_factory=MelodyStyle)
    silence_rms: float = 1e-3
    max_attempts: int = 5
    render: str = "dry"
    font_segment_s: float = 1.0
    font_offset: int = 0  # the track's place among its instrument's tracks in the split: where its turn starts

    @property
    def fonts(self) -> tuple[str, ...]:
        return (self.soundfont,) if isinstance(self.soundfont, str) else tuple(self.soundfont)

    def font_of_chunk(self, k: int) -> int:
        """Index (in ``fonts``) of the font chunk ``k`` is cut from."""
        if len(self.fonts) == 1:
            return 0
        centre = k * HOP_S + CHUNK_S / 2
        return (int(centre // self.font_segment_s) + self.font_offset) % len(self.fonts)

    @property
    def name(self) -> str:
        return f"{self.instrument}{self.track:02d}"

    @property
    def marker(self) -> Path:
        return Path(self.root) / MARKERS / self.split / f"{self.name}.done"


def track_plan(preset: Preset) -> list[tuple[str, str, int, int]]:
    """(split, instrument, track id, chunk count) for every track of a preset."""
    plan = []
    for inst in INSTRUMENTS:
        real_train, real_val = SUBURMP_TRACKS[inst]
        n_train_real, n_val_real = SUBURMP_COUNTS[inst]
        if preset.train_tracks is None:
            train = [(t, n_train_real // len(real_train) + (i < n_train_real % len(real_train)))
                     for i, t in enumerate(real_train)]  # fmt: skip
            val = [(t, n_val_real // len(real_val) + (i < n_val_real % len(real_val)))
                   for i, t in enumerate(real_val)]  # fmt: skip
        else:
            val_ids = list(real_val[: preset.validation_tracks])
            # Extend the real train ids with unused ones when the preset asks for more tracks.
            spare = [t for t in range(100) if t not in real_train and t not in val_ids]
            train_ids = (list(real_train) + spare)[: preset.train_tracks]
            train = [(t, preset.train_chunks_per_track) for t in train_ids]
            val = [(t, preset.validation_chunks_per_track) for t in val_ids]
        plan += [("train", inst, t, n) for t, n in train]
        plan += [("validation", inst, t, n) for t, n in val]
    return plan


def _track_rng(seed: int, split: str, instrument: str, track: int, stream: int = 0) -> np.random.Generator:
    """The track's random stream: 0 draws the player and the melody, 1 the varied performance."""
    key = [seed, ("train", "validation").index(split), CLASS_TO_INDEX[instrument], track]
    return np.random.default_rng(key + [stream] if stream else key)


def _track_done(job: TrackJob) -> bool:
    """The track's files and its masks are all written (markers of older builds lack ``masks``)."""
    if not job.marker.is_file():
        return False
    try:
        return bool(json.loads(job.marker.read_text()).get("masks"))
    except (json.JSONDecodeError, OSError):
        return False


def build_track(job: TrackJob) -> int:
    """Render, cut and write one track's chunks, frames and masks; returns the number of pairs.

    A track finished by a builder that wrote no masks is rendered again (the build is
    deterministic) and only its masks are written: its wav/jpg files stay untouched, so caches
    keyed on them stay valid.
    """
    from PIL import Image

    from cmav.standin.frames import PlayerStyle, pose_at, render_frame

    if _track_done(job):
        return job.n_chunks
    masks_only = job.marker.is_file()
    spec = INSTRUMENT_SPECS[job.instrument]
    rng = _track_rng(job.seed, job.split, job.instrument, job.track)
    style = PlayerStyle.sample(rng)
    perf = None
    if job.render == "varied":
        perf = random_performance(_track_rng(job.seed, job.split, job.instrument, job.track, stream=1),
                                  job.synth.sample_rate)  # fmt: skip
    elif job.render != "dry":
        raise ValueError(f"{job.name}: unknown render {job.render!r}; expected one of {RENDERS}")
    synth = perf.synth if perf else job.synth
    chunk, hop = round(CHUNK_S * synth.sample_rate), round(HOP_S * synth.sample_rate)
    duration = CHUNK_S + HOP_S * (job.n_chunks - 1)
    need = chunk + hop * (job.n_chunks - 1)
    owner = [job.font_of_chunk(k) for k in range(job.n_chunks)]
    attempts = 0
    for _ in range(job.max_attempts):
        attempts += 1
        notes = random_melody(spec, duration, rng, job.melody)
        with tempfile.TemporaryDirectory(prefix="cmav-midi-") as tmp:
            midi = Path(tmp) / f"{job.name}.mid"
            if perf is None:
                write_midi(notes, spec.gm_program, midi)
            else:
                write_midi(perf.notes(notes), spec.gm_program, midi, controls=perf.controls(),
                           pitch_bend=perf.pitch_bend)  # fmt: skip
            renders = [render_midi(midi, font, synth) if i in owner else None for i, font in enumerate(job.fonts)]
        # each font's render is levelled on its own: its peak over the track, never clipping the 16-bit files
        gains: dict[int, float] = {}
        for i, audio in enumerate(renders):
            if audio is None:
                continue
            if audio.shape[1] < need:
                renders[i] = audio = np.pad(audio, ((0, 0), (0, need - audio.shape[1])))
            gains[i] = min(1.0, 0.95 / max(float(np.abs(audio[:, :need]).max()), 1e-9))
        chunks = [renders[i][:, k * hop : k * hop + chunk] for k, i in enumerate(owner)]
        rms = [float(np.sqrt(np.mean(np.square(c)))) for c in chunks]
        if min(rms) >= job.silence_rms:
            break
        # the next melody is drawn because of how this one sounded: another font or render may not draw it
        warnings.warn(f"{job.name}: a chunk of its melody came out silent (RMS {min(rms):.1e}) from "
                      f"{job.fonts[owner[int(np.argmin(rms))]]}; a new melody is drawn, so this track's melody and "
                      "frames differ from those of a build from another font or render", stacklevel=2)  # fmt: skip
    else:
        k = int(np.argmin(rms))
        raise RuntimeError(
            f"{job.name}: a chunk stayed silent (RMS {min(rms):.1e}) after {job.max_attempts} melodies; "
            f"is {job.fonts[owner[k]]} a General MIDI soundfont with program {spec.gm_program}?"
        )
    root = Path(job.root)
    wav_dir = root / "chunk" / job.split / job.instrument
    img_dir = root / "img" / job.split / job.instrument
    mask_dir = root / MASK_DIR / job.split / job.instrument
    empty_masks = 0
    for k, c in enumerate(chunks):
        stem = f"{job.name}_{500 + 100 * k}"
        if not masks_only:
            atomic_write(
                wav_dir / f"{stem}.wav",
                lambda p, c=c * gains[owner[k]]: sf.write(p, c.T, synth.sample_rate, subtype="PCM_16", format="WAV"),
            )
        t_centre = k * HOP_S + CHUNK_S / 2
        image, mask = render_frame(job.instrument, style, pose_at(notes, t_centre, job.instrument), job.frame_size)
        empty_masks += not mask.any()
        if not masks_only:
            atomic_write(img_dir / f"{stem}.jpg",
                         lambda p, im=image: im.save(p, format="JPEG", quality=job.jpeg_quality))  # fmt: skip
        # a bool array becomes a mode-'1' image: a 1-bit PNG
        atomic_write(mask_dir / f"{stem}.png", lambda p, m=mask: Image.fromarray(m).save(p, format="PNG"))
    if empty_masks:
        # a thin instrument (flute, oboe, clarinet) covers less than half a pixel of a small frame:
        # the localisation metrics have nothing to score on such a frame
        warnings.warn(f"{job.name}: {empty_masks} of its {job.n_chunks} instrument mask(s) came out empty at "
                      f"{job.frame_size} px (the {job.instrument} is thinner than half a pixel there); a larger "
                      "frame size draws it", stacklevel=2)  # fmt: skip
    marker = {"chunks": job.n_chunks, "masks": True, **({"performance": _performance_record(perf, job)} if perf else {}),
              **({"melody_attempts": attempts} if attempts > 1 else {})}  # fmt: skip
    if len(job.fonts) > 1:  # which font every chunk was cut from, by index in the manifest's list
        marker["fonts"] = owner
    atomic_write(job.marker, lambda p: Path(p).write_text(json.dumps(marker)))
    return job.n_chunks


_worker_busy = False  # a pool worker is building a track
_worker_interrupted = False  # a pool worker got SIGINT: the tracks queued to it are not started


def _worker_start(parent: int) -> None:
    """Pool-worker initializer: a Ctrl-C ends the worker without a traceback of its own (the build's
    process reports it), and the worker exits once the build's process is gone (``kill -9`` of it left
    the workers blocked on their task queue forever)."""
    signal.signal(signal.SIGINT, _worker_sigint)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="cmav-build-parent", daemon=True).start()


def _worker_sigint(signum: int, _frame) -> None:
    global _worker_interrupted
    _worker_interrupted = True
    if _worker_busy:  # unwinds the track (its temporary files go) and reaches the build's process
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)  # waiting for a track: SystemExit ends a process without a traceback


def _worker_build_track(job: TrackJob) -> int:
    """:func:`build_track` in a pool worker."""
    global _worker_busy
    if _worker_interrupted:
        raise KeyboardInterrupt
    _worker_busy = True
    try:
        return build_track(job)
    finally:
        _worker_busy = False


def _remove_partials(root: Path) -> int:
    n = 0
    for p in root.rglob(".*.partial"):
        p.unlink(missing_ok=True)
        n += 1
    return n


@contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises ``SystemExit`` while a pool builds (main thread only), so the pool is shut down
    on the way out instead of the process ending under it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _performance_record(perf: Performance, job: TrackJob) -> dict:
    """The drawn performance, and per source the synth settings its renderer did not apply."""
    record = perf.to_dict()
    ignored = {Path(f).name: names for f in job.fonts if (names := ignored_settings(perf.synth, f))}
    if ignored:
        record["not_applied"] = ignored
    return record


def outdated_render(manifest: Mapping[str, Any]) -> str | None:
    """Why a stand-in's audio differs from what the builder renders today, or None: a TiMidity++
    source rendered before the lead-in (:data:`LEAD_IN_KEY`) left about one track in seven without
    its first note, and drew some melodies again."""
    names = (manifest.get("params") or {}).get("soundfont")
    names = [names] if isinstance(names, str) else list(names or [])
    if not any(is_patch_set(str(n)) for n in names) or LEAD_IN_KEY in manifest:
        return None
    return ("its TiMidity++ renders predate the lead-in before the first note: TiMidity++ then left about one "
            "track in seven without its first note (and some melodies were drawn again), so its audio differs "
            "from a build made today")


def build_standin(
    root: str | Path,
    preset: str = "default",
    seed: int = 0,
    soundfont: str | Path | Sequence[str | Path] = DEFAULT_SOUNDFONT,
    frame_size: int | None = None,
    jpeg_quality: int = 90,
    workers: int | None = None,
    progress: bool = True,
    render: str = "dry",
    font_segment_s: float = 1.0,
) -> dict:
    """Build (or finish building) the stand-in data set at ``root``; returns its manifest.

    ``soundfont``: one General MIDI font, or several (each track's timeline takes them in turn, in
    ``font_segment_s`` segments; see the module docstring). ``render``: ``dry`` or ``varied``. A
    folder built with other parameters is refused rather than mixed; a complete folder with the same
    parameters is left as it is (a manifest from before fonts were recorded gets its font record added),
    without looking for the renderer, unless files were lost from it: the tracks that lack them are
    rendered again (with a warning naming them). A build resumed with another renderer version is
    warned about, not refused.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if render not in RENDERS:
        raise ValueError(f"unknown render {render!r}; choose one of {', '.join(RENDERS)}")
    p = PRESETS[preset]
    # checked before anything is written: a manifest holding a bad value would refuse the corrected command
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if frame_size is not None and (isinstance(frame_size, bool) or not isinstance(frame_size, int) or frame_size < 8):
        raise ValueError(f"frame_size must be an integer of at least 8 pixels (or None for the preset's), got {frame_size!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer (or None for all cores), got {workers!r}")
    if (isinstance(font_segment_s, bool) or not isinstance(font_segment_s, (int, float))
            or not math.isfinite(font_segment_s) or font_segment_s <= 0):  # fmt: skip
        # inf was recorded in the manifest as Infinity: not JSON
        raise ValueError(f"font_segment_s must be a finite number of seconds > 0, got {font_segment_s!r}")
    sources = [Path(f) for f in ([soundfont] if isinstance(soundfont, (str, Path)) else soundfont)]
    if not sources:
        raise ValueError("no soundfont given")
    # a font (and its renderer) is needed only when there is something to render: a complete folder
    # copied to a machine without them stays usable; one that is here is compared with the record now
    records: list[dict | None] = [soundfont_record(f) if f.is_file() else None for f in sources]
    present = [r for r in records if r is not None]
    for i, a in enumerate(present):
        for b in present[:i]:
            if a["sha256"] == b["sha256"]:
                raise ValueError(f"{a['path']} and {b['path']} are the same font (same sha256): give each font once")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise DataError(root, "is a file; the stand-in is built into a folder")
    from cmav.data.pack import PACK_MANIFEST, is_pack

    if is_pack(root):  # it holds the stand-in's manifest, copied: a build would render every track into it
        raise DataError(root, f"is a pack ({PACK_MANIFEST}), not a stand-in: build into another folder")
    params = {
        "builder_version": BUILDER_VERSION,
        "preset": preset,
        "seed": seed,
        "soundfont": sources[0].name if len(sources) == 1 else [f.name for f in sources],
        "frame_size": p.frame_size if frame_size is None else frame_size,
        "jpeg_quality": jpeg_quality,
    }
    if len(sources) > 1:
        params["font_segment_s"] = font_segment_s
    if render != "dry":  # dry builds keep the parameters (and manifests) of builds from before renders
        params["render"] = render
    font_arg = str(sources[0]) if len(sources) == 1 else tuple(str(f) for f in sources)
    jobs, seen = [], {}
    for split, inst, track, n in track_plan(p):
        place = seen[split, inst] = seen.get((split, inst), -1) + 1  # among the instrument's tracks of the split
        jobs.append(TrackJob(str(root), split, inst, track, n, seed, font_arg, params["frame_size"], jpeg_quality,
                             render=render, font_segment_s=font_segment_s, font_offset=place))  # fmt: skip
    manifest_path = root / MANIFEST
    old: dict | None = None
    repair: list[TrackJob] | None = None  # a finished folder's tracks that lost files
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(manifest_path, f"unreadable build manifest ({exc}); delete the folder to rebuild") from exc
        if old.get("params") != params:
            raise DataError(
                root,
                f"already holds a stand-in built with {old.get('params')}; asked for {params}. "
                "Use another --root or delete this folder.",
            )
        recorded = old.get("soundfont")
        # before any track is rendered the record binds nothing: a font fixed after the first track failed is taken
        if recorded and _rendered_before(root, old):
            _check_recorded_fonts(root, recorded, records)
        if old.get("complete") and old.get("masks"):
            outdated = outdated_render(old)
            if outdated:
                raise DataError(root, f"{outdated}; delete the folder and build it again")
            short = _incomplete_tracks(jobs)
            if not short:
                if not recorded and all(records):  # built before fonts were recorded: the same-named font is the one given now
                    font = records[0] if len(records) == 1 else several_fonts_record(records)
                    old["soundfont"] = {**font, "recorded": "after the build, from the font of the same name given then"}
                    atomic_write(manifest_path, lambda f: Path(f).write_text(json.dumps(old, indent=2)))
                return old
            for job, missing in short:  # files lost after the build: the build is deterministic, render them again
                warnings.warn(f"{root}: {job.split}/{job.name}: files of {len(missing)} of its {job.n_chunks} chunk(s) "
                              f"are missing (at {times_text(missing)} ms); the track is rendered again (the same "
                              "files: the build is deterministic)", stacklevel=2)  # fmt: skip
                job.marker.unlink(missing_ok=True)
            repair = [job for job, _ in short]
    elif root.exists() and any(root.iterdir()):
        raise DataError(root, "folder is not empty and holds no stand-in manifest; refusing to write into it")
    fonts = [check_renderer(f) for f in sources]
    records = [r or soundfont_record(f) for r, f in zip(records, fonts, strict=True)]
    font = records[0] if len(records) == 1 else several_fonts_record(records)
    # a finished folder: only the tracks that lost files (one copied without its hidden markers is whole)
    todo = repair if repair is not None else [j for j in jobs if not _track_done(j)]
    renderers = _renderer_versions(root, old, fonts) if todo else (old or {}).get(RENDERERS)
    root.mkdir(parents=True, exist_ok=True)
    _remove_partials(root)
    lead_in = {LEAD_IN_KEY: TIMIDITY_LEAD_IN_S} if any(is_patch_set(f) for f in fonts) else {}
    versions = {RENDERERS: renderers} if renderers else {}
    manifest = {"params": params, "soundfont": font, "complete": False, **lead_in, **versions}
    atomic_write(manifest_path, lambda f: Path(f).write_text(json.dumps(manifest, indent=2)))
    total = sum(j.n_chunks for j in todo)
    workers = workers or min(len(todo), os.cpu_count() or 1) or 1  # None: all cores (checked above)
    with tqdm(total=total, unit="pair", desc=f"building {preset}", disable=not progress) as bar:
        if workers == 1:
            for j in todo:
                bar.update(build_track(j))
        else:
            with (ProcessPoolExecutor(max_workers=workers, initializer=_worker_start, initargs=(os.getpid(),)) as pool,
                  _terminate_as_exit()):  # fmt: skip
                try:
                    for n in pool.map(_worker_build_track, todo):
                        bar.update(n)
                except BaseException:
                    # a kill or a failed track: no queued track starts, and the workers exit with the
                    # pool (a SIGTERM used to end this process alone and leave them waiting forever)
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    counts: dict[str, dict[str, int]] = {"train": {}, "validation": {}}
    tracks: dict[str, dict[str, list[int]]] = {"train": {}, "validation": {}}
    # per track: its chunks, the melodies drawn when more than one, and in a several-font build the font
    # (index in the soundfont record's list) of every chunk; from its marker, or where a finished folder
    # was copied without them, from the manifest
    track_records, performances = {}, {}
    for j in jobs:
        counts[j.split][j.instrument] = counts[j.split].get(j.instrument, 0) + j.n_chunks
        tracks[j.split].setdefault(j.instrument, []).append(j.track)
        key = f"{j.split}/{j.name}"
        if j.marker.is_file():
            marker = json.loads(j.marker.read_text())
            record = {k: v for k, v in marker.items() if k not in ("masks", "performance")}
            performances[key] = marker.get("performance")
        else:
            record = ((old or {}).get("track_records") or {}).get(key)
            performances[key] = ((old or {}).get("performances") or {}).get(key)
        if record is not None:
            track_records[key] = record
    manifest = {"params": params, "soundfont": font, "complete": True, **lead_in, **versions, "counts": counts,
                "tracks": tracks, "masks": f"{MASK_DIR}/<split>/<instrument>/<stem>.png", "track_records": track_records}  # fmt: skip
    if render == "varied":  # every track's drawn performance
        manifest["performances"] = performances
    atomic_write(manifest_path, lambda f: Path(f).write_text(json.dumps(manifest, indent=2)))
    return manifest


def _rendered_before(root: Path, old: Mapping[str, Any] | None) -> bool:
    """Whether a track of the build at ``root`` was rendered: it is finished, or a track left its marker."""
    if old and old.get("complete"):
        return True
    return (root / MARKERS).is_dir() and any((root / MARKERS).rglob("*.done"))


def _check_recorded_fonts(root: Path, recorded: Mapping[str, Any], records: Sequence[dict | None]) -> None:
    """Raise :class:`DataError` when a font given that is on this machine (``records``: None for one
    that is not) is another file than the one of the same name the folder's tracks were rendered from."""
    remedy = ("give the font it was rendered from, or delete the folder (or use another --root) to build from "
              "this one")  # fmt: skip
    for was, now in zip(fonts_of(dict(recorded)), records, strict=True):
        if now is None:  # not on this machine: looked for when there is something to render
            continue
        if was.get("sha256") != now["sha256"]:
            raise DataError(root, f"was rendered from {was.get('path')} (sha256 {was.get('sha256')}); asked "
                                  f"for {now['path']} (sha256 {now['sha256']}), another file of the same name: "
                                  f"{remedy}")  # fmt: skip
        patches = was.get("patches_sha256")  # older TiMidity++ records lack it
        if patches and patches != now.get("patches_sha256"):
            raise DataError(root, f"was rendered from {was.get('path')} with other patches than it maps now "
                                  f"(their sha256 {patches[:12]}..., now {str(now.get('patches_sha256'))[:12]}...): "
                                  f"{remedy}")  # fmt: skip


def _incomplete_tracks(jobs: Sequence[TrackJob]) -> list[tuple[TrackJob, list[int]]]:
    """The tracks of a finished build that miss a chunk's wav, frame or mask on disk, each with the
    times (ms) of its chunks that miss a file. A missing marker alone (a copy without the hidden
    folder) leaves a track whole."""
    listed: dict[Path, set[str]] = {}

    def names(folder: Path) -> set[str]:
        if folder not in listed:
            listed[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        return listed[folder]

    short = []
    for j in jobs:
        folders = [(Path(j.root) / side / j.split / j.instrument, ext)
                   for side, ext in (("chunk", ".wav"), ("img", ".jpg"), (MASK_DIR, ".png"))]  # fmt: skip
        missing = [t for t in chunk_times(j.n_chunks) if any(f"{j.name}_{t}{ext}" not in names(d) for d, ext in folders)]
        if missing:
            short.append((j, missing))
    return short


def _renderer_versions(root: Path, old: Mapping[str, Any] | None, fonts: Sequence[Path]) -> dict[str, list[str]] | None:
    """The versions of the programs that render the folder's tracks (:data:`RENDERERS`): those recorded
    and this machine's, with a warning when a build goes on under another one. None for a build begun
    before they were recorded (which versions rendered its first tracks is unknown)."""
    recorded = (old or {}).get(RENDERERS)
    if not _rendered_before(root, old):
        recorded = {}
    elif not isinstance(recorded, dict):
        return None
    versions = {k: list(v) for k, v in recorded.items()}
    for program in dict.fromkeys(renderer_of(f) for f in fonts):
        now, was = renderer_version(program), versions.setdefault(program, [])
        if was and now not in was:
            # not refused: a minor version usually renders the same notes identically
            warnings.warn(f"{root}: its tracks so far were rendered by {was[-1]}; this machine has {now}, which "
                          "renders the rest: the build mixes the renders of two versions (delete the folder to "
                          "render every track with one)", stacklevel=3)  # fmt: skip
        if now not in was:
            was.append(now)
    return versions


def chunk_times(n_chunks: int) -> list[int]:
    """Sub-URMP's ``T`` (ms, the end of the chunk) of a track's chunks: 500, 600, ..."""
    return [500 + 100 * k for k in range(n_chunks)]


def times_text(times: Sequence[int]) -> str:
    """Chunk times in ms as runs: ``500-900, 1200``."""
    runs: list[list[int]] = []
    for t in sorted(times):
        if runs and t - runs[-1][-1] == 100:
            runs[-1].append(t)
        else:
            runs.append([t])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def recorded_tracks(manifest: Mapping[str, Any]) -> dict[tuple[str, str, int], int]:
    """(split, instrument, track) -> number of chunks, for every track a stand-in manifest records: from
    its per-track records, or (a manifest from before them) its preset's plan of the tracks it lists;
    ``{}`` where it says neither."""
    records = manifest.get("track_records")
    try:
        if isinstance(records, dict):
            out = {}
            for key, record in records.items():
                split, name = key.split("/", 1)
                out[split, name[:-2], int(name[-2:])] = int(record["chunks"])
            return out
        preset = PRESETS.get(str((manifest.get("params") or {}).get("preset")))
        listed = manifest.get("tracks")
        if preset is None or not isinstance(listed, dict):
            return {}
        return {(s, i, t): n for s, i, t, n in track_plan(preset) if t in ((listed.get(s) or {}).get(i) or [])}
    except (AttributeError, KeyError, TypeError, ValueError):  # a manifest edited by hand: no per-track account
        return {}
