"""The log-mel-spectrogram (LMS) front end shared by every branch of cmav."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torchaudio
from torch import Tensor, nn


@dataclass(frozen=True)
class LogMelConfig:
    """Parameters of the LMS front end; the defaults reproduce Chen et al. (2017).

    0.5 s at 22,050 Hz with ``n_fft=1024``, ``hop_length=256`` and ``center=True`` gives
    128 mel bands x 44 frames. The mel filter bank and padding follow librosa's defaults
    (Slaney mel scale and area normalisation, zero padding) so that the result can be checked
    against ``librosa.feature.melspectrogram`` + ``librosa.power_to_db``.
    """

    sample_rate: int = 22050
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    power: float = 2.0
    amin: float = 1e-10
    """Floor applied to the mel power before the log (librosa's ``amin``)."""
    top_db: float | None = None
    mono: bool = True
    center: bool = True

    def n_samples(self, duration_s: float) -> int:
        """Number of samples of a clip of ``duration_s`` seconds at the front-end rate."""
        return int(round(duration_s * self.sample_rate))

    def n_frames(self, n_samples: int) -> int:
        """Number of STFT frames produced for ``n_samples`` input samples."""
        if self.center:
            return n_samples // self.hop_length + 1
        return (n_samples - self.n_fft) // self.hop_length + 1

    def output_shape(self, duration_s: float) -> tuple[int, int, int]:
        """(channels, n_mels, n_frames) for a clip of ``duration_s`` seconds."""
        return (1, self.n_mels, self.n_frames(self.n_samples(duration_s)))

    def to_dict(self) -> dict:
        return asdict(self)


class LogMelSpectrogram(nn.Module):
    """Waveform batch -> log-mel spectrogram in dB, on CPU or GPU.

    Input: ``(batch, channels, samples)`` or ``(batch, samples)`` at ``sample_rate`` (given per
    call; resampled to the config's rate when it differs). Output: ``(batch, 1, n_mels, frames)``
    where the values are ``10 * log10(max(mel_power, amin))`` (``power_to_db`` with ``ref=1``).
    """

    def __init__(self, config: LogMelConfig | None = None) -> None:
        super().__init__()
        self.config = config or LogMelConfig()
        c = self.config
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=c.sample_rate,
            n_fft=c.n_fft,
            hop_length=c.hop_length,
            f_min=c.f_min,
            f_max=c.f_max,
            n_mels=c.n_mels,
            power=c.power,
            center=c.center,
            pad_mode="constant",
            norm="slaney",
            mel_scale="slaney",
        )
        self._resamplers = nn.ModuleDict()

    def _resample(self, wave: Tensor, sample_rate: int) -> Tensor:
        if sample_rate == self.config.sample_rate:
            return wave
        key = str(sample_rate)
        if key not in self._resamplers:
            self._resamplers[key] = torchaudio.transforms.Resample(
                sample_rate, self.config.sample_rate
            ).to(wave.device)
        return self._resamplers[key](wave)

    def forward(self, waveform: Tensor, sample_rate: int | None = None) -> Tensor:
        if waveform.dim() == 1:
            raise ValueError(
                "LogMelSpectrogram expects a batch: (batch, samples) or (batch, channels, samples); "
                f"got a 1-D tensor of {waveform.shape[0]} samples (add .unsqueeze(0))"
            )
        if waveform.dim() == 2:
            waveform = waveform.unsqueeze(1)
        if waveform.dim() != 3:
            raise ValueError(f"expected (batch, channels, samples), got shape {tuple(waveform.shape)}")
        if self.config.mono:
            waveform = waveform.mean(dim=1, keepdim=True)
        waveform = self._resample(waveform.float(), sample_rate or self.config.sample_rate)
        min_samples = self.config.n_fft // 2 + 1 if self.config.center else self.config.n_fft
        if waveform.shape[-1] < min_samples:
            raise ValueError(
                f"clip too short for the LMS front end: {waveform.shape[-1]} samples at "
                f"{self.config.sample_rate} Hz, need at least {min_samples} (n_fft={self.config.n_fft})"
            )
        db = 10.0 * torch.log10(torch.clamp(self.mel(waveform), min=self.config.amin))
        if self.config.top_db is not None:
            # Per clip, as librosa does per call: a clip's floor must not depend on its batch-mates.
            peak = db.amax(dim=(-3, -2, -1), keepdim=True)
            db = torch.maximum(db, peak - self.config.top_db)
        return db
