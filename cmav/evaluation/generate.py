"""``cmav generate``: images from a sound file (S2I checkpoint), sound from a frame (I2S checkpoint).

The clip is read with :func:`cmav.data.audio_io.read_mono` and :func:`~cmav.data.audio_io.cut_chunks`
under the checkpoint's chunk spec
(mono, resampled to the chunk rate). A clip longer than one chunk (0.5 s) is cut to its FIRST
chunk, with a note; a clip too short is refused (``DataError``), as in the data sets. The LMS uses
the front-end config the model was trained with (the datamodule hyper-parameters stored in the
checkpoint; the default LMS front end when the checkpoint has none). A frame is read like the data
sets' (centre square, resized to the model's image size); the generated LMS is turned into sound
with the inverse mel scale and Griffin-Lim and written as a wav at the front end's rate, at the
spectrogram's own level (peak-normalised only when asked: ``--normalise``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmav.data.audio_io import ChunkSpec, cut_chunks, read_mono
from cmav.data.errors import DataWarning
from cmav.features.frontend import FrontEndConfig, build_front_end, front_end_config


def _as(cls, value):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})
    # an object of the same shape (e.g. a class re-imported under another path)
    return cls(**{f.name: getattr(value, f.name) for f in dataclasses.fields(cls) if hasattr(value, f.name)})


def front_end_of(ckpt_path: str | Path | dict) -> tuple[FrontEndConfig, ChunkSpec]:
    """The front-end config and chunk spec stored with a checkpoint (a path, or the loaded
    checkpoint's dict; defaults when absent)."""
    from cmav.tasks.classifier import checkpoint_dict

    dm = checkpoint_dict(ckpt_path).get("datamodule_hyper_parameters") or {}
    return front_end_config(dm.get("features")), _as(ChunkSpec, dm.get("chunk"))


def datamodule_for(ckpt: str | Path, root: str | Path | None = None, cache_dir: str | None = None,
                   batch_size: int = 128, **overrides: Any):  # fmt: skip
    """The data a checkpoint was trained on (front end, chunk spec, image size, layout, hold-out),
    read at ``root`` (default: the root it recorded). ``overrides`` (``image_size``, ``layout``,
    ``holdout_tail``, ``holdout_gap_ms``) replace what the checkpoint says where they are not None."""
    from cmav.data.datamodule import AudioVisualDataModule, recorded_root
    from cmav.tasks.classifier import checkpoint_dict

    blob = checkpoint_dict(ckpt)
    dmh = blob.get("datamodule_hyper_parameters") or {}
    hp = blob.get("hyper_parameters") or {}
    features, spec = front_end_of(blob)
    settings = {"layout": dmh.get("layout", "suburmp"), "image_size": int(hp.get("image_size", dmh.get("image_size", 64))),
                "holdout_tail": float(dmh.get("holdout_tail", 0.0)), "holdout_gap_ms": dmh.get("holdout_gap_ms")}  # fmt: skip
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return AudioVisualDataModule(root=str(root or recorded_root(dmh)), batch_size=batch_size,
                                 features=features, chunk=spec, cache_dir=cache_dir, **settings)  # fmt: skip


@dataclass(frozen=True)
class ChunkBatches:
    """A recording's chunks (a read-only view of its samples), their starts in seconds and the notes
    on what was done; iterating gives their features ``(B, C, H, W)`` one batch of ``batch_size``
    chunks at a time, so that a long recording at a small hop never has every chunk's samples or
    features in memory at once."""

    chunks: np.ndarray
    start_s: np.ndarray
    notes: list[str]
    front_end: Any
    sample_rate: int
    batch_size: int

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(0, len(self.chunks), self.batch_size):
            with torch.no_grad():  # not around the yield: it would switch autograd off in the caller's loop
                # contiguous, as one tensor of every chunk's features was: the models' kernels
                # round differently on the front end's transposed layout
                batch = self.front_end(torch.from_numpy(self.chunks[i : i + self.batch_size].copy()), self.sample_rate)
                batch = batch.contiguous()
            yield batch


def chunk_batches(audio, features: FrontEndConfig, spec: ChunkSpec, sample_rate: int | None = None,
                  hop_s: float | None = None, max_chunks: int | None = None, batch_size: int = 64) -> ChunkBatches:  # fmt: skip
    """A recording (a sound file, or samples at ``sample_rate``) cut into chunks under ``spec``, to
    be turned into features batch by batch (see :class:`ChunkBatches`, and
    :func:`~cmav.data.audio_io.read_mono` and :func:`~cmav.data.audio_io.cut_chunks` for the notes)."""
    mono, name, notes = read_mono(audio, spec.sample_rate, sample_rate)  # DataError for missing/empty/corrupt files
    chunks, starts, more = cut_chunks(mono, spec, hop_s, name, max_chunks)
    return ChunkBatches(chunks=chunks, start_s=starts, notes=notes + more, front_end=build_front_end(features),
                        sample_rate=spec.sample_rate, batch_size=batch_size)  # fmt: skip


def chunk_features(audio, features: FrontEndConfig, spec: ChunkSpec, sample_rate: int | None = None,
                   hop_s: float | None = None, max_chunks: int | None = None,
                   batch_size: int = 64) -> tuple[torch.Tensor, np.ndarray, list[str]]:  # fmt: skip
    """A recording (a sound file, or samples at ``sample_rate``) as features ``(N, C, H, W)`` of its
    chunks under ``spec``, their starts in seconds, and notes on what was done (see
    :func:`~cmav.data.audio_io.read_mono` and :func:`~cmav.data.audio_io.cut_chunks`)."""
    batches = chunk_batches(audio, features, spec, sample_rate, hop_s, max_chunks, batch_size)
    return torch.cat(list(batches)), batches.start_s, batches.notes


def wav_to_features(path: str | Path, features: FrontEndConfig, spec: ChunkSpec) -> tuple[torch.Tensor, list[str]]:
    """Audio features ``(1, C, H, W)`` (an LMS by default) of the first chunk of ``path``, and notes on what was done."""
    lms, _, notes = chunk_features(path, features, spec, max_chunks=1)
    return lms, notes


def with_inference_condition(task, ckpt: str | Path, mode: str | None, neighbours: int | None = None,
                             datamodule=None):  # fmt: skip
    """``task`` with its inference condition switched to ``mode`` (None: the checkpoint's) and, for
    ``nearest``, ``neighbours`` (None: the checkpoint's). A mode that needs the training conditions
    of a checkpoint saved before cmav kept them takes them from ``datamodule``'s train split (a
    datamodule, or a callable that makes one); without one, a ValueError naming ``ckpt``."""
    if mode is not None or neighbours is not None:
        task.set_inference_condition(mode or task.inference_condition, neighbours)
    if task.inference_condition != "own" and len(task.condition_bank) == 0:
        if datamodule is None:
            raise ValueError(f"{ckpt}: inference condition {task.inference_condition!r} needs the training conditions, and "
                             "this checkpoint (saved before cmav kept them) has none: use --inference-condition own, or "
                             "`cmav evaluate --inference-condition ...`, which takes them from the data")  # fmt: skip
        task.fill_condition_bank(datamodule() if callable(datamodule) else datamodule)
    return task


GENERATOR_KINDS = ("s2i", "i2s", "audio_token")


def checkpoint_kind(ckpt: str | Path) -> str:
    """``'s2i'``, ``'i2s'`` or ``'audio_token'``: what a generator checkpoint is (ValueError naming the
    file otherwise)."""
    from cmav.api import model_kind
    from cmav.tasks.classifier import _load_checkpoint

    kind = model_kind(_load_checkpoint(ckpt), ckpt)
    if kind not in GENERATOR_KINDS:
        raise ValueError(f"{ckpt}: a checkpoint of kind {kind!r}, not a generator (S2I, I2S or audio token); `cmav generate` "
                         "cannot use it")  # fmt: skip
    return kind


SOUND_SUFFIXES = (".wav", ".flac")
"""What ``cmav generate`` writes an I2S model's sound as."""


def image_suffixes() -> tuple[str, ...]:
    """What ``cmav generate`` writes an S2I model's images as: ``.png`` first, then every other
    suffix of a format Pillow writes (``.jpg``, ``.bmp``, ``.tif``, ``.webp`` ...)."""
    from PIL import Image

    Image.init()
    others = sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE and ext != ".png")
    return (".png", *others)


def output_file(output: str | Path, default_name: str, suffixes: tuple[str, ...], what: str) -> Path:
    """The file ``cmav generate`` writes for ``output``, checked before any model runs: a folder (one
    that exists, or a path ending in a separator) takes ``default_name`` inside it, as the
    audio-token kind writes into its folder; a path without a suffix takes ``suffixes[0]``; one with
    another suffix than ``suffixes`` is a ValueError naming it."""
    given = str(output)
    out = Path(output)
    if out.is_dir() or given.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):
        return out / default_name
    if out.suffix == "":
        return out.with_suffix(suffixes[0])
    if out.suffix.lower() not in suffixes:
        if len(suffixes) > 2:  # the image formats: the usual ones by name
            usual = [x for x in (".jpg", ".bmp", ".tif", ".webp") if x in suffixes]
            accepted = ", ".join([suffixes[0], *usual]) + " ... (any format Pillow writes)"
        else:
            accepted = " or ".join(suffixes)
        raise ValueError(f"{out}: {what} {accepted}; name the output so (or give a folder: {default_name} is "
                         "written into it)")  # fmt: skip
    return out


def _split_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """The DataWarnings among ``caught`` as notes; every other warning is issued again as it came
    (as :func:`cmav.cli.apply._notes` does), so that recording the notes never hides it."""
    notes = []
    for w in caught:
        if issubclass(w.category, DataWarning):
            notes.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return notes


@torch.no_grad()
def generate_from_wav(ckpt: str | Path, audio: str | Path, n: int = 4, seed: int = 0, output: str | Path = "generated.png",
                      inference_condition: str | None = None) -> tuple[Path, list[str]]:  # fmt: skip
    """Generate ``n`` images (EMA generator, noise from ``seed``) and save a png (a grid if n > 1).
    ``output`` is an image file (``.png``, or another suffix Pillow writes; none: ``.png`` is
    added) or a folder (``generated.png`` is written into it); it is checked before the model is
    loaded. Returns the path and the notes on what was done to the clip (its DataWarnings); other
    warnings are issued as they come. ``inference_condition`` overrides the checkpoint's
    (``'own'``, ``'nearest'``, ``'class_mean'``)."""
    from PIL import Image

    from cmav.api import load, sound_to_image

    if n < 1:
        raise ValueError("n must be >= 1")
    kind = checkpoint_kind(ckpt)
    if kind != "s2i":
        raise ValueError(f"{ckpt}: an {kind} checkpoint, not S2I" + (
            " (image -> sound): give it a frame with --image, not --audio" if kind == "i2s" else ""))
    out = output_file(output, "generated.png", image_suffixes(), "the images are written as an image file:")
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            images = sound_to_image(load(ckpt), audio, n=n, seed=seed, max_chunks=1,
                                    inference_condition=inference_condition)[0]  # fmt: skip
    finally:
        notes = _split_notes(caught)
    cells = [((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy() for x in images]
    if n == 1:
        img = Image.fromarray(cells[0])
    else:
        cols = int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols))
        s = cells[0].shape[0]
        pad = 2
        img = Image.new("RGB", (cols * (s + pad) + pad, rows * (s + pad) + pad), (255, 255, 255))
        for i, c in enumerate(cells):
            img.paste(Image.fromarray(c), (pad + (i % cols) * (s + pad), pad + (i // cols) * (s + pad)))
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out, notes


@torch.no_grad()
def generate_from_image(ckpt: str | Path, image: str | Path, n: int = 1, seed: int = 0, output: str | Path = "generated.wav",
                        griffin_lim_iters: int = 64, inference_condition: str | None = None,
                        normalise: bool = False) -> tuple[list[Path], list[str]]:  # fmt: skip
    """Generate ``n`` spectrograms for a frame (EMA generator, noise from ``seed``) and write them as
    wavs: ``output`` for one, ``<stem>_<k><suffix>`` for several. ``output`` is a ``.wav`` or
    ``.flac`` file (none: ``.wav`` is added) or a folder (``generated.wav`` is written into it); it
    is checked before the model is loaded. The sound keeps the spectrogram's level (as
    :func:`cmav.image_to_sound`; what the round trip of ``cmav evaluate`` judges), clipped to
    full scale with a note when it passes it; ``normalise`` scales each clip to a peak of 0.9
    instead. Returns the paths and notes (the DataWarnings on the way; other warnings are issued
    as they come). ``inference_condition`` overrides the checkpoint's (``'own'``, ``'nearest'``,
    ``'class_mean'``)."""
    import soundfile as sf

    from cmav.api import image_to_sound, load

    if n < 1:
        raise ValueError("n must be >= 1")
    kind = checkpoint_kind(ckpt)
    if kind != "i2s":
        name = {"s2i": "S2I", "audio_token": "audio-token"}.get(kind, kind)
        raise ValueError(f"{ckpt}: an {name} checkpoint (sound -> image): give it a sound with --audio, not --image")
    out = output_file(output, "generated.wav", SOUND_SUFFIXES, "the sound is written as")
    model = load(ckpt)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataWarning)
            waves, rate = image_to_sound(model, image, n=n, seed=seed, griffin_lim_iters=griffin_lim_iters,
                                         inference_condition=inference_condition, normalise=normalise)  # fmt: skip
    finally:
        notes = _split_notes(caught)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if n == 1 else [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(n)]
    for path, w in zip(paths, waves[0], strict=True):
        # peak-normalised clips keep a little headroom; the others keep their level
        sf.write(str(path), ((0.9 * w) if normalise else w).numpy(), rate, subtype="PCM_16")
    size = int(model.task.hparams.image_size)
    return paths, [f"{image}: centre square resized to {size}x{size}", *notes]


__all__ = ["ChunkBatches", "checkpoint_kind", "chunk_batches", "chunk_features", "datamodule_for", "front_end_of", "generate_from_image", "generate_from_wav", "wav_to_features"]
