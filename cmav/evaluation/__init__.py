"""Evaluation of trained generators (judged accuracy, judge-feature FID/KID, diversity, player consistency,
spectrogram round trip), after training and, with JudgedAccuracyMonitor, during it."""

from cmav.evaluation.i2s import evaluate_i2s, make_i2s_fn
from cmav.evaluation.monitor import JudgedAccuracyMonitor
from cmav.evaluation.s2i import evaluate_s2i, generate_images, make_generator_fn

__all__ = ["JudgedAccuracyMonitor", "evaluate_i2s", "evaluate_s2i", "generate_images", "make_generator_fn", "make_i2s_fn"]
