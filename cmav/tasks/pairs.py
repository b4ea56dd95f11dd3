"""Negative pairs for the pair-aware discriminator: wrong-class audio and wrong-player frames.

For each item of a batch the sampler draws, from the in-memory train tensors,

* a **wrong-class** item: any train pair whose class differs from the item's class (its audio
  is paired with the item's real frame to make a mismatched pair), and
* a **wrong-player** item: a train pair of the SAME class but ANOTHER track, i.e. another
  player (its frame is paired with the item's audio).

Draws are uniform over the eligible items, fully vectorised (one sort at construction, two
``rand`` calls per batch) and deterministic under a ``torch.Generator``. A class with a single
train track has no wrong player: those items are flagged invalid (the term is skipped for them)
and the sampler says so once, when it is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


class NegativeSamplingWarning(UserWarning):
    """A negative term cannot be formed for some classes (reported once per sampler)."""


@dataclass
class Negatives:
    """Indices into the split's tensors, one per batch item; ``*_valid`` is False where no
    eligible item exists (the index is then meaningless)."""

    wrong_class: Tensor
    wrong_class_valid: Tensor
    wrong_player: Tensor
    wrong_player_valid: Tensor


def _draw(avail: Tensor, generator: torch.Generator | None) -> Tensor:
    """Uniform integers in ``[0, avail)`` per element (0 where ``avail == 0``)."""
    u = torch.rand(avail.shape, generator=generator, dtype=torch.float64)
    return (u * avail.double()).floor().long().clamp(min=0).minimum((avail - 1).clamp(min=0))


class NegativeSampler:
    """Draws wrong-class and wrong-player partners from a split's labels and tracks.

    Args:
        labels: ``(N,)`` class of every pair of the split.
        tracks: ``(N,)`` track (player/performance) id of every pair; -1 when unknown.
        pool: indices of the pairs that may be drawn (e.g. the train subset without the
            held-out tails); default all.
        class_names: for messages; default ``class <k>``.
        n_classes: number of classes (default ``len(class_names)`` or ``labels.max() + 1``).
        warn: emit the one-off warning about classes without a wrong player.
    """

    def __init__(
        self,
        labels: Tensor,
        tracks: Tensor,
        pool: Sequence[int] | Tensor | None = None,
        class_names: Sequence[str] | None = None,
        n_classes: int | None = None,
        warn: bool = True,
    ) -> None:
        labels = torch.as_tensor(labels).long().cpu()
        tracks = torch.as_tensor(tracks).long().cpu()
        if labels.shape != tracks.shape or labels.dim() != 1:
            raise ValueError(f"labels and tracks must be (N,), got {tuple(labels.shape)}, {tuple(tracks.shape)}")
        pool_t = torch.arange(len(labels)) if pool is None else torch.as_tensor(pool, dtype=torch.long).cpu()
        if pool_t.numel() == 0:
            raise ValueError("NegativeSampler needs at least one pair to draw from")
        if n_classes is None:
            n_classes = len(class_names) if class_names is not None else int(labels.max()) + 1
        self.n_classes = int(n_classes)
        self.class_names = list(class_names) if class_names is not None else [f"class {k}" for k in range(n_classes)]

        pl, pt = labels[pool_t], tracks[pool_t]
        self.track_min = int(pt.min())
        self.track_slots = int(pt.max()) - self.track_min + 1
        # One sort by (class, track): each class is a contiguous block, each (class, track)
        # group a contiguous sub-block of it, so both draws are offsets into the same array.
        key = pl * self.track_slots + (pt - self.track_min)
        order = torch.sort(key, stable=True).indices
        self.sorted_index = pool_t[order]

        self.class_count = torch.bincount(pl, minlength=self.n_classes)
        self.class_start = torch.cumsum(self.class_count, 0) - self.class_count
        n_groups = self.n_classes * self.track_slots
        self.group_count = torch.bincount(key, minlength=n_groups)
        self.group_start = torch.cumsum(self.group_count, 0) - self.group_count
        self.total = int(pool_t.numel())

        tracks_per_class = (self.group_count.view(self.n_classes, self.track_slots) > 0).sum(1)
        self.tracks_per_class = tracks_per_class
        self.single_track_classes = [
            self.class_names[k] for k in range(self.n_classes) if int(tracks_per_class[k]) == 1
        ]
        self.message = self._describe()
        if warn and self.message:
            warnings.warn(self.message, NegativeSamplingWarning, stacklevel=2)

    def _describe(self) -> str:
        if not self.single_track_classes:
            return ""
        names = ", ".join(self.single_track_classes)
        unknown = " (track ids unknown: this layout has none)" if self.track_min == -1 and self.track_slots == 1 else ""
        return (
            f"wrong-player negatives disabled for {len(self.single_track_classes)} class(es) with a single "
            f"train track{unknown}: {names}. Their items get no wrong-player term."
        )

    @property
    def wrong_player_possible(self) -> bool:
        """Whether any class has two or more train tracks."""
        return bool((self.tracks_per_class >= 2).any())

    def _group_of(self, labels: Tensor, tracks: Tensor) -> tuple[Tensor, Tensor]:
        """Start and size of each item's (class, track) block; size 0 if absent from the pool."""
        slot = tracks - self.track_min
        known = (slot >= 0) & (slot < self.track_slots) & (labels >= 0) & (labels < self.n_classes)
        g = (labels.clamp(0, self.n_classes - 1) * self.track_slots + slot.clamp(0, self.track_slots - 1))
        count = torch.where(known, self.group_count[g], torch.zeros_like(g))
        start = torch.where(known, self.group_start[g], torch.zeros_like(g))
        return start, count

    def wrong_class(self, labels: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """For each label, a pool item of another class: ``(indices, valid)``."""
        labels = torch.as_tensor(labels).long().cpu()
        c = labels.clamp(0, self.n_classes - 1)
        own = torch.where((labels >= 0) & (labels < self.n_classes), self.class_count[c], 0)
        start = self.class_start[c]
        avail = self.total - own
        u = _draw(avail, generator)
        # skip over the item's own class block
        pos = torch.where(u < start, u, u + own)
        valid = avail > 0
        return self.sorted_index[pos.clamp(max=self.total - 1)], valid

    def wrong_player(
        self, labels: Tensor, tracks: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """For each (label, track), a pool item of the same class and another track: ``(indices, valid)``."""
        labels = torch.as_tensor(labels).long().cpu()
        tracks = torch.as_tensor(tracks).long().cpu()
        c = labels.clamp(0, self.n_classes - 1)
        in_range = (labels >= 0) & (labels < self.n_classes)
        c_start, c_count = self.class_start[c], torch.where(in_range, self.class_count[c], 0)
        g_start, g_count = self._group_of(labels, tracks)
        avail = c_count - g_count
        u = _draw(avail, generator)
        # offset within the class block, skipping the item's own track block
        # (an item whose own track is absent from the pool has g_count 0: nothing to skip)
        pos = c_start + u
        pos = torch.where(pos < g_start, pos, pos + g_count)
        valid = avail > 0
        return self.sorted_index[pos.clamp(max=self.total - 1)], valid

    def sample(self, labels: Tensor, tracks: Tensor, generator: torch.Generator | None = None) -> Negatives:
        """Both partners for a batch (wrong-class first, then wrong-player, from ``generator``)."""
        wc, wc_ok = self.wrong_class(labels, generator)
        wp, wp_ok = self.wrong_player(labels, tracks, generator)
        return Negatives(wc, wc_ok, wp, wp_ok)


def gather_audio(tensors, index: Tensor, device: torch.device | str) -> Tensor:
    """LMS of the given split items as float32 on ``device`` (the cache stores float16)."""
    return tensors.audio[index.cpu()].to(device=device, dtype=torch.float32, non_blocking=True)


def gather_images(tensors, index: Tensor, device: torch.device | str) -> Tensor:
    """Frames of the given split items in [-1, 1], float32 on ``device`` (the cache stores uint8)."""
    x = tensors.images[index.cpu()].to(device=device, non_blocking=True)
    return x.float().div_(127.5).sub_(1.0)


__all__ = ["NegativeSampler", "NegativeSamplingWarning", "Negatives", "gather_audio", "gather_images"]
