import librosa
import numpy as np
import pytest
import torch

from cmav.features import LogMelConfig, LogMelSpectrogram

# Stated tolerance of the LMS front end against librosa on the same input at the front-end rate.
LIBROSA_MAX_ABS_DB = 1e-2


def _signal(rate: int, seconds: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    sig = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1234 * t) * np.exp(-3 * t)
    return (sig + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def _librosa_lms(y: np.ndarray, c: LogMelConfig) -> np.ndarray:
    mel = librosa.feature.melspectrogram(y=y, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length,
                                         n_mels=c.n_mels, power=c.power)  # fmt: skip
    return librosa.power_to_db(mel, ref=1.0, amin=c.amin, top_db=c.top_db)


def test_default_shape_is_128_by_44_for_half_a_second():
    c = LogMelConfig()
    out = LogMelSpectrogram(c)(torch.randn(3, 2, 22050), 44100)
    assert out.shape == (3, 1, 128, 44)
    assert c.output_shape(0.5) == (1, 128, 44)


def test_matches_librosa_at_the_front_end_rate():
    c = LogMelConfig()
    y = _signal(c.sample_rate)
    ours = LogMelSpectrogram(c)(torch.from_numpy(y)[None])[0, 0].numpy()
    ref = _librosa_lms(y, c)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < LIBROSA_MAX_ABS_DB


def test_resampling_44k_input_stays_close_to_librosa():
    c = LogMelConfig()
    x = _signal(44100)
    ours = LogMelSpectrogram(c)(torch.from_numpy(x)[None], 44100)[0, 0].numpy()
    ref = _librosa_lms(librosa.resample(x, orig_sr=44100, target_sr=c.sample_rate), c)
    # Different resamplers (torchaudio sinc vs soxr) differ only near Nyquist and in the noise floor.
    loud = ref > ref.max() - 60
    assert np.median(np.abs(ours - ref)[loud]) < 0.1


def test_other_configs_follow_their_own_shape():
    c = LogMelConfig(n_mels=64, hop_length=128)
    out = LogMelSpectrogram(c)(torch.randn(2, 11025))
    assert out.shape[1:] == c.output_shape(0.5) == (1, 64, 87)


def test_clip_shorter_than_the_window_is_refused_clearly():
    with pytest.raises(ValueError, match="too short"):
        LogMelSpectrogram()(torch.randn(1, 100))


def test_one_dimensional_input_is_refused_clearly():
    with pytest.raises(ValueError, match="batch"):
        LogMelSpectrogram()(torch.randn(11025))


def test_top_db_floor_is_per_clip_not_per_batch():
    fe = LogMelSpectrogram(LogMelConfig(top_db=40.0))
    quiet, loud = 1e-3 * torch.randn(1, 11025), torch.randn(1, 11025)
    alone = fe(quiet)
    together = fe(torch.cat([quiet, loud]))[:1]
    assert torch.allclose(alone, together, atol=1e-4)
    assert (alone.amax() - alone.amin()) <= 40.0 + 1e-4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"f_max": 16000.0}, r"f_max must be in \(f_min, sample_rate / 2 = 11025.0\].*got 16000.0"),
        ({"sample_rate": 16000, "f_max": 11025.0}, r"f_max must be in \(f_min, sample_rate / 2 = 8000.0\]"),
        ({"f_min": 9000.0, "f_max": 8000.0}, r"f_min must be >= 0 and below f_max \(8000.0\), got 9000.0"),
        ({"f_min": -1.0}, r"f_min must be >= 0 and below f_max"),
        ({"f_min": 11025.0}, r"f_min must be >= 0 and below f_max \(11025.0\)"),
        ({"hop_length": 0}, r"hop_length must be > 0, got 0"),
        ({"n_fft": 0}, r"n_fft must be > 0, got 0"),
    ],
)
def test_options_outside_what_the_transform_can_compute_are_refused_by_the_config(options, message):
    # f_max above Nyquist gave empty mel bands (constant -100 dB rows); hop_length=0 failed inside torch.stft
    with pytest.raises(ValueError, match=message):
        LogMelConfig(**options)
    assert LogMelConfig(sample_rate=16000, f_max=8000.0).f_max == 8000.0  # Nyquist itself is allowed
    assert LogMelConfig(f_max=None).f_max is None
