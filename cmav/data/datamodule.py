"""Lightning DataModule over a cached audio-visual data set (Sub-URMP layout or paired folders)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from cmav.data.audio_io import ChunkSpec
from cmav.data.cache import PairTensors
from cmav.data.check import shared_players, tracks_by_class
from cmav.data.datasets import Layout, PairDataset, open_split, split_fingerprint
from cmav.data.errors import DataError, DataWarning
from cmav.data.image_io import check_image_size
from cmav.data.tails import tail_holdout
from cmav.features.augment import AudioAugment, AudioAugmentConfig, audio_augment_config
from cmav.features.frontend import build_front_end, front_end_config


def recorded_root(settings: Mapping[str, Any], missing_ok: bool = False) -> Path:
    """The data root a checkpoint's data settings (its ``datamodule_hyper_parameters``) name, found here.

    Its absolute path as resolved when it was trained (``root_resolved``), where that exists; else
    the root as typed, read from the current folder (a checkpoint from another machine, or one saved
    before the resolved root was recorded). Raises :class:`DataError` when neither exists, unless
    ``missing_ok``: then the root as typed is returned, for the caller to report."""
    typed = str(settings.get("root") or "data/default")  # the data module's default root
    resolved = settings.get("root_resolved")
    for candidate in (resolved, typed):
        if candidate and Path(candidate).is_dir():
            return Path(candidate).resolve()
    if missing_ok:
        return Path(typed)
    also = f" (nor {resolved}, its absolute path when trained)" if resolved and resolved != typed else ""
    raise DataError(typed, f"the checkpoint's data root does not exist here{also}: pass --root")


class AudioVisualDataModule(L.LightningDataModule):
    """Train/validation loaders of (LMS, frame) pairs from the preprocessing cache.

    Args:
        root: data set folder.
        layout: ``suburmp`` (``chunk/`` + ``img/``) or ``paired`` (``audio/`` + ``image/``).
        image_size: frames are centre-cropped and resized to this (64 in the paper).
        batch_size: pairs per batch.
        num_workers: DataLoader workers; the data are in memory, so 0 is usually fastest.
        features: the audio front-end config (``cmav.features``): ``kind`` = lms (default), stft,
            cqt, mfcc, waveform or harmonic, plus that kind's options. Each kind has its own cache
            entry. A dict (or a config object), checked by
            :func:`~cmav.features.frontend.front_end_config`: typed as a union of the config classes,
            jsonargparse refused another kind over a YAML's, in 70 lines (``cmav fit`` merges the
            settings it is given, :func:`~cmav.cli.train._with_merged_features`).
        chunk: what an audio chunk must be (rate, length, silence floor).
        holdout_tail: fraction of each train track's end held out of training (player metrics).
        holdout_gap_ms: a held-out chunk that starts less than this after the last trained chunk of
            its track shares audio with it, and is left out of the held-out set too (never of the
            training set). ``None``: the chunk length (500 ms), so the held-out audio is really
            unheard; 0 keeps every tail chunk, as cmav did before (the README says which figures).
        cache_dir: where cache files go (default ``<root>/.cmav_cache``; a read-only root's current
            files there are read, new ones go under ~/.cache/cmav, :func:`~cmav.data.cache.cache_dirs`).
        augment: training-time audio augmentation (:mod:`cmav.features.augment`; default none).
            Applied in :meth:`on_after_batch_transfer`, on the model's device, to training batches
            only: waveform groups -> the front end -> SpecAugment. With a waveform group on, the
            train split also keeps its raw chunks (their own cache file). Validation, test and
            predict batches are always the plain cached features.
    """

    def __init__(
        self,
        root: str = "data/default",
        layout: Layout = "suburmp",
        image_size: int = 64,
        batch_size: int = 64,
        num_workers: int = 0,
        features: dict[str, Any] | None = None,
        chunk: ChunkSpec | None = None,
        holdout_tail: float = 0.0,
        holdout_gap_ms: int | None = None,
        cache_dir: str | None = None,
        progress: bool = True,
        augment: AudioAugmentConfig | None = None,
    ) -> None:
        super().__init__()
        image_size = check_image_size(image_size)  # any side >= 1: the image encoders pool only what is longer than 1
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if holdout_gap_ms is not None and holdout_gap_ms < 0:
            raise ValueError(f"holdout_gap_ms must be >= 0 (or None for the chunk length), got {holdout_gap_ms}")
        self.features = front_end_config(features)
        self.chunk = chunk or ChunkSpec()
        self.augment = audio_augment_config(augment)
        # built here, not at the first batch: a group that needs another front end is refused at set-up
        self._augmenter = AudioAugment(self.augment, self.features)
        # Plain dicts, not dataclass objects: checkpoints must load with weights_only=True.
        self.save_hyperparameters(ignore=["features", "chunk", "augment"])
        # the root as typed (for messages) and as resolved here: a checkpoint read from another working
        # folder must find the same data (recorded_root), not whatever the typed path names there
        self.hparams.update(features=self.features.to_dict(), chunk=asdict(self.chunk),
                            augment=self.augment.to_dict() if self.augment.enabled_groups else None,
                            root_resolved=str(Path(root).resolve()))  # fmt: skip
        self.root = Path(root)
        self.train_full: PairDataset | None = None
        self.train_holdout: Subset | None = None
        self.val: PairDataset | None = None
        self._front_end = None

    def _open(self, split: str) -> PairDataset:
        h = self.hparams
        waves = split == "train" and self.augment.needs_waveform
        extra = {}
        if h.layout == "paired" and split != "train" and self.train_full is not None:
            # labelled in train's class order: a split missing a class folder is refused by name, not shifted
            extra["classes"] = tuple(self.train_full.class_names)
        return open_split(
            h.layout, self.root, split, image_size=h.image_size, features=self.features,
            chunk=self.chunk, cache_dir=h.cache_dir, progress=h.progress,
            waves_rate=self.features.sample_rate if waves else None, **extra,
        )  # fmt: skip

    def prepare_data(self) -> None:
        """Build any missing cache files, on one process per node before the others open them.

        Lightning calls this on each node's local rank 0 and then waits at a barrier, so a DDP run
        on an uncached root computes the features once, not once per rank at the same time (each
        rank's numba kernels compiled into one cold cache can crash, numba#10128). The splits stay
        open for this process's :meth:`setup`; the other ranks read the files in theirs.
        """
        self.setup()

    def setup(self, stage: str | None = None) -> None:
        if self.train_full is None:
            self.train_full = self._open("train")
            t = self.train_full.tensors
            tail = self.hparams.holdout_tail
            keep, held = tail_holdout(t.tracks, t.labels, t.times, tail, guard_ms=self.holdout_gap, stems=t.stems)
            if tail and bool((t.times < 0).any()):
                warnings.warn(
                    f"{self.root}: chunk times are unknown in this layout ({self.hparams.layout}), so the held-out "
                    f"tail (data.holdout_tail {tail:g}) is the last files of each class by name (numbers compared as "
                    "numbers), without the time gap (holdout_gap_ms) that keeps held-out audio unheard",
                    DataWarning, stacklevel=2,
                )  # fmt: skip
            self.train = Subset(self.train_full, keep)
            self.train_holdout = Subset(self.train_full, held)
        if self.val is None:
            val = self._open("validation")
            self._refuse_shared_players(val)
            self.val = val

    def _refuse_shared_players(self, val: PairDataset) -> None:
        """A track (player) in both train and validation would score the model on players it trained on:
        refused as ``cmav data check`` reports it, with its exemption for a development root's lent tails."""
        assert self.train_full is not None
        t, v = self.train_full.tensors, val.tensors
        problems = shared_players(self.root, tracks_by_class(t.labels, t.tracks, t.class_names),
                                  tracks_by_class(v.labels, v.tracks, v.class_names))  # fmt: skip
        if len(problems) == 1:
            raise DataError(self.root, problems[0])
        if problems:
            raise DataError(self.root, f"{len(problems)} classes share players between train and validation:\n  "
                                       + "\n  ".join(problems))  # fmt: skip

    def data_fingerprints(self) -> dict[str, str | None]:
        """``{"train": ..., "validation": ...}``: what identifies the contents of the splits this
        module trains and validates on (:attr:`~cmav.data.datasets.PairDataset.data_fingerprint`),
        from the opened splits after :meth:`setup`, else from the files on disk."""
        if self.train_full is not None and self.val is not None:
            return {"train": self.train_full.data_fingerprint, "validation": self.val.data_fingerprint}
        return {split: split_fingerprint(self.hparams.layout, self.root, split) for split in ("train", "validation")}

    @property
    def holdout_gap(self) -> int:
        """``holdout_gap_ms`` in effect: as given, or the chunk length when it is None."""
        gap = self.hparams.get("holdout_gap_ms")
        return round(1000 * self.chunk.n_samples / self.chunk.sample_rate) if gap is None else int(gap)

    def holdout_shortfall(self) -> str | None:
        """Why the held-out tails are empty, as advice to end a message with; None when they are not.

        Consumers of the tails (player metrics, ``JudgedAccuracyMonitor(split='holdout')``, the
        player judge's validation) name this reason instead of failing on an empty set."""
        assert self.train_holdout is not None, "call setup() first"
        if len(self.train_holdout):
            return None
        tail = self.hparams.holdout_tail
        if not tail:
            return "this data module holds none out: set data.holdout_tail > 0 (0.1 in the YAMLs)"
        return (f"data.holdout_tail {tail:g} leaves no held-out chunk starting {self.holdout_gap} ms or more after "
                "its track's last trained one (the tracks are too short): raise holdout_tail, or set "
                "data.holdout_gap_ms 0 to score chunks that share audio with trained ones")  # fmt: skip

    @property
    def class_names(self) -> list[str]:
        assert self.train_full is not None, "call setup() first"
        return self.train_full.class_names

    def split_items(self, split: str) -> tuple[PairTensors, torch.Tensor]:
        """The cached tensors that a split's items live in, and their indices there.

        ``train`` is what is trained on, ``holdout`` the held-out tails of the train tracks (seen
        players, unseen frames; empty when ``holdout_tail`` is 0) and ``validation`` the
        validation split (unseen players). Index with the second to get the split's items.
        """
        assert self.train_full is not None and self.val is not None, "call setup() first"
        if split == "validation":
            return self.val.tensors, torch.arange(len(self.val), dtype=torch.long)
        subsets = {"train": self.train, "holdout": self.train_holdout}
        if split not in subsets:
            raise ValueError(f"unknown split {split!r}: expected one of train, holdout, validation")
        return self.train_full.tensors, torch.as_tensor(list(subsets[split].indices), dtype=torch.long)

    def _loader(self, ds, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(ds) >= self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            pin_memory=torch.cuda.is_available(),
            # not persistent: a persistent loader draws its workers' base seed from torch's global
            # stream once, at the first epoch, so a resumed run (a new loader) would draw once more
            # than the killed run and every later batch order and noise would differ
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val, shuffle=False)

    @property
    def augmenting(self) -> bool:
        """Whether batches arriving now get augmented: augmentation on and the trainer training."""
        trainer = self.trainer
        return bool(self.augment.enabled_groups) and trainer is not None and bool(trainer.training)

    def augmented_audio(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Fresh augmented features for a batch on its device: raw chunks (``wave``) through the
        waveform groups and the front end, or the cached features when no waveform group is on;
        then SpecAugment."""
        audio = batch["audio"]
        self._augmenter.to(audio.device)
        if self.augment.needs_waveform:
            if "wave" not in batch:
                raise RuntimeError("waveform augmentation is on but the batch holds no raw chunks ('wave'): "
                                   "augment training batches of this datamodule's train_dataloader only")  # fmt: skip
            if self._front_end is None:
                self._front_end = build_front_end(self.features)
            self._front_end.to(audio.device)
            rate = self.features.sample_rate  # the cache stores the chunks at the front end's rate
            with torch.no_grad():
                wave = self._augmenter.waveform(batch["wave"].float(), rate)
                audio = self._front_end(wave, rate).to(audio.dtype)
        with torch.no_grad():
            return self._augmenter.features(audio)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Augment ``batch['audio']`` of training batches (on the model's device); drop raw chunks."""
        if isinstance(batch, dict):
            if self.augmenting:
                batch["audio"] = self.augmented_audio(batch)
            batch.pop("wave", None)
        return batch
