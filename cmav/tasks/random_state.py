"""Torch's global random state in a checkpoint, so that a resumed run draws what the killed run would have.

Training draws from torch's global generators: the loader's shuffle, the GAN noise, dropout, the
audio and image augmentations. Lightning restores weights, optimisers and step but not these, and
``seed_everything`` at start-up rewinds them to the first epoch's stream, so a resumed run would see
the first epoch's batch order and noise again. Each task stores the state in ``on_save_checkpoint``
and sets it back in ``on_load_checkpoint`` (which Lightning calls before the first resumed batch is
drawn; its sanity check runs under ``isolate_rng`` and draws nothing from it).

Only tensors are stored, so checkpoints still load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import warnings

import lightning as L
import torch

CHECKPOINT_KEY = "cmav_random_state"


def save_random_state(checkpoint: dict) -> None:
    """Put torch's CPU and CUDA generator states into ``checkpoint``."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    checkpoint[CHECKPOINT_KEY] = state


def restore_random_state(module: L.LightningModule, checkpoint: dict) -> None:
    """Set torch's generators from ``checkpoint`` when ``module``'s trainer is resuming a fit.

    A no-op elsewhere (``load_from_checkpoint`` for evaluation must not reseed the caller's
    generators); a warning for checkpoints saved before this existed. The CUDA states are set only
    when the machine has as many devices as the saving run had; on another machine the run
    continues with the CPU state alone, with a warning.
    """
    state = checkpoint.get(CHECKPOINT_KEY)
    trainer = module._trainer  # noqa: SLF001 -- ``module.trainer`` raises when detached
    if trainer is None or trainer.state.fn != "fit":
        return
    if not state:
        warnings.warn(
            f"{trainer.ckpt_path or 'the checkpoint'} holds no random state (saved by an older cmav): the resumed "
            "run draws its batch order, noise and augmentations anew, not what the killed run would have drawn",
            stacklevel=2,
        )
        return
    _warn_if_saved_mid_epoch(trainer, checkpoint)
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if not cuda or not torch.cuda.is_available():
        return
    if len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    else:
        warnings.warn(
            f"the checkpoint holds the random state of {len(cuda)} CUDA devices, this machine has "
            f"{torch.cuda.device_count()}: the resumed run's GPU draws differ from the killed run's",
            stacklevel=2,
        )


def _warn_if_saved_mid_epoch(trainer: L.Trainer, checkpoint: dict) -> None:
    """Lightning resumes a checkpoint saved inside an epoch by starting that epoch's loader anew: it
    shuffles again, so some items repeat and others are skipped. Only epoch-end checkpoints (the
    YAMLs' ``every_n_epochs``) resume exactly; say so instead of letting "exactly" pass."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    done = progress.get("current", {}).get("completed", 0)
    if done and progress.get("is_last_batch") is False:
        warnings.warn(
            f"{trainer.ckpt_path or 'the checkpoint'} was saved after batch {done} of an epoch: Lightning starts "
            "that epoch's loader again with a new shuffle, so the resumed run does not see the batches the killed "
            "run would have seen (a checkpoint saved at an epoch's end resumes exactly)",
            stacklevel=3,
        )
