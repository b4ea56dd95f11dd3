"""``cmav search``: embed a query (a wav or a frame), find its top-k in an index, draw a contact sheet.

The query goes through the index's model with the front end and image size it was trained with
(:func:`cmav.evaluation.generate.wav_to_features` for sound: a clip longer than the checkpoint's
chunk, :class:`~cmav.data.audio_io.ChunkSpec`, 0.5 s by default, is cut to its first chunk, with a
note). An audio query finds frames; a frame query finds audio (shown by the paired frame and the
hit's LMS). For an audio query the sheet's second row lays the model's heatmap (where in the frame
the sound seems to come from) over every hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cmav.retrieval.index import Backend, EmbeddingIndex


@dataclass
class Hit:
    rank: int
    position: int
    score: float
    stem: str
    class_name: str
    image_path: str
    audio_path: str


@dataclass
class SearchOutput:
    hits: list[Hit]
    sheet: Path | None
    notes: list[str]
    query_modality: str


def _frame(path: str, size: int) -> np.ndarray | None:
    from cmav.data.errors import DataError
    from cmav.data.image_io import load_frame

    if not path:
        return None
    try:
        return load_frame(path, size)
    except DataError:
        return None


def check_index_matches(index: EmbeddingIndex, ckpt: str | Path) -> list[str]:
    """Raise ``ValueError`` when ``ckpt`` is not the model whose embeddings ``index`` holds: other
    weights (a rerun overwrote ``last.ckpt``, or another checkpoint of the same kind, perhaps on
    another front end). Queries would be embedded by one model and ranked against another's embeddings,
    which gives hits without a word. Returns notes for an index too old to be checked."""
    from cmav.data.files import sha256_file

    stored = index.info.get("ckpt_sha256")
    if stored is None:
        return [f"the index was built by an older cmav and records no checkpoint hash: it cannot say whether {ckpt} "
                "is the model that built it; rebuild it (cmav index build) to have that checked"]  # fmt: skip
    if sha256_file(ckpt) != stored:
        raise ValueError(f"{ckpt} is not the checkpoint the index was built with (its weights changed since, or it "
                         f"is another one; built from {index.ckpt}): rebuild the index with this checkpoint")  # fmt: skip
    return []


@torch.no_grad()
def search(index_path: str | Path, audio: str | Path | None = None, image: str | Path | None = None, k: int = 8,
           ckpt: str | Path | None = None, output: str | Path | None = "search.png", backend: Backend = "auto",
           faiss_factory: str = "Flat", cell_size: int = 128) -> SearchOutput:  # fmt: skip
    """Search the index with one wav (``audio``) or one frame (``image``); see the module docstring."""
    from cmav.data.image_io import load_frame
    from cmav.evaluation.generate import front_end_of, wav_to_features
    from cmav.retrieval.heatmap import lms_picture, overlay
    from cmav.tasks.retrieval import load_retrieval
    from cmav.viz.grid import labelled_grid

    if (audio is None) == (image is None):
        raise ValueError("give exactly one query: audio=<wav> or image=<frame>")
    index = EmbeddingIndex.load(index_path)
    ckpt = Path(ckpt or index.ckpt)
    task = load_retrieval(ckpt)
    if task.kind != index.kind or int(task.hparams.image_size) != index.image_size:
        raise ValueError(f"{ckpt} is a {task.kind} model at {task.hparams.image_size} px; the index was built with "
                         f"a {index.kind} model at {index.image_size} px ({index.ckpt})")  # fmt: skip
    notes = check_index_matches(index, ckpt)
    if audio is not None:
        features, spec = front_end_of(ckpt)
        lms, read_notes = wav_to_features(audio, features, spec)
        notes += read_notes
        q, _ = task.embed(audio=lms)
        modality = "audio"
        query_cell = lms_picture(lms[0], cell_size)
    else:
        frame = load_frame(image, index.image_size)  # type: ignore[arg-type]
        x = torch.from_numpy(frame.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)[None]
        _, q = task.embed(image=x)
        modality = "image"
        query_cell = load_frame(image, cell_size)  # type: ignore[arg-type]
    assert q is not None
    result = index.search(q.cpu(), modality, k=k, backend=backend, faiss_factory=faiss_factory)[0]
    hits = [
        Hit(rank=r + 1, position=int(i), score=float(s), stem=index.stems[int(i)],
            class_name=index.class_names[int(index.labels[int(i)])], image_path=index.image_paths[int(i)],
            audio_path=index.audio_paths[int(i)])
        for r, (i, s) in enumerate(zip(result.indices.tolist(), result.scores.tolist(), strict=True))
    ]  # fmt: skip
    notes += _changed_hits_notes(index, hits)
    sheet_path = None
    if output is not None and hits:
        frames = [_frame(h.image_path, cell_size) for h in hits]
        missing = sum(f is None for f in frames)
        if missing:
            notes.append(f"{missing} hit frame(s) not found on disk (moved data?); left blank on the sheet")
        rows = [[query_cell] + frames]
        labels = ["frames"]
        if modality == "audio":
            small = [_frame(h.image_path, index.image_size) for h in hits]
            ok = [i for i, f in enumerate(small) if f is not None]
            row2: list = [None] * (len(hits) + 1)
            if ok:
                x = torch.from_numpy(np.stack([small[i] for i in ok])).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
                task.eval()
                heat = task.model.heatmap(lms.repeat(len(ok), 1, 1, 1).float(), x).cpu()
                for j, i in enumerate(ok):
                    row2[i + 1] = overlay(frames[i], heat[j])  # type: ignore[arg-type]
            rows.append(row2)
            labels.append("heatmap")
        else:
            features, spec = front_end_of(ckpt)
            rows.append([None] + [_hit_lms(h.audio_path, features, spec, cell_size) for h in hits])
            labels.append("hit LMS")
        cols = ["query"] + [_column_label(h, cell_size) for h in hits]
        sheet = labelled_grid(rows, labels, cols, cell_size=cell_size, label_width=70)
        sheet_path = Path(output)
        sheet_path.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(sheet_path)
    return SearchOutput(hits, sheet_path, notes, modality)


def _changed_hits_notes(index: EmbeddingIndex, hits: list[Hit]) -> list[str]:
    """A note naming the hits whose files changed or vanished since the index was built (shown as they
    are now beside the old files' scores); a file elsewhere in the data changing is no reason to refuse."""
    changed = [(h, index.changed_files(h.position)) for h in hits]
    if any(c is None for _, c in changed):
        return ["the index was built by an older cmav and records no sizes or times of its files: it cannot "
                "tell whether the data changed since; rebuild it (cmav index build) to have that checked"]  # fmt: skip
    stale = [f"{h.rank} {h.stem} ({', '.join(c)})" for h, c in changed if c]
    if not stale:
        return []
    return [f"{len(stale)} hit(s) changed on disk since the index was built, their scores are the old files' "
            f"(rank stem: {'; '.join(stale)}): rebuild the index (cmav index build) for the current data"]  # fmt: skip


def _column_label(hit: Hit, width: int) -> str:
    """``"rank: class score"`` for a sheet column, the class shortened until it fits ``width`` pixels of
    the sheet's font (three decimals: neighbouring scores often agree to two)."""
    from PIL import Image, ImageDraw, ImageFont

    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default()
    name = hit.class_name
    while True:
        label = f"{hit.rank}: {name} {hit.score:.3f}" if name else f"{hit.rank}: {hit.score:.3f}"
        if not name or draw.textlength(label, font=font) <= width:
            return label
        name = name[:-2] + "." if len(name) > 2 else ""


def _hit_lms(path: str, features, spec, size: int) -> np.ndarray | None:
    """A hit's LMS picture, computed from its wav with the model's front end (None if unreadable)."""
    from cmav.data.errors import DataError
    from cmav.evaluation.generate import wav_to_features
    from cmav.retrieval.heatmap import lms_picture

    if not path:
        return None
    try:
        lms, _ = wav_to_features(path, features, spec)
    except DataError:
        return None
    return lms_picture(lms[0], size)


def format_hits(out: SearchOutput) -> str:
    target = "frames" if out.query_modality == "audio" else "audio"
    lines = [f"top {len(out.hits)} {target}:", f"{'rank':>4}  {'score':>7}  {'class':<12} {'stem':<22} path"]
    for h in out.hits:
        path = h.image_path if out.query_modality == "audio" else h.audio_path
        lines.append(f"{h.rank:>4}  {h.score:7.4f}  {h.class_name:<12} {h.stem:<22} {path}")
    return "\n".join(lines)


__all__ = ["Hit", "SearchOutput", "format_hits", "search"]
