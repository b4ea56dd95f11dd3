"""The Python API (`cmav.load` and friends) on tiny trained models: it reads raw audio and frames
exactly as the data pipeline does, cuts recordings into chunks, and refuses what it cannot use."""

from __future__ import annotations

import csv
import io
import re
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import cmav
from cmav.data import AudioVisualDataModule
from cmav.data.audio_io import ChunkSpec, cut_chunks
from cmav.data.errors import DataError, DataWarning
from cmav.data.image_io import load_frame
from cmav.features.frontend import build_front_end

from fixtures import make_suburmp_tracks, write_wav

SIZE = 32
TINY = {"n_blocks": 4, "base_channels": 8, "dropout": 0.0}
SMALL = {"base_channels": 8, "cond_proj_dim": 16}
FAST = {"lr": 3e-3, "betas": (0.9, 0.999)}

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore::cmav.tasks.pairs.NegativeSamplingWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("api")
    root = make_suburmp_tracks(base / "suburmp", tracks=(0, 1), chunks=2)
    return {"root": root, "cache": base / "cache", "base": base}


def _dm(data: dict) -> AudioVisualDataModule:
    dm = AudioVisualDataModule(str(data["root"]), image_size=SIZE, batch_size=13, cache_dir=str(data["cache"]),
                               progress=False)  # fmt: skip
    dm.setup("fit")
    return dm


def _fit(task, data: dict, steps: int, name: str) -> Path:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=_dm(data))
    path = data["base"] / f"{name}.ckpt"
    trainer.save_checkpoint(str(path))
    return path


@pytest.fixture(scope="module")
def models(data) -> dict[str, Path]:
    from cmav.tasks import ClassifierTask, I2STask, S2ITask
    from cmav.tasks.retrieval import RetrievalTask

    return {
        "audio_classifier": _fit(ClassifierTask(modality="audio", audio_encoder=TINY, optimizer=FAST), data, 60, "clf"),
        "image_judge": _fit(ClassifierTask(modality="image", image_size=SIZE, image_judge={**TINY, "block_dropout": 0.0},
                                           optimizer=FAST), data, 10, "judge"),  # fmt: skip
        "s2i": _fit(S2ITask(variant="s2i_c", encoder_mode="scratch", image_size=SIZE, sample_every_n_steps=0,
                            encoder={**TINY, "feature_dim": 32}, generator=SMALL, discriminator=SMALL), data, 3, "s2i"),
        "i2s": _fit(I2STask(variant="i2s_n", encoder_mode="scratch", image_size=SIZE, sample_every_n_steps=0,
                            encoder=TINY, generator=SMALL, discriminator=SMALL), data, 3, "i2s"),
        "retrieval": _fit(RetrievalTask(architecture="global", image_size=SIZE, audio_encoder=TINY, image_encoder=TINY,
                                        head={"embed_dim": 16, "hidden_dim": 32}, log_heatmaps=False), data, 3, "ret"),
    }  # fmt: skip


def _val_wavs(data: dict) -> list[Path]:
    return sorted((data["root"] / "chunk" / "validation").rglob("*.wav"))


def test_load_tells_every_kind_apart(models):
    for kind, path in models.items():
        model = cmav.load(path)
        assert model.kind == kind and model.path == path
        assert not model.task.training


def test_load_refuses_what_is_not_a_cmav_model_and_names_the_file(models, tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match=r"other\.ckpt: not a checkpoint of a cmav model"):
        cmav.load(other)
    half = tmp_path / "half.ckpt"
    half.write_bytes(models["s2i"].read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"half\.ckpt: not a readable checkpoint \(half-written or corrupt"):
        cmav.load(half)
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        cmav.load(tmp_path / "missing.ckpt")
    # what is not a checkpoint at all: a sound file given in its place, a list
    swapped = tmp_path / "rec.wav"
    swapped.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt ")
    with pytest.raises(ValueError, match=r"rec\.wav: not a readable checkpoint"):
        cmav.load(swapped)
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match=r"list\.ckpt: not a checkpoint: it holds a list"):
        cmav.load(tmp_path / "list.ckpt")


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {_RunsCode.marker}",))


def test_a_checkpoint_is_never_unpickled_in_full_but_cmavs_own_configs_load(tmp_path):
    from cmav.features.logmel import LogMelConfig
    from cmav.tasks.classifier import checkpoint_dict

    _RunsCode.marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _RunsCode()}}, evil)
    with pytest.raises(ValueError, match=r"evil\.ckpt: holds objects that cmav does not load from a checkpoint \(.*system"):
        cmav.load(evil)
    assert not _RunsCode.marker.exists()
    # a data module built in Python keeps its dataclass configs and paths in the checkpoint: those load
    own = tmp_path / "own.ckpt"
    torch.save({"datamodule_hyper_parameters": {"features": LogMelConfig(n_mels=64), "root": Path("/data")}}, own)
    blob = checkpoint_dict(own)
    assert blob["datamodule_hyper_parameters"] == {"features": LogMelConfig(n_mels=64), "root": Path("/data")}


def test_a_chunk_file_gives_the_features_and_predictions_the_data_pipeline_gives(data, models):
    """The cache holds float16 features; the API's are float32 from the same samples and front end."""
    model = cmav.load(models["audio_classifier"])
    val = _dm(data).val.tensors
    wavs = {p.stem: p for p in _val_wavs(data)}
    for i, stem in enumerate(val.stems):
        chunks = cmav.audio_chunks(model, wavs[Path(stem).name])
        assert chunks.features.shape == (1, *val.audio.shape[1:]) and chunks.start_s.tolist() == [0.0]
        torch.testing.assert_close(chunks.features[0], val.audio[i].float(), atol=0.05, rtol=0)
        expected = model.task.model(val.audio[i : i + 1].float()).softmax(1)
        got = cmav.classify_audio(model, wavs[Path(stem).name]).probabilities
        torch.testing.assert_close(got, expected, atol=1e-2, rtol=0)


def test_a_recording_is_cut_into_chunks_every_hop_and_each_is_that_slice(data, models, tmp_path):
    model = cmav.load(models["audio_classifier"])
    wav = write_wav(tmp_path / "long.wav", seconds=1.2, freq=330.0, noise=0.05)
    with pytest.warns(DataWarning, match=r"long\.wav: its last 0\.200 s do not fill a chunk; not used"):
        plain = cmav.audio_chunks(model, wav)
    assert plain.start_s.tolist() == [0.0, 0.5]
    dense = cmav.audio_chunks(model, wav, hop_s=0.1)
    assert torch.allclose(dense.start_s, torch.arange(8) * 0.1)
    samples, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    mono = torch.from_numpy(samples.mean(axis=1))
    front_end = build_front_end(model.features)
    third = front_end(mono[None, int(0.3 * rate) : int(0.3 * rate) + 22050], rate)
    torch.testing.assert_close(dense.features[3:4], third)
    torch.testing.assert_close(dense.features[5], plain.features[1])  # both start at 0.5 s
    out = cmav.classify_audio(model, wav, hop_s=0.1)
    assert out.probabilities.shape == (8, 13) and len(out.labels) == 8
    assert set(out.labels) <= set(model.class_names) and torch.allclose(out.probabilities.sum(1), torch.ones(8))


def test_samples_in_memory_give_what_their_file_gives(data, models, tmp_path):
    model = cmav.load(models["s2i"])
    wav = write_wav(tmp_path / "clip.wav", seconds=1.0, rate=22050, channels=2, freq=500.0, noise=0.02)
    samples, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    with pytest.warns(DataWarning, match="resampled"):
        from_file = cmav.embed_audio(model, wav)
    with pytest.warns(DataWarning, match="resampled"):
        from_samples = cmav.embed_audio(model, torch.from_numpy(samples.T.copy()), sample_rate=rate)
    assert from_file.vectors.shape == (2, 32)
    assert torch.equal(from_file.vectors, from_samples.vectors)
    with pytest.raises(ValueError, match="without sample_rate"):
        cmav.embed_audio(model, samples.T)
    with pytest.raises(DataError, match=r"more channels than samples: pass \(channels, samples\)"):
        cmav.embed_audio(model, samples, sample_rate=rate)
    with pytest.raises(DataError, match=r"clip\.wav: sample_rate=44100 given, but the file says 22050 Hz"):
        cmav.embed_audio(model, wav, sample_rate=44100)


def test_too_short_or_unreadable_audio_is_refused_by_name(models, tmp_path):
    model = cmav.load(models["audio_classifier"])
    short = write_wav(tmp_path / "short.wav", seconds=0.3)
    with pytest.raises(DataError, match=r"short\.wav: 13230 samples at 44100 Hz \(0\.300 s\): shorter than one chunk"):
        cmav.classify_audio(model, short)
    nearly = write_wav(tmp_path / "nearly.wav", seconds=0.49)
    with pytest.warns(DataWarning, match=r"nearly\.wav: 21609 samples, a chunk is 22050; zero-padded"):
        assert cmav.classify_audio(model, nearly).probabilities.shape == (1, 13)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really")
    with pytest.raises(DataError, match=r"bad\.wav: not a readable audio file"):
        cmav.embed_audio(model, bad)
    with pytest.raises(DataError, match="NaN"):
        cmav.embed_audio(model, np.full(22050, np.nan, dtype=np.float32), sample_rate=44100)


def test_cut_chunks_notes_silence_and_caps_the_count():
    spec = ChunkSpec(sample_rate=1000, n_samples=100)
    mono = np.concatenate([np.ones(200, np.float32), np.zeros(150, np.float32)])
    chunks, starts, notes = cut_chunks(mono, spec, hop_s=0.05, name="x.wav")
    assert chunks.shape == (6, 100) and starts.tolist() == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]
    assert any("x.wav: silent chunks (RMS below 0.0001) at 0.2 s, 0.25 s" in n for n in notes)
    chunks, _, notes = cut_chunks(mono, spec, name="x.wav", max_chunks=2)
    assert chunks.shape == (2, 100) and notes == ["x.wav: 0.35 s long; using its first 0.2 s (2 chunks)"]
    with pytest.raises(ValueError, match="hop_s must be positive"):
        cut_chunks(mono, spec, hop_s=0.0)


def test_sound_to_image_is_what_cmav_generate_writes(models, tmp_path):
    from cmav.cli.main import main

    model = cmav.load(models["s2i"])
    wav = write_wav(tmp_path / "clip.wav", seconds=1.0, freq=440.0)
    images = cmav.sound_to_image(model, wav, n=3, seed=5)
    assert images.shape == (2, 3, 3, SIZE, SIZE) and images.abs().max() <= 1.0
    assert not torch.equal(images[0, 0], images[0, 1])  # the noise draws differ
    assert torch.equal(images, cmav.sound_to_image(model, wav, n=3, seed=5))
    # its embedding is the EMA encoder's own condition (what G reads under "own"; a scratch encoder: not the online one)
    chunk = cmav.audio_chunks(model, wav).features
    with torch.no_grad():
        condition = model.task.ema.module.condition(chunk)
    torch.testing.assert_close(cmav.embed_audio(model, wav).vectors, condition)
    # an inference condition given to one call is that call's: the next plain call is the checkpoint's again
    snapped = cmav.sound_to_image(model, wav, n=3, seed=5, inference_condition="class_mean")
    assert not torch.equal(snapped, images)
    assert torch.equal(images, cmav.sound_to_image(model, wav, n=3, seed=5))
    assert model.task.inference_condition == "own"
    out = tmp_path / "one.png"
    assert main(["generate", "--ckpt", str(models["s2i"]), "--audio", str(wav), "-n", "1", "--seed", "7",
                 "-o", str(out)]) == 0  # fmt: skip
    with pytest.warns(DataWarning, match=r"clip\.wav: 1\.00 s long; using its first 0\.5 s \(1 chunk\)") as caught:
        first = cmav.sound_to_image(model, wav, n=1, seed=7, max_chunks=1)[0, 0]
    assert caught[0].filename == __file__  # the warning points at the caller, not into cmav
    png = torch.from_numpy(np.array(Image.open(out))).permute(2, 0, 1).float()
    assert (png - ((first + 1) * 127.5).round()).abs().max() <= 1.0


def test_images_embed_and_turn_into_sound(data, models):
    judge = cmav.load(models["image_judge"])
    frames = sorted((data["root"] / "img" / "validation").rglob("*.jpg"))[:3]
    vectors = cmav.embed_image(judge, frames)
    pixels = torch.from_numpy(np.stack([load_frame(p, SIZE) for p in frames])).permute(0, 3, 1, 2).float() / 127.5 - 1
    torch.testing.assert_close(vectors, judge.task.model.features(pixels))
    torch.testing.assert_close(cmav.embed_image(judge, pixels[0]), vectors[:1])
    with pytest.raises(ValueError, match=r"frames must be \(3, 32, 32\)"):
        cmav.embed_image(judge, torch.zeros(3, 64, 64))

    retrieval = cmav.load(models["retrieval"])
    image_vectors = cmav.embed_image(retrieval, frames)
    audio_vectors = cmav.embed_audio(retrieval, _val_wavs(data)[0]).vectors
    assert image_vectors.shape == (3, 16) and audio_vectors.shape == (1, 16)
    assert torch.allclose(image_vectors.norm(dim=1), torch.ones(3)) and torch.allclose(audio_vectors.norm(), torch.tensor(1.0))

    i2s = cmav.load(models["i2s"])
    waves, rate = cmav.image_to_sound(i2s, frames[:2], n=2, griffin_lim_iters=2)
    assert rate == i2s.features.sample_rate and waves.shape == (2, 2, i2s.chunk.samples_at(rate))
    assert torch.isfinite(waves).all()


def test_each_call_refuses_a_model_of_the_wrong_kind_by_name(models, tmp_path):
    wav = write_wav(tmp_path / "clip.wav")
    clf = cmav.load(models["audio_classifier"])
    with pytest.raises(ValueError, match=r"clf\.ckpt: sound_to_image takes a model of kind s2i / audio_token; this one is 'audio_classifier'"):
        cmav.sound_to_image(clf, wav)
    with pytest.raises(ValueError, match="image_to_sound takes a model of kind i2s;"):
        cmav.image_to_sound(clf, torch.zeros(3, SIZE, SIZE))
    with pytest.raises(ValueError, match="classify_audio takes a model of kind audio_classifier; this one is 's2i'"):
        cmav.classify_audio(cmav.load(models["s2i"]), wav)


def test_cmav_generate_refuses_a_classifier_by_name(models, tmp_path, capsys):
    from cmav.cli.main import main

    wav = write_wav(tmp_path / "clip.wav")
    assert main(["generate", "--ckpt", str(models["audio_classifier"]), "--audio", str(wav), "-o", str(tmp_path / "x.png")]) == 2
    assert "clf.ckpt: a checkpoint of kind 'audio_classifier', not a generator" in capsys.readouterr().err


def test_cmav_embed_writes_what_the_api_gives(data, models, tmp_path, capsys):
    from cmav.cli.main import main

    clf = models["audio_classifier"]
    long = write_wav(tmp_path / "long.wav", seconds=1.2, freq=330.0)
    short = _val_wavs(data)[0]
    out = tmp_path / "emb.npz"
    assert main(["embed", "--ckpt", str(clf), "--audio", str(long), str(short), "--hop-s", "0.25", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "note: " in captured.err and "do not fill a chunk" in captured.err
    saved = np.load(out)
    model = cmav.load(clf)
    with pytest.warns(DataWarning, match="do not fill a chunk"):
        expected = torch.cat([cmav.embed_audio(model, p, hop_s=0.25).vectors for p in (long, short)])
    np.testing.assert_allclose(saved["vectors"], expected.numpy(), atol=1e-6)
    assert saved["file_index"].tolist() == [0, 0, 0, 1] and saved["start_s"].tolist() == [0.0, 0.25, 0.5, 0.0]
    assert saved["files"].tolist() == [str(long), str(short)] and str(saved["kind"]) == "audio_classifier"

    frames = sorted((data["root"] / "img" / "validation").rglob("*.jpg"))[:2]
    assert main(["embed", "--ckpt", str(models["retrieval"]), "--image", *map(str, frames), "-o", str(out)]) == 0
    assert np.load(out)["vectors"].shape == (2, 16)
    assert main(["embed", "--ckpt", str(models["i2s"]), "--audio", str(long), "-o", str(out)]) == 2
    assert "embed_audio takes a model of kind" in capsys.readouterr().err
    assert main(["embed", "--ckpt", str(models["retrieval"]), "--image", str(frames[0]), "--hop-s", "0.1", "-o",
                 str(out)]) == 2  # fmt: skip
    assert "--hop-s cuts sound files into chunks" in capsys.readouterr().err


def test_cmav_classify_prints_and_writes_each_chunk(data, models, tmp_path, capsys):
    from cmav.cli.main import main

    wav = _val_wavs(data)[0]
    table = tmp_path / "labels.csv"
    assert main(["classify", "--ckpt", str(models["audio_classifier"]), "--audio", str(wav), "-o", str(table)]) == 0
    expected = cmav.classify_audio(cmav.load(models["audio_classifier"]), wav)
    assert f"{wav}: 1 chunk(s); most often {expected.labels[0]}" in capsys.readouterr().out
    rows = table.read_text().splitlines()
    assert rows[0].startswith("file,start_s,label,probability,bassoon,") and len(rows) == 2
    assert rows[1].split(",")[2] == expected.labels[0]
    missing = tmp_path / "missing.wav"
    assert main(["classify", "--ckpt", str(models["audio_classifier"]), "--audio", str(missing)]) == 2
    assert "missing.wav: audio file does not exist" in capsys.readouterr().err
    # an output that is an input, or of another kind, is refused before anything is written
    before = wav.read_bytes()
    assert main(["classify", "--ckpt", str(models["audio_classifier"]), "--audio", str(wav), "-o", str(wav)]) == 2
    assert "the output would overwrite an input" in capsys.readouterr().err and wav.read_bytes() == before
    assert main(["embed", "--ckpt", str(models["audio_classifier"]), "--audio", str(wav), "-o",
                 str(tmp_path / "emb.npy")]) == 2  # fmt: skip
    assert "emb.npy: the output is a .npz file" in capsys.readouterr().err
    assert main(["embed", "--ckpt", str(models["audio_classifier"]), "--audio", str(wav), "-o",
                 str(tmp_path / "vectors")]) == 0  # fmt: skip
    assert "wrote " + str(tmp_path / "vectors.npz") in capsys.readouterr().out and (tmp_path / "vectors.npz").is_file()


# --- defects found in review: each test reproduces one ----------------------------------------------
def test_integer_pcm_in_memory_gives_the_features_of_its_file(models, tmp_path):
    """int16 samples (what scipy.io.wavfile.read gives) are scaled as soundfile scales the file's."""
    model = cmav.load(models["audio_classifier"])
    wav = write_wav(tmp_path / "pcm.wav", seconds=0.5, channels=1, freq=440.0, noise=0.01)
    pcm, rate = sf.read(str(wav), dtype="int16")
    from_file = cmav.audio_chunks(model, wav).features
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        for given in (pcm, torch.from_numpy(pcm.copy())):
            torch.testing.assert_close(cmav.audio_chunks(model, given, sample_rate=rate).features, from_file)
    # float samples beyond full scale (int PCM cast to float by hand) are used, but not in silence
    with pytest.warns(DataWarning, match=r"<samples>: float samples reach \d{4,5}, beyond full scale"):
        cmav.audio_chunks(model, pcm.astype(np.float32), sample_rate=rate)


def test_sample_rate_that_is_not_a_positive_whole_number_is_refused_by_name(models):
    model = cmav.load(models["audio_classifier"])
    samples = np.zeros(22050, np.float32)
    for rate in (0, -44100, 44100.5):
        with pytest.raises(ValueError, match=rf"sample_rate must be a positive whole number of Hz, got {rate}"):
            cmav.embed_audio(model, samples, sample_rate=rate)


def test_frames_in_memory_are_read_like_their_files(data, models, tmp_path):
    """A tuple of paths, PIL images and numpy uint8 (H, W, 3) frames are cropped, resized and scaled
    exactly as the same frames read from files; a tensor that is not in [-1, 1] is refused."""
    judge = cmav.load(models["image_judge"])
    frames = sorted((data["root"] / "img" / "validation").rglob("*.jpg"))[:2]
    expected = cmav.embed_image(judge, frames)
    torch.testing.assert_close(cmav.embed_image(judge, tuple(frames)), expected)
    torch.testing.assert_close(cmav.embed_image(judge, [Image.open(p) for p in frames]), expected)
    torch.testing.assert_close(cmav.embed_image(judge, Image.open(frames[0])), expected[:1])
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in frames]
    torch.testing.assert_close(cmav.embed_image(judge, arrays[0]), expected[:1])
    torch.testing.assert_close(cmav.embed_image(judge, np.stack(arrays)), expected)
    # a wide frame: its centre square, resized, as for a file (png: lossless, so the same pixels)
    wide = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    torch.testing.assert_close(cmav.embed_image(judge, wide), cmav.embed_image(judge, tmp_path / "wide.png"))
    i2s = cmav.load(models["i2s"])
    waves, _ = cmav.image_to_sound(i2s, Image.open(frames[0]), griffin_lim_iters=2)
    torch.testing.assert_close(waves, cmav.image_to_sound(i2s, frames[0], griffin_lim_iters=2)[0])
    # tensors: float in [-1, 1] only
    pixels = torch.from_numpy(np.array(load_frame(frames[0], SIZE))).permute(2, 0, 1).contiguous()  # uint8 (3, S, S), 0..255
    with pytest.raises(ValueError, match=r"judge\.ckpt: frames given as a tensor of dtype torch\.uint8"):
        cmav.embed_image(judge, pixels)
    with pytest.raises(ValueError, match=r"float in \[-1, 1\]; these reach 2\d\d"):
        cmav.embed_image(judge, pixels.float())
    with pytest.raises(ValueError, match=r"numpy frames must be uint8 \(H, W, 3\)"):
        cmav.embed_image(judge, np.zeros((3, SIZE, SIZE), np.float32))
    with pytest.raises(TypeError, match=r"a path .* a PIL image, a numpy uint8 .* or a float tensor .*; got dict"):
        cmav.embed_image(judge, {"frame": frames[0]})
    with pytest.raises(ValueError, match="no frames given"):
        cmav.embed_image(judge, [])


def test_sample_k_depends_only_on_the_seed_and_k(models, tmp_path):
    """The first draws of a larger n are the draws of a smaller one: the noise of sample k is the
    same whatever n (torch draws a small tensor by another code path than a large one)."""
    s2i = cmav.load(models["s2i"])
    wav = write_wav(tmp_path / "clip.wav", seconds=0.5, freq=440.0)
    four = cmav.sound_to_image(s2i, wav, n=4, seed=1)
    for n in (1, 2, 3):
        torch.testing.assert_close(cmav.sound_to_image(s2i, wav, n=n, seed=1), four[:, :n], atol=1e-6, rtol=0)
    assert not torch.allclose(cmav.sound_to_image(s2i, wav, n=1, seed=2), four[:, :1])  # another seed, other noise
    i2s = cmav.load(models["i2s"])
    frame = torch.zeros(3, SIZE, SIZE)
    # peak-normalised: the tolerances below are on full scale, whatever level the tiny model generates at
    waves, _ = cmav.image_to_sound(i2s, frame, n=4, seed=1, griffin_lim_iters=2, normalise=True)
    # the LMS agree to float round-off (another batch size); Griffin-Lim and the peak scaling magnify it
    torch.testing.assert_close(cmav.image_to_sound(i2s, frame, n=1, seed=1, griffin_lim_iters=2, normalise=True)[0],
                               waves[:, :1], atol=1e-2, rtol=0)  # fmt: skip
    other, _ = cmav.image_to_sound(i2s, frame, n=1, seed=2, griffin_lim_iters=2, normalise=True)
    assert (other - waves[:, :1]).abs().max() > 0.1


def test_a_seed_that_is_not_a_whole_number_is_refused_not_rounded(models, tmp_path):
    """int() would make seed=1.5 draw seed 1's images and seed="3" seed 3's without a word."""
    s2i, i2s = cmav.load(models["s2i"]), cmav.load(models["i2s"])
    wav = write_wav(tmp_path / "clip.wav", seconds=0.5, freq=440.0)
    for bad in (1.5, "3", True, None):
        with pytest.raises(ValueError, match=rf"seed must be a whole number, got {re.escape(repr(bad))}"):
            cmav.sound_to_image(s2i, wav, seed=bad)
        with pytest.raises(ValueError, match="seed must be a whole number"):
            cmav.image_to_sound(i2s, torch.zeros(3, SIZE, SIZE), seed=bad, griffin_lim_iters=2)
    torch.testing.assert_close(cmav.sound_to_image(s2i, wav, seed=np.int64(3)), cmav.sound_to_image(s2i, wav, seed=3))


def test_cmav_generate_passes_on_warnings_that_are_not_data_notes(models, tmp_path):
    from cmav.evaluation.generate import generate_from_wav

    wav = write_wav(tmp_path / "clip.wav", seconds=1.0)
    with pytest.warns(UserWarning, match="trained from scratch without a class loss") as caught:
        _, notes = generate_from_wav(models["s2i"], wav, n=1, output=tmp_path / "x.png",
                                     inference_condition="class_mean")  # fmt: skip
    assert notes == [f"{wav}: 1.00 s long; using its first 0.5 s (1 chunk)"]
    assert not [w for w in caught if issubclass(w.category, DataWarning)]  # notes are returned, not warned twice


def test_cmav_generate_refuses_n_zero_by_name(data, models, tmp_path, capsys):
    from cmav.cli.main import main

    wav = write_wav(tmp_path / "clip.wav")
    frame = sorted((data["root"] / "img" / "validation").rglob("*.jpg"))[0]
    for ckpt, given, out in ((models["s2i"], ["--audio", str(wav)], tmp_path / "x.png"),
                             (models["i2s"], ["--image", str(frame)], tmp_path / "x.wav")):  # fmt: skip
        assert main(["generate", "--ckpt", str(ckpt), *given, "-n", "0", "-o", str(out)]) == 2
        assert "n must be >= 1" in capsys.readouterr().err and not out.exists()


def test_load_names_a_file_that_is_not_a_checkpoint_and_a_folder(data, tmp_path):
    frame = sorted((data["root"] / "img" / "validation").rglob("*.jpg"))[0]
    with pytest.raises(ValueError, match=rf"{frame.name}: not a readable checkpoint: not a PyTorch checkpoint"):
        cmav.load(frame)
    png = tmp_path / "f.png"
    Image.new("RGB", (4, 4)).save(png)
    with pytest.raises(ValueError, match=r"f\.png: not a readable checkpoint: not a PyTorch checkpoint"):
        cmav.load(png)
    with pytest.raises(ValueError, match=rf"{tmp_path.name}: is a directory, not a checkpoint file"):
        cmav.load(tmp_path)


def test_embed_audio_of_s2i_is_its_encoder_feature_not_the_condition_bank_row(models, tmp_path):
    """A checkpoint generating from the nearest training condition: embed_audio gives the encoder's
    own feature; the docstring says so and how to get the condition the generator reads."""
    blob = torch.load(models["s2i"], weights_only=False)
    blob["hyper_parameters"]["inference_condition"] = "nearest"
    torch.save(blob, tmp_path / "nearest.ckpt")
    model = cmav.load(tmp_path / "nearest.ckpt")
    wav = write_wav(tmp_path / "clip.wav", seconds=1.0)
    x = cmav.audio_chunks(model, wav).features
    net = model.task.ema.module
    with torch.no_grad():
        own, read = net.condition(x), model.task.inference_conditions(net, x)
    torch.testing.assert_close(cmav.embed_audio(model, wav).vectors, own)
    bank = model.task.condition_bank.conditions
    assert all(bool((bank == row).all(1).any()) for row in read) and not torch.allclose(own, read)
    doc = " ".join(cmav.embed_audio.__doc__.split())
    assert "condition its EMA generator reads" not in doc
    assert "encoder's own" in doc and "model.task.inference_conditions(" in doc


def test_cmav_generate_checks_its_output_before_running_and_writes_into_a_folder(data, models, tmp_path, capsys):
    from cmav.cli.main import main
    from cmav.evaluation.generate import generate_from_image, generate_from_wav

    wav = write_wav(tmp_path / "clip.wav")
    frame = sorted((data["root"] / "img" / "validation").rglob("*.jpg"))[0]
    # a wrong suffix is refused by name before the input is even read (it does not exist here)
    with pytest.raises(ValueError, match=r"x\.txt: the images are written as an image file: \.png"):
        generate_from_wav(models["s2i"], tmp_path / "missing.wav", output=tmp_path / "x.txt")
    with pytest.raises(ValueError, match=r"x\.mp3: the sound is written as \.wav or \.flac"):
        generate_from_image(models["i2s"], tmp_path / "missing.jpg", output=tmp_path / "x.mp3")
    # a folder (existing, or named with a trailing /) takes the default file name, as audio token's -o does
    folder = tmp_path / "out"
    folder.mkdir()
    assert main(["generate", "--ckpt", str(models["s2i"]), "--audio", str(wav), "-n", "2", "-o", str(folder)]) == 0
    assert f"wrote {folder / 'generated.png'}" in capsys.readouterr().out and (folder / "generated.png").is_file()
    assert main(["generate", "--ckpt", str(models["i2s"]), "--image", str(frame), "-o", str(folder)]) == 0
    assert (folder / "generated.wav").is_file() and not (tmp_path / "out.wav").exists()
    paths, _ = generate_from_image(models["i2s"], frame, n=2, output=f"{tmp_path / 'new'}/", griffin_lim_iters=2)
    assert paths == [tmp_path / "new" / "generated_0.wav", tmp_path / "new" / "generated_1.wav"]
    path, _ = generate_from_wav(models["s2i"], wav, n=1, output=tmp_path / "plain")  # no suffix: .png, as I2S adds .wav
    assert path == tmp_path / "plain.png" and path.is_file()


def test_every_public_name_of_the_api_is_reachable_from_cmav():
    """`cmav.noise` (which the generation docstrings point to), `cmav.KINDS` and `cmav.model_kind`
    were listed in cmav.api.__all__ but raised AttributeError on `cmav`."""
    import cmav.api

    assert set(cmav.api.__all__) <= set(cmav.__all__)
    for name in cmav.api.__all__:
        assert getattr(cmav, name) is getattr(cmav.api, name)


# --- second review: the API and `cmav embed` / `cmav classify` -------------------------------------
def _buffers(task) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in task.state_dict().items()}


def test_a_model_left_in_train_mode_gives_its_eval_output_and_keeps_its_statistics(data, models, tmp_path):
    """embed_audio / classify_audio / embed_image run the model in eval mode whatever mode the user
    left it in (train mode would use batch statistics and overwrite BatchNorm's running ones), and
    hand it back in that mode."""
    wav = write_wav(tmp_path / "clip.wav", seconds=1.5, freq=330.0, noise=0.05)
    clf = cmav.load(models["audio_classifier"])
    probs, vectors = cmav.classify_audio(clf, wav).probabilities, cmav.embed_audio(clf, wav).vectors
    judge = cmav.load(models["image_judge"])
    frames = sorted((data["root"] / "img" / "validation").rglob("*.jpg"))[:3]
    image_vectors = cmav.embed_image(judge, frames)
    for model, call, expected in ((clf, lambda: cmav.classify_audio(clf, wav).probabilities, probs),
                                  (clf, lambda: cmav.embed_audio(clf, wav).vectors, vectors),
                                  (judge, lambda: cmav.embed_image(judge, frames), image_vectors)):  # fmt: skip
        model.task.train()
        before, modes = _buffers(model.task), [m.training for m in model.task.modules()]
        assert any("running_mean" in k for k in before)
        assert torch.equal(call(), expected)
        after = model.task.state_dict()
        assert [k for k in before if not torch.equal(before[k], after[k])] == []
        assert [m.training for m in model.task.modules()] == modes  # its own mode back
        model.task.eval()


def test_a_frame_tensor_in_0_1_is_noted_as_probably_not_scaled(models):
    judge = cmav.load(models["image_judge"])
    frames = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with pytest.warns(DataWarning, match=r"frames given as a tensor lie in \[0, 1\].*pass x \* 2 - 1"):
        cmav.embed_image(judge, frames)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        cmav.embed_image(judge, frames * 2 - 1)
        cmav.embed_image(judge, torch.zeros(1, 3, SIZE, SIZE))  # all mid-grey: nothing to tell


def test_a_long_recording_goes_through_batch_by_batch_without_a_copy_of_every_chunk(models, tmp_path):
    """The chunks are a view of the recording, turned into features one batch at a time: memory
    does not grow with length / hop_s; the vectors are those of the direct computation."""
    import tracemalloc

    model = cmav.load(models["audio_classifier"])
    wav = write_wav(tmp_path / "long.wav", seconds=2.0, channels=1, freq=330.0, noise=0.05)
    hop_s, batch = 0.01, 16
    tracemalloc.start()
    try:
        got = cmav.embed_audio(model, wav, hop_s=hop_s, batch_size=batch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    mono = sf.read(str(wav), dtype="float32", always_2d=True)[0].mean(axis=1)
    hop = int(round(hop_s * 44100))
    starts = range(0, len(mono) - 22050 + 1, hop)
    assert len(got.vectors) == len(starts) == 151  # several batches, and a part-filled last one
    chunks = torch.from_numpy(np.stack([mono[s : s + 22050] for s in starts]))
    with torch.no_grad():
        features = build_front_end(model.features)(chunks, 44100).contiguous()  # as one tensor holds them
        expected = torch.cat([model.task.model.embed(features[i : i + batch]) for i in range(0, len(starts), batch)])
    assert torch.equal(got.vectors, expected)
    all_chunks = len(starts) * 22050 * 4
    assert peak < all_chunks / 4, f"{peak / 1e6:.1f} MB at the peak, the chunks are {all_chunks / 1e6:.1f} MB"


def test_cmav_classify_without_output_writes_the_table_to_stdout(models, tmp_path, capsys):
    from cmav.cli.main import main

    wav = write_wav(tmp_path / "tone.wav", seconds=1.2, freq=330.0)  # its unused tail is a note, on stderr
    assert main(["classify", "--ckpt", str(models["audio_classifier"]), "--audio", str(wav), "--hop-s", "0.25"]) == 0
    captured = capsys.readouterr()
    with pytest.warns(DataWarning, match="do not fill a chunk"):
        expected = cmav.classify_audio(cmav.load(models["audio_classifier"]), wav, hop_s=0.25)
    rows = list(csv.reader(io.StringIO(captured.out)))  # stdout is the table alone: it can be piped
    assert rows[0][:4] == ["file", "start_s", "label", "probability"] and rows[0][4:] == list(expected.class_names)
    assert [r[2] for r in rows[1:]] == list(expected.labels) and len(rows) == 1 + len(expected.labels) > 2
    assert [float(r[1]) for r in rows[1:]] == pytest.approx(expected.start_s.tolist(), abs=1e-3)
    assert f"{wav}: {len(expected.labels)} chunk(s); most often" in captured.err and "note:" in captured.err


def test_cmav_classify_and_embed_check_every_sound_file_before_any_work(data, models, tmp_path, capsys):
    from cmav.cli.main import main

    good = write_wav(tmp_path / "good.wav", seconds=1.2, freq=330.0)  # its unused tail is a note
    short = write_wav(tmp_path / "short.wav", seconds=0.3)
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really")
    for command in ("classify", "embed"):
        for bad, what in ((short, r"short\.wav: 13230 samples at 44100 Hz \(0\.300 s\): shorter than one chunk"),
                          (garbage, r"garbage\.wav: not a readable audio file"),
                          (tmp_path / "gone.wav", r"gone\.wav: audio file does not exist")):  # fmt: skip
            out = tmp_path / ("x.csv" if command == "classify" else "x.npz")
            argv = [command, "--ckpt", str(models["audio_classifier"]), "--audio", str(good), str(bad), "-o", str(out)]
            assert main(argv) == 2
            err = capsys.readouterr().err
            assert re.search(what, err) and "note:" not in err, err  # refused before the good file was used
            assert not out.exists()
    assert main(["classify", "--ckpt", str(models["audio_classifier"]), "--audio", str(good), "--hop-s", "nan"]) == 2
    assert "error: --hop-s must be a finite number of seconds, got nan" in capsys.readouterr().err  # the option typed


def test_a_list_of_sound_files_is_refused_as_one_recording_at_a_time(models, tmp_path):
    model = cmav.load(models["audio_classifier"])
    wavs = [write_wav(tmp_path / "a.wav"), write_wav(tmp_path / "b.wav")]
    for given in ([str(w) for w in wavs], tuple(wavs), [wavs[0]]):
        with pytest.raises(TypeError, match=r"one recording.*loop over the files.*cmav embed --audio"):
            cmav.embed_audio(model, given)


def test_hop_s_that_is_not_finite_or_rounds_to_nothing_is_named_so_and_a_long_hop_is_noted_once():
    spec = ChunkSpec(sample_rate=1000, n_samples=100)
    mono = np.full(350, 0.5, np.float32)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=rf"hop_s must be a finite number of seconds, got {bad}"):
            cut_chunks(mono, spec, hop_s=bad)
    with pytest.raises(ValueError, match=r"hop_s=0\.0001 is under one sample at 1000 Hz: it rounds to 0 samples"):
        cut_chunks(mono, spec, hop_s=1e-4)
    with pytest.raises(ValueError, match="hop_s must be positive, got -0.1"):
        cut_chunks(mono, spec, hop_s=-0.1)
    # chunks at 0 and 0.15 s; 0.3-0.35 s is the remainder, 0.1-0.15 s and 0.25-0.3 s lie between chunks
    chunks, starts, notes = cut_chunks(mono, spec, hop_s=0.15, name="x.wav")
    assert starts.tolist() == [0.0, 0.15]
    assert notes == ["x.wav: hop_s=0.15 is longer than a chunk (0.1 s): the audio from each chunk's end to the next "
                     "start is not used (0.100 s in all)",
                     "x.wav: its last 0.050 s do not fill a chunk; not used"]  # fmt: skip
    _, _, notes = cut_chunks(mono, spec, hop_s=1.0, name="x.wav")  # one chunk; nothing past the next start
    assert notes == ["x.wav: hop_s=1 is longer than a chunk (0.1 s): the audio from each chunk's end to the next "
                     "start is not used (0.250 s in all)"]


def test_counts_and_frames_that_cannot_be_used_are_refused_by_name(models):
    s2i, judge, i2s = (cmav.load(models[k]) for k in ("s2i", "image_judge", "i2s"))
    frame = torch.zeros(3, SIZE, SIZE)
    with pytest.raises(ValueError, match=r"judge\.ckpt: no frames given \(an empty tensor of shape \(0, 3, 32, 32\)\)"):
        cmav.embed_image(judge, torch.zeros(0, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"n must be a whole number >= 1, got 2\.0"):
        cmav.sound_to_image(s2i, np.zeros(22050, np.float32), n=2.0, sample_rate=44100)
    with pytest.raises(ValueError, match=r"n must be a whole number >= 1, got 2\.0"):
        cmav.image_to_sound(i2s, frame, n=2.0)
    for iters in (0, -3, 1.5):
        with pytest.raises(ValueError, match=rf"griffin_lim_iters must be a whole number >= 1, got {iters}"):
            cmav.image_to_sound(i2s, frame, griffin_lim_iters=iters)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, got 0"):
        cmav.embed_image(judge, frame, batch_size=0)


def test_image_to_sound_runs_the_generator_in_batches(models):
    i2s = cmav.load(models["i2s"])
    frames = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    whole, rate = cmav.image_to_sound(i2s, frames, n=2, griffin_lim_iters=2)
    parts, _ = cmav.image_to_sound(i2s, frames, n=2, griffin_lim_iters=2, batch_size=4)
    assert parts.shape == whole.shape == (3, 2, i2s.chunk.samples_at(rate))
    # float round-off of another batch size (at the spectrogram's level: relative to the loudest sample)
    torch.testing.assert_close(parts, whole, atol=1e-2 * float(whole.abs().max()), rtol=0)
    normalised, _ = cmav.image_to_sound(i2s, frames, n=2, griffin_lim_iters=2, batch_size=4, normalise=True)
    assert torch.allclose(normalised.abs().amax(-1), torch.ones(3, 2))  # asked for: every clip peak-normalised to 1
    doc = " ".join(cmav.image_to_sound.__doc__.split())
    assert "peak" in doc and "batch_size" in doc and "``normalise=True``" in doc
    for fn, args in ((cmav.sound_to_image, ("sample_rate", "hop_s", "max_chunks", "batch_size")),
                     (cmav.classify_audio, ("sample_rate", "hop_s", "batch_size", "start_s"))):  # fmt: skip
        assert all(f"``{a}``" in fn.__doc__ for a in args), fn.__name__
    assert cmav.Model.device.__doc__ and cmav.Model.class_names.__doc__


def test_a_float_sound_file_beyond_full_scale_is_noted_by_name(models, tmp_path):
    model = cmav.load(models["audio_classifier"])
    loud = tmp_path / "loud.wav"
    samples = 0.5 * np.sin(np.arange(22050, dtype=np.float32) / 10.0)
    samples[100] = 3.0  # a float file may hold what integer PCM cannot
    sf.write(str(loud), samples, 44100, subtype="FLOAT")
    with pytest.warns(DataWarning, match=r"loud\.wav: float samples reach 3, beyond full scale \(1\.0\); used as given"):
        cmav.embed_audio(model, loud)


# ---------------------------------------------------------------- review fixes: sampler settings, sound level


@pytest.fixture(scope="module")
def token_model(models, tmp_path_factory) -> cmav.Model:
    """An audio-token model on the fixture's sound classifier and an untrained tiny pixel-diffusion
    pipeline: its sampler runs, its images mean nothing."""
    from cmav.diffusion import PixelDiffusionConfig, build_pixel_diffusion, label_words
    from cmav.diffusion.audio_token import DEFAULT_TEMPLATE
    from cmav.evaluation.generate import front_end_of
    from cmav.tasks.audio_token import AudioTokenTask
    from cmav.tasks.classifier import load_classifier

    names = load_classifier(models["audio_classifier"]).hparams.class_names
    tiny = PixelDiffusionConfig(image_size=16, block_out_channels=(8, 16), layers_per_block=1, attention_heads=2,
                                norm_num_groups=8, text_width=16, text_layers=2, text_heads=2, max_length=10)  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pipeline") / "pipeline"
    build_pixel_diffusion([DEFAULT_TEMPLATE.replace("<audio>", label_words(c)) for c in names], tiny).save(folder)
    task = AudioTokenTask(pipeline=str(folder), audio_encoder_ckpt=str(models["audio_classifier"]), image_size=SIZE)
    features, chunk = front_end_of(models["audio_classifier"])
    return cmav.Model(kind="audio_token", task=task.eval(), features=features, chunk=chunk, path=Path("token.ckpt"))


def test_diffusion_settings_are_checked_by_name_before_sampling(token_model, data):
    """steps 2.5 failed with an IndexError deep in diffusers, guidance_scale '3' with a TypeError, and
    guidance_scale NaN gave all-NaN images without a word."""
    wav = _val_wavs(data)[0]
    images = cmav.sound_to_image(token_model, wav, diffusion={"steps": np.int64(1), "guidance_scale": 2, "scheduler": "ddpm"})
    assert images.shape[:2] == (1, 1) and torch.isfinite(images).all()
    for bad, why in (({"steps": 2.5}, r"diffusion\['steps'\] must be a whole number >= 1, got 2\.5"),
                     ({"steps": 0}, r"diffusion\['steps'\] must be a whole number >= 1, got 0"),
                     ({"steps": True}, r"diffusion\['steps'\] must be a whole number >= 1, got True"),
                     ({"guidance_scale": "3"}, r"diffusion\['guidance_scale'\] must be a finite real number, got '3'"),
                     ({"guidance_scale": float("nan")}, r"diffusion\['guidance_scale'\] must be a finite real number, got nan"),
                     ({"guidance_scale": float("inf")}, r"diffusion\['guidance_scale'\] must be a finite real number, got inf"),
                     ({"guidance_scale": False}, r"diffusion\['guidance_scale'\] must be a finite real number, got False"),
                     ({"scheduler": "DDIM"}, r"diffusion\['scheduler'\] must be one of \['ddim', 'ddpm', 'dpm', 'euler', "
                                             r"'pndm'\], got 'DDIM'"),
                     ({"scheduler": ["ddim"]}, r"diffusion\['scheduler'\] must be one of .*, got \['ddim'\]")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"^token\.ckpt: {why}$"):
            cmav.sound_to_image(token_model, wav, diffusion={"steps": 1, **bad})
