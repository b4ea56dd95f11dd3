"""``cmav ablate | generate | bench | evaluate``: experiment grids, generation from a wav, timing, scoring."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cmav.cli.paths import input_file
from cmav.cli.retrieval import frame_side, positive_int
from cmav.data.errors import DataError
from cmav.metrics.serialise import format_number
from cmav.models.condition_bank import INFERENCE_CONDITIONS


def add_parser(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("ablate", help="train and evaluate an ablation grid (experiments/ablations/*.yaml)")
    a.add_argument("config", help="grid YAML, e.g. experiments/ablations/s2i.yaml")
    a.add_argument("--preset", default=None, help="a preset of the YAML merged over it, e.g. quick (CPU, tiny data)")
    a.add_argument("-o", "--output", default=None, help="results folder (default: results/ablation_<name>_<preset>)")
    a.add_argument("--root", default=None, help="data set folder (overrides the YAML's data.root)")
    a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a grid key after the preset, VALUE as YAML; repeatable, e.g. --set seeds=[0] "
                   "--set 'representations=[{name: STFT, features: {kind: stft}}]'. audio_repr and robustness "
                   "grids keep finished runs in the folder's runs.jsonl and reuse them under the same settings, so "
                   "shards of one grid (--set representations=... / variants=...) can run side by side into one "
                   "folder and a last full run tabulates them. s2i, i2s and token grids reuse only judges, "
                   "classifiers and the token grid's retrieval and diffusion base models trained under the same "
                   "settings, and retrain every variant on every call: run one "
                   "at a time per folder (they refuse a second run into a folder in use)")  # fmt: skip
    a.set_defaults(func=_ablate, output_folder=True)

    g = sub.add_parser("generate", help="images from a sound (S2I or audio-token checkpoint) or sound from a frame (I2S)")
    g.add_argument("--ckpt", required=True, help="S2I, I2S or audio-token checkpoint (the kind is read from it)")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="S2I: audio file (one chunk, 0.5 s by default; a longer clip is cut to the checkpoint's first chunk)")
    src.add_argument("--image", help="I2S: a frame (jpg/png; its centre square is used)")
    g.add_argument("-n", type=int, default=None, help="samples to draw with different noise (default: 4 images, 1 wav)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("-o", "--output", default=None,
                   help="S2I: png (a grid when n > 1; default generated.png); I2S: wav or flac (<stem>_<k>.wav when "
                   "n > 1; default generated.wav); for both, a folder (existing, or ending in /) gets the default name "
                   "inside it; audio token: a folder (sample_00.png ... and grid.png; default generated)")  # fmt: skip
    g.add_argument("--normalise", action="store_true",
                   help="I2S: scale each clip to a peak of 0.9 (for listening). Without it the sound keeps the "
                        "generated spectrogram's level, as the round trip of `cmav evaluate` does, so a sound "
                        "classifier judges the file on the same dB scale (samples beyond full scale are clipped, "
                        "with a note)")  # fmt: skip
    g.add_argument("--inference-condition", choices=INFERENCE_CONDITIONS, default=None,
                   help="S2I/I2S: the generator's condition: the input's own (the paper), the nearest training "
                        "condition, or the mean training condition of the predicted class (default: the checkpoint's)")  # fmt: skip
    # the diffusion options default to None so that one given to an S2I/I2S checkpoint is refused, not ignored
    g.add_argument("--scheduler", default=None, choices=["ddim", "ddpm", "pndm", "euler", "dpm"],
                   help=f"audio-token checkpoints: the diffusion sampler (default: {TOKEN_DEFAULTS['scheduler']})")  # fmt: skip
    g.add_argument("--steps", type=int, default=None,
                   help=f"audio-token checkpoints: denoising steps (default: {TOKEN_DEFAULTS['steps']})")  # fmt: skip
    g.add_argument("--guidance", type=float, default=None,
                   help=f"audio-token checkpoints: classifier-free guidance scale (default: {TOKEN_DEFAULTS['guidance']})")  # fmt: skip
    g.add_argument("--pipeline", default=None,
                   help="audio-token checkpoints: diffusion pipeline folder (default: the one it was trained with)")
    g.set_defaults(func=_generate)

    b = sub.add_parser("bench", help="time a training step (images/s): Lightning path vs bare PyTorch loop")
    b.add_argument("what", choices=["s2i"], help="what to time (s2i: the S2I-C step)")
    b.add_argument("--root", default="data/default", help="data set folder (default: %(default)s)")
    b.add_argument("--steps", type=positive_int, default=20, help="timed steps after warm-up (default: %(default)s)")
    b.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: %(default)s)")
    b.add_argument("--batch-size", type=positive_int, default=64)
    b.add_argument("--image-size", type=frame_side, default=64, help="frame side in pixels, at least 8 (default: %(default)s)")
    b.add_argument("--channels", type=positive_int, default=64, help="G and D base channels (default: %(default)s)")
    b.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ... (default: %(default)s)")
    b.add_argument("--bf16", action="store_true", help="bf16 autocast (Lightning: precision='bf16-mixed')")
    b.add_argument("--channels-last", action="store_true", help="channels-last memory format for G, D and images")
    b.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads, >= 1 (default: torch's); 1 gives stable CPU timings on a busy machine")
    b.add_argument("-o", "--output", default=None, help="write the result as JSON here")
    b.set_defaults(func=_bench)

    e = sub.add_parser("evaluate", help="score an S2I or I2S checkpoint (judged accuracy, judge-feature FID/KID, "
                       "diversity; I2S also the Griffin-Lim round trip)")  # fmt: skip
    e.add_argument("--ckpt", required=True, help="S2ITask or I2STask checkpoint (the kind is read from it)")
    e.add_argument("--image-judge", default=None, help="S2I: image-judge ClassifierTask checkpoint")
    e.add_argument("--audio-judge", default=None,
                   help="I2S: a sound-classifier checkpoint trained on real LMS (not the one I2S used)")  # fmt: skip
    e.add_argument("--player-judge", default=None, help="player-judge checkpoint (target='track')")
    # the data settings default to the checkpoint's own, so that its held-out tails are the ones it
    # never trained on and a paired-layout model is read from its layout
    e.add_argument("--root", default=None, help="the data (default: the root the checkpoint was trained on)")
    e.add_argument("--layout", default=None, choices=["suburmp", "paired"], help="default: the checkpoint's")
    e.add_argument("--image-size", type=frame_side, default=None,
                   help="frame size of the data, at least 8 (default: the checkpoint's)")
    e.add_argument("--holdout-tail", type=float, default=None,
                   help="default: the checkpoint's; a tail reaching into the frames the generator (or a judge) "
                        "trained on is refused")  # fmt: skip
    e.add_argument("--holdout-gap-ms", type=int, default=None,
                   help="held-out chunks starting less than this after a trained one share its audio and are not "
                        "scored (default: the checkpoint's, else the chunk length; 0 keeps them)")  # fmt: skip
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--inference-condition", choices=INFERENCE_CONDITIONS, default=None,
                   help="the generator's condition: the input's own (the paper), the nearest training condition(s), "
                        "or the mean training condition of the predicted class (default: the checkpoint's); the "
                        "training conditions come from the checkpoint, or from --root's train split for older ones")  # fmt: skip
    e.add_argument("--inference-neighbours", type=int, default=None,
                   help="with --inference-condition nearest: how many nearest training conditions to average "
                        "(default: the checkpoint's, 1)")  # fmt: skip
    e.add_argument("--probe-conditions", action="store_true",
                   help="I2S: also judge the validation frames with their conditions swapped for train ones "
                        "(nearest item, k-nearest mean, predicted-class mean) and the train tails: does G fail on "
                        "new players, or on their conditions? (condition_probe.json)")  # fmt: skip
    e.add_argument("-o", "--output", default=None,
                   help="folder for metrics.json, the confusion pngs and condition_probe.json (default: "
                        "results/evaluate/<run>, named after the checkpoint's run folder: runs/s2i_c/checkpoints/"
                        "last.ckpt -> results/evaluate/s2i_c). A folder holding another checkpoint's results is "
                        "refused; this command's earlier outputs there are replaced, and those it does not write "
                        "again (condition_probe.json without --probe-conditions) removed")  # fmt: skip
    e.set_defaults(func=_evaluate, output_folder=True)


def _ablate(args: argparse.Namespace) -> int:
    from cmav.ablation import run_ablation

    result = run_ablation(args.config, preset=args.preset, out_dir=args.output, data_root=args.root,
                          overrides=args.overrides)  # fmt: skip
    print(Path(result["paths"]["table_md"]).read_text())
    for k, v in result["paths"].items():
        print(f"{k}: {v}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    from cmav.evaluation.generate import checkpoint_kind, generate_from_image, generate_from_wav

    if args.image is not None:
        input_file(args.image, "an image file")
    kind = checkpoint_kind(args.ckpt)
    diffusion = {k: getattr(args, k) for k in ("scheduler", "steps", "guidance", "pipeline") if getattr(args, k) is not None}
    if kind == "audio_token" and args.inference_condition is not None:
        raise ValueError(f"{args.ckpt}: an audio-token model has no inference condition; leave out --inference-condition")
    if args.normalise and kind != "i2s":
        raise ValueError(f"{args.ckpt}: --normalise sets the level of the sound an I2S model writes; this is an {kind} "
                         "checkpoint")  # fmt: skip
    if kind != "audio_token" and diffusion:
        raise ValueError(f"{args.ckpt}: --{', --'.join(diffusion)} set(s) the diffusion sampler of an audio-token "
                         f"model; this is an {kind} checkpoint")  # fmt: skip
    # -n 0 is refused by name below, not taken for the default
    n = args.n if args.n is not None else (1 if args.image is not None else 4)
    if args.audio is not None and kind == "audio_token":
        from cmav.evaluation.token import generate_from_audio_token

        settings = {**TOKEN_DEFAULTS, **diffusion}
        paths, notes = generate_from_audio_token(
            args.ckpt, args.audio, n=n, seed=args.seed, output_dir=args.output or "generated",
            scheduler=settings["scheduler"], steps=settings["steps"], guidance_scale=settings["guidance"],
            pipeline=settings.get("pipeline"),
        )  # fmt: skip
    elif args.image is not None:
        paths, notes = generate_from_image(args.ckpt, args.image, n=n, seed=args.seed,
                                           output=args.output or "generated.wav",
                                           inference_condition=args.inference_condition,
                                           normalise=args.normalise)  # fmt: skip
    else:
        path, notes = generate_from_wav(args.ckpt, args.audio, n=n, seed=args.seed,
                                        output=args.output or "generated.png",
                                        inference_condition=args.inference_condition)  # fmt: skip
        paths = [path]
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for path in paths:
        print(f"wrote {path}")
    return 0


TOKEN_DEFAULTS = {"scheduler": "ddim", "steps": 50, "guidance": 3.0}
"""``cmav generate``'s diffusion settings for an audio-token checkpoint when the flags are left out."""


def _bench(args: argparse.Namespace) -> int:
    from cmav.bench.s2i import bench_s2i

    result = bench_s2i(
        args.root, steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, image_size=args.image_size,
        channels=args.channels, device=args.device, bf16=args.bf16, channels_last=args.channels_last, threads=args.threads,
    )  # fmt: skip
    print(f"device {result['device']}  batch {result['batch_size']}  image {result['image_size']}  "
          f"bf16 {result['bf16']}  channels_last {result['channels_last']}")  # fmt: skip
    print(f"lightning : {result['lightning_images_per_s']:10.1f} images/s ({result['lightning_step_ms']:.1f} ms/step)")
    print(f"bare loop : {result['bare_images_per_s']:10.1f} images/s ({result['bare_step_ms']:.1f} ms/step)")
    print(f"ratio lightning/bare: {result['ratio']:.3f}")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.output}")
    return 0


def _inference_task(args: argparse.Namespace, kind: str, dm):
    """The checkpoint's task with ``--inference-condition`` applied, its training conditions taken
    from ``dm``'s train split when the checkpoint has none."""
    from cmav.evaluation.generate import with_inference_condition
    from cmav.tasks.i2s import load_i2s
    from cmav.tasks.s2i import load_s2i

    task = (load_i2s if kind == "i2s" else load_s2i)(args.ckpt)
    return with_inference_condition(task, args.ckpt, args.inference_condition, args.inference_neighbours, datamodule=dm)


def _weak_players(per_player: list[dict], split: str, below: float = 0.5) -> str:
    """One line naming the players whose generated frames the judge mostly gets wrong."""
    weak = [r for r in per_player if r["accuracy"] < below]
    if not weak:
        return f"players judged below {below:.2f} ({split}): none"
    return f"players judged below {below:.2f} ({split}): " + ", ".join(
        f"{r['class']}{r['track']:02d} {r['accuracy']:.2f}"
        + (f" (drawn as {r['named_most']} {r['named_most_share']:.2f})" if r["named_most"] != r["class"] else "")
        for r in weak
    )


def _fid_kid_line(fk: dict) -> str:
    line = (f"{fk['label']} (validation): FID {format_number(fk['fid'])}, "
            f"KID {format_number(fk['kid_mean'], '.5f')} ± {format_number(fk['kid_std'], '.5f')}")  # fmt: skip
    if fk.get("fid_reliable") is False and fk.get("note"):
        line += f" ({fk['note']})"
    return line


EVALUATE_ROOT = Path("results/evaluate")
"""Where ``cmav evaluate`` writes when ``-o`` is left out: a folder per run (:func:`default_evaluate_output`)."""

EVALUATE_OUTPUTS = ("metrics.json", "confusion_generated.png", "confusion_real.png", "condition_probe.json")
"""What ``cmav evaluate`` writes; a call removes them first (:func:`~cmav.ablation.grid.clear_results`),
so that none of an earlier call is left beside the new results."""

_CHECKPOINT_FOLDERS = ("checkpoints", "snapshots")


def default_evaluate_output(ckpt: str | Path) -> Path:
    """``cmav evaluate``'s folder for ``ckpt`` when ``-o`` is left out: :data:`EVALUATE_ROOT` /
    the run's name, so that scoring S2I-C and S2I-N keeps both. The run is the folder above the
    checkpoint's ``checkpoints/`` (or ``snapshots/``) folder, with its logger's ``version_N`` when
    that holds them (``runs/s2i_c/version_2/checkpoints`` -> ``s2i_c_version_2``); a checkpoint
    there other than ``last*.ckpt`` (an epoch's, a snapshot) adds its name (``i2s_c_epoch=059``);
    one outside such a folder is named by its file name alone."""
    path = Path(ckpt)
    if path.parent.name not in _CHECKPOINT_FOLDERS:
        return EVALUATE_ROOT / path.stem
    run, parts = path.parent.parent, []
    if run.name.startswith("version_") and run.name[len("version_"):].isdigit():
        parts.append(run.name)
        run = run.parent
        if run.name == "lightning_logs":  # Lightning's default logger folder: the run is the one above
            run = run.parent
    name = run.resolve().name if run.name in ("", ".", "..") else run.name
    if not path.stem.startswith("last"):
        parts.append(path.stem)
    return EVALUATE_ROOT / "_".join([name, *parts])


def _refuse_other_checkpoints_results(out: Path, ckpt: str) -> None:
    """Refuse ``out`` when its ``metrics.json`` holds the results of another checkpoint than ``ckpt``
    (another path and other bytes): replacing them would lose a result without a word. Results of
    this checkpoint are replaced; those that do not name theirs (written before cmav recorded it)
    are replaced with a note."""
    from cmav.data.files import sha256_file

    metrics = out / "metrics.json"
    if not metrics.is_file():
        return
    try:
        theirs = (json.loads(metrics.read_text()).get("inputs") or {}).get("checkpoint") or {}
    except (ValueError, AttributeError):
        theirs = {}
    if not theirs.get("resolved"):
        print(f"note: {metrics} does not name the checkpoint it scored (written before cmav recorded it, or by "
              "another command); it is replaced", file=sys.stderr)  # fmt: skip
        return
    if theirs["resolved"] == str(Path(ckpt).resolve()):
        return
    if theirs.get("sha256") and Path(ckpt).is_file() and sha256_file(ckpt) == theirs["sha256"]:
        return  # the same file, moved or copied
    raise ValueError(f"{out}: holds the results of another checkpoint, {theirs['resolved']}, not {ckpt}: give "
                     "another -o, or remove the folder to replace them")  # fmt: skip


def _evaluate(args: argparse.Namespace) -> int:
    from cmav.ablation.grid import clear_results
    from cmav.api import model_kind
    from cmav.evaluation import evaluate_i2s, evaluate_s2i
    from cmav.evaluation.generate import datamodule_for
    from cmav.tasks.classifier import _load_checkpoint

    # the kind itself, not checkpoint_kind's: that one refuses every non-generator as `cmav generate` would
    kind = model_kind(_load_checkpoint(args.ckpt), args.ckpt)
    if kind not in ("s2i", "i2s"):
        print(f"cmav evaluate: {args.ckpt} is a checkpoint of kind {kind!r}; this command scores S2I and I2S ones "
              "(an audio token is scored by the token grid: cmav ablate experiments/ablations/token.yaml --set "
              "stages.audio_token.ckpt=CKPT --set diffusion.pipeline=FOLDER, the folder it was trained with; see "
              "docs/diffusion.md)", file=sys.stderr)  # fmt: skip
        return 2
    if args.probe_conditions and kind != "i2s":
        print("cmav evaluate: --probe-conditions is for I2S checkpoints", file=sys.stderr)
        return 2
    other = ["--image-judge", "--player-judge"] if kind == "i2s" else ["--audio-judge"]
    given = [flag for flag in other if getattr(args, flag[2:].replace("-", "_")) is not None]
    if given:
        print(f"cmav evaluate: {args.ckpt} is an {kind.upper()} checkpoint; {', '.join(given)} judge(s) the other "
              "direction", file=sys.stderr)  # fmt: skip
        return 2
    judge_flag = "--image-judge" if kind == "s2i" else "--audio-judge"
    if (args.image_judge if kind == "s2i" else args.audio_judge) is None:
        print(f"cmav evaluate: {args.ckpt} is an {kind.upper()} checkpoint: give {judge_flag}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output is not None else default_evaluate_output(args.ckpt)
    if args.output is None:
        from cmav.cli.paths import refuse_under_a_file

        refuse_under_a_file(out)
        if out.exists() and not out.is_dir():
            raise DataError(out, "is a file; give -o a folder")
        print(f"results folder: {out} (named after the checkpoint's run; -o to choose another)")
    _refuse_other_checkpoints_results(out, args.ckpt)
    # the front end, chunk spec and data settings the model was trained with, unless the flags say otherwise
    dm = datamodule_for(args.ckpt, args.root, batch_size=32, image_size=args.image_size, layout=args.layout,
                        holdout_tail=args.holdout_tail, holdout_gap_ms=args.holdout_gap_ms)  # fmt: skip
    dm.setup("fit")
    task = _inference_task(args, kind, dm)
    print(f"inference condition: {task.inference_condition}"
          + (f" ({task.inference_neighbours} nearest)" if task.inference_condition == "nearest" else ""))  # fmt: skip
    if kind == "i2s":
        probe = None
        if args.probe_conditions:  # first: it refuses tails the generator or the audio judge trained on
            from cmav.evaluation.condition_probe import format_probe, probe_i2s_conditions
            from cmav.metrics.serialise import json_safe

            probe = probe_i2s_conditions(task, dm, args.audio_judge, seed=args.seed, ckpt=args.ckpt)
        clear_results(out, EVALUATE_OUTPUTS)
        m = evaluate_i2s(task, dm, args.audio_judge, out_dir=out, seed=args.seed, ckpt=args.ckpt)
        print(f"judged accuracy (validation): {m['judged']['accuracy']:.3f} (balanced {m['judged']['balanced_accuracy']:.3f}); "
              f"audio judge on real LMS: {m['judge_on_real']['accuracy']:.3f}")  # fmt: skip
        rt = m["round_trip"]
        print(f"Griffin-Lim round trip (validation): {rt['accuracy']:.3f} "
              f"({format_number(rt['kept_fraction'], '.2f')} of the judged accuracy; "
              f"{format_number(rt['kept_share'], '.2f')} of the items judged right kept); "
              f"on real LMS {rt['real_accuracy']:.3f}")  # fmt: skip
        print(_fid_kid_line(m["fid_kid"]))
        print(f"diversity over noise (validation): {m['diversity']['value']:.4f}")
        print(f"wrote {out / 'metrics.json'}")
        if probe is not None:
            print(format_probe(probe))
            (out / "condition_probe.json").write_text(json.dumps(json_safe(probe), indent=2))
            print(f"wrote {out / 'condition_probe.json'}")
        return 0
    clear_results(out, EVALUATE_OUTPUTS)
    # given the checkpoint, it is refused when it trained on the held-out tails that judged holdout and
    # player consistency score, and its note (when that cannot be checked) goes into metrics.json
    m = evaluate_s2i(task, dm, args.image_judge, args.player_judge, out_dir=out, seed=args.seed, ckpt=args.ckpt)
    print(f"judged accuracy (validation): {m['judged']['accuracy']:.3f} (balanced {m['judged']['balanced_accuracy']:.3f}); "
          f"image judge on real frames: {m['judge_on_real']['accuracy']:.3f}")  # fmt: skip
    fk = m["fid_kid"]
    print(_fid_kid_line(fk))
    print(f"diversity over noise (validation): {m['diversity']['value']:.4f}")
    print(_weak_players(m["judged"]["per_player"], "validation"))
    if m.get("judged_holdout"):
        h = m["judged_holdout"]
        print(f"judged accuracy (train_holdout, seen players): {h['accuracy']:.3f}; "
              f"image judge on real frames: {h['judge_on_real_accuracy']:.3f}")  # fmt: skip
        print(_weak_players(h["per_player"], "train_holdout"))
    if m.get("player"):
        p = m["player"]
        if p.get("accuracy") is None:
            print(f"player consistency (train_holdout): none; {p.get('note', '')}")
        else:
            print(f"player consistency (train_holdout): {p['accuracy']} (player judge on real: {p.get('judge_on_real_accuracy')})")
    print(f"wrote {out / 'metrics.json'}")
    return 0
