"""Judged accuracy while a generator trains: a Lightning callback.

The figure a cross-modal generator is judged by (one output per validation item under fixed noise,
classified by a frozen judge; :mod:`cmav.evaluation.paired`) is otherwise only known after training.
:class:`JudgedAccuracyMonitor` computes the same number every ``every_n_epochs`` validation epochs
and logs it as ``val/judged_acc`` (with the judge on the real items, its ceiling, as
``val/judge_on_real``), so TensorBoard shows the learning curve against steps and wall time and a
``ModelCheckpoint(monitor="val/judged_acc", mode="max")`` keeps the best epoch by it. ``history``
holds every score with the training seconds so far (scoring excluded)::

    cmav fit --config experiments/s2i_c.yaml \\
        --trainer.callbacks+=cmav.evaluation.JudgedAccuracyMonitor \\
        --trainer.callbacks.judge_ckpt runs/image_judge/checkpoints/last.ckpt

Every reading is also appended to ``<trainer.default_root_dir>/<val|holdout>_judged_acc.csv``
(GAN iteration, epoch, training seconds, the scores, the judge file), so a run's curve outlives
the process and a resumed run adds to the same file (a table of a run's curve is that file's rows).
The training seconds are kept in the checkpoints (the callback's state), so a run resumed with
``--ckpt_path`` goes on counting from where its checkpoint was written: "best judged accuracy after
how long" holds for a run that was killed and resumed, too.
A run killed between a reading and its checkpoint repeats that reading on resume; rows carry the
iteration, so keep the last row of each.

``split='holdout'`` scores the time-held-out end of every train track instead (``data.holdout_tail``
> 0; logged as ``holdout/judged_acc``): a best epoch chosen there has never looked at the
validation players, so the validation figures of that checkpoint stay unbiased estimates. A judge
whose checkpoint says it trained on any of those tails (its ``data.holdout_tail`` on the same root
leaves them in its training set, e.g. 0) is refused at set-up, as by :func:`~cmav.evaluation.evaluate_s2i`;
one trained on another root is warned of (:func:`~cmav.evaluation.paired.check_judge_unseen`).

S2I tasks take an image judge, I2S tasks an audio judge: one of the data's classes, an image judge of
its frame size, an audio judge of its front end (as :func:`~cmav.evaluation.evaluate_i2s` checks:
another ``n_mels`` passes the encoder's global pool, another ``top_db`` gives the same shape), or it
is refused at set-up, naming its file. The judge is loaded onto the task's device
at the start of fitting and is never part of the task (nor of its checkpoints): it only scores.
Under DDP every process scores the whole split, and the figures logged are rank 0's, broadcast:
a generator's batch-norm statistics are each rank's own (DDP does not synchronise them in a pass
without gradients), so the ranks' own figures may differ slightly, and a checkpoint that monitors
the figure must see one value on every rank.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from cmav.evaluation.paired import generate_outputs
from cmav.metrics import judged_accuracy

SPLITS = {"validation": "val", "holdout": "holdout"}
"""The splits the monitor scores, and the prefix of what it logs."""

RECORD_FIELDS = ("iteration", "epoch", "train_s", "judged_acc", "judged_balanced_acc", "judge_on_real", "judge")
"""The columns of the monitor's CSV (``train_s``: training seconds so far, scoring excluded, summed
over the fits that resumed from this run's checkpoints)."""


class JudgedAccuracyMonitor(L.Callback):
    """Log the EMA generator's judged accuracy on the validation split (or the train tracks'
    held-out tails) during training.

    Args:
        judge_ckpt: a :class:`~cmav.tasks.ClassifierTask` checkpoint trained on REAL data of the
            generator's output modality (an image judge for S2I, a sound classifier for I2S).
        every_n_epochs: score at the validation that ends every n-th training epoch (counted in
            epochs, not validations; and at the last one). With ``val_check_interval`` < 1 the
            validations in mid-epoch are not scored, so neither a reading nor a
            ``ModelCheckpoint(monitor="val/judged_acc")`` comes from one. A run that ends by
            ``max_steps`` gets a final reading at its last validation; Lightning does not validate
            when ``max_steps`` ends a run mid-epoch (unless a ``val_check_interval`` validation
            falls on that very step), so such a run's last reading is at its last validation before.
        seed: the fixed noise of the generated items (the same draw at every epoch, so the curve
            shows the generator changing, not the noise).
        batch_size: generation and judging batch.
        split: ``'validation'`` (logged as ``val/...``) or ``'holdout'``, the held-out tails of the
            train tracks (logged as ``holdout/...``), for choosing a checkpoint without the
            validation players.
    """

    def __init__(self, judge_ckpt: str, every_n_epochs: int = 5, seed: int = 0, batch_size: int = 64,
                 split: Literal["validation", "holdout"] = "validation") -> None:  # fmt: skip
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
        self.split = split
        self.judge_ckpt = str(judge_ckpt)
        self.every_n_epochs = int(every_n_epochs)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self._judge: Any = None
        self._ceiling: float | None = None
        self._start: float | None = None
        self._resumed_s = 0.0  # training seconds before this fit, from the checkpoint resumed
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ state in checkpoints

    @property
    def state_key(self) -> str:
        return self._generate_state_key(split=self.split)

    def _train_seconds(self) -> float:
        """Training seconds so far (scoring excluded), with those of the fits this one resumed."""
        return time.perf_counter() - self._start if self._start is not None else self._resumed_s

    def state_dict(self) -> dict[str, float]:
        return {"train_s": self._train_seconds()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resumed_s = float(state_dict.get("train_s", 0.0))

    # ------------------------------------------------------------------ set-up

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        from cmav.tasks.classifier import ClassifierTask, load_classifier
        from cmav.tasks.i2s import I2STask
        from cmav.tasks.s2i import S2ITask

        if not isinstance(pl_module, (S2ITask, I2STask)):
            raise TypeError(f"JudgedAccuracyMonitor scores S2I or I2S generators, not a {type(pl_module).__name__}")
        path = Path(self.judge_ckpt)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: judge checkpoint not found (JudgedAccuracyMonitor.judge_ckpt)")
        judge = load_classifier(path)
        want = "image" if isinstance(pl_module, S2ITask) else "audio"
        if not isinstance(judge, ClassifierTask) or judge.hparams.modality != want or judge.hparams.target != "label":
            raise ValueError(f"{path}: {type(pl_module).__name__} is judged by a {want} classifier of the instrument "
                             f"(ClassifierTask modality={want!r}, target='label'); this checkpoint is "
                             f"modality={judge.hparams.modality!r}, target={judge.hparams.target!r}")  # fmt: skip
        self._judge = judge.eval().requires_grad_(False)
        self._ceiling = None
        dm = trainer.datamodule
        if getattr(dm, "val", None) is not None:
            # the data's classes, and for an image judge its frame size: its global pool would score
            # frames of any size without a word
            from cmav.evaluation.s2i import check_judge_fits

            frames = dm.val.tensors.images[:1] if want == "image" else None
            try:
                check_judge_fits(judge, class_names=list(dm.class_names), frames=frames, what=f"{want} judge")
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
        if want == "audio" and getattr(dm, "train_full", None) is not None:
            # evaluate_i2s's check: the encoder's global pool reads any number of mel bands, and another
            # top_db gives the same shape, so only the front end it trained on says it reads these LMS right
            from cmav.tasks.common import check_encoder_input

            check_encoder_input(judge.model.input_shape, judge.trained_features, dm, str(path))
        shortfall = dm.holdout_shortfall() if self.split == "holdout" and hasattr(dm, "holdout_shortfall") else None
        if shortfall:  # Lightning sets the data module up before the callbacks
            raise ValueError(f"JudgedAccuracyMonitor(split='holdout') scores the held-out tails of the train tracks; {shortfall}")
        if getattr(dm, "val", None) is not None:
            # the held-out tails are scored as frames nobody trained on: refused when the judge trained on
            # them (the check of evaluate_s2i / evaluate_i2s); a judge of another root is warned of
            from cmav.evaluation.paired import check_judge_unseen

            check_judge_unseen(path, dm, f"{want} judge", split=self.split)
        if trainer.limit_val_batches == 0:
            rank_zero_warn("JudgedAccuracyMonitor scores after validation epochs, and validation is off "
                           f"(limit_val_batches=0): {SPLITS[self.split]}/judged_acc will not be logged")  # fmt: skip

    def _split(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[Tensor, Tensor, Tensor, list[str]]:
        """(conditions, real outputs, labels, class names) of the scored split."""
        from cmav.tasks.s2i import S2ITask

        dm = trainer.datamodule
        if dm is None or getattr(dm, "val", None) is None:
            raise RuntimeError("JudgedAccuracyMonitor needs an AudioVisualDataModule with a validation split")
        names = list(self._judge.hparams.class_names)  # the data's: checked at set-up
        t, index = dm.split_items(self.split)  # never empty: a holdout without held-out tails is refused at set-up
        frames = t.images[index].float().div(127.5).sub(1.0)
        audio = t.audio[index].float()
        labels = t.labels[index].long()
        if isinstance(pl_module, S2ITask):
            return audio, frames, labels, names
        return frames, audio, labels, names

    # ------------------------------------------------------------------ scoring

    @staticmethod
    def _ends_epoch(trainer: L.Trainer) -> bool:
        """Whether this validation runs after the epoch's last training batch (with
        ``val_check_interval`` < 1 Lightning validates in mid-epoch too)."""
        progress = trainer.fit_loop.epoch_loop.batch_progress
        return bool(progress.is_last_batch) or progress.current.ready >= trainer.num_training_batches

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        # a run that ends by max_steps (max_epochs -1, the grids' way) gets its final reading too
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            return True
        if not self._ends_epoch(trainer):
            return False
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch >= trainer.max_epochs
        return epoch % self.every_n_epochs == 0 or last

    @torch.no_grad()
    def score(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Judged accuracy (and the judge's ceiling) of ``pl_module`` now, on the monitor's split."""
        from cmav.evaluation.i2s import make_i2s_fn
        from cmav.evaluation.s2i import make_generator_fn
        from cmav.tasks.s2i import S2ITask

        fn, z_dim, _ = (make_generator_fn if isinstance(pl_module, S2ITask) else make_i2s_fn)(pl_module)
        conditions, real, labels, names = self._split(trainer, pl_module)
        self._judge.to(pl_module.device)
        fake = generate_outputs(fn, conditions, z_dim, seed=self.seed, batch_size=self.batch_size)
        judged = judged_accuracy(self._judge, fake, labels, names, batch_size=self.batch_size)
        if self._ceiling is None:
            self._ceiling = judged_accuracy(self._judge, real, labels, names, batch_size=self.batch_size).accuracy
        return {"judged_acc": float(judged.accuracy), "judged_balanced_acc": float(judged.balanced_accuracy),
                "judge_on_real": float(self._ceiling)}  # fmt: skip

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a resumed fit has loaded the checkpoint (and with it load_state_dict) by now
        self._start = time.perf_counter() - self._resumed_s

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._judge is None or not self._due(trainer):
            return
        # training time so far, without this scoring: "best judged accuracy after how long"
        elapsed = self._train_seconds() if self._start is not None else float("nan")
        t0 = time.perf_counter()
        scores = self.score(trainer, pl_module)
        if trainer.world_size > 1:
            scores = trainer.strategy.broadcast(scores, src=0)
        if self._start is not None:
            self._start += time.perf_counter() - t0
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "time_s": elapsed, **scores})
        for key, value in scores.items():
            pl_module.log(f"{SPLITS[self.split]}/{key}", value, on_step=False, on_epoch=True, sync_dist=False)
        if trainer.is_global_zero:
            self._append_record(Path(trainer.default_root_dir), pl_module.iteration, self.history[-1])

    def record_path(self, root: str | Path) -> Path:
        """The CSV that the readings of a run in ``root`` (its default_root_dir) are appended to."""
        return Path(root) / f"{SPLITS[self.split]}_judged_acc.csv"

    def _append_record(self, root: Path, iteration: int, reading: dict[str, float]) -> None:
        path = self.record_path(root)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.is_file() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            out = csv.writer(f)
            if new:
                out.writerow(RECORD_FIELDS)
            out.writerow([iteration, reading["epoch"], f"{reading['time_s']:.1f}", f"{reading['judged_acc']:.4f}",
                          f"{reading['judged_balanced_acc']:.4f}", f"{reading['judge_on_real']:.4f}",
                          self.judge_ckpt])  # fmt: skip


__all__ = ["JudgedAccuracyMonitor"]
