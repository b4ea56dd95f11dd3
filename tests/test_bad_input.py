"""Every kind of bad input gets a clear message naming the file; nothing is lost silently."""

import warnings

import numpy as np
import pytest
from PIL import Image

from cmav.data.audio_io import ChunkSpec, decode_chunk, load_chunk
from cmav.data.datasets import PairedFolder, SubURMP
from cmav.data.errors import DataError, DataWarning
from cmav.data.image_io import load_frame
from cmav.data.layout import scan_suburmp

from fixtures import make_paired, make_suburmp, write_jpg, write_wav

CLASSES = ("cello", "flute")


# --- audio files ---------------------------------------------------------------------------------
def test_corrupt_wav_names_the_file(tmp_path):
    p = tmp_path / "cello00_500.wav"
    p.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(DataError, match="cello00_500.wav.*not a readable audio file"):
        load_chunk(p)


def test_empty_wav_names_the_file(tmp_path):
    p = tmp_path / "empty.wav"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty.wav.*empty"):
        load_chunk(p)


def test_wav_with_no_samples(tmp_path):
    p = write_wav(tmp_path / "nothing.wav", seconds=0.0)
    with pytest.raises(DataError, match="no samples"):
        load_chunk(p)


def test_wrong_sample_rate_is_resampled_and_reported(tmp_path):
    p = write_wav(tmp_path / "r48.wav", rate=48000)
    with pytest.warns(DataWarning, match=r"r48.wav.*48000 Hz.*resampled"):
        y = load_chunk(p)
    assert y.shape == (22050,) and y.dtype == np.float32


def test_mono_is_accepted_without_warning(tmp_path):
    p = write_wav(tmp_path / "mono.wav", channels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = load_chunk(p)
    assert y.shape == (22050,)


def test_stereo_is_mixed_down(tmp_path):
    y = load_chunk(write_wav(tmp_path / "st.wav", channels=2))
    ref = load_chunk(write_wav(tmp_path / "mo.wav", channels=1))
    assert np.allclose(y, ref, atol=1e-4)


def test_stereo_whose_channels_cancel_is_reported_not_only_as_silent(tmp_path):
    import soundfile as sf

    t = np.arange(22050) / 44100  # one chunk
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    p = tmp_path / "phase.wav"
    sf.write(str(p), np.stack([tone, -tone], axis=1), 44100, subtype="PCM_16")
    with pytest.warns(DataWarning) as caught:
        load_chunk(p)
    said = [str(w.message) for w in caught]
    assert any("phase.wav: its 2 channels cancel when mixed to mono" in m for m in said)
    assert any("phase.wav: silent chunk" in m for m in said)
    with warnings.catch_warnings():  # an ordinary stereo chunk still mixes down without a word
        warnings.simplefilter("error")
        load_chunk(write_wav(tmp_path / "st.wav", channels=2))


def test_multichannel_is_mixed_down_with_a_warning(tmp_path):
    p = write_wav(tmp_path / "quad.wav", channels=4)
    with pytest.warns(DataWarning, match=r"quad.wav: 4 channels"):
        assert load_chunk(p).shape == (22050,)


def test_slightly_short_chunk_is_padded_with_a_warning(tmp_path):
    p = write_wav(tmp_path / "short.wav", seconds=0.49)
    with pytest.warns(DataWarning, match=r"short.wav.*too short.*zero-padded"):
        y = load_chunk(p)
    assert y.shape == (22050,) and y[-100:].max() == 0


def test_slightly_long_chunk_is_trimmed_with_a_warning(tmp_path):
    with pytest.warns(DataWarning, match="too long.*trimmed"):
        assert load_chunk(write_wav(tmp_path / "long.wav", seconds=0.51)).shape == (22050,)


@pytest.mark.parametrize("seconds,what", [(0.2, "short"), (2.0, "long")])
def test_far_off_length_is_refused(tmp_path, seconds, what):
    p = write_wav(tmp_path / f"{what}.wav", seconds=seconds)
    with pytest.raises(DataError, match=f"{what}.wav: chunk too {what}"):
        load_chunk(p)


def test_silent_chunk_is_reported(tmp_path):
    p = write_wav(tmp_path / "quiet.wav", amplitude=0.0)
    _, notes = decode_chunk(p, ChunkSpec())
    assert any("quiet.wav: silent chunk" in n for n in notes)


# --- samples in memory (the API's array/tensor input) ----------------------------------------------
def test_integer_pcm_in_memory_is_scaled_as_soundfile_reads_the_file(tmp_path):
    """int16/int32 PCM (e.g. from scipy.io.wavfile.read) and 8-bit unsigned PCM give the samples
    soundfile gives for the same file, not values 32768 times too large."""
    import soundfile as sf
    import torch

    from cmav.data.audio_io import read_mono

    for subtype, dtype in (("PCM_16", "int16"), ("PCM_32", "int32")):
        path = tmp_path / f"{subtype}.wav"
        t = np.arange(22050) / 44100
        sf.write(str(path), np.stack([0.3 * np.sin(2 * np.pi * 440 * t), -0.9 * np.cos(2 * np.pi * 97 * t)], 1),
                 44100, subtype=subtype)  # fmt: skip
        pcm, rate = sf.read(str(path), dtype=dtype, always_2d=True)
        from_file, _, _ = read_mono(path, 44100)
        for given in (pcm.T, torch.from_numpy(pcm.T.copy())):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                mono, name, notes = read_mono(given, 44100, sample_rate=rate)
            assert name == "<samples>" and notes == [] and mono.dtype == np.float32
            np.testing.assert_array_equal(mono, from_file)
    # 8-bit wav is unsigned, centred at 128 (soundfile reads PCM_U8 as (x - 128) / 128)
    u8 = np.array([0, 64, 128, 192, 255] * 100, dtype=np.uint8)
    path = tmp_path / "u8.wav"
    sf.write(str(path), (u8.astype(np.float64) - 128) / 128, 8000, subtype="PCM_U8")
    mono, _, _ = read_mono(u8, 8000, sample_rate=8000)
    np.testing.assert_array_equal(mono, read_mono(path, 8000)[0])
    assert mono[:5].tolist() == [-1.0, -0.5, 0.0, 0.5, 127 / 128]


def test_float_samples_beyond_full_scale_are_reported():
    from cmav.data.audio_io import read_mono

    loud = 3000.0 * np.sin(np.linspace(0, 100, 22050)).astype(np.float32)
    mono, _, notes = read_mono(loud, 44100, sample_rate=44100)
    assert np.allclose(mono, loud, atol=1e-3)  # used as given, but not in silence
    assert any(n.startswith("<samples>: float samples reach 3000") and "beyond full scale" in n for n in notes)
    assert read_mono(loud / 3000, 44100, sample_rate=44100)[2] == []


@pytest.mark.parametrize("rate", [0, -44100, 44100.5, float("nan"), float("inf"), "44100", True, None])
def test_sample_rate_of_samples_must_be_a_positive_whole_number(rate):
    from cmav.data.audio_io import read_mono

    samples = np.zeros(22050, np.float32)
    if rate is None:
        with pytest.raises(ValueError, match="without sample_rate"):
            read_mono(samples, 44100, sample_rate=rate)
        return
    with pytest.raises(ValueError, match=r"sample_rate must be a positive whole number of Hz, got "):
        read_mono(samples, 44100, sample_rate=rate)


def test_sample_rate_given_as_a_whole_float_or_numpy_int_is_used():
    from cmav.data.audio_io import read_mono

    samples = np.zeros(22050, np.float32)
    for rate in (44100.0, np.int64(44100), np.float32(44100)):
        mono, _, notes = read_mono(samples, 44100, sample_rate=rate)
        assert mono.shape == (22050,) and not any("resampled" in n for n in notes)


# --- images --------------------------------------------------------------------------------------
def test_broken_jpeg_names_the_file(tmp_path):
    good = write_jpg(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(DataError, match="bad.jpg.*not a readable image"):
        load_frame(bad, 64)


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "note.jpg"
    p.write_text("this is not an image")
    with pytest.raises(DataError, match="note.jpg.*not a readable image"):
        load_frame(p, 64)


def test_1080p_frame_is_centre_cropped_not_squashed(tmp_path):
    img = Image.new("RGB", (1920, 1080), (0, 0, 255))
    img.paste((255, 0, 0), (420, 0, 1500, 1080))  # the central 1080x1080 square is red
    img.save(tmp_path / "hd.jpg", quality=95)
    out = load_frame(tmp_path / "hd.jpg", 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[..., 0].mean() > 200 and out[..., 2].mean() < 60


def test_grayscale_png_becomes_rgb(tmp_path):
    Image.new("L", (50, 80), 128).save(tmp_path / "g.png")
    assert load_frame(tmp_path / "g.png", 32).shape == (32, 32, 3)


# --- layout ----------------------------------------------------------------------------------------
def _scan_errors(root, split="train", classes=CLASSES):
    return "\n".join(scan_suburmp(root, split, classes).errors)


def test_good_layout_has_no_errors(tmp_path):
    root = make_suburmp(tmp_path / "d", CLASSES)
    scan = scan_suburmp(root, "train", CLASSES)
    assert scan.errors == [] and len(scan.samples) == 4
    assert {(s.class_name, s.track, s.time_ms) for s in scan.samples} == {
        ("cello", 0, 500), ("cello", 0, 600), ("flute", 0, 500), ("flute", 0, 600)}  # fmt: skip


def test_audio_without_image_partner(tmp_path):
    root = make_suburmp(tmp_path / "d", CLASSES)
    (root / "img/train/cello/cello00_600.jpg").unlink()
    assert "cello00_600.wav: audio with no image partner" in _scan_errors(root)


def test_image_without_audio_partner(tmp_path):
    root = make_suburmp(tmp_path / "d", CLASSES)
    (root / "chunk/train/flute/flute00_500.wav").unlink()
    assert "flute00_500.jpg: image with no audio partner" in _scan_errors(root)


def test_missing_class_folder(tmp_path):
    root = make_suburmp(tmp_path / "d", ("cello",))
    assert "flute: missing class folder" in _scan_errors(root)


def test_a_folder_inside_a_class_folder_is_reported_not_skipped_silently(tmp_path):
    root = make_suburmp(tmp_path / "d", CLASSES)
    nested = root / "chunk/train/cello/more"
    nested.mkdir()
    (root / "chunk/train/cello/cello00_600.wav").rename(nested / "cello00_600.wav")
    scan = scan_suburmp(root, "train", CLASSES)
    assert any(w.startswith(f"{nested}: a folder inside a class folder; ignored") for w in scan.warnings)


def test_extra_class_folder(tmp_path):
    root = make_suburmp(tmp_path / "d", CLASSES)
    (root / "chunk/train/kazoo").mkdir()
    assert "kazoo: unexpected class folder" in _scan_errors(root)


def test_empty_split(tmp_path):
    root = make_suburmp(tmp_path / "d", CLASSES)
    for p in (root / "chunk/validation").rglob("*.wav"):
        p.unlink()
    for p in (root / "img/validation").rglob("*.jpg"):
        p.unlink()
    errs = _scan_errors(root, "validation")
    assert "class 'cello' has no pairs in split 'validation'" in errs


def test_missing_split_folder(tmp_path):
    root = make_suburmp(tmp_path / "d", CLASSES)
    import shutil

    shutil.rmtree(root / "img/validation")
    assert "img/validation: missing folder" in _scan_errors(root, "validation")


def test_misnamed_file(tmp_path):
    root = make_suburmp(tmp_path / "d", CLASSES)
    write_wav(root / "chunk/train/cello/flute00_900.wav")
    write_jpg(root / "img/train/cello/flute00_900.jpg")
    assert "flute00_900.wav: name does not follow" in _scan_errors(root)


def test_missing_root_raises(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_suburmp(tmp_path / "nowhere", "train")


def test_loader_raises_one_error_listing_all_problems(tmp_path):
    root = make_suburmp(tmp_path / "d")
    (root / "img/train/cello/cello00_600.jpg").unlink()
    (root / "chunk/train/oboe/oboe00_500.wav").unlink()
    with pytest.raises(DataError) as info:
        SubURMP(root, "train", progress=False)
    msg = str(info.value)
    assert "2 problem(s)" in msg and "cello00_600.wav" in msg and "oboe00_500.jpg" in msg


def test_loader_names_a_corrupt_file_among_good_ones(tmp_path):
    root = make_suburmp(tmp_path / "d")
    (root / "chunk/train/tuba/tuba00_600.wav").write_bytes(b"not audio")
    with pytest.raises(DataError, match=r"(?s)1 unusable file.*tuba00_600.wav"):
        SubURMP(root, "train", progress=False)


def test_path_with_spaces_and_non_ascii(tmp_path):
    root = make_suburmp(tmp_path / "my data" / "Übungen ♪", ("cello",))
    # only one class here: the loader must say so, not crash on the path
    with pytest.raises(DataError, match="missing class folder"):
        SubURMP(root, "train", progress=False)
    full = make_suburmp(tmp_path / "my data" / "Sub-URMP ünï", chunks=1)
    ds = SubURMP(full, "train", progress=False)
    assert len(ds) == 13


def test_paired_folder_layout(tmp_path):
    root = make_paired(tmp_path / "p")
    ds = PairedFolder(root, "train", image_size=32, progress=False)
    assert len(ds) == 4 and ds.class_names == ["dog", "drum"]
    item = ds[0]
    assert item["audio"].shape == (1, 128, 44) and item["image"].shape == (3, 32, 32)
    assert item["track"] == -1


def test_a_paired_split_missing_a_class_is_refused_not_relabelled(tmp_path):
    """Labels follow train's classes: validation without 'drum' would otherwise label 'pipe' 1, not 2."""
    import shutil

    from cmav.data import AudioVisualDataModule
    from cmav.data.check import check_dataset

    root = make_paired(tmp_path / "p", classes=("dog", "drum", "pipe"))
    for kind in ("audio", "image"):
        shutil.rmtree(root / kind / "validation" / "drum")
    dm = AudioVisualDataModule(str(root), layout="paired", image_size=16, progress=False)
    with pytest.raises(DataError, match=r"audio/validation/drum: missing class folder"):
        dm.setup("fit")
    report = check_dataset(root, layout="paired", deep=False, progress=False)
    assert any("validation/drum: missing class folder" in e for e in report.errors)


# --- defects found in review: each test reproduces one ------------------------------------------
def _sof_bomb(path):
    """A JPEG whose SOF0 header claims 65280 x 65280 pixels (a corrupt size field)."""
    b = bytearray(path.read_bytes())
    i = b.find(b"\xff\xc0")  # SOF0: FFC0 len(2) precision(1) height(2) width(2)
    b[i + 5 : i + 9] = b"\xff\x00\xff\x00"
    path.write_bytes(bytes(b))
    return path


def test_dangling_source_links_are_named_not_a_raw_traceback(tmp_path):
    """A development root links to its source: a source file deleted since leaves a dangling link."""
    import os

    from cmav.data import split_players
    from cmav.data.cache import source_fingerprint

    from fixtures import make_suburmp_tracks

    src = make_suburmp_tracks(tmp_path / "src", tracks=(0, 1), chunks=2)
    dev = tmp_path / "dev"
    split_players(src, dev)
    gone = [p for p in (dev / "chunk/train/violin").iterdir()][:1] + [p for p in (dev / "img/train/oboe").iterdir()][:1]
    for p in gone:
        os.remove(p.resolve())
    with pytest.raises(DataError) as info:
        SubURMP(dev, "train", image_size=16, progress=False)
    msg = str(info.value)
    assert all(str(p) in msg for p in gone) and "dangling symbolic link" in msg
    # the fingerprint on its own names every missing file too
    with pytest.raises(DataError, match=r"(?s)2 source file\(s\).*" + gone[0].name):
        source_fingerprint(scan_suburmp(dev, "train").samples)


def test_jpeg_with_a_corrupt_huge_size_names_the_file(tmp_path):
    bad = _sof_bomb(write_jpg(tmp_path / "violin00_500.jpg"))
    with pytest.raises(DataError, match=r"violin00_500.jpg: not a readable image.*exceeds limit"):
        load_frame(bad, 64)


def test_loader_and_check_name_a_jpeg_with_a_corrupt_huge_size(tmp_path):
    from cmav.data.check import check_dataset

    root = make_suburmp(tmp_path / "d")
    bad = _sof_bomb(root / "img/train/violin/violin00_500.jpg")
    with pytest.raises(DataError, match=r"(?s)1 unusable file.*violin00_500.jpg"):
        SubURMP(root, "train", image_size=16, progress=False)
    report = check_dataset(root, deep=True, progress=False)
    assert any(str(bad) in e for e in report.errors), report.errors


def test_mask_too_big_to_decode_names_the_file(tmp_path, monkeypatch):
    from cmav.data.masks import load_mask

    p = tmp_path / "m.png"
    Image.new("L", (64, 64), 255).save(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 64x64 mask is then a "bomb"
    with pytest.raises(DataError, match=r"m.png: not a readable mask image"):
        load_mask(p, 16)


def test_an_unexpected_decoding_failure_names_the_pair(tmp_path, monkeypatch):
    """Whatever a decoder raises, the loader reports the pair it was decoding, not a bare traceback."""
    from cmav.data import cache as cache_mod

    root = make_suburmp(tmp_path / "d")
    real = cache_mod.load_frame

    def flaky(path, size):
        if path.name == "tuba00_600.jpg":
            raise RuntimeError("decoder crashed")
        return real(path, size)

    monkeypatch.setattr(cache_mod, "load_frame", flaky)
    with pytest.raises(DataError, match=r"(?s)1 unusable file.*tuba00_600.*RuntimeError: decoder crashed"):
        SubURMP(root, "train", image_size=16, progress=False)


def test_16_bit_png_frames_are_scaled_not_turned_white(tmp_path):
    Image.fromarray(np.full((96, 96), 32768, np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = load_frame(tmp_path / "g16.png", 32)
    assert out.shape == (32, 32, 3) and np.abs(out.astype(int) - 128).max() <= 1
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    got = load_frame(tmp_path / "ramp.png", 64)[0, :, 0].astype(int)
    assert got[0] == 0 and got[-1] == 255 and np.abs(got - np.round(ramp[0] / 257)).max() <= 1


def test_float_frames_are_refused_by_name(tmp_path):
    Image.fromarray(np.full((16, 16), 0.5, np.float32)).save(tmp_path / "f.tif")
    p = tmp_path / "f.png"
    p.write_bytes((tmp_path / "f.tif").read_bytes())  # a float TIFF under a frame's name
    with pytest.raises(DataError, match=r"f.png: .*mode F"):
        load_frame(p, 16)


def test_a_zero_padded_chunk_time_is_refused_not_loaded_twice(tmp_path):
    root = make_suburmp(tmp_path / "d", CLASSES, chunks=3)
    write_wav(root / "chunk/train/cello/cello00_0600.wav", freq=999)
    write_jpg(root / "img/train/cello/cello00_0600.jpg")
    write_wav(root / "chunk/train/flute/flute00_\uff1600.wav")  # a full-width digit: int() reads 600
    write_jpg(root / "img/train/flute/flute00_\uff1600.jpg")
    scan = scan_suburmp(root, "train", CLASSES)
    errs = "\n".join(scan.errors)
    assert "cello00_0600.wav: name does not follow" in errs and "flute00_\uff1600.wav: name does not follow" in errs
    assert sorted(s.time_ms for s in scan.samples if s.class_name == "cello") == [500, 600, 700]


def test_two_files_for_one_moment_are_both_named(tmp_path, monkeypatch):
    """The guard behind the name rule: should two names ever parse to one (class, track, T), both are named."""
    import re

    from cmav.data import layout

    root = make_suburmp(tmp_path / "d", CLASSES, chunks=2)
    write_wav(root / "chunk/train/cello/cello00_0600.wav")
    write_jpg(root / "img/train/cello/cello00_0600.jpg")
    monkeypatch.setattr(layout, "SUBURMP_STEM", re.compile(r"^(?P<instrument>[a-z_]+?)(?P<track>\d{2})_(?P<time>\d+)$"))
    errs = _scan_errors(root)
    assert re.search(r"cello00_600.wav.*cello00_0600.wav|cello00_0600.wav.*cello00_600.wav", errs), errs
    assert "cello track 00 at 600 ms" in errs


def test_paired_check_takes_the_classes_from_the_train_class_folders(tmp_path):
    import shutil

    from cmav.data.check import check_dataset

    for lost in ("image", "audio"):  # either side of one train class folder lost
        root = make_paired(tmp_path / lost)
        shutil.rmtree(root / lost / "train/drum")
        errors = check_dataset(root, layout="paired", deep=False, progress=False).errors
        assert errors == [f"{root / lost / 'train/drum'}: missing class folder"]


def test_paired_check_table_counts_no_tracks(tmp_path):
    from cmav.data.check import check_dataset

    root = make_paired(tmp_path / "p", classes=("dog", "drum", "cat"))
    table = check_dataset(root, layout="paired", deep=False, progress=False).table()
    assert table.splitlines()[-1] == "| **total** | 6 | - | 6 | - |"


def test_suburmp_check_table_counts_tracks(tmp_path):
    from cmav.data.check import check_dataset

    root = make_suburmp(tmp_path / "d", chunks=1)
    table = check_dataset(root, deep=False, progress=False).table()
    assert table.splitlines()[-1] == "| **total** | 13 | 13 | 13 | 13 |"


def test_a_header_with_a_tiny_sample_rate_is_refused_before_resampling(tmp_path, monkeypatch):
    """22,050 frames said to be at 1 Hz would resample to ~1e9 samples (4 GB) before the length check."""
    import soundfile as sf

    from cmav.data import audio_io

    p = tmp_path / "r1.wav"
    sf.write(str(p), 0.1 * np.ones(22050, np.float32), 1, subtype="PCM_16")

    def no_resample(*a, **k):
        raise AssertionError("resampled before the length check")

    monkeypatch.setattr(audio_io, "resample", no_resample)
    with pytest.raises(DataError, match=r"r1.wav: chunk too long: 22050 samples at 1 Hz"):
        decode_chunk(p)
    short = write_wav(tmp_path / "r48short.wav", seconds=0.3, rate=48000)
    with pytest.raises(DataError, match=r"r48short.wav: chunk too short: 14400 samples at 48000 Hz"):
        decode_chunk(short)


# --- an interrupted stand-in build -----------------------------------------------------------------
def _standin_manifest(root, **extra):
    import json

    params = {"builder_version": 1, "preset": "tiny", "seed": 3, "soundfont": "FluidR3_GM.sf2", "frame_size": 128,
              "jpeg_quality": 90}  # fmt: skip
    font = {"path": "/usr/share/sounds/sf2/FluidR3_GM.sf2", "name": "FluidR3_GM.sf2", "sha256": "0" * 64}
    (root / "cmav_standin.json").write_text(json.dumps({"params": params, "soundfont": font, **extra}))


def test_an_interrupted_standin_build_is_refused_by_check_and_loaders(tmp_path, capsys):
    """A stand-in whose build was cut off (its manifest says complete: false) passed `cmav data check`
    and could be cached, packed, split and trained on: a part of the data set, silently."""
    from cmav.cli.main import main
    from cmav.data.check import check_dataset
    from cmav.data.datasets import open_split

    root = make_suburmp(tmp_path / "d", chunks=1)
    _standin_manifest(root, complete=False)
    again = f"cmav data build --root {root} --preset tiny --seed 3 --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2"
    errors = check_dataset(root, deep=False, progress=False).errors
    assert any("build was cut off" in e and again in e for e in errors), errors
    with pytest.raises(DataError, match="build was cut off .*run the same build command again to finish it"):
        open_split("suburmp", root, "train", image_size=16, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()
    assert main(["data", "check", str(root), "--quick"]) == 1
    assert main(["data", "cache", str(root), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert main(["data", "pack", str(root), "-o", str(tmp_path / "pack"), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert main(["data", "split-players", str(root), "-o", str(tmp_path / "dev")]) == 2
    err = capsys.readouterr().err
    assert err.count("run the same build command again to finish it") >= 4, err
    assert not (tmp_path / "dev").exists() and not (tmp_path / "cache").exists()
    from cmav.data.player_split import split_players

    with pytest.raises(DataError, match="build was cut off"):  # from Python too, not only through the CLI
        split_players(root, tmp_path / "dev")
    assert not (tmp_path / "dev").exists()
    # finished: the same folder is read (a manifest from before the flag has no `complete`: read as before)
    for extra in ({"complete": True}, {}):
        _standin_manifest(root, **extra)
        assert check_dataset(root, deep=False, progress=False).ok
        assert len(open_split("suburmp", root, "train", image_size=16, cache_dir=tmp_path / "cache", progress=False)) == 13


def test_check_compares_a_standin_with_the_counts_its_manifest_records(tmp_path):
    from cmav.data.check import check_dataset
    from cmav.data.instruments import INSTRUMENTS

    root = make_suburmp(tmp_path / "d", chunks=2)
    counts = {split: dict.fromkeys(INSTRUMENTS, 2) for split in ("train", "validation")}
    _standin_manifest(root, complete=True, counts=counts)
    assert check_dataset(root, deep=False, progress=False).ok
    for p in ("chunk/train/oboe/oboe00_600.wav", "img/train/oboe/oboe00_600.jpg"):  # a pair lost after the build
        (root / p).unlink()
    errors = check_dataset(root, deep=False, progress=False).errors
    assert errors == [f"{root}: train holds 1 oboe pair(s); its stand-in manifest cmav_standin.json records 2"]


# --- a path under a regular file -------------------------------------------------------------------
def test_an_output_under_a_regular_file_is_one_error_line(tmp_path, capsys):
    import shutil

    from cmav.cli.main import main
    from cmav.standin.render import DEFAULT_SOUNDFONT

    from fixtures import make_suburmp_tracks

    (tmp_path / "afile").write_text("x")
    src = make_suburmp_tracks(tmp_path / "src", tracks=(0, 1), chunks=1)
    assert main(["data", "split-players", str(src), "-o", str(tmp_path / "afile/x")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'afile/x'}: Not a directory"
    if shutil.which("fluidsynth") and DEFAULT_SOUNDFONT.is_file():
        assert main(["data", "build", "--preset", "tiny", "--root", str(tmp_path / "afile/x")]) == 2
        assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'afile/x'}: Not a directory"
