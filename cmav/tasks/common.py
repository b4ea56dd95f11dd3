"""Small pieces shared by the LightningModules: option groups, augmentation, logger access.

Option groups are frozen dataclasses so that jsonargparse (``cmav fit``) validates them and
``--print_config`` shows every value. Hyper-parameters are stored as plain dicts (see
:func:`plain`) so that checkpoints load with ``torch.load(weights_only=True)``, which is what
Lightning does by default under torch >= 2.6.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmav.metrics.classification import NO_PREDICTION, _argmax_or_none

T = TypeVar("T")
E = TypeVar("E", bound=nn.Module)


@dataclass(frozen=True)
class AdamConfig:
    """Adam settings. Defaults are the paper's (lr 2e-4, beta1 0.5), for both G and D."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.0

    def build(self, params) -> torch.optim.Adam:
        return torch.optim.Adam(params, lr=self.lr, betas=tuple(self.betas), weight_decay=self.weight_decay)


ENCODER_ARCHS = ("conv", "stats")
"""``conv``: the paper's conv stack (:class:`cmav.models.ConvEncoder`); ``stats``: statistics pooling
over time and an MLP (:class:`cmav.models.StatsPoolEncoder`, for the harmonic-profile front end)."""
STATS_ONLY = ("hidden_dim", "feature_noise", "frame_width")
CONV_ONLY = ("n_blocks", "base_channels", "max_channels", "global_pool")


@dataclass(frozen=True)
class EncoderConfig:
    """:class:`cmav.models.AudioEncoder` / :class:`cmav.models.ImageEncoder` options (input shape and
    class count come from the data), or with ``arch: stats`` those of
    :class:`cmav.models.StatsPoolEncoder` (``hidden_dim``, ``feature_noise``, ``frame_width``; the
    conv options ``n_blocks``, ``base_channels``, ``max_channels`` and ``global_pool`` do not apply
    to it).

    Defaults mirror the models' own (a test keeps them in step): 128-d feature as in the paper.
    """

    n_blocks: int = 4
    base_channels: int = 32
    max_channels: int = 512
    feature_dim: int = 128
    dropout: float = 0.3
    activation: str = "leaky_relu"
    negative_slope: float = 0.2
    input_norm: bool = True
    global_pool: str = "avg"
    arch: str = "conv"
    hidden_dim: int = 256
    feature_noise: float = 0.1
    frame_width: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ENCODER_ARCHS:
            raise ValueError(f"encoder arch must be one of {ENCODER_ARCHS}, got {self.arch!r}")

    def build(self, cls: type[E], input_shape: Sequence[int], n_classes: int) -> E:
        """An encoder of class ``cls`` (:class:`AudioEncoder` or :class:`ImageEncoder`) with these
        options; with ``arch: stats`` a :class:`StatsPoolEncoder` instead."""
        options = dataclasses.asdict(self)
        arch = options.pop("arch")
        if arch == "stats":
            from cmav.models.encoders import StatsPoolEncoder

            kwargs = {k: v for k, v in options.items() if k not in CONV_ONLY}
            return StatsPoolEncoder(input_shape=tuple(input_shape), n_classes=n_classes, **kwargs)  # type: ignore[return-value]
        kwargs = {k: v for k, v in options.items() if k not in STATS_ONLY}
        return cls(input_shape=tuple(input_shape), n_classes=n_classes, **kwargs)


# The two encoders share one design (cmav.models.encoders.ConvEncoder), so one option set.
AudioEncoderConfig = EncoderConfig
ImageEncoderConfig = EncoderConfig


@dataclass(frozen=True)
class ImageJudgeConfig:
    """:class:`cmav.models.ImageJudge` options (image size and class count come from the data)."""

    n_blocks: int = 5
    base_channels: int = 32
    max_channels: int = 256
    feature_dim: int = 256
    dropout: float = 0.5
    block_dropout: float = 0.1
    activation: str = "leaky_relu"
    negative_slope: float = 0.2


@dataclass(frozen=True)
class ImageAugmentConfig:
    """Differentiable image augmentation (kornia), off by default.

    ``translate``: maximum shift as a fraction of the side (reflection padding); ``hflip``:
    random horizontal flips (changes which hand holds the bow, so off unless wanted);
    ``colour``: brightness/contrast/saturation jitter strength (0 = none); ``colour_scramble``:
    a random permutation of the RGB channels per frame, a quarter of the frames grey (after the
    other ops; each stand-in performance has its own background and clothing colours, a shortcut
    to "which player" that does not carry over to unseen players, while shapes survive it);
    ``scale``: random zoom in ``[1 - scale, 1 + scale]`` and ``degrees``: random rotation in
    ``[-degrees, degrees]`` (both with the shift, one affine warp; players sit at other distances
    and angles to the camera); ``erase``: probability of erasing one random rectangle (2-15 % of
    the frame) per frame, so that no single cue (a bell, a hand) decides alone.
    ``keep_instrument_colour``: the colour ops (jitter, scramble) change only the pixels outside
    the instrument, given its mask (cmav's stand-in writes one per frame): the player's clothing
    and background colours are the shortcut, while an instrument's colour is part of what it is
    (violin vs viola, oboe vs clarinet, flute vs trumpet differ mostly in it at 64 x 64).
    ``instrument_paste``: probability that a frame's instrument (its mask grown by one pixel) is
    pasted onto another frame of the batch, whose own instrument is first painted out with the
    colour around it (before the other ops; copy-paste augmentation). With five players per
    class, the player, pose and room identify the class in the train split; on pasted frames
    they point to another class, so the instrument's own pixels must decide. Needs the masks,
    like ``keep_instrument_colour``.
    """

    enabled: bool = False
    translate: float = 0.125
    hflip: bool = False
    colour: float = 0.0
    colour_scramble: bool = False
    scale: float = 0.0
    degrees: float = 0.0
    erase: float = 0.0
    keep_instrument_colour: bool = False
    instrument_paste: float = 0.0

    def mask_options(self) -> list[str]:
        """The options switched on (with ``enabled``) that need the instrument masks."""
        wanted = {"keep_instrument_colour": self.keep_instrument_colour, "instrument_paste": self.instrument_paste > 0}
        return [name for name, on in wanted.items() if on] if self.enabled else []


def coerce(cls: type[T], value: Any) -> T:
    """``value`` as a ``cls`` instance: None -> defaults, dict -> fields, instance -> itself.

    Dicts come back from checkpoints' hyper-parameters and from LightningCLI's config dump.
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**value)
    raise TypeError(f"expected {cls.__name__}, dict or None, got {type(value).__name__}")


def plain(value: Any) -> Any:
    """Dataclasses -> dicts and tuples -> lists, recursively (YAML/TensorBoard/weights_only friendly)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


class ImageAugment(nn.Module):
    """Random translation / flip / colour jitter of images in [-1, 1], differentiable (kornia).

    Used as DiffAugment for the discriminator (applied to real and fake inputs alike, fresh
    random parameters per sample and call) and as light training augmentation for judges.
    """

    def __init__(self, config: ImageAugmentConfig, takes_masks: bool = False, option: str = "augment") -> None:
        """``takes_masks``: the caller passes instrument masks to :meth:`forward` (the image
        classifiers do); ``keep_instrument_colour`` is refused for any other caller. ``option``:
        the caller's name for ``config`` in error messages (``'diff_augment'`` in the GANs)."""
        super().__init__()
        import kornia.augmentation as K

        self.config = config
        if not takes_masks and (needing := config.mask_options()):
            raise ValueError(f"{option}.{needing[0]} needs instrument masks, which only the image classifiers "
                             "(ClassifierTask, modality image) load; turn it off here")  # fmt: skip
        if not 0.0 <= config.instrument_paste <= 1.0:
            raise ValueError(f"{option}.instrument_paste is a probability in [0, 1], got {config.instrument_paste}")
        if not 0.0 <= config.scale < 1.0:
            raise ValueError(f"{option}.scale must be in [0, 1), got {config.scale}")
        if not 0.0 <= config.erase <= 1.0:
            raise ValueError(f"{option}.erase is a probability in [0, 1], got {config.erase}")
        # Below 0 an op used to switch off silently; above, kornia failed without naming the option.
        # translate is a fraction of the side and colour kornia's brightness spread (factors in
        # [1 - colour, 1 + colour] within its [0, 2]); beyond 180 degrees a rotation range repeats.
        for name, high in (("translate", 1.0), ("colour", 1.0), ("degrees", 180.0)):
            if not 0.0 <= getattr(config, name) <= high:
                raise ValueError(f"{option}.{name} must be in [0, {high:g}], got {getattr(config, name)}")
        geometric: list[nn.Module] = []
        if config.translate > 0 or config.scale > 0 or config.degrees > 0:
            t, s = float(config.translate), float(config.scale)
            geometric.append(
                K.RandomAffine(
                    degrees=float(config.degrees),
                    translate=(t, t) if t > 0 else None,
                    scale=(1.0 - s, 1.0 + s) if s > 0 else None,
                    padding_mode="reflection",
                    p=1.0,
                )
            )
        if config.hflip:
            geometric.append(K.RandomHorizontalFlip(p=0.5))
        self.geometric = nn.Sequential(*geometric)
        c = float(config.colour)
        self.colour = K.ColorJiggle(brightness=c, contrast=c, saturation=c, p=1.0) if c > 0 else nn.Identity()
        erase = float(config.erase)
        self.erase = (K.RandomErasing(scale=(0.02, 0.15), ratio=(0.3, 3.3), value=0.5, p=erase)
                      if erase > 0 else nn.Identity())  # fmt: skip

    @property
    def active(self) -> bool:
        c = self.config
        return c.enabled and (len(self.geometric) > 0 or c.colour > 0 or c.erase > 0 or c.colour_scramble
                              or c.instrument_paste > 0)  # fmt: skip

    @property
    def mask_options(self) -> list[str]:
        """The options in use that need the instrument masks (``keep_instrument_colour``,
        ``instrument_paste``)."""
        return self.config.mask_options() if self.active else []

    @property
    def needs_mask(self) -> bool:
        """Whether :meth:`forward` needs the instrument masks."""
        return bool(self.mask_options)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Augmented ``(N, 3, H, W)`` images in [-1, 1]; ``mask`` ``(N, 1, H, W)`` in [0, 1] marks the
        instrument's pixels (needed, and only used, with :attr:`mask_options`)."""
        if not self.active:
            return x
        if self.needs_mask and mask is None:
            raise ValueError(f"augment.{' and augment.'.join(self.mask_options)}: forward() was given no "
                             "instrument masks")  # fmt: skip
        if self.config.instrument_paste > 0:
            x = paste_instruments(x, mask, self.config.instrument_paste)
        if not self.config.keep_instrument_colour:
            mask = None
        x = (x + 1.0) * 0.5  # kornia's colour ops expect [0, 1]
        if mask is not None:  # one warp for frame and mask: the same random parameters
            warped = self.geometric(torch.cat([x, mask.to(x)], 1))
            x, mask = warped[:, :3], warped[:, 3:].clamp(0.0, 1.0)
            x = mask * x + (1.0 - mask) * self.colour(x)
        else:
            x = self.colour(self.geometric(x))
        x = self.erase(x).clamp(0.0, 1.0) * 2.0 - 1.0
        if self.config.colour_scramble:
            scrambled = scramble_colours(x)
            x = scrambled if mask is None else mask * x + (1.0 - mask) * scrambled
        return x


def paint_out_instruments(image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(painted, grown)``: ``(N, 3, H, W)`` frames with their instrument (``mask`` ``(N, 1, H, W)``
    in [0, 1], grown by one pixel to take its anti-aliased edge) filled with the mean colour of a
    two-pixel ring around it, and the grown mask ``(N, 1, H, W)`` in {0, 1}. A frame whose mask is
    empty comes back unchanged."""
    grown = F.max_pool2d((mask > 0.5).to(image.dtype), 3, stride=1, padding=1)
    ring = F.max_pool2d(grown, 5, stride=1, padding=2) - grown
    around = (image * ring).sum((2, 3), keepdim=True) / ring.sum((2, 3), keepdim=True).clamp(min=1.0)
    return grown * around + (1.0 - grown) * image, grown


def paste_instruments(image: Tensor, mask: Tensor, p: float) -> Tensor:
    """``(N, 3, H, W)`` frames where, with probability ``p`` each, the frame's instrument (``mask``
    ``(N, 1, H, W)`` in [0, 1], grown by one pixel to take its anti-aliased edge) is pasted onto
    another frame of the batch, whose own instrument is painted out with the mean colour of a
    two-pixel ring around it. Frames not chosen, and batches of one, are returned unchanged."""
    n = image.shape[0]
    if n < 2 or p <= 0:
        return image
    painted_out, grown = paint_out_instruments(image, mask)
    # each frame gets another frame as its host: a random non-zero shift of the batch order
    host = (torch.arange(n, device=image.device) + torch.randint(1, n, (n,), device=image.device)) % n
    pasted = grown * image + (1.0 - grown) * painted_out[host]
    chosen = (torch.rand(n, device=image.device) < p).view(n, 1, 1, 1)
    return torch.where(chosen, pasted, image)


def scramble_colours(image: Tensor, grey_fraction: float = 0.25) -> Tensor:
    """Per-frame random RGB channel permutation of ``(N, 3, H, W)``; ``grey_fraction`` of the
    frames (on average) replaced by their channel mean."""
    n = image.shape[0]
    perm = torch.argsort(torch.rand(n, 3, device=image.device), dim=1)
    out = torch.gather(image, 1, perm.view(n, 3, 1, 1).expand_as(image))
    grey = torch.rand(n, device=image.device) < grey_fraction
    return torch.where(grey.view(n, 1, 1, 1), out.mean(1, keepdim=True).expand_as(out), out)


def tensorboard_writer(module) -> Any | None:
    """The ``SummaryWriter`` of a TensorBoard logger attached to ``module``'s trainer, else None.

    Every TensorBoard-only call (images, audio) goes through this, so CSV/W&B/no logger work.
    """
    try:
        loggers = module.loggers
    except RuntimeError:  # not attached to a trainer
        return None
    from lightning.pytorch.loggers import TensorBoardLogger

    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


LrSchedule = Literal["constant", "cosine"]


def check_lr_schedule(schedule: str) -> None:
    """A clear ValueError for anything but ``'constant'`` or ``'cosine'`` (at construction, not at fit)."""
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")


def with_lr_schedule(optimizer: torch.optim.Optimizer, schedule: LrSchedule, trainer: Any | None) -> Any:
    """What ``configure_optimizers`` returns for ``schedule``: the bare optimizer (``'constant'``),
    or with a per-step cosine decay to 0 over the trainer's ``estimated_stepping_batches``
    (``'cosine'``, CLIP's; the weights settle at the end, so BatchNorm's running statistics, which
    evaluation uses, catch up with them)."""
    check_lr_schedule(schedule)
    if schedule == "constant":
        return optimizer
    total = trainer.estimated_stepping_batches if trainer is not None else float("inf")
    if not math.isfinite(total) or total <= 0:
        warnings.warn("lr_schedule='cosine' needs a trainer with max_epochs or max_steps; using a constant rate",
                      stacklevel=3)  # fmt: skip
        return optimizer
    cosine = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def refuse_weight_averaging(module, averaged: str) -> None:
    """Refuse Lightning's weight-averaging callbacks (``WeightAveraging`` and its subclasses, and the
    older ``StochasticWeightAveraging``) in a task that keeps its own EMA (of its ``averaged``
    network, which samples and evaluation use): the callback would average every other part too,
    and its checkpoint would hold those averages in place of the trained weights."""
    cb = weight_averaging_callback(module)
    if cb is not None:
        raise ValueError(
            f"{type(module).__name__} keeps its own EMA of the {averaged} (model.init_args.ema_decay), which "
            f"samples and evaluation use: remove the {type(cb).__name__} callback"
        )


def weight_averaging_callback(module) -> object | None:
    """The first of Lightning's weight-averaging callbacks (``WeightAveraging`` and its subclasses, and
    the older ``StochasticWeightAveraging``) on ``module``'s trainer, or None."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging, WeightAveraging

    return next((cb for cb in module.trainer.callbacks if isinstance(cb, (WeightAveraging, StochasticWeightAveraging))),
                None)  # fmt: skip


def refuse_stochastic_weight_averaging(module) -> None:
    """Refuse Lightning's ``StochasticWeightAveraging`` in a task that builds its network in
    ``configure_model``. That callback copies the module in its own set-up, before the network
    exists, so it would average nothing and leave the last weights in the checkpoint as if they were
    the average. ``WeightAveraging`` (an equal average by default) and ``EMAWeightAveraging`` build
    the network before they copy it."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    for cb in module.trainer.callbacks:
        if isinstance(cb, StochasticWeightAveraging):
            raise ValueError(
                f"{type(module).__name__} builds its network from the data (configure_model), after "
                "StochasticWeightAveraging has copied the module: that callback would average nothing. Use "
                "lightning.pytorch.callbacks.WeightAveraging (an equal average, as SWA) or EMAWeightAveraging"
            )


def check_encoder_input(encoder_shape: Sequence[int], trained_on: Any, dm, source: str | None) -> None:
    """Refuse data a pretrained audio encoder cannot read: features of another shape, or of the
    same shape from another front-end setting (``trained_on``: the front-end config stored with the
    sound classifier, ``None`` when unknown). ``source`` names the classifier's checkpoint."""
    from cmav.features import front_end_differences

    got = tuple(dm.train_full.tensors.audio.shape[1:])
    where = f"{source}: " if source else ""
    if got != tuple(encoder_shape):
        raise ValueError(f"{where}the audio encoder takes features {tuple(encoder_shape)}, the data's are {got}: "
                         "train the sound classifier on the same front end")  # fmt: skip
    if trained_on is None:
        return
    diffs = front_end_differences(trained_on, dm.features)
    if diffs:
        raise ValueError(
            f"{where}the sound classifier was trained on another front end than the data's "
            f"({'; '.join(diffs)}, classifier -> data): its features would be read wrongly. Set data.features "
            "to the classifier's (e.g. --data.features.NAME VALUE) or train the classifier on this front end"
        )


def batch_accuracy(logits: Tensor, targets: Tensor, before_masking: Tensor | None = None) -> Tensor:
    """Share of rows whose argmax is the target (a 0-d tensor, for ``self.log``), NaN when a row of
    logits is not all finite: an all-NaN row's argmax is class 0, which would score a diverged model
    as a chance-looking accuracy, and Lightning's ModelCheckpoint ranks NaN worst.
    ``before_masking``: the logits before entries were set to -inf on purpose (ignored negatives),
    checked instead of ``logits``."""
    checked = logits if before_masking is None else before_masking
    diverged = (_argmax_or_none(checked) == NO_PREDICTION).any()
    acc = (logits.argmax(1) == targets).float().mean()
    return torch.where(diverged, torch.full_like(acc, float("nan")), acc)


def datamodule_of(module):
    """The trainer's datamodule, or None (trained from bare dataloaders, or no trainer)."""
    trainer = getattr(module, "_trainer", None)
    return getattr(trainer, "datamodule", None) if trainer is not None else None


__all__ = [
    "AdamConfig",
    "AudioEncoderConfig",
    "EncoderConfig",
    "ImageAugment",
    "ImageAugmentConfig",
    "ImageEncoderConfig",
    "ImageJudgeConfig",
    "LrSchedule",
    "batch_accuracy",
    "check_encoder_input",
    "check_lr_schedule",
    "coerce",
    "datamodule_of",
    "paint_out_instruments",
    "paste_instruments",
    "plain",
    "refuse_stochastic_weight_averaging",
    "refuse_weight_averaging",
    "scramble_colours",
    "tensorboard_writer",
    "weight_averaging_callback",
    "with_lr_schedule",
]
