"""An Optuna search killed with SIGKILL mid-trial and rerun: nothing completed is repeated, the trial that
was running is retried in its own run folder and resumes from its checkpoint, all trials end up stored."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from conftest import write_concept_images
from optuna.trial import TrialState
from sweep_app.cli import run_sweeper, start_sweeper, tiny_overrides

STEPS = 24


def study_trials(sweep: Path) -> list:
    try:
        return optuna.load_study(study_name="resume", storage=f"sqlite:///{sweep}/optuna.db").trials
    except Exception:  # noqa: BLE001 - not created yet, or locked for a moment
        return []


def checkpointed_running_trial(sweep: Path, trials: list) -> bool:
    for t in trials:
        ckpts = sweep / f"trial_{t.number:04d}" / "checkpoints"
        if t.state == TrialState.RUNNING and ckpts.is_dir() and any(ckpts.glob("step_*")):
            return True
    return False


@pytest.mark.e2e
def test_sigkill_after_two_trials_then_rerun_continues_the_study(tmp_path, tiny_sd, tiny_judge):
    images = write_concept_images(tmp_path / "img", n=4)
    sweep = tmp_path / "sweeps" / "resume"
    args = [
        "-m",
        "search=pareto_random",
        "hydra.sweeper.study_name=resume",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.n_trials=4",
        "data.n_images=2",
        "inversion.num_vectors=1",
        "inversion.per_image_tokens=false",
        *tiny_overrides(tiny_sd, tiny_judge, images, steps=STEPS),
    ]

    proc = start_sweeper(*args, log=tmp_path / "first.log")
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            trials = study_trials(sweep)
            done = sum(t.state == TrialState.COMPLETE for t in trials)
            if done >= 2 and checkpointed_running_trial(sweep, trials):
                break
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.2)
        else:
            raise AssertionError(
                "no third trial with a checkpoint in time:\n" + (tmp_path / "first.log").read_text()[-3000:]
            )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    killed = [t for t in study_trials(sweep) if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    killed_number = killed[0].number
    before = {t.number: t.values for t in study_trials(sweep) if t.state == TrialState.COMPLETE}
    assert len(before) == 2

    run_sweeper(*args)

    trials = study_trials(sweep)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    for number, values in before.items():  # the first two are untouched, not rerun
        assert trials[number].values == values
    stale = trials[killed_number]
    assert (
        stale.state == TrialState.FAIL and "error" not in stale.user_attrs
    )  # failed as stale, not by the trial
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retried) == 1

    folders = sorted(p.name for p in sweep.glob("trial_*"))
    assert len(folders) == 4 and f"trial_{killed_number:04d}" in folders
    for name in folders:
        log = (sweep / name / "__main__.log").read_text()
        assert log.count("trial done") == 1, name  # every trial completed exactly once
        assert json.loads((sweep / name / "status.json").read_text())["status"] == "completed"
    resumed = (sweep / f"trial_{killed_number:04d}" / "__main__.log").read_text()
    assert "resuming from" in resumed  # the retry picked up the killed trial's checkpoint
    for name in folders:
        if name != f"trial_{killed_number:04d}":
            assert "resuming from" not in (sweep / name / "__main__.log").read_text()
