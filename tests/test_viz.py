"""Pictures for people: spectrograms scaled to [0, 1] and labelled grids."""

import numpy as np
import pytest
import torch

from cmav.viz import labelled_grid
from cmav.viz.tensors import lms_picture, spectrogram_to_unit


def test_one_non_finite_bin_does_not_blank_the_spectrogram():
    spec = torch.linspace(-80.0, 0.0, 12).reshape(1, 1, 3, 4).repeat(3, 1, 1, 1)
    spec[0, 0, 0, 0] = float("-inf")  # the log of a silent bin
    spec[1, 0, 0, 0] = float("nan")
    spec[2, 0, 0, 0] = float("inf")
    out = spectrogram_to_unit(spec)
    assert torch.isfinite(out).all() and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    clean = spectrogram_to_unit(torch.linspace(-80.0, 0.0, 12).reshape(1, 1, 3, 4))[0]
    for i in range(3):  # every other bin is scaled by the finite range, as without the bad bin
        assert torch.allclose(out[i].flatten()[:8], clean.flatten()[:8], atol=0.1)  # (flipped: the bad bin is last)
    assert float(out[0, 0, -1, 0]) == 0.0 and float(out[1, 0, -1, 0]) == 0.0 and float(out[2, 0, -1, 0]) == 1.0
    assert float(spectrogram_to_unit(torch.full((1, 1, 2, 2), float("nan"))).abs().max()) == 0.0
    picture = lms_picture(spec[0], size=8)
    assert picture.dtype == np.uint8 and int(picture.max()) == 255


def test_a_range_upside_down_is_refused():
    spec = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"low \(0.0\) must not be above high \(-80.0\)"):
        spectrogram_to_unit(spec, low=0.0, high=-80.0)
    assert float(spectrogram_to_unit(spec, low=-80.0, high=0.0).min()) == 1.0


def test_grid_cells_must_be_uint8_not_wrapped():
    ok = np.full((8, 8, 3), 200, np.uint8)
    assert labelled_grid([[ok, None]], cell_size=8).size[0] > 0
    for bad, dtype in ((np.full((8, 8, 3), 0.9), "float64"), (np.full((8, 8, 3), 300), "int64")):
        with pytest.raises(ValueError, match=rf"labelled_grid: cell \[0\]\[1\] is {dtype}; cells must be uint8"):
            labelled_grid([[ok, bad]], cell_size=8)  # 0.9 became 0 and 300 became 44
