"""Ablation grids: train every cell over several seeds, evaluate, tabulate and plot.

``run_ablation`` reads a grid YAML and hands it to the runner of its ``kind``: ``s2i``
(:mod:`cmav.ablation.s2i`), ``i2s`` (:mod:`cmav.ablation.i2s`), ``audio_repr``
(:mod:`cmav.ablation.audio_repr`), ``token`` (:mod:`cmav.ablation.token`) or ``robustness``
(:mod:`cmav.ablation.robustness`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from cmav.ablation.grid import check_keys, load_grid, normalise


def _kinds() -> dict:
    from cmav.ablation import audio_repr, i2s, robustness, s2i, token

    return {"s2i": s2i, "i2s": i2s, "audio_repr": audio_repr, "token": token, "robustness": robustness}


def _runners() -> dict:
    return {kind: module.run for kind, module in _kinds().items()}


def check_grid_keys(cfg: dict) -> None:
    """Refuse a ``data``, ``trainer``, ``stages`` or ``evaluation`` key that ``cfg``'s kind does not
    read (:func:`~cmav.ablation.grid.check_keys`, with the kind's ``STAGE_KEYS`` and ``EVALUATION_KEYS``)."""
    module = _kinds()[cfg["kind"]]
    check_keys(cfg, module.STAGE_KEYS, module.EVALUATION_KEYS)


def run_ablation(config: str | Path | dict, preset: str | None = None, out_dir: str | Path | None = None,
                 data_root: str | None = None, overrides: list[str] | None = None) -> dict:  # fmt: skip
    """Run a grid; returns ``{rows, runs, paths, elapsed_s}``. ``data_root`` overrides ``data.root``;
    ``overrides`` are ``KEY=VALUE`` strings merged over the YAML and its preset (a path ``config`` only)."""
    if isinstance(config, dict) and overrides:
        raise ValueError("overrides apply to a grid YAML path; merge them into a dict config yourself")
    cfg = load_grid(config, preset, overrides) if not isinstance(config, dict) else normalise(copy.deepcopy(config))
    cfg.setdefault("preset", "default")
    runners = _runners()
    if cfg["kind"] not in runners:
        raise ValueError(f"{cfg.get('source', 'grid')}: unknown grid kind {cfg['kind']!r}; expected one of {sorted(runners)}")
    check_grid_keys(cfg)  # a misspelt nested key (--set data.batch_sise=5): refused before the data is built
    if data_root is not None:
        cfg["data"]["root"] = data_root
    out = Path(out_dir or f"results/ablation_{cfg.get('name', cfg['kind'])}_{cfg['preset']}")
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if cfg.get("threads"):
        # fewer torch threads than cores: OpenMP oversubscription on a shared CPU slows tiny models ~10x
        torch.set_num_threads(int(cfg["threads"]))
    try:
        return runners[cfg["kind"]](cfg, out)
    finally:
        torch.set_num_threads(threads)


__all__ = ["check_grid_keys", "load_grid", "run_ablation"]
