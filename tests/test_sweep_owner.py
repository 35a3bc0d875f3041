"""One sweep per sweep folder (sweeper/store/sweep_owner.py): a second sweep is refused naming the owner, with every
launcher; a stale owner (its process gone on this host) is taken over; workers of one Optuna study share."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sweep_app.cli import env, sweeper_cmd

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "sweep_app" / "app.py"


def app(sweep: Path, *args: str) -> list[str]:
    return [sys.executable, str(APP), "-m", f"hydra.sweep.dir={sweep}", *args]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the first sweep ended early ({proc.returncode})"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _owner_record(sweep: Path, pid: int, study: str | None = None) -> Path:
    record = sweep / ".owners" / f"{socket.gethostname()}_{pid}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    owner = {
        "pid": pid,
        "host": socket.gethostname(),
        "started_at": "t",
        "study": study,
        "command": ["a", "b"],
    }
    record.write_text(json.dumps(owner))
    return record


def test_a_second_sweep_in_the_same_folder_is_refused_naming_the_owner_and_the_first_is_intact(tmp_path):
    sweep, go = tmp_path / "sweep", tmp_path / "go"
    first = subprocess.Popen(
        app(sweep, "x=0.1", f"wait_for={go}"),
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(sweep / "0" / "events.log", first)  # the first sweep's trial 0 is running
        second = subprocess.run(
            app(sweep, "x=0.9,0.8"), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120
        )
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"in use by another sweep (pid {first.pid} on {socket.gethostname()}" in lines[0]
        go.touch()
        assert first.wait(timeout=120) == 0
    finally:
        first.kill()
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0"]  # the second wrote nothing
    assert yaml.safe_load((sweep / "0" / ".hydra" / "overrides.yaml").read_text())[0] == "x=0.1"
    assert json.loads((sweep / "0" / "status.json").read_text())["status"] == "completed"
    assert not list((sweep / ".owners").glob("*.json"))  # released when the sweep ended


def test_a_stale_owner_is_taken_over_with_one_line(tmp_path):
    sweep = tmp_path / "sweep"
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = _owner_record(sweep, dead.pid)
    out = subprocess.run(
        app(sweep, "x=0.3"), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert f"pid {dead.pid} on {socket.gethostname()}" in out.stderr and "taking it over" in out.stderr
    assert not stale.exists() and (sweep / "0" / "metrics.json").is_file()


def test_workers_of_one_optuna_study_share_a_folder_but_another_study_is_refused(tmp_path):
    sweep = tmp_path / "search"
    holder = subprocess.Popen(["sleep", "300"])
    try:
        _owner_record(sweep, holder.pid, study="optuna.db#shared")
        base = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "x=interval(0,1)"]
        same = subprocess.run(
            app(sweep, *base, "hydra.sweeper.study_name=shared"),
            cwd=ROOT,
            env=env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert same.returncode == 0, same.stderr
        other = subprocess.run(
            app(sweep, *base, "hydra.sweeper.study_name=other"),
            cwd=ROOT,
            env=env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (
            other.returncode != 0
            and f"pid {holder.pid}" in other.stderr
            and "study optuna.db#shared" in other.stderr
        )
    finally:
        holder.kill()


@pytest.mark.parametrize(
    "launcher",
    [
        [],
        ["hydra/launcher=joblib_cpu"],
        ["hydra/launcher=vectorised"],
        ["hydra/launcher=slurm_cpu"],
        ["search=pareto_random", "hydra.sweeper.n_trials=2"],
    ],
    ids=["basic", "joblib", "vectorised", "slurm", "optuna"],
)
def test_every_launcher_refuses_a_folder_another_sweep_owns_before_any_job(launcher, tmp_path):
    sweep = tmp_path / "sweep"
    holder = subprocess.Popen(["sleep", "300"])  # a live process on this host, standing in for another sweep
    try:
        _owner_record(sweep, holder.pid)
        out = subprocess.run(
            sweeper_cmd("-m", "inversion.lr=1e-3,2e-3", f"hydra.sweep.dir={sweep}", *launcher),
            cwd=ROOT,
            env=env(),
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        holder.kill()
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines() == [
        f"error: hydra.sweep.dir={sweep}: in use by another sweep (pid {holder.pid} on {socket.gethostname()}, "
        f"started t: a b); wait for it to end or choose another hydra.sweep.dir (if that sweep is gone, remove "
        f"{sweep / '.owners' / f'{socket.gethostname()}_{holder.pid}.json'})"
    ]
    assert sorted(p.name for p in sweep.iterdir()) == [".owners"]  # no job, no run folder, no optuna.db


def test_after_ctrl_c_of_a_joblib_multirun_no_childs_status_stays_running(tmp_path):
    """The workers die of the Ctrl-C before they record it (the app, like a worker killed mid-write, records
    nothing): the sweep's own process, ending, tells their records the truth."""
    import os
    import signal

    sweep = tmp_path / "sweep"
    cmd = app(
        sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "x=0.1,0.2", f"wait_for={tmp_path}/never"
    )
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        for child in ("0", "1"):
            _wait_for(sweep / child / "status.json", proc)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for child in ("0", "1"):
        status = json.loads((sweep / child / "status.json").read_text())
        assert status["status"] == "interrupted", status
        assert "ended before it recorded" in status["error"] and status["finished_at"], status
