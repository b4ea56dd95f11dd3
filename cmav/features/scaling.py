"""Map spectrogram values (dB) to a generator's output range and back."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


class RangeScaler:
    """Linear map of ``[low, high]`` (e.g. the train set's LMS range in dB) onto ``[-1, 1]``.

    A generator with a ``tanh`` output then covers exactly the values seen in training; what it
    produces is mapped back with :meth:`decode` (clamped to the range). ``low``/``high`` are
    measured on the training data (:meth:`fit`) and stored with a model so that a checkpoint
    decodes to the same dB scale without the data.
    """

    def __init__(self, low: float, high: float) -> None:
        if not high > low:
            raise ValueError(f"RangeScaler needs high > low, got [{low}, {high}]")
        self.low = float(low)
        self.high = float(high)

    @classmethod
    def fit(cls, values: Tensor) -> RangeScaler:
        """The range of ``values`` (all of them: min and max)."""
        v = values.float()
        return cls(float(v.min()), float(v.max()))

    @classmethod
    def from_list(cls, pair: Sequence[float]) -> RangeScaler:
        low, high = pair
        return cls(low, high)

    def to_list(self) -> list[float]:
        return [self.low, self.high]

    def encode(self, x: Tensor) -> Tensor:
        """dB -> [-1, 1] (values outside the range are clamped)."""
        return ((x.float() - self.low) / (self.high - self.low) * 2.0 - 1.0).clamp(-1.0, 1.0)

    def decode(self, y: Tensor) -> Tensor:
        """[-1, 1] -> dB."""
        return (y.float().clamp(-1.0, 1.0) + 1.0) * 0.5 * (self.high - self.low) + self.low

    def __repr__(self) -> str:
        return f"RangeScaler(low={self.low:.3f}, high={self.high:.3f})"


__all__ = ["RangeScaler"]
