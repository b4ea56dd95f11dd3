"""The audio front-end family (lms, stft, cqt, mfcc, waveform): shapes, librosa references, config
errors, encoders for every representation and depth, and per-representation cache entries."""

import os

import librosa
import numpy as np
import pytest
import torch

from cmav.data import cache as cache_mod
from cmav.data.datamodule import AudioVisualDataModule
from cmav.data.datasets import SubURMP
from cmav.features import (
    FRONT_ENDS,
    CqtConfig,
    LogMelConfig,
    MfccConfig,
    StftConfig,
    WaveformConfig,
    build_front_end,  # fmt: skip
    front_end_config,
)
from cmav.models import AudioEncoder

from fixtures import make_suburmp

KINDS = sorted(FRONT_ENDS)
# Stated tolerance of the torch front ends against librosa on the same input at the front-end rate.
LIBROSA_MAX_ABS_DB = 1e-2


def _signal(rate: int, seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    sig = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t) * np.exp(-3 * t)
    return (sig + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("rate", [44100, 22050])
@pytest.mark.parametrize("kind", KINDS)
def test_every_representation_gives_its_declared_shape(kind, rate):
    fe = build_front_end({"kind": kind})
    out = fe(torch.from_numpy(_signal(rate))[None].repeat(2, 1), rate)
    assert tuple(out.shape) == (2, *fe.config.output_shape(0.5))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(("rate", "n"), [(44100, 11025), (48000, 22289), (16000, 11145)])
@pytest.mark.parametrize("kind", ["lms", "waveform", "harmonic"])
def test_declared_shapes_hold_for_any_source_rate_and_length(kind, rate, n):
    """The resamplers round the length up: a 0.25-s chunk at 44.1 kHz is 5,513 samples at 22,050 Hz,
    and the declared shape (what the cache allocates and the encoders are built for) says so."""
    fe = build_front_end({"kind": kind})
    out = fe(torch.from_numpy(_signal(rate, n / rate)[:n])[None], rate)
    assert tuple(out.shape[1:]) == fe.config.output_shape(n / rate)


def test_declared_shapes_for_half_a_second_at_22k():
    assert LogMelConfig().output_shape(0.5) == (1, 128, 44)
    assert StftConfig().output_shape(0.5) == (1, 513, 44)
    assert CqtConfig().output_shape(0.5) == (1, 84, 44)
    assert MfccConfig().output_shape(0.5) == (1, 20, 44)
    assert WaveformConfig().output_shape(0.5) == (1, 1, 11025)


def test_stft_matches_librosa():
    c = StftConfig()
    y = _signal(c.sample_rate)
    ours = build_front_end(c)(torch.from_numpy(y)[None])[0, 0].numpy()
    ref = librosa.amplitude_to_db(np.abs(librosa.stft(y, n_fft=c.n_fft, hop_length=c.hop_length)),
                                  ref=1.0, amin=c.amin, top_db=None)  # fmt: skip
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < LIBROSA_MAX_ABS_DB


def test_mfcc_matches_librosa_defaults():
    c = MfccConfig()
    y = _signal(c.sample_rate)
    ours = build_front_end(c)(torch.from_numpy(y)[None])[0, 0].numpy()
    ref = librosa.feature.mfcc(y=y, sr=c.sample_rate, n_mfcc=c.n_mfcc, n_fft=c.n_fft, hop_length=c.hop_length,
                               n_mels=c.n_mels)  # fmt: skip
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < LIBROSA_MAX_ABS_DB


@pytest.mark.filterwarnings("ignore:n_fft=.*is too large")
def test_cqt_is_librosas_in_db():
    c = CqtConfig()
    y = _signal(c.sample_rate)
    ours = build_front_end(c)(torch.from_numpy(y)[None])[0, 0].numpy()
    ref = librosa.amplitude_to_db(np.abs(librosa.cqt(y, sr=c.sample_rate, hop_length=c.hop_length)), ref=1.0,
                                  amin=c.amin, top_db=None)  # fmt: skip
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < LIBROSA_MAX_ABS_DB


def test_cqt_puts_a_tone_in_its_bin():
    rate = 22050
    t = np.arange(rate // 2) / rate
    a4 = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    out = build_front_end({"kind": "cqt"})(torch.from_numpy(a4)[None])[0, 0]
    # A4 (MIDI 69) is 3 octaves + 9 semitones above C1 (MIDI 24): bin 45
    assert int(out[:, 10:34].mean(dim=1).argmax()) == 45


def test_waveform_is_the_resampled_samples():
    y = torch.from_numpy(_signal(22050))[None]
    out = build_front_end({"kind": "waveform"})(y)
    assert torch.equal(out[0, 0, 0], y[0])
    stereo = torch.stack([y[0], -y[0]])[None]  # mono mix-down of opposite channels is silence
    assert build_front_end({"kind": "waveform"})(stereo).abs().max() < 1e-6


def test_config_from_dict_and_clear_errors():
    assert front_end_config(None) == LogMelConfig()
    assert front_end_config({"n_mels": 64}) == LogMelConfig(n_mels=64)  # no kind: the LMS default
    assert front_end_config({"kind": "cqt", "n_bins": 72}) == CqtConfig(n_bins=72)
    assert front_end_config(MfccConfig(n_mfcc=13)).n_mfcc == 13
    assert front_end_config(StftConfig()).to_dict()["kind"] == "stft"
    with pytest.raises(ValueError, match="unknown front end kind 'mel'"):
        front_end_config({"kind": "mel"})
    with pytest.raises(ValueError, match=r"front end 'mfcc' has no option\(s\) \['n_bins'\]"):
        front_end_config({"kind": "mfcc", "n_bins": 3})
    with pytest.raises(ValueError, match="divisible"):
        build_front_end({"kind": "cqt", "hop_length": 100})
    with pytest.raises(ValueError, match="too short for the stft front end"):
        build_front_end({"kind": "stft"})(torch.zeros(1, 100))
    # librosa also counts the top filter's bandwidth: at 8 kHz B7's filter passes Nyquist, which used
    # to be found only by the first clip of a cache build
    with pytest.raises(ValueError, match=r"top filter reaches \d+ Hz, above Nyquist \(4000 Hz\)"):
        build_front_end({"kind": "cqt", "sample_rate": 8000})
    # every shape cmav declares has one channel: a stereo option would return two
    for kind in KINDS:
        with pytest.raises(ValueError, match="mono=False is not supported"):
            build_front_end({"kind": kind, "mono": False})
    with pytest.raises(ValueError, match=r"expected float samples in \[-1, 1\], got torch.int16"):
        build_front_end(None)(torch.zeros(1, 22050, dtype=torch.int16))


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_builds_for_every_depth_and_representation(kind):
    torch.set_num_threads(1)
    shape = front_end_config({"kind": kind}).output_shape(0.5)
    x = torch.randn(2, *shape)
    for depth in range(2, 7):
        enc = AudioEncoder(input_shape=shape, n_blocks=depth, base_channels=4, max_channels=16, feature_dim=8)
        out = enc.forward_features(x)
        assert len(out.blocks) == depth and out.feature.shape == (2, 8) and out.logits.shape == (2, 13)
        assert [tuple(b.shape[1:]) for b in out.blocks] == enc.block_shapes
        out.logits.sum().backward()


def test_waveform_encoder_has_a_strided_stem():
    shape = WaveformConfig().output_shape(0.5)
    enc = AudioEncoder(input_shape=shape, n_blocks=2, base_channels=4)
    assert enc.block_shapes[0][2] < shape[2] // 16  # the stem cut the sequence before the blocks
    lms = AudioEncoder(n_blocks=2, base_channels=4)
    assert isinstance(lms.stem, torch.nn.Identity)


@pytest.fixture()
def root(tmp_path):
    return make_suburmp(tmp_path / "suburmp", chunks=2)


def test_each_representation_has_its_own_cache_entry_and_is_reused(root, monkeypatch):
    lms = SubURMP(root, "train", image_size=16, progress=False)
    mfcc = SubURMP(root, "train", image_size=16, features=MfccConfig(), progress=False)
    files = sorted((root / ".cmav_cache").glob("train-*.pt"))
    assert len(files) == 2
    assert lms.tensors.audio.shape[1:] == (1, 128, 44) and mfcc.tensors.audio.shape[1:] == (1, 20, 44)
    stamps = {f: f.stat().st_mtime_ns for f in files}

    def fail(*a, **k):
        raise AssertionError("cache was rebuilt")

    monkeypatch.setattr(cache_mod, "build_tensors", fail)
    again = SubURMP(root, "train", image_size=16, progress=False)  # back to the LMS: no recomputation
    assert torch.equal(again.tensors.audio, lms.tensors.audio)
    assert torch.equal(SubURMP(root, "train", image_size=16, features={"kind": "mfcc"}, progress=False).tensors.audio,
                       mfcc.tensors.audio)  # fmt: skip
    assert {f: f.stat().st_mtime_ns for f in files} == stamps


def test_datamodule_takes_the_kind_from_its_config_and_stores_it(root):
    dm = AudioVisualDataModule(root=str(root), image_size=16, batch_size=4, features={"kind": "cqt"}, progress=False)
    dm.setup("fit")
    assert dm.features == CqtConfig() and dm.hparams.features["kind"] == "cqt"
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape[1:] == (1, 84, 44)


def test_cli_selects_the_representation_with_one_key(root, tmp_path):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(AudioVisualDataModule, "data")
    cfg = parser.parse_args(["--data.root", str(root), "--data.features.kind", "mfcc", "--data.features.n_mfcc", "13"])
    dm = parser.instantiate(cfg).data
    assert dm.features == MfccConfig(n_mfcc=13)
    default = parser.instantiate(parser.parse_args(["--data.root", str(root)])).data
    assert default.features == LogMelConfig()


def test_front_end_differences_name_what_differs_and_ignore_how_it_was_written():
    from cmav.features import front_end_differences

    stored = {"kind": "harmonic", "descriptors": ["pitch", "loudness"]}  # a checkpoint's list
    assert front_end_differences(stored, {"kind": "harmonic", "descriptors": ("pitch", "loudness")}) == []
    assert front_end_differences(stored, {**stored, "floor_db": 90.0}) == ["floor_db: 80.0 -> 90.0"]
    assert front_end_differences(None, {"kind": "harmonic"}) == ["kind: lms -> harmonic"]


def test_the_numba_warm_up_caches_every_kernel_the_front_ends_reach(tmp_path):
    # install.sh fills the cache once so that parallel runs only read it (numba#10128): after the
    # warm-up, running the harmonic and CQT front ends must compile (write) nothing more
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "cmav.features.numba_cache"], env=env, check=True, capture_output=True)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert any(p.suffix == ".nbi" and "pitch" in p.name for p in before)  # yin's kernels are there
    run = ("import torch; from cmav.features.harmonic import HarmonicConfig, HarmonicProfile; "
           "from cmav.features.cqt import ConstantQTransform, CqtConfig; "
           "[f(torch.rand(3, 1, 11025) - 0.5, 22050) for f in (HarmonicProfile(HarmonicConfig()), ConstantQTransform(CqtConfig()))]")  # fmt: skip
    subprocess.run([sys.executable, "-c", run], env=env, check=True, capture_output=True)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_each_test_process_compiles_numba_kernels_into_a_cache_of_its_own():
    # two xdist workers filling one cold cache at once can crash one of them (numba#10128)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        pytest.skip("runs under pytest-xdist only")
    assert f"cmav-tests-numba-{worker}-" in os.environ["NUMBA_CACHE_DIR"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "lms", "top_db": -10.0}, r"lms front end: top_db must be > 0 dB \(None: no floor\), got -10.0"),
        ({"kind": "lms", "top_db": 0.0}, r"lms front end: top_db must be > 0 dB"),
        ({"kind": "stft", "top_db": -10.0}, r"stft front end: top_db must be > 0 dB"),
        ({"kind": "cqt", "top_db": -10.0}, r"cqt front end: top_db must be > 0 dB"),
        ({"kind": "mfcc", "top_db": -1.0}, r"mfcc front end: top_db must be > 0 dB"),
        ({"kind": "lms", "amin": 0.0}, r"lms front end: amin must be > 0, got 0.0"),
        ({"kind": "stft", "amin": -1e-5}, r"stft front end: amin must be > 0, got -1e-05"),
        ({"kind": "cqt", "amin": 0.0}, r"cqt front end: amin must be > 0"),
        ({"kind": "mfcc", "amin": float("nan")}, r"mfcc front end: amin must be > 0, got nan"),
        ({"kind": "lms", "n_mels": 0}, r"lms front end: n_mels must be > 0, got 0"),
        ({"kind": "mfcc", "n_mels": 0}, r"mfcc front end: n_mels must be > 0, got 0"),
    ],
)
def test_log_options_that_give_constant_or_infinite_features_are_refused_by_the_config(options, message):
    # a negative top_db made every clip one constant, amin=0 stored -inf, n_mels=0 cached zero rows
    with pytest.raises(ValueError, match=message):
        front_end_config(options)
    kind = options["kind"]
    fine = front_end_config({"kind": kind, "top_db": 80.0, "amin": 1e-6})
    y = build_front_end(fine)(torch.from_numpy(_signal(22050))[None])
    assert torch.isfinite(y).all() and float(y.amax() - y.amin()) > 1.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "cqt", "hop_length": 0}, r"cqt front end: hop_length must be > 0, got 0"),
        ({"kind": "cqt", "bins_per_octave": 0}, r"cqt front end: bins_per_octave must be > 0, got 0"),
        ({"kind": "cqt", "n_bins": 0}, r"cqt front end: n_bins must be > 0, got 0"),
        ({"kind": "cqt", "f_min": 0.0}, r"cqt front end: f_min must be > 0 Hz, got 0.0"),
        ({"kind": "cqt", "f_min": -5.0}, r"cqt front end: f_min must be > 0 Hz, got -5.0"),
        ({"kind": "cqt", "sample_rate": 0}, r"cqt front end: sample_rate must be > 0, got 0"),
        ({"kind": "lms", "sample_rate": 0}, r"lms front end: sample_rate must be > 0, got 0"),
        ({"kind": "stft", "sample_rate": -22050}, r"stft front end: sample_rate must be > 0, got -22050"),
        ({"kind": "stft", "hop_length": 0}, r"stft front end: hop_length must be > 0, got 0"),
        ({"kind": "lms", "power": 0.0}, r"lms front end: power must be > 0, got 0.0"),  # |X|**0: constant rows
        ({"kind": "lms", "n_fft": 1024.5}, r"lms front end: n_fft must be a whole number, got 1024.5"),
        ({"kind": "stft", "hop_length": 256.5}, r"stft front end: hop_length must be a whole number, got 256.5"),
        ({"kind": "mfcc", "sample_rate": 0}, r"mfcc front end: sample_rate must be > 0, got 0"),
        ({"kind": "waveform", "sample_rate": 0}, r"waveform front end: sample_rate must be > 0, got 0"),
        ({"kind": "harmonic", "sample_rate": 0}, r"harmonic front end: sample_rate must be > 0, got 0"),
    ],
)
def test_bad_sizes_and_rates_are_refused_by_the_config_before_any_audio_is_decoded(options, message):
    # these were a ZeroDivisionError, a librosa ParameterError at the first batch of a cache build, or
    # (lms sample_rate=0) an error blaming f_min
    with pytest.raises(ValueError, match=message):
        front_end_config(options)


@pytest.mark.filterwarnings("ignore:n_fft=.*is too large")
@pytest.mark.parametrize("n_bins", [101, 102])
def test_cqt_accepts_exactly_the_configs_librosa_computes(n_bins):
    # the Nyquist check allowed for a tuning librosa might estimate, but cmav asks for tuning 0.0
    # and so refused 101 bins from C1 on 1024-sample hops, which librosa computes
    c = CqtConfig(n_bins=n_bins, hop_length=1024)
    y = _signal(c.sample_rate)
    try:
        ref = librosa.amplitude_to_db(np.abs(librosa.cqt(y, sr=c.sample_rate, hop_length=c.hop_length, n_bins=n_bins,
                                                         tuning=0.0)), ref=1.0, amin=c.amin, top_db=None)  # fmt: skip
    except librosa.ParameterError:
        with pytest.raises(ValueError, match="above Nyquist"):
            build_front_end(c)
        return
    ours = build_front_end(c)(torch.from_numpy(y)[None])[0, 0].numpy()
    assert ours.shape == ref.shape and np.abs(ours - ref).max() < LIBROSA_MAX_ABS_DB
