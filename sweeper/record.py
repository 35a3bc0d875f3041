"""The run folder: resolved config.yaml, status.json, metrics.json (every file written atomically).

Layout and schemas: ARCHITECTURE.md. A run is "running" from `start_run` until `finish_run` marks it
"completed" or "failed" (with the error and traceback); a run folder found "running" by a reader is
one whose process died, and rerunning it resumes from its last checkpoint.
"""

from __future__ import annotations

import json
import traceback
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweeper import atomic
from sweeper.checks import ConfigError, derive

CONFIG = "config.yaml"
STATUS = "status.json"
METRICS = "metrics.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def resolved_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """`cfg` with every interpolation resolved; `run_dir` filled in (it may point at Hydra's runtime)."""
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(run_dir)
    OmegaConf.resolve(cfg)
    return cfg


def write_config(run_dir: Path, cfg: DictConfig) -> Path:
    """config.yaml: the resolved config, then its `derived:` block (effective_lr, n_images, images, prompts,
    overrides; checks.derive)."""
    try:
        derived = OmegaConf.to_yaml({"derived": derive(cfg).as_dict()})
    except ConfigError:  # a refused config has no derived values; its status.json says why it failed
        derived = ""
    return atomic.write_text(
        Path(run_dir) / CONFIG, OmegaConf.to_yaml(resolved_config(cfg, run_dir)) + derived
    )


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATUS
    return json.loads(path.read_text()) if path.is_file() else None


def write_status(run_dir: Path, **fields) -> dict:
    """Merge `fields` into status.json (creating it) and write it atomically."""
    status = read_status(run_dir) or {
        "status": None,
        "error": None,
        "traceback": None,
        "started_at": None,
        "finished_at": None,
        "wall_time_s": None,
        "trial_number": None,
    }
    status.update(fields)
    atomic.write_json(Path(run_dir) / STATUS, status)
    return status


def start_run(run_dir: Path, cfg: DictConfig, trial_number: int | None = None) -> dict:
    """Write config.yaml and status.json "running" (a rerun of a folder starts a new attempt)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, cfg)
    return write_status(
        run_dir,
        status="running",
        error=None,
        traceback=None,
        started_at=_now(),
        finished_at=None,
        wall_time_s=None,
        trial_number=trial_number,
    )


def finish_run(run_dir: Path, error: BaseException | None = None) -> dict:
    """Mark the run completed, or failed with `error` and its traceback."""
    started = (read_status(run_dir) or {}).get("started_at")
    finished = _now()
    wall = (
        (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
        if started
        else None
    )
    fields = {
        "status": "completed" if error is None else "failed",
        "finished_at": finished,
        "wall_time_s": wall,
    }
    if error is not None:
        fields.update(
            error=f"{type(error).__name__}: {error}",
            traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
        )
    return write_status(run_dir, **fields)


def write_metrics(run_dir: Path, metrics: dict) -> Path:
    return atomic.write_json(Path(run_dir) / METRICS, metrics)


def read_metrics(run_dir: Path) -> dict | None:
    path = Path(run_dir) / METRICS
    return json.loads(path.read_text()) if path.is_file() else None
