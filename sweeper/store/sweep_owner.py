"""One sweep per sweep folder: an owner record per sweep process, refused when another sweep holds the folder.

Two sweeps started with the same `hydra.sweep.dir` would both write run folders `0`, `1`, ... into each other.
`SweepOwnerCallback` (a Hydra callback, conf/config.yaml) runs in the sweep's own process before any launcher
starts a job (basic, joblib, vectorised, SLURM, the Optuna sweeper) and claims the folder:

    <sweep_dir>/.owners/<host>_<pid>.json   {"pid", "host", "started_at", "study", "command"}

- A record whose process is gone on this host is stale (a SIGKILL, a power loss: the same rule as a stale
  "running" trial) and is taken over, with one warning line.
- Another live record refuses the sweep with one line naming its owner (pid, host, command) and the record,
  unless both are workers of the same Optuna study (same storage and study name): their trials get distinct
  `trial_<number>` folders from the study, so they may share the folder.
- A record on another host cannot be checked from here: it refuses too, and the line says to remove the record
  once that sweep is known to be gone.

The claim is made under an exclusive `flock` on `<sweep_dir>/.owners/lock`, so two sweeps starting together
cannot both see an empty folder. The record is removed when the sweep ends (on_multirun_end, or at exit).
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from sweeper.store import atomic

log = logging.getLogger("sweeper")

OWNERS_DIR = ".owners"


class SweepFolderInUse(RuntimeError):
    """Another live sweep owns the sweep folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(owner: dict) -> bool:
    """Stale = its process is gone on this host (records from other hosts cannot be checked)."""
    return owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", -1)))


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text())
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}  # half-written or damaged: only a dead process leaves that; treated as stale below


def describe(owner: dict) -> str:
    command = " ".join(owner.get("command") or [])[:160]
    study = f", Optuna study {owner['study']}" if owner.get("study") else ""
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {owner.get('started_at')}{study}" + (
        f": {command}" if command else ""
    )


def claim(sweep_dir: str | Path, study: str | None = None, warn: Callable[[str], None] = log.warning) -> Path:
    """Make this process an owner of `sweep_dir` (see the module doc); the record's path.

    Raises SweepFolderInUse naming the live owner that refuses it; `warn` gets the line of a stale takeover."""
    owners = Path(sweep_dir) / OWNERS_DIR
    owners.mkdir(parents=True, exist_ok=True)
    host, pid = socket.gethostname(), os.getpid()
    mine = owners / f"{host}_{pid}.json"
    with _locked(owners):
        for path in sorted(owners.glob("*.json")):
            if path == mine:
                continue
            owner = _read(path)
            if not owner or _is_stale(owner):
                gone = describe(owner) if owner else f"unreadable record {path.name}"
                warn(f"{sweep_dir}: the sweep that owned this folder is gone ({gone}): taking it over")
                path.unlink(missing_ok=True)
                continue
            if study is not None and owner.get("study") == study:
                continue  # another worker of the same Optuna study
            where = "" if owner.get("host") == host else " (on another host: cannot be checked from here)"
            raise SweepFolderInUse(
                f"hydra.sweep.dir={sweep_dir}: in use by another sweep ({describe(owner)}){where}; wait for it to "
                f"end or choose another hydra.sweep.dir (if that sweep is gone, remove {path})"
            )
        record = {
            "pid": pid,
            "host": host,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "study": study,
            "command": list(sys.argv),
        }
        atomic.write_json(mine, record)
    return mine


def release(record: Path) -> None:
    """Tell orphaned run records the truth (`mark_orphans`), then remove this process's owner record."""
    try:
        mark_orphans(record.parent.parent)
    except Exception as err:  # noqa: BLE001 - never turn a sweep's end into a crash
        log.warning("%s: could not check the run folders' status.json (%s)", record.parent.parent, err)
    try:
        if _read(record).get("pid") == os.getpid():
            record.unlink(missing_ok=True)
    except OSError:
        pass


def _parent_pid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _orphaned(status: dict, host: str, me: int) -> bool | None:
    """True: "running" on this host, its process gone (or this one, ending); None: its process is a child
    of this one still ending (wait); False: anything else."""
    if (
        status.get("status") != "running"
        or status.get("host") != host
        or not isinstance(status.get("pid"), int)
    ):
        return False
    pid = status["pid"]
    if pid == me or not _pid_alive(pid):
        return True
    return None if _parent_pid(pid) == me else False


def mark_orphans(sweep_dir: Path, wait_s: float = 15.0) -> list[Path]:
    """Mark "interrupted" every run of `sweep_dir` whose status.json says "running" on this host while its
    process is gone (a worker stopped by Ctrl-C or killed before it recorded its outcome); waits up to `wait_s`
    for this process's own workers that are still ending. The run folders marked."""
    host, me = socket.gethostname(), os.getpid()
    deadline = time.monotonic() + wait_s
    marked: list[Path] = []
    pending = sorted(Path(sweep_dir).glob("*/status.json"))
    while pending:
        waiting = []
        for path in pending:
            try:
                status = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            verdict = _orphaned(status if isinstance(status, dict) else {}, host, me)
            if verdict is None:
                waiting.append(path)
            elif verdict:
                _mark_interrupted(path.parent, int(status["pid"]))
                marked.append(path.parent)
        if not waiting or time.monotonic() > deadline:
            break
        pending = waiting
        time.sleep(0.2)
    return marked


def _mark_interrupted(run_dir: Path, pid: int) -> None:
    from datetime import datetime, timezone

    from sweeper.store import record

    record.write_status(
        run_dir,
        status="interrupted",
        finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        error=(
            f"the trial's process (pid {pid}) ended before it recorded its outcome (the sweep was interrupted, or "
            "the process was killed); rerunning the sweep resumes the run from its last checkpoint"
        ),
        traceback=None,
    )
    log.warning(
        "%s: its process (pid %d) ended without recording an outcome: marked interrupted", run_dir, pid
    )


def study_of(config: Any) -> str | None:
    """The Optuna study a sweep config works on (storage + name), None for any other sweeper."""
    from omegaconf import OmegaConf

    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
    if "optuna" not in target.lower():
        return None
    sweep_dir = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
    storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None) or "optuna.db"
    name = OmegaConf.select(config, "hydra.sweeper.study_name", default=None) or sweep_dir.name
    return f"{storage}#{name}"


def _say(line: str) -> None:  # before any job, Hydra's logging may not be set up yet
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _refuse(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - Hydra < 1.1
    Callback = object  # type: ignore[assignment,misc]


class SweepOwnerCallback(Callback):
    """Hydra callback: claim the sweep folder before any job starts; release it when the sweep ends."""

    def __init__(self) -> None:
        self._record: Path | None = None

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and goes on: refusing takes SystemExit, after one line
        sweep_dir = str(config.hydra.sweep.dir)
        try:
            self._record = claim(sweep_dir, study_of(config), warn=_say)
        except SweepFolderInUse as err:
            _refuse(str(err))
        except OSError as err:  # a read-only or full sweep folder: one line, before any job
            _refuse(
                f"hydra.sweep.dir={sweep_dir}: cannot write there ({err}); choose a writable hydra.sweep.dir"
            )
        atexit.register(release, self._record)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self._record is not None:
            release(self._record)
