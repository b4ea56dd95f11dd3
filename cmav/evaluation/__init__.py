"""Evaluation of trained generators (judged accuracy, judge-feature FID/KID, diversity, player consistency)."""

from cmav.evaluation.s2i import evaluate_s2i, generate_images, make_generator_fn

__all__ = ["evaluate_s2i", "generate_images", "make_generator_fn"]
