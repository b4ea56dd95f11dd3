"""The audio representation study: `cmav ablate experiments/ablations/audio_repr.yaml --preset quick`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cmav.ablation import load_grid, run_ablation
from cmav.ablation.audio_repr import front_end_throughput, verdict

from fixtures import make_suburmp_tracks


def _count_fits(monkeypatch) -> list[dict]:
    """The configs the grid trains from here on (the real training still runs)."""
    import cmav.ablation.audio_repr as audio_repr

    trained: list[dict] = []
    real_fit = audio_repr.fit

    def counted_fit(cfg, *args, **kw):
        trained.append(cfg)
        return real_fit(cfg, *args, **kw)

    monkeypatch.setattr(audio_repr, "fit", counted_fit)
    return trained

CONFIG = Path(__file__).parents[1] / "experiments" / "ablations" / "audio_repr.yaml"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _row(kind: str, depth: int, acc: float, sd: float = 0.01) -> dict:
    return {"representation": kind.upper(), "kind": kind, "depth": depth, "accuracy_mean": acc, "accuracy_sd": sd}


def test_verdict_names_the_best_cell_and_the_papers_rank():
    rows = [_row("lms", 4, 0.90), _row("cqt", 3, 0.95), _row("mfcc", 2, 0.50)]
    text = verdict(rows)
    assert "CQT, 3 blocks" in text and "ranks 2 of 3" in text and "0.050 below the best" in text
    assert "wins here too" in verdict([_row("lms", 4, 0.97), _row("stft", 4, 0.95)])
    assert "within one sd" in verdict([_row("lms", 4, 0.90, 0.1), _row("stft", 4, 0.95, 0.1)])


def test_grid_errors_are_caught_before_training(tmp_path):
    cfg = load_grid(CONFIG, "quick")
    bad = dict(cfg, representations=[{"name": "x", "features": {"kind": "mel"}}])
    with pytest.raises(ValueError, match="unknown front end kind 'mel'"):
        run_ablation(bad, out_dir=tmp_path / "a")
    with pytest.raises(ValueError, match="depths must be"):
        run_ablation(dict(cfg, depths=[1, 4]), out_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="unknown grid kind 'i2x'"):
        run_ablation(dict(cfg, kind="i2x"), out_dir=tmp_path / "c")


def test_set_overrides_merge_after_the_preset_and_bad_ones_are_named():
    cfg = load_grid(CONFIG, "cpu", ["seeds=[0]", "representations=[{name: STFT, features: {kind: stft}}]",
                                    "model.audio_encoder.dropout=0.1"])  # fmt: skip
    assert cfg["seeds"] == [0] and cfg["steps"] == 120  # the preset still applies
    assert cfg["representations"] == [{"name": "STFT", "features": {"kind": "stft"}}]
    # a nested key replaces only itself: the preset's base_channels stays
    assert cfg["model"]["audio_encoder"]["dropout"] == 0.1 and cfg["model"]["audio_encoder"]["base_channels"] == 16
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        load_grid(CONFIG, None, ["seeds"])
    with pytest.raises(ValueError, match="not valid YAML"):
        load_grid(CONFIG, None, ["depths=[2, 4"])


def test_front_end_throughput_is_positive():
    assert front_end_throughput({"kind": "mfcc"}, 44100, 22050, "cpu", batch_size=4, repeats=1) > 0


def test_front_end_throughput_warms_up_on_the_batch_it_times(monkeypatch):
    """A warm-up on another batch size leaves the timed one to pay for its own first call."""
    import cmav.ablation.audio_repr as audio_repr

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.batches: list[int] = []

        def forward(self, x, rate):
            self.batches.append(x.shape[0])
            return x

    fe = Recording()
    monkeypatch.setattr(audio_repr, "build_front_end", lambda features: fe)
    assert front_end_throughput({"kind": "lms"}, 22050, 512, "cpu", batch_size=16, repeats=2) > 0
    assert fe.batches == [16, 16, 16]


def test_a_finished_run_is_reused_only_under_the_same_trainer_settings_and_threads(tmp_path, monkeypatch):
    """runs.jsonl resumes a grid; a run trained under another precision (or timed with other
    threads) is trained again, as the grid's stage checkpoints are."""
    from cmav.ablation.grid import merge

    data = make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=2)
    cfg = load_grid(CONFIG, "quick", ["representations=[{name: LMS, features: {kind: lms}}]", "depths=[2]",
                                      "seeds=[0]", "steps=1", f"data.root={data}"])  # fmt: skip
    trained = _count_fits(monkeypatch)
    out = tmp_path / "repr"
    run_ablation(cfg, out_dir=out)
    run_ablation(cfg, out_dir=out)
    assert len(trained) == 1  # the same settings: reused
    run_ablation(merge(cfg, {"trainer": {"precision": "bf16-mixed"}}), out_dir=out)
    assert len(trained) == 2 and trained[-1]["trainer"]["precision"] == "bf16-mixed"
    run_ablation(dict(cfg, threads=2), out_dir=out)
    assert len(trained) == 3


def test_a_tie_with_the_best_reads_as_a_tie_and_cells_rank_by_distinct_accuracy():
    tie = [_row("lms", 2, 1.0, 0.0), _row("lms", 4, 1.0, 0.0), _row("stft", 2, 0.9, 0.05)]
    text = verdict(tie)
    assert "ties for best" in text and "ranks" not in text and "below the best" not in text
    # two cells share the best accuracy: the paper's cell below them is second, not third
    rows = [_row("cqt", 4, 0.95), _row("stft", 4, 0.95), _row("lms", 4, 0.90), _row("mfcc", 4, 0.5)]
    text = verdict(rows)
    assert "ranks 2 of 3" in text and "0.050 below the best" in text
    # a mean that differs in its last bit only (the same seeds' figures summed in another order) is a tie
    assert "ties for best" in verdict([_row("stft", 4, 0.1 + 0.2), _row("lms", 4, 0.3)])


def test_table_csv_has_the_seed_count_of_every_figure(tmp_path):
    from cmav.ablation.audio_repr import summarise, write_tables

    def run(seed, acc):
        return {"representation": "LMS", "kind": "lms", "depth": 2, "seed": seed, "input_shape": [1, 128, 44],
                "accuracy": acc, "balanced_accuracy": acc, "train_s": 1.0, "parameters": 10,
                "front_end_chunks_per_s": 100.0}  # fmt: skip

    rows = summarise([run(0, 0.5), run(1, float("nan")), run(2, 0.7)], ["LMS"], [2])
    csv_path, md_path = write_tables(rows, tmp_path)
    (row,) = list(csv.DictReader(csv_path.open()))
    assert (row["n_seeds"], row["accuracy_n"], row["balanced_accuracy_n"], row["train_s_n"]) == ("3", "2", "2", "3")
    assert list(row).index("accuracy_n") == list(row).index("accuracy_sd") + 1
    assert "(2 of 3 seeds)" in md_path.read_text()


def test_representations_whose_folder_names_clash_are_refused(tmp_path):
    cfg = load_grid(CONFIG, "quick", ["representations=[{name: L M, features: {kind: lms}}, "
                                      "{name: L_M, features: {kind: mfcc}}]"])  # fmt: skip
    out = tmp_path / "repr"
    with pytest.raises(ValueError, match=r"audio_repr\.yaml: representations 'L M' and 'L_M' would share the folder "
                                         r"runs/L_M/"):  # fmt: skip
        run_ablation(cfg, out_dir=out)
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.parametrize(("override", "message"), [
    ("steps=null", r"steps must be a positive integer.*None"),
    ("steps=0", r"steps must be a positive integer.*0"),
    ("representations=[LMS]", r"representations\[0\] needs a `name`.*'LMS'"),
    ("representations=LMS", r"`representations` must be a non-empty list of mappings.*'LMS'"),
    ("representations=[{name: LMS, features: lms}]", r"representations\[0\] \(LMS\)\.features: front-end config must be"),
    ("depths=[four]", r"depths must be a non-empty list of distinct integers in \[2, 6\].*'four'"),
    ("depths=[2, 2]", r"depths must be a non-empty list of distinct integers"),
    ("depths=4", r"depths must be a non-empty list"),
    ("threads=two", r"threads must be null or a positive integer.*'two'"),
    ("throughput.batch_size=big", r"throughput\.batch_size must be a positive integer.*'big'"),
    ("throughput=[16]", r"throughput must be a mapping"),
])  # fmt: skip
def test_bad_grid_keys_are_refused_naming_the_file_and_the_key_before_anything_is_built(tmp_path, override, message):
    out = tmp_path / "repr"
    with pytest.raises(ValueError, match=r"audio_repr\.yaml: " + message):
        run_ablation(CONFIG, preset="quick", out_dir=out, overrides=[override])
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []  # no stand-in, no cache, no config


def test_a_rerun_reports_its_own_throughput_and_reuses_runs_of_the_same_device_only(tmp_path, monkeypatch):
    """The front end is timed on every call: a rerun with another throughput.batch_size reports its
    own chunks/s (the reused runs' accuracies stay); a run logged on another device is trained again
    (its train_s was measured there)."""
    import cmav.ablation.audio_repr as audio_repr
    from cmav.ablation.grid import merge

    data = make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=2)
    cfg = load_grid(CONFIG, "quick", ["representations=[{name: LMS, features: {kind: lms}}]", "depths=[2]",
                                      "seeds=[0]", "steps=1", f"data.root={data}", "throughput.batch_size=4"])  # fmt: skip
    monkeypatch.setattr(audio_repr, "front_end_throughput",
                        lambda features, rate, samples, device, batch_size=256, repeats=3: 1000.0 * batch_size)
    trained = _count_fits(monkeypatch)
    out = tmp_path / "repr"
    first = run_ablation(cfg, out_dir=out)
    assert first["rows"][0]["front_end_chunks_per_s"] == 4000.0
    logged = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert logged[0]["config_key"]["device"] == "cpu"

    again = run_ablation(merge(cfg, {"throughput": {"batch_size": 8}}), out_dir=out)
    assert len(trained) == 1  # the same training: reused
    assert again["rows"][0]["front_end_chunks_per_s"] == 8000.0
    assert again["runs"][0]["accuracy"] == first["runs"][0]["accuracy"]
    md = (out / "table.md").read_text()
    assert "| 8,000 |" in md and "batches of 8" in md
    assert list(csv.DictReader((out / "table.csv").open()))[0]["front_end_chunks_per_s"] == "8000.0"

    # the same row, logged by a run on a GPU: not this device's training time, so trained again
    logged[0]["config_key"]["device"] = "cuda (NVIDIA H100 80GB HBM3)"
    (out / "runs.jsonl").write_text(json.dumps(logged[0]) + "\n")
    run_ablation(cfg, out_dir=out)
    assert len(trained) == 2


@pytest.mark.slow
def test_quick_audio_repr_grid_end_to_end(tmp_path, monkeypatch):
    from cmav.cli.main import main

    data = make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=4)
    out = tmp_path / "repr"
    assert main(["ablate", str(CONFIG), "--preset", "quick", "-o", str(out), "--root", str(data)]) == 0
    for name in ("table.md", "table.csv", "accuracy.png", "results.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "table.csv").open()))
    reps = ["LMS", "STFT", "CQT", "MFCC", "waveform"]
    assert [(r["representation"], r["depth"]) for r in rows] == [(n, d) for n in reps for d in ("2", "4")]
    assert all(r["n_seeds"] == "2" for r in rows)
    shapes = {r["representation"]: r["input_shape"] for r in rows}
    assert shapes == {"LMS": "1x128x44", "STFT": "1x513x44", "CQT": "1x84x44", "MFCC": "1x20x44",
                      "waveform": "1x1x11025"}  # fmt: skip
    for r in rows:
        assert 0.0 <= float(r["accuracy_mean"]) <= 1.0 and int(r["parameters"]) > 0
        assert float(r["front_end_chunks_per_s"]) > 0
    # deeper encoders have more parameters
    params = {(r["representation"], r["depth"]): int(r["parameters"]) for r in rows}
    assert all(params[(n, "4")] > params[(n, "2")] for n in reps)
    # one cache entry per representation, for each split
    assert len(list((data / ".cmav_cache").glob("train-*.pt"))) == len(reps)
    md = (out / "table.md").read_text()
    assert "Best: **" in md and "validation" in md
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == len(reps) * 2 * 2
    # class-pitched tones: the LMS classifier learns in 60 steps
    lms = [r for r in results["runs"] if r["representation"] == "LMS"]
    print("LMS accuracies:", [round(r["accuracy"], 3) for r in lms])
    assert max(r["accuracy"] for r in lms) > 0.5

    # a rerun into the same folder resumes from runs.jsonl: nothing is trained again
    import cmav.ablation.audio_repr as audio_repr

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(audio_repr, "fit", no_training)
    again = run_ablation(CONFIG, preset="quick", out_dir=out, data_root=str(data))
    assert [r["accuracy"] for r in again["runs"]] == [r["accuracy"] for r in results["runs"]]


def _one_cell(data: Path, *more: str) -> dict:
    return load_grid(CONFIG, "quick", ["representations=[{name: LMS, features: {kind: lms}}]", "depths=[2]",
                                       "seeds=[0]", "steps=1", f"data.root={data}", *more])  # fmt: skip


def test_a_reused_run_names_the_checkpoint_it_was_scored_with(tmp_path, monkeypatch):
    """A run under other settings gets its own checkpoint: going back reuses the first record, whose
    file still holds the weights it scored."""
    from cmav.data.files import sha256_file

    cfg = _one_cell(make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=2))
    trained = _count_fits(monkeypatch)
    out = tmp_path / "repr"
    first = run_ablation(cfg, out_dir=out)["runs"][0]
    digest = sha256_file(first["checkpoint"])
    other = run_ablation(dict(cfg, threads=2), out_dir=out)["runs"][0]
    assert len(trained) == 2 and other["checkpoint"] != first["checkpoint"]
    again = run_ablation(cfg, out_dir=out)["runs"][0]
    assert len(trained) == 2 and again["checkpoint"] == first["checkpoint"]
    assert sha256_file(again["checkpoint"]) == digest and again["accuracy"] == first["accuracy"]
    # a record whose checkpoint is gone is trained again
    Path(first["checkpoint"]).unlink()
    run_ablation(cfg, out_dir=out)
    assert len(trained) == 3


def test_a_run_is_reused_whether_the_data_root_is_typed_relative_or_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=2)
    trained = _count_fits(monkeypatch)
    run_ablation(_one_cell(Path("data")), out_dir="repr")
    run_ablation(_one_cell(tmp_path / "data"), out_dir=tmp_path / "repr")
    assert len(trained) == 1


def test_a_cut_line_in_runs_jsonl_does_not_swallow_the_next_run(tmp_path, monkeypatch):
    cfg = _one_cell(make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=2))
    trained = _count_fits(monkeypatch)
    out = tmp_path / "repr"
    out.mkdir()
    (out / "runs.jsonl").write_text('{"representation": "LMS", "depth": 2, "seed"')  # a shard killed mid-line
    run_ablation(cfg, out_dir=out)
    run_ablation(cfg, out_dir=out)
    assert len(trained) == 1


def test_a_rerun_cut_off_part_way_leaves_no_table_of_the_previous_run(tmp_path, monkeypatch):
    """The first cell a rerun trains removes the old table and heatmap."""
    import cmav.ablation.audio_repr as audio_repr

    cfg = _one_cell(make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=2))
    out = tmp_path / "repr"
    run_ablation(cfg, out_dir=out)
    run_ablation(cfg, out_dir=out)  # reused: the table is written again
    assert (out / "table.md").is_file()

    def cut_off(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(audio_repr, "fit", cut_off)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(dict(cfg, threads=2), out_dir=out)
    assert [n for n in audio_repr.RESULTS if (out / n).exists()] == []


def _drop_validation_pairs(data: Path, name: str, n: int) -> None:
    """Remove ``n`` of class ``name``'s validation pairs (chunk and frame), as a data set edited in place."""
    for wav in sorted((data / "chunk" / "validation" / name).glob("*.wav"))[:n]:
        wav.unlink()
        (data / "img" / "validation" / name / f"{wav.stem}.jpg").unlink()


def test_a_run_whose_data_changed_is_trained_again_and_one_whose_files_were_only_touched_is_not(
        tmp_path, monkeypatch, capsys):  # fmt: skip
    """A run's record holds its data's fingerprints: pairs removed from the validation split (the
    feature cache is rebuilt) train the cell again and score it on the split as it is now; a chmod
    (which rebuilds the cache too, its fingerprint holds the ctime) keeps the run."""
    data = make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=3)
    cfg = _one_cell(data)
    trained = _count_fits(monkeypatch)
    out = tmp_path / "repr"
    first = run_ablation(cfg, out_dir=out)["runs"][0]
    cached = {p: p.stat().st_mtime_ns for p in (data / ".cmav_cache").glob("validation-*.pt")}
    for p in (data / "chunk" / "validation" / "violin").iterdir():
        p.chmod(0o640)  # the same contents: reused
    capsys.readouterr()
    run_ablation(cfg, out_dir=out)
    assert len(trained) == 1 and "done before (runs.jsonl)" in capsys.readouterr().out
    assert cached and all(p.stat().st_mtime_ns != t for p, t in cached.items())  # the cache was rebuilt

    _drop_validation_pairs(data, "violin", 2)
    again = run_ablation(cfg, out_dir=out)["runs"][0]
    said = capsys.readouterr().out
    assert len(trained) == 2, said
    assert f"not reused (the data under {data.resolve()} changed since it ran" in said
    assert again["checkpoint"] == first["checkpoint"]  # the same settings: the same file, its record the new one
    run_ablation(cfg, out_dir=out)  # and the new record is reused
    assert len(trained) == 2 and "done before (runs.jsonl)" in capsys.readouterr().out


def test_a_run_logged_before_data_fingerprints_is_reused_once_noted_and_retrained_when_the_data_changes(
        tmp_path, monkeypatch, capsys):  # fmt: skip
    data = make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=3)
    cfg = _one_cell(data)
    trained = _count_fits(monkeypatch)
    out = tmp_path / "repr"
    run_ablation(cfg, out_dir=out)
    log = out / "runs.jsonl"
    old = [json.loads(line) for line in log.read_text().splitlines()]
    for r in old:
        r.pop("data_fingerprints")
    log.write_text("".join(json.dumps(r) + "\n" for r in old))
    capsys.readouterr()
    run_ablation(cfg, out_dir=out)
    said = capsys.readouterr().out
    assert len(trained) == 1 and "done before (runs.jsonl)" in said and "logged before" in said
    run_ablation(cfg, out_dir=out)
    assert "logged before" not in capsys.readouterr().out  # noted once: its data is recorded now
    _drop_validation_pairs(data, "violin", 1)
    run_ablation(cfg, out_dir=out)
    assert len(trained) == 2 and "the data under" in capsys.readouterr().out
