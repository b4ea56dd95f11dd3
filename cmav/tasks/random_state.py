"""Torch's global random state in a checkpoint, so that a resumed run draws what the killed run would have.

Training draws from torch's global generators: the loader's shuffle, the GAN noise, dropout, the
audio and image augmentations. Lightning restores weights, optimisers and step but not these, and
``seed_everything`` at start-up rewinds them to the first epoch's stream, so a resumed run would see
the first epoch's batch order and noise again. Each task stores the state in ``on_save_checkpoint``
and sets it back in ``on_load_checkpoint`` (which Lightning calls before the first resumed batch is
drawn; its sanity check runs under ``isolate_rng`` and draws nothing from it).

Under DDP every process seeds identically (``seed_everything``), so without more they would all draw
the same noise, augmentations and dropout masks for their different batches. :func:`separate_rank_streams`
forks the shared stream by rank when a fit starts, and a checkpoint holds every rank's state, so a
resumed DDP run on as many processes continues each rank's own stream.

Only tensors are stored, so checkpoints still load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import warnings

import lightning as L
import torch

CHECKPOINT_KEY = "cmav_random_state"


def _local_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _world(module: L.LightningModule | None) -> tuple[int, int]:
    trainer = None if module is None else module._trainer  # noqa: SLF001 -- ``module.trainer`` raises when detached
    return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)


def every_rank(module: L.LightningModule | None, value: object) -> list:
    """``value`` from every DDP rank, in rank order (``[value]`` on one process). A collective: every
    rank must call it, as every rank runs the checkpoint hooks when Lightning saves."""
    world, _ = _world(module)
    if world == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [value]
    values: list = [None] * world
    torch.distributed.all_gather_object(values, value)
    return values


def save_random_state(checkpoint: dict, module: L.LightningModule | None = None) -> None:
    """Put torch's CPU and CUDA generator states into ``checkpoint``: this process's at the top level,
    and under DDP every rank's under ``"ranks"``."""
    state = _local_state()
    ranks = every_rank(module, dict(state))
    if len(ranks) > 1:
        state["ranks"] = ranks
    checkpoint[CHECKPOINT_KEY] = state


def separate_rank_streams(module: L.LightningModule) -> None:
    """Under DDP, give each rank its own stream at the start of a fit, forked from the shared one.

    A no-op on one process (its draws stay what they always were) and when a resumed fit has already
    set each rank's own saved state. Every rank draws the same fork seed from the stream they share,
    then adds its rank, so the forks depend on ``seed_everything`` and on nothing else.
    """
    world, rank = _world(module)
    if world == 1 or getattr(module, "_rank_streams_set_by", None) == id(module._trainer):  # noqa: SLF001
        return
    fork = int(torch.randint(0, 2**62, (1,)))
    torch.manual_seed(fork + rank)
    module._rank_streams_set_by = id(module._trainer)  # noqa: SLF001


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
    world, rank = trainer.world_size, trainer.global_rank
    ranks = state.get("ranks")
    if world > 1 and ranks is not None and len(ranks) == world:
        state = ranks[rank]
        module._rank_streams_set_by = id(trainer)  # noqa: SLF001 -- separate_rank_streams leaves them be
    elif world > 1 or ranks is not None:
        saved_on = 1 if ranks is None else len(ranks)
        warnings.warn(
            f"{trainer.ckpt_path or 'the checkpoint'} was saved by {saved_on} process(es) and resumes on {world}: "
            "the resumed run's draws differ from the killed run's (it continues from the first process's random "
            f"state{', forked by rank' if world > 1 else ''})",
            stacklevel=2,
        )
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
