"""`cmav fit|validate` on a tiny data set, as the CLI test files run it: the arguments that keep a
run to one batch, a tiny sound classifier trained by `cmav fit`, and the one-line refusal check."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from cmav.cli.main import main

from fixtures import make_suburmp

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

TINY_CLASSIFIER = ["--model.init_args.audio_encoder.base_channels=8", "--model.init_args.audio_encoder.n_blocks=2"]


def cli_args(data: dict, run: Path, *configs: str) -> list[str]:
    """``--config`` for each of ``configs`` (default: the sound classifier's YAML), then one batch of
    training and validation on CPU into ``run``, on ``data``'s root and cache at 32 px."""
    given = [a for c in configs or ("audio_classifier.yaml",) for a in ("--config", str(EXPERIMENTS / c))]
    return [*given, "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", "--trainer.limit_val_batches=1", "--trainer.limit_train_batches=1",
            f"--trainer.default_root_dir={run}", f"--data.root={data['root']}", f"--data.cache_dir={data['cache']}",
            "--data.image_size=32", "--data.batch_size=13", "--data.progress=false"]  # fmt: skip


def data_with_classifier(base: Path) -> dict:
    """13 classes, 2 pairs each per split under ``base``, and a tiny sound classifier trained for one
    epoch by `cmav fit` (``"ckpt"``)."""
    data = {"root": make_suburmp(base / "d", chunks=2), "cache": base / "cache"}
    mp = pytest.MonkeyPatch()
    mp.chdir(base)
    mp.setattr(sys, "argv", ["cmav"])
    try:
        assert main(["fit", *cli_args(data, base / "run"), *TINY_CLASSIFIER, "--trainer.max_epochs=1"]) == 0
    finally:
        mp.undo()
    data["ckpt"] = base / "clf.ckpt"
    shutil.copy(base / "run" / "checkpoints" / "last.ckpt", data["ckpt"])
    return data


def one_error_line(argv: list[str], capsys) -> str:
    """The single stderr line of ``cmav argv``, which must exit with status 2."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]
