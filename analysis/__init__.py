"""Reads run folders only (never W&B, never the models) and draws: runs.csv, plots, report.html.

python -m analysis SWEEP_DIR... [--out DIR] [--wandb]
"""

from analysis.load import StoreError, family, find_runs, load_run, load_runs
from analysis.pareto import pareto_front, pareto_mask

__all__ = ["StoreError", "family", "find_runs", "load_run", "load_runs", "pareto_front", "pareto_mask"]
