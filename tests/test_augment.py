"""Audio augmentation: how often a chosen group changes an example, and the documented config forms
that the `cmav fit` command line passes through to the augmentation's own checks."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from cmav.features.augment import AudioAugment, audio_augment_config

from fixtures import make_suburmp

SR = 22050
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
]

ONE_STEP = {  # one step each side of the identity: the grid's only non-zero values are -1 and +1 step
    "pitch": {"max_semitones": 0.25, "steps_per_semitone": 4},
    "stretch": {"max_rate": 0.025, "rate_step": 0.025},
}


def _changed(group: str, p: float, n: int) -> torch.Tensor:
    """``(n,)`` bool: which of ``n`` noisy tones ``group`` (one step each side, probability ``p``) changed."""
    torch.manual_seed(0)
    t = torch.arange(2048) / SR
    x = (0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(2048)).repeat(n, 1)
    y = AudioAugment({group: {"p": p, **ONE_STEP[group]}}).waveform(x.clone(), SR)
    return (y - x).abs().amax(-1) > 1e-6


@pytest.mark.parametrize("group", ["pitch", "stretch"])
def test_pitch_and_stretch_change_every_chosen_example(group):
    # the step was drawn from -g..g, 0 included: at one step each side a third of p=1 examples stayed
    # as they were, and p=0.3 changed 0.2 of them
    assert bool(_changed(group, 1.0, 64).all())
    fraction = float(_changed(group, 0.3, 400).float().mean())
    assert abs(fraction - 0.3) < 0.06, fraction


def _fit(tmp_path: Path, monkeypatch, *augment: str) -> int:
    """``cmav fit`` for one batch of a tiny classifier on a fixture root, with ``--data.augment...`` options."""
    from cmav.cli.main import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cmav"])
    root = tmp_path / "d" if (tmp_path / "d").is_dir() else make_suburmp(tmp_path / "d", chunks=2)
    return main(["fit", "--config", str(EXPERIMENTS / "audio_classifier.yaml"), "--trainer.accelerator=cpu",
                 "--trainer.fast_dev_run", "true", "--trainer.enable_progress_bar=false",
                 "--trainer.enable_model_summary=false", f"--data.root={root}", f"--data.cache_dir={tmp_path / 'c'}",
                 "--data.image_size=32", "--data.batch_size=13", "--data.progress=false",
                 "--model.init_args.audio_encoder.base_channels=4", "--model.init_args.audio_encoder.n_blocks=2",
                 *augment])  # fmt: skip


def test_the_documented_noise_off_switch_and_float_counts_pass_the_command_line(tmp_path, monkeypatch, capsys):
    # jsonargparse refused both before augment.py saw them: "[inf, inf]" (its floats come back as the
    # string 'inf') and n_bands 2.0 (an int option), though YAML took them and the docs name the CLI
    noise_off = ["--data.augment.noise.p=1", "--data.augment.noise.snr_db", "[inf, inf]"]
    assert _fit(tmp_path, monkeypatch, *noise_off, "--data.augment.eq.p=1", "--data.augment.eq.n_bands", "2.0") == 0
    # ... to augment.py's own checks, which refuse what is not a whole number or a usable SNR range
    for bad, message in ((["--data.augment.eq.n_bands=2.5"], "audio augmentation eq.n_bands must be a whole number"),
                         (["--data.augment.noise.snr_db", "[inf, 20]"], "audio augmentation noise.snr_db must be"),
                         (["--data.augment.noise.snr_db", "[loud, 20]"], "audio augmentation noise.snr_db must be")):
        assert message in _refusal(tmp_path, monkeypatch, capsys, "--data.augment.noise.p=1", "--data.augment.eq.p=1",
                                   *bad)  # fmt: skip


def _refusal(tmp_path: Path, monkeypatch, capsys, *augment: str) -> str:
    """The data module's refusal of ``cmav fit``'s augmentation options: its ValueError, or the one
    ``error:`` line should the CLI turn it into one (exit status 2)."""
    capsys.readouterr()
    try:
        rc = _fit(tmp_path, monkeypatch, *augment)
    except ValueError as exc:
        return str(exc)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(err) == 1, (rc, err)
    return err[0]


@pytest.mark.parametrize("spelling", ["inf", ".inf", "+inf", "Infinity", ".INF"])
def test_infinite_snr_spellings_read_as_no_noise(spelling):
    cfg = audio_augment_config({"noise": {"p": 1.0, "snr_db": [spelling, spelling]}})
    assert cfg.noise.snr_db == (math.inf, math.inf)
    with pytest.raises(ValueError, match=r"noise\.snr_db must be .*got \[-inf, inf\]"):
        audio_augment_config({"noise": {"p": 1.0, "snr_db": ["-inf", "inf"]}})
    with pytest.raises(ValueError, match=r"noise\.snr_db must be .*got \['loud', 20\]"):
        audio_augment_config({"noise": {"p": 1.0, "snr_db": ["loud", 20]}})
    with pytest.raises(ValueError, match=r"noise\.snr_db must be a \(low, high\) pair.*got 20"):
        audio_augment_config({"noise": {"p": 1.0, "snr_db": 20}})
