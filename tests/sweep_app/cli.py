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
    """A trial of a few seconds: tiny model and judge, a few steps, 2 samples per prompt."""
    return [
        f"model.pretrained={model}",
        f"data.images={images}",
        "inversion.init_word=dog",
        f"inversion.steps={steps}",
        "inversion.log_every=1",
        "inversion.checkpoint_every=2",
        "inversion.batch_size=1",
        "inversion.grad_accum=1",
        f"evaluation.judge={judge}",
        "evaluation.num_samples=2",
        "evaluation.steps=2",
        "evaluation.batch_size=2",
        "evaluation.bootstrap=10",
        "evaluation.references=false",
        "evaluation.progress=false",
        "evaluation.grid_samples=2",
        "evaluation/prompts=paper_examples",
        f"tracking={tracking}",
    ]


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


def start_sweeper(*args: str, log: Path) -> subprocess.Popen:
    """A sweeper process in its own process group (so a test can SIGKILL all of it)."""
    f = open(log, "w")
    return subprocess.Popen(
        sweeper_cmd(*args), cwd=ROOT, env=env(), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
    )
