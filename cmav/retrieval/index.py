"""An embedding index of a data split, and top-k search in it.

:func:`build_index` embeds every pair of a split with a trained
:class:`~cmav.tasks.retrieval.RetrievalTask` (both modalities, so an audio query searches the
frames and a frame query searches the audio) and :class:`EmbeddingIndex` holds the embeddings
with what is needed to show a hit (stem, class, file paths). The file is written atomically and
loads with ``torch.load(weights_only=True)``.

Search is exact by default: scores of the query against the gallery in chunks, with a running
top-k (torch; fine up to about a million items). For larger global-model galleries FAISS
(``pip install cmav[faiss]``, i.e. faiss-cpu) is used through its own index types
(``faiss_factory``: ``"Flat"`` = exact inner product, ``"HNSW32"``, ``"IVF4096,Flat"`` ...);
cmav has no approximate search of its own. Dense-model galleries are token sets scored by
DenseAV's max-over-locations aggregation, which FAISS cannot index: they are always searched
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from cmav.data.files import atomic_write, sha256_file
from cmav.models.retrieval import scores_for

INDEX_VERSION = 1
EXACT_LIMIT = 1_000_000
"""Galleries up to this size are searched exactly with torch under ``backend='auto'``."""

Backend = Literal["auto", "torch", "faiss"]
Modality = Literal["audio", "image"]


@dataclass
class SearchResult:
    """Top-k of one query: gallery positions, scores (highest first)."""

    indices: Tensor
    scores: Tensor


@dataclass
class EmbeddingIndex:
    """Embeddings of a split's pairs, both modalities, in the split's order.

    ``audio``/``image``: float16 embeddings (global: ``(N, D)``; dense: ``(N, K, T, D)`` /
    ``(N, K, L, D)``). ``kind``: the model's ``'global'`` or ``'dense'``.
    """

    kind: str
    audio: Tensor
    image: Tensor
    stems: list[str]
    labels: Tensor
    class_names: list[str]
    audio_paths: list[str]
    image_paths: list[str]
    ckpt: str
    root: str
    split: str
    image_size: int
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def changed_files(self, position: int) -> list[str] | None:
        """What became of item ``position``'s files since the index was built: ``['frame changed',
        'wav gone', ...]`` (empty when both are as they were), None for an index that recorded no sizes
        and times (built by an older cmav)."""
        recorded = {m: self.info.get(f"{m}_files") for m in ("audio", "image")}
        if any(r is None for r in recorded.values()):
            return None
        out = []
        for modality, name, paths in (("image", "frame", self.image_paths), ("audio", "wav", self.audio_paths)):
            if not paths[position]:
                continue  # no file was found for it at build time either
            now = file_stats([paths[position]])[0]
            if now[0] < 0:
                out.append(f"{name} gone")
            elif not torch.equal(now, recorded[modality][position]):
                out.append(f"{name} changed")
        return out

    # -------------------------------------------------------------- files

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = {
            "version": INDEX_VERSION,
            "kind": self.kind,
            "audio": self.audio.half().contiguous(),
            "image": self.image.half().contiguous(),
            "stems": list(self.stems),
            "labels": self.labels.long(),
            "class_names": list(self.class_names),
            "audio_paths": list(self.audio_paths),
            "image_paths": list(self.image_paths),
            "ckpt": self.ckpt,
            "root": self.root,
            "split": self.split,
            "image_size": int(self.image_size),
            "info": dict(self.info),
        }
        return atomic_write(path, lambda tmp: torch.save(blob, tmp))

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingIndex:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"index not found: {path} (write one with `cmav index build --ckpt CKPT DATA`)")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path}: not a readable index ({str(exc).splitlines()[0]})") from exc
        if not isinstance(blob, dict) or blob.get("version") != INDEX_VERSION:
            raise ValueError(f"{path}: not a cmav embedding index of version {INDEX_VERSION}")
        blob.pop("version")
        return cls(**blob)

    # -------------------------------------------------------------- search

    def gallery(self, query_modality: Modality) -> Tensor:
        """What a query of ``query_modality`` is searched against: the OTHER modality."""
        return self.image if query_modality == "audio" else self.audio

    def search(self, query: Tensor, query_modality: Modality, k: int = 8, backend: Backend = "auto",
               faiss_factory: str = "Flat") -> list[SearchResult]:  # fmt: skip
        """Top-``k`` gallery items of every query (queries embedded by the same model).

        ``query``: ``(Q, ...)`` audio embeddings (searched against the frames) or image
        embeddings (searched against the audio), as the model's ``encode_*`` returns them. ``k`` >= 1
        (a smaller gallery gives fewer). ``backend='auto'``: exact up to :data:`EXACT_LIMIT` items, FAISS
        beyond it for a global index when installed; a dense index is always searched exactly.
        """
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}: the number of gallery items to return")
        gallery = self.gallery(query_modality)
        # same heads and dimension (dense token counts differ between the modalities)
        if query.dim() != gallery.dim() or query.shape[1] != gallery.shape[1] or query.shape[-1] != gallery.shape[-1]:
            raise ValueError(f"query embeddings {tuple(query.shape[1:])} do not match the index's "
                             f"{tuple(gallery.shape[1:])}: embed with the index's model ({self.ckpt})")  # fmt: skip
        # 'auto' never picks FAISS for a dense index (it cannot index token sets); asking for it by name is refused
        large = self.kind == "global" and len(self) > EXACT_LIMIT
        use_faiss = backend == "faiss" or (backend == "auto" and large and faiss_available())
        if use_faiss:
            if self.kind != "global":
                raise ValueError("FAISS indexes single vectors: only global-model indices can use it "
                                 "(dense indices are searched exactly)")  # fmt: skip
            scores, idx = faiss_topk(query.float(), gallery.float(), k, faiss_factory)
        else:
            scores, idx = exact_topk(self.kind, query, gallery, k, query_modality)
        return [SearchResult(i, s) for i, s in zip(idx, scores, strict=True)]


def exact_topk(kind: str, query: Tensor, gallery: Tensor, k: int, query_modality: Modality = "audio",
               chunk: int = 65536) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Exact top-k ``(scores (Q, k), indices (Q, k))`` over the gallery, in gallery chunks; tied
    scores (common in a float16 index) in gallery order, the same for every ``chunk``.

    Dense scores are not symmetric in their arguments (max over IMAGE locations, mean over AUDIO
    tokens), so the query goes on its own modality's side.
    """
    k = min(k, gallery.shape[0])
    q = query.float()
    best_s = q.new_full((q.shape[0], 0), float("-inf"))
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
    for start in range(0, gallery.shape[0], chunk):
        g = gallery[start : start + chunk].float()
        s = scores_for(kind, q, g) if query_modality == "audio" else scores_for(kind, g, q).T
        cand_s = torch.cat([best_s, s], dim=1)
        cand_i = torch.cat([best_i, torch.arange(start, start + g.shape[0]).expand(q.shape[0], -1)], dim=1)
        # topk orders ties arbitrarily; a stable sort keeps them in candidate order, which is gallery
        # order (the kept best come from earlier chunks and are already so ordered)
        order = torch.sort(cand_s, dim=1, descending=True, stable=True).indices[:, :k]
        best_s, best_i = torch.gather(cand_s, 1, order), torch.gather(cand_i, 1, order)
    return best_s, best_i


def file_stats(paths: list[str]) -> Tensor:
    """``(N, 2)`` int64 size and mtime_ns of each file (``-1`` for a missing one or an empty path): a
    cheap record of the data an index was built from, to tell at search time which hits changed."""
    out = torch.full((len(paths), 2), -1, dtype=torch.long)
    for i, path in enumerate(paths):
        if not path:
            continue
        try:
            st = Path(path).stat()
        except OSError:
            continue
        out[i, 0], out[i, 1] = st.st_size, st.st_mtime_ns
    return out


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def faiss_topk(query: Tensor, gallery: Tensor, k: int, factory: str = "Flat") -> tuple[Tensor, Tensor]:
    """Top-k by inner product with a FAISS index built from ``factory`` (trained on the gallery if
    the type needs training)."""
    try:
        import faiss
    except ImportError as exc:
        raise RuntimeError(
            "FAISS is not installed: `pip install 'cmav[faiss]'` (faiss-cpu), or use backend='torch'"
        ) from exc
    g = gallery.contiguous().numpy().astype("float32")
    index = faiss.index_factory(g.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(g)
    index.add(g)
    scores, idx = index.search(query.contiguous().numpy().astype("float32"), min(k, g.shape[0]))
    found = idx >= 0  # an approximate index (IVF, HNSW) may find fewer than k: FAISS pads with -1
    if not found.all():
        keep = int(found.sum(1).min())
        if keep == 0:
            raise RuntimeError(f"the FAISS index ({factory}) found no neighbour for a query: use an exact index "
                               "(factory 'Flat') or more probes")  # fmt: skip
        scores, idx = scores[:, :keep], idx[:, :keep]
    return torch.from_numpy(scores), torch.from_numpy(idx).long()


@torch.no_grad()
def build_index(
    ckpt: str | Path,
    root: str | Path,
    split: str = "validation",
    layout: str = "suburmp",
    batch_size: int = 256,
    cache_dir: str | None = None,
    progress: bool = True,
) -> EmbeddingIndex:
    """Embed every pair of ``split`` of the data set at ``root`` with the checkpoint's model.

    The frames are resized to the model's image size and the LMS computed with the front end the
    checkpoint was trained with (the preprocessing cache is shared with training).
    """
    from cmav.data.datasets import open_split
    from cmav.data.layout import scan_paired, scan_suburmp
    from cmav.evaluation.generate import front_end_of
    from cmav.tasks.retrieval import load_retrieval

    # hashed on both sides of the reads: a trainer saving last.ckpt meanwhile would otherwise leave the
    # new file's hash beside the old weights' embeddings, and search would accept the new model
    ckpt_sha256 = sha256_file(ckpt) if Path(ckpt).is_file() else ""  # else load_retrieval says what is wrong
    task = load_retrieval(ckpt)
    features, spec = front_end_of(ckpt)
    if sha256_file(ckpt) != ckpt_sha256:
        raise ValueError(f"{ckpt}: changed while it was read (is a training run still saving it?): build the index "
                         "again once it is written, or from a copy of it")  # fmt: skip
    size = int(task.hparams.image_size)
    ds = open_split(layout, root, split, image_size=size, features=features, chunk=spec, cache_dir=cache_dir,
                    progress=progress)  # fmt: skip
    t = ds.tensors
    expected = tuple(task.model.audio_encoder.input_shape)
    if tuple(t.audio.shape[1:]) != expected:
        raise ValueError(f"the data's LMS {tuple(t.audio.shape[1:])} do not match the model's input {expected}")
    audio, image = [], []
    for i in range(0, len(t), batch_size):
        a, v = task.embed(t.audio[i : i + batch_size].float(), t.images[i : i + batch_size].float().div(127.5).sub(1.0))
        audio.append(a.half().cpu())
        image.append(v.half().cpu())
    scan = scan_suburmp(root, split) if layout == "suburmp" else scan_paired(root, split, tuple(t.class_names))
    by_key = {(s.class_name, s.stem): s for s in scan.samples}
    samples = [by_key.get((t.class_names[int(c)], stem)) for stem, c in zip(t.stems, t.labels.tolist(), strict=True)]
    audio_paths = [str(s.audio_path.resolve()) if s else "" for s in samples]
    image_paths = [str(s.image_path.resolve()) if s else "" for s in samples]
    return EmbeddingIndex(
        kind=task.kind,
        audio=torch.cat(audio),
        image=torch.cat(image),
        stems=list(t.stems),
        labels=t.labels.clone(),
        class_names=list(t.class_names),
        audio_paths=audio_paths,
        image_paths=image_paths,
        ckpt=str(Path(ckpt).resolve()),
        root=str(Path(root).resolve()),
        split=split,
        image_size=size,
        # search checks the model against it: the index's embeddings are these weights'
        info={"layout": layout, "trained_encoder_mode": getattr(task, "trained_encoder_mode", None),
              "ckpt_sha256": ckpt_sha256,
              # search notes the hits whose files changed since (their scores are of the old files)
              "audio_files": file_stats(audio_paths), "image_files": file_stats(image_paths)},
    )  # fmt: skip


__all__ = [
    "EXACT_LIMIT",
    "EmbeddingIndex",
    "SearchResult",
    "build_index",
    "exact_topk",
    "faiss_available",
    "faiss_topk",
    "file_stats",
]
