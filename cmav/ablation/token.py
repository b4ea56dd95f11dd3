"""The token-branch comparison (``kind: token``, see ``experiments/ablations/token.yaml``): AudioToken's table.

One table: the audio token vs the same diffusion model prompted with the TEXT label (the upper
line) vs S2I-C, each scored with AIS, IIS, AIC and judge-feature FID
(:func:`cmav.evaluation.token.score_images`) on a class-balanced subset of validation items
(unseen players), mean ± sd over seeds.

Trained once (under the first seed) and then only used: the image judge (AIC, IIS and FID
features), the retrieval model (AIS; its own scratch audio encoder, so AIS does not reuse the
encoder under test) and the offline diffusion model (stage ``diffusion_base``; skipped when
``diffusion.pipeline`` names a local pipeline folder). Per seed: the sound classifier, then the
audio token and S2I-C on its frozen encoder. The image judge, the retrieval model and the sound
classifier can be given instead (``stages.<stage>.ckpt``; one sound classifier for every seed),
and so can S2I-C (``stages.s2i.ckpt``: a finished ``s2i_c.yaml`` run, scored for every seed) and
the audio token (``stages.audio_token.ckpt``: a finished ``audio_token.yaml`` run, scored for
every seed on ``diffusion.pipeline``, which it then needs: the folder it was trained with). With
both given, no sound classifier is trained. A given ``diffusion.pipeline`` is loaded, and its
tokenizer checked for the prompt template's and the classes' words, before anything trains.
The results folder gets::

    table.md, table.csv     mean ± sd over seeds per method and metric
    metrics.png             bar plot with error bars (sd over seeds)
    samples.png             rows = classes: real frame, audio token, text label, S2I-C (first seed)
    results.json            every run's metrics
    runs/<method>/seed<k>/  checkpoints
    judges/, diffusion_base/pipeline/, tb/
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cmav.ablation.grid import (
    check_given,
    check_stage_kwargs,
    check_stages,
    classifier_stage,
    clear_results,
    datamodule,
    exclusive,
    fit,
    record,
    reusable,
    save_config,
    seeded,
    stage_key,
    stage_model,
)
from cmav.ablation.s2i import CLASSIFIER_SET_BY_GRID, Metric, plot_bars, summarise, write_tables

METHODS: tuple[str, ...] = ("audio token", "text label", "S2I-C")
# (key in the table, header, how to read it from score_images' result)
METRICS: list[Metric] = [
    ("ais", "AIS", lambda m: m["AIS"]),
    ("iis", "IIS", lambda m: m["IIS"]),
    ("aic", "AIC", lambda m: m["AIC"]),
    ("fid", "judge-FID", lambda m: m["FID"]),
]
STAGES = ("audio_classifier", "image_judge", "retrieval", "audio_token", "s2i")
# stages whose checkpoint may be given (stages.<stage>.ckpt) instead of trained
GIVEN = ("audio_classifier", "image_judge", "retrieval", "audio_token", "s2i")
STAGE_KEYS = {s: ("steps", "model", "ckpt") if s in GIVEN else ("steps", "model") for s in (*STAGES, "diffusion_base")}
"""The stages a token grid reads, and the keys it reads of each (:func:`~cmav.ablation.grid.check_keys`)."""
EVALUATION_KEYS = ("per_class", "n_negatives", "scheduler", "steps", "guidance_scale", "batch_size")
"""The ``evaluation`` keys a token grid reads."""
RESULTS = ("table.md", "table.csv", "results.json", "metrics.png", "samples.png")
"""The files a finished run writes; a rerun removes them first (:func:`~cmav.ablation.grid.clear_results`)."""


S2I_SET_BY_GRID = ("variant", "seed", "encoder_mode", "audio_encoder_ckpt", "image_size")
"""S2ITask arguments the token grid sets itself: S2I-C (the table's row), each run's seed, the
frozen sound classifier of the seed, data.image_size."""


def _check(cfg: dict) -> None:
    """Refuse, before anything trains, a grid whose stages would fail part-way: a stage missing or
    without ``steps`` (or ``ckpt`` where one may be given), a given checkpoint that does not exist,
    a ``diffusion.pipeline`` that is no pipeline folder, a given audio token without one, or a
    ``stages.<stage>.model`` key that the stage's task does not take or that the grid sets
    (``variant`` and ``seed`` of ``stages.s2i.model`` among them: the row is S2I-C, every seed's)."""
    from cmav.tasks import ClassifierTask, S2ITask
    from cmav.tasks.audio_token import AudioTokenTask
    from cmav.tasks.diffusion import DiffusionBaseTask
    from cmav.tasks.retrieval import RetrievalTask

    src = cfg.get("source", "grid")
    pipeline = (cfg.get("diffusion") or {}).get("pipeline")
    need = [s for s in STAGES if s != "audio_classifier" or _trains_on_the_classifier(cfg)]
    check_stages(cfg, need + ([] if pipeline else ["diffusion_base"]), GIVEN)
    given_token = cfg["stages"]["audio_token"].get("ckpt")
    if given_token and not pipeline:
        from cmav.tasks.audio_token import CHECKPOINT_KEY
        from cmav.tasks.classifier import _load_checkpoint

        info = _load_checkpoint(given_token, mmap=True).get(CHECKPOINT_KEY)
        if info is None:
            raise ValueError(f"{src}: stages.audio_token.ckpt {given_token}: not an AudioTokenTask checkpoint")
        raise ValueError(f"{src}: stages.audio_token.ckpt needs diffusion.pipeline, the folder the token was trained "
                         f"with ({info.get('pipeline')}): without it the grid trains a diffusion model of its own, "
                         "which the token was not trained with")  # fmt: skip
    if int((cfg.get("evaluation") or {}).get("per_class", 1)) < 1:
        raise ValueError(f"{src}: evaluation.per_class must be >= 1")
    for stage in ("audio_classifier", "image_judge"):
        check_stage_kwargs(cfg, stage, ClassifierTask, CLASSIFIER_SET_BY_GRID,
                           "the stage's modality and target, data.image_size")  # fmt: skip
    check_stage_kwargs(cfg, "retrieval", RetrievalTask, ("image_size",), "data.image_size")
    check_stage_kwargs(cfg, "audio_token", AudioTokenTask, ("pipeline", "audio_encoder_ckpt", "image_size"),
                       "the diffusion pipeline, the seed's frozen sound classifier, data.image_size")  # fmt: skip
    check_stage_kwargs(cfg, "s2i", S2ITask, S2I_SET_BY_GRID,
                       "the row is S2I-C, trained under every seed of the grid on that seed's frozen sound classifier; "
                       "data.image_size")  # fmt: skip
    if not pipeline:
        check_stage_kwargs(cfg, "diffusion_base", DiffusionBaseTask, ("image_size", "pipeline_dir"),
                           "data.image_size, the pipeline folder under the results folder")  # fmt: skip
    else:
        _given_pipeline(cfg)


def _given_pipeline(cfg: dict) -> Path:
    """``diffusion.pipeline`` checked to be a pipeline folder (:func:`~cmav.diffusion.check_pipeline_folder`);
    the error names the grid file and the key."""
    from cmav.diffusion import check_pipeline_folder

    try:
        return check_pipeline_folder(cfg["diffusion"]["pipeline"])
    except (OSError, ValueError) as exc:
        raise type(exc)(f"{cfg.get('source', 'grid')}: diffusion.pipeline: {exc}") from None


def _load_given_token(path: str | Path, pipeline: Path, dm):
    """The token given as ``stages.audio_token.ckpt`` (already checked against the data's classes and
    settings, :func:`~cmav.ablation.grid.check_given`), loaded on the grid's ``pipeline`` folder: a
    folder of another text width, or whose tokenizer lacks the template's words, is refused naming
    the key, and its encoder must read the data's features."""
    from cmav.tasks.audio_token import load_audio_token
    from cmav.tasks.common import check_encoder_input

    where = f"stages.audio_token.ckpt {path}"
    try:
        task = load_audio_token(path, pipeline=pipeline)
    except (OSError, ValueError) as exc:
        text = str(exc)
        raise type(exc)(f"stages.audio_token.ckpt {text}" if text.startswith(str(path)) else f"{where}: {text}") from None
    check_encoder_input(task.model.audio_encoder.input_shape, None, dm, where)
    return task


def _check_pipeline_use(cfg: dict, folder: Path, class_names: list[str]) -> None:
    """Refuse, before anything trains, a given pipeline folder that the audio token cannot use: one that
    does not load, or whose tokenizer lacks a word of the prompt template or of a class (the text-label
    prompts and the classification term), as :class:`~cmav.diffusion.AudioTokenModel` would refuse it
    once the judges had trained. The loaded model is dropped: each seed's task loads the folder itself."""
    import inspect

    from cmav.diffusion import PromptConfig, PromptTemplate, label_words, load_pipeline
    from cmav.tasks.audio_token import AudioTokenTask
    from cmav.tasks.common import coerce

    default = inspect.signature(AudioTokenTask).parameters["prompt"].default
    prompt = coerce(PromptConfig, stage_model(cfg, "audio_token").get("prompt") or default)
    try:
        diffusion = load_pipeline(folder)
        PromptTemplate(diffusion.tokenizer, prompt.template, prompt.placeholder, diffusion.max_length, diffusion.source)
        for name in class_names:
            diffusion.word_embedding(label_words(name))
    except (OSError, ValueError) as exc:
        raise type(exc)(f"{cfg.get('source', 'grid')}: diffusion.pipeline: {exc}") from None


def _trains_on_the_classifier(cfg: dict) -> bool:
    """Whether a stage trains on the seed's sound classifier: the audio token or S2I-C, unless given."""
    stages = cfg.get("stages") or {}
    return not all((stages.get(s) or {}).get("ckpt") for s in ("audio_token", "s2i"))


def _once(cfg: dict, out: Path, dm, stage: str, ckpt: Path, make: Callable[[], Any]) -> Path:
    """Train ``stage`` under the first seed unless an earlier run left ``ckpt`` under the same settings."""
    key = stage_key(cfg, stage, cfg["seeds"][0], dm)
    if not reusable(ckpt, key):
        fit(cfg, out, dm, stage, cfg["seeds"][0], make(), ckpt, cfg["stages"][stage]["steps"])
        record(ckpt, key)
    return ckpt


def _pipeline(cfg: dict, out: Path, dm) -> Path:
    """The given pipeline folder, or the offline default trained (once) into ``out/diffusion_base/pipeline``."""
    from cmav.diffusion import check_pipeline_folder
    from cmav.tasks.diffusion import DiffusionBaseTask

    if (cfg.get("diffusion") or {}).get("pipeline"):
        return _given_pipeline(cfg)
    folder = out / "diffusion_base" / "pipeline"
    model = dict(stage_model(cfg, "diffusion_base"))
    size = cfg["data"]["image_size"]
    _once(cfg, out, dm, "diffusion_base", out / "diffusion_base" / "diffusion_base.ckpt",
          lambda: DiffusionBaseTask(image_size=size, pipeline_dir=str(folder), **model))  # fmt: skip
    return check_pipeline_folder(folder)


def verdict(rows: list[dict], target: float = 0.85, gap: float = 0.1) -> str:
    """The issue's target: AIC of the audio token >= ``target`` and within ``gap`` of the text label."""
    by = {r["variant"]: r for r in rows}
    tok, txt = by["audio token"].get("aic_mean"), by["text label"].get("aic_mean")
    if tok is None or txt is None:
        return "AIC target: not computed."
    ok = tok >= target and txt - tok <= gap
    return (f"AIC target (AIC of the audio token >= {target} and within {gap} of the text label): "
            f"{'met' if ok else 'NOT met'} ({tok:.3f} vs {txt:.3f}).")  # fmt: skip


def _eval_items(dm, per_class: int) -> dict[str, Any]:
    from cmav.evaluation.paired import subset_per_class

    t = dm.val.tensors
    index = subset_per_class(t.labels, len(dm.class_names), per_class)
    return {"index": index, "audio": t.audio[index].float(), "label": t.labels[index].long(),
            "image": t.images[index].float().div(127.5).sub(1.0)}  # fmt: skip


def _sample_sheet(items: dict, images: dict[str, torch.Tensor], names: list[str], path: Path, size: int) -> Path:
    from cmav.viz import labelled_grid
    from cmav.viz.tensors import to_uint8_frame

    rows, labels = [], []
    for c, name in enumerate(names):
        where = (items["label"] == c).nonzero().flatten()
        if len(where):
            i = int(where[0])
            rows.append([to_uint8_frame(items["image"][i])] + [to_uint8_frame(images[m][i]) for m in METHODS])
            labels.append(name)
    labelled_grid(rows, labels, ["real", *METHODS], cell_size=max(96, size)).save(path)
    return path


def run(cfg: dict, out: Path) -> dict:
    """Run a token grid (already loaded, see :func:`cmav.ablation.load_grid`) into ``out``: refused
    while another run goes into the same folder (:func:`~cmav.ablation.grid.exclusive`), as every
    call retrains every stage into the same paths."""
    _check(cfg)
    with exclusive(out, "token"):
        return _run(cfg, out)


def _run(cfg: dict, out: Path) -> dict:
    from cmav.evaluation import generate_images, make_generator_fn
    from cmav.evaluation.token import label_images, score_images, token_images
    from cmav.tasks import ClassifierTask, S2ITask, load_image_judge
    from cmav.tasks.audio_token import AudioTokenTask
    from cmav.tasks.classifier import load_sound_classifier
    from cmav.tasks.retrieval import RetrievalTask, load_retrieval
    from cmav.tasks.s2i import load_s2i

    clear_results(out, RESULTS)
    save_config(cfg, out)
    t_start = time.perf_counter()
    dm = datamodule(cfg, out)
    st, size = cfg["stages"], cfg["data"]["image_size"]
    if st["s2i"].get("ckpt"):  # a finished S2I-C run: loadable as one
        load_s2i(st["s2i"]["ckpt"])
    for stage in GIVEN:  # every given checkpoint fits the data, checked before the diffusion model's long stage
        if st[stage].get("ckpt"):
            check_given(st[stage]["ckpt"], dm, stage)
    given_token = None
    if st["audio_token"].get("ckpt"):  # loaded on the grid's pipeline folder (another width is refused)
        given_token = _load_given_token(st["audio_token"]["ckpt"], _given_pipeline(cfg), dm)
    elif (cfg.get("diffusion") or {}).get("pipeline"):  # before the judges train, not once they have
        _check_pipeline_use(cfg, _given_pipeline(cfg), list(dm.class_names))
    ev = cfg.get("evaluation") or {}
    gen = {"steps": int(ev.get("steps", 50)), "scheduler": ev.get("scheduler", "ddim"),
           "guidance_scale": float(ev.get("guidance_scale", 3.0)),
           "batch_size": int(ev.get("batch_size", 64))}  # fmt: skip
    n_neg = int(ev.get("n_negatives", 10))
    device = torch.device("cuda" if torch.cuda.is_available() and (cfg.get("trainer") or {}).get("accelerator") != "cpu"
                          else "cpu")  # fmt: skip

    judges, seed0 = out / "judges", cfg["seeds"][0]
    judge = load_image_judge(classifier_stage(cfg, out, dm, "image_judge", seed0, judges / "image_judge.ckpt", lambda: ClassifierTask(
        modality="image", target="label", image_size=size, **stage_model(cfg, "image_judge")), load_image_judge))  # fmt: skip
    retrieval = load_retrieval(classifier_stage(cfg, out, dm, "retrieval", seed0, judges / "retrieval.ckpt", lambda: RetrievalTask(
        image_size=size, **stage_model(cfg, "retrieval")), load_retrieval))  # fmt: skip
    pipeline = _pipeline(cfg, out, dm)
    items = _eval_items(dm, int(ev.get("per_class", 10)))
    names = list(dm.class_names)
    score_kw = dict(image_judge=judge, retrieval=retrieval, class_names=names, n_negatives=n_neg)

    runs: list[dict] = []
    sheet_images: dict[str, torch.Tensor] = {}
    for seed in cfg["seeds"]:
        clf_ckpt = None
        if _trains_on_the_classifier(cfg):
            clf_ckpt = classifier_stage(cfg, out, dm, "audio_classifier", seed, judges / f"audio_classifier_seed{seed}.ckpt",
                                        lambda: ClassifierTask(modality="audio", target="label", image_size=size,
                                                               **stage_model(cfg, "audio_classifier")),
                                        load_sound_classifier)  # fmt: skip
        run_dir = out / "runs"
        if given_token is not None:  # one token, scored under every seed (as a given S2I-C)
            token, tok_ckpt = given_token, Path(st["audio_token"]["ckpt"])
        else:
            seeded(seed)  # the embedder is drawn in the constructor
            token = AudioTokenTask(pipeline=str(pipeline), audio_encoder_ckpt=str(clf_ckpt), image_size=size,
                                   **stage_model(cfg, "audio_token"))  # fmt: skip
            tok_ckpt = fit(cfg, out, dm, "audio_token", seed, token,
                           run_dir / "audio_token" / f"seed{seed}" / "token.ckpt", st["audio_token"]["steps"])  # fmt: skip
        if st["s2i"].get("ckpt"):
            s2i_ckpt = Path(st["s2i"]["ckpt"])
        else:
            # variant and seed (its negative pairs) are the grid's: _check refuses them in stages.s2i.model
            s2i_kw = {**stage_model(cfg, "s2i"), "variant": "s2i_c", "seed": seed}
            seeded(seed)
            s2i = S2ITask(encoder_mode="frozen", audio_encoder_ckpt=str(clf_ckpt), image_size=size, **s2i_kw)
            s2i_ckpt = fit(cfg, out, dm, "s2i", seed, s2i, run_dir / "s2i_c" / f"seed{seed}" / "s2i.ckpt",
                           st["s2i"]["steps"], gan=s2i.is_gan)  # fmt: skip

        model = token.model.to(device).eval()
        # scored from its checkpoint, trained here or given: the table's figures are the file's
        fn, z_dim, _ = make_generator_fn(load_s2i(s2i_ckpt))
        images = {
            "audio token": token_images(model, items["audio"], seed=seed, **gen),
            "text label": label_images(model, items["label"], seed=seed, **gen),
            "S2I-C": generate_images(fn, items["audio"], z_dim, seed=seed),
        }
        model.cpu()
        ckpts = {"audio token": tok_ckpt, "text label": tok_ckpt, "S2I-C": s2i_ckpt}
        for method in METHODS:
            m = score_images(images[method], items["audio"], items["label"], items["image"], seed=seed, **score_kw)
            runs.append({"variant": method, "seed": seed, "checkpoint": str(ckpts[method]), "metrics": m})
            print(f"[ablate] {method} seed {seed}: AIS {m['AIS']:.3f} IIS {m['IIS']:.3f} AIC {m['AIC']:.3f} "
                  f"judge-FID {m['FID']:.2f}", flush=True)  # fmt: skip
        sheet_images = sheet_images or images

    rows = summarise(runs, list(METHODS), METRICS)
    real = score_images(items["image"], items["audio"], items["label"], items["image"], seed=cfg["seeds"][0],
                        **score_kw)  # fmt: skip
    elapsed = time.perf_counter() - t_start
    first = runs[0]["metrics"]
    explanation = (
        f"\nReal frames of the same items (the scorers' ceilings): AIS {real['AIS']:.3f} (retrieval model), "
        f"AIC {real['AIC']:.3f} (image judge accuracy).\n\n{verdict(rows)}\n\n"
        f"Higher is better except judge-FID. {first['n_items']} validation items (unseen players; up to "
        f"{int(ev.get('per_class', 10))} per class), {n_neg} random other items per image for AIS/IIS "
        "(chance 0.5). AIS: retrieval-model similarity of the image to its own audio beats that to another "
        "item's audio; IIS: judge-feature cosine to its own real frame beats that to another item's frame; "
        f"AIC: the image judge names the audio's instrument. FID: {first['fid_note']}. Mean ± sample sd (n-1) over seeds.\n"
    )
    note = (f"Diffusion: `{pipeline}`, {gen['scheduler']} {gen['steps']} steps, guidance {gen['guidance_scale']:g}. "
            f"Preset `{cfg['preset']}`, seeds {cfg['seeds']}, data `{dm.root}`, {elapsed:.0f} s in all.")  # fmt: skip
    csv_path, md_path = write_tables(rows, out, note=note, metrics=METRICS, explanation=explanation)
    bars = plot_bars(rows, out / "metrics.png", METRICS, "Token branch: mean ± sample sd over seeds (FID on judge features)")
    sheet = _sample_sheet(items, sheet_images, names, out / "samples.png", size)
    results = out / "results.json"
    results.write_text(json.dumps({"config": cfg, "rows": rows, "runs": runs, "real_frames": real,
                                   "elapsed_s": elapsed}, indent=2, default=str))  # fmt: skip
    paths = {"table_md": str(md_path), "table_csv": str(csv_path), "plot": str(bars), "samples": str(sheet),
             "results": str(results), "pipeline": str(pipeline)}  # fmt: skip
    return {"rows": rows, "runs": runs, "paths": paths, "elapsed_s": elapsed}


__all__ = ["EVALUATION_KEYS", "METHODS", "METRICS", "RESULTS", "STAGE_KEYS", "run", "verdict"]
