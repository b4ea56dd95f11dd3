"""The Python API: a trained cmav checkpoint in one call, and what it does to a sound or a frame in one more.

::

    import cmav

    model = cmav.load("runs/s2i_c/checkpoints/last.ckpt")
    images = cmav.sound_to_image(model, "violin.wav", n=4)        # (chunks, 4, 3, 64, 64) in [-1, 1]

    clf = cmav.load("runs/audio_classifier/checkpoints/last.ckpt")
    out = cmav.classify_audio(clf, "recording.wav", hop_s=0.1)     # every 0.5-s chunk, 0.1 s apart
    out.labels, out.start_s, cmav.embed_audio(clf, "recording.wav").vectors

A recording of any length, rate and channel count is cut into the model's own chunks (0.5 s on
Sub-URMP), each mixed to mono and resampled to the chunk rate, then turned into features by the
front end the model was trained with (both read from the checkpoint), exactly as the data sets
and their cache do. Whatever is changed on the way (mixed down, resampled, padded, a remainder
left unused) is reported as a :class:`~cmav.data.errors.DataWarning`; what cannot be used (a
missing or corrupt file, a clip shorter than one chunk) raises a
:class:`~cmav.data.errors.DataError` naming it.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cmav.data.audio_io import ChunkSpec
from cmav.data.errors import DataError, DataWarning
from cmav.features.frontend import FrontEndConfig

AudioSource = str | Path | np.ndarray | Tensor
"""A sound file's path, or samples ``(samples,)`` / ``(channels, samples)`` (then ``sample_rate`` is needed)."""
ImageSource = str | Path | Tensor | list
"""A frame's path (or a list of paths), or frames ``(3, S, S)`` / ``(N, 3, S, S)`` in [-1, 1]."""

KINDS = ("audio_classifier", "image_judge", "player_judge", "image_encoder", "s2i", "i2s", "retrieval", "audio_token")


@dataclass(frozen=True)
class Model:
    """A trained cmav model with what it needs to read raw input: its front end and chunk spec.

    ``kind`` is one of :data:`KINDS`; ``task`` is the LightningModule (eval mode), for anything
    this API does not cover.
    """

    kind: str
    task: Any
    features: FrontEndConfig
    chunk: ChunkSpec
    path: Path

    @property
    def device(self) -> torch.device:
        return self.task.device

    @property
    def class_names(self) -> list[str] | None:
        names = getattr(self.task.hparams, "class_names", None)
        return list(names) if names is not None else None


@dataclass(frozen=True)
class AudioChunks:
    """A recording cut into a model's chunks: ``features`` ``(N, C, H, W)`` and each chunk's start in seconds."""

    features: Tensor
    start_s: Tensor


@dataclass(frozen=True)
class Embeddings:
    """One vector per chunk (``(N, D)``) and each chunk's start in seconds."""

    vectors: Tensor
    start_s: Tensor


@dataclass(frozen=True)
class ChunkPredictions:
    """Class probabilities per chunk (``(N, n_classes)``), the class names and each chunk's start in seconds."""

    probabilities: Tensor
    class_names: list[str]
    start_s: Tensor

    @property
    def labels(self) -> list[str]:
        """The most probable class of each chunk."""
        return [self.class_names[i] for i in self.probabilities.argmax(1).tolist()]


def model_kind(data: dict, path: str | Path) -> str:
    """Which of :data:`KINDS` a loaded checkpoint dict is (ValueError naming ``path`` otherwise)."""
    for key, kind in (("cmav_s2i", "s2i"), ("cmav_i2s", "i2s"), ("cmav_retrieval", "retrieval"),
                      ("cmav_audio_token", "audio_token")):  # fmt: skip
        if key in data:
            return kind
    hp = data.get("hyper_parameters") or {}
    if hp.get("class_names") is not None and "modality" in hp:
        if hp["modality"] == "audio":
            return "audio_classifier"
        if hp.get("image_model", "judge") == "encoder":
            return "image_encoder"
        return "player_judge" if hp.get("target") == "track" else "image_judge"
    raise ValueError(f"{path}: not a checkpoint of a cmav model this API loads ({', '.join(KINDS)})")


def load(path: str | Path, device: str | torch.device = "cpu", pipeline: str | Path | None = None) -> Model:
    """Load any trained cmav checkpoint (classifier, judge, S2I, I2S, retrieval, audio token) for use.

    The model is in eval mode on ``device``. ``pipeline`` is the diffusion pipeline folder of an
    audio-token checkpoint (default: the one it was trained with). Raises ``FileNotFoundError`` /
    ``ValueError`` naming the file when it is missing, half-written or not a cmav model.
    """
    from cmav.evaluation.generate import front_end_of
    from cmav.tasks.classifier import _load_checkpoint, load_classifier

    path = Path(path)
    data = _load_checkpoint(path)
    kind = model_kind(data, path)
    if kind == "s2i":
        from cmav.tasks.s2i import load_s2i

        task = load_s2i(path)
    elif kind == "i2s":
        from cmav.tasks.i2s import load_i2s

        task = load_i2s(path)
    elif kind == "retrieval":
        from cmav.tasks.retrieval import load_retrieval

        task = load_retrieval(path)
    elif kind == "audio_token":
        from cmav.tasks.audio_token import load_audio_token

        task = load_audio_token(path, pipeline)
    else:
        task = load_classifier(path)
    features, chunk = front_end_of(data)
    return Model(kind=kind, task=task.to(device).eval(), features=features, chunk=chunk, path=path)


def _needs(model: Model, what: str, kinds: tuple[str, ...]) -> None:
    if model.kind not in kinds:
        raise ValueError(f"{model.path}: {what} takes a model of kind {' / '.join(kinds)}; this one is {model.kind!r}")


def _user_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside this module (and
    torch's ``no_grad`` wrappers)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith((__name__, "torch.")):
        frame, level = frame.f_back, level + 1
    return level


def audio_chunks(model: Model, audio: AudioSource, sample_rate: int | None = None, hop_s: float | None = None,
                 max_chunks: int | None = None, batch_size: int = 64) -> AudioChunks:  # fmt: skip
    """A recording cut into ``model``'s chunks and turned into its features (the front end it was trained with).

    ``audio`` is a sound file or samples at ``sample_rate``; chunks start every ``hop_s`` seconds
    (default: one chunk length), at most ``max_chunks`` of them (default: all).
    """
    from cmav.evaluation.generate import chunk_features

    features, starts, notes = chunk_features(audio, model.features, model.chunk, sample_rate, hop_s, max_chunks, batch_size)
    level = _user_stacklevel()
    for note in notes:
        warnings.warn(note, DataWarning, stacklevel=level)
    return AudioChunks(features=features, start_s=torch.from_numpy(starts).float())


def _audio_input(model: Model) -> tuple[int, ...]:
    task = model.task
    if model.kind == "s2i":
        return tuple(task.net.encoder.input_shape)
    if model.kind == "retrieval":
        return tuple(task.hparams.input_shape)
    if model.kind == "audio_token":
        return tuple(task.model.audio_encoder.input_shape)
    return tuple(task.model.input_shape)


def _features_for(model: Model, audio: AudioSource, sample_rate: int | None, hop_s: float | None,
                  max_chunks: int | None = None) -> AudioChunks:  # fmt: skip
    chunks = audio_chunks(model, audio, sample_rate, hop_s, max_chunks)
    expected = _audio_input(model)
    if tuple(chunks.features.shape[1:]) != expected:
        raise DataError(str(audio) if isinstance(audio, (str, Path)) else "<samples>",
                        f"features {tuple(chunks.features.shape[1:])} do not match the model's input {expected}")  # fmt: skip
    return chunks


def _batched(fn, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def embed_audio(model: Model, audio: AudioSource, sample_rate: int | None = None, hop_s: float | None = None,
                batch_size: int = 64) -> Embeddings:  # fmt: skip
    """One embedding per chunk of a recording.

    A sound classifier gives its audio encoder's feature (128-d by default); an S2I model gives the
    condition its EMA generator reads for the chunk (the EMA encoder's feature by default, which a
    trained encoder's online weights are not); a retrieval model gives its joint audio-image space
    (unit length), so that :func:`embed_image` of the same model compares with it by a dot product.
    """
    _needs(model, "embed_audio", ("audio_classifier", "s2i", "retrieval"))
    chunks = _features_for(model, audio, sample_rate, hop_s)
    x = chunks.features.to(model.device)
    if model.kind == "retrieval":
        vectors = _batched(lambda b: model.task.embed(audio=b)[0], x, batch_size)
    elif model.kind == "s2i":
        task = model.task
        net = task.ema.module if task.ema is not None else task.net
        vectors = _batched(net.condition, x, batch_size)
    else:
        vectors = _batched(model.task.model.embed, x, batch_size)
    return Embeddings(vectors=vectors, start_s=chunks.start_s)


@torch.no_grad()
def classify_audio(model: Model, audio: AudioSource, sample_rate: int | None = None, hop_s: float | None = None,
                   batch_size: int = 64) -> ChunkPredictions:  # fmt: skip
    """The sound classifier's class probabilities for every chunk of a recording."""
    _needs(model, "classify_audio", ("audio_classifier",))
    chunks = _features_for(model, audio, sample_rate, hop_s)
    logits = _batched(model.task.model, chunks.features.to(model.device), batch_size)
    return ChunkPredictions(probabilities=logits.softmax(1), class_names=model.class_names or [], start_s=chunks.start_s)


@torch.no_grad()
def sound_to_image(model: Model, audio: AudioSource, n: int = 1, seed: int = 0, sample_rate: int | None = None,
                   hop_s: float | None = None, max_chunks: int | None = None, inference_condition: str | None = None,
                   diffusion: dict[str, Any] | None = None, batch_size: int = 64) -> Tensor:  # fmt: skip
    """Frames ``(chunks, n, 3, S, S)`` in [-1, 1], ``n`` per chunk of a recording, from ``seed``.

    An S2I model uses its EMA generator and the same ``n`` noise draws for every chunk, so chunks
    compare; ``inference_condition`` overrides the checkpoint's (``'own'``, ``'nearest'``,
    ``'class_mean'``). An audio-token model prompts its frozen diffusion model with each chunk's
    token; ``diffusion`` sets its sampler (``steps``, ``scheduler``, ``guidance_scale``: 50,
    ``'ddim'``, 3.0 by default), and every image's starting noise is drawn in turn from ``seed``.
    """
    _needs(model, "sound_to_image", ("s2i", "audio_token"))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if model.kind == "audio_token":
        from cmav.evaluation.token import token_images

        if inference_condition is not None:
            raise ValueError(f"{model.path}: an audio-token model has no inference condition")
        chunks = _features_for(model, audio, sample_rate, hop_s, max_chunks)
        x = chunks.features.repeat_interleave(n, 0)
        out = token_images(model.task.model, x, seed=seed, batch_size=batch_size, **(diffusion or {}))
        return out.clamp(-1, 1).view(len(chunks.features), n, *out.shape[1:])
    if diffusion:
        raise ValueError(f"{model.path}: diffusion settings are for an audio-token model; this one is 's2i'")
    chunks = _features_for(model, audio, sample_rate, hop_s, max_chunks)
    with _inference_condition(model, inference_condition) as task:
        z = torch.randn(n, task.z_dim, generator=torch.Generator().manual_seed(seed))
        x = chunks.features.repeat_interleave(n, 0)
        zz = z.repeat(len(chunks.features), 1)
        out = torch.cat([task.generate(x[i : i + batch_size], zz[i : i + batch_size]).cpu()
                         for i in range(0, len(x), batch_size)])  # fmt: skip
    return out.clamp(-1, 1).view(len(chunks.features), n, *out.shape[1:])


@contextmanager
def _inference_condition(model: Model, mode: str | None) -> Iterator[Any]:
    """The model's task under ``mode`` (None: the checkpoint's) for one call, then as it was: an
    override given to one call must not stay with the model for the next."""
    from cmav.evaluation.generate import with_inference_condition

    task = model.task
    before = (task.inference_condition, task.inference_neighbours)
    try:
        yield with_inference_condition(task, model.path, mode)
    finally:
        task.set_inference_condition(*before)


def _frames(model: Model, image: ImageSource) -> Tensor:
    from cmav.data.image_io import load_frame

    size = int(model.task.hparams.image_size)
    if isinstance(image, (str, Path)):
        image = [image]
    if isinstance(image, list):
        arrays = [load_frame(p, size) for p in image]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    x = image[None] if image.dim() == 3 else image
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
        raise ValueError(f"frames must be (3, {size}, {size}) or (N, 3, {size}, {size}) in [-1, 1] for {model.path}; "
                         f"got {tuple(image.shape)} (a path is cropped and resized for you)")  # fmt: skip
    return x.float()


@torch.no_grad()
def embed_image(model: Model, image: ImageSource, batch_size: int = 64) -> Tensor:
    """One embedding per frame ``(N, D)``: a retrieval model's joint space (unit length), or an image
    classifier's / judge's feature (the judge's is what judge-feature FID measures)."""
    _needs(model, "embed_image", ("retrieval", "image_judge", "player_judge", "image_encoder"))
    x = _frames(model, image).to(model.device)
    if model.kind == "retrieval":
        return _batched(lambda b: model.task.embed(image=b)[1], x, batch_size)
    return _batched(model.task.model.features, x, batch_size)


@torch.no_grad()
def image_to_sound(model: Model, image: ImageSource, n: int = 1, seed: int = 0, griffin_lim_iters: int = 64,
                   inference_condition: str | None = None) -> tuple[Tensor, int]:  # fmt: skip
    """Sound from frames with an I2S model: waveforms ``(frames, n, samples)`` in [-1, 1] at the
    returned rate, ``n`` noise draws per frame from ``seed``. The generated LMS is turned into sound
    with the inverse mel scale and Griffin-Lim (``griffin_lim_iters`` iterations)."""
    from cmav.features.inversion import lms_to_audio

    _needs(model, "image_to_sound", ("i2s",))
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if model.features.kind != "lms":
        raise ValueError(f"{model.path}: generates {model.features.kind} features; only an LMS turns back into sound")
    frames = _frames(model, image)
    with _inference_condition(model, inference_condition) as task:
        z = torch.randn(n, task.z_dim, generator=torch.Generator().manual_seed(seed))
        lms = task.generate(frames.repeat_interleave(n, 0), z.repeat(len(frames), 1)).cpu()
    n_samples = model.chunk.samples_at(model.features.sample_rate)
    waves = lms_to_audio(lms, model.features, n_iter=griffin_lim_iters, n_samples=n_samples)  # type: ignore[arg-type]
    return waves.view(len(frames), n, -1), model.features.sample_rate


__all__ = ["AudioChunks", "ChunkPredictions", "Embeddings", "KINDS", "Model", "audio_chunks", "classify_audio",
           "embed_audio", "embed_image", "image_to_sound", "load", "model_kind", "sound_to_image"]  # fmt: skip
