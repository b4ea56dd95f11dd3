"""Audio robustness: augmentation ops, training-only augmentation in the data module, the varied
stand-in render, soundfont records, and the cross-source evaluation and grid (which refuse a font
that shares recordings with the training font)."""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import struct
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import yaml

from cmav.data.datamodule import AudioVisualDataModule
from cmav.data.errors import DataError
from cmav.evaluation.robustness import SameSourceError, check_independent, evaluate_robustness
from cmav.features import build_front_end
from cmav.features.augment import (
    WAVEFORM_GROUPS,
    AudioAugment,
    AudioAugmentConfig,
    audio_augment_config,
    pitch_shift,
    shelf_peak_coefficients,
    time_stretch,
)
from cmav.standin.build import MANIFEST
from cmav.standin.soundfonts import TIMGM6MB, same_source, sample_digests, sf2_info, shared_samples, soundfont_record

from fixtures import make_suburmp

SR = 22050
EXPERIMENTS = Path(__file__).parents[1] / "experiments"
HAVE_FLUIDSYNTH = shutil.which("fluidsynth") is not None and Path("/usr/share/sounds/sf2/FluidR3_GM.sf2").is_file()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tone(freq: float = 440.0, n: int = 11025, batch: int = 3, dtype=torch.float32) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float64) / SR
    return (0.3 * torch.sin(2 * math.pi * freq * t)).repeat(batch, 1).to(dtype)


def peak_hz(x: torch.Tensor) -> float:
    spec = torch.fft.rfft(x.double() * torch.hann_window(x.shape[-1], dtype=torch.float64)).abs()
    return float(spec.argmax()) * SR / x.shape[-1]


# ----------------------------------------------------------------------------------- augmentation ops

ON = {  # every group switched on (p=1) at a clear strength
    "gain": {"p": 1.0, "max_db": 12.0}, "eq": {"p": 1.0, "max_db": 12.0, "n_bands": 2},
    "reverb": {"p": 1.0, "max_wet": 0.8}, "noise": {"p": 1.0, "snr_db": [10.0, 10.0]},
    "pitch": {"p": 1.0, "max_semitones": 1.0}, "stretch": {"p": 1.0, "max_rate": 0.2},
}  # fmt: skip
ZERO = {  # the same groups switched on (p=1) at zero strength
    "gain": {"p": 1.0, "max_db": 0.0}, "eq": {"p": 1.0, "max_db": 0.0}, "reverb": {"p": 1.0, "max_wet": 0.0},
    "noise": {"p": 1.0, "snr_db": [math.inf, math.inf]}, "pitch": {"p": 1.0, "max_semitones": 0.0},
    "stretch": {"p": 1.0, "max_rate": 0.0},
}  # fmt: skip


@pytest.mark.parametrize("group", WAVEFORM_GROUPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_waveform_op_keeps_shape_dtype_and_rate_and_is_identity_at_zero_strength(group, dtype):
    torch.manual_seed(0)
    x = tone(dtype=dtype) + 0.01 * torch.randn(3, 11025, dtype=dtype)
    on = AudioAugment({group: ON[group]})
    y = on.waveform(x, SR)
    assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
    assert not torch.allclose(y, x, atol=1e-4), f"{group} at p=1 changed nothing"
    # (B, C, T) batches too, and the sample rate is kept: same length, and (but for pitch) the tone's pitch
    assert on.waveform(x[:, None], SR).shape == (3, 1, 11025)
    if group not in ("pitch", "noise"):
        assert abs(peak_hz(y[0]) - 440.0) < 4.0, group
    zero = AudioAugment({group: ZERO[group]})
    assert torch.equal(zero.waveform(x, SR), x), f"{group} at zero strength is not the identity"
    assert torch.equal(AudioAugment({group: {**ON[group], "p": 0.0}}).waveform(x, SR), x)


def test_the_default_config_is_all_off_and_the_identity():
    cfg = AudioAugmentConfig()
    assert cfg.enabled_groups == [] and not cfg.needs_waveform and not AudioAugment(cfg).active
    x, feats = tone(), torch.randn(2, 1, 128, 44)
    assert torch.equal(AudioAugment().waveform(x, SR), x) and torch.equal(AudioAugment().features(feats), feats)


def test_pitch_shift_moves_the_tone_and_time_stretch_keeps_it():
    x = tone(440.0)
    for semitones in (1.0, -0.5):
        assert abs(peak_hz(pitch_shift(x, semitones)[0]) - 440.0 * 2 ** (semitones / 12)) < 3.0
        assert pitch_shift(x, semitones).shape == x.shape
    y = time_stretch(x, 1.2)
    assert y.shape == x.shape and abs(peak_hz(y[0]) - 440.0) < 3.0


def _rms_db(x: torch.Tensor) -> float:
    return 20 * math.log10(float(x[..., 2048:-2048].pow(2).mean().sqrt()))  # away from the ends


@pytest.mark.parametrize("rate", [0.9, 0.975, 1.025, 1.2])
def test_time_stretch_keeps_the_level_on_both_sides_of_rate_one(rate):
    # a reflect-padded first frame made the vocoder cancel bins at rate < 1: -13 dB on a sine
    x = tone(440.0)
    assert abs(_rms_db(time_stretch(x, rate, length=int(round(x.shape[-1] / rate)))) - _rms_db(x)) < 1.5


@pytest.mark.parametrize("semitones", [0.25, 0.5, -0.5, 2.0, -2.0])
def test_pitch_shift_keeps_the_level_up_and_down(semitones):
    x = tone(440.0)
    assert abs(_rms_db(pitch_shift(x, semitones)) - _rms_db(x)) < 1.5


@pytest.mark.parametrize("kind,reference", [("low", "bass_biquad"), ("high", "treble_biquad"), ("peak", "equalizer_biquad")])
def test_eq_biquads_are_torchaudios(kind, reference):
    x = 0.1 * torch.randn(1, 4000, dtype=torch.float64)  # torchaudio's biquads clamp to [-1, 1]
    freq, gain, q = torch.tensor([700.0], dtype=torch.float64), torch.tensor([-7.5], dtype=torch.float64), 0.9
    a, b = shelf_peak_coefficients(kind, freq, gain, torch.tensor([q], dtype=torch.float64), SR)
    ours = torchaudio.functional.lfilter(x, a, b, clamp=False, batching=True)
    fn = getattr(torchaudio.functional, reference)
    theirs = fn(x, SR, -7.5, 700.0, q) if kind != "peak" else fn(x, SR, 700.0, -7.5, q)
    assert torch.allclose(ours, theirs, atol=1e-8)


def test_noise_is_added_at_the_asked_snr_and_reverb_adds_a_tail():
    torch.manual_seed(1)
    x = tone(batch=8)
    noisy = AudioAugment({"noise": {"p": 1.0, "snr_db": [20.0, 20.0], "max_colour": 0.0}}).waveform(x, SR)
    snr = 10 * torch.log10(x.pow(2).mean(1) / (noisy - x).pow(2).mean(1))
    assert torch.allclose(snr, torch.full_like(snr, 20.0), atol=0.1)
    click = torch.zeros(2, 11025)
    click[:, 100] = 1.0
    wet = AudioAugment({"reverb": {"p": 1.0, "max_wet": 1.0, "rt60_s": [0.5, 0.5]}}).waveform(click, SR)
    assert wet[:, :100].abs().max() < 1e-6  # causal (FFT rounding aside) ...
    early, late = wet[:, 1000:4000].pow(2).sum(), wet[:, 8000:].pow(2).sum()
    assert late > 0 and early > 10 * late  # ... with a decaying tail


def test_specaugment_masks_bands_and_frames_with_the_example_mean():
    torch.manual_seed(0)
    feats = torch.randn(4, 1, 128, 44)
    out = AudioAugment({"mask": {"p": 1.0, "freq_width": 30, "time_width": 10}}).features(feats)
    assert out.shape == feats.shape and out.dtype == feats.dtype
    changed = out != feats
    assert changed.any()
    for i in range(4):
        assert torch.allclose(out[i][changed[i]], feats[i].mean().expand(int(changed[i].sum())))
    zero = AudioAugment({"mask": {"p": 1.0, "freq_width": 0, "time_width": 0}})
    assert torch.equal(zero.features(feats), feats)


def test_freq_mixstyle_mixes_each_bins_statistics_with_another_example_and_keeps_the_rest():
    torch.manual_seed(0)
    colour = torch.linspace(-20, 20, 64).view(1, 1, 64, 1)
    feats = torch.randn(6, 1, 64, 44) * torch.rand(6, 1, 64, 1).add(0.5) + colour * torch.arange(-3, 3).view(6, 1, 1, 1)
    out = AudioAugment({"mixstyle": {"p": 1.0, "alpha": 0.4}}).features(feats)
    assert out.shape == feats.shape and out.dtype == feats.dtype and torch.isfinite(out).all()
    assert not torch.allclose(out, feats, atol=1e-3)

    def z(x):  # what plays: each bin's course over time, its mean and sd removed
        return (x - x.mean(dim=(1, 3), keepdim=True)) / (x.var(dim=(1, 3), keepdim=True) + 1e-6).sqrt()

    assert torch.allclose(z(out), z(feats), atol=1e-3)
    # each example's new bin means lie between its own and those of one other example of the batch
    mu, new = feats.mean(dim=(1, 3)), out.mean(dim=(1, 3))
    for i in range(6):
        between = [((new[i] - mu[i]) * (new[i] - mu[j]) <= 1e-3).all() for j in range(6) if j != i]
        assert any(between) or torch.allclose(new[i], mu[i], atol=1e-3)
    for off in ({"p": 1.0, "strength": 0.0}, {"p": 0.0}):
        assert torch.equal(AudioAugment({"mixstyle": off}).features(feats), feats)
    with pytest.raises(ValueError, match=r"mixstyle\.alpha must be > 0, got 0.0"):
        audio_augment_config({"mixstyle": {"p": 0.5, "alpha": 0.0}})


@pytest.mark.parametrize(
    ("group", "bad", "message"),
    [
        ("stretch", {"max_rate": 1.0}, r"stretch\.max_rate must be in \[0, 1\), got 1.0"),  # torchaudio: "step must be nonzero"
        ("stretch", {"rate_step": 0.0}, r"stretch\.rate_step must be > 0"),
        ("eq", {"band_q": [0.0, 0.0]}, r"eq\.band_q must be a \(low, high\) pair with 0 < low <= high, got \[0.0, 0.0\]"),
        ("reverb", {"max_wet": 1.5}, r"reverb\.max_wet must be in \[0, 1\], got 1.5"),  # non-finite audio before
        ("noise", {"snr_db": [40.0, 15.0]}, r"noise\.snr_db must be a \(low, high\) pair with low <= high"),
        ("pitch", {"steps_per_semitone": 0}, r"pitch\.steps_per_semitone must be >= 1"),
        ("gain", {"max_db": -3.0}, r"gain\.max_db must be >= 0"),
    ],
)
def test_settings_outside_their_range_are_refused_when_the_config_is_read(group, bad, message):
    with pytest.raises(ValueError, match=message):
        audio_augment_config({group: {"p": 0.5, **bad}})
    assert audio_augment_config({group: {"p": 0.5}}).enabled_groups == [group]  # the defaults are valid


# -- drawn values stay in the documented range; configs that cannot are refused when read


def _drawn(monkeypatch, group: str, options: dict, n: int = 256) -> set[float]:
    """The pitch shifts (semitones) or stretch rates ``group`` asks for over a batch of ``n``."""
    import cmav.features.augment as augment

    seen: set[float] = set()
    name = "pitch_shift" if group == "pitch" else "time_stretch"

    def record(rows, value, *args, **kwargs):
        seen.add(round(float(value), 9))
        return rows

    monkeypatch.setattr(augment, name, record)
    torch.manual_seed(0)
    AudioAugment({group: {"p": 1.0, **options}}).waveform(torch.zeros(n, 64), SR)
    return seen


def test_pitch_and_stretch_grids_stay_inside_their_documented_range(monkeypatch):
    # round(max / step) overshot: +-2/3 semitone for max 0.5 at 3 steps, rates -0.2..2.2 for max 0.9
    # at step 0.6 (then a RuntimeError inside the vocoder)
    def values(*v):
        return {round(x, 9) for x in v}

    assert _drawn(monkeypatch, "pitch", {"max_semitones": 0.5, "steps_per_semitone": 3}) == values(-1 / 3, 1 / 3)
    assert _drawn(monkeypatch, "pitch", {"max_semitones": 1.0, "steps_per_semitone": 2}) == values(-1, -0.5, 0.5, 1)
    assert _drawn(monkeypatch, "stretch", {"max_rate": 0.9, "rate_step": 0.6}) == values(0.4, 1.6)
    assert _drawn(monkeypatch, "stretch", {"max_rate": 0.1, "rate_step": 0.0667}) == values(1 - 0.0667, 1.0667)
    assert _drawn(monkeypatch, "stretch", {"max_rate": 0.3, "rate_step": 0.1}) == values(0.7, 0.8, 0.9, 1.1, 1.2, 1.3)
    monkeypatch.undo()
    x = 0.1 * torch.randn(4, 11025)
    torch.manual_seed(0)
    y = AudioAugment({"stretch": {"p": 1.0, "max_rate": 0.9, "rate_step": 0.6}}).waveform(x, SR)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize(
    ("group", "bad", "message"),
    [  # an 'enabled' group whose grid has no step but 0: it never changed anything, yet kept the raw chunks
        ("pitch", {"max_semitones": 0.1}, r"pitch\.max_semitones .*one step"),
        ("pitch", {"max_semitones": 0.2, "steps_per_semitone": 4}, r"pitch\.max_semitones .*one step"),
        ("stretch", {"max_rate": 0.01}, r"stretch\.max_rate .*one step"),
        # a grid reaching rate 0 (or below): the vocoder cannot play it
        ("stretch", {"max_rate": 0.9999999999, "rate_step": 0.1}, r"stretch\.max_rate .*rate"),
    ],
)
def test_pitch_and_stretch_settings_without_a_usable_grid_are_refused(group, bad, message):
    with pytest.raises(ValueError, match=message):
        audio_augment_config({group: {"p": 0.5, **bad}})
    with pytest.raises(ValueError, match=message):
        AudioAugment({group: {"p": 1.0, **bad}})
    if "one step" in message:  # off, nothing is drawn; a rate of 0 is refused whatever p (as max_rate 1 is)
        assert audio_augment_config({group: {"p": 0.0, **bad}}).enabled_groups == []
    else:
        with pytest.raises(ValueError, match=message):
            audio_augment_config({group: {"p": 0.0, **bad}})
    key = "max_semitones" if group == "pitch" else "max_rate"
    assert audio_augment_config({group: {"p": 1.0, key: 0.0}}).enabled_groups == [group]  # zero strength stays


@pytest.mark.parametrize("snr", [[20.0, math.inf], [-math.inf, 0.0], [-math.inf, math.inf], [math.nan, math.nan],
                                 [10.0, math.nan]])  # fmt: skip
def test_noise_snr_must_be_finite_or_exactly_inf_inf(snr):
    # (20, inf) drew inf (no noise) and (-inf, 0) switched the group off while it counted as enabled
    with pytest.raises(ValueError, match=r"noise\.snr_db must be .*finite"):
        audio_augment_config({"noise": {"p": 1.0, "snr_db": snr}})
    assert audio_augment_config({"noise": {"p": 1.0, "snr_db": [math.inf, math.inf]}}).noise.snr_db == (math.inf,) * 2
    assert audio_augment_config({"noise": {"p": 1.0, "snr_db": [-5.0, 60.0]}}).noise.snr_db == (-5.0, 60.0)


def test_reverb_keeps_each_examples_level_and_leaves_silence_alone():
    # the energy-keeping mix sqrt(1-w) dry + sqrt(w) wet moved tonal chunks by -15..+7 dB
    torch.manual_seed(0)
    t = torch.arange(11025) / SR
    x = torch.zeros(24, 11025)
    for i, start in enumerate([0, 5000, 9000, 10500] * 5):
        x[i, start:] = (0.05 + 0.1 * i / 20) * torch.sin(2 * math.pi * (220.0 + 30 * i) * t[: 11025 - start])
    x[20:23] = 0.0
    x[23, 5000] = 1e-30  # next to silence: no division by ~0
    aug = AudioAugment({"reverb": {"p": 1.0, "max_wet": 0.6, "rt60_s": [1.2, 1.2], "max_predelay_s": 0.0}})
    y = aug.waveform(x, SR)
    assert torch.isfinite(y).all() and torch.equal(y[20:], x[20:])
    change_db = 10 * torch.log10(y[:20].pow(2).mean(-1) / x[:20].pow(2).mean(-1))
    assert change_db.abs().max() < 0.01, change_db
    assert ((y[:20] - x[:20]).pow(2).mean(-1) > 1e-3 * x[:20].pow(2).mean(-1)).sum() >= 15  # the sound still changes
    for i, start in enumerate([5000, 9000, 10500], 1):  # causal (FFT rounding aside): nothing before the note
        assert y[i, :start].abs().max() < 1e-5


@pytest.mark.parametrize(
    ("group", "key"),
    [("eq", "n_bands"), ("pitch", "steps_per_semitone"), ("mask", "freq_width"), ("mask", "time_width"),
     ("mask", "n_freq"), ("mask", "n_time")],
)  # fmt: skip
def test_count_settings_must_be_whole_numbers(group, key):
    # 1.5 was accepted and failed at the first batch (eq, mask) or drew off the documented grid (pitch)
    for bad in (1.5, "2", True):
        with pytest.raises(ValueError, match=rf"{group}\.{key} must be a whole number, got {bad!r}"):
            audio_augment_config({group: {"p": 1.0, key: bad}})
    cfg = audio_augment_config({group: {"p": 1.0, key: 2.0}})  # YAML or a CLI may hand a float: kept as the int
    value = getattr(getattr(cfg, group), key)
    assert value == 2 and type(value) is int
    from cmav.features.augment import EqAugment, MaskAugment, PitchAugment

    cls = {"eq": EqAugment, "pitch": PitchAugment, "mask": MaskAugment}[group]
    with pytest.raises(ValueError, match=rf"{group}\.{key} must be a whole number"):  # a config object too
        AudioAugment(AudioAugmentConfig(**{group: cls(p=1.0, **{key: 1.5})}))
    aug = AudioAugment(AudioAugmentConfig(**{group: cls(p=1.0, **{key: 2.0})}))
    assert type(getattr(getattr(aug.config, group), key)) is int
    torch.manual_seed(0)
    x, feats = tone(batch=2), torch.randn(2, 1, 64, 44)
    assert torch.isfinite(aug.waveform(x, SR)).all() and torch.isfinite(aug.features(feats)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_every_op_runs_on_cuda():
    x = tone().cuda()
    aug = AudioAugment({**ON, "mask": {"p": 1.0}, "mixstyle": {"p": 1.0}})
    y = aug.waveform(x, SR)
    assert y.device == x.device and y.shape == x.shape
    assert aug.features(build_front_end(None).cuda()(y, SR)).device == x.device


def test_config_from_yaml_dicts_and_clear_errors():
    cfg = audio_augment_config({"eq": {"p": 0.5, "low_hz": [50, 300]}, "mask": {"p": 0.2}})
    assert cfg.eq.low_hz == (50, 300) and cfg.enabled_groups == ["eq", "mask"] and cfg.needs_waveform
    assert audio_augment_config(cfg.to_dict()) == cfg
    assert not audio_augment_config({"mask": {"p": 1.0}}).needs_waveform
    with pytest.raises(ValueError, match="no group.*'echo'"):
        audio_augment_config({"echo": {"p": 1.0}})
    with pytest.raises(ValueError, match="unknown option.*'strength'"):
        audio_augment_config({"gain": {"strength": 1.0}})
    with pytest.raises(ValueError, match=r"gain.p must be in \[0, 1\]"):
        audio_augment_config({"gain": {"p": 2.0}})


# ----------------------------------------------------------------------------------- the data module


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return make_suburmp(tmp_path_factory.mktemp("rob") / "suburmp", chunks=3)


class Probe(L.LightningModule):
    """Records the audio of every batch it is given, training and validation."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list] = {"train": [], "val": []}

    def training_step(self, batch, i):
        assert "wave" not in batch  # raw chunks never reach the model
        self.seen["train"].append((batch["index"].cpu(), batch["audio"].cpu()))
        return self.w.pow(2).sum()

    def validation_step(self, batch, i):
        self.seen["val"].append((batch["index"].cpu(), batch["audio"].cpu()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_probe(dm, tmp_path) -> Probe:
    probe = Probe()
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_steps=3, limit_val_batches=2, val_check_interval=3, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(probe, datamodule=dm)
    return probe


def test_augmentation_is_on_in_training_and_off_at_evaluation(fixture_root, tmp_path):
    dm = AudioVisualDataModule(str(fixture_root), image_size=32, batch_size=8, progress=False,
                               cache_dir=str(tmp_path / "c"), augment={"gain": {"p": 1.0, "max_db": 20.0},
                                                                      "mask": {"p": 1.0}})  # fmt: skip
    probe = _fit_probe(dm, tmp_path)
    train, val = dm.train_full.tensors, dm.val.tensors
    assert train.waves is not None and train.waves.shape == (39, 11025) and train.waves.dtype == torch.float32
    assert val.waves is None
    assert len(list((tmp_path / "c").glob("train-waves-*.pt"))) == 1 and not list((tmp_path / "c").glob("validation-waves-*"))
    for index, audio in probe.seen["train"]:
        assert not torch.allclose(audio, train.audio[index].float(), atol=0.5), "training batch not augmented"
    assert probe.seen["val"]
    for index, audio in probe.seen["val"]:
        assert torch.equal(audio, val.audio[index].float()), "evaluation batch was augmented"
    # outside a trainer (no trainer, or not training) the hook only drops the raw chunks
    batch = next(iter(dm.train_dataloader()))
    dm.trainer = None
    out = dm.on_after_batch_transfer(dict(batch), 0)
    assert "wave" not in out and torch.equal(out["audio"], batch["audio"])
    assert dm.hparams.augment["gain"]["max_db"] == 20.0 and isinstance(dm.hparams.augment, dict)


def test_zero_strength_waveform_path_reproduces_the_cached_features(fixture_root, tmp_path):
    dm = AudioVisualDataModule(str(fixture_root), image_size=32, batch_size=39, progress=False,
                               cache_dir=str(tmp_path / "c"), augment={"gain": {"p": 1.0, "max_db": 0.0}})  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    fresh, cached = dm.augmented_audio(batch), batch["audio"]
    assert fresh.shape == cached.shape and batch["wave"].dtype == torch.float32
    # the float32 chunks the cache was computed from: the same features within the float16 cache's
    # rounding within 80 dB of each chunk's peak, and within FFT round-off in the bins below that
    # (int16 waves put a noise floor there: up to 19 dB off on the stand-in)
    err = (fresh - cached).abs()
    near = cached > cached.amax(dim=(1, 2, 3), keepdim=True) - 80
    assert float(err[near].max()) < 0.03 and float(err.max()) < 0.2, (float(err[near].max()), float(err.max()))


def test_augment_is_a_cli_option(capsys, monkeypatch):
    from cmav.cli.main import main

    monkeypatch.setattr(sys, "argv", ["cmav"])
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(EXPERIMENTS / "audio_classifier.yaml"), "--data.augment.eq.p=0.5",
              "--data.augment.mask.freq_width=8", "--print_config"])  # fmt: skip
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)["data"]["augment"]
    assert printed["eq"]["p"] == 0.5 and printed["mask"]["freq_width"] == 8 and printed["gain"]["p"] == 0.0


# ----------------------------------------------------------------------------------- the stand-in


def test_performance_changes_velocities_and_lengths_within_bounds():
    from cmav.standin.music import Note
    from cmav.standin.variation import MAX_SHORTENING_S, Performance, random_performance

    notes = [Note(0.0, 1.0, 60, 100, "legato"), Note(1.0, 1.2, 62, 30, "staccato")]
    perf = Performance(velocity_gamma=1.5, articulation=0.5)
    out = perf.notes(notes)
    assert [n.velocity for n in out] == [round(127 * (v / 127) ** 1.5) for v in (100, 30)]
    assert out[0].end == pytest.approx(1.0 - MAX_SHORTENING_S) and out[1].end == pytest.approx(1.1)
    a, b = (random_performance(np.random.default_rng(7)) for _ in range(2))
    assert a == b and a != random_performance(np.random.default_rng(8))
    assert a.synth.reverb and a.synth.chorus and -8192 <= a.pitch_bend <= 8191
    opts = a.synth.options()
    assert "synth.reverb.active=1" in opts and any(o.startswith("synth.chorus.depth=") for o in opts)


@pytest.mark.skipif(not HAVE_FLUIDSYNTH, reason="needs fluidsynth + fluid-soundfont-gm")
def test_varied_render_is_deterministic_keeps_frames_and_changes_the_sound(tmp_path):
    from cmav.standin.build import TrackJob, build_track

    def job(name: str, render: str) -> TrackJob:
        return TrackJob(str(tmp_path / name), "train", "oboe", 0, 3, 0, "/usr/share/sounds/sf2/FluidR3_GM.sf2", 64,
                        90, render=render)  # fmt: skip

    for name, render in (("dry", "dry"), ("v1", "varied"), ("v2", "varied")):
        build_track(job(name, render))
    wav, jpg = "chunk/train/oboe/oboe00_600.wav", "img/train/oboe/oboe00_600.jpg"
    read = lambda name, f: (tmp_path / name / f).read_bytes()  # noqa: E731
    assert read("v1", wav) == read("v2", wav)  # deterministic
    assert read("v1", wav) != read("dry", wav)  # another sound ...
    assert read("v1", jpg) == read("dry", jpg)  # ... of the same melody and player
    marker = json.loads((tmp_path / "v1/.cmav_build/train/oboe00.done").read_text())
    assert marker["performance"]["synth"]["reverb"] is True
    assert "not_applied" not in marker["performance"]  # FluidSynth applies every drawn setting


@pytest.mark.skipif(not HAVE_FLUIDSYNTH or not TIMGM6MB.is_file(), reason="needs fluidsynth and timgm6mb-soundfont")
def test_build_records_the_soundfont_and_cli_takes_soundfont(tmp_path, monkeypatch, capsys):
    from cmav.cli.main import main
    from cmav.standin import build

    monkeypatch.setitem(build.PRESETS, "micro", build.Preset("micro", 1, 1, 1, 1, frame_size=32))
    manifest = build.build_standin(tmp_path / "m", preset="micro", soundfont=TIMGM6MB, progress=False, workers=1)
    font = manifest["soundfont"]
    assert font["name"] == "TimGM6mb.sf2" and font["sha256"] == soundfont_record(TIMGM6MB)["sha256"]
    assert json.loads((tmp_path / "m" / MANIFEST).read_text())["soundfont"]["path"] == str(TIMGM6MB)
    assert main(["data", "build", "--root", str(tmp_path / "x"), "--soundfont", str(tmp_path / "none.sf2")]) == 2
    assert "none.sf2" in capsys.readouterr().err


FLUIDR3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")


@pytest.mark.skipif(not HAVE_FLUIDSYNTH or not TIMGM6MB.is_file(), reason="needs fluidsynth and timgm6mb-soundfont")
def test_several_fonts_take_turns_along_a_track_each_chunk_whole_from_one(tmp_path):
    from cmav.standin.build import TrackJob, build_track

    def job(name: str, fonts) -> TrackJob:
        return TrackJob(str(tmp_path / name), "train", "oboe", 0, 12, 0, fonts, 64, 90, font_segment_s=0.4,
                        font_offset=1)  # fmt: skip

    build_track(job("both", (str(FLUIDR3), str(TIMGM6MB))))
    build_track(job("fluid", str(FLUIDR3)))
    build_track(job("timgm", str(TIMGM6MB)))
    owner = json.loads((tmp_path / "both/.cmav_build/train/oboe00.done").read_text())["fonts"]
    # chunk k is centred at 0.25 + 0.1 k s: segments of 0.4 s, the turn starting at font 1
    assert owner == [(int((0.25 + 0.1 * k) // 0.4) + 1) % 2 for k in range(12)] and set(owner) == {0, 1}
    for k, font in enumerate(owner):
        wav, jpg = f"chunk/train/oboe/oboe00_{500 + 100 * k}.wav", f"img/train/oboe/oboe00_{500 + 100 * k}.jpg"
        single = tmp_path / ("fluid", "timgm")[font]
        # the chunk is that font's render of the same melody, levelled as a one-font build levels it
        assert (tmp_path / "both" / wav).read_bytes() == (single / wav).read_bytes(), k
        assert (tmp_path / "both" / jpg).read_bytes() == (tmp_path / "fluid" / jpg).read_bytes()  # frames: no font
    a, b = (sf.read(tmp_path / d / "chunk/train/oboe/oboe00_500.wav")[0] for d in ("fluid", "timgm"))
    assert not np.allclose(a, b, atol=1e-3)  # two fonts really sound different


@pytest.mark.skipif(not HAVE_FLUIDSYNTH or not TIMGM6MB.is_file(), reason="needs fluidsynth and timgm6mb-soundfont")
def test_a_several_font_build_records_every_font_and_none_may_be_the_evaluation_source(tmp_path, monkeypatch, capsys):
    from cmav.cli.main import main
    from cmav.evaluation.robustness import data_soundfont
    from cmav.standin import build

    monkeypatch.setitem(build.PRESETS, "micro", build.Preset("micro", 1, 1, 1, 1, frame_size=32))
    manifest = build.build_standin(tmp_path / "m", preset="micro", soundfont=[FLUIDR3, TIMGM6MB], progress=False,
                                   workers=1, font_segment_s=2.0)  # fmt: skip
    assert manifest["params"]["soundfont"] == ["FluidR3_GM.sf2", "TimGM6mb.sf2"]
    assert manifest["params"]["font_segment_s"] == 2.0
    record = data_soundfont(tmp_path / "m")
    assert record["name"] == "FluidR3_GM.sf2 + TimGM6mb.sf2"
    assert [f["sha256"] for f in record["fonts"]] == [soundfont_record(f)["sha256"] for f in (FLUIDR3, TIMGM6MB)]
    # trained on both: neither is an independent evaluation source, a third font is
    for font in (FLUIDR3, TIMGM6MB):
        with pytest.raises(SameSourceError, match=f"{font.name}.*same file"):
            check_independent(record, soundfont_record(font))
    rng = np.random.default_rng(1)
    other = write_sf2(tmp_path / "Other.sf2", {"Oboe": rng.integers(-2000, 2000, 500)})
    check_independent(record, soundfont_record(other))
    assert data_soundfont(tmp_path / "m", TIMGM6MB) is not None  # one of its fonts, as given
    with pytest.raises(DataError, match="not from the font given"):
        data_soundfont(tmp_path / "m", other)
    # the same build again is a no-op; another order of fonts is another build
    assert build.build_standin(tmp_path / "m", preset="micro", soundfont=[FLUIDR3, TIMGM6MB], progress=False,
                               font_segment_s=2.0)["complete"]  # fmt: skip
    with pytest.raises(DataError, match="already holds"):
        build.build_standin(tmp_path / "m", preset="micro", soundfont=[TIMGM6MB, FLUIDR3], progress=False,
                            font_segment_s=2.0)  # fmt: skip
    # the command line takes --soundfont twice, and refuses one font given twice
    assert main(["data", "build", "--root", str(tmp_path / "x"), "--preset", "tiny", "--soundfont", str(FLUIDR3),
                 "--soundfont", str(FLUIDR3)]) == 2  # fmt: skip
    assert "same font" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------------- fonts and evaluation


def fake_font(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def with_manifest(root: Path, font: Path) -> Path:
    (root / MANIFEST).write_text(json.dumps({"params": {"preset": "fixture", "seed": 0, "soundfont": font.name},
                                             "soundfont": soundfont_record(font), "complete": True}))  # fmt: skip
    return root


def test_same_source_rules(tmp_path):
    a = soundfont_record(fake_font(tmp_path / "FontA.sf2", b"a"))
    b = soundfont_record(fake_font(tmp_path / "FontB.sf2", b"b"))
    (tmp_path / "link.sf2").symlink_to(tmp_path / "FontA.sf2")
    copy = soundfont_record(fake_font(tmp_path / "copy" / "Other.sf2", b"a"))
    assert same_source(a, b) is None
    assert "same sha256" in same_source(a, copy)
    assert "same file" in same_source(a, soundfont_record(tmp_path / "link.sf2"))
    fluid = soundfont_record(fake_font(tmp_path / "FluidR3_GM.sf2", b"fluid"))
    muse = soundfont_record(fake_font(tmp_path / "MuseScore_General.sf2", b"muse"))
    assert "MuseScore General reuses FluidR3" in same_source(fluid, muse)
    assert same_source(fluid, soundfont_record(fake_font(tmp_path / "TimGM6mb.sf2", b"tim"))) is None


def write_sf2(path: Path, samples: dict[str, np.ndarray], name: str = "Test Bank") -> Path:
    """A minimal SoundFont 2 file: an INFO list, the sample data and the sample headers (no presets,
    which the sample comparison does not read)."""
    def chunk(cid: bytes, data: bytes) -> bytes:
        return cid + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)

    pcm, headers, start = b"", b"", 0
    for n, x in samples.items():
        data = np.asarray(x, dtype="<i2").tobytes()
        end = start + len(data) // 2
        headers += struct.pack("<20sIIIIIBbHH", n.encode(), start, end, start, end, 22050, 60, 0, 0, 1)
        pcm += data + b"\0" * 92  # the 46 zero frames the format asks after each sample
        start = end + 46
    headers += struct.pack("<20sIIIIIBbHH", b"EOS", 0, 0, 0, 0, 0, 0, 0, 0, 0)
    info = chunk(b"ifil", struct.pack("<HH", 2, 1)) + chunk(b"INAM", name.encode() + b"\0")
    body = (b"sfbk" + chunk(b"LIST", b"INFO" + info) + chunk(b"LIST", b"sdta" + chunk(b"smpl", pcm))
            + chunk(b"LIST", b"pdta" + chunk(b"shdr", headers)))  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def test_fonts_sharing_a_sample_are_one_source_whatever_their_names(tmp_path):
    rng = np.random.default_rng(0)
    violin, flute, horn = (rng.integers(-2000, 2000, 500) for _ in range(3))
    silence = np.zeros(500)
    a = write_sf2(tmp_path / "BankA.sf2", {"Violin C4": violin, "Flute C5": flute, "Silence": silence})
    b = write_sf2(tmp_path / "BankB.sf2", {"Fiddle": violin, "Horn": horn, "Quiet": silence})
    c = write_sf2(tmp_path / "BankC.sf2", {"Horn": horn[:-1], "Clip": violin[:10], "Quiet": silence})
    assert len(sample_digests(a)) == 2  # the silent sample is never compared
    assert sf2_info(a) == {"INAM": "Test Bank"} and soundfont_record(a)["inam"] == "Test Bank"  # the INFO list
    assert shared_samples(a, b) == ["Violin C4"]
    reason = same_source(soundfont_record(a), soundfont_record(b))
    assert reason and "1 of the 2 samples of BankA.sf2 are byte-identical" in reason and "'Violin C4'" in reason
    # a trimmed sample, a 10-frame snippet and shared silence are no evidence of shared recordings
    assert shared_samples(b, c) == [] and same_source(soundfont_record(b), soundfont_record(c)) is None
    junk = fake_font(tmp_path / "not_a_font.sf2", b"junk")
    assert sample_digests(junk) == {} and sf2_info(junk) == {}
    with pytest.raises(SameSourceError, match="BankA.sf2.*BankB.sf2.*byte-identical"):
        check_independent(soundfont_record(a), soundfont_record(b))


def write_pat(path: Path, waves: dict[str, np.ndarray], bits: int = 16, unsigned: bool = False) -> Path:
    """A minimal GUS patch file: the patch, instrument and layer headers, then each wave's 96-byte
    header and its data (``bits`` 8 or 16, signed or unsigned as GUS stores them)."""
    head = (b"GF1PATCH110\0ID#000002\0" + b"\0" * 60 + bytes([1, 14, 0]) + struct.pack("<HHI", len(waves), 127, 0)
            + b"\0" * 36)  # fmt: skip
    body = b""
    for name, x in waves.items():
        x = np.asarray(x, dtype=np.int64)
        if bits == 8:
            data = ((x // 256) + (128 if unsigned else 0)).astype("u1" if unsigned else "i1").tobytes()
        else:
            data = (x + (32768 if unsigned else 0)).astype("<u2" if unsigned else "<i2").tobytes()
        modes = (1 if bits == 16 else 0) | (2 if unsigned else 0)
        wave = (name.encode()[:7].ljust(7, b"\0") + b"\0" + struct.pack("<III", len(data), 0, len(data))
                + struct.pack("<H", 22050) + b"\0" * 33 + bytes([modes]) + b"\0" * 40)  # fmt: skip
        assert len(wave) == 96
        body += wave + data
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + b"\0" * 63 + b"\0" * 47 + body)
    return path


def test_a_timidity_patch_set_is_compared_with_soundfonts_sample_by_sample(tmp_path):
    from cmav.standin.soundfonts import timidity_sources

    rng = np.random.default_rng(1)
    violin, flute, horn = (rng.integers(-100, 100, 400) * 256 for _ in range(3))
    font = write_sf2(tmp_path / "Bank.sf2", {"Violin": violin, "Flute": flute})
    write_pat(tmp_path / "pats" / "violin8.pat", {"Vln": violin}, bits=8, unsigned=True)  # widened to 16 bits
    write_pat(tmp_path / "pats" / "horn.pat", {"Horn": horn})
    write_pat(tmp_path / "pats" / "flute.pat", {"Flt": flute}, unsigned=True)
    shared = tmp_path / "shared.cfg"
    shared.write_text(f"# a comment\ndir {tmp_path / 'pats'}\nbank 0\n 40 violin8.pat amp=100\n 73 flute\n"
                      f"source {tmp_path / 'own.cfg'}\n")  # fmt: skip
    own = tmp_path / "own.cfg"
    own.write_text(f"dir {tmp_path / 'pats'}\nbank 0\n 60 horn.pat\n")
    assert [p.name for p in timidity_sources(shared)] == ["violin8.pat", "flute.pat", "horn.pat"]
    assert sorted(shared_samples(shared, font)) == ["flute.pat:Flt", "violin8.pat:Vln"]
    reason = same_source(soundfont_record(shared), soundfont_record(font))
    assert reason and "2 of the 3 samples of shared.cfg are byte-identical" in reason
    assert same_source(soundfont_record(own), soundfont_record(font)) is None  # the horn is its own recording
    # the record identifies the patches, not only the configuration's text
    before = soundfont_record(own)
    write_pat(tmp_path / "pats" / "horn.pat", {"Horn": horn[::-1]})
    after = soundfont_record(own)
    assert after["sha256"] == before["sha256"] and after["patches_sha256"] != before["patches_sha256"]
    assert "patches_sha256" not in soundfont_record(font)
    (tmp_path / "missing.cfg").write_text(f"dir {tmp_path / 'pats'}\n 41 viola.pat\n")
    with pytest.raises(FileNotFoundError, match=r"missing.cfg: viola.pat"):
        sample_digests(tmp_path / "missing.cfg")
    write_pat(tmp_path / "pats" / "bad.pat", {"x": violin}).write_bytes(b"RIFF....")
    (tmp_path / "bad.cfg").write_text(f"dir {tmp_path / 'pats'}\n 41 bad.pat\n")
    with pytest.raises(ValueError, match="bad.pat: not a GUS patch file"):
        sample_digests(tmp_path / "bad.cfg")


FREEPATS_CFG = Path(__file__).resolve().parents[1] / "datasets" / "freepats_orchestra.cfg"
HAVE_TIMIDITY = shutil.which("timidity") is not None and Path("/usr/share/midi/freepats").is_dir()


@pytest.mark.skipif(not HAVE_TIMIDITY or not TIMGM6MB.is_file(), reason="needs timidity, freepats and timgm6mb-soundfont")
def test_the_shipped_freepats_set_maps_every_instrument_and_shares_no_recording(tmp_path):
    from cmav.data.instruments import INSTRUMENT_SPECS
    from cmav.standin.soundfonts import timidity_sources

    mapped = {int(w[0]) for line in FREEPATS_CFG.read_text().splitlines() if (w := line.split("#")[0].split())
              and w[0].isdigit()}  # fmt: skip
    assert mapped == {s.gm_program - 1 for s in INSTRUMENT_SPECS.values()}  # TiMidity++ counts from 0
    assert all(p.is_file() for p in timidity_sources(FREEPATS_CFG))
    fp = soundfont_record(FREEPATS_CFG)
    assert fp["family"] == "FreePats" and len(sample_digests(FREEPATS_CFG)) > 13
    assert same_source(fp, soundfont_record(TIMGM6MB)) is None
    if FLUIDR3.is_file():
        assert same_source(fp, soundfont_record(FLUIDR3)) is None
    # Debian's whole freepats set is NOT independent of TimGM6mb: its soprano sax and ocarina are TimGM6mb's
    full = Path("/etc/timidity/freepats.cfg")
    if full.is_file():
        assert "byte-identical" in same_source(soundfont_record(full), soundfont_record(TIMGM6MB))


def test_a_soundfont_fluidsynth_cannot_load_is_refused_not_replaced_by_its_default(tmp_path):
    """FluidSynth renders with the system's default font (FluidR3 on Debian) when it cannot load the one
    given, and exits 0: a cut-off copy of TimGM6mb built FluidR3 audio recorded as TimGM6mb."""
    from cmav.standin.render import check_soundfont_file

    font = write_sf2(tmp_path / "Bank.sf2", {"Oboe": np.zeros(100)})
    check_soundfont_file(font)
    cut = fake_font(tmp_path / "Cut.sf2", font.read_bytes()[:-30])
    with pytest.raises(ValueError, match=r"Cut.sf2: SoundFont cut off: \d+ bytes of the \d+ its header declares"):
        check_soundfont_file(cut)
    with pytest.raises(ValueError, match="Junk.sf2: not a SoundFont 2 file"):
        check_soundfont_file(fake_font(tmp_path / "Junk.sf2", b"hello\n"))


@pytest.mark.skipif(not HAVE_FLUIDSYNTH, reason="needs fluidsynth")
def test_a_render_from_a_font_fluidsynth_cannot_load_fails(tmp_path):
    """The same without the file check: the render itself fails instead of sounding the default font."""
    from cmav.standin.music import Note, write_midi
    from cmav.standin.render import check_renderer, render_midi

    midi = tmp_path / "a.mid"
    write_midi([Note(0.0, 0.4, 69, 100, "legato")], 69, midi)
    assert np.abs(render_midi(midi, check_renderer(TIMGM6MB))).max() > 0.01
    cut = fake_font(tmp_path / "TimGM6mb.sf2", TIMGM6MB.read_bytes()[:3_000_000])
    for font in (cut, fake_font(tmp_path / "Junk.sf2", b"hello\n")):
        with pytest.raises(RuntimeError, match=f"fluidsynth failed on .*a.mid with .*{font.name}"):
            render_midi(midi, font)
    with pytest.raises(ValueError, match="cut off"):
        check_renderer(cut)


@pytest.mark.skipif(not HAVE_TIMIDITY, reason="needs timidity and freepats")
def test_timidity_renders_a_patch_set_track_and_refuses_a_program_it_does_not_map(tmp_path):
    from cmav.standin.build import TrackJob, build_track
    from cmav.standin.music import Note, write_midi
    from cmav.standin.render import SynthSettings, render_midi

    build_track(TrackJob(str(tmp_path / "fp"), "train", "oboe", 0, 3, 0, str(FREEPATS_CFG), 64, 90))
    # a varied track: the record says which drawn settings TiMidity++ has no counterpart for
    build_track(TrackJob(str(tmp_path / "fpv"), "train", "oboe", 0, 3, 0, str(FREEPATS_CFG), 64, 90, render="varied"))
    performance = json.loads((tmp_path / "fpv/.cmav_build/train/oboe00.done").read_text())["performance"]
    assert performance["not_applied"] == {"freepats_orchestra.cfg": [
        "reverb_room_size", "reverb_damp", "reverb_width", "chorus_nr", "chorus_speed", "chorus_depth"]}  # fmt: skip
    audio, rate = sf.read(str(tmp_path / "fp/chunk/train/oboe/oboe00_600.wav"))
    assert rate == 44100 and audio.shape == (22050, 2) and np.sqrt(np.mean(audio**2)) > 1e-3
    midi = tmp_path / "a.mid"
    write_midi([Note(0.0, 0.4, 69, 100, "legato")], 69, midi)  # GM oboe (1-based 69)
    dry = render_midi(midi, FREEPATS_CFG, SynthSettings(sample_rate=22050))
    wet = render_midi(midi, FREEPATS_CFG, SynthSettings(sample_rate=22050, reverb=True, reverb_level=0.9))
    assert dry.dtype == np.float32 and dry.shape[0] == 2 and np.abs(dry).max() > 0.01
    assert not np.allclose(dry[:, : wet.shape[1]], wet[:, : dry.shape[1]], atol=1e-3)  # the reverb is on
    write_midi([Note(0.5, 0.9, 69, 100, "legato")], 69, midi)  # a first note at 0.5 s stays at 0.5 s
    late = render_midi(midi, FREEPATS_CFG, SynthSettings(sample_rate=22050))
    assert 0.49 < np.argmax(np.abs(late).max(0) > 0.01) / 22050 < 0.52
    write_midi([Note(0.0, 0.4, 60, 100, "legato")], 1, midi)  # a piano: not in the set
    with pytest.raises(RuntimeError, match=r"freepats_orchestra.cfg: rendering .*a.mid made timidity load the soundfont"):
        render_midi(midi, FREEPATS_CFG)


def _cli(words: list[str]) -> int:
    from cmav.cli import robustness
    from cmav.cli.main import evaluate_alias

    parser = argparse.ArgumentParser(prog="cmav")
    robustness.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(evaluate_alias(words))
    return args.func(args)


def test_evaluate_robustness_refuses_an_identical_font(tmp_path, capsys):
    font = fake_font(tmp_path / "fonts" / "FluidR3_GM.sf2", b"fluid")
    train = with_manifest(make_suburmp(tmp_path / "train", chunks=1), font)
    same = with_manifest(make_suburmp(tmp_path / "same", chunks=1), font)
    assert _cli(["evaluate", "robustness", "--root", str(train), "--eval-root", str(same),
                 "--classifier", str(tmp_path / "never_read.ckpt")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "refusing a cross-source evaluation" in err and "same sha256" in err and "FluidR3_GM.sf2" in err
    muse = with_manifest(make_suburmp(tmp_path / "muse", chunks=1),
                         fake_font(tmp_path / "fonts" / "MuseScore_General.sf2", b"muse"))  # fmt: skip
    assert _cli(["evaluate", "robustness", "--root", str(train), "--eval-root", str(muse),
                 "--classifier", str(tmp_path / "never_read.ckpt")]) == 2  # fmt: skip
    assert "MuseScore General reuses FluidR3's recordings" in capsys.readouterr().err
    # an evaluation font given explicitly must be the one the evaluation data were rendered from
    other = fake_font(tmp_path / "fonts" / "Other.sf2", b"other")
    assert _cli(["evaluate", "robustness", "--root", str(train), "--eval-root", str(muse), "--eval-soundfont",
                 str(other), "--classifier", "x.ckpt"]) == 2  # fmt: skip
    assert "not from the font given" in capsys.readouterr().err


def test_robustness_grid_and_evaluation_end_to_end(tmp_path, capsys):
    """The grid trains with and without augmentation and scores both sources; the evaluation
    command then scores one of its checkpoints and names both fonts."""
    from cmav.ablation import load_grid
    from cmav.ablation.robustness import run

    train = with_manifest(make_suburmp(tmp_path / "train", chunks=3), fake_font(tmp_path / "f/FontA.sf2", b"a"))
    cross = with_manifest(make_suburmp(tmp_path / "cross", chunks=3), fake_font(tmp_path / "f/FontB.sf2", b"b"))
    cfg = load_grid(EXPERIMENTS / "ablations" / "robustness.yaml", "quick")
    harmonic = {"name": "harmonic", "groups": [], "features": {"kind": "harmonic", "n_harmonics": 8}, "steps": 6,
                "model": {"audio_encoder": {"arch": "stats", "hidden_dim": 16}}, "data": {"holdout_tail": 0.0}}  # fmt: skip
    cfg.update(seeds=[0], steps=8, variants=[*cfg["variants"][:2], harmonic])
    cfg["data"].update(root=str(train), cache_dir=str(tmp_path / "cache"))
    cfg["cross_source"] = {"root": str(cross)}
    out = tmp_path / "grid"
    out.mkdir()
    result = run(cfg, out)
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [r["variant"] for r in rows] == ["none", "+eq", "harmonic"] and rows[1]["groups"] == "eq"
    for r in rows:
        assert 0.0 <= float(r["in_source_mean"]) <= 1.0 and 0.0 <= float(r["cross_source_mean"]) <= 1.0
    md = (out / "table.md").read_text()
    assert "FontA.sf2" in md and "FontB.sf2" in md and "cross-source acc" in md
    assert len(result["runs"]) == 3 and (out / "runs.jsonl").is_file()
    # the harmonic variant trained its own front end and encoder for its own number of batches
    from cmav.models import StatsPoolEncoder
    from cmav.tasks.classifier import load_classifier

    lms_task, harm_task = (load_classifier(r["checkpoint"]) for r in (result["runs"][0], result["runs"][2]))
    assert isinstance(harm_task.model, StatsPoolEncoder) and harm_task.model.input_shape == (1, 5 + 8, 22)
    assert not isinstance(lms_task.model, StatsPoolEncoder) and lms_task.model.input_shape[1] != 13
    assert result["runs"][2]["config_key"]["steps"] == 6 and result["runs"][2]["config_key"]["data"]["features"]["kind"] == "harmonic"
    # ... on whole tracks (its own `data`), where the other variants keep the grid's held-out tails
    assert result["runs"][2]["config_key"]["data"]["holdout_tail"] == 0.0
    assert result["runs"][0]["config_key"]["data"]["holdout_tail"] == cfg["data"]["holdout_tail"] > 0
    assert _cli(["evaluate", "robustness", "--root", str(train), "--eval-root", str(cross), "--classifier",
                 result["runs"][2]["checkpoint"], "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "eval_h"),
                 "--adapt-batch-norm"]) == 0  # fmt: skip
    models = json.loads((tmp_path / "eval_h" / "metrics.json").read_text())["models"]
    harm = models["classifier"]
    assert harm["cross_source"]["accuracy"] == pytest.approx(result["runs"][2]["cross_source"])
    # AdaBN is reported on its own rows, marked transductive, with no target beside it
    assert models["classifier_adapted"]["transductive"] is True
    assert {"in_source", "cross_source"} <= set(models["classifier_adapted"])
    adapted_rows = [r for r in (tmp_path / "eval_h" / "report.md").read_text().splitlines() if "AdaBN (transductive) |" in r]
    assert len(adapted_rows) == 2 and all(r.endswith("| — |") for r in adapted_rows)
    with pytest.raises(ValueError, match="give --classifier or --s2i too"):
        evaluate_robustness(train, cross, retrieval=tmp_path / "unread.ckpt", adapt_batch_norm=True)
    # the checkpoint's own training data counts, not only --root: trained on FontA, scored against FontA
    other = with_manifest(make_suburmp(tmp_path / "other", chunks=3), fake_font(tmp_path / "f/FontC.sf2", b"c"))
    assert _cli(["evaluate", "robustness", "--root", str(other), "--eval-root", str(train), "--classifier",
                 result["runs"][0]["checkpoint"],
                 "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "eval_x")]) == 2  # fmt: skip
    assert "FontA.sf2" in capsys.readouterr().err and not (tmp_path / "eval_x").exists()
    bad = {**harmonic, "features": {"kind": "harmonic", "n_mels": 3}}
    with pytest.raises(ValueError, match=r"variant 'harmonic': features: .*no option"):
        run({**cfg, "variants": [cfg["variants"][0], bad]}, tmp_path / "grid_bad")

    ckpt = result["runs"][0]["checkpoint"]
    assert _cli(["evaluate", "robustness", "--root", str(train), "--eval-root", str(cross), "--classifier", ckpt,
                 "--cache-dir", str(tmp_path / "cache"), "-o", str(tmp_path / "eval")]) == 0  # fmt: skip
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "FontA.sf2" in report and "FontB.sf2" in report and "| sound classifier | accuracy |" in report
    assert f"- sound classifier trained on `{train}`: FontA.sf2" in report
    # the point of the run that was scored, as the checkpoint records it
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert f"(checkpoint at epoch={saved['epoch']}, step={saved['global_step']})" in report and saved["global_step"] > 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (metrics["trained_on"]["classifier"]["epoch"], metrics["trained_on"]["classifier"]["global_step"]) == (
        saved["epoch"], saved["global_step"])
    acc = metrics["models"]["classifier"]
    assert acc["in_source"]["accuracy"] == pytest.approx(result["runs"][0]["in_source"])

    # the grid refuses to score against (or train on) the evaluation source
    cfg["cross_source"] = {"root": str(train)}
    (tmp_path / "grid2").mkdir()
    with pytest.raises(ValueError, match="refusing a cross-source evaluation"):
        run(cfg, tmp_path / "grid2")


@pytest.mark.skipif(not HAVE_FLUIDSYNTH or not HAVE_TIMIDITY or not TIMGM6MB.is_file(),
                    reason="needs fluidsynth, timidity + freepats and timgm6mb-soundfont")  # fmt: skip
def test_a_grid_variant_renders_its_own_several_source_data_once_and_never_from_the_evaluation_font(tmp_path, monkeypatch, capsys):
    from cmav.ablation.robustness import _validate, variant_root
    from cmav.standin import build

    monkeypatch.setitem(build.PRESETS, "micro", build.Preset("micro", 1, 1, 1, 1, frame_size=32))
    train = tmp_path / "train"
    build.build_standin(train, preset="micro", soundfont=FLUIDR3, progress=False, workers=1)
    cross = soundfont_record(TIMGM6MB)
    out = tmp_path / "grid"
    variant = {"name": "FluidR3 + FreePats", "groups": [], "soundfonts": [str(FLUIDR3), str(FREEPATS_CFG)]}
    root = variant_root({}, variant, train, out, cross)
    assert root == out / "data_FluidR3_FreePats" and "rendering the training data" in capsys.readouterr().out
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest["complete"] and [f["name"] for f in manifest["soundfont"]["fonts"]] == ["FluidR3_GM.sf2",
                                                                                           "freepats_orchestra.cfg"]  # fmt: skip
    assert manifest["params"]["preset"] == "micro"  # the training data's preset and seed
    wav = next(root.glob("chunk/train/*/*.wav"))
    stamp = wav.stat().st_mtime_ns
    assert variant_root({}, variant, train, out, cross) == root and wav.stat().st_mtime_ns == stamp  # kept
    assert "rendering" not in capsys.readouterr().out
    assert variant_root({}, {"name": "plain", "root": str(train)}, tmp_path / "x", out, cross) == train
    with pytest.raises(SameSourceError, match="TimGM6mb"):
        variant_root({}, {"name": "bad", "soundfonts": [str(FLUIDR3), str(TIMGM6MB)]}, train, out, cross)
    assert not (out / "data_bad").exists()  # refused before rendering
    with pytest.raises(FileNotFoundError, match=r"variant 'v'.*nope.sf2"):
        _validate({"variants": [{"name": "none"}, {"name": "v", "soundfonts": ["nope.sf2"]}]})
    with pytest.raises(ValueError, match="`soundfonts` is a list"):
        _validate({"variants": [{"name": "none"}, {"name": "v", "soundfonts": str(FLUIDR3)}]})


@pytest.mark.skipif(not HAVE_FLUIDSYNTH or not TIMGM6MB.is_file(), reason="needs fluidsynth and timgm6mb-soundfont")
def test_a_cross_source_copy_cut_off_is_finished_before_it_is_scored(tmp_path, monkeypatch, capsys):
    from cmav.evaluation.robustness import build_eval_copy, finish_eval_copy
    from cmav.standin import build

    monkeypatch.setitem(build.PRESETS, "micro", build.Preset("micro", 1, 1, 1, 1, frame_size=32))
    train, cross = tmp_path / "train", tmp_path / "cross"
    build.build_standin(train, preset="micro", soundfont=FLUIDR3, progress=False, workers=1)
    build_eval_copy(train, cross, TIMGM6MB, progress=False)
    assert not finish_eval_copy(train, cross)  # complete: nothing to do
    # as if the build had been stopped: a track's last chunk and its marker never written
    wav = sorted(cross.glob("chunk/validation/*/*.wav"))[-1]
    wav.unlink()
    next((cross / build.MARKERS / "validation").glob(f"{wav.stem.rsplit('_', 1)[0]}.done")).unlink()
    manifest = json.loads((cross / MANIFEST).read_text())
    (cross / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    assert finish_eval_copy(train, cross)  # from the font its manifest records
    assert wav.is_file() and json.loads((cross / MANIFEST).read_text())["complete"]
    assert "its build was cut off; finishing it" in capsys.readouterr().out


def test_a_grid_variant_data_merges_over_the_grid_and_may_not_move_the_root():
    from cmav.ablation.robustness import _validate, variant_setup

    cfg = {"data": {"root": "data/default", "holdout_tail": 0.1, "batch_size": 64}, "steps": 10, "model": {}}
    _, data, _ = variant_setup(cfg, {"name": "v", "data": {"holdout_tail": 0.0}, "features": {"kind": "harmonic"}})
    assert data == {"root": "data/default", "holdout_tail": 0.0, "batch_size": 64, "features": {"kind": "harmonic"}}
    assert cfg["data"]["holdout_tail"] == 0.1  # the grid's own options are untouched
    for bad in ({"root": "elsewhere"}, {"features": {"kind": "lms"}}, [0.0]):
        with pytest.raises(ValueError, match=r"variant 'v': `data` holds"):
            _validate({"variants": [{"name": "none"}, {"name": "v", "data": bad}]})


def test_s2i_score_generates_from_each_sources_audio(fixture_root, tmp_path):
    """S2I-C's judged accuracy: one frame per chunk generated from that split's audio, then judged
    (here a constant generator and an untrained judge: the plumbing, not a score)."""
    from cmav.data.datasets import SubURMP
    from cmav.evaluation.robustness import score_s2i
    from cmav.tasks import ClassifierTask

    t = SubURMP(fixture_root, "validation", image_size=32, cache_dir=tmp_path / "c", progress=False).tensors
    seen = []

    def generator(audio, z):
        seen.append(audio.shape[0])
        return torch.zeros(audio.shape[0], 3, 32, 32)

    judge = ClassifierTask(modality="image", image_size=32, class_names=list(t.class_names),
                           image_judge={"n_blocks": 2, "base_channels": 4, "max_channels": 8, "feature_dim": 8})  # fmt: skip
    out = score_s2i(generator, judge, t)
    assert sum(seen) == len(t) and out["n"] == len(t) and 0.0 <= out["accuracy"] <= 1.0


# ------------------------------------------------------------- evaluate robustness: what is checked before scoring


@pytest.fixture(scope="module")
def rob(tmp_path_factory):
    """Tiny fonts, a training stand-in (FontA) and its cross-source copy (FontB), a folder holding only
    a FontB manifest (data a checkpoint can name), and a sound classifier, S2I-C (frozen on it) and an
    image judge trained one step on the training stand-in."""
    import warnings
    from types import SimpleNamespace

    from cmav.tasks import ClassifierTask, S2ITask

    base = tmp_path_factory.mktemp("rob_eval")
    fonts = {k: fake_font(base / "fonts" / f"Font{k}.sf2", k.lower().encode()) for k in "ABC"}
    train = with_manifest(make_suburmp(base / "train", chunks=3), fonts["A"])
    cross = with_manifest(make_suburmp(base / "cross", chunks=3), fonts["B"])
    twin_b = base / "twin_b"
    twin_b.mkdir()
    with_manifest(twin_b, fonts["B"])
    cache = str(base / "cache")
    dm = AudioVisualDataModule(root=str(train), image_size=32, batch_size=16, holdout_tail=0.0, progress=False,
                               cache_dir=cache)  # fmt: skip

    def fit(task, name: str) -> Path:
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            num_sanity_val_steps=0, default_root_dir=str(base / "tr"))  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(task, datamodule=dm)
        trainer.save_checkpoint(str(base / f"{name}.ckpt"))
        return base / f"{name}.ckpt"

    tiny = {"n_blocks": 2, "base_channels": 4, "max_channels": 8, "feature_dim": 8}
    clf = fit(ClassifierTask(modality="audio", image_size=32, audio_encoder=tiny), "clf")
    small = {"base_channels": 8, "max_channels": 16, "cond_proj_dim": 8}
    s2i = fit(S2ITask(variant="s2i_c", encoder_mode="frozen", audio_encoder_ckpt=str(clf), image_size=32,
                      sample_every_n_steps=0, generator=small, discriminator=small), "s2i")  # fmt: skip
    judge = fit(ClassifierTask(modality="image", image_size=32, image_judge=tiny), "judge")
    return SimpleNamespace(fonts=fonts, train=train, cross=cross, twin_b=twin_b, cache=cache, clf=clf, s2i=s2i,
                           judge=judge)  # fmt: skip


def retarget(ckpt: Path, out: Path, root: str | Path | None = None, **hparams) -> Path:
    """A copy of a real checkpoint whose datamodule records another training ``root`` (and other
    model hyper-parameters): what a checkpoint trained on that data carries."""
    blob = torch.load(ckpt, map_location="cpu", weights_only=False)
    if root is not None:
        blob["datamodule_hyper_parameters"]["root"] = str(root)
        blob["datamodule_hyper_parameters"]["root_resolved"] = str(Path(root).absolute())
    blob["hyper_parameters"].update(hparams)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, out)
    return out


def manifest_only(folder: Path, record: dict, **params) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(json.dumps({"params": {"preset": "fixture", "seed": 0, "soundfont": record["name"],
                                                          **params}, "soundfont": record, "complete": True}))  # fmt: skip
    return folder


def test_robustness_refuses_an_eval_root_that_is_not_a_re_render_of_root(rob, tmp_path):
    # (1) another seed and frame size: other melodies and frames, scored as "the same split" before
    other = make_suburmp(tmp_path / "other", chunks=1, val_track=5)
    (other / MANIFEST).write_text(json.dumps({"params": {"preset": "fixture", "seed": 1, "soundfont": "FontB.sf2",
                                                         "frame_size": 32}, "soundfont": soundfont_record(rob.fonts["B"]),
                                              "complete": True}))  # fmt: skip
    with pytest.raises(DataError, match=r"other: --eval-root .*other is not a re-render of --root .*train .*seed: 0 -> 1"):
        evaluate_robustness(rob.train, other, classifier=rob.clf, cache_dir=rob.cache, out_dir=tmp_path / "o",
                            progress=False)  # fmt: skip
    assert not (tmp_path / "o").exists()
    # no manifest to compare: the splits as opened must hold the same chunks
    (other / MANIFEST).unlink()
    with pytest.raises(DataError, match=r"other: its validation split is not .*train.* rendered again: 13 pairs, not 39"):
        evaluate_robustness(rob.train, other, classifier=rob.clf, eval_soundfont=rob.fonts["B"], cache_dir=rob.cache,
                            out_dir=tmp_path / "o", progress=False)  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_robustness_refuses_a_checkpoint_trained_on_the_evaluation_folder_and_reports_an_unknown_training_font(
        rob, fixture_root, tmp_path):  # fmt: skip
    # (2) trained on the evaluation folder itself, which has no manifest (its font known only as given)
    on_eval = retarget(rob.clf, tmp_path / "on_eval.ckpt", root=fixture_root)
    with pytest.raises(SameSourceError, match=r"sound classifier .*on_eval.ckpt was trained on .*suburmp, the "
                                              r"evaluation data itself"):  # fmt: skip
        evaluate_robustness(rob.train, fixture_root, classifier=on_eval, eval_soundfont=rob.fonts["B"],
                            cache_dir=rob.cache, progress=False)  # fmt: skip
    # trained on a folder not on this machine: scored, with a warning that says so, in the report too
    away = retarget(rob.clf, tmp_path / "away.ckpt", root=tmp_path / "elsewhere" / "data")
    with pytest.warns(UserWarning, match=r"sound classifier .*away.ckpt: the independence of its training data .*"
                                         r"could not be checked: .*elsewhere.*not on this machine"):  # fmt: skip
        evaluate_robustness(rob.train, rob.cross, classifier=away, cache_dir=rob.cache, out_dir=tmp_path / "o",
                            progress=False)  # fmt: skip
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert "not on this machine" in metrics["trained_on"]["classifier"]["unchecked"]
    assert any("could not be checked" in w for w in metrics["warnings"])
    report = (tmp_path / "o" / "report.md").read_text()
    assert "the independence of its training data from the evaluation font could not be checked" in report


def test_robustness_follows_s2is_frozen_audio_encoder_to_its_training_data(rob, tmp_path):
    # (3, 8) the frozen encoder was trained on the evaluation font: refused, naming the encoder checkpoint
    enc_b = retarget(rob.clf, tmp_path / "enc_b.ckpt", root=rob.twin_b)
    s2i_b = retarget(rob.s2i, tmp_path / "s2i_b.ckpt", audio_encoder_ckpt=str(enc_b))
    with pytest.raises(SameSourceError) as exc:
        evaluate_robustness(rob.train, rob.cross, s2i=s2i_b, image_judge=rob.judge, cache_dir=rob.cache, progress=False)
    msg = str(exc.value)
    assert f"audio encoder {enc_b} of S2I-C {s2i_b}, trained on {rob.twin_b}" in msg and "same sha256" in msg
    assert "Render the evaluation copy" not in msg and "train" in msg.split("same sha256")[1]
    # the encoder checkpoint is not on this machine: scored, with a warning, recorded
    s2i_x = retarget(rob.s2i, tmp_path / "s2i_x.ckpt", audio_encoder_ckpt=str(tmp_path / "gone.ckpt"))
    with pytest.warns(UserWarning, match=r"audio encoder .*gone.ckpt of S2I-C .*s2i_x.ckpt: the independence .*"
                                         r"could not be checked: .*not on this machine"):  # fmt: skip
        result = evaluate_robustness(rob.train, rob.cross, s2i=s2i_x, image_judge=rob.judge, cache_dir=rob.cache,
                                     out_dir=tmp_path / "o", progress=False)  # fmt: skip
    encoders = result["trained_on"]["s2i"]["encoders"]
    assert encoders[0]["ckpt"] == str(tmp_path / "gone.ckpt") and "not on this machine" in encoders[0]["unchecked"]
    assert "gone.ckpt" in (tmp_path / "o" / "report.md").read_text()
    # the shipped case: frozen on a classifier trained on the training font
    ok = evaluate_robustness(rob.train, rob.cross, s2i=rob.s2i, image_judge=rob.judge, cache_dir=rob.cache,
                             progress=False)  # fmt: skip
    assert ok["trained_on"]["s2i"]["encoders"][0]["font"]["name"] == "FontA.sf2" and not ok["warnings"]


def test_robustness_names_whose_training_data_shares_the_evaluation_font(rob, tmp_path):
    # (8) a classifier trained on the evaluation font's data
    on_b = retarget(rob.clf, tmp_path / "on_b.ckpt", root=rob.twin_b)
    with pytest.raises(SameSourceError) as exc:
        evaluate_robustness(rob.train, rob.cross, classifier=on_b, cache_dir=rob.cache, progress=False)
    msg = str(exc.value)
    assert f"sound classifier {on_b}, trained on {rob.twin_b}" in msg and "FontB.sf2" in msg
    assert "Render the evaluation copy" not in msg and "trained on data without" in msg


def test_a_font_given_for_data_with_an_older_manifest_must_be_the_font_it_names(tmp_path):
    from cmav.evaluation.robustness import data_soundfont

    # (4) a manifest from before fonts were recorded: only the font's name, in the params
    old = tmp_path / "old"
    old.mkdir()
    (old / MANIFEST).write_text(json.dumps({"params": {"preset": "fixture", "seed": 0, "soundfont": "FontA.sf2"}}))
    a, b = fake_font(tmp_path / "f/FontA.sf2", b"a"), fake_font(tmp_path / "f/FontB.sf2", b"b")
    with pytest.raises(DataError, match=r"old: its manifest says it was rendered from 'FontA.sf2', not from the font "
                                        r"given, FontB.sf2"):  # fmt: skip
        data_soundfont(old, b)
    assert data_soundfont(old, a)["sha256"] == soundfont_record(a)["sha256"]
    if FLUIDR3.is_file():  # the named font is on this machine: a file of that name with other contents is refused
        (old / MANIFEST).write_text(json.dumps({"params": {"preset": "fixture", "seed": 0, "soundfont": FLUIDR3.name}}))
        with pytest.raises(DataError, match=r"old: .*FluidR3_GM.sf2 .*sha256"):
            data_soundfont(old, fake_font(tmp_path / "g" / FLUIDR3.name, b"not fluid"))
        assert data_soundfont(old, FLUIDR3)["sha256"] == soundfont_record(FLUIDR3)["sha256"]


def test_robustness_refuses_an_in_source_column_from_a_font_the_model_never_trained_on(rob, tmp_path):
    # (5) trained on FontC, --root FontA: the "in-source" figure would be a second cross-source one
    c = soundfont_record(rob.fonts["C"])
    on_c = retarget(rob.clf, tmp_path / "on_c.ckpt", root=manifest_only(tmp_path / "c", c))
    with pytest.raises(DataError, match=r"train: .*sound classifier .*on_c.ckpt was trained on .*c \(FontC.sf2.*\), "
                                        r"none of whose fonts is --root's \(FontA.sf2"):  # fmt: skip
        evaluate_robustness(rob.train, rob.cross, classifier=on_c, cache_dir=rob.cache, progress=False)
    # a several-source training build that includes --root's font is in-source on it
    from cmav.standin.soundfonts import several_fonts_record

    both = several_fonts_record([soundfont_record(rob.fonts["A"]), c])
    on_ac = retarget(rob.clf, tmp_path / "on_ac.ckpt", root=manifest_only(tmp_path / "ac", both))
    result = evaluate_robustness(rob.train, rob.cross, classifier=on_ac, cache_dir=rob.cache, progress=False)
    assert result["trained_on"]["classifier"]["font"]["name"] == "FontA.sf2 + FontC.sf2"


def test_robustness_refuses_the_same_folder_through_a_symlink(fixture_root, rob, tmp_path):
    # (6) fonts given explicitly for data without manifests: the folder itself is compared
    link = tmp_path / "link"
    link.symlink_to(fixture_root)
    with pytest.raises(SameSourceError, match=r"--root .*suburmp and --eval-root .*link are the same folder"):
        evaluate_robustness(fixture_root, link, classifier=tmp_path / "never_read.ckpt",
                            train_soundfont=rob.fonts["A"], eval_soundfont=rob.fonts["B"])  # fmt: skip


def test_a_sample_comparison_that_could_not_run_is_said_so(rob, tmp_path):
    # (7) a recorded font not on this machine: not refused, but never silently passed
    from cmav.standin.soundfonts import SampleComparisonWarning

    rng = np.random.default_rng(0)
    violin = rng.integers(-2000, 2000, 500)
    a = write_sf2(tmp_path / "BankA.sf2", {"Violin": violin, "Flute": rng.integers(-2000, 2000, 500)})
    b = write_sf2(tmp_path / "BankB.sf2", {"Fiddle": violin})
    ra, rb = soundfont_record(a), soundfont_record(b)
    b.unlink()
    with pytest.warns(SampleComparisonWarning, match=r"sample comparison not run: .*BankB.sf2 not on this machine"):
        assert same_source(ra, rb) is None
    elsewhere = with_manifest(make_suburmp(tmp_path / "elsewhere", chunks=3), a)
    (tmp_path / "BankA.sf2").unlink()  # built on another machine: its font is not here
    with pytest.warns(UserWarning, match=r"sample comparison not run: .*BankA.sf2 not on this machine"):
        result = evaluate_robustness(rob.train, elsewhere, classifier=rob.clf, cache_dir=rob.cache,
                                     out_dir=tmp_path / "o", progress=False)  # fmt: skip
    assert any("sample comparison not run" in w and "BankA.sf2" in w for w in result["warnings"])
    assert "sample comparison not run" in (tmp_path / "o" / "report.md").read_text()
    assert "sample comparison not run" in (tmp_path / "o" / "metrics.json").read_text()


def test_build_eval_copy_names_the_build_parameters_a_manifest_lacks(tmp_path):
    from cmav.evaluation.robustness import build_eval_copy

    # (9) a manifest without frame_size / jpeg_quality: a named error, not a KeyError
    root = tmp_path / "old"
    root.mkdir()
    (root / MANIFEST).write_text(json.dumps({"params": {"preset": "fixture", "seed": 0, "soundfont": "FontA.sf2"}}))
    with pytest.raises(DataError, match=r"old: its manifest does not record frame_size, jpeg_quality"):
        build_eval_copy(root, tmp_path / "new", fake_font(tmp_path / "FontB.sf2", b"b"), progress=False)
    assert not (tmp_path / "new").exists()


def test_the_report_writes_n_a_for_a_score_that_is_not_a_number():
    from cmav.evaluation.robustness import format_report

    # (10) an empty split's NaN is None after json_safe
    font = {"name": "FontA.sf2", "path": "/f/FontA.sf2", "sha256": "0" * 64}
    result = {"split": "validation", "fonts": {"in_source": font, "cross_source": {**font, "name": "FontB.sf2"}},
              "models": {"classifier": {"in_source": {"accuracy": None, "balanced_accuracy": None, "n": 0},
                                        "cross_source": {"accuracy": 0.5, "balanced_accuracy": 0.5, "n": 4}}}}  # fmt: skip
    report = format_report(result)
    assert "| sound classifier | accuracy | n/a | 0.500 | n/a | ≥ 0.75 (not met) |" in report
