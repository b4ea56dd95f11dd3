"""Cross-source evaluation: the same models on audio from the training font and from an independent one.

``root`` is the data the models trained on (say ``data/default``, rendered from FluidR3); ``eval_root``
is a copy of it rendered from a DIFFERENT soundfont (``cmav data build --soundfont
/usr/share/sounds/sf2/TimGM6mb.sf2 --root data/default_timgm``, same preset and seed: the same
melodies and frames, other recordings). Both fonts are read from the folders' manifests (path and
sha256; or given explicitly), and the evaluation is refused when they are not independent sources:
the same file (sha256 or real path), or one family of fonts sharing recordings (MuseScore General
reuses FluidR3's samples; see :mod:`cmav.standin.soundfonts`). It is refused too when the two
folders are one (a symlink included), when ``eval_root`` is not ``root`` rendered again (other build
parameters in the manifests, or splits that open to other chunks), when a checkpoint, or the
pretrained audio encoder it was built from (``audio_encoder_ckpt``), was trained on ``eval_root``
or on a font not independent of the evaluation font, and when a checkpoint's own training fonts do
not include ``root``'s (its in-source column would be a second cross-source one). What cannot be
checked here (a model's training data or encoder not on this machine, a font file needed for the
sample comparison missing) is warned about and listed in the report and ``metrics.json``
(``warnings``).

Scores, each in-source (``root``'s split) beside cross-source (``eval_root``'s split):

* the sound classifier's accuracy (plain and class-balanced);
* S2I-C's judged accuracy: one frame generated per chunk from that source's audio (fixed noise),
  classified by the image judge (its accuracy on the real frames is the ceiling);
* retrieval Recall@1 (audio->image, class-level and instance-level) with a retrieval checkpoint.

With ``adapt_batch_norm`` the sound classifier, and S2I-C's frozen audio encoder, are also scored
with their batch-norm statistics re-estimated on each split's own unlabelled audio (AdaBN,
:mod:`cmav.evaluation.adaptation`; the generator is left as trained). That reads the evaluation
source's audio, so it is reported on its own rows, marked transductive, and never counts towards the
cross-source target.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cmav.data.errors import DataError
from cmav.data.files import sha256_file
from cmav.metrics import judged_accuracy
from cmav.metrics.serialise import format_number, json_safe
from cmav.standin.build import MANIFEST
from cmav.standin.render import DEFAULT_SOUNDFONT
from cmav.standin.soundfonts import (
    SampleComparisonWarning,
    describe,
    fonts_of,
    same_source,
    several_fonts_record,
    soundfont_record,
)

TARGETS = {"classifier": 0.75, "s2i": 0.65}
"""The issue's cross-source targets: sound-classifier accuracy and S2I-C judged accuracy."""
SOURCES = ("in_source", "cross_source")
INFERENCE_WORDS = {
    "own": "each chunk's own audio feature (the paper)",
    "nearest": "the training audio features nearest each chunk's",
    "class_mean": "the mean training feature of the class its audio encoder predicts for each chunk",
}
"""How each ``inference_condition`` reads in the report."""


class SameSourceError(ValueError):
    """The evaluation audio is not from an independent source (the fonts share recordings)."""


def read_manifest(root: str | Path) -> dict | None:
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"unreadable stand-in manifest ({exc})") from exc


def data_soundfont(root: str | Path, font: str | Path | None = None) -> dict[str, Any]:
    """The font record of the data at ``root``: its manifest's (path, sha256, ...), checked against
    ``font`` when both exist; ``font``'s own record for data without a manifest."""
    manifest = read_manifest(root)
    given = soundfont_record(font) if font is not None else None
    if manifest is None:
        if given is None:
            raise DataError(root, f"no {MANIFEST}: not a cmav stand-in, so its soundfont is unknown; "
                                  "pass the font it was rendered from")  # fmt: skip
        return given
    recorded = manifest.get("soundfont")
    if recorded is None:  # built before fonts were recorded: the params name the font file(s)
        return _font_by_name(root, (manifest.get("params") or {}).get("soundfont"), given)
    if given is not None and given["sha256"] not in [r.get("sha256") for r in fonts_of(recorded)]:
        raise DataError(root, f"was rendered from {describe(recorded)}, not from the font given, {describe(given)}")
    return recorded


def _font_by_name(root: str | Path, named: Any, given: dict[str, Any] | None) -> dict[str, Any]:
    """The font record of data whose manifest predates font records: its params name the font file(s)
    (``named``: a name or a list), found by name beside the default font, or ``given``, which must be
    the font of that name (and, when a font of that name is on this machine, the same file)."""
    names = [str(n) for n in (named if isinstance(named, list) else [named])] if named else []
    if not names:
        if given is None:
            raise DataError(root, f"its {MANIFEST} records no soundfont; pass the font it was rendered from")
        return given
    given_names = {given["name"], Path(given["path"]).name} if given is not None else set()
    if given is not None and not given_names & set(names):
        raise DataError(root, f"its manifest says it was rendered from {named!r}, not from the font given, "
                              f"{describe(given)}")  # fmt: skip
    records = []
    for name in names:
        guess = DEFAULT_SOUNDFONT.parent / name
        if given is not None and name in given_names:
            if guess.is_file() and sha256_file(guess) != given["sha256"]:
                raise DataError(root, f"its manifest names the font {name!r} without a path or sha256, and {guess}, "
                                      f"the font of that name on this machine, is another file than the one given, "
                                      f"{describe(given)} (sha256 {sha256_file(guess)[:12]}...): pass the font it was "
                                      "rendered from")  # fmt: skip
            records.append(given)
        elif guess.is_file():
            records.append({**soundfont_record(guess), "recorded": f"inferred from the font name {name!r}"})
        else:
            raise DataError(root, f"its manifest names the font {name!r} without a path, and {guess} does not "
                                  "exist; pass the font it was rendered from")  # fmt: skip
    return records[0] if len(records) == 1 else several_fonts_record(records)


def check_independent(train_font: dict[str, Any], eval_font: dict[str, Any], label: str | None = None) -> None:
    """Raise :class:`SameSourceError` naming both fonts when they are not independent sources.
    ``label`` says whose training data ``train_font`` is (``"the sound classifier CKPT, trained on
    ROOT"``): the advice is then about that model; without it, about the data to render."""
    reason = same_source(train_font, eval_font)
    if reason and label is not None:
        raise SameSourceError(
            f"refusing a cross-source evaluation: {label} (font {describe(train_font)}) and the evaluation font "
            f"{describe(eval_font)} are not independent sources: {reason}. That model has heard the evaluation "
            "font's recordings, so its cross-source score would not be one: score a model trained on data without "
            "the evaluation font's recordings (e.g. data/default, FluidR3), or pick another evaluation font that "
            "shares none with its training data and render --eval-root from it"
        )
    if reason:
        raise SameSourceError(
            f"refusing a cross-source evaluation: the training font {describe(train_font)} and the evaluation "
            f"font {describe(eval_font)} are not independent sources: {reason}. Render the evaluation copy from "
            "a font made of other recordings, e.g. `cmav data build --soundfont /usr/share/sounds/sf2/TimGM6mb.sf2 "
            "--root data/default_timgm` (Debian package timgm6mb-soundfont)"
        )


def build_eval_copy(root: str | Path, eval_root: str | Path, soundfont: str | Path | Sequence[str | Path],
                    progress: bool = True) -> dict:  # fmt: skip
    """Render ``eval_root``: the stand-in at ``root`` (same preset, seed and frame size; dry) from
    ``soundfont`` (one source, or several for a several-source build)."""
    from cmav.standin.build import build_standin

    params = (read_manifest(root) or {}).get("params")
    if not params:
        raise DataError(root, f"no {MANIFEST}: only a cmav stand-in can be re-rendered from another font")
    missing = [k for k in ("preset", "seed", "frame_size", "jpeg_quality") if params.get(k) is None]
    if missing:
        raise DataError(root, f"its manifest does not record {', '.join(missing)} (built by an older cmav?), so it "
                              "cannot be rendered again from another font with the same build parameters: rebuild "
                              "it with this cmav, or render the copy with `cmav data build` and the preset, seed "
                              "and frame size it was built with")  # fmt: skip
    return build_standin(eval_root, preset=params["preset"], seed=params["seed"], soundfont=soundfont,
                         frame_size=params["frame_size"], jpeg_quality=params["jpeg_quality"], progress=progress)  # fmt: skip


RENDER_ONLY = ("soundfont", "render", "font_segment_s")
"""Stand-in build parameters that change only how the audio is rendered, not the melodies or frames."""


def check_rerender(root: str | Path, other: str | Path, src: str | None = "grid",
                   names: tuple[str, str] = ("data.root", "cross_source.root"), advice: str | None = None) -> None:  # fmt: skip
    """Refuse ``other`` as a re-render of the stand-in at ``root`` when their manifests' build
    parameters differ in anything but the rendering (:data:`RENDER_ONLY`): another preset, seed,
    frame size, JPEG quality or builder version makes other melodies or frames, so the two sources
    would not score the same chunks. Roots without a stand-in manifest are not compared (see
    :func:`check_same_split`). ``names``: what the two roots are called in the message; ``src``:
    the config the message starts with (a ValueError), or None for a :class:`DataError` on ``other``."""
    a, b = (read_manifest(r) or {} for r in (root, other))
    pa, pb = a.get("params"), b.get("params")
    if not pa or not pb:
        return
    keys = sorted((set(pa) | set(pb)) - set(RENDER_ONLY))
    diffs = [f"{k}: {pa.get(k)!r} -> {pb.get(k)!r}" for k in keys if pa.get(k) != pb.get(k)]
    if diffs:
        what, whose = names
        problem = (f"{whose} {other} is not a re-render of {what} {root} (its stand-in was built with other "
                   f"{', '.join(d.split(':')[0] for d in diffs)}: {'; '.join(diffs)}, {what} -> {whose}): it holds "
                   "other melodies or frames. "
                   + (advice or f"Render it from {what} (cmav data build with the same --preset and --seed, another "
                                f"--soundfont), or point {whose} at a new folder"))  # fmt: skip
        if src is None:
            raise DataError(other, problem)
        raise ValueError(f"{src}: {problem}")


def check_same_split(root: str | Path, eval_root: str | Path, split: str, a: Any, b: Any) -> None:
    """Refuse scoring when the split opened at ``eval_root`` (``b``) is not the one at ``root``
    (``a``) rendered again: the same number of pairs, classes, labels, tracks and times."""
    problems = []
    if list(a.class_names) != list(b.class_names):
        problems.append(f"classes {list(b.class_names)}, not {list(a.class_names)}")
    if len(a) != len(b):
        problems.append(f"{len(b)} pairs, not {len(a)}")
    else:
        for field in ("labels", "tracks", "times"):
            x, y = getattr(a, field), getattr(b, field)
            if not torch.equal(x, y):
                problems.append(f"{int((x != y).sum())} of the {len(a)} pairs differ in their {field[:-1]}")
    if problems:
        raise DataError(eval_root, f"its {split} split is not the one at {root} rendered again: {'; '.join(problems)}. "
                                   "Both sources must hold the same chunks (the same preset, seed and frame size, "
                                   "another font): render --eval-root from --root with --eval-soundfont")  # fmt: skip


def finish_eval_copy(root: str | Path, eval_root: str | Path, soundfont: Any = None, progress: bool = True) -> bool:
    """Finish a cross-source copy whose build was cut off (its manifest says ``complete: false``):
    it would otherwise be scored on the part that was written. From ``soundfont``, or the font(s)
    its manifest records. Returns whether there was anything to finish."""
    manifest = read_manifest(eval_root)
    if manifest is None or manifest.get("complete", True):  # no manifest: not a stand-in; no key: built before the flag
        return False
    if soundfont is None:
        paths = [r["path"] for r in fonts_of(manifest.get("soundfont") or {}) if r.get("path")]
        if not paths:
            raise DataError(eval_root, "its build was cut off and its manifest names no font to finish it from; "
                                       "pass the evaluation soundfont")  # fmt: skip
        soundfont = paths[0] if len(paths) == 1 else paths
    print(f"{eval_root}: its build was cut off; finishing it before it is scored", flush=True)
    build_eval_copy(root, eval_root, soundfont, progress=progress)
    return True


def opened_as(blob: dict) -> dict[str, Any]:
    """How a loaded checkpoint's data were opened: ``layout``, ``image_size``, ``features`` (the
    front end) and ``chunk`` (the chunk spec), as keyword arguments for the data readers."""
    from cmav.evaluation.generate import front_end_of

    dmh, hp = blob.get("datamodule_hyper_parameters") or {}, blob.get("hyper_parameters") or {}
    features, spec = front_end_of(blob)
    return {"layout": dmh.get("layout", "suburmp"), "image_size": int(hp.get("image_size", dmh.get("image_size", 64))),
            "features": features, "chunk": spec}  # fmt: skip


def splits_like(ckpt: str | Path | dict, roots: dict[str, Path], split: str, cache_dir: str | None = None,
                progress: bool = False) -> dict:  # fmt: skip
    """``{name: tensors}``: the split at each root opened as the checkpoint's data was (front end,
    chunk spec, image size, layout). ``ckpt``: a path or an already loaded checkpoint."""
    from cmav.data.datasets import open_split
    from cmav.tasks.classifier import checkpoint_dict

    opened = opened_as(checkpoint_dict(ckpt))
    layout = opened.pop("layout")
    return {name: open_split(layout, root, split, cache_dir=cache_dir, progress=progress, **opened).tensors
            for name, root in roots.items()}  # fmt: skip


def training_datamodule(ckpt: str | Path | dict, root: str | Path, cache_dir: str | None = None):
    """An AudioVisualDataModule over the data a checkpoint was trained on (its recorded root, else
    ``root``), opened as it was (front end, chunk spec, image size, layout, held-out tails)."""
    from cmav.data.datamodule import AudioVisualDataModule
    from cmav.tasks.classifier import checkpoint_dict

    blob = checkpoint_dict(ckpt)
    dmh = blob.get("datamodule_hyper_parameters") or {}
    return AudioVisualDataModule(root=str(trained_on(blob)[0] or root), holdout_tail=float(dmh.get("holdout_tail", 0.0)),
                                 holdout_gap_ms=dmh.get("holdout_gap_ms"), cache_dir=cache_dir, **opened_as(blob))  # fmt: skip


def _report(rep) -> dict[str, Any]:
    return {"accuracy": rep.accuracy, "balanced_accuracy": rep.balanced_accuracy, "n": rep.n,
            "per_class": rep.per_class}  # fmt: skip


def score_classifier(task, tensors, adapt_batch_norm: bool = False) -> dict[str, Any]:
    """The sound classifier's accuracy on a split's audio; with ``adapt_batch_norm``, after
    re-estimating its batch-norm statistics on that same audio (no labels read; transductive)."""
    from cmav.evaluation.adaptation import adapt_batch_norm as adapt
    from cmav.evaluation.s2i import check_judge_fits

    check_judge_fits(task, class_names=tensors.class_names, what="sound classifier")
    audio = tensors.audio.float()
    model = adapt(task.model, audio) if adapt_batch_norm else task.model
    return _report(judged_accuracy(model, audio, tensors.labels, tensors.class_names, batch_size=256))


def score_s2i(s2i: Any, judge, tensors, seed: int = 0) -> dict[str, Any]:
    """Judged accuracy of one frame generated per chunk from a split's audio (fixed noise)."""
    from cmav.evaluation.s2i import check_judge_fits, generate_images, make_generator_fn

    fn, z_dim, _ = make_generator_fn(s2i)
    fake = generate_images(fn, tensors.audio, z_dim, seed=seed)
    check_judge_fits(judge, class_names=tensors.class_names, frames=tensors.images[:1], generated=fake)
    return _report(judged_accuracy(judge, fake, tensors.labels, tensors.class_names))


def adapted_s2i_generator(task, audio: torch.Tensor):
    """``fn(audio, z) -> frames`` of an S2ITask's EMA generator behind a copy of its audio encoder
    whose batch-norm statistics are re-estimated on ``audio`` (AdaBN; no labels read), conditioned
    as the task's ``inference_condition`` says. ``task`` is left as it was; ``fn.z_dim`` is the
    task's, so :func:`score_s2i` takes it like any generator, and ``fn.net`` is the adapted encoder
    + generator."""
    from cmav.evaluation.adaptation import adapt_batch_norm as adapt

    net = copy.deepcopy(task.ema.module if task.ema is not None else task.model).eval()
    net.encoder = adapt(net.encoder, audio.float())
    device = next(net.parameters()).device

    @torch.no_grad()
    def fn(condition: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        c = task.inference_conditions(net, condition.to(device, torch.float32))
        return task.from_target_space(net.generator(z.to(device), c)).float().cpu()

    fn.z_dim = task.z_dim  # type: ignore[attr-defined]
    fn.net = net  # type: ignore[attr-defined]
    return fn


def score_retrieval(task, tensors) -> dict[str, Any]:
    """Audio->image Recall@1 (class- and instance-level, with chance) over a split."""
    from cmav.evaluation.retrieval import embed_split
    from cmav.metrics.retrieval import cross_modal_report

    a, v = embed_split(task, tensors)
    rep = cross_modal_report(task.model.scores(a, v), tensors.labels)["a2i"]
    return {f"{rel}_R@1": rep[rel]["R@1"] for rel in ("class", "instance")} | {
        f"{rel}_R@1_chance": rep[rel]["chance"]["R@1"] for rel in ("class", "instance")}  # fmt: skip


def trained_on(ckpt: str | Path | dict) -> tuple[Path | None, dict[str, Any] | None]:
    """``(data root, font record)`` a checkpoint (a path or a loaded one) was trained on, from its
    datamodule's hyper-parameters; ``(root, None)`` when that root is not a stand-in here (no
    manifest), and ``(None, None)`` when the checkpoint does not say."""
    from cmav.data.datamodule import recorded_root
    from cmav.tasks.classifier import checkpoint_dict

    dmh = checkpoint_dict(ckpt).get("datamodule_hyper_parameters") or {}
    if not dmh.get("root"):
        return None, None
    root = recorded_root(dmh, missing_ok=True)
    return root, (data_soundfont(root) if read_manifest(root) is not None else None)


MODEL_NAMES = {"classifier": "sound classifier", "s2i": "S2I-C", "retrieval": "retrieval model"}
"""How each checkpoint is named in refusals and warnings."""
ENCODER_CKPTS = {"audio_encoder_ckpt": "audio encoder"}
"""The pretrained parts a checkpoint records and was built from (S2I-C's and retrieval's sound
classifier), followed to their own training data. An image encoder (``image_encoder_ckpt``) is
not: it learned from frames, which are the same whatever the font."""


def _same_folder(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _same_font(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two single-font records are one file (sha256, and the patches a TiMidity++ set maps;
    else the real path)."""
    if a.get("sha256") and b.get("sha256"):
        pa, pb = a.get("patches_sha256"), b.get("patches_sha256")
        return a["sha256"] == b["sha256"] and (not pa or not pb or pa == pb)
    return bool(a.get("realpath")) and a.get("realpath") == b.get("realpath")


def training_sources(ckpt: str | Path | dict, what: str, path: str | Path | None = None,
                     depth: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    """What a checkpoint learned from: first an entry for its own training data, then one for each
    pretrained audio encoder it was built from (:data:`ENCODER_CKPTS`, followed in turn). Each entry:
    ``what`` (``"S2I-C CKPT"``, ``"audio encoder ENC of S2I-C CKPT"``), ``ckpt``, ``root`` (the data
    root it records, or None), ``font`` (that data's font record, or None when it cannot be known here)
    and ``unchecked`` (why not, or None); the first also ``epoch`` and ``global_step``."""
    from cmav.data.datamodule import recorded_root
    from cmav.tasks.classifier import checkpoint_dict

    blob = checkpoint_dict(ckpt)
    entry: dict[str, Any] = {"what": what, "ckpt": None if path is None else str(path), "root": None, "font": None,
                             "unchecked": None}  # fmt: skip
    dmh = blob.get("datamodule_hyper_parameters") or {}
    root = recorded_root(dmh, missing_ok=True) if dmh.get("root") else None
    if not root:
        entry["unchecked"] = "the checkpoint does not record the data it was trained on"
    elif not Path(root).exists():
        entry.update(root=str(root), unchecked=f"its training data {root} is not on this machine")
    else:
        entry["root"] = str(root)
        try:
            entry["font"] = trained_on(blob)[1]
        except DataError as exc:
            entry["unchecked"] = f"its training data's font is unknown: {exc}"
        if entry["font"] is None and entry["unchecked"] is None:
            entry["unchecked"] = f"its training data {root} has no {MANIFEST}, so its font is unknown"
    if depth == 0:
        entry.update(epoch=blob.get("epoch"), global_step=blob.get("global_step"))
    out = [entry]
    hp = blob.get("hyper_parameters") or {}
    if hp.get("encoder_mode", "frozen") == "scratch" or depth >= 3:
        return out
    for key, name in ENCODER_CKPTS.items():
        enc = hp.get(key)
        if not enc:
            continue
        label = f"{name} {enc} of {what}"
        unread = {"what": label, "kind": name, "ckpt": str(enc), "root": None, "font": None}
        if not Path(enc).is_file():
            out.append({**unread, "unchecked": f"its {name} checkpoint {enc} is not on this machine"})
            continue
        try:
            found = training_sources(enc, label, enc, depth + 1)
        except (OSError, ValueError) as exc:
            out.append({**unread, "unchecked": f"its {name} checkpoint could not be read: {exc}"})
            continue
        found[0]["kind"] = name
        out += found
    return out


def _noting_sample_checks(notes: list[str], fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with each sample comparison it could not run
    (:class:`~cmav.standin.soundfonts.SampleComparisonWarning`) added to ``notes`` too; every
    warning is passed on."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, SampleComparisonWarning) and str(w.message) not in notes:
            notes.append(str(w.message))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def check_training_sources(sources: list[dict[str, Any]], root: str | Path, eval_root: str | Path,
                           train_font: dict[str, Any], eval_font: dict[str, Any], notes: list[str]) -> None:  # fmt: skip
    """Refuse a model (entries of :func:`training_sources`) that learned from the evaluation data
    (:class:`SameSourceError`: its recorded root is ``eval_root``, or its font is not independent of
    ``eval_font``), or whose own training fonts do not include ``root``'s (:class:`DataError`: the
    in-source column would be a second cross-source one). An entry whose font cannot be known here
    is warned about and noted in ``notes``. Entries trained on ``root`` itself get ``train_font``."""
    for i, src in enumerate(sources):
        data = src["root"]
        if data is not None and _same_folder(data, eval_root):
            raise SameSourceError(
                f"refusing a cross-source evaluation: the {src['what']} was trained on {data}, the evaluation data "
                f"itself (--eval-root {eval_root}, rendered from {describe(eval_font)}): score a model trained on "
                "other data, or evaluate on a copy rendered from a font it never heard"
            )  # fmt: skip
        if src["font"] is None and data is not None and _same_folder(data, root):
            src.update(font=train_font, unchecked=None)  # its font as given for --root
        if src["font"] is None:
            note = (f"{src['what']}: the independence of its training data from the evaluation font could not be "
                    f"checked: {src['unchecked']}")  # fmt: skip
            if note not in notes:
                notes.append(note)
                warnings.warn(note, UserWarning, stacklevel=4)  # the caller of evaluate_robustness (behind no_grad)
            continue
        _noting_sample_checks(notes, check_independent, src["font"], eval_font, f"the {src['what']}, trained on {data}")
        if i == 0 and not (data is not None and _same_folder(data, root)) and not any(
                _same_font(a, b) for a in fonts_of(train_font) for b in fonts_of(src["font"])):  # fmt: skip
            raise DataError(root, f"the {src['what']} was trained on {data} ({describe(src['font'])}), none of whose "
                                  f"fonts is --root's ({describe(train_font)}): its in-source score would be a "
                                  "second cross-source one. Pass as --root the data it was trained on (or data "
                                  f"rendered from one of its fonts), e.g. --root {data}")  # fmt: skip


@torch.no_grad()
def evaluate_robustness(
    root: str | Path,
    eval_root: str | Path,
    classifier: str | Path | None = None,
    s2i: str | Path | None = None,
    image_judge: str | Path | None = None,
    retrieval: str | Path | None = None,
    train_soundfont: str | Path | None = None,
    eval_soundfont: str | Path | None = None,
    split: str = "validation",
    out_dir: str | Path | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    progress: bool = True,
    adapt_batch_norm: bool = False,
    inference_condition: str | None = None,
    inference_neighbours: int | None = None,
) -> dict:
    """Score the given checkpoints in-source (``root``) and cross-source (``eval_root``); see the module
    docstring. Refuses (:class:`SameSourceError`) before any scoring when the fonts are not independent.
    A missing ``eval_root`` is rendered first from ``eval_soundfont`` (same preset and seed as ``root``).
    ``adapt_batch_norm``: also score the classifier and S2I-C with AdaBN on each split
    (``classifier_adapted``, ``s2i_adapted``). ``inference_condition``/``inference_neighbours``:
    what conditions S2I-C's generator (None: the checkpoint's setting; see
    :meth:`~cmav.tasks.paired_gan.PairedGANTask.set_inference_condition`); the training conditions
    come from the checkpoint, or from the data it was trained on when it has none.
    """
    from cmav.tasks.classifier import checkpoint_dict, load_image_judge, load_sound_classifier

    if classifier is None and s2i is None and retrieval is None:
        raise ValueError("give at least one checkpoint to score: a sound classifier, S2I-C (+ image judge) or retrieval")
    if adapt_batch_norm and classifier is None and s2i is None:
        raise ValueError("adapt_batch_norm re-estimates the statistics of a sound classifier or of S2I-C's audio "
                         "encoder: give --classifier or --s2i too")  # fmt: skip
    if s2i is not None and image_judge is None:
        raise ValueError("S2I-C's judged accuracy needs the image judge checkpoint too")
    if s2i is None and (inference_condition is not None or inference_neighbours is not None):
        raise ValueError("the inference condition is S2I-C's: give --s2i too")
    if _same_folder(root, eval_root):
        raise SameSourceError(f"refusing a cross-source evaluation: --root {root} and --eval-root {eval_root} are the "
                              f"same folder ({Path(eval_root).resolve()}): render the evaluation copy into another "
                              "folder from a font of other recordings")  # fmt: skip
    notes: list[str] = []  # checks that could not run here: warned about, and written into the report
    train_font = data_soundfont(root, train_soundfont)
    eval_exists = (Path(eval_root) / MANIFEST).is_file() or Path(eval_root, "chunk").is_dir()
    if not eval_exists and eval_soundfont is None:
        raise DataError(eval_root, "does not exist; build it from another font (cmav data build --soundfont PATH "
                                   f"--root {eval_root}) or pass the evaluation soundfont to render it")  # fmt: skip
    eval_font = data_soundfont(eval_root, eval_soundfont) if eval_exists else soundfont_record(eval_soundfont)
    _noting_sample_checks(notes, check_independent, train_font, eval_font)
    if eval_exists:  # the same melodies and frames, another font (the opened splits are compared too)
        check_rerender(root, eval_root, None, ("--root", "--eval-root"),
                       "Render the evaluation copy from --root: name a new --eval-root folder and pass "
                       "--eval-soundfont FONT, which renders it with --root's preset, seed and frame size")  # fmt: skip
    # ``root`` names the in-source data; what each model was really trained on (a several-source
    # build, say), and the pretrained audio encoder it was built from, must not share recordings
    # with the evaluation font either
    trained: dict[str, Any] = {}
    ckpts = {name: ckpt for name, ckpt in (("classifier", classifier), ("s2i", s2i), ("retrieval", retrieval))
             if ckpt is not None}  # fmt: skip
    blobs = {name: checkpoint_dict(ckpt) for name, ckpt in ckpts.items()}
    for name, blob in blobs.items():
        sources = training_sources(blob, f"{MODEL_NAMES[name]} {ckpts[name]}", ckpts[name])
        check_training_sources(sources, root, eval_root, train_font, eval_font, notes)
        own, encoders = sources[0], sources[1:]
        # which point of the run was scored: a last.ckpt read while its run is still going is an
        # earlier epoch than the finished one
        trained[name] = {"root": own["root"], "font": own["font"], "epoch": own["epoch"],
                         "global_step": own["global_step"]}  # fmt: skip
        if own["font"] is None:
            trained[name]["unchecked"] = own["unchecked"]
        if encoders:
            trained[name]["encoders"] = [{k: e.get(k) for k in ("what", "kind", "ckpt", "root", "font")}
                                         | ({"unchecked": e["unchecked"]} if e["font"] is None else {})
                                         for e in encoders]  # fmt: skip
    if not eval_exists:
        build_eval_copy(root, eval_root, eval_soundfont, progress=progress)
    else:
        finish_eval_copy(root, eval_root, eval_soundfont, progress=progress)

    roots = {"in_source": Path(root), "cross_source": Path(eval_root)}
    result: dict[str, Any] = {
        "split": split,
        "fonts": {"in_source": train_font, "cross_source": eval_font},
        "roots": {k: str(v) for k, v in roots.items()},
        "trained_on": trained,
        "warnings": notes,
        "models": {},
        "targets": TARGETS,
    }

    def both(name: str) -> dict[str, Any]:
        data = splits_like(blobs[name], roots, split, cache_dir, progress)
        check_same_split(root, eval_root, split, data["in_source"], data["cross_source"])
        return data

    if classifier is not None:
        task = load_sound_classifier(classifier, user="robustness")
        data = both("classifier")
        result["models"]["classifier"] = {"ckpt": str(classifier), **{k: score_classifier(task, t) for k, t in data.items()}}
        if adapt_batch_norm:
            result["models"]["classifier_adapted"] = {"ckpt": str(classifier), "transductive": True,
                                                      **{k: score_classifier(task, t, adapt_batch_norm=True) for k, t in data.items()}}  # fmt: skip
    if s2i is not None:
        from cmav.evaluation.generate import with_inference_condition
        from cmav.evaluation.paired import inference_of
        from cmav.tasks.s2i import load_s2i

        s2i_task = with_inference_condition(load_s2i(s2i), s2i, inference_condition, inference_neighbours,
                                            datamodule=lambda: training_datamodule(blobs["s2i"], root, cache_dir))  # fmt: skip
        judge = load_image_judge(image_judge)
        data = both("s2i")
        entry = {"ckpt": str(s2i), "image_judge": str(image_judge), **inference_of(s2i_task),
                 **{k: score_s2i(s2i_task, judge, t, seed) for k, t in data.items()}}  # fmt: skip
        real = data["in_source"]
        entry["judge_on_real"] = _report(judged_accuracy(judge, real.images.float().div(127.5).sub(1.0), real.labels,
                                                         real.class_names))  # fmt: skip
        result["models"]["s2i"] = entry
        if adapt_batch_norm:
            result["models"]["s2i_adapted"] = {
                "ckpt": str(s2i), "image_judge": str(image_judge), "transductive": True, **inference_of(s2i_task),
                **{k: score_s2i(adapted_s2i_generator(s2i_task, t.audio), judge, t, seed) for k, t in data.items()}}  # fmt: skip
    if retrieval is not None:
        from cmav.tasks.retrieval import load_retrieval

        rtask = load_retrieval(retrieval)
        result["models"]["retrieval"] = {"ckpt": str(retrieval),
                                         **{k: score_retrieval(rtask, t) for k, t in both("retrieval").items()}}  # fmt: skip

    result = json_safe(result)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        (out / "report.md").write_text(format_report(result))
        result["paths"] = {"metrics": str(out / "metrics.json"), "report": str(out / "report.md")}
    return result


def font_lines(fonts: dict[str, dict]) -> list[str]:
    """Markdown lines naming the training and evaluation fonts."""
    return [f"- {label}: **{f.get('name')}** — `{f.get('realpath') or f.get('path')}`, sha256 `{f.get('sha256')}`"
            for label, source in (("training font (in-source)", fonts["in_source"]),
                                  ("evaluation font (cross-source)", fonts["cross_source"]))
            for f in fonts_of(source)]  # fmt: skip


def format_report(result: dict) -> str:
    """Markdown: the fonts, then one row per score with in-source and cross-source side by side."""
    f_in, f_x = (result["fonts"][s]["name"] for s in SOURCES)
    lines = [f"# Cross-source robustness ({result['split']} split)", "", *font_lines(result["fonts"]), "",
             f"| model | score | in-source ({f_in}) | cross-source ({f_x}) | drop | target (cross-source) |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    rows = {"classifier": [("accuracy", TARGETS["classifier"]), ("balanced_accuracy", None)],
            "classifier_adapted": [("accuracy", None), ("balanced_accuracy", None)],
            "s2i": [("accuracy", TARGETS["s2i"]), ("balanced_accuracy", None)],
            "s2i_adapted": [("accuracy", None), ("balanced_accuracy", None)],
            "retrieval": [("class_R@1", None), ("instance_R@1", None)]}  # fmt: skip
    names = {"classifier": "sound classifier", "classifier_adapted": "sound classifier, AdaBN (transductive)",
             "s2i": "S2I-C (judged)", "s2i_adapted": "S2I-C (judged), encoder AdaBN (transductive)",
             "retrieval": "retrieval a→i"}  # fmt: skip
    head = []
    for model, t in (result.get("trained_on") or {}).items():
        what = describe(t["font"]) if t.get("font") else "its data's font is not recorded here"
        saved = f" (checkpoint at epoch={t['epoch']}, step={t['global_step']})" if t.get("epoch") is not None else ""
        head.append(f"- {names[model]} trained on `{t.get('root')}`: {what}{saved}")
        for enc in t.get("encoders") or []:
            kind = f"  - its {enc.get('kind') or 'encoder'} `{enc.get('ckpt')}`"
            if enc.get("root") is None:
                head.append(f"{kind}: {enc.get('unchecked') or 'its training data is not recorded'}")
            else:
                font = describe(enc["font"]) if enc.get("font") else "its data's font is not known here"
                head.append(f"{kind} trained on `{enc['root']}`: {font}")
    if result.get("warnings"):
        head += ["", "Checks that could not run here (the scores below stand, unverified on these points):",
                 *(f"- **{w}**" for w in result["warnings"])]  # fmt: skip
    lines[len(lines) - 3 : len(lines) - 3] = head
    for model, entry in result["models"].items():
        for key, target in rows[model]:
            a, b = entry["in_source"].get(key), entry["cross_source"].get(key)
            t = "—" if target is None else f"≥ {target:.2f} ({'met' if b is not None and b >= target else 'not met'})"
            drop = "n/a" if a is None or b is None else f"{a - b:+.3f}"
            lines.append(f"| {names[model]} | {key} | {format_number(a)} | {format_number(b)} | {drop} | {t} |")
    if "s2i" in result["models"]:
        s2i = result["models"]["s2i"]
        mode = s2i.get("inference_condition", "own")
        lines.append(f"\nS2I-C's generator is conditioned on {INFERENCE_WORDS.get(mode, mode)} "
                     f"(inference condition `{mode}`"
                     + (f", {s2i['inference_neighbours']} nearest" if mode == "nearest" else "") + ").")
        lines.append(f"\nImage judge on the real frames (S2I ceiling): "
                     f"{format_number(result['models']['s2i']['judge_on_real']['accuracy'])}.")  # fmt: skip
    if "retrieval" in result["models"]:
        r = result["models"]["retrieval"]["in_source"]
        lines.append(f"\nRetrieval chance R@1: class {format_number(r['class_R@1_chance'])}, instance {format_number(r['instance_R@1_chance'])}.")
    if "classifier_adapted" in result["models"] or "s2i_adapted" in result["models"]:
        lines.append("\nAdaBN (transductive): the batch-norm statistics of the classifier (for S2I-C, of its audio "
                     "encoder; the generator as trained) re-estimated on each split's own audio, labels unread. "
                     "It reads the evaluation font's audio, so it does not count towards the cross-source target.")  # fmt: skip
    split = result["split"]
    whose = {"validation": "players unseen in training, training font",
             "train": "the players the models trained on, at the frames they trained on but for any held-out tails; "
                      "training font"}.get(split, "training font")  # fmt: skip
    lines.append(f"\nIn-source: the training data's {split} split ({whose}). "
                 "Cross-source: the same split rendered from the evaluation font.")  # fmt: skip
    return "\n".join(lines) + "\n"


__all__ = ["ENCODER_CKPTS", "RENDER_ONLY", "SameSourceError", "TARGETS", "adapted_s2i_generator", "build_eval_copy",
           "check_independent", "check_rerender", "check_same_split", "check_training_sources", "data_soundfont",
           "evaluate_robustness", "finish_eval_copy", "font_lines", "format_report", "opened_as", "read_manifest", "score_classifier", "score_retrieval",
           "score_s2i", "splits_like", "trained_on", "training_datamodule", "training_sources"]  # fmt: skip
