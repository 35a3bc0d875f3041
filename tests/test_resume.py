"""Checkpoints and resume: an interrupted run, rerun in the same folder, ends with the uninterrupted run's embeddings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_config, smoke_evaluation
from safetensors.torch import load_file

from sweeper.training.inversion import ResumeError, invert

ROOT = Path(__file__).resolve().parents[1]


def overrides(model, images, *extra):
    return [
        f"model.pretrained={model}",
        f"data.images={images}",
        "inversion.init_word=cat",
        "inversion.batch_size=1",
        "inversion.grad_accum=1",
        "inversion.log_every=3",
        "inversion.checkpoint_every=4",
        "inversion.num_vectors=2",
        "inversion.weight_decay=0.1",
        "tracking=none",
        "device=cpu",
        *extra,
    ]


def embeds(run_dir: Path) -> torch.Tensor:
    return load_file(run_dir / "learned_embeds.safetensors")["<concept>"]


class Crash(Exception):
    pass


def test_crash_then_rerun_matches_uninterrupted(tiny_sd, concept_images, tmp_path):
    cfg = compose_config(*overrides(tiny_sd, concept_images, "inversion.steps=10"))
    invert(cfg, tmp_path / "straight")

    def crash_at_6(step, values):
        if step >= 6:
            raise Crash

    with pytest.raises(Crash):  # after the checkpoint at 4 and a history row at 6 that resume must drop
        invert(cfg, tmp_path / "resumed", on_log=crash_at_6)
    assert not (tmp_path / "resumed" / "learned_embeds.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step_4"]
    res = invert(cfg, tmp_path / "resumed")
    assert res.resumed_from == 4
    assert torch.equal(embeds(tmp_path / "straight"), embeds(tmp_path / "resumed"))
    straight = (tmp_path / "straight" / "history.csv").read_text()
    assert straight == (tmp_path / "resumed" / "history.csv").read_text()
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "step_8" / "state.pt", weights_only=True)
    assert {"step", "vectors", "optimizer", "generator", "torch_rng", "numpy_rng", "python_rng"} <= set(state)
    assert state["step"] == 8 and state["optimizer"]["state"]  # Adam moments are saved, not just the vectors


def test_rerun_with_other_settings_is_refused(tiny_sd, concept_images, tmp_path):
    invert(compose_config(*overrides(tiny_sd, concept_images, "inversion.steps=4")), tmp_path / "run")
    with pytest.raises(ResumeError, match="different"):
        invert(
            compose_config(*overrides(tiny_sd, concept_images, "inversion.steps=8", "inversion.lr=0.1")),
            tmp_path / "run",
        )


def fast_evaluation(judge, cache):
    return smoke_evaluation(judge, "evaluation.bootstrap=20", f"evaluation.cache_dir={cache}")


@pytest.mark.e2e
def test_sigkill_mid_run_then_rerun_resumes(tiny_sd, tiny_judge, concept_images, tmp_path):
    """A real `python -m sweeper` killed with SIGKILL after its first checkpoint, then rerun in the same folder."""
    run = tmp_path / "killed"
    args = overrides(
        tiny_sd,
        concept_images,
        "inversion.steps=150",
        "inversion.checkpoint_every=20",
        "inversion.log_every=7",
    )
    cmd = [
        sys.executable,
        "-m",
        "sweeper",
        *args,
        *fast_evaluation(tiny_judge, tmp_path / "refs"),
        f"hydra.run.dir={run}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while (
            not (run / "checkpoints" / "step_20").exists() and proc.poll() is None and time.time() < deadline
        ):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-2000:]
    assert not (run / "learned_embeds.safetensors").exists(), "the run finished before it could be killed"
    assert json.loads((run / "status.json").read_text())["status"] == "running"

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (
        "resuming from" in second.stdout + second.stderr
        and json.loads((run / "status.json").read_text())["status"] == "completed"
    )

    straight = invert(compose_config(*args), tmp_path / "straight")
    assert straight.resumed_from is None
    assert torch.allclose(embeds(run), embeds(tmp_path / "straight"), atol=1e-6, rtol=0)
    steps = [int(line.split(",")[0]) for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert steps == [*range(7, 150, 7), 150]  # no duplicated or missing rows across the kill


@pytest.mark.e2e
def test_sigterm_checkpoints_the_current_step_records_interrupted_and_a_rerun_resumes(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    """A real `python -m sweeper` told SIGTERM mid-run (SLURM preemption, scancel): with checkpoint_every=0 the
    only checkpoint is the one the interruption writes at the step it reached; the run says "interrupted"
    (not failed); the same command then resumes there and ends with the uninterrupted run's embeddings."""
    run = tmp_path / "preempted"
    args = overrides(
        tiny_sd,
        concept_images,
        "inversion.steps=150",
        "inversion.checkpoint_every=0",
        "inversion.log_every=5",
    )
    cmd = [
        sys.executable,
        "-m",
        "sweeper",
        *args,
        *fast_evaluation(tiny_judge, tmp_path / "refs"),
        f"hydra.run.dir={run}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while not (run / "history.csv").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    first_log = (tmp_path / "first.log").read_text()
    assert proc.returncode != 0, first_log[-2000:]
    assert not (run / "learned_embeds.safetensors").exists(), (
        "the run finished before it could be interrupted"
    )
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and "TrialInterrupted" in status["error"], status
    assert status["pid"] == proc.pid and status["host"] and status["finished_at"] is not None
    (ckpt,) = (run / "checkpoints").iterdir()  # the interruption's own checkpoint, nothing half-written
    stopped_at = int(ckpt.name.removeprefix("step_"))
    assert 5 <= stopped_at < 150

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"checkpoints/step_{stopped_at}" in second.stdout + second.stderr  # "resuming from ..."
    assert json.loads((run / "status.json").read_text())["status"] == "completed"

    invert(compose_config(*args), tmp_path / "straight")
    # Another process on the same code path and thread count: equal up to float noise (1e-6; measured 0).
    assert torch.allclose(embeds(run), embeds(tmp_path / "straight"), atol=1e-6, rtol=0)
    rows = [line.split(",") for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [*range(5, 151, 5)]  # no duplicated or missing rows
    # the loss window saved at the interruption: the row after it averages the same steps as uninterrupted
    straight_rows = [
        line.split(",") for line in (tmp_path / "straight" / "history.csv").read_text().splitlines()[1:]
    ]
    assert [float(r[1]) for r in rows] == pytest.approx([float(r[1]) for r in straight_rows], rel=1e-5)
