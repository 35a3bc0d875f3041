"""Faults that must end in one readable line, never a raw traceback: a damaged optuna.db, an unwritable sweep
folder, analysis' own write and parse failures; and analysis skipping folders that are not this project's runs."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from sweep_app.cli import env
from test_analysis import write_run

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "sweep_app" / "app.py"


def _search(sweep: Path, n_trials: int) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        "hydra/sweeper=optuna",
        f"hydra.sweeper.n_trials={n_trials}",
        "x=interval(0,1)",
        f"hydra.sweep.dir={sweep}",
    ]
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=180)


def _one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if "optuna.db" in line or "sweep" in line.lower()]
    assert errors, out.stderr[-3000:]
    return errors[-1]


def test_a_damaged_optuna_db_says_which_file_and_what_to_do(tmp_path):
    sweep = tmp_path / "search"
    assert _search(sweep, 1).returncode == 0
    db = sweep / "optuna.db"
    data = bytearray(db.read_bytes())
    for i in range(4096, len(data), 7):  # every page after the first: "database disk image is malformed"
        data[i] = 0x5A
    db.write_bytes(bytes(data))
    line = _one_error_line(_search(sweep, 2))
    assert str(db) in line and "damaged" in line and "move it aside" in line and "restore" in line, line
    db.write_bytes(os.urandom(8192))  # not a database at all
    line = _one_error_line(_search(sweep, 2))
    assert str(db) in line and "move it aside" in line, line


def test_an_unwritable_sweep_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("a file where the sweep folder's parent should be\n")
    sweep = tmp_path / "file" / "search"
    out = _search(sweep, 1)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()
    assert (
        line.startswith(f"error: hydra.sweep.dir={sweep}: cannot write there") and "Not a directory" in line
    )


def test_analysis_skips_folders_that_are_not_this_projects_runs_with_one_line(tmp_path, capsys):
    from analysis.__main__ import main

    root = tmp_path / "sweep"
    write_run(root / "0", "cat_toy", {}, 0.5, 0.3, 0.1, "completed", seed=0)
    (root / "other").mkdir()
    (root / "other" / "metrics.json").write_text('{"accuracy": 0.91}')  # another project's run
    (root / "tagged").mkdir()  # a YAML tag: nothing may be constructed from it, the run is skipped
    marker = tmp_path / "pwned"
    (root / "tagged" / "config.yaml").write_text(
        f'model: !!python/object/apply:os.system ["touch {marker}"]\n'
    )
    assert main([str(root), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err.splitlines()
    other = [line for line in err if str(root / "other") in line]
    tagged = [line for line in err if str(root / "tagged") in line]
    assert len(other) == 1 and "not a run of this project" in other[0], err
    assert len(tagged) == 1 and "config.yaml" in tagged[0] and "tag" in tagged[0], err
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert runs["run"].tolist() == [f"{root}/0"] and not marker.exists()


def test_analysis_out_on_a_full_disk_or_an_unwritable_folder_is_one_line(tmp_path, capsys, monkeypatch):
    from analysis.__main__ import main
    from sweeper.store import atomic

    root = tmp_path / "sweep"
    write_run(root / "0", "cat_toy", {}, 0.5, 0.3, 0.1, "completed", seed=0)
    (tmp_path / "a-file").write_text("x")
    assert main([str(root), "--out", str(tmp_path / "a-file" / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --out ") and "a-file" in line and "Not a directory" in line

    def full(path, write):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(atomic, "_write_via", full)
    assert main([str(root), "--out", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: --out ") and "No space left on device" in line


@pytest.mark.slow  # a real trial stopped mid-training, W&B on: a minute on a loaded machine
def test_a_sigtermed_job_with_wandb_ends_in_one_line_not_a_traceback(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    """SIGTERM to the job's process group (scancel, preemption) stops the trial and kills W&B's service with it:
    the job's stderr ends in one line saying how to resume, not in a TrialInterrupted or W&B ConnectionResetError
    traceback."""
    import json
    import signal
    import time

    from conftest import smoke_overrides
    from sweep_app.cli import sweeper_cmd

    run = tmp_path / "run"
    overrides = smoke_overrides(
        tiny_sd,
        concept_images,
        "tracking=wandb",
        "tracking.mode=offline",
        "inversion.steps=5000",
        "inversion.checkpoint_every=50",
        judge=tiny_judge,
    )
    proc = subprocess.Popen(
        sweeper_cmd(*overrides, f"hydra.run.dir={run}"),
        cwd=ROOT,
        env={**env(), "HOME": str(tmp_path / "home")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while not (run / "history.csv").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err and "ConnectionResetError" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by SIGTERM: {run} holds the checkpoint") and "rerun" in last, last
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
