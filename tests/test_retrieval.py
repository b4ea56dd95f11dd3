"""Retrieval and grounding: InfoNCE, dense aggregation, metrics, masks, index/search, evaluation (tiny, CPU)."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score

from cmav.cli.main import main as cmav_main
from cmav.data import AudioVisualDataModule
from cmav.data.image_io import load_frame
from cmav.data.instruments import INSTRUMENTS
from cmav.data.masks import MasksMissing, load_mask, load_split_masks
from cmav.metrics.localization import (
    average_precision,
    centre_prior,
    localization_report,
    per_image_iou,
    pointing_hits,
)
from cmav.metrics.retrieval import chance_levels, cross_modal_report, retrieval_metrics
from cmav.models import AudioEncoder, ImageEncoder
from cmav.models.retrieval import (
    DenseAVModel,
    GlobalAVModel,
    aggregate_volume,
    dense_scores,
    disentanglement_loss,
    run_blocks,
    similarity_volume,
    symmetric_info_nce,
    volume_to_location_map,
)
from cmav.retrieval.index import EmbeddingIndex, exact_topk, faiss_available, faiss_topk
from cmav.retrieval.search import search
from cmav.tasks.retrieval import RetrievalTask, load_retrieval

from fixtures import assert_holds_a_weight_average, make_unique_pairs

REPO = Path(__file__).resolve().parents[1]
TINY_AUDIO = {"n_blocks": 3, "base_channels": 8, "dropout": 0.0}
TINY_IMAGE = {"n_blocks": 3, "base_channels": 8, "dropout": 0.0}
SIZE = 32

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*localisation metrics skipped.*"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread avoids OpenMP wait-spinning on a busy second core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- InfoNCE and dense aggregation


def test_info_nce_is_lower_on_matched_than_on_shuffled_pairs():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(16, 32, generator=g), dim=1)
    v = F.normalize(a + 0.3 * torch.randn(16, 32, generator=g), dim=1)
    shuffled = v[torch.roll(torch.arange(16), 1)]
    matched_loss = symmetric_info_nce(10 * a @ v.T, 10 * v @ a.T)
    shuffled_loss = symmetric_info_nce(10 * a @ shuffled.T, 10 * shuffled @ a.T)
    assert matched_loss < shuffled_loss - 1.0

    # the task's loss (dense model, its own temperature and aggregation) says the same
    task = RetrievalTask(architecture="dense", input_shape=[1, 128, 44], image_size=SIZE, audio_encoder=TINY_AUDIO,
                         image_encoder=TINY_IMAGE, dense={"n_heads": 2})  # fmt: skip
    at = F.normalize(torch.randn(8, 2, 3, 16, generator=g), dim=-1)
    noise = 0.2 * torch.randn(8, 2, 5, 16, generator=g)
    vt = F.normalize(at.mean(2, keepdim=True).expand(-1, -1, 5, -1) + noise, dim=-1)
    matched, _ = task.contrastive_loss(at, vt)
    shuffled_t, _ = task.contrastive_loss(at, vt[torch.roll(torch.arange(8), 1)])
    assert matched < shuffled_t


def test_gathered_info_nce_over_processes_equals_the_full_batch_loss():
    """What DDP does: each rank scores its B queries against all W*B keys, positive at rank*B + i."""
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 8, generator=g)
    full = symmetric_info_nce(s, s.T)
    per_rank = [symmetric_info_nce(s[r * 4 : (r + 1) * 4], s.T[r * 4 : (r + 1) * 4], offset=r * 4) for r in (0, 1)]
    assert torch.allclose(sum(per_rank) / 2, full)


def test_ignored_negatives_leave_the_positive_and_drop_same_class_keys():
    task = RetrievalTask(input_shape=[1, 128, 44], image_size=SIZE, audio_encoder=TINY_AUDIO, image_encoder=TINY_IMAGE,
                         ignore_negatives="same_class")  # fmt: skip
    a = F.normalize(torch.randn(4, 8), dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    # with the same-class partner ignored, each row competes only with the 2 other-class keys
    loss, _ = task.contrastive_loss(a, a, labels, torch.zeros(4, dtype=torch.long))
    scale = task.logit_scale
    s = scale * (a @ a.T)
    keep = labels.view(-1, 1) != labels.view(1, -1)
    keep |= torch.eye(4, dtype=torch.bool)
    manual = F.cross_entropy(s.masked_fill(~keep, float("-inf")), torch.arange(4))
    assert torch.allclose(loss, manual, atol=1e-5)
    loss.backward()  # masked logits must not poison the temperature's gradient
    assert torch.isfinite(task.log_logit_scale.grad)


def test_temperature_is_learnable_and_clamped():
    task = RetrievalTask(input_shape=[1, 128, 44], image_size=SIZE, audio_encoder=TINY_AUDIO, image_encoder=TINY_IMAGE,
                         temperature={"init": 0.07, "min": 0.05})  # fmt: skip
    assert task.log_logit_scale.requires_grad
    assert torch.isclose(task.logit_scale, torch.tensor(1 / 0.07))
    with torch.no_grad():
        task.log_logit_scale.fill_(10.0)
    assert torch.isclose(task.logit_scale, torch.tensor(1 / 0.05))
    # a step that took the parameter past the bound is undone after it, so the temperature can still
    # come back up: a clamp in the forward pass alone has no gradient there and held it at the minimum
    task.on_train_batch_end(None, None, 0)
    assert torch.isclose(task.log_logit_scale, torch.tensor(math.log(1 / 0.05)))
    task.logit_scale.backward()
    assert task.log_logit_scale.grad.item() == pytest.approx(1 / 0.05)


def test_aggregation_of_a_hand_built_similarity_volume():
    # (Na=1, Ni=1, K=2 heads, T=2 audio tokens, L=3 image locations)
    vol = torch.tensor([[[[[0.1, 0.5, -0.2], [0.3, 0.0, 0.2]],
                          [[0.4, -0.1, 0.0], [0.9, 0.1, 0.6]]]]])  # fmt: skip
    # max over heads and locations: t0 -> 0.5, t1 -> 0.9; mean over time -> 0.7
    assert torch.allclose(aggregate_volume(vol), torch.tensor([[0.7]]))
    # per location: max over heads [0.4, 0.5, 0.0] and [0.9, 0.1, 0.6], mean over time
    assert torch.allclose(volume_to_location_map(vol), torch.tensor([[[0.65, 0.3, 0.3]]]))
    # mean |s1 * s2| = (0.04 + 0.05 + 0 + 0.27 + 0 + 0.12) / 6
    assert torch.isclose(disentanglement_loss(vol), torch.tensor(0.48 / 6))
    assert disentanglement_loss(vol[:, :, :1]) == 0

    # the volume itself from hand-made tokens: audio (1, K=1, T=2, D=2), image (1, K=1, L=3, D=2)
    audio = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    image = torch.tensor([[[[0.5, 0.5], [1.0, 0.0], [0.0, -1.0]]]])
    v = similarity_volume(audio, image)
    assert torch.allclose(v, torch.tensor([[[[[0.5, 1.0, 0.0], [0.5, 0.0, -1.0]]]]]))
    assert torch.allclose(aggregate_volume(v), torch.tensor([[0.75]]))  # mean(1.0, 0.5)


def test_chunked_dense_scores_equal_the_full_volume():
    g = torch.Generator().manual_seed(2)
    a = F.normalize(torch.randn(7, 2, 3, 8, generator=g), dim=-1)
    v = F.normalize(torch.randn(5, 2, 4, 8, generator=g), dim=-1)
    full = aggregate_volume(similarity_volume(a, v))
    assert torch.allclose(dense_scores(a, v, max_elements=50), full)
    assert full.shape == (7, 5)


@pytest.mark.parametrize("size", [32, 64])
def test_heatmap_has_the_frames_shape(size):
    lms, frames = torch.randn(3, 1, 128, 44), torch.rand(3, 3, size, size) * 2 - 1
    for model in (
        GlobalAVModel(AudioEncoder(n_blocks=3, base_channels=8), ImageEncoder((3, size, size), base_channels=8)),
        DenseAVModel(AudioEncoder(n_blocks=3, base_channels=8), ImageEncoder((3, size, size), base_channels=8),
                     n_heads=2, audio_freq="keep", image_block=-2),
    ):  # fmt: skip
        model.eval()
        heat = model.heatmap(lms, frames)
        assert heat.shape == (3, size, size) and torch.isfinite(heat).all()
        assert model.location_map(lms, frames).shape == (3, *model.map_shape)
        # frames of twice the size: the encoders pool globally, so they run, and the maps follow the
        # frames (they used to be cut into 4x as many maps of the built-for grid)
        big = torch.rand(3, 3, 2 * size, 2 * size) * 2 - 1
        h, w = model.map_shape
        assert model.location_map(lms, big).shape == (3, 2 * h, 2 * w)
        assert model.heatmap(lms, big).shape == (3, 2 * size, 2 * size)


# ---------------------------------------------------------------- retrieval metrics


def test_recall_mrr_map_median_rank_on_a_toy_ranking():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.2],
                           [0.1, 0.2, 0.3, 0.4, 0.5]])  # fmt: skip
    relevant = torch.tensor([[0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 1]], dtype=torch.bool)  # fmt: skip
    m = retrieval_metrics(scores, relevant, ks=(1, 2, 5))
    # query 0: ranking 0, 2, 3, 4, 1 -> relevant at ranks 2 and 3; query 1: relevant at rank 1
    assert m["R@1"] == 0.5 and m["R@2"] == 1.0 and m["R@5"] == 1.0
    assert m["median_rank"] == 1.5
    assert m["MRR"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["mAP"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)
    assert m["n_queries"] == 2


def test_ties_are_broken_against_the_model():
    m = retrieval_metrics(torch.zeros(1, 4), torch.tensor([[True, False, False, False]]))
    assert m["R@1"] == 0.0 and m["median_rank"] == 4.0
    # float64 scores are not rounded to float32 first: 1 + 1e-9 beats 1, it is no tie
    m = retrieval_metrics(torch.tensor([[1 + 1e-9, 1.0]], dtype=torch.float64), torch.tensor([[True, False]]))
    assert m["R@1"] == 1.0


def test_the_chance_median_rank_of_queries_with_different_relevant_counts_is_their_mixtures():
    """One query class of 12 items and four of 2 in a gallery of 20: a random ranking's first relevant
    rank over all queries has its median at 2 (the median of the per-query medians said 1)."""
    n, counts = 20, [12] * 12 + [2] * 8
    g = torch.Generator().manual_seed(0)
    firsts = []
    for _ in range(400):
        for r in counts:
            order = torch.randperm(n, generator=g)
            firsts.append(int((order < r).float().argmax()) + 1)  # items 0 .. r-1 are the relevant ones
    simulated = float(torch.tensor(firsts, dtype=torch.float64).median())
    assert chance_levels(n, counts)["median_rank"] == simulated == 2.0


def test_dense_model_reads_a_waveform_encoder_through_its_stem():
    """The dense towers' block maps are the encoder's own: on the raw-waveform front end (a strided
    conv stem before the blocks) they equal what the encoder computes, and the model runs."""
    torch.manual_seed(0)
    audio = AudioEncoder(input_shape=(1, 1, 4000), n_blocks=3, base_channels=8).eval()
    model = DenseAVModel(audio, ImageEncoder(input_shape=(3, SIZE, SIZE), n_blocks=3, base_channels=8), 16, 32).eval()
    x = torch.randn(2, 1, 1, 4000)
    with torch.no_grad():
        tokens = model.encode_audio(x)
        assert torch.isfinite(tokens).all() and tokens.shape[0] == 2
        torch.testing.assert_close(run_blocks(audio, x, -1), audio.feature_map(x))


def test_chance_levels_equal_the_mean_over_every_ranking():
    n, r = 5, 2
    relevant = torch.tensor([[True] * r + [False] * (n - r)])
    sums: dict[str, float] = {}
    perms = list(itertools.permutations(range(n)))
    for p in perms:
        m = retrieval_metrics(torch.tensor([p], dtype=torch.float32), relevant, ks=(1, 3))
        for key in ("R@1", "R@3", "MRR", "mAP"):
            sums[key] = sums.get(key, 0.0) + m[key] / len(perms)
    chance = chance_levels(n, [r], ks=(1, 3))
    for key, value in sums.items():
        assert chance[key] == pytest.approx(value, abs=1e-6), key
    # the median first rank: halfway when exactly half the rankings put it at or before k, as a sample median
    assert chance_levels(4, [1])["median_rank"] == 2.5 and chance_levels(5, [1])["median_rank"] == 3.0
    assert chance_levels(5, [2])["median_rank"] == 2.0  # P(first <= 2) = 0.7


def test_cross_modal_report_of_a_perfect_score_matrix():
    labels = torch.tensor([0, 0, 1, 1, 2])
    r = cross_modal_report(torch.eye(5) + 0.5 * (labels.view(-1, 1) == labels.view(1, -1)).float(), labels)
    for direction in ("a2i", "i2a"):
        for rel in ("class", "instance"):
            assert r[direction][rel]["R@1"] == 1.0 and r[direction][rel]["mAP"] == 1.0
    assert r["a2i"]["instance"]["chance"]["R@1"] == pytest.approx(1 / 5)


# ---------------------------------------------------------------- localisation metrics


def test_localisation_metrics_on_hand_made_maps():
    heat = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    mask = torch.tensor([[True, False], [False, True]])
    # ranking 0.9 (in), 0.8 (out), 0.2 (in), 0.1 (out): AP = (1/1 + 2/3) / 2
    assert average_precision(heat, mask) == pytest.approx((1 + 2 / 3) / 2)
    assert pointing_hits(heat[None], mask[None]).item() == 1.0
    # normalised: 1, 0, 0.875, 0.125 -> {(0,0), (1,0)} vs mask {(0,0), (1,1)}: IoU 1/3
    assert per_image_iou(heat[None], mask[None]).item() == pytest.approx(1 / 3)
    # one (H, W) map is one map: normalised 1, 0, 0.25, 0.125 -> {(0,0)}: IoU 1/2 (row by row: 1/3)
    low_row = torch.tensor([[0.9, 0.1], [0.3, 0.2]])
    assert per_image_iou(low_row, mask).item() == pytest.approx(1 / 2)
    assert per_image_iou(low_row[None], mask[None]).item() == pytest.approx(1 / 2)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        h = torch.randint(0, 4, (6, 6), generator=g).float()  # ties on purpose
        m = torch.rand(6, 6, generator=g) > 0.6
        expected = average_precision_score(m.flatten().numpy(), h.flatten().numpy())
        assert average_precision(h, m) == pytest.approx(expected)
    r = localization_report(torch.stack([heat, heat]), torch.stack([mask, torch.zeros_like(mask)]))
    assert r["n"] == 1 and r["n_empty_masks"] == 1
    prior = centre_prior(9)
    assert prior.shape == (9, 9) and prior.argmax() == 40  # the centre pixel


# ---------------------------------------------------------------- masks on disk


def test_mask_gets_the_same_crop_and_resize_as_its_frame(tmp_path):
    w, h = 120, 80  # landscape like real frames: the central 80x80 square is kept
    frame = np.full((h, w, 3), 128, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[20:60, 50:70] = True
    frame[mask] = (255, 0, 0)
    Image.fromarray(frame).save(tmp_path / "f.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    f = load_frame(tmp_path / "f.png", 32)
    m = load_mask(tmp_path / "m.png", 32)
    red = (f[..., 0] > 190) & (f[..., 1] < 80)
    assert m.shape == (32, 32) and m.sum() > 0
    assert (red & m).sum() / (red | m).sum() > 0.85


def test_missing_masks_are_reported_not_crashed(tmp_path):
    with pytest.raises(MasksMissing, match="real Sub-URMP has none"):
        load_split_masks(tmp_path, "validation", ["violin01_500"], list(INSTRUMENTS), [12], 32)
    (tmp_path / "mask" / "validation").mkdir(parents=True)
    with pytest.raises(MasksMissing, match="1 of 1 pairs have no mask"):
        load_split_masks(tmp_path, "validation", ["violin01_500"], list(INSTRUMENTS), [12], 32)


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="needs fluidsynth + fluid-soundfont-gm")
def test_standin_builder_writes_masks_and_adds_them_to_older_builds(tmp_path):
    from cmav.standin.build import TrackJob, build_track
    from cmav.standin.render import DEFAULT_SOUNDFONT

    if not DEFAULT_SOUNDFONT.is_file():
        pytest.skip("needs fluid-soundfont-gm")
    job = TrackJob(str(tmp_path), "validation", "violin", 6, 2, 0, str(DEFAULT_SOUNDFONT), 64, 90)
    build_track(job)
    masks = sorted((tmp_path / "mask/validation/violin").glob("*.png"))
    assert [p.stem for p in masks] == [p.stem for p in sorted((tmp_path / "img/validation/violin").glob("*.jpg"))]
    with Image.open(masks[0]) as img:
        assert img.mode == "1" and img.size == (64, 64)
        m = np.asarray(img.convert("L")) > 0
    assert 0 < m.mean() < 0.5  # an instrument, not the whole frame
    first = [p.read_bytes() for p in masks]

    # a track finished by the older builder (no masks, marker without "masks"): masks only
    for p in masks:
        p.unlink()
    job.marker.write_text(json.dumps({"chunks": 2}))
    others = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.suffix in (".wav", ".jpg")}
    build_track(job)
    assert [p.read_bytes() for p in sorted((tmp_path / "mask/validation/violin").glob("*.png"))] == first
    assert {p: p.stat().st_mtime_ns for p in others} == others
    assert json.loads(job.marker.read_text())["masks"] is True


# ---------------------------------------------------------------- tiny trained models


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A global and a dense model trained on the unique-pairs fixture, and their checkpoints."""
    base = tmp_path_factory.mktemp("retrieval")
    root = make_unique_pairs(base / "data")
    out = {"root": root, "base": base}
    for arch in ("global", "dense"):
        L.seed_everything(0, verbose=False)
        dm = AudioVisualDataModule(str(root), image_size=SIZE, batch_size=13, cache_dir=str(base / "cache"),
                                   progress=False)  # fmt: skip
        task = RetrievalTask(architecture=arch, image_size=SIZE, audio_encoder=TINY_AUDIO, image_encoder=TINY_IMAGE,
                             head={"embed_dim": 32, "hidden_dim": 64}, optimizer={"lr": 3e-3, "betas": (0.9, 0.999)},
                             log_heatmaps=False)  # fmt: skip
        trainer = L.Trainer(accelerator="cpu", max_epochs=150, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            check_val_every_n_epoch=150)  # fmt: skip
        trainer.fit(task, dm)
        path = base / f"{arch}.ckpt"
        trainer.save_checkpoint(path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        out[arch] = {"task": task.eval(), "ckpt": path, "metrics": metrics}
    return out


def test_tiny_models_learn_the_pairs(trained):
    for arch in ("global", "dense"):
        m = trained[arch]["metrics"]
        assert m["val/a2i_class_R@1"] == 1.0 and m["val/i2a_class_R@1"] == 1.0, (arch, m)
        assert "val/loc_ap" in m  # the fixture has masks: localisation is scored during validation


def test_checkpoint_rebuilds_the_model_without_data(trained):
    task = trained["dense"]["task"]
    loaded = load_retrieval(trained["dense"]["ckpt"])
    assert loaded.kind == "dense" and loaded.trained_encoder_mode == "scratch"
    lms, frames = torch.randn(2, 1, 128, 44), torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    assert torch.allclose(loaded.embed(lms, frames)[0], task.embed(lms, frames)[0], atol=1e-6)


def test_retrieval_trains_under_lightnings_weight_averaging(trained, tmp_path):
    """EMAWeightAveraging copies the module before the task's ``setup``: the towers are built in
    ``configure_model``, so the checkpoint holds the average of every layer."""
    from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint

    L.seed_everything(0, verbose=False)
    dm = AudioVisualDataModule(str(trained["root"]), image_size=SIZE, batch_size=13,
                               cache_dir=str(trained["base"] / "cache"), progress=False)  # fmt: skip
    task = RetrievalTask(architecture="global", image_size=SIZE, audio_encoder=TINY_AUDIO, image_encoder=TINY_IMAGE,
                         head={"embed_dim": 32, "hidden_dim": 64}, log_heatmaps=False)  # fmt: skip
    saver = ModelCheckpoint(dirpath=tmp_path, filename="ema", save_top_k=1)
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        callbacks=[EMAWeightAveraging(decay=0.5), saver])  # fmt: skip
    trainer.fit(task, dm)
    assert_holds_a_weight_average(tmp_path / "ema.ckpt", "net.", load_retrieval)


def test_retrieval_refuses_stochastic_weight_averaging(trained):
    """StochasticWeightAveraging copies the module before the towers exist (configure_model): refused."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    dm = AudioVisualDataModule(str(trained["root"]), image_size=SIZE, batch_size=13,
                               cache_dir=str(trained["base"] / "cache"), progress=False)  # fmt: skip
    task = RetrievalTask(architecture="global", image_size=SIZE, audio_encoder=TINY_AUDIO, image_encoder=TINY_IMAGE,
                         head={"embed_dim": 32, "hidden_dim": 64}, log_heatmaps=False)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        callbacks=[StochasticWeightAveraging(swa_lrs=1e-3)])  # fmt: skip
    with pytest.raises(ValueError, match="RetrievalTask.*StochasticWeightAveraging.*average nothing"):
        trainer.fit(task, dm)


def test_search_returns_the_paired_item_first(trained, tmp_path, capsys):
    root = trained["root"]
    index_path = tmp_path / "index.pt"
    assert cmav_main(["index", "build", "--ckpt", str(trained["global"]["ckpt"]), str(root), "-o", str(index_path),
                      "--cache-dir", str(trained["base"] / "cache")]) == 0  # fmt: skip
    index = EmbeddingIndex.load(index_path)
    assert len(index) == 13 and index.kind == "global" and index.audio.dtype == torch.float16
    for name in INSTRUMENTS:
        stem = f"{name}01_500"
        out = search(index_path, audio=root / "chunk/validation" / name / f"{stem}.wav", k=3, output=None)
        assert out.hits[0].stem == stem, (stem, [(h.stem, h.score) for h in out.hits])
        assert out.hits[0].score >= out.hits[1].score
    capsys.readouterr()
    frame = root / "img/validation/violin/violin01_500.jpg"
    sheet = tmp_path / "sheet.png"
    assert cmav_main(["search", "--index", str(index_path), "--image", str(frame), "-k", "4", "-o", str(sheet)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[2].split()[3] == "violin01_500"  # rank 1 of the printed table
    assert sheet.is_file() and Image.open(sheet).size[0] > 4 * 128

    # an audio query's sheet has a second row of heatmaps; the dense index searches exactly too
    dense_index = tmp_path / "dense.pt"
    assert cmav_main(["index", "build", "--ckpt", str(trained["dense"]["ckpt"]), str(root), "-o", str(dense_index),
                      "--cache-dir", str(trained["base"] / "cache")]) == 0  # fmt: skip
    capsys.readouterr()
    wav = root / "chunk/validation/tuba/tuba01_500.wav"
    assert cmav_main(["search", "--index", str(dense_index), "--audio", str(wav), "-k", "2", "-o", str(sheet)]) == 0
    assert capsys.readouterr().out.splitlines()[2].split()[3] == "tuba01_500"


def test_search_refuses_a_checkpoint_that_is_not_the_one_the_index_was_built_with(trained, tmp_path):
    root = trained["root"]
    ckpt = tmp_path / "last.ckpt"
    shutil.copy(trained["global"]["ckpt"], ckpt)
    index_path = tmp_path / "index.pt"
    assert cmav_main(["index", "build", "--ckpt", str(ckpt), str(root), "-o", str(index_path),
                      "--cache-dir", str(trained["base"] / "cache")]) == 0  # fmt: skip
    wav = root / "chunk/validation/tuba/tuba01_500.wav"
    assert search(index_path, audio=wav, k=2, output=None).notes == []
    # a rerun overwrites last.ckpt (the YAMLs keep no versions): the index's embeddings are the old weights'
    blob = torch.load(ckpt, weights_only=False)
    blob["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    torch.save(blob, ckpt)
    with pytest.raises(ValueError, match=r"last\.ckpt is not the checkpoint the index was built with"):
        search(index_path, audio=wav, k=2, output=None)
    # an index from before the hash was recorded is searched, with a note saying it cannot be checked
    old = EmbeddingIndex.load(index_path)
    old.info.pop("ckpt_sha256")
    old.save(tmp_path / "old.pt")
    assert "records no checkpoint hash" in search(tmp_path / "old.pt", audio=wav, k=2, output=None).notes[0]


def test_evaluation_refuses_a_model_of_another_front_end_than_the_data(trained, tmp_path):
    from cmav.evaluation.retrieval import evaluate_retrieval

    ckpt = str(trained["global"]["ckpt"])
    for features, message in (({"n_mels": 64}, r"takes audio features \(1, 128, 44\), the data's are \(1, 64, 44\)"),
                              ({"f_min": 30.0}, r"trained on another front end than the data's \(f_min")):  # fmt: skip
        dm = AudioVisualDataModule(str(trained["root"]), image_size=SIZE, features=features, progress=False,
                                   cache_dir=str(trained["base"] / "cache"))  # fmt: skip
        with pytest.raises(ValueError, match=message):
            evaluate_retrieval([ckpt], datamodule=dm, out_dir=None)


def test_exact_topk_agrees_with_faiss_and_full_sort():
    g = torch.Generator().manual_seed(4)
    gallery = F.normalize(torch.randn(300, 16, generator=g), dim=1)
    query = F.normalize(torch.randn(5, 16, generator=g), dim=1)
    scores, idx = exact_topk("global", query, gallery, 7, chunk=64)  # several chunks
    full = torch.topk(query @ gallery.T, 7, dim=1)
    assert torch.equal(idx, full.indices) and torch.allclose(scores, full.values)
    small, small_idx = exact_topk("global", query, gallery, 7, chunk=5)  # chunks smaller than k
    assert torch.equal(small_idx, full.indices) and torch.allclose(small, full.values)
    if faiss_available():
        f_scores, f_idx = faiss_topk(query, gallery, 7, "Flat")
        assert torch.equal(f_idx, idx) and torch.allclose(f_scores, scores, atol=1e-5)



@pytest.mark.parametrize("chunk", [3, 4, 65536])
def test_exact_topk_breaks_ties_by_gallery_position(chunk):
    # float16 indices round close scores into ties: the hits must not depend on the chunking
    gallery = torch.cat([torch.zeros(2, 4), torch.ones(10, 4)]).half()
    gallery[:2, 0] = 1.0  # two lower-scoring items first
    scores, idx = exact_topk("global", torch.ones(1, 4), gallery, 5, chunk=chunk)
    assert idx.tolist() == [[2, 3, 4, 5, 6]] and scores.tolist() == [[4.0] * 5]
    _, idx = exact_topk("global", torch.ones(1, 4), gallery, 12, chunk=chunk)
    assert idx.tolist() == [[*range(2, 12), 0, 1]]

def test_evaluation_tables_heatmaps_and_targets(trained, tmp_path):
    from cmav.evaluation.retrieval import evaluate_retrieval

    ckpts = [str(trained["dense"]["ckpt"]), str(trained["global"]["ckpt"])]
    r = evaluate_retrieval(ckpts, root=trained["root"], out_dir=tmp_path, cache_dir=str(trained["base"] / "cache"))
    names = list(r["models"])
    assert [r["models"][n]["kind"] for n in names] == ["dense", "global"]
    for n in names:
        assert r["models"][n]["retrieval"]["a2i"]["class"]["R@1"] == 1.0
        loc = r["models"][n]["localization"]
        assert 0.0 <= loc["ap"] <= 1.0 and loc["n"] == 13
    assert set(r["localization_baselines"]) == {"centre prior", "mean train mask"}
    assert any("localisation AP > centre prior" in k for k in r["targets"])
    report = (tmp_path / "report.md").read_text()
    assert "| audio→image | class |" in report and "centre prior" in report
    assert json.loads((tmp_path / "metrics.json").read_text())["n"] == 13
    assert Image.open(tmp_path / "heatmaps.png").size[1] > 13 * 128
    assert len(list((tmp_path / "heatmaps").glob("*.png"))) == 26


def test_evaluation_without_masks_skips_localisation_with_a_note(trained, tmp_path):
    from cmav.evaluation.retrieval import evaluate_retrieval

    root = make_unique_pairs(tmp_path / "nomask", with_masks=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = evaluate_retrieval([str(trained["global"]["ckpt"])], root=root, out_dir=tmp_path / "out",
                               cache_dir=str(tmp_path / "cache"))  # fmt: skip
    m = next(iter(r["models"].values()))
    assert m["localization"] is None and "no instrument masks" in r["localization_note"]
    assert m["retrieval"]["a2i"]["class"]["R@1"] == 1.0
    assert "no instrument masks" in (tmp_path / "out" / "report.md").read_text()


# ---------------------------------------------------------------- configs, CLI, DDP


@pytest.mark.parametrize("name", ["retrieval_global", "retrieval_dense"])
def test_experiment_configs_parse(name, capsys, monkeypatch):
    import yaml

    monkeypatch.setattr(sys, "argv", ["cmav"])
    with pytest.raises(SystemExit) as exc:
        cmav_main(["fit", "--config", str(REPO / "experiments" / f"{name}.yaml"), "--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    args = printed["model"]["init_args"]
    assert args["architecture"] == name.split("_")[1] and printed["data"]["root"] == "data/default"
    # the YAML spells out the option groups, and they are the Python defaults
    import inspect

    from cmav.tasks.common import plain

    raw = yaml.safe_load((REPO / "experiments" / f"{name}.yaml").read_text())["model"]["init_args"]
    defaults = inspect.signature(RetrievalTask).parameters
    groups = ["audio_encoder", "image_encoder", "head", "temperature", "optimizer", "augment", "lr_schedule",
              "ignore_negatives", "colour_scramble", "finetune_lr_scale", "encoder_mode"]  # fmt: skip
    for group in groups + (["dense"] if name.endswith("dense") else []):
        assert raw[group] == plain(defaults[group].default), group


@pytest.mark.parametrize("name", ["retrieval_global", "retrieval_dense"])
def test_pretrained_overlay_switches_the_encoders_and_keeps_the_architecture(name, capsys, monkeypatch):
    import yaml

    monkeypatch.setattr(sys, "argv", ["cmav"])
    with pytest.raises(SystemExit):
        cmav_main(["fit", "--config", str(REPO / "experiments" / f"{name}.yaml"),
                   "--config", str(REPO / "experiments" / "retrieval_pretrained.yaml"), "--print_config"])  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)
    args = printed["model"]["init_args"]
    assert args["architecture"] == name.split("_")[1]
    assert (args["encoder_mode"], args["image_encoder_mode"]) == ("frozen", "finetune")
    assert args["audio_encoder_ckpt"] == "runs/audio_classifier/checkpoints/last.ckpt"
    assert args["image_encoder_ckpt"] == "runs/image_encoder/checkpoints/last.ckpt"
    assert args["ignore_negatives"] == "same_class" and args["colour_scramble"] is True
    assert printed["trainer"]["default_root_dir"] == f"runs/{name}"  # the base YAML's output folders stay


def test_ddp_gathers_negatives_from_both_processes_with_the_gradients_of_one_process(trained, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "ddp_retrieval_script.py"), str(trained["root"]),
         str(trained["base"] / "cache"), str(tmp_path)],
        capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [(tmp_path / f"rank{r}.txt").read_text().split() for r in (0, 1)]
    assert lines[0][0] == lines[1][0]  # same weights: gradients were all-reduced
    # each rank's 4 queries were scored against the 8 keys of both ranks, positives at rank*4 + i
    assert lines[0][1:3] == ["4x8", "offset0"] and lines[1][1:3] == ["4x8", "offset4"]
    # and the synced gradients are one process's on the 8 pairs (gloo once scrambled the dense
    # model's image-side gradients through the gather: equal on both ranks, but wrong)
    assert float(lines[0][3]) < 1e-3 and float(lines[1][3]) < 1e-3, lines
    # val/loss does not depend on the number of processes: one process validating the same weights
    # gets it too (gathered keys once gave each query twice the negatives, and the sampler's padding)
    dm = AudioVisualDataModule(str(trained["root"]), image_size=32, batch_size=4, cache_dir=str(trained["base"] / "cache"),
                               progress=False)  # fmt: skip
    single = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                       default_root_dir=tmp_path)  # fmt: skip
    expected = single.validate(load_retrieval(tmp_path / "ddp.ckpt"), dm, verbose=False)[0]["val/loss"]
    assert float(lines[0][4]) == pytest.approx(expected, rel=1e-5) and lines[0][4] == lines[1][4], (lines, expected)



@pytest.mark.parametrize("arch", ["global", "dense"])
def test_val_loss_is_the_mean_loss_of_the_validation_batches(trained, tmp_path, arch):
    dm = AudioVisualDataModule(str(trained["root"]), image_size=SIZE, batch_size=4, cache_dir=str(trained["base"] / "cache"),
                               progress=False)  # fmt: skip
    task = load_retrieval(trained[arch]["ckpt"])
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    got = trainer.validate(task, dm, verbose=False)[0]["val/loss"]
    losses, sizes = [], []
    with torch.no_grad():
        for batch in dm.val_dataloader():  # 13 items: 4, 4, 4, 1
            a, v = task.model.encode_audio(batch["audio"]), task.model.encode_image(batch["image"])
            losses.append(float(task.contrastive_loss(a, v, batch["label"], batch.get("track"))[0]))
            sizes.append(a.shape[0])
    assert sizes == [4, 4, 4, 1]
    assert got == pytest.approx(np.average(losses, weights=sizes), rel=1e-5)

def test_audio_encoder_from_the_sound_classifier_frozen_or_finetuned(tmp_path):
    from cmav.tasks import ClassifierTask
    from cmav.tasks.retrieval import ImageEncoderConfig

    clf = ClassifierTask(modality="audio", class_names=list(INSTRUMENTS), input_shape=[1, 128, 44],
                         audio_encoder=TINY_AUDIO)  # fmt: skip
    path = tmp_path / "clf.ckpt"
    torch.save({"hyper_parameters": dict(clf.hparams), "state_dict": clf.state_dict()}, path)
    with pytest.raises(ValueError, match="needs audio_encoder_ckpt"):
        RetrievalTask(encoder_mode="frozen")
    frozen = RetrievalTask(encoder_mode="frozen", audio_encoder_ckpt=str(path), image_size=SIZE,
                           image_encoder=TINY_IMAGE, lr_schedule="constant")  # fmt: skip
    enc = frozen.model.audio_encoder
    assert torch.equal(enc.blocks[0][0].weight, clf.model.blocks[0][0].weight)
    assert not any(p.requires_grad for p in enc.parameters())
    frozen.train()
    assert not enc.training and frozen.model.image_encoder.training  # BatchNorm statistics stay the classifier's
    opt_params = {id(p) for g in frozen.configure_optimizers().param_groups for p in g["params"]}
    assert opt_params.isdisjoint({id(p) for p in enc.parameters()})

    tuned = RetrievalTask(encoder_mode="finetune", audio_encoder_ckpt=str(path), image_size=SIZE,
                          image_encoder=TINY_IMAGE, lr_schedule="constant", finetune_lr_scale=0.1)  # fmt: skip
    assert tuned.model.audio_encoder.training  # a fine-tuned tower trains in train mode, though loaded in eval mode
    groups = tuned.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    trained_audio = {id(p) for p in tuned.model.audio_encoder.parameters() if p.requires_grad}
    assert {id(p) for p in groups[1]["params"]} == trained_audio

    # its checkpoint rebuilds without the classifier's, with the classifier's weights
    import lightning as _L

    trainer = _L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False)  # fmt: skip
    trainer.strategy.connect(frozen)
    trainer.save_checkpoint(tmp_path / "frozen.ckpt")
    clf_copy = tmp_path / "clf_copy.ckpt"
    path.rename(clf_copy)
    loaded = load_retrieval(tmp_path / "frozen.ckpt")
    assert loaded.trained_encoder_mode == "frozen"
    assert torch.equal(loaded.model.audio_encoder.blocks[0][0].weight, clf.model.blocks[0][0].weight)

    # the image side likewise, from the image classifier (image_model='encoder'), never the judge
    img_clf = ClassifierTask(modality="image", image_model="encoder", image_size=SIZE, class_names=list(INSTRUMENTS),
                             image_encoder=TINY_IMAGE)  # fmt: skip
    img_path = tmp_path / "img.ckpt"
    torch.save({"hyper_parameters": dict(img_clf.hparams), "state_dict": img_clf.state_dict()}, img_path)
    judge = ClassifierTask(modality="image", image_size=SIZE, class_names=list(INSTRUMENTS))
    judge_path = tmp_path / "judge.ckpt"
    torch.save({"hyper_parameters": dict(judge.hparams), "state_dict": judge.state_dict()}, judge_path)
    with pytest.raises(ValueError, match="needs image_encoder_ckpt"):
        RetrievalTask(image_encoder_mode="frozen")
    with pytest.raises(ValueError, match="judge.ckpt"):
        RetrievalTask(image_encoder_mode="frozen", image_encoder_ckpt=str(judge_path), image_size=SIZE)
    with pytest.raises(ValueError, match="img.ckpt.*32-pixel"):
        RetrievalTask(image_encoder_mode="frozen", image_encoder_ckpt=str(img_path), image_size=2 * SIZE)
    both = RetrievalTask(encoder_mode="frozen", audio_encoder_ckpt=str(clf_copy), image_encoder_mode="frozen",
                         image_encoder_ckpt=str(img_path), image_size=SIZE, lr_schedule="constant")  # fmt: skip
    ienc = both.model.image_encoder
    assert torch.equal(ienc.blocks[0][0].weight, img_clf.model.blocks[0][0].weight)
    both.train()
    assert not ienc.training and not both.model.audio_encoder.training
    trainable = {id(p) for g in both.configure_optimizers().param_groups for p in g["params"]}
    assert trainable and trainable.isdisjoint({id(p) for p in ienc.parameters()})
    assert trainable.isdisjoint({id(p) for p in both.model.audio_encoder.parameters()})  # only the heads train
    tuned_img = RetrievalTask(image_encoder_mode="finetune", image_encoder_ckpt=str(img_path), image_size=SIZE,
                              audio_encoder=TINY_AUDIO, input_shape=[1, 128, 44], lr_schedule="constant")  # fmt: skip
    assert tuned_img.model.image_encoder.training
    as_loaded = RetrievalTask(image_encoder_mode="finetune", image_encoder_ckpt=str(img_path), image_size=SIZE,
                              audio_encoder=TINY_AUDIO, input_shape=[1, 128, 44], finetune_norm="eval")  # fmt: skip
    as_loaded.train()
    ienc = as_loaded.model.image_encoder
    assert not ienc.training and as_loaded.model.audio_encoder.training  # a scratch tower always trains in train mode
    trains = {n for n, p in ienc.named_parameters() if p.requires_grad}
    assert trains and trains == {n for n, p in tuned_img.model.image_encoder.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="finetune_norm must be 'train' or 'eval'"):
        RetrievalTask(finetune_norm="frozen")
    groups = tuned_img.configure_optimizers().param_groups
    assert [g["lr"] for g in groups] == [1e-3, 1e-4]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in tuned_img.model.image_encoder.parameters() if p.requires_grad}
    trainer.strategy.connect(both)
    trainer.save_checkpoint(tmp_path / "both.ckpt")
    img_path.unlink()
    loaded = load_retrieval(tmp_path / "both.ckpt")
    assert loaded.trained_image_encoder_mode == "frozen"
    assert torch.equal(loaded.model.image_encoder.blocks[0][0].weight, img_clf.model.blocks[0][0].weight)

    # the option group repeats the ImageEncoder's defaults
    import dataclasses
    import inspect

    from cmav.tasks.common import STATS_ONLY

    params = inspect.signature(ImageEncoder).parameters
    for f in dataclasses.fields(ImageEncoderConfig):
        if f.name != "arch" and f.name not in STATS_ONLY:  # the statistics-pooling encoder's (test_tasks)
            assert f.default == params[f.name].default, f.name


# ---------------------------------------------------------------- review fixes


def _tiny_dense_index(n: int) -> EmbeddingIndex:
    g = torch.Generator().manual_seed(5)
    return EmbeddingIndex(
        kind="dense", audio=F.normalize(torch.randn(n, 1, 2, 8, generator=g), dim=-1).half(),
        image=F.normalize(torch.randn(n, 1, 4, 8, generator=g), dim=-1).half(), stems=[str(i) for i in range(n)],
        labels=torch.zeros(n, dtype=torch.long), class_names=["a"], audio_paths=[""] * n, image_paths=[""] * n,
        ckpt="x.ckpt", root="r", split="validation", image_size=SIZE,
    )  # fmt: skip


def test_checkpoint_with_a_pretrained_sound_classifier_of_other_classes_reloads(tmp_path):
    """A 2-class sound classifier in a 13-class task: each tower is rebuilt with its own head size."""
    from cmav.tasks import ClassifierTask

    clf = ClassifierTask(modality="audio", class_names=["dog", "drum"], input_shape=[1, 128, 44],
                         audio_encoder=TINY_AUDIO)  # fmt: skip
    clf_path = tmp_path / "clf2.ckpt"
    torch.save({"hyper_parameters": dict(clf.hparams), "state_dict": clf.state_dict()}, clf_path)
    task = RetrievalTask(encoder_mode="frozen", audio_encoder_ckpt=str(clf_path), image_size=SIZE,
                         image_encoder=TINY_IMAGE, lr_schedule="constant")  # fmt: skip
    assert (task.model.audio_encoder.n_classes, task.model.image_encoder.n_classes) == (2, 13)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.strategy.connect(task)
    trainer.save_checkpoint(tmp_path / "ret.ckpt")
    clf_path.unlink()  # rebuilt from the retrieval checkpoint alone
    loaded = load_retrieval(tmp_path / "ret.ckpt")
    assert (loaded.model.audio_encoder.n_classes, loaded.model.image_encoder.n_classes) == (2, 13)
    lms, frames = torch.randn(2, 1, 128, 44), torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    task.eval()
    assert all(torch.equal(x, y) for x, y in zip(loaded.embed(lms, frames), task.embed(lms, frames), strict=True))
    # a checkpoint written before the image tower's class count was recorded still loads
    blob = torch.load(tmp_path / "ret.ckpt", weights_only=False)
    blob["cmav_retrieval"]["image_encoder"].pop("n_classes", None)
    torch.save(blob, tmp_path / "old.ckpt")
    assert load_retrieval(tmp_path / "old.ckpt").model.image_encoder.n_classes == 13


def test_auto_backend_searches_a_large_dense_index_exactly(monkeypatch):
    import cmav.retrieval.index as index_module

    monkeypatch.setattr(index_module, "EXACT_LIMIT", 4)  # a gallery past the exact limit
    monkeypatch.setattr(index_module, "faiss_available", lambda: True)  # as if FAISS were installed
    index = _tiny_dense_index(6)
    query = index.audio[:2].float()
    hits = index.search(query, "audio", k=3, backend="auto")
    scores, idx = exact_topk("dense", query, index.image, 3)
    assert [h.indices.tolist() for h in hits] == idx.tolist()
    assert torch.allclose(torch.stack([h.scores for h in hits]), scores)
    with pytest.raises(ValueError, match="only global-model indices can use it"):
        index.search(query, "audio", k=3, backend="faiss")  # asked for by name: refused


def test_heatmap_cells_land_on_the_pixels_they_pooled():
    """40-px frames, 4 blocks: floor pooling keeps rows/columns 0..31 in a 2x2 map (16 px a cell); the
    heatmap lays each cell over its own 16x16 pixels, and the dropped rows/columns take the edge cells."""
    s = 40
    torch.manual_seed(0)
    model = GlobalAVModel(AudioEncoder(n_blocks=3, base_channels=8), ImageEncoder((3, s, s), base_channels=8)).eval()
    lms, frames = torch.randn(2, 1, 128, 44), torch.rand(2, 3, s, s) * 2 - 1
    with torch.no_grad():
        cells, heat = model.location_map(lms, frames), model.heatmap(lms, frames)
    assert cells.shape == (2, 2, 2) and heat.shape == (2, s, s)
    assert not torch.equal(cells[:, 0, 0], cells[:, 1, 1])
    # bilinear over 16-px cells: a cell's value is exact up to 8 px from the neighbouring cell's centre
    own = {0: slice(0, 8), 1: slice(24, s)}  # rows (columns) that map row (column) 0 / 1 alone decides
    for i, j in itertools.product((0, 1), (0, 1)):
        block = heat[:, own[i], own[j]]
        assert torch.allclose(block, cells[:, i, j, None, None].expand_as(block)), (i, j)
    # at a multiple of the pooling the map spans the frame, as before
    model64 = GlobalAVModel(AudioEncoder(n_blocks=3, base_channels=8), ImageEncoder((3, 64, 64), base_channels=8))
    frames64 = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        m = model64.eval().location_map(lms, frames64)
        expected = F.interpolate(m[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
        assert torch.allclose(model64.heatmap(lms, frames64), expected)


def test_validation_localisation_equals_the_evaluation_of_float32_heatmaps(trained):
    """val/loc_* are the numbers `cmav evaluate retrieval` reports (float16 heatmaps made ties)."""
    from cmav.evaluation.retrieval import split_heatmaps

    root = trained["root"]
    L.seed_everything(0, verbose=False)
    # an untrained model: its heatmaps are close together, where float16 rounds neighbours into ties
    task = RetrievalTask(architecture="global", image_size=SIZE, audio_encoder=TINY_AUDIO, image_encoder=TINY_IMAGE,
                         head={"embed_dim": 32, "hidden_dim": 64}, log_heatmaps=False)  # fmt: skip
    dm = AudioVisualDataModule(str(root), image_size=SIZE, batch_size=5, cache_dir=str(trained["base"] / "cache"),
                               progress=False)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    val = trainer.validate(task, dm, verbose=False)[0]
    t = dm.val.tensors
    masks = load_split_masks(root, "validation", t.stems, t.class_names, t.labels, SIZE)
    loc = localization_report(split_heatmaps(task, t), masks)
    for key in ("ap", "miou", "pointing"):
        assert val[f"val/loc_{key}"] == pytest.approx(loc[key], abs=1e-6), key


def test_cross_modal_report_keeps_float64_scores():
    s = torch.tensor([[1.0, 1.0 - 1e-9], [1.0 - 1e-9, 1.0]], dtype=torch.float64)  # below float32's resolution
    report = cross_modal_report(s, torch.tensor([0, 1]))
    assert report["a2i"]["instance"]["R@1"] == 1.0 and report["i2a"]["class"]["R@1"] == 1.0
    assert cross_modal_report(torch.eye(2, dtype=torch.long), torch.tensor([0, 1]))["a2i"]["instance"]["R@1"] == 1.0


@pytest.mark.parametrize("k", ["0", "-2"])
def test_search_refuses_a_k_below_one(k, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cmav_main(["search", "--index", str(tmp_path / "i.pt"), "--audio", "q.wav", "-k", k])
    assert exc.value.code == 2
    assert f"argument -k: must be a positive integer, got {k}" in capsys.readouterr().err
    index = _tiny_dense_index(3)
    with pytest.raises(ValueError, match=f"k must be >= 1, got {k}"):
        index.search(index.audio[:1].float(), "audio", k=int(k))


def test_global_model_refuses_a_statistics_pooling_image_encoder():
    from cmav.models import StatsPoolEncoder

    with pytest.raises(ValueError, match=r"image_encoder\.arch='stats'.*global"):
        RetrievalTask(architecture="global", input_shape=[1, 128, 44], image_size=SIZE, audio_encoder=TINY_AUDIO,
                      image_encoder={"arch": "stats"})  # fmt: skip
    with pytest.raises(ValueError, match=r"image_encoder\.arch='stats'.*global"):
        RetrievalTask(architecture="global", image_size=SIZE, image_encoder={"arch": "stats"})  # before any data
    with pytest.raises(ValueError, match="StatsPoolEncoder"):
        GlobalAVModel(AudioEncoder(n_blocks=3, base_channels=8), StatsPoolEncoder((3, SIZE, SIZE)))
    # the dense model reads the encoder's map as tokens, which works
    dense = RetrievalTask(architecture="dense", input_shape=[1, 128, 44], image_size=SIZE, audio_encoder=TINY_AUDIO,
                          image_encoder={"arch": "stats"}).eval()  # fmt: skip
    assert dense.model.heatmap(torch.randn(2, 1, 128, 44), torch.rand(2, 3, SIZE, SIZE)).shape == (2, SIZE, SIZE)


def test_index_build_refuses_a_checkpoint_overwritten_while_it_is_loaded(trained, tmp_path, monkeypatch):
    """Training may write last.ckpt again while an index is built from it: the index must not record the
    new file's hash beside the old weights' embeddings (search would then accept the new model)."""
    import cmav.tasks.retrieval as retrieval_task
    from cmav.data.files import sha256_file
    from cmav.retrieval.index import build_index

    ckpt = tmp_path / "last.ckpt"
    shutil.copy(trained["global"]["ckpt"], ckpt)
    blob = torch.load(ckpt, weights_only=False)
    blob["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in blob["state_dict"].items()}
    newer = tmp_path / "newer.ckpt"
    torch.save(blob, newer)
    real_load = retrieval_task.load_retrieval

    def load_while_training_saves(path):
        task = real_load(path)
        os.replace(newer, ckpt)  # the trainer's next save lands right after the weights were read
        return task

    monkeypatch.setattr(retrieval_task, "load_retrieval", load_while_training_saves)
    cache = str(trained["base"] / "cache")
    with pytest.raises(ValueError, match=r"last\.ckpt: changed while it was read"):
        build_index(ckpt, trained["root"], cache_dir=cache, progress=False)
    monkeypatch.undo()
    # undisturbed, the recorded hash is the loaded file's
    index = build_index(ckpt, trained["root"], cache_dir=cache, progress=False)
    assert index.info["ckpt_sha256"] == sha256_file(ckpt)


def test_search_notes_hits_whose_files_changed_since_the_index_was_built(trained, tmp_path):
    from cmav.retrieval.index import build_index

    root = Path(shutil.copytree(trained["root"], tmp_path / "data"))
    index_path = tmp_path / "index.pt"
    build_index(trained["global"]["ckpt"], root, cache_dir=str(tmp_path / "cache"), progress=False).save(index_path)
    wav = root / "chunk/validation/tuba/tuba01_500.wav"
    before = search(index_path, audio=wav, k=3, output=None)
    assert before.notes == []
    first, second = before.hits[0], before.hits[1]
    # new data under the old index: one hit's frame replaced, another hit's wav gone, an unrelated file changed
    shutil.copy(root / "img/validation/violin/violin01_500.jpg", first.image_path)
    Path(second.audio_path).unlink()
    shown = {h.stem for h in before.hits}
    other = next(s for s in sorted((root / "img/validation").rglob("*.jpg")) if s.stem not in shown)
    Image.open(other).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(other)
    out = search(index_path, audio=wav, k=3, output=tmp_path / "sheet.png")
    changed = [n for n in out.notes if "since the index was built" in n]
    assert len(changed) == 1, out.notes
    assert f"1 {first.stem} (frame changed)" in changed[0] and f"2 {second.stem} (wav gone)" in changed[0]
    assert other.stem not in changed[0]
    # an index from before the sizes and times were recorded is searched, with one note that it cannot tell
    old = EmbeddingIndex.load(index_path)
    old.info.pop("audio_files")
    old.info.pop("image_files")
    old.save(tmp_path / "old.pt")
    notes = search(tmp_path / "old.pt", audio=wav, k=3, output=None).notes
    assert [n for n in notes if "records no sizes" in n] == notes and len(notes) == 1, notes


def _exact_chance_levels(n: int, n_relevant: list[int], ks: tuple[int, ...]) -> dict:
    """The chance levels in exact fractions (the module docstring's formulas), for small n."""
    from fractions import Fraction

    harmonic = sum(Fraction(1, i) for i in range(1, n + 1))
    out = {key: Fraction(0) for key in [f"R@{k}" for k in ks] + ["MRR", "mAP"]}
    mixture = [Fraction(0)] * (n + 1)
    for r in n_relevant:
        dist = {k: Fraction(math.comb(n - k, r - 1), math.comb(n, r)) for k in range(1, n - r + 2)}
        for k in ks:
            out[f"R@{k}"] += 1 - Fraction(math.comb(n - r, k), math.comb(n, k)) if k <= n else 1
        out["MRR"] += sum(p / k for k, p in dist.items())
        out["mAP"] += (harmonic + Fraction(r - 1, max(n - 1, 1)) * (n - harmonic)) / n
        for k, p in dist.items():
            mixture[k] += p / len(n_relevant)
    result = {key: float(v / len(n_relevant)) for key, v in out.items()}
    cum = Fraction(0)
    for k in range(1, n + 1):
        cum += mixture[k]
        if cum >= Fraction(1, 2):
            result["median_rank"] = k + 0.5 if cum == Fraction(1, 2) and k < n else float(k)
            break
    return result


def test_first_rank_distribution_in_floats_equals_the_exact_ratio_of_binomials():
    from fractions import Fraction

    from cmav.metrics.retrieval import _first_rank_distribution

    for n in range(1, 41):
        for r in range(1, n + 1):
            got = _first_rank_distribution(n, r)
            exact = [Fraction(math.comb(n - k, r - 1), math.comb(n, r)) for k in range(1, n - r + 2)]
            assert len(got) == len(exact)
            assert max(abs(float(e) - g) for e, g in zip(exact, got, strict=True)) <= 1e-12, (n, r)
            assert abs(sum(got) - 1.0) <= 1e-12


@pytest.mark.parametrize("n, counts", [(5, [2, 2, 1]), (20, [12] * 12 + [2] * 8), (30, [1] * 30),
                                       (37, [3, 3, 3, 9, 9, 9, 9, 9, 9, 9, 9, 9, 1, 37])])  # fmt: skip
def test_chance_levels_equal_their_exact_fractions(n, counts):
    got = chance_levels(n, counts, ks=(1, 5, 10))
    exact = _exact_chance_levels(n, counts, (1, 5, 10))
    assert got.keys() == exact.keys()
    for key, value in exact.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_chance_levels_at_sub_urmp_size():
    """N = 10,000 in 13 classes, class- and instance-level: the big-integer version took tens of
    seconds here (every validation epoch); the float recurrence is instant."""
    n = 10_000
    sizes = [n // 13 + (c < n % 13) for c in range(13)]
    counts = [s for s in sizes for _ in range(s)]
    cls, inst = chance_levels(n, counts), chance_levels(n, [1] * n)
    assert cls["R@1"] == pytest.approx(sum(s * s for s in sizes) / n / n, abs=1e-12)
    assert inst["R@1"] == pytest.approx(1 / n, abs=1e-15) and inst["R@10"] == pytest.approx(10 / n, abs=1e-15)
    # instance level: the first relevant rank is uniform on 1 .. n, so the median is halfway
    assert inst["median_rank"] == n / 2 + 0.5 and inst["MRR"] == pytest.approx(sum(1 / k for k in range(1, n + 1)) / n)
    # a class of r in n: P(first > k) = C(n-k, r) / C(n, r), the median is where it crosses one half
    r = sizes[0]
    over = [math.comb(n - k, r) / math.comb(n, r) for k in range(1, 20)]
    assert cls["median_rank"] == float(next(k for k, p in enumerate(over, start=1) if p <= 0.5))


def test_sheet_columns_name_the_hits_class_and_a_score_that_tells_neighbours_apart():
    from PIL import ImageDraw, ImageFont

    from cmav.retrieval.search import Hit, _column_label

    def hit(rank: int, score: float, cls: str = "double_bass") -> Hit:
        return Hit(rank=rank, position=0, score=score, stem=f"{cls}01_500", class_name=cls, image_path="",
                   audio_path="")  # fmt: skip

    assert _column_label(hit(10, 0.52349), 128) == "10: double_bass 0.523"
    assert _column_label(hit(1, 0.5231), 128) != _column_label(hit(2, 0.5234), 128)
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), ImageFont.load_default()
    for width in (64, 48, 20):
        label = _column_label(hit(10, -0.52349), width)
        assert label.startswith("10:") and label.endswith("-0.523"), label
        assert draw.textlength(label, font=font) <= width or label == "10: -0.523", (width, label)
    assert _column_label(hit(3, 0.9, "sax"), 64) == "3: sax 0.900"
