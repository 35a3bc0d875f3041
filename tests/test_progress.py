"""A sweep that says what it is doing: progress (done / total, failed, ETA) after every trial under every
launcher, the Pareto front written to the sweep folder after every trial of a search (and printed when it
changes), an end summary for a grid, and the start-up phases of a trial as one line each."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import smoke_overrides

from sweeper import progress
from sweeper.store.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "sweep_app" / "app.py"
CONSOLE = "+hydra.callbacks.console._target_=sweeper.console.ConsoleCallback"  # conf/config.yaml's callback


def run_app(sweep_dir: Path, *overrides: str, returncode: int = 0) -> str:
    cmd = [sys.executable, str(APP), "-m", f"hydra.sweep.dir={sweep_dir}", CONSOLE, *overrides]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for key in (progress.TOTAL_ENV, progress.STARTED_ENV):
        env.pop(key, None)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == returncode, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout + out.stderr


def run_folder(root: Path, name: str, status: str, finished: float | None = None, values=None) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    stamp = None if finished is None else time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(finished))
    write_json(folder / "status.json", {"status": status, "finished_at": stamp, "trial_number": int(name)})
    if values is not None:
        write_json(folder / "metrics.json", {"image_similarity": values[0], "text_similarity": values[1]})


def test_progress_counts_the_sweep_folder_and_takes_the_eta_from_trials_finished_since_the_start(tmp_path):
    now = time.time()
    run_folder(tmp_path, "0", "completed", now - 3600, (0.7, 0.2))  # before this command: not in the rate
    run_folder(tmp_path, "1", "completed", now - 20, (0.6, 0.3))
    run_folder(tmp_path, "2", "failed", now - 10)
    run_folder(tmp_path, "3", "running")
    (tmp_path / "optuna.db").write_bytes(b"")  # not a run folder
    line = progress.progress_line(tmp_path, total=7, started=now - 60, name="grid")
    # 2 trials finished in the last 60 s: 4 to go at 30 s each
    assert line == "[grid] 3/7 trials done (2 completed, 1 failed), 1 running, 4 to go, ETA 2 min"
    assert progress.eta(3, 0, 10.0) == "ETA after the first trial finishes"
    rows = progress.folder_front(tmp_path)
    assert [(r["trial"], r["folder"]) for r in rows] == [(0, "0"), (1, "1")]  # neither dominates the other


def test_a_manifest_trial_counts_once_from_its_concepts_folders(tmp_path):
    """A manifest trial's folder has no status.json of its own: one run folder per concept, then concepts.json."""
    now = time.time()
    run_folder(
        tmp_path / "0", "0", "completed", now - 20, (0.7, 0.2)
    )  # concept "0" of trial 0: running until
    run_folder(tmp_path / "0", "1", "running")  # its other concept finishes and concepts.json is written
    assert progress.progress_line(tmp_path, 2, now - 60, "grid").startswith(
        "[grid] 0/2 trials done (0 completed"
    )
    write_json(tmp_path / "0" / "1" / "status.json", {"status": "completed", "trial_number": 0})
    write_json(
        tmp_path / "0" / "concepts.json", {"image_similarity": 0.6, "text_similarity": 0.25, "failed": {}}
    )
    run_folder(tmp_path / "1", "0", "failed", now - 5)
    run_folder(tmp_path / "1", "1", "completed", now - 4, (0.5, 0.3))
    write_json(tmp_path / "1" / "concepts.json", {"failed": {"0": "ValueError: no images"}})
    line = progress.progress_line(tmp_path, 2, now - 60, "grid")
    assert line.startswith("[grid] 2/2 trials done (1 completed, 1 failed), 0 to go"), line
    assert [(r["folder"], r["image_similarity"]) for r in progress.folder_front(tmp_path)] == [("0", 0.6)]


def test_front_keeps_only_non_dominated_points():
    points = [
        {"trial": 0, "image_similarity": 0.5, "text_similarity": 0.5},
        {"trial": 1, "image_similarity": 0.6, "text_similarity": 0.5},  # dominates 0
        {"trial": 2, "image_similarity": 0.4, "text_similarity": 0.7},
        {"trial": 3, "image_similarity": 0.4, "text_similarity": 0.6},  # dominated by 2
    ]
    assert [p["trial"] for p in progress.front(points)] == [1, 2]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_grid_prints_progress_after_every_trial_and_a_summary_with_its_front(tmp_path, launcher):
    sweep = tmp_path / "grid"
    extra = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    # a failed trial makes Hydra's grid exit non-zero after the last trial: the summary comes before that
    out = run_app(sweep, "x=0.1,0.5,0.9", "fail_below=0.3", *extra, returncode=1)
    done = re.findall(r"\[grid\] (\d)/3 trials done \((\d) completed, (\d) failed\).*ETA", out)
    # one line per trial; two joblib workers that finish together may both count 2 (each counts the folder)
    counts = sorted(int(d) for d, _, _ in done)
    assert len(counts) == 3 and counts[-1] == 3 and set(counts) <= {1, 2, 3}, out
    assert launcher == "joblib" or counts == [1, 2, 3], out
    assert ("3", "2", "1") in done, out  # the last line: 2 completed, 1 failed
    assert "[grid] sweep finished in " in out and "3 trials (2 completed, 1 failed)" in out, out
    assert "[grid] failed (see their status.json): 0" in out, out
    with open(sweep / "pareto_front.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["folder"] for r in rows} == {"1", "2"}  # x=0.5 and x=0.9 trade one objective for the other
    assert "Pareto front (2 trials)" in out


def test_a_search_writes_its_front_after_every_trial_and_prints_it_when_it_changes(tmp_path):
    sweep = tmp_path / "search"
    out = run_app(
        sweep,
        "hydra/sweeper=optuna",
        "x=interval(0,1)",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.direction=[maximize,maximize]",
    )
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{sweep}/optuna.db")
    best = sorted(t.number for t in study.best_trials)
    front = json.loads((sweep / "pareto_front.json").read_text())["front"]
    assert [r["trial"] for r in front] == best
    assert all(r["folder"] == f"trial_{r['trial']:04d}" and (sweep / r["folder"]).is_dir() for r in front)
    for r in front:
        trial = study.trials[r["trial"]]
        assert (r["image_similarity"], r["text_similarity"]) == pytest.approx(tuple(trial.values))
    with open(sweep / "pareto_front.csv") as f:
        assert [int(r["trial"]) for r in csv.DictReader(f)] == best
    assert len(re.findall(r"\[search\] \d/4 trials done .*, ETA", out)) == 4, out
    printed = re.findall(r"\[search\] Pareto front \((\d) trials?\): (.*) -> ", out)
    assert printed and printed[-1][0] == str(len(best)), out
    assert all(f"#{n} image" in printed[-1][1] for n in best)


def test_a_trial_prints_its_start_up_phases_one_line_each(tiny_sd, tiny_judge, concept_images, tmp_path):
    overrides = smoke_overrides(tiny_sd, concept_images, "evaluation.references=true", judge=tiny_judge)
    cmd = [sys.executable, "-m", "sweeper", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for phase in (
        "loading model ",
        "caching VAE latents of ",
        "loading the CLIP judge ",
        "sampling ",
        "reference points",
    ):
        assert sum(phase in line for line in out.splitlines()) == 1, (phase, out[-3000:])
