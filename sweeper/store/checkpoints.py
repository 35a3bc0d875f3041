"""A run folder's training record: checkpoints/step_<N>/state.pt (atomic) and history.csv, and the config
fingerprint a checkpoint must match to be resumed.

The fingerprint holds the model and data groups and every inversion knob that changes what training
produces; which knobs those are is the schema's to say (sweeper/config/schema.py: `resume_safe=True` marks the
ones that may change between a run and its resumption: steps, log_every, checkpoint_every, compile,
pivotal). A new knob is in the fingerprint without any edit here."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sweeper.config.schema import InversionConfig, resume_safe_fields
from sweeper.store import atomic

HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"


class ResumeError(RuntimeError):
    """The run folder holds checkpoints from a different configuration."""


def fingerprint(cfg: DictConfig) -> str:
    """What a checkpoint must match to be resumed (the same JSON as before the schema, for old checkpoints).
    A key no schema marks resume-safe is in it: an unmarked knob blocks a resume rather than corrupt one."""
    schema = OmegaConf.get_type(cfg.inversion)
    safe = set(resume_safe_fields(schema if is_dataclass(schema) else InversionConfig))
    inversion = OmegaConf.to_container(cfg.inversion, resolve=True)
    assert isinstance(inversion, dict)
    inv = {k: v for k, v in inversion.items() if k not in safe}
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
