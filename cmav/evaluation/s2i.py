"""Evaluation of a sound-to-image generator against frozen judges.

Every figure says which split it comes from:

* **validation** (unseen players): judged accuracy of ONE generated image per chunk (fixed noise
  from ``seed``, EMA generator) under the image judge, beside the judge's own accuracy on the real
  validation frames (its ceiling); judge-feature FID/KID generated vs real validation frames
  (**judge-feature FID, not Inception FID**: comparable only within this project); diversity over
  ``n_diversity_draws`` noise draws (mean pairwise judge-feature distance) on a class-balanced subset.
* **train_holdout** (the time-held-out end of every train track; players the player judge knows,
  frames nobody trained on): player/pose consistency = how often the player judge names the
  audio's own player (class + track) for a generated frame, beside its accuracy on the real frames;
  and the image judge's accuracy there (does G draw a seen player's instrument right?). A judge
  whose checkpoint says it trained on any of those frames (``data.holdout_tail`` 0, or less than
  the data's, on the same root) is refused by name; one trained on another root, or whose data are
  not recorded, is warned of and said so in ``notes`` and beside its figures
  (:func:`~cmav.evaluation.paired.check_judge_unseen`). So is a generator that trained on those
  frames (a checkpoint trained with a smaller ``data.holdout_tail`` than the data's, or a task fitted
  in memory; a task loaded from a checkpoint does not know its data:
  :func:`~cmav.evaluation.paired.check_generator_unseen`).

The S2I model is refused on data of another front end than it was trained on (:func:`check_s2i_fits`).

Judged accuracy on both splits is also broken down per player (class and track,
:func:`~cmav.metrics.player_table`): a player whose frames are all drawn as one other instrument
shows as such (``named_most``).

The generator is anything with ``fn(audio (N,1,M,T), z (N,z_dim)) -> images (N,3,S,S) in [-1,1]``:
an :class:`~cmav.tasks.S2ITask` (its EMA generator), a checkpoint path, or a plain callable (tests
pass a "perfect" or a constant generator this way).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cmav.evaluation.paired import (
    FID_LABEL,
    GeneratorFn,
    check_generator_unseen,
    check_judge_unseen,
    front_end_refusal,
    generate_outputs,
    generator_fn,
    note_on,
    save_scores,
    score_generator,
    scored_inputs,
)
from cmav.metrics import (
    JudgeFeatureExtractor,
    classification_report,
    judge_predictions,
    judged_accuracy,
    player_table,
)
from cmav.metrics.serialise import json_safe


def make_generator_fn(task_or_ckpt: Any) -> tuple[GeneratorFn, int, dict]:
    """``(fn(audio, z) -> images, z_dim, info)`` from an S2ITask, its checkpoint path or a callable.

    A callable must carry ``z_dim`` (default 10)."""
    from cmav.tasks.s2i import S2ITask, load_s2i

    return generator_fn(task_or_ckpt, S2ITask, load_s2i)


def _judge(judge_or_ckpt: Any, target: str = "label"):
    """The image judge (``target='label'``) or the player judge (``'track'``), from a task or its
    checkpoint; a task in memory is refused as :func:`~cmav.tasks.classifier.load_image_judge`
    refuses a checkpoint of another kind (a sound classifier, I2S's image classifier)."""
    from cmav.tasks.classifier import ClassifierTask, article, load_image_judge

    if isinstance(judge_or_ckpt, (str, Path)):
        return load_image_judge(judge_or_ckpt, target=target)
    judge = judge_or_ckpt
    if not isinstance(judge, ClassifierTask):
        raise ValueError(f"a judge must be an image ClassifierTask with target={target!r} (or its checkpoint), "
                         f"not a {type(judge).__name__}")  # fmt: skip
    h = judge.hparams
    if h.modality != "image" or h.target != target or h.get("image_model", "judge") != "judge":
        kind = f"{h.modality}/{h.target}" + (f"/{h.get('image_model', 'judge')}" if h.modality == "image" else "")
        what = "image judge" if target == "label" else "player judge"
        raise ValueError(f"the {what} given: {article(kind)} {kind} classifier, not the {what}: a judge must be an image "
                         f"ClassifierTask with modality='image', target={target!r}, image_model='judge' "
                         "(or its checkpoint)")  # fmt: skip
    return judge.eval()


def check_s2i_fits(task_or_fn: Any, datamodule, source: str) -> None:
    """Refuse data an S2I generator was not made for: audio features of another shape than its
    encoder reads, or of the same shape from another front-end setting than the one stored with
    the model (when it stores one: a checkpoint, or a task set up on its data). The mirror of
    :func:`~cmav.evaluation.i2s.check_i2s_fits`; a plain callable says nothing of its front end."""
    from cmav.tasks.s2i import S2ITask

    if not isinstance(task_or_fn, S2ITask):
        return
    shape = task_or_fn.hparams.audio_shape
    front_end_refusal(source, "S2I", "reads", tuple(int(v) for v in shape) if shape is not None else None,
                      tuple(datamodule.val.tensors.audio.shape[1:]), task_or_fn._features, datamodule.features,
                      "its encoder would read features on a scale it was not trained on")  # fmt: skip


def check_judge_fits(judge, *, class_names: list[str] | None = None, frames: Tensor | None = None,
                     generated: Tensor | None = None, what: str = "image judge") -> None:
    """Raise ``ValueError`` when a judge would score what it was not trained on: other classes (in
    another order), or frames of another size than its own. Its convolutions end in a global pool,
    so a frame of any size goes through and is scored without a word."""
    if class_names is not None and list(judge.hparams.class_names) != list(class_names):
        raise ValueError(f"the {what}'s classes {list(judge.hparams.class_names)} differ from the data's "
                         f"{list(class_names)}")  # fmt: skip
    size = int(judge.hparams.image_size)
    for name, x in (("the data's frames", frames), ("the generated frames", generated)):
        if x is not None and tuple(x.shape[-2:]) != (size, size):
            raise ValueError(f"the {what} was trained on {size}x{size} frames, {name} are "
                             f"{x.shape[-2]}x{x.shape[-1]}: score a generator and data of the judge's size")  # fmt: skip


def generate_images(fn: GeneratorFn, audio: Tensor, z_dim: int, seed: int = 0, batch_size: int = 64) -> Tensor:
    """One image per audio item, float [-1, 1] on CPU; the noise is fixed by ``seed``."""
    return generate_outputs(fn, audio, z_dim, seed=seed, batch_size=batch_size)


def _images(tensors, index: Tensor | None = None) -> Tensor:
    x = tensors.images if index is None else tensors.images[index]
    return x.float().div(127.5).sub(1.0)


@torch.no_grad()
def evaluate_s2i(
    task_or_ckpt: Any,
    datamodule,
    image_judge_ckpt: Any,
    player_judge_ckpt: Any = None,
    out_dir: str | Path | None = None,
    n_diversity_draws: int = 8,
    seed: int = 0,
    diversity_per_class: int = 4,
    batch_size: int = 64,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    ckpt: str | Path | None = None,
) -> dict:
    """Score a sound-to-image generator; see the module docstring for what and on which split.

    ``image_judge_ckpt`` / ``player_judge_ckpt``: :class:`ClassifierTask` checkpoints (or the tasks
    themselves). ``ckpt``: the checkpoint a task given was loaded from (a loaded task knows neither
    its file nor its data): checked for having trained on the held-out tails as a path is, and
    named in the result. Returns a JSON-ready dict, whose ``inputs`` name the checkpoint, the
    judges (path and sha256), the data and the front end, and whose ``notes`` say what could not be
    checked; with ``out_dir`` also writes ``metrics.json`` and ``confusion_generated.png`` /
    ``confusion_real.png`` there.
    """
    from cmav.tasks.s2i import load_s2i

    if isinstance(task_or_ckpt, (str, Path)):
        ckpt = task_or_ckpt
    source = str(ckpt) if ckpt is not None else "the S2I model given"
    # a checkpoint says what the generator trained on; the task loaded from it does not
    given = ckpt if ckpt is not None else task_or_ckpt
    if isinstance(task_or_ckpt, (str, Path)):
        task_or_ckpt = load_s2i(task_or_ckpt)
    fn, z_dim, info = make_generator_fn(task_or_ckpt)
    datamodule.setup("validate")
    check_s2i_fits(task_or_ckpt, datamodule, source)
    # the held-out tails are scored as frames the generator never saw: refused when it trained on them
    generator_note = check_generator_unseen(given, datamodule, "S2I generator")
    judge = _judge(image_judge_ckpt)
    names = list(judge.hparams.class_names)
    val = datamodule.val.tensors
    labels = val.labels.long()
    real = _images(val)
    probe = generate_images(fn, val.audio[:1], z_dim, seed=seed)  # before the whole split is generated
    check_judge_fits(judge, class_names=list(datamodule.class_names), frames=real, generated=probe)
    # the held-out tails are scored as frames nobody trained on: refused when the judge trained on them
    image_note = check_judge_unseen(image_judge_ckpt, datamodule, "image judge", split="holdout")
    player = None
    if player_judge_ckpt is not None:  # checked before anything is scored
        player = _player_judge(player_judge_ckpt, fn, z_dim, datamodule)
    extractor = JudgeFeatureExtractor(judge.model, name="image_judge")
    scores, gen_report, real_report, _ = score_generator(
        fn, z_dim, val.audio, real, labels, judge, names, extractor, what="image", seed=seed, batch_size=batch_size,
        n_diversity_draws=n_diversity_draws, diversity_per_class=diversity_per_class,
        kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, judge_name="image judge",
    )  # fmt: skip
    result: dict[str, Any] = {"generator": info, "seed": seed, **scores}
    result["inputs"] = scored_inputs(datamodule, ckpt, image_judge=image_judge_ckpt, player_judge=player_judge_ckpt)
    # the judge's calls on the generated frames, already made for the report
    result["judged"]["per_player"] = player_table(torch.from_numpy(gen_report.predictions), labels, val.tracks, names)
    result["judged_holdout"] = _judged_holdout(fn, z_dim, datamodule, judge, names, seed, batch_size)
    for section in ("judged", "judge_on_real", "judged_holdout"):
        note_on(result[section], image_note)
    note_on(result["judged_holdout"], generator_note)

    result["player"] = None
    if player is not None:
        result["player"] = _player_consistency(fn, z_dim, datamodule, player_judge_ckpt, seed, batch_size, checked=player)
        note_on(result["player"], generator_note)
    result["notes"] = [*scores["notes"], *(n for n in (generator_note, image_note, player[1] if player else None) if n)]

    if out_dir is not None:
        return save_scores(result, out_dir, gen_report, real_report, names, "Image judge", "frames")
    return json_safe(result)


def _judged_holdout(fn: GeneratorFn, z_dim: int, datamodule, judge, names: list[str], seed: int, batch_size: int):
    """The image judge on frames generated from the train tracks' held-out tails (seen players)."""
    t, index = datamodule.split_items("holdout")
    if len(index) == 0:
        return None
    labels = t.labels[index].long()
    fake = generate_images(fn, t.audio[index], z_dim, seed=seed, batch_size=batch_size)
    preds = judge_predictions(judge, fake, batch_size)
    gen = classification_report(preds, labels, names)
    ref = judged_accuracy(judge, _images(t, index), labels, names, batch_size=batch_size)
    return {
        "split": "train_holdout",
        "n": gen.n,
        "accuracy": gen.accuracy,
        "balanced_accuracy": gen.balanced_accuracy,
        "per_class": gen.per_class,
        "per_player": player_table(preds, labels, t.tracks[index], names),
        "judge_on_real_accuracy": ref.accuracy,
        "note": "one generated image per held-out chunk at the end of each train track (seen players, unseen "
        "frames), classified by the image judge; judge_on_real_accuracy is its ceiling on the real frames",
    }


def _player_judge(player_judge: Any, fn: GeneratorFn, z_dim: int, datamodule) -> tuple[Any, str | None]:
    """The player judge, refused unless it fits the data: its classes (in their order), its frame
    size, its (class, track) players, and that it did not train on the held-out tails it scores.
    Returns ``(judge, note)``, the note saying when its training data could not be checked."""
    from cmav.tasks.classifier import players_mismatch

    judge = _judge(player_judge, target="track")
    t = datamodule.train_full.tensors
    where = f"{player_judge}: " if isinstance(player_judge, (str, Path)) else ""
    try:  # its players are (class, track) numbers: another class order would name other players
        check_judge_fits(judge, class_names=list(datamodule.class_names), frames=t.images[:1],
                         generated=generate_images(fn, t.audio[:1], z_dim), what="player judge")  # fmt: skip
    except ValueError as exc:
        raise ValueError(f"{where}{exc}") from None
    if why := players_mismatch(judge.hparams.players, t):
        raise ValueError(f"{where}{why}")
    return judge, check_judge_unseen(player_judge, datamodule, "player judge", split="holdout")


def _player_consistency(fn: GeneratorFn, z_dim: int, datamodule, player_judge: Any, seed: int, batch_size: int,
                        checked: tuple[Any, str | None] | None = None):  # fmt: skip
    """Player consistency on the held-out tails; ``checked``: :func:`_player_judge`'s answer when
    the caller has checked the judge already."""
    judge, note = checked if checked is not None else _player_judge(player_judge, fn, z_dim, datamodule)
    t, index = datamodule.split_items("holdout")
    if len(index) == 0:
        why = datamodule.holdout_shortfall() if hasattr(datamodule, "holdout_shortfall") else None
        out = {"split": "train_holdout", "accuracy": None,
               "note": f"no held-out train frames: {why or 'set the datamodule holdout_tail > 0'}"}  # fmt: skip
        note_on(out, note)
        return out
    batch = {"label": t.labels[index].long(), "track": t.tracks[index].long()}
    targets = judge.targets(batch)
    keep = targets >= 0
    index, targets = index[keep], targets[keep]
    audio = t.audio[index]
    fake = generate_images(fn, audio, z_dim, seed=seed + 1, batch_size=batch_size)
    real = _images(t, index)
    pnames = judge.target_names
    gen = judged_accuracy(judge, fake, targets, pnames, batch_size=batch_size)
    ref = judged_accuracy(judge, real, targets, pnames, batch_size=batch_size)
    # the player judge's class (instrument) of its prediction: is at least the instrument right?
    # Its calls on the generated frames are the report's, made on the judge's own device.
    players = torch.tensor(judge.hparams.players)
    pred = torch.from_numpy(gen.predictions)
    inst_ok = float((players[pred, 0] == players[targets, 0]).float().mean()) if len(pred) else float("nan")
    out = {
        "split": "train_holdout",
        "n": gen.n,
        "accuracy": gen.accuracy,
        "balanced_accuracy": gen.balanced_accuracy,
        "instrument_accuracy": inst_ok,
        "judge_on_real_accuracy": ref.accuracy,
        "judge_on_real_balanced_accuracy": ref.balanced_accuracy,
        "note": "player judge names the audio's own player (class+track) for frames generated from the "
        "held-out end of each train track; judge_on_real_* is its ceiling on the real frames",
    }
    note_on(out, note)
    return out


__all__ = ["FID_LABEL", "check_judge_fits", "check_s2i_fits", "evaluate_s2i", "generate_images", "make_generator_fn"]
