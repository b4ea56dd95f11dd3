"""Whether this CPU computes bf16 natively: without it, bf16 autocast on the CPU is a slowdown.

On a CPU without bf16 instructions (x86 without AVX-512 BF16 or AMX, ARM without the ``bf16``
feature) PyTorch emulates every bf16 convolution. Measured with ``cmav bench s2i --channels 32
--channels-last --threads 2`` on a 2-core AMD EPYC with AVX2 only: 734 ms a step in float32 and
16,479 ms with ``--bf16``, 22 times slower. ``cmav fit``/``validate``/``test``/``predict``, the
ablation grids and ``cmav bench`` warn before such a run.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

CPUINFO = "/proc/cpuinfo"
# its names for bf16 instructions: x86 "flags" and ARM "Features"
BF16_FLAGS: frozenset[str] = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def native_bf16_cpu(cpuinfo: str | Path | None = None) -> bool | None:
    """True when the CPU lists a bf16 instruction set in ``cpuinfo`` (default :data:`CPUINFO`), False
    when it lists its features without one, None when that cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo or CPUINFO).read_text()
    except OSError:
        return None
    found_any = False
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            found_any = True
            if BF16_FLAGS & set(value.split()):
                return True
    return False if found_any else None


def slow_bf16_warning(cpuinfo: str | Path | None = None) -> str | None:
    """The warning to give before bf16 autocast on this CPU, or None when the CPU has bf16 (or is unknown)."""
    if native_bf16_cpu(cpuinfo) is not False:
        return None
    return ("bf16 autocast on a CPU without bf16 instructions (no avx512_bf16, amx_bf16 or bf16 in "
            f"{cpuinfo or CPUINFO}): PyTorch emulates it, about 20x slower than float32 here (cmav bench s2i "
            "--bf16). Use --trainer.precision 32-true on this machine")  # fmt: skip


def warn_if_slow_bf16(trainer: Any) -> bool:
    """Warn when a ``lightning.Trainer`` runs bf16 on a CPU without bf16 instructions; True when it warned."""
    from lightning.pytorch.accelerators import CPUAccelerator

    if "bf16" not in str(trainer.precision) or not isinstance(trainer.accelerator, CPUAccelerator):
        return False
    if msg := slow_bf16_warning():
        warnings.warn(msg, UserWarning, stacklevel=2)
        return True
    return False


__all__ = ["native_bf16_cpu", "slow_bf16_warning", "warn_if_slow_bf16"]
