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
from cmav.models.eval_mode import eval_mode

AudioSource = str | Path | np.ndarray | Tensor
"""A sound file's path, or samples ``(samples,)`` / ``(channels, samples)`` (then ``sample_rate`` is needed)."""
ImageSource = str | Path | Tensor | np.ndarray | list | tuple | Any
"""A frame: its path, a PIL image or a numpy uint8 ``(H, W, 3)`` array (each read exactly as a frame
file is: centre square, resized to the model's size, scaled to [-1, 1]); a list or tuple of those,
or a numpy uint8 ``(N, H, W, 3)`` stack; or frames already at the model's size, a float tensor
``(3, S, S)`` / ``(N, 3, S, S)`` in [-1, 1]."""

KINDS = ("audio_classifier", "image_judge", "player_judge", "image_encoder", "s2i", "i2s", "retrieval", "audio_token")
"""What :func:`load` tells apart (``Model.kind``): a sound classifier; an image judge (instrument
from a frame), a player judge (track from a frame) and an image classifier with a pretrained
encoder; S2I and I2S GANs; an audio-image retrieval model; an audio-token model (sound to image
through a frozen diffusion model)."""


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
        """Where the model's weights are (``load``'s ``device``); inputs are moved there, outputs come back on CPU."""
        return self.task.device

    @property
    def class_names(self) -> list[str] | None:
        """The class names in the order of the model's outputs (``classify_audio``'s probabilities),
        as trained; None for a model trained without classes."""
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
    audio-token checkpoint (default: the one it was trained with). Raises ``FileNotFoundError``
    naming the file when it is missing, ``ValueError`` naming it when it is a directory, not a
    PyTorch checkpoint, half-written or not a cmav model.
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


def _whole(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name``: a float count (``n=2.0``) would
    otherwise fail deep inside torch, and 0 or a negative one run with nothing to show for it."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


def _seed(value: Any) -> int:
    """``value`` as an int, or a ValueError naming ``seed``: ``int()`` would turn 1.5 into 1 and "3"
    into 3 without a word, so two calls that look different would draw the same images."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"seed must be a whole number, got {value!r}")
    return int(value)


def _audio_batches(model: Model, audio: AudioSource, sample_rate: int | None, hop_s: float | None,
                   max_chunks: int | None, batch_size: int):  # fmt: skip
    """The recording's chunks (:class:`~cmav.evaluation.generate.ChunkBatches`), its notes issued as DataWarnings."""
    from cmav.evaluation.generate import chunk_batches

    batch_size = _whole("batch_size", batch_size)
    if max_chunks is not None:
        max_chunks = _whole("max_chunks", max_chunks)
    batches = chunk_batches(audio, model.features, model.chunk, sample_rate, hop_s, max_chunks, batch_size)
    level = _user_stacklevel()
    for note in batches.notes:
        warnings.warn(note, DataWarning, stacklevel=level)
    return batches


def audio_chunks(model: Model, audio: AudioSource, sample_rate: int | None = None, hop_s: float | None = None,
                 max_chunks: int | None = None, batch_size: int = 64) -> AudioChunks:  # fmt: skip
    """A recording cut into ``model``'s chunks and turned into its features (the front end it was trained with).

    ``audio`` is a sound file or samples at ``sample_rate``; chunks start every ``hop_s`` seconds
    (default: one chunk length), at most ``max_chunks`` of them (default: all); the front end
    takes ``batch_size`` chunks at a time. Every chunk's features are returned at once: the other
    calls take them a batch at a time instead, which a long recording at a small hop needs.
    """
    batches = _audio_batches(model, audio, sample_rate, hop_s, max_chunks, batch_size)
    return AudioChunks(features=torch.cat(list(batches)), start_s=torch.from_numpy(batches.start_s).float())


def _audio_input(model: Model) -> tuple[int, ...]:
    task = model.task
    if model.kind == "s2i":
        return tuple(task.net.encoder.input_shape)
    if model.kind == "retrieval":
        return tuple(task.hparams.input_shape)
    if model.kind == "audio_token":
        return tuple(task.model.audio_encoder.input_shape)
    return tuple(task.model.input_shape)


def _model_inputs(model: Model, audio: AudioSource, batches) -> Iterator[Tensor]:
    """Each batch of features on the model's device, checked against the input it was trained on."""
    expected = _audio_input(model)
    for x in batches:
        if tuple(x.shape[1:]) != expected:
            raise DataError(str(audio) if isinstance(audio, (str, Path)) else "<samples>",
                            f"features {tuple(x.shape[1:])} do not match the model's input {expected}")  # fmt: skip
        yield x.to(model.device)


def _batched(fn, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def embed_audio(model: Model, audio: AudioSource, sample_rate: int | None = None, hop_s: float | None = None,
                batch_size: int = 64) -> Embeddings:  # fmt: skip
    """One embedding per chunk of a recording: :class:`Embeddings`, ``vectors`` ``(chunks, D)`` and
    each chunk's ``start_s``.

    ``audio``, ``sample_rate`` and ``hop_s`` are as for :func:`classify_audio`; the chunks go
    through the model ``batch_size`` at a time, in eval mode whatever mode it is in.
    A sound classifier gives its audio encoder's feature (128-d by default). An S2I model gives its
    EMA encoder's own condition vector for the chunk (its feature by default; the class logits or
    probabilities where the model conditions on them; the EMA weights, which a trained encoder's
    online ones are not). That is what the generator reads only under ``inference_condition``
    ``'own'``; under ``'nearest'`` or ``'class_mean'`` it reads training conditions from the
    checkpoint's bank instead, which are ``model.task.inference_conditions(model.task.ema.module,
    cmav.audio_chunks(model, audio).features)`` (in ``torch.no_grad()``). A retrieval model gives
    its joint audio-image space (unit length), so that :func:`embed_image` of the same model
    compares with it by a dot product.
    """
    _needs(model, "embed_audio", ("audio_classifier", "s2i", "retrieval"))
    batches = _audio_batches(model, audio, sample_rate, hop_s, None, batch_size)
    task = model.task
    if model.kind == "retrieval":
        fn = lambda b: task.embed(audio=b)[0]  # noqa: E731
    elif model.kind == "s2i":
        fn = (task.ema.module if task.ema is not None else task.net).condition
    else:
        fn = task.model.embed
    with eval_mode(task):
        vectors = torch.cat([fn(x).cpu() for x in _model_inputs(model, audio, batches)])
    return Embeddings(vectors=vectors, start_s=torch.from_numpy(batches.start_s).float())


@torch.no_grad()
def classify_audio(model: Model, audio: AudioSource, sample_rate: int | None = None, hop_s: float | None = None,
                   batch_size: int = 64) -> ChunkPredictions:  # fmt: skip
    """The sound classifier's class probabilities for every chunk of a recording.

    ``audio`` is a sound file, or samples ``(samples,)`` / ``(channels, samples)`` recorded at
    ``sample_rate`` (a file says its own rate); chunks start every ``hop_s`` seconds (default: one
    chunk length, no overlap) and go through the model ``batch_size`` at a time (in eval mode,
    whatever mode it is in). Returns :class:`ChunkPredictions`: ``probabilities`` ``(chunks,
    classes)`` (softmax), ``class_names`` in that order, ``start_s`` of each chunk in seconds, and
    ``labels``, the most probable class of each.
    """
    _needs(model, "classify_audio", ("audio_classifier",))
    batches = _audio_batches(model, audio, sample_rate, hop_s, None, batch_size)
    with eval_mode(model.task):
        logits = torch.cat([model.task.model(x).cpu() for x in _model_inputs(model, audio, batches)])
    return ChunkPredictions(probabilities=logits.softmax(1), class_names=model.class_names or [],
                            start_s=torch.from_numpy(batches.start_s).float())  # fmt: skip


DIFFUSION_KEYS = ("steps", "scheduler", "guidance_scale")
"""The sampler settings ``sound_to_image(..., diffusion={...})`` takes for an audio-token model."""


def _diffusion_settings(model: Model, diffusion: dict[str, Any] | None) -> dict[str, Any]:
    """``sound_to_image``'s ``diffusion`` settings checked before any sampling, each error naming the
    model and the key: an unknown key; ``steps`` not a whole number >= 1 (2.5 failed deep in
    diffusers with an IndexError); ``guidance_scale`` not a finite real number (a string failed as
    a TypeError there, NaN gave all-NaN images without a word); ``scheduler`` not a known sampler."""
    import math
    from numbers import Real

    from cmav.diffusion.pipeline import SCHEDULERS

    settings = dict(diffusion or {})
    unknown = sorted(set(settings) - set(DIFFUSION_KEYS))
    if unknown:
        raise ValueError(f"{model.path}: unknown diffusion setting(s) {unknown}; they are {list(DIFFUSION_KEYS)} "
                         "(the CLI's --guidance is guidance_scale here)")  # fmt: skip
    if "steps" in settings:
        try:
            settings["steps"] = _whole("diffusion['steps']", settings["steps"])
        except ValueError as exc:
            raise ValueError(f"{model.path}: {exc}") from None
    if "guidance_scale" in settings:
        g = settings["guidance_scale"]
        if isinstance(g, (bool, np.bool_)) or not isinstance(g, Real) or not math.isfinite(float(g)):
            raise ValueError(f"{model.path}: diffusion['guidance_scale'] must be a finite real number, got {g!r}")
        settings["guidance_scale"] = float(g)
    if "scheduler" in settings and (not isinstance(settings["scheduler"], str) or settings["scheduler"] not in SCHEDULERS):
        raise ValueError(f"{model.path}: diffusion['scheduler'] must be one of {sorted(SCHEDULERS)}, got "
                         f"{settings['scheduler']!r}")  # fmt: skip
    return settings


def noise(n: int, z_dim: int, seed: int) -> Tensor:
    """The generator noise ``(n, z_dim)`` of :func:`sound_to_image` and :func:`image_to_sound`: row
    ``k`` is ``torch.randn(z_dim)`` from a generator of its own, seeded with
    ``numpy.random.SeedSequence([seed mod 2**64, k]).generate_state(1, numpy.uint64)[0]``. So
    sample ``k`` depends only on ``(seed, k)``: the first draws of a larger ``n`` are those of a
    smaller one (one ``randn(n, z_dim)`` would not do that: torch draws a small tensor by another
    code path than a large one)."""
    rows = []
    for k in range(n):
        state = int(np.random.SeedSequence([int(seed) % 2**64, k]).generate_state(1, np.uint64)[0])
        rows.append(torch.randn(z_dim, generator=torch.Generator().manual_seed(state)))
    return torch.stack(rows) if rows else torch.empty(0, z_dim)


@torch.no_grad()
def sound_to_image(model: Model, audio: AudioSource, n: int = 1, seed: int = 0, sample_rate: int | None = None,
                   hop_s: float | None = None, max_chunks: int | None = None, inference_condition: str | None = None,
                   diffusion: dict[str, Any] | None = None, batch_size: int = 64) -> Tensor:  # fmt: skip
    """Frames ``(chunks, n, 3, S, S)`` in [-1, 1], ``n`` per chunk of a recording, from ``seed``.

    ``audio`` is a sound file, or samples ``(samples,)`` / ``(channels, samples)`` recorded at
    ``sample_rate`` (a file says its own rate); chunks start every ``hop_s`` seconds (default: one
    chunk length, no overlap), at most ``max_chunks`` of them (default: all). ``batch_size``
    images are generated at a time.

    An S2I model uses its EMA generator and the same ``n`` noise draws for every chunk, so chunks
    compare; draw ``k`` depends only on ``(seed, k)`` (see :func:`noise`), so ``n=1`` gives the
    first image of ``n=4``. ``inference_condition`` overrides the checkpoint's (``'own'``,
    ``'nearest'``, ``'class_mean'``). An audio-token model prompts its frozen diffusion model with each chunk's
    token; ``diffusion`` sets its sampler (``steps``, a whole number >= 1; ``scheduler``, one of
    ``'ddim'``, ``'ddpm'``, ``'pndm'``, ``'euler'``, ``'dpm'``; ``guidance_scale``, a finite real
    number: 50, ``'ddim'``, 3.0 by default; anything else is a ValueError naming the key), and every
    image's starting noise is drawn in turn from ``seed``.
    """
    _needs(model, "sound_to_image", ("s2i", "audio_token"))
    n, seed = _whole("n", n), _seed(seed)
    batch_size = _whole("batch_size", batch_size)
    if model.kind == "audio_token":
        from cmav.evaluation.token import token_images

        if inference_condition is not None:
            raise ValueError(f"{model.path}: an audio-token model has no inference condition")
        settings = _diffusion_settings(model, diffusion)
        batches = _audio_batches(model, audio, sample_rate, hop_s, max_chunks, batch_size)
        # the sampler draws every image's noise in turn from one generator: all the prompts go in one call
        x = torch.cat([b.cpu() for b in _model_inputs(model, audio, batches)]).repeat_interleave(n, 0)
        out = token_images(model.task.model, x, seed=seed, batch_size=batch_size, **settings)
        return out.clamp(-1, 1).view(len(batches), n, *out.shape[1:])
    if diffusion:
        raise ValueError(f"{model.path}: diffusion settings are for an audio-token model; this one is 's2i'")
    batches = _audio_batches(model, audio, sample_rate, hop_s, max_chunks, batch_size)
    with _inference_condition(model, inference_condition) as task:
        z = noise(n, task.z_dim, seed)
        out, pending, done = [], None, 0  # rows (chunk features, each n times) not yet generated; rows generated

        def generate(rows: Tensor) -> None:
            nonlocal done
            out.append(task.generate(rows, z[torch.arange(done, done + len(rows)) % n]).cpu())
            done += len(rows)

        # the generator sees batch_size rows at a time, as when every chunk's features were at hand
        for features in _model_inputs(model, audio, batches):
            rows = features.repeat_interleave(n, 0)
            pending = rows if pending is None else torch.cat([pending, rows])
            while len(pending) >= batch_size:
                generate(pending[:batch_size])
                pending = pending[batch_size:]
        if pending is not None and len(pending):
            generate(pending)
    images = torch.cat(out)
    return images.clamp(-1, 1).view(len(batches), n, *images.shape[1:])


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


FRAME_RANGE_TOLERANCE = 0.01
"""How far beyond [-1, 1] a frame tensor may reach (round-off of a resize or a rescale) and be used."""

_FRAME_INPUTS = ("a path (str or Path), a PIL image, a numpy uint8 (H, W, 3) frame as read from an image file, a "
                 "list or tuple of those, a numpy uint8 (N, H, W, 3) stack, or a float tensor (3, S, S) / "
                 "(N, 3, S, S) in [-1, 1]")  # fmt: skip


def _frame_pixels(model: Model, item: Any, where: str, size: int) -> np.ndarray:
    """One frame that is not a tensor as uint8 ``(size, size, 3)``, read as :func:`~cmav.data.image_io.load_frame`
    reads a file: 8-bit RGB, its centre square, resized (bicubic) to ``size``."""
    from PIL import Image

    from cmav.data.image_io import centre_square, load_frame, to_8_bit

    if isinstance(item, (str, Path)):
        return load_frame(item, size)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] not in (3, 4):
            raise ValueError(f"{model.path}: numpy frames must be uint8 (H, W, 3) (RGB, as read from an image file; "
                             f"RGBA is taken as RGB) or (N, H, W, 3); {where} is {item.dtype} of shape "
                             f"{tuple(item.shape)}. Frames already scaled to [-1, 1] go in as a float tensor "
                             f"(3, {size}, {size})")  # fmt: skip
        item = Image.fromarray(np.ascontiguousarray(item))
    if isinstance(item, Image.Image):
        img = to_8_bit(item, where).convert("RGB")
        return np.asarray(centre_square(img, size, Image.Resampling.BICUBIC), dtype=np.uint8)
    raise TypeError(f"{model.path}: frames are {_FRAME_INPUTS}; got {type(item).__name__}"
                    + (f" at {where}" if where != "the frame" else ""))  # fmt: skip


def _frames(model: Model, image: ImageSource) -> Tensor:
    """Frames ``(N, 3, S, S)`` in [-1, 1] at the model's size from any :data:`ImageSource`: paths,
    PIL images and numpy uint8 frames are read exactly as the data sets read a frame file (centre
    square, resized, scaled to [-1, 1]); a tensor must already be float in [-1, 1] at that size."""
    size = int(model.task.hparams.image_size)
    if isinstance(image, Tensor):
        if not image.is_floating_point():
            raise ValueError(f"{model.path}: frames given as a tensor of dtype {image.dtype}; a tensor must be float "
                             "in [-1, 1] (uint8 pixels: x.float() / 127.5 - 1, or pass them as a numpy (H, W, 3) "
                             "array or a PIL image)")  # fmt: skip
        x = image[None] if image.dim() == 3 else image
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(f"frames must be (3, {size}, {size}) or (N, 3, {size}, {size}) in [-1, 1] for {model.path}; "
                             f"got {tuple(image.shape)} (a path, PIL image or numpy uint8 frame is cropped and "
                             "resized for you)")  # fmt: skip
        if len(x) == 0:
            raise ValueError(f"{model.path}: no frames given (an empty tensor of shape {tuple(image.shape)})")
        x = x.float()
        peak = float(x.abs().max())
        if not peak <= 1.0 + FRAME_RANGE_TOLERANCE:  # NaN too
            raise ValueError(f"{model.path}: frames given as a tensor must be float in [-1, 1]; these reach {peak:g} "
                             "(pixels in [0, 255]: x / 127.5 - 1; in [0, 1]: x * 2 - 1)")  # fmt: skip
        low, high = float(x.min()), float(x.max())
        if low >= 0 and high > 0:  # torchvision's to_tensor gives [0, 1]: read as [-1, 1], every frame is washed out
            warnings.warn(f"{model.path}: frames given as a tensor lie in [0, 1] (from {low:g} to {high:g}) and are "
                          "taken as [-1, 1]; if they are [0, 1] pixels (torchvision's to_tensor), pass x * 2 - 1",
                          DataWarning, stacklevel=_user_stacklevel())  # fmt: skip
        return x
    if isinstance(image, np.ndarray) and image.ndim == 4:
        items, names = list(image), [f"frame {i}" for i in range(len(image))]
    elif isinstance(image, (list, tuple)):
        items, names = list(image), [f"item {i}" for i in range(len(image))]
    else:
        items, names = [image], ["the frame"]
    if not items:
        raise ValueError(f"{model.path}: no frames given (an empty {type(image).__name__})")
    arrays = [_frame_pixels(model, item, where, size) for item, where in zip(items, names, strict=True)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.no_grad()
def embed_image(model: Model, image: ImageSource, batch_size: int = 64) -> Tensor:
    """One embedding per frame ``(N, D)``: a retrieval model's joint space (unit length), or an image
    classifier's / judge's feature (the judge's is what judge-feature FID measures). The frames go
    through the model ``batch_size`` at a time, in eval mode whatever mode it is in."""
    _needs(model, "embed_image", ("retrieval", "image_judge", "player_judge", "image_encoder"))
    batch_size = _whole("batch_size", batch_size)
    x = _frames(model, image).to(model.device)
    task = model.task
    with eval_mode(task):
        if model.kind == "retrieval":
            return _batched(lambda b: task.embed(image=b)[1], x, batch_size)
        return _batched(task.model.features, x, batch_size)


@torch.no_grad()
def image_to_sound(model: Model, image: ImageSource, n: int = 1, seed: int = 0, griffin_lim_iters: int = 64,
                   inference_condition: str | None = None, batch_size: int = 64,
                   normalise: bool = False) -> tuple[Tensor, int]:  # fmt: skip
    """Sound from frames with an I2S model: waveforms ``(frames, n, samples)`` in [-1, 1] at the returned rate,
    ``n`` noise draws per frame from ``seed`` (the same for every frame; draw ``k`` depends only
    on ``(seed, k)``, see :func:`noise`). The generated LMS is turned into sound with the inverse
    mel scale and Griffin-Lim (``griffin_lim_iters`` iterations), ``batch_size`` clips (frames
    times ``n``) at a time. The sound keeps the generated spectrogram's level, as the round trip
    of ``cmav evaluate`` does (a sound classifier is level-sensitive: the same clip scaled to its
    peak is judged on another dB scale); samples beyond full scale are clipped to [-1, 1] with a
    :class:`~cmav.data.errors.DataWarning` that counts them. ``normalise=True`` peak-normalises
    every clip to 1 instead (for listening; levels then do not compare between clips).
    ``inference_condition`` overrides the checkpoint's (``'own'``, ``'nearest'``, ``'class_mean'``)."""
    from cmav.features.inversion import clip_to_full_scale, lms_to_audio

    _needs(model, "image_to_sound", ("i2s",))
    n, seed = _whole("n", n), _seed(seed)
    griffin_lim_iters = _whole("griffin_lim_iters", griffin_lim_iters)
    batch_size = _whole("batch_size", batch_size)
    if model.features.kind != "lms":
        raise ValueError(f"{model.path}: generates {model.features.kind} features; only an LMS turns back into sound")
    frames = _frames(model, image)
    n_samples = model.chunk.samples_at(model.features.sample_rate)
    x, waves = frames.repeat_interleave(n, 0), []
    with _inference_condition(model, inference_condition) as task:
        zz = noise(n, task.z_dim, seed).repeat(len(frames), 1)
        for i in range(0, len(x), batch_size):
            lms = task.generate(x[i : i + batch_size], zz[i : i + batch_size]).cpu()
            waves.append(lms_to_audio(lms, model.features, n_iter=griffin_lim_iters, normalise=bool(normalise),  # type: ignore[arg-type]
                                      n_samples=n_samples))  # fmt: skip
    out = torch.cat(waves).view(len(frames), n, -1)
    if not normalise:
        out = clip_to_full_scale(out, f"{model.path}: image_to_sound", stacklevel=_user_stacklevel())
    return out, model.features.sample_rate


__all__ = ["AudioChunks", "ChunkPredictions", "Embeddings", "KINDS", "Model", "audio_chunks", "classify_audio",
           "embed_audio", "embed_image", "image_to_sound", "load", "model_kind", "noise", "sound_to_image"]  # fmt: skip
