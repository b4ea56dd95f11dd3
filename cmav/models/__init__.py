"""Plain ``nn.Module`` models: encoders, judge, conditional generator/discriminator, EMA."""

from .discriminator import PairAwareDiscriminator
from .ema import ExponentialMovingAverage
from .encoders import AudioEncoder, ConvEncoder, EncoderOutput, ImageEncoder, StatsPoolEncoder, count_parameters
from .generator import ConditionalGenerator, dcgan_init_
from .judge import ImageJudge

__all__ = [
    "AudioEncoder",
    "ConditionalGenerator",
    "ConvEncoder",
    "EncoderOutput",
    "ExponentialMovingAverage",
    "ImageEncoder",
    "ImageJudge",
    "PairAwareDiscriminator",
    "StatsPoolEncoder",
    "count_parameters",
    "dcgan_init_",
]
