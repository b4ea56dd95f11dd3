"""The I2S ablation grid (``kind: i2s``, see ``experiments/ablations/i2s.yaml``).

Per seed: the image classifier (its :class:`ImageEncoder` is I2S's frozen condition encoder), then
every variant; the audio judge (a sound classifier trained on real LMS, never used by I2S) is
trained once (first seed) and only scores. Every variant is evaluated with
:func:`cmav.evaluation.evaluate_i2s`. The results folder gets the same files as the S2I grid::

    table.md, table.csv     mean +- sd over seeds per metric and variant
    metrics.png             bar plot with error bars (sd over seeds)
    samples.png             rows = classes; columns = frame | real LMS | one LMS per variant (first seed)
    wavs/<variant>/<class>.wav   Griffin-Lim renderings of those spectrograms at their own level (and wavs/real/)
    results.json            every run's full metrics
    runs/<variant>/seed<k>/ checkpoint, metrics.json, confusion matrices
    judges/, tb/            classifier checkpoints, TensorBoard logs
"""

from __future__ import annotations

import json
import time
from pathlib import Path

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
    save_config,
    seeded,
    slug,
    stage_model,
    under_inference_conditions,
    variant_model_kwargs,
    variant_names,
)
from cmav.ablation.s2i import CLASSIFIER_SET_BY_GRID, Metric, plot_bars, sample_items, summarise, write_tables
from cmav.viz.tensors import lms_picture, to_uint8_frame

METRICS: list[Metric] = [
    ("judged_acc", "judged acc", lambda r: r["judged"]["accuracy"]),
    ("balanced_judged_acc", "balanced judged acc", lambda r: r["judged"]["balanced_accuracy"]),
    ("round_trip_acc", "round-trip acc", lambda r: r["round_trip"]["accuracy"]),
    ("round_trip_kept", "round-trip kept", lambda r: r["round_trip"]["kept_fraction"]),
    ("fid", "judge-FID", lambda r: r["fid_kid"]["fid"]),
    ("kid", "judge-KID", lambda r: r["fid_kid"]["kid_mean"]),
    ("diversity", "diversity", lambda r: r["diversity"]["value"]),
]

EXPLANATION = (
    "\nAll on **validation** (unseen players). Judged acc: the audio judge (a sound classifier trained on real "
    "LMS, never used in I2S training) on one generated LMS per validation frame. Round-trip acc: the same judge "
    "on the LMS recomputed from each generated LMS's Griffin-Lim audio; kept = round-trip / judged. FID/KID are "
    "judge-feature FID/KID (audio-judge features), not Inception FID: compare only within this table. "
    "Diversity: mean pairwise judge-feature distance over noise draws of the same frame. Mean ± sample sd (n-1) over seeds.\n"
)


def _audio_judge(cfg: dict, out: Path, dm) -> Path:
    """The audio judge's checkpoint: ``stages.audio_judge.ckpt`` when given (a sound classifier
    trained elsewhere on the same data, e.g. runs/audio_classifier), else trained here once, on
    its own seed stream (first seed + 1000): not the same network as any sound classifier elsewhere."""
    from cmav.evaluation.i2s import audio_judge
    from cmav.tasks import ClassifierTask

    model = stage_model(cfg, "audio_judge")
    return classifier_stage(
        cfg, out, dm, "audio_judge", cfg["seeds"][0] + 1000, out / "judges" / "audio_judge.ckpt",
        lambda: ClassifierTask(modality="audio", target="label", image_size=cfg["data"]["image_size"], **model),
        audio_judge,
    )  # fmt: skip


def _image_encoder(cfg: dict, out: Path, dm, seed: int) -> Path:
    """The seed's image classifier (the frozen ImageEncoder of every variant): trained here, or
    ``stages.image_encoder.ckpt`` when given (then one encoder for every seed)."""
    from cmav.tasks import ClassifierTask
    from cmav.tasks.classifier import load_image_classifier

    model = stage_model(cfg, "image_encoder")
    return classifier_stage(
        cfg, out, dm, "image_encoder", seed, out / "judges" / f"image_encoder_seed{seed}.ckpt",
        lambda: ClassifierTask(modality="image", target="label", image_model="encoder",
                               image_size=cfg["data"]["image_size"], **model),
        load_image_classifier,
    )  # fmt: skip


def _write_wavs(out: Path, name: str, lms_db: torch.Tensor, names: list[str], dm) -> None:
    """Griffin-Lim renderings of ``lms_db`` at the spectrograms' own level (clipped to full scale,
    with a warning, where they pass it): the variants and the real LMS compare by ear, and a sound
    classifier judges the files on the dB scale it scored the round trip on."""
    import soundfile as sf

    from cmav.features.inversion import clip_to_full_scale, lms_to_audio

    folder = out / "wavs" / slug(name)
    folder.mkdir(parents=True, exist_ok=True)
    n = dm.chunk.samples_at(dm.features.sample_rate)
    waves = lms_to_audio(lms_db, dm.features, n_iter=64, normalise=False, n_samples=n)
    for cls, w in zip(names, clip_to_full_scale(waves, str(folder)), strict=True):
        sf.write(str(folder / f"{cls}.wav"), w.numpy(), dm.features.sample_rate, subtype="PCM_16")


STAGES = ("audio_judge", "image_encoder", "i2s")
"""Stages every I2S grid needs; each with ``steps``, or ``ckpt`` for :data:`GIVEN`."""
GIVEN = ("audio_judge", "image_encoder")
SET_BY_GRID = ("encoder_mode", "image_encoder_ckpt", "image_size")
"""I2STask arguments the runner sets itself (the frozen image encoder, data.image_size)."""
STAGE_KEYS = {s: ("steps", "model", "ckpt") if s in GIVEN else ("steps", "model") for s in STAGES}
"""The stages an I2S grid reads, and the keys it reads of each (:func:`~cmav.ablation.grid.check_keys`)."""
EVALUATION_KEYS = ("n_diversity_draws", "diversity_per_class", "griffin_lim_iters", "inference_conditions")
"""The ``evaluation`` keys an I2S grid reads."""
RESULTS = ("table.md", "table.csv", "results.json", "metrics.png", "samples.png", "wavs")
"""What a finished run writes; a rerun removes it first (:func:`~cmav.ablation.grid.clear_results`)."""


def check(cfg: dict) -> None:
    """Refuse, before anything trains, a grid whose stages or variants would fail part-way (as
    :func:`cmav.ablation.s2i.check` does for S2I): a stage missing or without ``steps`` (or ``ckpt``
    where one may be given), a given checkpoint that does not exist, a variant (or
    ``stages.i2s.model``) key that :class:`~cmav.tasks.I2STask` does not take or the grid sets, a
    ``seed`` in ``stages.i2s.model``, or a ``stages.<classifier>.model`` key that
    :class:`~cmav.tasks.ClassifierTask` does not take."""
    from cmav.tasks import ClassifierTask, I2STask

    check_stages(cfg, list(STAGES), GIVEN)
    check_stage_kwargs(cfg, "audio_judge", ClassifierTask, CLASSIFIER_SET_BY_GRID,
                       "the stage's modality and target, data.image_size")  # fmt: skip
    check_stage_kwargs(cfg, "image_encoder", ClassifierTask, (*CLASSIFIER_SET_BY_GRID, "image_model"),
                       "the stage's modality, target and image model, data.image_size")  # fmt: skip
    check_variant_kwargs(cfg, "i2s", I2STask, SET_BY_GRID, "the frozen image encoder, data.image_size")


def run(cfg: dict, out: Path) -> dict:
    """Run an I2S grid (already loaded, see :func:`cmav.ablation.load_grid`) into ``out``: checked
    first (:func:`check`), and refused while another run goes into the same folder
    (:func:`~cmav.ablation.grid.exclusive`), as every call retrains every stage and variant into the
    same paths."""
    check(cfg)
    with exclusive(out, "i2s"):
        return _run(cfg, out)


def _run(cfg: dict, out: Path) -> dict:
    from cmav.evaluation import evaluate_i2s, make_i2s_fn
    from cmav.tasks import I2STask
    from cmav.viz import labelled_grid

    modes = inference_conditions(cfg)
    names = [evaluated_name(n, m) for n in variant_names(cfg) for m in modes]
    clear_results(out, RESULTS)
    save_config(cfg, out)
    t_start = time.perf_counter()
    dm = datamodule(cfg, out)
    if getattr(dm.features, "kind", "lms") != "lms":
        raise ValueError(f"{cfg.get('source', 'grid')}: I2S generates log-mel spectrograms; data.features must be lms")
    judge = _audio_judge(cfg, out, dm)
    ev = cfg.get("evaluation") or {}
    size = cfg["data"]["image_size"]
    s_audio, s_frames, s_names = sample_items(dm)
    sample_cells: dict[str, torch.Tensor] = {}
    runs: list[dict] = []
    for seed in cfg["seeds"]:
        clf_ckpt = _image_encoder(cfg, out, dm, seed)
        for v in cfg["variants"]:
            name, model_kw = variant_model_kwargs(cfg, "i2s", v, seed)
            seeded(seed)  # a task whose shapes are known draws its weights in the constructor
            task = I2STask(encoder_mode="frozen", image_encoder_ckpt=str(clf_ckpt), image_size=size, **model_kw)
            run_dir = out / "runs" / slug(name) / f"seed{seed}"
            ckpt = fit(cfg, out, dm, f"i2s/{slug(name)}", seed, task, run_dir / "i2s.ckpt", cfg["stages"]["i2s"]["steps"],
                       gan=task.is_gan)  # fmt: skip
            task = task.cpu().eval()
            for row, eval_dir in under_inference_conditions(task, name, modes, run_dir):
                metrics = evaluate_i2s(task, dm, judge, out_dir=eval_dir, seed=seed, ckpt=ckpt,
                                       n_diversity_draws=int(ev.get("n_diversity_draws", 8)),
                                       diversity_per_class=int(ev.get("diversity_per_class", 4)),
                                       griffin_lim_iters=int(ev.get("griffin_lim_iters", 32)))  # fmt: skip
                runs.append({"variant": row, "seed": seed, "checkpoint": str(ckpt), "metrics": metrics})
                if row not in sample_cells:
                    fn, z_dim, _ = make_i2s_fn(task)
                    z = torch.randn(len(s_frames), z_dim, generator=torch.Generator().manual_seed(1234))
                    sample_cells[row] = fn(s_frames, z)
                    _write_wavs(out, row, sample_cells[row], s_names, dm)
                print(f"[ablate] {row} seed {seed}: judged acc {metrics['judged']['accuracy']:.3f}, round trip "
                      f"{metrics['round_trip']['accuracy']:.3f}, judge-FID {metrics['fid_kid']['fid']:.2f}", flush=True)  # fmt: skip

    _write_wavs(out, "real", s_audio, s_names, dm)
    rows = summarise(runs, names, METRICS)
    first = runs[0]["metrics"]
    ceiling = {
        "what": "Real LMS (the ceiling): audio judge",
        "judge_acc": first["judge_on_real"]["accuracy"],
        "judge_bal_acc": first["judge_on_real"]["balanced_accuracy"],
        "extra": f"audio judge on the Griffin-Lim round trip of the real LMS {first['round_trip']['real_accuracy']:.3f}",
    }
    elapsed = time.perf_counter() - t_start
    note = f"Preset `{cfg['preset']}`, seeds {cfg['seeds']}, data `{dm.root}`, {elapsed:.0f} s in all."
    csv_path, md_path = write_tables(rows, out, ceiling, note, metrics=METRICS, explanation=EXPLANATION)
    bars = plot_bars(rows, out / "metrics.png", METRICS,
                     title="I2S ablation: mean ± sample sd over seeds (FID/KID on audio-judge features, not Inception)")  # fmt: skip
    # one dB scale for every spectrogram of the sheet
    low, high = float(s_audio.min()), float(s_audio.max())
    cell = 96
    cells = [[to_uint8_frame(s_frames[r]), lms_picture(s_audio[r], cell, low, high)]
             + [lms_picture(sample_cells[n][r], cell, low, high) for n in names] for r in range(len(s_names))]  # fmt: skip
    sheet = labelled_grid(cells, s_names, ["frame", "real LMS"] + names, cell_size=max(cell, size))
    sheet.save(out / "samples.png")
    paths = {"table_md": str(md_path), "table_csv": str(csv_path), "plot": str(bars),
             "samples": str(out / "samples.png"), "wavs": str(out / "wavs"), "results": str(out / "results.json")}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"config": cfg, "rows": rows, "runs": runs, "ceiling": ceiling,
                                                  "elapsed_s": elapsed}, indent=2, default=str))  # fmt: skip
    return {"rows": rows, "runs": runs, "paths": paths, "elapsed_s": elapsed}


__all__ = ["EVALUATION_KEYS", "METRICS", "RESULTS", "STAGE_KEYS", "check", "run"]
