"""The command line refuses bad arguments up front, in one line naming the option or file, and
`--ckpt_path last` finds the run's own last.ckpt in every Lightning sub-command."""

import shutil
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from cmav.cli.main import main

from fixtures import make_suburmp, write_wav

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """13 classes, 2 pairs each per split, and one tiny sound classifier trained through `cmav fit`
    (its run folder holds checkpoints/last.ckpt)."""
    base = tmp_path_factory.mktemp("cli")
    root = make_suburmp(base / "d", chunks=2)
    run = base / "run"
    args = _lightning_args(root, base / "cache", run)
    mp = pytest.MonkeyPatch()
    mp.chdir(base)
    mp.setattr(sys, "argv", ["cmav"])
    try:
        assert main(["fit", *args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1"]) == 0
    finally:
        mp.undo()
    ckpt = base / "clf.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", ckpt)
    return {"root": root, "cache": base / "cache", "ckpt": ckpt}


def _lightning_args(root: Path, cache: Path, run: Path) -> list[str]:
    return ["--config", str(EXPERIMENTS / "audio_classifier.yaml"), "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.limit_val_batches=1", f"--trainer.default_root_dir={run}", f"--data.root={root}",
            f"--data.cache_dir={cache}", "--data.image_size=32", "--data.batch_size=13", "--data.progress=false",
            "--model.init_args.audio_encoder.base_channels=8", "--model.init_args.audio_encoder.n_blocks=2"]  # fmt: skip


@pytest.fixture
def lightning(data, tmp_path, monkeypatch):
    """Runs a Lightning sub-command on the tiny data with its run folder ``tmp_path/run``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cmav"])
    run = tmp_path / "run"

    def go(command: str, *extra: str) -> int:
        return main([command, *_lightning_args(data["root"], data["cache"], run), *extra])

    return go, run


def _argparse_error(argv: list[str], capsys) -> str:
    """The one-line argparse error of ``cmav argv`` (exit status 2)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _one_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- #1: --ckpt_path last ----------------------------------------------------------------------------
def _val_table(out: str) -> list[str]:
    """The metric rows of the table Lightning prints after validate/test."""
    return [line for line in out.splitlines() if line.startswith("│") and "/" in line]


@pytest.mark.parametrize("command", ["validate", "test"])
def test_ckpt_path_last_reads_the_runs_last_checkpoint_outside_fit(lightning, data, command, capsys):
    go, run = lightning
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(data["ckpt"], run / "checkpoints" / "last.ckpt")
    capsys.readouterr()
    assert go(command, f"--ckpt_path={data['ckpt']}") == 0
    named = _val_table(capsys.readouterr().out)
    assert go(command, "--ckpt_path=last") == 0
    assert named and _val_table(capsys.readouterr().out) == named  # the same weights, not untrained ones
    # the file looked at is that one: a half-written last.ckpt is refused by name
    (run / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut off")
    assert not zipfile.is_zipfile(run / "checkpoints" / "last.ckpt")
    err = _one_error([command, *_lightning_args(data["root"], data["cache"], run), "--ckpt_path=last"], capsys)
    assert err.startswith(f"error: {run / 'checkpoints' / 'last.ckpt'}: not a readable checkpoint")


@pytest.mark.parametrize("command", ["fit", "validate", "predict"])
def test_ckpt_path_last_without_a_last_checkpoint_is_an_error_naming_the_folder(lightning, data, command, capsys):
    go, run = lightning
    capsys.readouterr()
    assert go(command, "--ckpt_path=last", "--trainer.max_epochs=1", "--trainer.limit_train_batches=1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run / 'checkpoints'}: no last.ckpt")
    assert not (run / "checkpoints").exists()  # nothing trained from scratch


def test_validate_without_a_ckpt_path_warns_that_it_scores_the_configs_fresh_weights(lightning, data):
    """`cmav validate --config X` with no --ckpt_path scored the weights the config builds (untrained)
    without a word; a figure from it reads like a trained model's."""
    go, _ = lightning
    with pytest.warns(UserWarning, match=r"no --ckpt_path: `cmav validate` scores the weights the config builds"):
        assert go("validate") == 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"no --ckpt_path")
        assert go("validate", f"--ckpt_path={data['ckpt']}") == 0


def test_a_settings_error_of_the_model_is_one_line_naming_the_option(lightning, capsys):
    """A task's own refusal of its settings (a ValueError in __init__) reached the user wrapped in
    jsonargparse's "Does not validate against any of the Union subtypes", with every option's value
    and two tracebacks, exit status 1."""
    go, run = lightning
    capsys.readouterr()
    assert go("fit", "--model.init_args.augment.enabled=true") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: model (cmav.tasks.ClassifierTask): augment.enabled is true"), err
    assert not run.exists()


# --- #2: a missing or folder --ckpt_path ---------------------------------------------------------------
@pytest.mark.parametrize("command", ["fit", "validate"])
def test_a_missing_or_folder_ckpt_path_is_one_error_line_before_anything_is_written(lightning, command, tmp_path,
                                                                                    capsys):  # fmt: skip
    go, run = lightning
    (tmp_path / "afolder").mkdir()
    capsys.readouterr()
    assert go(command, f"--ckpt_path={tmp_path / 'nope.ckpt'}") == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.ckpt'}: no such checkpoint"
    assert go(command, f"--ckpt_path={tmp_path / 'afolder'}") == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {tmp_path / 'afolder'}: is a folder, not a checkpoint file")
    assert not run.exists()


# --- #3: cmav evaluate on a checkpoint of another kind -------------------------------------------------
def test_evaluate_names_a_classifier_checkpoint_as_not_s2i_or_i2s(data, capsys):
    err = _one_error(["evaluate", "--ckpt", str(data["ckpt"]), "--image-judge", str(data["ckpt"])], capsys)
    assert err.startswith(f"cmav evaluate: {data['ckpt']} is a checkpoint of kind 'audio_classifier'")
    assert "scores S2I and I2S" in err and "generate" not in err


# --- #4, #5, #8, #9: numbers that must be positive -----------------------------------------------------
@pytest.mark.parametrize(
    "argv, option",
    [
        (["data", "sheet", "D", "--cell-size", "0"], "--cell-size"),
        (["data", "sheet", "D", "--per-class", "0"], "--per-class"),
        (["evaluate", "retrieval", "--ckpt", "C", "--display-size", "0"], "--display-size"),
        (["evaluate", "retrieval", "--ckpt", "C", "--batch-size", "0"], "--batch-size"),
        (["data", "cache", "D", "--image-size", "0"], "--image-size"),
        (["data", "cache", "D", "--image-size", "-4"], "--image-size"),
        (["data", "cache", "D", "--image-size", "4"], "--image-size"),
        (["data", "pack", "D", "-o", "P", "--image-size", "0"], "--image-size"),
        (["evaluate", "--ckpt", "C", "--image-size", "0"], "--image-size"),
        (["index", "build", "--ckpt", "C", "D", "--batch-size", "0"], "--batch-size"),
        (["index", "build", "--ckpt", "C", "D", "--batch-size", "-1"], "--batch-size"),
        (["bench", "s2i", "--threads", "0"], "--threads"),
        (["bench", "s2i", "--steps", "0"], "--steps"),
    ],
)
def test_a_size_or_count_below_its_minimum_is_refused_by_argparse(argv, option, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = _argparse_error(argv, capsys)
    assert f"argument {option}" in err and ("positive integer" in err or "at least 8" in err)
    assert not any(tmp_path.iterdir())  # nothing written (pack's folder included)


def test_pack_features_that_are_not_yaml_name_the_option(data, tmp_path, capsys):
    err = _one_error(["data", "pack", str(data["root"]), "-o", str(tmp_path / "p"), "--features", "{kind: ["], capsys)
    assert err.startswith("error: --features: not YAML") and "{kind: [" in err
    assert not (tmp_path / "p").exists()


def test_sheet_takes_each_frame_once_and_reports_the_real_count(data, tmp_path, capsys):
    out = tmp_path / "s.png"
    assert main(["data", "sheet", str(data["root"]), "-o", str(out), "--per-class", "4", "--cell-size", "16"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out} (13 classes x 2 frames from train)"
    with Image.open(out) as sheet:
        assert sheet.width == 110 + 2 * (16 + 4) + 4  # two columns: the class's two samples, none repeated


# --- #6, #9: outputs checked before any work -----------------------------------------------------------
def _under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "afile").write_text("x")
    return tmp_path / "afile"


@pytest.mark.parametrize(
    "argv, name",
    [
        (["embed", "--ckpt", "missing.ckpt", "--audio", "a.wav", "-o"], "e.npz"),
        (["classify", "--ckpt", "missing.ckpt", "--audio", "a.wav", "-o"], "c.csv"),
        (["generate", "--ckpt", "missing.ckpt", "--audio", "a.wav", "-o"], "g.png"),
        (["index", "build", "--ckpt", "missing.ckpt", "missing_data", "-o"], "ix.pt"),
        (["search", "--index", "missing.pt", "--audio", "a.wav", "-o"], "s.png"),
        (["data", "sheet", "missing_data", "-o"], "s.png"),
        (["evaluate", "retrieval", "--ckpt", "missing.ckpt", "-o"], "r"),
        (["bench", "s2i", "--root", "missing_data", "-o"], "b.json"),
        (["evaluate", "--ckpt", "missing.ckpt", "--image-judge", "missing.ckpt", "-o"], "ev"),
        (["data", "pack", "missing_data", "-o"], "p"),
    ],
)
def test_an_output_under_a_regular_file_is_refused_before_any_work(argv, name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _under_a_file(tmp_path) / name
    assert _one_error([*argv, str(out)], capsys) == f"error: {out}: Not a directory"


@pytest.mark.parametrize(
    "argv",
    [
        ["evaluate", "--ckpt", "missing.ckpt", "--image-judge", "missing.ckpt", "-o"],
        ["evaluate", "retrieval", "--ckpt", "missing.ckpt", "-o"],
        ["evaluate", "robustness", "--root", "missing_data", "--eval-root", "missing_other", "--classifier",
         "missing.ckpt", "-o"],
        ["evaluate", "judge", "--ckpt", "missing.ckpt", "-o"],
        ["ablate", "missing.yaml", "-o"],
        ["human-eval", "make", "--runs", "missing_run", "-o"],
        ["human-eval", "analyze", "missing_study", "missing_ratings", "-o"],
    ],
)  # fmt: skip
def test_a_regular_file_given_as_an_output_folder_is_refused_before_any_work(argv, tmp_path, monkeypatch, capsys):
    """A folder output (`-o`) that names an existing file failed only when the results were written,
    after the models had run."""
    monkeypatch.chdir(tmp_path)
    afile = _under_a_file(tmp_path)
    assert _one_error([*argv, str(afile)], capsys) == f"error: {afile}: is a file; -o names a folder here"


@pytest.mark.parametrize(
    "argv, default",
    [
        (["search", "--index", "missing.pt", "--audio", "a.wav", "-o"], "search.png"),
        (["data", "sheet", "missing_data", "-o"], "contact_sheet.png"),
    ],
)
@pytest.mark.parametrize("output", ["x.txt", "x", "adir/"])
def test_an_image_output_with_another_suffix_is_refused_first_naming_the_option(argv, default, output, tmp_path,
                                                                                monkeypatch, capsys):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    err = _one_error([*argv, output], capsys)
    assert err.startswith(f"error: -o {output}: write a .png (or ")


# --- #7: a folder where a file is wanted, a file where a folder is -----------------------------------
def test_a_file_given_as_the_data_set_folder_is_named_so(tmp_path, capsys):
    afile = _under_a_file(tmp_path)
    assert _one_error(["data", "check", str(afile)], capsys) == f"error: {afile}: is a file, not a data set folder"
    assert _one_error(["data", "check", str(tmp_path / "nothing")], capsys) == (
        f"error: {tmp_path / 'nothing'}: data set folder does not exist")  # fmt: skip


def test_a_folder_given_as_a_sound_image_or_index_file_is_named_so(data, tmp_path, capsys):
    from cmav.data.audio_io import read_audio
    from cmav.data.errors import DataError

    folder = tmp_path / "adir"
    folder.mkdir()
    with pytest.raises(DataError, match=r"adir: is a folder, not a sound file"):
        read_audio(folder)
    with pytest.raises(DataError, match=r"nope.wav: audio file does not exist"):
        read_audio(tmp_path / "nope.wav")
    wav = write_wav(tmp_path / "a.wav")
    assert _one_error(["search", "--index", str(folder), "--audio", str(wav), "-o", str(tmp_path / "s.png")],
                      capsys) == f"error: {folder}: is a folder, not an index file"  # fmt: skip
    for command in (["search", "--index", str(tmp_path / "ix.pt")], ["embed", "--ckpt", str(data["ckpt"])],
                    ["generate", "--ckpt", str(data["ckpt"])]):  # fmt: skip
        out = tmp_path / ("out.npz" if command[0] == "embed" else "out.png")
        err = _one_error([*command, "--image", str(folder), "-o", str(out)], capsys)
        assert err == f"error: {folder}: is a folder, not an image file", command
