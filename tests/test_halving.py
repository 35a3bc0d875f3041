"""Multi-objective successive halving (sweeper/halving.py, `hydra/sweeper/pruner=mo_halving`): non-dominated
sorting, the top-1/eta rule at a rung over what the study's storage holds, the record in the run folder, and a
Pareto search on the tiny components that prunes with it (the basic and the vectorised launcher)."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pytest
from conftest import write_concept_images
from sweep_app.cli import run_sweeper, tiny_overrides

from sweeper.halving import MOHalvingPruner, nondominated_ranks


def test_nondominated_ranks_peel_fronts():
    pts = np.array([[0.9, 0.1], [0.5, 0.5], [0.1, 0.9], [0.4, 0.4], [0.45, 0.1], [0.1, 0.1], [np.nan, 1.0]])
    assert list(nondominated_ranks(pts)) == [0, 0, 0, 1, 1, 2, 0]  # NaN: -inf there; best text
    assert list(nondominated_ranks(np.array([[1.0, 1.0], [1.0, 1.0]]))) == [0, 0]  # equal points: one front


def test_rungs_are_geometric_and_below_the_last_step():
    assert MOHalvingPruner(100, 3).rungs(1000) == [100, 300, 900]
    assert MOHalvingPruner(100, 3).rungs(900) == [100, 300]
    with pytest.raises(ValueError, match="reduction_factor >= 2"):
        MOHalvingPruner(100, 1)


def _study():
    return optuna.create_study(directions=["maximize", "maximize"], storage=optuna.storages.InMemoryStorage())


def test_top_one_over_eta_by_nondominated_sorting_continue(tmp_path):
    pruner = MOHalvingPruner(min_resource=2, reduction_factor=2, tie_break="denoising")
    study = _study()
    # arrival order at rung 2: (image, text, -denoising loss)
    arrivals = [
        (0.5, 0.5, -1.0),  # n=1: keep 1 -> continues
        (0.4, 0.4, -1.0),  # n=2: dominated by the first, keep 1 -> pruned
        (
            0.9,
            0.1,
            -1.0,
        ),  # n=3: front 0 with the first, keep 2, one before it (tie-break equal) ... see below
        (0.1, 0.9, -0.5),  # n=4: front 0, best tie-break: position 0 -> continues
        (0.45, 0.45, -2.0),  # n=5: front 1, keep 3, 3 before it (front 0) -> pruned
    ]
    outcomes = []
    for k, values in enumerate(arrivals):
        trial = study.ask()
        report = pruner.reporter(study, trial._trial_id, tmp_path / f"t{k}", None, [0, 1], [1.0, 1.0])
        try:
            report(2, values[:2], values[2])
            outcomes.append(True)
        except optuna.TrialPruned as e:
            assert "pruned at step 2" in str(e)
            outcomes.append(False)
        rung = json.loads((tmp_path / f"t{k}" / "quick" / "step_000002" / "rung.json").read_text())
        assert rung["at_rung"] == k + 1 and rung["keep"] == math.ceil((k + 1) / 2)
        assert rung["continued"] == outcomes[-1] and rung["scores"] == list(values[:2]) and rung["rung"] == 0
        assert study.trials[k].user_attrs["rung_2"] == [*values[:2], values[2]]
    # the third: same front as the first, equal tie-break: nobody strictly before it -> continues
    assert outcomes == [True, False, True, True, False]


def test_retries_count_once_and_minimised_objectives_flip(tmp_path):
    pruner = MOHalvingPruner(min_resource=2, reduction_factor=2, tie_break=None)
    study = optuna.create_study(directions=["minimize"], storage=optuna.storages.InMemoryStorage())
    first = study.ask()
    pruner.reporter(study, first._trial_id, tmp_path / "a", None, [0], [-1.0])(2, (0.3, 0.9))
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    # its retry (Optuna's retry format) reports the same rung again: one entry for the chain, not two
    retry = optuna.create_trial(
        state=optuna.trial.TrialState.WAITING,
        params={},
        distributions={},
        system_attrs={"failed_trial": first.number, "retry_history": [first.number]},
    )
    study._storage.create_new_trial(study._study_id, template_trial=retry)
    again = study.ask()
    assert study._storage.get_trial(again._trial_id).system_attrs["failed_trial"] == first.number
    pruner.reporter(study, again._trial_id, tmp_path / "a", None, [0], [-1.0])(2, (0.3, 0.9))
    assert json.loads((tmp_path / "a" / "quick" / "step_000002" / "rung.json").read_text())["at_rung"] == 1
    other = study.ask()  # minimising objective 0: 0.2 beats 0.3, so it continues (n=2, keep 1)
    pruner.reporter(study, other._trial_id, tmp_path / "b", None, [0], [-1.0])(2, (0.2, 0.0))
    with pytest.raises(optuna.TrialPruned):
        pruner.reporter(study, study.ask()._trial_id, tmp_path / "c", None, [0], [-1.0])(2, (0.5, 0.0))


def _pareto_halving_sweep(tmp_path, tiny_sd, tiny_judge, name, *extra):
    images = write_concept_images(tmp_path / "img", n=3)
    sweep = tmp_path / "sweeps" / name
    out = run_sweeper(
        "-m",
        "search=pareto_random",
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweep.dir={sweep}",
        "hydra/sweeper/pruner=mo_halving",
        "hydra.sweeper.pruner.min_resource=2",
        "hydra.sweeper.pruner.reduction_factor=2",
        "hydra.sweeper.n_trials=4",
        "data.n_images=2",
        "inversion.per_image_tokens=false",
        "evaluation.quick.num_samples=2",
        "evaluation.quick.steps=2",
        "evaluation.quick.max_prompts=1",
        *extra,
        *tiny_overrides(tiny_sd, tiny_judge, images, steps=6),
    )
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{sweep}/optuna.db")
    return sweep, study, out


def _check_rungs(sweep, study):
    states = [t.state for t in study.trials]
    assert len(states) == 4 and optuna.trial.TrialState.COMPLETE in states
    for t in study.trials:
        run = sweep / f"trial_{t.number:04d}"
        quick = run / "quick"
        assert sorted(p.name for p in quick.iterdir()) <= ["step_000002", "step_000004"]  # the rungs only
        for step_dir in sorted(quick.iterdir()):
            rung = json.loads((step_dir / "rung.json").read_text())
            metrics = json.loads((step_dir / "metrics.json").read_text())
            assert rung["scores"] == [metrics["image_similarity"], metrics["text_similarity"]]
            assert t.user_attrs[f"rung_{rung['step']}"][:2] == rung["scores"]
            assert rung["tie_break"] is not None  # -denoising loss, the default tie-break
        status = json.loads((run / "status.json").read_text())["status"]
        if t.state == optuna.trial.TrialState.PRUNED:
            last = json.loads((sorted(quick.iterdir())[-1] / "rung.json").read_text())
            assert status == "pruned" and not last["continued"]
            assert (run / "checkpoints" / f"step_{last['step']:06d}").is_dir() or (
                run / "checkpoints" / f"step_{last['step']}"
            ).is_dir(), sorted(p.name for p in (run / "checkpoints").iterdir())
        else:
            assert status == "completed" and t.values is not None


def _check_decisions_replay(sweep, study):
    """Trials reach each rung in trial-number order here (one at a time, or a vectorised group in order): every
    recorded decision is the rule applied to the entries of the trials before it at that rung."""
    pruner = MOHalvingPruner(min_resource=2, reduction_factor=2)
    decided = 0
    for step in (2, 4):
        entries = []
        for t in sorted(study.trials, key=lambda t: t.number):
            if f"rung_{step}" not in t.user_attrs:
                continue
            entries.append(t.user_attrs[f"rung_{step}"])
            points = np.array([e[:2] for e in entries])
            ties = np.array([e[2] for e in entries], dtype=float)
            expected = pruner.decide(points, ties, len(entries) - 1)
            rung = json.loads(
                (sweep / f"trial_{t.number:04d}" / "quick" / f"step_{step:06d}" / "rung.json").read_text()
            )
            assert {k: rung[k] for k in expected} == expected
            decided += 1
    assert decided >= 4  # every trial decided at rung 2 at least


@pytest.mark.e2e
def test_pareto_search_prunes_with_mo_halving(tmp_path, tiny_sd, tiny_judge):
    sweep, study, out = _pareto_halving_sweep(tmp_path, tiny_sd, tiny_judge, "moh")
    assert "MOHalvingPruner" in out.stdout + out.stderr
    _check_rungs(sweep, study)
    _check_decisions_replay(sweep, study)
    assert "Error executing job" not in out.stderr


@pytest.mark.e2e
def test_mo_halving_on_the_vectorised_launcher(tmp_path, tiny_sd, tiny_judge):
    sweep, study, out = _pareto_halving_sweep(
        tmp_path, tiny_sd, tiny_judge, "vmoh", "hydra/launcher=vectorised", "hydra.sweeper.n_jobs=2"
    )
    assert "vectorised group(s)" in out.stdout + out.stderr
    _check_rungs(sweep, study)
    _check_decisions_replay(sweep, study)
