"""Raw-waveform "front end": the samples themselves, for encoders with a 1-D conv stem."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from cmav.features.base import FrontEnd, FrontEndConfigMixin, store_counts


@dataclass(frozen=True)
class WaveformConfig(FrontEndConfigMixin):
    """The resampled mono samples as a ``(1, 1, n_samples)`` "image": 0.5 s at 22,050 Hz is
    1 x 11,025. :class:`cmav.models.AudioEncoder` gives inputs of height 1 a strided 1-D conv stem."""

    kind: Literal["waveform"] = "waveform"
    sample_rate: int = 22050
    mono: bool = True

    def __post_init__(self) -> None:
        store_counts(self, "sample_rate")  # torchaudio's resampler refuses a fractional rate

    def output_shape(self, duration_s: float) -> tuple[int, int, int]:
        return (1, 1, self.n_samples(duration_s))


class Waveform(FrontEnd):
    """Waveform batch -> ``(batch, 1, 1, samples)`` at the config rate."""

    def __init__(self, config: WaveformConfig | None = None) -> None:
        super().__init__(config or WaveformConfig())

    def transform(self, waveform: Tensor) -> Tensor:
        return waveform.unsqueeze(2)
