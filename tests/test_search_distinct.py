"""Workers and restarts of one study sample differently, and each trial records the seed that drew it.

The sampler's base seed is fixed (`sampler.seed=0`, as in search=pareto): before per-process seeds, two
workers suggested pairwise-identical configurations and a rerun replayed the first run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from sweeper.search import make_storage, process_seed

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "sweep_app" / "app.py"


def app_cmd(sweep: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        str(APP),
        "-m",
        "hydra/sweeper=optuna",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.study_name=shared",
        "hydra.sweeper.direction=[maximize,maximize]",
        "x=interval(0,1)",
        "n=interval(0,10)",
        *args,
    ]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def running_workers(url: str) -> set[str]:
    """The workers (user attr "worker", set when a trial is asked) with a trial running in the study."""
    try:
        study = optuna.load_study(study_name="shared", storage=make_storage(url))
    except KeyError:  # the study is not created yet
        return set()
    return {
        t.user_attrs["worker"]
        for t in study.trials
        if t.state == TrialState.RUNNING and "worker" in t.user_attrs
    }


def configurations(trials: list) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in trials]


@pytest.mark.parametrize("storage", ["sqlite", "journal"])
@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_two_concurrent_workers_never_suggest_the_same_configuration(tmp_path, storage, sampler):
    sweep = tmp_path / "sweep"
    url = f"sqlite:///{tmp_path}/study.db" if storage == "sqlite" else str(tmp_path / "study.log")
    go = tmp_path / "both-workers-asked"
    args = [
        f"hydra/sweeper/sampler={sampler}",
        "hydra.sweeper.sampler.seed=0",
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.n_trials=8",
        f"wait_for={go}",  # every trial holds until both workers have one running (then none waits)
    ]
    workers = [start(app_cmd(sweep, *args), tmp_path / f"w{i}.log") for i in range(2)]
    # An event, not a race: on a loaded machine one worker could otherwise run all 8 trials before the other
    # has started, and the test would check nothing about two workers.
    deadline = time.monotonic() + 180
    while len(running_workers(url)) < 2:
        assert all(w.poll() is None for w in workers), "a worker ended before both had asked"
        assert time.monotonic() < deadline, "the two workers never had a trial each"
        time.sleep(0.2)
    go.touch()
    for i, w in enumerate(workers):
        assert w.wait(timeout=240) == 0, (tmp_path / f"w{i}.log").read_text()[-3000:]

    trials = optuna.load_study(study_name="shared", storage=make_storage(url)).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    assert len(set(configurations(complete))) == 8
    seeds = {t.user_attrs["worker"]: t.user_attrs["sampler_seed"] for t in complete}
    assert len(seeds) == 2 and len(set(seeds.values())) == 2  # both workers asked, each with its own seed
    for t in complete:
        base, before, worker = t.user_attrs["sampler_seed_from"].split(" ", 2)
        assert base == "base=0" and worker.startswith("worker=" + t.user_attrs["worker"])


def test_kill_and_rerun_continues_with_new_configurations(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["hydra/sweeper/sampler=tpe", "hydra.sweeper.sampler.seed=0", "steps=200", "step_time=0.05"]
    first = start(app_cmd(sweep, *args, "hydra.sweeper.n_trials=6"), tmp_path / "first.log")
    study_db = f"sqlite:///{sweep}/optuna.db"
    deadline = time.time() + 120
    try:
        while not (sweep / "trial_0002" / "checkpoint.json").exists():  # two done, the third under way
            assert first.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[
                -3000:
            ]
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    rerun = subprocess.run(
        app_cmd(sweep, *args, "step_time=0", "hydra.sweeper.n_trials=6"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    trials = optuna.load_study(study_name="shared", storage=study_db).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    assert len(set(configurations(complete))) == 6  # the rerun did not replay the first run's suggestions
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in killed] == [2]
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == 2]
    assert len(retried) == 1 and retried[0].params == killed[0].params  # the retry resumes it: same config
    seeds = {t.user_attrs["sampler_seed"] for t in complete if "failed_trial" not in t.system_attrs}
    assert len(seeds) == 2  # the first run's and the rerun's
    reruns = [t for t in complete if "trials_before=3" in t.user_attrs["sampler_seed_from"]]
    assert reruns  # the rerun derived its seed from the 3 trials the study held when it started


def test_the_recorded_seed_reproduces_a_workers_suggestions(tmp_path):
    sweep = tmp_path / "sweep"
    out = subprocess.run(
        app_cmd(
            sweep, "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=7", "hydra.sweeper.n_trials=4"
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    trials = optuna.load_study(study_name="shared", storage=f"sqlite:///{sweep}/optuna.db").trials
    seed = trials[0].user_attrs["sampler_seed"]
    basis = trials[0].user_attrs["sampler_seed_from"]
    base, before, worker = basis.split(" ", 2)
    assert process_seed(7, 0, worker.removeprefix("worker="))[0] == seed  # the seed follows from its record
    replay = optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=seed), directions=["maximize"] * 2
    )
    for t in trials:  # the same draws, in the same order (the sweeper suggests in override order)
        again = replay.ask(t.distributions)
        assert again.params == t.params
        replay.tell(again, [0.0, 0.0])
