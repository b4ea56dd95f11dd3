"""Reading audio chunks with soundfile, with clear errors for files that cannot be used."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        return -(-self.n_samples * sample_rate // self.sample_rate)  # rounded up, as the resamplers do


def _sound_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "is a folder, not a sound file" if path.is_dir() else "audio file does not exist")
    if path.stat().st_size == 0:
        raise DataError(path, "audio file is empty (0 bytes)")
    return path


def check_recording(path: str | Path, spec: ChunkSpec | None = None) -> tuple[int, int]:
    """A sound file's length in samples and its sample rate from its header, without reading the
    samples: the DataError :func:`read_audio` gives for a missing, empty or unreadable file, and
    with ``spec`` the one :func:`cut_chunks` gives for a recording shorter than one chunk. Checks
    a list of files before any of them is used."""
    path = _sound_file(path)
    try:
        info = sf.info(str(path))
    except Exception as exc:  # as read_audio: the exception type depends on the format
        raise DataError(path, f"not a readable audio file ({exc})") from exc
    if info.frames <= 0:
        raise DataError(path, "audio file holds no samples")
    if spec is not None:
        total = info.frames
        if info.samplerate != spec.sample_rate:  # the length librosa.resample gives
            total = int(np.ceil(info.frames * (float(spec.sample_rate) / info.samplerate)))
        _refuse_short(total, spec, str(path))
    return int(info.frames), int(info.samplerate)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a sound file as float32 ``(channels, samples)`` and its sample rate.

    Raises DataError naming the file when it is missing, empty, corrupt or holds no samples.
    """
    path = _sound_file(path)
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


CANCELLED_MIX_DB = 20.0
"""A mono mix this many dB below its channels' level is reported: the channels cancel (out of phase)."""


def mix_to_mono(wave: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """``(channels, samples)`` averaged to ``(1, samples)``, as every cmav reader does. Notes (with
    ``name``) more than two channels, and channels that cancel in the mix: an out-of-phase stereo
    file would otherwise turn into a near-silent chunk with nothing to say why."""
    if wave.shape[0] > 2:
        notes.append(f"{name}: {wave.shape[0]} channels; mixed down to mono")
    mono = wave.mean(axis=0, keepdims=True)
    if wave.shape[0] > 1:
        channels = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64))))
        mixed = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
        if channels > 0 and mixed < channels * 10 ** (-CANCELLED_MIX_DB / 20):
            drop = 20 * np.log10(channels / max(mixed, 1e-30))
            notes.append(f"{name}: its {wave.shape[0]} channels cancel when mixed to mono ({drop:.0f} dB below "
                         "their level; out of phase?)")  # fmt: skip
    return mono


def decode_chunk(path: str | Path, spec: ChunkSpec = ChunkSpec()) -> tuple[np.ndarray, list[str]]:
    """Load one chunk as mono float32 ``(spec.n_samples,)`` at ``spec.sample_rate``.

    Returns the samples and a list of notes on what was fixed on the way (rate, channel count,
    small length mismatch) or looks wrong (silence); each note starts with the path. A chunk too
    far from the expected length is refused with a DataError.
    """
    path = Path(path)
    notes: list[str] = []
    wave, rate = read_audio(path)
    # The length is judged at the file's own rate, before resampling: a corrupt header claiming a
    # tiny rate would otherwise be resampled into gigabytes before being refused.
    frames = wave.shape[1]
    off = abs(frames * spec.sample_rate - spec.n_samples * rate) / (spec.n_samples * rate)
    if off > spec.length_tolerance:
        what = "short" if frames * spec.sample_rate < spec.n_samples * rate else "long"
        raise DataError(
            path,
            f"chunk too {what}: {frames} samples at {rate} Hz, expected {spec.samples_at(rate)} "
            f"(more than {spec.length_tolerance:.0%} off)",
        )
    mono = mix_to_mono(wave, str(path), notes)
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


def checked_sample_rate(sample_rate: Any) -> int:
    """``sample_rate`` as an int: a positive whole number (``44100``, ``44100.0``, a numpy integer);
    anything else (0, negative, 44100.5, NaN, a string, a bool) is a ValueError naming it."""
    whole = isinstance(sample_rate, (int, np.integer)) or (
        isinstance(sample_rate, (float, np.floating)) and np.isfinite(sample_rate) and float(sample_rate).is_integer())
    if isinstance(sample_rate, (bool, np.bool_)) or not whole or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
    return int(sample_rate)


def as_float_samples(wave: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """Samples in memory as float32 on soundfile's scale (full scale = 1.0): signed integer PCM
    (int16/int32 from ``scipy.io.wavfile.read``, ...) divided by 2**(bits-1), unsigned (8-bit wav)
    centred at 2**(bits-1) first, exactly as soundfile reads the same samples from a file. Float
    samples are used as given; beyond full scale they are noted (with ``name``): int PCM cast to
    float without its scale would otherwise pass unnoticed, 90 dB too loud."""
    if wave.dtype == np.bool_ or not (np.issubdtype(wave.dtype, np.integer) or np.issubdtype(wave.dtype, np.floating)):
        raise DataError(name, f"samples of dtype {wave.dtype}: pass float samples in [-1, 1] or integer PCM")
    if np.issubdtype(wave.dtype, np.integer):
        half = 2.0 ** (8 * wave.dtype.itemsize - 1)
        centre = half if np.issubdtype(wave.dtype, np.unsignedinteger) else 0.0
        return ((wave.astype(np.float64) - centre) / half).astype(np.float32)
    wave = wave.astype(np.float32, copy=False)
    note_beyond_full_scale(wave, name, notes, "integer PCM is scaled for you: pass it as its integer dtype, or "
                           "divide by 32768 for 16-bit")  # fmt: skip
    return wave


def note_beyond_full_scale(wave: np.ndarray, name: str, notes: list[str], advice: str) -> None:
    """Note (with ``name`` and ``advice``) float samples beyond full scale (1.0), which are used as given."""
    peak = float(np.max(np.abs(wave))) if wave.size and np.isfinite(wave).all() else 0.0
    if peak > 1.0:
        notes.append(f"{name}: float samples reach {peak:g}, beyond full scale (1.0); used as given ({advice})")


def read_mono(audio: str | Path | np.ndarray | Any, rate: int, sample_rate: int | None = None,
              ) -> tuple[np.ndarray, str, list[str]]:  # fmt: skip
    """A whole recording as mono float32 samples at ``rate``, the name to report it by, and notes.

    ``audio`` is a sound file (``sample_rate`` then, if given, must agree with it) or samples
    ``(samples,)`` / ``(channels, samples)`` (a numpy array or a tensor) recorded at ``sample_rate``
    (a positive whole number). Float samples are taken as they are (full scale = 1.0; beyond it is
    noted); integer PCM is scaled to [-1, 1) as soundfile reads it (see :func:`as_float_samples`).
    Channels are averaged, as the data sets do; the rate is converted with :func:`resample`.
    """
    notes: list[str] = []
    if sample_rate is not None:
        sample_rate = checked_sample_rate(sample_rate)
    if isinstance(audio, (list, tuple)) and any(isinstance(a, (str, Path)) for a in audio):
        raise TypeError(f"a {type(audio).__name__} of {len(audio)} file(s) given: a call takes one recording (a sound "
                        "file or its samples); loop over the files, or use `cmav embed --audio FILE ...` / "
                        "`cmav classify --audio FILE ...`")  # fmt: skip
    if isinstance(audio, (str, Path)):
        name = str(audio)
        wave, source_rate = read_audio(audio)
        if sample_rate is not None and sample_rate != source_rate:
            raise DataError(name, f"sample_rate={sample_rate} given, but the file says {source_rate} Hz; leave it out")
        # integer PCM is read to [-1, 1); only a float file can hold more
        note_beyond_full_scale(wave, name, notes, "a float file can hold that; the model's training audio lies within "
                               "full scale")
    else:
        name = "<samples>"
        if sample_rate is None:
            raise ValueError("samples given without sample_rate: pass the rate they were recorded at")
        if hasattr(audio, "detach"):  # a tensor (bfloat16 has no numpy dtype: as float32)
            audio = audio.detach().cpu()
            wave = (audio.float() if str(audio.dtype) == "torch.bfloat16" else audio).numpy()
        else:
            wave = np.asarray(audio)
        wave = as_float_samples(wave, name, notes)
        if wave.ndim == 1:
            wave = wave[None]
        if wave.ndim != 2 or wave.shape[1] == 0:
            raise DataError(name, f"expected (samples,) or (channels, samples), got shape {tuple(wave.shape)}")
        if wave.shape[0] > wave.shape[1]:
            raise DataError(name, f"shape {tuple(wave.shape)} has more channels than samples: pass (channels, samples)")
        if not np.isfinite(wave).all():
            raise DataError(name, "samples hold NaN or infinite values")
        source_rate = sample_rate
    mono = mix_to_mono(wave, name, notes)
    if source_rate != rate:
        notes.append(f"{name}: sample rate {source_rate} Hz, expected {rate} Hz; resampled")
        mono = resample(mono, source_rate, rate)
    return np.ascontiguousarray(mono[0]), name, notes


def hop_samples(hop_s: float | None, spec: ChunkSpec = ChunkSpec()) -> int:
    """Samples between chunk starts at ``spec.sample_rate`` for ``hop_s`` seconds (None: one chunk
    length); ValueError naming ``hop_s`` when it is not finite, not positive or under one sample."""
    if hop_s is None:
        return spec.n_samples
    if not np.isfinite(hop_s):
        raise ValueError(f"hop_s must be a finite number of seconds, got {hop_s}")
    if hop_s <= 0:
        raise ValueError(f"hop_s must be positive, got {hop_s}")
    hop = int(round(hop_s * spec.sample_rate))
    if hop < 1:
        raise ValueError(f"hop_s={hop_s:g} is under one sample at {spec.sample_rate} Hz: it rounds to 0 samples "
                         f"(the least is {1 / spec.sample_rate:.2g} s)")  # fmt: skip
    return hop


def _refuse_short(total: int, spec: ChunkSpec, name: str) -> None:
    """The DataError for a recording of ``total`` samples (at the chunk rate) too short to pad into a chunk."""
    n, rate = spec.n_samples, spec.sample_rate
    if total < n and (n - total) / n > spec.length_tolerance:
        raise DataError(name, f"{total} samples at {rate} Hz ({total / rate:.3f} s): shorter than one chunk "
                              f"({n} samples, {n / rate:g} s)")  # fmt: skip


SILENCE_CHECK_ROWS = 256
"""Chunks whose RMS is taken at a time: the check never holds more than these in float64."""


def cut_chunks(mono: np.ndarray, spec: ChunkSpec = ChunkSpec(), hop_s: float | None = None, name: str = "<samples>",
               max_chunks: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:  # fmt: skip
    """A recording (mono, at ``spec.sample_rate``) cut into chunks ``(N, spec.n_samples)``, their
    starts in seconds, and notes.

    Chunks start every ``hop_s`` seconds (default: one chunk length, no overlap; Sub-URMP's are
    0.1 s apart), at most ``max_chunks`` of them. A clip shorter than one chunk is zero-padded when
    within ``spec.length_tolerance``, refused (DataError naming it) otherwise; what is left after
    the last whole chunk is noted and not used, as is the audio between chunks when ``hop_s`` is
    longer than a chunk. A silent chunk is noted.

    The chunks are a read-only view of ``mono`` (overlapping chunks share its samples): copying
    them all would take ``chunk / hop_s`` times the recording's memory. Copy a batch at a time.
    """
    n, rate = spec.n_samples, spec.sample_rate
    chunk_s = n / rate
    hop = hop_samples(hop_s, spec)
    if max_chunks is not None and max_chunks < 1:
        raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")
    notes: list[str] = []
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    total = mono.shape[0]
    if total < n:
        _refuse_short(total, spec, name)
        notes.append(f"{name}: {total} samples, a chunk is {n}; zero-padded")
        mono = np.pad(mono, (0, n - total))
        total = n
    count = (total - n) // hop + 1
    capped = max_chunks is not None and count > max_chunks
    if capped:
        count = max_chunks
    if hop > n:
        # between chunks, and after the last one up to where the next would start
        gap = (count - 1) * (hop - n) + (0 if capped else min(total - ((count - 1) * hop + n), hop - n))
        if gap > 0:
            notes.append(f"{name}: hop_s={hop_s:g} is longer than a chunk ({chunk_s:g} s): the audio from each chunk's "
                         f"end to the next start is not used ({gap / rate:.3f} s in all)")  # fmt: skip
    if capped:
        used = (count - 1) * hop / rate + chunk_s
        notes.append(f"{name}: {total / rate:.2f} s long; using its first {used:g} s "
                     f"({count} chunk{'s' if count > 1 else ''})")  # fmt: skip
    else:
        left = total - (count * hop if hop > n else (count - 1) * hop + n)
        if left > 0:
            notes.append(f"{name}: its last {left / rate:.3f} s do not fill a chunk; not used")
    starts = np.arange(count, dtype=np.int64) * hop
    chunks = np.lib.stride_tricks.sliding_window_view(mono, n)[:: hop if count > 1 else 1][:count]
    square_sums = np.concatenate([np.einsum("ij,ij->i", part, part, dtype=np.float64)
                                  for part in (chunks[i : i + SILENCE_CHECK_ROWS]
                                               for i in range(0, count, SILENCE_CHECK_ROWS))])  # fmt: skip
    rms = np.sqrt(square_sums / n)
    silent = np.flatnonzero(rms < spec.silence_rms)
    if len(silent):
        where = ", ".join(f"{starts[i] / rate:g} s" for i in silent[:5]) + (" ..." if len(silent) > 5 else "")
        notes.append(f"{name}: silent chunk{'s' if len(silent) > 1 else ''} (RMS below {spec.silence_rms:g}) at {where}")
    return chunks, starts / rate, notes
