"""Negative pairs for the pair-aware discriminator: wrong-class audio and wrong-player frames.

For each item of a batch the sampler draws, from the in-memory train tensors,

* a **wrong-class** item: any train pair whose class differs from the item's class (its audio
  is paired with the item's real frame to make a mismatched pair), and
* a **wrong-player** item: a train pair of the SAME class but ANOTHER track, i.e. another
  player (its frame is paired with the item's audio).

Draws are uniform over the eligible items, fully vectorised (one sort at construction, two
``rand`` calls per batch) and deterministic under a ``torch.Generator``. The wrong class can
instead follow given per-class probabilities (``class_probs``: hard-negative mining at the class
level, :class:`HardNegativeMiner`); the item within that class is then uniform. A class with a single
train track has no wrong player: those items are flagged invalid (the term is skipped for them)
and the sampler says so once, when it is built.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


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

    def wrong_class(
        self, labels: Tensor, generator: torch.Generator | None = None, class_probs: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """For each label, a pool item of another class: ``(indices, valid)``.

        Uniform over the pool's other-class items by default. With ``class_probs`` (``(C, C)``,
        row ``c`` = how likely each class is as item-of-class-``c``'s wrong class; need not be
        normalised) the class is drawn from its row, with the own class and classes absent from
        the pool masked out, and the item uniformly within that class.
        """
        labels = torch.as_tensor(labels).long().cpu()
        c = labels.clamp(0, self.n_classes - 1)
        if class_probs is not None:
            return self._wrong_class_weighted(labels, c, class_probs, generator)
        own = torch.where((labels >= 0) & (labels < self.n_classes), self.class_count[c], 0)
        start = self.class_start[c]
        avail = self.total - own
        u = _draw(avail, generator)
        # skip over the item's own class block
        pos = torch.where(u < start, u, u + own)
        valid = avail > 0
        return self.sorted_index[pos.clamp(max=self.total - 1)], valid

    def _wrong_class_weighted(
        self, labels: Tensor, c: Tensor, class_probs: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        probs = torch.as_tensor(class_probs, dtype=torch.float64).cpu()
        if probs.shape != (self.n_classes, self.n_classes):
            raise ValueError(f"class_probs must be ({self.n_classes}, {self.n_classes}), got {tuple(probs.shape)}")
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
            raise ValueError("class_probs must be finite and >= 0")
        rows = probs[c] * other_classes(self.class_count)[c]
        in_range = (labels >= 0) & (labels < self.n_classes)
        valid = in_range & (rows.sum(1) > 0)
        # rows without an eligible class get a dummy weight (their draw is flagged invalid)
        rows = torch.where(valid.unsqueeze(1), rows, torch.ones_like(rows))
        k = torch.multinomial(rows, 1, generator=generator).squeeze(1)
        pos = self.class_start[k] + _draw(self.class_count[k], generator)
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

    def sample(
        self, labels: Tensor, tracks: Tensor, generator: torch.Generator | None = None, class_probs: Tensor | None = None
    ) -> Negatives:
        """Both partners for a batch (wrong-class first, then wrong-player, from ``generator``);
        ``class_probs`` as in :meth:`wrong_class`."""
        wc, wc_ok = self.wrong_class(labels, generator, class_probs)
        wp, wp_ok = self.wrong_player(labels, tracks, generator)
        return Negatives(wc, wc_ok, wp, wp_ok)


class HardNegativeMiner(nn.Module):
    """Class-level hard-negative mining for the wrong-class term.

    Keeps D's running mean score (probability of "matching pair") for every (frame class, audio
    class) mismatched pair it has been shown, and turns it into the wrong-class probabilities of
    :meth:`NegativeSampler.wrong_class`: a ``fraction`` of the draw follows the running score (the
    pairs D still takes for matches come up more often), the rest stays uniform over the other
    classes' items. The score is a buffer, so a checkpoint keeps it and a resumed run draws the
    same. Under DDP it is a module buffer like BatchNorm's running statistics, synchronised as
    DDP synchronises those.

    Args:
        n_classes: number of classes.
        fraction: share of the draw that follows the score, in [0, 1].
        momentum: weight of one batch's mean score of a pair in that pair's running score, in (0, 1].
    """

    score: Tensor

    def __init__(self, n_classes: int, fraction: float, momentum: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"hard-negative fraction must be in [0, 1], got {fraction}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"hard-negative momentum must be in (0, 1], got {momentum}")
        self.n_classes, self.fraction, self.momentum = int(n_classes), float(fraction), float(momentum)
        # 0.5 everywhere: before D has been seen, the mined part is uniform over the classes
        self.register_buffer("score", torch.full((self.n_classes, self.n_classes), 0.5))

    def class_probs(self, class_count: Tensor) -> Tensor:
        """``(C, C)`` wrong-class probabilities (rows sum to 1 over the eligible other classes)
        given the pool's ``class_count`` per class."""
        count = torch.as_tensor(class_count, dtype=torch.float64).cpu()
        if count.shape != (self.n_classes,):
            raise ValueError(f"class_count must have {self.n_classes} entries, got {tuple(count.shape)}")
        eligible = other_classes(count)
        uniform = count.unsqueeze(0) * eligible
        mined = self.score.detach().double().cpu().clamp(min=1e-6) * eligible
        return (1 - self.fraction) * _rows(uniform) + self.fraction * _rows(mined)

    @torch.no_grad()
    def update(self, frame_labels: Tensor, audio_labels: Tensor, prob: Tensor) -> None:
        """Fold one batch's D probabilities of (frame of ``frame_labels``, audio of
        ``audio_labels``) pairs into the running score of each pair seen."""
        dev = self.score.device
        cell = frame_labels.to(dev).long() * self.n_classes + audio_labels.to(dev).long()
        n = self.n_classes * self.n_classes
        count = torch.bincount(cell, minlength=n).float()
        total = torch.zeros(n, device=dev).index_add_(0, cell, prob.detach().to(dev, torch.float32).flatten())
        seen = count > 0
        flat = self.score.view(-1)
        flat[seen] = (1 - self.momentum) * flat[seen] + self.momentum * total[seen] / count[seen]

    def extra_repr(self) -> str:
        return f"n_classes={self.n_classes}, fraction={self.fraction}, momentum={self.momentum}"


def other_classes(class_count: Tensor) -> Tensor:
    """``(C, C)`` float64 mask: row ``c`` is 1 for every class other than ``c`` that has items in
    the pool (the classes a wrong-class partner of class ``c`` may come from)."""
    count = torch.as_tensor(class_count).cpu()
    n = count.numel()
    return (count > 0).double().unsqueeze(0) * (1 - torch.eye(n, dtype=torch.float64))


def _rows(w: Tensor) -> Tensor:
    """Rows of ``w`` normalised to sum 1 (all-zero rows stay zero)."""
    return w / w.sum(1, keepdim=True).clamp(min=1e-300)


def gather_audio(tensors, index: Tensor, device: torch.device | str) -> Tensor:
    """LMS of the given split items as float32 on ``device`` (the cache stores float16)."""
    return tensors.audio[index.cpu()].to(device=device, dtype=torch.float32, non_blocking=True)


def gather_images(tensors, index: Tensor, device: torch.device | str) -> Tensor:
    """Frames of the given split items in [-1, 1], float32 on ``device`` (the cache stores uint8)."""
    x = tensors.images[index.cpu()].to(device=device, non_blocking=True)
    return x.float().div_(127.5).sub_(1.0)


__all__ = ["HardNegativeMiner", "NegativeSampler", "NegativeSamplingWarning", "Negatives", "gather_audio", "gather_images"]
