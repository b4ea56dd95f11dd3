"""Tests for cmav.metrics on hand-built inputs (CPU, no downloads)."""

from __future__ import annotations

import json
import math
import socket
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix
from torch import nn

from cmav.metrics import (
    JudgeFeatureExtractor,
    classification_report,
    diversity_over_noise,
    feature_diversity,
    fid_kid,
    fid_kid_from_features,
    inception_feature_extractor,
    judged_accuracy,
    plot_confusion_matrix,
    save_classification_report,
)

NAMES3 = ["a", "b", "c"]


# ---------------------------------------------------------------- classification


def test_classification_report_hand_computed_3_classes():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 2, 2])
    r = classification_report(preds, targets, NAMES3)

    expected_cm = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(r.confusion, expected_cm)
    assert r.n == 6
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.per_class == pytest.approx({"a": 2 / 3, "b": 1 / 2, "c": 1.0})
    assert r.balanced_accuracy == pytest.approx((2 / 3 + 1 / 2 + 1.0) / 3)
    # ... and sklearn agrees.
    assert r.accuracy == pytest.approx(accuracy_score(targets, preds))
    assert r.balanced_accuracy == pytest.approx(balanced_accuracy_score(targets, preds))
    np.testing.assert_array_equal(r.confusion, confusion_matrix(targets, preds, labels=[0, 1, 2]))


def test_classification_report_accepts_logits():
    targets = torch.tensor([0, 1, 2, 2])
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    r = classification_report(logits, targets, NAMES3)
    assert r.accuracy == pytest.approx(3 / 4)
    np.testing.assert_array_equal(r.confusion, [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    # the argmax classes are kept in the targets' order (for per-player tables), not in the dict view
    np.testing.assert_array_equal(r.predictions, [0, 1, 1, 2])
    assert "predictions" not in r.to_dict()


def test_absent_class_is_nan_and_excluded_from_balanced_accuracy():
    names = ["a", "b", "c", "d"]
    targets = np.array([0, 0, 1, 2, 2, 2])
    preds = np.array([0, 3, 1, 2, 2, 0])  # class "d" is predicted but never a target
    r = classification_report(preds, targets, names)
    assert math.isnan(r.per_class["d"])
    assert r.per_class["a"] == pytest.approx(0.5)
    assert r.balanced_accuracy == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    assert r.confusion.shape == (4, 4) and r.confusion[:, 3].sum() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the absent class, as it should
        assert r.balanced_accuracy == pytest.approx(balanced_accuracy_score(targets, preds))
    d = r.to_dict()
    assert d["per_class"]["d"] is None  # strict JSON has no NaN
    json.dumps(d, allow_nan=False)


def test_classification_report_rejects_out_of_range_labels():
    with pytest.raises(ValueError):
        classification_report(torch.tensor([0, 3]), torch.tensor([0, 1]), NAMES3)


# ---------------------------------------------------------------- judges

N_CLASSES = 13


class MeanChannelJudge(nn.Module):
    """'Perfect' judge: the mean of channel 0, in [-1, 1], encodes the class index."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0].mean(dim=(1, 2))
        k = torch.round((m + 1) / 2 * (N_CLASSES - 1)).long().clamp(0, N_CLASSES - 1)
        return nn.functional.one_hot(k, N_CLASSES).float()


def encode(labels: torch.Tensor, size: int = 8) -> torch.Tensor:
    v = -1 + 2 * labels.float() / (N_CLASSES - 1)
    img = torch.rand(len(labels), 3, size, size) * 2 - 1  # noise in the other channels
    img[:, 0] = v[:, None, None]
    return img


def test_judged_accuracy_perfect_judge_is_one():
    labels = torch.arange(N_CLASSES).repeat(3)
    names = [f"c{i}" for i in range(N_CLASSES)]
    judge = MeanChannelJudge().train()
    r = judged_accuracy(judge, encode(labels), labels, names, batch_size=5)
    assert r.accuracy == 1.0 and r.balanced_accuracy == 1.0
    assert r.n == len(labels)
    assert judge.training, "the judge's train/eval mode must be restored"


def test_judged_accuracy_iterable_of_batches():
    labels = torch.arange(N_CLASSES).repeat(2)
    names = [f"c{i}" for i in range(N_CLASSES)]
    images = encode(labels)
    batches = [(images[i : i + 4], labels[i : i + 4]) for i in range(0, len(labels), 4)]  # DataLoader-style
    r = judged_accuracy(MeanChannelJudge(), batches, labels, names)
    assert r.accuracy == 1.0


def test_judged_accuracy_constant_image_is_chance():
    labels = torch.arange(N_CLASSES).repeat(4)  # balanced
    names = [f"c{i}" for i in range(N_CLASSES)]
    r = judged_accuracy(MeanChannelJudge(), torch.zeros(len(labels), 3, 8, 8), labels, names)
    assert r.accuracy == pytest.approx(1 / N_CLASSES)
    assert r.balanced_accuracy == pytest.approx(1 / N_CLASSES)


# ---------------------------------------------------------------- FID / KID


def test_fid_of_set_with_itself_is_zero_and_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    same = fid_kid_from_features(x, x, kid_subset_size=100, kid_subsets=20)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    # Same covariance, mean moved by 0.5 in each of 8 dims: FID = ||dmu||^2 = 8 * 0.25 exactly.
    half = fid_kid_from_features(x, x + 0.5, kid_subset_size=100, kid_subsets=20)
    one = fid_kid_from_features(x, x + 1.0, kid_subset_size=100, kid_subsets=20)
    assert half["fid"] == pytest.approx(2.0, rel=1e-6)
    assert one["fid"] == pytest.approx(8.0, rel=1e-6)
    # KID likewise: ~0 on identical sets (not exactly: independent random subsets overlap, which
    # biases the unbiased MMD slightly negative), increasing with the shift.
    assert abs(same["kid_mean"]) < 0.05 * half["kid_mean"]
    assert one["kid_mean"] > half["kid_mean"]


def test_fid_kid_independent_samples_vs_shifted():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(500, 6, generator=g), torch.randn(500, 6, generator=g)
    near = fid_kid_from_features(a, b, kid_subset_size=200, kid_subsets=30)
    far = fid_kid_from_features(a, b + 1.5, kid_subset_size=200, kid_subsets=30)
    assert near["fid"] < 0.2 < far["fid"]
    assert abs(near["kid_mean"]) < 0.02 < far["kid_mean"]


def test_kid_subset_size_is_clamped_to_half_the_set_with_warning_so_its_sd_is_a_spread():
    x = torch.randn(30, 4)
    with pytest.warns(UserWarning, match="clamped to 15"):
        out = fid_kid_from_features(x, x + 1, kid_subset_size=1000, kid_subsets=5)
    assert out["kid_subset_size"] == 15
    assert math.isfinite(out["kid_mean"]) and out["kid_std"] > 0  # subsets of all 30 would give sd 0


def test_kid_is_reproducible_with_seed():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g) + 0.3
    r1 = fid_kid_from_features(a, b, kid_subset_size=50, kid_subsets=10, seed=3)
    r2 = fid_kid_from_features(a, b, kid_subset_size=50, kid_subsets=10, seed=3)
    assert r1["kid_mean"] == r2["kid_mean"] and r1["kid_std"] == r2["kid_std"]


class TinyConvJudge(nn.Module):
    """Random, untrained conv classifier with the judge interface: features(x) and forward -> logits."""

    def __init__(self, n_classes: int = 13) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(16, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_tiny_conv_judge_as_feature_extractor_downloads_nothing(no_network):
    torch.manual_seed(0)
    judge = TinyConvJudge()
    fx = JudgeFeatureExtractor(judge, name="tiny")
    real = torch.rand(40, 3, 16, 16) * 2 - 1
    fake_same = real.clone()
    fake_shift = (real * 0.3 + 0.6).clamp(-1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 40 samples for 16-d features: the rank warning is expected
        same = fid_kid(real, fake_same, fx, kid_subset_size=1000, kid_subsets=5, batch_size=16)
        shifted = fid_kid(real, fake_shift, fx, kid_subset_size=1000, kid_subsets=5, batch_size=16)
    assert same["feature"] == "judge:tiny" and "not Inception FID" in same["note"]
    assert same["kid_subset_size"] == 20  # clamped to half the 40 items
    assert same["fid"] == pytest.approx(0.0, abs=1e-4)
    assert shifted["fid"] > 100 * max(same["fid"], 1e-6)
    assert shifted["kid_mean"] > same["kid_mean"]
    assert fx.num_features == 16


def test_generator_scores_do_not_depend_on_the_batch_size():
    """The noise of every item is drawn at once: CPU randn split into batches gives other values, so
    noise drawn per batch made the figures (diversity above all) depend on batch_size."""
    from cmav.evaluation.paired import score_generator

    torch.manual_seed(0)
    judge = TinyConvJudge().eval()
    labels = torch.arange(13).repeat(3)
    conditions = torch.rand(len(labels), 3, 16, 16) * 2 - 1

    def fn(c, z):
        return (c + z[:, :, None, None]).clamp(-1, 1)  # a generator that uses its noise

    scores = []
    for batch_size in (4, 64):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result, *_ = score_generator(fn, 3, conditions, conditions, labels, judge, [str(i) for i in range(13)],
                                         JudgeFeatureExtractor(judge), "image", batch_size=batch_size,
                                         n_diversity_draws=3, diversity_per_class=2, kid_subsets=3)  # fmt: skip
        scores.append(result)
    a, b = scores
    assert a["diversity"]["value"] > 0
    assert a["diversity"]["value"] == pytest.approx(b["diversity"]["value"], rel=1e-5)
    assert a["judged"]["accuracy"] == b["judged"]["accuracy"]
    assert a["fid_kid"]["fid"] == pytest.approx(b["fid_kid"]["fid"], rel=1e-4)


def test_judge_extractor_works_directly_in_torchmetrics(no_network):
    from torchmetrics.image.fid import FrechetInceptionDistance

    torch.manual_seed(0)
    judge = TinyConvJudge()
    fx = JudgeFeatureExtractor(judge, sample_shape=(3, 16, 16))
    assert fx.num_features == 16  # known up front: torchmetrics runs no probe of its own
    fid = FrechetInceptionDistance(feature=fx)
    x = torch.rand(20, 3, 16, 16) * 2 - 1
    fid.update(x, real=True)
    fid.update(x, real=False)
    assert float(fid.compute()) == pytest.approx(0.0, abs=1e-3)


def test_judge_extractor_input_range_mapping():
    torch.manual_seed(0)
    judge = TinyConvJudge()
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    default = JudgeFeatureExtractor(judge)(x)
    from01 = JudgeFeatureExtractor(judge, input_range=(0.0, 1.0))((x + 1) / 2)
    torch.testing.assert_close(default, from01, rtol=1e-5, atol=1e-5)


def test_judge_extractor_keeps_judge_mode_and_requires_features():
    judge = TinyConvJudge().train()
    JudgeFeatureExtractor(judge)(torch.zeros(2, 3, 8, 8))
    assert judge.training
    with pytest.raises(TypeError):
        JudgeFeatureExtractor(nn.Linear(3, 3))


def test_inception_missing_weights_raises_naming_path(tmp_path, no_network):
    missing = tmp_path / "nope" / "pt_inception-2015-12-05.pth"
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05.pth"):
        inception_feature_extractor(missing)


# ---------------------------------------------------------------- diversity


def test_diversity_zero_for_identical_draws():
    f = torch.randn(5, 1, 7).repeat(1, 4, 1)
    assert feature_diversity(f) == 0.0
    # also past 25 draws, where cdist would take its matrix-product shortcut, and at a large feature scale
    f = (100 * torch.randn(3, 1, 512)).repeat(1, 30, 1)
    assert feature_diversity(f) == 0.0


def test_diversity_hand_computed_two_draws():
    f = torch.tensor(
        [
            [[0.0, 0.0], [3.0, 4.0]],  # distance 5
            [[1.0, 1.0], [1.0, 1.0]],  # distance 0
        ]
    )
    assert feature_diversity(f) == pytest.approx(2.5)


def test_diversity_hand_computed_three_draws():
    f = torch.tensor([[[0.0], [1.0], [3.0]]])  # pairs: 1, 3, 2
    assert feature_diversity(f) == pytest.approx(2.0)


def test_diversity_over_noise_collapse_vs_noisy_and_seeded():
    conds = torch.arange(4).float()

    def collapsed(c):
        return c[:, None].repeat(1, 3)

    def noisy(c):
        return c[:, None] + torch.randn(len(c), 3)

    state = torch.get_rng_state()
    assert diversity_over_noise(collapsed, conds, n_draws=5) == 0.0
    d1 = diversity_over_noise(noisy, conds, n_draws=5, seed=7)
    d2 = diversity_over_noise(noisy, conds, n_draws=5, seed=7)
    assert d1 > 0 and d1 == d2
    assert torch.equal(state, torch.get_rng_state()), "caller's RNG stream must be untouched"
    doubled = diversity_over_noise(noisy, conds, n_draws=5, seed=7, feature_fn=lambda y: 2 * y)
    assert doubled == pytest.approx(2 * d1)


# ---------------------------------------------------------------- files


def test_plot_confusion_matrix_and_save_report(tmp_path):
    r = classification_report([0, 1, 2, 2, 1], [0, 1, 2, 1, 1], NAMES3 + ["absent"])
    png = plot_confusion_matrix(r, tmp_path / "sub" / "cm.png", title="test")
    data = png.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    js = save_classification_report(r, tmp_path / "r.json")
    loaded = json.loads(js.read_text())
    assert loaded["per_class"]["absent"] is None and loaded["n"] == 5


def test_extract_features_leaves_a_wrapped_eval_judge_in_eval_mode():
    """A judge in eval mode under a new wrapper (which starts in train mode) stays in eval mode after
    feature extraction, so logits computed afterwards (judged accuracy, AIC) use its running statistics."""
    import torch
    from torch import nn

    from cmav.metrics.fidelity import extract_features

    class Wrapper(nn.Module):
        def __init__(self, judge: nn.Module) -> None:
            super().__init__()
            self.judge = judge

        def forward(self, x):
            return self.judge(x)

    judge = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.5)).eval()
    wrapper = Wrapper(judge)
    assert wrapper.training and not judge.training
    extract_features(wrapper, torch.randn(10, 4), batch_size=4)
    assert wrapper.training and not any(m.training for m in judge.modules())


def test_json_safe_writes_numpy_and_torch_numbers_and_drops_their_nans():
    import json

    import numpy as np

    from cmav.metrics.serialise import json_safe

    x = {"a": np.float32("nan"), "b": np.int64(3), "c": torch.tensor(0.5), "d": np.array([1.0, np.inf]),
         "e": [torch.tensor([float("nan"), 2.0])], "f": float("-inf")}  # fmt: skip
    assert json.loads(json.dumps(json_safe(x))) == {"a": None, "b": 3, "c": 0.5, "d": [1.0, None], "e": [[None, 2.0]],
                                                   "f": None}  # fmt: skip


# ---------------------------------------------------------------- review fixes: KID's subsets, the token FID note


def test_kid_subsets_come_from_their_own_generator_and_match_torchmetrics_under_the_seed(monkeypatch):
    """torch.manual_seed reseeds every device's RNG (CUDA's too, which fork_rng(devices=[]) does not
    restore): KID's subsets are drawn without it, and are the ones torchmetrics draws after it."""
    from torchmetrics.image.kid import KernelInceptionDistance

    from cmav.metrics.fidelity import _Precomputed

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(40, 8, generator=g).double(), torch.randn(30, 8, generator=g).double() + 0.5
    seeded: list[int] = []
    manual_seed = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda s: (seeded.append(s), manual_seed(s))[1])
    cpu_before = torch.get_rng_state()
    cuda_before = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    r = fid_kid_from_features(real, fake, kid_subset_size=10, kid_subsets=20, seed=3)
    assert seeded == []
    assert torch.equal(torch.get_rng_state(), cpu_before)
    if cuda_before is not None:
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda_before, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kid = KernelInceptionDistance(feature=_Precomputed(8), subsets=20, subset_size=10, normalize=False)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        manual_seed(3)
        mean, std = kid.compute()
    assert r["kid_mean"] == float(mean) and r["kid_std"] == float(std)


def test_the_token_fid_note_says_once_that_a_small_sample_fid_is_biased():
    from cmav.evaluation.token import score_images
    from cmav.tasks import ClassifierTask
    from cmav.tasks.retrieval import RetrievalTask

    torch.manual_seed(0)
    names = ["violin", "double_bass", "flute"]
    small = dict(n_blocks=2, base_channels=4, max_channels=8, feature_dim=8, dropout=0.0)
    judge = ClassifierTask(modality="image", image_size=16, class_names=names,
                           image_judge={**small, "block_dropout": 0.0}).eval()  # fmt: skip
    retrieval = RetrievalTask(image_size=16, input_shape=[1, 32, 16], n_classes=3, class_names=names,
                              audio_encoder=small, image_encoder=small, head=dict(embed_dim=8, hidden_dim=8),
                              log_heatmaps=False).eval()  # fmt: skip
    n = 6  # fewer items than the judge's 8 feature dimensions
    m = score_images(torch.rand(n, 3, 16, 16) * 2 - 1, torch.randn(n, 1, 32, 16), torch.arange(n) % 3,
                     torch.rand(n, 3, 16, 16) * 2 - 1, judge, retrieval, names, n_negatives=2)  # fmt: skip
    assert "FID not reliable: 6 items for 8-d features" in m["fid_note"]
    assert m["fid_note"].count("biased upwards") == 1


# ---------------------------------------------------------------- review fixes: judges scored in eval mode


def test_the_token_aic_scores_a_judge_in_train_mode_as_in_eval_mode_and_leaves_its_batch_norm_alone():
    """AIC called the judge as it was: one in train mode drew new dropout masks on every call and
    overwrote its BatchNorm running statistics with the generated images'."""
    from cmav.evaluation.token import score_images
    from cmav.tasks import ClassifierTask
    from cmav.tasks.retrieval import RetrievalTask

    torch.manual_seed(0)
    names = list("abcd")
    small = dict(n_blocks=2, base_channels=4, max_channels=8, feature_dim=8)
    judge = ClassifierTask(modality="image", image_size=16, class_names=names, image_judge={**small, "dropout": 0.5})
    retrieval = RetrievalTask(image_size=16, input_shape=[1, 32, 16], n_classes=4, class_names=names,
                              audio_encoder=small, image_encoder=small, head=dict(embed_dim=8, hidden_dim=8),
                              log_heatmaps=False).eval()  # fmt: skip
    bn = [m for m in judge.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bn and judge.training
    n = 40
    items = (torch.rand(n, 3, 16, 16) * 2 - 1, torch.randn(n, 1, 32, 16), torch.arange(n) % 4, torch.rand(n, 3, 16, 16) * 2 - 1)
    before = [m.running_mean.clone() for m in bn]
    in_train = [score_images(*items, judge, retrieval, names, n_negatives=2)["AIC"] for _ in range(3)]
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bn, strict=True))
    assert judge.training and all(m.training for m in judge.model.modules())
    in_eval = score_images(*items, judge.eval(), retrieval, names, n_negatives=2)["AIC"]
    assert in_train == [in_eval] * 3


def test_judge_predictions_hands_back_every_submodule_in_its_own_mode():
    """A frozen part kept in eval mode under a judge in train mode stays in eval mode."""
    from cmav.metrics import judge_predictions

    judge = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 3)).train()
    judge[2].eval()
    x = torch.randn(10, 3, 2, 2)
    with torch.no_grad():
        expected = judge.eval()(x).argmax(1)
    judge.train()
    judge[2].eval()
    assert torch.equal(judge_predictions(judge, x, 4), expected)
    assert [m.training for m in judge] == [True, True, False, True, True]


# ---------------------------------------------------------------- review fixes: FID's small-sample bias


def test_the_fid_note_always_says_what_two_samples_of_one_distribution_give_at_its_n_and_d():
    """More items than feature dimensions only makes the covariances full rank: at d=256, n=260 two
    samples of one distribution still give an FID of about 128 (34 at n=1000). The result names the
    check for what it is and states, full rank or not, the FID that n and d give without any difference."""
    g = torch.Generator().manual_seed(0)
    scale = torch.logspace(-1, 1, 32, dtype=torch.float64)  # features of unequal spread, like a judge's
    draws = [fid_kid_from_features(torch.randn(200, 32, generator=g, dtype=torch.float64) * scale,
                                   torch.randn(150, 32, generator=g, dtype=torch.float64) * scale, kid_subsets=2)
             for _ in range(20)]  # fmt: skip
    measured = float(np.mean([r["fid"] for r in draws]))  # ~16.3 (16.28 by the Gaussian first-order formula)
    assert float(np.mean([r["fid_same_distribution"] for r in draws])) == pytest.approx(measured, rel=0.1)
    for r in draws:
        assert r["fid_full_rank"] is True and r["fid_reliable"] is True  # the old name, kept for its readers
        assert r["fid_same_distribution"] == pytest.approx(measured, rel=0.35)
        assert f"two samples of one distribution give about {r['fid_same_distribution']:.3g}" in r["note"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wide = fid_kid_from_features(torch.randn(260, 256, generator=g), torch.randn(260, 256, generator=g), kid_subsets=2)
        few = fid_kid_from_features(torch.randn(26, 32, generator=g), torch.randn(26, 32, generator=g), kid_subsets=2)
    assert wide["fid_full_rank"] is True and "not reliable" not in wide["note"]
    assert wide["fid_same_distribution"] == pytest.approx(wide["fid"], rel=0.3) and wide["fid_same_distribution"] > 80
    assert f"about {wide['fid_same_distribution']:.3g}" in wide["note"]
    assert few["fid_full_rank"] is False and "not reliable" in few["note"]
    assert f"two samples of one distribution give about {few['fid_same_distribution']:.3g}" in few["note"]
    assert few["note"].count("biased upwards") == 1
    tiny = fid_kid_from_features(torch.randn(3, 2, generator=g), torch.randn(5, 2, generator=g), kid_subsets=2)
    assert math.isnan(tiny["fid_same_distribution"]) and "unknown: it is measured on halves of at least 4" in tiny["note"]
