"""Tensors -> pictures: frames in [-1, 1] and spectrograms as uint8 arrays for sheets and TensorBoard."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_uint8_frame(image: torch.Tensor) -> np.ndarray:
    """``(3, S, S)`` float in [-1, 1] or uint8 -> ``(S, S, 3)`` uint8."""
    if image.dtype == torch.uint8:
        return image.permute(1, 2, 0).cpu().numpy()
    return ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def spectrogram_to_unit(spec: torch.Tensor, low: float | None = None, high: float | None = None) -> torch.Tensor:
    """Spectrograms ``(N, 1, F, T)`` -> ``(N, 1, F, T)`` in [0, 1] with low frequencies at the bottom.

    Each one is min-max scaled on its own (over its finite values) unless a common ``[low, high]``
    (dB) is given, which keeps real and generated spectrograms comparable side by side. A bin that
    is not finite does not spoil the others: -inf (the log of silence) and NaN show as 0, +inf as 1.
    ``low`` above ``high`` is refused (``ValueError``).
    """
    if low is not None and high is not None and low > high:
        raise ValueError(f"spectrogram_to_unit: low ({float(low)}) must not be above high ({float(high)})")
    x = spec.float()
    finite = torch.isfinite(x)
    dims = (1, 2, 3)
    lo = x.where(finite, torch.inf).amin(dim=dims, keepdim=True) if low is None else torch.tensor(float(low))
    hi = x.where(finite, -torch.inf).amax(dim=dims, keepdim=True) if high is None else torch.tensor(float(high))
    # a spectrogram with no finite value at all: any range, its bins all show as 0 or 1
    lo, hi = lo.nan_to_num(0.0, 0.0, 0.0), hi.nan_to_num(0.0, 0.0, 0.0)
    unit = ((x - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)
    return unit.nan_to_num(nan=0.0).flip(-2)


def lms_picture(lms: torch.Tensor, size: int = 128, low: float | None = None, high: float | None = None) -> np.ndarray:
    """An LMS ``(1, n_mels, frames)`` as a grey ``(size, size, 3)`` picture, low frequencies at the bottom."""
    x = spectrogram_to_unit(lms[None], low, high)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    g = (x * 255).round().byte().cpu().numpy()
    return np.stack([g] * 3, axis=-1)


__all__ = ["lms_picture", "spectrogram_to_unit", "to_uint8_frame"]
