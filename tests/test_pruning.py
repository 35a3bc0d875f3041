"""Pruning with the real trial: the intermediate value Optuna sees is a quick evaluation of the vectors
as they are (the study's objective, higher is better), not the training loss."""

from __future__ import annotations

import json
import subprocess

import optuna
from conftest import write_concept_images
from sweep_app.cli import ROOT, pruning_sweep


def test_quick_evaluation_is_what_the_pruner_sees(tmp_path, tiny_sd, tiny_judge):
    images = write_concept_images(tmp_path / "img", n=3)
    sweep = tmp_path / "sweeps" / "prune"
    pruning_sweep(
        sweep,
        tiny_sd,
        tiny_judge,
        images,
        "hydra.sweeper.n_trials=3",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "inversion.num_vectors=1",
        "evaluation.quick.num_samples=2",
        "evaluation.quick.steps=2",
        "evaluation.quick.max_prompts=2",
    )
    trials = optuna.load_study(study_name="prune", storage=f"sqlite:///{sweep}/optuna.db").trials
    assert len(trials) == 3
    for t in trials:
        assert t.intermediate_values, t
        run = sweep / f"trial_{t.number:04d}"
        for step, value in t.intermediate_values.items():
            assert step in (2, 4)
            quick = json.loads((run / "quick" / f"step_{step:06d}" / "metrics.json").read_text())
            assert value == quick["text_similarity"]  # objective 1, not the loss
            assert len(quick["per_prompt"]) == 2 and quick["num_samples"] == 2


def test_optuna_sweep_on_the_vectorised_launcher_prunes_each_trial(tmp_path, tiny_sd, tiny_judge):
    """search=... with hydra/launcher=vectorised: one group per batch, each trial reports under its own number."""
    images = write_concept_images(tmp_path / "img", n=3)
    sweep = tmp_path / "sweeps" / "vprune"
    out = pruning_sweep(
        sweep,
        tiny_sd,
        tiny_judge,
        images,
        "hydra/launcher=vectorised",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=2",
        "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.lower=2.0",  # similarities are <= 1: all pruned
        "evaluation.quick.num_samples=2",
        "evaluation.quick.steps=2",
        "evaluation.quick.max_prompts=1",
        study="vprune",
    )
    assert "as 1 vectorised group(s)" in out.stdout + out.stderr
    trials = optuna.load_study(study_name="vprune", storage=f"sqlite:///{sweep}/optuna.db").trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.PRUNED] * 2
    for t in trials:
        run = sweep / f"trial_{t.number:04d}"
        status = json.loads((run / "status.json").read_text())
        assert status["trial_number"] == t.number and "TrialPruned" in status["error"]
        quick = json.loads((run / "quick" / "step_000002" / "metrics.json").read_text())
        assert t.intermediate_values == {2: quick["text_similarity"]}


def test_a_pruned_trial_says_so_in_one_line_without_hydras_error(tmp_path, tiny_sd, tiny_judge):
    images = write_concept_images(tmp_path / "img", n=3)
    sweep = tmp_path / "sweeps" / "oneline"
    out = pruning_sweep(
        sweep,
        tiny_sd,
        tiny_judge,
        images,
        "hydra.sweeper.n_trials=1",
        "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.lower=2.0",  # similarities are <= 1: pruned at the first report
        "evaluation.quick.num_samples=2",
        "evaluation.quick.steps=2",
        "evaluation.quick.max_prompts=1",
        study="oneline",
    )
    text = out.stdout + out.stderr
    assert "Error executing job" not in text and "Traceback" not in text
    lines = [line for line in text.splitlines() if "pruned at step 2" in line]
    assert len(lines) == 1, text[-3000:]
    assert "trial 0 pruned: pruned at step 2" in lines[0] and str(sweep / "trial_0000") in lines[0]
    (trial,) = optuna.load_study(study_name="oneline", storage=f"sqlite:///{sweep}/optuna.db").trials
    assert trial.state == optuna.trial.TrialState.PRUNED


def test_a_single_objective_pruner_on_a_pareto_study_is_refused_at_start(tmp_path, tiny_sd, tiny_judge):
    from sweep_app.cli import env, sweeper_cmd, tiny_overrides

    images = write_concept_images(tmp_path / "img", n=3)
    sweep = tmp_path / "sweeps" / "refused"
    cmd = sweeper_cmd(
        "-m",
        "search=pareto_random",
        "hydra/sweeper/pruner=threshold",
        "hydra.sweeper.pruner.lower=0.1",
        f"hydra.sweep.dir={sweep}",
        *tiny_overrides(tiny_sd, tiny_judge, images),
    )
    r = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[0].startswith(
        "error: hydra.sweeper.pruner: ThresholdPruner prunes single-objective studies only"
    )
    assert "use hydra/sweeper/pruner=mo_halving" in lines[0]
    assert not (sweep / "optuna.db").exists() and not list(sweep.glob("trial_*"))
