"""Pair-aware conditional discriminator: scores (sample, condition feature) pairs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from .encoders import check_shape
from .generator import dcgan_init_


def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


class PairAwareDiscriminator(nn.Module):
    """``D(x, cond) -> (N,)`` logits, high for real samples paired with their own condition.

    Layout (DCGAN / text-to-image GAN style): conv layers with LeakyReLU(0.2) that halve every
    axis still longer than ``final_size`` (kernel 4, stride 2; an axis already short enough gets
    kernel 3, stride 1, so non-square inputs such as a 128x44 spectrogram end near
    ``final_size`` on both axes), channels doubling from ``base_channels``. The condition is
    projected (Linear + LeakyReLU), tiled over the last map and concatenated on channels; a 1x1
    conv + LeakyReLU mixes them, and a conv whose kernel covers the whole map gives one logit.
    With ``projection`` (Miyato & Koyama 2018, an option beyond the paper) the logit also gets
    the inner product of a linear map of the condition with the spatially averaged last conv map:
    a direct "does this sample match this condition" term, in addition to the concatenation.
    With ``n_classes`` (AC-GAN, Odena et al. 2017; also beyond the paper) a linear head on the
    spatially averaged last conv map classifies the sample itself, with no condition.

    Args:
        in_shape: ``(C, H, W)`` of one input sample.
        cond_dim: condition dimension; 0 makes the discriminator unconditional (``cond=None``).
        cond_proj_dim: dimension the condition is projected to before tiling.
        base_channels: channels of the first conv.
        max_channels: cap on the per-layer channel count.
        spectral_norm: wrap every conv/linear in
            :func:`torch.nn.utils.parametrizations.spectral_norm`.
        batch_norm: BatchNorm after every conv except the first (DCGAN). ``None`` means
            ``not spectral_norm``: the two are not combined unless asked for explicitly.
        final_size: stop halving an axis once it is <= this. With batch norm the last map must
            keep two or more positions (a 1x1 map is refused).
        negative_slope: LeakyReLU slope.
        init: apply DCGAN initialisation (before spectral norm is attached).
        projection: add the projection term (needs ``cond_dim > 0``).
        n_classes: size of the auxiliary class head; 0 = none.
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (3, 64, 64),
        cond_dim: int = 128,
        cond_proj_dim: int = 128,
        base_channels: int = 64,
        max_channels: int = 512,
        spectral_norm: bool = False,
        batch_norm: bool | None = None,
        final_size: int = 4,
        negative_slope: float = 0.2,
        init: bool = True,
        projection: bool = False,
        n_classes: int = 0,
    ) -> None:
        super().__init__()
        c, h, w = check_shape(in_shape, "in_shape")
        if cond_dim < 0:
            raise ValueError(f"cond_dim must be >= 0, got {cond_dim}")
        if projection and cond_dim == 0:
            raise ValueError("projection needs a conditional discriminator (cond_dim > 0)")
        if n_classes < 0:
            raise ValueError(f"n_classes must be >= 0, got {n_classes}")
        if final_size < 1:
            raise ValueError(f"final_size must be >= 1, got {final_size}")
        use_bn = (not spectral_norm) if batch_norm is None else batch_norm
        self.in_shape = (c, h, w)
        self.cond_dim = cond_dim
        self.spectral_norm = spectral_norm
        self.batch_norm = use_bn

        layers: list[nn.Module] = []
        cin = c
        i = 0
        # at least one conv even for inputs already <= final_size
        while h > final_size or w > final_size or i == 0:
            sh, sw = (2 if h > final_size else 1), (2 if w > final_size else 1)
            kh, kw = (4 if sh == 2 else 3), (4 if sw == 2 else 3)
            cout = min(base_channels * 2**i, max_channels)
            bn_here = use_bn and i > 0  # DCGAN: no BN on the layer that sees raw pixels
            layers.append(nn.Conv2d(cin, cout, (kh, kw), (sh, sw), 1, bias=not bn_here))
            if bn_here:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(negative_slope, inplace=True))
            h, w = _conv_out(h, kh, sh, 1), _conv_out(w, kw, sw, 1)
            cin = cout
            i += 1
        if use_bn and h * w == 1:
            # one value per channel on a one-sample batch (the GANs' wrong-class and wrong-player
            # terms can give one), which batch norm cannot normalise in train mode
            raise ValueError(f"discriminator final_size={final_size} ends in_shape {self.in_shape} on a 1x1 map, where "
                             "batch norm fails on any one-sample batch: use a larger final_size, or no batch norm "
                             "(spectral_norm, or batch_norm=False)")  # fmt: skip
        self.body = nn.Sequential(*layers)
        self.n_layers = i
        self.feature_shape = (cin, h, w)

        proj_dim = cond_proj_dim if cond_dim > 0 else 0
        self.cond_proj = (
            nn.Sequential(nn.Linear(cond_dim, proj_dim), nn.LeakyReLU(negative_slope, inplace=True))
            if cond_dim > 0
            else None
        )
        joint: list[nn.Module] = [nn.Conv2d(cin + proj_dim, cin, 1, bias=not use_bn)]
        if use_bn:
            joint.append(nn.BatchNorm2d(cin))
        joint.append(nn.LeakyReLU(negative_slope, inplace=True))
        self.joint = nn.Sequential(*joint)
        # kernel = whole map: a Linear over the flattened map that keeps the conv layout
        self.out = nn.Conv2d(cin, 1, (h, w))
        self.projection = nn.Linear(cond_dim, cin, bias=False) if projection else None
        self.class_head = nn.Linear(cin, n_classes) if n_classes > 0 else None

        if init:
            dcgan_init_(self)
        if spectral_norm:
            for m in list(self.modules()):
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    _spectral_norm(m)

    def features(self, x: Tensor) -> Tensor:
        """Last conv map before the condition is joined, ``(N, *feature_shape)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"expected input (N, {self.in_shape}), got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: Tensor, cond: Tensor | None = None, with_classes: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` ``(N, *in_shape)``, ``cond`` ``(N, cond_dim)`` or None -> ``(N,)`` logits; with
        ``with_classes``, also the class head's ``(N, n_classes)`` logits from the same pass."""
        if with_classes and self.class_head is None:
            raise ValueError("this discriminator has no class head (n_classes=0)")
        fmap = self.features(x)
        if self.cond_proj is not None:
            if cond is None:
                raise ValueError("this discriminator is conditional: cond is required")
            c = self.cond_proj(cond)
            c = c[:, :, None, None].expand(-1, -1, fmap.shape[2], fmap.shape[3])
            joined = torch.cat([fmap, c], dim=1)
        else:
            joined = fmap
        logit = self.out(self.joint(joined)).flatten()
        if self.projection is not None:
            logit = logit + (self.projection(cond) * fmap.mean(dim=(2, 3))).sum(dim=1)
        if with_classes:
            assert self.class_head is not None
            return logit, self.class_head(fmap.mean(dim=(2, 3)))
        return logit


__all__ = ["PairAwareDiscriminator"]
