"""Sound-to-image (S2I) training: conditional DCGAN with a pair-aware discriminator, or a pixel-loss AE.

Variants (``variant``):

* ``s2i_c``: GAN whose discriminator also rejects mismatched pairs (GAN-CLS style): a real frame
  with audio of another instrument, and a frame of another player of the same instrument with
  the item's audio. Both terms on by default.
* ``s2i_n``: the same GAN with only real/fake pairs (both mismatch terms off by default).
* ``ae``: encoder + generator trained with an L1/L2 pixel loss to the paired frame; no
  discriminator (the blurry-mean baseline).

The audio encoder is the sound classifier's :class:`AudioEncoder` (``encoder_mode='frozen'`` or
``'finetune'``, loaded from a :class:`~cmav.tasks.classifier.ClassifierTask` checkpoint) or a
fresh one (``'scratch'``). The training loop is :class:`~cmav.tasks.paired_gan.PairedGANTask`'s,
shared with image-to-sound (:mod:`cmav.tasks.i2s`); step counting is described there
(``global_step`` advances by 2 per GAN batch; :attr:`S2ITask.iteration` counts batches).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from torch import Tensor

from cmav.data.instruments import INSTRUMENTS
from cmav.features.inversion import lms_to_audio
from cmav.models import AudioEncoder, InferenceCondition
from cmav.tasks.classifier import load_sound_classifier
from cmav.tasks.common import AdamConfig, AudioEncoderConfig, ImageAugmentConfig, check_encoder_input, plain
from cmav.tasks.paired_gan import (
    ConditionalTranslator,
    ConditionOn,
    DiscriminatorConfig,
    EncoderMode,
    GeneratorConfig,
    HardNegativeConfig,
    LossWeights,
    PairedGANTask,
    SampleConfig,
    ema_decay_at,
    generator_adversarial_loss,
    load_paired_gan,
    pair_discriminator_loss,
)
from cmav.tasks.pairs import gather_audio, gather_images
from cmav.tasks.tensorboard import logger_step
from cmav.viz.tensors import to_uint8_frame

Variant = Literal["s2i_c", "s2i_n", "ae"]

# (wrong_class_term, wrong_player_term) when not given explicitly
VARIANT_TERMS = {"s2i_c": (True, True), "s2i_n": (False, False), "ae": (False, False)}

SoundToImage = ConditionalTranslator  # audio encoder + generator: (LMS, z) -> image in [-1, 1]


class S2ITask(PairedGANTask):
    """Sound-to-image GAN (S2I-C / S2I-N) or pixel-loss AE, with EMA generator weights.

    Args:
        variant: ``'s2i_c'``, ``'s2i_n'`` or ``'ae'`` (see the module docstring).
        encoder_mode: ``'frozen'`` (the sound classifier's encoder, fixed), ``'finetune'``
            (initialised from it, trained with G) or ``'scratch'`` (random init, trained with G).
        audio_encoder_ckpt: ClassifierTask checkpoint of the sound classifier; required for
            frozen/finetune.
        image_size: generated frame side (64 in the paper; 128 works too); must equal the data's
            (the CLI links it to ``data.image_size``).
        wrong_class_term: discriminator term (real frame, wrong-class audio) -> 0; ``None`` = the
            variant's default (s2i_c: on; s2i_n, ae: off).
        wrong_player_term: discriminator term (same-class frame of another player, audio) -> 0;
            ``None`` = the variant's default (s2i_c: on; s2i_n, ae: off).
        generator: generator options.
        discriminator: discriminator options.
        encoder: the audio encoder's options for ``scratch`` (frozen/finetune use the
            checkpoint's architecture).
        audio_shape: ``(C, H, W)`` of the audio features a ``scratch`` encoder takes; ``None`` =
            read from the data at ``setup`` (the front end decides it; 1 x 128 x 44 for the
            default LMS). Frozen/finetune encoders take the sound classifier's.
        n_classes: the scratch encoder's class count (its head is used only by
            ``loss_weights.encoder_class``).
        g_optimizer: Adam for G (and a trained encoder); paper: 2e-4, betas (0.5, 0.999).
        d_optimizer: Adam for D; paper: 2e-4, betas (0.5, 0.999).
        loss_weights: see :class:`LossWeights`.
        hard_negatives: class-level hard-negative mining for the wrong-class term: a
            ``fraction`` of its draws picks the other class by D's running score of that class
            pair (:class:`~cmav.tasks.paired_gan.HardNegativeConfig`); off by default (the paper).
        pixel_loss: ``'l1'`` or ``'l2'`` (AE only).
        ema_decay: decay of the EMA of G (and of a trained encoder), ramped up as
            ``min(decay, (1 + it) / (10 + it))``; the EMA copy is what validation, sample sheets
            and :meth:`generate` use.
        diff_augment: DiffAugment-style differentiable augmentation of every discriminator input
            (real, fake and mismatched alike); off by default.
        sample_every_n_steps: iterations (batches) between TensorBoard sample sheets; 0 = never.
        samples: sample-sheet options.
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
    """

    condition_key = "audio"
    target_key = "image"
    name = "S2I"
    checkpoint_key = "cmav_s2i"
    variant_terms = VARIANT_TERMS
    encoder_ckpt_arg = "audio_encoder_ckpt"
    encoder_source = "sound classifier"

    def __init__(
        self,
        variant: Variant = "s2i_c",
        encoder_mode: EncoderMode = "frozen",
        audio_encoder_ckpt: str | None = None,
        image_size: int = 64,
        wrong_class_term: bool | None = None,
        wrong_player_term: bool | None = None,
        generator: GeneratorConfig = GeneratorConfig(),
        discriminator: DiscriminatorConfig = DiscriminatorConfig(),
        encoder: AudioEncoderConfig = AudioEncoderConfig(),
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
        audio_shape: list[int] | None = None,
    ) -> None:
        super().__init__()
        # plain dicts in the hyper-parameters: save_hyperparameters reads these locals
        generator, discriminator, encoder = plain(generator), plain(discriminator), plain(encoder)
        g_optimizer, d_optimizer, loss_weights = plain(g_optimizer), plain(d_optimizer), plain(loss_weights)
        hard_negatives = plain(hard_negatives)
        diff_augment, samples = plain(diff_augment), plain(samples)
        self.save_hyperparameters()
        self._init_gan(audio_encoder_ckpt)

    # ------------------------------------------------------------------ hooks

    def _missing_encoder_message(self) -> str:
        return (
            f"encoder_mode='{self.hparams.encoder_mode}' needs audio_encoder_ckpt: the checkpoint of the sound "
            "classifier (train it with `cmav fit --config experiments/audio_classifier.yaml`, then pass e.g. "
            "--model.init_args.audio_encoder_ckpt runs/audio_classifier/checkpoints/last.ckpt), "
            "or use encoder_mode='scratch'"
        )

    def _load_pretrained_encoder(self, path: str | None) -> AudioEncoder:
        clf = load_sound_classifier(path, "S2I")  # type: ignore[arg-type]
        # not into hparams.encoder: logged as encoder_loaded instead (PairedGANTask._loaded_encoder says why)
        self.encoder_config = clf.audio_encoder_config
        self._encoder_features = clf.trained_features
        self._encoder_class_names = list(clf.hparams.class_names)
        self.hparams.audio_shape = list(clf.model.input_shape)  # type: ignore[union-attr]
        return clf.model  # type: ignore[return-value]

    def _shapes_known(self) -> bool:
        return self.hparams.audio_shape is not None

    def _new_encoder(self) -> AudioEncoder:
        return self.encoder_config.build(AudioEncoder, self.hparams.audio_shape, self.hparams.n_classes)

    def target_shape(self) -> tuple[int, int, int]:
        s = int(self.hparams.image_size)
        return (3, s, s)

    def _learn_shapes(self, dm) -> None:
        self.hparams.audio_shape = list(dm.train_full.tensors.audio.shape[1:])

    def _check_data(self, dm) -> None:
        check_encoder_input(self.model.encoder.input_shape, self._encoder_features, dm,
                            self.hparams.audio_encoder_ckpt)  # fmt: skip

    def _gather_condition(self, index: Tensor) -> Tensor:
        return gather_audio(self._train_tensors, index, self.device)

    def _gather_target(self, index: Tensor) -> Tensor:
        return gather_images(self._train_tensors, index, self.device)

    def _log_sheet(self, writer, fixed: dict) -> None:
        """Sample sheet (rows: classes; columns: real frame | EMA-G samples for the fixed noise),
        and once the inputs: their features as images and their sound
        (:meth:`~cmav.tasks.paired_gan.PairedGANTask._log_inputs`)."""
        from cmav.viz import labelled_grid

        audio = fixed["audio"].to(self.device)
        real = fixed["image"]
        k = self.eval_z.shape[0]
        zs = self.eval_z.repeat(audio.shape[0], 1)
        fake = self.generate(audio.repeat_interleave(k, 0), zs).cpu().view(audio.shape[0], k, *real.shape[1:])
        rows = [[to_uint8_frame(real[r])] + [to_uint8_frame(fake[r, j]) for j in range(k)]
                for r in range(real.shape[0])]  # fmt: skip
        cell = max(64, self.hparams.image_size)
        sheet = labelled_grid(rows, fixed["names"], ["real"] + [f"z{j}" for j in range(k)], cell_size=cell)
        writer.add_image("samples/ema", np.asarray(sheet), logger_step(self), dataformats="HWC")
        self._log_inputs(writer, fixed, pictures=True, rendering=False)


def load_s2i(path: str | Path) -> S2ITask:
    """Rebuild an :class:`S2ITask` (CPU, eval mode) from its checkpoint for generation/evaluation.

    Needs neither the data nor the sound-classifier checkpoint it was trained from: the
    encoder's architecture is stored in the S2I checkpoint. ``trained_encoder_mode`` records the
    mode it was trained with.
    """
    task = load_paired_gan(S2ITask, path, lambda arch: {"audio_shape": arch["input_shape"]})
    assert isinstance(task, S2ITask)
    return task


__all__ = [
    "DiscriminatorConfig",
    "GeneratorConfig",
    "LossWeights",
    "S2ITask",
    "SampleConfig",
    "SoundToImage",
    "ema_decay_at",
    "generator_adversarial_loss",
    "load_s2i",
    "lms_to_audio",
    "pair_discriminator_loss",
]
