"""`cmav fit|validate` (cmav/cli/train.py): a refusal of the data module, a missing checkpoint or
pipeline file and a callback's refusal are one `error:` line; a model image_size that disagrees
with data.image_size is refused, not overwritten; a resume after `cmav validate` logs into its own
run's folder, and its saved config.yaml trains the run again; data.features switches kind from
the command line or a YAML overlay."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from cmav.cli.main import main

from cli_runs import TINY_CLASSIFIER, cli_args, data_with_classifier, one_error_line

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*holds no random state.*"),
    pytest.mark.filterwarnings("ignore:.*was saved after batch.*"),
    pytest.mark.filterwarnings("ignore:.*scores the weights the config builds.*"),
]

TINY_S2I = ["--model.init_args.sample_every_n_steps=0", "--model.init_args.generator.base_channels=8",
            "--model.init_args.generator.max_channels=16", "--model.init_args.discriminator.base_channels=8",
            "--model.init_args.discriminator.max_channels=16"]  # fmt: skip




@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """13 classes, 2 pairs each per split, and a tiny sound classifier trained for one epoch by `cmav fit`."""
    return data_with_classifier(tmp_path_factory.mktemp("cli_train"))


@pytest.fixture
def cli(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cmav"])
    return tmp_path / "run"




# --- 1: one error line --------------------------------------------------------------------------------
def test_a_refusal_of_the_data_module_is_one_line(data, cli, capsys):
    """The data module is built directly (no class_path), so jsonargparse's error had no cause to
    unwrap: a 60-line traceback, exit status 1."""
    err = one_error_line(["fit", *cli_args(data, cli), "--data.holdout_gap_ms=-1"], capsys)
    assert err.startswith("error: data: holdout_gap_ms must be >= 0"), err
    assert not cli.exists()


def test_a_missing_encoder_checkpoint_is_one_line_naming_the_option_and_how_to_make_it(data, cli, capsys):
    err = one_error_line(["fit", *cli_args(data, cli, "s2i_c.yaml"), *TINY_S2I,
                      "--model.init_args.audio_encoder_ckpt=runs/none/last.ckpt"], capsys)  # fmt: skip
    assert err.startswith("error: model (cmav.tasks.S2ITask): checkpoint not found: runs/none/last.ckpt"), err
    assert "model.init_args.audio_encoder_ckpt" in err and "experiments/audio_classifier.yaml" in err, err


def test_a_missing_diffusion_pipeline_is_one_line(data, cli, capsys):
    err = one_error_line(["fit", *cli_args(data, cli, "audio_token.yaml"), f"--model.init_args.audio_encoder_ckpt={data['ckpt']}",
                      "--model.init_args.pipeline=nowhere/pipeline"], capsys)  # fmt: skip
    assert err.startswith("error: model (cmav.tasks.audio_token.AudioTokenTask): "), err
    assert "nowhere/pipeline" in err and "(model.init_args.pipeline)" in err, err


def test_a_callbacks_refusal_is_one_line_and_leaves_no_empty_log_folder(data, cli, capsys):
    err = one_error_line(["fit", *cli_args(data, cli, "s2i_c.yaml"), *TINY_S2I, "--trainer.max_steps=1",
                      f"--model.init_args.audio_encoder_ckpt={data['ckpt']}",
                      "--trainer.callbacks+=cmav.evaluation.JudgedAccuracyMonitor",
                      "--trainer.callbacks.judge_ckpt=runs/missing.ckpt"], capsys)  # fmt: skip
    assert err == "error: runs/missing.ckpt: judge checkpoint not found (JudgedAccuracyMonitor.judge_ckpt)", err
    assert not list(cli.glob("version_*"))
    # a TypeError the callback raises itself is a refusal too
    err = one_error_line(["fit", *cli_args(data, cli), *TINY_CLASSIFIER, "--trainer.max_steps=1",
                      "--trainer.callbacks+=cmav.evaluation.JudgedAccuracyMonitor",
                      f"--trainer.callbacks.judge_ckpt={data['ckpt']}"], capsys)  # fmt: skip
    assert err == "error: JudgedAccuracyMonitor scores S2I or I2S generators, not a ClassifierTask", err
    assert not list(cli.glob("version_*"))


# --- 2: model image_size ------------------------------------------------------------------------------
def test_a_model_image_size_other_than_the_datas_is_refused_naming_both(data, cli, tmp_path, capsys):
    """The link from data.image_size wrote over it: a 64x64 generator for --model.init_args.image_size 32."""
    given = ["fit", *cli_args(data, cli), *TINY_CLASSIFIER]
    err = one_error_line([*given, "--model.init_args.image_size=16"], capsys)
    assert "model.init_args.image_size 16" in err and "data.image_size 32" in err, err
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  init_args:\n    image_size: 48\n")
    err = one_error_line([*given, "--config", str(overlay)], capsys)
    assert "model.init_args.image_size 48" in err and "data.image_size 32" in err, err
    assert not cli.exists()


# --- 3, 4: resume after validate; the saved config ----------------------------------------------------
def test_a_resume_after_validate_logs_into_the_training_runs_folder_and_saves_no_ckpt_path(data, cli, capsys):
    args = ["fit", *cli_args(data, cli), *TINY_CLASSIFIER]
    assert main([*args, "--trainer.max_epochs=1", "--model.init_args.image_size=32"]) == 0  # the data's: accepted
    assert main(["validate", *cli_args(data, cli), *TINY_CLASSIFIER, "--ckpt_path=last"]) == 0
    validated = (cli / "version_1" / "config.yaml").read_text()
    assert main([*args, "--trainer.max_epochs=2", "--ckpt_path=last"]) == 0
    assert len(list((cli / "version_0").glob("events.out.tfevents.*"))) == 2
    assert len(list((cli / "version_1").glob("events.out.tfevents.*"))) == 1
    assert (cli / "version_1" / "config.yaml").read_text() == validated
    assert sorted(p.name for p in cli.glob("version_*")) == ["version_0", "version_1"]
    # the resumed run's config.yaml trains the run again from the start; the resume is a comment
    saved = cli / "version_0" / "config.yaml"
    text = saved.read_text()
    assert yaml.safe_load(text)["ckpt_path"] is None
    assert text.startswith("# resumed from ") and "last.ckpt" in text.splitlines()[0]
    # an older config.yaml that says `ckpt_path: last`: the error names the file it came from
    old = cli.parent / "old_config.yaml"
    old.write_text(text.replace("ckpt_path: null", "ckpt_path: last"))
    other = cli.parent / "other"
    err = one_error_line(["fit", "--config", str(old), f"--trainer.default_root_dir={other}"], capsys)
    assert "no last.ckpt to resume" in err and f"ckpt_path: last in {old}" in err, err


def test_the_log_version_is_stored_in_the_checkpoint(data):
    ckpt = torch.load(data["ckpt"], map_location="cpu", weights_only=True)
    assert ckpt["cmav_log_versions"] == {"TensorBoardLogger": 0}


# --- 5: data.features ---------------------------------------------------------------------------------
HARMONIC = ("audio_classifier.yaml", "audio_harmonic.yaml")


def _printed_features(data: dict, run: Path, capsys, *extra: str, configs=HARMONIC) -> dict | None:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["fit", *cli_args(data, run, *configs), *extra, "--print_config"])
    assert exc.value.code == 0, capsys.readouterr().err
    return yaml.safe_load(capsys.readouterr().out)["data"]["features"]


def _every_option(settings: dict) -> dict:
    """The front end's settings with every option, as config.yaml writes them (lists for tuples)."""
    from cmav.features.frontend import front_end_config

    return json.loads(json.dumps(front_end_config(settings).to_dict()))


@pytest.mark.parametrize(("extra", "want"), [
    ((), {"kind": "harmonic"}),
    (("--data.features.kind", "cqt"), {"kind": "cqt"}),
    (("--data.features.kind=lms", "--data.features.n_mels=64"), {"kind": "lms", "n_mels": 64}),
    (("--data.features", "{kind: lms}"), {"kind": "lms"}),
    (("--data.features.f_max", "3000"), {"kind": "harmonic", "f_max": 3000}),
    (("--data.features.class_path", "cmav.features.LogMelConfig"), {"kind": "lms"}),
    (("--data.features", "null", "--data.features.n_mels", "64"), {"n_mels": 64}),
])
def test_data_features_switch_kind_from_the_command_line(data, cli, capsys, extra, want):
    """Once a YAML set data.features, another kind was jsonargparse's 70-line union error, and a
    class_path kept the harmonic settings (n_fft 4096, f_max 2000) under LMS."""
    assert _printed_features(data, cli, capsys, *extra) == _every_option(want)


def test_data_features_of_a_yaml_overlay_switch_kind_or_merge(data, cli, tmp_path, capsys):
    cqt, part = tmp_path / "cqt.yaml", tmp_path / "part.yaml"
    cqt.write_text("data:\n  features:\n    kind: cqt\n    bins_per_octave: 24\n")
    part.write_text("data:\n  features:\n    f_max: 3000.0\n")
    assert _printed_features(data, cli, capsys, "--config", str(cqt)) == _every_option({"kind": "cqt",
                                                                                         "bins_per_octave": 24})
    assert _printed_features(data, cli, capsys, "--config", str(part)) == _every_option({"kind": "harmonic",
                                                                                          "f_max": 3000.0})
    assert _printed_features(data, cli, capsys, configs=("audio_classifier.yaml",)) is None


def test_a_wrong_front_end_option_is_one_line_naming_it(data, cli, capsys):
    err = one_error_line(["fit", *cli_args(data, cli, *HARMONIC), "--data.features.n_mels=64"], capsys)
    assert err.startswith("error: data: front end 'harmonic' has no option(s) ['n_mels']"), err
    err = one_error_line(["fit", *cli_args(data, cli), "--data.features.n_mels=many"], capsys)
    assert err.startswith("error: data: lms front end: n_mels must be a whole number, got 'many'"), err


def test_front_end_settings_merge_within_a_kind_and_start_afresh_on_another():
    from cmav.features.frontend import front_end_config, merge_front_end_settings

    assert merge_front_end_settings({"kind": "harmonic", "f_max": 2000.0}, {"f_max": 3000.0}) == \
        {"kind": "harmonic", "f_max": 3000.0}  # fmt: skip
    assert merge_front_end_settings({"kind": "harmonic", "n_fft": 4096}, {"kind": "stft"}) == {"kind": "stft"}
    assert merge_front_end_settings({"n_mels": 64}, {"kind": "lms", "f_max": 8000.0}) == \
        {"n_mels": 64, "kind": "lms", "f_max": 8000.0}  # fmt: skip
    assert merge_front_end_settings({"kind": "cqt"}, None) is None
    # a config.yaml saved while features was typed as a union of config classes
    saved = {"class_path": "cmav.features.HarmonicConfig", "init_args": {"kind": "harmonic", "f_max": 2500.0}}
    assert front_end_config(saved).f_max == 2500.0 and front_end_config(saved).kind == "harmonic"
    assert merge_front_end_settings({"kind": "harmonic"}, saved) == {"kind": "harmonic", "f_max": 2500.0}
    # ints where a float is declared, as YAML writes 3000 (what jsonargparse used to convert)
    assert front_end_config({"kind": "harmonic", "f_max": 3000}).f_max == 3000.0
    assert isinstance(front_end_config({"kind": "harmonic", "f_max": 3000}).f_max, float)
    with pytest.raises(ValueError, match=r"lms front end: mono must be true or false, got 'yes'"):
        front_end_config({"mono": "yes"})
