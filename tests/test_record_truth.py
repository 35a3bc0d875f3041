"""The run folder's records tell one truth: `wall_time_s` means the trial's own cost everywhere, and a resume
that changed resume-safe settings keeps the first run's values in the record."""

from __future__ import annotations

import json

from conftest import smoke_config, wandb_files_written

from sweeper.trial import run_trial


def test_wall_time_s_is_the_trials_cost_in_status_metrics_and_the_wandb_summary(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    run = tmp_path / "trial_0000"
    cfg = smoke_config(tiny_sd, concept_images, "tracking=wandb", "tracking.mode=offline", judge=tiny_judge)
    run_trial(cfg, run)
    wandb_files_written()
    status = json.loads((run / "status.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert "wall_time_s" not in metrics  # metrics.json times its evaluation under its own name
    assert 0 < metrics["evaluation_time_s"] < status["wall_time_s"]
    (offline,) = (run / "wandb").glob("offline-run-*")
    data = next(offline.glob("run-*.wandb")).read_bytes()
    assert b"evaluation_time_s" in data
    assert json.dumps(status["wall_time_s"]).encode() in data  # the summary's wall_time_s is status.json's
