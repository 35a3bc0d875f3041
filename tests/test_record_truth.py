"""The run folder's records tell one truth: `wall_time_s` means the trial's own cost everywhere, and a resume
that changed resume-safe settings keeps the first run's values in the record."""

from __future__ import annotations

import json

from conftest import SMOKE_INVERSION, compose_config, smoke_config, smoke_evaluation, wandb_files_written

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


def test_a_resume_with_changed_resume_safe_settings_is_logged_and_keeps_the_first_runs_values(
    tiny_sd, tiny_judge, concept_images, tmp_path, caplog
):
    import logging

    import yaml

    from sweeper.trial import run_trial as run

    folder = tmp_path / "run"

    def config(steps: int, threshold: float):
        return compose_config(
            f"model.pretrained={tiny_sd}",
            f"data.images={concept_images}",
            *(
                o
                for o in SMOKE_INVERSION
                if not o.startswith(("inversion.steps", "inversion.checkpoint_every"))
            ),
            *smoke_evaluation(tiny_judge),
            f"inversion.steps={steps}",
            "inversion.checkpoint_every=2",
            "inversion.early_stop.enabled=true",
            f"inversion.early_stop.threshold={threshold}",
        )

    run(config(2, 0.15), folder)
    with caplog.at_level(logging.WARNING):
        run(config(4, 0.5), folder)  # resumed from step 2 with another threshold
    (resume,) = yaml.safe_load((folder / "config.yaml").read_text())["derived"]["resumed_with"]
    assert resume["from_step"] == 2 and resume["at"]
    assert resume["changed"] == {"inversion.early_stop.threshold": [0.15, 0.5], "inversion.steps": [2, 4]}
    said = [r.getMessage() for r in caplog.records if "inversion.early_stop.threshold" in r.getMessage()]
    assert len(said) == 1 and "0.15 -> 0.5" in said[0], said
    run(config(6, 0.5), folder)  # a third attempt keeps the history
    history = yaml.safe_load((folder / "config.yaml").read_text())["derived"]["resumed_with"]
    assert [h["changed"] for h in history] == [resume["changed"], {"inversion.steps": [4, 6]}]
