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


def test_optuna_batches_over_joblib_gpus(tmp_path):
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
        f"hydra.sweep.dir={sweep}",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    got = devices(sweep)
    assert sorted(got) == ["trial_0000", "trial_0001", "trial_0002", "trial_0003"]
    # each batch of two trials runs on two different GPUs
    assert got["trial_0000"][1] != got["trial_0001"][1] and got["trial_0002"][1] != got["trial_0003"][1]


def test_slurm_preset_is_the_submitit_launcher_with_one_gpu_per_job():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=slurm", "search=pareto", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.partition == "gpu"
    assert cfg.hydra.sweeper._target_.endswith("ti_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    assert cfg.hydra.sweep.dir == "sweeps/pareto"
