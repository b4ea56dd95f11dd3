"""Ablation grids: what a grid file may hold (clear errors naming the file and key), resuming the
robustness grid (trainer and threads in its key, runs.jsonl reread before every cell), the lock
that keeps a second s2i/token run out of a folder in use, checkpoints given as stages.<stage>.ckpt
checked against the grid's data, and the cross-source root checked to be a re-render of data.root."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from cmav.ablation import load_grid
from cmav.standin.build import MANIFEST
from cmav.standin.soundfonts import soundfont_record

from fixtures import make_suburmp

EXPERIMENTS = Path(__file__).parents[1] / "experiments" / "ablations"
pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY_AUDIO = {"audio_encoder": {"n_blocks": 2, "base_channels": 4, "max_channels": 8, "feature_dim": 8, "dropout": 0.0}}
TINY_JUDGE = {"image_judge": {"n_blocks": 2, "base_channels": 4, "max_channels": 8, "feature_dim": 8, "dropout": 0.0,
                              "block_dropout": 0.0}, "augment": {"enabled": False}}  # fmt: skip
QUIET = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "logger": None,
         "limit_val_batches": 0, "num_sanity_val_steps": 0, "log_every_n_steps": 1}  # fmt: skip


def font(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def standin(root: Path, font_path: Path, **params) -> Path:
    """A fixture root with a stand-in manifest: rendered from ``font_path`` with ``params``."""
    make_suburmp(root, chunks=3)
    p = {"builder_version": 1, "preset": "fixture", "seed": 0, "frame_size": 96, "jpeg_quality": 90,
         "soundfont": font_path.name, **params}  # fmt: skip
    (root / MANIFEST).write_text(json.dumps({"params": p, "soundfont": soundfont_record(font_path), "complete": True}))
    return root


def write_grid(tmp_path: Path, text: str, name: str = "grid.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------ grid files (9, 8)


@pytest.mark.parametrize(("text", "preset", "message"), [
    ("- a\n- b\n", None, r"grid\.yaml: a grid YAML is a mapping .* got a list"),
    ("kind: s2i\ndata: {}\npresets: {quick: oops}\n", "quick", r"grid\.yaml: presets\.quick must be a mapping"),
    ("kind: s2i\ndata: {}\npresets: [quick]\n", "quick", r"grid\.yaml: presets must map preset names"),
    ("kind: s2i\nseeds: [0]\ndata: {root: x}\nvariants: [{variant: s2i_c}]\n", None,
     r"grid\.yaml: variants\[0\] needs a `name`"),
    ("kind: robustness\nseeds: [0]\nvariants: [{name: none}]\n", None, r"grid\.yaml: no `data` section"),
    ("kind: s2i\nseeds: abc\ndata: {}\n", None, r"grid\.yaml: seeds must be a non-empty list of integers.*'abc'"),
    ("kind: s2i\nseeds: []\ndata: {}\n", None, r"grid\.yaml: seeds must be a non-empty list of integers.*\[\]"),
    ("kind: s2i\nseeds: [0]\ndata: {}\nstages: {s2i: 5}\n", None, r"grid\.yaml: stages\.s2i must be a mapping"),
    ("kind: robustness\ndata: {}\nvariants: [{name: +eq}, {name: eq}]\n", None,
     r"grid\.yaml: variants '\+eq' and 'eq' would share the folder runs/eq/"),
    ("kind: s2i\nthreads: two\ndata: {}\n", None, r"grid\.yaml: threads must be null or a positive integer.*'two'"),
    ("kind: s2i\nthreads: 0\ndata: {}\n", None, r"grid\.yaml: threads must be null or a positive integer.*0"),
])  # fmt: skip
def test_a_bad_grid_file_is_refused_naming_the_file_and_the_key(tmp_path, text, preset, message):
    with pytest.raises(ValueError, match=message):
        load_grid(write_grid(tmp_path, text), preset)


def test_seeds_default_to_zero_and_a_dict_grid_is_checked_too(tmp_path):
    from cmav.ablation import run_ablation

    assert load_grid(write_grid(tmp_path, "data: {root: x}\n"))["seeds"] == [0]
    with pytest.raises(ValueError, match=r"seeds must be a non-empty list"):
        run_ablation({"kind": "s2i", "seeds": [], "data": {}}, out_dir=tmp_path / "out")
    with pytest.raises(ValueError, match=r"variants 'a b' and 'a_b' would share the folder runs/a_b/"):
        run_ablation({"kind": "s2i", "data": {}, "variants": [{"name": "a b"}, {"name": "a_b"}]},
                     out_dir=tmp_path / "out")  # fmt: skip


# ------------------------------------------------------------------------- the s2i grid's up-front check (5)


def test_the_s2i_grid_checks_every_variant_and_stage_before_anything_trains(tmp_path):
    from cmav.ablation import s2i

    cfg = load_grid(EXPERIMENTS / "s2i.yaml", "quick")
    cfg["data"]["root"] = str(tmp_path / "no_data_here")  # reached only when the check lets it through
    out = tmp_path / "out"
    out.mkdir()
    typo = {**cfg, "variants": [{"name": "A", "variant": "s2i_c"}, {"name": "B", "variant": "s2i_c", "wrong_player_trm": False}]}
    with pytest.raises(ValueError, match=r"variant 'B' .*S2ITask takes no \['wrong_player_trm'\]"):
        s2i.run(typo, out)
    fixed = {**cfg, "variants": [{"name": "A", "variant": "s2i_c", "image_size": 16}]}
    with pytest.raises(ValueError, match=r"variant 'A' .*\['image_size'\] are set by the grid"):
        s2i.run(fixed, out)
    stages = {k: v for k, v in cfg["stages"].items() if k != "image_judge"}
    with pytest.raises(ValueError, match=r"stages \['image_judge'\] missing"):
        s2i.run({**cfg, "stages": stages}, out)
    assert sorted(p.name for p in out.iterdir()) == []  # nothing trained, nothing written


# ------------------------------------------------------------------- the lock of s2i, i2s and token (2)


@pytest.mark.parametrize("kind", ["s2i", "i2s", "token"])
def test_s2i_i2s_and_token_grids_refuse_a_second_run_into_a_folder_in_use(tmp_path, kind, capsys):
    from cmav.ablation import i2s, s2i, token
    from cmav.ablation.grid import LOCK

    run = {"s2i": s2i.run, "i2s": i2s.run, "token": token.run}[kind]
    cfg = load_grid(EXPERIMENTS / f"{kind}.yaml", "quick")
    cfg["data"]["root"] = str(tmp_path / "no_data_here")  # the run fails right after taking the lock
    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{other.pid}\n")
        with pytest.raises(RuntimeError, match=rf"another `cmav ablate` \({kind} grid, process {other.pid}\) is running"):
            run(cfg, out)
        assert (out / LOCK).read_text() == f"{other.pid}\n"  # the other run's lock is left alone
    finally:
        other.kill()
        other.wait()
    # the other run is gone (killed): its lock is taken over, and removed when this run ends, on error too
    with pytest.raises(FileNotFoundError, match="no_data_here"):
        run(cfg, out)
    assert f"left by process {other.pid}, which is gone; taking it over" in capsys.readouterr().out
    assert not (out / LOCK).exists()


def test_the_ablate_help_says_which_grid_kinds_may_run_as_shards():
    import argparse

    from cmav.cli import experiments

    parser = argparse.ArgumentParser()
    experiments.add_parser(parser.add_subparsers())
    text = " ".join(next(a for a in parser._subparsers._group_actions[0].choices["ablate"]._actions
                         if "--set" in a.option_strings).help.split())  # fmt: skip
    assert "audio_repr and robustness grids keep finished runs" in text
    assert "retrain every variant on every call" in text and "they refuse a second run into a folder in use" in text


# ------------------------------------------------------------ robustness grid: resume key and shards (1)


def test_robustness_runs_are_keyed_by_trainer_and_threads_and_runs_jsonl_is_reread_before_every_cell(
        tmp_path, monkeypatch, capsys):  # fmt: skip
    from cmav.ablation import robustness

    train = standin(tmp_path / "train", font(tmp_path / "f/FontA.sf2", b"a"))
    cross = standin(tmp_path / "cross", font(tmp_path / "f/FontB.sf2", b"b"))
    cfg = load_grid(EXPERIMENTS / "robustness.yaml", "quick")
    cfg.update(seeds=[0, 1], steps=2, variants=[{"name": "none", "groups": []}], model=TINY_AUDIO,
               trainer={**QUIET, "logger": False}, cross_source={"root": str(cross)})  # fmt: skip
    cfg["data"].update(root=str(train), cache_dir=str(tmp_path / "cache"))
    out = tmp_path / "grid"
    out.mkdir()

    # another shard into the same folder finishes seed 1 while this one trains seed 0
    variant = cfg["variants"][0]
    model, data, steps = robustness.variant_setup(cfg, variant)
    aug = robustness.variant_augment(cfg, variant)
    key1 = robustness.config_key(cfg, "none", 1, aug, train, model, steps, data, cross)
    their_ckpt = tmp_path / "the other shard's.ckpt"
    their_ckpt.write_bytes(b"the other shard's weights")
    theirs = {"config_key": key1, "variant": "none", "seed": 1, "groups": [], "train_root": str(train), "train_s": 1.0,
              "checkpoint": str(their_ckpt), "checkpoint_sha256": _sha(their_ckpt), "in_source": 0.5,
              "cross_source": 0.25, "in_source_balanced": 0.5, "cross_source_balanced": 0.25, "per_class": {}}  # fmt: skip
    real_fit = robustness.fit

    def fit_beside_another_shard(*args, **kwargs):
        path = real_fit(*args, **kwargs)
        if not (out / "runs.jsonl").exists():
            (out / "runs.jsonl").write_text(json.dumps(theirs) + "\n")
        return path

    monkeypatch.setattr(robustness, "fit", fit_beside_another_shard)
    result = robustness.run(cfg, out)
    monkeypatch.setattr(robustness, "fit", real_fit)
    assert [r["checkpoint"] for r in result["runs"]][1] == str(their_ckpt)
    assert not (out / "runs" / "none" / "seed1").exists()
    assert "none seed 1: done before (runs.jsonl)" in capsys.readouterr().out

    one = {**cfg, "seeds": [0]}
    robustness.run(one, out)  # the same settings: reused
    assert "none seed 0: done before" in capsys.readouterr().out
    # other trainer settings (gradient clipping) or torch threads: trained again, not reused
    for changed in ({**one, "trainer": {**one["trainer"], "gradient_clip_val": 1.0}}, {**one, "threads": 2}):
        robustness.run(changed, out)
        text = capsys.readouterr().out
        assert "done before" not in text and "none seed 0: in-source" in text
    keys = [json.loads(line)["config_key"] for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(k["trainer"].get("gradient_clip_val"), k["threads"]) for k in keys if k["seed"] == 0] == [
        (None, 1), (1.0, 1), (None, 2)]  # fmt: skip


# ------------------------------------------------------- robustness: the cross-source root (4), data (6, 7)


def test_an_existing_cross_source_root_must_be_a_re_render_of_data_root(tmp_path):
    from cmav.ablation.robustness import cross_source_root

    fa, fb, fc = font(tmp_path / "f/FontA.sf2", b"a"), font(tmp_path / "f/FontB.sf2", b"b"), font(tmp_path / "f/FontC.sf2", b"c")
    train = standin(tmp_path / "train", fa)
    same = standin(tmp_path / "same", fb, render="varied")  # the render may differ, the melodies and frames not
    other_seed = standin(tmp_path / "other_seed", fb, seed=7, frame_size=128)
    cfg = {"source": "g.yaml", "data": {"root": str(train)}}
    assert cross_source_root({**cfg, "cross_source": {"root": str(same)}}, tmp_path) == same
    assert cross_source_root({**cfg, "cross_source": {"root": str(same), "soundfont": str(fb)}}, tmp_path) == same
    with pytest.raises(ValueError, match=r"g\.yaml: cross_source\.root .*other_seed is not a re-render of data\.root "
                                         r".*frame_size, seed: .*seed: 0 -> 7"):  # fmt: skip
        cross_source_root({**cfg, "cross_source": {"root": str(other_seed)}}, tmp_path)
    # a root given for another font's copy wins over the YAML's font, and the grid says so
    with pytest.warns(UserWarning, match=r"g\.yaml: cross_source\.soundfont .*FontC\.sf2 is not the font .*scores the root's own font"):
        assert cross_source_root({**cfg, "cross_source": {"root": str(same), "soundfont": str(fc)}}, tmp_path) == same


def test_the_evaluation_splits_are_shared_only_by_variants_that_open_them_alike(tmp_path):
    from cmav.ablation.robustness import eval_split_key
    from cmav.data.datamodule import AudioVisualDataModule

    root = str(make_suburmp(tmp_path / "d"))

    def key(**kw):
        return eval_split_key(AudioVisualDataModule(root=root, progress=False, **kw))

    base = key(image_size=32)
    assert key(image_size=32, batch_size=7, holdout_tail=0.2) == base  # how it trains, not how the split opens
    from cmav.data.audio_io import ChunkSpec

    others = [key(image_size=16), key(image_size=32, layout="paired"), key(image_size=32, features={"kind": "mfcc"}),
              key(image_size=32, chunk=ChunkSpec(n_samples=11025)), key(image_size=32, cache_dir=str(tmp_path / "c"))]  # fmt: skip
    assert len({base, *others}) == 6


def test_a_robustness_grid_refuses_data_augment_set_by_hand():
    from cmav.ablation.robustness import _validate

    base = {"source": "g.yaml", "data": {"root": "x"}, "augment": {"eq": {"p": 1.0}}}
    with pytest.raises(ValueError, match=r"g\.yaml: data\.augment is not read .*set by its `groups`"):
        _validate({**base, "data": {"root": "x", "augment": {"eq": {"p": 1.0}}}, "variants": [{"name": "none"}]})
    with pytest.raises(ValueError, match=r"g\.yaml: variant 'v': data\.augment is not read .*set by its `groups`"):
        _validate({**base, "variants": [{"name": "none"}, {"name": "v", "data": {"augment": {"eq": {"p": 1.0}}}}]})
    with pytest.raises(ValueError, match=r"variants '\+eq' and 'eq' would share the folder runs/eq/"):
        _validate({**base, "variants": [{"name": "none"}, {"name": "+eq", "groups": ["eq"]}, {"name": "eq"}]})


# ---------------------------------------------------------------- given checkpoints checked against the data (3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A sound classifier, an image judge and a player judge, a few batches each on a fixture root."""
    from cmav.ablation.grid import datamodule, fit
    from cmav.tasks import ClassifierTask

    tmp = tmp_path_factory.mktemp("given")
    root = make_suburmp(tmp / "data", chunks=3)
    cfg = {"data": {"root": str(root), "image_size": 32, "batch_size": 8, "cache_dir": str(tmp / "cache")},
           "trainer": QUIET}  # fmt: skip
    dm = datamodule(cfg, tmp)
    ckpts = {}
    for stage, task in (("audio_classifier", ClassifierTask(modality="audio", target="label", image_size=32, **TINY_AUDIO)),
                        ("image_judge", ClassifierTask(modality="image", target="label", image_size=32, **TINY_JUDGE)),
                        ("player_judge", ClassifierTask(modality="image", target="track", image_size=32, **TINY_JUDGE))):  # fmt: skip
        ckpts[stage] = fit(cfg, tmp, dm, stage, 0, task, tmp / f"{stage}.ckpt", 1)
    return cfg, ckpts, tmp


def _given(cfg: dict, stage: str, ckpt: Path, tmp: Path, **data):
    from cmav.ablation.grid import classifier_stage, datamodule
    from cmav.tasks.classifier import load_image_judge, load_sound_classifier

    grid = {**cfg, "data": {**cfg["data"], **data}, "stages": {stage: {"ckpt": str(ckpt)}}}
    load = {"audio_classifier": load_sound_classifier, "image_judge": load_image_judge,
            "player_judge": lambda p: load_image_judge(p, target="track")}[stage]  # fmt: skip
    return classifier_stage(grid, tmp, datamodule(grid, tmp), stage, 0, tmp / "unused.ckpt", None, load)


def test_a_given_checkpoint_of_other_data_settings_is_refused(trained):
    cfg, ckpts, tmp = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same root: no word
        for stage, ckpt in ckpts.items():
            assert _given(cfg, stage, ckpt, tmp) == ckpt
    with pytest.raises(ValueError, match=r"stages\.audio_classifier\.ckpt .*front end kind: lms -> mfcc"):
        _given(cfg, "audio_classifier", ckpts["audio_classifier"], tmp, features={"kind": "mfcc"})
    assert _given(cfg, "audio_classifier", ckpts["audio_classifier"], tmp, image_size=16)  # it reads no frames
    with pytest.raises(ValueError, match=r"stages\.image_judge\.ckpt .*image_size: 32 -> 16"):
        _given(cfg, "image_judge", ckpts["image_judge"], tmp, image_size=16)
    assert _given(cfg, "image_judge", ckpts["image_judge"], tmp, features={"kind": "mfcc"})  # it reads no audio
    with pytest.raises(ValueError, match=r"stages\.player_judge\.ckpt .*holdout_tail: 0\.0 -> 0\.5"):
        _given(cfg, "player_judge", ckpts["player_judge"], tmp, holdout_tail=0.5)


def test_a_given_checkpoint_of_another_root_is_refused_for_a_development_split_and_warned_of_otherwise(trained):
    import shutil

    from cmav.data.player_split import MANIFEST as SPLIT

    cfg, ckpts, tmp = trained
    elsewhere = tmp / "elsewhere"
    if not elsewhere.exists():
        shutil.copytree(cfg["data"]["root"], elsewhere)
    with pytest.warns(UserWarning, match=rf"trained on {cfg['data']['root']}, the grid's data is {elsewhere}"):
        _given(cfg, "image_judge", ckpts["image_judge"], tmp, root=str(elsewhere))
    dev = tmp / "dev"
    if not dev.exists():
        shutil.copytree(cfg["data"]["root"], dev)
        (dev / SPLIT).write_text("{}")
    with pytest.raises(ValueError, match=rf"trained on {cfg['data']['root']}, but the grid's data {dev} is a "
                                         r"development split \(cmav_player_split\.json\)"):  # fmt: skip
        _given(cfg, "image_judge", ckpts["image_judge"], tmp, root=str(dev))


def test_the_grid_yamls_still_load():
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        for preset in [None, *sorted(yaml.safe_load(path.read_text()).get("presets") or {})]:
            cfg = load_grid(path, preset)
            assert cfg["seeds"] and isinstance(cfg["data"], dict)


def test_the_token_grid_checks_a_given_s2i_checkpoint_before_anything_trains(trained, tmp_path):
    from cmav.ablation import token
    from cmav.ablation.grid import datamodule, fit
    from cmav.tasks import S2ITask

    cfg, ckpts, tmp = trained
    tiny = {"base_channels": 4, "max_channels": 8, "cond_proj_dim": 8}
    s2i = S2ITask(variant="s2i_c", encoder_mode="frozen", audio_encoder_ckpt=str(ckpts["audio_classifier"]), image_size=32,
                  generator=tiny, discriminator=tiny, sample_every_n_steps=0)  # fmt: skip
    ckpt = fit(cfg, tmp, datamodule(cfg, tmp), "s2i", 0, s2i, tmp_path / "s2i.ckpt", 1, gan=True)
    grid = load_grid(EXPERIMENTS / "token.yaml", "quick")
    grid["data"].update(root=cfg["data"]["root"], image_size=16, cache_dir=cfg["data"]["cache_dir"])
    grid["stages"]["s2i"] = {"ckpt": str(ckpt)}
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"stages\.s2i\.ckpt .*s2i\.ckpt: trained on other data settings .*image_size: 32 -> 16"):
        token.run(grid, out)
    assert not (out / "judges").exists() and not (out / "runs").exists()


def test_the_token_grid_checks_every_given_checkpoint_before_the_diffusion_stage(trained, tmp_path):
    """A given sound classifier of another front end is refused before the diffusion model trains
    (its stage is the long one; the classifier's own stage comes after it), and before any judge is
    trained into the folder."""
    from cmav.ablation import token

    cfg, ckpts, _ = trained
    grid = load_grid(EXPERIMENTS / "token.yaml", "quick")
    grid["data"].update(root=cfg["data"]["root"], image_size=32, cache_dir=cfg["data"]["cache_dir"], features={"kind": "mfcc"})
    grid["stages"]["audio_classifier"] = {"ckpt": str(ckpts["audio_classifier"])}
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"stages\.audio_classifier\.ckpt .*audio_classifier\.ckpt: trained on other data "
                                         r"settings .*front end kind: lms -> mfcc"):  # fmt: skip
        token.run(grid, out)
    assert not (out / "judges").exists() and not (out / "diffusion_base").exists()


def test_a_given_checkpoint_of_other_classes_is_refused(trained, tmp_path):
    from fixtures import make_paired

    cfg, ckpts, tmp = trained
    other = make_paired(tmp_path / "other", classes=("dog", "drum"), per_class=3)
    with pytest.raises(ValueError, match=r"stages\.image_judge\.ckpt .*image_judge\.ckpt: its classes \[.*\] differ from the "
                                         r"data's \['dog', 'drum'\]"):  # fmt: skip
        _given(cfg, "image_judge", ckpts["image_judge"], tmp_path, root=str(other), layout="paired",
               cache_dir=str(tmp_path / "c"))


# ------------------------------------------------- tables and plots say how many seeds gave a figure (1, 2)

TWO_METRICS = [("judged_acc", "judged acc", lambda m: m["acc"]), ("fid", "judge-FID", lambda m: m["fid"])]


def _rows_with_gaps():
    """A: FID of 2 of 3 seeds; B: no FID at all; C: one seed (a mean, no sd)."""
    from cmav.ablation.s2i import summarise

    nan = float("nan")
    runs = [{"variant": "A", "metrics": {"acc": a, "fid": f}} for a, f in ((0.5, 40.0), (0.6, nan), (0.7, 50.0))]
    runs += [{"variant": "B", "metrics": {"acc": a, "fid": nan}} for a in (0.4, 0.5, 0.6)]
    runs += [{"variant": "C", "metrics": {"acc": 0.8, "fid": 30.0}}]
    return summarise(runs, ["A", "B", "C"], TWO_METRICS)


def test_table_csv_has_the_seed_count_of_every_metric(tmp_path):
    import csv

    from cmav.ablation.s2i import write_tables

    csv_path, md_path = write_tables(_rows_with_gaps(), tmp_path, metrics=TWO_METRICS)
    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0]) == ["variant", "n_seeds", "judged_acc_mean", "judged_acc_sd", "judged_acc_n",
                             "fid_mean", "fid_sd", "fid_n"]  # fmt: skip
    assert [(r["variant"], r["n_seeds"], r["judged_acc_n"], r["fid_n"]) for r in rows] == [
        ("A", "3", "3", "2"), ("B", "3", "3", "0"), ("C", "1", "1", "1")]  # fmt: skip
    assert "45.00 ± 7.07 (2 of 3 seeds)" in md_path.read_text()  # what table.md said all along


def _error_bar_xs(ax) -> list[float]:
    from matplotlib.container import ErrorbarContainer

    xs = []
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            for lines in c.lines[2]:
                xs += [float(seg[0][0]) for seg in lines.get_segments()]
    return sorted(xs)


def test_metrics_png_leaves_out_a_missing_bar_and_error_bar_and_says_how_many_seeds_gave_each(tmp_path, monkeypatch):
    """A missing mean is no bar (a 0 bar would be the best FID) but 'n/a'; a missing sd no error bar
    (a 0 one would read as seeds that agree); '(n/N)' under a bar that fewer than all seeds gave."""
    from matplotlib.figure import Figure

    from cmav.ablation.s2i import plot_bars

    figures = []
    real_savefig = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    assert plot_bars(_rows_with_gaps(), tmp_path / "metrics.png", TWO_METRICS).is_file()
    acc, fid = figures[0].axes[:2]
    assert [round(p.get_x() + p.get_width() / 2) for p in acc.patches] == [0, 1, 2]
    assert [p.get_height() for p in acc.patches] == pytest.approx([0.6, 0.5, 0.8])
    assert _error_bar_xs(acc) == [0.0, 1.0]  # C has one seed: no sd, no error bar
    assert [t.get_text() for t in acc.texts] == []
    assert [t.get_text() for t in acc.get_xticklabels()] == ["A", "B", "C"]

    assert [round(p.get_x() + p.get_width() / 2) for p in fid.patches] == [0, 2]  # no bar for B
    assert [p.get_height() for p in fid.patches] == pytest.approx([45.0, 30.0])
    assert _error_bar_xs(fid) == [0.0]
    assert [(t.get_text(), t.get_position()[0]) for t in fid.texts] == [("n/a", 1)]
    assert [t.get_text() for t in fid.get_xticklabels()] == ["A (2/3)", "B (0/3)", "C"]


# ------------------------------------------ i2s and token: every stage and variant checked up front (3, 8)


def test_the_i2s_grid_checks_every_variant_and_stage_before_anything_trains(tmp_path):
    from cmav.ablation import i2s

    cfg = load_grid(EXPERIMENTS / "i2s.yaml", "quick")
    cfg["data"]["root"] = str(tmp_path / "no_data_here")  # reached only when the check lets it through
    out = tmp_path / "out"
    out.mkdir()
    typo = {**cfg, "variants": [{"name": "A", "variant": "i2s_c"}, {"name": "B", "variant": "i2s_c", "wrong_player_trm": False}]}
    with pytest.raises(ValueError, match=r"i2s\.yaml: variant 'B' \(with stages\.i2s\.model\): I2STask takes no "
                                         r"\['wrong_player_trm'\]"):  # fmt: skip
        i2s.run(typo, out)
    fixed = {**cfg, "variants": [{"name": "A", "variant": "i2s_c", "image_encoder_ckpt": "x.ckpt"}]}
    with pytest.raises(ValueError, match=r"variant 'A' .*\['image_encoder_ckpt'\] are set by the grid"):
        i2s.run(fixed, out)
    stage_typo = {**cfg, "stages": {**cfg["stages"], "i2s": {"steps": 5, "model": {"genrator": {}}}}}
    with pytest.raises(ValueError, match=r"variant 'I2S-C' \(with stages\.i2s\.model\): I2STask takes no \['genrator'\]"):
        i2s.run(stage_typo, out)
    with pytest.raises(ValueError, match=r"i2s\.yaml: stages \['i2s'\] missing or incomplete"):
        i2s.run({**cfg, "stages": {**cfg["stages"], "i2s": None}}, out)
    judge_typo = {**cfg, "stages": {**cfg["stages"], "image_encoder": {"steps": 5, "model": {"image_encodr": {}}}}}
    with pytest.raises(ValueError, match=r"stages\.image_encoder\.model: ClassifierTask takes no \['image_encodr'\]"):
        i2s.run(judge_typo, out)
    assert sorted(p.name for p in out.iterdir()) == []  # nothing trained, nothing written


@pytest.mark.parametrize(("stage", "bad", "message"), [
    ("audio_token", {"embeder": {}}, r"stages\.audio_token\.model: AudioTokenTask takes no \['embeder'\]"),
    ("audio_token", {"pipeline": "x"}, r"stages\.audio_token\.model: \['pipeline'\] are set by the grid"),
    ("retrieval", {"architecure": "global"}, r"stages\.retrieval\.model: RetrievalTask takes no \['architecure'\]"),
    ("diffusion_base", {"modle": {}}, r"stages\.diffusion_base\.model: DiffusionBaseTask takes no \['modle'\]"),
    ("s2i", {"genrator": {}}, r"stages\.s2i\.model: S2ITask takes no \['genrator'\]"),
    ("s2i", {"seed": 0}, r"stages\.s2i\.model: \['seed'\] are set by the grid"),
    ("s2i", {"variant": "s2i_n"}, r"stages\.s2i\.model: \['variant'\] are set by the grid"),
    ("image_judge", {"image_judg": {}}, r"stages\.image_judge\.model: ClassifierTask takes no \['image_judg'\]"),
])  # fmt: skip
def test_the_token_grid_checks_every_stage_model_before_anything_trains(tmp_path, stage, bad, message):
    import copy

    from cmav.ablation import token

    cfg = load_grid(EXPERIMENTS / "token.yaml", "quick")
    cfg["data"]["root"] = str(tmp_path / "no_data_here")  # reached only when the check lets it through
    cfg["stages"][stage]["model"] = {**copy.deepcopy(cfg["stages"][stage].get("model") or {}), **bad}
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=rf"token\.yaml: {message}"):
        token.run(cfg, out)
    assert sorted(p.name for p in out.iterdir()) == []


def test_a_stage_model_seed_is_refused_as_it_would_pin_every_seed_of_the_grid(tmp_path):
    from cmav.ablation import s2i
    from cmav.ablation.grid import variant_model_kwargs

    cfg = {"source": "g.yaml", "seeds": [0, 1], "stages": {"s2i": {"model": {"ema_decay": 0.9}}}}
    assert variant_model_kwargs(cfg, "s2i", {"name": "A", "variant": "s2i_c"}, 1) == (
        "A", {"ema_decay": 0.9, "variant": "s2i_c", "seed": 1})  # fmt: skip
    assert variant_model_kwargs(cfg, "s2i", {"name": "A", "seed": 7}, 1)[1]["seed"] == 7  # a variant's own
    pinned = {**cfg, "stages": {"s2i": {"model": {"seed": 0}}}}
    with pytest.raises(ValueError, match=r"g\.yaml: stages\.s2i\.model\.seed: .*every seed"):
        variant_model_kwargs(pinned, "s2i", {"name": "A"}, 1)

    grid = load_grid(EXPERIMENTS / "s2i.yaml", "quick")
    grid["data"]["root"] = str(tmp_path / "no_data_here")
    grid["stages"]["s2i"]["model"]["seed"] = 0
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"s2i\.yaml: stages\.s2i\.model\.seed"):
        s2i.run(grid, out)
    assert sorted(p.name for p in out.iterdir()) == []


def test_the_shipped_grids_pass_their_up_front_checks():
    """Every preset of s2i.yaml, i2s.yaml and token.yaml passes its kind's check (a given
    checkpoint left out: the files they name are not in a fresh checkout)."""
    from cmav.ablation import i2s, s2i, token

    checks = {"s2i": s2i.check, "i2s": i2s.check, "token": token._check}
    for kind, check in checks.items():
        path = EXPERIMENTS / f"{kind}.yaml"
        for preset in [None, *sorted(yaml.safe_load(path.read_text()).get("presets") or {})]:
            cfg = load_grid(path, preset)
            for stage in cfg["stages"].values():
                if stage and stage.get("ckpt"):
                    stage["ckpt"] = None
            check(cfg)


def test_an_override_of_a_key_no_grid_reads_is_refused(tmp_path):
    """`--set seed=[7]` (for seeds) was merged and never read: the grid ran seeds 0-2 without a word."""
    with pytest.raises(ValueError, match=r"override 'seed=\[7\]': .*s2i\.yaml has no key 'seed' \(the keys a grid may set: .*seeds"):
        load_grid(EXPERIMENTS / "s2i.yaml", "quick", ["seed=[7]"])
    assert load_grid(EXPERIMENTS / "s2i.yaml", "quick", ["seeds=[7]"])["seeds"] == [7]
    # a key the YAML leaves out but its kind reads, and nested keys, are set as before
    assert load_grid(write_grid(tmp_path, "kind: s2i\ndata: {}\n"), None, ["threads=1", "data.batch_size=8"])["threads"] == 1


# ------------------------------------------------------------------------------------ review E fixes


def _tiny_robustness(tmp_path: Path, train: Path | None = None, cross: Path | None = None) -> dict:
    """The quick robustness grid cut to one variant, one seed and 2 batches of a tiny encoder on fixture roots."""
    train = train or standin(tmp_path / "train", font(tmp_path / "f/FontA.sf2", b"a"))
    cross = cross or standin(tmp_path / "cross", font(tmp_path / "f/FontB.sf2", b"b"))
    cfg = load_grid(EXPERIMENTS / "robustness.yaml", "quick")
    cfg.update(seeds=[0], steps=2, variants=[{"name": "none", "groups": []}], model=TINY_AUDIO,
               trainer={**QUIET, "logger": False}, cross_source={"root": str(cross)})  # fmt: skip
    cfg["data"].update(root=str(train), cache_dir=str(tmp_path / "cache"))
    return cfg


def _sha(path: str | Path) -> str:
    from cmav.data.files import sha256_file

    return sha256_file(path)


def test_a_reused_robustness_run_names_the_checkpoint_it_was_scored_with(tmp_path, capsys):
    """A run under other settings gets its own checkpoint: going back reuses the first record, whose
    file still holds the weights that record scored."""
    from cmav.ablation import robustness

    cfg = _tiny_robustness(tmp_path)
    out = tmp_path / "grid"
    out.mkdir()
    first = robustness.run(cfg, out)["runs"][0]
    digest = _sha(first["checkpoint"])
    other = robustness.run({**cfg, "threads": 2}, out)["runs"][0]
    assert other["checkpoint"] != first["checkpoint"] and Path(other["checkpoint"]).is_file()
    capsys.readouterr()
    again = robustness.run(cfg, out)["runs"][0]
    assert "none seed 0: done before (runs.jsonl)" in capsys.readouterr().out
    assert again["checkpoint"] == first["checkpoint"] and _sha(again["checkpoint"]) == digest


def test_a_robustness_record_of_before_hashed_folders_is_reused_only_while_its_file_holds_its_weights(tmp_path, capsys):
    """Runs logged before the checkpoint folder depended on the settings all named
    runs/<variant>/seed<k>/classifier.ckpt: the last of them to write it is reused, an earlier one
    (its weights overwritten) or one whose file is gone is trained again."""
    from cmav.ablation import robustness

    cfg = _tiny_robustness(tmp_path)
    other = {**cfg, "threads": 2}
    out = tmp_path / "grid"
    out.mkdir()
    robustness.run(cfg, out)
    robustness.run(other, out)
    old = out / "runs" / "none" / "seed0" / "classifier.ckpt"
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    old.write_bytes(Path(records[1]["checkpoint"]).read_bytes())  # the other settings' run wrote it last
    for r in records:
        r["checkpoint"] = str(old)
        r.pop("checkpoint_sha256", None)
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()
    robustness.run(other, out)
    assert "none seed 0: done before (runs.jsonl)" in capsys.readouterr().out
    rerun = robustness.run(cfg, out)["runs"][0]
    assert "done before" not in capsys.readouterr().out and rerun["checkpoint"] != str(old)
    old.unlink()
    robustness.run(other, out)
    assert "done before" not in capsys.readouterr().out


def test_a_robustness_run_is_reused_whether_its_roots_are_typed_relative_or_absolute(tmp_path, monkeypatch, capsys):
    """The same folders typed relative (as a grid YAML does) or absolute are the same settings, for
    runs logged before this was so too (their roots as typed, relative to the folder the grid ran from)."""
    from cmav.ablation import robustness

    monkeypatch.chdir(tmp_path)
    absolute = _tiny_robustness(tmp_path)
    relative = _tiny_robustness(tmp_path, Path("train"), Path("cross"))
    relative["data"]["root"], relative["cross_source"]["root"] = "train", "cross"
    out = tmp_path / "grid"
    out.mkdir()
    robustness.run(relative, Path("grid"))
    assert json.loads((out / "runs.jsonl").read_text())["config_key"]["train_root"] == "train"
    capsys.readouterr()
    robustness.run(absolute, out)
    assert "none seed 0: done before (runs.jsonl)" in capsys.readouterr().out


def test_a_cut_line_in_runs_jsonl_does_not_swallow_the_next_run(tmp_path, capsys):
    from cmav.ablation import robustness

    cfg = _tiny_robustness(tmp_path)
    out = tmp_path / "grid"
    out.mkdir()
    (out / "runs.jsonl").write_text('{"config_key": {"variant": "cut off')
    robustness.run(cfg, out)
    capsys.readouterr()
    robustness.run(cfg, out)
    assert "none seed 0: done before (runs.jsonl)" in capsys.readouterr().out


def test_a_stage_checkpoint_is_reused_whether_the_root_is_typed_relative_or_absolute(tmp_path, monkeypatch):
    """A stage's settings written by a run from the same folder with the root typed relative (as
    every stage key written so far holds it) match the same root typed absolute."""
    from cmav.ablation.grid import record, reusable, stage_key
    from cmav.data.datamodule import AudioVisualDataModule

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    cfg = {"stages": {"image_judge": {"steps": 5}}, "trainer": QUIET}
    ckpt = tmp_path / "judge.ckpt"
    ckpt.write_bytes(b"weights")
    record(ckpt, stage_key(cfg, "image_judge", 0, AudioVisualDataModule(root="data", progress=False)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reusable(ckpt, stage_key(cfg, "image_judge", 0, AudioVisualDataModule(root=str(tmp_path / "data"),
                                                                                      progress=False)))  # fmt: skip
    (tmp_path / "elsewhere").mkdir()
    with pytest.warns(UserWarning, match="other settings"):
        assert not reusable(ckpt, stage_key(cfg, "image_judge", 0, AudioVisualDataModule(root="elsewhere", progress=False)))


@pytest.mark.parametrize("kind", ["s2i", "i2s", "token"])
def test_a_rerun_of_s2i_i2s_or_token_removes_the_previous_results_before_it_changes_anything(tmp_path, kind):
    """A rerun cut off part-way leaves no table of the previous run beside its new config and checkpoints."""
    from cmav.ablation import i2s, s2i, token

    run = {"s2i": s2i.run, "i2s": i2s.run, "token": token.run}[kind]
    cfg = load_grid(EXPERIMENTS / f"{kind}.yaml", "quick")
    cfg["data"]["root"] = str(tmp_path / "no_data_here")  # the run stops right after it starts
    out = tmp_path / "out"
    (out / "wavs" / "AE").mkdir(parents=True)
    old = ["table.md", "table.csv", "results.json", "metrics.png", "samples.png"]
    for name in old:
        (out / name).write_text("the previous run's")
    with pytest.raises(FileNotFoundError, match="no_data_here"):
        run(cfg, out)
    assert [name for name in old if (out / name).exists()] == []
    assert (out / "wavs").exists() == (kind != "i2s")  # i2s's wavs/ are its results too
    assert (out / "config.yaml").is_file()


@pytest.mark.parametrize(("path", "override", "message"), [
    ("s2i", "stages.s2i.stepz=5000", r"s2i\.yaml: stages\.s2i\.stepz is not read by a grid of kind s2i \(stages\.s2i takes "
                                     r"model, steps\); did you mean steps\?"),
    ("s2i", "stages.s2i.ckpt=x.ckpt", r"stages\.s2i\.ckpt is not read by a grid of kind s2i"),
    ("s2i", "stages.s2j.steps=5", r"stages\.s2j is not read by a grid of kind s2i \(its stages: audio_classifier, image_judge, "
                                  r"player_judge, s2i\); did you mean s2i\?"),
    ("s2i", "evaluation.n_diversity_draw=64", r"evaluation\.n_diversity_draw is not read by a grid of kind s2i .*did you mean "
                                              r"n_diversity_draws\?"),
    ("s2i", "data.batch_sise=5", r"data\.batch_sise is not an option of the data module \(AudioVisualDataModule takes "
                                 r".*batch_size.*\); did you mean batch_size\?"),
    ("s2i", "trainer.max_step=3", r"trainer\.max_step is not an option of lightning\.Trainer; did you mean max_steps\?"),
    ("i2s", "trainer.max_steps=3", r"trainer\.max_steps is set by the grid .*stages\.<stage>\.steps"),
    ("audio_repr", "evaluation.per_class=3", r"evaluation\.per_class is not read by a grid of kind audio_repr \(it reads no "
                                             r"evaluation keys\)"),
    ("robustness", "stages.x.steps=3", r"stages\.x is not read by a grid of kind robustness \(it has no stages\)"),
])  # fmt: skip
def test_a_nested_key_no_grid_reads_is_refused_before_anything_is_built(tmp_path, path, override, message):
    from cmav.ablation import run_ablation

    out = tmp_path / "out"
    no_data = f"data.root={tmp_path / 'no_data_here'}"  # a key let through fails at once, not after a whole grid
    with pytest.raises(ValueError, match=message):
        run_ablation(EXPERIMENTS / f"{path}.yaml", preset="quick", out_dir=out, overrides=[no_data, override])
    assert not out.exists()


def test_every_shipped_grid_and_preset_passes_the_key_check():
    from cmav.ablation import check_grid_keys

    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        for preset in [None, *sorted(yaml.safe_load(path.read_text()).get("presets") or {})]:
            check_grid_keys(load_grid(path, preset))
    # keys the YAMLs leave out but the code reads
    check_grid_keys(load_grid(EXPERIMENTS / "token.yaml", "quick", ["evaluation.steps=5", "data.cache_dir=c",
                                                                     "trainer.gradient_clip_val=1.0"]))  # fmt: skip


def test_the_tables_say_their_sd_is_the_sample_sd(tmp_path):
    from cmav.ablation import audio_repr, i2s, robustness, s2i

    text = "mean ± sample sd (n-1) over seeds"
    s2i.write_tables(_rows_with_gaps(), tmp_path, metrics=TWO_METRICS)
    assert text in (tmp_path / "table.md").read_text().lower()
    assert text in i2s.EXPLANATION.lower()
    runs = [{"representation": "LMS", "kind": "lms", "depth": 2, "seed": s, "input_shape": [1, 8, 4], "accuracy": 0.5,
             "balanced_accuracy": 0.5, "train_s": 1.0, "parameters": 10, "front_end_chunks_per_s": 1.0} for s in (0, 1)]  # fmt: skip
    audio_repr.write_tables(audio_repr.summarise(runs, ["LMS"], [2]), tmp_path)
    assert text in (tmp_path / "table.md").read_text().lower()
    fonts = {"in_source": {"name": "A.sf2"}, "cross_source": {"name": "B.sf2"}}
    robustness.write_tables(robustness.summarise(_robustness_runs(), ["none"]), tmp_path, fonts)
    assert text in (tmp_path / "table.md").read_text().lower()


def _robustness_runs() -> list[dict]:
    nan = float("nan")
    return [{"variant": "none", "seed": s, "groups": [], "train_root": "train", "train_s": 1.0, "in_source": a,
             "cross_source": x, "in_source_balanced": a, "cross_source_balanced": x}
            for s, a, x in ((0, 0.5, 0.3), (1, 0.7, nan), (2, 0.6, 0.4))]  # fmt: skip


def test_robustness_table_csv_has_the_seed_count_and_sd_of_every_figure(tmp_path):
    import csv

    from cmav.ablation import robustness

    fonts = {"in_source": {"name": "A.sf2"}, "cross_source": {"name": "B.sf2"}}
    csv_path, _ = robustness.write_tables(robustness.summarise(_robustness_runs(), ["none"]), tmp_path, fonts)
    (row,) = list(csv.DictReader(csv_path.open()))
    assert (row["n_seeds"], row["in_source_n"], row["cross_source_n"], row["in_source_balanced_n"],
            row["cross_source_balanced_n"], row["train_s_n"]) == ("3", "3", "2", "3", "2", "3")  # fmt: skip
    assert float(row["in_source_balanced_sd"]) == pytest.approx(0.1)
    assert float(row["cross_source_balanced_sd"]) == pytest.approx(0.0707107, abs=1e-6)


def test_the_stand_in_is_said_to_be_built_only_when_it_is(tmp_path, capsys):
    """A folder whose manifest says it is complete is only checked (here refused: another seed's),
    not announced as being built; an unfinished one is."""
    from cmav.ablation.grid import data_root
    from cmav.data.errors import DataError
    from cmav.standin.build import BUILDER_VERSION, DEFAULT_SOUNDFONT, PRESETS

    params = {"builder_version": BUILDER_VERSION, "preset": "tiny", "seed": 3, "soundfont": Path(DEFAULT_SOUNDFONT).name,
              "frame_size": PRESETS["tiny"].frame_size, "jpeg_quality": 90}  # fmt: skip
    for complete in (True, False):
        out = tmp_path / str(complete)
        (out / "data").mkdir(parents=True)
        (out / "data" / MANIFEST).write_text(json.dumps({"params": params, "complete": complete, "masks": {"n": 1}}))
        with pytest.raises(DataError, match="already holds a stand-in"):
            data_root({"data": {"root": None}}, out)
        assert ("building the tiny stand-in" in capsys.readouterr().out) == (not complete)


def test_a_robustness_rerun_cut_off_part_way_leaves_no_table_of_the_previous_run(tmp_path, monkeypatch):
    """The first cell a rerun trains removes the old table."""
    from cmav.ablation import robustness

    cfg = _tiny_robustness(tmp_path)
    out = tmp_path / "grid"
    out.mkdir()
    robustness.run(cfg, out)
    robustness.run(cfg, out)  # every cell reused: the table is written again
    assert (out / "table.md").is_file()

    def cut_off(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(robustness, "fit", cut_off)
    with pytest.raises(KeyboardInterrupt):
        robustness.run({**cfg, "threads": 2}, out)
    assert [n for n in ("table.md", "table.csv", "results.json") if (out / n).exists()] == []


def test_a_robustness_variant_whose_groups_need_another_front_end_is_refused_before_anything_trains(
        tmp_path, monkeypatch):  # fmt: skip
    """tilt works on the harmonic profile only: on the LMS front end it was refused when its data
    module was built, after the variants before it had trained (hours, on the default preset)."""
    from cmav.ablation import robustness

    cfg = _tiny_robustness(tmp_path)
    cfg["variants"] = [{"name": "none", "groups": []}, {"name": "harmonic tilt", "groups": ["tilt"],
                                                        "features": {"kind": "harmonic"}},
                       {"name": "bad tilt", "groups": ["tilt"]}]  # fmt: skip
    fitted = []

    def fit(*args, **kwargs):
        fitted.append(args)
        raise AssertionError("a variant trained before the grid was checked")

    monkeypatch.setattr(robustness, "fit", fit)
    out = tmp_path / "grid"
    out.mkdir()
    with pytest.raises(ValueError, match=r"variant 'bad tilt': audio augmentation tilt works on the harmonic "
                                         r"front end .*not on 'lms'"):  # fmt: skip
        robustness.run(cfg, out)
    assert fitted == []
    # the grid's own front end counts for the variants that do not set one
    cfg["data"]["features"] = {"kind": "harmonic"}
    cfg["variants"] = [{"name": "none", "groups": []}, {"name": "tilt", "groups": ["tilt"]},
                       {"name": "lms tilt", "groups": ["tilt"], "features": {"kind": "lms"}}]  # fmt: skip
    with pytest.raises(ValueError, match=r"variant 'lms tilt': audio augmentation tilt .*not on 'lms'"):
        robustness._validate(cfg)
    cfg["variants"].pop()
    assert [v["name"] for v in robustness._validate(cfg)] == ["none", "tilt"]


def test_the_token_grid_refuses_a_pipeline_folder_it_cannot_use_before_anything_trains(tmp_path, monkeypatch):
    """diffusion.pipeline misspelt, or a folder whose tokenizer lacks the prompt template's words: both
    used to fail after the image judge and the retrieval model had trained (thousands of steps on the
    default preset)."""
    import torch

    from cmav.ablation import grid, token
    from cmav.data.instruments import INSTRUMENTS
    from cmav.diffusion import PixelDiffusionConfig, build_pixel_diffusion, label_words

    from fixtures import make_suburmp_tracks

    fitted = []

    def fit(*args, **kwargs):
        fitted.append(args[3])
        raise AssertionError(f"stage {args[3]} trained before the grid's pipeline folder was checked")

    monkeypatch.setattr(grid, "fit", fit)
    monkeypatch.setattr(token, "fit", fit)
    cfg = load_grid(EXPERIMENTS / "token.yaml", "quick", [f"diffusion.pipeline={tmp_path / 'pipline'}"])
    cfg["data"]["root"] = str(tmp_path / "no_data_here")  # reached only when the check lets it through
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FileNotFoundError, match=r"token\.yaml: diffusion\.pipeline: diffusion pipeline folder not "
                                                r"found: \S*pipline"):  # fmt: skip
        token.run(cfg, out)
    assert fitted == [] and sorted(p.name for p in out.iterdir()) == []

    torch.manual_seed(0)
    tiny = PixelDiffusionConfig(image_size=16, block_out_channels=(8, 16), layers_per_block=1, attention_heads=2,
                                norm_num_groups=8, text_width=16, text_layers=2, text_heads=2, max_length=12)  # fmt: skip
    drawings = build_pixel_diffusion([f"a drawing of a {label_words(c)} player" for c in INSTRUMENTS], tiny)
    cfg["diffusion"]["pipeline"] = str(drawings.save(tmp_path / "drawings"))
    root = make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=2)
    cfg["data"].update(root=str(root), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"token\.yaml: diffusion\.pipeline: \S*drawings: its tokenizer does not know "
                                         r"the words \['photo'\]"):  # fmt: skip
        token.run(cfg, out)
    assert fitted == [] and not (out / "judges").exists() and not (out / "runs").exists()


# ------------------------------------------------------------------------------------ review N fixes


def _drop_pair(root: Path, split: str, name: str = "violin") -> None:
    """Remove one of class ``name``'s pairs of ``split`` (chunk and frame): a data set edited in place."""
    wav = sorted((root / "chunk" / split / name).glob("*.wav"))[0]
    wav.unlink()
    (root / "img" / split / name / f"{wav.stem}.jpg").unlink()


@pytest.mark.parametrize(("where", "split"), [("train", "train"), ("cross", "validation"), ("train", "validation")])
def test_a_robustness_run_whose_training_or_scoring_data_changed_is_trained_again(tmp_path, capsys, where, split):
    """Pairs removed from the training split, or from either validation split the run is scored on,
    train the cell again, saying which root changed; an unchanged rerun reuses it."""
    from cmav.ablation import robustness

    cfg = _tiny_robustness(tmp_path)
    out = tmp_path / "grid"
    out.mkdir()
    robustness.run(cfg, out)
    _drop_pair(tmp_path / where, split)
    capsys.readouterr()
    robustness.run(cfg, out)
    said = capsys.readouterr().out
    assert f"not reused (the data under {(tmp_path / where).resolve()} changed since it ran ({split}))" in said
    assert "done before" not in said
    robustness.run(cfg, out)
    assert "none seed 0: done before (runs.jsonl)" in capsys.readouterr().out


def test_a_stage_checkpoint_is_trained_again_when_its_data_changed_and_one_of_before_fingerprints_is_reused(
        tmp_path, capsys):  # fmt: skip
    """A stage's settings hold its data's fingerprints: a pair removed retrains it, saying so; settings
    recorded before fingerprints were are reused once noted, and hold the data's fingerprints from then on."""
    from cmav.ablation.grid import record, reusable, stage_key
    from cmav.data.datamodule import AudioVisualDataModule

    data = make_suburmp(tmp_path / "data", chunks=2)
    cfg = {"stages": {"image_judge": {"steps": 5}}, "trainer": QUIET}
    ckpt = tmp_path / "judge.ckpt"
    ckpt.write_bytes(b"weights")

    def key() -> str:
        dm = AudioVisualDataModule(root=str(data), progress=False, cache_dir=str(tmp_path / "cache"))
        dm.setup("fit")
        return stage_key(cfg, "image_judge", 0, dm)

    legacy = json.loads(key())
    legacy.pop("data_fingerprints")
    ckpt.with_name(ckpt.name + ".settings.json").write_text(json.dumps(legacy, sort_keys=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reusable(ckpt, key())
    assert "recorded before" in capsys.readouterr().out
    assert reusable(ckpt, key()) and "recorded before" not in capsys.readouterr().out
    _drop_pair(data, "validation")
    with pytest.warns(UserWarning, match=re.escape(f"not reused (the data under {data.resolve()} changed since it was "
                                                   "trained (validation)); training it again")):  # fmt: skip
        assert not reusable(ckpt, key())
    record(ckpt, key())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reusable(ckpt, key())
