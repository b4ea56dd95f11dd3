"""Training the offline default text-to-image diffusion model on the data's own frames.

:class:`DiffusionBaseTask` trains a small pixel-space ``UNet2DConditionModel`` and a small CLIP
text encoder (both from scratch) on every training frame captioned "a photo of a <instrument>
player", with the empty caption for a fraction of them (so classifier-free guidance works). Its
EMA weights are written as a pipeline folder (Stable Diffusion layout, no ``vae/``; see
:mod:`cmav.diffusion.pipeline`) at the end of every training epoch and of training: that folder is
what the audio-token branch loads, frozen, through :func:`cmav.diffusion.load_pipeline`::

    cmav fit --config experiments/diffusion_base.yaml     # writes runs/diffusion_base/pipeline/
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from cmav.diffusion.audio_token import OFFLINE_CAPTION, label_words
from cmav.diffusion.pipeline import PixelDiffusionConfig, TextToImageDiffusion, build_pixel_diffusion
from cmav.models.ema import ExponentialMovingAverage, ema_decay_at
from cmav.tasks.common import AdamConfig, coerce, datamodule_of, plain, refuse_weight_averaging, tensorboard_writer
from cmav.tasks.random_state import restore_random_state, save_random_state, separate_rank_streams
from cmav.tasks.tensorboard import log_hyperparameters, log_training_loss, logger_step
from cmav.viz.tensors import to_uint8_frame

CAPTION = OFFLINE_CAPTION


class DiffusionBaseTask(L.LightningModule):
    """The offline default diffusion model: a text-conditioned pixel-space UNet trained from scratch.

    Args:
        image_size: the data's frame side (the CLI links it to ``data.image_size``).
        pipeline_dir: where the EMA model is written as a pipeline folder (every epoch and at the end);
            unset, ``<trainer.default_root_dir>/pipeline``; ``""`` writes none.
        model: UNet / text encoder / noise schedule options; ``model.image_size`` is the side it
            generates at (frames are resized to it).
        caption: caption of a frame, ``{}`` = the class's words (``double_bass`` -> ``double bass``).
        uncond_prob: fraction of frames trained with the empty caption (classifier-free guidance).
        optimizer: Adam for the UNet and the text encoder.
        ema_decay: decay of the weights' moving average (ramped up from 0.1); the average is what
            is saved and sampled.
        sample_every_n_epochs: TensorBoard sheet of one sample per class every n epochs (0 = never).
        sample_steps: DDIM steps of those samples.
        guidance_scale: classifier-free guidance of those samples.
        class_names: filled from the data (leave unset).
    """

    def __init__(
        self,
        image_size: int = 64,
        pipeline_dir: str | None = None,
        model: PixelDiffusionConfig = PixelDiffusionConfig(),
        caption: str = CAPTION,
        uncond_prob: float = 0.1,
        optimizer: AdamConfig = AdamConfig(lr=2e-4, betas=(0.9, 0.999)),
        ema_decay: float = 0.999,
        sample_every_n_epochs: int = 1,
        sample_steps: int = 25,
        guidance_scale: float = 3.0,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if "{}" not in caption:
            raise ValueError(f"caption {caption!r} needs a '{{}}' where the class's words go")
        if not 0.0 <= uncond_prob < 1.0:
            raise ValueError(f"uncond_prob must be in [0, 1), got {uncond_prob}")
        model, optimizer = plain(model), plain(optimizer)
        self.save_hyperparameters()
        self.model_config = coerce(PixelDiffusionConfig, model)
        self.optimizer_config = coerce(AdamConfig, optimizer)
        self.diffusion: TextToImageDiffusion | None = None
        self.ema: ExponentialMovingAverage | None = None
        if class_names is not None:
            self._build()

    def captions(self) -> list[str]:
        """The caption of every class, in label order."""
        return [self.hparams.caption.format(label_words(c)) for c in self.hparams.class_names]

    def _build(self) -> None:
        cfg = dataclasses.replace(self.model_config, block_out_channels=tuple(self.model_config.block_out_channels))
        self.diffusion = build_pixel_diffusion(self.captions(), cfg)
        self._check_captions()
        # row y: class y's caption; last row: the empty caption
        ids = self.diffusion.tokenize(self.captions() + [""])
        self.register_buffer("caption_ids", ids, persistent=False)
        self.ema = ExponentialMovingAverage(self.diffusion, decay=self.hparams.ema_decay)

    def _check_captions(self) -> None:
        """Refuse captions the tokenizer would truncate (``max_length`` tokens, start and end included)
        and classes whose captions give the same tokens: either way the model could not tell classes apart."""
        names, captions = list(self.hparams.class_names), self.captions()
        limit = self.diffusion.max_length
        seen: dict[tuple[int, ...], str] = {}
        for name, caption in zip(names, captions, strict=True):
            ids = tuple(self.diffusion.tokenizer(caption, verbose=False).input_ids)  # not truncated
            if len(ids) > limit:
                raise ValueError(f"caption {caption!r} (class {name!r}) takes {len(ids)} tokens (start and end tokens "
                                 f"included) but model.max_length is {limit}: it would be cut short; raise "
                                 "model.max_length or shorten caption")  # fmt: skip
            if ids in seen:
                raise ValueError(f"classes {seen[ids]!r} and {name!r} have the same caption tokens ({caption!r}): the "
                                 "model could not tell them apart; change caption or the class names")  # fmt: skip
            seen[ids] = name

    @property
    def sampler(self) -> TextToImageDiffusion:
        """The model that is saved and sampled (the EMA copy)."""
        if self.ema is None:
            raise RuntimeError("model not built: train it with the data, or give class_names")
        return self.ema.module  # type: ignore[return-value]

    def setup(self, stage: str) -> None:
        if stage == "fit":
            refuse_weight_averaging(self, "denoiser")
        dm = datamodule_of(self)
        if dm is None:
            if self.diffusion is None:
                raise RuntimeError("DiffusionBaseTask needs an AudioVisualDataModule (or class_names) to build "
                                   "its model")  # fmt: skip
            return
        if dm.hparams.image_size != self.hparams.image_size:
            raise ValueError(f"model image_size={self.hparams.image_size} but data image_size={dm.hparams.image_size}")
        names = list(dm.class_names)
        if self.diffusion is None:
            self.hparams.class_names = names
            self._build()
        elif names != list(self.hparams.class_names):
            raise ValueError(f"the data's classes {names} differ from the model's {self.hparams.class_names}")

    def _loss(self, model: TextToImageDiffusion, batch: dict[str, Tensor], uncond_prob: float) -> Tensor:
        labels = batch["label"].long()
        ids = self.caption_ids[labels]
        if uncond_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < uncond_prob
            ids = torch.where(drop.view(-1, 1), self.caption_ids[-1].expand_as(ids), ids)
        return model.denoising_loss(batch["image"], model.encode_ids(ids))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self._loss(self.diffusion, batch, self.hparams.uncond_prob)
        log_training_loss(self, loss, batch["label"].shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        self.ema.update(self.diffusion, decay=ema_decay_at(int(self.ema.n_updates), self.hparams.ema_decay))

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss = self._loss(self.sampler, batch, 0.0)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=batch["label"].shape[0])

    def on_train_epoch_end(self) -> None:
        self._save_pipeline()
        every = self.hparams.sample_every_n_epochs
        if every and (self.current_epoch + 1) % every == 0:
            self._log_samples()

    def on_train_end(self) -> None:
        self._save_pipeline()

    def _save_pipeline(self) -> None:
        folder = self.hparams.pipeline_dir
        if folder is None:  # beside the run's checkpoints, so one --trainer.default_root_dir moves both
            folder = str(Path(self.trainer.default_root_dir) / "pipeline")
        if self.trainer.is_global_zero and folder:
            self.sampler.save(folder)

    @torch.no_grad()
    def _log_samples(self) -> None:
        writer = tensorboard_writer(self)
        if writer is None or not self.trainer.is_global_zero:
            return
        from cmav.viz import labelled_grid

        model = self.sampler
        cond = model.encode_ids(self.caption_ids[:-1])
        g = torch.Generator().manual_seed(1234)
        images = model.sample(cond, self.hparams.guidance_scale, self.hparams.sample_steps, "ddim", g)
        cells = [[to_uint8_frame(x)] for x in images]
        sheet = labelled_grid(cells, list(self.hparams.class_names), cell_size=max(64, model.image_size))
        # beside the epoch's metrics, which Lightning records at its last batch
        writer.add_image("samples/ema", np.asarray(sheet), logger_step(self, after_train_epoch=True), dataformats="HWC")

    def on_fit_start(self) -> None:
        separate_rank_streams(self)
        log_hyperparameters(self, ["val/loss"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_random_state(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_random_state(self, checkpoint)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_config.build(self.diffusion.parameters())

    def export(self, path: str | Path) -> Path:
        """Write the EMA model as a pipeline folder at ``path``."""
        return self.sampler.save(path)


__all__ = ["CAPTION", "DiffusionBaseTask"]
