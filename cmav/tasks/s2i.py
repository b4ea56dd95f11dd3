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
fresh one (``'scratch'``).

Step counting: training uses manual optimisation with two optimisers (G and D), and Lightning's
``global_step`` counts EVERY optimiser step, so it advances by 2 per batch for the GAN variants
(1 for ``ae``); ``trainer.max_steps`` is therefore twice the number of GAN iterations.
:attr:`S2ITask.iteration` counts batches (it is saved in checkpoints); sample logging and the
EMA ramp use it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmav.data.instruments import INSTRUMENTS
from cmav.models import (
    AudioEncoder,
    ConditionalGenerator,
    EncoderOutput,
    ExponentialMovingAverage,
    PairAwareDiscriminator,
)
from cmav.tasks.classifier import _load_checkpoint, load_sound_classifier, own_hyperparameters
from cmav.tasks.common import (
    AdamConfig,
    AudioEncoderConfig,
    ImageAugment,
    ImageAugmentConfig,
    coerce,
    datamodule_of,
    plain,
    tensorboard_writer,
)
from cmav.tasks.pairs import NegativeSampler, gather_audio, gather_images

Variant = Literal["s2i_c", "s2i_n", "ae"]
EncoderMode = Literal["frozen", "finetune", "scratch"]

# (wrong_class_term, wrong_player_term) when not given explicitly
VARIANT_TERMS = {"s2i_c": (True, True), "s2i_n": (False, False), "ae": (False, False)}


@dataclass(frozen=True)
class GeneratorConfig:
    """:class:`ConditionalGenerator` options; the paper's 10-d noise. The condition size is the
    encoder's feature size (128) and the output size is ``image_size``."""

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


@dataclass(frozen=True)
class LossWeights:
    """Loss weights.

    The discriminator loss is ``BCE(real pair -> 1) + sum_i w_i * BCE(negative_i -> 0) / sum_i w_i``
    over the active negatives (fake pair, wrong-class pair, wrong-player pair): with equal weights
    the negatives are averaged, as in GAN-CLS. ``pixel``: the AE's L1/L2 weight.
    ``encoder_class``: optional cross-entropy on the encoder's class logits when the encoder is
    trained (finetune/scratch), keeping its feature class-discriminative; 0 = off.
    """

    fake: float = 1.0
    wrong_class: float = 1.0
    wrong_player: float = 1.0
    pixel: float = 1.0
    encoder_class: float = 0.0


@dataclass(frozen=True)
class SampleConfig:
    """What the TensorBoard sample sheets show: ``per_class`` fixed noise vectors drawn from
    ``noise_seed``; ``log_audio`` adds Griffin-Lim renderings of the fixed input LMS."""

    per_class: int = 4
    noise_seed: int = 1234
    log_audio: bool = True
    griffin_lim_iters: int = 32


class SoundToImage(nn.Module):
    """Audio encoder + conditional generator: ``(LMS, z) -> image in [-1, 1]``."""

    def __init__(self, encoder: AudioEncoder, generator: ConditionalGenerator) -> None:
        super().__init__()
        self.encoder = encoder
        self.generator = generator

    def forward(self, audio: Tensor, z: Tensor) -> Tensor:
        return self.generator(z, self.encoder.embed(audio))


def pair_discriminator_loss(logit_real: Tensor, negatives: list[tuple[float, Tensor]]) -> Tensor:
    """BCE(real pair -> 1) + the weighted mean of BCE(negative -> 0) over ``(weight, logits)``.

    With equal weights the negatives (fake, wrong-class, wrong-player pairs) are averaged, as in
    GAN-CLS. Shared by :class:`S2ITask` and the bare-loop benchmark so both train the same thing.
    """
    loss_real = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
    total_w = sum(w for w, _ in negatives)
    loss_neg = sum(w * F.binary_cross_entropy_with_logits(lg, torch.zeros_like(lg)) for w, lg in negatives)
    return loss_real + loss_neg / max(total_w, 1e-12)


def generator_adversarial_loss(logit_fake: Tensor) -> Tensor:
    """Non-saturating generator loss: BCE(D(G(z, a), a) -> 1)."""
    return F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))


def ema_decay_at(iteration: int, max_decay: float) -> float:
    """EMA decay ramped up from 0.1 so early averages are not dominated by the random init."""
    return min(max_decay, (1.0 + iteration) / (10.0 + iteration))


def lms_to_audio(lms_db: Tensor, features, n_iter: int = 32) -> Tensor:
    """Waveform ``(N, samples)`` from LMS in dB ``(N, 1, n_mels, frames)``: minimum-norm inverse of
    the mel filter bank, then Griffin-Lim phase recovery. The LMS has no phase, so this is an
    approximation for listening, not the original audio."""
    import torchaudio

    n_stft = features.n_fft // 2 + 1
    fb = torchaudio.functional.melscale_fbanks(
        n_stft, features.f_min, features.f_max if features.f_max is not None else features.sample_rate / 2,
        features.n_mels, features.sample_rate, norm="slaney", mel_scale="slaney",
    )  # fmt: skip
    # pinv once instead of torchaudio's InverseMelScale, whose batched lstsq takes seconds on CPU
    inverse = torch.linalg.pinv(fb.T)  # (n_stft, n_mels)
    mel_power = torch.pow(10.0, lms_db.float().cpu().squeeze(1) / 10.0)
    power = (inverse @ mel_power).clamp(min=0.0)
    gl = torchaudio.transforms.GriffinLim(
        n_fft=features.n_fft, hop_length=features.hop_length, power=2.0, n_iter=n_iter
    )
    wave = gl(power)
    return wave / wave.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8)


class S2ITask(L.LightningModule):
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
        n_classes: the scratch encoder's class count (its head is used only by
            ``loss_weights.encoder_class``).
        g_optimizer: Adam for G (and a trained encoder); paper: 2e-4, betas (0.5, 0.999).
        d_optimizer: Adam for D; paper: 2e-4, betas (0.5, 0.999).
        loss_weights: see :class:`LossWeights`.
        pixel_loss: ``'l1'`` or ``'l2'`` (AE only).
        ema_decay: decay of the EMA of G (and of a trained encoder), ramped up as
            ``min(decay, (1 + it) / (10 + it))``; the EMA copy is what validation, sample sheets
            and :meth:`generate` use.
        diff_augment: DiffAugment-style differentiable augmentation of every discriminator input
            (real, fake and mismatched alike); off by default.
        sample_every_n_steps: iterations (batches) between TensorBoard sample sheets; 0 = never.
        samples: sample-sheet options.
        seed: seed of the negative sampler's generator (offset by the process rank).
    """

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
        pixel_loss: Literal["l1", "l2"] = "l1",
        ema_decay: float = 0.999,
        diff_augment: ImageAugmentConfig = ImageAugmentConfig(),
        sample_every_n_steps: int = 500,
        samples: SampleConfig = SampleConfig(),
        seed: int = 0,
    ) -> None:
        super().__init__()
        if variant not in VARIANT_TERMS:
            raise ValueError(f"variant must be one of {sorted(VARIANT_TERMS)}, got {variant!r}")
        if encoder_mode not in ("frozen", "finetune", "scratch"):
            raise ValueError(f"encoder_mode must be 'frozen', 'finetune' or 'scratch', got {encoder_mode!r}")
        if pixel_loss not in ("l1", "l2"):
            raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {pixel_loss!r}")
        if encoder_mode != "scratch" and not audio_encoder_ckpt:
            raise ValueError(
                f"encoder_mode='{encoder_mode}' needs audio_encoder_ckpt: the checkpoint of the sound classifier "
                "(train it with `cmav fit --config experiments/audio_classifier.yaml`, then pass e.g. "
                "--model.init_args.audio_encoder_ckpt runs/audio_classifier/checkpoints/last.ckpt), "
                "or use encoder_mode='scratch'"
            )
        # plain dicts in the hyper-parameters: save_hyperparameters reads these locals
        generator, discriminator, encoder = plain(generator), plain(discriminator), plain(encoder)
        g_optimizer, d_optimizer, loss_weights = plain(g_optimizer), plain(d_optimizer), plain(loss_weights)
        diff_augment, samples = plain(diff_augment), plain(samples)
        self.save_hyperparameters()
        self.automatic_optimization = False

        wc_default, wp_default = VARIANT_TERMS[variant]
        self.wrong_class_term = wc_default if wrong_class_term is None else bool(wrong_class_term)
        self.wrong_player_term = wp_default if wrong_player_term is None else bool(wrong_player_term)
        self.is_gan = variant != "ae"
        if not self.is_gan and (self.wrong_class_term or self.wrong_player_term):
            raise ValueError("variant 'ae' has no discriminator: wrong_class_term/wrong_player_term must be off")
        self.encoder_mode = encoder_mode
        self.gen_config = coerce(GeneratorConfig, generator)
        self.disc_config = coerce(DiscriminatorConfig, discriminator)
        self.g_opt_config = coerce(AdamConfig, g_optimizer)
        self.d_opt_config = coerce(AdamConfig, d_optimizer)
        self.weights = coerce(LossWeights, loss_weights)
        self.sample_config = coerce(SampleConfig, samples)

        if encoder_mode == "scratch":
            self.encoder_config = coerce(AudioEncoderConfig, encoder)
            audio_encoder = self.encoder_config.build(AudioEncoder, (1, 128, 44), n_classes)
        else:
            clf = load_sound_classifier(audio_encoder_ckpt, "S2I")  # type: ignore[arg-type]
            self.encoder_config = clf.audio_encoder_config
            audio_encoder = clf.model  # type: ignore[assignment]
        assert isinstance(audio_encoder, AudioEncoder)
        if encoder_mode == "frozen":
            audio_encoder.requires_grad_(False)
            audio_encoder.eval()

        g = self.gen_config
        gen = ConditionalGenerator(
            out_shape=(3, image_size, image_size), z_dim=g.z_dim, cond_dim=audio_encoder.feature_dim,
            cond_proj_dim=g.cond_proj_dim, base_channels=g.base_channels, max_channels=g.max_channels,
            start_size=g.start_size,
        )  # fmt: skip
        self.net = SoundToImage(audio_encoder, gen)
        self.discriminator: PairAwareDiscriminator | None = None
        if self.is_gan:
            d = self.disc_config
            self.discriminator = PairAwareDiscriminator(
                in_shape=(3, image_size, image_size), cond_dim=audio_encoder.feature_dim,
                cond_proj_dim=d.cond_proj_dim, base_channels=d.base_channels, max_channels=d.max_channels,
                spectral_norm=d.spectral_norm, final_size=d.final_size,
            )  # fmt: skip
        # a submodule, so the EMA weights are in the state_dict and checkpoints
        self.ema = ExponentialMovingAverage(self.net, decay=ema_decay)
        self.d_augment = ImageAugment(coerce(ImageAugmentConfig, diff_augment))
        noise = torch.Generator().manual_seed(self.sample_config.noise_seed)
        self.register_buffer("eval_z", torch.randn(self.sample_config.per_class, g.z_dim, generator=noise))

        self.iteration = 0
        """Training batches done (``global_step`` counts optimiser steps: 2 per GAN batch)."""
        self.sampler: NegativeSampler | None = None
        self._train_tensors = None
        self._rng = torch.Generator().manual_seed(seed)
        self._fixed: dict | None = None
        self._features = None
        self._logged_inputs = False

    # ------------------------------------------------------------------ public API

    @property
    def z_dim(self) -> int:
        return self.gen_config.z_dim

    @torch.no_grad()
    def generate(self, audio_lms: Tensor, z: Tensor | None = None, use_ema: bool = True) -> Tensor:
        """Images in [-1, 1] ``(N, 3, S, S)`` for LMS ``(N, 1, n_mels, frames)``, in eval mode.

        ``z`` ``(N, z_dim)`` defaults to fresh standard-normal noise.
        """
        net = self.ema.module if use_ema else self.net
        audio_lms = audio_lms.to(self.device, torch.float32)
        if z is None:
            z = torch.randn(audio_lms.shape[0], self.z_dim, device=self.device)
        modes = {m: m.training for m in net.modules()}
        net.eval()
        try:
            return net(audio_lms, z.to(self.device))
        finally:
            for m, mode in modes.items():
                m.training = mode

    def train(self, mode: bool = True) -> "S2ITask":
        super().train(mode)
        if self.encoder_mode == "frozen":
            # a frozen encoder keeps its BatchNorm statistics too
            self.net.encoder.eval()
        return self

    # ------------------------------------------------------------------ setup

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self._check_ddp()
        dm = datamodule_of(self)
        if dm is None:
            if stage == "fit" and (self.wrong_class_term or self.wrong_player_term):
                raise RuntimeError(
                    "S2ITask's wrong-class/wrong-player terms draw from the in-memory train tensors: "
                    "train with an AudioVisualDataModule"
                )
            return
        if dm.hparams.image_size != self.hparams.image_size:
            raise ValueError(f"model image_size={self.hparams.image_size} but data image_size={dm.hparams.image_size}")
        self._features = dm.features
        names = list(dm.class_names)
        trains_head = self.weights.encoder_class > 0 and self.encoder_mode != "frozen"
        if trains_head and len(names) != self.net.encoder.n_classes:
            raise ValueError(f"encoder has {self.net.encoder.n_classes} classes but the data {len(names)}")
        if stage == "fit" and (self.wrong_class_term or self.wrong_player_term):
            t = dm.train_full.tensors
            self._train_tensors = t
            self.sampler = NegativeSampler(
                t.labels, t.tracks, pool=dm.train.indices, class_names=names, warn=self.wrong_player_term
            )
            if self.wrong_player_term and not self.sampler.wrong_player_possible:
                warnings.warn("no class has two train tracks: the wrong-player term is off for this run", stacklevel=2)
        rank = self.global_rank if self._trainer is not None else 0
        self._rng.manual_seed(self.hparams.seed + rank)
        self._fixed = self._pick_fixed_items(dm.val, names)

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
                "S2ITask under DDP needs unused-parameter detection (G and D take separate backward passes): "
                "use strategy='ddp_find_unused_parameters_true' (or 'ddp_spawn_find_unused_parameters_true', "
                "or DDPStrategy(find_unused_parameters=True))"
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
        }

    # ------------------------------------------------------------------ training

    def _encode(self, audio: Tensor) -> EncoderOutput:
        """Encoder features and logits; no graph when the encoder is frozen."""
        enc = self.net.encoder
        if self.encoder_mode == "frozen":
            with torch.no_grad():
                return enc.forward_features(audio)
        return enc.forward_features(audio)

    def _disc(self, x: Tensor, cond: Tensor) -> Tensor:
        assert self.discriminator is not None
        return self.discriminator(self.d_augment(x), cond)

    def _ema_update(self) -> None:
        it = self.iteration
        self.ema.update(self.net, decay=ema_decay_at(it, self.hparams.ema_decay))

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
        audio, real, labels = batch["audio"], batch["image"], batch["label"]
        n = real.shape[0]
        neg = self.sampler.sample(labels, batch["track"], self._rng) if self.sampler is not None else None
        use_wc = self.wrong_class_term and neg is not None and bool(neg.wrong_class_valid.any())
        use_wp = self.wrong_player_term and neg is not None and bool(neg.wrong_player_valid.any())

        # wrong-class audio goes through the same encoder pass (same BatchNorm batch statistics)
        enc_in = audio
        if use_wc:
            enc_in = torch.cat([audio, gather_audio(self._train_tensors, neg.wrong_class, self.device)])
        enc = self._encode(enc_in)
        cond = enc.feature[:n]
        z = torch.randn(n, self.z_dim, device=self.device)
        fake = self.net.generator(z, cond)

        # ---- discriminator: real pair -> 1; fake and mismatched pairs -> 0
        self.toggle_optimizer(opt_d)
        c = cond.detach()
        logit_real = self._disc(real, c)
        negatives: dict[str, tuple[float, Tensor]] = {}
        logit_fake = self._disc(fake.detach(), c)
        negatives["fake"] = (self.weights.fake, logit_fake)
        if use_wc:
            ok = neg.wrong_class_valid.to(self.device)
            negatives["wrong_class"] = (self.weights.wrong_class, self._disc(real[ok], enc.feature[n:].detach()[ok]))
        if use_wp:
            ok = neg.wrong_player_valid
            frames = gather_images(self._train_tensors, neg.wrong_player[ok], self.device)
            negatives["wrong_player"] = (self.weights.wrong_player, self._disc(frames, c[ok.to(self.device)]))
        d_loss = pair_discriminator_loss(logit_real, list(negatives.values()))
        self.manual_backward(d_loss)
        opt_d.step()
        opt_d.zero_grad(set_to_none=True)
        self.untoggle_optimizer(opt_d)

        # ---- generator: non-saturating, D(G(z, a), a) -> 1
        self.toggle_optimizer(opt_g)
        logit_gen = self._disc(fake, cond)
        g_loss = generator_adversarial_loss(logit_gen)
        enc_loss = self._encoder_class_loss(enc.logits[:n], labels)
        total_g = g_loss if enc_loss is None else g_loss + enc_loss
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
        for name in ("wrong_class", "wrong_player"):
            if name in negatives:
                logs[f"train/d_{name}"] = torch.sigmoid(negatives[name][1].detach()).mean()
        if enc_loss is not None:
            logs["train/encoder_ce"] = enc_loss.detach()
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=n)
        self.log("g", g_loss.detach(), prog_bar=True, logger=False, batch_size=n)
        self.log("d", d_loss.detach(), prog_bar=True, logger=False, batch_size=n)

    def _pixel_loss(self, fake: Tensor, real: Tensor) -> Tensor:
        return F.l1_loss(fake, real) if self.hparams.pixel_loss == "l1" else F.mse_loss(fake, real)

    def _ae_step(self, batch: dict[str, Tensor]) -> None:
        opt = self.optimizers()
        audio, real, labels = batch["audio"], batch["image"], batch["label"]
        enc = self._encode(audio)
        # the pixel loss makes G ignore z (it regresses to the mean frame): that is the baseline
        z = torch.randn(real.shape[0], self.z_dim, device=self.device)
        fake = self.net.generator(z, enc.feature)
        pix = self._pixel_loss(fake, real)
        loss = self.weights.pixel * pix
        enc_loss = self._encoder_class_loss(enc.logits, labels)
        if enc_loss is not None:
            loss = loss + enc_loss
        self.manual_backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        self.log("train/pixel_loss", pix.detach(), on_step=True, prog_bar=True, batch_size=real.shape[0])

    def configure_optimizers(self):
        g_params = list(self.net.generator.parameters())
        if self.encoder_mode != "frozen":
            g_params += list(self.net.encoder.parameters())
        opt_g = self.g_opt_config.build(g_params)
        if not self.is_gan:
            return opt_g
        assert self.discriminator is not None
        return [opt_g, self.d_opt_config.build(self.discriminator.parameters())]

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Cheap signals only (the full evaluation is separate): EMA-G pixel error, D's view of
        real and EMA-generated pairs, and the encoder's class accuracy."""
        audio, real, labels = batch["audio"], batch["image"], batch["label"]
        n = real.shape[0]
        # deterministic noise per batch, so epochs are comparable
        g = torch.Generator().manual_seed(self.sample_config.noise_seed + batch_idx)
        z = torch.randn(n, self.z_dim, generator=g).to(self.device)
        fake = self.ema(audio, z)
        enc = self.net.encoder.forward_features(audio)
        logs = {
            "val/l1": (fake - real).abs().mean(),
            "val/encoder_acc": (enc.logits.argmax(1) == labels).float().mean(),
        }
        if self.discriminator is not None:
            logs["val/d_real"] = torch.sigmoid(self.discriminator(real, enc.feature)).mean()
            logs["val/d_fake"] = torch.sigmoid(self.discriminator(fake, enc.feature)).mean()
        self.log_dict(logs, on_epoch=True, sync_dist=True, batch_size=n)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """EMA-G images for the batch's audio (fresh noise), with labels and item indices."""
        return {"image": self.generate(batch["audio"]), "label": batch["label"], "index": batch["index"]}

    # ------------------------------------------------------------------ TensorBoard

    @torch.no_grad()
    def _log_samples(self) -> None:
        """Sample sheet (rows: classes; columns: real frame | EMA-G samples for the fixed noise)."""
        if self._fixed is None or self.global_rank != 0:
            return
        writer = tensorboard_writer(self)
        if writer is None:
            return
        from cmav.viz import labelled_grid

        audio = self._fixed["audio"].to(self.device)
        real = self._fixed["image"]
        k = self.eval_z.shape[0]
        zs = self.eval_z.repeat(audio.shape[0], 1)
        fake = self.generate(audio.repeat_interleave(k, 0), zs).cpu().view(audio.shape[0], k, *real.shape[1:])

        def to_uint8(x: Tensor) -> np.ndarray:
            return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()

        rows = [[to_uint8(real[r])] + [to_uint8(fake[r, j]) for j in range(k)] for r in range(real.shape[0])]
        cell = max(64, self.hparams.image_size)
        sheet = labelled_grid(rows, self._fixed["names"], ["real"] + [f"z{j}" for j in range(k)], cell_size=cell)
        writer.add_image("samples/ema", np.asarray(sheet), self.iteration, dataformats="HWC")
        if not self._logged_inputs:
            self._logged_inputs = True
            self._log_inputs(writer)

    def _log_inputs(self, writer) -> None:
        """The fixed input LMS as images (low frequencies at the bottom) and, optionally, as sound."""
        assert self._fixed is not None
        lms = self._fixed["audio"]
        lo = lms.amin(dim=(1, 2, 3), keepdim=True)
        hi = lms.amax(dim=(1, 2, 3), keepdim=True)
        img = ((lms - lo) / (hi - lo).clamp(min=1e-6)).flip(-2)
        for name, x in zip(self._fixed["names"], img):
            writer.add_image(f"inputs/lms/{name}", x, 0, dataformats="CHW")
        if not (self.sample_config.log_audio and self._features is not None):
            return
        if getattr(self._features, "kind", "lms") != "lms":  # Griffin-Lim inverts a mel spectrogram only
            return
        try:
            waves = lms_to_audio(lms, self._features, self.sample_config.griffin_lim_iters)
        except Exception as exc:  # listening aid only: never stop training for it
            warnings.warn(f"Griffin-Lim rendering of the input LMS failed ({exc}); no audio logged", stacklevel=2)
            return
        for name, w in zip(self._fixed["names"], waves):
            writer.add_audio(f"inputs/audio/{name}", w.unsqueeze(0), 0, sample_rate=self._features.sample_rate)

    # ------------------------------------------------------------------ checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        enc = self.net.encoder
        checkpoint["cmav_s2i"] = {
            "iteration": self.iteration,
            "sampler_rng": self._rng.get_state(),
            "encoder": {
                "config": plain(self.encoder_config),
                "n_classes": enc.n_classes,
                "input_shape": list(enc.input_shape),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("cmav_s2i")
        if not state:
            return
        self.iteration = int(state["iteration"])
        rank = self.global_rank if self._trainer is not None else 0
        if rank == 0:
            self._rng.set_state(state["sampler_rng"])
        else:
            # the checkpoint holds rank 0's stream; other ranks get their own, still deterministic
            self._rng.manual_seed(self.hparams.seed + 7919 * rank + self.iteration)


def load_s2i(path: str | Path) -> S2ITask:
    """Rebuild an :class:`S2ITask` (CPU, eval mode) from its checkpoint for generation/evaluation.

    Needs neither the data nor the sound-classifier checkpoint it was trained from: the
    encoder's architecture is stored in the S2I checkpoint. ``trained_encoder_mode`` records the
    mode it was trained with.
    """
    ckpt = _load_checkpoint(path)
    hp = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    arch = ckpt.get("cmav_s2i", {}).get("encoder")
    if not hp or arch is None:
        raise ValueError(f"{path}: not an S2ITask checkpoint")
    trained_mode = hp.get("encoder_mode", "frozen")
    hp.update(encoder_mode="scratch", audio_encoder_ckpt=None, encoder=arch["config"], n_classes=arch["n_classes"])
    with own_hyperparameters():
        task = S2ITask(**hp)
    task.load_state_dict(ckpt["state_dict"])
    task.iteration = int(ckpt["cmav_s2i"]["iteration"])
    task.trained_encoder_mode = trained_mode
    return task.eval()


__all__ = [
    "DiscriminatorConfig",
    "GeneratorConfig",
    "LossWeights",
    "S2ITask",
    "SampleConfig",
    "SoundToImage",
    "load_s2i",
    "lms_to_audio",
]
