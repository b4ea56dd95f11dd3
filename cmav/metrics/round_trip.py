"""Does a spectrogram survive being turned into sound? LMS -> Griffin-Lim audio -> LMS -> judge."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cmav.features.inversion import lms_to_audio
from cmav.features.logmel import LogMelConfig, LogMelSpectrogram
from cmav.metrics.classification import ClassificationReport, judged_accuracy


@torch.no_grad()
def round_trip_lms(lms_db: Tensor, features: LogMelConfig, n_iter: int = 32, batch_size: int = 64) -> Tensor:
    """The LMS of the Griffin-Lim audio of ``lms_db`` ``(N, 1, n_mels, frames)``, same shape.

    The audio keeps the spectrogram's level (no peak normalisation), so a judge sees the same
    dB scale it was trained on.
    """
    front = LogMelSpectrogram(features)
    out = []
    for i in range(0, lms_db.shape[0], batch_size):
        wave = lms_to_audio(lms_db[i : i + batch_size], features, n_iter=n_iter, normalise=False)
        again = front(wave, sample_rate=features.sample_rate)
        if again.shape[-1] != lms_db.shape[-1]:  # rounding of the inverse STFT length
            again = again[..., : lms_db.shape[-1]] if again.shape[-1] > lms_db.shape[-1] else torch.nn.functional.pad(
                again, (0, lms_db.shape[-1] - again.shape[-1]), mode="replicate")  # fmt: skip
        out.append(again)
    return torch.cat(out) if out else lms_db.new_zeros(0, *lms_db.shape[1:])


def round_trip_accuracy(
    judge: nn.Module,
    lms_db: Tensor,
    targets: Tensor | Sequence[int],
    class_names: Sequence[str],
    features: LogMelConfig,
    n_iter: int = 32,
    batch_size: int = 64,
) -> ClassificationReport:
    """The audio judge's accuracy on the round-tripped LMS (see :func:`round_trip_lms`)."""
    return judged_accuracy(judge, round_trip_lms(lms_db, features, n_iter, batch_size), targets, class_names,
                           batch_size=batch_size)  # fmt: skip


__all__ = ["round_trip_accuracy", "round_trip_lms"]
