"""A run folder's training record: checkpoints/step_<N>/state.pt (atomic) and history.csv, and the config
fingerprint a checkpoint must match to be resumed.

The fingerprint holds the model and data groups and every inversion knob that changes what training
produces; which knobs those are is the schema's to say (sweeper/config/schema.py: `resume_safe=True` marks the
ones that may change between a run and its resumption: steps, log_every, checkpoint_every, compile,
pivotal; `fingerprints_with` the ones another knob depends on: steps under a decaying lr_schedule). A new
knob is in the fingerprint without any edit here."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from sweeper.config.schema import InversionConfig, default_of, fingerprinted_keys
from sweeper.store import atomic

HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"


class ResumeError(RuntimeError):
    """The run folder holds checkpoints from a different configuration."""


def fingerprint(cfg: DictConfig) -> str:
    """What a checkpoint must match to be resumed (the same JSON as before the schema, for old checkpoints).
    A key no schema marks resume-safe is in it: an unmarked knob blocks a resume rather than corrupt one."""
    schema = OmegaConf.get_type(cfg.inversion)
    inversion = OmegaConf.to_container(cfg.inversion, resolve=True)
    assert isinstance(inversion, dict)
    kept = fingerprinted_keys(
        inversion, schema if isinstance(schema, type) and is_dataclass(schema) else InversionConfig
    )
    inv = {k: inversion[k] for k in kept}
    keep = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "inversion": inv,
    }
    return json.dumps(keep, sort_keys=True, default=str)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out


def fingerprint_difference(old: str, new: str) -> list[str]:
    """The dotted keys whose values differ between two fingerprints (on either side), e.g.
    ["inversion.steps"]; [] when they are equal or one cannot be read."""
    try:
        a, b = _flat(json.loads(old)), _flat(json.loads(new))
    except (TypeError, ValueError, AttributeError):
        return []
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


def resume_refusal(checkpoint: Path, old: str, new: str, cfg: DictConfig) -> str:
    """The one-line refusal of a checkpoint whose fingerprint `old` differs from this run's `new`: which
    keys differ, and for a resume-safe key the knob that made it part of the fingerprint."""
    keys = fingerprint_difference(old, new)
    schema = OmegaConf.get_type(cfg.inversion)
    schema = schema if isinstance(schema, type) and is_dataclass(schema) else InversionConfig
    why = []
    for key in keys:
        knob = key.removeprefix("inversion.")
        for f in fields(schema):
            value = OmegaConf.select(cfg, f"inversion.{f.name}")
            pinned = key.startswith("inversion.") and knob in f.metadata.get("fingerprints_with", ())
            if pinned and value != default_of(f):
                why.append(f"{key} counts because inversion.{f.name}={value} depends on it")
    differs = f" ({', '.join(keys)} differ{'s' if len(keys) == 1 else ''}" if keys else ""
    differs += f"; {'; '.join(why)})" if why else (")" if keys else "")
    folder = Path(checkpoint).parent
    return (
        f"{checkpoint}: checkpoint was made with a different model/data/inversion config{differs}; "
        f"use a new hydra.run.dir or delete {folder}"
    )


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
