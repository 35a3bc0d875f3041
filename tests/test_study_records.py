"""What the Optuna study records about trials that did not end by themselves: each carries its reason."""

from __future__ import annotations

import socket
import subprocess
import time

import optuna
from optuna.trial import TrialState

from sweeper import search


def test_a_trial_failed_as_stale_by_the_heartbeat_says_why_in_the_study(tmp_path):
    storage = search.make_storage(f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    study._storage.set_trial_user_attr(trial._trial_id, search.WORKER_ATTR, "node7:4242")
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)  # past the grace period: the worker is gone
    search.fail_stale_trials(study)
    stale = study.trials[trial.number]
    assert stale.state == TrialState.FAIL
    reason = stale.user_attrs[search.STALE_ATTR]
    assert "no heartbeat from node7:4242 for over 1 s" in reason and "re-queued" in reason
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number]
    assert len(retry) == 1 and search.STALE_ATTR not in retry[0].user_attrs  # the reason is the attempt's


def test_a_trial_whose_local_worker_died_says_why_in_the_study(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db")
    trial = study.ask()
    dead = subprocess.Popen(["true"])
    dead.wait()
    study._storage.set_trial_user_attr(
        trial._trial_id, search.WORKER_ATTR, f"{socket.gethostname()}:{dead.pid}"
    )
    assert search.fail_dead_local_trials(study, None) == [trial.number]
    reason = study.trials[trial.number].user_attrs[search.STALE_ATTR]
    assert f"pid {dead.pid} on {socket.gethostname()}" in reason and "died" in reason


def test_a_trial_whose_launcher_failed_does_not_count_and_the_rerun_runs_it(tmp_path):
    """The launcher failed before the job ran (here joblib refusing n_jobs=0; on SLURM, sbatch refusing the job):
    the trial never ran, so it does not count toward n_trials; a rerun with a working launcher runs it, and says so."""
    import sys
    from pathlib import Path

    from sweep_app.cli import env

    root = Path(__file__).resolve().parents[1]
    sweep = tmp_path / "search"

    def run_search(*launcher: str) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            str(root / "tests" / "sweep_app" / "app.py"),
            "-m",
            "hydra/sweeper=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",
            "x=interval(0,1)",
            f"hydra.sweep.dir={sweep}",
            "hydra/launcher=joblib",
            *launcher,
        ]
        return subprocess.run(cmd, cwd=root, env=env(), capture_output=True, text=True, timeout=180)

    refused = run_search("hydra.launcher.n_jobs=0")
    assert refused.returncode != 0 and "n_jobs" in refused.stderr
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{sweep}/optuna.db")
    never_ran = [t for t in study.trials if t.state == TrialState.FAIL]
    assert never_ran and all(search.LAUNCH_FAILED_ATTR in t.user_attrs for t in never_ran)
    assert "n_jobs" in never_ran[0].user_attrs[search.LAUNCH_FAILED_ATTR]

    rerun = run_search("hydra.launcher.n_jobs=2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{sweep}/optuna.db")
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 2  # the trials ran this time
    assert "never ran" in rerun.stderr + rerun.stdout  # and the rerun says why it runs them
