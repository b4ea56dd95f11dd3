"""Run a few RetrievalTask steps under DDP on 2 CPU processes (gloo); launched by tests/test_retrieval.py.

Lightning's ``ddp`` strategy re-runs this script for rank 1, so it needs the ``__main__`` guard.
Plain ``ddp`` (no unused-parameter search): the models freeze what they never use. Every rank
writes a checksum of its weights (equal sums: gradients were synced) and the shape and positive
offset of its InfoNCE logits (B local queries x W*B gathered keys).

usage: python tests/ddp_retrieval_script.py DATA_ROOT CACHE_DIR OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

import cmav.tasks.retrieval as retrieval
from cmav.data import AudioVisualDataModule

SEEN: list[str] = []


def recording_info_nce(logits_a2i, logits_i2a, offset=0):
    SEEN[:] = [f"{logits_a2i.shape[0]}x{logits_a2i.shape[1]}", f"offset{offset}"]
    return ORIGINAL(logits_a2i, logits_i2a, offset)


ORIGINAL = retrieval.symmetric_info_nce


def main(root: str, cache_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    retrieval.symmetric_info_nce = recording_info_nce
    dm = AudioVisualDataModule(root, image_size=32, batch_size=4, cache_dir=cache_dir, progress=False)
    model = retrieval.RetrievalTask(
        architecture="dense", image_size=32, audio_encoder={"n_blocks": 2, "base_channels": 4},
        image_encoder={"n_blocks": 2, "base_channels": 4}, head={"embed_dim": 8, "hidden_dim": 16},
        dense={"n_heads": 2, "disentangle_weight": 0.1}, log_heatmaps=False,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=2, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        default_root_dir=out,
    )  # fmt: skip
    trainer.fit(model, dm)
    params = [p for p in model.parameters() if p.requires_grad]
    checksum = sum(float(p.double().sum()) for p in params)
    Path(out, f"rank{trainer.global_rank}.txt").write_text(f"{checksum:.10e} {' '.join(SEEN)}\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
