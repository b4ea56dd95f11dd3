"""What `cmav evaluate` writes and where: a results folder per run, no stale outputs of an earlier
call, and a metrics.json that says what it scored (checkpoint, judges, data, front end) and what
could not be checked (tiny S2I models on synthetic data, CPU)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import lightning as L
import pytest

from cmav.cli.main import main
from cmav.data.datamodule import AudioVisualDataModule
from cmav.data.files import sha256_file

from fixtures import make_suburmp_tracks

SIZE = 32
SMALL_JUDGE = {"n_blocks": 3, "base_channels": 8, "max_channels": 32, "feature_dim": 32, "dropout": 0.0,
               "block_dropout": 0.0}  # fmt: skip

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*rank-deficient.*"),
    pytest.mark.usefixtures("one_torch_thread"),
]


def _fit(task, dm, steps: int, path: Path) -> Path:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=dm)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(str(path))
    return path


def _s2i(variant: str):
    from cmav.tasks import S2ITask

    small = {"base_channels": 8, "max_channels": 32}
    return S2ITask(variant=variant, encoder_mode="scratch", image_size=SIZE, sample_every_n_steps=0,
                   encoder={**small, "feature_dim": 32}, generator={**small, "cond_proj_dim": 16},
                   discriminator={**small, "cond_proj_dim": 16})  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Two S2I runs in the layout `cmav fit` writes (runs/<name>/checkpoints/last.ckpt) and the judges,
    all trained one step with the end of every train track held out (only their data matter here)."""
    from cmav.tasks import ClassifierTask

    base = tmp_path_factory.mktemp("evaluate_outputs")
    data = make_suburmp_tracks(base / "data", tracks=(0, 1), chunks=4)
    dm = AudioVisualDataModule(root=str(data), image_size=SIZE, batch_size=16, holdout_tail=0.25, holdout_gap_ms=0,
                               progress=False)  # fmt: skip
    judge = ClassifierTask(modality="image", image_size=SIZE, image_judge=SMALL_JUDGE)
    player = ClassifierTask(modality="image", target="track", image_size=SIZE, image_judge=SMALL_JUDGE)
    return {
        "base": base, "data": data,
        "s2i_c": _fit(_s2i("s2i_c"), dm, 1, base / "runs" / "s2i_c" / "checkpoints" / "last.ckpt"),
        "s2i_n": _fit(_s2i("s2i_n"), dm, 1, base / "runs" / "s2i_n" / "checkpoints" / "last.ckpt"),
        "image_judge": _fit(judge, dm, 1, base / "judges" / "image_judge.ckpt"),
        "player_judge": _fit(player, dm, 1, base / "judges" / "player_judge.ckpt"),
    }  # fmt: skip


def test_the_default_results_folder_is_named_after_the_checkpoints_run():
    from cmav.cli.experiments import default_evaluate_output

    base = Path("results/evaluate")
    assert default_evaluate_output("runs/s2i_c/checkpoints/last.ckpt") == base / "s2i_c"
    assert default_evaluate_output("runs/s2i_c/checkpoints/last-v1.ckpt") == base / "s2i_c"
    # another checkpoint of the run (an epoch's, a snapshot) is another model: a folder of its own
    assert default_evaluate_output("runs/s2i_c/checkpoints/epoch=3-step=40.ckpt") == base / "s2i_c_epoch=3-step=40"
    assert default_evaluate_output("runs/i2s_c/snapshots/epoch=059.ckpt") == base / "i2s_c_epoch=059"
    # Lightning's own layout: the logger's version folder holds the checkpoints
    assert default_evaluate_output("runs/s2i_c/version_2/checkpoints/last.ckpt") == base / "s2i_c_version_2"
    assert default_evaluate_output("runs/x/lightning_logs/version_0/checkpoints/last.ckpt") == base / "x_version_0"
    # a checkpoint file outside a run folder: its own name
    assert default_evaluate_output("s2i_t0.ckpt") == base / "s2i_t0"
    assert default_evaluate_output("runs/ablation/seed0/i2s.ckpt") == base / "i2s"


def test_two_runs_scored_without_o_keep_both_results_and_another_checkpoints_folder_is_refused(setup, tmp_path,
                                                                                             monkeypatch, capsys):  # fmt: skip
    """The README's way (no -o) for S2I-C then S2I-N: both results stay, each in its run's folder;
    scoring a checkpoint into a folder that holds another checkpoint's results is refused by name."""
    monkeypatch.chdir(tmp_path)
    judge = str(setup["image_judge"])
    for name in ("s2i_c", "s2i_n"):
        assert main(["evaluate", "--ckpt", str(setup[name]), "--image-judge", judge]) == 0
        assert f"results folder: {Path('results/evaluate') / name}" in capsys.readouterr().out
    for name in ("s2i_c", "s2i_n"):
        m = json.loads((tmp_path / "results" / "evaluate" / name / "metrics.json").read_text())
        assert m["generator"]["variant"] == name
        assert m["inputs"]["checkpoint"]["resolved"] == str(setup[name].resolve())
    before = (tmp_path / "results" / "evaluate" / "s2i_c" / "metrics.json").read_text()
    assert main(["evaluate", "--ckpt", str(setup["s2i_n"]), "--image-judge", judge,
                 "-o", "results/evaluate/s2i_c"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert (f"error: results/evaluate/s2i_c: holds the results of another checkpoint, {setup['s2i_c'].resolve()}, "
            f"not {setup['s2i_n']}") in err
    assert (tmp_path / "results" / "evaluate" / "s2i_c" / "metrics.json").read_text() == before
    # the same checkpoint again: its own results, replaced
    assert main(["evaluate", "--ckpt", str(setup["s2i_c"]), "--image-judge", judge, "--seed", "1"]) == 0
    assert json.loads((tmp_path / "results" / "evaluate" / "s2i_c" / "metrics.json").read_text())["seed"] == 1


def test_metrics_json_names_the_checkpoint_the_judges_the_data_and_the_front_end(setup, tmp_path):
    out = tmp_path / "out"
    assert main(["evaluate", "--ckpt", str(setup["s2i_c"]), "--image-judge", str(setup["image_judge"]),
                 "--player-judge", str(setup["player_judge"]), "-o", str(out)]) == 0  # fmt: skip
    inputs = json.loads((out / "metrics.json").read_text())["inputs"]
    for key in ("checkpoint", "image_judge", "player_judge"):
        path = setup["s2i_c" if key == "checkpoint" else key]
        assert inputs[key] == {"path": str(path), "resolved": str(path.resolve()), "sha256": sha256_file(path)}
    data = inputs["data"]
    assert data["root"] == str(setup["data"]) and data["root_resolved"] == str(setup["data"].resolve())
    assert (data["layout"], data["image_size"], data["holdout_tail"], data["holdout_gap_ms"]) == ("suburmp", SIZE, 0.25, 0)
    assert inputs["features"]["kind"] == "lms" and inputs["features"]["n_mels"] == 128
    # in memory: no file to name
    from cmav.evaluation import evaluate_s2i
    from cmav.evaluation.generate import datamodule_for
    from cmav.tasks.s2i import load_s2i

    dm = datamodule_for(setup["s2i_c"], batch_size=16)
    m = evaluate_s2i(load_s2i(setup["s2i_c"]), dm, str(setup["image_judge"]), n_diversity_draws=2)
    assert m["inputs"]["checkpoint"] is None and m["inputs"]["image_judge"]["path"] == str(setup["image_judge"])
    assert m["inputs"]["player_judge"] is None
    given = evaluate_s2i(load_s2i(setup["s2i_c"]), dm, str(setup["image_judge"]), n_diversity_draws=2,
                         ckpt=setup["s2i_c"])  # fmt: skip
    assert given["inputs"]["checkpoint"]["sha256"] == sha256_file(setup["s2i_c"])


def test_the_generators_unverifiable_training_frames_are_noted_in_metrics_json(setup, tmp_path, capsys):
    """Scored on a copy of its data (another root), whether the generator's training frames include
    the held-out tails cannot be checked: stderr said so, and now metrics.json's notes do too."""
    from cmav.evaluation import evaluate_s2i
    from cmav.evaluation.generate import datamodule_for
    from cmav.tasks.s2i import load_s2i

    copy = tmp_path / "copy"
    shutil.copytree(setup["data"], copy)
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["evaluate", "--ckpt", str(setup["s2i_c"]), "--image-judge", str(setup["image_judge"]),
                     "--root", str(copy), "-o", str(out)]) == 0  # fmt: skip
    note = (f"{setup['s2i_c']}: the S2I generator was trained on {setup['data']}, the data scored are {copy}: whether "
            "its training frames include those scored here (holdout) cannot be checked")  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    assert note in m["notes"] and note in m["judged_holdout"]["note"]
    # the same from Python: a task loaded from the checkpoint, and the checkpoint it came from
    dm = datamodule_for(setup["s2i_c"], root=copy, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = evaluate_s2i(load_s2i(setup["s2i_c"]), dm, str(setup["image_judge"]), n_diversity_draws=2,
                         ckpt=setup["s2i_c"])  # fmt: skip
    assert note in m["notes"]


def test_cmav_evaluate_under_a_judge_at_chance_notes_that_its_fid_kid_and_diversity_are_meaningless(setup, tmp_path):
    """A judge trained one step scores the real frames at chance: `cmav evaluate` printed its
    FID/KID/diversity with no word, and metrics.json did not say either."""
    from cmav.data.errors import DataWarning

    out = tmp_path / "out"
    with pytest.warns(DataWarning, match=r"the image judge judges nothing here: the image judge's accuracy on the 52 "
                                         r"real validation items is 0\.077"):  # fmt: skip
        assert main(["evaluate", "--ckpt", str(setup["s2i_c"]), "--image-judge", str(setup["image_judge"]),
                     "-o", str(out)]) == 0  # fmt: skip
    m = json.loads((out / "metrics.json").read_text())
    assert any("FID, KID and diversity measured in its features are meaningless" in n for n in m["notes"])
    assert "meaningless" in m["fid_kid"]["note"] and "meaningless" in m["diversity"]["note"]
