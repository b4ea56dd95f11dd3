"""Plain ``nn.Module`` models: encoders, judge, conditional generator/discriminator, EMA, the condition bank."""

from .condition_bank import INFERENCE_CONDITIONS, ConditionBank, InferenceCondition
from .discriminator import PairAwareDiscriminator
from .ema import ExponentialMovingAverage
from .encoders import AudioEncoder, ConvEncoder, EncoderOutput, ImageEncoder, StatsPoolEncoder, count_parameters
from .generator import ConditionalGenerator, dcgan_init_
from .judge import ImageJudge

__all__ = [
    "AudioEncoder",
    "ConditionBank",
    "ConditionalGenerator",
    "ConvEncoder",
    "EncoderOutput",
    "ExponentialMovingAverage",
    "INFERENCE_CONDITIONS",
    "ImageEncoder",
    "ImageJudge",
    "InferenceCondition",
    "PairAwareDiscriminator",
    "StatsPoolEncoder",
    "count_parameters",
    "dcgan_init_",
]
