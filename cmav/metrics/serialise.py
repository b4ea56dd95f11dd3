"""Metric results as strict JSON: NaN and infinities become ``None`` (JSON has neither)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def json_safe(x: Any) -> Any:
    """``x`` with every NaN/inf float, at any depth of dicts, lists and tuples, replaced by ``None``;
    numpy scalars and arrays and torch tensors become Python numbers and lists first (``json``
    writes neither, and a float32 NaN would slip past a check for Python floats)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().tolist()
    elif isinstance(x, (np.ndarray, np.generic)):
        x = x.tolist()
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def format_number(value: float | None, spec: str = ".3f") -> str:
    """``value`` formatted with ``spec``, or ``n/a`` where there is no figure (``None``: a NaN after
    :func:`json_safe`, a share of nothing, a spread of too few samples)."""
    return "n/a" if value is None else format(value, spec)
