"""Small synthetic data sets in Sub-URMP's and the paired layout, made on the fly for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

from cmav.data.instruments import INSTRUMENTS


def write_wav(path: Path, seconds: float = 0.5, rate: int = 44100, channels: int = 2, freq: float = 440.0,
              amplitude: float = 0.3, noise: float = 0.0) -> Path:  # fmt: skip
    """A sine (plus white noise of RMS ``noise``, seeded by the file name: a recording-like floor)."""
    t = np.arange(int(round(seconds * rate))) / rate
    mono = amplitude * np.sin(2 * np.pi * freq * t)
    if noise > 0:
        rng = np.random.default_rng(sum(path.name.encode()))
        mono = mono + noise * rng.standard_normal(mono.shape)
    data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype="PCM_16")
    return path


def write_jpg(path: Path, size: tuple[int, int] = (96, 96), colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    img.save(path, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    return path


def make_suburmp(root: Path, classes: tuple[str, ...] = INSTRUMENTS, chunks: int = 2,
                 train_track: int = 0, val_track: int = 1) -> Path:  # fmt: skip
    """Sub-URMP layout with ``chunks`` pairs per class and split; audio pitch and image colour by class."""
    for label, name in enumerate(classes):
        for split, track in (("train", train_track), ("validation", val_track)):
            for k in range(chunks):
                stem = f"{name}{track:02d}_{500 + 100 * k}"
                write_wav(root / "chunk" / split / name / f"{stem}.wav", freq=220.0 * (1 + label / 4))
                write_jpg(root / "img" / split / name / f"{stem}.jpg", colour=(20 * label, 255 - 15 * label, 90))
    return root


def make_paired(root: Path, classes: tuple[str, ...] = ("dog", "drum"), per_class: int = 2) -> Path:
    """Generic paired layout (audio/ + image/) with flac audio and png images."""
    for label, name in enumerate(classes):
        for split in ("train", "validation"):
            for k in range(per_class):
                stem = f"{name}_{split}_{k}"
                write_wav(root / "audio" / split / name / f"{stem}.wav", freq=300.0 + 200 * label)
                write_jpg(root / "image" / split / name / f"{stem}.png", colour=(100 * label, 50, 50))
    return root


def make_suburmp_tracks(root: Path, tracks: tuple[int, ...] = (0, 1), chunks: int = 2, val_track: int = 9,
                        single_track: tuple[str, ...] = (), noise: float = 0.0) -> Path:  # fmt: skip
    """Sub-URMP layout with several train tracks (players) per class; ``single_track`` classes get only
    the first. Audio pitch and image colour depend on the class; the track shifts the colour a little
    so players differ."""
    for label, name in enumerate(INSTRUMENTS):
        freq = 220.0 * (1 + label / 4)
        for track in tracks[:1] if name in single_track else tracks:
            for k in range(chunks):
                stem = f"{name}{track:02d}_{500 + 100 * k}"
                write_wav(root / "chunk" / "train" / name / f"{stem}.wav", freq=freq, noise=noise)
                write_jpg(root / "img" / "train" / name / f"{stem}.jpg",
                          colour=(20 * label, 255 - 15 * label, 40 + 60 * track))  # fmt: skip
        for k in range(chunks):
            stem = f"{name}{val_track:02d}_{500 + 100 * k}"
            write_wav(root / "chunk" / "validation" / name / f"{stem}.wav", freq=freq, noise=noise)
            write_jpg(root / "img" / "validation" / name / f"{stem}.jpg", colour=(20 * label, 255 - 15 * label, 90))
    return root


def make_unique_pairs(root: Path, with_masks: bool = True) -> Path:
    """Sub-URMP layout, one pair per class and split: a class-specific tone over noise and a
    textured frame with a class-coloured square at a class-specific place (and its mask). The
    validation pair of a class repeats its training pair, so the test is whether the model
    learnt the pairs, not whether 13 items generalise."""
    for label, name in enumerate(INSTRUMENTS):
        rng = np.random.default_rng(label)
        colour = tuple(int(c) for c in rng.integers(30, 255, 3))
        y, x = 4 + (label % 4) * 12, 4 + (label // 4) * 11
        # texture and noise: constant pixels / bare sines leave BatchNorm channels without variance
        img = rng.integers(40, 140, (64, 64, 3)).astype(np.uint8)
        mask = np.zeros((64, 64), bool)
        mask[y : y + 14, x : x + 14] = True
        img[mask] = colour
        t = np.arange(22050) / 44100
        wave = 0.2 * np.sin(2 * np.pi * 180.0 * 1.25 ** (label / 2) * t) + 0.02 * rng.standard_normal(22050)
        for split, track in (("train", 0), ("validation", 1)):
            stem = f"{name}{track:02d}_500"
            (root / "chunk" / split / name).mkdir(parents=True, exist_ok=True)
            sf.write(str(root / "chunk" / split / name / f"{stem}.wav"), wave, 44100, subtype="PCM_16")
            (root / "img" / split / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "img" / split / name / f"{stem}.jpg", quality=95)
            if with_masks:
                (root / "mask" / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask).save(root / "mask" / split / name / f"{stem}.png")
    return root


def assert_holds_a_weight_average(ckpt_path: Path, prefix: str, load) -> None:
    """A checkpoint written under Lightning's ``EMAWeightAveraging`` holds the average of every
    network weight under ``prefix`` (not a copy of the trained ones, kept in ``current_model_state``),
    and ``load`` (the task's loader) gives back exactly those averaged weights."""
    import torch

    ckpt = torch.load(ckpt_path, weights_only=False)
    averaged, current = ckpt["state_dict"], ckpt["current_model_state"]
    weights = [k for k, v in averaged.items() if k.startswith(prefix) and v.is_floating_point()]
    assert weights and averaged.keys() == current.keys()
    assert any(not torch.equal(averaged[k], current[k]) for k in weights)  # an average, not a copy
    loaded = load(ckpt_path).state_dict()
    assert all(torch.equal(loaded[k], averaged[k]) for k in weights)
