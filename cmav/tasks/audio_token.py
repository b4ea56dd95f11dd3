"""Training the audio-token embedder (AudioToken) against a frozen text-to-image diffusion model.

:class:`AudioTokenTask` wraps :class:`cmav.diffusion.AudioTokenModel`: the sound classifier's
:class:`AudioEncoder` (frozen), the pipeline folder's diffusion model (frozen) and the embedder,
the only thing with an optimiser. Checkpoints hold the embedder and the audio encoder (weights and
architecture) but NOT the diffusion model: they name its folder (``pipeline``) and a fingerprint
of it, and :func:`load_audio_token` loads the folder again::

    cmav fit --config experiments/audio_token.yaml
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from cmav.data.errors import DataError
from cmav.diffusion.audio_token import AudioTokenModel, EmbedderConfig, PromptConfig, TokenLossConfig
from cmav.diffusion.pipeline import check_pipeline_folder, load_pipeline
from cmav.models import AudioEncoder
from cmav.tasks.classifier import _load_checkpoint, class_names_difference, load_sound_classifier, own_hyperparameters
from cmav.tasks.common import (
    AdamConfig,
    EncoderConfig,
    check_encoder_input,
    coerce,
    datamodule_of,
    plain,
    tensorboard_writer,
)
from cmav.tasks.random_state import restore_random_state, save_random_state, separate_rank_streams
from cmav.tasks.tensorboard import log_hyperparameters, log_training_loss, logger_step
from cmav.viz.tensors import to_uint8_frame

CHECKPOINT_KEY = "cmav_audio_token"
"""Key of the checkpoint entry that marks (and describes) an audio-token checkpoint."""
TOKEN_WIDTH_KEY = "model.embedder.pool.score.weight"
"""State-dict entry whose last dimension is the audio token's width (the attention pool's score layer)."""


def pipeline_fingerprint(path: str | Path, sample_bytes: int = 1 << 20) -> str:
    """A short hash of a pipeline folder: every file's relative path and size, every JSON's text, and
    the first and last ``sample_bytes`` of every other file (retrained weights change it)."""
    root = check_pipeline_folder(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}:{size}\n".encode())
        with f.open("rb") as fh:
            if f.suffix == ".json" or size <= 2 * sample_bytes:
                h.update(fh.read())
            else:
                h.update(fh.read(sample_bytes))
                fh.seek(size - sample_bytes)
                h.update(fh.read(sample_bytes))
    return h.hexdigest()[:16]


class AudioTokenTask(L.LightningModule):
    """Only the audio-token embedder trains; the audio encoder and the diffusion model stay frozen.

    Args:
        pipeline: the diffusion pipeline folder (local path; Stable Diffusion layout).
        audio_encoder_ckpt: the sound classifier's checkpoint (its encoder, frozen; its classes).
        image_size: the data's frame side (the CLI links it to ``data.image_size``); frames are
            resized to the pipeline's own size.
        embedder: which encoder blocks, hidden width, time length.
        prompt: template and placeholder.
        loss: weights of the L1 and classification terms (the denoising loss has weight 1).
        optimizer: Adam for the embedder.
        sample_every_n_epochs: TensorBoard sheet (real frame | audio token | text label, one
            validation item per class) every n epochs (0 = never).
        sample_steps: DDIM steps of those samples.
        guidance_scale: classifier-free guidance of those samples.
        class_names: filled from the sound classifier (leave unset).
        audio_encoder: the encoder's architecture, filled from the sound classifier (leave unset;
            a checkpoint is reloaded from it without the classifier's checkpoint).
    """

    def __init__(
        self,
        pipeline: str = "runs/diffusion_base/pipeline",
        audio_encoder_ckpt: str | None = "runs/audio_classifier/checkpoints/last.ckpt",
        image_size: int = 64,
        embedder: EmbedderConfig = EmbedderConfig(),
        prompt: PromptConfig = PromptConfig(),
        loss: TokenLossConfig = TokenLossConfig(),
        optimizer: AdamConfig = AdamConfig(lr=1e-3, betas=(0.9, 0.999)),
        sample_every_n_epochs: int = 1,
        sample_steps: int = 25,
        guidance_scale: float = 3.0,
        class_names: list[str] | None = None,
        audio_encoder: dict | None = None,
    ) -> None:
        super().__init__()
        embedder, prompt, loss, optimizer = plain(embedder), plain(prompt), plain(loss), plain(optimizer)
        self.save_hyperparameters()
        self.embedder_config = coerce(EmbedderConfig, embedder)
        self.prompt_config = coerce(PromptConfig, prompt)
        self.loss_config = coerce(TokenLossConfig, loss)
        self.optimizer_config = coerce(AdamConfig, optimizer)
        # a saved checkpoint's weights go into the module after it is built, so Lightning may load
        # state dicts that lack the (frozen, separately stored) diffusion model
        self.strict_loading = False
        h = self.hparams
        self._encoder_features = None  # the front end the sound classifier was trained on (when loaded here)
        if audio_encoder is not None:
            encoder = coerce(EncoderConfig, audio_encoder["config"]).build(
                AudioEncoder, audio_encoder["input_shape"], audio_encoder["n_classes"])  # fmt: skip
        elif audio_encoder_ckpt:
            clf = load_sound_classifier(audio_encoder_ckpt, "audio-token")
            encoder = clf.model  # type: ignore[assignment]
            self._encoder_features = clf.trained_features
            h.class_names = list(clf.hparams.class_names)
            h.audio_encoder = {"config": plain(clf.audio_encoder_config), "input_shape": list(encoder.input_shape),
                               "n_classes": encoder.n_classes}  # fmt: skip
        else:
            raise ValueError(
                "AudioTokenTask needs audio_encoder_ckpt, the sound classifier's checkpoint (`cmav fit --config "
                "experiments/audio_classifier.yaml` writes runs/audio_classifier/checkpoints/last.ckpt)"
            )
        self.pipeline_fingerprint = pipeline_fingerprint(pipeline)
        diffusion = load_pipeline(pipeline)
        self.model = AudioTokenModel(encoder, diffusion, self.embedder_config, self.prompt_config, h.class_names)
        self._fixed: dict | None = None

    # ------------------------------------------------------------------ data

    def setup(self, stage: str) -> None:
        if stage == "fit":
            refuse_weight_averaging_of_the_embedder(self)
        dm = datamodule_of(self)
        if dm is None:
            return
        h = self.hparams
        if dm.hparams.image_size != h.image_size:
            raise ValueError(f"model image_size={h.image_size} but data image_size={dm.hparams.image_size}")
        if why := class_names_difference(h.class_names, dm.class_names):
            where = h.audio_encoder_ckpt or dm.root  # a token rebuilt from its own checkpoint names no classifier
            raise DataError(where, f"this sound classifier was trained on other classes than the data's ({why}): the "
                                   "token's label prompts and classification term would read each of the data's "
                                   "labels as the classifier's class at that position. Train the sound classifier "
                                   "on this data")  # fmt: skip
        check_encoder_input(self.model.audio_encoder.input_shape, self._encoder_features, dm,
                            h.audio_encoder_ckpt)  # fmt: skip
        if dm.val is not None and len(dm.val):
            from cmav.tasks.retrieval import RetrievalTask

            t = dm.val.tensors
            fixed = RetrievalTask._pick_fixed(t)  # the middle validation item of every class
            labels = t.labels[fixed["index"]].long()
            self._fixed = {**fixed, "label": labels, "names": [t.class_names[int(y)] for y in labels]}

    # ------------------------------------------------------------------ training

    def train(self, mode: bool = True) -> AudioTokenTask:
        super().train(mode)
        self.model.train(mode)  # keeps the frozen parts in eval mode
        return self

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, logs = self.model.loss(batch["audio"], batch["image"], batch["label"], self.loss_config)
        b = batch["label"].shape[0]
        log_training_loss(self, loss, b)
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, on_step=True, on_epoch=False, batch_size=b)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, logs = self.model.loss(batch["audio"], batch["image"], batch["label"], self.loss_config)
        b = batch["label"].shape[0]
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=b)
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, on_epoch=True, sync_dist=True, batch_size=b)

    def on_validation_epoch_end(self) -> None:
        every = self.hparams.sample_every_n_epochs
        if self.trainer.sanity_checking or not every or (self.current_epoch + 1) % every:
            return
        self._log_samples()

    @torch.no_grad()
    def _log_samples(self) -> None:
        writer = tensorboard_writer(self)
        if writer is None or self._fixed is None or not self.trainer.is_global_zero:
            return
        from cmav.evaluation.token import label_images, token_images
        from cmav.viz import labelled_grid

        f, h = self._fixed, self.hparams
        kw = dict(seed=1234, steps=h.sample_steps, guidance_scale=h.guidance_scale)
        tok = token_images(self.model, f["audio"], **kw)
        txt = label_images(self.model, f["label"], **kw)
        cells = [[to_uint8_frame(r), to_uint8_frame(a), to_uint8_frame(t)] for r, a, t in zip(f["image"], tok, txt, strict=True)]
        sheet = labelled_grid(cells, f["names"], ["real", "audio token", "text label"],
                              cell_size=max(64, self.model.diffusion.image_size))  # fmt: skip
        writer.add_image("samples/val", np.asarray(sheet), logger_step(self), dataformats="HWC")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_config.build(self.model.embedder.parameters())

    # ------------------------------------------------------------------ checkpoints

    def on_fit_start(self) -> None:
        separate_rank_streams(self)
        log_hyperparameters(self, ["val/loss"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint["state_dict"]
        for k in [k for k in state if k.startswith("model.diffusion.")]:
            del state[k]  # frozen and stored in its own folder
        checkpoint[CHECKPOINT_KEY] = {"pipeline": str(self.hparams.pipeline), "fingerprint": self.pipeline_fingerprint}
        save_random_state(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # runs before Lightning loads the weights (resume, load_from_checkpoint): refuse a pipeline of
        # another width here, before torch's size-mismatch error, and warn on another folder
        path = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
        check_pipeline_fits(self, checkpoint, path, stacklevel=3)
        restore_random_state(self, checkpoint)


def refuse_weight_averaging_of_the_embedder(task: AudioTokenTask) -> None:
    """Refuse Lightning's weight-averaging callbacks, the ones
    :func:`cmav.tasks.common.refuse_weight_averaging` refuses in the tasks with an EMA of their own
    (whose message, about that EMA, would not fit here): the embedder is the only trained part, and
    the callback would average the frozen audio encoder and diffusion model too and store them in the
    checkpoint (``current_model_state``), which holds the embedder and the encoder."""
    from cmav.tasks.common import weight_averaging_callback

    cb = weight_averaging_callback(task)
    if cb is not None:
        name = type(cb).__name__
        raise ValueError(
            f"AudioTokenTask: the embedder is the only trained part (the audio encoder and the diffusion model "
            f"are frozen); the {name} callback would average them too and store the whole frozen diffusion "
            f"model in the checkpoint, which holds only the embedder and the encoder: remove the {name} callback"
        )


def check_pipeline_fits(task: AudioTokenTask, checkpoint: dict, path: str | Path, stacklevel: int = 2) -> None:
    """Refuse ``checkpoint``'s weights when ``task``'s pipeline folder has another text width (the
    token's); warn when the folder is not the one it was trained with (fingerprints differ)."""
    folder, info = task.hparams.pipeline, checkpoint.get(CHECKPOINT_KEY) or {}
    saved = checkpoint.get("state_dict", {}).get(TOKEN_WIDTH_KEY)
    width = task.model.diffusion.text_width
    if saved is not None and int(saved.shape[-1]) != width:
        raise ValueError(f"{path}: its audio token is {int(saved.shape[-1])} wide, but the text encoder of the pipeline "
                         f"folder {folder} is {width} wide: use the folder the token was trained with "
                         f"({info.get('pipeline')})")  # fmt: skip
    if task.pipeline_fingerprint != info.get("fingerprint"):
        warnings.warn(f"{folder} is not the pipeline folder {path} was trained with (fingerprints differ): the token "
                      "may mean nothing to this model", stacklevel=stacklevel + 1)  # fmt: skip


def is_audio_token_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is an :class:`AudioTokenTask` checkpoint (for ``cmav generate`` to dispatch on)."""
    return CHECKPOINT_KEY in _load_checkpoint(path)


def load_audio_token(path: str | Path, pipeline: str | Path | None = None,
                     device: str | torch.device = "cpu") -> AudioTokenTask:  # fmt: skip
    """Rebuild an :class:`AudioTokenTask` (eval mode, on ``device``) from its checkpoint and its
    diffusion pipeline folder (the one it was trained with, or ``pipeline``)."""
    ckpt = _load_checkpoint(path)
    info = ckpt.get(CHECKPOINT_KEY)
    hp = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    if info is None or not hp.get("audio_encoder"):
        raise ValueError(f"{path}: not an AudioTokenTask checkpoint")
    folder = Path(pipeline) if pipeline is not None else Path(info["pipeline"])
    if not folder.is_dir():
        error = NotADirectoryError if folder.exists() else FileNotFoundError
        what = "is not a folder (it is a file)" if folder.exists() else "does not exist"
        if pipeline is not None:  # the caller's path, not the checkpoint's: name the option it came from
            where = f"--pipeline (pipeline=...) {folder}" if folder.exists() else \
                f"--pipeline (pipeline=...): the diffusion pipeline folder {folder}"
            raise error(f"{where} {what}; pass the folder {path} was trained with ({info['pipeline']})")
        raise error(f"{path}: its diffusion pipeline folder {folder} {what}; pass the folder the token was trained "
                    "with (pipeline=... / --pipeline)")  # fmt: skip
    hp.update(pipeline=str(folder), audio_encoder_ckpt=None)
    try:
        with own_hyperparameters():
            task = AudioTokenTask(**hp)
    except ValueError as exc:  # e.g. a folder whose tokenizer lacks the template's or the labels' words
        raise ValueError(f"{path}: {exc}") from exc
    check_pipeline_fits(task, ckpt, path)
    missing, unexpected = task.load_state_dict(ckpt["state_dict"], strict=False)
    missing = [k for k in missing if not k.startswith("model.diffusion.")]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return task.to(device).eval()


__all__ = [
    "AudioTokenTask",
    "CHECKPOINT_KEY",
    "TOKEN_WIDTH_KEY",
    "check_pipeline_fits",
    "is_audio_token_checkpoint",
    "load_audio_token",
    "pipeline_fingerprint",
    "refuse_weight_averaging_of_the_embedder",
]
