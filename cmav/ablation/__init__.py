"""Ablation grids: train every variant over several seeds, evaluate, tabulate and plot."""

from cmav.ablation.runner import load_grid, run_ablation

__all__ = ["load_grid", "run_ablation"]
