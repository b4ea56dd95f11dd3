"""Generating with an audio token, and scoring generated images with AIS, IIS, AIC and judge-feature FID.

``cmav generate --ckpt token.ckpt --audio clip.wav -n 4 -o out/`` is
:func:`generate_from_audio_token`: the clip's first 0.5-s chunk (under the checkpoint's front end,
as for S2I) -> the audio token -> the prompt -> ``n`` images from the frozen diffusion model, one
batch, on the GPU when there is one. :func:`score_images` scores any generator's images (the
audio token, the text-label prompt, S2I-C) the same way (see :mod:`cmav.metrics.token`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cmav.diffusion.audio_token import AudioTokenModel

DEFAULT_STEPS = 50
DEFAULT_SCHEDULER = "ddim"
DEFAULT_GUIDANCE = 3.0


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def _conditions(model: AudioTokenModel, audio: Tensor, batch_size: int) -> Tensor:
    dev = model.diffusion.device
    parts = [model.condition(model.token(audio[i : i + batch_size].to(dev, torch.float32)))
             for i in range(0, audio.shape[0], batch_size)]  # fmt: skip
    return torch.cat(parts)


@torch.no_grad()
def token_images(model: AudioTokenModel, audio: Tensor, seed: int = 0, steps: int = DEFAULT_STEPS,
                 scheduler: str = DEFAULT_SCHEDULER, guidance_scale: float = DEFAULT_GUIDANCE,
                 batch_size: int = 64) -> Tensor:  # fmt: skip
    """One image per LMS ``(N, 1, M, T)``, prompted with its audio token; ``(N, 3, S, S)`` in [-1, 1] on CPU."""
    was = model.training
    model.eval()
    try:
        cond = _conditions(model, audio, batch_size)
        g = torch.Generator().manual_seed(int(seed))
        return model.diffusion.sample(cond, guidance_scale, steps, scheduler, g, batch_size)
    finally:
        model.train(was)


@torch.no_grad()
def label_images(model: AudioTokenModel, labels: Tensor, seed: int = 0, steps: int = DEFAULT_STEPS,
                 scheduler: str = DEFAULT_SCHEDULER, guidance_scale: float = DEFAULT_GUIDANCE,
                 batch_size: int = 64) -> Tensor:  # fmt: skip
    """The same, prompted with the TEXT label (the template with the class's words): the upper line."""
    prompts = model.label_prompts(labels.tolist())
    cond = torch.cat([model.diffusion.text_embeddings(prompts[i : i + batch_size])
                      for i in range(0, len(prompts), batch_size)])  # fmt: skip
    g = torch.Generator().manual_seed(int(seed))
    return model.diffusion.sample(cond, guidance_scale, steps, scheduler, g, batch_size)


OUTPUT_NAME = re.compile(r"sample_\d{2,}\.png|grid\.png")
"""The files :func:`generate_from_audio_token` writes into its folder (and removes from it first)."""


def token_output_folder(output_dir: str | Path) -> Path:
    """``output_dir`` as the folder :func:`generate_from_audio_token` writes into; a ``ValueError``
    naming it when it has an image suffix (``-o out.png``: it would become a folder of that name) or
    is an existing file."""
    from PIL import Image

    out = Path(output_dir)
    is_file = out.exists() and not out.is_dir()
    if is_file or out.suffix.lower() in Image.registered_extensions():
        what = "this is a file: give a folder" if is_file else f"not an image file: give a folder, e.g. {out.with_suffix('')}"
        raise ValueError(f"{out}: -o (output_dir) is a folder for an audio-token checkpoint (it gets sample_00.png ... "
                         f"and grid.png), {what}")  # fmt: skip
    return out


def generate_from_audio_token(
    ckpt: str | Path,
    audio_path: str | Path,
    n: int = 4,
    seed: int = 0,
    output_dir: str | Path = "generated",
    scheduler: str = DEFAULT_SCHEDULER,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    pipeline: str | Path | None = None,
    device: str = "auto",
) -> tuple[list[Path], list[str]]:
    """Write ``n`` images generated from the audio token of ``audio_path`` to ``output_dir``.

    Files: ``sample_00.png`` ... and ``grid.png`` (all of them); those of an earlier run into the folder
    are removed first. ``output_dir`` is a folder: one with an image suffix, or an existing file, is
    refused (:func:`token_output_folder`). Returns the paths and notes on what was done to the clip.
    ``pipeline`` overrides the checkpoint's pipeline folder.
    """
    from PIL import Image

    from cmav.data.errors import DataError
    from cmav.evaluation.generate import front_end_of, wav_to_features
    from cmav.tasks.audio_token import load_audio_token
    from cmav.viz import labelled_grid
    from cmav.viz.tensors import to_uint8_frame

    if n < 1:
        raise ValueError("n must be >= 1")
    out = token_output_folder(output_dir)
    task = load_audio_token(ckpt, pipeline=pipeline, device=_device(device))
    features, spec = front_end_of(ckpt)
    lms, notes = wav_to_features(audio_path, features, spec)
    expected = tuple(task.model.audio_encoder.input_shape)
    if tuple(lms.shape[1:]) != expected:
        raise DataError(Path(audio_path),
                        f"features of shape {tuple(lms.shape[1:])} do not fit the encoder's input {expected}")
    images = token_images(task.model, lms.repeat(n, 1, 1, 1), seed=seed, steps=steps, scheduler=scheduler,
                          guidance_scale=guidance_scale)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # an earlier run's, of a larger n: not to be taken for this run's
        if OUTPUT_NAME.fullmatch(old.name) and old.is_file():
            old.unlink()
    cells = [to_uint8_frame(x) for x in images]
    paths = []
    for i, cell in enumerate(cells):
        paths.append(out / f"sample_{i:02d}.png")
        Image.fromarray(cell).save(paths[-1])
    paths.append(out / "grid.png")
    labelled_grid([cells], cell_size=max(64, cells[0].shape[0])).save(paths[-1])
    return paths, notes


def at_size(images: Tensor, size: int) -> Tensor:
    """``images`` ``(N, 3, H, W)`` resized (bilinear, antialiased) to ``size`` x ``size`` unless already that size."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                                           align_corners=False)  # fmt: skip


@torch.no_grad()
def score_images(generated: Tensor, audio: Tensor, labels: Tensor, real: Tensor, image_judge: Any, retrieval: Any,
                 class_names: list[str], n_negatives: int = 10, seed: int = 0,
                 batch_size: int = 64) -> dict:  # fmt: skip
    """AIS, IIS, AIC and judge-feature FID of ``generated`` (row ``i`` made from item ``i``).

    ``audio`` / ``labels`` / ``real``: the items' LMS, labels and real frames (in [-1, 1]);
    ``image_judge``: an image :class:`ClassifierTask`; ``retrieval``: a :class:`RetrievalTask`
    (its similarity gives AIS). Frames of any side are resized to each scorer's own. The negatives of AIS and IIS are the same ``n_negatives`` random
    other items per image, from ``seed``. The judge scores in eval mode whatever its own mode (which
    is left as it was). ``FID_same_distribution`` is the FID that two samples of one distribution
    give at this many items (see :func:`~cmav.metrics.fid_kid_from_features`).
    """
    from cmav.metrics import (
        JudgeFeatureExtractor,
        audio_image_consistency,
        audio_image_similarity,
        extract_features,
        fid_kid_from_features,
        image_image_similarity,
        judge_predictions,
        random_negatives,
    )

    n = generated.shape[0]
    if not (audio.shape[0] == labels.shape[0] == real.shape[0] == n):
        raise ValueError(f"need one audio, label and real frame per generated image, got {audio.shape[0]}, "
                         f"{labels.shape[0]}, {real.shape[0]} for {n}")  # fmt: skip
    # each scorer sees frames at the side it was trained on (the generator's and the data's may differ)
    judge_size, retrieval_size = int(image_judge.hparams.image_size), int(retrieval.hparams.image_size)
    neg = random_negatives(n, n_negatives, seed=seed)
    extractor = JudgeFeatureExtractor(image_judge.model, name="image_judge")
    judged = at_size(generated, judge_size)
    gen_f = extract_features(extractor, judged, batch_size)
    real_f = extract_features(extractor, at_size(real.float(), judge_size), batch_size)
    # in eval mode whatever mode the judge is in: dropout off, BatchNorm's running statistics untouched
    predicted = judge_predictions(image_judge, judged, batch_size)
    a_emb = torch.cat([retrieval.embed(audio=x)[0].cpu() for x in audio.split(batch_size)])
    v_emb = torch.cat([retrieval.embed(image=x)[1].cpu() for x in at_size(generated, retrieval_size).split(batch_size)])
    scores = retrieval.model.scores(a_emb.float(), v_emb.float()).T  # (generated image, audio)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*rank-deficient.*")  # small evaluation sets: said in the note
        warnings.filterwarnings("ignore", ".*subset_size.*")
        fid = fid_kid_from_features(real_f, gen_f, kid_subset_size=min(n, 1000), feature=extractor.feature_name)
    return {
        "AIS": audio_image_similarity(scores, neg),
        "IIS": image_image_similarity(gen_f, real_f, neg),
        "AIC": audio_image_consistency(predicted, labels),
        "FID": fid["fid"],
        "FID_same_distribution": fid["fid_same_distribution"],
        "n_items": n,
        "n_negatives": n_negatives,
        # says what FID two samples of one distribution give at this n and d (and when n <= d)
        "fid_note": fid["note"],
        "classes": list(class_names),
    }


__all__ = ["OUTPUT_NAME", "at_size", "generate_from_audio_token", "label_images", "score_images", "token_images",
           "token_output_folder"]
