"""What a sweep has done so far, read from its sweep folder: every launcher (basic, joblib, vectorised, SLURM,
the Optuna sweeper's slots and batches) writes the same run folders, so whichever process prints a line
counts the same trials.

- `progress_line`: `[grid] 3/8 trials done (3 completed, 0 failed), 5 to go, ETA 4 min` (the ETA from the
  trials that finished since this command started: their rate, so parallel workers count).
- `front` / `write_front`: the Pareto front (both objectives maximised) as `pareto_front.csv` and
  `pareto_front.json` in the sweep folder (trial numbers, folders, both objectives, the lr label), written
  atomically after every trial of a search and at the end of a grid.
- `summary_lines`: the end of a sweep: counts, what a rerun skipped, failed folders, the front.

Printing is the caller's (console.py, the Optuna sweeper, the vectorised and SLURM launchers); this module only
reads run folders and formats. It imports nothing heavier than the standard library and store/atomic.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sweeper.store import atomic

FINISHED = ("completed", "failed", "pruned")
OBJECTIVES = ("image_similarity", "text_similarity")
FRONT_CSV, FRONT_JSON = "pareto_front.csv", "pareto_front.json"
# Set by the console callback when a grid starts (its process and every worker it starts inherit them).
TOTAL_ENV, STARTED_ENV = "TI_SWEEP_TOTAL", "TI_SWEEP_STARTED"


@dataclass
class RunState:
    """One run folder of a sweep, as its status.json and metrics.json say."""

    folder: Path
    status: str
    trial_number: int | None
    finished_at: float | None  # epoch seconds
    values: tuple[float, float] | None  # (image_similarity, text_similarity) of a completed run
    skipped_at: float | None = (
        None  # when a rerun last found it complete and did not run it again (sweeper.trial)
    )


def _epoch(iso: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(iso)).timestamp()
    except (TypeError, ValueError):
        return None


def _values(folder: Path) -> tuple[float, float] | None:
    try:
        m = json.loads((folder / "metrics.json").read_text())
        values = (float(m[OBJECTIVES[0]]), float(m[OBJECTIVES[1]]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _mtime(path: Path, state: str) -> float | None:
    """When a finished record without `finished_at` (another writer's) was last written."""
    return path.stat().st_mtime if state in FINISHED else None


def run_state(folder: Path | str) -> RunState | None:
    """A run folder's state, None when it holds no readable status.json (optuna.db, .submitit, one being written)
    and is not a manifest trial's folder."""
    folder = Path(folder)
    try:
        status = json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return _manifest_state(folder) if folder.is_dir() else None
    if not isinstance(status, dict):
        return None
    state = str(status.get("status"))
    return RunState(
        folder,
        state,
        status.get("trial_number"),
        _epoch(status.get("finished_at")) or _mtime(folder / "status.json", state),
        _values(folder) if state == "completed" else None,
        _epoch(status.get("skipped_at")),
    )


def _manifest_state(folder: Path) -> RunState | None:
    """A manifest trial's folder (sweeper/config/manifest.py): no status.json of its own but one run folder per
    concept, and `concepts.json` (the means over concepts) once every concept has finished. Running until then;
    failed when a concept failed."""
    concepts = [
        c for c in (run_state(p) for p in sorted(folder.iterdir()) if (p / "status.json").is_file()) if c
    ]
    if not concepts:
        return None
    try:
        summary = json.loads((folder / "concepts.json").read_text())
        values: tuple[float, float] | None = (float(summary[OBJECTIVES[0]]), float(summary[OBJECTIVES[1]]))
        state = "failed" if summary.get("failed") else "completed"
    except (OSError, ValueError, KeyError, TypeError):
        values, state = None, "running"
    if state == "running" and any(c.status == "failed" for c in concepts):
        state = "failed" if all(c.status in FINISHED for c in concepts) else "running"
    finished = [c.finished_at for c in concepts if c.finished_at is not None]
    return RunState(
        folder,
        state,
        concepts[0].trial_number,
        max(finished) if state in FINISHED and finished else None,
        values if state == "completed" and values and all(map(math.isfinite, values)) else None,
    )


def run_states(sweep_dir: Path | str) -> list[RunState]:
    """The run folders directly under `sweep_dir` that hold a readable status.json, in folder-name order."""
    root = Path(sweep_dir)
    folders = sorted(root.iterdir()) if root.is_dir() else []
    return [state for state in map(run_state, folders) if state is not None]


def finished_count(sweep_dir: Path | str) -> int:
    """How many run folders of the sweep have finished (completed, failed or pruned)."""
    return sum(r.status in FINISHED for r in run_states(sweep_dir))


def duration(seconds: float) -> str:
    """'45 s', '4 min', '1 h 05 min'."""
    seconds = max(float(seconds), 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def eta(remaining: int, finished_since_start: int, elapsed_s: float) -> str:
    """'ETA 4 min' from the rate of the trials that finished since the command started."""
    if remaining <= 0:
        return "ETA 0 s"
    if finished_since_start <= 0 or elapsed_s <= 0:
        return "ETA after the first trial finishes"
    return f"ETA {duration(remaining * elapsed_s / finished_since_start)}"


def progress_line(sweep_dir: Path | str, total: int, started: float, name: str | None = None) -> str:
    """`[name] 3/8 trials done (2 completed, 1 failed), 1 running, 5 to go, ETA 4 min`."""
    runs = run_states(sweep_dir)
    count = {s: sum(r.status == s for r in runs) for s in (*FINISHED, "running")}
    done = sum(count[s] for s in FINISHED)
    now_done = sum(1 for r in runs if r.status in FINISHED and (r.finished_at or 0) >= started)
    parts = f"{count['completed']} completed, {count['failed']} failed" + (
        f", {count['pruned']} pruned" if count["pruned"] else ""
    )
    running = f", {count['running']} running" if count["running"] else ""
    left = max(total - done, 0)
    label = name or Path(sweep_dir).name
    return (
        f"[{label}] {done}/{total} trials done ({parts}){running}, {left} to go, "
        f"{eta(left, now_done, time.time() - started)}"
    )


def front(points: list[dict]) -> list[dict]:
    """The non-dominated rows of `points` (each with both OBJECTIVES, maximised), best image similarity first."""
    keep = []
    for p in points:
        a = (p[OBJECTIVES[0]], p[OBJECTIVES[1]])
        dominated = any(
            (q[OBJECTIVES[0]] >= a[0] and q[OBJECTIVES[1]] >= a[1])
            and (q[OBJECTIVES[0]] > a[0] or q[OBJECTIVES[1]] > a[1])
            for q in points
        )
        if not dominated:
            keep.append(p)
    return sorted(keep, key=lambda p: (-p[OBJECTIVES[0]], -p[OBJECTIVES[1]]))


def folder_front(sweep_dir: Path | str) -> list[dict]:
    """The Pareto front of a sweep folder's completed runs (metrics.json)."""
    points = [
        {
            "trial": r.trial_number,
            "folder": r.folder.name,
            OBJECTIVES[0]: r.values[0],
            OBJECTIVES[1]: r.values[1],
            "lr": _lr_label_of(r.folder),
        }
        for r in run_states(sweep_dir)
        if r.values is not None
    ]
    return front(points)


def _lr_label_of(folder: Path) -> str:
    """The lr label of a run folder (config.yaml's derived.effective_lr and inversion.lr), '' without."""
    from sweeper.config.schema import lr_label  # Hydra and yaml only

    try:
        import yaml

        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        return lr_label(float(cfg["derived"]["effective_lr"]), float(cfg["inversion"]["lr"]))
    except Exception:  # noqa: BLE001 - an old folder, or one refused before its config was written
        return ""


def write_front(sweep_dir: Path | str, rows: list[dict]) -> Path:
    """pareto_front.csv and pareto_front.json (the same rows) in the sweep folder, each written atomically."""
    root = Path(sweep_dir)
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["trial", "folder", *OBJECTIVES]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_json(root / FRONT_JSON, {"front": rows, "updated_at": time.time()})
    return atomic.write_text(root / FRONT_CSV, buf.getvalue())


def front_line(
    rows: list[dict], where: Path | str, name: str, objectives: tuple[str, ...] | list[str] = OBJECTIVES
) -> str:
    """`[name] Pareto front (2 trials): #3 image 0.712 text 0.251 (trial_0003), ... -> sweep/pareto_front.csv`."""
    shown = ", ".join(_front_point(r, objectives) for r in rows)
    return f"[{name}] Pareto front ({len(rows)} trial{'s' if len(rows) != 1 else ''}): {shown} -> {where}"


def _front_point(row: dict, objectives: tuple[str, ...] | list[str]) -> str:
    number = "" if row.get("trial") is None else f"#{row['trial']} "
    values = " ".join(f"{name.split('_')[0]} {float(row[name]):.3f}" for name in objectives)
    return f"{number}{values} ({row['folder']})"


def summary_lines(
    sweep_dir: Path | str, started: float | None = None, name: str | None = None, with_front: bool = True
) -> list[str]:
    """The end of a sweep: counts (and how many a rerun skipped), its time, failed folders, and (`with_front`)
    the Pareto front of its run folders, written to pareto_front.csv/.json (a search writes its study's)."""
    root = Path(sweep_dir)
    label = name or root.name
    runs = run_states(root)
    count = {s: sum(r.status == s for r in runs) for s in (*FINISHED, "running", "interrupted")}
    skipped = sum(
        r.skipped_at is not None and (started is None or r.skipped_at >= started)
        for r in runs
        if r.status == "completed"
    )
    took = f" in {duration(time.time() - started)}" if started else ""
    extra = "".join(f", {count[s]} {s}" for s in ("pruned", "running", "interrupted") if count[s])
    lines = [
        f"[{label}] sweep finished{took}: {len(runs)} trials ({count['completed']} completed"
        f"{f', {skipped} of them skipped as already complete' if skipped else ''}, {count['failed']} failed"
        f"{extra}) in {root}"
    ]
    failed = [r.folder.name for r in runs if r.status == "failed"]
    if failed:
        lines.append(f"[{label}] failed (see their status.json): {', '.join(failed)}")
    rows = folder_front(root) if with_front else []
    if rows:
        path = write_front(root, rows)
        lines.append(front_line(rows, path, label))
    return lines


def started_from_env() -> tuple[int | None, float | None]:
    """(total trials, start time) of the grid this process belongs to, from the console callback's variables."""

    def number(key: str, kind: type) -> Any:
        try:
            return kind(os.environ[key])
        except (KeyError, ValueError):
            return None

    return number(TOTAL_ENV, int), number(STARTED_ENV, float)
