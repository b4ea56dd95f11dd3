"""A diverged model (NaN weights, NaN or infinite logits or scores) is scored "not a number", never
as the share of class 0: argmax of an all-NaN row is 0, which reads as a plausible chance level and
was averaged into the ablation grids' seeds instead of being left out by their ``finite()``."""

from __future__ import annotations

import math

import numpy as np
import torch

from cmav.ablation.grid import put_mean_sd
from cmav.metrics import (
    audio_image_consistency,
    audio_image_similarity,
    classification_report,
    image_image_similarity,
    judge_predictions,
    judged_accuracy,
    paired_win_rate,
    player_table,
    random_negatives,
)
from cmav.metrics.classification import NO_PREDICTION
from cmav.models.encoders import AudioEncoder

NAMES = ["a", "b", "c", "d"]


def _diverged_classifier() -> AudioEncoder:
    torch.manual_seed(0)
    enc = AudioEncoder((1, 32, 16), n_classes=4, n_blocks=2, base_channels=8, max_channels=16, feature_dim=16)
    with torch.no_grad():
        for p in enc.parameters():
            p.fill_(float("nan"))
    return enc


def test_a_diverged_judge_scores_not_a_number_and_the_grid_leaves_its_seed_out():
    audio, labels = torch.randn(40, 1, 32, 16), torch.arange(40) % 4
    judge = _diverged_classifier()
    assert bool((judge_predictions(judge, audio, 16) == NO_PREDICTION).all())
    r = judged_accuracy(judge, audio, labels, NAMES, batch_size=16)
    assert math.isnan(r.accuracy) and math.isnan(r.balanced_accuracy)
    assert all(math.isnan(v) for v in r.per_class.values())
    d = r.to_dict()
    assert d["n_nonfinite"] == 40 and d["n"] == 40 and d["accuracy"] is None and d["balanced_accuracy"] is None
    assert int(r.confusion.sum()) == 0  # no row was a prediction
    row: dict = {}
    put_mean_sd(row, "accuracy", [0.9, 0.92, r.accuracy])
    assert row["accuracy_n"] == 2 and row["accuracy_mean"] == np.mean([0.9, 0.92])


def test_one_non_finite_logit_row_makes_the_report_not_a_number_and_is_counted():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [float("nan"), 0.0, 0.0], [0.0, float("inf"), 0.0]])
    r = classification_report(logits, [0, 1, 0, 1], ["a", "b", "c"])
    assert math.isnan(r.accuracy) and math.isnan(r.balanced_accuracy)
    assert r.extra["n_nonfinite"] == 2 and r.n == 4
    assert r.predictions.tolist() == [0, 1, NO_PREDICTION, NO_PREDICTION]
    assert r.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]  # the rows that are predictions
    # judge_predictions' mark of a non-finite row reads the same when handed back as labels
    again = classification_report(torch.from_numpy(r.predictions), [0, 1, 0, 1], ["a", "b", "c"])
    assert math.isnan(again.accuracy) and again.extra["n_nonfinite"] == 2
    # finite logits: the report (and its dict) as before, without the count
    fine = classification_report(logits[:2], [0, 1], ["a", "b", "c"])
    assert fine.accuracy == 1.0 and "n_nonfinite" not in fine.to_dict()


def test_a_player_with_frames_that_are_no_prediction_has_no_accuracy():
    predicted = torch.tensor([1, 1, NO_PREDICTION, 0, 0, NO_PREDICTION, NO_PREDICTION])
    labels = torch.tensor([1, 1, 1, 0, 0, 2, 2])
    tracks = torch.tensor([3, 3, 3, 5, 5, 7, 7])
    rows = {r["class"]: r for r in player_table(predicted, labels, tracks, ["a", "b", "c"])}
    assert rows["a"]["accuracy"] == 1.0 and rows["a"]["named_most"] == "a"
    assert math.isnan(rows["b"]["accuracy"]) and rows["b"]["named_most"] == "b"  # never the last class by index -1
    assert math.isnan(rows["c"]["accuracy"]) and rows["c"]["named_most"] is None
    assert math.isnan(rows["c"]["named_most_share"])


def test_token_scores_on_non_finite_similarities_features_or_logits_are_not_a_number():
    n = 12
    neg = random_negatives(n, 4)
    scores = torch.randn(n, n)
    assert 0.0 <= paired_win_rate(scores, neg) <= 1.0
    scores[3, 5] = float("nan")  # one NaN anywhere in what is compared
    assert math.isnan(audio_image_similarity(torch.full((n, n), float("nan")), neg))
    assert math.isnan(paired_win_rate(scores, torch.full((n, 4), 5)))
    feats = torch.randn(n, 8)
    bad = feats.clone()
    bad[0, 0] = float("inf")
    assert math.isnan(image_image_similarity(bad, feats, neg))
    assert math.isnan(image_image_similarity(torch.full((n, 8), float("nan")), feats, neg))
    labels = torch.arange(n) % 4
    assert audio_image_consistency(labels, labels) == 1.0
    assert math.isnan(audio_image_consistency(torch.where(labels == 0, NO_PREDICTION, labels), labels))
