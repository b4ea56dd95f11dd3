"""What a human study is: questions, methods, sampled pairs, the rated images, and the manifest.

Vocabulary used everywhere in ``cmav.human_eval``:

* a **pair** is one sampled validation (audio, frame) pair of the data set;
* a **method** makes one image per pair: a trained run (checkpoint), a folder of images, or
  ``real`` (the pair's own frame, the reference);
* an **item** is one image shown to raters: (pair, method), or an **attention check** (a real
  frame shown with an obviously wrong label). Items have opaque ids (``i`` + random hex): the page,
  the image file names and the ratings files never say which method made an image; only the
  manifest does.

The manifest (``manifest.json``) is the single source of truth the analysis validates against:
study id, questions, methods, pairs, items (with the sha256 of every image file) and how each
rater's order is drawn (:func:`rater_order`, mirrored in the page's JavaScript).

The **fingerprint** (``fp-`` + 16 hex digits, :func:`content_fingerprint`) names one version of a
study's content: its questions and, per item, the method's name, the pair, the label shown and the
image's sha256. Item ids are drawn from it (and the study id), so a study made again from other
images (a retrained run, methods swapped) gets other ids; the page writes it into every export
and the CSV template carries it, so a sheet of another version is refused by name. Manifests
written before it existed have none (``""``) and are read as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cmav.data.files import sha256_file
from cmav.human_eval.errors import HumanEvalError

MANIFEST_FORMAT = "cmav-human-eval-study"
MANIFEST_VERSION = 1
REFERENCE = "real"  # the method name of the real frames
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # study ids and question ids: safe in file names
QUESTION_ID = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
LABEL_SLOT = "{label}"


@dataclass(frozen=True)
class Question:
    """One rating question on an integer scale ``min..max``.

    ``text`` may hold ``{label}``: the item's label is put there (as text, never markup).
    ``low``/``high`` name the ends of the scale. ``attention_max``: on attention checks (a real
    frame with a wrong label) an attentive rater answers at most this; ``None`` = not used for
    checks. Exactly one question must set it when the study has checks."""

    id: str
    text: str
    min: int = 1
    max: int = 5
    low: str = ""
    high: str = ""
    attention_max: int | None = None

    def validate(self, where: str | Path = "questions") -> None:
        if not isinstance(self.id, str) or not QUESTION_ID.match(self.id):
            raise HumanEvalError(where, f"question id {self.id!r} must be lower-case letters, digits or _ "
                                        "(starting with a letter, at most 32)")  # fmt: skip
        if not isinstance(self.text, str) or not self.text.strip():
            raise HumanEvalError(where, f"question {self.id!r} has no text")
        for name in ("low", "high"):
            if not isinstance(getattr(self, name), str):
                # YAML reads bare no/yes/off/on as booleans: say so rather than fail later
                raise HumanEvalError(where, f"question {self.id!r}: {name} must be text, got "
                                            f"{getattr(self, name)!r} (in YAML, quote words like no or yes)")  # fmt: skip
        whole = isinstance(self.min, int) and isinstance(self.max, int)
        if not whole or not 1 <= self.max - self.min <= 20:
            raise HumanEvalError(where, f"question {self.id!r}: scale {self.min!r}..{self.max!r} must be whole numbers, "
                                        "min < max, at most 21 points")  # fmt: skip
        if self.attention_max is not None and not (
            isinstance(self.attention_max, int) and self.min <= self.attention_max < self.max
        ):
            raise HumanEvalError(where, f"question {self.id!r}: attention_max {self.attention_max!r} must be a "
                                        f"whole number in {self.min}..{self.max - 1}")  # fmt: skip

    def text_for(self, label: str) -> str:
        return self.text.replace(LABEL_SLOT, label)


DEFAULT_QUESTIONS: tuple[Question, ...] = (
    Question("match", "How well does the image match the label {label}?", 1, 5,
             low="not at all", high="perfectly", attention_max=2),  # fmt: skip
    Question("realism", "How realistic is the image?", 1, 5, low="clearly artificial", high="looks like a real photo"),
)


def check_questions(questions: Sequence[Question], where: str | Path = "questions") -> None:
    """Raise :class:`HumanEvalError` for a bad or ambiguous question list."""
    if not questions:
        raise HumanEvalError(where, "no questions")
    ids = [q.id for q in questions]
    for q in questions:
        q.validate(where)
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise HumanEvalError(where, f"question id(s) used twice: {', '.join(dup)}")
    if sum(q.attention_max is not None for q in questions) > 1:
        raise HumanEvalError(where, "at most one question may set attention_max (the one attention checks use)")


def load_questions(path: str | Path) -> list[Question]:
    """Questions from a JSON or YAML file: a list of objects with the fields of :class:`Question`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise HumanEvalError(path, f"cannot read the questions file ({exc.strerror or exc})") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # yaml and json raise different types; the message is what matters
        raise HumanEvalError(path, f"not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                                   f"{str(exc).splitlines()[0]}") from exc  # fmt: skip
    if isinstance(raw, dict) and "questions" in raw:
        raw = raw["questions"]
    if not isinstance(raw, list) or not all(isinstance(q, dict) for q in raw):
        raise HumanEvalError(path, "expected a list of questions, each an object with id and text")
    known = set(Question.__dataclass_fields__)
    out = []
    for q in raw:
        unknown = sorted(set(q) - known)
        if unknown:
            raise HumanEvalError(path, f"question {q.get('id')!r}: unknown field(s) {', '.join(unknown)} "
                                       f"(known: {', '.join(sorted(known))})")  # fmt: skip
        if "id" not in q or "text" not in q:
            raise HumanEvalError(path, f"every question needs an id and a text; got {sorted(q)}")
        out.append(Question(**q))
    check_questions(out, path)
    return out


@dataclass(frozen=True)
class Method:
    """Where one method's images come from: ``kind`` is ``reference``, ``checkpoint`` or ``images``."""

    name: str
    kind: str
    source: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Pair:
    """A sampled validation pair (``index`` is its position in the reference split)."""

    id: str
    stem: str
    class_name: str
    index: int
    track: int = -1
    time_ms: int = -1


@dataclass(frozen=True)
class Item:
    """One image shown to raters. ``check``: an attention check (``pair`` is then the check's own
    real pair, ``label`` a wrong class and ``true_class`` the right one)."""

    id: str
    method: str
    pair: str
    label: str
    image: str
    sha256: str
    check: bool = False
    true_class: str | None = None


@dataclass
class Manifest:
    """Everything about a study that the page shows and the analysis checks ratings against."""

    study_id: str
    title: str
    instructions: str
    questions: list[Question]
    methods: list[Method]
    pairs: list[Pair]
    items: list[Item]
    seed: int
    data: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    cmav_version: str = ""
    fingerprint: str = ""  # "" in manifests written before fingerprints existed
    # --paper-raters: rater id -> "paper/<stem>", the sheet (.html) and CSV (.csv) in that rater's order;
    # their typed-in answers must follow that order ({} in manifests written before it was recorded)
    paper_raters: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ lookups

    @property
    def item_ids(self) -> list[str]:
        return [i.id for i in self.items]

    def item(self, item_id: str) -> Item:
        return self._by_id[item_id]

    @property
    def _by_id(self) -> dict[str, Item]:
        return {i.id: i for i in self.items}

    @property
    def pair_by_id(self) -> dict[str, Pair]:
        return {p.id: p for p in self.pairs}

    @property
    def method_names(self) -> list[str]:
        return [m.name for m in self.methods]

    @property
    def attention_question(self) -> Question | None:
        return next((q for q in self.questions if q.attention_max is not None), None)

    @property
    def checks(self) -> list[Item]:
        return [i for i in self.items if i.check]

    # ------------------------------------------------------------------ (de)serialisation

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "study_id": self.study_id,
            "fingerprint": self.fingerprint,
            "title": self.title,
            "instructions": self.instructions,
            "created": self.created,
            "cmav_version": self.cmav_version,
            "seed": self.seed,
            "order": "per rater: Fisher-Yates shuffle of the sorted item ids driven by mulberry32 seeded with "
            "FNV-1a-32 of UTF-8(study_id + '\\n' + rater_id); cmav.human_eval.study.rater_order",
            "data": self.data,
            "questions": [asdict(q) for q in self.questions],
            "methods": [asdict(m) for m in self.methods],
            "pairs": [asdict(p) for p in self.pairs],
            "items": [asdict(i) for i in self.items],
            "paper_raters": self.paper_raters,
        }

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / "manifest.json"
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, raw: Any, where: str | Path) -> Manifest:
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
            raise HumanEvalError(where, f"not a cmav study manifest (no \"format\": \"{MANIFEST_FORMAT}\")")
        if raw.get("version") != MANIFEST_VERSION:
            raise HumanEvalError(where, f"manifest version {raw.get('version')!r}; this cmav reads {MANIFEST_VERSION}")
        try:
            m = cls(
                study_id=raw["study_id"],
                title=raw.get("title", ""),
                instructions=raw.get("instructions", ""),
                questions=[Question(**q) for q in raw["questions"]],
                methods=[Method(**x) for x in raw["methods"]],
                pairs=[Pair(**p) for p in raw["pairs"]],
                items=[Item(**i) for i in raw["items"]],
                seed=int(raw.get("seed", 0)),
                data=raw.get("data", {}),
                created=raw.get("created", ""),
                cmav_version=raw.get("cmav_version", ""),
                fingerprint=raw.get("fingerprint") or "",
                paper_raters=raw.get("paper_raters") or {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HumanEvalError(where, f"malformed manifest ({type(exc).__name__}: {exc})") from exc
        check_questions(m.questions, where)
        if not isinstance(m.fingerprint, str):
            raise HumanEvalError(where, f"malformed manifest: fingerprint {m.fingerprint!r} is not text")
        if not isinstance(m.paper_raters, dict) or not all(isinstance(v, str) for v in m.paper_raters.values()):
            raise HumanEvalError(where, "malformed manifest: paper_raters must map rater ids to paper/<file> names")
        ids = m.item_ids
        if len(set(ids)) != len(ids):
            raise HumanEvalError(where, "malformed manifest: an item id is used twice")
        return m


def load_manifest(study: str | Path) -> Manifest:
    """The manifest of a study folder (or of a ``manifest.json`` path)."""
    study = Path(study)
    path = study / "manifest.json" if study.is_dir() else study
    if not path.is_file():
        raise HumanEvalError(path, "no study manifest here: give the folder written by `cmav human-eval make`")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HumanEvalError(path, f"unreadable manifest ({exc})") from exc
    return Manifest.from_json(raw, path)


def verify_images(study: str | Path, manifest: Manifest) -> list[str]:
    """Problems with the study's image files (missing, or changed since the manifest was written)."""
    study = Path(study)
    if study.is_file():
        study = study.parent
    problems = []
    for item in manifest.items:
        path = study / item.image
        if not path.is_file():
            problems.append(f"{path}: image of item {item.id} is missing")
        elif sha256_file(path) != item.sha256:
            problems.append(f"{path}: image of item {item.id} changed since the study was made (sha256 differs)")
    return problems


# ---------------------------------------------------------------------- hashing and ids


def content_json(questions: Sequence[Question], items: Sequence[tuple[str, str, str, str, bool, str]]) -> str:
    """The content a study version is made of, as canonical JSON: the questions, and per item
    ``(method name, pair class, pair stem, label shown, is a check, image sha256)``. No paths and no
    order: the same images from another folder, or runs listed in another order, are the same content."""
    return json.dumps({"questions": [asdict(q) for q in questions], "items": sorted(map(list, items))},
                      sort_keys=True, ensure_ascii=True, separators=(",", ":"))  # fmt: skip


def content_fingerprint(content: str) -> str:
    """``fp-`` + 16 hex digits of the sha256 of :func:`content_json` (the letters keep a spreadsheet
    from reading it as a number)."""
    import hashlib

    return "fp-" + hashlib.sha256(("fingerprint\n" + content).encode()).hexdigest()[:16]


def manifest_fingerprint(manifest: Manifest) -> str | None:
    """The fingerprint of what a manifest lists (None when an item names an unknown pair): equal to
    its ``fingerprint`` unless the manifest was edited after the study was made."""
    pairs = manifest.pair_by_id
    if any(i.pair not in pairs for i in manifest.items):
        return None
    keys = [(i.method, pairs[i.pair].class_name, pairs[i.pair].stem, i.label, i.check, i.sha256)
            for i in manifest.items]  # fmt: skip
    return content_fingerprint(content_json(manifest.questions, keys))


def id_rng(study_id: str, content: str) -> np.random.Generator:
    """The generator item ids are drawn from: seeded by the study id and the content, so the same id
    never names another image in a study of the same id made from other images."""
    import hashlib

    digest = hashlib.sha256(f"item ids\n{study_id}\n{content}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def opaque_ids(n: int, rng: np.random.Generator, length: int = 8) -> list[str]:
    """``n`` distinct random ids, ``i`` and ``length`` hex digits: they carry no method, pair or order
    information. The letter keeps a spreadsheet from reading one as a number (``07417297`` as
    7417297, ``502363e8`` as 5.02E+13), which a typed-in paper sheet would then carry."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        x = "i" + "".join(f"{b:02x}" for b in rng.integers(0, 256, size=length // 2))
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


# ---------------------------------------------------------------------- per-rater order

_M32 = 0xFFFFFFFF


def fnv1a32(data: bytes) -> int:
    """FNV-1a, 32 bit (the page's JavaScript computes the same over the UTF-8 bytes)."""
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & _M32
    return h


def mulberry32(seed: int):
    """A 32-bit PRNG that is short to write identically in JavaScript; returns floats in [0, 1)."""
    state = seed & _M32

    def imul(a: int, b: int) -> int:
        return (a * b) & _M32

    def nxt() -> float:
        nonlocal state
        state = (state + 0x6D2B79F5) & _M32
        t = imul(state ^ (state >> 15), 1 | state)
        t = ((t + imul(t ^ (t >> 7), 61 | t)) & _M32) ^ t
        return ((t ^ (t >> 14)) & _M32) / 4294967296.0

    return nxt


RATER_ID_MAX = 100
_TRIM = " \t\r\n"


def normalise_rater_id(rater_id: str) -> str:
    """Rater ids are compared after trimming spaces, tabs and line breaks around them (the page
    trims exactly these too, so both compute the same order)."""
    return rater_id.strip(_TRIM)


def rater_id_problem(rater_id: object) -> str | None:
    """Why ``rater_id`` cannot be used (None when it can): 1 to 100 characters of text, no
    control characters. Anything else (markup included) is allowed: it is data, shown as text."""
    import unicodedata

    if not isinstance(rater_id, str):
        return f"rater id must be text, got {type(rater_id).__name__}"
    rid = normalise_rater_id(rater_id)
    if not rid:
        return "empty rater id"
    if len(rid) > RATER_ID_MAX:
        return f"rater id longer than {RATER_ID_MAX} characters"
    # line and paragraph separators too: a CSV tool splits lines there (the page refuses the same set)
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in rid):
        return "rater id holds control characters"
    return None


def check_paper_raters(paper_raters: Sequence[str]) -> list[str]:
    """The paper raters' ids, trimmed; an unusable id or one given twice is refused (two sheets for one rater)."""
    seen: dict[str, str] = {}
    for raw in paper_raters:
        problem = rater_id_problem(raw)
        if problem:
            raise HumanEvalError("--paper-raters", f"{raw!r}: {problem}")
        rid = normalise_rater_id(raw)
        if rid in seen:
            raise HumanEvalError("--paper-raters", f"{raw!r} is the same rater as {seen[rid]!r} (ids are compared "
                                                   "with surrounding spaces trimmed): give each rater once")  # fmt: skip
        seen[rid] = raw
    return list(seen)


def rater_order(study_id: str, rater_id: str, item_ids: Sequence[str]) -> list[str]:
    """The order in which rater ``rater_id`` sees the items: the same every time for one rater, a
    different shuffle for another (the page runs the identical algorithm in JavaScript)."""
    rand = mulberry32(fnv1a32(f"{study_id}\n{normalise_rater_id(rater_id)}".encode()))
    order = sorted(item_ids)  # canonical start: the order of the input list must not matter
    for i in range(len(order) - 1, 0, -1):
        j = int(rand() * (i + 1))
        order[i], order[j] = order[j], order[i]
    return order


# ---------------------------------------------------------------------- sampling


def sample_pairs(labels: Sequence[int], n: int, rng: np.random.Generator, exclude: set[int] | None = None) -> list[int]:
    """``n`` indices spread over the classes as evenly as possible (round robin over the classes in a
    random order, a random pair of each class per round), so every class is rated when n >= classes."""
    labels = np.asarray(labels)
    exclude = exclude or set()
    pools = {}
    for c in np.unique(labels):
        idx = [int(i) for i in np.flatnonzero(labels == c) if int(i) not in exclude]
        if idx:
            pools[int(c)] = [idx[k] for k in rng.permutation(len(idx))]
    available = sum(len(v) for v in pools.values())
    if n > available:
        raise ValueError(f"asked for {n} pairs but only {available} are available")
    order = [list(pools)[k] for k in rng.permutation(len(pools))]
    picks: list[int] = []
    depth = 0
    while len(picks) < n:
        for c in order:
            if depth < len(pools[c]) and len(picks) < n:
                picks.append(pools[c][depth])
        depth += 1
    return picks


def display_label(class_name: str) -> str:
    """The label raters read: Sub-URMP's folder names with spaces (``double_bass`` -> ``double bass``)."""
    return class_name.replace("_", " ")


def check_seed(seed: object) -> int:
    """``seed`` as given to ``--seed``: a whole number, 0 or more (numpy refuses a negative seed with a
    message that names no option)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise HumanEvalError("--seed", f"{seed!r}: must be a whole number, 0 or more")
    return int(seed)


def check_study_id(study_id: str) -> str:
    if not isinstance(study_id, str) or not ID_PATTERN.match(study_id):
        raise HumanEvalError("--study-id", f"{study_id!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return study_id


__all__ = [
    "DEFAULT_QUESTIONS",
    "Item",
    "Manifest",
    "Method",
    "Pair",
    "Question",
    "REFERENCE",
    "check_paper_raters",
    "check_questions",
    "check_seed",
    "content_fingerprint",
    "content_json",
    "display_label",
    "load_manifest",
    "load_questions",
    "manifest_fingerprint",
    "rater_order",
    "sample_pairs",
    "sha256_file",
    "verify_images",
]
