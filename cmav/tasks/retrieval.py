"""Retrieval/grounding training: a global or dense audio-image model with symmetric InfoNCE.

``architecture='global'`` trains :class:`~cmav.models.retrieval.GlobalAVModel` (AVE-Net /
Wav2CLIP style), ``'dense'`` trains :class:`~cmav.models.retrieval.DenseAVModel` (DenseAV style).
Both: symmetric InfoNCE over in-batch negatives with a learnable temperature (its log is a
parameter; the logit scale is clamped at ``1 / temperature.min``, CLIP's 100 by default). Under
DDP the embeddings of every process are gathered with gradients (``all_gather(sync_grads=True)``)
so each process's queries see every process's negatives.

The audio encoder is a fresh one (``encoder_mode='scratch'``) or the sound classifier's
(``'frozen'`` / ``'finetune'``, from a :class:`~cmav.tasks.classifier.ClassifierTask` checkpoint).
The image encoder likewise (``image_encoder_mode``): fresh, or the image classifier's
(``experiments/image_encoder.yaml``), frozen as Wav2CLIP keeps CLIP's image tower, or fine-tuned.

Validation (every epoch, on the whole validation split): ``val/loss``, the training loss over the
split in its order in blocks of the validation batch size (in-block negatives only; computed once
the split is gathered, so the same for any number of processes); audio->image and image->audio
Recall@1/5/10, median rank, MRR and mAP, class-level (same instrument) and instance-level (the
paired item), logged as ``val/a2i_class_R@1`` and so on; where the data set has instrument
masks (cmav's stand-in), the localisation AP / mIoU / pointing game of the paired heatmaps
(``val/loc_ap`` ...), and a TensorBoard sheet of heatmaps (one validation item per class).
``cmav test`` logs the same as ``test/...`` and ``heatmaps/test``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from cmav.data.instruments import INSTRUMENTS
from cmav.metrics.localization import localization_report
from cmav.metrics.retrieval import cross_modal_report
from cmav.models import AudioEncoder, ImageEncoder
from cmav.models.eval_mode import eval_mode
from cmav.models.retrieval import (
    DenseAVModel,
    GlobalAVModel,
    aggregate_volume,
    disentanglement_loss,
    similarity_volume,
    symmetric_info_nce,
)
from cmav.tasks.classifier import _load_checkpoint, load_image_classifier, load_sound_classifier, own_hyperparameters
from cmav.tasks.common import (
    AdamConfig,
    AudioEncoderConfig,
    ImageAugment,
    ImageAugmentConfig,
    ImageEncoderConfig,
    LrSchedule,
    batch_accuracy,
    check_encoder_input,
    check_lr_schedule,
    coerce,
    datamodule_of,
    plain,
    refuse_stochastic_weight_averaging,
    scramble_colours,
    tensorboard_writer,
    with_lr_schedule,
)
from cmav.tasks.random_state import restore_random_state, save_random_state, separate_rank_streams
from cmav.tasks.tensorboard import log_hyperparameters, log_training_loss, logger_step

Architecture = Literal["global", "dense"]
EncoderMode = Literal["frozen", "finetune", "scratch"]
IgnoreNegatives = Literal["none", "same_track", "same_class"]


@dataclass(frozen=True)
class HeadConfig:
    """Projection heads (MLP): ``layers`` Linear layers, ``hidden_dim`` wide, into ``embed_dim``."""

    embed_dim: int = 128
    hidden_dim: int = 256
    layers: int = 2


@dataclass(frozen=True)
class DenseConfig:
    """Dense-model options (ignored by ``architecture='global'``).

    ``n_heads``: 1 or 2; ``audio_freq``: ``'pool'`` (one token per time step) or ``'keep'``
    (one per frequency x time cell); ``audio_block`` / ``image_block``: which encoder block is
    tokenised (-1 = last; with 64-px frames and 4 blocks the last image map is 4x4, block -2 is
    8x8); ``disentangle_weight``: weight of mean ``|s_head1 * s_head2|`` (two heads only).
    """

    n_heads: int = 1
    audio_freq: Literal["pool", "keep"] = "pool"
    audio_block: int = -1
    image_block: int = -1
    disentangle_weight: float = 0.0


@dataclass(frozen=True)
class TemperatureConfig:
    """InfoNCE temperature: starts at ``init`` (CLIP: 0.07), learned when ``learnable``, never
    below ``min`` (logit scale clamped at ``1 / min``; CLIP: 100)."""

    init: float = 0.07
    learnable: bool = True
    min: float = 0.01


class RetrievalTask(L.LightningModule):
    """Audio-image contrastive training of a global or dense similarity model.

    Args:
        architecture: ``'global'`` or ``'dense'`` (see the module docstring).
        encoder_mode: ``'scratch'`` (fresh audio encoder), ``'frozen'`` (the sound classifier's,
            fixed, BatchNorm statistics included) or ``'finetune'`` (initialised from it).
        audio_encoder_ckpt: the sound classifier's checkpoint (frozen/finetune).
        image_size: frame side; the CLI links it to ``data.image_size``.
        audio_encoder: the scratch audio encoder's options (frozen/finetune use the checkpoint's).
        image_encoder: a scratch image encoder's options (frozen/finetune use the checkpoint's);
            ``arch: stats`` only with ``architecture='dense'``.
        head: projection-head options.
        dense: dense-model options.
        temperature: InfoNCE temperature options.
        optimizer: Adam for everything trained.
        lr_schedule: ``'cosine'``: the learning rate decays to 0 over the run
            (``trainer.max_epochs``/``max_steps``), CLIP's schedule; the weights then settle at the
            end, so BatchNorm's running statistics (what evaluation uses) catch up with them.
            ``'constant'``: no schedule.
        finetune_lr_scale: learning-rate factor of a fine-tuned encoder, audio or image (keeps
            what the classifier learnt while the heads settle).
        finetune_norm: how a fine-tuned encoder runs while its weights train: ``'train'`` (batch
            statistics, running statistics updated, dropout on) or ``'eval'`` (as at inference: the
            classifier's batch-norm statistics kept, no dropout; common when fine-tuning on little
            data, and how every fine-tuned encoder ran before stop 47).
        ignore_negatives: in-batch items that are NOT used as negatives of a query (its own pair
            always stays the positive): ``'none'`` (plain InfoNCE), ``'same_track'`` (the other
            chunks of the same performance: overlapping near-copies) or ``'same_class'`` (every
            item of the same instrument). Within a training set each performance has its own
            player, background and melody, so plain InfoNCE rewards matching a melody to its
            background; ``'same_class'`` leaves the instrument as the only thing to match.
        augment: training-time image augmentation (off by default).
        colour_scramble: training-time colour scrambling of the frames (the same as
            ``augment.colour_scramble``, kept as its own switch): a random permutation of
            the RGB channels per frame, a quarter of them made grey. Each stand-in performance
            has its own background and clothing colours, a shortcut to "which performance" that
            does not carry over to unseen players; shapes (the instrument) survive the scrambling.
        n_classes: class count of the scratch towers' (unused) class heads; a pretrained encoder keeps
            its classifier's (the checkpoint records each tower's).
        input_shape: ``(C, H, W)`` of one LMS; filled from the data (leave unset).
        class_names: filled from the data (leave unset).
        log_heatmaps: TensorBoard heatmap sheet at the end of every validation.
        image_encoder_mode: ``'scratch'`` (fresh image encoder, the default), ``'frozen'`` or
            ``'finetune'``: the image classifier's encoder (``image_encoder_ckpt``).
        image_encoder_ckpt: the image classifier's checkpoint (``ClassifierTask`` with
            ``image_model='encoder'``, e.g. from ``experiments/image_encoder.yaml``; never the
            image judge, which only scores).
    """

    def __init__(
        self,
        architecture: Architecture = "global",
        encoder_mode: EncoderMode = "scratch",
        audio_encoder_ckpt: str | None = None,
        image_size: int = 64,
        audio_encoder: AudioEncoderConfig = AudioEncoderConfig(),
        image_encoder: ImageEncoderConfig = ImageEncoderConfig(),
        head: HeadConfig = HeadConfig(),
        dense: DenseConfig = DenseConfig(),
        temperature: TemperatureConfig = TemperatureConfig(),
        optimizer: AdamConfig = AdamConfig(lr=1e-3, betas=(0.9, 0.999)),
        lr_schedule: LrSchedule = "cosine",
        finetune_lr_scale: float = 0.1,
        finetune_norm: Literal["train", "eval"] = "train",
        ignore_negatives: IgnoreNegatives = "none",
        augment: ImageAugmentConfig = ImageAugmentConfig(),
        colour_scramble: bool = False,
        n_classes: int = len(INSTRUMENTS),
        input_shape: list[int] | None = None,
        class_names: list[str] | None = None,
        log_heatmaps: bool = True,
        image_encoder_mode: EncoderMode = "scratch",
        image_encoder_ckpt: str | None = None,
    ) -> None:
        super().__init__()
        if architecture not in ("global", "dense"):
            raise ValueError(f"architecture must be 'global' or 'dense', got {architecture!r}")
        if encoder_mode not in ("frozen", "finetune", "scratch"):
            raise ValueError(f"encoder_mode must be 'frozen', 'finetune' or 'scratch', got {encoder_mode!r}")
        if image_encoder_mode not in ("frozen", "finetune", "scratch"):
            raise ValueError(
                f"image_encoder_mode must be 'frozen', 'finetune' or 'scratch', got {image_encoder_mode!r}"
            )
        if finetune_norm not in ("train", "eval"):
            raise ValueError(f"finetune_norm must be 'train' or 'eval', got {finetune_norm!r}")
        if image_encoder_mode != "scratch" and not image_encoder_ckpt:
            raise ValueError(
                f"image_encoder_mode='{image_encoder_mode}' needs image_encoder_ckpt, the image classifier's "
                "checkpoint (`cmav fit --config experiments/image_encoder.yaml` writes "
                "runs/image_encoder/checkpoints/last.ckpt), or use image_encoder_mode='scratch'"
            )
        if encoder_mode != "scratch" and not audio_encoder_ckpt:
            raise ValueError(
                f"encoder_mode='{encoder_mode}' needs audio_encoder_ckpt, the sound classifier's checkpoint "
                "(`cmav fit --config experiments/audio_classifier.yaml` writes "
                "runs/audio_classifier/checkpoints/last.ckpt), or use encoder_mode='scratch'"
            )
        # plain dicts in the hyper-parameters (weights_only checkpoints); save_hyperparameters reads these locals
        audio_encoder, image_encoder = plain(audio_encoder), plain(image_encoder)
        head, dense = plain(head), plain(dense)
        temperature, optimizer, augment = plain(temperature), plain(optimizer), plain(augment)
        self.save_hyperparameters()
        self.encoder_mode = encoder_mode
        self.image_encoder_mode = image_encoder_mode
        self.image_encoder_config = coerce(ImageEncoderConfig, image_encoder)
        self.head_config = coerce(HeadConfig, head)
        self.dense_config = coerce(DenseConfig, dense)
        self.temp_config = coerce(TemperatureConfig, temperature)
        self.optimizer_config = coerce(AdamConfig, optimizer)
        self.augment = ImageAugment(coerce(ImageAugmentConfig, augment))
        t = self.temp_config
        if not 0 < t.min <= t.init:
            raise ValueError(f"temperature must satisfy 0 < min <= init, got min={t.min}, init={t.init}")
        check_lr_schedule(lr_schedule)
        if ignore_negatives not in ("none", "same_track", "same_class"):
            raise ValueError(f"ignore_negatives must be 'none', 'same_track' or 'same_class', got {ignore_negatives!r}")
        if self.dense_config.disentangle_weight > 0 and self.dense_config.n_heads != 2:
            raise ValueError("dense.disentangle_weight > 0 needs dense.n_heads = 2")
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / t.init)), requires_grad=t.learnable)

        self.audio_encoder_config = coerce(AudioEncoderConfig, audio_encoder)
        pretrained: AudioEncoder | None = None
        self._encoder_features = None  # the front end the pretrained audio encoder was trained on
        if encoder_mode != "scratch":
            clf = load_sound_classifier(audio_encoder_ckpt, "retrieval")  # type: ignore[arg-type]
            self.audio_encoder_config = clf.audio_encoder_config
            self._encoder_features = clf.trained_features
            pretrained = clf.model  # type: ignore[assignment]
        pretrained_image: ImageEncoder | None = None
        if image_encoder_mode != "scratch":
            img = load_image_classifier(image_encoder_ckpt, "retrieval")  # type: ignore[arg-type]
            if int(img.hparams.image_size) != int(image_size):
                raise ValueError(f"{image_encoder_ckpt}: the image classifier takes {img.hparams.image_size}-pixel "
                                 f"frames, this task {image_size}")  # fmt: skip
            if img.model.n_classes != n_classes:
                raise ValueError(f"{image_encoder_ckpt}: the image classifier has {img.model.n_classes} classes, "
                                 f"this task {n_classes}")  # fmt: skip
            self.image_encoder_config = img.image_encoder_config
            pretrained_image = img.model  # type: ignore[assignment]
        if architecture == "global" and self.image_encoder_config.arch == "stats":
            # refused here, not when the towers are built from the data at fit time
            raise ValueError("image_encoder.arch='stats' does not work with architecture='global': the global "
                             "model scores every location of the image feature map (heatmaps, localisation), "
                             "which a statistics-pooling encoder has no feature layer for; use arch 'conv' "
                             "or architecture='dense'")  # fmt: skip
        # in a list: kept out of the module tree until it is built in (now, or at setup)
        self._pending_image: list[ImageEncoder | None] = [pretrained_image]
        self.net: GlobalAVModel | DenseAVModel | None = None
        if pretrained is not None or input_shape is not None:
            self._build(pretrained)

        self._val: dict[str, list[Tensor]] = {}
        self._val_batch = 0  # the largest validation batch of the epoch
        self._val_masks: Tensor | None = None
        self._fixed: dict | None = None
        self._masks_note: str | None = None

    # ------------------------------------------------------------------ model

    def _build(self, pretrained: AudioEncoder | None = None, audio_classes: int | None = None,
               image_classes: int | None = None) -> None:  # fmt: skip
        """Build the towers and the similarity model. ``audio_classes`` / ``image_classes``: the
        (unused) class-head sizes of scratch towers, ``n_classes`` by default; a checkpoint records
        each tower's own (a pretrained sound classifier's need not be the task's)."""
        h = self.hparams
        if pretrained is not None:
            audio = pretrained
            h.input_shape = list(audio.input_shape)
        else:
            audio = self.audio_encoder_config.build(AudioEncoder, h.input_shape, audio_classes or h.n_classes)
        if self.encoder_mode == "frozen":
            audio.requires_grad_(False)
        # set here, not left as loaded (a pretrained encoder comes in eval mode and Lightning leaves modes be)
        audio.train(self.training and not self._runs_in_eval(self.encoder_mode))
        image = self._pending_image[0]
        if image is None:
            size = (3, h.image_size, h.image_size)
            image = self.image_encoder_config.build(ImageEncoder, size, image_classes or h.n_classes)
        self._pending_image = [None]
        if self.image_encoder_mode == "frozen":
            image.requires_grad_(False)
        image.train(self.training and not self._runs_in_eval(self.image_encoder_mode))
        c, d = self.head_config, self.dense_config
        if h.architecture == "global":
            self.net = GlobalAVModel(audio, image, c.embed_dim, c.hidden_dim, c.layers)
        else:
            self.net = DenseAVModel(
                audio, image, c.embed_dim, c.hidden_dim, c.layers, n_heads=d.n_heads, audio_freq=d.audio_freq,
                audio_block=d.audio_block, image_block=d.image_block,
            )  # fmt: skip

    @property
    def model(self) -> GlobalAVModel | DenseAVModel:
        """The similarity model (built from the data's LMS shape at ``setup`` for a scratch encoder)."""
        if self.net is None:
            raise RuntimeError("model not built: train/validate it with the data, or load a checkpoint")
        return self.net

    @property
    def kind(self) -> str:
        return str(self.hparams.architecture)

    @property
    def logit_scale(self) -> Tensor:
        """Inverse temperature, at most ``1 / temperature.min``: the parameter is clamped in place after
        every optimiser step (:meth:`on_train_batch_end`), as CLIP does. Clamping it here only
        (still done, for a parameter loaded from elsewhere) gives it no gradient past the bound, so one
        step over it froze the temperature at its minimum for the rest of the run."""
        return self.log_logit_scale.clamp(max=math.log(1.0 / self.temp_config.min)).exp()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            self.log_logit_scale.clamp_(max=math.log(1.0 / self.temp_config.min))

    def _runs_in_eval(self, mode: str) -> bool:
        """Whether an encoder of this mode stays in eval mode while the task trains: frozen, or
        fine-tuned with ``finetune_norm='eval'``."""
        return mode == "frozen" or (mode == "finetune" and self.hparams.get("finetune_norm", "train") == "eval")

    def train(self, mode: bool = True) -> RetrievalTask:
        super().train(mode)
        if self._runs_in_eval(self.encoder_mode) and self.net is not None:
            self.net.audio_encoder.eval()  # a frozen encoder keeps its BatchNorm statistics too
        if self._runs_in_eval(self.image_encoder_mode) and self.net is not None:
            self.net.image_encoder.eval()
        return self

    @torch.no_grad()
    def embed(self, audio: Tensor | None = None, image: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Eval-mode embeddings of LMS and/or frames in [-1, 1] (either may be None)."""
        with eval_mode(self):
            a = self.model.encode_audio(audio.to(self.device, torch.float32)) if audio is not None else None
            v = self.model.encode_image(image.to(self.device, torch.float32)) if image is not None else None
        return a, v

    # ------------------------------------------------------------------ setup

    def configure_model(self) -> None:
        """Builds the two towers from the data module's LMS shape and classes, unless the
        hyper-parameters (a checkpoint's) already built them. Lightning calls this hook before
        training; weight-averaging callbacks (``EMAWeightAveraging``) call it in their own set-up,
        before ``setup``, to copy the model they average."""
        if self.net is not None:
            return
        dm = datamodule_of(self)
        if dm is None:
            raise RuntimeError("RetrievalTask needs an AudioVisualDataModule (or input_shape) to build its model")
        self.hparams.input_shape = list(dm.train_full.tensors.audio.shape[1:])
        self.hparams.class_names = list(dm.class_names)
        self._build()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            refuse_stochastic_weight_averaging(self)
        dm = datamodule_of(self)
        if dm is None:
            return  # nothing to check; configure_model refuses a task that has neither data nor a checkpoint
        h = self.hparams
        if dm.hparams.image_size != h.image_size:
            raise ValueError(f"model image_size={h.image_size} but data image_size={dm.hparams.image_size}")
        if h.input_shape is not None:
            check_encoder_input(h.input_shape, self._encoder_features, dm, h.audio_encoder_ckpt)
        if h.class_names is None:
            h.class_names = list(dm.class_names)
        if dm.val is not None and len(dm.val):
            self._fixed = self._pick_fixed(dm.val.tensors)
            self._val_masks = self._load_masks(dm)

    def _load_masks(self, dm) -> Tensor | None:
        from cmav.data.masks import MasksMissing, load_split_masks

        if dm.hparams.layout != "suburmp":
            self._masks_note = "localisation metrics skipped: only the Sub-URMP layout has instrument masks"
            return None
        t = dm.val.tensors
        try:
            return load_split_masks(dm.root, "validation", t.stems, t.class_names, t.labels, self.hparams.image_size)
        except MasksMissing as exc:
            self._masks_note = f"localisation metrics skipped: {exc}"
            warnings.warn(self._masks_note, stacklevel=2)
            return None

    @staticmethod
    def _pick_fixed(t) -> dict:
        """One validation item per class (the middle one in time) for the heatmap sheet."""
        rows = []
        for c in range(len(t.class_names)):
            idx = (t.labels == c).nonzero().flatten()
            if len(idx):
                rows.append(int(idx[len(idx) // 2]))
        index = torch.tensor(rows, dtype=torch.long)
        return {"index": index, "audio": t.audio[index].float(), "image": t.images[index].float().div(127.5).sub(1.0),
                "names": [t.stems[i] for i in rows]}  # fmt: skip

    # ------------------------------------------------------------------ loss

    def _gather(self, x: Tensor) -> Tensor:
        """Every process's rows (with gradients), this process's block at ``rank * B``."""
        stacked = self.all_gather(x, sync_grads=True)
        if stacked.requires_grad:
            # The gather's backward on gloo scatters the gradients into buffers shaped like them
            # (empty_like): a non-contiguous gradient (the dense loss's einsum gives a permuted one)
            # is then filled as if contiguous, scrambling the image tower's gradients without an
            # error (pytorch#24836, #192920). Contiguous gradients go through intact.
            stacked.register_hook(lambda g: g.contiguous())
        return stacked.flatten(0, 1)

    def _ignored(self, labels: Tensor | None, tracks: Tensor | None, world: int) -> Tensor | None:
        """``(B, W*B)`` True where a key must not be a negative of a query (``ignore_negatives``)."""
        mode = self.hparams.ignore_negatives
        if mode == "none" or labels is None:
            return None
        key = labels.long()
        if mode == "same_track":
            key = key * 100_000 + tracks.long()  # type: ignore[union-attr]
        key_all = self.all_gather(key).flatten() if world > 1 else key
        ignored = key.view(-1, 1) == key_all.view(1, -1)
        if mode == "same_track":
            ignored &= (tracks >= 0).view(-1, 1)  # type: ignore[operator]  # unknown tracks (paired layout): none
        return ignored

    def contrastive_loss(self, audio_emb: Tensor, image_emb: Tensor, labels: Tensor | None = None,
                         tracks: Tensor | None = None, gather: bool = True,
                         ) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
        """Symmetric InfoNCE (+ the dense disentanglement term) of a batch of paired embeddings.

        ``labels``/``tracks`` are needed only for ``ignore_negatives``. ``gather``: under DDP, every
        process's embeddings are the negatives; False: this batch's only.
        """
        world = self._trainer.world_size if self._trainer is not None and gather else 1
        if world > 1:
            a_all, v_all = self._gather(audio_emb), self._gather(image_emb)
            offset = self.global_rank * audio_emb.shape[0]
        else:
            a_all, v_all, offset = audio_emb, image_emb, 0
        scale = self.logit_scale
        logs: dict[str, Tensor] = {}
        if self.kind == "global":
            s_a2i = audio_emb @ v_all.T
            s_i2a = image_emb @ a_all.T
            reg = None
        else:
            vol = similarity_volume(audio_emb, v_all)  # (B, W*B, K, T, L)
            s_a2i = aggregate_volume(vol)
            s_i2a = aggregate_volume(similarity_volume(a_all, image_emb)).T
            w = self.dense_config.disentangle_weight
            reg = w * disentanglement_loss(vol) if w > 0 else None
        b = audio_emb.shape[0]
        target = torch.arange(b, device=s_a2i.device) + offset
        logits_a2i, logits_i2a = scale * s_a2i, scale * s_i2a
        unmasked_a2i = logits_a2i
        ignored = self._ignored(labels, tracks, world)
        if ignored is not None:
            ignored[torch.arange(b, device=ignored.device), target] = False  # the pair stays the positive
            # masked after scaling: -inf * scale would give the temperature a NaN gradient
            logits_a2i = logits_a2i.masked_fill(ignored, float("-inf"))
            logits_i2a = logits_i2a.masked_fill(ignored, float("-inf"))
        nce = symmetric_info_nce(logits_a2i, logits_i2a, offset)
        loss = nce if reg is None else nce + reg
        if reg is not None:  # else the loss is the InfoNCE term alone
            logs["nce"] = nce.detach()
            logs["disentangle"] = reg.detach()
        logs["batch_a2i_acc"] = batch_accuracy(logits_a2i, target, before_masking=unmasked_a2i)
        return loss, logs

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        image = self.augment(batch["image"])
        if self.hparams.colour_scramble:
            image = scramble_colours(image)
        a = self.model.encode_audio(batch["audio"])
        v = self.model.encode_image(image)
        loss, logs = self.contrastive_loss(a, v, batch.get("label"), batch.get("track"))
        b = a.shape[0]
        log_training_loss(self, loss, b)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True, on_epoch=False, batch_size=b)
        self.log("train/temperature", 1.0 / self.logit_scale.detach(), on_step=True, on_epoch=False, batch_size=b)
        return loss

    def configure_optimizers(self):  # the optimizer, with its schedule when there is one
        net = self.model
        groups, taken = [], set()
        for encoder, mode in ((net.audio_encoder, self.encoder_mode), (net.image_encoder, self.image_encoder_mode)):
            if mode == "finetune":  # its own, lower rate; frozen ones have no trainable parameters
                params = [p for p in encoder.parameters() if p.requires_grad]
                taken |= {id(p) for p in params}
                groups.append({"params": params, "lr": self.optimizer_config.lr * self.hparams.finetune_lr_scale})
        groups.insert(0, {"params": [p for p in self.parameters() if p.requires_grad and id(p) not in taken]})
        o = self.optimizer_config
        opt = torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        return with_lr_schedule(opt, self.hparams.lr_schedule, self._trainer)

    # ------------------------------------------------------------------ validation

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        a = self.model.encode_audio(batch["audio"])
        v = self.model.encode_image(batch["image"])
        self._val_batch = max(self._val_batch, a.shape[0])
        store = {"audio": a, "image": v, "label": batch["label"], "index": batch["index"]}
        if "track" in batch:
            store["track"] = batch["track"]
        if self._val_masks is not None:
            # float32, as `cmav evaluate retrieval` scores them: float16 rounds close values into ties
            store["heatmap"] = self.model.heatmap(batch["audio"], batch["image"]).float()
        for k, x in store.items():
            self._val.setdefault(k, []).append(x.detach())

    def _collect(self) -> dict[str, Tensor]:
        parts = {k: torch.cat(v) for k, v in self._val.items()}
        self._val = {}
        if self.trainer.world_size > 1:
            # DistributedSampler pads with repeats: gather everything, keep each index once
            n = self.all_gather(torch.tensor(parts["index"].shape[0], device=self.device)).max()
            gathered = {}
            for k, x in parts.items():
                pad = int(n) - x.shape[0]
                if pad:
                    fill = -1 if k == "index" else 0
                    x = torch.cat([x, x.new_full((pad, *x.shape[1:]), fill)])
                gathered[k] = self.all_gather(x).flatten(0, 1)
            parts = gathered
        # first occurrence of every item, in split order (so rows line up with the split's tensors)
        first: dict[int, int] = {}
        for pos, i in enumerate(parts["index"].tolist()):
            if i >= 0:
                first.setdefault(i, pos)
        sel = torch.tensor([first[i] for i in sorted(first)], dtype=torch.long)
        return {k: x.cpu()[sel] for k, x in parts.items()}

    def on_validation_epoch_end(self) -> None:
        self._score_split("val")

    def _score_split(self, prefix: str) -> None:
        """Log the collected split's loss, retrieval and localisation metrics as ``<prefix>/...``
        (``val`` or ``test``) and its heatmap sheet as ``heatmaps/<prefix>``."""
        if not self._val:
            return
        parts = self._collect()
        batch_size, self._val_batch = self._val_batch_size(), 0
        if self.trainer.sanity_checking:
            return
        scores = self.model.scores(parts["audio"].float(), parts["image"].float())
        report = cross_modal_report(scores, parts["label"])
        logs = {f"{prefix}/loss": self._split_loss(parts, batch_size)}
        for direction in ("a2i", "i2a"):
            for rel in ("class", "instance"):
                m = report[direction][rel]
                for key in ("R@1", "R@5", "R@10", "median_rank", "MRR", "mAP"):
                    logs[f"{prefix}/{direction}_{rel}_{key}"] = float(m[key])
        if self._val_masks is not None and "heatmap" in parts:
            loc = localization_report(parts["heatmap"].float(), self._val_masks[parts["index"]])
            logs.update({f"{prefix}/loc_{k}": float(loc[k]) for k in ("ap", "miou", "pointing")})
        # every rank holds the gathered embeddings, so all log the same values
        self.log_dict(logs)
        self._log_heatmaps(prefix)

    def _val_batch_size(self) -> int:
        """The validation loader's batch size (its largest batch here when it has none, e.g. a batch sampler)."""
        loaders = self.trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        size = getattr(loader, "batch_size", None)
        return int(size) if size else self._val_batch

    @torch.no_grad()
    def _split_loss(self, parts: dict[str, Tensor], b: int) -> float:
        """The training loss over the validation split in its order, in blocks of ``b`` (the loader's batch size).

        Computed here on the collected split, not per step: a process's batches hold other items for
        other process counts, gathered negatives would be W times as many and include the
        DistributedSampler's padding repeats, so ``val/loss`` would depend on the number of processes.
        """
        total, n = 0.0, parts["label"].shape[0]
        for start in range(0, n, b):
            block = {k: parts[k][start : start + b].to(self.device) for k in ("audio", "image", "label", "track")
                     if k in parts}  # fmt: skip
            loss, _ = self.contrastive_loss(block["audio"].float(), block["image"].float(), block["label"],
                                            block.get("track"), gather=False)  # fmt: skip
            total += float(loss) * block["label"].shape[0]
        return total / n

    @torch.no_grad()
    def _log_heatmaps(self, prefix: str) -> None:
        if not self.hparams.log_heatmaps or self._fixed is None or self.global_rank != 0:
            return
        writer = tensorboard_writer(self)
        if writer is None:
            return
        from cmav.retrieval.heatmap import heatmap_sheet, to_uint8_frame

        f = self._fixed
        heat = self.model.heatmap(f["audio"].to(self.device), f["image"].to(self.device)).cpu()
        frames = [to_uint8_frame(x) for x in f["image"]]
        masks = self._val_masks[f["index"]] if self._val_masks is not None else None
        sheet = heatmap_sheet(frames, {self.kind: list(heat)}, f["names"], masks=masks)
        writer.add_image(f"heatmaps/{prefix}", np.asarray(sheet), logger_step(self), dataformats="HWC")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._score_split("test")

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Audio and image embeddings of the batch, with labels and item indices."""
        a, v = self.embed(batch["audio"], batch["image"])
        return {"audio": a, "image": v, "label": batch["label"], "index": batch["index"]}

    # ------------------------------------------------------------------ checkpoints

    def on_fit_start(self) -> None:
        separate_rank_streams(self)
        log_hyperparameters(self, ["val/a2i_class_mAP", "val/i2a_class_mAP", "val/a2i_instance_R@1",
                                   "val/i2a_instance_R@1", "val/loss"], self._loaded_encoders())  # fmt: skip

    def _loaded_encoders(self) -> dict[str, Any]:
        """The settings of the towers loaded from classifiers, which ``audio_encoder`` /
        ``image_encoder`` (a scratch tower's settings) do not describe."""
        loaded = {}
        if self.encoder_mode != "scratch":
            loaded["audio_encoder_loaded"] = plain(self.audio_encoder_config)
        if self.image_encoder_mode != "scratch":
            loaded["image_encoder_loaded"] = plain(self.image_encoder_config)
        return loaded

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_random_state(checkpoint, self)
        enc, image = self.model.audio_encoder, self.model.image_encoder
        checkpoint["cmav_retrieval"] = {
            "audio_encoder": {
                "config": plain(self.audio_encoder_config),
                "n_classes": enc.n_classes,
                "input_shape": list(enc.input_shape),
            },
            "image_encoder": {"config": plain(self.image_encoder_config), "n_classes": image.n_classes},
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_random_state(self, checkpoint)


def load_retrieval(path: str | Path) -> RetrievalTask:
    """Rebuild a :class:`RetrievalTask` (CPU, eval mode) from its checkpoint, without the data or the
    classifier checkpoints (the encoders' architectures are stored in it).
    ``trained_encoder_mode`` / ``trained_image_encoder_mode`` record the modes it was trained with."""
    ckpt = _load_checkpoint(path)
    hp = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    arch = ckpt.get("cmav_retrieval", {}).get("audio_encoder")
    if not hp or arch is None:
        raise ValueError(f"{path}: not a RetrievalTask checkpoint")
    trained_mode = hp.get("encoder_mode", "scratch")
    trained_image_mode = hp.get("image_encoder_mode", "scratch")
    # built below, once each tower's class count is known (input_shape=None: not in the constructor)
    hp.update(encoder_mode="scratch", audio_encoder_ckpt=None, audio_encoder=arch["config"], input_shape=None)
    image_arch = ckpt["cmav_retrieval"].get("image_encoder")
    if image_arch is not None:
        hp.update(image_encoder_mode="scratch", image_encoder_ckpt=None, image_encoder=image_arch["config"])
    with own_hyperparameters():
        task = RetrievalTask(**hp)
    task.hparams.input_shape = list(arch["input_shape"])
    # a pretrained sound classifier keeps its own class count; the image tower was built with the task's
    # n_classes (older checkpoints record no image count: that one)
    image_classes = (image_arch or {}).get("n_classes", task.hparams.n_classes)
    task._build(audio_classes=arch["n_classes"], image_classes=image_classes)
    task.load_state_dict(ckpt["state_dict"])
    task.trained_encoder_mode = trained_mode
    task.trained_image_encoder_mode = trained_image_mode
    return task.eval()


__all__ = [
    "DenseConfig",
    "HeadConfig",
    "ImageEncoderConfig",
    "RetrievalTask",
    "TemperatureConfig",
    "load_retrieval",
]
