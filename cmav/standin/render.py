"""Rendering MIDI to audio: SoundFont 2 files with the FluidSynth program, GUS patch sets with TiMidity++.

A *source* is either a General MIDI ``.sf2`` (rendered by ``fluidsynth``) or a TiMidity++ ``.cfg``
that maps GM programs to GUS ``.pat`` patches (rendered by ``timidity``; cmav ships
``datasets/freepats_orchestra.cfg`` for Debian's freepats, a sample set recorded apart from
FluidR3's and TimGM6mb's). TiMidity++ always reads its system configuration first, and Debian's maps
every program to FluidR3: a program the given ``.cfg`` leaves out would silently sound FluidR3's
samples. So a render that makes TiMidity++ open any soundfont is refused.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mido
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


TIMIDITY_SUFFIX = ".cfg"
"""A source with this suffix is a TiMidity++ configuration of GUS patches, rendered by ``timidity``."""


def is_patch_set(source: str | Path) -> bool:
    """True for a TiMidity++ ``.cfg`` source, False for a soundfont."""
    return Path(source).suffix.lower() == TIMIDITY_SUFFIX


def check_renderer(soundfont: str | Path) -> Path:
    """Return the source path after checking that it and its renderer (fluidsynth for a soundfont,
    timidity for a ``.cfg`` patch set) exist."""
    soundfont = Path(soundfont)
    if is_patch_set(soundfont):
        if shutil.which("timidity") is None:
            raise RuntimeError(
                f"{soundfont}: a TiMidity++ patch set needs the 'timidity' program; install it with "
                "'apt-get install -y timidity freepats' (scripts/install.sh does this)"
            )
        if not soundfont.is_file():
            raise FileNotFoundError(f"{soundfont}: TiMidity++ configuration not found")
        return soundfont
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
    check_soundfont_file(soundfont)
    return soundfont


def renderer_of(source: str | Path) -> str:
    """The program that renders ``source``: ``timidity`` for a ``.cfg`` patch set, else ``fluidsynth``."""
    return "timidity" if is_patch_set(source) else "fluidsynth"


@functools.cache
def renderer_version(program: str) -> str:
    """The first line of ``PROGRAM --version`` (``FluidSynth runtime version 2.3.1``,
    ``TiMidity++ version 2.14.0``): another version may render the same notes differently."""
    proc = subprocess.run([program, "--version"], capture_output=True, text=True)
    line = next((x.strip() for x in (proc.stdout + proc.stderr).splitlines() if x.strip()), "")
    return line or f"{program} (no version printed)"


def check_soundfont_file(path: Path) -> None:
    """Raise unless ``path`` starts as a SoundFont 2 file (``RIFF`` ... ``sfbk``) and is as long as its
    RIFF header says: FluidSynth renders with its default font (FluidR3 on Debian) when it cannot
    load the one given, so a cut-off download would be heard as FluidR3 under another name."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise ValueError(f"{path}: not a SoundFont 2 file (no RIFF/sfbk header); give a General MIDI .sf2 or a TiMidity++ .cfg")
    declared, size = int.from_bytes(head[4:8], "little") + 8, path.stat().st_size
    if size < declared:
        raise ValueError(f"{path}: SoundFont cut off: {size} bytes of the {declared} its header declares (an interrupted copy?)")


def render_midi(midi_path: str | Path, soundfont: str | Path, settings: SynthSettings = SynthSettings()) -> np.ndarray:
    """Render a MIDI file to float32 stereo audio ``(2, samples)`` at ``settings.sample_rate``.

    One call per track: loading the font dominates a call, and a file keeps FluidSynth's own
    timing (its interactive shell wrote empty files here). A ``.cfg`` source goes to
    :func:`render_midi_timidity`.
    """
    if is_patch_set(soundfont):
        return render_midi_timidity(midi_path, soundfont, settings)
    with tempfile.TemporaryDirectory(prefix="cmav-render-") as tmp:
        out = Path(tmp) / "out.wav"
        cmd = [
            "fluidsynth", "-ni", "-q",
            "-g", str(settings.gain),
            "-r", str(settings.sample_rate),
            "-o", "synth.default-soundfont=",  # never fall back to the system's font
            *settings.options(),
            "-F", str(out), str(soundfont), str(midi_path),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        # fluidsynth exits 0 when it cannot load the font or finds no instrument for the program
        failed = re.search(r"Failed to load|not a SoundFont|No preset found", proc.stderr)
        if proc.returncode != 0 or failed or not out.is_file() or out.stat().st_size <= 44:
            raise RuntimeError(
                f"fluidsynth failed on {midi_path} with {soundfont} (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
        return _read_render(out, "fluidsynth", settings.sample_rate)


TIMIDITY_SETTINGS = ("sample_rate", "gain", "reverb", "chorus", "reverb_level", "chorus_level")
"""The :class:`SynthSettings` fields TiMidity++ renders with (:func:`timidity_options`); it has no
counterpart for FluidSynth's room size, damping, width or chorus voices, speed and depth."""


def ignored_settings(settings: SynthSettings, source: str | Path) -> list[str]:
    """The fields of ``settings`` that are set but that ``source``'s renderer does not apply."""
    if not is_patch_set(source):
        return []
    return [k for k, v in vars(settings).items() if k not in TIMIDITY_SETTINGS and v is not None]


def timidity_options(settings: SynthSettings) -> list[str]:
    """TiMidity++'s arguments for ``settings``: rate, amplification, and its own reverb (freeverb,
    level from ``reverb_level``) and chorus (level from ``chorus_level``) or neither."""
    opts = ["-s", str(settings.sample_rate), "-A", str(max(1, round(100 * settings.gain)))]
    if settings.reverb:
        level = 0.5 if settings.reverb_level is None else settings.reverb_level
        opts.append(f"-EFreverb=f,{min(127, max(1, round(127 * level)))}")
    else:
        opts.append("-EFreverb=0")
    if settings.chorus:
        level = 1.0 if settings.chorus_level is None else settings.chorus_level
        opts.append(f"-EFchorus=s,{min(127, max(1, round(40 * level)))}")
    else:
        opts.append("-EFchorus=0")
    return opts


TIMIDITY_LEAD_IN_S = 0.1
"""Silence put before the notes of the MIDI given to TiMidity++, and cut from its render again.

TiMidity++ renders nothing for a note at MIDI tick 0 when a later note has the same pitch (one
tick later it sounds): melodies start at 0 s, so about one FreePats track in seven lost its first
note. Every event from the first note on moves by the same lead-in (only the set-up at tick 0
stays), so the timing of the render is unchanged."""


NOTE_EVENTS = ("note_on", "note_off", "polytouch")


def _with_lead_in(midi_path: str | Path, out: Path, lead_in_s: float = TIMIDITY_LEAD_IN_S) -> float:
    """Write ``midi_path`` to ``out`` with every event from its first note on ``lead_in_s`` later;
    returns the lead-in put, in seconds (whole ticks).

    The set-up at tick 0 (tempo, program, controllers, pitch bend) stays at tick 0, before the
    lead-in: with the program change moved later, TiMidity++ loaded GM program 1 (a piano, which
    a patch set may not map) from its system configuration. The lead-in passes at the tempo that
    set-up leaves."""
    try:
        mid = mido.MidiFile(str(midi_path))
    except (OSError, EOFError, ValueError) as exc:
        raise RuntimeError(f"{midi_path}: not a MIDI file TiMidity++ can be given ({exc})") from exc
    tempo = 500_000  # MIDI's default (120 bpm), unless the set-up at tick 0 sets another
    firsts = []  # per track: the index of its first event that moves
    for track in mid.tracks:
        first, tick = len(track), 0
        for i, msg in enumerate(track):
            tick += msg.time
            if tick > 0 or msg.type in NOTE_EVENTS:
                first = i
                break
            if msg.type == "set_tempo":
                tempo = msg.tempo
        firsts.append(first)
    ticks = round(lead_in_s * 1e6 / tempo * mid.ticks_per_beat)
    for track, first in zip(mid.tracks, firsts, strict=True):
        if first < len(track):
            track[first] = track[first].copy(time=track[first].time + ticks)
    mid.save(str(out))
    return ticks * tempo / 1e6 / mid.ticks_per_beat


def render_midi_timidity(midi_path: str | Path, config: str | Path, settings: SynthSettings = SynthSettings()) -> np.ndarray:
    """Render a MIDI file with TiMidity++ and the patch set of ``config``: float32 stereo ``(2, samples)``.

    The file is rendered :data:`TIMIDITY_LEAD_IN_S` later and that lead-in cut off again, so that a
    note at its very start sounds. Raises when TiMidity++ fails, writes nothing, or opens a
    soundfont (a program ``config`` does not map fell through to the system configuration's font).
    """
    with tempfile.TemporaryDirectory(prefix="cmav-render-") as tmp:
        out = Path(tmp) / "out.wav"
        shifted = Path(tmp) / "lead_in.mid"
        lead_in = round(_with_lead_in(midi_path, shifted) * settings.sample_rate)
        # --preserve-silence: TiMidity++ drops the silence before the first note, FluidSynth keeps it
        cmd = ["timidity", "-c", str(config), "-idvv", "-Ow", "--output-stereo", "--output-16bit", "--preserve-silence",
               *timidity_options(settings), "-o", str(out), str(shifted)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        if proc.returncode != 0 or not out.is_file() or out.stat().st_size <= 44:
            raise RuntimeError(f"timidity failed on {midi_path} with {config} (exit {proc.returncode}): {log.strip()[-500:]}")
        fonts = sorted(set(re.findall(r"Init soundfonts `([^']+)'", log)))
        if fonts:
            raise RuntimeError(
                f"{config}: rendering {midi_path} made timidity load the soundfont {', '.join(fonts)} from its "
                "system configuration: the program played is not mapped in this .cfg, so the audio would "
                "not come from its patches"
            )
        return np.ascontiguousarray(_read_render(out, "timidity", settings.sample_rate)[:, lead_in:])


def _read_render(path: Path, program: str, sample_rate: int) -> np.ndarray:
    """The wav a renderer wrote, as float32 ``(channels, samples)``; raises if it is not at ``sample_rate``."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise RuntimeError(f"{program} wrote {rate} Hz, asked for {sample_rate} Hz")
    return np.ascontiguousarray(data.T)
