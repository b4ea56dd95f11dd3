"""Where a method's images come from: a trained S2I run, a folder of images, or the real frames.

``--runs`` takes, per method, one of

* a Lightning run folder (``runs/s2i_c``, holding ``checkpoints/last.ckpt``) or a checkpoint file:
  one image per pair is generated from the pair's audio (EMA generator, fixed noise from the seed);
  the method is named after the run folder (``runs/s2i_c/checkpoints/last.ckpt`` -> ``s2i_c``);
* a folder of already-made images, one per validation pair, named by the pair's stem:
  ``<folder>/<stem>.png`` or ``<folder>/<class>/<stem>.png`` (``.jpg``/``.jpeg`` also read);
  the method is named after the folder;
* ``NAME=PATH`` for either, to name the method yourself (two runs both called ``s2i_c``...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cmav.data.errors import DataError
from cmav.human_eval.errors import HumanEvalError
from cmav.human_eval.study import REFERENCE, Pair

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class RunSource:
    """One ``--runs`` entry, resolved: ``kind`` is ``checkpoint`` (``path`` = the .ckpt) or ``images``."""

    name: str
    kind: str
    path: Path
    given: str


def _name_from_path(path: Path) -> str:
    if path.is_file():
        # runs/<name>/checkpoints/last.ckpt -> <name>; a loose file -> its stem
        return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
    return path.resolve().name


def _checkpoint_in(folder: Path) -> Path | None:
    for cand in (folder / "checkpoints" / "last.ckpt", folder / "last.ckpt"):
        if cand.is_file():
            return cand
    found = sorted((folder / "checkpoints").glob("*.ckpt")) if (folder / "checkpoints").is_dir() else []
    found = found or sorted(folder.glob("*.ckpt"))
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise HumanEvalError(folder, f"{len(found)} checkpoints and no last.ckpt; give one of them: "
                                     + ", ".join(str(p) for p in found[:5]))  # fmt: skip
    return None


def resolve_run(spec: str) -> RunSource:
    """A ``--runs`` entry -> what it is and the method's name (see the module docstring)."""
    name = None
    path = Path(spec)
    if "=" in spec and not path.exists():
        name, _, rest = spec.partition("=")
        name, path = name.strip(), Path(rest)
        if not name:
            raise HumanEvalError(spec, "empty method name before '='")
    if not path.exists():
        raise HumanEvalError(path, "no such run folder, checkpoint or image folder")
    if path.is_file():
        if path.suffix != ".ckpt":
            raise HumanEvalError(path, "a run is a run folder, a .ckpt file or a folder of images")
        ckpt: Path | None = path
    else:
        ckpt = _checkpoint_in(path)
    name = name or _name_from_path(path)
    if name == REFERENCE:
        raise HumanEvalError(path, f"method name {REFERENCE!r} is the real frames' own; name it with NAME={path}")
    if ckpt is not None:
        return RunSource(name, "checkpoint", ckpt, spec)
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*") if p.is_file()):
        return RunSource(name, "images", path, spec)
    raise HumanEvalError(path, "neither a run (no checkpoints/last.ckpt or *.ckpt) nor a folder of images")


def resolve_runs(specs: list[str]) -> list[RunSource]:
    runs = [resolve_run(s) for s in specs]
    seen: dict[str, RunSource] = {}
    for r in runs:
        if r.name in seen:
            raise HumanEvalError(r.path, f"method name {r.name!r} is also that of {seen[r.name].path}; "
                                         f"name them apart with NAME=PATH (e.g. {r.name}_2={r.given})")  # fmt: skip
        seen[r.name] = r
    return runs


# ---------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataConfig:
    """How to open a data set's validation split (from a checkpoint's datamodule, or ``--data``)."""

    root: str
    layout: str = "suburmp"
    image_size: int = 64
    cache_dir: str | None = None
    features: Any = None  # a cmav.features front-end config; None = the default LMS
    chunk: Any = None  # ChunkSpec; None = the default

    def open(self):
        from cmav.data.datasets import open_split

        return open_split(self.layout, self.root, "validation", image_size=self.image_size, features=self.features,
                          chunk=self.chunk, cache_dir=self.cache_dir, progress=False)  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "layout": self.layout, "split": "validation", "image_size": self.image_size}


@dataclass(frozen=True)
class CheckpointFacts:
    """What a study needs from a checkpoint besides its weights: the model's image side and the
    datamodule it was trained with (``{}`` when it stores none)."""

    path: Path
    image_size: int
    datamodule: dict[str, Any]


def checkpoint_facts(ckpt: Path) -> CheckpointFacts:
    from cmav.tasks.classifier import _load_checkpoint

    try:
        raw = _load_checkpoint(ckpt)
    except ValueError as exc:  # unreadable checkpoint: the message names the file already
        raise HumanEvalError(ckpt, str(exc).split(": ", 1)[-1]) from exc
    hp = raw.get("hyper_parameters") or {}
    return CheckpointFacts(Path(ckpt), int(hp.get("image_size", 64)), dict(raw.get("datamodule_hyper_parameters") or {}))


def checkpoint_data(facts: CheckpointFacts, root: str | None = None, layout: str | None = None) -> DataConfig | None:
    """The data a checkpoint was trained on (its datamodule hyper-parameters); ``root``/``layout``
    override them. ``None`` when the checkpoint stores no datamodule and no ``root`` is given."""
    import dataclasses

    from cmav.data.audio_io import ChunkSpec
    from cmav.data.datamodule import recorded_root
    from cmav.features.frontend import front_end_config

    dm = facts.datamodule
    if not dm and root is None:
        return None
    try:
        features = front_end_config(dm.get("features"))  # lms, stft, cqt, mfcc or waveform, as trained
    except ValueError as exc:
        raise HumanEvalError(facts.path, f"stored front end: {exc}") from exc
    chunk = dm.get("chunk") if isinstance(dm.get("chunk"), dict) else {}
    known = {f.name for f in dataclasses.fields(ChunkSpec)}
    return DataConfig(
        root=str(root if root is not None else recorded_root(dm, missing_ok=True)),
        layout=layout or dm.get("layout", "suburmp"),
        image_size=int(dm.get("image_size", facts.image_size)),
        # a stored cache folder belongs to the stored root; with another root use that root's default
        cache_dir=dm.get("cache_dir") if root is None else None,
        features=features,
        chunk=ChunkSpec(**{k: v for k, v in chunk.items() if k in known}),
    )


def open_data(config: DataConfig, why: str):
    """The validation split, with a hint to use ``--data`` when the stored root is not there."""
    try:
        return config.open()
    except DataError as exc:
        if not Path(config.root).exists():
            raise HumanEvalError(config.root, f"data set folder does not exist ({why}); pick one with --data ROOT") from exc
        raise


def pair_index(split) -> dict[tuple[str, str], int]:
    """(class name, stem) -> position in the split (stems alone may repeat across classes)."""
    t = split.tensors
    return {(t.class_names[int(lab)], stem): i for i, (lab, stem) in enumerate(zip(t.labels.tolist(), t.stems, strict=True))}


def _positions(split, pairs: list[Pair], who: str) -> list[int]:
    index = pair_index(split)
    missing = [p.stem for p in pairs if (p.class_name, p.stem) not in index]
    if missing:
        raise HumanEvalError(split.root, f"{who}: {len(missing)} sampled pair(s) are not in this validation split "
                                         f"(e.g. {', '.join(missing[:5])}); did it train on another data set?")  # fmt: skip
    return [index[(p.class_name, p.stem)] for p in pairs]


# ---------------------------------------------------------------------- images per method


def real_images(split, pairs: list[Pair]) -> list[np.ndarray]:
    """The pairs' own frames, uint8 ``(S, S, 3)``."""
    idx = _positions(split, pairs, "real frames")
    return [split.tensors.images[i].permute(1, 2, 0).numpy() for i in idx]


def checkpoint_images(run: RunSource, facts: CheckpointFacts, pairs: list[Pair], data_root: str | None,
                      layout: str | None, fallback: DataConfig | None,
                      seed: int) -> tuple[list[np.ndarray], dict[str, Any]]:  # fmt: skip
    """One generated image per pair from the run's checkpoint (EMA generator, noise from ``seed``).

    The audio is the pair's features under the front end the run was trained with (LMS, CQT...),
    so runs trained on different front ends are each fed what they expect."""
    import torch

    from cmav.evaluation.s2i import generate_images, make_generator_fn
    from cmav.tasks.s2i import load_s2i

    try:
        task = load_s2i(run.path)
    except ValueError as exc:
        raise HumanEvalError(run.path, str(exc).split(": ", 1)[-1]) from exc
    fn, z_dim, info = make_generator_fn(task)
    config = checkpoint_data(facts, data_root, layout) or fallback
    if config is None:
        raise HumanEvalError(run.path, "the checkpoint stores no datamodule: give the data set with --data ROOT")
    split = open_data(config, f"stored in {run.path}" if data_root is None else "--data")
    idx = _positions(split, pairs, run.name)
    audio = split.tensors.audio[torch.as_tensor(idx, dtype=torch.long)]
    expected = tuple(task.net.encoder.input_shape)
    if tuple(audio.shape[1:]) != expected:
        raise HumanEvalError(run.path, f"the data's audio features {tuple(audio.shape[1:])} do not fit the "
                                       f"model's input {expected}")  # fmt: skip
    fake = generate_images(fn, audio, z_dim, seed=seed)
    images = [((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy() for x in fake]
    info = {**info, "image_size": int(task.hparams.image_size), "checkpoint": str(run.path), "noise_seed": seed,
            "data": config.describe()}  # fmt: skip
    return images, info


def folder_images(run: RunSource, pairs: list[Pair], size: int) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The pairs' images from a folder named by stem (centre-square crop, resized to ``size``)."""
    from cmav.data.image_io import load_frame

    found, missing = [], []
    for p in pairs:
        cands = [run.path / p.class_name / f"{p.stem}{s}" for s in IMAGE_SUFFIXES]
        cands += [run.path / f"{p.stem}{s}" for s in IMAGE_SUFFIXES]
        hit = next((c for c in cands if c.is_file()), None)
        (found if hit else missing).append(hit or p.stem)
    if missing:
        raise HumanEvalError(run.path, f"no image for {len(missing)} sampled pair(s): expected "
                                       f"<stem>.png or <class>/<stem>.png for {', '.join(missing[:8])}"
                                       + (" ..." if len(missing) > 8 else ""))  # fmt: skip
    return [load_frame(f, size) for f in found], {"folder": str(run.path)}


__all__ = ["CheckpointFacts", "DataConfig", "RunSource", "checkpoint_data", "checkpoint_facts", "resolve_run", "resolve_runs"]
