"""A sweep told to stop by SIGTERM (scancel, preemption, a time limit) mid-trial: the trial is recorded as
interrupted (not a failure that is lost), re-queued, and the rerun resumes it from its checkpoint in the
same run folder, its history.csv going on from the checkpoint's step."""

from __future__ import annotations

import csv
import os
import signal
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
