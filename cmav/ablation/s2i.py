"""The S2I ablation grid (``kind: s2i``, see ``experiments/ablations/s2i.yaml``).

Per seed: the sound classifier, then every variant with its encoder frozen; the image judge and
player judge are trained once (first seed) and only score. Every variant is evaluated with
:func:`cmav.evaluation.evaluate_s2i`. The results folder gets::

    table.md, table.csv     mean +- sd over seeds per metric and variant
    metrics.png             bar plot with error bars (sd over seeds)
    samples.png             rows = classes, columns = real frame + one sample per variant (first seed)
    results.json            every run's full metrics
    runs/<variant>/seed<k>/ checkpoint, metrics.json, confusion matrices
    judges/, tb/            judge/classifier checkpoints, TensorBoard logs
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmav.ablation.grid import (
    check_stage_kwargs,
    check_stages,
    check_variant_kwargs,
    classifier_stage,
    clear_results,
    datamodule,
    evaluated_name,
    exclusive,
    fit,
    inference_conditions,
    mean_sd_text,
    put_mean_sd,
    save_config,
    seeded,
    slug,
    stage_model,
    under_inference_conditions,
    variant_model_kwargs,
    variant_names,
    write_csv,
)
from cmav.viz.tensors import to_uint8_frame

# (key in the table, header, how to read it from evaluate_s2i's result)
METRICS: list[tuple[str, str, Any]] = [
    ("judged_acc", "judged acc", lambda r: r["judged"]["accuracy"]),
    ("balanced_judged_acc", "balanced judged acc", lambda r: r["judged"]["balanced_accuracy"]),
    ("judged_acc_holdout", "judged acc (seen players)", lambda r: (r.get("judged_holdout") or {}).get("accuracy")),
    ("fid", "judge-FID", lambda r: r["fid_kid"]["fid"]),
    ("kid", "judge-KID", lambda r: r["fid_kid"]["kid_mean"]),
    ("diversity", "diversity", lambda r: r["diversity"]["value"]),
    ("player_consistency", "player consistency", lambda r: (r.get("player") or {}).get("accuracy")),
]


def _judges(cfg: dict, out: Path, dm) -> tuple[Path, Path | None]:
    """The image judge and the player judge (when the data has a held-out tail): given as
    ``stages.<judge>.ckpt``, or trained once here with the first seed."""
    from cmav.tasks import ClassifierTask
    from cmav.tasks.classifier import load_image_judge

    seed = cfg["seeds"][0]
    size = cfg["data"]["image_size"]
    stages = cfg["stages"]
    image = classifier_stage(
        cfg, out, dm, "image_judge", seed, out / "judges" / "image_judge.ckpt",
        lambda: ClassifierTask(modality="image", target="label", image_size=size, **stage_model(cfg, "image_judge")),
        load_image_judge,
    )  # fmt: skip
    player: Path | None = None
    shortfall = dm.holdout_shortfall()
    if "player_judge" in stages and shortfall:
        print(f"[ablate] no player judge, so no player consistency: {shortfall}", flush=True)
    elif "player_judge" in stages:
        player = classifier_stage(
            cfg, out, dm, "player_judge", seed, out / "judges" / "player_judge.ckpt",
            lambda: ClassifierTask(modality="image", target="track", image_size=size,
                                   **stage_model(cfg, "player_judge")),
            lambda path: load_image_judge(path, target="track"),
        )  # fmt: skip
    return image, player


def _sound_classifier(cfg: dict, out: Path, dm, seed: int) -> Path:
    """The seed's sound classifier (the frozen audio encoder of every variant): trained here, or
    ``stages.audio_classifier.ckpt`` when given (one classifier for every seed: the spread over
    seeds is then the GAN's alone)."""
    from cmav.tasks import ClassifierTask
    from cmav.tasks.classifier import load_sound_classifier

    model = stage_model(cfg, "audio_classifier")
    return classifier_stage(
        cfg, out, dm, "audio_classifier", seed, out / "judges" / f"audio_classifier_seed{seed}.ckpt",
        lambda: ClassifierTask(modality="audio", target="label", image_size=cfg["data"]["image_size"], **model),
        load_sound_classifier,
    )  # fmt: skip


def sample_items(dm) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The middle validation item of every class: (audio, real frame in [-1, 1], class names)."""
    t = dm.val.tensors
    names = list(dm.class_names)
    rows, present = [], []
    for c in range(len(names)):
        idx = (t.labels == c).nonzero().flatten()
        if len(idx):
            rows.append(int(idx[len(idx) // 2]))
            present.append(names[c])
    index = torch.tensor(rows)
    return t.audio[index].float(), t.images[index].float().div(127.5).sub(1.0), present


Metric = tuple[str, str, Any]


def summarise(runs: list[dict], variants: list[str], metrics: list[Metric] = METRICS) -> list[dict]:
    """Per variant: mean and sd (ddof 1; none for one seed) over seeds of every metric."""
    rows = []
    for name in variants:
        mine = [r for r in runs if r["variant"] == name]
        row: dict[str, Any] = {"variant": name, "n_seeds": len(mine)}
        for key, _, get in metrics:
            put_mean_sd(row, key, [get(r["metrics"]) for r in mine])
        rows.append(row)
    return rows


S2I_EXPLANATION = (
    "\nSplits: judged acc, FID/KID and diversity on **validation** (unseen players); judged acc (seen "
    "players) and player consistency on **train_holdout** (time-held-out end of each train track). FID/KID are judge-feature FID/KID "
    "(image-judge features), not Inception FID: compare only within this table. Diversity: mean pairwise "
    "judge-feature distance over noise draws of the same audio. Mean ± sample sd (n-1) over seeds.\n"
)


def write_tables(rows: list[dict], out: Path, ceiling: dict | None = None, note: str = "",
                 metrics: list[Metric] = METRICS, explanation: str = S2I_EXPLANATION) -> tuple[Path, Path]:  # fmt: skip
    """``table.csv`` (per metric: mean, sd and ``_n``, the seeds that gave a number, beside the row's
    ``n_seeds``) and ``table.md`` (mean ± sd, "(n of N seeds)" where fewer gave one, the ``ceiling``
    line, the ``explanation`` of splits and metrics, and ``note``)."""
    csv_path, md_path = out / "table.csv", out / "table.md"
    fields = ["variant", "n_seeds"] + [f"{k}_{s}" for k, _, _ in metrics for s in ("mean", "sd", "n")]
    write_csv(rows, fields, csv_path)

    def cell(r: dict, key: str) -> str:
        digits = 2 if key == "fid" else 4 if key == "kid" else 3
        return mean_sd_text(r.get(f"{key}_mean"), r.get(f"{key}_sd"), r.get(f"{key}_n", r["n_seeds"]), r["n_seeds"],
                            digits)  # fmt: skip

    lines = ["| variant | seeds | " + " | ".join(h for _, h, _ in metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['variant']} | {r['n_seeds']} | " + " | ".join(cell(r, k) for k, _, _ in metrics) + " |")
    text = "\n".join(lines) + "\n"
    if ceiling:
        what = ceiling.get("what", "Real frames (the judges' ceiling): image judge")
        text += (f"\n{what} accuracy {ceiling['judge_acc']:.3f} "
                 f"(balanced {ceiling['judge_bal_acc']:.3f}) on validation")  # fmt: skip
        if ceiling.get("player_acc") is not None:
            text += f"; player judge accuracy {ceiling['player_acc']:.3f} on train_holdout"
        if ceiling.get("extra"):
            text += f"; {ceiling['extra']}"
        text += ".\n"
    text += explanation
    if note:
        text += f"\n{note}\n"
    md_path.write_text(text)
    return csv_path, md_path


def plot_bars(rows: list[dict], path: Path, metrics: list[Metric] = METRICS,
              title: str = "S2I ablation: mean ± sample sd over seeds (FID/KID on judge features, not Inception)") -> Path:  # fmt: skip
    """One panel per metric: a bar per variant, error bars = sd over seeds. A variant with no mean
    (no seed gave a number) gets no bar but "n/a" (a 0 bar would read as a figure, the best one on a
    lower-is-better panel), one with no sd (one seed) no error bar, and a variant whose figure fewer
    than all its seeds gave says "(n/N)" under its bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(metrics)
    cols = 3
    fig = Figure(figsize=(4.2 * cols, 3.6 * math.ceil(n / cols)))
    FigureCanvasAgg(fig)
    names = [r["variant"] for r in rows]
    x = np.arange(len(names))
    for i, (key, header, _) in enumerate(metrics):
        ax = fig.add_subplot(math.ceil(n / cols), cols, i + 1)
        means = [r.get(f"{key}_mean") for r in rows]
        sds = [r.get(f"{key}_sd") for r in rows]
        have = [j for j, m in enumerate(means) if m is not None]
        if have:
            ax.bar(x[have], [means[j] for j in have], color=[f"C{j}" for j in have])
        spread = [j for j in have if sds[j] is not None]
        if spread:
            ax.errorbar(x[spread], [means[j] for j in spread], yerr=[sds[j] for j in spread], fmt="none",
                        ecolor="black", capsize=4)  # fmt: skip
        for j in sorted(set(range(len(names))) - set(have)):
            ax.text(x[j], 0.02, "n/a", transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7,
                    color="0.4")  # fmt: skip
        labels = []
        for r in rows:
            got, of = r.get(f"{key}_n"), r.get("n_seeds")
            labels.append(f"{r['variant']} ({got}/{of})" if got is not None and of is not None and got < of else r["variant"])
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(header + (" (lower=better)" if key in ("fid", "kid") else ""), fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


STAGES = ("audio_classifier", "image_judge", "s2i")
"""Stages every S2I grid needs (``player_judge`` is optional); each with ``steps``, or ``ckpt`` for :data:`GIVEN`."""
GIVEN = ("audio_classifier", "image_judge", "player_judge")
SET_BY_GRID = ("encoder_mode", "audio_encoder_ckpt", "image_size")
"""S2ITask arguments the runner sets itself (the frozen sound classifier, data.image_size)."""
STAGE_KEYS = {s: ("steps", "model", "ckpt") if s in GIVEN else ("steps", "model") for s in (*STAGES, "player_judge")}
"""The stages an S2I grid reads, and the keys it reads of each (:func:`~cmav.ablation.grid.check_keys`)."""
EVALUATION_KEYS = ("n_diversity_draws", "diversity_per_class", "inference_conditions")
"""The ``evaluation`` keys an S2I grid reads."""
RESULTS = ("table.md", "table.csv", "results.json", "metrics.png", "samples.png")
"""The files a finished run writes; a rerun removes them first (:func:`~cmav.ablation.grid.clear_results`)."""


CLASSIFIER_SET_BY_GRID = ("modality", "target", "image_size")
"""ClassifierTask arguments a grid sets itself for its classifier stages (judges, sound classifier)."""


def check(cfg: dict) -> None:
    """Refuse, before anything trains, a grid whose stages or variants would fail part-way: a stage
    missing or without ``steps`` (or ``ckpt`` where one may be given), a given checkpoint that does
    not exist, a variant (or ``stages.s2i.model``) key that :class:`~cmav.tasks.S2ITask` does not take
    or the grid sets, a ``seed`` in ``stages.s2i.model``, or a ``stages.<classifier>.model`` key that
    :class:`~cmav.tasks.ClassifierTask` does not take."""
    from cmav.tasks import ClassifierTask, S2ITask

    optional = ["player_judge"] if "player_judge" in (cfg.get("stages") or {}) else []
    check_stages(cfg, [*STAGES, *optional], GIVEN)
    for stage in ("audio_classifier", "image_judge", *optional):
        check_stage_kwargs(cfg, stage, ClassifierTask, CLASSIFIER_SET_BY_GRID, "the stage's modality and target, data.image_size")
    check_variant_kwargs(cfg, "s2i", S2ITask, SET_BY_GRID, "the frozen sound classifier, data.image_size")


def run(cfg: dict, out: Path) -> dict:
    """Run an S2I grid (already loaded, see :func:`cmav.ablation.load_grid`) into ``out``: refused
    while another run goes into the same folder (:func:`~cmav.ablation.grid.exclusive`), as every
    call retrains every stage and variant into the same paths."""
    check(cfg)
    with exclusive(out, "s2i"):
        return _run(cfg, out)


def _run(cfg: dict, out: Path) -> dict:
    from cmav.evaluation import evaluate_s2i, make_generator_fn
    from cmav.metrics.classification import judged_accuracy
    from cmav.tasks import S2ITask
    from cmav.tasks.classifier import load_sound_classifier
    from cmav.viz import labelled_grid

    modes = inference_conditions(cfg)
    names = [evaluated_name(n, m) for n in variant_names(cfg) for m in modes]
    clear_results(out, RESULTS)
    save_config(cfg, out)
    t_start = time.perf_counter()
    dm = datamodule(cfg, out)
    image_judge, player_judge = _judges(cfg, out, dm)
    ev = cfg.get("evaluation") or {}
    size = cfg["data"]["image_size"]
    variants = cfg["variants"]
    s_audio, s_real, s_names = sample_items(dm)
    sample_cells: dict[str, torch.Tensor] = {}
    runs: list[dict] = []
    clf_acc: list[float] = []
    for seed in cfg["seeds"]:
        clf_ckpt = _sound_classifier(cfg, out, dm, seed)
        clf_acc.append(judged_accuracy(load_sound_classifier(clf_ckpt).model, dm.val.tensors.audio.float(),
                                       dm.val.tensors.labels, list(dm.class_names), batch_size=256).accuracy)  # fmt: skip
        for v in variants:
            name, model_kw = variant_model_kwargs(cfg, "s2i", v, seed)
            seeded(seed)  # G and D are drawn in the constructor
            task = S2ITask(encoder_mode="frozen", audio_encoder_ckpt=str(clf_ckpt), image_size=size, **model_kw)
            run_dir = out / "runs" / slug(name) / f"seed{seed}"
            ckpt = fit(cfg, out, dm, f"s2i/{slug(name)}", seed, task, run_dir / "s2i.ckpt", cfg["stages"]["s2i"]["steps"],
                       gan=task.is_gan)  # fmt: skip
            task = task.cpu().eval()
            for row, eval_dir in under_inference_conditions(task, name, modes, run_dir):
                metrics = evaluate_s2i(task, dm, image_judge, player_judge, out_dir=eval_dir, seed=seed,
                                       n_diversity_draws=int(ev.get("n_diversity_draws", 8)),
                                       diversity_per_class=int(ev.get("diversity_per_class", 4)))  # fmt: skip
                runs.append({"variant": row, "seed": seed, "checkpoint": str(ckpt), "metrics": metrics})
                if row not in sample_cells:
                    fn, z_dim, _ = make_generator_fn(task)
                    z = torch.randn(len(s_audio), z_dim, generator=torch.Generator().manual_seed(1234))
                    sample_cells[row] = fn(s_audio, z)
                print(f"[ablate] {row} seed {seed}: judged acc {metrics['judged']['accuracy']:.3f}, "
                      f"judge-FID {metrics['fid_kid']['fid']:.2f}", flush=True)  # fmt: skip

    rows = summarise(runs, names)
    first = runs[0]["metrics"]
    ceiling = {
        "judge_acc": first["judge_on_real"]["accuracy"],
        "judge_bal_acc": first["judge_on_real"]["balanced_accuracy"],
        "player_acc": (first.get("player") or {}).get("judge_on_real_accuracy"),
        "sound_classifier_acc": clf_acc,
        "extra": "sound classifier (the frozen audio encoder) accuracy "
        + ", ".join(f"{a:.3f}" for a in clf_acc) + f" on validation (seeds {cfg['seeds']})",
    }
    elapsed = time.perf_counter() - t_start
    note = f"Preset `{cfg['preset']}`, seeds {cfg['seeds']}, data `{dm.root}`, {elapsed:.0f} s in all."
    csv_path, md_path = write_tables(rows, out, ceiling, note)
    bars = plot_bars(rows, out / "metrics.png")
    cells = [[to_uint8_frame(s_real[r])] + [to_uint8_frame(sample_cells[n][r]) for n in names] for r in range(len(s_names))]
    sheet = labelled_grid(cells, s_names, ["real"] + names, cell_size=max(128, size))  # room for the labels
    sheet.save(out / "samples.png")
    paths = {"table_md": str(md_path), "table_csv": str(csv_path), "plot": str(bars),
             "samples": str(out / "samples.png"), "results": str(out / "results.json")}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"config": cfg, "rows": rows, "runs": runs, "ceiling": ceiling,
                                                  "elapsed_s": elapsed}, indent=2, default=str))  # fmt: skip
    return {"rows": rows, "runs": runs, "paths": paths, "elapsed_s": elapsed}


__all__ = ["CLASSIFIER_SET_BY_GRID", "EVALUATION_KEYS", "METRICS", "RESULTS", "STAGE_KEYS", "Metric", "check", "plot_bars", "run", "sample_items", "summarise", "write_tables"]
