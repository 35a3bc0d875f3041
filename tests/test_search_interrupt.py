"""A sweep told to stop by SIGTERM (scancel, preemption, a time limit) mid-trial: the trial is recorded as
interrupted (not a failure that is lost), re-queued, and the rerun resumes it from its checkpoint in the
same run folder, its history.csv going on from the checkpoint's step."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from conftest import write_concept_images
from optuna.trial import TrialState
from sweep_app.cli import run_sweeper, start_sweeper, tiny_overrides

STEPS = 24


def study_trials(sweep: Path) -> list:
    try:
        return optuna.load_study(study_name="interrupt", storage=f"sqlite:///{sweep}/optuna.db").trials
    except Exception:  # noqa: BLE001 - not created yet, or locked for a moment
        return []


def history(folder: Path) -> list[dict]:
    with open(folder / "history.csv") as f:
        return list(csv.DictReader(f))


def checkpoint_steps(folder: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (folder / "checkpoints").glob("step_*"))


def test_sigterm_mid_trial_requeues_it_and_the_rerun_resumes_it(tmp_path, tiny_sd, tiny_judge):
    images = write_concept_images(tmp_path / "img", n=4)
    sweep = tmp_path / "sweeps" / "interrupt"
    args = [
        "-m",
        "search=pareto_random",
        "hydra.sweeper.study_name=interrupt",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=2",
        "data.n_images=2",
        "inversion.num_vectors=1",
        "inversion.per_image_tokens=false",
        *tiny_overrides(tiny_sd, tiny_judge, images, steps=STEPS),
    ]
    folder = sweep / "trial_0000"
    proc = start_sweeper(*args, log=tmp_path / "first.log")
    deadline = time.time() + 240
    try:
        while not (folder / "checkpoints").is_dir() or not checkpoint_steps(folder):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[
                -3000:
            ]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # the sweeper process itself (it runs the trial in-process)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    trials = study_trials(sweep)
    first = trials[0]
    assert first.state == TrialState.FAIL  # not RUNNING, not a counted failure:
    assert "SIGTERM" in first.user_attrs["interrupted"] and "error" not in first.user_attrs
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.WAITING and retry.params == first.params
    ckpts = checkpoint_steps(folder)
    before = {int(row["step"]): row for row in history(folder)}
    assert ckpts and max(ckpts) < STEPS

    run_sweeper(*args)

    trials = study_trials(sweep)
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert study_trials(sweep)[retry.number].state == TrialState.COMPLETE
    log = (folder / "__main__.log").read_text()
    resumed = [line for line in log.splitlines() if "resuming from" in line]
    assert len(resumed) == 1
    resumed_at = int(resumed[0].rsplit("step_", 1)[1].split()[0].strip("/"))
    assert resumed_at in ckpts and resumed_at > 0
    rows = history(folder)
    steps = [int(row["step"]) for row in rows]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # one row per step, up to the end
    for row in rows:  # up to the checkpoint the record is the interrupted run's own: it went on from there
        if int(row["step"]) <= resumed_at:
            assert row == before[int(row["step"])]
    assert log.count("trial done") == 1


def test_sigterm_when_the_interrupted_trial_is_the_whole_budget(tmp_path):
    # n_trials=1: the retry is the study's only counted trial, WAITING; the rerun must run it, not call
    # the study full.
    root = Path(__file__).resolve().parents[1]
    sweep = tmp_path / "one"
    cmd = [
        sys.executable,
        str(root / "tests" / "sweep_app" / "app.py"),
        "-m",
        "hydra/sweeper=optuna",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=1",
        "x=interval(0,1)",
        "steps=200",
    ]
    proc = subprocess.Popen(
        [*cmd, "step_time=0.05"], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt = sweep / "trial_0000" / "checkpoint.json"
    deadline = time.time() + 120
    while not (ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    out = subprocess.run([*cmd, "step_time=0"], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = optuna.load_study(study_name="one", storage=f"sqlite:///{sweep}/optuna.db").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "SIGTERM" in trials[0].user_attrs["interrupted"]
    events = (sweep / "trial_0000" / "events.log").read_text()
    assert int(re.search(r"resumed step=(\d+)", events).group(1)) >= 3 and events.count("completed") == 1
