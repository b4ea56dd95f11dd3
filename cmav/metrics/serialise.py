"""Metric results as strict JSON: NaN and infinities become ``None`` (JSON has neither)."""

from __future__ import annotations

import math
from typing import Any


def json_safe(x: Any) -> Any:
    """``x`` with every NaN/inf float, at any depth of dicts, lists and tuples, replaced by ``None``."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
