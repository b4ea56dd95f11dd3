"""Rendering MIDI to audio with the FluidSynth command-line program."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

DEFAULT_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
"""Where Debian's fluid-soundfont-gm puts the General MIDI soundfont."""


@dataclass(frozen=True)
class SynthSettings:
    """FluidSynth settings for one render. Reverb and chorus off give the dry, close-miked sound.

    The ``reverb_*`` / ``chorus_*`` values are FluidSynth's ``synth.reverb.*`` / ``synth.chorus.*``
    settings (None = FluidSynth's default); they apply only when that effect is on.
    """

    sample_rate: int = 44100
    gain: float = 0.8
    reverb: bool = False
    chorus: bool = False
    reverb_room_size: float | None = None
    reverb_damp: float | None = None
    reverb_width: float | None = None
    reverb_level: float | None = None
    chorus_nr: int | None = None
    chorus_level: float | None = None
    chorus_speed: float | None = None
    chorus_depth: float | None = None

    def options(self) -> list[str]:
        """The ``-o name=value`` arguments of these settings."""
        opts = [f"synth.reverb.active={int(self.reverb)}", f"synth.chorus.active={int(self.chorus)}"]
        for effect, on in (("reverb", self.reverb), ("chorus", self.chorus)):
            for key, value in vars(self).items():
                if on and key.startswith(effect + "_") and value is not None:
                    opts.append(f"synth.{effect}.{key[len(effect) + 1:].replace('_', '-')}={value}")
        return [a for o in opts for a in ("-o", o)]


def check_renderer(soundfont: str | Path) -> Path:
    """Return the soundfont path after checking that it and the fluidsynth program exist."""
    soundfont = Path(soundfont)
    if shutil.which("fluidsynth") is None:
        raise RuntimeError(
            "the 'fluidsynth' program is not installed; install it with "
            "'apt-get install -y fluidsynth fluid-soundfont-gm' (make install does this)"
        )
    if not soundfont.is_file():
        raise FileNotFoundError(
            f"{soundfont}: soundfont not found; install Debian's fluid-soundfont-gm or pass "
            "--soundfont PATH to another General MIDI .sf2"
        )
    return soundfont


def render_midi(midi_path: str | Path, soundfont: str | Path, settings: SynthSettings = SynthSettings()) -> np.ndarray:
    """Render a MIDI file to float32 stereo audio ``(2, samples)`` at ``settings.sample_rate``.

    One call per track: loading the font dominates a call, and a file keeps FluidSynth's own
    timing (its interactive shell wrote empty files here).
    """
    with tempfile.TemporaryDirectory(prefix="cmav-render-") as tmp:
        out = Path(tmp) / "out.wav"
        cmd = [
            "fluidsynth", "-ni", "-q",
            "-g", str(settings.gain),
            "-r", str(settings.sample_rate),
            *settings.options(),
            "-F", str(out), str(soundfont), str(midi_path),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file() or out.stat().st_size <= 44:
            raise RuntimeError(
                f"fluidsynth failed on {midi_path} with {soundfont} (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
        data, rate = sf.read(str(out), dtype="float32", always_2d=True)
    if rate != settings.sample_rate:
        raise RuntimeError(f"fluidsynth wrote {rate} Hz, asked for {settings.sample_rate} Hz")
    return np.ascontiguousarray(data.T)
