"""The Optuna sweeper plugin: override grammar -> distributions, and sweeps of a small real Hydra app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hydra_plugins.ti_optuna_sweeper._impl import (
    distribution_from_override,
    grid_values,
    search_space_from_overrides,
)

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "sweep_app" / "app.py"


def dist(override: str):
    return distribution_from_override(OverridesParser.create().parse_override(override))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("a=1,2,3", CategoricalDistribution([1, 2, 3])),
        ("a=choice(sd15,sdxl)", CategoricalDistribution(["sd15", "sdxl"])),
        ("a=choice(true,false)", CategoricalDistribution([True, False])),
        ("a=range(1,4)", IntDistribution(1, 3)),
        ("a=range(2,11,4)", IntDistribution(2, 10, step=4)),
        ("a=range(0,1,0.25)", FloatDistribution(0.0, 0.75, step=0.25)),
        ("a=interval(0,0.5)", FloatDistribution(0.0, 0.5)),
        ("a=tag(log, interval(1e-4, 2e-2))", FloatDistribution(1e-4, 2e-2, log=True)),
    ],
)
def test_override_grammar_maps_to_optuna_distributions(override, expected):
    assert dist(override) == expected


def test_shuffled_range_is_categorical_and_plain_value_is_fixed():
    d = dist("a=shuffle(range(1,4))")
    assert isinstance(d, CategoricalDistribution) and sorted(d.choices) == [1, 2, 3]
    assert dist("a=5e-3") == "0.005"
    space, fixed = search_space_from_overrides(["a=1,2", "b=7", "c=interval(0,1)", "b=interval(0,2)"])
    assert set(space) == {"a", "b", "c"} and fixed == {}  # the later override of b wins
    space, fixed = search_space_from_overrides(["a=1,2", "a=3"])
    assert space == {} and fixed == {"a": "3"}


def test_grid_values_are_inclusive_and_refuse_continuous_axes():
    assert grid_values("n", IntDistribution(1, 3)) == [1, 2, 3]
    assert grid_values("x", FloatDistribution(0.0, 0.75, step=0.25)) == [0.0, 0.25, 0.5, 0.75]
    assert grid_values("c", CategoricalDistribution(["a", "b"])) == ["a", "b"]
    with pytest.raises(ValueError, match="lr: the grid sampler needs a finite axis"):
        grid_values("lr", FloatDistribution(1e-4, 1e-2, log=True))


def run_app(sweep_dir: Path, *overrides: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(APP), "-m", "hydra/sweeper=optuna", f"hydra.sweep.dir={sweep_dir}", *overrides]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def load(sweep_dir: Path, name: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name or sweep_dir.name, storage=f"sqlite:///{sweep_dir}/optuna.db")


def test_failing_and_nan_trials_are_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "fails"
    run_app(
        sweep,
        "x=0.1,0.6",
        "return_nan=false,true",
        "fail_below=0.3",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_trials=10",
        "hydra.sweeper.direction=[maximize,maximize]",
    )
    trials = load(sweep).trials
    assert len(trials) == 4  # the grid has 4 points; n_trials is capped to it
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.COMPLETE]) == 1
    assert by_state[TrialState.COMPLETE][0].params == {"x": 0.6, "return_nan": False}
    failed = by_state[TrialState.FAIL]
    assert len(failed) == 3
    errors = sorted(t.user_attrs["error"] for t in failed)
    assert sum("FloatingPointError: NaN loss" in e for e in errors) == 2  # x=0.1 raises
    assert sum("non-finite objective" in e for e in errors) == 1  # x=0.6 returns nan
    for t in trials:  # one run folder per trial, keyed by trial number
        assert (sweep / f"trial_{t.number:04d}" / "status.json").is_file()
    results = (sweep / "optimization_results.yaml").read_text()
    assert "solutions" in results and "n_complete: 1" in results


def test_trials_and_results_show_the_effective_lr_with_the_base_beside_it(tmp_path):
    """Optuna's `x` param is the base lr here (the app's config.yaml: effective = 8 x base): the trial's user
    attrs and optimization_results.yaml name the effective lr, the base beside it (lr_label)."""
    sweep = tmp_path / "lr"
    run_app(
        sweep,
        "x=0.25,0.75",
        "lr_scale=8",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.direction=[maximize,maximize]",
    )
    trials = sorted(load(sweep).trials, key=lambda t: t.params["x"])
    assert [t.user_attrs["lr"] for t in trials] == [
        "lr 2 (effective; base 0.25)",
        "lr 6 (effective; base 0.75)",
    ]
    assert [t.user_attrs["effective_lr"] for t in trials] == [2.0, 6.0]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    shown = {s["trial"]: s["lr"] for s in results["solutions"]}
    assert shown and all(shown[t.number] == t.user_attrs["lr"] for t in trials if t.number in shown)


def test_single_objective_pruning_and_enqueued_configurations(tmp_path):
    sweep = tmp_path / "pruned"
    run_app(
        sweep,
        "x=interval(0,1)",
        "steps=4",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=1",
        "hydra/sweeper/pruner=median",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.direction=maximize",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.enqueue=[{x: 0.3},{x: 0.31},{x: 0.99}]",
    )
    trials = load(sweep).trials
    assert len(trials) == 8
    assert [t.params["x"] for t in trials[:3]] == [0.3, 0.31, 0.99]  # enqueued ones first
    assert all(t.intermediate_values for t in trials)  # every trial reported its intermediate values
    assert trials[2].state == TrialState.PRUNED  # x=0.99 is far worse than the median at step 1
    assert max(trials[2].intermediate_values) < 4  # it stopped before its last step
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete and all(len(t.intermediate_values) == 4 for t in complete)
    events = (sweep / "trial_0002" / "events.log").read_text()
    assert "completed" not in events


def test_directions_of_an_existing_study_must_match(tmp_path):
    sweep = tmp_path / "dirs"
    run_app(sweep, "x=interval(0,1)", "hydra.sweeper.n_trials=1", "hydra.sweeper.direction=maximize")
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        "hydra/sweeper=optuna",
        f"hydra.sweep.dir={sweep}",
        "x=interval(0,1)",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.direction=[maximize,maximize]",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "has directions" in out.stderr
    assert json.loads((sweep / "trial_0000" / "status.json").read_text())["status"] == "completed"


def test_journal_file_storage_and_rerun_continues(tmp_path):
    sweep, journal = tmp_path / "journal", tmp_path / "shared" / "study.log"
    args = (
        "x=interval(0,1)",
        f"hydra.sweeper.storage={journal}",
        "hydra.sweeper.direction=[maximize,maximize]",
    )
    run_app(sweep, *args, "hydra.sweeper.n_trials=2")
    run_app(sweep, *args, "hydra.sweeper.n_trials=3")  # the same study: one more trial, not three
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="journal", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert not (sweep / "optuna.db").exists()
    for t in study.trials:
        assert (sweep / f"trial_{t.number:04d}" / "events.log").read_text().count("completed") == 1


def test_pip_check_is_clean():
    # The released hydra-optuna-sweeper pins optuna < 3; this plugin must not need it.
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_search_parameter_for_a_missing_key_fails_before_any_trial_is_asked(tmp_path):
    sweep = tmp_path / "missing"
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        "hydra/sweeper=optuna",
        f"hydra.sweep.dir={sweep}",
        "x=interval(0,1)",
        "no_such_key=interval(0,1)",
        "hydra.sweeper.n_trials=2",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "Could not override 'no_such_key'" in out.stderr  # Hydra's own message, naming the key
    assert "+no_such_key" in out.stderr  # and what to write to add it
    if (sweep / "optuna.db").exists():  # no trial asked, so none left RUNNING
        assert load(sweep).trials == []
    assert not list(sweep.glob("trial_*"))


def test_study_objectives_are_named_after_the_trial_metrics(tmp_path):
    sweep = tmp_path / "named"
    run_app(
        sweep, "x=interval(0,1)", "hydra.sweeper.n_trials=1", "hydra.sweeper.direction=[maximize,maximize]"
    )
    assert load(sweep).metric_names == ["image_similarity", "text_similarity"]
    single = tmp_path / "single"
    run_app(single, "x=interval(0,1)", "hydra.sweeper.n_trials=1", "hydra.sweeper.objective=1")
    assert load(single).metric_names == ["text_similarity"]


def test_asynchronous_slots_stop_on_the_failure_rate_without_leaving_a_trial_running(tmp_path):
    sweep = tmp_path / "failing"
    cmd = [
        sys.executable,
        str(APP),
        "-m",
        "hydra/sweeper=optuna",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=20",
        "hydra.sweeper.max_failure_rate=0.5",
        f"hydra.sweep.dir={sweep}",
        "x=interval(0,1)",
        "fail_below=2.0",  # every trial fails
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode != 0 and "max_failure_rate=0.5" in out.stderr, out.stderr[-3000:]
    assert "asynchronous slots" in out.stdout + out.stderr
    trials = load(sweep).trials
    assert 2 <= len(trials) < 20  # it stopped early
    assert all(t.state == TrialState.FAIL and "FloatingPointError" in t.user_attrs["error"] for t in trials)


def test_gp_sampler_runs_a_pareto_search_past_its_startup_trials(tmp_path):
    sweep = tmp_path / "gp"
    out = run_app(
        sweep,
        "x=interval(0,1)",
        "hydra/sweeper/sampler=gp",
        "hydra.sweeper.sampler.n_startup_trials=2",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.direction=[maximize,maximize]",
        timeout=300,
    )
    assert "GPSampler" in out.stdout + out.stderr
    trials = load(sweep).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({t.params["x"] for t in trials}) == 4  # the GP's own suggestions after the 2 random ones
