"""Front-end settings refused by the config, naming the front end and the option, before a cache
build or a grid cell reaches torch or torchaudio with them; and ``cmav data cache --features``."""

import numpy as np
import pytest
import torch

from cmav.data import cache as cache_mod
from cmav.data.datasets import SubURMP
from cmav.features import FRONT_ENDS, MfccConfig, build_front_end, front_end_config

from fixtures import make_suburmp

KINDS = sorted(FRONT_ENDS)


def _noise(rate: int, seconds: float = 0.5) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy((0.1 * rng.standard_normal(int(rate * seconds))).astype(np.float32))[None]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        # read as "a floor at -60 dB": every harmonic row was clamped to one value, silently
        ({"floor_db": -60.0}, r"harmonic front end: floor_db must be a finite number of dB > 0 .*got -60.0"),
        ({"floor_db": 0.0}, r"harmonic front end: floor_db must be a finite number of dB > 0 .*got 0.0"),  # 0 / 0
        ({"floor_db": float("nan")}, r"harmonic front end: floor_db must be a finite number of dB > 0"),
        ({"floor_db": float("inf")}, r"harmonic front end: floor_db must be a finite number of dB > 0"),
        ({"hop_length": 256.5}, r"harmonic front end: hop_length must be a whole number, got 256.5"),
        ({"n_fft": 4096.5}, r"harmonic front end: n_fft must be a whole number, got 4096.5"),
        ({"n_fft": 0}, r"harmonic front end: n_fft must be > 0, got 0"),
        ({"frame_length": 2048.5}, r"harmonic front end: frame_length must be a whole number, got 2048.5"),
        ({"n_harmonics": 24.5}, r"harmonic front end: n_harmonics must be a whole number, got 24.5"),
        ({"n_harmonics": 0}, r"harmonic front end: n_harmonics must be > 0, got 0"),
        ({"band_bins": -1}, r"harmonic front end: band_bins must be a whole number >= 0, got -1"),
        ({"band_bins": 1.5}, r"harmonic front end: band_bins must be a whole number >= 0, got 1.5"),
        ({"f_max": float("nan")}, r"harmonic front end: need 0 < f_min < f_max < Nyquist"),
    ],
)
def test_harmonic_options_that_break_or_flatten_the_features_are_refused_by_the_config(options, message):
    # these gave one constant value per harmonic row (floor_db < 0), NaN features (0), a raw torch
    # TypeError or RuntimeError (hop_length 256.5, band_bins -1) or a declared shape of 29.5 rows
    with pytest.raises(ValueError, match=message) as err:
        front_end_config({"kind": "harmonic", **options})
    assert "\n" not in str(err.value)


def test_harmonic_band_bins_zero_is_one_bin_per_harmonic():
    assert front_end_config({"kind": "harmonic", "band_bins": 0.0}) == front_end_config({"kind": "harmonic", "band_bins": 0})


@pytest.mark.parametrize("kind", KINDS)
def test_a_fractional_sample_rate_is_refused_by_every_config(kind):
    # through an ablation grid's YAML (no jsonargparse typing) it reached torchaudio's resampler as
    # "Frequencies must be of integer type", mid-grid, after earlier cells had trained
    with pytest.raises(ValueError, match=rf"^{kind} front end: sample_rate must be a whole number, got 16000.5$"):
        front_end_config({"kind": kind, "sample_rate": 16000.5})


@pytest.mark.parametrize("kind", KINDS)
def test_whole_numbers_written_as_floats_are_the_int_settings(kind):
    # 256.0 passed the count check and then reached torch.stft / librosa as a float (TypeError), and
    # would key a cache file apart from 256
    floats = {"sample_rate": 16000.0} if kind == "waveform" else {"sample_rate": 16000.0, "hop_length": 256.0}
    ints = {k: int(v) for k, v in floats.items()}
    config = front_end_config({"kind": kind, **floats})
    assert config == front_end_config({"kind": kind, **ints})
    assert all(type(getattr(config, k)) is int for k in floats)
    if kind not in ("cqt", "harmonic"):  # librosa's: a first call compiles numba kernels (40 s); ints suffice
        y = build_front_end(config)(_noise(22050), 22050)
        assert y.shape[1:] == config.output_shape(0.5) and torch.isfinite(y).all()


def test_n_mfcc_must_be_a_whole_number():
    with pytest.raises(ValueError, match=r"mfcc front end: n_mfcc must be a whole number, got 13.5"):
        front_end_config({"kind": "mfcc", "n_mfcc": 13.5})


def test_data_cache_prepares_the_cache_of_the_front_end_given(tmp_path, capsys, monkeypatch):
    from cmav.cli.main import main

    root = make_suburmp(tmp_path / "d", chunks=1)
    assert main(["data", "cache", str(root), "--image-size", "16", "--features", "{kind: mfcc, n_mfcc: 13}"]) == 0
    out = capsys.readouterr().out
    files = sorted((root / ".cmav_cache").glob("*.pt"))
    assert len(files) == 2  # one per split, the MFCC's: no LMS file computed on the way
    for split in ("train", "validation"):
        line = next(x for x in out.splitlines() if x.startswith(f"{split}:"))
        assert "mfcc features (1, 13, 44)" in line and str(root / ".cmav_cache" / f"{split}-") in line

    def fail(*a, **k):
        raise AssertionError("cache was rebuilt")

    monkeypatch.setattr(cache_mod, "build_tensors", fail)
    for split in ("train", "validation"):
        ds = SubURMP(root, split, image_size=16, features=MfccConfig(n_mfcc=13), progress=False)
        assert ds.tensors.audio.shape[1:] == (1, 13, 44)
        assert str(cache_mod.cache_file_used(root, split)) in out

    assert main(["data", "cache", str(root), "--features", "{kind: mfcc"]) == 2
    assert main(["data", "cache", str(root), "--features", "mfcc"]) == 2
    err = capsys.readouterr().err
    assert "--features: not YAML" in err and "--features must be a mapping such as '{kind: harmonic}'" in err
