"""``cmav bench s2i`` on tiny synthetic data (CPU): how it times, and the settings it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fixtures import make_suburmp_tracks

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_suburmp_tracks(tmp_path_factory.mktemp("benchdata"), tracks=(0, 1), chunks=4)


def test_bench_synchronises_once_before_and_once_after_each_timed_span(data, monkeypatch):
    """On a GPU a synchronize per batch would add to the Lightning path what the bare loop does not
    pay: both paths wait for the device only where their timed span starts and where it ends."""
    import cmav.bench.s2i as bench

    syncs: list[torch.device] = []
    real_sync = bench._sync
    monkeypatch.setattr(bench, "_sync", lambda device: (syncs.append(device), real_sync(device)))
    r = bench.bench_s2i(data, steps=4, warmup=1, batch_size=8, image_size=SIZE, channels=8, device="cpu")
    assert len(syncs) == 4, syncs  # Lightning: first timed batch's start, last one's end; bare: the same
    assert r["steps"] == 4 and r["lightning_images_per_s"] > 0 and r["bare_images_per_s"] > 0
    assert r["lightning_step_ms"] == pytest.approx(1000 * 8 / r["lightning_images_per_s"])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("channels", 0, "channels must be >= 1, got 0"),
        ("batch_size", 0, "batch_size must be >= 1, got 0"),
        ("threads", 0, "threads must be >= 1"),
        ("device", "tpu", "device must be"),
        ("device", "cuda:99", "device cuda:99"),
    ],
)
def test_bench_refuses_bad_settings_by_name(data, option, value, message):
    from cmav.bench.s2i import bench_s2i

    threads = torch.get_num_threads()
    settings = {"steps": 1, "warmup": 0, "batch_size": 8, "image_size": SIZE, "channels": 8, "device": "cpu"}
    with pytest.raises(ValueError, match=message):
        bench_s2i(data, **{**settings, option: value})
    assert torch.get_num_threads() == threads  # refused before anything was set


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bench_cli_without_a_gpu_names_the_device_option(data, capsys):
    from cmav.cli.main import main

    assert main(["bench", "s2i", "--root", str(data), "--device", "cuda", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device cuda: ") and "no CUDA device" in err and "Traceback" not in err
