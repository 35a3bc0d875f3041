"""Sweeps through a real one-node SLURM cluster (slurm-wlm + munge on loopback, started here): a grid on
the CPU preset, a Pareto search with two trials in flight, a cancelled trial that is re-queued and resumes
from its checkpoint, jobs SLURM refuses or can never schedule reported at once, and a Pareto search pruned by
mo_halving with checkpoint points, then its confirm step and analysis.

The trials are the small real Hydra app of tests/sweep_app (run folder, checkpoint, status.json), so each
test takes well under two minutes on two shared cores."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import write_concept_images
from optuna.trial import TrialState
from sweep_app.cli import env as sweep_env
from sweep_app.cli import sweeper_cmd, tiny_overrides
from sweep_app.slurm_cluster import missing, slurm_cluster

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "sweep_app" / "app.py"
pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def slurm_env():
    why = missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"SLURM test cluster unavailable under CI: {why}")
        pytest.skip(why)
    with slurm_cluster(cpus=2, memory_mb=4096) as env:
        yield env


def sweep_cmd(sweep: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        str(APP),
        "-m",
        f"hydra.sweep.dir={sweep}",
        f"hydra.searchpath=[file://{ROOT / 'conf'}]",  # the project's launcher presets
        "hydra/launcher=slurm_cpu",
        "hydra.launcher.poll_s=0.5",
        *args,
    ]


def run(env: dict, cmd: list[str], timeout: int = 150) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def starts(folder: Path) -> list[dict[str, str]]:
    """The app's "start ..." lines of a run folder as dicts (pid, trial, slurm job id, ...)."""
    lines = (folder / "events.log").read_text().splitlines()
    return [dict(re.findall(r"(\w+)=(\S+)", line)) for line in lines if line.startswith("start")]


def optuna_args(n_trials: int, n_jobs: int) -> list[str]:
    return [
        "hydra/sweeper=optuna",
        "hydra.sweeper.direction=[maximize,maximize]",
        f"hydra.sweeper.n_trials={n_trials}",
        f"hydra.sweeper.n_jobs={n_jobs}",
        "x=interval(0,1)",
    ]


def load(sweep: Path) -> optuna.Study:
    return optuna.load_study(study_name=sweep.name, storage=f"sqlite:///{sweep}/optuna.db")


def test_grid_on_the_cpu_preset_runs_every_job_in_slurm(tmp_path, slurm_env):
    sweep = tmp_path / "grid"
    console = "+hydra.callbacks.console._target_=sweeper.console.ConsoleCallback"  # conf/config.yaml's
    out = run(slurm_env, sweep_cmd(sweep, "x=0.1,0.2,0.3", console))
    assert out.returncode == 0, out.stderr[-3000:]
    # the sweep's own process prints progress as the jobs' results come back, and the summary after the last
    assert "[grid] 3/3 trials done (3 completed, 0 failed), 0 to go" in out.stdout, out.stdout[-3000:]
    assert "[grid] sweep finished in " in out.stdout and (sweep / "pareto_front.csv").is_file()
    folders = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [p.name for p in folders] == ["0", "1", "2"]
    jobs = set()
    for folder in folders:
        (start,) = starts(folder)
        assert start["slurm"] != "-" and start["pid"] != str(os.getpid())
        jobs.add(start["slurm"])
        assert json.loads((folder / "status.json").read_text())["status"] == "completed"
    assert len(jobs) == 3  # one SLURM job (array task) per configuration


def test_pareto_search_keeps_two_trials_in_flight(tmp_path, slurm_env):
    # Trial 0 ends only after trial 3 has: that needs a second slot that went on submitting while trial 0
    # ran (no batch barrier); with one slot or batches of two, trial 0 would time out and fail.
    sweep = tmp_path / "pareto"
    out = run(
        slurm_env,
        sweep_cmd(
            sweep,
            *optuna_args(n_trials=4, n_jobs=2),
            f"hydra.sweeper.enqueue=[{{x: 0.05, wait_for: '{sweep}/trial_0003/metrics.json'}}]",
        ),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    study = load(sweep)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert study.metric_names == ["image_similarity", "text_similarity"]
    assert len({t.params["x"] for t in study.trials}) == 4
    jobs = {starts(sweep / f"trial_{n:04d}")[0]["slurm"] for n in range(4)}
    assert len(jobs) == 4 and "-" not in jobs


def test_cancelled_trial_is_requeued_and_resumes_from_its_checkpoint(tmp_path, slurm_env):
    sweep = tmp_path / "cancel"
    cmd = sweep_cmd(sweep, *optuna_args(n_trials=2, n_jobs=1), "steps=30", "step_time=0.3")
    log = open(tmp_path / "sweeper.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=slurm_env, stdout=log, stderr=subprocess.STDOUT)
    ckpt = sweep / "trial_0000" / "checkpoint.json"
    deadline = time.time() + 120
    try:
        while not (ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 3):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "sweeper.log").read_text()[
                -3000:
            ]
            time.sleep(0.2)
        job = starts(sweep / "trial_0000")[0]["slurm"]
        subprocess.run(["scancel", job], env=slurm_env, check=True, timeout=30)
        assert proc.wait(timeout=150) == 0, (tmp_path / "sweeper.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()

    trials = load(sweep).trials
    cancelled = trials[0]
    assert cancelled.state == TrialState.FAIL
    assert (
        "JobEndedWithoutResult" in cancelled.user_attrs["interrupted"] and "error" not in cancelled.user_attrs
    )
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == cancelled.params
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    events = (sweep / "trial_0000" / "events.log").read_text()
    runs = starts(sweep / "trial_0000")
    assert len(runs) == 2 and runs[0]["slurm"] != runs[1]["slurm"]  # a second SLURM job, same run folder
    resumed = int(re.search(r"resumed step=(\d+)", events).group(1))
    assert resumed >= 3  # it went on from the checkpoint, not from step 0
    assert events.count("completed") == 1


@pytest.mark.parametrize(
    "launcher, expected",
    [
        (["hydra.launcher.cpus_per_task=8"], "PENDING (PartitionConfig)"),
        (["hydra/launcher=slurm"], "sbatch refused the job"),  # the GPU preset on a cluster without GPUs
    ],
)
def test_a_job_slurm_cannot_run_is_an_error_not_a_wait(tmp_path, slurm_env, launcher, expected):
    sweep = tmp_path / "refused"
    # Reported, not waited on: the sweep ends by itself with the error (an endless wait would hit the timeout).
    out = run(slurm_env, sweep_cmd(sweep, *optuna_args(n_trials=2, n_jobs=1), *launcher), timeout=120)
    assert out.returncode != 0 and expected in out.stderr, out.stderr[-3000:]
    assert "hydra.launcher.partition" in out.stderr  # says what to set
    # nothing left RUNNING; the trial that never ran is not counted and waits, re-queued, for a working launcher
    never_ran, waiting = load(sweep).trials
    assert (never_ran.state, waiting.state) == (TrialState.FAIL, TrialState.WAITING)
    assert expected in never_ran.user_attrs["launch_failed"] and "error" not in never_ran.user_attrs
    queue = subprocess.run(
        ["squeue", "-h", "-t", "pending,running"], env=slurm_env, capture_output=True, text=True
    )
    assert queue.stdout.strip() == ""  # the unschedulable job was cancelled
    rerun = run(slurm_env, sweep_cmd(sweep, *optuna_args(n_trials=2, n_jobs=1)), timeout=150)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"trial {never_ran.number} never ran" in rerun.stdout + rerun.stderr  # the refusal is said
    assert sum(t.state == TrialState.COMPLETE for t in load(sweep).trials) == 2  # and the trials ran


@pytest.mark.parametrize("n_jobs", [1, 2])  # one batch / asynchronous slots
def test_sweeper_told_to_stop_cancels_its_jobs_and_the_rerun_resumes(tmp_path, slurm_env, n_jobs):
    # The sweeper itself preempted (SIGTERM, as SLURM sends it): its SLURM job must not run on unwatched
    # while the rerun reuses the run folder; the trial is interrupted, re-queued and resumed.
    sweep = tmp_path / "stop"
    args = [*optuna_args(n_trials=1, n_jobs=n_jobs), "steps=30"]
    log = open(tmp_path / "sweeper.log", "w")
    proc = subprocess.Popen(
        sweep_cmd(sweep, *args, "step_time=0.3"),
        cwd=ROOT,
        env=slurm_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    ckpt = sweep / "trial_0000" / "checkpoint.json"
    deadline = time.time() + 120
    try:
        while not (ckpt.exists() and json.loads(ckpt.read_text())["step"] >= 3):
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "sweeper.log").read_text()[
                -3000:
            ]
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, (tmp_path / "sweeper.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    queue = subprocess.run(
        ["squeue", "-h", "-t", "pending,running"], env=slurm_env, capture_output=True, text=True
    )
    assert queue.stdout.strip() == ""  # its job was cancelled with it
    (trial,) = load(sweep).trials[:1]
    assert trial.state == TrialState.FAIL and "SIGTERM" in trial.user_attrs["interrupted"]

    out = run(slurm_env, sweep_cmd(sweep, *args, "step_time=0"))
    assert out.returncode == 0, out.stderr[-3000:]
    trials = load(sweep).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], [
        (t.number, t.state, t.user_attrs, t.system_attrs) for t in trials
    ]
    events = (sweep / "trial_0000" / "events.log").read_text()
    assert int(re.search(r"resumed step=(\d+)", events).group(1)) >= 3
    assert events.count("completed") == 1


def test_the_real_trial_runs_as_a_slurm_job(tmp_path, slurm_env, tiny_sd, tiny_judge):
    # `python -m sweeper` itself (tiny SD-format components): the trial function travels to the job and
    # writes its run folder there.
    images = write_concept_images(tmp_path / "img", n=2)
    sweep = tmp_path / "real"
    cmd = [
        *sweeper_cmd("-m"),
        f"hydra.sweep.dir={sweep}",
        "hydra/launcher=slurm_cpu",
        "hydra.launcher.poll_s=0.5",
        "inversion.lr=1e-3,5e-3",
        "data.n_images=2",
        *tiny_overrides(tiny_sd, tiny_judge, images, steps=2),
    ]
    out = subprocess.run(
        cmd,
        cwd=ROOT,
        env={**sweep_env(), "SLURM_CONF": slurm_env["SLURM_CONF"]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for folder in ("0", "1"):
        assert json.loads((sweep / folder / "status.json").read_text())["status"] == "completed"
        assert json.loads((sweep / folder / "metrics.json").read_text())["image_similarity"] is not None
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # both ran as SLURM jobs


def test_pareto_search_with_mo_halving_checkpoint_points_and_confirm_under_slurm(
    tmp_path, slurm_env, tiny_sd, tiny_judge
):
    # the end to end: a Pareto search pruned by multi-objective successive halving, evaluated at a
    # checkpoint step, its trials SLURM jobs in two asynchronous slots; then the confirm step and the analysis
    from analysis.analyse import analyse
    from sweeper.confirm import confirm

    images = write_concept_images(tmp_path / "img", n=2)
    sweep = tmp_path / "moh"
    cmd = [
        *sweeper_cmd("-m"),
        "search=pareto_random",
        "hydra.sweeper.study_name=moh",
        f"hydra.sweep.dir={sweep}",
        "hydra/launcher=slurm_cpu",
        "hydra.launcher.poll_s=0.5",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=2",
        "hydra/sweeper/pruner=mo_halving",
        "hydra.sweeper.pruner.min_resource=2",
        "hydra.sweeper.pruner.reduction_factor=2",
        "evaluation.quick.num_samples=2",
        "evaluation.quick.steps=2",
        "evaluation.quick.max_prompts=1",
        "evaluation.at_steps=[2]",
        "data.n_images=2",
        "inversion.per_image_tokens=false",
        *tiny_overrides(tiny_sd, tiny_judge, images, steps=4),
    ]
    env = {**sweep_env(), "SLURM_CONF": slurm_env["SLURM_CONF"]}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "asynchronous slots" in out.stdout + out.stderr
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 3  # every trial ran as a SLURM job
    study = optuna.load_study(study_name="moh", storage=f"sqlite:///{sweep}/optuna.db")
    assert TrialState.COMPLETE in [t.state for t in study.trials]
    for t in study.trials:
        run = sweep / f"trial_{t.number:04d}"
        rung = json.loads((run / "quick" / "step_000002" / "rung.json").read_text())
        assert (
            rung["continued"] == (t.state == TrialState.COMPLETE)
            and t.user_attrs["rung_2"][:2] == rung["scores"]
        )
        at2 = json.loads((run / "at_steps" / "step_000002" / "metrics.json").read_text())
        assert at2["step"] == 2  # evaluated at the rung step before the rung decided
    records = confirm(sweep, ["inversion.steps=6"], seeds=[0])
    assert records and all(
        json.loads((Path(r["run_dir"]) / "status.json").read_text())["status"] == "completed" for r in records
    )
    res = analyse([sweep], tmp_path / "out", wandb=False, hv_reference=(-1.0, -1.0))
    hv = res["hypervolume"].iloc[0]
    assert hv["hypervolume_confirmed"] > 0 and hv["hypervolume_with_checkpoints"] >= hv["hypervolume"]
