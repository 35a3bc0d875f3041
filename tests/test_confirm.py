"""Cheap first, then confirm (sweeper/confirm.py): the epsilon-front of a search's configurations rerun at the
full budget from their recorded overrides, recorded as confirmed; analysis reports the confirmed front's
hypervolume."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import optuna
import pytest
import yaml
from conftest import write_concept_images
from sweep_app.cli import ROOT, env, run_sweeper, tiny_overrides

from sweeper.confirm import confirm, epsilon_front


def test_epsilon_front():
    v = np.array([[0.8, 0.2], [0.6, 0.3], [0.79, 0.19], [0.5, 0.1], [np.nan, 0.9]])
    assert list(epsilon_front(v, 0.0)) == [0, 1]  # the front itself; NaN never kept
    assert list(epsilon_front(v, 0.02)) == [0, 1, 2]  # 0.79, 0.19 is within 0.02 of (0.8, 0.2)
    assert list(epsilon_front(v, 0.5)) == [0, 1, 2, 3]


@pytest.mark.e2e
def test_cheap_search_then_confirm_at_the_full_budget(tmp_path, tiny_sd, tiny_judge):
    from analysis.analyse import analyse
    from analysis.hypervolume import configuration_means, hypervolume_2d

    images = write_concept_images(tmp_path / "img", n=3)
    sweep = tmp_path / "sweeps" / "cheap"
    run_sweeper(
        "-m",
        "search=pareto_random",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.study_name=cheap",
        "hydra.sweeper.n_trials=3",
        "data.n_images=2",
        "inversion.per_image_tokens=false",
        *tiny_overrides(tiny_sd, tiny_judge, images, steps=2),
    )
    study = optuna.load_study(study_name="cheap", storage=f"sqlite:///{sweep}/optuna.db")
    values = np.array([t.values for t in study.trials])
    front = {study.trials[i].number for i in epsilon_front(values, 0.0)}

    dry = subprocess.run(
        [sys.executable, "-m", "sweeper.confirm", str(sweep), "inversion.steps=4", "--dry-run"],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"{len(front)} confirmation run(s) of {len(front)} configuration(s)" in dry.stdout
    assert not (sweep / "confirmed").exists()

    records = confirm(sweep, ["inversion.steps=4"], seeds=[0])
    assert {r["source_trial"] for r in records} == front
    for r in records:
        run = sweep / "confirmed" / f"trial_{r['source_trial']:04d}_seed0"
        assert json.loads((run / "status.json").read_text())["status"] == "completed"
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        source = yaml.safe_load((sweep / f"trial_{r['source_trial']:04d}" / "config.yaml").read_text())
        assert cfg["inversion"]["steps"] == 4 and source["inversion"]["steps"] == 2
        assert cfg["inversion"]["lr"] == source["inversion"]["lr"]  # the trial's own configuration
        assert cfg["inversion"]["num_vectors"] == source["inversion"]["num_vectors"]
        assert json.loads((run / "confirmed.json").read_text())["source_trial"] == r["source_trial"]
    again = confirm(sweep, ["inversion.steps=4"], seeds=[0])  # completed folders are not rerun
    assert again == records

    res = analyse([sweep], tmp_path / "out", wandb=False, hv_reference=(-1.0, -1.0))
    runs = res["runs"]
    confirmed = runs[runs["confirmed"]]
    assert len(confirmed) == len(front) and set(confirmed["confirmed_from"]) == front
    hv = res["hypervolume"].iloc[0]
    assert hv["hypervolume_confirmed"] == pytest.approx(
        hypervolume_2d(configuration_means(confirmed).to_numpy(), (-1.0, -1.0))
    )


def test_confirm_refuses_a_folder_without_a_study(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "sweeper.confirm", str(tmp_path)],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: {tmp_path}: no optuna.db: pass the search's sweep folder (or --storage URL)"
    ]
