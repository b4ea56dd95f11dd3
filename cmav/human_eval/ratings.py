"""Reading and validating ratings files (the page's JSON/CSV exports and typed-in paper CSVs).

Every problem becomes one clear message naming the file (and row or item): a ratings file of
another study or of another version of this one (its fingerprint), an unknown item, a value outside the scale or not a whole number, a rater id used
twice, unanswered items or questions, unreadable files. Nothing is dropped silently: by default
any problem stops the analysis; with ``skip_invalid`` the raters with problems are left out and
listed (a duplicated rater keeps its first file).

Formats:

* JSON (the page's export): ``{"format": "cmav-human-eval-ratings", "study_id", "fingerprint",
  "rater_id", "ratings": [{"item", "position", "answers": {question: value}}]}``; a list of such
  objects is read as several raters.
* CSV (the page's export and ``ratings_template.csv``): columns ``study_id, rater_id, item``,
  one per question, and optionally ``position`` and ``fingerprint``; one row per rater and item,
  any number of raters. Headers are matched ignoring case and surrounding spaces. Separated by
  commas, semicolons or tabs (whichever splits the header into known columns); UTF-8 (a BOM
  allowed) or UTF-16 with a BOM; no other encoding is guessed. Empty columns (a spreadsheet's
  trailing ``,,``) are no columns; a header row repeated inside the data (files joined) is refused.

A rater given to ``make --paper-raters`` (listed in the manifest) typed in with positions must have
them in that rater's own order, the order of ``paper/<rater>.html`` and ``.csv``: answers typed from
that sheet into ``ratings_template.csv``'s rows (another order) would each sit on another image.

``fingerprint`` (written by the page and the templates) is optional; where given it must be the
manifest's, or the sheet is of another version of the study and is refused. Folders are read with
their subfolders; hidden files and folders (``.name``) and files that are not .json/.csv are not
read, and are listed as ignored.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cmav.human_eval.page import PAPER_RATER, RATINGS_FORMAT
from cmav.human_eval.study import Manifest, normalise_rater_id, rater_id_problem, rater_order

DELIMITERS = (",", ";", "\t")  # a spreadsheet's CSV, its European variant, its "Unicode text"
LIST_AT_MOST = 8  # item ids listed per message before "..."
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass
class RaterSheet:
    """One rater's validated answers: ``answers[item][question] = value``."""

    rater_id: str
    source: Path
    answers: dict[str, dict[str, int]]
    positions: dict[str, int] = field(default_factory=dict)


@dataclass
class Problem:
    path: Path
    message: str
    rater_id: str | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class RatingsSet:
    """The raters that passed validation, every problem found, and which raters were left out."""

    sheets: list[RaterSheet]
    problems: list[Problem]
    excluded: list[tuple[str, str, str]]  # (file, rater id or "", why)
    files: list[Path]
    ignored: list[tuple[str, str]]  # (path, why) of what a given folder holds that was not read


@dataclass
class _Submission:
    """One rater's answers as read, before validation."""

    source: Path
    rater_raw: Any
    study_raw: list[Any]
    entries: list[tuple[str, Any, Any, Any]]  # (where, item, answers dict or None, position)
    problems: list[str] = field(default_factory=list)
    fingerprints: list[Any] = field(default_factory=list)  # as given (none: the file carries none)


def _listing(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:LIST_AT_MOST])
    return shown + (f" ... ({len(ids) - LIST_AT_MOST} more)" if len(ids) > LIST_AT_MOST else "")


def _walk(folder: Path, files: list[Path], ignored: list[tuple[str, str]], skip: set[Path], seen: set[Path]) -> None:
    """A folder's ``*.json``/``*.csv``, its subfolders' too; everything else it holds listed in ``ignored``."""
    seen.add(folder.resolve())
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        ignored.append((str(folder), f"unreadable folder ({exc.strerror or exc})"))
        return
    for f in entries:
        if f.name.startswith("."):
            ignored.append((str(f), "hidden folder" if f.is_dir() else "hidden file"))
        elif f.is_dir():
            key = f.resolve()
            if key in skip:
                ignored.append((str(f), "the report folder"))
            elif key in seen:
                ignored.append((str(f), "a link to a folder already read"))
            else:
                _walk(f, files, ignored, skip, seen)
        elif not f.is_file():
            ignored.append((str(f), "not a file"))
        elif f.suffix.lower() in (".json", ".csv"):
            files.append(f)
        else:
            ignored.append((str(f), "not .json or .csv"))


def expand_paths(paths: Iterable[str | Path], skip: Iterable[str | Path] = ()) -> tuple[
        list[Path], list[tuple[str, str]], list[Problem]]:  # fmt: skip
    """Files to read: files as given, folders' ``*.json``/``*.csv`` with their subfolders'. What else
    a folder holds (hidden files and folders, other files, the folders in ``skip``: the report's) is
    listed in the second list as (path, why); a missing path is a problem."""
    files: list[Path] = []
    ignored: list[tuple[str, str]] = []
    problems: list[Problem] = []
    skip_dirs = {Path(s).resolve() for s in skip}
    for p in map(Path, paths):
        if p.is_dir():
            _walk(p, files, ignored, skip_dirs, set())
        elif p.is_file():
            files.append(p)
        else:
            problems.append(Problem(p, "no such ratings file or folder"))
    seen: set[Path] = set()
    unique = []
    for f in files:  # a file named twice (a folder and a glob) is one file, not a duplicate rater
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, ignored, problems


def _read_text(path: Path) -> tuple[str | None, str]:
    """The file's text, or None and why it cannot be read. UTF-8 (a BOM allowed: spreadsheets write
    one), or UTF-16/32 with a BOM (Excel's "Unicode text"). No other encoding is guessed: cp1252 and
    Latin-1 decode any bytes, so a guess would turn a rater id like 'Müller' silently into another."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    for bom, encoding in ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
                          (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):  # fmt: skip
        if data.startswith(bom):  # UTF-32's BOMs begin with UTF-16's: they are tried first
            try:
                return data.decode(encoding), ""
            except UnicodeDecodeError:
                name = encoding.upper()
                return None, f"not valid {name} text, though it starts with a {name} byte order mark"
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return body.decode("utf-8"), ""
    except UnicodeDecodeError as exc:
        line = body.count(b"\n", 0, exc.start) + 1
        how = ("save it as UTF-8" if path.suffix.lower() == ".json" else "save it as \"CSV UTF-8\" (Excel: Save As > "
               "CSV UTF-8 (Comma delimited); LibreOffice: character set Unicode (UTF-8))")  # fmt: skip
        return None, f"not UTF-8 text (byte 0x{body[exc.start]:02x} on line {line}): {how}"


def _read_json(path: Path, text: str) -> tuple[list[_Submission], list[Problem]]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [Problem(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})")]
    objs = raw if isinstance(raw, list) else [raw]
    if not objs:
        return [], [Problem(path, "no ratings in this file (an empty list)")]
    subs, problems = [], []
    for k, obj in enumerate(objs):
        where = f"rater #{k + 1}: " if len(objs) > 1 else ""
        if not isinstance(obj, dict):
            problems.append(Problem(path, f"{where}expected a JSON object with study_id, rater_id and ratings"))
            continue
        if "format" in obj and obj["format"] != RATINGS_FORMAT:
            problems.append(Problem(path, f"{where}format {obj['format']!r} is not {RATINGS_FORMAT!r}"))
            continue
        missing = [f for f in ("study_id", "rater_id", "ratings") if f not in obj]
        if missing:
            problems.append(Problem(path, f"{where}not a ratings file: no {', '.join(missing)}"))
            continue
        ratings = obj["ratings"]
        if not isinstance(ratings, list):
            problems.append(Problem(path, f"{where}'ratings' must be a list of {{item, answers}} objects"))
            continue
        entries = []
        for j, r in enumerate(ratings, 1):
            if not isinstance(r, dict):
                entries.append((f"rating #{j}", None, None, None))
            else:
                entries.append((f"rating #{j}", r.get("item"), r.get("answers"), r.get("position")))
        fps = [obj["fingerprint"]] if obj.get("fingerprint") not in (None, "") else []
        subs.append(_Submission(path, obj["rater_id"], [obj["study_id"]], entries, fingerprints=fps))
    return subs, problems


def _column_name(cell: str) -> str:
    # column names are ASCII and lower-case (question ids too), so folding ASCII case cannot merge two
    # columns of this study; other letters are left as typed ('K', the Kelvin sign, does not become 'k')
    return cell.strip().translate(_ASCII_LOWER)


def _delimiter(text: str, known: set[str]) -> str:
    """Of ``,``, ``;`` and tab, the one that splits the header row into the most known column names
    (a comma on a tie): Excel writes ``;`` where the decimal mark is a comma, and tabs as "Unicode text"."""
    best, most = ",", 0
    for d in DELIMITERS:
        try:
            rows = csv.reader(io.StringIO(text, newline=""), delimiter=d)
            header = next((r for r in rows if any(c.strip() for c in r)), [])
        except csv.Error:
            continue
        n = sum(_column_name(c) in known for c in header)
        if n > most:
            best, most = d, n
    return best


def _read_csv(path: Path, text: str, manifest: Manifest) -> tuple[list[_Submission], list[Problem]]:
    qids = [q.id for q in manifest.questions]
    need = ["study_id", "rater_id", "item"]
    optional = ["position", "fingerprint"]
    known = set(need + qids + optional)
    # not splitlines(): it also breaks at U+2028 and the like
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text, known))
    numbered = []  # (the file line a row ends on, the row): messages name the line a spreadsheet shows
    try:
        for row in reader:
            numbered.append((reader.line_num, row))
    except csv.Error as exc:
        return [], [Problem(path, f"not a readable CSV ({exc})")]
    numbered = [(n, r) for n, r in numbered if any(c.strip() for c in r)]
    if not numbered:
        return [], [Problem(path, "empty file")]
    problems = []
    width = len(numbered[0][1])
    blank = [k for k, h in enumerate(numbered[0][1]) if not h.strip()]
    filled = [k for k in blank if any(k < len(r) and r[k].strip() for _, r in numbered[1:])]
    if filled:
        where = ", ".join(str(k + 1) for k in filled)
        problems.append(Problem(path, f"empty column header at column{'s' * (len(filled) > 1)} {where}"))
    if len(filled) < len(blank):
        # spreadsheets write empty cells after the last column, in the header too: an empty column is no column
        keep = [k for k in range(width) if k not in blank or k in filled]
        numbered = [(n, [r[k] if k < len(r) else "" for k in keep] + r[width:]) for n, r in numbered]
    rows = [r for _, r in numbered]
    shown = [h.strip() for h in rows[0]]
    header = [_column_name(h) for h in shown]
    missing = [c for c in need + qids if c not in header]
    if missing:
        problems.append(Problem(path, f"missing column(s) {', '.join(missing)} (expected study_id, rater_id, item, "
                                      f"{', '.join(qids)}; optional: {', '.join(optional)})"))  # fmt: skip
    unknown = [s for s, c in zip(shown, header, strict=True) if c and c not in known]
    if unknown:
        problems.append(Problem(path, f"column(s) {', '.join(map(repr, unknown))} are not questions of this study "
                                      f"(its questions: {', '.join(qids)})"))  # fmt: skip
    dup = sorted({c for c in header if c and header.count(c) > 1})
    if dup:
        problems.append(Problem(path, f"column(s) {', '.join(dup)} appear twice (headers are compared ignoring "
                                      "case and surrounding spaces)"))  # fmt: skip
    if missing or dup:
        # the sheet cannot be read, but who rated it can, where its rater_id column is there: its
        # raters are then listed (and counted) as left out, not passed over
        subs: dict[str, _Submission] = {}
        if "rater_id" in header:
            k = header.index("rater_id")
            for _, row in numbered[1:]:
                rid = normalise_rater_id(row[k]) if k < len(row) else ""
                if rid:
                    subs.setdefault(rid, _Submission(path, rid, [], []))
        return list(subs.values()), problems
    col = {h: k for k, h in enumerate(header)}
    by_rater: dict[str, _Submission] = {}
    if len(numbered) == 1:
        problems.append(Problem(path, "no ratings in this file (a header only)"))
    for n, row in numbered[1:]:
        cells = {_column_name(c) for c in row if c.strip()}
        if len(cells) > 1 and cells <= known:  # no data row is column names only: it holds a study id
            problems.append(Problem(path, f"row {n} repeats the header (files joined?): give each file on its own, "
                                          "or delete the row"))  # fmt: skip
            again = [_column_name(c) for c in row]
            if all(c in again for c in need + qids) and all(again.count(c) == 1 for c in again if c):
                # the next file's columns may be laid out otherwise: its rows are read by its header, so
                # its raters are listed (as left out) and no row of it is reported as too long
                header, col = again, {h: k for k, h in enumerate(again) if h}
            continue
        row = row + [""] * (len(header) - len(row))
        if len(row) > len(header) and any(c.strip() for c in row[len(header):]):
            problems.append(Problem(path, f"row {n}: more cells than columns"))
        rid = normalise_rater_id(row[col["rater_id"]])
        if not rid:
            problems.append(Problem(path, f"row {n}: empty rater_id (fill in who rated this sheet)"))
            continue
        sub = by_rater.setdefault(rid, _Submission(path, rid, [], []))
        sub.study_raw.append(row[col["study_id"]].strip())
        if "fingerprint" in col and row[col["fingerprint"]].strip():
            sub.fingerprints.append(row[col["fingerprint"]].strip())
        answers = {q: row[col[q]] for q in qids}
        pos = row[col["position"]] if "position" in col else None
        sub.entries.append((f"row {n}", row[col["item"]].strip(), answers, pos))
    return list(by_rater.values()), problems


def _value(raw: Any) -> int | str | None:
    """A whole number, None when blank, or a string saying what is wrong."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool):
        return f"{raw!r} is not a number"
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return int(raw) if math.isfinite(raw) and raw == int(raw) else f"{raw!r} is not a whole number"
    if isinstance(raw, str):
        s = raw.strip()
        try:
            return int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                return f"{s!r} is not a number"
            return int(f) if math.isfinite(f) and f == int(f) else f"{s!r} is not a whole number"
    return f"{raw!r} is not a number"


def _validate(sub: _Submission, manifest: Manifest) -> tuple[RaterSheet | None, list[str]]:
    msgs: list[str] = []
    problem = rater_id_problem(sub.rater_raw)
    if problem:
        return None, [problem]
    rid = normalise_rater_id(sub.rater_raw)
    who = f"rater {rid!r}"
    wrong = sorted({repr(s) for s in sub.study_raw if s != manifest.study_id})
    if wrong:
        return None, [f"{who}: study id {', '.join(wrong)} is not this study's ({manifest.study_id!r}): "
                      "a ratings file of another study?"]  # fmt: skip
    if manifest.fingerprint:  # a manifest written before fingerprints existed cannot check them
        other = sorted({repr(f) for f in sub.fingerprints if f != manifest.fingerprint})
        if other:
            return None, [f"{who}: made for another version of study {manifest.study_id!r} (fingerprint "
                          f"{', '.join(other)}; this study's is {manifest.fingerprint!r}): a sheet of the study as "
                          "it was before it was made again (--force), or of another study made with the same "
                          "--study-id; its item ids would name other images"]  # fmt: skip
    questions = {q.id: q for q in manifest.questions}
    known = set(manifest.item_ids)
    answers: dict[str, dict[str, int]] = {}
    positions: dict[str, int] = {}
    unknown: list[str] = []
    missing_q: list[str] = []
    for where, item, given, pos in sub.entries:
        if not isinstance(item, str) or not item:
            msgs.append(f"{who}, {where}: no item id")
            continue
        if item not in known:
            unknown.append(item)
            continue
        if item in answers:
            msgs.append(f"{who}: item {item!r} is rated twice ({where} repeats it)")
            continue
        if given is None:
            given = {}
        if not isinstance(given, dict):
            msgs.append(f"{who}, {where}: answers of item {item!r} must be an object {{question: value}}")
            continue
        extra = [k for k in given if k not in questions]
        if extra:
            msgs.append(f"{who}, item {item!r}: unknown question(s) {', '.join(map(repr, extra))} "
                        f"(this study asks {', '.join(questions)})")  # fmt: skip
        vals: dict[str, int] = {}
        for qid, q in questions.items():
            v = _value(given.get(qid))
            if v is None:
                missing_q.append(f"{item} ({qid})")
            elif isinstance(v, str):
                msgs.append(f"{who}, item {item!r}, question {qid!r}: {v}")
            elif not q.min <= v <= q.max:
                msgs.append(f"{who}, item {item!r}, question {qid!r}: value {v} is outside {q.min}-{q.max}")
            else:
                vals[qid] = v
        answers[item] = vals
        p = _value(pos)
        if isinstance(p, int):
            positions[item] = p
    if unknown:
        hint = ("; none of its items is in this study: a sheet of another study, or of another version of "
                "this one (made again with --force)?" if not answers else "")  # fmt: skip
        msgs.append(f"{who}: {len(unknown)} unknown item id(s), not in this study's manifest: "
                    f"{_listing(unknown)}{hint}")  # fmt: skip
    absent = [i for i in manifest.item_ids if i not in answers]
    if absent:
        msgs.append(f"{who}: {len(absent)} of {len(known)} items missing (unanswered): {_listing(absent)}")
    if missing_q:
        msgs.append(f"{who}: {len(missing_q)} answer(s) missing: {_listing(missing_q)}")
    if rid in manifest.paper_raters and positions:
        msgs += _paper_order_problems(who, rid, positions, manifest)
    if msgs:
        return None, msgs
    return RaterSheet(rid, sub.source, answers, positions), []


def _paper_order_problems(who: str, rid: str, positions: dict[str, int], manifest: Manifest) -> list[str]:
    """A paper rater's answers are typed from their own sheet, in their own order: rows whose position
    names another item there were typed into another order's rows (most likely ratings_template.csv's),
    and every answer on them belongs to another image."""
    own = rater_order(manifest.study_id, rid, manifest.item_ids)
    off = sorted((p, item) for item, p in positions.items() if not (1 <= p <= len(own) and own[p - 1] == item))
    if not off:
        return []
    stem = manifest.paper_raters[rid]
    p, item = off[0]
    there = repr(own[p - 1]) if 1 <= p <= len(own) else "none"
    generic = rater_order(manifest.study_id, PAPER_RATER, manifest.item_ids)
    if all(1 <= q <= len(generic) and generic[q - 1] == i for i, q in positions.items()):
        lead = f"its rows follow ratings_template.csv's order, not this paper rater's own sheet ({stem}.html)"
    else:
        lead = f"its rows do not follow this paper rater's own sheet ({stem}.html)"
    return [f"{who}: {lead}: {len(off)} of {len(positions)} positions name another item there (position {p}: "
            f"{item!r} here, {there} on the sheet), so answers would sit on other images; type the sheet's answers "
            f"into {stem}.csv, whose rows are in its order"]  # fmt: skip


def load_ratings(paths: Iterable[str | Path], manifest: Manifest, skip: Iterable[str | Path] = ()) -> RatingsSet:
    """Read and validate every ratings file against the manifest (see the module docstring);
    folders in ``skip`` (the report's) are not read, though inside a ratings folder."""
    files, ignored, problems = expand_paths(paths, skip)
    sheets: list[RaterSheet] = []
    excluded: list[tuple[str, str, str]] = [(str(p.path), "", p.message) for p in problems]
    for path in files:
        text, why = _read_text(path)
        if text is None:
            problems.append(Problem(path, why))
            excluded.append((str(path), "", problems[-1].message))
            continue
        looks_json = path.suffix.lower() == ".json" or (path.suffix.lower() != ".csv" and text.lstrip()[:1] in "{[")
        subs, file_problems = _read_json(path, text) if looks_json else _read_csv(path, text, manifest)
        problems += file_problems
        excluded += [(str(path), "", p.message) for p in file_problems]
        if file_problems and not looks_json:
            # a sheet that is wrong as a whole (an unknown column, a row too long, a row with no rater)
            # is left out whole: its raters are not analysed either (a JSON file's problems are its raters')
            for sub in subs:
                rid = sub.rater_raw if isinstance(sub.rater_raw, str) else ""
                excluded.append((str(path), rid, "left out with its file: " + "; ".join(p.message for p in file_problems)))
            continue
        for sub in subs:
            sheet, msgs = _validate(sub, manifest)
            rid = sub.rater_raw if isinstance(sub.rater_raw, str) else ""
            for m in msgs:
                problems.append(Problem(path, m, rid))
            if sheet is None:
                excluded.append((str(path), rid, "; ".join(msgs)))
            else:
                sheets.append(sheet)
    first: dict[str, RaterSheet] = {}
    kept = []
    for s in sheets:
        if s.rater_id in first:
            msg = (f"rater {s.rater_id!r} appears again (first in {first[s.rater_id].source}): each rater once; "
                   "if they rated twice, keep one file")  # fmt: skip
            problems.append(Problem(s.source, msg, s.rater_id))
            excluded.append((str(s.source), s.rater_id, msg))
        else:
            first[s.rater_id] = s
            kept.append(s)
    return RatingsSet(kept, problems, excluded, files, ignored)


__all__ = ["Problem", "RaterSheet", "RatingsSet", "expand_paths", "load_ratings"]
