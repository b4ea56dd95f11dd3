"""Convolutional classifiers/encoders for log-mel spectrograms and images.

Both modalities use the same design (:class:`ConvEncoder`): an input BatchNorm, ``n_blocks`` of
conv3x3 -> BatchNorm -> activation -> 2x2 max-pool, global pooling, a Linear to the paper's 128-d
feature and a Linear classification head. Only the defaults differ (:class:`AudioEncoder`,
:class:`ImageEncoder`). Every spatial size is derived from ``input_shape`` so any front-end
configuration (128x44, 64x44, 128x87 LMS, 513x44 STFT, 20x44 MFCC, 64/128 px images, (1, 1, L) raw
waveform with a strided 1-D stem) builds. :class:`StatsPoolEncoder` (``arch: stats`` in the option
group) keeps the interface without convolutions, for rows that are already per-frame features.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

MIN_BLOCKS = 2
MAX_BLOCKS = 6
WAVEFORM_STEM = (80, 4, 4)
"""(kernel, stride, max-pool) of the 1-D stem that inputs of height 1 (raw waveforms) get first."""
WAVEFORM_STEM_MIN_LENGTH = 256
"""Inputs of height 1 at least this long are waveforms and get the stem."""


class EncoderOutput(NamedTuple):
    """Everything one encoder pass produces.

    ``blocks``: every conv block's output map (after pooling), shallow to deep;
    ``feature``: the ``(N, feature_dim)`` embedding; ``logits``: ``(N, n_classes)``.
    """

    blocks: list[Tensor]
    feature: Tensor
    logits: Tensor


def make_activation(name: str, negative_slope: float = 0.2) -> nn.Module:
    """``'leaky_relu'`` (with ``negative_slope``) or ``'relu'``."""
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope, inplace=True)
    if name == "relu":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {name!r}; expected 'leaky_relu' or 'relu'")


def pool_kernel(height: int, width: int) -> tuple[int, int]:
    """2x2 pooling kernel that only halves the axes still longer than 1.

    Lets short inputs (64x44 LMS, (1, 1, L) waveforms) go through deep stacks: an axis that has
    shrunk to 1 is left alone instead of collapsing to 0.
    """
    return (2 if height > 1 else 1, 2 if width > 1 else 1)


def conv_kernel(height: int, width: int) -> tuple[int, int]:
    """3x3, except along an axis of length 1 (waveforms, collapsed maps), where taps would only see padding."""
    return (3 if height > 1 else 1, 3 if width > 1 else 1)


def check_shape(shape: Sequence[int], name: str) -> tuple[int, int, int]:
    """Validate a ``(C, H, W)`` shape and return it as a tuple of ints."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise ValueError(f"{name} must be (C, H, W) with positive sizes, got {shape}")
    return shape  # type: ignore[return-value]


def min_pooled_size(n_pools: int) -> int:
    """Shortest axis that ``n_pools`` 2x max-pools in a row leave at least 1 long."""
    return 2**n_pools


def check_input_shape(owner: str, x: Tensor, channels: int, min_h: int, min_w: int) -> None:
    """``ValueError`` naming both shapes unless ``x`` is ``(N, channels, H >= min_h, W >= min_w)`` (plain
    shape comparisons: no cost worth the name on a forward pass)."""
    if x.dim() != 4 or x.shape[1] != channels or x.shape[2] < min_h or x.shape[3] < min_w:
        raise ValueError(f"{owner}: expected input (N, {channels}, H >= {min_h}, W >= {min_w}), got {tuple(x.shape)}")


def check_dropout(p: float) -> None:
    """Raise ``ValueError`` unless ``p`` is a dropout probability in [0, 1)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")


class ConvEncoder(nn.Module):
    """Conv classifier whose 128-d penultimate feature conditions the generators.

    Args:
        input_shape: ``(C, H, W)`` of one input sample.
        n_blocks: number of conv blocks, ``2 <= n_blocks <= 6``.
        base_channels: channels of the first block; doubled every block.
        max_channels: cap on the per-block channel count (keeps deep stacks affordable).
        feature_dim: size of the embedding (128 in the paper).
        n_classes: size of the classification head (13 Sub-URMP instruments).
        dropout: dropout before the feature Linear and before the classification head.
        activation: ``'leaky_relu'`` or ``'relu'``.
        negative_slope: slope of the LeakyReLU.
        input_norm: BatchNorm over the input channels; LMS dB values are far from zero-mean,
            unit-variance, and this avoids depending on a precomputed dataset statistic.
        global_pool: ``'avg'`` or ``'max'`` pooling of the last block map.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_blocks: int = 4,
        base_channels: int = 32,
        max_channels: int = 512,
        feature_dim: int = 128,
        n_classes: int = 13,
        dropout: float = 0.3,
        activation: str = "leaky_relu",
        negative_slope: float = 0.2,
        input_norm: bool = True,
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        c, h, w = check_shape(input_shape, "input_shape")
        if not MIN_BLOCKS <= n_blocks <= MAX_BLOCKS:
            raise ValueError(f"n_blocks must be in [{MIN_BLOCKS}, {MAX_BLOCKS}], got {n_blocks}")
        if global_pool not in ("avg", "max"):
            raise ValueError(f"global_pool must be 'avg' or 'max', got {global_pool!r}")
        check_dropout(dropout)
        self.input_shape = (c, h, w)
        self.n_blocks = n_blocks
        self.feature_dim = feature_dim
        self.n_classes = n_classes

        # affine=False: the first conv can absorb any scale/shift; this is pure standardisation.
        self.input_norm = nn.BatchNorm2d(c, affine=False) if input_norm else nn.Identity()

        in_ch = c
        self.stem: nn.Module = nn.Identity()
        stem = h == 1 and w >= WAVEFORM_STEM_MIN_LENGTH
        if stem:
            # A raw waveform: 3-tap convs would need dozens of blocks to see one pitch period, so a
            # strided 1-D stem first cuts the sequence 16x (M5 of Dai et al., 2017).
            k, stride, pool = WAVEFORM_STEM
            self.stem = nn.Sequential(
                nn.Conv2d(c, base_channels, (1, k), stride=(1, stride), padding=(0, k // 2 - 1), bias=False),
                nn.BatchNorm2d(base_channels),
                make_activation(activation, negative_slope),
                nn.MaxPool2d((1, pool)),
            )
            w = ((w + 2 * (k // 2 - 1) - k) // stride + 1) // pool
            in_ch = base_channels

        blocks = []
        shapes = []
        pools_h = pools_w = 0
        for i in range(n_blocks):
            out_ch = min(base_channels * 2**i, max_channels)
            kh, kw = pool_kernel(h, w)
            pools_h, pools_w = pools_h + (kh == 2), pools_w + (kw == 2)
            blocks.append(
                nn.Sequential(
                    # bias is redundant in front of BatchNorm; an axis of length 1 gets a 1-tap kernel
                    nn.Conv2d(in_ch, out_ch, conv_kernel(h, w), padding=tuple(k // 2 for k in conv_kernel(h, w)),
                              bias=False),
                    nn.BatchNorm2d(out_ch),
                    make_activation(activation, negative_slope),
                    nn.MaxPool2d((kh, kw)) if (kh, kw) != (1, 1) else nn.Identity(),
                )
            )
            h, w = h // kh, w // kw
            shapes.append((out_ch, h, w))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.block_shapes: list[tuple[int, int, int]] = shapes
        """``(C, H, W)`` of every block output, computed from ``input_shape``."""
        min_w = min_pooled_size(pools_w)
        if stem:  # the stem's conv, then its max-pool, must leave min_w
            k, stride, pool = WAVEFORM_STEM
            min_w = stride * (pool * min_w - 1) + k - 2 * (k // 2 - 1)
        self.min_input_size: tuple[int, int] = (min_pooled_size(pools_h), min_w)
        """Smallest ``(H, W)`` the pooling stack built for ``input_shape`` takes (the global pooling
        takes any larger size)."""

        self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.fc_feature = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(in_ch, feature_dim),
            make_activation(activation, negative_slope),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, n_classes))

    def _check_input(self, x: Tensor) -> None:
        check_input_shape(type(self).__name__, x, self.input_shape[0], *self.min_input_size)

    def _blocks(self, x: Tensor) -> list[Tensor]:
        self._check_input(x)
        x = self.stem(self.input_norm(x))
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps

    def forward_features(self, x: Tensor) -> EncoderOutput:
        """All block maps, the embedding and the logits in one pass."""
        maps = self._blocks(x)
        feature = self.fc_feature(self.global_pool(maps[-1]))
        return EncoderOutput(blocks=maps, feature=feature, logits=self.classifier(feature))

    def feature_map(self, x: Tensor) -> Tensor:
        """Last block's spatial map, ``(N, *block_shapes[-1])``."""
        return self._blocks(x)[-1]

    def embed(self, x: Tensor) -> Tensor:
        """The ``(N, feature_dim)`` embedding (the generators' condition)."""
        return self.fc_feature(self.global_pool(self.feature_map(x)))

    def features(self, x: Tensor) -> Tensor:
        """The embedding under the name judge-feature metrics look for (a classifier used as a judge)."""
        return self.embed(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(N, n_classes)``."""
        return self.classifier(self.embed(x))


class AudioEncoder(ConvEncoder):
    """:class:`ConvEncoder` with log-mel-spectrogram defaults: input ``(1, 128, 44)``."""

    # Arguments spelled out (not **kwargs) so config/CLI tools see the full signature.
    def __init__(
        self,
        input_shape: Sequence[int] = (1, 128, 44),
        n_blocks: int = 4,
        base_channels: int = 32,
        max_channels: int = 512,
        feature_dim: int = 128,
        n_classes: int = 13,
        dropout: float = 0.3,
        activation: str = "leaky_relu",
        negative_slope: float = 0.2,
        input_norm: bool = True,
        global_pool: str = "avg",
    ) -> None:
        super().__init__(
            input_shape,
            n_blocks=n_blocks,
            base_channels=base_channels,
            max_channels=max_channels,
            feature_dim=feature_dim,
            n_classes=n_classes,
            dropout=dropout,
            activation=activation,
            negative_slope=negative_slope,
            input_norm=input_norm,
            global_pool=global_pool,
        )


class ImageEncoder(ConvEncoder):
    """:class:`ConvEncoder` with image defaults: input ``(3, 64, 64)`` RGB in [-1, 1]."""

    # Arguments spelled out (not **kwargs) so config/CLI tools see the full signature.
    def __init__(
        self,
        input_shape: Sequence[int] = (3, 64, 64),
        n_blocks: int = 4,
        base_channels: int = 32,
        max_channels: int = 512,
        feature_dim: int = 128,
        n_classes: int = 13,
        dropout: float = 0.3,
        activation: str = "leaky_relu",
        negative_slope: float = 0.2,
        input_norm: bool = True,
        global_pool: str = "avg",
    ) -> None:
        super().__init__(
            input_shape,
            n_blocks=n_blocks,
            base_channels=base_channels,
            max_channels=max_channels,
            feature_dim=feature_dim,
            n_classes=n_classes,
            dropout=dropout,
            activation=activation,
            negative_slope=negative_slope,
            input_norm=input_norm,
            global_pool=global_pool,
        )


class RowNorm(nn.Module):
    """Standardise every ``(channel, row)`` of ``(N, C, H, W)`` maps over the batch and ``W`` (BatchNorm, no affine)."""

    def __init__(self, channels: int, rows: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(channels * rows, affine=False)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        return self.norm(x.reshape(n, c * h, w)).reshape(n, c, h, w)


class StatisticsPooling(nn.Module):
    """``(N, C, H, W)`` -> ``(N, 2 * C * H)``: the mean and the standard deviation of every row over ``W``
    (time), as x-vectors pool frames (Snyder et al. 2018)."""

    def forward(self, x: Tensor) -> Tensor:
        rows = x.flatten(1, 2)
        return torch.cat([rows.mean(-1), rows.std(-1, unbiased=False)], 1)


class FeatureNoise(nn.Module):
    """Gaussian noise of sd ``sd`` added in training only (on standardised features)."""

    def __init__(self, sd: float) -> None:
        super().__init__()
        if sd < 0:
            raise ValueError(f"feature_noise must be >= 0, got {sd}")
        self.sd = float(sd)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.sd * torch.randn_like(x) if self.training and self.sd > 0 else x


class FrameMLP(nn.Module):
    """``(N, C, H, W)`` -> ``(N, 1, width, W)``: one Linear + activation applied to every frame's
    ``C * H`` rows alike, so that the statistics pooled next can hold how the rows vary together
    within a frame (a harmonic profile at its pitch), not only each row's spread over the clip."""

    def __init__(self, rows: int, width: int, activation: str, negative_slope: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(rows, width, 1), make_activation(activation, negative_slope))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1, 2)).unsqueeze(1)


class StatsPoolEncoder(ConvEncoder):
    """An encoder with no convolutions: statistics pooling of the input rows over time, then an MLP
    to the ``feature_dim`` feature and the class head.

    For front ends whose rows are already features of one frame (the harmonic profile,
    :mod:`cmav.features.harmonic`): pooling first means the model never sees the temporal detail of
    a recording, only how each row is distributed over the clip, which is what carries over to
    another sample set of the same instruments (issue #8). It keeps :class:`ConvEncoder`'s interface:
    ``blocks`` holds one block, the identity after the input standardisation (its map ``(N, C, H,
    W)`` is what dense retrieval and the audio token read), ``fc_feature`` is pooling + MLP.

    Args: as :class:`ConvEncoder` where they apply, plus ``hidden_dim`` (the MLP's hidden width),
    ``feature_noise`` (sd of Gaussian noise on the standardised statistics in training) and
    ``frame_width`` (0: pool the input rows themselves; > 0: pool the outputs of a
    :class:`FrameMLP` of that width instead).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 29, 22),
        feature_dim: int = 128,
        n_classes: int = 13,
        dropout: float = 0.3,
        activation: str = "leaky_relu",
        negative_slope: float = 0.2,
        input_norm: bool = True,
        hidden_dim: int = 256,
        feature_noise: float = 0.1,
        frame_width: int = 0,
    ) -> None:
        nn.Module.__init__(self)  # none of ConvEncoder's conv stack: only its methods
        c, h, w = check_shape(input_shape, "input_shape")
        check_dropout(dropout)
        if w < 2:
            raise ValueError(f"StatsPoolEncoder pools over time and needs at least 2 frames, got input_shape {input_shape}")
        self.input_shape = (c, h, w)
        self.n_blocks = 1
        self.feature_dim = feature_dim
        self.n_classes = n_classes
        self.input_norm = RowNorm(c, h) if input_norm else nn.Identity()
        self.stem = nn.Identity()
        self.blocks = nn.ModuleList([nn.Identity()])
        self.block_shapes = [(c, h, w)]
        self.min_input_size = (h, 2)  # exactly h rows (see _check_input)
        self.global_pool = nn.Identity()
        if frame_width < 0:
            raise ValueError(f"frame_width must be >= 0, got {frame_width}")
        # without frame_width the layers (and so the state-dict keys) are those of earlier checkpoints
        frames = [FrameMLP(c * h, frame_width, activation, negative_slope)] if frame_width else []
        n_stats = 2 * (frame_width or c * h)
        self.fc_feature = nn.Sequential(
            *frames,
            StatisticsPooling(),
            nn.BatchNorm1d(n_stats, affine=False),
            FeatureNoise(feature_noise),
            nn.Linear(n_stats, hidden_dim),
            make_activation(activation, negative_slope),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, feature_dim),
            make_activation(activation, negative_slope),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, n_classes))

    def _check_input(self, x: Tensor) -> None:
        c, h, _ = self.input_shape
        # the row standardisation and the layers after the pooling are built for h rows; the sd needs 2 frames
        if x.dim() != 4 or x.shape[1] != c or x.shape[2] != h or x.shape[3] < 2:
            raise ValueError(f"{type(self).__name__}: expected input (N, {c}, {h}, W >= 2), got {tuple(x.shape)}")
        if self.training and x.shape[0] < 2:
            # the batch norm over pooled statistics has one value per channel: torch would fail deep inside
            raise ValueError("StatsPoolEncoder trains on batches of 2 or more clips (it batch-normalises the "
                             f"pooled statistics), got {x.shape[0]}; evaluation takes any batch size")  # fmt: skip


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "AudioEncoder",
    "ConvEncoder",
    "EncoderOutput",
    "FeatureNoise",
    "FrameMLP",
    "ImageEncoder",
    "RowNorm",
    "StatisticsPooling",
    "StatsPoolEncoder",
    "check_input_shape",
    "count_parameters",
    "make_activation",
    "pool_kernel",
]
