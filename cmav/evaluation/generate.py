"""``cmav generate``: images from a sound file with a trained S2I checkpoint.

The clip is read with :func:`cmav.data.audio_io.load_chunk` under the checkpoint's chunk spec
(mono, resampled to the chunk rate). A clip longer than one chunk (0.5 s) is cut to its FIRST
chunk, with a note; a clip too short is refused (``DataError``), as in the data sets. The LMS uses
the front-end config the model was trained with (the datamodule hyper-parameters stored in the
checkpoint; the default LMS front end when the checkpoint has none).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from cmav.data.audio_io import ChunkSpec, decode_chunk, read_audio
from cmav.data.errors import DataError
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


def front_end_of(ckpt_path: str | Path) -> tuple[FrontEndConfig, ChunkSpec]:
    """The front-end config and chunk spec stored with a checkpoint (defaults when absent)."""
    from cmav.tasks.classifier import _load_checkpoint

    ckpt = _load_checkpoint(ckpt_path)
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    return front_end_config(dm.get("features")), _as(ChunkSpec, dm.get("chunk"))


def wav_to_features(path: str | Path, features: FrontEndConfig, spec: ChunkSpec) -> tuple[torch.Tensor, list[str]]:
    """Audio features ``(1, C, H, W)`` (an LMS by default) of the first 0.5-s chunk of ``path``, and notes on what was done."""
    path = Path(path)
    wave, rate = read_audio(path)  # DataError for missing/empty/corrupt files
    notes: list[str] = []
    duration = wave.shape[1] / rate
    chunk_s = spec.n_samples / spec.sample_rate
    if duration > chunk_s * (1 + spec.length_tolerance):
        notes.append(f"{path}: {duration:.2f} s long; using its first {chunk_s:g} s (one chunk)")
        long_spec = dataclasses.replace(spec, n_samples=int(round(duration * spec.sample_rate)))
        mono, more = decode_chunk(path, long_spec)
        mono = mono[: spec.n_samples]
    else:
        mono, more = decode_chunk(path, spec)
    notes += more
    lms = build_front_end(features)(torch.from_numpy(np.ascontiguousarray(mono))[None], sample_rate=spec.sample_rate)
    return lms, notes


@torch.no_grad()
def generate_from_wav(ckpt: str | Path, audio: str | Path, n: int = 4, seed: int = 0,
                      output: str | Path = "generated.png") -> tuple[Path, list[str]]:  # fmt: skip
    """Generate ``n`` images (EMA generator, noise from ``seed``) and save a png (a grid if n > 1)."""
    from PIL import Image

    from cmav.tasks.s2i import load_s2i

    if n < 1:
        raise ValueError("n must be >= 1")
    task = load_s2i(ckpt)
    features, spec = front_end_of(ckpt)
    lms, notes = wav_to_features(audio, features, spec)
    expected = tuple(task.net.encoder.input_shape)
    if tuple(lms.shape[1:]) != expected:
        raise DataError(Path(audio), f"LMS shape {tuple(lms.shape[1:])} does not match the model's input {expected}")
    z = torch.randn(n, task.z_dim, generator=torch.Generator().manual_seed(seed))
    images = task.generate(lms.repeat(n, 1, 1, 1), z).cpu()
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
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out, notes


__all__ = ["front_end_of", "generate_from_wav", "wav_to_features"]
