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

    Each one is min-max scaled on its own unless a common ``[low, high]`` (dB) is given, which
    keeps real and generated spectrograms comparable side by side.
    """
    x = spec.float()
    lo = x.amin(dim=(1, 2, 3), keepdim=True) if low is None else torch.tensor(float(low))
    hi = x.amax(dim=(1, 2, 3), keepdim=True) if high is None else torch.tensor(float(high))
    return ((x - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1).flip(-2)


def lms_picture(lms: torch.Tensor, size: int = 128, low: float | None = None, high: float | None = None) -> np.ndarray:
    """An LMS ``(1, n_mels, frames)`` as a grey ``(size, size, 3)`` picture, low frequencies at the bottom."""
    x = spectrogram_to_unit(lms[None], low, high)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    g = (x * 255).round().byte().cpu().numpy()
    return np.stack([g] * 3, axis=-1)


__all__ = ["lms_picture", "spectrogram_to_unit", "to_uint8_frame"]
