"""AdaBN: batch-norm statistics re-estimated on another source's unlabelled inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cmav.evaluation.adaptation import adapt_batch_norm, batch_norm_layers
from cmav.models import StatsPoolEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def encoder() -> StatsPoolEncoder:
    torch.manual_seed(0)
    return StatsPoolEncoder(input_shape=(1, 13, 22), n_classes=4, hidden_dim=16, feature_dim=8).eval()


def test_a_per_row_offset_and_scale_of_the_new_source_is_undone_and_the_model_is_left_alone():
    model = encoder()
    x = torch.randn(64, 1, 13, 22)
    gain = torch.linspace(0.5, 3.0, 13).view(1, 1, 13, 1)
    offset = torch.linspace(-2.0, 2.0, 13).view(1, 1, 13, 1)
    shifted = x * gain + offset  # another source: every row at another level and spread
    before = {k: v.clone() for k, v in model.state_dict().items()}

    on_x = adapt_batch_norm(model, x, batch_size=16)
    on_shifted = adapt_batch_norm(model, shifted, batch_size=16)

    # the input norm's running mean is the new source's per-row mean (4 equal batches: exact)
    row_norm = batch_norm_layers(on_shifted)[0]
    assert torch.allclose(row_norm.running_mean, shifted.mean((0, 1, 3)), atol=1e-5)
    with torch.no_grad():
        want = on_x(x)
        assert torch.allclose(on_shifted(shifted), want, atol=1e-3)
        assert not torch.allclose(on_x(shifted), want, atol=1e-1)  # without adaptation the shift matters
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and not model.training
    assert all(layer.momentum == 0.1 for layer in batch_norm_layers(on_shifted)) and not on_shifted.training


def test_dropout_and_feature_noise_stay_off_while_the_statistics_are_read():
    model = encoder()
    x = torch.randn(32, 1, 13, 22)
    a, b = adapt_batch_norm(model, x), adapt_batch_norm(model, x)
    for la, lb in zip(batch_norm_layers(a), batch_norm_layers(b), strict=True):
        assert torch.equal(la.running_mean, lb.running_mean) and torch.equal(la.running_var, lb.running_var)


def test_nothing_to_adapt_or_too_few_inputs_is_refused():
    with pytest.raises(ValueError, match="Sequential has no batch-norm layer"):
        adapt_batch_norm(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.randn(8, 4))
    with pytest.raises(ValueError, match="at least 2 inputs"):
        adapt_batch_norm(encoder(), torch.randn(1, 1, 13, 22))


def test_statistics_are_the_whole_splits_whatever_its_order_or_batch_size():
    # a split stored sorted by class: batches of one class each would each look normal to
    # per-batch statistics, and their average would leave out the spread between the classes
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(3), nn.Linear(3, 4), nn.BatchNorm1d(4)).eval()
    x = torch.cat([torch.randn(50, 3) + 4.0 * k for k in range(4)])  # 4 classes, sorted
    sorted_small = adapt_batch_norm(model, x, batch_size=50)
    shuffled_big = adapt_batch_norm(model, x[torch.randperm(len(x))], batch_size=256)
    first, second = batch_norm_layers(sorted_small)
    assert torch.allclose(first.running_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(first.running_var, x.var(0), rtol=1e-5)  # about 20: not the ~1 within a class
    with torch.no_grad():  # the second layer reads what the adapted first one passes on
        h = sorted_small[1](first(x))
    assert torch.allclose(second.running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(second.running_var, h.var(0), rtol=1e-4)
    for a, b in zip(batch_norm_layers(sorted_small), batch_norm_layers(shuffled_big), strict=True):
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-5)
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-5)


def test_layers_are_adapted_in_the_order_the_forward_reaches_them():
    class Backwards(nn.Module):  # defined in one order, run in the other
        def __init__(self) -> None:
            super().__init__()
            self.late = nn.BatchNorm1d(2)
            self.early = nn.BatchNorm1d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.late(2.0 * self.early(x) + 1.0)

    x = torch.randn(40, 2) * 3.0 + 5.0
    adapted = adapt_batch_norm(Backwards().eval(), x)
    with torch.no_grad():
        h = 2.0 * adapted.early(x) + 1.0
    assert torch.allclose(adapted.late.running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(adapted.late.running_var, h.var(0), rtol=1e-4)
