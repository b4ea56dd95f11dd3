"""Run a RetrievalTask step and a validation under DDP on 2 CPU processes (gloo); launched by
tests/test_retrieval.py.

Lightning's ``ddp`` strategy re-runs this script for rank 1, so it needs the ``__main__`` guard.
Plain ``ddp`` (no unused-parameter search): the models freeze what they never use. Every rank
writes a checksum of its weights after the step (equal sums: gradients were synced), the shape
and positive offset of its training InfoNCE logits (B local queries x W*B gathered keys), the
largest relative error of the step's synced gradients against one process's gradients on the two
processes' batches concatenated (what gathering the negatives with gradients must reproduce), and
its ``val/loss``. Rank 0 saves the weights to OUT_DIR/ddp.ckpt (for a one-process validation).

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
KWARGS = dict(
    architecture="dense", image_size=32, audio_encoder={"n_blocks": 2, "base_channels": 4},
    image_encoder={"n_blocks": 2, "base_channels": 4}, head={"embed_dim": 8, "hidden_dim": 16},
    dense={"n_heads": 2, "disentangle_weight": 0.1}, log_heatmaps=False,
)  # fmt: skip


def recording_info_nce(logits_a2i, logits_i2a, offset=0):
    SEEN[:] = [f"{logits_a2i.shape[0]}x{logits_a2i.shape[1]}", f"offset{offset}"]
    return ORIGINAL(logits_a2i, logits_i2a, offset)


ORIGINAL = retrieval.symmetric_info_nce


class RecordingTask(retrieval.RetrievalTask):
    """Keeps the weights before the step, the step's batches of both processes and its synced gradients."""

    def on_train_start(self) -> None:  # the model is built from the data at setup
        self.initial = {k: v.detach().clone() for k, v in self.state_dict().items()}

    def training_step(self, batch, batch_idx):
        # BatchNorm in eval mode: batch statistics would differ between B rows per process and 2B in one
        self.model.eval()
        self.batches = self.all_gather({k: batch[k] for k in ("audio", "image", "label", "track")})
        return super().training_step(batch, batch_idx)

    def on_after_backward(self) -> None:
        self.grads = {n: p.grad.clone() for n, p in self.named_parameters() if p.grad is not None}
        self.seen = list(SEEN)  # validation scores its batches through the same function


def single_process_gradient_error(task: RecordingTask) -> float:
    """Largest ``max |g_ddp - g| / max |g|`` over the parameters, ``g`` from one process on both batches."""
    ref = retrieval.RetrievalTask(**KWARGS, input_shape=list(task.hparams.input_shape))
    ref.load_state_dict(task.initial)
    batches, grads = task.batches, task.grads
    ref.model.eval()
    a, v, label, track = (batches[k].flatten(0, 1) for k in ("audio", "image", "label", "track"))
    loss, _ = ref.contrastive_loss(ref.model.encode_audio(a), ref.model.encode_image(v), label, track)
    loss.backward()
    expected = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    assert expected.keys() == grads.keys(), sorted(expected.keys() ^ grads.keys())
    return max(float((grads[n] - g).abs().max() / g.abs().max().clamp_min(1e-12)) for n, g in expected.items())


def main(root: str, cache_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    retrieval.symmetric_info_nce = recording_info_nce
    dm = AudioVisualDataModule(root, image_size=32, batch_size=4, cache_dir=cache_dir, progress=False)
    model = RecordingTask(**KWARGS)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, limit_train_batches=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=out,
    )  # fmt: skip
    trainer.fit(model, dm)
    params = [p for p in model.parameters() if p.requires_grad]
    checksum = sum(float(p.detach().double().sum()) for p in params)
    trainer.save_checkpoint(Path(out, "ddp.ckpt"))
    val_loss = float(trainer.callback_metrics["val/loss"])
    error = single_process_gradient_error(model)
    Path(out, f"rank{trainer.global_rank}.txt").write_text(f"{checksum:.10e} {' '.join(model.seen)} {error:.3e} "
                                                           f"{val_loss:.8e}\n")  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:4])
