"""The rater-facing files of a study: the rating page, the printable sheet and the CSV template.

Safety rules, because labels, titles and rater ids are data and may hold anything:

* the page carries its data as JSON inside ``<script type="application/json">`` with ``<``, ``>``,
  ``&`` and U+2028/9 escaped (so no ``</script>`` can end it), and its script writes every piece
  of text with ``textContent``, never ``innerHTML``;
* the print sheet is written here, every text through :func:`html.escape`;
* the page and the sheet load only their own inline CSS/JS and ``images/*.png`` next to them; a
  Content-Security-Policy forbids everything else (no network, no external fonts or scripts);
* nothing rater-facing names a method: items are opaque ids, listed in id order.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cmav.human_eval.study import LABEL_SLOT, RATER_ID_MAX, Manifest, Question, rater_order

RATINGS_FORMAT = "cmav-human-eval-ratings"
RATINGS_VERSION = 1
PAPER_RATER = "paper"  # the rater id whose order print.html and ratings_template.csv use

# Only inline style/script and images from the page's own folder. ('self' alone does not cover
# file: pages in every browser, hence file: as well; neither reaches the network.)
CSP = ("default-src 'none'; img-src 'self' file: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'; connect-src 'none'")  # fmt: skip


def script_json(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` survives literally."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    return (text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))  # fmt: skip


def page_data(manifest: Manifest) -> dict[str, Any]:
    """What the page needs, and nothing that unblinds: no methods, no pairs, no check flags. The
    fingerprint (a hash of the content) goes into every export, so a sheet of another version is refused."""
    return {
        "format": RATINGS_FORMAT,
        "version": RATINGS_VERSION,
        "study_id": manifest.study_id,
        "fingerprint": manifest.fingerprint,
        "title": manifest.title,
        "instructions": manifest.instructions,
        "rater_id_max": RATER_ID_MAX,
        "questions": [{"id": q.id, "text": q.text, "min": q.min, "max": q.max, "low": q.low, "high": q.high}
                      for q in manifest.questions],  # fmt: skip
        # sorted by the random ids: the listing order tells nothing either
        "items": [{"id": i.id, "image": i.image, "label": i.label} for i in sorted(manifest.items, key=lambda i: i.id)],
    }


# The order algorithm, identical to cmav.human_eval.study.rater_order (tests run both).
ORDER_JS = r"""
function trimRater(s) { return String(s).replace(/^[ \t\r\n]+|[ \t\r\n]+$/g, ""); }
function fnv1a32(str) {
  const bytes = new TextEncoder().encode(str);
  let h = 0x811c9dc5;
  for (let k = 0; k < bytes.length; k++) { h ^= bytes[k]; h = Math.imul(h, 0x01000193) >>> 0; }
  return h >>> 0;
}
function mulberry32(seed) {
  let a = seed >>> 0;
  return function () {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
function raterOrder(studyId, raterId, ids) {
  const rand = mulberry32(fnv1a32(studyId + "\n" + trimRater(raterId)));
  const order = ids.slice().sort();  // ids are ASCII ("i" + hex): JS and Python sort them alike
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    const tmp = order[i]; order[i] = order[j]; order[j] = tmp;
  }
  return order;
}
"""

APP_JS = r"""
(function () {
"use strict";
const DATA = JSON.parse(document.getElementById("study-data").textContent);
const PREFIX = "cmav-human-eval/" + DATA.study_id + "/";
const IDS = DATA.items.map(function (i) { return i.id; });
const ITEMS = new Map(DATA.items.map(function (i) { return [i.id, i]; }));
const $ = function (id) { return document.getElementById(id); };
let state = null;  // {rater, order, answers: {item: {question: value}}, pos, started, finished}

// ---- storage: answers survive a reload; keyed by study id + rater id
function storeGet(key) {
  try { const s = window.localStorage.getItem(PREFIX + key); return s ? JSON.parse(s) : null; }
  catch (e) { storageFailed(); return null; }
}
function storeSet(key, value) {
  try { window.localStorage.setItem(PREFIX + key, JSON.stringify(value)); }
  catch (e) { storageFailed(); }
}
function storageFailed() { $("storage-warning").hidden = false; }
function persist() { storeSet("rater/" + state.rater, state); }

// ---- small DOM helpers: text only, never markup
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function show(view) {
  ["start", "rate", "done"].forEach(function (v) { $(v).hidden = v !== view; });
  window.scrollTo(0, 0);
}
function withLabel(parent, text, label) {
  // the question text with the item's label in bold: split on the slot, label as a text node
  const parts = String(text).split("{label}");
  parts.forEach(function (part, k) {
    if (k > 0) parent.append(el("strong", "label", label));
    parent.append(document.createTextNode(part));
  });
}

// ---- rater id
function raterProblem(id) {
  if (!id) return "Please type your rater id.";
  if (Array.from(id).length > DATA.rater_id_max) return "The rater id is too long (at most " + DATA.rater_id_max + " characters).";
  if (/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/.test(id)) return "The rater id contains control characters.";
  if (/[\ud800-\udbff](?![\udc00-\udfff])|(^|[^\ud800-\udbff])[\udc00-\udfff]/.test(id)) return "The rater id is not valid text.";
  return null;
}
function begin(raw) {
  const id = trimRater(raw);
  const problem = raterProblem(id);
  if (problem) { $("start-error").textContent = problem; return; }
  const saved = storeGet("rater/" + id);
  state = saved && saved.rater === id ? saved : { rater: id, answers: {}, pos: 0, started: new Date().toISOString(), finished: null };
  state.order = raterOrder(DATA.study_id, id, IDS);
  if (typeof state.pos !== "number" || state.pos < 0 || state.pos >= IDS.length) state.pos = 0;
  storeSet("last-rater", id);
  persist();
  $("rater-name").textContent = id;
  $("restored").hidden = !(saved && answeredCount() > 0);
  $("restored").textContent = saved ? "Welcome back: your " + answeredCount() + " answer(s) were restored." : "";
  show("rate");
  render();
}

// ---- answers
function isAnswered(itemId) {
  const a = state.answers[itemId] || {};
  return DATA.questions.every(function (q) { return Number.isInteger(a[q.id]); });
}
function answeredCount() { return state.order.filter(isAnswered).length; }
function firstUnanswered() { return state.order.findIndex(function (id) { return !isAnswered(id); }); }
function answer(itemId, qid, value) {
  if (!state.answers[itemId]) state.answers[itemId] = {};
  state.answers[itemId][qid] = value;
  persist();
  updateStatus();
}

// ---- the rating view
function render() {
  const pos = state.pos;
  const item = ITEMS.get(state.order[pos]);
  const img = $("image");
  img.src = item.image;
  img.alt = "Image " + (pos + 1) + " of " + IDS.length;
  const next = state.order[pos + 1];
  if (next) { const pre = new Image(); pre.src = ITEMS.get(next).image; }
  const box = $("questions");
  box.textContent = "";
  const given = state.answers[item.id] || {};
  DATA.questions.forEach(function (q, qi) {
    const fs = el("fieldset", "question");
    const legend = el("legend");
    withLabel(legend, q.text, item.label);
    fs.append(legend);
    const scale = el("div", "scale");
    for (let v = q.min; v <= q.max; v++) {
      const lab = el("label", "point");
      const input = document.createElement("input");
      input.type = "radio";
      input.name = "q" + qi;
      input.value = String(v);
      input.checked = given[q.id] === v;
      input.addEventListener("change", function () { answer(item.id, q.id, v); });
      lab.append(input, el("span", null, v));
      scale.append(lab);
    }
    fs.append(scale);
    if (q.low || q.high) {
      const ends = el("div", "ends");
      ends.append(el("span", null, q.min + " = " + (q.low || "")), el("span", null, q.max + " = " + (q.high || "")));
      fs.append(ends);
    }
    box.append(fs);
  });
  $("prev").disabled = pos === 0;
  $("next").disabled = pos === IDS.length - 1;
  updateStatus();
}
function updateStatus() {
  const n = answeredCount();
  const left = IDS.length - n;
  $("progress").max = IDS.length;
  $("progress").value = n;
  $("position").textContent = "Image " + (state.pos + 1) + " of " + IDS.length + " \u00b7 " + n + " answered, " + left + " to go";
  $("finish").disabled = left > 0;
  $("finish-hint").textContent = left > 0 ? "Submit unlocks when every image is answered (" + left + " left)." : "All images answered.";
  $("jump").hidden = left === 0;
}
function go(pos) {
  state.pos = Math.max(0, Math.min(IDS.length - 1, pos));
  persist();
  render();
  window.scrollTo(0, 0);
}
function finish() {
  if (!state) return;
  const k = firstUnanswered();
  if (k >= 0) { go(k); $("finish-hint").textContent = "Please answer every question first."; return; }
  state.finished = new Date().toISOString();
  persist();
  $("export-json").value = exportJSON();
  $("done-name").textContent = state.rater;
  show("done");
}

// ---- export
function ratingsObject() {
  return {
    format: DATA.format, version: DATA.version, study_id: DATA.study_id, fingerprint: DATA.fingerprint, rater_id: state.rater,
    started: state.started, finished: state.finished, order: state.order,
    ratings: state.order.map(function (id, k) { return { item: id, position: k + 1, answers: state.answers[id] || {} }; })
  };
}
function exportJSON() { return JSON.stringify(ratingsObject(), null, 2); }
function csvCell(v) { return '"' + String(v).replace(/"/g, '""') + '"'; }
function exportCSV() {
  const qids = DATA.questions.map(function (q) { return q.id; });
  const rows = [["study_id", "fingerprint", "rater_id", "position", "item"].concat(qids).join(",")];
  state.order.forEach(function (id, k) {
    const a = state.answers[id] || {};
    rows.push([csvCell(DATA.study_id), csvCell(DATA.fingerprint || ""), csvCell(state.rater), String(k + 1), csvCell(id)]
      .concat(qids.map(function (q) { return Number.isInteger(a[q]) ? String(a[q]) : ""; })).join(","));
  });
  return rows.join("\r\n") + "\r\n";
}
function fileStem() {
  const safe = state.rater.replace(/[^A-Za-z0-9_-]+/g, "_").slice(0, 40) || "rater";
  return "ratings_" + DATA.study_id + "_" + safe;
}
function download(name, text, type) {
  if (!state || firstUnanswered() >= 0) { finish(); return; }
  const blob = new Blob([text], { type: type });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 2000);
}

// ---- wiring
function init() {
  document.title = DATA.title;
  $("title").textContent = DATA.title;
  const instr = $("instructions");
  String(DATA.instructions).split(/\n\s*\n/).forEach(function (p) { if (p.trim()) instr.append(el("p", null, p.trim())); });
  $("count").textContent = IDS.length;
  $("start-form").addEventListener("submit", function (ev) { ev.preventDefault(); begin($("rater-id").value); });
  $("prev").addEventListener("click", function () { go(state.pos - 1); });
  $("next").addEventListener("click", function () { go(state.pos + 1); });
  $("jump").addEventListener("click", function () { const k = firstUnanswered(); if (k >= 0) go(k); });
  $("finish").addEventListener("click", finish);
  $("switch").addEventListener("click", function () { $("rater-id").value = ""; show("start"); });
  $("back").addEventListener("click", function () { show("rate"); render(); });
  $("dl-json").addEventListener("click", function () { download(fileStem() + ".json", exportJSON(), "application/json"); });
  $("dl-csv").addEventListener("click", function () { download(fileStem() + ".csv", exportCSV(), "text/csv"); });
  document.addEventListener("keydown", function (ev) {
    if ($("rate").hidden || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    if (ev.target && ev.target.tagName === "INPUT" && ev.target.type === "text") return;
    if (ev.key === "ArrowRight") { go(state.pos + 1); ev.preventDefault(); }
    else if (ev.key === "ArrowLeft") { go(state.pos - 1); ev.preventDefault(); }
    else if (/^[0-9]$/.test(ev.key)) {
      // a digit answers the first unanswered question of this image
      const id = state.order[state.pos];
      const a = state.answers[id] || {};
      const q = DATA.questions.find(function (q) { return !Number.isInteger(a[q.id]); });
      const v = Number(ev.key);
      if (q && v >= q.min && v <= q.max) { answer(id, q.id, v); render(); }
    }
  });
  try { window.localStorage.getItem(PREFIX + "probe"); } catch (e) { storageFailed(); }
  const params = new URLSearchParams(window.location.search || window.location.hash.replace(/^#/, ""));
  const given = params.get("rater");
  const last = storeGet("last-rater");
  if (given) { $("rater-id").value = given; begin(given); return; }
  if (typeof last === "string" && last) {
    // after a reload: offer to continue, but never carry on as the last rater unasked (shared lab computers)
    $("rater-id").value = last;
    const saved = storeGet("rater/" + last);
    const n = saved && saved.answers ? Object.keys(saved.answers).length : 0;
    $("resume-note").textContent = "Answers of rater \u201c" + last + "\u201d (" + n + " image(s)) are kept in this browser: Start continues them. Another rater: type your own id.";
    $("resume-note").hidden = false;
  }
  show("start");
}
init();
})();
"""

CSS = """
:root { color-scheme: light; --ink: #1b1f24; --muted: #5b6470; --line: #d5dae0; --accent: #2457c5; }
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: #f6f7f9; }
main { max-width: 760px; margin: 0 auto; padding: 16px; }
h1 { font-size: 1.4rem; margin: .3em 0 .6em; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 10px; padding: 16px 20px; margin-bottom: 14px; }
.muted { color: var(--muted); font-size: .9rem; }
.warn { background: #fff4e5; border: 1px solid #f0b35b; border-radius: 8px; padding: 8px 12px; }
.error { color: #b00020; min-height: 1.4em; }
input[type=text] { font: inherit; padding: 6px 8px; width: 16em; max-width: 100%; }
button { font: inherit; padding: 7px 16px; border-radius: 7px; border: 1px solid var(--line); background: #fff; cursor: pointer; }
button.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
button:disabled { opacity: .45; cursor: not-allowed; }
.linkish { border: none; background: none; color: var(--accent); padding: 0; text-decoration: underline; }
progress { width: 100%; height: 10px; }
.figure { text-align: center; }
#image { width: 320px; height: 320px; max-width: 100%; object-fit: contain; image-rendering: auto; background: #000; border-radius: 6px; }
fieldset.question { border: none; padding: 0; margin: 14px 0; }
legend { font-weight: 500; margin-bottom: 6px; }
.label { font-weight: 700; }
.scale { display: flex; gap: 6px; flex-wrap: wrap; }
.point { display: inline-flex; align-items: center; gap: 4px; border: 1px solid var(--line); border-radius: 7px; padding: 6px 12px; cursor: pointer; }
.point:has(input:checked) { background: #e8efff; border-color: var(--accent); }
.ends { display: flex; justify-content: space-between; color: var(--muted); font-size: .85rem; margin-top: 4px; }
.nav { display: flex; gap: 8px; flex-wrap: wrap; align-items: center; }
.nav .spacer { flex: 1; }
textarea { width: 100%; height: 8em; font: 12px/1.3 ui-monospace, monospace; }
"""

INDEX_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<main>
<h1 id="title">{title}</h1>
<noscript><p class="warn">This page needs JavaScript. For a paper study use print.html and ratings_template.csv.</p></noscript>
<p id="storage-warning" class="warn" hidden>This browser does not let the page keep your answers: do not reload or close it until you have downloaded your ratings file.</p>

<section id="start" hidden>
  <div class="card">
    <div id="instructions"></div>
    <p>Your answers are kept in this browser as you go: you can close the page and come back to it.
      At the end, download your ratings file and send it back.</p>
    <p class="muted">There are <span id="count"></span> images. Keys: a digit answers, &larr; &rarr; move.</p>
    <form id="start-form">
      <label for="rater-id">Your rater id</label><br>
      <input id="rater-id" type="text" autocomplete="off" spellcheck="false">
      <button class="primary" type="submit">Start</button>
      <p id="resume-note" class="muted" hidden></p>
      <div id="start-error" class="error" role="alert"></div>
    </form>
  </div>
</section>

<section id="rate" hidden>
  <p class="muted">Rater <strong id="rater-name"></strong> &middot; <button id="switch" class="linkish" type="button">not you?</button></p>
  <p id="restored" class="muted" hidden></p>
  <progress id="progress" value="0" max="1"></progress>
  <p id="position" class="muted"></p>
  <div class="card">
    <div class="figure"><img id="image" alt=""></div>
    <div id="questions"></div>
  </div>
  <div class="nav">
    <button id="prev" type="button">&larr; Previous</button>
    <button id="next" type="button">Next &rarr;</button>
    <button id="jump" type="button">First unanswered</button>
    <span class="spacer"></span>
    <button id="finish" class="primary" type="button" disabled>Submit</button>
  </div>
  <p id="finish-hint" class="muted"></p>
</section>

<section id="done" hidden>
  <div class="card">
    <h2>Thank you, <span id="done-name"></span>!</h2>
    <p>Download your ratings and send the file back as you were asked. Your answers stay in this browser until you clear its data.</p>
    <p class="nav"><button id="dl-json" class="primary" type="button">Download ratings (JSON)</button>
      <button id="dl-csv" type="button">Download ratings (CSV)</button>
      <button id="back" type="button">Back to the images</button></p>
    <p class="muted">If downloads are blocked, copy this text into a file named ratings.json:</p>
    <textarea id="export-json" readonly></textarea>
  </div>
</section>
</main>
<script type="application/json" id="study-data">{data}</script>
<script>{order_js}{app_js}</script>
</body>
</html>
"""

PRINT_CSS = """
* { box-sizing: border-box; }
body { font: 11pt/1.35 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #000; margin: 16px; }
h1 { font-size: 15pt; margin: 0 0 4px; }
.head { border-bottom: 1px solid #000; margin-bottom: 10px; padding-bottom: 6px; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
.item { border: 1px solid #999; border-radius: 4px; padding: 8px; break-inside: avoid; page-break-inside: avoid; }
.item img { width: 160px; height: 160px; object-fit: contain; display: block; margin: 0 auto 4px; background: #000; }
.num { font-weight: 700; }
.q { margin-top: 6px; }
.boxes { letter-spacing: .3em; white-space: nowrap; }
.ends { color: #444; font-size: 9pt; }
.id { font: 400 10pt ui-monospace, "DejaVu Sans Mono", Consolas, monospace; margin-left: .5em; }
@page { margin: 12mm; }
@media print { body { margin: 0; } .noprint { display: none; } }
"""


def _question_html(q: Question, label: str) -> str:
    before, _, after = q.text.partition(LABEL_SLOT)
    text = html.escape(before) + (f"<strong>{html.escape(label)}</strong>" + html.escape(after.replace(LABEL_SLOT, label))
                                  if LABEL_SLOT in q.text else "")  # fmt: skip
    boxes = " ".join(f"&#9744;&nbsp;{v}" for v in range(q.min, q.max + 1))
    ends = f"{q.min} = {html.escape(q.low)}, {q.max} = {html.escape(q.high)}" if (q.low or q.high) else ""
    return f'<div class="q">{text}<div class="boxes">{boxes}</div><div class="ends">{ends}</div></div>'


def print_sheet(manifest: Manifest, rater_id: str = PAPER_RATER, image_prefix: str = "",
                csv_name: str | None = None) -> str:  # fmt: skip
    """A print-styled page (print it, or "print to PDF"): every item in ``rater_id``'s order, with
    tick boxes, and its item id beside its number, so typed-in answers can be checked against it.
    ``csv_name``: the CSV the answers are typed into, in the same order (default:
    ``ratings_template.csv`` for the generic sheet, ``paper/<rater>.csv`` for a rater's own)."""
    if csv_name is None:
        csv_name = "ratings_template.csv" if rater_id == PAPER_RATER else f"paper/{_slug(rater_id, set())}.csv"
    order = rater_order(manifest.study_id, rater_id, manifest.item_ids)
    by_id = {i.id: i for i in manifest.items}
    cells = []
    for k, item_id in enumerate(order, 1):
        item = by_id[item_id]
        qs = "".join(_question_html(q, item.label) for q in manifest.questions)
        cells.append(
            f'<section class="item"><div class="num">{k}. <span class="id">item {html.escape(item.id)}</span></div>'
            f'<img src="{html.escape(image_prefix + item.image)}" alt="image {k}">{qs}</section>'
        )
    if rater_id == PAPER_RATER:
        rater_line = "Rater id: ______________________"
        typing = (f"The study team types the answers into {html.escape(csv_name)} in this order (one row per "
                  "image, the rater id on every row).")  # fmt: skip
    else:
        rater_line = f"Rater id: <strong>{html.escape(rater_id)}</strong>"
        # a rater's own order is not the generic sheet's: typed into another CSV's rows, every answer
        # would land on another image
        typing = (f"The study team types the answers into <strong>{html.escape(csv_name)}</strong>, whose rows "
                  "are in this sheet's order (no other CSV is), checking each row's item id against the one "
                  "printed beside its number.")  # fmt: skip
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP, quote=False)}">\n'
        f"<title>{html.escape(manifest.title)} (print)</title>\n<style>{PRINT_CSS}</style>\n</head>\n<body>\n"
        f'<div class="head"><h1>{html.escape(manifest.title)}</h1>'
        f"<div>Study {html.escape(manifest.study_id)} &middot; {rater_line} &middot; Date: ____________</div>"
        f"<p>{html.escape(manifest.instructions)}</p>"
        f"<p>Tick exactly one box per question. {typing}</p></div>\n"
        f'<div class="grid">\n{chr(10).join(cells)}\n</div>\n</body>\n</html>\n'
    )


def ratings_csv(manifest: Manifest, rater_id: str = PAPER_RATER) -> str:
    """The CSV to type paper answers into: one row per item in the sheet's order, answers blank.
    The same columns as the page's CSV export, so ``analyze`` reads both (``fingerprint`` only for
    a study that has one)."""
    order = rater_order(manifest.study_id, rater_id, manifest.item_ids)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    fp = [manifest.fingerprint] if manifest.fingerprint else []
    w.writerow(["study_id"] + ["fingerprint"] * len(fp) + ["rater_id", "position", "item"]
               + [q.id for q in manifest.questions])  # fmt: skip
    rid = "" if rater_id == PAPER_RATER else rater_id
    for k, item_id in enumerate(order, 1):
        w.writerow([manifest.study_id, *fp, rid, k, item_id] + [""] * len(manifest.questions))
    return buf.getvalue()


def index_html(manifest: Manifest) -> str:
    """The self-contained rating page."""
    return INDEX_TEMPLATE.format(
        csp=html.escape(CSP, quote=False), title=html.escape(manifest.title), css=CSS, data=script_json(page_data(manifest)),
        order_js=ORDER_JS, app_js=APP_JS,
    )  # fmt: skip


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:40] or "rater"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def paper_sheets(paper_raters: Sequence[str]) -> dict[str, str]:
    """Each paper rater's files, ``paper/<stem>`` (+ ``.html``, ``.csv``): the id with characters other
    than letters, digits, ``_`` and ``-`` replaced, ``_2``... on a clash; a rater given twice is refused."""
    from cmav.human_eval.study import check_paper_raters

    taken: set[str] = set()
    return {rid: f"paper/{_slug(rid, taken)}" for rid in check_paper_raters(paper_raters)}


def write_pages(out: str | Path, manifest: Manifest, paper_raters: Sequence[str] = ()) -> list[Path]:
    """Write ``index.html``, ``print.html``, ``ratings_template.csv`` and, per paper rater,
    ``paper/<rater>.html`` + ``paper/<rater>.csv`` (each in that rater's own order; a rater given
    twice is refused)."""
    out = Path(out)
    written = []
    for name, text in (("index.html", index_html(manifest)), ("print.html", print_sheet(manifest)),
                       ("ratings_template.csv", ratings_csv(manifest))):  # fmt: skip
        (out / name).write_text(text, encoding="utf-8", newline="")
        written.append(out / name)
    for rid, stem in paper_sheets(paper_raters).items():
        (out / "paper").mkdir(exist_ok=True)
        sheet, typed = out / f"{stem}.html", out / f"{stem}.csv"
        sheet.write_text(print_sheet(manifest, rid, "../", f"{stem}.csv"), encoding="utf-8")
        typed.write_text(ratings_csv(manifest, rid), encoding="utf-8", newline="")
        written += [sheet, typed]
    return written


__all__ = ["CSP", "ORDER_JS", "PAPER_RATER", "RATINGS_FORMAT", "index_html", "page_data", "paper_sheets",
           "print_sheet", "ratings_csv", "script_json", "write_pages"]  # fmt: skip
