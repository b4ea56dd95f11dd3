"""LightningModules: training logic only (models stay plain ``nn.Module``s in :mod:`cmav.models`)."""

from cmav.tasks.classifier import ClassifierTask, load_audio_encoder, load_classifier, load_sound_classifier
from cmav.tasks.pairs import NegativeSampler, Negatives
from cmav.tasks.s2i import S2ITask, load_s2i

__all__ = [
    "ClassifierTask",
    "NegativeSampler",
    "Negatives",
    "S2ITask",
    "load_audio_encoder",
    "load_classifier",
    "load_sound_classifier",
    "load_s2i",
]
