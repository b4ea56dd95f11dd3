"""Reading audio chunks with soundfile, with clear errors for files that cannot be used."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from cmav.data.errors import DataError, DataWarning


@dataclass(frozen=True)
class ChunkSpec:
    """What an audio chunk of a data set is expected to be.

    ``length_tolerance`` is the fraction of ``n_samples`` by which a chunk may differ and still be
    padded/trimmed (with a warning); beyond it the chunk is refused. ``silence_rms`` is the RMS
    (full scale = 1.0) under which a chunk is reported as silent.
    """

    sample_rate: int = 44100
    n_samples: int = 22050
    length_tolerance: float = 0.05
    silence_rms: float = 1e-4

    def samples_at(self, sample_rate: int) -> int:
        """Samples of one chunk at ``sample_rate`` (e.g. 11,025 at 22,050 Hz for the 0.5-s default)."""
        return int(round(self.n_samples * sample_rate / self.sample_rate))


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a sound file as float32 ``(channels, samples)`` and its sample rate.

    Raises DataError naming the file when it is missing, empty, corrupt or holds no samples.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "audio file does not exist")
    if path.stat().st_size == 0:
        raise DataError(path, "audio file is empty (0 bytes)")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError/TypeError by format
        raise DataError(path, f"not a readable audio file ({exc})") from exc
    if data.shape[0] == 0:
        raise DataError(path, "audio file holds no samples")
    if not np.isfinite(data).all():
        raise DataError(path, "audio holds NaN or infinite samples")
    return np.ascontiguousarray(data.T), int(rate)


def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample ``(channels, samples)`` float32 audio with librosa (soxr)."""
    import librosa

    return librosa.resample(wave, orig_sr=orig_rate, target_sr=target_rate, axis=-1).astype(np.float32)


def decode_chunk(path: str | Path, spec: ChunkSpec = ChunkSpec()) -> tuple[np.ndarray, list[str]]:
    """Load one chunk as mono float32 ``(spec.n_samples,)`` at ``spec.sample_rate``.

    Returns the samples and a list of notes on what was fixed on the way (rate, channel count,
    small length mismatch) or looks wrong (silence); each note starts with the path. A chunk too
    far from the expected length is refused with a DataError.
    """
    path = Path(path)
    notes: list[str] = []
    wave, rate = read_audio(path)
    if wave.shape[0] > 2:
        notes.append(f"{path}: {wave.shape[0]} channels; mixed down to mono")
    mono = wave.mean(axis=0, keepdims=True)
    if rate != spec.sample_rate:
        notes.append(f"{path}: sample rate {rate} Hz, expected {spec.sample_rate} Hz; resampled")
        mono = resample(mono, rate, spec.sample_rate)
    mono = mono[0]
    n = mono.shape[0]
    if n != spec.n_samples:
        off = abs(n - spec.n_samples) / spec.n_samples
        what = "short" if n < spec.n_samples else "long"
        if off > spec.length_tolerance:
            raise DataError(
                path,
                f"chunk too {what}: {n} samples at {spec.sample_rate} Hz, expected {spec.n_samples} "
                f"(more than {spec.length_tolerance:.0%} off)",
            )
        fix = "zero-padded" if n < spec.n_samples else "trimmed"
        notes.append(f"{path}: chunk too {what} ({n} samples, expected {spec.n_samples}); {fix}")
        mono = np.pad(mono, (0, max(0, spec.n_samples - n)))[: spec.n_samples]
    rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    if rms < spec.silence_rms:
        notes.append(f"{path}: silent chunk (RMS {rms:.2e})")
    return mono, notes


def load_chunk(path: str | Path, spec: ChunkSpec = ChunkSpec()) -> np.ndarray:
    """Like :func:`decode_chunk`, reporting each note as a DataWarning."""
    mono, notes = decode_chunk(path, spec)
    for note in notes:
        warnings.warn(note, DataWarning, stacklevel=2)
    return mono
