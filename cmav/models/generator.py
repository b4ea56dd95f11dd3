"""DCGAN generator conditioned on a 128-d cross-modal feature."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoders import check_shape


def dcgan_init_(module: nn.Module, std: float = 0.02) -> nn.Module:
    """DCGAN initialisation in place: conv/linear weights ~ N(0, std), norm weights ~ N(1, std),
    biases 0. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) and m.affine:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)
    return module


def next_pow2(n: int) -> int:
    """Smallest power of two >= ``n``."""
    return 1 << (int(n) - 1).bit_length()


class ConditionalGenerator(nn.Module):
    """``G(z, cond)``: noise plus a projected condition feature -> image or spectrogram.

    Layout: ``cond`` -> Linear(cond_dim, cond_proj_dim) -> LeakyReLU(0.2); concatenated with
    ``z``; Linear -> BatchNorm -> ReLU to the start map; then ConvTranspose(4, 2, 1) -> BatchNorm
    -> ReLU stages that double both sides and halve the channels; the last stage maps to
    ``out_shape[0]`` channels without BatchNorm, followed by ``out_activation``.

    Output size: the network builds a canvas of ``(next_pow2(H), next_pow2(W))`` (each at least
    ``2 * start_size``). The start map is ``start_size`` (4) along the shorter canvas side and
    proportionally longer along the other (4x4 for square outputs, as in DCGAN; 8x4 for a 128x44
    spectrogram, whose canvas is 128x64). The canvas is then fitted to exactly ``out_shape``:
    ``fit='crop'`` (default) takes the centred window, so every output pixel comes from the same
    transposed-conv grid as in the square case, with no resampling blur; ``fit='interpolate'``
    resizes the canvas bilinearly instead. Power-of-two outputs (64x64, 128x128) are untouched.

    Args:
        out_shape: ``(C, H, W)`` of one generated sample.
        z_dim: noise dimension.
        cond_dim: dimension of the condition feature; 0 for an unconditional generator.
        cond_proj_dim: dimension the condition is projected to before concatenation with ``z``.
        base_channels: channels entering the last stage; doubled towards the start map.
        max_channels: cap on the start-map channel count.
        out_activation: ``'tanh'`` for outputs in [-1, 1] (images; I2S's spectrograms, which it
            scales from dB to [-1, 1]), ``'none'`` for an unbounded output such as raw dB.
        start_size: side of the start map along the shorter axis (a power of two).
        fit: ``'crop'`` or ``'interpolate'`` (see above).
        negative_slope: slope of the LeakyReLU after the condition projection.
        init: apply :func:`dcgan_init_`.
    """

    def __init__(
        self,
        out_shape: Sequence[int] = (3, 64, 64),
        z_dim: int = 10,
        cond_dim: int = 128,
        cond_proj_dim: int = 128,
        base_channels: int = 64,
        max_channels: int = 512,
        out_activation: str = "tanh",
        start_size: int = 4,
        fit: str = "crop",
        negative_slope: float = 0.2,
        init: bool = True,
    ) -> None:
        super().__init__()
        c, h, w = check_shape(out_shape, "out_shape")
        if out_activation not in ("tanh", "none"):
            raise ValueError(f"out_activation must be 'tanh' or 'none', got {out_activation!r}")
        if fit not in ("crop", "interpolate"):
            raise ValueError(f"fit must be 'crop' or 'interpolate', got {fit!r}")
        if start_size < 1 or start_size & (start_size - 1):
            raise ValueError(f"start_size must be a power of two, got {start_size}")
        if z_dim < 0 or cond_dim < 0:
            raise ValueError("z_dim and cond_dim must be >= 0")
        proj_dim = cond_proj_dim if cond_dim > 0 else 0
        if z_dim + proj_dim == 0:
            raise ValueError("generator needs z_dim > 0 or a condition")
        self.out_shape = (c, h, w)
        self.z_dim = z_dim
        self.cond_dim = cond_dim
        self.fit = fit

        canvas_h = max(next_pow2(h), 2 * start_size)
        canvas_w = max(next_pow2(w), 2 * start_size)
        n_stages = (min(canvas_h, canvas_w) // start_size).bit_length() - 1
        self.canvas_shape = (canvas_h, canvas_w)
        self.start_shape = (canvas_h >> n_stages, canvas_w >> n_stages)
        self.n_stages = n_stages

        self.cond_proj = (
            nn.Sequential(nn.Linear(cond_dim, proj_dim), nn.LeakyReLU(negative_slope, inplace=True))
            if cond_dim > 0
            else None
        )
        channels = [min(base_channels * 2 ** (n_stages - 1 - i), max_channels) for i in range(n_stages)]
        h0, w0 = self.start_shape
        self.fc = nn.Linear(z_dim + proj_dim, channels[0] * h0 * w0, bias=False)
        self.fc_norm = nn.Sequential(nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True))

        stages: list[nn.Module] = []
        for i in range(n_stages):
            last = i == n_stages - 1
            cout = c if last else channels[i + 1]
            stage: list[nn.Module] = [nn.ConvTranspose2d(channels[i], cout, 4, 2, 1, bias=last)]
            if not last:
                stage += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.out_activation = nn.Tanh() if out_activation == "tanh" else nn.Identity()
        if init:
            dcgan_init_(self)

    def _fit(self, x: Tensor) -> Tensor:
        _, h, w = self.out_shape
        if x.shape[-2:] == (h, w):
            return x
        if self.fit == "interpolate":
            return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        top = (x.shape[-2] - h) // 2
        left = (x.shape[-1] - w) // 2
        return x[..., top : top + h, left : left + w]

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        """``z`` ``(N, z_dim)``, ``cond`` ``(N, cond_dim)`` -> ``(N, *out_shape)``."""
        parts = [z] if self.z_dim > 0 else []
        if self.cond_proj is not None:
            if cond is None:
                raise ValueError("this generator is conditional: cond is required")
            parts.append(self.cond_proj(cond))
        x = self.fc(torch.cat(parts, dim=1))
        x = self.fc_norm(x.view(x.shape[0], -1, *self.start_shape))
        return self.out_activation(self._fit(self.stages(x)))


__all__ = ["ConditionalGenerator", "dcgan_init_", "next_pow2"]
