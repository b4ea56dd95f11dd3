"""Run a few S2ITask steps under DDP on 2 CPU processes (gloo); launched by tests/test_tasks.py.

Lightning's ``ddp`` strategy re-runs this script for rank 1, so it needs the ``__main__`` guard.
Every rank writes a checksum of its G and D weights: equal sums show the gradients were synced,
how many cache files it built (given an empty CACHE_DIR, rank 0 builds them in ``prepare_data`` and
rank 1 only reads them), and a digest of torch's random state at its first training batch (the
stream its noise and augmentations come from).

usage: python tests/ddp_s2i_script.py DATA_ROOT CACHE_DIR OUT_DIR [EPOCHS [RESUME_CKPT]]

With EPOCHS the run lasts that many epochs (not 6 steps) and saves ``OUT_DIR/ckpt/last.ckpt`` after
each; RESUME_CKPT resumes from a checkpoint.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import lightning as L
import torch

import cmav.data.cache
from cmav.data import AudioVisualDataModule
from cmav.tasks import S2ITask

BUILT: list[str] = []
_build_tensors = cmav.data.cache.build_tensors


def _counted_build_tensors(*args, **kwargs):
    """The real builder; the count says which rank computed features."""
    BUILT.append("features")
    return _build_tensors(*args, **kwargs)


class FirstDraw(L.Callback):
    """A digest of torch's CPU random state when the fit's first training batch starts."""

    digest = "none"

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.digest == "none":
            self.digest = hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]


def main(root: str, cache_dir: str, out: str, epochs: str | None = None, resume: str | None = None) -> None:
    cmav.data.cache.build_tensors = _counted_build_tensors
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    dm = AudioVisualDataModule(root, image_size=32, batch_size=8, cache_dir=cache_dir, progress=False)
    model = S2ITask(
        variant="s2i_c", encoder_mode="scratch", image_size=32, encoder={"n_blocks": 2, "base_channels": 4},
        generator={"base_channels": 8}, discriminator={"base_channels": 8}, sample_every_n_steps=0,
    )  # fmt: skip
    first = FirstDraw()
    length = {"max_steps": 6} if epochs is None else {"max_epochs": int(epochs)}
    callbacks = [first]
    if epochs is not None:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=Path(out, "ckpt"), save_last=True, every_n_epochs=1))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true", logger=False,
        enable_checkpointing=epochs is not None, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=1, num_sanity_val_steps=0, default_root_dir=out, callbacks=callbacks, **length,
    )  # fmt: skip
    trainer.fit(model, dm, ckpt_path=resume)
    params = list(model.net.generator.parameters()) + list(model.discriminator.parameters())
    checksum = sum(float(p.double().sum()) for p in params)
    Path(out, f"rank{trainer.global_rank}.txt").write_text(
        f"{checksum:.10e} {model.iteration} built={len(BUILT)} draw={first.digest}\n"
    )
    if trainer.global_rank == 0:
        print(f"DDP_OK world={trainer.world_size} iteration={model.iteration} global_step={trainer.global_step}")


if __name__ == "__main__":
    main(*sys.argv[1:6])
