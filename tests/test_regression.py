"""Stored outputs of the front ends and core models on fixed inputs (``tests/regression/``).

The other tests check what each piece should do; these check that it still does exactly what it did
when the stored outputs were made. A change that moves them changes every cached feature and what
every trained checkpoint computes, even where shapes and state-dict keys still match, so it must be
deliberate: regenerate with ``python tests/regression/make_expected.py`` and bump ``CACHE_VERSION``
(``cmav/data/cache.py``) when a front end moved.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cmav.features.frontend import FRONT_ENDS, build_front_end

sys.path.insert(0, str(Path(__file__).parent / "regression"))
import make_expected  # noqa: E402

STORED = np.load(make_expected.OUT)
REDO = "if the change is meant, run `python tests/regression/make_expected.py`"


# Front ends whose output is a log spectrum (dB). The FFT's round-off is relative to the frame's energy,
# so in dB it grows as a bin lies further below the peak: on an Intel Xeon (AVX-512) the STFT's bins
# 98 dB below the peak moved by 0.009 dB from the values stored on an AMD EPYC (AVX2), while every
# bin within 60 dB of it stayed within 0.00025. Their tolerance grows the same way, by
# FFT_ROUNDOFF x 10^(dB below the peak / 20): 0.08 dB at 98 dB below, where that run reached a
# quarter of it, and 0.3 dB at the STFT's floor, 110 dB below (a floor or `top_db` change still moves
# those bins by whole dB).
LOG_SPECTRA = {"cqt", "lms", "stft"}
FFT_ROUNDOFF = 1e-6


def _check(name: str, actual: np.ndarray, what: str, log_spectrum: bool = False) -> None:
    want = STORED[name]
    assert actual.shape == want.shape, f"{name}: shape {actual.shape}, stored {want.shape}; {REDO}"
    scale = max(1.0, float(np.abs(want).max()))
    tol = 1e-4 * scale + (FFT_ROUNDOFF * 10 ** ((want.max() - want) / 20) if log_spectrum else 0.0)
    excess = np.abs(actual - want) - tol
    err = float(np.abs(actual - want).flat[excess.argmax()])
    # float32 on another CPU or thread count moves the last digits; a real change moves far more
    assert excess.max() <= 0, f"{name}: {what} moved by {err:.3g} (scale {scale:.3g}); {REDO}"


@pytest.fixture(scope="module")
def tone() -> torch.Tensor:
    stored = STORED["input/tone_int16"]
    assert np.array_equal(stored, make_expected.tone()), "the stored tone is no longer what make_expected.tone() makes"
    return torch.from_numpy(stored.astype(np.float32) / 32767.0)[None, None]


@pytest.mark.parametrize("kind", sorted(k for k in FRONT_ENDS if k != "waveform"))
def test_front_end_output_is_unchanged(kind, tone):
    out = build_front_end({"kind": kind})(tone, make_expected.RATE).numpy()
    _check(f"front_end/{kind}", out, f"the {kind} front end's output (bump CACHE_VERSION in cmav/data/cache.py too)",
           log_spectrum=kind in LOG_SPECTRA)


def test_waveform_front_end_passes_the_samples_through(tone):
    assert torch.equal(build_front_end({"kind": "waveform"})(tone, make_expected.RATE), tone[:, :, None])


def test_core_models_load_their_stored_weights_and_compute_the_same():
    nets = make_expected.models()
    for name, net in nets.items():
        prefix = f"weights/{name}/"
        state = {k[len(prefix):]: torch.from_numpy(STORED[k]) for k in STORED.files if k.startswith(prefix)}
        net.load_state_dict(state, strict=True)  # renamed or reshaped parameters fail here, by name
    out = make_expected.run_models({k: STORED[k] for k in STORED.files}, nets)
    assert set(out) == {k for k in STORED.files if k.split("/")[0] in nets}
    for key, value in out.items():
        _check(key, value, "a model's output with its stored weights (checkpoints trained before would compute differently)")
