"""Held-out image classifier used only to SCORE generated images.

It is trained on real frames and never provides a gradient to a generator, so its accuracy on
generated images (and FID/KID/diversity on its penultimate features) is not something the
generator could have been optimised against.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .encoders import check_input_shape, make_activation, min_pooled_size, pool_kernel


class ImageJudge(nn.Module):
    """VGG-style classifier: ``n_blocks`` x (2 x [conv3x3-BN-act]) -> max-pool -> spatial dropout.

    Stronger than :class:`~cmav.models.encoders.ImageEncoder` (two convs per block, a wider
    penultimate layer, dropout throughout), so it is a fairer referee than the encoder the
    generator is conditioned through.

    Args:
        image_size: side of a square image, or ``(H, W)``.
        n_classes: 13 instruments, or the number of players when used as a player judge.
        in_channels: 3 for RGB.
        n_blocks: number of conv blocks (>= 1).
        base_channels: channels of the first block; doubled every block up to ``max_channels``.
        max_channels: cap on the per-block channel count.
        feature_dim: size of the penultimate features returned by :meth:`features`.
        dropout: dropout before the two Linear layers.
        block_dropout: spatial (channel) dropout after every block.
        activation: ``'leaky_relu'`` or ``'relu'``.
        negative_slope: slope of the LeakyReLU.
    """

    def __init__(
        self,
        image_size: int | Sequence[int] = 64,
        n_classes: int = 13,
        in_channels: int = 3,
        n_blocks: int = 5,
        base_channels: int = 32,
        max_channels: int = 256,
        feature_dim: int = 256,
        dropout: float = 0.5,
        block_dropout: float = 0.1,
        activation: str = "leaky_relu",
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        if isinstance(image_size, int):
            h, w = image_size, image_size
        else:
            h, w = (int(s) for s in image_size)
        if h < 1 or w < 1 or in_channels < 1:
            raise ValueError(f"bad image shape ({in_channels}, {h}, {w})")
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        self.input_shape = (in_channels, h, w)
        self.n_classes = n_classes
        self.feature_dim = feature_dim

        def conv_bn_act(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                make_activation(activation, negative_slope),
            ]

        layers: list[nn.Module] = []
        cin = in_channels
        pools_h = pools_w = 0
        for i in range(n_blocks):
            cout = min(base_channels * 2**i, max_channels)
            kh, kw = pool_kernel(h, w)
            pools_h, pools_w = pools_h + (kh == 2), pools_w + (kw == 2)
            layers += conv_bn_act(cin, cout) + conv_bn_act(cout, cout)
            if (kh, kw) != (1, 1):
                layers.append(nn.MaxPool2d((kh, kw)))
            layers.append(nn.Dropout2d(block_dropout))
            h, w = h // kh, w // kw
            cin = cout
        self.body = nn.Sequential(*layers)
        self.min_input_size: tuple[int, int] = (min_pooled_size(pools_h), min_pooled_size(pools_w))
        """Smallest ``(H, W)`` its max-pools take (the global pooling takes any larger size)."""
        self.head_features = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(cin, feature_dim),
            make_activation(activation, negative_slope),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, n_classes))

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(N, feature_dim)`` for judge-feature FID/KID and diversity."""
        check_input_shape("ImageJudge", x, self.input_shape[0], *self.min_input_size)
        return self.head_features(self.body(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(N, n_classes)``."""
        return self.classifier(self.features(x))


__all__ = ["ImageJudge"]
