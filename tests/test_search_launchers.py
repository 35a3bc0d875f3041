"""Scale-out configs: one GPU per joblib worker, the SLURM (submitit) preset."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "sweep_app" / "app.py"


def devices(sweep: Path) -> dict[str, tuple[str, str]]:
    """run folder -> (pid, device) from the app's events.log."""
    out = {}
    for log in sweep.glob("*/events.log"):
        m = re.search(r"start pid=(\d+) trial=\S+ device=(\S+)", log.read_text())
        out[log.parent.name] = (m.group(1), m.group(2))
    return out


def test_joblib_gpus_gives_each_concurrent_job_its_own_gpu(tmp_path):
    # The app does not touch CUDA: this checks the assignment, in real joblib worker processes.
    sweep = tmp_path / "grid"
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        "hydra/launcher=joblib_gpus",
        "hydra.launcher.gpus=2",
        "x=0.1,0.2,0.3,0.4,0.5",
        f"hydra.sweep.dir={sweep}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    got = devices(sweep)
    assert {k: d for k, (_, d) in got.items()} == {
        "0": "cuda:0",
        "1": "cuda:1",
        "2": "cuda:0",
        "3": "cuda:1",
        "4": "cuda:0",
    }
    assert str(os.getpid()) not in {pid for pid, _ in got.values()}
    assert len({pid for pid, _ in got.values()}) == 2  # two workers, reused across chunks


def intervals(sweep: Path) -> dict[str, tuple[float, float, str]]:
    """run folder -> (start, end, device) from the app's events.log."""
    out = {}
    for log in sweep.glob("*/events.log"):
        text = log.read_text()
        start = re.search(r"device=(\S+) t=([\d.]+)", text)
        end = re.search(r"completed t=([\d.]+)", text)
        out[log.parent.name] = (float(start.group(2)), float(end.group(1)), start.group(1))
    return out


def test_optuna_slots_over_joblib_gpus_have_no_batch_barrier(tmp_path):
    # Trial 0 finishes only once trial 3 has: with a batch barrier (ask 2, wait for both) trial 3 could
    # never start while trial 0 runs, and trial 0 would time out. Asynchronous slots run 1, 2, 3 in turn
    # on the other GPU.
    sweep = tmp_path / "search"
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        "hydra/sweeper=optuna",
        "hydra/launcher=joblib_gpus",
        "hydra.launcher.gpus=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=4",
        "x=interval(0,1)",
        f"hydra.sweeper.enqueue=[{{x: 0.1, wait_for: '{sweep}/trial_0003/metrics.json'}}]",
        f"hydra.sweep.dir={sweep}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "asynchronous slots" in out.stderr + out.stdout
    got = intervals(sweep)
    assert sorted(got) == ["trial_0000", "trial_0001", "trial_0002", "trial_0003"]
    assert got["trial_0003"][1] <= got["trial_0000"][1]  # trial 3 done while trial 0 still ran
    for a in got:  # trials that ran at the same time ran on different GPUs
        for b in got:
            overlap = a < b and got[a][0] < got[b][1] and got[b][0] < got[a][1]
            assert not overlap or got[a][2] != got[b][2], (a, b, got)
    assert {d for _, _, d in got.values()} == {"cuda:0", "cuda:1"}


def compose_launcher(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_slurm_preset_is_the_checked_submitit_launcher_with_one_gpu_per_job():
    cfg = compose_launcher("hydra/launcher=slurm", "search=pareto", "hydra.launcher.partition=gpu")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.ti_optuna_sweeper.slurm_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.partition == "gpu"
    assert cfg.hydra.sweeper._target_.endswith("ti_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    assert cfg.hydra.sweep.dir == "sweeps/pareto"


def test_slurm_cpu_preset_asks_no_gpu_and_fits_a_small_node():
    launcher = compose_launcher("hydra/launcher=slurm_cpu", "hydra.launcher.partition=debug").hydra.launcher
    assert launcher._target_ == "hydra_plugins.ti_optuna_sweeper.slurm_launcher.SlurmLauncher"
    assert launcher.gpus_per_node is None and launcher.gres is None
    assert launcher.cpus_per_task <= 2 and launcher.mem_gb <= 4
