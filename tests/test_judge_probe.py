"""`cmav evaluate judge`: the image judge's accuracy per player with the instrument painted out and
with the instrument alone, on a tiny data set whose players give their class away (CPU)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cmav.cli.main import main
from cmav.data.datamodule import AudioVisualDataModule
from cmav.data.instruments import INSTRUMENTS
from cmav.evaluation.judge_probe import judge_views, probe_image_judge
from cmav.metrics import player_table

from fixtures import write_wav

SIZE = 32
CHUNKS = 3
SQUARE = (slice(12, 20), slice(12, 20))  # the "instrument": one white square, the same place in every frame
SMALL_JUDGE = {"n_blocks": 3, "base_channels": 8, "max_channels": 32, "feature_dim": 32, "dropout": 0.0,
               "block_dropout": 0.0}  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _room(label: int, rng: np.random.Generator) -> np.ndarray:
    """A class-coloured room with a little texture (BatchNorm needs variance) and the white square."""
    hue = np.array([(40 + 97 * label) % 256, (200 - 61 * label) % 256, (90 + 151 * label) % 256], float)
    img = np.clip(hue + rng.normal(0.0, 6.0, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    img[SQUARE] = 255
    return img


def make_shortcut_data(root: Path, with_masks: bool = True) -> Path:
    """Sub-URMP layout where the room (colour per class, shared by the class's players) tells the
    class and the instrument, the same white square for every class, tells nothing. PNG frames:
    the square's pixels stay exactly white."""
    mask = np.zeros((SIZE, SIZE), bool)
    mask[SQUARE] = True
    for label, name in enumerate(INSTRUMENTS):
        rng = np.random.default_rng(label)
        for split, tracks in (("train", (0, 1)), ("validation", (9,))):
            for track in tracks:
                for k in range(CHUNKS):
                    stem = f"{name}{track:02d}_{500 + 100 * k}"
                    write_wav(root / "chunk" / split / name / f"{stem}.wav", freq=220.0 * (1 + label / 4))
                    (root / "img" / split / name).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(_room(label, rng)).save(root / "img" / split / name / f"{stem}.png")
                    if with_masks:
                        (root / "mask" / split / name).mkdir(parents=True, exist_ok=True)
                        Image.fromarray(mask).save(root / "mask" / split / name / f"{stem}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_shortcut_data(tmp_path_factory.mktemp("probe_data"))


@pytest.fixture(scope="module")
def dm(data) -> AudioVisualDataModule:
    d = AudioVisualDataModule(root=str(data), image_size=SIZE, batch_size=16, holdout_tail=0.0, progress=False)
    d.setup("fit")
    return d


@pytest.fixture(scope="module")
def judge_ckpt(dm, tmp_path_factory) -> Path:
    import lightning as L

    from cmav.tasks import ClassifierTask

    L.seed_everything(0, verbose=False)
    task = ClassifierTask(modality="image", image_size=SIZE, image_judge=SMALL_JUDGE,
                          optimizer={"lr": 3e-3, "betas": (0.9, 0.999)})  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=300, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=dm)
    path = tmp_path_factory.mktemp("probe_judge") / "judge.ckpt"
    trainer.save_checkpoint(str(path))
    return path


def test_views_paint_the_instrument_out_with_the_colour_around_it_or_keep_it_alone():
    image = torch.full((1, 3, 16, 16), -0.5)
    image[..., :, 8:] = 0.5  # two halves: the ring around the instrument straddles them
    image[..., 6:10, 6:10] = 1.0
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    mask[..., 6:10, 6:10] = True
    views = judge_views(image, mask)
    assert torch.equal(views["frame"], image)
    grown = torch.zeros(16, 16, dtype=torch.bool)
    grown[5:11, 5:11] = True  # the mask grown by one pixel
    ring = torch.zeros(16, 16, dtype=torch.bool)
    ring[3:13, 3:13] = True
    ring &= ~grown
    painted = views["instrument painted out"]
    fill = image[0][:, ring].mean(1)
    assert torch.allclose(painted[0][:, grown], fill[:, None].expand(3, int(grown.sum())))
    assert float(painted.max()) < 1.0  # no instrument pixel left
    assert torch.equal(painted[0][:, ~grown], image[0][:, ~grown])
    alone = views["instrument only"]
    assert torch.equal(alone[0][:, grown], image[0][:, grown])
    assert torch.all(alone[0][:, ~grown] == 0)  # mid-grey in [-1, 1]


def test_player_table_counts_each_players_frames():
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    tracks = torch.tensor([3, 3, 5, 5, 3, 3])
    predicted = torch.tensor([0, 1, 1, 1, 1, 1])
    rows = player_table(predicted, labels, tracks, ["oboe", "clarinet"])
    assert [(r["class"], r["track"], r["n"]) for r in rows] == [("oboe", 3, 2), ("oboe", 5, 2), ("clarinet", 3, 2)]
    assert [r["accuracy"] for r in rows] == [0.5, 0.0, 1.0]
    assert [r["named_most"] for r in rows[1:]] == ["clarinet", "clarinet"]
    assert rows[1]["named_most_share"] == 1.0
    with pytest.raises(ValueError, match="must match"):
        player_table(predicted[:5], labels, tracks, ["oboe", "clarinet"])


def test_probe_shows_a_judge_that_reads_the_room_not_the_instrument(dm, judge_ckpt):
    probe = probe_image_judge(str(judge_ckpt), dm, splits=("train", "validation"))
    n_classes = len(INSTRUMENTS)
    for split, players in (("train", 2 * n_classes), ("validation", n_classes)):
        views = probe["splits"][split]["views"]
        assert probe["splits"][split]["n"] == players * CHUNKS
        assert all(len(views[v]["players"]) == players for v in views)
        assert views["frame"]["accuracy"] == 1.0
        # the room alone still tells the class: the square never did
        assert views["instrument painted out"]["accuracy"] >= 0.9
        # the square alone is the same input for every class: one class named for all, right for 1 in 13
        alone = views["instrument only"]
        assert len({p["named_most"] for p in alone["players"]}) == 1
        assert alone["accuracy"] == pytest.approx(1 / n_classes)


def test_cli_writes_the_probe_and_refuses_a_data_set_without_masks(data, judge_ckpt, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["evaluate", "judge", "--ckpt", str(judge_ckpt), "--root", str(data), "--holdout-tail", "0",
                 "--splits", "validation", "-o", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| instrument only |" in printed and f"| {INSTRUMENTS[0]} #9 |" in printed
    saved = json.loads((out / "judge_probe.json").read_text())
    assert list(saved["splits"]) == ["validation"] and saved["judge"] == str(judge_ckpt)
    assert (out / "judge_probe.md").read_text().strip() == printed.split("wrote ")[0].strip()

    bare = make_shortcut_data(tmp_path / "no_masks", with_masks=False)
    assert main(["evaluate", "judge", "--ckpt", str(judge_ckpt), "--root", str(bare), "--holdout-tail", "0",
                 "-o", str(tmp_path / "bare")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "no instrument masks" in err and str(bare / "mask" / "train") in err


def test_evaluate_topics_are_their_own_commands_and_plain_evaluate_stays():
    from cmav.cli.main import EVALUATE_TOPICS, build_parser, evaluate_alias

    commands = build_parser()._subparsers._group_actions[0].choices
    for topic in EVALUATE_TOPICS:
        assert evaluate_alias(["evaluate", topic, "--x"]) == [f"evaluate-{topic}", "--x"]
        assert f"evaluate-{topic}" in commands
    assert evaluate_alias(["evaluate", "--ckpt", "a.ckpt"]) == ["evaluate", "--ckpt", "a.ckpt"]
    assert evaluate_alias(["evaluate"]) == ["evaluate"]


def test_cli_refuses_a_holdout_the_judge_trained_on_and_says_why_a_holdout_is_empty(data, dm, judge_ckpt, tmp_path,
                                                                                     capsys):  # fmt: skip
    """--holdout-tail made 'holdout' the judge's own training frames (it trained with none held out):
    refused by name. With no tails at all the holdout row says why instead of an accuracy of nan."""
    capsys.readouterr()
    assert main(["evaluate", "judge", "--ckpt", str(judge_ckpt), "--root", str(data), "--holdout-tail", "0.3",
                 "--holdout-gap-ms", "0", "--splits", "holdout", "-o", str(tmp_path / "told")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert (f"{judge_ckpt}: the image judge was trained on {data} with data.holdout_tail 0 (holdout_gap_ms None), so "
            "26 of the 26 held-out chunks scored here (data.holdout_tail 0.3, holdout_gap_ms 0)") in err
    with pytest.raises(ValueError, match=r"judge\.ckpt: the image judge was trained on .* with data\.holdout_tail 0 "):
        probe_image_judge(str(judge_ckpt), AudioVisualDataModule(root=str(data), image_size=SIZE, holdout_tail=0.3,
                                                                 holdout_gap_ms=0, progress=False), splits=("holdout",))  # fmt: skip
    out = tmp_path / "none"
    assert main(["evaluate", "judge", "--ckpt", str(judge_ckpt), "--splits", "holdout", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "holdout (0 frames): none held out: this data module holds none out: set data.holdout_tail > 0" in printed
    assert "nan" not in printed
    saved = json.loads((out / "judge_probe.json").read_text())["splits"]["holdout"]
    assert saved["n"] == 0 and saved["views"] == {} and "holds none out" in saved["note"]
