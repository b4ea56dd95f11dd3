"""Write ``expected.npz``: fixed inputs and the outputs that cmav's front ends and core models give
for them today, for ``tests/test_regression.py``.

Run this only when a change to a front end or a model is meant to change what it computes. Then
also bump ``CACHE_VERSION`` in ``cmav/data/cache.py`` if a front end changed (every cached feature
was made with the old one), and say in the commit that checkpoints trained before it compute
differently now::

    python tests/regression/make_expected.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cmav.features.frontend import FRONT_ENDS, build_front_end
from cmav.models.discriminator import PairAwareDiscriminator
from cmav.models.encoders import AudioEncoder, StatsPoolEncoder
from cmav.models.generator import ConditionalGenerator

OUT = Path(__file__).with_name("expected.npz")
RATE = 22050  # every front end's default rate: the regression checks the transforms, not resampling


def tone() -> np.ndarray:
    """0.5 s of an instrument-like tone: two notes (A3 then C#4), 12 decaying harmonics, a little
    vibrato and a noise floor. Stored as int16 in the file, so its exact samples never depend on
    numpy's random streams."""
    rng = np.random.default_rng(0)
    t = np.arange(RATE // 2) / RATE
    f0 = np.where(t < 0.25, 220.0, 277.18) * (1 + 0.003 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    y = sum(0.5 / h**1.2 * np.sin(h * phase) for h in range(1, 13))
    y = y * np.minimum(1.0, t / 0.02) + 0.003 * rng.standard_normal(t.size)
    return np.round(y / np.abs(y).max() * 0.5 * 32767).astype(np.int16)


def models() -> dict[str, torch.nn.Module]:
    """Small instances of the core models, seeded; their weights are stored with their outputs."""
    torch.manual_seed(0)
    return {
        "audio_encoder": AudioEncoder(base_channels=4, max_channels=16, feature_dim=8),
        "stats_encoder": StatsPoolEncoder(hidden_dim=16, feature_dim=8),
        "generator": ConditionalGenerator(out_shape=(3, 32, 32), cond_dim=8, cond_proj_dim=8, base_channels=4,
                                          max_channels=16),  # fmt: skip
        "discriminator": PairAwareDiscriminator(in_shape=(3, 32, 32), cond_dim=8, cond_proj_dim=8, base_channels=4,
                                                max_channels=16),  # fmt: skip
    }


def run_models(arrays: dict[str, np.ndarray], nets: dict[str, torch.nn.Module]) -> dict[str, np.ndarray]:
    """Each model's outputs (eval mode) on the stored inputs: the encoders on the LMS and harmonic
    features of the tone, G on stored noise and condition, D on G's image with that condition."""
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, kind in (("audio_encoder", "lms"), ("stats_encoder", "harmonic")):
            res = nets[name].eval().forward_features(torch.from_numpy(arrays[f"front_end/{kind}"]))
            out[f"{name}/feature"], out[f"{name}/logits"] = res.feature.numpy(), res.logits.numpy()
            for i, block in enumerate(res.blocks):
                out[f"{name}/block{i}"] = block.numpy()
        z, cond = torch.from_numpy(arrays["input/z"]), torch.from_numpy(arrays["input/cond"])
        image = nets["generator"].eval()(z, cond)
        out["generator/image"] = image.numpy()
        out["discriminator/logit"] = nets["discriminator"].eval()(image, cond).numpy()
    return out


def front_end_outputs(wave: np.ndarray) -> dict[str, np.ndarray]:
    """Every front end's default config on the tone, as ``(1, C, H, W)``; not the waveform one, whose
    output is the input (the test checks that without a stored copy)."""
    x = torch.from_numpy(wave.astype(np.float32) / 32767.0)[None, None]
    return {f"front_end/{kind}": build_front_end({"kind": kind})(x, RATE).numpy() for kind in FRONT_ENDS if kind != "waveform"}


def main() -> None:
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {
        "input/tone_int16": tone(),
        "input/z": rng.standard_normal((2, 10)).astype(np.float32),
        "input/cond": rng.standard_normal((2, 8)).astype(np.float32),
    }
    arrays.update(front_end_outputs(arrays["input/tone_int16"]))
    nets = models()
    for name, net in nets.items():
        for key, value in net.state_dict().items():
            arrays[f"weights/{name}/{key}"] = value.numpy()
    arrays.update(run_models(arrays, nets))
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, {len(arrays)} arrays)")


if __name__ == "__main__":
    main()
