"""Image-to-sound (I2S) training: from a frame of a player, the log-mel spectrogram of its instrument.

The reverse direction of Chen et al. (2017), on the same training loop as S2I
(:class:`~cmav.tasks.paired_gan.PairedGANTask`): an :class:`ImageEncoder` (the audio encoder's
design on frames) gives a 128-d feature; a :class:`ConditionalGenerator` turns ``z`` (10-d) plus
its projection into an LMS of the data's front-end shape (128 mel x 44 frames for 0.5 s by
default; read from the data, never fixed here); a :class:`PairAwareDiscriminator` scores
(LMS, image feature) pairs. Variants:

* ``i2s_c``: the discriminator also rejects (real LMS, a frame of another instrument) and
  (the LMS of another player of the same instrument, the frame): both terms on by default.
* ``i2s_n``: only real/fake pairs.
* ``ae``: encoder + generator with an L1/L2 loss on the (scaled) LMS; no discriminator.

The generator works in ``[-1, 1]`` (tanh): LMS values in dB are mapped linearly from the train
set's range (``lms_range``, measured at ``setup`` and stored in the checkpoint) and back, so
:meth:`I2STask.generate` returns dB on the data's scale. Sound comes back through
:func:`cmav.features.inversion.lms_to_audio` (inverse mel + Griffin-Lim).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from torch import Tensor

from cmav.data.instruments import INSTRUMENTS
from cmav.features.scaling import RangeScaler
from cmav.models import ImageEncoder, InferenceCondition
from cmav.tasks.classifier import load_image_classifier
from cmav.tasks.common import AdamConfig, ImageAugmentConfig, ImageEncoderConfig, coerce, datamodule_of, plain
from cmav.tasks.paired_gan import (
    ConditionOn,
    DiscriminatorConfig,
    EncoderMode,
    GeneratorConfig,
    HardNegativeConfig,
    LossWeights,
    PairedGANTask,
    SampleConfig,
    load_paired_gan,
)
from cmav.tasks.pairs import gather_audio, gather_images
from cmav.tasks.tensorboard import logger_step
from cmav.viz.tensors import lms_picture, to_uint8_frame

Variant = Literal["i2s_c", "i2s_n", "ae"]

# (wrong_class_term, wrong_player_term) when not given explicitly
VARIANT_TERMS = {"i2s_c": (True, True), "i2s_n": (False, False), "ae": (False, False)}


def refuse_uninvertible_front_end(features) -> None:
    """A clear ValueError unless ``features`` (``data.features``) is an LMS with centred frames: the
    only front end whose spectrograms I2S's evaluation scores and Griffin-Lim turns into sound."""
    kind = getattr(features, "kind", "lms")
    if kind != "lms":
        why = f"data.features.kind is {kind!r}; set --data.features.kind lms"
    elif not features.center:
        why = "data.features.center is false; set --data.features.center true"
    else:
        return
    raise ValueError("I2S generates log-mel spectrograms, which only an LMS front end with centred frames can evaluate "
                     f"and turn into sound: {why}")  # fmt: skip


def _refuse_colour_augment(config: ImageAugmentConfig) -> None:
    """A clear ValueError when ``diff_augment`` turns on colour ops, which need RGB frames: D's
    inputs here are one-channel LMS (kornia would fail at the first D step)."""
    on = [name for name, used in (("colour", config.colour > 0), ("colour_scramble", config.colour_scramble)) if used]
    if config.enabled and on:
        options = " and ".join(f"diff_augment.{name}" for name in on)
        off = " ".join(f"--model.init_args.diff_augment.{name} {'0' if name == 'colour' else 'false'}" for name in on)
        raise ValueError(f"{options}: colour augmentation needs RGB frames, but I2S's discriminator sees one-channel "
                         f"spectrograms (dB); set {off} (experiments/s2i_stable.yaml is S2I's overlay, I2S's is "
                         "experiments/i2s_stable.yaml)")  # fmt: skip


class I2STask(PairedGANTask):
    """Image-to-sound GAN (I2S-C / I2S-N) or pixel-loss AE, with EMA generator weights.

    Args:
        variant: ``'i2s_c'``, ``'i2s_n'`` or ``'ae'`` (see the module docstring).
        encoder_mode: ``'frozen'`` (the image classifier's :class:`ImageEncoder`, fixed),
            ``'finetune'`` (initialised from it, trained with G) or ``'scratch'``.
        image_encoder_ckpt: ClassifierTask checkpoint of the image classifier
            (``experiments/image_encoder.yaml``: ``image_model='encoder'``, NOT the image judge);
            required for frozen/finetune.
        image_size: side of the conditioning frames; must equal the data's (the CLI links it).
        wrong_class_term: D term (real LMS, frame of another instrument) -> 0; ``None`` = the
            variant's default (i2s_c: on).
        wrong_player_term: D term (LMS of another player of the same instrument, frame) -> 0;
            ``None`` = the variant's default (i2s_c: on).
        generator: generator options (paper: 10-d z, 128-d condition projection).
        discriminator: discriminator options.
        encoder: the image encoder's options for ``scratch``.
        n_classes: the scratch encoder's class count (only ``loss_weights.encoder_class`` trains
            its head to classify: without it, ``inference_condition='class_mean'`` is refused for
            ``scratch``).
        g_optimizer: Adam for G (and a trained encoder); paper: 2e-4, betas (0.5, 0.999).
        d_optimizer: Adam for D; paper: 2e-4, betas (0.5, 0.999).
        loss_weights: see :class:`~cmav.tasks.paired_gan.LossWeights`.
        hard_negatives: class-level hard-negative mining for the wrong-class term: a
            ``fraction`` of its draws picks the other class by D's running score of that class
            pair (:class:`~cmav.tasks.paired_gan.HardNegativeConfig`); off by default (the paper).
        pixel_loss: ``'l1'`` or ``'l2'`` (AE only), on the scaled LMS.
        ema_decay: decay of the EMA of G (and a trained encoder); validation, sheets and
            :meth:`generate` use the EMA copy.
        diff_augment: differentiable augmentation of D's inputs (kornia); off by default. Of its
            options, two suit spectrograms: ``translate`` (shifts in time and frequency, reflection
            padding) and ``erase`` (a SpecAugment-like rectangle, filled with the middle of
            ``lms_range`` in dB, not with silence); ``experiments/i2s_stable.yaml`` uses both. Colour
            jitter and ``colour_scramble`` need RGB and are refused (one channel of dB), and a flip
            plays the sound backwards.
        sample_every_n_steps: iterations between TensorBoard sample sheets; 0 = never.
        samples: sample-sheet options (``log_audio``: Griffin-Lim renderings of generated and real).
        seed: seed of the negative sampler's generator (offset by the process rank); None = the
            run's ``seed_everything`` (read when fitting starts and kept in the checkpoint), so
            each seed of a sweep draws other mismatched pairs.
        channels_last: G and D in channels-last (NHWC) memory format: faster convolutions on
            CPU and with bf16 on GPU; results are the same up to float rounding.
        cache_frozen_features: with a frozen encoder (and no training-time augmentation of the
            condition), compute every train item's feature once at the start of fitting instead
            of at every step; the same features, so the same training.
        condition_noise: training-time Gaussian noise on the condition feature (G's and D's), in
            units of the batch's mean per-dimension feature spread; 0 = off (the paper). An
            unseen player's features lie far from every training player's, and the noise teaches
            G a smooth map around the training features (conditioning augmentation).
        condition_on: what of the encoder conditions G and D: ``'feature'`` (the 128-d embedding,
            the paper), ``'logits'`` (its class head's logits: a fixed linear projection of the
            embedding onto the directions that separate the classes) or ``'probabilities'``
            (their softmax). An unseen player's embedding can lie nearer another class's training
            players than its own while the head still classifies it right.
        inference_condition: the generator's condition at inference (generation, validation,
            evaluation; never in training): ``'own'`` (the input's own, the paper), ``'nearest'``
            (the mean of the ``inference_neighbours`` nearest training conditions) or
            ``'class_mean'`` (the mean training condition of the class the encoder predicts).
            The training conditions are kept in the checkpoint (:class:`~cmav.models.ConditionBank`).
            An unseen player's condition can lie far from every training player's, where G's map
            does not carry over.
        inference_neighbours: how many nearest training conditions ``'nearest'`` averages.
        lms_shape: ``(1, n_mels, frames)`` of the generated LMS; ``None`` = the data's (at setup).
            A given one must be the data's: another is refused, never replaced.
        lms_range: ``[low, high]`` dB mapped to the generator's [-1, 1]; ``None`` = the train
            set's range (at setup). Saved in the checkpoint.
    """

    condition_key = "image"
    target_key = "audio"
    name = "I2S"
    checkpoint_key = "cmav_i2s"
    variant_terms = VARIANT_TERMS
    encoder_ckpt_arg = "image_encoder_ckpt"
    encoder_source = "image classifier"

    def __init__(
        self,
        variant: Variant = "i2s_c",
        encoder_mode: EncoderMode = "frozen",
        image_encoder_ckpt: str | None = None,
        image_size: int = 64,
        wrong_class_term: bool | None = None,
        wrong_player_term: bool | None = None,
        generator: GeneratorConfig = GeneratorConfig(),
        discriminator: DiscriminatorConfig = DiscriminatorConfig(),
        encoder: ImageEncoderConfig = ImageEncoderConfig(),
        n_classes: int = len(INSTRUMENTS),
        g_optimizer: AdamConfig = AdamConfig(),
        d_optimizer: AdamConfig = AdamConfig(),
        loss_weights: LossWeights = LossWeights(),
        hard_negatives: HardNegativeConfig = HardNegativeConfig(),
        pixel_loss: Literal["l1", "l2"] = "l1",
        ema_decay: float = 0.999,
        diff_augment: ImageAugmentConfig = ImageAugmentConfig(),
        sample_every_n_steps: int = 500,
        samples: SampleConfig = SampleConfig(),
        seed: int | None = None,
        channels_last: bool = False,
        cache_frozen_features: bool = True,
        condition_noise: float = 0.0,
        condition_on: ConditionOn = "feature",
        inference_condition: InferenceCondition = "own",
        inference_neighbours: int = 1,
        lms_shape: list[int] | None = None,
        lms_range: list[float] | None = None,
    ) -> None:
        super().__init__()
        # plain dicts in the hyper-parameters: save_hyperparameters reads these locals
        generator, discriminator, encoder = plain(generator), plain(discriminator), plain(encoder)
        g_optimizer, d_optimizer, loss_weights = plain(g_optimizer), plain(d_optimizer), plain(loss_weights)
        hard_negatives = plain(hard_negatives)
        diff_augment, samples = plain(diff_augment), plain(samples)
        self.save_hyperparameters()
        _refuse_colour_augment(coerce(ImageAugmentConfig, diff_augment))
        self.scaler: RangeScaler | None = RangeScaler.from_list(lms_range) if lms_range is not None else None
        self._init_gan(image_encoder_ckpt)

    # ------------------------------------------------------------------ hooks

    def _missing_encoder_message(self) -> str:
        return (
            f"encoder_mode='{self.hparams.encoder_mode}' needs image_encoder_ckpt: the checkpoint of the image "
            "classifier (train it with `cmav fit --config experiments/image_encoder.yaml`, then pass e.g. "
            "--model.init_args.image_encoder_ckpt runs/image_encoder/checkpoints/last.ckpt), "
            "or use encoder_mode='scratch'"
        )

    def _load_pretrained_encoder(self, path: str | None) -> ImageEncoder:
        clf = load_image_classifier(path, "I2S")  # type: ignore[arg-type]
        # not into hparams.encoder: logged as encoder_loaded instead (PairedGANTask._loaded_encoder says why)
        self.encoder_config = clf.image_encoder_config
        size = int(clf.hparams.image_size)
        if size != int(self.hparams.image_size):
            raise ValueError(f"{path}: the image classifier takes {size}x{size} frames, this I2S task "
                             f"{self.hparams.image_size}x{self.hparams.image_size}")  # fmt: skip
        self._encoder_class_names = list(clf.hparams.class_names)
        return clf.model  # type: ignore[return-value]

    def _shapes_known(self) -> bool:
        return self.hparams.lms_shape is not None and self.scaler is not None

    def setup(self, stage: str) -> None:
        dm = datamodule_of(self)
        if stage == "fit" and dm is not None:
            refuse_uninvertible_front_end(dm.features)  # before anything is built or cached for it
        super().setup(stage)

    def _new_encoder(self) -> ImageEncoder:
        s = int(self.hparams.image_size)
        return self.encoder_config.build(ImageEncoder, (3, s, s), self.hparams.n_classes)

    def target_shape(self) -> tuple[int, int, int]:
        c, h, w = self.hparams.lms_shape
        return (int(c), int(h), int(w))

    def _learn_shapes(self, dm) -> None:
        audio = dm.train_full.tensors.audio
        got = [int(v) for v in audio.shape[1:]]
        given = self.hparams.lms_shape
        if given is not None and [int(v) for v in given] != got:
            # the same refusal as _check_data's when lms_range is given too (the model is built then)
            raise ValueError(f"lms_shape={list(given)} but the data's LMS are {got} (its front end, data.features): "
                             "leave lms_shape unset to take the data's, or set the front end that gives it")  # fmt: skip
        self.hparams.lms_shape = got
        if self.scaler is None:
            train = audio[list(dm.train.indices)] if len(dm.train) else audio
            self.scaler = RangeScaler.fit(train)
            self.hparams.lms_range = self.scaler.to_list()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run decodes on the dB range its generator was trained on, not one refitted from
        the data at ``setup`` (Lightning sets a task up before it reads the checkpoint)."""
        super().on_load_checkpoint(checkpoint)
        stored = checkpoint.get("hyper_parameters", {}).get("lms_range")
        if stored is None:
            return
        stored = [float(v) for v in stored]
        if self.scaler is not None and self.scaler.to_list() != stored:
            warnings.warn(
                f"the data's LMS range {self.scaler.to_list()} dB differs from the checkpoint's {stored}: "
                "the run goes on with the checkpoint's, which its generator was trained on",
                stacklevel=2,
            )
        self.scaler = RangeScaler.from_list(stored)
        self.hparams.lms_range = stored

    def _check_data(self, dm) -> None:
        got = tuple(dm.train_full.tensors.audio.shape[1:])
        if got != self.target_shape():
            raise ValueError(f"this I2S model generates LMS {self.target_shape()}, the data's are {got}: "
                             "train on the same front end")  # fmt: skip

    @property
    def trained_features(self):
        """The front-end config of the data this model was trained on (read from the checkpoint
        by :func:`load_i2s`, or the data it was set up with); ``None`` when not known."""
        return self._features

    def to_target_space(self, x: Tensor) -> Tensor:
        assert self.scaler is not None
        return self.scaler.encode(x)

    def from_target_space(self, y: Tensor) -> Tensor:
        assert self.scaler is not None
        return self.scaler.decode(y)

    def _gather_condition(self, index: Tensor) -> Tensor:
        return gather_images(self._train_tensors, index, self.device)

    def _gather_target(self, index: Tensor) -> Tensor:
        return self.to_target_space(gather_audio(self._train_tensors, index, self.device))

    def _log_sheet(self, writer, fixed: dict) -> None:
        """Sheet (rows: classes; columns: the frame | its real LMS | EMA-G LMS for the fixed noise),
        on one dB scale; the generated clips (Griffin-Lim) next to the real ones, rendered alike
        (:meth:`~cmav.tasks.paired_gan.PairedGANTask._log_inputs`)."""
        from cmav.viz import labelled_grid

        assert self.scaler is not None
        frames = fixed["image"].to(self.device)
        real = fixed["audio"]
        k = self.eval_z.shape[0]
        zs = self.eval_z.repeat(frames.shape[0], 1)
        fake = self.generate(frames.repeat_interleave(k, 0), zs).cpu().view(frames.shape[0], k, *real.shape[1:])
        lo, hi = self.scaler.low, self.scaler.high
        cell = 96
        rows = [[to_uint8_frame(fixed["image"][r]), lms_picture(real[r], cell, lo, hi)]
                + [lms_picture(fake[r, j], cell, lo, hi) for j in range(k)] for r in range(real.shape[0])]  # fmt: skip
        real_column = f"real {self._front_end_kind()}"
        sheet = labelled_grid(rows, fixed["names"], ["frame", real_column] + [f"z{j}" for j in range(k)], cell_size=cell)
        step = logger_step(self)
        writer.add_image("samples/ema", np.asarray(sheet), step, dataformats="HWC")
        if self._can_invert():
            self._log_audio(writer, "samples/audio", fake[:, 0], fixed["names"], step)
        self._log_inputs(writer, fixed, pictures=False, rendering=True)


def load_i2s(path: str | Path) -> I2STask:
    """Rebuild an :class:`I2STask` (CPU, eval mode) from its checkpoint, without the data or the
    image-classifier checkpoint (the encoder's architecture, the LMS shape and its dB range are
    stored in it). ``trained_encoder_mode`` records the mode it was trained with and
    ``trained_features`` the front end of its data (``None`` when the checkpoint has none)."""
    task = load_paired_gan(I2STask, path, lambda arch: {})
    assert isinstance(task, I2STask)
    return task


__all__ = ["I2STask", "load_i2s", "refuse_uninvertible_front_end"]
