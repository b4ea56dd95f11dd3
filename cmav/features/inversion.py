"""From a log-mel spectrogram back to sound: inverse mel scale + Griffin-Lim phase recovery.

An LMS keeps no phase, so the result is an approximation for listening (and for checking that a
generated spectrogram still "sounds like" its class), never the original audio.
"""

from __future__ import annotations

import warnings

import torch
import torchaudio
from torch import Tensor

from cmav.features.logmel import LogMelConfig


def mel_to_linear(mel_power: Tensor, mel_basis: Tensor, nnls_iters: int = 100) -> Tensor:
    """Non-negative linear-frequency power ``(N, n_stft, T)`` whose mel projection is ``mel_power``.

    ``mel_basis``: ``(n_mels, n_stft)``. Starts from the clamped pseudo-inverse and refines it with
    multiplicative (Lee-Seung) non-negative least-squares updates, as librosa's ``mel_to_stft``
    solves NNLS: the clamped pseudo-inverse alone smears energy into a raised noise floor, and a
    sound judge then misclassifies ~1/3 of real LMS after the round trip on the stand-in (0.64 vs
    0.79 with NNLS, judge 0.95 before inversion).
    """
    x = (torch.linalg.pinv(mel_basis) @ mel_power).clamp(min=0.0) + 1e-12
    gram = mel_basis.T @ mel_basis
    target = mel_basis.T @ mel_power
    for _ in range(nnls_iters):
        x = x * target / (gram @ x).clamp(min=1e-30)
    return x


def lms_to_audio(
    lms_db: Tensor,
    features: LogMelConfig,
    n_iter: int = 32,
    normalise: bool = True,
    n_samples: int | None = None,
    nnls_iters: int = 100,
) -> Tensor:
    """Waveform ``(N, samples)`` at ``features.sample_rate`` from LMS in dB ``(N, 1, n_mels, frames)``.

    The mel power is mapped back to linear frequency by non-negative least squares against the
    same Slaney filter bank the front end uses (:func:`mel_to_linear`), then Griffin-Lim
    (``n_iter`` iterations) recovers a phase. The output has
    ``n_samples`` samples (the chunk length, e.g. 11,025 for 0.5 s at 22,050 Hz; several lengths
    give the same frame count, so the caller says which) or, when ``None``,
    ``(frames - 1) * hop_length``. ``normalise`` scales every clip to a peak of 1; otherwise the
    level follows the spectrogram's (what the round trip and a level-sensitive judge need, and what
    ``cmav generate`` and :func:`cmav.image_to_sound` write by default, through
    :func:`clip_to_full_scale`), and may pass full scale.
    """
    if getattr(features, "kind", "lms") != "lms":
        raise ValueError(f"Griffin-Lim inversion needs an LMS front end, got kind={features.kind!r}")
    if not features.center:
        # torchaudio's Griffin-Lim frames are centred: uncentred ones would come out shifted by n_fft / 2
        raise ValueError("Griffin-Lim inversion needs centred frames (features.center=True)")
    if lms_db.dim() != 4 or lms_db.shape[1] != 1 or lms_db.shape[2] != features.n_mels:
        raise ValueError(f"expected LMS (N, 1, {features.n_mels}, frames), got {tuple(lms_db.shape)}")
    n_stft = features.n_fft // 2 + 1
    f_max = features.f_max if features.f_max is not None else features.sample_rate / 2
    fb = torchaudio.functional.melscale_fbanks(
        n_stft, features.f_min, f_max, features.n_mels, features.sample_rate, norm="slaney", mel_scale="slaney"
    )
    mel_power = torch.pow(10.0, lms_db.float().cpu().squeeze(1) / 10.0)  # (N, n_mels, frames)
    # rand_init=False: a fixed phase start, so the same LMS always gives the same sound
    gl = torchaudio.transforms.GriffinLim(
        n_fft=features.n_fft, hop_length=features.hop_length, power=features.power, n_iter=n_iter,
        length=n_samples if n_samples is not None else (lms_db.shape[-1] - 1) * features.hop_length,
        rand_init=False,
    )  # fmt: skip
    # Inside a bf16-mixed training step CPU autocast would hand the NNLS and the STFTs bf16,
    # which Griffin-Lim has no complex type for: the inversion is fp32 work whatever the caller runs.
    with torch.autocast("cpu", enabled=False):
        linear = mel_to_linear(mel_power, fb.T, nnls_iters)
        wave = gl(linear)
    wave = torch.nan_to_num(wave)
    if normalise:
        wave = wave / wave.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8)
    return wave


def clip_to_full_scale(wave: Tensor, where: str, stacklevel: int = 2) -> Tensor:
    """``wave`` clipped to [-1, 1], what a sound file holds. Sound rendered at its spectrogram's level
    (``lms_to_audio(..., normalise=False)``) can pass full scale; a
    :class:`~cmav.data.errors.DataWarning` naming ``where`` then says how many samples were
    clipped (nothing when none were)."""
    from cmav.data.errors import DataWarning

    over = int((wave.abs() > 1.0).sum())
    if over:
        warnings.warn(f"{where}: {over} of {wave.numel()} samples of the sound rendered at the spectrogram's level lie "
                      f"beyond full scale (peak {float(wave.abs().max()):.2f}) and are clipped to [-1, 1]; peak "
                      "normalisation (normalise=True, `cmav generate --normalise`) scales each clip to its peak "
                      "instead", DataWarning, stacklevel=stacklevel + 1)  # fmt: skip
    return wave.clamp(-1.0, 1.0)


__all__ = ["clip_to_full_scale", "lms_to_audio", "mel_to_linear"]
