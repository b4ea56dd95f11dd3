"""cmav: cross-modal audio<->visual generation.

The common path is two calls (:mod:`cmav.api`): ``model = cmav.load(ckpt)``, then
``cmav.sound_to_image(model, "clip.wav")``, ``cmav.embed_audio``, ``cmav.classify_audio``,
``cmav.embed_image`` or ``cmav.image_to_sound``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("AudioChunks", "ChunkPredictions", "Embeddings", "KINDS", "Model", "audio_chunks", "classify_audio",
        "embed_audio", "embed_image", "image_to_sound", "load", "model_kind", "noise", "sound_to_image")  # fmt: skip


def __getattr__(name: str) -> Any:
    # Lazy, so that `import cmav.data` (and the CLI's start-up) does not import Lightning and the tasks.
    if name in _API:
        from cmav import api

        return getattr(api, name)
    raise AttributeError(f"module 'cmav' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
