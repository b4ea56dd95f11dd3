"""`cmav fit --ckpt_path` continues the run it names and nothing else: the config and the command
line build the model (a file path and `last` alike), a checkpoint of another model or of other
settings is refused by name, a damaged one too, and the resumed run keeps its TensorBoard folder.
The YAMLs write last.ckpt every epoch."""

import shutil
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from cmav.cli.main import main

from cli_runs import EXPERIMENTS, TINY_CLASSIFIER, cli_args, data_with_classifier, one_error_line

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*holds no random state.*"),
    pytest.mark.filterwarnings("ignore:.*was saved after batch.*"),
]






@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """13 classes, 2 pairs each per split, and a tiny sound classifier trained for one epoch by `cmav fit`."""
    return data_with_classifier(tmp_path_factory.mktemp("resume"))


@pytest.fixture
def cli(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cmav"])
    return tmp_path / "run"




def _given(how: str, data: dict, run: Path) -> str:
    """``--ckpt_path`` naming the sound classifier by its file, or as this run's `last`."""
    if how == "file":
        return f"--ckpt_path={data['ckpt']}"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(data["ckpt"], run / "checkpoints" / "last.ckpt")
    return "--ckpt_path=last"


def _files(run: Path) -> set[Path]:
    return {p for p in run.rglob("*") if p.is_file()} if run.exists() else set()


# --- the checkpoint does not replace the config ----------------------------------------------------
RETRIEVAL = ["--model.init_args.audio_encoder.base_channels=4", "--model.init_args.audio_encoder.max_channels=8",
             "--model.init_args.audio_encoder.feature_dim=8", "--model.init_args.image_encoder.base_channels=4",
             "--model.init_args.image_encoder.max_channels=8", "--model.init_args.image_encoder.feature_dim=8",
             "--model.init_args.image_encoder.n_blocks=3", "--model.init_args.head.embed_dim=8",
             "--model.init_args.head.hidden_dim=8"]  # fmt: skip


@pytest.mark.parametrize("how", ["file", "last"])
def test_a_checkpoint_of_another_model_is_refused_naming_both_classes(data, cli, how, capsys):
    """A sound classifier given to a retrieval run was trained (and saved as the run's last.ckpt) as
    a sound classifier when named by its path: Lightning wrote the checkpoint's class over the config."""
    given = _given(how, data, cli)
    before = _files(cli)
    err = one_error_line(["fit", *cli_args(data, cli, "retrieval_global.yaml"), *RETRIEVAL, given], capsys)
    assert "cmav.tasks.ClassifierTask" in err and "RetrievalTask" in err, err
    assert err.startswith("error: ") and "clf.ckpt" in err or "last.ckpt" in err
    assert _files(cli) == before  # nothing written


@pytest.mark.parametrize("how", ["file", "last"])
def test_resuming_with_other_model_settings_is_refused_naming_the_keys(data, cli, how, capsys):
    """A setting given on the command line was dropped for a file path (the checkpoint's won) and
    kept for `last`; other widths trained the checkpoint's (file) or died in load_state_dict (last)."""
    given = _given(how, data, cli)
    before = _files(cli)
    err = one_error_line(["fit", *cli_args(data, cli), *TINY_CLASSIFIER, "--model.init_args.label_smoothing=0.1",
                      "--model.init_args.audio_encoder.n_blocks=3", given], capsys)  # fmt: skip
    assert "model.init_args.label_smoothing" in err and "model.init_args.audio_encoder.n_blocks" in err, err
    assert "base_channels" not in err  # the same in both
    assert _files(cli) == before


def _val_table(out: str) -> list[str]:
    """The metric rows of the table Lightning prints after validate."""
    return [line for line in out.splitlines() if line.startswith("│") and "/" in line]


def test_validate_scores_the_checkpoints_model_for_a_file_and_last_alike(data, cli, capsys):
    """validate/test/predict score the model the checkpoint holds: Lightning gave a file path the
    checkpoint's settings silently, and `last` the config's (other widths: a raw load_state_dict
    traceback). Both now take the checkpoint's, and a warning names the settings replaced."""
    tables = []
    for how in ("file", "last"):
        given = _given(how, data, cli)
        capsys.readouterr()
        with pytest.warns(UserWarning, match=r"scores the model this checkpoint holds.*"
                                             r"model\.init_args\.audio_encoder\.base_channels 8 \(checkpoint\), 4 here"):
            assert main(["validate", *cli_args(data, cli), "--model.init_args.audio_encoder.base_channels=4",
                         "--model.init_args.audio_encoder.n_blocks=2", given]) == 0  # fmt: skip
        tables.append(_val_table(capsys.readouterr().out))
    assert tables[0] and tables[0] == tables[1]


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_weights_that_do_not_fit_the_model_are_one_line_naming_the_shapes(data, cli, tmp_path, command, capsys):
    """A checkpoint without settings (written by a script) loads into the config's model: weights of
    other shapes were Lightning's "Error(s) in loading state_dict" traceback."""
    ckpt = torch.load(data["ckpt"], map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"] = {}
    bare = tmp_path / "bare.ckpt"
    torch.save(ckpt, bare)
    err = one_error_line([command, *cli_args(data, cli), "--model.init_args.audio_encoder.n_blocks=2",
                      "--trainer.max_epochs=2", f"--ckpt_path={bare}"], capsys)  # fmt: skip
    assert err.startswith(f"error: {bare}: its weights do not fit this run's model: "), err
    assert "[8, 1, 3, 3] there, [32, 1, 3, 3] here" in err, err


def test_a_resumed_run_continues_its_tensorboard_folder(data, cli):
    """`--ckpt_path last` or a file of the run's own checkpoints logged into a new version_N folder:
    one run showed as two in TensorBoard."""
    args = [*cli_args(data, cli), *TINY_CLASSIFIER]
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    assert main(["fit", *args, "--trainer.max_epochs=2", "--ckpt_path=last"]) == 0
    last = cli / "checkpoints" / "last.ckpt"
    kept = cli / "checkpoints" / "epoch1.ckpt"
    shutil.copy(last, kept)
    assert main(["fit", *args, "--trainer.max_epochs=3", f"--ckpt_path={kept}"]) == 0
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in cli.glob("version_*")) == ["version_0"]
    assert len(list((cli / "version_0").glob("events.out.tfevents.*"))) == 3
    # a new run into the folder (no --ckpt_path), or a version given, still starts a folder of its own
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    assert main(["fit", *args, "--trainer.max_epochs=4", "--ckpt_path=last", "--trainer.logger.init_args.version=7"]) == 0
    assert sorted(p.name for p in cli.glob("version_*")) == ["version_0", "version_1", "version_7"]


# --- damaged contents -------------------------------------------------------------------------------
def _zeroed(src: Path, dst: Path) -> str:
    """A copy of ``src`` with bytes zeroed in the middle of its largest tensor; that member's name."""
    with zipfile.ZipFile(src) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(src.read_bytes())
    # the member's data follows its local header (30 bytes, the name, the extra field)
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")  # fmt: skip
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[start:start + 16] = bytes(16)
    dst.write_bytes(bytes(raw))
    return info.filename


def test_a_checkpoint_with_damaged_contents_is_refused_naming_the_member(data, cli, tmp_path, capsys):
    """Bytes zeroed inside a tensor: torch.load reads the zip without checking its CRCs, so the
    damaged weights loaded, generated and resumed without a word."""
    from cmav.tasks.classifier import load_classifier

    bad = tmp_path / "zeroed.ckpt"
    member = _zeroed(data["ckpt"], bad)
    assert zipfile.is_zipfile(bad)
    with pytest.raises(ValueError, match=rf"zeroed\.ckpt: not a readable checkpoint \(half-written or corrupt\?\).*{member}"):
        load_classifier(bad)
    err = one_error_line(["fit", *cli_args(data, cli), *TINY_CLASSIFIER, "--trainer.max_epochs=2", f"--ckpt_path={bad}"], capsys)
    assert err.startswith(f"error: {bad}: not a readable checkpoint (half-written or corrupt?)") and member in err, err
    assert not cli.exists()


# --- last.ckpt every epoch ---------------------------------------------------------------------------
def _printed_callbacks(capsys, *configs: str) -> list[dict]:
    """The trainer callbacks of ``cmav fit --config ...`` as the CLI's parser merges them."""
    argv = ["fit"] + [a for c in configs for a in ("--config", str(EXPERIMENTS / c))] + ["--print_config"]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(argv)
    return yaml.safe_load(capsys.readouterr().out)["trainer"]["callbacks"]


@pytest.mark.parametrize("configs", [("diffusion_base.yaml",), ("diffusion_base.yaml", "diffusion_cpu.yaml"),
                                     ("audio_token.yaml",)])  # fmt: skip
def test_the_yamls_write_last_ckpt_every_epoch(configs, cli, capsys):
    """diffusion_cpu.yaml's checkpoint entry was merged into the base's, whose every_n_epochs: 10
    survived (a run killed at epoch 2 had no checkpoint); audio_token.yaml wrote last.ckpt every 5th."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    printed = _printed_callbacks(capsys, *configs)
    checkpoints = [c["init_args"] for c in printed if c["class_path"].endswith("ModelCheckpoint")]
    writers = [c for c in checkpoints if c.get("save_last") or c.get("filename") == "last"]
    assert writers, checkpoints
    for c in writers:
        assert c["every_n_epochs"] == 1 and c["save_top_k"] != 0, c
        # these YAMLs validate every n-th epoch (or never): a save at validation end would wait for it
        assert c["save_on_train_epoch_end"] is True, c
    built = [ModelCheckpoint(**{k: v for k, v in c.items() if v is not None}) for c in checkpoints]
    assert len({cb.state_key for cb in built}) == len(built)  # Lightning refuses two of one state key


# --- refusals while a sub-command runs ---------------------------------------------------------------
def test_a_tasks_refusal_while_it_runs_is_one_line(data, cli, capsys):
    """The player judge's refusal of data without held-out frames came as a 21-frame traceback."""
    err = one_error_line(["fit", *cli_args(data, cli, "player_judge.yaml"), "--trainer.max_epochs=1",
                      *[f"--model.init_args.image_judge.{k}={v}" for k, v in
                        {"n_blocks": 2, "base_channels": 4, "feature_dim": 16}.items()]], capsys)  # fmt: skip
    assert err.startswith("error: player judge: no held-out train frames"), err


def test_a_second_checkpoint_callback_of_the_same_schedule_is_accepted(data, cli):
    """A ModelCheckpoint added with every_n_epochs=1 has the state key of the YAML's own last.ckpt
    writer, and Lightning refused the run ("Found more than one stateful callback")."""
    extra = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.filename=every-{epoch}",
             "--trainer.callbacks.every_n_epochs=1", "--trainer.callbacks.save_top_k=-1"]  # fmt: skip
    args = [*cli_args(data, cli), *TINY_CLASSIFIER, *extra]
    assert main(["fit", *args, "--trainer.max_epochs=1"]) == 0
    assert main(["fit", *args, "--trainer.max_epochs=2", "--ckpt_path=last"]) == 0
    names = sorted(p.name for p in (cli / "checkpoints").iterdir())
    assert "last.ckpt" in names and {"every-epoch=0.ckpt", "every-epoch=1.ckpt"} <= set(names), names
