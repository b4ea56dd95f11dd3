"""The diffusion-token branch: a frozen text-to-image diffusion model (diffusers) conditioned on
ONE token made from audio (AudioToken, Yariv et al. 2023) by cmav's own :class:`AudioEncoder`.

``pipeline``: the one interface over a local diffusers folder (Stable Diffusion layout, latent or
pixel space) and the offline default model's builder; ``audio_token``: the trained embedder, the
prompt template and the model that ties them together; ``tokenizer``: the word-level tokenizer of
the offline default. Training lives in :mod:`cmav.tasks.diffusion` and :mod:`cmav.tasks.audio_token`.
"""

from cmav.diffusion.audio_token import (
    AttentionPool,
    AudioTokenEmbedder,
    AudioTokenModel,
    EmbedderConfig,
    PromptConfig,
    PromptTemplate,
    TokenLossConfig,
    label_words,
)
from cmav.diffusion.pipeline import (
    PixelDiffusionConfig,
    TextToImageDiffusion,
    build_pixel_diffusion,
    check_pipeline_folder,
    load_pipeline,
    make_scheduler,
)

__all__ = [
    "AttentionPool",
    "AudioTokenEmbedder",
    "AudioTokenModel",
    "EmbedderConfig",
    "PixelDiffusionConfig",
    "PromptConfig",
    "PromptTemplate",
    "TextToImageDiffusion",
    "TokenLossConfig",
    "build_pixel_diffusion",
    "check_pipeline_folder",
    "label_words",
    "load_pipeline",
    "make_scheduler",
]
