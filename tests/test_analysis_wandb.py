"""When the sweep's runs had tracking on, `python -m analysis` logs the runs table and the plots to a W&B
summary run through sweeper.tracking (WANDB_MODE=offline: a real offline run folder, no network)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pandas as pd
from conftest import wandb_files_written
from test_analysis import write_run


def _sweep(root: Path, tracking: dict) -> Path:
    over = {f"tracking.{k}": v for k, v in tracking.items()}
    write_run(root / "0", "cat_toy", over, 0.8, 0.22, 0.5, "completed", seed=0)
    write_run(root / "1", "cat_toy", over | {"inversion.lr": 2e-2}, 0.85, 0.18, 0.9, "completed", seed=1)
    write_run(root / "2", "cat_toy", over, None, None, 0.1, "failed", seed=2)
    # a trial's own W&B folder (W&B writes files/config.yaml there) is not a run
    (root / "0" / "wandb" / "offline-run-x" / "files").mkdir(parents=True)
    (root / "0" / "wandb" / "offline-run-x" / "files" / "config.yaml").write_text("a: 1\n")
    return root


def test_summary_run_logged_offline_when_tracking_on(tmp_path, monkeypatch, caplog):
    from analysis.__main__ import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    caplog.set_level(logging.WARNING, logger="sweeper.tracking")
    sweep = _sweep(tmp_path / "sweeps" / "fig10", {"enabled": True, "mode": "offline", "project": "ti"})
    assert main([str(sweep)]) == 0  # default: follows the sweep's tracking settings
    out = sweep / "analysis"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir()) if (out / "wandb").exists() else "no wandb folder"
    files = runs[0] / "files"
    tables = list(files.rglob("runs_*.table.json"))  # the runs table (the scatter has its own)
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    csv = pd.read_csv(out / "runs.csv")
    assert len(table["data"]) == len(csv) == 3
    col = table["columns"].index("image_similarity")
    assert sorted(r[col] for r in table["data"] if r[col] is not None and r[col] == r[col]) == [0.8, 0.85]
    images = {p.name.split("_")[0] for p in (files / "media" / "images").rglob("*.png")}
    assert {"tradeoff", "objectives"} <= images, images
    # summary numbers and the group: read the log once W&B has written it (finish() may return before)
    wandb_files_written()
    data = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"runs_completed" in data and b"fig10" in data, data[:200]
    assert not [r for r in caplog.records if "W&B" in r.getMessage()], [
        r.getMessage() for r in caplog.records
    ]
    # analysing again: the summary run's own folder is not mistaken for a run
    assert main([str(sweep), "--no-wandb"]) == 0
    assert len(pd.read_csv(out / "runs.csv")) == 3
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1


def test_no_summary_run_when_tracking_off_unless_forced(tmp_path, monkeypatch):
    from analysis.__main__ import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = _sweep(tmp_path / "grid", {"enabled": False, "mode": "disabled"})
    assert main([str(sweep), "--out", str(tmp_path / "a")]) == 0
    assert not (tmp_path / "a" / "wandb").exists()
    assert main([str(sweep), "--out", str(tmp_path / "b"), "--wandb"]) == 0
    assert len(list((tmp_path / "b" / "wandb").glob("offline-run-*"))) == 1
    assert os.environ["WANDB_MODE"] == "offline"


def test_summary_run_has_the_tradeoff_scatter_and_stages_its_files_under_the_analysis_folder(
    tmp_path, monkeypatch
):
    """The summary run logs an interactive image-vs-text scatter (wandb.plot.scatter) whose table marks each
    point run / front / reference; W&B stages the logged tables under <out>/wandb, never under ~/.local/share."""
    from analysis.__main__ import main
    from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.delenv("WANDB_DATA_DIR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    sweep = _sweep(tmp_path / "sweeps" / "fig10", {"enabled": True, "mode": "offline", "project": "ti"})
    assert main([str(sweep)]) == 0
    wandb_files_written()
    assert "WANDB_DATA_DIR" not in os.environ  # scoped to the summary run
    out = sweep / "analysis"
    run = next((out / "wandb").glob("offline-run-*"))
    data = next(run.glob("*.wandb")).read_bytes()
    assert b"tradeoff_scatter_table" in data and b"wandb/scatter/v0" in data
    tables = {p.name.split("_table")[0]: p for p in (run / "files" / "media").rglob("*.table.json")}
    scatter = json.loads(tables["tradeoff_scatter"].read_text())
    x, y = DEFAULT_OBJECTIVES
    assert scatter["columns"] == ["name", "kind", x, y]
    kinds = {r[0]: r[1] for r in scatter["data"]}
    assert kinds == {"0": "front", "1": "front", "image_only": "reference", "prompt_only": "reference"}, kinds
    home_staged = [p for p in home.rglob("*") if p.is_file() and "artifacts" in p.parts]
    assert home_staged == [], home_staged  # nothing under ~/.local/share/wandb/artifacts/staging
    staged = [p for p in (out / "wandb").rglob("*") if p.is_file() and "staging" in p.parts]
    assert staged, sorted((out / "wandb").rglob("*"))
