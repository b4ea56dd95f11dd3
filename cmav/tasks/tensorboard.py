"""TensorBoard for every task: the step images and audio are logged at (beside their scalars), the
training loss under a plain ``train/loss``, and the HPARAMS record that compares runs by their
validation metrics."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch import Tensor

from cmav.tasks.common import datamodule_of, tensorboard_writer


def logger_step(module: L.LightningModule, after_train_epoch: bool = False) -> int:
    """The step at which Lightning's loggers record what ``module.log`` logs now: TensorBoard images and
    audio logged at it sit beside those scalars. It counts batches (``global_step`` counts optimiser
    steps: 2 per GAN batch), and validation at the end of an epoch is recorded at the epoch's last
    batch. ``after_train_epoch``: called from ``on_train_epoch_end``, whose metrics Lightning also
    records at the epoch's last batch (its batch counter has moved on by then)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return 0
    step = int(trainer.fit_loop.epoch_loop._batches_that_stepped)
    return max(step - 1, 0) if after_train_epoch else step


def log_training_loss(module: L.LightningModule, loss: Tensor, batch_size: int) -> None:
    """``train/loss`` at every step and its epoch mean as ``train/loss_epoch``: logged with both
    ``on_step`` and ``on_epoch``, Lightning names the step curve ``train/loss_step`` and leaves no
    ``train/loss`` in TensorBoard."""
    module.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=batch_size)
    module.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=batch_size)


def log_hyperparameters(module: L.LightningModule, metrics: Sequence[str], extra: Mapping[str, Any] | None = None) -> None:
    """Fill TensorBoard's HPARAMS tab at the start of fitting (call from ``on_fit_start``): the data's
    and the task's hyper-parameters as the data filled them in, and ``extra``, with ``metrics`` and
    every metric a callback monitors as the columns runs are compared by. ``extra`` goes into the
    logger's ``hparams.yaml`` too.

    TensorBoard reads a run's first HPARAMS record only, and Lightning writes its own (with a
    placeholder ``hp_metric = -1`` unless the logger has ``default_hp_metric: false``) after
    ``on_fit_start``: this one comes first. The columns' values are the logged scalars of those names;
    nothing is logged for them here (Lightning's ``log_hyperparams(params, metrics)`` would log the
    given values as the first point of each curve). A resumed run logging into a folder that holds a
    record already writes none.
    """
    trainer = module.trainer
    if module.global_rank == 0:
        _write_hparams_record(module, metrics, extra)
    if extra:
        for logger in trainer.loggers:  # after the record above; before Lightning writes hparams.yaml
            logger.log_hyperparams(dict(extra))


def _write_hparams_record(module: L.LightningModule, metrics: Sequence[str], extra: Mapping[str, Any] | None) -> None:
    writer = tensorboard_writer(module)
    if writer is None or _hparams_recorded(Path(writer.get_logdir())):
        return
    from torch.utils.tensorboard.summary import hparams

    trainer = module.trainer
    columns = list(dict.fromkeys([*metrics, *(str(cb.monitor) for cb in trainer.callbacks
                                              if isinstance(getattr(cb, "monitor", None), str))]))  # fmt: skip
    params: dict[str, Any] = {}
    dm = datamodule_of(module)
    if dm is not None:
        params.update(dm.hparams)
    params.update(module.hparams)
    params.update(extra or {})
    file_writer = writer._get_file_writer()  # as Lightning's own log_hyperparams writes these records
    for record in hparams(_scalar_values(params), dict.fromkeys(columns, 0.0)):
        file_writer.add_summary(record)
    writer.flush()


def _scalar_values(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``params`` flattened (``encoder/base_channels``), values TensorBoard takes: numbers, booleans,
    text (anything else, None and lists included, as its text). Keys starting with ``_`` (LightningCLI's
    own) are left out."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if str(key).startswith("_"):
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_scalar_values(value, f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def _hparams_recorded(folder: Path, first_events: int = 100) -> bool:
    """Whether an event file in ``folder`` holds an HPARAMS record (looked for among each file's first
    events: it is written at the start of fitting)."""
    try:
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    except ImportError:  # tensorboardX only: cannot tell, so write it
        return False
    for path in folder.glob("*tfevents*"):
        try:
            for n, event in enumerate(EventFileLoader(str(path)).Load()):
                if any(v.tag == "_hparams_/experiment" for v in event.summary.value):
                    return True
                if n >= first_events:
                    break
        except Exception:  # noqa: BLE001 (a cut-off file of a killed run: its records stay unread)
            continue
    return False
