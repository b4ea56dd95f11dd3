"""The audio representation study (``kind: audio_repr``, see ``experiments/ablations/audio_repr.yaml``).

Chen et al. (2017) chose the log-mel spectrogram and 4 conv layers by training the sound classifier
on several representations of the 0.5-s chunks with different depths and keeping the most accurate
pair. This runner reruns that choice: for every representation x depth x seed it trains the sound
classifier (:class:`~cmav.tasks.ClassifierTask`, audio) for ``steps`` batches and scores it on the
validation split (held-out players). The results folder gets::

    table.md, table.csv   per representation and depth: validation accuracy (plain and
                          class-balanced, mean ± sd over seeds; table.csv's ``_n`` columns: the
                          seeds that gave each figure), parameters, front-end throughput
                          (chunks/s on the current device, timed by every call), training time
    accuracy.png          heat map of mean validation accuracy over representation x depth
    results.json          every run's metrics
    runs.jsonl            one line per finished run: rerunning into the folder resumes the grid
    runs/<repr>/depth<d>/seed<k>/<settings>/classifier.ckpt   (<settings>: :func:`~cmav.ablation.grid.settings_folder`)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmav.ablation.grid import (
    DATA_FINGERPRINTS,
    append_run,
    check_variants,
    clear_results,
    data_fingerprints,
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
    with_data_fingerprints,
    write_csv,
)
from cmav.features.frontend import build_front_end, front_end_config


def front_end_throughput(features: Any, chunk_rate: int, chunk_samples: int, device: str | torch.device,
                         batch_size: int = 256, repeats: int = 3) -> float:  # fmt: skip
    """Chunks per second of a front end on ``device``, from ``chunk_rate`` audio (as the cache calls it).

    The input is noise: every front end's cost is independent of the content.
    """
    fe = build_front_end(features).to(device)
    x = torch.randn(batch_size, 1, chunk_samples, generator=torch.Generator().manual_seed(0)).mul_(0.1).to(device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    with torch.no_grad():
        # warm-up on the timed shape: resampler kernels, librosa's filter bank, the CUDA context and the
        # allocator's blocks for this batch size are all paid before the clock starts
        fe(x, chunk_rate)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fe(x, chunk_rate)
        sync()
    return batch_size * repeats / (time.perf_counter() - t0)


STAGE_KEYS: dict[str, tuple[str, ...]] = {}
"""An audio-representation grid has no stages (:func:`~cmav.ablation.grid.check_keys`)."""
EVALUATION_KEYS: tuple[str, ...] = ()
"""... and reads no ``evaluation`` keys."""


def run_key(representation: str, depth: int, seed: int, config_key: dict) -> tuple:
    """The identity of one cell's run in ``runs.jsonl``: a finished run with the same key is reused
    (the data roots compared resolved, :func:`~cmav.ablation.grid.key_text`)."""
    return representation, depth, seed, key_text(config_key)


def config_key(cfg: dict, features: Any, model: dict, device: str) -> dict:
    """What one cell's run is trained and timed under, beside its representation, depth and seed:
    the front end, the model, the steps, the data settings, the trainer settings (precision, say),
    the torch threads and the device it trained on (``device``, e.g. ``cpu`` or ``cuda (NVIDIA
    H100 ...)``, :func:`resolved_device`: its training time is in the table). The same parts as
    :func:`cmav.ablation.grid.stage_key`'s, which reads a stage's settings from ``stages.<name>``:
    this grid has no stages, and its cells differ in what ``stages`` cannot hold (front end, depth).
    The front end's throughput is not a part: every call times it afresh (``throughput`` settings,
    this device) and reports that for reused runs too. Runs logged before the trainer, threads and
    device were keyed stay readable in ``runs.jsonl``, and are trained again. The data's contents
    are not a part either: their fingerprints are logged beside the key
    (:data:`~cmav.ablation.grid.DATA_FINGERPRINTS`), and a run whose data changed is trained again
    into the same checkpoint file, said so (:func:`~cmav.ablation.grid.reusable_run`)."""
    return {"features": front_end_config(features).to_dict(), "model": model, "steps": int(cfg["steps"]),
            "data": cfg["data"], "trainer": cfg.get("trainer"), "threads": cfg.get("threads"),
            "device": device}  # fmt: skip


def resolved_device(cfg: dict) -> tuple[str, str]:
    """``(device, label)``: where the grid trains and times its front ends (``cuda`` when there is
    one and ``trainer.accelerator`` allows it, else ``cpu``), and the label runs are keyed and the
    note says it by (the GPU's name with ``cuda``: another card trains at another speed)."""
    accelerator = (cfg.get("trainer") or {}).get("accelerator", "auto")
    device = "cuda" if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda") else "cpu"
    return device, f"cuda ({torch.cuda.get_device_name()})" if device == "cuda" else device


def finished_runs(logged: list[dict]) -> dict[tuple, dict]:
    """The runs of ``runs.jsonl`` (``logged``, :func:`~cmav.ablation.grid.logged_runs`) by
    (representation, depth, seed, config key): the last of a key."""
    return {run_key(r["representation"], r["depth"], r["seed"], r["config_key"]): r for r in logged}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _validate(cfg: dict) -> None:
    """Refuse, before any data is built or anything trains, a grid whose keys would fail part-way:
    a ``ValueError`` naming the file and the key. ``representations``: a non-empty list of mappings
    with a unique ``name`` whose folder name (:func:`~cmav.ablation.grid.slug`) is unique too, and
    valid ``features``; ``depths``: distinct integers in [2, 6]; ``steps``: a positive integer;
    ``throughput``: a mapping of positive ``batch_size`` and ``repeats`` (``threads`` and ``seeds``:
    :func:`~cmav.ablation.grid.normalise`)."""
    src = cfg.get("source", "grid")
    reps = check_variants(cfg, "representations")
    for i, r in enumerate(reps):
        try:
            front_end_config(r.get("features"))  # unknown kind/option: a clear ValueError now, not mid-grid
        except (TypeError, ValueError) as e:
            raise ValueError(f"{src}: representations[{i}] ({r['name']}).features: {e}") from None
    depths = cfg.get("depths")
    if (not isinstance(depths, list) or not depths or not all(_positive_int(d) and 2 <= d <= 6 for d in depths)
            or len(set(depths)) != len(depths)):  # fmt: skip
        raise ValueError(f"{src}: depths must be a non-empty list of distinct integers in [2, 6] (conv blocks), "
                         f"got {depths!r}")  # fmt: skip
    if not _positive_int(cfg.get("steps")):
        raise ValueError(f"{src}: steps must be a positive integer (training batches per run), got {cfg.get('steps')!r}")
    tp = cfg.get("throughput")
    if tp is not None and not isinstance(tp, dict):
        raise ValueError(f"{src}: throughput must be a mapping ({{batch_size: 256, repeats: 3}}), got {tp!r}")
    for key in ("batch_size", "repeats"):
        if key in (tp or {}) and not _positive_int(tp[key]):
            raise ValueError(f"{src}: throughput.{key} must be a positive integer, got {tp[key]!r}")


def summarise(runs: list[dict], reps: list[str], depths: list[int]) -> list[dict]:
    """One row per (representation, depth): mean ± sd over seeds."""
    rows = []
    for rep in reps:
        for depth in depths:
            mine = [r for r in runs if r["representation"] == rep and r["depth"] == depth]
            if not mine:
                continue
            row: dict[str, Any] = {"representation": rep, "kind": mine[0]["kind"], "depth": depth,
                                   "n_seeds": len(mine), "input_shape": "x".join(map(str, mine[0]["input_shape"]))}  # fmt: skip
            for key in ("accuracy", "balanced_accuracy", "train_s"):
                put_mean_sd(row, key, [r[key] for r in mine])
            row["parameters"] = mine[0]["parameters"]
            row["front_end_chunks_per_s"] = mine[0]["front_end_chunks_per_s"]
            rows.append(row)
    return rows


FIELDS = ["representation", "kind", "depth", "n_seeds", "input_shape", "accuracy_mean", "accuracy_sd", "accuracy_n",
          "balanced_accuracy_mean", "balanced_accuracy_sd", "balanced_accuracy_n", "parameters",
          "front_end_chunks_per_s", "train_s_mean", "train_s_sd", "train_s_n"]  # fmt: skip
"""table.csv's columns: ``<figure>_n`` is the seeds that gave the figure (a diverged run's accuracy
is not a number), beside the row's ``n_seeds``."""

TIE = 1e-9
"""Mean accuracies closer than this are one value (the same seeds' figures summed in another order)."""


def verdict(rows: list[dict], paper: tuple[str, int] = ("lms", 4)) -> str:
    """Which cell wins, and whether the paper's choice (LMS, 4 blocks) is it. Cells rank by distinct
    mean accuracy (equal ones, within :data:`TIE`, share a rank): a cell that ties with the best
    ties for best, it does not lose by 0.000."""
    rows = [r for r in rows if r["accuracy_mean"] is not None]  # a cell whose every seed failed ranks nowhere
    if not rows:
        return "No cell gave an accuracy."
    top = max(r["accuracy_mean"] for r in rows)
    tied = [r for r in rows if top - r["accuracy_mean"] <= TIE]
    best = tied[0]
    text = (f"Best: **{best['representation']}, {best['depth']} blocks** "
            f"(accuracy {_acc(best)})")  # fmt: skip
    if len(tied) > 1:
        text += ", tied with " + ", ".join(f"**{r['representation']}, {r['depth']} blocks**" for r in tied[1:])
    text += "."
    mine = [r for r in rows if r["kind"] == paper[0] and r["depth"] == paper[1]]
    if not mine:
        return text + " The paper's choice (LMS, 4 blocks) is not in this grid."
    p = mine[0]
    if any(p is r for r in tied):
        return text + (" The paper's choice, LMS with 4 conv blocks, wins here too." if len(tied) == 1 else
                       f" The paper's choice, LMS with 4 conv blocks, ties for best here ({_acc(p)}).")  # fmt: skip
    distinct: list[float] = []
    for value in sorted((r["accuracy_mean"] for r in rows), reverse=True):
        if not distinct or distinct[-1] - value > TIE:
            distinct.append(value)
    rank = 1 + sum(v - p["accuracy_mean"] > TIE for v in distinct)
    gap = top - p["accuracy_mean"]
    within = gap <= max(best["accuracy_sd"] or 0.0, p["accuracy_sd"] or 0.0)  # one seed has no sd to be within
    shared = " (cells of equal accuracy share a rank)" if len(distinct) < len(rows) else ""
    return text + (f" The paper's choice (LMS, 4 blocks) ranks {rank} of {len(distinct)}{shared} with "
                   f"{_acc(p)}, {gap:.3f} below the best"
                   f"{' (within one sd: not a clear loss)' if within else ''}.")  # fmt: skip


def _acc(r: dict, key: str = "accuracy") -> str:
    return mean_sd_text(r[f"{key}_mean"], r[f"{key}_sd"], r.get(f"{key}_n"), r.get("n_seeds"))


def write_tables(rows: list[dict], out: Path, note: str = "", throughput_batch: int = 256) -> tuple[Path, Path]:
    csv_path, md_path = write_csv(rows, FIELDS, out / "table.csv"), out / "table.md"
    lines = ["| representation | depth | input (C×H×W) | val accuracy | balanced val accuracy | parameters "
             "| front end (chunks/s) | train time (s) |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['representation']} | {r['depth']} | {r['input_shape']} | {_acc(r)} "
            f"| {_acc(r, 'balanced_accuracy')} | {r['parameters']:,} "
            f"| {r['front_end_chunks_per_s']:,.0f} | {r['train_s_mean']:.0f} |"
        )  # fmt: skip
    text = "\n".join(lines) + "\n\n" + verdict(rows) + "\n"
    text += ("\nAccuracy: the sound classifier on the **validation** split (players unseen in training), "
             "mean ± sample sd (n-1) over seeds. Parameters: the audio encoder with its 13-way head. Front-end throughput: "
             f"chunks/s from the data set's chunk rate on the device named below, batches of {throughput_batch} "
             "(what the cache pays once per data set).\n")  # fmt: skip
    if note:
        text += f"\n{note}\n"
    md_path.write_text(text)
    return csv_path, md_path


def plot_heatmap(rows: list[dict], reps: list[str], depths: list[int], path: Path) -> Path:
    """Mean validation accuracy over representation (rows) x depth (columns), annotated."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = np.full((len(reps), len(depths)), np.nan)
    for r in rows:
        grid[reps.index(r["representation"]), depths.index(r["depth"])] = r["accuracy_mean"]
    fig = Figure(figsize=(1.3 * len(depths) + 2.5, 0.6 * len(reps) + 1.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0, vmax=1.0,
                   aspect="auto")  # cells fill the figure, whatever the grid's shape
    for i in range(len(reps)):
        for j in range(len(depths)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8,
                        color="black" if grid[i, j] > np.nanmean(grid) else "white")  # fmt: skip
    ax.set_xticks(range(len(depths)))
    ax.set_xticklabels([str(d) for d in depths])
    ax.set_yticks(range(len(reps)))
    ax.set_yticklabels(reps)
    ax.set_xlabel("conv blocks")
    ax.set_title("sound classifier: validation accuracy (mean over seeds)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


RESULTS = ("table.md", "table.csv", "results.json", "accuracy.png")
"""What a finished run writes; the first cell a run trains removes them (:func:`~cmav.ablation.grid.clear_results`).

Shards into one folder each write them again from the runs they have seen."""


def run(cfg: dict, out: Path) -> dict:
    """Run an audio-representation grid (already loaded, see :func:`cmav.ablation.load_grid`) into ``out``."""
    from cmav.data.files import sha256_file
    from cmav.metrics.classification import judged_accuracy
    from cmav.models.encoders import count_parameters
    from cmav.tasks import ClassifierTask

    _validate(cfg)
    save_config(cfg, out)
    t_start = time.perf_counter()
    reps = cfg["representations"]
    depths = [int(d) for d in cfg["depths"]]
    model_cfg = cfg.get("model") or {}
    tp = cfg.get("throughput") or {}
    tp_batch, tp_repeats = int(tp.get("batch_size", 256)), int(tp.get("repeats", 3))
    device, device_label = resolved_device(cfg)
    # Finished runs are appended to runs.jsonl as they end: a killed grid rerun into the same folder
    # resumes after its last finished run (same config) instead of starting over. The file is read
    # again before every cell, so shards of one grid (`--set representations=[...]`) running side by
    # side into one folder skip each other's finished cells.
    log = out / "runs.jsonl"
    runs: list[dict] = []
    for rep in reps:
        name, features = rep["name"], front_end_config(rep.get("features"))
        dm = datamodule(cfg, out, features=features)  # one cache entry per representation
        chunk = dm.chunk
        # timed on every call, reused runs or not: the table's chunks/s are this call's (settings, device)
        speed = front_end_throughput(features, chunk.sample_rate, chunk.n_samples, device,
                                     batch_size=tp_batch, repeats=tp_repeats)  # fmt: skip
        timed = {"batch_size": tp_batch, "repeats": tp_repeats, "device": device_label}
        val = dm.val.tensors
        data = data_fingerprints(dm)  # the splits as this representation's runs train and score on them
        for depth in depths:
            for seed in cfg["seeds"]:
                kw = merge(model_cfg, {"audio_encoder": {"n_blocks": depth}})
                key = config_key(cfg, features, kw, device_label)
                logged = logged_runs(log)
                previous = finished_runs(logged).get(run_key(name, depth, seed, key))
                why = reusable_run(previous, logged, data) if previous is not None else None
                if previous is not None and why is None:
                    previous = with_data_fingerprints(log, previous, data, f"{name} depth {depth} seed {seed}")
                    runs.append({**previous, "front_end_chunks_per_s": speed, "throughput": timed})
                    print(f"[ablate] {name} depth {depth} seed {seed}: done before (runs.jsonl)", flush=True)
                    continue
                if why:
                    print(f"[ablate] {name} depth {depth} seed {seed}: the run in runs.jsonl is not reused ({why}): "
                          "training it again", flush=True)  # fmt: skip
                clear_results(out, RESULTS)  # a run cut off from here on leaves no table of the cells before
                task = ClassifierTask(modality="audio", target="label", image_size=dm.hparams.image_size, **kw)
                ckpt = out / "runs" / slug(name) / f"depth{depth}" / f"seed{seed}" / settings_folder(key) / "classifier.ckpt"
                t0 = time.perf_counter()
                fit(cfg, out, dm, f"audio_repr/{slug(name)}/depth{depth}", seed, task, ckpt, int(cfg["steps"]))
                train_s = time.perf_counter() - t0
                report = judged_accuracy(task.model, val.audio.float(), val.labels, list(dm.class_names), batch_size=256)
                runs.append({
                    "config_key": key, "representation": name, "kind": features.kind, "depth": depth, "seed": seed,
                    "features": features.to_dict(), "input_shape": list(val.audio.shape[1:]),
                    "accuracy": report.accuracy, "balanced_accuracy": report.balanced_accuracy,
                    "parameters": count_parameters(task.model), "front_end_chunks_per_s": speed,
                    "throughput": timed, "train_s": train_s, "checkpoint": str(ckpt),
                    "checkpoint_sha256": sha256_file(ckpt), "per_class": report.to_dict()["per_class"],
                    DATA_FINGERPRINTS: data,
                })  # fmt: skip
                append_run(log, runs[-1])
                print(f"[ablate] {name} depth {depth} seed {seed}: val acc {report.accuracy:.3f} "
                      f"(balanced {report.balanced_accuracy:.3f})", flush=True)  # fmt: skip
    names = [r["name"] for r in reps]
    rows = summarise(runs, names, depths)
    elapsed = time.perf_counter() - t_start
    note = (f"Preset `{cfg['preset']}`, seeds {cfg['seeds']}, {cfg['steps']} training batches per run, "
            f"data `{dm.root}`, device `{device_label}`, {elapsed:.0f} s in all.")  # fmt: skip
    csv_path, md_path = write_tables(rows, out, note, throughput_batch=tp_batch)
    plot = plot_heatmap(rows, names, depths, out / "accuracy.png")
    (out / "results.json").write_text(json.dumps({"config": cfg, "rows": rows, "runs": runs, "elapsed_s": elapsed,
                                                  "verdict": verdict(rows)}, indent=2, default=str))  # fmt: skip
    paths = {"table_md": str(md_path), "table_csv": str(csv_path), "plot": str(plot), "results": str(out / "results.json")}
    return {"rows": rows, "runs": runs, "paths": paths, "elapsed_s": elapsed}


__all__ = ["EVALUATION_KEYS", "FIELDS", "STAGE_KEYS", "config_key", "finished_runs", "front_end_throughput", "plot_heatmap", "resolved_device", "run", "run_key",
           "summarise", "verdict", "write_tables"]
