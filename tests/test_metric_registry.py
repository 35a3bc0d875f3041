"""A metric added in ONE registration (tests/sweep_app/extra_metric.py) reaches every view: metrics.json, the
Optuna study (a two-objective search over it, chosen by name), each trial's W&B offline record, runs.csv,
configurations.csv, findings.csv, the tradeoff plot (as an axis), report.html and the analysis' W&B run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import wandb_files_written, write_concept_images
from sweep_app.cli import ROOT, env, tiny_overrides
from sweep_app.extra_metric import SAMPLE_AGREEMENT

from sweeper.evaluation.metrics import registered_temporarily

NAME = SAMPLE_AGREEMENT.name


@pytest.fixture
def new_metric():
    with registered_temporarily(SAMPLE_AGREEMENT) as metric:
        yield metric


def _search(sweep: Path, model: Path, judge: Path, images: Path) -> None:
    import subprocess

    cmd = [
        sys.executable,
        str(ROOT / "tests" / "sweep_app" / "extra_metric.py"),
        "-m",
        "search=pareto_random",
        "hydra.sweeper.study_name=registry",
        f"hydra.sweep.dir={sweep}",
        f"hydra.sweeper.objectives=[text_similarity,{NAME}]",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.params={inversion.lr: 'tag(log, interval(1e-4, 2e-2))'}",
        "data.n_images=2",
        "inversion.per_image_tokens=false",
        "tracking.mode=offline",
        *tiny_overrides(model, judge, images, steps=2, tracking="wandb"),
    ]
    out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + "\n" + out.stderr[-5000:]


@pytest.mark.e2e
def test_one_registration_reaches_every_view(tmp_path, tiny_sd, tiny_judge, new_metric):
    from analysis.analyse import analyse

    images = write_concept_images(tmp_path / "concept", n=3)
    sweep = tmp_path / "sweep"
    _search(sweep, tiny_sd, tiny_judge, images)

    # metrics.json of every trial: the value, its interval (inside the range) and the coverage flag
    trials = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(trials) == 4
    recorded = {}
    for run in trials:
        m = json.loads((run / "metrics.json").read_text())
        lo, hi = m[f"{NAME}_ci"]
        assert -1 <= lo <= hi <= 1
        assert m[f"{NAME}_ci_too_few_samples"] is None  # this metric's coverage was never measured
        assert m["image_similarity_ci_too_few_samples"] is True  # 2 samples: coverage was measured from 4
        assert 0 < m[NAME] <= 1  # a mean cosine with the samples' own mean direction
        recorded[run.name] = (m["text_similarity"], m[NAME])

    # the Optuna study: two objectives by name, directions from the registry, values from metrics.json
    study = optuna.load_study(study_name="registry", storage=f"sqlite:///{sweep / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert study.metric_names == ["text_similarity", NAME]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    for t in done:
        folder = f"trial_{t.number:04d}"
        assert t.values == pytest.approx(list(recorded[folder]))
    assert study.best_trials  # a Pareto front over the new metric

    # each trial's W&B offline record holds the metric
    wandb_files_written()
    for run in trials:
        (offline,) = (run / "wandb").glob("offline-run-*")
        assert NAME.encode() in next(offline.glob("run-*.wandb")).read_bytes()

    # analysis: every table, the plot with the new metric as its x axis, the report, the W&B summary run
    out = tmp_path / "analysis"
    res = analyse([sweep], out, wandb=True, axes=(NAME, "text_similarity"))
    runs = pd.read_csv(out / "runs.csv")
    assert {NAME, f"{NAME}_ci_low", f"{NAME}_ci_high"} <= set(runs.columns)
    assert sorted(runs[NAME]) == pytest.approx(sorted(v for _, v in recorded.values()))
    configs = pd.read_csv(out / "configurations.csv")
    assert {f"{NAME}_mean", f"{NAME}_ci_low", f"{NAME}_ci_high"} <= set(configs.columns)
    found = pd.read_csv(out / "findings.csv")
    assert SAMPLE_AGREEMENT.words in set(found["objective"])  # claims on reconstruction test it too
    plotted = res["tradeoff"]
    assert plotted["axes"] == (NAME, "text_similarity")
    (facet,) = plotted["concepts"].values()
    assert sorted(facet["run_x"]) == pytest.approx(sorted(v for _, v in recorded.values()))
    html = (out / "report.html").read_text()
    assert f"<th>{SAMPLE_AGREEMENT.short}</th>" in html and f"{SAMPLE_AGREEMENT.short} [95%]" in html
    assert "(too few samples)</span>" in html  # 2 samples per prompt: below the 4 coverage was measured at
    assert res["tracked"]
    wandb_files_written()
    (summary,) = (out / "wandb").glob("offline-run-*")
    assert f"best_{NAME}".encode() in next(summary.glob("run-*.wandb")).read_bytes()
