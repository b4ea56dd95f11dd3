"""The end of every track in time, held out: seen players at moments no model trained on."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

import torch


def _ints(x: torch.Tensor | Sequence[int]) -> list[int]:
    return [int(v) for v in (x.tolist() if isinstance(x, torch.Tensor) else x)]


def natural_key(name: str) -> tuple:
    """Sort key comparing the numbers in a name as numbers: ``clip2`` before ``clip10``."""
    parts = re.split(r"([0-9]+)", name)
    return tuple(int(p) if k % 2 else p for k, p in enumerate(parts)), name


def tail_holdout(tracks: torch.Tensor | Sequence[int], labels: torch.Tensor | Sequence[int],
                 times: torch.Tensor | Sequence[int], fraction: float, guard_ms: int = 0,
                 drop: Literal["held", "kept"] = "held",
                 stems: Sequence[str] | None = None) -> tuple[list[int], list[int]]:  # fmt: skip
    """Split indices so the last ``fraction`` of every (class, track) in time is held out.

    Validation players never appear in train, so player-aware metrics need frames of train
    players that the model has not seen: the end of each train track. Sub-URMP's chunks start every
    100 ms and last 500, so the chunks on either side of the boundary share audio. With ``guard_ms``
    (the chunk length), those within ``guard_ms`` of the other side are in neither list: the first
    held-out ones (``drop="held"``, which leaves the kept chunks as they are without a guard) or the
    last kept ones (``drop="kept"``, which leaves the held-out ones). Chunks with unknown times (-1)
    are not guarded; with ``stems`` they are ordered by name in natural order (``clip2`` before
    ``clip10``), so the held-out "tail" is the last files by name.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    if drop not in ("held", "kept"):
        raise ValueError(f"drop must be 'held' or 'kept', got {drop!r}")
    labels, tracks, times = _ints(labels), _ints(tracks), _ints(times)
    keep, held = [], []
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(labels, tracks, strict=True)):
        groups.setdefault(key, []).append(i)
    for idx in groups.values():
        idx.sort(key=lambda i: (times[i], natural_key(stems[i])) if stems is not None else times[i])
        # 0.3 * 10 is 3.0000000000000004 in floating point: 3 chunks, not 4
        n_held = math.ceil(fraction * len(idx) - 1e-9) if fraction > 0 else 0
        kept, tail = idx[: len(idx) - n_held], idx[len(idx) - n_held :]
        if guard_ms > 0 and kept and tail and times[kept[-1]] >= 0:
            if drop == "held":
                tail = [i for i in tail if times[i] - times[kept[-1]] >= guard_ms]
            else:
                kept = [i for i in kept if times[tail[0]] - times[i] >= guard_ms]
        keep += kept
        held += tail
    return sorted(keep), sorted(held)


__all__ = ["natural_key", "tail_holdout"]
