"""``cmav human-eval make``: sample pairs, make one image per method and pair, write the study folder.

The folder::

    manifest.json         the key: methods, pairs, items (which method made which image), sha256 of
                          every image. Keep it; do NOT send it to raters (it unblinds them).
    index.html            the rating page (self-contained; opens from disk; no server)
    images/<item>.png     the images, named by opaque item id
    print.html            printable sheet (paper studies; "print to PDF" makes the PDF)
    ratings_template.csv  the CSV to type print.html's answers into, in its order (the page's export has these columns)
    paper/<rater>.html    with --paper-raters: a rater's own sheet, in that rater's order; its answers
    paper/<rater>.csv     are typed into the .csv beside it (same order), never into ratings_template.csv
    for_raters.zip        index.html + images/ + print.html: what to send
    README.txt            these lines
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import textwrap
import zipfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cmav.human_eval.errors import HumanEvalError
from cmav.human_eval.study import (
    DEFAULT_QUESTIONS,
    REFERENCE,
    Item,
    Manifest,
    Method,
    Pair,
    Question,
    check_paper_raters,
    check_questions,
    check_seed,
    check_study_id,
    content_fingerprint,
    content_json,
    display_label,
    id_rng,
    opaque_ids,
    sample_pairs,
)

DEFAULT_INSTRUCTIONS = (
    "You will see a series of images, one at a time, each with the name of a musical instrument. "
    "Some images were made by computer programs and some are photographs; rate each image on its own. "
    "Answer every question; there are no right or wrong answers, but please look carefully at each image."
)  # the page adds how it keeps and exports answers, the print sheet how to tick boxes
MIN_SIDE = 8  # the smallest --size / --image-size, in pixels
OUR_FILES = ("manifest.json", "index.html", "print.html", "ratings_template.csv", "for_raters.zip", "README.txt")


def _prepare_folder(out: Path, force: bool) -> None:
    """Never overwrite a study whose ratings may be in flight (its ids would change) unless told to."""
    if out.exists() and not out.is_dir():
        raise HumanEvalError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "manifest.json").is_file():
            raise HumanEvalError(out, "folder is not empty and holds no study; pick a new folder")
        if not force:
            raise HumanEvalError(out, "already holds a study (ratings of it would no longer match); "
                                      "use another folder or --force to replace it")  # fmt: skip
        for name in OUR_FILES:
            (out / name).unlink(missing_ok=True)
        for folder in ("images", "paper"):
            shutil.rmtree(out / folder, ignore_errors=True)
    (out / "images").mkdir(parents=True, exist_ok=True)


def _wrong_label(true_name: str, names: Sequence[str], rng: np.random.Generator) -> str:
    """An obviously wrong label: another class, of another instrument family when known (a violin
    frame labelled 'tuba', not 'viola')."""
    from cmav.data.instruments import INSTRUMENT_SPECS

    def group(name: str) -> str | None:  # bowed, brass, reed, flute
        spec = INSTRUMENT_SPECS.get(name)
        return spec.family.split("_")[0] if spec else None

    others = [n for n in names if n != true_name]
    if group(true_name) is not None:
        others = [n for n in others if group(n) not in (None, group(true_name))] or others
    return others[int(rng.integers(len(others)))]


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))


def _png(img: np.ndarray) -> bytes:
    """The PNG file of an image (its sha256 is the file's: the fingerprint is known before any id)."""
    from PIL import Image

    buf = io.BytesIO()
    # no text chunks: nothing in the file says where it came from
    Image.fromarray(np.ascontiguousarray(img)).save(buf, format="PNG")
    return buf.getvalue()


def _check_side(option: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < MIN_SIDE:
        raise HumanEvalError(option, f"{value!r}: the side of the images in pixels must be a whole number, "
                                     f"at least {MIN_SIDE} (leave it out for the default)")  # fmt: skip


def make_study(
    runs: Sequence[str],
    out_dir: str | Path,
    n_items: int = 15,
    seed: int = 0,
    data_root: str | None = None,
    layout: str | None = None,
    image_size: int | None = None,
    questions: Sequence[Question] | None = None,
    n_checks: int = 3,
    study_id: str | None = None,
    size: int | None = None,
    title: str | None = None,
    instructions: str | None = None,
    paper_raters: Sequence[str] = (),
    force: bool = False,
) -> Manifest:
    """Write a study folder (see the module docstring) and return its manifest.

    ``runs``: run folders, checkpoints or image folders (``NAME=PATH`` to name one); the real frame
    is always added as the method ``real``. ``data_root``/``layout``: the data set (default: the
    one stored in the first checkpoint). ``image_size``: the side the real frames are read at when
    no checkpoint says it. ``size``: the side every image is shown at (default: the largest
    method's, so no method is blurred and real frames are not sharper than generated ones by
    resolution alone). ``paper_raters``: also write ``paper/<rater>.html/.csv`` in that rater's own order
    (each rater once). ``size`` and ``image_size`` are at least :data:`MIN_SIDE` pixels.
    """
    from cmav.human_eval.sources import resolve_runs

    if n_items < 1:
        raise HumanEvalError("--items", "must be at least 1")
    if n_checks < 0:
        raise HumanEvalError("--checks", "must be 0 or more")
    check_seed(seed)
    _check_side("--size", size)
    _check_side("--image-size", image_size)
    questions = list(questions or DEFAULT_QUESTIONS)
    check_questions(questions)
    if n_checks and not any(q.attention_max is not None for q in questions):
        raise HumanEvalError("questions", "attention checks need a question with attention_max "
                                          "(or make the study with --checks 0)")  # fmt: skip
    if study_id is not None:
        check_study_id(study_id)
    check_paper_raters(paper_raters)
    sources = resolve_runs(list(runs))
    out = Path(out_dir)
    _prepare_folder(out, force)
    try:
        return _make(sources, out, n_items, seed, data_root, layout, image_size, questions, n_checks, study_id,
                     size, title, instructions, paper_raters)  # fmt: skip
    except BaseException:
        # a half-made study must not look like one (nor block the next try): remove what was written
        for name in OUR_FILES:
            (out / name).unlink(missing_ok=True)
        for folder in ("images", "paper"):
            shutil.rmtree(out / folder, ignore_errors=True)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _make(sources, out: Path, n_items: int, seed: int, data_root: str | None, layout: str | None,
          image_size: int | None, questions: list[Question], n_checks: int, study_id: str | None, size: int | None,
          title: str | None, instructions: str | None, paper_raters: Sequence[str]) -> Manifest:  # fmt: skip
    """The body of :func:`make_study`, once the arguments are checked and the folder is ready."""
    from cmav import __version__
    from cmav.human_eval.page import paper_sheets, write_pages
    from cmav.human_eval.sources import (
        DataConfig,
        checkpoint_data,
        checkpoint_facts,
        checkpoint_images,
        folder_images,
        open_data,
        real_images,
    )

    facts = {r.name: checkpoint_facts(r.path) for r in sources if r.kind == "checkpoint"}
    ref_config = None
    for r in sources:
        if r.kind == "checkpoint":
            ref_config = checkpoint_data(facts[r.name], data_root, layout)
            if ref_config is not None:
                break
    if ref_config is None:
        if data_root is None:
            raise HumanEvalError("--data", "no checkpoint says which data set it was trained on: give --data ROOT")
        ref_config = DataConfig(root=data_root, layout=layout or "suburmp", image_size=image_size or 64)
    native = [ref_config.image_size] + [f.image_size for f in facts.values()]
    size = int(size or max(native))
    if image_size is not None and ref_config.image_size != image_size:
        ref_config = dataclasses.replace(ref_config, image_size=image_size)
    elif image_size is None and ref_config.image_size != size:
        # the real frames are read at the size they are shown at: read at the first run's size and
        # scaled up to a larger run's, they looked blurred beside that run's frames, and how much
        # depended on the order of --runs
        ref_config = dataclasses.replace(ref_config, image_size=size)
    ref = open_data(ref_config, "the reference data set" if data_root is None else "--data")
    t = ref.tensors
    names = list(t.class_names)
    labels = t.labels.tolist()

    rng = np.random.default_rng(seed)
    try:
        picks = sample_pairs(labels, n_items, rng)
    except ValueError as exc:
        raise HumanEvalError(ref.root, f"validation split: {exc} (ask for fewer --items)") from exc
    try:
        check_picks = sample_pairs(labels, n_checks, rng, exclude=set(picks)) if n_checks else []
    except ValueError as exc:
        raise HumanEvalError(ref.root, f"attention checks: {exc} beyond the rated pairs (ask for fewer --checks)") from exc
    if n_checks and len(set(labels)) < 2:
        raise HumanEvalError(ref.root, "attention checks need at least two classes (a wrong label to show)")

    def pair_of(i: int, pid: str) -> Pair:
        return Pair(pid, t.stems[i], names[labels[i]], int(i), int(t.tracks[i]), int(t.times[i]))

    picks = sorted(picks, key=lambda i: (names[labels[i]], t.stems[i]))
    pairs = [pair_of(i, f"p{k + 1:02d}") for k, i in enumerate(picks)]
    check_pairs = [pair_of(i, f"c{k + 1:02d}") for k, i in enumerate(check_picks)]

    methods = [Method(REFERENCE, "reference", str(ref_config.root), {"data": ref_config.describe()})]
    images: dict[str, list[np.ndarray]] = {REFERENCE: real_images(ref, pairs)}
    for r in sources:
        if r.kind == "checkpoint":
            imgs, info = checkpoint_images(r, facts[r.name], pairs, data_root, layout, ref_config, seed)
        else:
            imgs, info = folder_images(r, pairs, size)
        methods.append(Method(r.name, r.kind, str(r.path), info))
        images[r.name] = imgs

    # (method, pair, label, image, check, true class) per item
    rows = [(m, p.id, display_label(p.class_name), images[m][k], False, None)
            for m in images for k, p in enumerate(pairs)]  # fmt: skip
    check_imgs = real_images(ref, check_pairs)
    for p, img in zip(check_pairs, check_imgs, strict=True):
        rows.append((REFERENCE, p.id, display_label(_wrong_label(p.class_name, names, rng)), img, True,
                     p.class_name))  # fmt: skip
    pngs = [_png(_resize(img, size)) for _, _, _, img, _, _ in rows]
    digests = [hashlib.sha256(b).hexdigest() for b in pngs]
    # the content (never paths, nor the order of --runs) names the study and seeds its ids: the same
    # id never names another method's image in a study of the same id made from other images, and
    # the same study made again from the same images gets the same ids
    by_pid = {p.id: p for p in pairs + check_pairs}
    keys = [(m, by_pid[pid].class_name, by_pid[pid].stem, label, check, digest)
            for (m, pid, label, _, check, _), digest in zip(rows, digests, strict=True)]  # fmt: skip
    content = content_json(questions, keys)
    fingerprint = content_fingerprint(content)
    if study_id is None:
        study_id = "hs-" + hashlib.sha256(("study id\n" + content).encode()).hexdigest()[:10]
    # ids drawn in an order fixed by the content, from a generator seeded by a hash of it: neither an
    # id nor its rank says which method or pair it is
    order = sorted(range(len(rows)), key=lambda k: keys[k])
    ids = dict(zip(order, opaque_ids(len(rows), id_rng(study_id, content)), strict=True))
    items = []
    # written in id order, which is random: files written method by method would tell the methods
    # apart by their modification times (which for_raters.zip keeps too)
    for k in sorted(range(len(rows)), key=ids.__getitem__):
        m, pid, label, _, check, true_class = rows[k]
        rel = f"images/{ids[k]}.png"
        (out / rel).write_bytes(pngs[k])
        items.append(Item(ids[k], m, pid, label, rel, digests[k], check, true_class))
    method_rank = {m.name: k for k, m in enumerate(methods)}
    items.sort(key=lambda i: (i.check, i.pair, method_rank[i.method]))
    manifest = Manifest(
        study_id=study_id,
        title=title or "Image rating study",
        instructions=instructions if instructions is not None else DEFAULT_INSTRUCTIONS,
        questions=questions,
        methods=methods,
        pairs=pairs + check_pairs,
        items=items,
        seed=seed,
        data={**ref_config.describe(), "display_size": size},
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        cmav_version=__version__,
        fingerprint=fingerprint,
        paper_raters=paper_sheets(paper_raters),
    )
    write_pages(out, manifest, paper_raters)
    _write_zip(out)
    listing = textwrap.dedent(__doc__.split("The folder::", 1)[1]).strip("\n")
    (out / "README.txt").write_text(f"Study {study_id} (cmav human-eval make; see human_eval/README.md)\n\n{listing}\n\n"
                                    f"Collect the raters' files, then: cmav human-eval analyze {out} RATINGS...\n",
                                    encoding="utf-8")  # fmt: skip
    manifest.save(out)  # last: a folder holds a study only once everything else is there
    return manifest


def _write_zip(out: Path) -> Path:
    """``for_raters.zip``: the page, the images and the print sheet; never the manifest."""
    path = out / "for_raters.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name in ("index.html", "print.html"):
            z.write(out / name, name)
        for img in sorted((out / "images").glob("*.png")):
            z.write(img, f"images/{img.name}")
    return path


__all__ = ["DEFAULT_INSTRUCTIONS", "MIN_SIDE", "make_study"]
