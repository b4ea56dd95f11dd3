"""FID / KID in the feature space of a judge (or of a local Inception-v3), via torchmetrics.

The default here is a *judge-feature* FID/KID: features come from our own instrument classifier,
not from Inception-v3. The numbers are useful to compare our models with each other, but they are
NOT comparable with Inception FIDs published elsewhere; every result says which features it used.

Nothing in this module downloads anything. torchmetrics only fetches Inception weights when
``feature`` is an int; we always hand it an ``nn.Module``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

from cmav.metrics.classification import Batches, _iter_batches, _module_device
from cmav.models.eval_mode import eval_mode

FID_NOTE_JUDGE = "judge-feature FID/KID (features of our classifier), not Inception FID: compare only within this project"


def _affine_map(x: Tensor, src: tuple[float, float], dst: tuple[float, float]) -> Tensor:
    """Linearly map values from range ``src`` to range ``dst``."""
    if tuple(src) == tuple(dst):
        return x
    (a, b), (c, d) = src, dst
    return (x - a) * ((d - c) / (b - a)) + c


class JudgeFeatureExtractor(nn.Module):
    """Wrap a judge's ``features(x) -> (N, D)`` as a torchmetrics ``feature`` module.

    ``input_range``: value range of the images this module receives (project convention: float in
    [-1, 1]). ``judge_range``: value range the judge was trained on. Inputs are mapped linearly from
    one to the other, so feeding [0, 1] images (torchmetrics' ``normalize=True`` convention) only
    needs ``input_range=(0, 1)``.

    ``num_features`` is read from the judge (``num_features`` / ``feature_dim``), given, or probed
    with a zero tensor of ``sample_shape`` (C, H, W). When none is possible it is filled in on the
    first forward. torchmetrics reads it to size its state without running its own random probe.
    """

    def __init__(
        self,
        judge: nn.Module,
        input_range: tuple[float, float] = (-1.0, 1.0),
        judge_range: tuple[float, float] = (-1.0, 1.0),
        name: str | None = None,
        num_features: int | None = None,
        sample_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if not callable(getattr(judge, "features", None)):
            raise TypeError(f"{type(judge).__name__} has no features(x) method to extract judge features from")
        self.judge = judge
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.judge_range = (float(judge_range[0]), float(judge_range[1]))
        self.feature_name = f"judge:{name or type(judge).__name__}"
        if num_features is None:
            for attr in ("num_features", "feature_dim"):
                v = getattr(judge, attr, None)
                if isinstance(v, int):
                    num_features = v
                    break
        self._num_features: int | None = num_features
        if self._num_features is None and sample_shape is not None:
            with torch.no_grad():
                probe = torch.zeros(1, *sample_shape, device=_module_device(judge))
                self._num_features = int(self(probe).shape[-1])

    @property
    def num_features(self) -> int:
        # AttributeError (not None) while unknown, so torchmetrics' hasattr() check falls back cleanly.
        if self._num_features is None:
            raise AttributeError("num_features unknown until the first forward; pass num_features or sample_shape")
        return self._num_features

    def forward(self, x: Tensor) -> Tensor:
        """(N, ...) images in ``input_range`` -> (N, D) judge features."""
        x = _affine_map(x.to(_module_device(self.judge), torch.float32), self.input_range, self.judge_range)
        # Features are always taken in eval mode (dropout/batch-norm off), even when torchmetrics calls
        # us directly on a judge that is mid-training; each submodule's mode is put back afterwards.
        with eval_mode(self.judge):
            f = self.judge.features(x)
        f = f.reshape(f.shape[0], -1)
        if self._num_features is None:
            self._num_features = int(f.shape[1])
        elif f.shape[1] != self._num_features:
            # A wrong size would silently mis-shape torchmetrics' running covariance state.
            raise ValueError(f"judge features have {f.shape[1]} dims, expected num_features={self._num_features}")
        return f


class InceptionFeatureExtractor(nn.Module):
    """torchmetrics' Inception-v3 (pool3, 2048-d) from a LOCAL weights file; images float in ``input_range``.

    torch-fidelity's Inception takes uint8 [0, 255] RGB of any size and resizes to 299 itself, so
    inputs are mapped to that (single-channel inputs are repeated to 3 channels).
    """

    num_features = 2048

    def __init__(self, net: nn.Module, input_range: tuple[float, float] = (-1.0, 1.0), weights_path: str = "") -> None:
        super().__init__()
        self.net = net
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.feature_name = f"inception-v3:2048({Path(weights_path).name})"

    def forward(self, x: Tensor) -> Tensor:
        x = _affine_map(x.float(), self.input_range, (0.0, 255.0)).round().clamp(0, 255).to(torch.uint8)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return self.net(x)


def inception_feature_extractor(
    weights_path: str | Path, input_range: tuple[float, float] = (-1.0, 1.0)
) -> InceptionFeatureExtractor:
    """Inception-v3 features from a local ``pt_inception-2015-12-05`` weights file; never downloads.

    Raises FileNotFoundError naming the path when it does not exist, and ModuleNotFoundError when
    torch-fidelity (which holds the network definition) is not installed.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception weights not found at {str(path)!r}; pass a local file (nothing is downloaded)"
        )
    from torchmetrics.image.fid import NoTrainInceptionV3
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not _TORCH_FIDELITY_AVAILABLE:
        raise ModuleNotFoundError("Inception features need torch-fidelity (pip install torch-fidelity)")
    net = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
    )
    return InceptionFeatureExtractor(net, input_range=input_range, weights_path=str(path))


@torch.no_grad()
def extract_features(feature_extractor: nn.Module, items: Batches, batch_size: int = 64) -> Tensor:
    """Run a feature module over all items (eval, no_grad, its own device); (N, D) float64 on CPU."""
    device = _module_device(feature_extractor)
    with eval_mode(feature_extractor):
        feats = [feature_extractor(x.to(device)).reshape(x.shape[0], -1).double().cpu()
                 for x in _iter_batches(items, batch_size)]
    if not feats:
        raise ValueError("no items to extract features from")
    return torch.cat(feats)


class _Precomputed(nn.Module):
    """Identity 'feature extractor' so torchmetrics can be fed features we already computed."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, f: Tensor) -> Tensor:
        return f


def _kid(metric: KernelInceptionDistance, real: Tensor, fake: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """``metric.compute()`` on ``real`` / ``fake`` with its random subsets drawn from a generator of
    their own: torchmetrics draws them from the global RNG, and ``torch.manual_seed`` would reseed
    every device's (CUDA's too, which ``fork_rng(devices=[])`` does not restore). A CPU generator
    seeded with ``seed`` draws the permutations the global one draws after ``torch.manual_seed(seed)``,
    so the figures are the same."""
    g = torch.Generator().manual_seed(int(seed))
    scores = []
    for _ in range(metric.subsets):
        r = real[torch.randperm(real.shape[0], generator=g)[: metric.subset_size]]
        f = fake[torch.randperm(fake.shape[0], generator=g)[: metric.subset_size]]
        scores.append(poly_mmd(r, f, metric.degree, metric.gamma, metric.coef))
    kid = torch.stack(scores)
    return kid.mean(), kid.std(unbiased=False)


def _fid(real: Tensor, fake: Tensor) -> float:
    """torchmetrics' FID between two (N, D) float64 feature sets."""
    # normalize=False: the inputs are features already; a torchmetrics without the custom-model guard
    # would turn normalize=True inputs into uint8 (x * 255).byte()
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), normalize=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


SAME_DISTRIBUTION_HALVINGS = 3
"""Random halvings of the real set averaged by :func:`_same_distribution_fid` (one above 512
dimensions, where each costs as much as the FID itself: ~15 s single-threaded at 2048)."""


def _same_distribution_fid(real: Tensor, n1: int, n2: int, seed: int = 0) -> float:
    """The FID two samples of ``n1`` and ``n2`` items of the real features' own distribution give:
    FID's small-sample bias, what "no difference" reads as at these item counts and dimensions.

    Measured as the FID between two random halves of ``real`` (N, D), scaled by FID's small-sample
    law (the bias goes as ``1/n1 + 1/n2``; it holds from well below D items to many times D: at
    D=256 two standard-normal samples give 135, 129, 33.6 and 8.3 at 250, 260, 1000 and 4000 items
    each, all ~33,500 / n). A measurement rather than a Gaussian formula: a formula needs the
    covariance's eigenvalues, whose estimates from about as many items as dimensions spread and
    put the bias ~40% low. Mean over :data:`SAME_DISTRIBUTION_HALVINGS` halvings drawn from
    ``seed``; NaN with fewer than 4 real items or a non-finite feature.
    """
    n, d = real.shape
    half = n // 2
    if half < 2 or not bool(torch.isfinite(real).all()):
        return float("nan")
    g = torch.Generator().manual_seed(int(seed))
    halvings = SAME_DISTRIBUTION_HALVINGS if d <= 512 else 1
    fids = []
    for _ in range(halvings):
        order = torch.randperm(n, generator=g)
        fids.append(max(_fid(real[order[:half]], real[order[half : 2 * half]]), 0.0))
    return sum(fids) / len(fids) * (half / 2) * (1.0 / n1 + 1.0 / n2)


def fid_kid_from_features(
    real_features: Tensor,
    fake_features: Tensor,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
    feature: str = "custom",
) -> dict[str, float | int | str | bool | None]:
    """FID and KID (mean, std over subsets) between two (N, D) feature sets, computed by torchmetrics.

    KID's ``subset_size`` is clamped to half the smaller set with a warning (torchmetrics raises
    past the whole set, and subsets of the whole set are identical, so their sd would read 0).
    With fewer than 4 items in a set no subset of at least 2 is at most half of it: ``kid_std`` is
    None then (``kid_mean`` stays), and the note says why.
    ``seed`` makes KID's random subsets (and the halvings of ``fid_same_distribution``) reproducible
    without touching the global RNG.

    ``feature_dim`` is D, and ``fid_full_rank`` whether both sets have more items than that: with
    fewer the covariances are rank-deficient and FID is strongly biased upwards (two samples of
    one 32-d distribution: about 25 at 26 items each, 0.3 at 2000), which is warned and noted.
    Full rank does not make FID unbiased: at d=256 two samples of one distribution still give
    about 128 at 260 items each and 34 at 1000. ``fid_same_distribution`` is that bias at these
    item counts and D, measured on the real features (:func:`_same_distribution_fid`), and the
    note always states it. ``fid_reliable`` is the old name of ``fid_full_rank``, kept for its readers.
    """
    real = torch.as_tensor(real_features).double().reshape(real_features.shape[0], -1)
    fake = torch.as_tensor(fake_features).double().reshape(fake_features.shape[0], -1)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: real {real.shape[1]}, fake {fake.shape[1]}")
    n_real, n_fake, d = real.shape[0], fake.shape[0], real.shape[1]
    if min(n_real, n_fake) < 2:
        raise ValueError(f"FID/KID need at least 2 items per set, got real={n_real}, fake={n_fake}")
    if min(n_real, n_fake) <= d:
        warnings.warn(
            f"FID with {min(n_real, n_fake)} samples for {d}-d features: covariances are rank-deficient "
            "and FID is strongly biased upwards; compare only at equal sample counts",
            stacklevel=2,
        )
    full_rank = min(n_real, n_fake) > d
    subset = int(kid_subset_size)
    if subset > min(n_real, n_fake) // 2:
        # Subsets as large as the whole set are all the same set: KID's sd over them would read 0.
        # Random halves keep the sd a real spread over subsets.
        subset = max(min(n_real, n_fake) // 2, 2)
        warnings.warn(
            f"KID subset_size {kid_subset_size} > half the number of samples (real={n_real}, fake={n_fake}); "
            f"clamped to {subset} so that the subsets differ",
            stacklevel=2,
        )

    with warnings.catch_warnings():
        # torchmetrics warns on every KID construction that it buffers all features; we know.
        warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer.*")
        kid_metric = KernelInceptionDistance(feature=_Precomputed(d), subsets=kid_subsets, subset_size=subset,
                                             normalize=False)
    fid = _fid(real, fake)
    kid_mean, kid_std = _kid(kid_metric, real, fake, seed)
    notes = [FID_NOTE_JUDGE if feature.startswith("judge:") else f"FID/KID on '{feature}' features"]
    if not full_rank:
        notes.append(f"FID not reliable: {min(n_real, n_fake)} items for {d}-d features (FID needs more items than "
                     "feature dimensions; with fewer the covariances are rank-deficient and FID is strongly biased "
                     "upwards): compare only at equal item counts")  # fmt: skip
    same = _same_distribution_fid(real, n_real, n_fake, seed)
    if math.isnan(same):
        notes.append(f"what two samples of one distribution give at {n_real} real and {n_fake} generated items of "
                     f"{d}-d features is unknown: it is measured on halves of at least 4 real items with finite "
                     "features")  # fmt: skip
    else:
        notes.append(f"at {n_real} real and {n_fake} generated items of {d}-d features two samples of one "
                     f"distribution give about {same:.3g} (fid_same_distribution: FID's small-sample bias, measured "
                     "on halves of the real set): an FID near it shows no difference")  # fmt: skip
    kid_spread = subset <= min(n_real, n_fake) / 2
    if not kid_spread:
        notes.append(f"kid_std not reported: fewer than 4 items (real={n_real}, fake={n_fake}), so KID's subsets of "
                     f"{subset} cannot be at most half the smaller set and do not differ enough to spread")  # fmt: skip
    return {
        # Tiny negative FIDs are eigenvalue round-off on (near-)identical sets.
        "fid": max(fid, 0.0),
        "kid_mean": float(kid_mean),
        # subsets as large as (nearly) the whole set are all alike: their sd would read 0, not "no spread"
        "kid_std": float(kid_std) if kid_spread else None,
        "feature": feature,
        "feature_dim": d,
        "fid_full_rank": full_rank,
        "fid_same_distribution": same,
        "fid_reliable": full_rank,
        "n_real": n_real,
        "n_fake": n_fake,
        "kid_subset_size": subset,
        "note": "; ".join(notes),
    }


def fid_kid(
    real: Batches,
    fake: Batches,
    feature_extractor: nn.Module,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float | int | str | bool | None]:
    """FID and KID between real and generated images in ``feature_extractor``'s feature space.

    ``real`` / ``fake``: (N, C, H, W) tensors or iterables of batches, in the extractor's input range
    (float [-1, 1] for the defaults). Features are extracted once and shared by both metrics.
    Returns ``dict(fid, kid_mean, kid_std, feature, feature_dim, fid_full_rank, fid_same_distribution,
    fid_reliable, n_real, n_fake, kid_subset_size, note)`` (see :func:`fid_kid_from_features`);
    ``feature`` is e.g. ``'judge:<name>'`` so a judge-feature FID is never mistaken for Inception FID.
    """
    feature = getattr(feature_extractor, "feature_name", None) or f"custom:{type(feature_extractor).__name__}"
    real_f = extract_features(feature_extractor, real, batch_size)
    fake_f = extract_features(feature_extractor, fake, batch_size)
    return fid_kid_from_features(real_f, fake_f, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets,
                                 seed=seed, feature=feature)
