"""A run folder's training record: checkpoints/step_<N>/state.pt (atomic) and history.csv, and the config
fingerprint a checkpoint must match to be resumed."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sweeper import atomic

HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"
# Keys that may change between a run and its resumption (train longer, log differently).
# early_stop: measuring the objective uses no training randomness, so it never changes the trajectory.
RESUMABLE_KEYS = ("steps", "log_every", "checkpoint_every", "pivotal", "compile", "early_stop")


class ResumeError(RuntimeError):
    """The run folder holds checkpoints from a different configuration."""


def fingerprint(cfg: DictConfig) -> str:
    inv = {
        k: v
        for k, v in OmegaConf.to_container(cfg.inversion, resolve=True).items()
        if k not in RESUMABLE_KEYS
    }
    keep = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "inversion": inv,
    }
    return json.dumps(keep, sort_keys=True, default=str)


def latest_checkpoint(run_dir: Path, max_step: int) -> Path | None:
    folder = Path(run_dir) / CHECKPOINTS
    found = []
    for d in folder.glob("step_*") if folder.is_dir() else []:
        match = re.fullmatch(r"step_(\d+)", d.name)
        if match and (d / "state.pt").is_file() and int(match.group(1)) <= max_step:
            found.append((int(match.group(1)), d))
    return max(found)[1] if found else None


def save_checkpoint(
    run_dir: Path, trainer: Any, step: int, fp: str, window: list[float], extra: dict | None = None
) -> Path:
    state = trainer.state_dict(step) | {"fingerprint": fp, "loss_window": list(window)} | (extra or {})
    target = Path(run_dir) / CHECKPOINTS / f"step_{step}"
    with atomic.directory(target) as tmp:
        torch.save(state, tmp / "state.pt")
    return target


def read_history(run_dir: Path, up_to: int) -> list[dict]:
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= up_to]


def write_history(run_dir: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    # every column any row has (a run resumed with early stopping switched on gains its objective columns)
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_text(Path(run_dir) / HISTORY, buf.getvalue())
