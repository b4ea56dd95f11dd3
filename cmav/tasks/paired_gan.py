"""What sound-to-image (S2I) and image-to-sound (I2S) training share: a conditional GAN with a
pair-aware discriminator, or a pixel-loss autoencoder, from one modality to the other.

A :class:`PairedGANTask` encodes the *condition* (``condition_key`` of a batch: the LMS for S2I,
the frame for I2S) with a 4-block :class:`~cmav.models.ConvEncoder` into a 128-d feature, and a
:class:`~cmav.models.ConditionalGenerator` turns ``z`` (10-d) plus that feature into the *target*
(the frame for S2I, the LMS for I2S). Variants (``variant``):

* ``*_c`` (pair-aware, GAN-CLS style): the discriminator learns real = (real target, its
  condition); fake = (generated target, condition), (real target, the condition of another
  class), (a real target of the same class but another player/track, the condition). Each
  mismatch term can be switched off.
* ``*_n``: only real/fake pairs.
* ``ae``: encoder + generator trained with an L1/L2 loss to the paired target; no discriminator.

Step counting: manual optimisation with two optimisers (G and D); Lightning's ``global_step``
counts EVERY optimiser step, so it advances by 2 per batch for the GAN variants (1 for ``ae``) and
``trainer.max_steps`` is twice the number of GAN iterations. :attr:`PairedGANTask.iteration`
counts batches (it is saved in checkpoints); sample logging and the EMA ramp use it.

Subclasses own their constructor (its arguments are the hyper-parameters), call
:meth:`PairedGANTask._init_gan` and implement the hooks marked "subclass".
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmav.data.errors import DataError
from cmav.features.frontend import front_end_config
from cmav.models import (
    INFERENCE_CONDITIONS,
    ConditionalGenerator,
    ConditionBank,
    ConvEncoder,
    EncoderOutput,
    ExponentialMovingAverage,
    PairAwareDiscriminator,
)
from cmav.models.ema import ema_decay_at
from cmav.models.eval_mode import eval_mode
from cmav.tasks.classifier import _load_checkpoint, class_names_difference, front_end_difference, own_hyperparameters
from cmav.tasks.common import (
    AdamConfig,
    EncoderConfig,
    ImageAugment,
    ImageAugmentConfig,
    batch_accuracy,
    coerce,
    datamodule_of,
    plain,
    refuse_weight_averaging,
)
from cmav.tasks.pairs import HardNegativeMiner, NegativeSampler
from cmav.tasks.random_state import every_rank, restore_random_state, save_random_state, separate_rank_streams
from cmav.tasks.tensorboard import log_hyperparameters

EncoderMode = Literal["frozen", "finetune", "scratch"]


@dataclass(frozen=True)
class GeneratorConfig:
    """:class:`ConditionalGenerator` options; the paper's 10-d noise. The condition size is the
    encoder's feature size (128) and the output shape is the target's."""

    z_dim: int = 10
    cond_proj_dim: int = 128
    base_channels: int = 64
    max_channels: int = 512
    start_size: int = 4


@dataclass(frozen=True)
class DiscriminatorConfig:
    """:class:`PairAwareDiscriminator` options (DCGAN layout; spectral norm off as in the paper)."""

    cond_proj_dim: int = 128
    base_channels: int = 64
    max_channels: int = 512
    spectral_norm: bool = False
    final_size: int = 4
    projection: bool = False  # the projection-discriminator term (not in the paper)


@dataclass(frozen=True)
class LossWeights:
    """Loss weights.

    The discriminator loss is ``BCE(real pair -> 1) + sum_i w_i * BCE(negative_i -> 0) / sum_i w_i``
    over the active negatives (fake pair, wrong-class pair, wrong-player pair): with equal weights
    the negatives are averaged, as in GAN-CLS. ``pixel``: the AE's L1/L2 weight.
    ``encoder_class``: optional cross-entropy on the encoder's class logits when the encoder is
    trained (finetune/scratch), keeping its feature class-discriminative; 0 = off.
    ``mode_seeking``: the mode-seeking term of MSGAN (Mao et al. 2019) on G, which penalises two
    noise draws for the same condition giving the same output; 0 = off (the paper). It costs a
    second G forward per step.
    ``aux_class``: the AC-GAN term (Odena et al. 2017): D gets a class head on its pooled last map,
    trained with cross-entropy on the real samples' classes, and G is trained so that the head
    gives its sample the class of the condition it was drawn from. It asks G for the class's
    look directly, not only through the pair score; 0 = off (the paper).
    """

    fake: float = 1.0
    wrong_class: float = 1.0
    wrong_player: float = 1.0
    pixel: float = 1.0
    encoder_class: float = 0.0
    mode_seeking: float = 0.0
    aux_class: float = 0.0


@dataclass(frozen=True)
class HardNegativeConfig:
    """Class-level hard-negative mining for the wrong-class term (not in the paper; off by default).

    ``fraction``: share of the wrong-class draw that follows D's running score of each (frame
    class, audio class) mismatched pair, so the class pairs D still takes for matches (violin
    frames with viola audio, say) come up more often than 1 in 12; the rest stays uniform over
    the other classes' items; 0 = off (the paper's uniform draw). ``momentum``: weight of one
    batch in a pair's running score. See :class:`~cmav.tasks.pairs.HardNegativeMiner`.
    """

    fraction: float = 0.0
    momentum: float = 0.05


@dataclass(frozen=True)
class SampleConfig:
    """What the TensorBoard sample sheets show: ``per_class`` fixed noise vectors drawn from
    ``noise_seed``; ``log_audio`` adds sound: the fixed items' real clips (``inputs/audio``) and
    Griffin-Lim renderings of the spectrograms involved (``inputs/griffin_lim``, I2S's
    ``samples/audio``), all at one gain, so a quiet spectrogram sounds quiet."""

    per_class: int = 4
    noise_seed: int = 1234
    log_audio: bool = True
    griffin_lim_iters: int = 32


ConditionOn = Literal["feature", "logits", "probabilities"]

# Set while load_paired_gan rebuilds a checkpoint: it rebuilds every encoder as 'scratch' (its weights
# come from the state dict), so construction must not judge the rebuilt mode as a training choice.
_rebuilding_checkpoint: ContextVar[bool] = ContextVar("cmav_rebuilding_paired_gan", default=False)


def untrained_class_head_use(encoder_mode: str, encoder_class: float, inference_condition: str) -> str | None:
    """Why a run would pick classes with a class head that nothing trains to classify, or None.

    A scratch encoder's head starts random and only ``loss_weights.encoder_class`` trains it to tell
    the classes apart: without it ``class_mean`` picks every input's class by an untrained argmax
    (in practice one class mean for all inputs). Frozen and fine-tuned encoders come with the
    classifier's trained head. (``condition_on`` logits/probabilities stay allowed: G's loss trains
    them as a narrow condition, they just are not class scores then.)"""
    if encoder_mode != "scratch" or encoder_class > 0 or inference_condition != "class_mean":
        return None
    return ("encoder_mode='scratch' with loss_weights.encoder_class=0 gives the encoder's class head no class loss, "
            "so it never learns the classes, but inference_condition='class_mean' picks each input's class mean by "
            "its argmax: set loss_weights.encoder_class > 0 (trains the head with cross-entropy), or "
            "inference_condition 'own' or 'nearest', or start from a pretrained encoder (encoder_mode "
            "'frozen'/'finetune')")


def condition_dim(encoder: ConvEncoder, condition_on: str) -> int:
    """Width of the condition vector that ``condition_on`` takes from ``encoder``."""
    return encoder.feature_dim if condition_on == "feature" else encoder.n_classes


def condition_from(out: EncoderOutput, condition_on: str) -> Tensor:
    """The generator's condition from one encoder pass: the 128-d embedding (the paper), the class
    head's logits (a fixed linear projection of it onto the class-discriminative directions), or
    their softmax."""
    if condition_on == "feature":
        return out.feature
    if condition_on == "logits":
        return out.logits
    return out.logits.softmax(dim=1)


class ConditionalTranslator(nn.Module):
    """Condition encoder + conditional generator: ``(condition, z) -> target``.

    ``condition_on`` says which of the encoder's outputs conditions the generator
    (:func:`condition_from`).
    """

    def __init__(self, encoder: ConvEncoder, generator: ConditionalGenerator, condition_on: str = "feature") -> None:
        super().__init__()
        self.encoder = encoder
        self.generator = generator
        self.condition_on = condition_on

    def condition(self, x: Tensor) -> Tensor:
        """The generator's condition vector for a batch of inputs."""
        if self.condition_on == "feature":
            return self.encoder.embed(x)
        return condition_from(self.encoder.forward_features(x), self.condition_on)

    def forward(self, condition: Tensor, z: Tensor) -> Tensor:
        return self.generator(z, self.condition(condition))


def pair_discriminator_loss(logit_real: Tensor, negatives: list[tuple[float, Tensor]]) -> Tensor:
    """BCE(real pair -> 1) + the weighted mean of BCE(negative -> 0) over ``(weight, logits)``.

    With equal weights the negatives (fake, wrong-class, wrong-player pairs) are averaged, as in
    GAN-CLS. Shared by the tasks and the bare-loop benchmark so both train the same thing.
    """
    loss_real = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
    total_w = sum(w for w, _ in negatives)
    loss_neg = sum(w * F.binary_cross_entropy_with_logits(lg, torch.zeros_like(lg)) for w, lg in negatives)
    return loss_real + loss_neg / max(total_w, 1e-12)


def generator_adversarial_loss(logit_fake: Tensor) -> Tensor:
    """Non-saturating generator loss: BCE(D(G(z, c), c) -> 1)."""
    return F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))


def mode_seeking_loss(out_a: Tensor, out_b: Tensor, z_a: Tensor, z_b: Tensor, eps: float = 1e-5) -> Tensor:
    """MSGAN's mode-seeking term: ``1 / (mean|G(z_a) - G(z_b)| / mean|z_a - z_b| + eps)``, per pair
    of draws for the same condition and averaged. Minimising it pushes outputs apart in
    proportion to how far apart their noise vectors are."""
    out_dist = (out_a - out_b).abs().flatten(1).mean(1)
    z_dist = (z_a - z_b).abs().flatten(1).mean(1)
    return (1.0 / (out_dist / z_dist + eps)).mean()


def lightning_seed() -> int:
    """The seed Lightning's ``seed_everything`` last set in this process (it keeps it in the
    ``PL_GLOBAL_SEED`` environment variable, which DDP's spawned processes inherit); 0 when none was
    set, as ``seed_everything(None)`` itself takes."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class PairedGANTask(L.LightningModule):
    """Conditional GAN (pair-aware or not) or pixel-loss AE from a condition modality to a target one.

    Hyper-parameters every subclass has: ``variant``, ``encoder_mode``, ``image_size``,
    ``wrong_class_term``, ``wrong_player_term``, ``generator``, ``discriminator``, ``encoder``,
    ``n_classes``, ``g_optimizer``, ``d_optimizer``, ``loss_weights``, ``pixel_loss``,
    ``ema_decay``, ``diff_augment``, ``sample_every_n_steps``, ``samples``, ``seed``, ``channels_last``, ``cache_frozen_features``,
    ``condition_noise``, ``condition_on`` (see :class:`~cmav.tasks.S2ITask` for what each means).
    """

    condition_key: ClassVar[str]
    """Batch key of the generator's condition (``'audio'`` or ``'image'``)."""
    target_key: ClassVar[str]
    """Batch key of what is generated."""
    name: ClassVar[str]
    """Short name in messages (``'S2I'``)."""
    checkpoint_key: ClassVar[str]
    """Key of this task's extra state in a checkpoint (``'cmav_s2i'``)."""
    variant_terms: ClassVar[dict[str, tuple[bool, bool]]]
    """(wrong_class_term, wrong_player_term) per variant when not given explicitly."""
    encoder_ckpt_arg: ClassVar[str]
    """Name of the constructor argument holding the pretrained encoder's checkpoint."""
    encoder_source: ClassVar[str]
    """What that checkpoint holds, in messages (``'sound classifier'``)."""
    out_activation: ClassVar[str] = "tanh"

    # ------------------------------------------------------------------ construction

    def _init_gan(self, encoder_ckpt: str | None) -> None:
        """Validate the shared hyper-parameters, set the option groups, and build the networks
        now when every shape is known (else at :meth:`setup`, from the data)."""
        h = self.hparams
        if h.variant not in self.variant_terms:
            raise ValueError(f"variant must be one of {sorted(self.variant_terms)}, got {h.variant!r}")
        if h.encoder_mode not in ("frozen", "finetune", "scratch"):
            raise ValueError(f"encoder_mode must be 'frozen', 'finetune' or 'scratch', got {h.encoder_mode!r}")
        if h.pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {h.pixel_loss!r}")
        self.condition_noise = float(h.get("condition_noise", 0.0))  # absent from older checkpoints
        self.condition_on: str = h.get("condition_on", "feature")
        if self.condition_on not in get_args(ConditionOn):
            raise ValueError(f"condition_on must be 'feature', 'logits' or 'probabilities', got {self.condition_on!r}")
        # absent from older checkpoints
        self.set_inference_condition(h.get("inference_condition", "own"), h.get("inference_neighbours", 1))
        if self.condition_noise < 0:
            raise ValueError(f"condition_noise must be >= 0, got {self.condition_noise}")
        if h.encoder_mode != "scratch" and not encoder_ckpt:
            raise ValueError(self._missing_encoder_message())
        self.automatic_optimization = False
        wc_default, wp_default = self.variant_terms[h.variant]
        self.wrong_class_term = wc_default if h.wrong_class_term is None else bool(h.wrong_class_term)
        self.wrong_player_term = wp_default if h.wrong_player_term is None else bool(h.wrong_player_term)
        self.is_gan = h.variant != "ae"
        if not self.is_gan and (self.wrong_class_term or self.wrong_player_term):
            raise ValueError("variant 'ae' has no discriminator: wrong_class_term/wrong_player_term must be off")
        if h.variant.endswith("_n") and (self.wrong_class_term or self.wrong_player_term) \
                and not _rebuilding_checkpoint.get():
            # the run, its checkpoint and every grid row would be labelled the model without the pair term
            on = [n for n, v in (("wrong_class_term", self.wrong_class_term),
                                 ("wrong_player_term", self.wrong_player_term)) if v]  # fmt: skip
            pair = h.variant[:-2] + "_c"
            raise ValueError(f"variant {h.variant!r} is the discriminator without mismatched pairs, but {' and '.join(on)} "
                             f"is on (a config of {pair!r} under it?): set {' and '.join(on)} false, or train "
                             f"variant {pair!r} with the terms you want")  # fmt: skip
        if h.variant.endswith("_c") and not (self.wrong_class_term or self.wrong_player_term) \
                and not _rebuilding_checkpoint.get():
            # D would see no mismatched pair: the *_n model, labelled *_c in its checkpoint and every grid row
            plain_variant = h.variant[:-2] + "_n"
            raise ValueError(f"variant {h.variant!r} is the discriminator with mismatched pairs, but wrong_class_term "
                             f"and wrong_player_term are both off: train variant {plain_variant!r}, or turn a term "
                             "on")  # fmt: skip
        self.encoder_mode: str = h.encoder_mode
        self.gen_config = coerce(GeneratorConfig, h.generator)
        self.disc_config = coerce(DiscriminatorConfig, h.discriminator)
        self.g_opt_config = coerce(AdamConfig, h.g_optimizer)
        self.d_opt_config = coerce(AdamConfig, h.d_optimizer)
        self.weights = coerce(LossWeights, h.loss_weights)
        for name, value in dataclasses.asdict(self.weights).items():
            if not value >= 0:  # NaN too
                raise ValueError(f"loss_weights.{name} must be >= 0, got {value}")
        if not 0.0 <= h.ema_decay <= 1.0:  # NaN too; checked here as the EMA copy may be built only at setup
            raise ValueError(f"model.init_args.ema_decay must be in [0, 1], got {h.ema_decay}")
        if self.is_gan and self.disc_config.final_size < 2 and not self.disc_config.spectral_norm:
            # D's batch norm (on unless spectral_norm) then has one value per channel on a one-sample
            # batch, which the wrong-class and wrong-player terms can give
            raise ValueError(f"discriminator.final_size={self.disc_config.final_size} ends D on a 1x1 map, where its "
                             "batch norm fails on any one-sample batch: set discriminator.final_size >= 2 (default 4), "
                             "or discriminator.spectral_norm true (batch norm off)")  # fmt: skip
        if self.is_gan and self.weights.fake <= 0:
            raise ValueError("loss_weights.fake must be > 0: the discriminator would never be shown a generated pair")
        if not _rebuilding_checkpoint.get():
            why = untrained_class_head_use(h.encoder_mode, self.weights.encoder_class, self.inference_condition)
            if why is not None:
                raise ValueError(why)
        for name in ("aux_class", "mode_seeking"):
            if getattr(self.weights, name) > 0 and not self.is_gan:
                raise ValueError(f"loss_weights.{name} is a GAN term: variant 'ae' has no discriminator or noise "
                                 "contrast to apply it to")  # fmt: skip
        self.hard_negative_config = coerce(HardNegativeConfig, h.get("hard_negatives"))  # absent from older checkpoints
        if self.hard_negative_config.fraction > 0 and not self.wrong_class_term:
            raise ValueError("hard_negatives.fraction > 0 mines the wrong-class term, which is off for this run")
        self.sample_config = coerce(SampleConfig, h.samples)
        self.encoder_config = coerce(EncoderConfig, h.encoder)
        self.d_augment = ImageAugment(coerce(ImageAugmentConfig, h.diff_augment), option="diff_augment")
        if self.d_augment.config.enabled and not self.is_gan:
            raise ValueError("diff_augment augments the discriminator's inputs: variant 'ae' has no discriminator")
        noise = torch.Generator().manual_seed(self.sample_config.noise_seed)
        self.register_buffer("eval_z", torch.randn(self.sample_config.per_class, self.gen_config.z_dim, generator=noise))

        self.net: ConditionalTranslator | None = None
        self.condition_bank: ConditionBank | None = None
        self.discriminator: PairAwareDiscriminator | None = None
        self.ema: ExponentialMovingAverage | None = None
        self.hard_negatives: HardNegativeMiner | None = None
        self.iteration = 0
        """Training batches done (``global_step`` counts optimiser steps: 2 per GAN batch)."""
        self.sampler: NegativeSampler | None = None
        self._train_tensors = None
        # seed None: the run's seed_everything, read when fitting starts (``_resolve_seed``)
        self._seed_from_lightning = h.seed is None
        self._rng = torch.Generator().manual_seed(int(h.seed or 0))
        self._fixed: dict | None = None
        self._features = None
        self._logged_inputs = False
        self._cached_features: Tensor | None = None
        self._bank_index: Tensor | None = None
        self._augments_condition = False

        self._encoder_features = None  # the front end a pretrained audio encoder was trained on (S2I sets it)
        self._encoder_class_names: list[str] | None = None  # its classifier's, in its head's order (subclasses set it)
        self.checkpoint_path: Path | None = None
        """The checkpoint file it was loaded from (set by :func:`load_paired_gan`; None: none)."""
        pretrained = self._load_pretrained_encoder(encoder_ckpt) if h.encoder_mode != "scratch" else None
        # in a list: kept out of the module tree until it is built in (now, or at setup)
        self._pending_encoder: list[ConvEncoder | None] = [pretrained]
        if self._shapes_known():
            self._build(pretrained)

    def _build(self, pretrained: ConvEncoder | None = None) -> None:
        """The encoder (pretrained or fresh), generator, discriminator and EMA copy."""
        h = self.hparams
        encoder = pretrained if pretrained is not None else self._new_encoder()
        if self.encoder_mode == "frozen":
            encoder.requires_grad_(False)
            encoder.eval()
        else:
            # a pretrained encoder is loaded in eval mode, and Lightning does not switch modules to train
            # mode when fitting starts: a fine-tuned one would train with the classifier's batch-norm
            # statistics and no dropout
            encoder.train(self.training)
        g, d = self.gen_config, self.disc_config
        shape = self.target_shape()
        gen = ConditionalGenerator(
            out_shape=shape, z_dim=g.z_dim, cond_dim=condition_dim(encoder, self.condition_on), cond_proj_dim=g.cond_proj_dim,
            base_channels=g.base_channels, max_channels=g.max_channels, start_size=g.start_size,
            out_activation=self.out_activation,
        )  # fmt: skip
        self.net = ConditionalTranslator(encoder, gen, self.condition_on)
        self.condition_bank = ConditionBank(condition_dim(encoder, self.condition_on))
        if self.is_gan:
            self.discriminator = PairAwareDiscriminator(
                in_shape=shape, cond_dim=condition_dim(encoder, self.condition_on), cond_proj_dim=d.cond_proj_dim,
                base_channels=d.base_channels, max_channels=d.max_channels, spectral_norm=d.spectral_norm,
                final_size=d.final_size, projection=d.projection,
                n_classes=encoder.n_classes if self.weights.aux_class > 0 else 0,
            )  # fmt: skip
        hn = self.hard_negative_config
        if hn.fraction > 0:
            # built only when on, so checkpoints without it keep loading strictly
            self.hard_negatives = HardNegativeMiner(encoder.n_classes, hn.fraction, hn.momentum)
        if h.get("channels_last", False):
            # NHWC convolutions: ~1.4x faster on CPU (oneDNN) and for bf16 on tensor cores; outputs
            # follow the weights' format, so the data need no conversion
            self.net.generator.to(memory_format=torch.channels_last)
            if self.discriminator is not None:
                self.discriminator.to(memory_format=torch.channels_last)
        # a submodule, so the EMA weights are in the state_dict and checkpoints
        self.ema = ExponentialMovingAverage(self.net, decay=h.ema_decay)
        self._pending_encoder = [None]

    # ------------------------------------------------------------------ subclass hooks

    def _missing_encoder_message(self) -> str:  # subclass
        raise NotImplementedError

    def _load_pretrained_encoder(self, path: str | None) -> ConvEncoder:  # subclass
        """The pretrained condition encoder of ``path``; sets :attr:`encoder_config` from it."""
        raise NotImplementedError

    def _shapes_known(self) -> bool:  # subclass
        """Whether the condition and target shapes are known before the data is seen."""
        raise NotImplementedError

    def _new_encoder(self) -> ConvEncoder:  # subclass
        raise NotImplementedError

    def target_shape(self) -> tuple[int, int, int]:  # subclass
        """``(C, H, W)`` of one generated sample."""
        raise NotImplementedError

    def _learn_shapes(self, dm) -> None:  # subclass
        """Fill the shape hyper-parameters from the data (called at setup before a lazy build)."""
        raise NotImplementedError

    def _check_data(self, dm) -> None:  # subclass
        """Refuse data whose shapes differ from the built networks'."""
        raise NotImplementedError

    def to_target_space(self, x: Tensor) -> Tensor:
        """A batch's target values -> the generator's output space (identity by default)."""
        return x

    def from_target_space(self, y: Tensor) -> Tensor:
        """Generator output -> target values (identity by default)."""
        return y

    def _gather_condition(self, index: Tensor) -> Tensor:  # subclass
        """Conditions of train items ``index`` on the device (wrong-class partners)."""
        raise NotImplementedError

    def _gather_target(self, index: Tensor) -> Tensor:  # subclass
        """Targets of train items ``index`` in the generator's output space (wrong-player partners)."""
        raise NotImplementedError

    def _log_sheet(self, writer, fixed: dict) -> None:  # subclass
        """TensorBoard sample sheet from the fixed validation items."""
        raise NotImplementedError

    # ------------------------------------------------------------------ public API

    @property
    def z_dim(self) -> int:
        return self.gen_config.z_dim

    @property
    def model(self) -> ConditionalTranslator:
        """Encoder + generator (built from the data at ``setup`` when shapes were not given)."""
        if self.net is None:
            raise RuntimeError(f"{self.name} model not built: train/validate it with the data, or load a checkpoint")
        return self.net

    def set_inference_condition(self, mode: str, neighbours: int | None = None) -> None:
        """Switch what conditions the generator at inference (``'own'``, ``'nearest'``,
        ``'class_mean'``; see ``inference_condition``); ``neighbours`` = None keeps the current
        count. Recorded in the hyper-parameters, so a checkpoint saved afterwards keeps it."""
        neighbours = int(self.hparams.get("inference_neighbours", 1) if neighbours is None else neighbours)
        if mode not in INFERENCE_CONDITIONS:
            raise ValueError(f"inference_condition must be one of {INFERENCE_CONDITIONS}, got {mode!r}")
        if neighbours < 1:
            raise ValueError(f"inference_neighbours must be >= 1, got {neighbours}")
        trained = getattr(self, "trained_encoder_mode", None)  # set by load_paired_gan
        if trained is not None and untrained_class_head_use(trained, self.weights.encoder_class, mode):
            # allowed for a loaded model (it is the caller's experiment), but not in silence
            warnings.warn("this model's encoder was trained from scratch without a class loss "
                          "(loss_weights.encoder_class=0), so its class head never learnt the classes: class_mean "
                          "picks each input's class mean by that untrained head", stacklevel=2)  # fmt: skip
        self.inference_condition, self.inference_neighbours = mode, neighbours
        self.hparams.inference_condition, self.hparams.inference_neighbours = mode, neighbours

    def inference_conditions(self, net: ConditionalTranslator, x: Tensor) -> Tensor:
        """The generator's conditions for inputs ``x`` at inference, as ``inference_condition``
        says: ``net``'s own, or replaced by training ones from :attr:`condition_bank`."""
        if self.inference_condition == "own":
            return net.condition(x)
        return self._inference_conditions_from(net.encoder.forward_features(x))

    def _inference_conditions_from(self, out: EncoderOutput) -> Tensor:
        """:meth:`inference_conditions` from an encoder output already computed."""
        cond = condition_from(out, self.condition_on)
        if self.inference_condition == "own":
            return cond
        assert self.condition_bank is not None
        return self.condition_bank.snap(cond, self.inference_condition, out.logits.argmax(1), self.inference_neighbours)

    @torch.no_grad()
    def generate_raw(self, condition: Tensor, z: Tensor | None = None, use_ema: bool = True) -> Tensor:
        """Generator output (its own value space) for ``condition``, in eval mode; ``z`` defaults
        to fresh standard-normal noise. The condition is the input's own or a training one, as
        ``inference_condition`` says."""
        net = self.ema.module if use_ema else self.model  # type: ignore[union-attr]
        condition = condition.to(self.device, torch.float32)
        if z is None:
            z = torch.randn(condition.shape[0], self.z_dim, device=self.device)
        with eval_mode(net):
            return net.generator(z.to(self.device), self.inference_conditions(net, condition))

    @torch.no_grad()
    def generate(self, condition: Tensor, z: Tensor | None = None, use_ema: bool = True) -> Tensor:
        """Targets (frames in [-1, 1] for S2I, LMS in dB for I2S) for a batch of conditions."""
        return self.from_target_space(self.generate_raw(condition, z, use_ema))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.encoder_mode == "frozen" and self.net is not None:
            self.net.encoder.eval()  # a frozen encoder keeps its BatchNorm statistics too
        return self

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._resolve_seed()
            self._check_ddp()
            refuse_weight_averaging(self, "generator")
            if self.is_gan and self._trainer is not None and self.trainer.fast_dev_run:
                # fast_dev_run=n sets max_steps=n, and a GAN batch takes 2 optimiser steps: it would
                # stop after n/2 batches, before the validation the smoke run is meant to reach
                self.trainer.fit_loop.epoch_loop.max_steps = 2 * int(self.trainer.fast_dev_run)
        dm = datamodule_of(self)
        if dm is None:
            if self.net is None:
                raise RuntimeError(f"{type(self).__name__} needs an AudioVisualDataModule (or its shapes) to build")
            if stage == "fit" and (self.wrong_class_term or self.wrong_player_term):
                raise RuntimeError(
                    f"{type(self).__name__}'s wrong-class/wrong-player terms draw from the in-memory train "
                    "tensors: train with an AudioVisualDataModule"
                )
            return
        if dm.hparams.image_size != self.hparams.image_size:
            raise ValueError(f"model image_size={self.hparams.image_size} but data image_size={dm.hparams.image_size}")
        self._check_classes(dm)
        # the front end it was trained on (a checkpoint's, or an earlier fit's): another can give the same shape
        if why := front_end_difference(self._features, dm.features):
            where = self.checkpoint_path if self.checkpoint_path is not None else dm.root
            raise DataError(where, f"this {self.name} model was trained on another front end than the data's: {why}. "
                                   "Give it the data.features it was trained on")  # fmt: skip
        self._features = dm.features
        if self.net is None:
            self._learn_shapes(dm)
            self._build(self._pending_encoder[0])
        self._check_data(dm)
        names = list(dm.class_names)
        trains_head = self.weights.encoder_class > 0 and self.encoder_mode != "frozen"
        if trains_head and len(names) != self.model.encoder.n_classes:
            raise ValueError(f"encoder has {self.model.encoder.n_classes} classes but the data {len(names)}")
        if stage == "fit":
            self._train_tensors = dm.train_full.tensors
            self._bank_index = torch.as_tensor(list(dm.train.indices), dtype=torch.long)
            augment = getattr(dm, "augment", None)
            augmenting = bool(augment is not None and augment.enabled_groups)
            if augmenting and self.target_key == "audio":
                # the real targets would be augmented and the generated ones and the wrong-player partners
                # not: D could tell them apart by the augmentation, and G would learn to draw it
                raise ValueError(f"data.augment ({', '.join(augment.enabled_groups)}) augments the audio, which "
                                 f"{type(self).__name__} generates: turn it off (it is for tasks that read sound)")  # fmt: skip
            self._augments_condition = self.condition_key == "audio" and augmenting
        if stage == "fit" and (self.wrong_class_term or self.wrong_player_term):
            t = dm.train_full.tensors
            self.sampler = NegativeSampler(
                t.labels, t.tracks, pool=dm.train.indices, class_names=names, warn=self.wrong_player_term
            )
            if self.hard_negatives is not None and self.sampler.n_classes != self.hard_negatives.n_classes:
                raise ValueError(
                    f"hard_negatives: the encoder has {self.hard_negatives.n_classes} classes but the data "
                    f"{self.sampler.n_classes}"
                )
            if self.wrong_player_term and not self.sampler.wrong_player_possible:
                warnings.warn("no class has two train tracks: the wrong-player term is off for this run", stacklevel=2)
        rank = self.global_rank if self._trainer is not None else 0
        self._rng.manual_seed(int(self.hparams.seed or 0) + rank)  # None: never fitted, and never drawn from
        self._fixed = self._pick_fixed_items(dm.val, names)

    def _resolve_seed(self) -> None:
        """With ``seed`` None, the negative sampler's seed is the one Lightning's ``seed_everything``
        set (0 when none was), kept in the hyper-parameters so the checkpoint records it: else every
        seed of a ``--seed_everything`` sweep would draw the same mismatched pairs."""
        if self._seed_from_lightning:
            self.hparams.seed = lightning_seed()

    def _check_classes(self, dm) -> None:
        """Refuse data whose classes are not the pretrained classifier's (in its order): its class
        head's argmax picks the ``class_mean`` conditions and scores ``val/encoder_acc`` as an index
        into the data's classes."""
        if why := class_names_difference(self._encoder_class_names, dm.class_names):
            raise DataError(self.hparams[self.encoder_ckpt_arg],
                            f"this {self.encoder_source} was trained on other classes than the data's ({why}): its "
                            f"predicted classes would name the data's classes at those positions. Train the "
                            f"{self.encoder_source} on this data, or use encoder_mode='scratch'")  # fmt: skip

    def _check_ddp(self) -> None:
        """Fail early with the fix, instead of DDP's error after the first step."""
        from lightning.pytorch.strategies import DDPStrategy

        strategy = self.trainer.strategy
        if not isinstance(strategy, DDPStrategy):
            return
        # G and D are stepped by separate backward passes, each leaving the other's parameters
        # (and an unused classifier head) without gradients.
        needs = self.is_gan or (self.encoder_mode != "frozen" and self.weights.encoder_class == 0)
        if needs and not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
            raise ValueError(
                f"{type(self).__name__} under DDP needs unused-parameter detection (G and D take separate backward "
                "passes): use strategy='ddp_find_unused_parameters_true' (or "
                "'ddp_spawn_find_unused_parameters_true', or DDPStrategy(find_unused_parameters=True))"
            )

    @staticmethod
    def _pick_fixed_items(ds, names: list[str]) -> dict | None:
        """One validation item per class (the middle one in time), for the sample sheets."""
        if ds is None or len(ds) == 0:
            return None
        t = ds.tensors
        rows = []
        for c in range(len(names)):
            idx = (t.labels == c).nonzero().flatten()
            if len(idx):
                rows.append(int(idx[len(idx) // 2]))
        index = torch.tensor(rows)
        return {
            "audio": t.audio[index].float(),
            "image": t.images[index].float().div(127.5).sub(1.0),
            "names": [names[int(c)] for c in t.labels[index]],
            "keys": [(names[int(t.labels[i])], t.stems[i]) for i in rows],  # (class, stem): where its clip is
        }

    # ------------------------------------------------------------------ training

    def on_fit_start(self) -> None:
        separate_rank_streams(self)
        self._cached_features = None
        if self._caches_condition_features():
            self._cached_features = self._encode_train_items()
        self._fill_condition_bank()
        log_hyperparameters(self, self._compared_metrics(), self._loaded_encoder())

    def _compared_metrics(self) -> list[str]:
        """The HPARAMS tab's columns: EMA-G's L1, the encoder's accuracy and a judged-accuracy
        monitor's reading."""
        from cmav.evaluation.monitor import SPLITS, JudgedAccuracyMonitor

        judged = [f"{SPLITS[cb.split]}/judged_acc" for cb in self.trainer.callbacks if isinstance(cb, JudgedAccuracyMonitor)]
        return [*judged, "val/l1", "val/encoder_acc"]

    def _loaded_encoder(self) -> dict[str, Any]:
        """A pretrained encoder's settings (the classifier's), logged as ``encoder_loaded``. They are not
        written into ``hparams.encoder`` (a scratch encoder's settings, left as given): a resume compares
        the checkpoint's hyper-parameters with the config's, which would then differ, and the
        checkpoint records the architecture it holds beside them anyway."""
        return {"encoder_loaded": plain(self.encoder_config)} if self.encoder_mode != "scratch" else {}

    def on_validation_epoch_start(self) -> None:
        # a trained encoder moves: the bank follows the EMA encoder that generation uses
        if self.encoder_mode != "frozen" and self.trainer.state.fn == "fit" and self._train_tensors is not None:
            self._fill_condition_bank()

    @torch.no_grad()
    def _fill_condition_bank(self, batch_size: int = 256) -> None:
        """:attr:`condition_bank` := the EMA encoder's conditions of the train split (not the
        held-out tails) and their classes."""
        index = self._bank_index
        if index is None or len(index) == 0 or self.condition_bank is None:
            return
        if self._cached_features is not None:
            cond = self._cached_features[index.to(self._cached_features.device)]
        else:
            enc = self.ema.module.encoder  # type: ignore[union-attr]
            cond = torch.cat([condition_from(enc.forward_features(self._gather_condition(index[i : i + batch_size])), self.condition_on)
                              for i in range(0, len(index), batch_size)])  # fmt: skip
        self.condition_bank.fill(cond, self._train_tensors.labels[index])

    def fill_condition_bank(self, datamodule) -> None:
        """Fill :attr:`condition_bank` from ``datamodule``'s train split (for checkpoints saved
        before the bank existed; fitting fills it by itself)."""
        datamodule.setup("fit")
        self._train_tensors = datamodule.train_full.tensors
        self._bank_index = torch.as_tensor(list(datamodule.train.indices), dtype=torch.long)
        self._cached_features = None
        self._fill_condition_bank()

    def _caches_condition_features(self) -> bool:
        """Frozen encoder, eval-mode BatchNorm and un-augmented conditions: every train item's
        feature is a constant, so it is computed once instead of every step (I2S: the frozen
        ImageEncoder's forward is about half of a CPU step)."""
        return (bool(self.hparams.get("cache_frozen_features", True)) and self.encoder_mode == "frozen"
                and self._train_tensors is not None and not self._augments_condition)  # fmt: skip

    @torch.no_grad()
    def _encode_train_items(self, batch_size: int = 256) -> Tensor:
        """(N, condition width) conditions of every train item (train_full order), on the device."""
        n = len(self._train_tensors.labels)
        feats = [condition_from(self._encode(self._gather_condition(torch.arange(i, min(i + batch_size, n)))), self.condition_on)
                 for i in range(0, n, batch_size)]  # fmt: skip
        return torch.cat(feats)

    def _condition_features(self, batch: dict[str, Tensor], extra: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(conditions of the batch, conditions of the train items extra (or None), class logits
        or None)``, conditions as ``condition_on`` says; from the frozen-feature cache when there is one, else one encoder pass over both
        (same BatchNorm batch statistics for a trained encoder)."""
        n = batch[self.condition_key].shape[0]
        cached = self._cached_features
        if cached is not None and "index" in batch:
            feat = cached[batch["index"].to(cached.device)]
            return feat, (cached[extra.to(cached.device)] if extra is not None else None), None
        x = batch[self.condition_key]
        if extra is not None:
            x = torch.cat([x, self._augmented_partners(self._gather_condition(extra), extra)])
        enc = self._encode(x)
        cond = condition_from(enc, self.condition_on)
        return cond[:n], (cond[n:] if extra is not None else None), enc.logits[:n]

    def _augmented_partners(self, partners: Tensor, index: Tensor) -> Tensor:
        """Wrong-class partners' conditions augmented as the batch's own were (in training, with
        ``data.augment`` on): otherwise D could tell a mismatched pair by its clean condition."""
        if not (self._augments_condition and self.training):
            return partners
        dm = datamodule_of(self)
        if dm is None or not getattr(dm, "augmenting", False):
            return partners
        part = {"audio": partners}
        waves = self._train_tensors.waves
        if waves is not None:
            part["wave"] = waves[index.to(waves.device)].to(partners.device)
        return dm.augmented_audio(part)

    def _encode(self, x: Tensor) -> EncoderOutput:
        """Encoder features and logits; no graph when the encoder is frozen."""
        enc = self.model.encoder
        if self.encoder_mode == "frozen":
            with torch.no_grad():
                return enc.forward_features(x)
        return enc.forward_features(x)

    def _noisy(self, cond: Tensor, *others: Tensor | None) -> tuple[Tensor | None, ...]:
        """Training conditions with Gaussian noise of ``condition_noise`` times the batch's mean
        per-dimension feature spread (``cond``'s) added; unchanged when the option is 0.

        Why: a frozen encoder's train features lie on thin per-player threads (consecutive frames
        of one track are near-identical), and an unseen player's features fall far off them; the
        noise makes G and D see a neighbourhood of every thread, so G's map from feature to
        output has to be smooth there (StackGAN's conditioning augmentation, in feature space).
        """
        if self.condition_noise == 0:
            return (cond, *others)
        scale = self.condition_noise * cond.detach().std(dim=0).mean()
        return tuple(c + scale * torch.randn_like(c) if c is not None else None for c in (cond, *others))

    def _disc(self, x: Tensor, cond: Tensor) -> Tensor:
        assert self.discriminator is not None
        return self.discriminator(self.d_augment(x), cond)

    def _disc_with_classes(self, x: Tensor, cond: Tensor, labels: Tensor) -> tuple[Tensor, Tensor | None]:
        """D's pair logits and, with ``aux_class`` on, the cross-entropy of its class head against
        ``labels`` (unweighted), from one pass over the augmented ``x``."""
        if self.weights.aux_class == 0:
            return self._disc(x, cond), None
        assert self.discriminator is not None
        logit, classes = self.discriminator(self.d_augment(x), cond, with_classes=True)
        return logit, F.cross_entropy(classes.float(), labels)

    def _ema_update(self) -> None:
        assert self.ema is not None
        self.ema.update(self.model, decay=ema_decay_at(self.iteration, self.hparams.ema_decay))

    def _encoder_class_loss(self, logits: Tensor, labels: Tensor) -> Tensor | None:
        if self.weights.encoder_class > 0 and self.encoder_mode != "frozen":
            return self.weights.encoder_class * F.cross_entropy(logits, labels)
        return None

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.hparams.sample_every_n_steps > 0 and self.iteration % self.hparams.sample_every_n_steps == 0:
            self._log_samples()
        if self.is_gan:
            self._gan_step(batch)
        else:
            self._ae_step(batch)
        self._ema_update()
        self.iteration += 1

    def _gan_step(self, batch: dict[str, Tensor]) -> None:
        opt_g, opt_d = self.optimizers()
        labels = batch["label"]
        real = self.to_target_space(batch[self.target_key])
        n = real.shape[0]
        neg = None
        if self.sampler is not None:
            probs = None if self.hard_negatives is None else self.hard_negatives.class_probs(self.sampler.class_count)
            neg = self.sampler.sample(labels, batch["track"], self._rng, probs)
        use_wc = self.wrong_class_term and neg is not None and bool(neg.wrong_class_valid.any())
        use_wp = self.wrong_player_term and neg is not None and bool(neg.wrong_player_valid.any())

        cond, wrong_cond, logits = self._condition_features(batch, neg.wrong_class if use_wc else None)
        cond, wrong_cond = self._noisy(cond, wrong_cond)
        z = torch.randn(n, self.z_dim, device=self.device)
        fake = self.model.generator(z, cond)

        # ---- discriminator: real pair -> 1; fake and mismatched pairs -> 0
        self.toggle_optimizer(opt_d)
        c = cond.detach()
        logit_real, d_class_ce = self._disc_with_classes(real, c, labels)
        negatives: dict[str, tuple[float, Tensor]] = {}
        logit_fake = self._disc(fake.detach(), c)
        negatives["fake"] = (self.weights.fake, logit_fake)
        if use_wc:
            ok = neg.wrong_class_valid.to(self.device)
            negatives["wrong_class"] = (self.weights.wrong_class, self._disc(real[ok], wrong_cond.detach()[ok]))
        if use_wp:
            ok = neg.wrong_player_valid
            others = self._gather_target(neg.wrong_player[ok])
            negatives["wrong_player"] = (self.weights.wrong_player, self._disc(others, c[ok.to(self.device)]))
        if self.hard_negatives is not None and "wrong_class" in negatives:
            ok = neg.wrong_class_valid
            self.hard_negatives.update(
                labels[ok.to(labels.device)], self._train_tensors.labels[neg.wrong_class[ok]],
                torch.sigmoid(negatives["wrong_class"][1].detach().float()),
            )  # fmt: skip
        d_loss = pair_discriminator_loss(logit_real, list(negatives.values()))
        total_d = d_loss if d_class_ce is None else d_loss + self.weights.aux_class * d_class_ce
        self.manual_backward(total_d)
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        self.untoggle_optimizer(opt_d)

        # ---- generator: non-saturating, D(G(z, c), c) -> 1
        self.toggle_optimizer(opt_g)
        # D reads the condition detached here too: a trained encoder learns through G's use of it, not by
        # moving conditions to wherever D accepts any frame
        logit_gen, g_class_ce = self._disc_with_classes(fake, cond.detach(), labels)
        g_loss = generator_adversarial_loss(logit_gen)
        total_g = g_loss if g_class_ce is None else g_loss + self.weights.aux_class * g_class_ce
        ms_loss = None
        if self.weights.mode_seeking > 0:
            z_b = torch.randn_like(z)
            ms_loss = mode_seeking_loss(fake, self.model.generator(z_b, cond), z, z_b)
            total_g = total_g + self.weights.mode_seeking * ms_loss
        enc_loss = self._encoder_class_loss(logits, labels)
        if enc_loss is not None:
            total_g = total_g + enc_loss
        self.manual_backward(total_g)
        opt_g.step()
        opt_g.zero_grad(set_to_none=True)
        self.untoggle_optimizer(opt_g)

        logs = {
            "train/d_loss": d_loss.detach(),
            "train/g_loss": g_loss.detach(),
            "train/d_real": torch.sigmoid(logit_real.detach()).mean(),
            "train/d_fake": torch.sigmoid(logit_fake.detach()).mean(),
        }
        for key in ("wrong_class", "wrong_player"):
            if key in negatives:
                logs[f"train/d_{key}"] = torch.sigmoid(negatives[key][1].detach()).mean()
        if enc_loss is not None:
            logs["train/encoder_ce"] = enc_loss.detach()
        if d_class_ce is not None and g_class_ce is not None:
            logs["train/d_class_ce"] = d_class_ce.detach()
            logs["train/g_class_ce"] = g_class_ce.detach()
        if ms_loss is not None:
            logs["train/mode_seeking"] = ms_loss.detach()
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=n)
        self.log("g", g_loss.detach(), prog_bar=True, logger=False, batch_size=n)
        self.log("d", d_loss.detach(), prog_bar=True, logger=False, batch_size=n)

    def _pixel_loss(self, fake: Tensor, real: Tensor) -> Tensor:
        return F.l1_loss(fake, real) if self.hparams.pixel_loss == "l1" else F.mse_loss(fake, real)

    def _ae_step(self, batch: dict[str, Tensor]) -> None:
        opt = self.optimizers()
        labels = batch["label"]
        real = self.to_target_space(batch[self.target_key])
        cond, _, logits = self._condition_features(batch)
        (cond,) = self._noisy(cond)
        # the pixel loss makes G ignore z (it regresses to the mean target): that is the baseline
        z = torch.randn(real.shape[0], self.z_dim, device=self.device)
        fake = self.model.generator(z, cond)
        pix = self._pixel_loss(fake, real)
        loss = self.weights.pixel * pix
        enc_loss = self._encoder_class_loss(logits, labels)
        if enc_loss is not None:
            loss = loss + enc_loss
        self.manual_backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.log("train/pixel_loss", pix.detach(), on_step=True, prog_bar=True, batch_size=real.shape[0])

    def configure_optimizers(self):
        g_params = list(self.model.generator.parameters())
        if self.encoder_mode != "frozen":
            g_params += list(self.model.encoder.parameters())
        opt_g = self.g_opt_config.build(g_params)
        if not self.is_gan:
            return opt_g
        assert self.discriminator is not None
        return [opt_g, self.d_opt_config.build(self.discriminator.parameters())]

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Cheap signals only (the full evaluation is separate): EMA-G L1 error in the generator's
        output space, D's view of real and EMA-generated pairs, and the encoder's class accuracy."""
        self._score_batch(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """:meth:`validation_step`'s signals, logged as ``test/...``."""
        self._score_batch(batch, batch_idx, "test")

    def _score_batch(self, batch: dict[str, Tensor], batch_idx: int, prefix: str) -> None:
        condition, labels = batch[self.condition_key], batch["label"]
        real = self.to_target_space(batch[self.target_key])
        n = real.shape[0]
        # deterministic noise per batch, so epochs are comparable
        g = torch.Generator().manual_seed(self.sample_config.noise_seed + batch_idx)
        z = torch.randn(n, self.z_dim, generator=g).to(self.device)
        enc = self.model.encoder.forward_features(condition)
        cond = condition_from(enc, self.condition_on)
        if self.encoder_mode == "frozen":
            # a frozen encoder's EMA copy is the same network (lerp of equal weights): encode once
            g_cond = self._inference_conditions_from(enc)
        else:
            g_cond = self.inference_conditions(self.ema.module, condition)
        fake = self.ema.module.generator(z, g_cond)
        logs = {
            f"{prefix}/l1": (fake - real).abs().mean(),
            f"{prefix}/encoder_acc": batch_accuracy(enc.logits, labels),
        }
        if self.discriminator is not None:
            logs[f"{prefix}/d_real"] = torch.sigmoid(self.discriminator(real, cond)).mean()
            logs[f"{prefix}/d_fake"] = torch.sigmoid(self.discriminator(fake, cond)).mean()
        self.log_dict(logs, on_epoch=True, sync_dist=True, batch_size=n)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """EMA-G targets for the batch's conditions (fresh noise), with labels and item indices."""
        return {self.target_key: self.generate(batch[self.condition_key]), "label": batch["label"],
                "index": batch["index"]}  # fmt: skip

    # ------------------------------------------------------------------ TensorBoard

    @torch.no_grad()
    def _log_samples(self) -> None:
        if self._fixed is None or self.global_rank != 0:
            return
        from cmav.tasks.common import tensorboard_writer

        writer = tensorboard_writer(self)
        if writer is None:
            return
        self._log_sheet(writer, self._fixed)

    def _front_end_kind(self) -> str:
        """The data's front end (``lms``, ``stft``, ``waveform``...): what ``audio`` tensors hold."""
        return str(getattr(self._features, "kind", "lms"))

    def _can_invert(self) -> bool:
        return self.sample_config.log_audio and self._front_end_kind() == "lms"

    def _log_inputs(self, writer, fixed: dict, pictures: bool, rendering: bool) -> None:
        """Once per run, at its first sheet: the fixed items' audio inputs.

        ``pictures``: the features as images, ``inputs/<front end>/<class>``; a waveform front end's
        features are the samples, logged as sound (``inputs/audio/<class>``) instead. With
        ``samples.log_audio``: the recorded clips as ``inputs/audio/<class>`` and, for an LMS front
        end, the Griffin-Lim rendering of their LMS as ``inputs/griffin_lim/<class>``, at the gain of
        the generated renderings: with ``rendering``, always (the reference generated sound compares
        with), else only where the clips cannot be read.
        """
        if self._logged_inputs:
            return
        self._logged_inputs = True
        from cmav.viz.tensors import spectrogram_to_unit

        kind, names = self._front_end_kind(), fixed["names"]
        real = None
        if kind == "waveform":
            real = fixed["audio"].flatten(1)  # (N, 1, 1, samples): a picture would be a 1-pixel strip
        elif pictures:
            for name, x in zip(names, spectrogram_to_unit(fixed["audio"]), strict=True):
                writer.add_image(f"inputs/{kind}/{name}", x, 0, dataformats="CHW")
        if real is None and self.sample_config.log_audio:
            real = self._read_clips(fixed)
        if real is not None and (kind == "waveform" or self.sample_config.log_audio):
            self._log_clips(writer, "inputs/audio", real, names, 0, self._features.sample_rate)
        if self._can_invert() and (rendering or real is None):
            self._log_audio(writer, "inputs/griffin_lim", fixed["audio"], names, 0)

    def _read_clips(self, fixed: dict) -> Tensor | None:
        """The fixed items' recorded chunks ``(N, samples)``, read as the cache reads the clips it
        computes the features from; None for a packed data set (it keeps no sound files), or with a
        warning when they cannot be read."""
        from cmav.data.pack import is_pack

        dm = datamodule_of(self)
        if dm is None or "keys" not in fixed or is_pack(dm.root):
            return None
        from cmav.data.cache import build_waves
        from cmav.data.layout import scan_paired, scan_suburmp

        try:
            if dm.hparams.layout == "suburmp":
                scan = scan_suburmp(dm.root, "validation")
            else:
                scan = scan_paired(dm.root, "validation", tuple(dm.class_names))
            found = {(s.class_name, s.stem): s for s in scan.samples}
            samples = [found[key] for key in fixed["keys"]]
            return build_waves(scan.root, samples, dm.chunk, self._features.sample_rate, progress=False)
        except Exception as exc:  # noqa: BLE001 (a listening aid: never stops training)
            warnings.warn(f"the validation clips of the sample sheets could not be read ({exc}): no inputs/audio "
                          "logged", stacklevel=2)  # fmt: skip
            return None

    def _log_audio(self, writer, tag: str, lms_db: Tensor, names: list[str], step: int) -> None:
        """Griffin-Lim renderings of LMS as TensorBoard audio (a listening aid: never stops training).

        Rendered at the level the spectrogram gives (its dB are absolute, so a real LMS comes back
        at its clip's level), not scaled to a peak of 1 clip by clip: real and generated share one
        gain, and a near-silent spectrogram sounds near-silent."""
        from cmav.features.inversion import lms_to_audio

        dm = datamodule_of(self)
        length = dm.chunk.samples_at(self._features.sample_rate) if dm is not None else None
        try:
            waves = lms_to_audio(lms_db, self._features, self.sample_config.griffin_lim_iters, normalise=False,
                                 n_samples=length)  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"Griffin-Lim rendering failed ({exc}); no audio logged", stacklevel=2)
            return
        self._log_clips(writer, tag, waves, names, step, self._features.sample_rate)

    @staticmethod
    def _log_clips(writer, tag: str, waves: Tensor, names: list[str], step: int, rate: int) -> None:
        """``waves`` ``(N, samples)`` as ``<tag>/<name>``, clipped to [-1, 1] and otherwise as they are."""
        for name, w in zip(names, waves.float().clamp(-1.0, 1.0), strict=True):
            writer.add_audio(f"{tag}/{name}", w.unsqueeze(0), step, sample_rate=rate)

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_random_state(checkpoint, self)
        self._refresh_saved_condition_bank(checkpoint)
        enc = self.model.encoder
        sampler_rngs = every_rank(self, self._rng.get_state())
        checkpoint[self.checkpoint_key] = {
            "iteration": self.iteration,
            "sampler_rng": sampler_rngs[0],
            **({"sampler_rngs": sampler_rngs} if len(sampler_rngs) > 1 else {}),
            "encoder": {
                "config": plain(self.encoder_config),
                "n_classes": enc.n_classes,
                "input_shape": list(enc.input_shape),
            },
        }

    def _refresh_saved_condition_bank(self, checkpoint: dict) -> None:
        """A trained encoder moves on after the last validation refilled the bank, so a checkpoint
        saved between validations (validation off or every n epochs, a step-based save) would hold
        conditions of an older encoder; ``nearest``/``class_mean`` generation would snap to them."""
        if self.encoder_mode == "frozen" or self._train_tensors is None or self.condition_bank is None:
            return
        self._fill_condition_bank()
        saved = checkpoint.get("state_dict")
        if saved is None:
            return
        for key, value in self.condition_bank.state_dict(prefix="condition_bank.").items():
            if key in saved:
                saved[key] = value.detach().clone()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        trained = (checkpoint.get("datamodule_hyper_parameters") or {}).get("features")
        if self._features is not None and (why := front_end_difference(trained, self._features)):
            path = getattr(self._trainer, "ckpt_path", None) or "checkpoint"
            raise DataError(path, f"this {self.name} model was trained on another front end than this run's data: "
                                  f"{why}. Give it the data.features it was trained on")  # fmt: skip
        restore_random_state(self, checkpoint)
        saved_seed = (checkpoint.get("hyper_parameters") or {}).get("seed")
        if self._seed_from_lightning and saved_seed is not None:
            # a resumed run keeps the killed run's seed, whatever seed_everything says now
            self.hparams.seed = int(saved_seed)
        state = checkpoint.get(self.checkpoint_key)
        if not state:
            return
        self.iteration = int(state["iteration"])
        rank = self.global_rank if self._trainer is not None else 0
        world = self._trainer.world_size if self._trainer is not None else 1
        saved = state.get("sampler_rngs", [state["sampler_rng"]])
        if len(saved) == world or rank == 0:
            self._rng.set_state(saved[rank] if len(saved) == world else saved[0])
        else:
            # saved by another number of processes: other ranks get their own stream, still deterministic
            self._rng.manual_seed(self.hparams.seed + 7919 * rank + self.iteration)


def load_paired_gan(
    cls: type[PairedGANTask], path: str | Path, scratch_args: Callable[[dict], dict[str, Any]]
) -> PairedGANTask:
    """Rebuild a ``cls`` task (CPU, eval mode) from its checkpoint for generation/evaluation.

    Needs neither the data nor the pretrained encoder's checkpoint: the encoder's architecture is
    stored in the task's checkpoint. ``scratch_args(arch)`` gives the constructor arguments that
    rebuild that encoder fresh (its weights come from the state dict). ``trained_encoder_mode``
    records the mode it was trained with, and the task's front end is its training data's (from
    the checkpoint; None when it holds none).
    """
    ckpt = _load_checkpoint(path)
    hp = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    arch = (ckpt.get(cls.checkpoint_key) or {}).get("encoder")
    if not hp or arch is None:
        other = [k for k in ("cmav_s2i", "cmav_i2s", "cmav_retrieval") if k in ckpt and k != cls.checkpoint_key]
        hint = f" (it is a {other[0][5:].upper()} checkpoint)" if other else ""
        raise ValueError(f"{path}: not a {cls.__name__} checkpoint{hint}")
    trained_mode = hp.get("encoder_mode", "frozen")
    hp.update(encoder_mode="scratch", encoder=arch["config"], n_classes=arch["n_classes"], **scratch_args(arch))
    hp[cls.encoder_ckpt_arg] = None
    rebuilding = _rebuilding_checkpoint.set(True)
    try:
        with own_hyperparameters():
            task = cls(**hp)
    finally:
        _rebuilding_checkpoint.reset(rebuilding)
    task.load_state_dict(ckpt["state_dict"])
    task.iteration = int(ckpt[cls.checkpoint_key]["iteration"])
    task.trained_encoder_mode = trained_mode
    task.checkpoint_path = Path(path)
    # the front end of the data it trained on, what its outputs or conditions mean (None: not recorded)
    features = (ckpt.get("datamodule_hyper_parameters") or {}).get("features")
    task._features = front_end_config(features) if features is not None else None
    return task.eval()


__all__ = [
    "ConditionOn",
    "ConditionalTranslator",
    "DiscriminatorConfig",
    "EncoderMode",
    "GeneratorConfig",
    "LossWeights",
    "PairedGANTask",
    "SampleConfig",
    "condition_dim",
    "condition_from",
    "ema_decay_at",
    "generator_adversarial_loss",
    "lightning_seed",
    "load_paired_gan",
    "pair_discriminator_loss",
    "untrained_class_head_use",
]
