"""Shape, gradient and API tests for cmav.models (small widths, CPU, fast)."""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from cmav.models import (
    AudioEncoder,
    ConditionalGenerator,
    ConditionBank,
    ConvEncoder,
    ExponentialMovingAverage,
    ImageEncoder,
    ImageJudge,
    PairAwareDiscriminator,
    count_parameters,
)

torch.set_num_threads(2)
SMALL = 8  # base channels in tests


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ---------------------------------------------------------------- encoders


@pytest.mark.parametrize(
    "shape",
    [(1, 128, 44), (1, 64, 44), (1, 128, 87), (3, 64, 64), (3, 128, 128), (1, 1, 400)],
)
def test_encoder_shapes(shape: tuple[int, int, int]) -> None:
    enc = ConvEncoder(shape, base_channels=SMALL, feature_dim=16, n_classes=13)
    x = torch.randn(3, *shape)
    assert enc(x).shape == (3, 13)
    assert enc.embed(x).shape == (3, 16)
    out = enc.forward_features(x)
    assert [tuple(b.shape[1:]) for b in out.blocks] == enc.block_shapes
    assert enc.feature_map(x).shape == (3, *enc.block_shapes[-1])


def test_audio_image_defaults() -> None:
    a = AudioEncoder(base_channels=SMALL)
    i = ImageEncoder(base_channels=SMALL)
    assert a.input_shape == (1, 128, 44) and i.input_shape == (3, 64, 64)
    assert a.embed(torch.randn(2, 1, 128, 44)).shape == (2, 128)
    assert i(torch.randn(2, 3, 64, 64)).shape == (2, 13)
    # the shape is never hard-coded: the audio encoder takes other front ends
    assert AudioEncoder((1, 64, 44), base_channels=SMALL).embed(torch.randn(2, 1, 64, 44)).shape == (2, 128)


@pytest.mark.parametrize("n_blocks", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("shape", [(1, 128, 44), (1, 64, 44)])
def test_encoder_depths_and_blocks(n_blocks: int, shape: tuple[int, int, int]) -> None:
    enc = AudioEncoder(shape, n_blocks=n_blocks, base_channels=SMALL, max_channels=32)
    out = enc.forward_features(torch.randn(2, *shape))
    assert len(out.blocks) == n_blocks
    areas = [b.shape[2] * b.shape[3] for b in out.blocks]
    assert all(a > b for a, b in pairwise(areas)), areas
    assert shape[1] * shape[2] > areas[0]
    assert out.feature.shape == (2, 128)
    assert out.logits.shape == (2, 13)


@pytest.mark.parametrize("n_blocks", [0, 1, 7])
def test_encoder_bad_depth(n_blocks: int) -> None:
    with pytest.raises(ValueError, match="n_blocks"):
        AudioEncoder(n_blocks=n_blocks)


def test_encoder_bad_input_raises() -> None:
    enc = ImageEncoder(base_channels=SMALL)
    with pytest.raises(ValueError):
        enc(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError):
        ConvEncoder((128, 44))


@pytest.mark.parametrize("cls", [AudioEncoder, ImageEncoder])
def test_eval_encoder_batch_independent(cls: type[ConvEncoder]) -> None:
    enc = cls(base_channels=SMALL)
    x = torch.randn(6, *enc.input_shape) * 20 - 40  # dB-like offsets for the input BN
    enc.train()
    enc(x)  # move running statistics away from their init
    enc.eval()
    with torch.no_grad():
        full = enc.embed(x)
        alone = torch.cat([enc.embed(x[i : i + 1]) for i in range(len(x))])
        others = enc.embed(torch.cat([x[:1], torch.randn(5, *enc.input_shape)]))
    torch.testing.assert_close(full, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(full[:1], others[:1], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- judge


@pytest.mark.parametrize("size", [64, 128])
@pytest.mark.parametrize("n_classes", [13, 5])
def test_judge_shapes(size: int, n_classes: int) -> None:
    judge = ImageJudge(image_size=size, n_classes=n_classes, base_channels=SMALL, feature_dim=32)
    x = torch.rand(2, 3, size, size) * 2 - 1
    assert judge(x).shape == (2, n_classes)
    assert judge.features(x).shape == (2, 32)


def test_judge_stronger_than_encoder() -> None:
    assert count_parameters(ImageJudge()) > count_parameters(ImageEncoder())


# ---------------------------------------------------------------- generator


@pytest.mark.parametrize(
    "out_shape,act",
    [((3, 64, 64), "tanh"), ((3, 128, 128), "tanh"), ((1, 128, 44), "none"), ((1, 64, 44), "none")],
)
@pytest.mark.parametrize("fit", ["crop", "interpolate"])
def test_generator_shapes(out_shape: tuple[int, int, int], act: str, fit: str) -> None:
    g = ConditionalGenerator(out_shape, base_channels=SMALL, out_activation=act, fit=fit)
    y = g(torch.randn(3, 10), torch.randn(3, 128))
    assert y.shape == (3, *out_shape)
    if act == "tanh":
        assert y.abs().max() <= 1.0


def test_generator_start_map() -> None:
    g = ConditionalGenerator((3, 64, 64), base_channels=SMALL)
    assert g.start_shape == (4, 4) and g.n_stages == 4
    s = ConditionalGenerator((1, 128, 44), base_channels=SMALL, out_activation="none")
    assert s.canvas_shape == (128, 64) and s.start_shape == (8, 4)


def test_generator_gradients() -> None:
    g = ConditionalGenerator((1, 128, 44), base_channels=SMALL, out_activation="none")
    z = torch.randn(2, 10, requires_grad=True)
    c = torch.randn(2, 128, requires_grad=True)
    g(z, c).square().mean().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert c.grad is not None and c.grad.abs().sum() > 0


def test_generator_unconditional_and_errors() -> None:
    g = ConditionalGenerator(base_channels=SMALL, cond_dim=0)
    assert g(torch.randn(2, 10)).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError):
        ConditionalGenerator(base_channels=SMALL)(torch.randn(2, 10))
    with pytest.raises(ValueError):
        ConditionalGenerator(out_activation="sigmoid")


# ---------------------------------------------------------------- discriminator


@pytest.mark.parametrize("in_shape", [(3, 64, 64), (3, 128, 128), (1, 128, 44), (1, 64, 44)])
@pytest.mark.parametrize("sn", [False, True])
def test_discriminator_shapes(in_shape: tuple[int, int, int], sn: bool) -> None:
    d = PairAwareDiscriminator(in_shape, base_channels=SMALL, spectral_norm=sn)
    assert d(torch.randn(3, *in_shape), torch.randn(3, 128)).shape == (3,)
    _, h, w = d.feature_shape
    assert h <= 4 and w <= 4


def test_discriminator_unconditional() -> None:
    d = PairAwareDiscriminator(base_channels=SMALL, cond_dim=0)
    assert d(torch.randn(2, 3, 64, 64)).shape == (2,)
    assert d(torch.randn(2, 3, 64, 64), None).shape == (2,)
    with pytest.raises(ValueError):
        PairAwareDiscriminator(base_channels=SMALL)(torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("sn", [False, True])
def test_discriminator_gradients(sn: bool) -> None:
    d = PairAwareDiscriminator((1, 128, 44), base_channels=SMALL, spectral_norm=sn)
    x = torch.randn(2, 1, 128, 44, requires_grad=True)
    c = torch.randn(2, 128, requires_grad=True)
    d(x, c).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert c.grad is not None and c.grad.abs().sum() > 0


def test_discriminator_cond_changes_logit() -> None:
    d = PairAwareDiscriminator(base_channels=SMALL).eval()
    x = torch.randn(2, 3, 64, 64)
    assert not torch.allclose(d(x, torch.randn(2, 128)), d(x, torch.randn(2, 128)))


def test_projection_term_adds_condition_times_pooled_features() -> None:
    torch.manual_seed(0)
    d = PairAwareDiscriminator(base_channels=SMALL, projection=True, spectral_norm=True).eval()
    assert d.projection is not None and parametrize.is_parametrized(d.projection, "weight")
    x, c = torch.randn(3, 3, 64, 64), torch.randn(3, 128)
    # the logit is the concatenation path plus <W c, mean_hw(features(x))>
    with torch.no_grad():
        fmap = d.features(x)
        tiled = d.cond_proj(c)[:, :, None, None].expand(-1, -1, *fmap.shape[2:])
        concat_path = d.out(d.joint(torch.cat([fmap, tiled], 1))).flatten()
        expected = concat_path + (d.projection(c) * fmap.mean((2, 3))).sum(1)
        assert torch.allclose(d(x, c), expected, atol=1e-5)
    c.requires_grad_(True)
    d.train()
    d(x, c).sum().backward()
    assert d.projection.parametrizations.weight.original.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="projection needs a conditional"):
        PairAwareDiscriminator(base_channels=SMALL, cond_dim=0, projection=True)
    assert PairAwareDiscriminator(base_channels=SMALL).projection is None  # off by default, as in the paper


def test_class_head_classifies_the_sample_alone_and_learns_it() -> None:
    torch.manual_seed(0)
    d = PairAwareDiscriminator(base_channels=SMALL, n_classes=2, spectral_norm=True)
    x, c = torch.randn(8, 3, 64, 64), torch.randn(8, 128)
    d.eval()
    with torch.no_grad():
        logit, classes = d(x, c, with_classes=True)
        assert torch.allclose(logit, d(x, c)) and classes.shape == (8, 2)
        _, other_cond = d(x, torch.randn(8, 128), with_classes=True)
        assert torch.allclose(classes, other_cond)  # the condition plays no part in the class
    # two classes told apart by where the bright square is: the head learns them in a few steps
    d.train()
    images = torch.full((32, 3, 64, 64), -1.0)
    labels = torch.arange(32) % 2
    images[labels == 0, :, 8:24, 8:24] = 1.0
    images[labels == 1, :, 40:56, 40:56] = 1.0
    opt = torch.optim.Adam(d.parameters(), lr=2e-3)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(d(images, torch.zeros(32, 128), with_classes=True)[1], labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = (d(images, torch.zeros(32, 128), with_classes=True)[1].argmax(1) == labels).float().mean()
    assert accuracy == 1.0
    with pytest.raises(ValueError, match="no class head"):
        PairAwareDiscriminator(base_channels=SMALL)(x, c, with_classes=True)
    with pytest.raises(ValueError, match="n_classes must be >= 0"):
        PairAwareDiscriminator(base_channels=SMALL, n_classes=-1)
    assert PairAwareDiscriminator(base_channels=SMALL).class_head is None  # off by default, as in the paper


def test_spectral_norm_registered_and_no_bn() -> None:
    d = PairAwareDiscriminator(base_channels=SMALL, spectral_norm=True)
    layers = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    plain = PairAwareDiscriminator(base_channels=SMALL)
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


# ---------------------------------------------------------------- EMA


def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()
    model(torch.randn(4, 10), torch.randn(4, 128))  # changes BN running stats (buffers)


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def test_ema_decay_zero_follows_model() -> None:
    g = ConditionalGenerator(base_channels=SMALL)
    ema = ExponentialMovingAverage(g, decay=0.0)
    _perturb(g)
    ema.update(g)
    for k, v in g.state_dict().items():
        torch.testing.assert_close(ema.module.state_dict()[k], v)


def test_ema_decay_one_is_frozen_params() -> None:
    g = ConditionalGenerator(base_channels=SMALL)
    ema = ExponentialMovingAverage(g, decay=1.0)
    before = dict((k, v.clone()) for k, v in ema.module.named_parameters())
    _perturb(g)
    ema.update(g)
    for k, v in ema.module.named_parameters():
        torch.testing.assert_close(v, before[k])
    # buffers are copied, stylegan2-ada style
    for k, v in g.named_buffers():
        torch.testing.assert_close(dict(ema.module.named_buffers())[k], v)


def test_ema_intermediate_decay_and_copy_to() -> None:
    g = ConditionalGenerator(base_channels=SMALL)
    ema = ExponentialMovingAverage(g, decay=0.9)
    old = dict((k, v.clone()) for k, v in ema.module.named_parameters())
    _perturb(g)
    ema.update(g)
    new = dict(g.named_parameters())
    for k, v in ema.module.named_parameters():
        torch.testing.assert_close(v, 0.9 * old[k] + 0.1 * new[k])
    assert int(ema.n_updates) == 1
    target = ConditionalGenerator(base_channels=SMALL)
    ema.copy_to(target)
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v)


def test_ema_stays_eval_frozen_and_runs() -> None:
    d = PairAwareDiscriminator(base_channels=SMALL, spectral_norm=True)
    ema = ExponentialMovingAverage(d, decay=0.5)
    ema.train()
    assert not ema.module.training
    assert all(not p.requires_grad for p in ema.parameters())
    ema.update(d)
    assert ema(torch.randn(2, 3, 64, 64), torch.randn(2, 128)).shape == (2,)
    with pytest.raises(ValueError):
        ExponentialMovingAverage(d, decay=1.5)


@pytest.mark.parametrize("style", ["hook", "parametrization"])
def test_ema_without_buffer_copies_keeps_spectral_norm_vectors_unit(style) -> None:
    """``copy_buffers=False`` averages BatchNorm statistics but copies the power-iteration vectors:
    their average is no unit vector, and the EMA copy (eval mode) would then misjudge sigma."""
    torch.manual_seed(0)
    sn = nn.utils.spectral_norm if style == "hook" else nn.utils.parametrizations.spectral_norm
    model = nn.Sequential(sn(nn.Linear(16, 16)), nn.BatchNorm1d(16))
    ema = ExponentialMovingAverage(model, decay=0.5, copy_buffers=False)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(8, 16))  # train mode: a power iteration and new BN statistics
        ema.update(model)
    vectors = {k: v for k, v in ema.module.named_buffers() if k.rsplit(".", 1)[-1] in ("weight_u", "weight_v", "_u", "_v")}
    assert len(vectors) == 2
    for k, v in vectors.items():
        torch.testing.assert_close(v, dict(model.named_buffers())[k])
        assert abs(float(v.norm()) - 1.0) < 1e-4
    live_mean = model[1].running_mean  # BN statistics are still averaged, not copied
    assert not torch.allclose(ema.module[1].running_mean, live_mean)


# ---------------------------------------------------------------- condition bank


def _bank() -> ConditionBank:
    bank = ConditionBank(2)
    bank.fill(torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 10.0], [12.0, 10.0]]), torch.tensor([0, 0, 2, 2]))
    return bank


def test_condition_bank_replaces_conditions_by_the_nearest_or_the_predicted_class_mean():
    bank, cond = _bank(), torch.tensor([[0.9, 0.2], [9.0, 9.0]])
    assert bank.snap(cond, "own") is cond
    assert torch.equal(bank.snap(cond, "nearest"), torch.tensor([[1.0, 0.0], [10.0, 10.0]]))
    assert torch.allclose(bank.snap(cond, "nearest", k=2), torch.tensor([[0.5, 0.0], [11.0, 10.0]]))
    assert torch.allclose(bank.snap(cond, "nearest", k=99), torch.tensor([[5.75, 5.0]]).expand(2, 2))  # k capped at M
    # the class the encoder predicts decides, not where the condition lies
    assert torch.allclose(bank.snap(cond, "class_mean", torch.tensor([2, 0])), torch.tensor([[11.0, 10.0], [0.5, 0.0]]))
    # a predicted class with no training item (1, or beyond the bank's classes) falls back to the nearest item
    assert torch.allclose(bank.snap(cond, "class_mean", torch.tensor([1, 5])), torch.tensor([[1.0, 0.0], [10.0, 10.0]]))
    with pytest.raises(ValueError, match="predicted classes"):
        bank.snap(cond, "class_mean")
    with pytest.raises(ValueError, match="inference condition must be one of"):
        bank.snap(cond, "median")
    with pytest.raises(RuntimeError, match="condition bank is empty"):
        ConditionBank(2).snap(cond, "nearest")
    with pytest.raises(ValueError, match=r"\(M, 2\)"):
        ConditionBank(2).fill(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels of shape"):
        ConditionBank(2).fill(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


def test_condition_bank_loads_any_size_and_stays_empty_for_older_checkpoints():
    holder = torch.nn.Sequential(ConditionBank(2))
    holder.load_state_dict(torch.nn.Sequential(_bank()).state_dict())  # 4 items into an empty bank
    assert len(holder[0]) == 4 and torch.equal(holder[0].labels, torch.tensor([0, 0, 2, 2]))
    # a state dict from before the bank existed: no missing-key error, and an empty bank
    fresh = torch.nn.Sequential(ConditionBank(2))
    assert fresh.load_state_dict({}, strict=True).missing_keys == []
    assert len(fresh[0]) == 0


# ---------------------------------------------------------------- input shapes


def test_encoders_and_the_judge_refuse_inputs_of_the_wrong_shape_by_name() -> None:
    from cmav.models import StatsPoolEncoder

    stats = StatsPoolEncoder((1, 29, 22)).eval()
    for bad in [(4, 1, 30, 22), (4, 1, 29, 1)]:  # rows other than built (raw batch-norm errors), one frame
        with pytest.raises(ValueError, match=r"expected input \(N, 1, 29, W >= 2\), got " + re.escape(str(bad))):
            stats(torch.randn(*bad))
    assert stats(torch.randn(4, 1, 29, 7)).shape == (4, 13)  # another clip length is fine
    audio = AudioEncoder(base_channels=SMALL).eval()  # 4 poolings along both axes: at least 16 x 16
    for bad in [(2, 1, 128, 15), (2, 1, 8, 44)]:
        with pytest.raises(ValueError, match=r"expected input \(N, 1, H >= 16, W >= 16\), got " + re.escape(str(bad))):
            audio(torch.randn(*bad))
    assert audio(torch.randn(2, 1, 16, 16)).shape == (2, 13)
    wave = ConvEncoder((1, 1, 400), base_channels=SMALL).eval()  # the strided stem, then 4 poolings along W
    with pytest.raises(ValueError, match=r"expected input \(N, 1, H >= 1, W >= 254\), got \(2, 1, 1, 253\)"):
        wave(torch.randn(2, 1, 1, 253))
    assert wave(torch.randn(2, 1, 1, 254)).shape == (2, 13)
    judge = ImageJudge(base_channels=SMALL, feature_dim=32).eval()  # 5 blocks: at least 32 x 32
    for bad in [(2, 1, 64, 64), (2, 3, 16, 16), (3, 64, 64)]:
        with pytest.raises(ValueError, match=r"ImageJudge: expected input \(N, 3, H >= 32, W >= 32\), got "
                           + re.escape(str(bad))):  # fmt: skip
            judge(torch.randn(*bad))
        with pytest.raises(ValueError, match="ImageJudge: expected input"):
            judge.features(torch.randn(*bad))
    assert judge(torch.randn(2, 3, 32, 32)).shape == (2, 13)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_condition_bank_snaps_half_precision_conditions_in_their_dtype(dtype) -> None:
    bank, cond = _bank(), torch.tensor([[0.9, 0.2], [9.0, 9.0]], dtype=dtype)
    for got in (bank.snap(cond, "nearest"), bank.snap(cond, "class_mean", torch.tensor([2, 1]))):
        assert got.dtype == dtype
    assert torch.equal(bank.snap(cond, "nearest").float(), torch.tensor([[1.0, 0.0], [10.0, 10.0]]))
    assert torch.equal(bank.snap(cond, "class_mean", torch.tensor([2, 1])).float(), torch.tensor([[11.0, 10.0], [10.0, 10.0]]))


def test_condition_bank_refuses_conditions_and_predictions_of_the_wrong_shape_by_name() -> None:
    bank, cond = _bank(), torch.tensor([[0.9, 0.2], [9.0, 9.0]])
    with pytest.raises(ValueError, match=r"conditions must be \(N, 2\) to match the bank, got \(2, 3\)"):
        bank.snap(torch.zeros(2, 3), "nearest")
    with pytest.raises(ValueError, match=r"conditions must be \(N, 2\) to match the bank, got \(2,\)"):
        bank.snap(torch.zeros(2), "class_mean", torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"predicted must be the \(2,\) class indices.*got shape \(2, 13\)"):
        bank.snap(cond, "class_mean", torch.randn(2, 13))  # logits, not their argmax
    with pytest.raises(ValueError, match=r"predicted must be the \(2,\) class indices.*got shape \(1,\)"):
        bank.snap(cond, "class_mean", torch.tensor([0]))
    with pytest.raises(ValueError, match=r"predicted must be the \(2,\) class indices.*torch.float32"):
        bank.snap(cond, "class_mean", torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match=r"predicted must be the \(2,\) class indices.*torch.bool"):
        bank.snap(cond, "class_mean", torch.tensor([True, False]))
    with pytest.raises(ValueError, match=r"predicted class indices must be >= 0, got -1"):
        bank.snap(cond, "class_mean", torch.tensor([0, -1]))


def test_discriminator_refuses_a_one_by_one_batch_norm_map():
    """Batch norm on a 1x1 last map has one value per channel on a one-sample batch and fails in
    train mode: final_size 1 always ends there, final_size 2 does for a 12x12 input (12 -> 6 -> 3
    -> 1). Spectral norm without batch norm, or a map of two or more positions, is fine."""
    for in_shape, final_size in (((3, 32, 32), 1), ((3, 12, 12), 2)):
        with pytest.raises(ValueError, match=rf"final_size={final_size}.*1x1.*batch norm"):
            PairAwareDiscriminator(in_shape, cond_dim=8, base_channels=4, final_size=final_size)
        d = PairAwareDiscriminator(in_shape, cond_dim=8, base_channels=4, final_size=final_size, spectral_norm=True)
        assert d.feature_shape[1:] == (1, 1) and d(torch.randn(1, *in_shape), torch.randn(1, 8)).shape == (1,)
    d = PairAwareDiscriminator((1, 32, 12), cond_dim=8, base_channels=4, final_size=2)  # ends 2x1
    assert d.feature_shape[1:] == (2, 1) and d(torch.randn(1, 1, 32, 12), torch.randn(1, 8)).shape == (1,)


def test_ema_decay_error_names_the_option():
    with pytest.raises(ValueError, match=r"ema_decay.*must be in \[0, 1\], got 1.5"):
        ExponentialMovingAverage(nn.Linear(2, 2), decay=1.5)
