"""Fill numba's on-disk cache with the librosa kernels cmav's front ends use, once, from one process.

librosa's ``yin``, ``cqt`` and zero-crossing kernels are numba functions cached on disk (next to
librosa's sources). Two processes that compile one of them into a cold cache at the same time can
leave its cache files from different processes, and the next process to load them segfaults
(numba/numba#10128). Two ``cmav`` runs started together on a fresh install (two shards of a grid,
two DDP ranks) would do that. ``scripts/install.sh`` runs :func:`warm_numba_cache` after each
install, so later processes find the cache filled and only read it.

    python -m cmav.features.numba_cache
"""

from __future__ import annotations

import time

import torch


def warm_numba_cache() -> float:
    """Run the front ends that call librosa (harmonic profile, CQT) on half a second of noise,
    which compiles each cached kernel they reach where the cache is cold; returns the seconds taken."""
    from cmav.features.cqt import ConstantQTransform, CqtConfig
    from cmav.features.harmonic import HarmonicConfig, HarmonicProfile

    start = time.perf_counter()
    for front_end in (HarmonicProfile(HarmonicConfig()), ConstantQTransform(CqtConfig())):
        rate = front_end.config.sample_rate
        noise = torch.randn(1, 1, rate // 2, generator=torch.Generator().manual_seed(0)) * 0.1
        front_end(noise, rate)
    return time.perf_counter() - start


if __name__ == "__main__":
    print(f"numba cache for librosa's kernels filled in {warm_numba_cache():.1f} s")
