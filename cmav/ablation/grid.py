"""What every ablation grid shares: YAML + presets, data, a Lightning fit per cell, mean ± sd.

A grid YAML names its ``kind`` (``s2i`` by default, ``audio_repr``, ...); :func:`cmav.ablation.run_ablation`
hands it to that kind's runner. Every kind reads ``seeds``, ``threads``, ``data`` (passed to
:class:`~cmav.data.datamodule.AudioVisualDataModule`; ``root: null`` builds the tiny stand-in
under the results folder), ``trainer`` (passed to ``lightning.Trainer``) and ``presets``.
"""

from __future__ import annotations

import copy
import csv
import difflib
import hashlib
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml


def merge(base: dict, over: dict) -> dict:
    """``over`` merged into a copy of ``base``, recursively for dicts."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def parse_override(text: str) -> dict:
    """``'a.b=VALUE'`` -> ``{'a': {'b': VALUE}}``, VALUE read as YAML (``seeds=[0]``,
    ``representations=[{name: LMS, features: {kind: lms}}]``, ``steps=60``)."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ValueError(f"override {text!r}: expected KEY=VALUE with a dotted KEY, e.g. seeds=[0] or data.batch_size=32")
    try:
        out: Any = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ValueError(f"override {text!r}: its value is not valid YAML ({e})") from None
    for p in reversed(parts):
        out = {p.strip(): out}
    return out


GRID_KEYS = frozenset({"kind", "seeds", "threads", "data", "trainer", "model", "stages", "evaluation", "variants",
                       "steps", "augment", "cross_source", "representations", "depths", "diffusion", "throughput"})
"""Top-level keys some grid kind reads (:mod:`cmav.ablation`); an override may set one that its YAML leaves out."""


def load_grid(path: str | Path, preset: str | None = None, overrides: list[str] | None = None) -> dict:
    """The grid of a YAML config, with ``presets[preset]`` merged over it, then each override
    (``KEY=VALUE``, see :func:`parse_override`), ``kind`` and ``seeds`` filled in."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ablation config not found: {path}")
    cfg = yaml.safe_load(path.read_text())
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a grid YAML is a mapping of keys (kind, seeds, data, ...), got a "
                         f"{type(cfg).__name__} at the top level")  # fmt: skip
    presets = cfg.pop("presets", None) or {}
    if not isinstance(presets, dict):
        raise ValueError(f"{path}: presets must map preset names to mappings, got a {type(presets).__name__}")
    if preset:
        if preset not in presets:
            raise ValueError(f"{path}: no preset {preset!r}; presets: {sorted(presets) or 'none'}")
        if not isinstance(presets[preset] or {}, dict):
            raise ValueError(f"{path}: presets.{preset} must be a mapping of grid keys, got {presets[preset]!r}")
        cfg = merge(cfg, presets[preset] or {})
    known = set(cfg) | {k for p in presets.values() if isinstance(p, dict) for k in p} | GRID_KEYS
    for text in overrides or []:
        override = parse_override(text)
        key = next(iter(override))
        if key not in known:  # a misspelt key would be merged and never read: the grid runs without it
            raise ValueError(f"override {text!r}: {path} has no key {key!r} (the keys a grid may set: {', '.join(sorted(known))})")
        cfg = merge(cfg, override)
    cfg["preset"] = preset or "default"
    cfg["source"] = str(path)
    return normalise(cfg)


def normalise(cfg: dict) -> dict:
    """``cfg`` checked for the structure every grid kind reads, with ``kind`` and ``seeds`` (``[0]``
    when missing) filled in; a ``ValueError`` naming the file and the key otherwise."""
    src = cfg.get("source", "grid")
    cfg.setdefault("kind", "s2i")
    seeds = cfg.get("seeds")
    if seeds is None:
        seeds = [0]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"{src}: seeds must be a non-empty list of integers, e.g. [0, 1, 2], got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{src}: seeds must be distinct, got {seeds}")
    cfg["seeds"] = list(seeds)
    threads = cfg.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"{src}: threads must be null or a positive integer (torch CPU threads), got {threads!r}")
    if not isinstance(cfg.get("data"), dict):
        what = "missing" if cfg.get("data") is None else f"a {type(cfg['data']).__name__}"
        raise ValueError(f"{src}: no `data` section (the data module's options, e.g. {{root: data/default, "
                         f"image_size: 64}}; root null builds the tiny stand-in): {what}")  # fmt: skip
    for key in ("trainer", "stages", "evaluation", "model"):
        if cfg.get(key) is not None and not isinstance(cfg[key], dict):
            raise ValueError(f"{src}: `{key}` must be a mapping, got {cfg[key]!r}")
    for name, stage in (cfg.get("stages") or {}).items():
        if stage is not None and not isinstance(stage, dict):
            raise ValueError(f"{src}: stages.{name} must be a mapping (steps, model, ckpt), got {stage!r}")
    if "variants" in cfg:
        check_variants(cfg)
    return cfg


def check_variants(cfg: dict, key: str = "variants") -> list[dict]:
    """The grid's ``variants`` (or the list under ``key``, e.g. ``representations``): a non-empty
    list of mappings, each with a ``name`` that is unique and whose :func:`slug` (its folder under
    ``runs/``) is unique too; a ``ValueError`` naming the file and the entry otherwise."""
    src = cfg.get("source", "grid")
    one = key[:-1] if key.endswith("s") else key  # "variant", "representation"
    variants = cfg.get(key)
    if not isinstance(variants, list) or not variants:
        raise ValueError(f"{src}: `{key}` must be a non-empty list of mappings with a name, got {variants!r}")
    for i, v in enumerate(variants):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not v["name"].strip():
            raise ValueError(f"{src}: {key}[{i}] needs a `name` (a non-empty string), got {v!r}")
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"{src}: {one} names must be unique, got {names}")
    seen: dict[str, str] = {}
    for name in names:
        s = slug(name)
        if not s:
            raise ValueError(f"{src}: {one} {name!r} has no letter, digit, '_', '.' or '-' to name its folder")
        if s in seen:
            raise ValueError(f"{src}: {key} {seen[s]!r} and {name!r} would share the folder runs/{s}/ "
                             "(their names differ only in characters a folder name drops): rename one")  # fmt: skip
        seen[s] = name
    return variants


def slug(name: str) -> str:
    """A file-name-safe version of a variant name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")


def data_root(cfg: dict, out: Path) -> Path:
    """``data.root``, or the tiny stand-in built (once) under ``out/data`` when it is null. With
    ``data.player_split`` (``{source, per_class: 1, seed: 0, single_track: refuse, tail_fraction:
    0.2}``) the root is a development root of unseen train players
    (:func:`cmav.data.player_split.split_players`), made from ``source`` when missing; an existing
    one made otherwise is refused."""
    root = cfg["data"].get("root")
    split = cfg["data"].get("player_split")
    if split is not None:
        return _player_split_root(cfg, root, split)
    if root is None:
        from cmav.standin.build import MANIFEST, build_standin

        root = out / "data"
        try:
            complete = bool(json.loads((root / MANIFEST).read_text()).get("complete"))
        except (OSError, ValueError, AttributeError):
            complete = False  # missing or unreadable: build_standin says what is wrong with it
        if not complete:
            print(f"[ablate] building the tiny stand-in at {root} (once)", flush=True)
        build_standin(root, preset="tiny", progress=False)  # a complete one is checked and kept
    if not Path(root).is_dir():
        raise FileNotFoundError(
            f"data root {root} does not exist: build it (`cmav data build --root {root}`), pass --root, "
            "or use --preset quick (builds the tiny stand-in under the results folder)"
        )
    return Path(root)


def _player_split_root(cfg: dict, root: str | None, split: Any) -> Path:
    from cmav.data.player_split import MANIFEST, split_players

    src = cfg.get("source", "grid")
    keys = {"source", "per_class", "seed", "single_track", "tail_fraction"}
    if not isinstance(split, dict) or "source" not in split or set(split) - keys:
        raise ValueError(f"{src}: data.player_split takes {{{', '.join(sorted(keys))}}} with a source, got {split!r}")
    if root is None:
        raise ValueError(f"{src}: data.player_split needs data.root, the folder the development root is written to")
    want = {"source": str(Path(split["source"]).resolve()), "per_class": int(split.get("per_class", 1)),
            "seed": int(split.get("seed", 0)), "single_track": str(split.get("single_track", "refuse")),
            "tail_fraction": float(split.get("tail_fraction", 0.2))}  # fmt: skip
    root = Path(root)
    if not root.exists():
        print(f"[ablate] splitting {want['per_class']} player(s) per instrument of {split['source']} into a "
              f"development root at {root} (once)", flush=True)  # fmt: skip
        split_players(want["source"], root, **{k: v for k, v in want.items() if k != "source"})
        return root
    manifest = root / MANIFEST
    have = json.loads(manifest.read_text()) if manifest.is_file() else {}
    if have:  # roots split before single_track existed were refused any single-track instrument
        have = {"single_track": "refuse", "tail_fraction": 0.2, **have}
    if {k: have.get(k) for k in want} != want:
        raise ValueError(f"{root}: exists but is not the development root data.player_split asks for "
                         f"({want}; {manifest.name}: {({k: have.get(k) for k in want}) if have else 'missing'})")  # fmt: skip
    return root


def datamodule(cfg: dict, out: Path, **overrides: Any):
    """The grid's :class:`AudioVisualDataModule`, set up for fitting; ``overrides`` win over ``data``."""
    from cmav.data.datamodule import AudioVisualDataModule

    d = {k: v for k, v in cfg["data"].items() if k not in ("root", "player_split")}
    d.update(overrides)
    dm = AudioVisualDataModule(root=str(data_root(cfg, out)), progress=False, **d)
    dm.setup("fit")
    return dm


def trainer(cfg: dict, out: Path, stage: str, seed: int, steps: int, gan: bool = False):
    """A ``lightning.Trainer`` for ``steps`` batches, logging to ``out/tb/<stage>/seed<k>``."""
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    kw = dict(cfg.get("trainer") or {})
    kw.setdefault("accelerator", "auto")
    kw.setdefault("devices", 1)
    kw.update(
        max_steps=int(steps) * (2 if gan else 1),  # manual GAN optimisation: 2 optimiser steps per batch
        max_epochs=-1,
        logger=TensorBoardLogger(save_dir=str(out / "tb"), name=stage, version=f"seed{seed}", default_hp_metric=False),
        enable_checkpointing=False,
        default_root_dir=str(out),
    )
    return L.Trainer(**kw)


def seeded(seed: int) -> None:
    """Seed every generator for ``seed``. Call it before building a task whose constructor draws
    weights (S2I, I2S, the audio token): else its start depends on what ran before in the process."""
    import lightning as L

    L.seed_everything(seed, workers=True, verbose=False)


def fit(cfg: dict, out: Path, dm, stage: str, seed: int, task, ckpt: Path, steps: int, gan: bool = False) -> Path:
    """Train ``task`` for ``steps`` batches under ``seed`` and save its checkpoint to ``ckpt``."""
    from cmav.bench.cpu_bf16 import warn_if_slow_bf16

    seeded(seed)
    tr = trainer(cfg, out, stage, seed, steps, gan=gan)
    warn_if_slow_bf16(tr)  # a grid preset asks for bf16 (a GPU's): 20x slower on most CPUs
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*number of training batches.*")
        warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode.*")  # the frozen encoder
        tr.fit(task, datamodule=dm)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tr.save_checkpoint(str(ckpt))
    print(f"[ablate] {stage} seed {seed}: {time.perf_counter() - t0:.1f}s -> {ckpt}", flush=True)
    return ckpt


def classifier_stage(cfg: dict, out: Path, dm, stage: str, seed: int, path: Path, build: Callable[[], Any],
                     load: Callable[[Path], Any]) -> Path:  # fmt: skip
    """The checkpoint of a classifier the grid needs (sound classifier, judge, image encoder):
    ``stages.<stage>.ckpt`` when given (checked with ``load``, which names the file in its errors,
    and against the data's classes); else ``path`` when an earlier run into the folder wrote it under
    the same settings (:func:`reusable`); else ``build()`` trained for ``stages.<stage>.steps`` batches."""
    st = cfg["stages"][stage]
    if st.get("ckpt"):
        given = Path(st["ckpt"])
        load(given)  # the right kind of model, or an error naming the file
        check_given(given, dm, stage)  # the data's classes and settings
        return given
    key = stage_key(cfg, stage, seed, dm)
    if reusable(path, key):
        return path
    fit(cfg, out, dm, stage, seed, build(), path, st["steps"])
    record(path, key)
    return path


def check_stages(cfg: dict, need: list[str], given: tuple[str, ...]) -> None:
    """Refuse, before anything trains, a grid whose stages in ``need`` are missing or have neither
    ``steps`` nor (for those in ``given``) a ``ckpt``, or whose given checkpoint does not exist."""
    src = cfg.get("source", "grid")
    stages = cfg.get("stages") or {}
    missing = [s for s in need if not isinstance(stages.get(s), dict)
               or ("steps" not in stages[s] and not (s in given and stages[s].get("ckpt")))]  # fmt: skip
    if missing:
        raise ValueError(f"{src}: stages {missing} missing or incomplete (each needs steps, or ckpt for {list(given)})")
    for s in given:
        ckpt = (stages.get(s) or {}).get("ckpt")
        if ckpt and not Path(ckpt).is_file():
            raise FileNotFoundError(f"{src}: stages.{s}.ckpt {ckpt} does not exist")


def stage_model(cfg: dict, stage: str) -> dict:
    """``stages.<stage>.model`` (``{}`` when missing or null); a ``ValueError`` naming the file and
    the key when it is not a mapping."""
    model = ((cfg.get("stages") or {}).get(stage) or {}).get("model")
    if model is None:
        return {}
    if not isinstance(model, dict):
        raise ValueError(f"{cfg.get('source', 'grid')}: stages.{stage}.model must be a mapping of the task's "
                         f"constructor arguments, got {model!r}")  # fmt: skip
    return model


def check_task_kwargs(cfg: dict, where: str, kwargs: dict, task: type, set_by_grid: tuple[str, ...] = (),
                      why: str = "") -> None:  # fmt: skip
    """Refuse, before anything trains, constructor arguments ``kwargs`` of ``task`` (read from the
    grid's ``where``, e.g. ``stages.s2i.model``) that ``task`` does not take (a typo would fail as a
    ``TypeError`` only when the task is built, after earlier stages trained), or that the grid sets
    itself (``set_by_grid``, ``why`` saying from what): a ``ValueError`` naming the file and ``where``."""
    import inspect

    params = inspect.signature(task.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = set(params) - {"self"}
    unknown = [] if takes_any else sorted(set(kwargs) - names)
    fixed = sorted(set(kwargs) & set(set_by_grid))
    if not unknown and not fixed:
        return
    what = [f"{task.__name__} takes no {unknown}"] if unknown else []
    if fixed:
        what.append(f"{fixed} are set by the grid" + (f" ({why})" if why else ""))
    takes = sorted(names - set(set_by_grid) - {p for p, v in params.items() if v.kind is inspect.Parameter.VAR_KEYWORD})
    raise ValueError(f"{cfg.get('source', 'grid')}: {where}: {'; '.join(what)}; {task.__name__} takes {takes}")


def check_stage_kwargs(cfg: dict, stage: str, task: type, set_by_grid: tuple[str, ...] = (), why: str = "") -> None:
    """:func:`check_task_kwargs` for ``stages.<stage>.model``, when the stage trains here (it has no
    ``ckpt``: a given checkpoint reads no model settings)."""
    if not ((cfg.get("stages") or {}).get(stage) or {}).get("ckpt"):
        check_task_kwargs(cfg, f"stages.{stage}.model", stage_model(cfg, stage), task, set_by_grid, why)


def check_variant_kwargs(cfg: dict, stage: str, task: type, set_by_grid: tuple[str, ...] = (), why: str = "") -> None:
    """:func:`check_task_kwargs` for every variant's constructor arguments (:func:`variant_model_kwargs`:
    ``stages.<stage>.model`` with the variant's keys over it)."""
    for v in check_variants(cfg):
        _, kw = variant_model_kwargs(cfg, stage, v, cfg["seeds"][0])
        check_task_kwargs(cfg, f"variant {v['name']!r} (with stages.{stage}.model)", kw, task, set_by_grid, why)


def check_given(path: str | Path, dm, stage: str) -> None:
    """Refuse a checkpoint given as ``stages.<stage>.ckpt`` that was trained on other data settings
    than the grid's data module ``dm``, as Lightning stored them in it
    (``datamodule_hyper_parameters``): another front end or chunk spec (a model that reads audio),
    another image size (one that reads or draws frames), other held-out tails, or other train
    players (a player judge). A checkpoint trained on another root is refused when the grid's root
    is a development split (``cmav_player_split.json``: the checkpoint may have trained on its
    validation players), and warned of otherwise, naming both roots."""
    from cmav.data.datamodule import recorded_root
    from cmav.data.player_split import MANIFEST as SPLIT_MANIFEST
    from cmav.features import front_end_differences
    from cmav.tasks.classifier import checkpoint_dict, players_mismatch

    blob = checkpoint_dict(path)
    dmh, hp = blob.get("datamodule_hyper_parameters") or {}, blob.get("hyper_parameters") or {}
    h = dm.hparams
    where = f"stages.{stage}.ckpt {path}"
    names = hp.get("class_names")
    if names is not None and list(names) != list(dm.class_names):
        raise ValueError(f"{where}: its classes {list(names)} differ from the data's {list(dm.class_names)}")
    modality = hp.get("modality")  # a ClassifierTask's; retrieval and S2I read audio and frames
    diffs: list[str] = []
    if modality != "image":
        if dmh.get("features") is not None:
            diffs += [f"front end {d}" for d in front_end_differences(dmh["features"], dm.features)]
        if dmh.get("chunk") is not None and dict(dmh["chunk"]) != dict(h.chunk):
            diffs.append(f"chunk: {dict(dmh['chunk'])} -> {dict(h.chunk)}")
    size = hp.get("image_size", dmh.get("image_size"))
    if modality != "audio" and size is not None and int(size) != int(h.image_size):
        diffs.append(f"image_size: {size} -> {h.image_size}")
    for key in ("layout", "holdout_tail", "holdout_gap_ms"):
        if key in dmh and dmh[key] != h.get(key):
            diffs.append(f"{key}: {dmh[key]!r} -> {h.get(key)!r}")
    if hp.get("target") == "track" and hp.get("players") is not None:
        if why := players_mismatch(hp["players"], dm.train_full.tensors):
            diffs.append(why)
    if diffs:
        raise ValueError(f"{where}: trained on other data settings than the grid's ({'; '.join(diffs)}; checkpoint -> "
                         f"grid): it would read or score the data wrongly. Set data.* as the checkpoint was trained, "
                         f"or leave stages.{stage}.ckpt out to train it here")  # fmt: skip
    root = recorded_root(dmh, missing_ok=True) if dmh.get("root") else None
    if root and Path(root).resolve() != Path(dm.root).resolve():
        if (Path(dm.root) / SPLIT_MANIFEST).is_file():
            raise ValueError(f"{where}: trained on {root}, but the grid's data {dm.root} is a development split "
                             f"({SPLIT_MANIFEST}): a checkpoint trained on another root may have trained on its "
                             f"validation players. Train it on {dm.root} (or leave stages.{stage}.ckpt out)")  # fmt: skip
        warnings.warn(f"{where}: trained on {root}, the grid's data is {dm.root}: make sure its training data "
                      "did not include the grid's validation players", stacklevel=2)  # fmt: skip


DATA_FINGERPRINTS = "data_fingerprints"
"""Where a run's record in ``runs.jsonl`` and a stage's ``<ckpt>.settings.json`` keep the fingerprints
of the data they were trained and scored on (:func:`data_fingerprints`): ``{root: {split: fingerprint}}``,
the roots resolved. Beside the settings, not among them: a run whose data changed is named as such
(:func:`changed_data`), and one recorded before fingerprints were is told apart from one of other settings."""


def data_fingerprints(dm) -> dict[str, dict[str, str | None]]:
    """``{root: {"train": ..., "validation": ...}}``: what identifies the contents of the data
    module ``dm``'s splits (:meth:`~cmav.data.datamodule.AudioVisualDataModule.data_fingerprints`:
    each file's path below the root, size and mtime, not the inode or ctime that a chmod or copy
    changes), its root resolved as :func:`key_text` resolves roots."""
    return {str(Path(dm.root).resolve()): dm.data_fingerprints()}


def split_fingerprints(layout: str, splits: list[tuple[Path, str]]) -> dict[str, dict[str, str]]:
    """:func:`data_fingerprints` of the ``(root, split)`` pairs ``splits`` found on disk in
    ``layout``, without opening the cache (:func:`~cmav.data.datasets.split_fingerprint`)."""
    from cmav.data.datasets import split_fingerprint

    out: dict[str, dict[str, str]] = {}
    for root, split in splits:
        out.setdefault(str(Path(root).resolve()), {})[split] = split_fingerprint(layout, root, split)  # type: ignore[arg-type]
    return out


def changed_data(recorded: dict, now: dict, since: str = "it ran") -> str | None:
    """Which data changed between the fingerprints ``recorded`` with a run or stage and those of the
    data ``now`` (:data:`DATA_FINGERPRINTS`), as a reason to train it again; None when none did."""
    changed: list[tuple[str, list[str]]] = []
    for root in sorted(set(recorded) | set(now)):
        a, b = recorded.get(root) or {}, now.get(root) or {}
        splits = [s for s in sorted(set(a) | set(b)) if a.get(s) != b.get(s)]
        if splits:
            changed.append((root, splits))
    if not changed:
        return None
    if len(changed) == 1:
        root, splits = changed[0]
        return f"the data under {root} changed since {since} ({', '.join(splits)})"
    roots = ", ".join(r for r, _ in changed[:-1]) + f" and {changed[-1][0]}"
    details = "; ".join(f"{root}: {', '.join(splits)}" for root, splits in changed)
    return f"the data under {roots} changed since {since} ({details})"


def stage_key(cfg: dict, stage: str, seed: int, dm) -> str:
    """What a stage's checkpoint was trained from: the stage's settings, the trainer's, the seed,
    the data module's (root, image size, front end, held-out tails ...) and the fingerprints of its
    data (:data:`DATA_FINGERPRINTS`: a data set rebuilt or edited in place under the same root)."""
    data = {k: v for k, v in dict(dm.hparams).items() if k not in ("progress", "num_workers", "cache_dir", "root_resolved")}  # how, not what
    return json.dumps({"stage": cfg["stages"][stage], "trainer": cfg.get("trainer"), "seed": seed, "data": data,
                       DATA_FINGERPRINTS: data_fingerprints(dm)}, sort_keys=True, default=str)  # fmt: skip


def _key_path(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".settings.json")


def _resolved(path: Any) -> Any:
    return str(Path(path).resolve()) if isinstance(path, (str, Path)) and str(path) else path


def resolved_roots(key: dict) -> dict:
    """A copy of a run's or stage's settings ``key`` with its data folders (``train_root``,
    ``cross_source``, ``data.root``, ``data.cache_dir``, ``data.player_split.source``) resolved
    against the current folder: the same folder typed relative or absolute is one setting, and a key
    logged with relative roots matches when the grid runs again from the folder it ran from."""
    key = copy.deepcopy(key)
    for name in ("train_root", "cross_source"):
        if name in key:
            key[name] = _resolved(key[name])
    data = key.get("data")
    if isinstance(data, dict):
        for name in ("root", "cache_dir"):
            if name in data:
                data[name] = _resolved(data[name])
        split = data.get("player_split")
        if isinstance(split, dict) and "source" in split:
            split["source"] = _resolved(split["source"])
    return key


def key_text(key: dict) -> str:
    """``key`` as the text runs are matched by: JSON with sorted keys, its roots resolved (:func:`resolved_roots`)."""
    return json.dumps(resolved_roots(key), sort_keys=True, default=str)


def settings_folder(key: dict) -> str:
    """The folder name a run's checkpoint goes into, from its settings ``key``: a run under other
    settings writes another file, so a record in ``runs.jsonl`` always names the weights it scored."""
    return hashlib.sha256(key_text(key).encode()).hexdigest()[:12]


def _same_settings(stored: str, key: str) -> bool:
    if stored == key:
        return True
    try:
        a, b = json.loads(stored), json.loads(key)
    except json.JSONDecodeError:
        return False
    return isinstance(a, dict) and isinstance(b, dict) and key_text(a) == key_text(b)


def _settings(text: str) -> dict | None:
    try:
        key = json.loads(text)
    except json.JSONDecodeError:
        return None
    return key if isinstance(key, dict) else None


def reusable(ckpt: Path, key: str) -> bool:
    """Whether an earlier run into the folder left ``ckpt`` trained under the same ``key`` (roots
    compared resolved, :func:`resolved_roots`) on the same data (:data:`DATA_FINGERPRINTS`). A
    checkpoint of other settings (another root, more steps, another judge recipe), of data changed
    since, or of a run from before cmav recorded its settings, is said so and trained again rather
    than silently reused. One whose settings were recorded before the data's fingerprints were is
    reused, said so, and gets the data's fingerprints as they are now recorded (a later change
    trains it again): its data cannot be checked, and retraining every such stage would cost more
    than the rare data set changed in place since."""
    if not ckpt.is_file():
        return False
    meta = _key_path(ckpt)
    stored = meta.read_text() if meta.is_file() else None
    if stored is not None and _same_settings(stored, key):
        return True
    was, now = _settings(stored or ""), _settings(key)
    if was is not None and now is not None and DATA_FINGERPRINTS in now:
        same = key_text({k: v for k, v in was.items() if k != DATA_FINGERPRINTS}) == key_text(
            {k: v for k, v in now.items() if k != DATA_FINGERPRINTS})  # fmt: skip
        if same and DATA_FINGERPRINTS not in was:
            print(f"[ablate] {ckpt}: reused, its settings recorded before cmav kept its data's fingerprints (remove "
                  f"it to train it again if the data under {', '.join(now[DATA_FINGERPRINTS])} changed since); "
                  "the data as it is now is recorded for it", flush=True)  # fmt: skip
            record(ckpt, key)
            return True
        if same:
            changed = changed_data(was[DATA_FINGERPRINTS], now[DATA_FINGERPRINTS], "it was trained")
            warnings.warn(f"{ckpt}: not reused ({changed}); training it again", stacklevel=3)
            return False
    why = "other settings" if stored is not None else "settings not recorded (an older run)"
    warnings.warn(f"{ckpt}: trained under {why}; training it again", stacklevel=3)
    return False


def record(ckpt: Path, key: str) -> None:
    """Write the settings ``ckpt`` was trained under beside it (read by :func:`reusable`)."""
    _key_path(ckpt).write_text(key)


def logged_runs(log: Path) -> list[dict]:
    """The finished runs in a grid's ``runs.jsonl``, one JSON object a line; a line still being
    written by another shard (no newline yet, or cut) is left for the next read."""
    if not log.is_file():
        return []
    runs = []
    for line in log.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            continue
        try:
            runs.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return runs


def append_run(log: Path, run: dict) -> None:
    """Append ``run`` to ``log`` as one JSON line, in one write. A last line left without its newline
    (a run killed while writing it) is ended first, or the new line would join it and be lost with it."""
    line = (json.dumps(run, default=str) + "\n").encode()
    with open(log, "ab+") as f:
        f.seek(0, os.SEEK_END)
        if f.tell():
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = b"\n" + line
        f.write(line)  # append mode: at the end, whatever was read


def reusable_run(run: dict, logged: list[dict], data: dict | None = None) -> str | None:
    """Why a finished run of ``runs.jsonl`` (one of ``logged``, the file's runs) cannot be reused,
    or None when it can: the data it was trained and scored on must not have changed since (its
    :data:`DATA_FINGERPRINTS` against ``data``, the data's now; a run logged before they were is
    left to :func:`with_data_fingerprints`), and its ``checkpoint`` must still hold the weights it
    was scored with. The file must exist and have the ``checkpoint_sha256`` logged with the run; a
    run logged before that was (when every run of a cell wrote the same file, whatever its settings)
    must moreover be the last of ``logged`` to name its file, as a later one overwrote it."""
    from cmav.data.files import sha256_file

    if data is not None and run.get(DATA_FINGERPRINTS) is not None:
        if changed := changed_data(run[DATA_FINGERPRINTS], data):
            return changed
    path = run.get("checkpoint")
    if not path or not Path(path).is_file():
        return f"its checkpoint {path} is gone"
    if run.get("checkpoint_sha256"):
        return None if sha256_file(path) == run["checkpoint_sha256"] else f"its checkpoint {path} was written again since"
    mine = Path(path).resolve()
    last = [r for r in logged if r.get("checkpoint") and Path(r["checkpoint"]).resolve() == mine][-1:]
    return None if last and last[0] is run else f"a later run under other settings wrote its checkpoint {path}"


def with_data_fingerprints(log: Path, run: dict, data: dict, label: str) -> dict:
    """A reused ``run`` of ``log`` (``runs.jsonl``) with ``data``, its data's fingerprints now. A run
    logged before cmav recorded them is reused as it is, said so once (``label`` names the cell) and
    logged again with them, so that a later change of its data trains it again: its data cannot be
    checked, and retraining every such run would cost more than the rare data set changed in place
    since (a chmod or copy, which the cache's fingerprint sees, does not change what they hold)."""
    if run.get(DATA_FINGERPRINTS) is not None:
        return run
    print(f"[ablate] {label}: logged before runs recorded their data's fingerprints: reused as it is (remove its "
          f"line from {log} to train it again if the data under {', '.join(data)} changed since); the data as it "
          "is now is recorded for it", flush=True)  # fmt: skip
    run = {**run, DATA_FINGERPRINTS: data}
    append_run(log, run)
    return run


def finite(values: list[Any]) -> list[float]:
    """The values that are numbers and finite (None, NaN and infinities of any float type left out)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_sd(values: list[Any]) -> tuple[float | None, float | None]:
    """Mean and sd (ddof 1) of the finite values; the sd is ``None`` for one value (it has none: a
    0 would read as seeds that agree), both are ``None`` when there is no value."""
    vals = finite(values)
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None


def put_mean_sd(row: dict[str, Any], key: str, values: list[Any]) -> None:
    """``row[key_mean]``, ``row[key_sd]`` (:func:`mean_sd`) and ``row[key_n]``, the seeds whose
    figure is a number (a diverged run's is not), for :func:`mean_sd_text`."""
    row[f"{key}_mean"], row[f"{key}_sd"] = mean_sd(values)
    row[f"{key}_n"] = len(finite(values))


def mean_sd_text(mean: float | None, sd: float | None, n: int | None = None, of: int | None = None,
                 digits: int = 3) -> str:  # fmt: skip
    """A table cell: ``mean ± sd``, ``mean (one seed)``, or ``n/a``; ``(n of N seeds)`` when only
    ``n`` of the row's ``of`` seeds gave a number."""
    if mean is None:
        return "n/a"
    text = f"{mean:.{digits}f} ± {sd:.{digits}f}" if sd is not None else f"{mean:.{digits}f} (one seed)"
    if n is not None and of is not None and 0 < n < of:
        text += f" ({n} of {of} seeds)"
    return text


def variant_names(cfg: dict) -> list[str]:
    """The names of the grid's ``variants`` (ValueError when there are none, one has no name, or a
    name or its folder name repeats: :func:`check_variants`)."""
    if not cfg.get("variants"):
        raise ValueError(f"{cfg.get('source', 'grid')}: no variants")
    return [v["name"] for v in check_variants(cfg)]


def inference_conditions(cfg: dict) -> list[str]:
    """The grid's ``evaluation.inference_conditions`` (default ``['own']``): every trained variant
    is scored under each (the task's ``inference_condition``), with no retraining."""
    from cmav.models.condition_bank import INFERENCE_CONDITIONS

    modes = list((cfg.get("evaluation") or {}).get("inference_conditions") or ["own"])
    bad = [m for m in modes if m not in INFERENCE_CONDITIONS]
    if bad or len(set(modes)) != len(modes):
        raise ValueError(f"{cfg.get('source', 'grid')}: evaluation.inference_conditions must be distinct values of "
                         f"{INFERENCE_CONDITIONS}, got {modes}")  # fmt: skip
    return modes


def evaluated_name(name: str, mode: str) -> str:
    """A variant's row name when scored with inference condition ``mode`` (``'own'``: the name alone)."""
    return name if mode == "own" else f"{name} [{mode}]"


def under_inference_conditions(task, name: str, modes: list[str], run_dir: Path) -> Iterator[tuple[str, Path]]:
    """``(row name, output folder)`` for each inference condition of ``modes``, with ``task``
    switched to it meanwhile (``'own'`` writes into ``run_dir``, others into ``inference_<mode>/``)."""
    for mode in modes:
        task.set_inference_condition(mode)
        yield evaluated_name(name, mode), run_dir if mode == "own" else run_dir / f"inference_{mode}"


def variant_model_kwargs(cfg: dict, stage: str, variant: dict, seed: int) -> tuple[str, dict]:
    """``(name, constructor kwargs)`` of a grid variant: ``stages.<stage>.model`` with the variant's
    own keys merged over it, and ``seed`` (the grid's seed of the run) unless the variant sets one.
    A ``seed`` in ``stages.<stage>.model`` is refused: it would pin every seed of the grid (and of
    every variant) to one, and the spread over seeds would not be one."""
    model = stage_model(cfg, stage)
    if "seed" in model:
        raise ValueError(f"{cfg.get('source', 'grid')}: stages.{stage}.model.seed: the grid sets every run's seed "
                         f"(seeds: {cfg.get('seeds')}); one here would pin every seed of the grid to "
                         f"{model['seed']!r}. Remove it (a variant may set its own seed)")  # fmt: skip
    v = dict(variant)
    name = v.pop("name")
    kw = merge(model, v)
    kw.setdefault("seed", seed)
    return name, kw


def write_csv(rows: list[dict], fields: list[str], path: Path) -> Path:
    """``rows`` as a CSV with the columns ``fields`` (missing values empty); returns ``path``."""
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in fields})
    return Path(path)


LOCK = ".ablate.lock"
"""The file in a results folder that a grid kind without resumable runs (s2i, i2s, token) holds while it runs."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@contextmanager
def exclusive(out: Path, kind: str) -> Iterator[Path]:
    """Hold ``out/.ablate.lock`` (created with ``O_EXCL``, holding this process's id) while a grid
    that retrains everything and writes fixed paths (``judges/*.ckpt``, ``runs/<variant>/...``) runs
    into ``out``: a second run into the same folder is refused while the first lives. A lock left by
    a process that is gone (killed) is taken over. Removed at the end, also on error."""
    path = Path(out) / LOCK
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = None  # being written, or unreadable: look again
            if pid is not None and _alive(pid):
                raise RuntimeError(
                    f"{out}: another `cmav ablate` ({kind} grid, process {pid}) is running into this folder "
                    f"({path}). A {kind} grid retrains every stage and variant on every call and writes the same "
                    "checkpoint paths, so it cannot run as shards side by side: use another -o folder, or wait. "
                    f"If process {pid} is not a cmav run, delete {path}"
                ) from None
            if pid is not None:
                print(f"[ablate] {path}: left by process {pid}, which is gone; taking it over", flush=True)
                path.unlink(missing_ok=True)
            else:
                time.sleep(0.2)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise RuntimeError(f"{out}: could not take {path} (another run keeps making it); delete it if no run is going")
    try:
        yield path
    finally:
        try:
            if int(path.read_text().split()[0]) == os.getpid():
                path.unlink()
        except (OSError, ValueError, IndexError):
            pass


def clear_results(out: Path, names: tuple[str, ...]) -> None:
    """Remove the previous run's results (``names`` under ``out``: files or folders) before a run
    that retrains changes anything, so that a run cut off part-way leaves no table of another run
    beside its new checkpoints and config; the run writes them again when it is complete."""
    import shutil

    for name in names:
        path = Path(out) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


TRAINER_SET_BY_GRID = {
    "max_steps": "the training batches: stages.<stage>.steps, or steps",
    "max_epochs": "training runs for a number of batches, not epochs",
    "logger": "TensorBoard logs under the results folder's tb/",
    "enable_checkpointing": "the grid saves every checkpoint itself",
    "default_root_dir": "the results folder",
}
"""``lightning.Trainer`` arguments :func:`trainer` sets itself, whatever ``trainer`` holds."""


def _not_read(where: str, key: str, why: str, known: list[str], notes: dict[str, str] | None = None) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    if not close:
        return f"{where}.{key} {why}"
    note = (notes or {}).get(close[0])
    return f"{where}.{key} {why}; did you mean {close[0]}?" + (f" (set by the grid: {note})" if note else "")


def check_keys(cfg: dict, stages: dict[str, tuple[str, ...]], evaluation: tuple[str, ...]) -> None:
    """Refuse, before anything is built, a nested key that no part of the grid reads (it would be
    merged and silently ignored, or fail as a ``TypeError`` after the data is built): a ``data`` key
    that :class:`~cmav.data.datamodule.AudioVisualDataModule` does not take, a ``trainer`` key that
    ``lightning.Trainer`` does not take or that the grid sets itself (:data:`TRAINER_SET_BY_GRID`),
    a stage or stage key not in ``stages`` (the kind's stages and the keys each reads), an
    ``evaluation`` key not in ``evaluation``. One ``ValueError`` naming the file and the keys."""
    import inspect

    kind = f"a grid of kind {cfg.get('kind')}"
    problems: list[str] = []
    data = cfg.get("data") or {}
    if data:
        from cmav.data.datamodule import AudioVisualDataModule

        # progress is set by the grid; player_split is read by data_root
        takes = sorted((set(inspect.signature(AudioVisualDataModule.__init__).parameters) - {"self", "progress"})
                       | {"player_split"})  # fmt: skip
        problems += [_not_read("data", k, f"is not an option of the data module (AudioVisualDataModule takes "
                                          f"{', '.join(takes)})", takes) for k in data if k not in takes]  # fmt: skip
    if cfg.get("trainer"):
        import lightning as L

        params = inspect.signature(L.Trainer.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            takes = sorted(set(params) - {"self"})
            for k in cfg["trainer"]:
                if k in TRAINER_SET_BY_GRID:
                    problems.append(f"trainer.{k} is set by the grid ({TRAINER_SET_BY_GRID[k]})")
                elif k not in takes:
                    problems.append(_not_read("trainer", k, "is not an option of lightning.Trainer", takes,
                                              TRAINER_SET_BY_GRID))  # fmt: skip
    for name, stage in (cfg.get("stages") or {}).items():
        if name not in stages:
            why = f"its stages: {', '.join(sorted(stages))}" if stages else "it has no stages"
            problems.append(_not_read("stages", name, f"is not read by {kind} ({why})", sorted(stages)))
            continue
        for k in stage or {}:
            if k not in stages[name]:
                problems.append(_not_read(f"stages.{name}", k, f"is not read by {kind} (stages.{name} takes "
                                                               f"{', '.join(sorted(stages[name]))})",
                                          sorted(stages[name])))  # fmt: skip
    for k in cfg.get("evaluation") or {}:
        if k not in evaluation:
            why = f"evaluation takes {', '.join(sorted(evaluation))}" if evaluation else "it reads no evaluation keys"
            problems.append(_not_read("evaluation", k, f"is not read by {kind} ({why})", sorted(evaluation)))
    if problems:
        more = f" (and {len(problems) - 1} more: {' | '.join(problems[1:])})" if len(problems) > 1 else ""
        raise ValueError(f"{cfg.get('source', 'grid')}: {problems[0]}{more}")


def save_config(cfg: dict, out: Path) -> None:
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))


__all__ = ["DATA_FINGERPRINTS", "append_run", "changed_data", "check_given", "data_fingerprints", "split_fingerprints", "with_data_fingerprints", "check_keys", "clear_results", "key_text", "resolved_roots", "reusable_run", "settings_folder", "check_stage_kwargs", "check_task_kwargs", "check_variant_kwargs", "check_variants", "classifier_stage", "data_root", "datamodule", "evaluated_name", "exclusive", "fit", "inference_conditions", "load_grid", "normalise", "under_inference_conditions", "finite", "mean_sd", "mean_sd_text", "put_mean_sd", "merge", "parse_override", "record", "reusable", "save_config", "seeded", "slug", "stage_key", "stage_model", "trainer",
           "variant_model_kwargs", "variant_names", "write_csv"]  # fmt: skip
