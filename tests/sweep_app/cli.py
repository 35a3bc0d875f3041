"""Helpers for the end-to-end sweep tests: `python -m sweeper` on the small components."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def tiny_overrides(
    model: Path, judge: Path, images: Path, steps: int = 4, tracking: str = "none"
) -> list[str]:
    """The smoke configuration (tests/conftest.py) with `steps` steps, a checkpoint every 2, and `tracking`."""
    from conftest import smoke_overrides

    return smoke_overrides(
        model,
        images,
        f"inversion.steps={steps}",
        "inversion.checkpoint_every=2",
        f"tracking={tracking}",
        judge=judge,
    )


def env() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
        "TOKENIZERS_PARALLELISM": "false",
    }


def sweeper_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweeper", *args]


def run_sweeper(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(
        sweeper_cmd(*args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stdout[-3000:] + "\n" + out.stderr[-5000:]
    return out


def pruning_sweep(
    sweep: Path, model: Path, judge: Path, images: Path, *extra: str, study: str = "prune"
) -> subprocess.CompletedProcess:
    """A `search=pareto_random` study maximising objective 1 (text similarity) over 4-step smoke trials on 2
    images, with the quick evaluation every 2 steps; `extra` picks the pruner, trial count and the rest."""
    return run_sweeper(
        "-m",
        "search=pareto_random",
        f"hydra.sweeper.study_name={study}",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.objective=1",
        "data.n_images=2",
        "inversion.per_image_tokens=false",
        "evaluation.quick.every=2",
        *extra,
        *tiny_overrides(model, judge, images, steps=4),
    )


def start_sweeper(*args: str, log: Path) -> subprocess.Popen:
    """A sweeper process in its own process group (so a test can SIGKILL all of it)."""
    f = open(log, "w")
    return subprocess.Popen(
        sweeper_cmd(*args), cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
    )
