"""LightningModules: training logic only (models stay plain ``nn.Module``s in :mod:`cmav.models`)."""

from cmav.tasks.classifier import (
    ClassifierTask,
    load_audio_encoder,
    load_classifier,
    load_image_classifier,
    load_image_judge,
    load_sound_classifier,
)
from cmav.tasks.i2s import I2STask, load_i2s
from cmav.tasks.pairs import Negatives, NegativeSampler
from cmav.tasks.s2i import S2ITask, load_s2i

__all__ = [
    "ClassifierTask",
    "I2STask",
    "NegativeSampler",
    "Negatives",
    "S2ITask",
    "load_audio_encoder",
    "load_classifier",
    "load_i2s",
    "load_image_classifier",
    "load_image_judge",
    "load_sound_classifier",
    "load_s2i",
]
