"""Metrics shared by every cmav branch: classification/judge accuracy, judge-feature FID/KID, diversity,
the spectrogram -> sound -> spectrogram round trip, and the token branch's AIS/IIS/AIC."""

from cmav.metrics.classification import (
    ClassificationReport,
    classification_report,
    judge_predictions,
    judged_accuracy,
    player_table,
    plot_confusion_matrix,
    save_classification_report,
)
from cmav.metrics.diversity import diversity_over_noise, feature_diversity
from cmav.metrics.fidelity import (
    InceptionFeatureExtractor,
    JudgeFeatureExtractor,
    extract_features,
    fid_kid,
    fid_kid_from_features,
    inception_feature_extractor,
)
from cmav.metrics.round_trip import round_trip_accuracy, round_trip_lms
from cmav.metrics.token import (
    audio_image_consistency,
    audio_image_similarity,
    image_image_similarity,
    paired_win_rate,
    random_negatives,
)

__all__ = [
    "ClassificationReport",
    "InceptionFeatureExtractor",
    "JudgeFeatureExtractor",
    "classification_report",
    "diversity_over_noise",
    "audio_image_consistency",
    "audio_image_similarity",
    "extract_features",
    "feature_diversity",
    "fid_kid",
    "fid_kid_from_features",
    "image_image_similarity",
    "inception_feature_extractor",
    "judge_predictions",
    "judged_accuracy",
    "paired_win_rate",
    "player_table",
    "round_trip_accuracy",
    "round_trip_lms",
    "plot_confusion_matrix",
    "random_negatives",
    "save_classification_report",
]
