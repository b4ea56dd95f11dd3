"""The pitch-normalised harmonic profile front end and the statistics-pooling encoder (issue #8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmav.features import HarmonicConfig, build_front_end
from cmav.features.harmonic import DESCRIPTORS
from cmav.models import AudioEncoder, StatsPoolEncoder
from cmav.tasks.common import EncoderConfig

RATE = 22050


def tone(f0: float, amps: list[float], seconds: float = 0.5, rate: int = RATE) -> torch.Tensor:
    """A steady harmonic tone ``sum_h amps[h-1] sin(2 pi h f0 t)``, ``(1, samples)``."""
    t = np.arange(int(rate * seconds)) / rate
    x = sum(a * np.sin(2 * np.pi * (h + 1) * f0 * t) for h, a in enumerate(amps))
    return torch.tensor(0.3 * x / np.abs(x).max(), dtype=torch.float32)[None]


def inner(x: torch.Tensor) -> torch.Tensor:
    """The frames away from the clip's edges (centred frames there see zero padding)."""
    return x[..., 3:-3]


def test_a_tone_gives_its_pitch_and_its_harmonic_levels():
    fe = build_front_end({"kind": "harmonic", "descriptors": ["pitch", "odd_even"], "n_harmonics": 6})
    amps = [1.0, 0.5, 0.25, 0.0, 0.1, 0.0]
    out = inner(fe(tone(220.0, amps)))[0, 0]  # rows: pitch, odd_even, h1..h6
    assert out.shape[0] == 2 + 6
    assert torch.allclose(out[0] * 100, torch.tensor(57.0), atol=0.1)  # A3 = MIDI 57
    floor = fe.config.floor_db
    want = [20 * np.log10(a) / floor if a > 0 else None for a in amps]  # power in dB below h1, / floor_db
    for h, w in enumerate(want):
        level = out[2 + h]
        if w is None:
            assert (level < -0.6).all()  # an absent harmonic sits far below (at most the floor, -1)
        else:
            assert torch.allclose(level, torch.tensor(w, dtype=level.dtype), atol=0.03), (h + 1, level.mean(), w)
    odd = 1 + 0.25**2 + 0.1**2
    assert torch.allclose(out[1] * 30, torch.tensor(10 * np.log10(odd / 0.5**2), dtype=out.dtype), atol=0.2)


def test_the_harmonic_rows_do_not_move_with_the_pitch_while_a_spectrogram_does():
    fe = build_front_end({"kind": "harmonic", "descriptors": ["pitch"], "n_harmonics": 8})
    lms = build_front_end({"kind": "lms"})
    amps = [1.0, 0.7, 0.2, 0.4, 0.05, 0.1, 0.02, 0.03]
    low, high = tone(196.0, amps), tone(293.7, amps)  # G3 and D4, the same recipe
    a, b = inner(fe(low))[0, 0], inner(fe(high))[0, 0]
    assert (b[0] - a[0]) * 100 == pytest.approx(7.0, abs=0.1)  # a fifth apart
    assert torch.allclose(a[1:], b[1:], atol=0.03)  # the same instrument, measured relative to its note
    la, lb = lms(low), lms(high)
    assert (la - lb).abs().mean() > 5.0  # dB: the LMS of the two notes differ everywhere


def test_levels_relative_to_the_fundamental_and_their_tilt():
    """reference='fundamental': harmonic h reads 20 log10(a_h / a_1) / floor, above 0 where it is
    louder than the fundamental; a tilt of the profile is still what an EQ tilt of the tone gives."""
    from cmav.features.harmonic import tilt_harmonics

    cfg = HarmonicConfig(descriptors=("pitch",), n_harmonics=4, reference="fundamental")
    fe = build_front_end(cfg)
    amps = np.array([0.5, 1.0, 0.25, 0.1])
    x = fe(tone(220.0, list(amps)))
    want = torch.tensor(20 * np.log10(amps / amps[0]) / cfg.floor_db, dtype=torch.float32)
    assert torch.allclose(inner(x)[0, 0, 1:].mean(-1), want, atol=0.03)
    slope = 6.0
    tilted = amps * 10 ** (slope * np.log2(np.arange(1, 5)) / 20)
    got = inner(tilt_harmonics(x, torch.tensor([slope]), cfg))[0, 0, 1:]
    assert torch.allclose(got, inner(fe(tone(220.0, list(tilted))))[0, 0, 1:], atol=0.03)
    with pytest.raises(ValueError, match="reference must be 'strongest' or 'fundamental'"):
        HarmonicConfig(reference="loudest")


def test_a_tilt_leaves_the_harmonics_at_the_floor_there_as_an_eq_of_the_tone_does():
    # a 2 kHz tone of three harmonics: 4 and 5 are silent, 6-24 lie above 11,025 Hz; no EQ of the
    # tone brings either back
    from cmav.features.harmonic import tilt_harmonics

    cfg = HarmonicConfig(descriptors=("pitch",))
    x = build_front_end(cfg)(tone(2000.0, [1.0, 0.5, 0.3]))
    floor = inner(x)[0, 0, 1:] == -1.0
    assert floor[3:, 4:-4].all()  # every absent harmonic, away from the edge frames
    got = inner(tilt_harmonics(x, torch.tensor([6.0]), cfg))[0, 0]
    assert torch.all(got[1:][floor] == -1.0)  # they were lifted by up to 27 dB before
    assert not torch.equal(got[1:4], inner(x)[0, 0, 1:4])  # the present ones still move


@pytest.mark.parametrize("slope", [6.0, 20.0, 30.0, -30.0])
def test_a_steep_tilt_is_referenced_to_the_harmonics_that_are_there(slope):
    # harmonics 7-24 at the floor (absent, or above Nyquist): at more than ~17.5 dB/octave one of them,
    # lifted by the tilt, became the reference and every real harmonic moved down
    from cmav.features.harmonic import tilt_harmonics

    cfg = HarmonicConfig()
    d = len(cfg.descriptors)
    levels = torch.full((24,), -1.0)
    levels[:6] = torch.tensor([0.0, -0.3, -0.5, -0.6, -0.7, -0.8])
    feats = torch.zeros(2, 1, d + 24, 3)
    feats[:, 0, :d] = torch.randn(d, 1)
    feats[:, 0, d:] = levels.view(24, 1)
    feats[1, 0, d:, 1] = -1.0  # a frame where every harmonic is at the floor (no pitch found)
    got = tilt_harmonics(feats, torch.tensor([slope, slope]), cfg)
    want = levels[:6] + slope * torch.log2(torch.arange(1, 7.0)) / cfg.floor_db
    want = (want - want.max()).clamp(min=-1.0)
    for i, frame in [(0, 0), (0, 2), (1, 0), (1, 2)]:
        assert torch.allclose(got[i, 0, d : d + 6, frame], want, atol=1e-6), (slope, got[i, 0, d : d + 6, frame])
        assert torch.all(got[i, 0, d + 6 :, frame] == -1.0)  # the floor stays the floor
    assert torch.isfinite(got).all() and torch.all(got[1, 0, d:, 1] == -1.0)  # the all-floor frame is left as it is
    assert torch.equal(got[:, :, :d], feats[:, :, :d])


def test_a_tilt_of_the_profile_is_what_an_eq_tilt_of_the_tone_gives():
    """tilt_harmonics(profile(x), s) = profile(x through a tilt of s dB/octave), here a tone whose
    harmonics are reweighted by 10^(s log2(h) / 20); the strongest harmonic moves from h1 to h4."""
    from cmav.features.augment import AudioAugment
    from cmav.features.harmonic import tilt_harmonics

    cfg = HarmonicConfig(descriptors=("pitch",), n_harmonics=6)
    fe = build_front_end(cfg)
    amps = np.array([1.0, 0.5, 0.6, 0.45, 0.2, 0.1])
    slope = 9.0  # dB per octave of harmonic number
    tilted = amps * 10 ** (slope * np.log2(np.arange(1, 7)) / 20)
    want = inner(fe(tone(220.0, list(tilted))))[0, 0, 1:]
    x = fe(tone(220.0, list(amps)))
    got = inner(tilt_harmonics(x, torch.tensor([slope]), cfg))[0, 0]
    assert int(want.mean(-1).argmax()) == 3 and torch.allclose(got[1:], want, atol=0.03)
    assert torch.equal(got[0], inner(x)[0, 0, 0])  # the descriptor rows stay
    assert torch.equal(tilt_harmonics(x, torch.zeros(1), cfg), x)  # zero tilt: the identity
    # the augmentation group: off, zero strength and p=0 leave the features; on, every example moves
    batch = x.repeat(4, 1, 1, 1)
    for off in ({}, {"tilt": {"p": 1.0, "max_db_per_octave": 0.0}}, {"tilt": {"p": 0.0}}):
        assert torch.equal(AudioAugment(off, cfg).features(batch), batch)
    torch.manual_seed(0)
    out = AudioAugment({"tilt": {"p": 1.0, "max_db_per_octave": 6.0}}, cfg).features(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert all(not torch.equal(out[i], batch[i]) for i in range(4)) and torch.equal(out[:, :, :1], batch[:, :, :1])
    with pytest.raises(ValueError, match=r"tilt works on the harmonic front end.*'lms'"):
        AudioAugment({"tilt": {"p": 1.0}}, build_front_end({"kind": "lms"}).config)
    from cmav.data.datamodule import AudioVisualDataModule

    with pytest.raises(ValueError, match="tilt works on the harmonic front end"):  # at set-up, not mid-training
        AudioVisualDataModule(root="unused", augment={"tilt": {"p": 1.0}})


def test_a_transposed_profile_is_the_same_recipe_played_higher():
    """transpose_pitch(profile(G3), +7) = profile(D4) of the same harmonic recipe: only the pitch row
    moves; and the augmentation group built on it."""
    from cmav.features.augment import AudioAugment
    from cmav.features.harmonic import transpose_pitch

    cfg = HarmonicConfig(descriptors=("brightness", "pitch"), n_harmonics=8)
    fe = build_front_end(cfg)
    amps = [1.0, 0.7, 0.2, 0.4, 0.05, 0.1, 0.02, 0.03]
    low, high = fe(tone(196.0, amps)), fe(tone(293.7, amps))
    got = transpose_pitch(low, torch.tensor([7.0]), cfg)
    assert torch.allclose(inner(got)[0, 0, 1], inner(high)[0, 0, 1], atol=0.001)  # the pitch row, MIDI / 100
    assert torch.allclose(inner(got), inner(high), atol=0.03)
    assert torch.equal(got[:, :, [0, *range(2, 10)]], low[:, :, [0, *range(2, 10)]])  # nothing else moves
    assert torch.equal(transpose_pitch(low, torch.zeros(1), cfg), low)
    batch = low.repeat(4, 1, 1, 1)
    for off in ({}, {"transpose": {"p": 1.0, "max_semitones": 0.0}}, {"transpose": {"p": 0.0}}):
        assert torch.equal(AudioAugment(off, cfg).features(batch), batch)
    torch.manual_seed(0)
    out = AudioAugment({"transpose": {"p": 1.0, "max_semitones": 3.0}}, cfg).features(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    moved = (out - batch)[:, 0, 1, :] * 100  # semitones, the same over each example's frames
    assert (moved.std(-1) < 1e-4).all() and (moved[:, 0].abs() <= 3.0).all() and (moved[:, 0].abs() > 0).all()
    with pytest.raises(ValueError, match=r"transpose works on the harmonic front end.*'lms'"):
        AudioAugment({"transpose": {"p": 1.0}}, build_front_end({"kind": "lms"}).config)
    with pytest.raises(ValueError, match="no pitch row"):
        transpose_pitch(low[:, :, 1:], torch.ones(1), HarmonicConfig(descriptors=("brightness",), n_harmonics=8))


def test_shape_follows_the_config_and_bad_options_are_refused():
    cfg = HarmonicConfig(n_harmonics=10, descriptors=("loudness",), hop_length=256)
    assert cfg.output_shape(0.5) == (1, 11, 11025 // 256 + 1)
    out = build_front_end(cfg)(torch.randn(3, 2, 22050) * 0.1, 44100)  # 0.5 s
    assert out.shape == (3, 1, 11, 44) and torch.isfinite(out).all()
    assert HarmonicConfig().output_shape(0.5) == (1, 5 + 24, 22)  # flatness left out by default
    assert "flatness" in DESCRIPTORS and "flatness" not in HarmonicConfig().descriptors
    with pytest.raises(ValueError, match="descriptors must be distinct names"):
        build_front_end({"kind": "harmonic", "descriptors": ["pitch", "timbre"]})
    with pytest.raises(ValueError, match="bands of ±2 bins overlap"):
        build_front_end({"kind": "harmonic", "n_fft": 1024})
    with pytest.raises(ValueError, match="no option"):
        build_front_end({"kind": "harmonic", "n_mels": 64})


def test_the_statistics_pooling_encoder_ignores_frame_order_and_learns():
    torch.manual_seed(0)
    shape = HarmonicConfig().output_shape(0.5)
    enc = EncoderConfig(arch="stats", hidden_dim=32, feature_dim=16, feature_noise=0.1).build(AudioEncoder, shape, 13)
    assert isinstance(enc, StatsPoolEncoder) and enc.feature_dim == 16 and enc.block_shapes == [shape]
    x = torch.randn(8, *shape)
    out = enc.forward_features(x)
    assert [tuple(b.shape) for b in out.blocks] == [(8, *shape)] and out.feature.shape == (8, 16)
    out.logits.sum().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
    enc.eval()
    perm = torch.randperm(shape[-1])
    assert torch.allclose(enc.embed(x), enc.embed(x[..., perm]), atol=1e-5)  # pooled over time
    assert not torch.allclose(enc.embed(x), enc.embed(x.flip(2)), atol=1e-3)  # but the rows are rows
    # it fits a task a conv stack cannot see in one frame: the class is which row varies over time
    y = torch.randint(0, 4, (256,))
    data = torch.randn(256, 1, 6, 10) * 0.1
    data[torch.arange(256), 0, y] += torch.randn(256, 10)
    enc = EncoderConfig(arch="stats", hidden_dim=32, feature_dim=16, feature_noise=0.0).build(AudioEncoder, (1, 6, 10), 4)
    opt = torch.optim.Adam(enc.parameters(), 1e-2)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(enc.train()(data), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (enc.eval()(data).argmax(1) == y).float().mean() > 0.95
    with pytest.raises(ValueError, match="encoder arch must be one of"):
        EncoderConfig(arch="transformer")
    with pytest.raises(ValueError, match="at least 2 frames"):
        StatsPoolEncoder(input_shape=(1, 5, 1))
    with pytest.raises(ValueError, match="trains on batches of 2 or more clips"):
        enc.train()(data[:1])
    assert enc.eval()(data[:1]).shape == (1, 4)


def test_a_frame_mlp_lets_the_pooled_statistics_see_rows_that_vary_together():
    """Plain pooling reads each row's mean and spread over time, so shuffling one row's frames
    changes nothing; after a per-frame MLP (``frame_width``) it does. Frame order still does not
    matter, and without ``frame_width`` the layers (the checkpoint keys) are as before."""
    from cmav.models.encoders import FrameMLP, StatisticsPooling

    torch.manual_seed(0)
    shape = (1, 6, 10)
    plain = EncoderConfig(arch="stats", hidden_dim=32, feature_dim=16).build(AudioEncoder, shape, 4).eval()
    framed = EncoderConfig(arch="stats", hidden_dim=32, feature_dim=16, frame_width=8).build(AudioEncoder, shape, 4)
    assert isinstance(plain.fc_feature[0], StatisticsPooling) and isinstance(framed.fc_feature[0], FrameMLP)
    assert [k for k in plain.state_dict() if "fc_feature" in k] == ["fc_feature.1.running_mean",
        "fc_feature.1.running_var", "fc_feature.1.num_batches_tracked", "fc_feature.3.weight", "fc_feature.3.bias",
        "fc_feature.6.weight", "fc_feature.6.bias"]  # fmt: skip
    x = torch.randn(4, *shape)
    framed(x).sum().backward()
    assert framed.fc_feature[0].net[0].weight.grad.abs().sum() > 0
    framed.eval()
    shuffled = x.clone()
    shuffled[:, 0, 2] = x[:, 0, 2, torch.randperm(shape[-1])]  # one row's frames, in another order
    assert torch.allclose(plain.embed(x), plain.embed(shuffled), atol=1e-5)
    assert not torch.allclose(framed.embed(x), framed.embed(shuffled), atol=1e-3)
    perm = torch.randperm(shape[-1])
    assert torch.allclose(framed.embed(x), framed.embed(x[..., perm]), atol=1e-5)
    with pytest.raises(ValueError, match="frame_width must be >= 0"):
        StatsPoolEncoder(input_shape=shape, frame_width=-1)


def test_the_harmonic_overlay_switches_front_end_and_encoder_and_matches_the_grid_rows(capsys, monkeypatch):
    import sys
    from pathlib import Path

    import yaml

    from cmav.ablation import load_grid
    from cmav.cli.main import main as cmav_main

    experiments = Path(__file__).resolve().parents[1] / "experiments"
    monkeypatch.setattr(sys, "argv", ["cmav"])
    with pytest.raises(SystemExit):
        cmav_main(["fit", "--config", str(experiments / "audio_classifier.yaml"),
                   "--config", str(experiments / "audio_harmonic.yaml"), "--print_config"])  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)
    enc, features = printed["model"]["init_args"]["audio_encoder"], printed["data"]["features"]
    assert enc["arch"] == "stats" and features["kind"] == "harmonic" and enc["feature_dim"] == 128
    assert printed["trainer"]["default_root_dir"] == "runs/audio_harmonic"
    assert all(c["init_args"].get("dirpath") is None for c in printed["trainer"]["callbacks"])  # default_root_dir's
    for preset in (None, "cpu"):
        rows = [v for v in load_grid(experiments / "ablations" / "robustness.yaml", preset)["variants"]
                if v["name"].startswith("harmonic")]  # fmt: skip
        assert [v["groups"] for v in rows] == [[], [], ["tilt"], ["tilt"], []]
        for v in rows:
            assert v["features"] == {"kind": "harmonic"} and v["model"]["audio_encoder"]["arch"] == "stats"
        # the grid's 'harmonic recipe' row is the overlay: its encoder, optimiser and whole tracks
        recipe = rows[-1]
        assert recipe["name"] == "harmonic recipe"
        assert recipe["model"]["audio_encoder"] == {k: enc[k] for k in recipe["model"]["audio_encoder"]}
        assert recipe["model"]["optimizer"]["lr"] == printed["model"]["init_args"]["optimizer"]["lr"]
        assert recipe["data"] == {"holdout_tail": printed["data"]["holdout_tail"]} == {"holdout_tail": 0.0}
    assert printed["data"].get("augment") is None  # tilt is an option, off (docs/robustness.md: it did not carry over)


def test_s2i_c_trains_on_a_frozen_harmonic_encoder_and_refuses_data_of_another_front_end(tmp_path, capsys, monkeypatch):
    """S2I-C conditioned on the harmonic sound classifier (experiments/s2i_harmonic.yaml): the frozen
    StatsPoolEncoder's weights stay as loaded while G and D train; LMS data are refused by name."""
    import sys
    import warnings
    from pathlib import Path

    import lightning as L
    import yaml

    from cmav.cli.main import main as cmav_main
    from cmav.data.datamodule import AudioVisualDataModule
    from cmav.tasks import ClassifierTask, S2ITask

    from fixtures import make_suburmp_tracks

    def fit(task, dm, steps: int, name: str) -> Path:
        L.seed_everything(0, verbose=False)
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            num_sanity_val_steps=0, default_root_dir=str(tmp_path))  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(task, datamodule=dm)
        trainer.save_checkpoint(str(tmp_path / f"{name}.ckpt"))
        return tmp_path / f"{name}.ckpt"

    root = make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=3)
    harmonic = {"kind": "harmonic", "n_harmonics": 8}
    dm = AudioVisualDataModule(root=str(root), image_size=32, batch_size=16, features=harmonic,
                               cache_dir=str(tmp_path / "cache"), progress=False)  # fmt: skip
    clf = ClassifierTask(modality="audio", audio_encoder={"arch": "stats", "hidden_dim": 16, "feature_dim": 16})
    ckpt = fit(clf, dm, 4, "clf")
    small = {"base_channels": 8, "max_channels": 32, "cond_proj_dim": 16}
    s2i = S2ITask(variant="s2i_c", encoder_mode="frozen", audio_encoder_ckpt=str(ckpt), image_size=32,
                  sample_every_n_steps=0, generator=small, discriminator=small)  # fmt: skip
    assert isinstance(s2i.model.encoder, StatsPoolEncoder)
    before = {k: v.clone() for k, v in s2i.model.encoder.state_dict().items()}
    g_before = [p.detach().clone() for p in s2i.model.generator.parameters()]
    fit(s2i, dm, 4, "s2i")
    assert all(torch.equal(before[k], v) for k, v in s2i.model.encoder.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, s2i.model.generator.parameters(), strict=True))
    lms = AudioVisualDataModule(root=str(root), image_size=32, batch_size=16, cache_dir=str(tmp_path / "cache"),
                                progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="train the sound classifier on the same front end"):
        fit(S2ITask(variant="s2i_c", encoder_mode="frozen", audio_encoder_ckpt=str(ckpt), image_size=32,
                    sample_every_n_steps=0, generator=small, discriminator=small), lms, 1, "bad")  # fmt: skip
    # the same shape from another floor: read wrongly without a word, unless the configs are compared
    deeper = AudioVisualDataModule(root=str(root), image_size=32, batch_size=16, features={**harmonic, "floor_db": 90.0},
                                   cache_dir=str(tmp_path / "cache"), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"clf\.ckpt: the sound classifier was trained on another front end.*floor_db"):
        fit(S2ITask(variant="s2i_c", encoder_mode="frozen", audio_encoder_ckpt=str(ckpt), image_size=32,
                    sample_every_n_steps=0, generator=small, discriminator=small), deeper, 1, "bad")  # fmt: skip

    # the shipped overlay chains the two: the classifier overlay's checkpoint, data and front end
    experiments = Path(__file__).resolve().parents[1] / "experiments"
    monkeypatch.setattr(sys, "argv", ["cmav"])
    with pytest.raises(SystemExit):
        cmav_main(["fit", *[a for y in ("s2i_c", "s2i_stable", "s2i_harmonic") for a in ("--config", str(experiments / f"{y}.yaml"))],
                   "--print_config"])  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)
    clf_yaml = yaml.safe_load((experiments / "audio_harmonic.yaml").read_text())
    assert any(c["init_args"]["filename"] == "last" for c in clf_yaml["trainer"]["callbacks"])
    clf_root = clf_yaml["trainer"]["default_root_dir"]
    assert printed["model"]["init_args"]["audio_encoder_ckpt"] == f"{clf_root}/checkpoints/last.ckpt"
    assert printed["data"]["features"]["kind"] == "harmonic"
    base_clf_yaml = yaml.safe_load((experiments / "audio_classifier.yaml").read_text())
    clf_data_root = clf_yaml.get("data", {}).get("root", base_clf_yaml["data"]["root"])
    assert printed["data"]["root"] == clf_data_root  # G trains on the data its encoder was trained on
    assert printed["model"]["init_args"]["variant"] == "s2i_c" and printed["model"]["init_args"]["discriminator"]["spectral_norm"]
    # the two settings it was measured with (README): the fake pair's weight, the class-mean condition
    weights = printed["model"]["init_args"]["loss_weights"]
    assert weights["fake"] == 2.0 and weights["wrong_class"] == weights["wrong_player"] == 1.0
    assert printed["model"]["init_args"]["inference_condition"] == "class_mean"


def test_absent_harmonics_read_the_floor_relative_to_the_fundamental_and_a_tilt_keeps_them_there():
    # reference='fundamental' used to apply the floor relative to the strongest harmonic and only then
    # re-reference: with the fundamental 20 dB below the strongest, the absent harmonics read -0.75, and
    # a tilt (which knows the floor by -1) lifted them; with a silent fundamental they all read 0
    from cmav.features.harmonic import tilt_harmonics

    cfg = HarmonicConfig(descriptors=("pitch",), reference="fundamental")
    fe = build_front_end(cfg)
    strongest = build_front_end(HarmonicConfig(descriptors=("pitch",)))
    for amps in ([0.1, 1.0, 0.5], [0.0, 1.0, 0.5]):  # 2 kHz: h4, h5 silent, h6-24 above Nyquist
        x = fe(tone(2000.0, amps))
        levels = x[0, 0, 1:, 4:-4]
        assert torch.all(levels[3:] == -1.0), (amps, levels[3:].unique())
        floored = strongest(tone(2000.0, amps))[0, 0, 1:] <= -1.0 + 1e-6  # what the strongest-reference floors
        assert floored.any() and torch.all(x[0, 0, 1:][floored] == -1.0)
        got = tilt_harmonics(x, torch.tensor([6.0]), cfg)[0, 0, 1:, 4:-4]
        assert torch.all(got[3:] == -1.0)  # the tilt keeps them at the floor
        assert (x >= -1.0).all() and (x[0, 0, 1:] <= 1.0).all()
    # the harmonics that are there: the strongest-reference levels moved by the fundamental's (h2 20 dB above)
    x = fe(tone(2000.0, [0.1, 1.0, 0.5]))[0, 0, 1:4, 4:-4]
    s = strongest(tone(2000.0, [0.1, 1.0, 0.5]))[0, 0, 1:4, 4:-4]
    assert torch.allclose(x, s - s[:1], atol=1e-5) and torch.allclose(x[1], torch.tensor(0.25), atol=0.03)
    silent_fundamental = fe(tone(2000.0, [0.0, 1.0, 0.5]))[0, 0, 1:4, 4:-4]
    assert torch.all(silent_fundamental[0] == -1.0) and torch.all(silent_fundamental[1:] == 1.0)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"frame_length": 2047}, r"frame_length must be even and > 0, got 2047"),
        ({"hop_length": 0}, r"hop_length must be > 0, got 0"),
        ({"f_min": 20.0, "n_fft": 8192, "frame_length": 1024}, r"f_min=20.0 is too low for frame_length=1024"),
    ],
)
def test_yin_options_it_cannot_run_are_refused_when_the_front_end_is_built(options, message):
    # an odd frame_length gave one pitch frame fewer than the spectrum (and than output_shape); an f_min
    # below sample_rate / (frame_length - 1) built and then failed on the first clip of a cache build
    with pytest.raises(ValueError, match=message):
        build_front_end({"kind": "harmonic", **options})
    fe = build_front_end({"kind": "harmonic", "f_min": 22.0, "n_fft": 8192, "frame_length": 1024})  # just above
    with pytest.warns(UserWarning, match="less than two periods of fmin"):  # librosa's advice, not an error
        assert fe(torch.randn(1, 11025) * 0.1).shape[1:] == fe.config.output_shape(0.5)


def test_a_pitch_track_of_another_length_than_the_spectrum_is_an_error_not_cropped(monkeypatch):
    fe = build_front_end({"kind": "harmonic"})
    pitch = fe.pitch
    monkeypatch.setattr(fe, "pitch", lambda wave: pitch(wave)[..., :-1])
    with pytest.raises(ValueError, match=r"pitch track has 21 frames, the spectrum 22"):
        fe(torch.randn(1, 11025) * 0.1)
