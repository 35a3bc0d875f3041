"""Resume wastes nothing: rerunning a sweep skips the trials whose records are complete and valid (status
completed, metrics.json with both objectives, the same result inputs in config.yaml) and says how many it
skipped; any other record (a changed evaluation, a damaged metrics.json, a failed trial) runs again."""

from __future__ import annotations

import json
import logging
import re

import pytest
from conftest import smoke_config

from sweeper.store import record
from sweeper.trial import run_trial


def test_a_complete_record_is_skipped_and_anything_else_runs_again(
    tiny_sd, tiny_judge, concept_images, tmp_path, caplog
):
    run = tmp_path / "run"
    cfg = smoke_config(tiny_sd, concept_images, judge=tiny_judge)
    scores = run_trial(cfg, run)
    metrics = (run / "metrics.json").read_bytes()
    embeds = (run / "learned_embeds.safetensors").stat().st_mtime_ns

    with caplog.at_level(logging.INFO, logger="sweeper.trial"):
        again = run_trial(
            smoke_config(tiny_sd, concept_images, "inversion.log_every=2", judge=tiny_judge), run
        )
    assert again == scores  # the stored scores, and no trial work: nothing was rewritten
    assert (run / "metrics.json").read_bytes() == metrics
    assert (run / "learned_embeds.safetensors").stat().st_mtime_ns == embeds
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "completed" and status["skipped_at"]
    assert f"skipped {run}: its record is complete" in caplog.text

    other = smoke_config(tiny_sd, concept_images, "evaluation.seed=7", judge=tiny_judge)
    assert record.complete_metrics(run, other) is None  # another evaluation: the record is not its result
    run_trial(other, run)
    assert json.loads((run / "metrics.json").read_text())["seeds"]["noise"] == 7
    assert json.loads((run / "status.json").read_text())["skipped_at"] is None  # a new attempt

    (run / "metrics.json").write_text('{"image_similarity": 0.5')  # damaged: runs again
    assert record.complete_metrics(run, other) is None
    run_trial(other, run)
    assert record.complete_metrics(run, other) is not None


@pytest.mark.e2e
def test_rerunning_a_grid_skips_its_complete_trials_under_another_launcher_and_says_so(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    from sweep_app.cli import run_sweeper, tiny_overrides

    sweep = tmp_path / "grid"
    args = [
        "-m",
        "inversion.seed=0,1",
        f"hydra.sweep.dir={sweep}",
        *tiny_overrides(tiny_sd, tiny_judge, concept_images),
    ]
    run_sweeper(*args)
    metrics = {p.parent.name: p.read_bytes() for p in sweep.glob("*/metrics.json")}
    assert sorted(metrics) == ["0", "1"]
    out = run_sweeper(
        *args, "hydra/launcher=vectorised"
    ).stdout  # every launcher runs trials through run_trials
    assert len(re.findall(r"^\[trial \d\] skipped \(record complete\)", out, re.M)) == 2, out
    assert "[grid] 2/2 trials done (2 completed, 0 failed), 0 to go" in out, out
    assert "2 trials (2 completed, 2 of them skipped as already complete, 0 failed)" in out, out
    assert {p.parent.name: p.read_bytes() for p in sweep.glob("*/metrics.json")} == metrics
    assert "caching VAE latents" not in out  # no model work at all
