"""Single-modality classifiers: the sound classifier, the image judge and the player judge.

One LightningModule, three uses (see ``experiments/``):

* ``modality='audio', target='label'``: the sound classifier; its :class:`AudioEncoder` is the
  frozen/fine-tuned condition encoder of S2I.
* ``modality='image', target='label'``: the image judge (an :class:`ImageJudge` trained on real
  frames only, used only to score generated frames).
* ``modality='image', target='label', image_model='encoder'``: the image classifier whose
  :class:`ImageEncoder` (the audio encoder's design on frames) is the frozen/fine-tuned condition
  encoder of I2S. It is a different network from the image judge, so I2S is never scored by
  what it was trained with.
* ``modality='image', target='track'``: the player judge; classes are the (instrument, track)
  pairs of the train split. Validation players never occur in train, so it is validated on the
  held-out tails of the train tracks (``data.holdout_tail > 0``), not on the validation split.

The class list (and the player mapping) are read from the data at ``setup`` and stored in the
hyper-parameters, so a checkpoint rebuilds the model without the data
(:func:`load_classifier`).
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmav.data.errors import DataError
from cmav.features import FrontEndConfig, front_end_config, front_end_differences
from cmav.metrics import classification_report
from cmav.metrics.classification import _argmax_or_none
from cmav.models import AudioEncoder, ConvEncoder, ImageEncoder, ImageJudge
from cmav.tasks.common import (
    AdamConfig,
    AudioEncoderConfig,
    ImageAugment,
    ImageAugmentConfig,
    ImageEncoderConfig,
    ImageJudgeConfig,
    LrSchedule,
    batch_accuracy,
    check_lr_schedule,
    coerce,
    datamodule_of,
    plain,
    refuse_stochastic_weight_averaging,
    with_lr_schedule,
)
from cmav.tasks.random_state import restore_random_state, save_random_state, separate_rank_streams
from cmav.tasks.tensorboard import log_hyperparameters, log_training_loss

Modality = Literal["audio", "image"]
Target = Literal["label", "track"]
ImageModel = Literal["judge", "encoder"]


def _train_players(tensors) -> list[list[int]]:
    """The sorted (class, track) pairs of a split's cached tensors: a player judge's classes."""
    pairs = {(int(c), int(k)) for c, k in zip(tensors.labels.tolist(), tensors.tracks.tolist(), strict=True)}
    return [list(p) for p in sorted(pairs)]


def players_mismatch(players: list[list[int]], tensors) -> str | None:
    """Why a player judge built for ``players`` ((class, track) pairs) does not fit a split's train
    players, or None: an unknown player would be dropped from its scores, and another data build's
    player of the same number scored as this one."""
    have = _train_players(tensors)
    if [list(map(int, p)) for p in players] == have:
        return None
    return (f"the data's train players ({len(have)} (class, track) pairs) differ from the {len(players)} this player "
            "judge was built for: train it on this data")


def first_of_each_index(index: Tensor) -> Tensor:
    """Boolean mask over ``index`` (the items' dataset indices, gathered from every rank) keeping the
    first occurrence of each index and no negative one (padding). Under DDP, Lightning's
    DistributedSampler pads a split to a multiple of the ranks by repeating items: each item must be
    scored once."""
    order = torch.argsort(index, stable=True)
    ordered = index[order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    keep = torch.zeros_like(first)
    keep[order] = first
    return keep & (index >= 0)


def _players_differ(a: list[list[int]], b: list[list[int]]) -> bool:
    return [list(map(int, p)) for p in a] != [list(map(int, p)) for p in b]


def class_names_difference(class_names: list[str] | None, data_names: list[str]) -> str | None:
    """``class_names [...], the data's are [...]`` when a model's classes (in their order: the indices
    its class head predicts) are not the data's, else None (also when ``class_names`` is unknown)."""
    if class_names is None or list(class_names) == list(data_names):
        return None
    return f"class_names {list(class_names)}, the data's are {list(data_names)}"


def front_end_difference(trained: Any, data_features: Any) -> str | None:
    """Which ``data.features`` settings differ between the front end a model was trained on
    (``trained``, a config or dict; None: not recorded, nothing to compare) and the data's, else None."""
    if trained is None:
        return None
    diffs = front_end_differences(trained, data_features)
    if not diffs:
        return None
    return f"data.features {'; '.join(diffs)} (its -> the data's)"


def smallest_holdout_tail(dm) -> tuple[float | None, int]:
    """``(tail, n_chunks)``: the smallest ``data.holdout_tail`` in hundredths that holds a chunk out of
    every train track of ``dm`` (set up) ``dm.holdout_gap`` ms or more after its last trained one,
    and the chunk count of the track that needs it (the shortest, with chunks evenly spaced).
    ``tail`` is None when no tail below 1 can, ``n_chunks`` then that of a track too short to span
    the gap; 0 when no track is guarded (no gap, or unknown chunk times: any tail holds theirs out)."""
    import math

    t = dm.train_full.tensors
    gap = dm.holdout_gap
    groups: dict[tuple[int, int], list[int]] = {}
    for label, track, time in zip(t.labels.tolist(), t.tracks.tolist(), t.times.tolist(), strict=True):
        groups.setdefault((int(label), int(track)), []).append(int(time))
    need, binding = 0.0, min((len(times) for times in groups.values()), default=0)
    for times in sorted(groups.values(), key=len):
        times.sort()
        n = len(times)
        if times[0] < 0 or gap <= 0:
            continue
        # h held chunks leave times[n-h-1] the last trained one; tail_holdout holds ceil(tail * n) out
        h = next((h for h in range(1, n) if times[-1] - times[n - h - 1] >= gap), None)
        if h is None:
            return None, n
        tail = (math.floor(100 * (h - 1) / n + 1e-9) + 1) / 100
        if tail > need:
            need, binding = tail, n
    return (need if need < 1 else None), binding


def holdout_tail_advice(dm) -> str | None:
    """Why ``dm``'s held-out tails are empty, ending in the smallest ``data.holdout_tail`` that
    would hold chunks out at its gap (:func:`smallest_holdout_tail`), or that none would; None when
    they are not empty."""
    why = dm.holdout_shortfall()
    tail = dm.hparams.holdout_tail
    if why is None or not tail or not hasattr(dm, "holdout_gap"):
        return why
    gap = dm.holdout_gap
    need, n_chunks = smallest_holdout_tail(dm)
    if need == 0.0:  # no track is guarded (times unknown): not the gap, so nothing to add
        return why
    head = (f"data.holdout_tail {tail:g} leaves no held-out chunk starting {gap} ms or more after its track's last "
            "trained one")  # fmt: skip
    also = "data.holdout_gap_ms 0 to score chunks that share audio with trained ones"
    if need is None:
        return (f"{head}, and no holdout_tail can: a train track of {n_chunks} chunks does not span {gap} ms; set "
                f"{also}")  # fmt: skip
    return (f"{head}: data.holdout_tail {need:g} or more holds one out of every train track at holdout_gap_ms {gap} "
            f"(its tracks of {n_chunks} chunks need it); or set {also}")  # fmt: skip


def player_names(players: list[list[int]], class_names: list[str]) -> list[str]:
    """``violin03``-style names of (class, track) pairs."""
    return [f"{class_names[c]}{t:02d}" for c, t in players]


class ClassifierTask(L.LightningModule):
    """Cross-entropy classifier on one modality.

    Args:
        modality: ``'audio'`` (LMS -> :class:`AudioEncoder`) or ``'image'`` (frame -> :class:`ImageJudge`).
        target: ``'label'`` (instrument) or ``'track'`` (player = (instrument, track) pair).
        image_size: frame side; must equal the data's (the CLI links it to ``data.image_size``).
        audio_encoder: encoder options (modality ``audio``).
        image_judge: judge options (modality ``image``, ``image_model='judge'``).
        image_model: ``'judge'`` (:class:`ImageJudge`, the scorer) or ``'encoder'``
            (:class:`ImageEncoder`, I2S's pretrained condition encoder); modality ``image`` only.
        image_encoder: encoder options (modality ``image``, ``image_model='encoder'``).
        optimizer: Adam settings. Not from the paper (it gives none for its classifiers):
            the usual Adam defaults.
        lr_schedule: ``'constant'`` (plain Adam, the default) or ``'cosine'`` (per-step decay
            to 0 over the run: the last epochs settle, so the final checkpoint is not a noisy one).
        augment: training-time image augmentation (modality ``image``; off by default).
        label_smoothing: cross-entropy label smoothing.
        class_names: instrument names; filled from the data at ``setup`` and saved in the
            checkpoint (leave unset).
        input_shape: ``(C, H, W)`` of one input; filled from the data (leave unset).
        players: ``[class, track]`` of every player id (``target='track'``); filled from the
            data (leave unset).
        features: the audio front end (``data.features``) of the data it is trained on (modality
            ``audio``); filled from the data at ``setup`` and saved in the checkpoint (leave unset).

    When these are already set (a checkpoint's, given by ``--ckpt_path`` or
    :func:`load_classifier`, the arguments, or an earlier fit), ``setup`` and ``on_load_checkpoint``
    compare them with the data's class names, the actual shape of its inputs (for frames: their
    size, whatever ``image_size`` the CLI linked), its train players and its front end (an MFCC or
    STFT can have an LMS's shape; a checkpoint written before ``features`` was recorded is compared
    with its data module's), and refuse a difference with a :class:`~cmav.data.errors.DataError`
    naming the checkpoint (or the data) and both values.
    """

    def __init__(
        self,
        modality: Modality = "audio",
        target: Target = "label",
        image_size: int = 64,
        audio_encoder: AudioEncoderConfig = AudioEncoderConfig(),
        image_judge: ImageJudgeConfig = ImageJudgeConfig(),
        image_model: ImageModel = "judge",
        image_encoder: ImageEncoderConfig = ImageEncoderConfig(),
        optimizer: AdamConfig = AdamConfig(lr=1e-3, betas=(0.9, 0.999)),
        augment: ImageAugmentConfig = ImageAugmentConfig(),
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
        input_shape: list[int] | None = None,
        players: list[list[int]] | None = None,
        lr_schedule: LrSchedule = "constant",
        features: dict | None = None,
    ) -> None:
        super().__init__()
        check_lr_schedule(lr_schedule)
        if modality not in ("audio", "image"):
            raise ValueError(f"modality must be 'audio' or 'image', got {modality!r}")
        if target not in ("label", "track"):
            raise ValueError(f"target must be 'label' or 'track', got {target!r}")
        if image_model not in ("judge", "encoder"):
            raise ValueError(f"image_model must be 'judge' or 'encoder', got {image_model!r}")
        if modality == "image" and coerce(ImageEncoderConfig, plain(image_encoder)).arch == "stats":
            raise ValueError("image_encoder.arch='stats' is for audio only: statistics pooling over time is made for "
                             "the harmonic audio front end (audio_encoder.arch), and an image classifier built with "
                             "it is no ImageEncoder; use image_encoder.arch='conv'")  # fmt: skip
        if modality == "audio" and coerce(ImageAugmentConfig, plain(augment)).enabled:
            raise ValueError("augment.enabled is true, but augment is image augmentation, which a modality='audio' "
                             "classifier never applies; set augment.enabled false (audio augmentation is "
                             "data.augment)")  # fmt: skip
        # Plain dicts in the hyper-parameters (weights_only checkpoints, readable hparams.yaml);
        # save_hyperparameters reads these locals.
        audio_encoder, image_judge, image_encoder = plain(audio_encoder), plain(image_judge), plain(image_encoder)
        optimizer, augment = plain(optimizer), plain(augment)
        features = front_end_config(features).to_dict() if features is not None else None
        self.save_hyperparameters()
        self.audio_encoder_config = coerce(AudioEncoderConfig, audio_encoder)
        self.image_judge_config = coerce(ImageJudgeConfig, image_judge)
        self.image_encoder_config = coerce(ImageEncoderConfig, image_encoder)
        self.optimizer_config = coerce(AdamConfig, optimizer)
        self.augment = ImageAugment(coerce(ImageAugmentConfig, augment), takes_masks=modality == "image")
        self.model: nn.Module | None = None
        self.trained_features: FrontEndConfig | None = None
        """The front end of the data it was trained on (set by :func:`load_classifier`; None: unknown)."""
        self.checkpoint_path: Path | None = None
        """The checkpoint file it was loaded from (set by :func:`load_classifier`; None: none)."""
        self._data_mismatch: str | None = None  # found at setup, raised naming the checkpoint when one is loaded
        self._val_preds: list[Tensor] = []
        self._val_targets: list[Tensor] = []
        self._val_index: list[Tensor] = []  # the items' indices: DDP's padding repeats some (scored once)
        self._warned_no_holdout = False
        self._train_masks: Tensor | None = None  # loaded at setup when the augmentation needs them
        if self._can_build():
            self._build()

    # ------------------------------------------------------------------ model and targets

    @property
    def input_key(self) -> str:
        return "audio" if self.hparams.modality == "audio" else "image"

    @property
    def target_names(self) -> list[str]:
        """Names of the output classes (instruments, or players for ``target='track'``)."""
        h = self.hparams
        if h.target == "track":
            return player_names(h.players, h.class_names)
        return list(h.class_names)

    def _can_build(self) -> bool:
        h = self.hparams
        if h.class_names is None or (h.target == "track" and h.players is None):
            return False
        return h.modality == "image" or h.input_shape is not None

    def _build(self) -> None:
        h = self.hparams
        n_out = len(h.players) if h.target == "track" else len(h.class_names)
        if h.modality == "audio":
            self.model = self.audio_encoder_config.build(AudioEncoder, h.input_shape, n_out)
        elif h.image_model == "encoder":
            self.model = self.image_encoder_config.build(ImageEncoder, (3, h.image_size, h.image_size), n_out)
        else:
            c = self.image_judge_config
            self.model = ImageJudge(
                image_size=h.image_size, n_classes=n_out, n_blocks=c.n_blocks, base_channels=c.base_channels,
                max_channels=c.max_channels, feature_dim=c.feature_dim, dropout=c.dropout,
                block_dropout=c.block_dropout, activation=c.activation, negative_slope=c.negative_slope,
            )  # fmt: skip
        if h.target == "track":
            self._build_player_table(h.players, len(h.class_names))

    def _build_player_table(self, players: list[list[int]], n_classes: int) -> None:
        tracks = [t for _, t in players]
        self._track_min = min(tracks)
        slots = max(tracks) - self._track_min + 1
        table = torch.full((n_classes, slots), -1, dtype=torch.long)
        for pid, (c, t) in enumerate(players):
            table[c, t - self._track_min] = pid
        # derived from hparams, so not persistent: checkpoints stay the model's weights
        self.register_buffer("player_table", table, persistent=False)

    def targets(self, batch: dict[str, Tensor]) -> Tensor:
        """Class ids of a batch; for ``target='track'`` player ids, -1 for players not in train."""
        labels = batch["label"].long()
        if self.hparams.target == "label":
            return labels
        slot = batch["track"].long() - self._track_min
        ok = (slot >= 0) & (slot < self.player_table.shape[1])
        ids = self.player_table[labels, slot.clamp(0, self.player_table.shape[1] - 1)]
        return torch.where(ok, ids, torch.full_like(ids, -1))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, n_classes)``."""
        assert self.model is not None, "model not built: call trainer.fit/validate with the data, or load a checkpoint"
        return self.model(x)

    # ------------------------------------------------------------------ Lightning hooks

    def configure_model(self) -> None:
        """Builds the network from the data module's classes and input shape, unless the
        hyper-parameters (a checkpoint's) already built it. Lightning calls this hook before
        training; weight-averaging callbacks (``EMAWeightAveraging``) call it in their own
        set-up, before ``setup``, to copy the model they average."""
        if self.model is not None:
            return
        dm = datamodule_of(self)
        if dm is None:
            raise RuntimeError("ClassifierTask needs an AudioVisualDataModule to learn its classes")
        h = self.hparams
        t = dm.train_full.tensors
        h.class_names = list(dm.class_names)
        h.input_shape = list(t.audio.shape[1:]) if h.modality == "audio" else list(t.images.shape[1:])
        if h.target == "track":
            h.players = _train_players(t)
        self._build()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            refuse_stochastic_weight_averaging(self)
        dm = datamodule_of(self)
        if dm is None:
            return  # nothing to check; configure_model refuses a task that has neither data nor a checkpoint
        h = self.hparams
        if h.modality == "image" and dm.hparams.image_size != h.image_size:
            where = f"{self.checkpoint_path}: " if self.checkpoint_path is not None else ""
            raise ValueError(f"{where}model image_size={h.image_size} but data image_size={dm.hparams.image_size}")
        self._data_mismatch = None
        if problems := self._differences_from(dm):
            why = "; ".join(problems)
            if self.checkpoint_path is not None:
                raise DataError(self.checkpoint_path, f"{self._REFUSAL}: {why}. {self._REMEDY}")
            # The class names and input shape came from a checkpoint (--ckpt_path, whose file Lightning
            # names only when it loads it, after this hook), from the arguments or from an earlier fit:
            # raised in on_load_checkpoint, naming the file, else at the start of the stage.
            self._data_mismatch = why
        else:
            if h.input_shape is None and self.model is not None:
                h.input_shape = self._data_shape(dm)  # built from the arguments: record what it reads
            if h.modality == "audio" and h.get("features") is None:
                h.features = dm.features.to_dict()  # what its input_shape alone does not tell
        if stage == "fit" and h.modality == "image" and self.augment.needs_mask:
            self._train_masks = self._load_train_masks(dm)  # per fit: the data module may be another one

    _REFUSAL = "this classifier was built for other data than this run's"
    _REMEDY = ("Give it the data it was trained on (data.root, data.layout, data.image_size, data.features), "
               "or train a new one on this data")  # fmt: skip

    def _data_shape(self, dm) -> list[int]:
        """``(C, H, W)`` of one input of the data module's train split (its actual tensors)."""
        t = dm.train_full.tensors
        return list((t.audio if self.hparams.modality == "audio" else t.images).shape[1:])

    def _differences_from(self, dm) -> list[str]:
        """How the classes, input shape and players this task holds (from a checkpoint, the
        arguments or an earlier fit) differ from the data module's, each with both values."""
        h = self.hparams
        problems: list[str] = []
        if why := class_names_difference(h.class_names, dm.class_names):
            problems.append(why)
        if h.input_shape is not None and list(map(int, h.input_shape)) != (have := self._data_shape(dm)):
            what = "an audio input's" if h.modality == "audio" else "a frame's"
            problems.append(f"input_shape {list(map(int, h.input_shape))}, the data's ({what}) is {have}")
        if h.target == "track" and h.players is not None and (why := players_mismatch(h.players, dm.train_full.tensors)):
            problems.append(why)
        if h.modality == "audio" and (why := front_end_difference(h.get("features") or self.trained_features,
                                                                  dm.features)):  # fmt: skip
            problems.append(why)
        return problems

    def _refuse_data_mismatch(self) -> None:
        """Raise the mismatch ``setup`` found when no checkpoint was loaded to name (the task's
        class names or input shape came from its arguments or an earlier fit)."""
        if self._data_mismatch is None:
            return
        why, self._data_mismatch = self._data_mismatch, None
        dm = datamodule_of(self)
        raise DataError(dm.root, f"the data differ from what this classifier was built for (its class_names, "
                                 f"input_shape or players, from its arguments or an earlier fit): {why}. "
                                 f"{self._REMEDY}")  # fmt: skip

    def _load_train_masks(self, dm) -> Tensor:
        """``(N, 1, S, S)`` uint8 instrument masks of the train split, in its order (for
        ``augment.keep_instrument_colour`` and ``augment.instrument_paste``); a clear error when
        the data set has none."""
        from cmav.data.masks import MasksMissing, load_split_masks

        in_use = self.augment.mask_options
        option = " and ".join(f"augment.{k}" for k in in_use)
        off_value = {"keep_instrument_colour": "false", "instrument_paste": "0"}
        off = " and ".join(f"--model.init_args.augment.{k} {off_value[k]}" for k in in_use)
        if dm.hparams.layout != "suburmp":
            raise ValueError(f"{option} needs instrument masks, which only the suburmp layout "
                             f"has (data.layout is {dm.hparams.layout!r})")  # fmt: skip
        t = dm.train_full.tensors
        try:
            masks = load_split_masks(dm.root, "train", t.stems, t.class_names, t.labels, self.hparams.image_size)
        except MasksMissing as exc:
            raise MasksMissing(exc.path, f"{exc.problem}. {option} needs them: set {off} for this data set"
                               ) from None  # fmt: skip
        return masks.unsqueeze(1).to(torch.uint8)

    def _step(self, batch: dict[str, Tensor], train: bool) -> tuple[Tensor, Tensor, Tensor]:
        x = batch[self.input_key]
        y = self.targets(batch)
        if train and self.hparams.modality == "image":
            mask = None
            if self.augment.needs_mask:  # indices are the train split's own (a Subset passes them through)
                mask = self._train_masks[batch["index"].cpu()].to(x.device, x.dtype)
            x = self.augment(x, mask)
        logits = self(x)
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing, ignore_index=-1), logits, y

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss, logits, y = self._step(batch, train=True)
        acc = batch_accuracy(logits, y)
        bs = y.shape[0]
        log_training_loss(self, loss, bs)
        self.log("train/acc", acc, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.hparams.target == "track":
            return  # validation players are not train players: scored on the held-out tails instead
        self._eval_batch(batch, "val")

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self.hparams.target == "track":
            return
        self._eval_batch(batch, "test")

    def _eval_batch(self, batch: dict[str, Tensor], prefix: str) -> None:
        loss, logits, y = self._step(batch, train=False)
        self.log(f"{prefix}/loss", loss, on_epoch=True, sync_dist=True, batch_size=y.shape[0])
        self._val_preds.append(_argmax_or_none(logits).detach())  # a non-finite row: NaN figures
        self._val_targets.append(y.detach())
        self._val_index.append(batch["index"].detach().long())

    def on_validation_epoch_end(self) -> None:
        self._report("val")

    def on_test_epoch_end(self) -> None:
        self._report("test")

    def _report(self, prefix: str) -> None:
        if self.hparams.target == "track":
            self._score_holdout(prefix)
        if not self._val_preds:
            return
        preds, targets, index = torch.cat(self._val_preds), torch.cat(self._val_targets), torch.cat(self._val_index)
        self._val_preds, self._val_targets, self._val_index = [], [], []
        if self.trainer.world_size > 1:
            preds, targets, index = self._gather(preds, targets, index)
        keep = (targets >= 0) & first_of_each_index(index)
        report = classification_report(preds[keep].cpu(), targets[keep].cpu(), self.target_names)
        # every rank holds the gathered predictions, so all log the same value (ModelCheckpoint
        # monitors it on every rank)
        self.log(f"{prefix}/acc", report.accuracy)
        self.log(f"{prefix}/balanced_acc", report.balanced_accuracy)

    def _gather(self, preds: Tensor, targets: Tensor, index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """All ranks' predictions, targets and item indices; ranks may hold different counts, so pad
        with ignored targets and index -1."""
        sizes = self.all_gather(torch.tensor([preds.numel()], device=preds.device)).flatten()
        pad = int(sizes.max()) - preds.numel()
        preds = F.pad(preds, (0, pad), value=0)
        targets = F.pad(targets, (0, pad), value=-1)
        index = F.pad(index, (0, pad), value=-1)
        return self.all_gather(preds).flatten(), self.all_gather(targets).flatten(), self.all_gather(index).flatten()

    @torch.no_grad()
    def _score_holdout(self, prefix: str) -> None:
        dm = datamodule_of(self)
        holdout = getattr(dm, "train_holdout", None)
        if holdout is None or len(holdout) == 0:
            why = holdout_tail_advice(dm) if hasattr(dm, "holdout_shortfall") and holdout is not None else None
            what = ("player judge: no held-out train frames to validate on (validation players are not "
                    f"train players); {why or 'set data.holdout_tail > 0 (e.g. 0.1)'}")  # fmt: skip
            watched = [c.monitor for c in self.trainer.checkpoint_callbacks
                       if getattr(c, "monitor", None) and c.monitor.startswith(f"{prefix}/")]  # fmt: skip
            if watched:  # Lightning would stop the run a moment later, not saying why the figure is missing
                raise ValueError(f"{what}: a ModelCheckpoint monitors {watched[0]}, which it cannot log")
            if not self._warned_no_holdout:
                warnings.warn(what, stacklevel=2)
                self._warned_no_holdout = True
            return
        loader = torch.utils.data.DataLoader(holdout, batch_size=dm.hparams.batch_size, shuffle=False)
        # through the precision plugin, as Lightning's own loop feeds batches: bf16-true weights need
        # bf16 inputs, mixed precision its autocast (in fp32 both do nothing)
        precision = self.trainer.precision_plugin
        for batch in loader:
            batch = precision.convert_input({k: v.to(self.device) for k, v in batch.items()})
            with precision.forward_context():
                _, logits, y = self._step(batch, train=False)
            self._val_preds.append(_argmax_or_none(logits))
            self._val_targets.append(y)
        # every rank scores the same held-out set: no gathering
        preds, targets = torch.cat(self._val_preds), torch.cat(self._val_targets)
        self._val_preds, self._val_targets, self._val_index = [], [], []
        keep = targets >= 0
        report = classification_report(preds[keep].cpu(), targets[keep].cpu(), self.target_names)
        self.log(f"{prefix}/acc", report.accuracy)
        self.log(f"{prefix}/balanced_acc", report.balanced_accuracy)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Logits, predicted ids and the items' indices."""
        logits = self(batch[self.input_key])
        return {"logits": logits, "pred": logits.argmax(1), "index": batch["index"]}

    def on_fit_start(self) -> None:
        self._refuse_data_mismatch()
        separate_rank_streams(self)
        # a player judge is scored on the held-out tails, without a loss
        log_hyperparameters(self, ["val/balanced_acc", "val/acc"] + (["val/loss"] if self.hparams.target == "label" else []))

    def on_validation_start(self) -> None:
        self._refuse_data_mismatch()

    def on_test_start(self) -> None:
        self._refuse_data_mismatch()

    def on_predict_start(self) -> None:
        self._refuse_data_mismatch()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        save_random_state(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("hyper_parameters", {})
        h = self.hparams
        problems: list[str] = []
        for key in ("class_names", "input_shape"):  # this run's: from the data (configure_model) or the arguments
            if saved.get(key) is not None and h.get(key) is not None and list(saved[key]) != list(h[key]):
                problems.append(f"its {key} {list(saved[key])}, this run's {list(h[key])}")
        if h.target == "track" and saved.get("players") is not None and h.players is not None:
            if _players_differ(saved["players"], h.players):
                problems.append(f"its {len(saved['players'])} players ((class, track) pairs) differ from the "
                                f"{len(h.players)} of this run's data")  # fmt: skip
        if h.modality == "audio" and h.get("features") is not None:
            # older checkpoints lack the hyper-parameter: their data module's front end stands in for it
            trained = saved.get("features") or (checkpoint.get("datamodule_hyper_parameters") or {}).get("features")
            if why := front_end_difference(trained, h.features):
                problems.append(why)
        if self._data_mismatch is not None:  # found at setup (the checkpoint's settings given as the arguments)
            problems.append(self._data_mismatch)
            self._data_mismatch = None
        if problems:
            trainer = getattr(self, "_trainer", None)
            path = (trainer.ckpt_path if trainer is not None else None) or self.checkpoint_path or "checkpoint"
            raise DataError(path, f"{self._REFUSAL}: {'; '.join(problems)}. {self._REMEDY}")
        restore_random_state(self, checkpoint)

    def configure_optimizers(self):  # the optimizer, with its schedule when there is one
        opt = self.optimizer_config.build(self.parameters())
        return with_lr_schedule(opt, self.hparams.get("lr_schedule", "constant"), self._trainer)


_TRUSTED_OUTSIDE_CMAV = frozenset({"pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath",
                                   "pathlib.PureWindowsPath"})  # fmt: skip


def _trusted_global(name: str) -> Any:
    """The object a safe load may rebuild for ``name`` ("module.qualname"), or None: cmav's own
    config dataclasses and enums (a data module or task built in Python with dataclass arguments
    stores them in its hyper-parameters) and paths. Never a function or any other class."""
    import dataclasses
    import enum
    import importlib

    module, _, attr = name.rpartition(".")
    if not (name.startswith("cmav.") or name in _TRUSTED_OUTSIDE_CMAV):
        return None
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    if name in _TRUSTED_OUTSIDE_CMAV:
        return obj
    is_config = isinstance(obj, type) and (dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum))
    return obj if is_config else None


_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")
"""How a file torch.save wrote starts: a zip archive (torch >= 1.6), or a pickle (the legacy format)."""


def _load_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """A checkpoint's dict, read with ``torch.load(weights_only=True)`` only: objects other than
    tensors are allowed when they are cmav's own configs or paths (see :func:`_trusted_global`). A
    file that asks for anything else is refused, never unpickled in full: a checkpoint from
    elsewhere must not run code. A missing file is a FileNotFoundError; every other failure (a
    folder, a file that is no PyTorch checkpoint, a half-written one, one whose contents fail their
    CRC) a ValueError naming the path and what is wrong: torch's own errors do not name the file.
    ``mmap``: map the tensors instead of reading them (to look at the settings or shapes only)."""
    import zipfile

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a checkpoint file (e.g. runs/<name>/checkpoints/last.ckpt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    mmap = mmap and zipfile.is_zipfile(path)  # torch maps zip archives only, not the legacy format
    if zipfile.is_zipfile(path):
        # torch.load checks no CRC: bytes damaged inside a tensor load as weights without a word
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            bad = f"({type(exc).__name__}: {exc})"
        if bad is not None:
            raise ValueError(f"{path}: not a readable checkpoint (half-written or corrupt?): its member {bad} "
                             "fails its CRC check")  # fmt: skip
    foreign: list[str] = []
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            allowed = {n: _trusted_global(n) for n in names}
            foreign = sorted(n for n, obj in allowed.items() if obj is None)
            if not foreign:
                with torch.serialization.safe_globals(list(allowed.values())):
                    data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch's errors, ValueErrors included: a text file, an image, a truncated zip, a wav
        said = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        try:
            with open(path, "rb") as f:
                head = f.read(4)
        except OSError:
            head = b""
        if head.startswith(_CHECKPOINT_MAGIC):  # starts like one: cut short or damaged
            raise ValueError(f"{path}: not a readable checkpoint (half-written or corrupt?): {said}") from exc
        raise ValueError(f"{path}: not a readable checkpoint: not a PyTorch checkpoint (a file torch.save writes "
                         f"starts otherwise); torch.load says {said}") from exc  # fmt: skip
    if foreign:
        raise ValueError(f"{path}: holds objects that cmav does not load from a checkpoint "
                         f"({', '.join(foreign)}); if you trust the file, read it yourself with "
                         "torch.load(..., weights_only=False)")  # fmt: skip
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a checkpoint: it holds a {type(data).__name__}, not a checkpoint's dict")
    return data


def checkpoint_dict(ckpt: str | Path | dict) -> dict:
    """A checkpoint's dict: ``ckpt`` itself when already loaded, else read from its path."""
    return ckpt if isinstance(ckpt, dict) else _load_checkpoint(ckpt)


@contextmanager
def own_hyperparameters() -> Iterator[None]:
    """Let a LightningModule built here record its own hyper-parameters.

    While LightningCLI instantiates the model it hands the config to ``save_hyperparameters``
    through a context variable; a module built inside that constructor (the sound classifier
    that ``S2ITask.__init__`` loads) would otherwise record the outer model's config.
    """
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # another Lightning version without the mechanism: nothing to undo
        yield
        return
    token = _given_hyperparameters.set(None)
    try:
        yield
    finally:
        _given_hyperparameters.reset(token)


def load_classifier(path: str | Path) -> ClassifierTask:
    """Rebuild a :class:`ClassifierTask` (on CPU, eval mode) from its checkpoint, without the data."""
    ckpt = _load_checkpoint(path)
    hp = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    if not hp or hp.get("class_names") is None:
        raise ValueError(f"{path}: not a ClassifierTask checkpoint (no class_names in its hyper-parameters)")
    with own_hyperparameters():
        try:
            task = ClassifierTask(**hp)
        except ValueError as exc:  # settings refused since it was written (e.g. image_encoder.arch='stats')
            raise ValueError(f"{path}: holds a ClassifierTask of settings cmav refuses: {exc}") from exc
    task.load_state_dict(ckpt["state_dict"])
    task.checkpoint_path = Path(path)
    features = hp.get("features") or (ckpt.get("datamodule_hyper_parameters") or {}).get("features")
    # the front end it was trained on, for the branches that reuse its encoder (None: not recorded)
    task.trained_features = front_end_config(features) if features is not None else None
    return task.eval()


def load_sound_classifier(path: str | Path, user: str = "this") -> ClassifierTask:
    """A sound-classifier checkpoint (``modality='audio', target='label'``): where every branch's
    pretrained :class:`AudioEncoder` comes from. ``user`` names the branch in the error."""
    task = load_classifier(path)
    if task.hparams.modality != "audio" or task.hparams.target != "label":
        raise ValueError(
            f"{path}: a {task.hparams.modality}/{task.hparams.target} classifier; the {user} encoder must come "
            "from the sound classifier (modality='audio', target='label')"
        )
    if not isinstance(task.model, ConvEncoder):  # an AudioEncoder, or a StatsPoolEncoder (arch: stats)
        raise ValueError(f"{path}: its sound classifier holds a {type(task.model).__name__}, not an audio encoder "
                         f"(AudioEncoder or StatsPoolEncoder): the {user} encoder cannot come from it")  # fmt: skip
    return task


def load_audio_encoder(path: str | Path) -> AudioEncoder:
    """The :class:`AudioEncoder` of a sound-classifier checkpoint (``modality='audio', target='label'``)."""
    return load_sound_classifier(path).model  # type: ignore[return-value]


def article(word: str) -> str:
    """``a`` or ``an`` before ``word`` in a message."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def load_image_judge(path: str | Path, target: str = "label") -> ClassifierTask:
    """An image-judge checkpoint (``modality='image'``, ``image_model='judge'``, the given ``target``:
    ``'label'`` for the image judge, ``'track'`` for the player judge), refused by name otherwise: a
    sound classifier or the image classifier that conditions I2S is not a judge."""
    task = load_classifier(path)
    h = task.hparams
    if h.modality != "image" or h.target != target or h.get("image_model", "judge") != "judge":
        kind = f"{h.modality}/{h.target}" + (f"/{h.get('image_model', 'judge')}" if h.modality == "image" else "")
        what = "image judge (experiments/image_judge.yaml)" if target == "label" else "player judge (experiments/player_judge.yaml)"
        raise ValueError(f"{path}: {article(kind)} {kind} classifier, not the {what}: modality='image', target={target!r}, "
                         "image_model='judge'")  # fmt: skip
    return task


def load_image_classifier(path: str | Path, user: str = "this") -> ClassifierTask:
    """An image-classifier checkpoint (``modality='image', target='label', image_model='encoder'``):
    where I2S's pretrained :class:`ImageEncoder` comes from. ``user`` names the branch in the error."""
    task = load_classifier(path)
    h = task.hparams
    if h.modality != "image" or h.target != "label" or h.get("image_model", "judge") != "encoder":
        kind = f"{h.modality}/{h.target}" + (f"/{h.get('image_model', 'judge')}" if h.modality == "image" else "")
        raise ValueError(
            f"{path}: {article(kind)} {kind} classifier; the {user} encoder must come from the image classifier "
            "(modality='image', target='label', image_model='encoder': experiments/image_encoder.yaml). "
            "The image judge is kept for scoring only."
        )
    if not isinstance(task.model, ImageEncoder):
        raise ValueError(f"{path}: its image classifier holds a {type(task.model).__name__}, not an ImageEncoder: "
                         f"the {user} encoder cannot come from it. Train it again with "
                         "experiments/image_encoder.yaml")  # fmt: skip
    return task


__all__ = ["ClassifierTask", "class_names_difference", "front_end_difference", "load_audio_encoder", "load_classifier", "load_image_classifier", "load_image_judge", "load_sound_classifier",
           "holdout_tail_advice", "own_hyperparameters", "player_names", "smallest_holdout_tail"]  # fmt: skip
