"""The robustness grid (``kind: robustness``, see ``experiments/ablations/robustness.yaml``).

For every variant (a set of augmentation groups, optionally another training data root such as a
varied-render stand-in, or one rendered from its own ``soundfonts`` when missing; optionally its own
front end ``features``, ``model`` options and ``steps``) x seed it trains the sound classifier (:class:`~cmav.tasks.ClassifierTask`,
audio) with that augmentation for ``steps`` batches, then scores it on the validation split of
``data.root`` (in-source: the training font) and of ``cross_source.root`` (the same data rendered
from an independent font; refused when the fonts share recordings). The results folder gets::

    table.md, table.csv   per variant: in-source and cross-source accuracy side by side (mean ± sd
                          over seeds), their gap, the change against the un-augmented variant
    results.json          every run's metrics and both fonts
    runs.jsonl            one line per finished run: rerunning into the folder resumes the grid
    runs/<variant>/seed<k>/<settings>/classifier.ckpt   (<settings>: :func:`~cmav.ablation.grid.settings_folder`)
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from cmav.ablation.grid import (
    DATA_FINGERPRINTS,
    append_run,
    check_variants,
    clear_results,
    data_root,
    datamodule,
    fit,
    key_text,
    logged_runs,
    mean_sd_text,
    merge,
    put_mean_sd,
    reusable_run,
    save_config,
    settings_folder,
    slug,
    split_fingerprints,
    with_data_fingerprints,
    write_csv,
)
from cmav.evaluation.robustness import RENDER_ONLY, check_rerender  # noqa: F401  (one check, shared with evaluate robustness)
from cmav.features.augment import AudioAugmentConfig, audio_augment_config

BASELINE = "none"
"""The variant every other is compared with: no augmentation, the training data as given."""
STAGE_KEYS: dict[str, tuple[str, ...]] = {}
"""A robustness grid has no stages (:func:`~cmav.ablation.grid.check_keys`)."""
EVALUATION_KEYS: tuple[str, ...] = ()
"""... and reads no ``evaluation`` keys."""


def variant_augment(cfg: dict, variant: dict) -> AudioAugmentConfig:
    """The augmentation of a variant: ``groups`` switched on with the grid's strengths (``augment``),
    overridden by the variant's own ``augment``."""
    src = cfg.get("source", "grid")
    strengths = cfg.get("augment") or {}
    groups = variant.get("groups") or []
    missing = sorted(set(groups) - set(strengths))
    if missing:
        raise ValueError(f"{src}: variant {variant.get('name')!r} turns on group(s) {missing} that `augment` "
                         f"does not configure; configured: {sorted(strengths)}")  # fmt: skip
    chosen = {g: strengths[g] for g in groups}
    try:
        return audio_augment_config(merge(chosen, variant.get("augment") or {}))
    except ValueError as exc:
        raise ValueError(f"{src}: variant {variant.get('name')!r}: {exc}") from exc


def cross_source_root(cfg: dict, out: Path) -> Path:
    """``cross_source.root``; null (or missing) renders the training data again from
    ``cross_source.soundfont`` under ``out/data_cross`` (same preset and seed)."""
    from cmav.data.errors import DataError
    from cmav.evaluation.robustness import build_eval_copy, check_independent, data_soundfont, finish_eval_copy
    from cmav.standin.soundfonts import soundfont_record

    cs = cfg.get("cross_source") or {}
    root = cs.get("root")
    if root is not None and Path(root).is_dir():
        train = data_root(cfg, out)
        check_rerender(train, root, cfg.get("source", "grid"))
        font = cs.get("soundfont")
        if font is not None:
            try:
                data_soundfont(root, font)
            except DataError as exc:
                # the root given wins (`--set cross_source.root=...` for another font's copy); the report names its font
                warnings.warn(f"{cfg.get('source', 'grid')}: cross_source.soundfont {font} is not the font the existing "
                              f"cross_source.root was rendered from ({exc}); the grid scores the root's own font",
                              stacklevel=2)  # fmt: skip
                font = None
        finish_eval_copy(train, root, font, progress=False)  # a copy cut off is finished
        return Path(root)
    font = cs.get("soundfont")
    if font is None:
        raise FileNotFoundError(f"{cfg.get('source', 'grid')}: cross-source data {root} does not exist and "
                                "cross_source.soundfont is not set to render it")  # fmt: skip
    target = Path(root) if root is not None else out / "data_cross"
    train = data_root(cfg, out)
    check_independent(data_soundfont(train), soundfont_record(font))  # refuse before rendering anything
    print(f"[ablate] rendering the cross-source copy of {train} from {font} at {target} (once)", flush=True)
    build_eval_copy(train, target, font, progress=False)
    return target


def variant_root(cfg: dict, variant: dict, in_root: Path, out: Path, cross_font: dict[str, Any]) -> Path:
    """The training data of a variant: its ``root``, else ``data.root``. A variant with
    ``soundfonts`` (one source or several: ``.sf2`` files or TiMidity++ ``.cfg`` patch sets) has its
    data rendered from them when ``root`` is missing (``root`` null: under ``out``), with the preset
    and seed of ``data.root``; each source is checked against the evaluation font first, and a
    folder built before from other sources is refused by the builder."""
    from cmav.evaluation.robustness import build_eval_copy, check_independent, read_manifest
    from cmav.standin.soundfonts import soundfont_record

    fonts, root = variant.get("soundfonts"), variant.get("root")
    if not fonts:
        return Path(root or in_root)
    target = Path(root) if root else out / f"data_{slug(variant['name'])}"
    for font in fonts:
        check_independent(soundfont_record(font), cross_font)  # refuse before rendering anything
    if not (read_manifest(target) or {}).get("complete"):
        print(f"[ablate] rendering the training data of {variant['name']!r} at {target} from {', '.join(map(str, fonts))} "
              "(once)", flush=True)  # fmt: skip
    build_eval_copy(in_root, target, list(fonts), progress=False)  # a complete folder with the same sources is kept
    return target


def variant_setup(cfg: dict, variant: dict) -> tuple[dict, dict, int]:
    """``(model kwargs, data options, training batches)`` of a variant: the grid's ``model``,
    ``data`` and ``steps`` with the variant's own ``model`` and ``data`` (merged over: e.g.
    ``{holdout_tail: 0}``), ``features`` (the front end, replacing ``data.features``: e.g.
    ``{kind: harmonic}``) and ``steps``."""
    model = merge(cfg.get("model") or {}, variant.get("model") or {})
    data = merge(cfg["data"], variant.get("data") or {})
    if variant.get("features"):
        data["features"] = variant["features"]
    return model, data, int(variant.get("steps") or cfg["steps"])


def _variant_features(cfg: dict, variant: dict) -> Any:
    """The front-end setting a variant trains on (as :func:`variant_setup` puts it in its data
    options): its own ``features``, else its ``data.features``, else the grid's ``data.features``."""
    if variant.get("features"):
        return variant["features"]
    return merge((cfg.get("data") or {}), variant.get("data") or {}).get("features")


def _check_variant_front_end(cfg: dict, variant: dict) -> None:
    """Refuse a variant whose groups need another front end than the one it trains on (its own
    ``features``, else ``data.features``): the data module would refuse it only when that variant
    comes to train, after the variants before it had trained."""
    from cmav.features import front_end_config
    from cmav.features.augment import check_front_end

    src = cfg.get("source", "grid")
    try:
        check_front_end(variant_augment(cfg, variant), front_end_config(_variant_features(cfg, variant)))
    except ValueError as exc:
        raise ValueError(f"{src}: variant {variant['name']!r}: {exc}") from exc


def _validate(cfg: dict) -> list[dict]:
    src = cfg.get("source", "grid")
    variants = check_variants(cfg)
    names = [v["name"] for v in variants]
    if "augment" in (cfg.get("data") or {}):
        raise ValueError(f"{src}: data.augment is not read by a robustness grid: each variant's augmentation is set "
                         "by its `groups` (switched on with the strengths of the top-level `augment`, and the "
                         "variant's own `augment`)")  # fmt: skip
    if BASELINE not in names:
        raise ValueError(f"{src}: no variant named {BASELINE!r} (no augmentation): every row is compared with it")
    for v in variants:
        variant_augment(cfg, v)  # unknown groups/options: a clear error now, not mid-grid
        if v.get("features") is not None:
            from cmav.features import front_end_config

            try:
                front_end_config(v["features"])
            except ValueError as exc:
                raise ValueError(f"{src}: variant {v['name']!r}: features: {exc}") from exc
        own_data = v.get("data") or {}
        if isinstance(own_data, dict) and "augment" in own_data:
            raise ValueError(f"{src}: variant {v['name']!r}: data.augment is not read here: a robustness variant's "
                             "augmentation is set by its `groups` (with the grid's `augment` strengths and the "
                             "variant's own `augment`)")  # fmt: skip
        if not isinstance(own_data, dict) or {"root", "features"} & set(own_data):
            raise ValueError(f"{src}: variant {v['name']!r}: `data` holds data options other than the root and the "
                             f"front end (the variant's own `root` and `features` keys), got {own_data!r}")  # fmt: skip
        _check_variant_front_end(cfg, v)
        fonts = v.get("soundfonts")
        if fonts is not None and (not isinstance(fonts, list) or not fonts or not all(isinstance(f, str) for f in fonts)):
            raise ValueError(f"{src}: variant {v['name']!r}: `soundfonts` is a list of font paths, got {fonts!r}")
        missing = [f for f in fonts or [] if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"{src}: variant {v['name']!r}: soundfont(s) not found: {', '.join(missing)}")
    return variants


def config_key(cfg: dict, name: str, seed: int, aug: AudioAugmentConfig, train_root: Path, model: dict, steps: int,
               data: dict, x_root: Path) -> dict:  # fmt: skip
    """What one cell's run is trained and scored under: its variant, seed, augmentation, training
    root, model, steps and data settings, the cross-source root, the trainer's settings (precision,
    clipping, accumulation ...) and the torch threads, as :func:`cmav.ablation.audio_repr.config_key`
    but without the device: this grid compares accuracies, and its training times (table.csv's
    ``train_s``) are those of the device each run trained on. A finished run in ``runs.jsonl`` with
    the same key (roots compared resolved, :func:`~cmav.ablation.grid.key_text`) is reused while
    its data are as they were (the fingerprints of the training split and of both validation
    splits, logged beside the key: :data:`~cmav.ablation.grid.DATA_FINGERPRINTS`); runs logged
    before the trainer and threads were keyed are trained again."""
    return {"variant": name, "seed": seed, "augment": aug.to_dict(), "train_root": str(train_root), "model": model,
            "steps": steps, "data": data, "cross_source": str(x_root), "trainer": cfg.get("trainer"),
            "threads": cfg.get("threads")}  # fmt: skip


def finished_runs(logged: list[dict]) -> dict[str, dict]:
    """The runs of ``runs.jsonl`` (``logged``, :func:`~cmav.ablation.grid.logged_runs`) by their
    config key (:func:`config_key`, as :func:`~cmav.ablation.grid.key_text`); the last of a key."""
    return {key_text(r["config_key"]): r for r in logged}


def eval_split_key(dm) -> str:
    """Everything :func:`cmav.data.datasets.open_split` reads a validation split with (layout, image
    size, front end, chunk spec, cache folder) from a variant's data module: variants that agree
    share the opened splits, one with other data settings gets its own."""
    h = dm.hparams
    return json.dumps({"layout": h.layout, "image_size": h.image_size, "features": dm.features.to_dict(),
                       "chunk": dict(h.chunk), "cache_dir": h.cache_dir}, sort_keys=True, default=str)  # fmt: skip


def summarise(runs: list[dict], names: list[str]) -> list[dict]:
    """One row per variant: mean ± sd over seeds, and the change against :data:`BASELINE`."""
    rows = []
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        if not mine:
            continue
        row: dict[str, Any] = {"variant": name, "groups": "+".join(mine[0]["groups"]) or "-",
                               "train_data": mine[0]["train_root"], "n_seeds": len(mine)}  # fmt: skip
        for key in ("in_source", "cross_source", "in_source_balanced", "cross_source_balanced", "train_s"):
            put_mean_sd(row, key, [r[key] for r in mine])
        row["gap_mean"] = _minus(row["in_source_mean"], row["cross_source_mean"])
        rows.append(row)
    base = next((r for r in rows if r["variant"] == BASELINE), None)
    for r in rows:
        r["in_source_vs_none"] = _minus(r["in_source_mean"], base["in_source_mean"]) if base else None
        r["cross_source_vs_none"] = _minus(r["cross_source_mean"], base["cross_source_mean"]) if base else None
    return rows


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


FIELDS = ["variant", "groups", "train_data", "n_seeds", "in_source_mean", "in_source_sd", "in_source_n",
          "cross_source_mean", "cross_source_sd", "cross_source_n", "gap_mean", "in_source_vs_none",
          "cross_source_vs_none", "in_source_balanced_mean", "in_source_balanced_sd", "in_source_balanced_n",
          "cross_source_balanced_mean", "cross_source_balanced_sd", "cross_source_balanced_n", "train_s_mean",
          "train_s_sd", "train_s_n"]  # fmt: skip
"""table.csv's columns: ``<figure>_sd`` is the sample sd (n-1) over seeds, ``<figure>_n`` the seeds
that gave the figure (a diverged run's accuracy is not a number), beside the row's ``n_seeds``."""


def _pm(row: dict, key: str) -> str:
    return mean_sd_text(row[key + "_mean"], row[key + "_sd"], row.get(key + "_n"), row["n_seeds"])


def write_tables(rows: list[dict], out: Path, fonts: dict, note: str = "") -> tuple[Path, Path]:
    """``table.csv`` and ``table.md`` (fonts named above the table, targets below)."""
    from cmav.evaluation.robustness import TARGETS, font_lines

    csv_path, md_path = write_csv(rows, FIELDS, out / "table.csv"), out / "table.md"
    f_in, f_x = fonts["in_source"]["name"], fonts["cross_source"]["name"]
    lines = ["# Cross-source robustness of the sound classifier", "", *font_lines(fonts), "",
             f"| variant | augmentation | training data | in-source acc ({f_in}) | cross-source acc ({f_x}) | gap "
             "| in-source vs none | cross-source vs none |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['variant']} | {r['groups']} | {r['train_data']} | {_pm(r, 'in_source')} | "
                     f"{_pm(r, 'cross_source')} | {_signed(r['gap_mean'])} | {_signed(r['in_source_vs_none'])} | "
                     f"{_signed(r['cross_source_vs_none'])} |")  # fmt: skip
    target = TARGETS["classifier"]
    met = [r["variant"] for r in rows if r["cross_source_mean"] is not None and r["cross_source_mean"] >= target
           and r["in_source_vs_none"] is not None and r["in_source_vs_none"] >= -0.02]  # fmt: skip
    text = "\n".join(lines) + "\n\n"
    text += (f"Target: cross-source accuracy ≥ {target:.2f} with in-source accuracy no more than 0.02 below "
             f"`{BASELINE}`: {'met by ' + ', '.join(met) if met else 'met by no variant'}.\n")  # fmt: skip
    text += ("\nAccuracy: the sound classifier on the **validation** split (players unseen in training), mean ± "
             "sample sd (n-1) over seeds; in-source = the training font's audio, cross-source = the same chunks rendered from the "
             "evaluation font, never seen in training.\n")  # fmt: skip
    if note:
        text += f"\n{note}\n"
    md_path.write_text(text)
    return csv_path, md_path


RESULTS = ("table.md", "table.csv", "results.json")
"""What a finished run writes; the first cell a run trains removes them (:func:`~cmav.ablation.grid.clear_results`).

Shards into one folder each write them again from the runs they have seen."""


def run(cfg: dict, out: Path) -> dict:
    """Run a robustness grid (already loaded, see :func:`cmav.ablation.load_grid`) into ``out``."""
    from cmav.data.datasets import open_split
    from cmav.data.files import sha256_file
    from cmav.evaluation.robustness import check_independent, data_soundfont, score_classifier
    from cmav.tasks import ClassifierTask

    variants = _validate(cfg)
    save_config(cfg, out)
    t_start = time.perf_counter()
    in_root, x_root = data_root(cfg, out), cross_source_root(cfg, out)
    fonts = {"in_source": data_soundfont(in_root), "cross_source": data_soundfont(x_root)}
    check_independent(fonts["in_source"], fonts["cross_source"])
    # Finished runs are appended to runs.jsonl as they end; the file is read again before every cell,
    # so a killed grid resumes and shards of one grid (`--set variants=[...]`) running side by side
    # into one folder skip each other's finished cells.
    log = out / "runs.jsonl"
    runs: list[dict] = []
    evals: dict[str, Any] = {}
    for v in variants:
        name, aug = v["name"], variant_augment(cfg, v)
        train_root = variant_root(cfg, v, in_root, out, fonts["cross_source"])
        check_independent(data_soundfont(train_root), fonts["cross_source"])  # never train on the evaluation source
        model, data, steps = variant_setup(cfg, v)
        # found on disk, not opened: a reused run builds no data module
        contents = split_fingerprints(data.get("layout", "suburmp"),
                                      [(train_root, "train"), (in_root, "validation"), (x_root, "validation")])  # fmt: skip
        for seed in cfg["seeds"]:
            key = config_key(cfg, name, seed, aug, train_root, model, steps, data, x_root)
            logged = logged_runs(log)
            previous = finished_runs(logged).get(key_text(key))
            why = reusable_run(previous, logged, contents) if previous is not None else None
            if previous is not None and why is None:
                runs.append(with_data_fingerprints(log, previous, contents, f"{name} seed {seed}"))
                print(f"[ablate] {name} seed {seed}: done before (runs.jsonl)", flush=True)
                continue
            if why:
                print(f"[ablate] {name} seed {seed}: the run in runs.jsonl is not reused ({why}): training it again",
                      flush=True)  # fmt: skip
            clear_results(out, RESULTS)  # a run cut off from here on leaves no table of the cells before
            dm = datamodule(merge(cfg, {"data": {**data, "root": str(train_root)}}), out, augment=aug)
            opened = eval_split_key(dm)
            if opened not in evals:  # both validation splits, as this variant's classifier sees them
                h = dm.hparams
                evals[opened] = {src: open_split(h.layout, r, "validation", image_size=h.image_size,
                                                 features=dm.features, chunk=dm.chunk, cache_dir=h.cache_dir,
                                                 progress=False).tensors
                                 for src, r in (("in_source", in_root), ("cross_source", x_root))}  # fmt: skip
            task = ClassifierTask(modality="audio", target="label", image_size=dm.hparams.image_size, **model)
            ckpt = out / "runs" / slug(name) / f"seed{seed}" / settings_folder(key) / "classifier.ckpt"
            t0 = time.perf_counter()
            fit(cfg, out, dm, f"robustness/{slug(name)}", seed, task, ckpt, steps)
            train_s = time.perf_counter() - t0
            scores = {src: score_classifier(task, t) for src, t in evals[opened].items()}
            runs.append({
                "config_key": key, "variant": name, "seed": seed, "groups": aug.enabled_groups,
                "train_root": str(train_root), "train_s": train_s, "checkpoint": str(ckpt),
                "checkpoint_sha256": sha256_file(ckpt),
                **{src: s["accuracy"] for src, s in scores.items()},
                **{f"{src}_balanced": s["balanced_accuracy"] for src, s in scores.items()},
                "per_class": {src: s["per_class"] for src, s in scores.items()}, DATA_FINGERPRINTS: contents,
            })  # fmt: skip
            append_run(log, runs[-1])
            print(f"[ablate] {name} seed {seed}: in-source {scores['in_source']['accuracy']:.3f}, "
                  f"cross-source {scores['cross_source']['accuracy']:.3f}", flush=True)  # fmt: skip
    rows = summarise(runs, [v["name"] for v in variants])
    elapsed = time.perf_counter() - t_start
    device = "cuda" if torch.cuda.is_available() and (cfg.get("trainer") or {}).get("accelerator", "auto") in ("auto", "gpu", "cuda") else "cpu"
    own = [f"{v['name']} {v['steps']}" for v in variants if v.get("steps")]
    batches = f"{cfg['steps']} training batches per run" + (f" (a variant's own: {', '.join(own)})" if own else "")
    note = (f"Preset `{cfg['preset']}`, seeds {cfg['seeds']}, {batches}, in-source data "
            f"`{in_root}`, cross-source data `{x_root}`, device `{device}`, {sum(r['train_s'] for r in runs):.0f} s of "
            f"training in all ({elapsed:.0f} s this invocation; finished runs are read from runs.jsonl).")  # fmt: skip
    csv_path, md_path = write_tables(rows, out, fonts, note)
    (out / "results.json").write_text(json.dumps({"config": cfg, "fonts": fonts, "rows": rows, "runs": runs,
                                                  "elapsed_s": elapsed}, indent=2, default=str))  # fmt: skip
    paths = {"table_md": str(md_path), "table_csv": str(csv_path), "results": str(out / "results.json")}
    return {"rows": rows, "runs": runs, "paths": paths, "elapsed_s": elapsed}


__all__ = ["BASELINE", "EVALUATION_KEYS", "FIELDS", "STAGE_KEYS", "check_rerender", "config_key", "cross_source_root", "eval_split_key", "finished_runs", "run", "summarise", "variant_augment", "variant_root", "variant_setup",
           "write_tables"]
