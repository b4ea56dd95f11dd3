"""Evaluation of trained generators (judged accuracy, judge-feature FID/KID, diversity, player consistency,
spectrogram round trip)."""

from cmav.evaluation.i2s import evaluate_i2s, make_i2s_fn
from cmav.evaluation.s2i import evaluate_s2i, generate_images, make_generator_fn

__all__ = ["evaluate_i2s", "evaluate_s2i", "generate_images", "make_generator_fn", "make_i2s_fn"]
