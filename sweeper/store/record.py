"""The run folder's record: resolved config.yaml and status.json (written atomically).

Layout and schemas: ARCHITECTURE.md. A run is "running" from `start_run` until `finish_run` marks it
"completed", "failed" (with the error and traceback), "pruned" (Optuna stopped it) or "interrupted"
(a signal or Ctrl-C; a rerun resumes from its checkpoint). status.json records the `pid` and `host` of
the process running the trial: a "running" run whose process is gone is stale.

A full disk must not leave a run "running" for good: status.json is written first and padded to
STATUS_RESERVE bytes, so that when an atomic rewrite cannot get a new block, the status is rewritten in
place over the blocks the file already holds (its traceback shortened to fit).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import socket
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from sweeper.store import atomic

# Lazy import: sweeper.config.derived (it pulls in torch) only where config.yaml is written, so that the sweep's own
# process can correct a status.json at exit (store/sweep_owner.py) without importing torch then.

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
STATUS = "status.json"
STATUSES = ("running", "completed", "failed", "pruned", "interrupted")
STATUS_RESERVE = 16384  # bytes status.json keeps allocated for an in-place rewrite on a full disk


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def resolved_config(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """`cfg` with every interpolation resolved; `run_dir` filled in (it may point at Hydra's runtime)."""
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(run_dir)
    OmegaConf.resolve(cfg)
    return cfg


def write_config(run_dir: Path, cfg: DictConfig, resumed_with: list[dict] | None = None) -> Path:
    """config.yaml: the resolved config, then its `derived:` block (effective_lr, n_images, images, prompts,
    overrides; config.derived.derive; `resumed_with`: each resumption that changed resume-safe settings)."""
    from sweeper.config.derived import derive
    from sweeper.config.schema import ConfigError

    try:
        block = derive(cfg).as_dict()
        if resumed_with:
            block["resumed_with"] = resumed_with
        derived = OmegaConf.to_yaml({"derived": block})
    except ConfigError:  # a refused config has no derived values; its status.json says why it failed
        derived = ""
    return atomic.write_text(
        Path(run_dir) / CONFIG, OmegaConf.to_yaml(resolved_config(cfg, run_dir)) + derived
    )


def read_status(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATUS
    return json.loads(path.read_text()) if path.is_file() else None


def write_status(run_dir: Path, **fields) -> dict:
    """Merge `fields` into status.json (creating it): atomically, or in place when the disk is full."""
    status = read_status(run_dir) or {
        "status": None,
        "error": None,
        "traceback": None,
        "started_at": None,
        "finished_at": None,
        "wall_time_s": None,
        "trial_number": None,
        "pid": None,
        "host": None,
    }
    status.update(fields)
    if status["status"] not in STATUSES:
        raise ValueError(f"status {status['status']!r}: one of {STATUSES}")
    path = Path(run_dir) / STATUS
    try:
        atomic.write_text(path, _padded(json.dumps(status, indent=1, default=str)))
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT) or not path.is_file():
            raise
        _rewrite_in_place(path, status)
        log.error("%s: the disk is full; status %r written in place", path, status["status"])
    return status


def _padded(text: str, size: int = STATUS_RESERVE) -> str:
    return text + " " * max(0, size - len(text.encode()) - 1) + "\n"


def _rewrite_in_place(path: Path, status: dict) -> None:
    """Overwrite status.json's existing bytes (no new block needed); shorten the traceback to fit."""
    room = path.stat().st_size - 1  # the padded text ends with a newline
    status, full = dict(status), status.get("traceback") or ""
    keep = len(full)
    while True:
        status["traceback"] = full[len(full) - keep :] if keep else None
        text = json.dumps(status, default=str)
        if len(text.encode()) <= room or not keep:
            break
        keep //= 2
    if len(text.encode()) > room:
        status["error"] = str(status.get("error"))[: room // 4]
        text = json.dumps(status, default=str)
    with path.open("r+b") as f:
        f.write(_padded(text, room + 1).encode())
        f.flush()
        os.fsync(f.fileno())


def _flat(values: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        return {prefix: values}
    out: dict[str, Any] = {}
    for key, value in values.items():
        out.update(_flat(value, f"{prefix}.{key}"))
    return out


def _resume_step(run_dir: Path, steps: int) -> int | None:
    """The step a rerun resumes from (the last checkpoint within `steps`), None when it starts over."""
    found = [
        int(d.name[len("step_") :])
        for d in (run_dir / "checkpoints").glob("step_*")
        if d.name[len("step_") :].isdigit() and (d / "state.pt").is_file()
    ]
    found = [n for n in found if n <= steps]
    return max(found) if found else None


def resume_history(run_dir: Path, cfg: DictConfig) -> list[dict]:
    """config.yaml's `derived.resumed_with` for a rerun of `run_dir`: the earlier entries, plus one for this
    resumption when it changes resume-safe inversion settings ({at, from_step, changed: {key: [was, now]}}),
    logged; [] when the rerun starts over (no checkpoint to resume)."""
    from sweeper.config.schema import resume_safe_fields

    previous_file = Path(run_dir) / CONFIG
    step = _resume_step(Path(run_dir), int(cfg.inversion.steps))
    if step is None or not previous_file.is_file():
        return []
    try:
        previous = yaml.safe_load(previous_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    history = list((previous.get("derived") or {}).get("resumed_with") or [])
    now = OmegaConf.to_container(cfg.inversion, resolve=True)
    was, new = {}, {}
    for name in resume_safe_fields():
        was.update(_flat((previous.get("inversion") or {}).get(name), f"inversion.{name}"))
        new.update(_flat(now.get(name) if isinstance(now, dict) else None, f"inversion.{name}"))
    changed = {k: [was.get(k), new.get(k)] for k in sorted(set(was) | set(new)) if was.get(k) != new.get(k)}
    if changed:
        log.warning(
            "%s: resuming from step %d with changed resume-safe settings: %s (the earlier values are kept in "
            "config.yaml's derived.resumed_with)",
            run_dir,
            step,
            ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()),
        )
        history.append({"at": _now(), "from_step": step, "changed": changed})
    return history


def start_run(run_dir: Path, cfg: DictConfig, trial_number: int | None = None) -> dict:
    """Write status.json "running" (first: it is the small file a full disk must not stop), then config.yaml.

    A rerun of a folder starts a new attempt; one that resumes with changed resume-safe settings says so and
    keeps the earlier values (`resume_history`)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed_with = resume_history(run_dir, cfg)
    status = write_status(
        run_dir,
        status="running",
        error=None,
        traceback=None,
        started_at=_now(),
        finished_at=None,
        wall_time_s=None,
        skipped_at=None,
        trial_number=trial_number,
        pid=os.getpid(),
        host=socket.gethostname(),
    )
    write_config(run_dir, cfg, resumed_with)
    return status


def finish_run(
    run_dir: Path,
    error: BaseException | None = None,
    *,
    status: str | None = None,
    wall_time_s: float | None = None,
    peak_memory_gib: dict | None = None,
) -> dict:
    """Mark the run `status` (default: completed, or failed when there is an `error`, kept with its traceback).

    `wall_time_s`: the trial's own wall time when it shared its process with others (a vectorised group);
    by default the time since start_run. `peak_memory_gib`: each phase's peak (sweeper/memory.py)."""
    started = (read_status(run_dir) or {}).get("started_at")
    finished = _now()
    if wall_time_s is None and started:
        wall_time_s = (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    fields: dict[str, Any] = {
        "status": status or ("completed" if error is None else "failed"),
        "finished_at": finished,
        "wall_time_s": wall_time_s,
    }
    if peak_memory_gib is not None:
        fields["peak_memory_gib"] = peak_memory_gib
    if error is not None:
        fields.update(
            error=f"{type(error).__name__}: {error}",
            traceback="".join(traceback.format_exception(type(error), error, error.__traceback__)),
        )
    return write_status(run_dir, **fields)


# --------------------------------------------------------------------------------------- complete records
# What a rerun may change without changing a completed trial's result: bookkeeping, never a result's input.
NOT_RESULT_KEYS = (
    "inversion.log_every",
    "inversion.checkpoint_every",
    "inversion.compile",
    "evaluation.progress",
)
RESULT_SECTIONS = ("model", "data", "inversion", "evaluation")


def result_inputs(cfg: DictConfig | dict) -> dict:
    """The resolved sections of a config that decide a trial's result (model, data, inversion, evaluation),
    without NOT_RESULT_KEYS: two configs with the same inputs give the same record."""
    plain = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    inputs = {k: json.loads(json.dumps(plain.get(k), default=str)) for k in RESULT_SECTIONS}
    for dotted in NOT_RESULT_KEYS:
        section, _, key = dotted.partition(".")
        if isinstance(inputs.get(section), dict):
            inputs[section].pop(key, None)
    return inputs


def complete_metrics(run_dir: Path, cfg: DictConfig) -> dict | None:
    """A run folder's metrics.json when its record is complete and valid for `cfg`: status.json "completed",
    metrics.json with both objectives (image_similarity, text_similarity) finite, and config.yaml with the same
    result inputs (result_inputs); else None (the trial runs: resumes from its checkpoint, or starts)."""
    run_dir = Path(run_dir)
    try:
        status = read_status(run_dir)
        if not status or status.get("status") != "completed":
            return None
        metrics = json.loads((run_dir / "metrics.json").read_text())
        scores = (float(metrics["image_similarity"]), float(metrics["text_similarity"]))
        stored = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG), resolve=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.info(
            "%s: its record is not complete (%s: %s); running the trial", run_dir, type(err).__name__, err
        )
        return None
    if not all(math.isfinite(v) for v in scores) or not isinstance(stored, dict):
        return None
    if result_inputs(stored) != result_inputs(resolved_config(cfg, run_dir)):
        return None
    return dict(metrics)


def mark_skipped(run_dir: Path) -> dict:
    """status.json's `skipped_at`: a rerun found the record complete and did not run the trial again."""
    return write_status(run_dir, skipped_at=_now())
