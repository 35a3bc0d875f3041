"""Early stopping on the deterministic denoising objective (sweeper/training/early_stop.py) on the tiny components."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from hydra.errors import ConfigCompositionException
from safetensors import safe_open
from safetensors.torch import load_file

from sweeper.config.schema import ConfigError, settings
from sweeper.data.images import list_images
from sweeper.models import load_components
from sweeper.training.early_stop import DenoisingObjective
from sweeper.training.inversion import Trainer, invert, train


def overrides(model, images, *extra):
    return [
        f"model.pretrained={model}",
        f"data.images={images}",
        "inversion.init_word=cat",
        "inversion.batch_size=1",
        "inversion.grad_accum=1",
        "inversion.log_every=2",
        "inversion.checkpoint_every=0",
        "inversion.lr=0.05",
        "tracking=none",
        "device=cpu",
        *extra,
    ]


def stop(every=2, window=3, threshold=1.0, batch=3, enabled=True):
    return [
        f"inversion.early_stop.enabled={str(enabled).lower()}",
        f"inversion.early_stop.every={every}",
        f"inversion.early_stop.window={window}",
        f"inversion.early_stop.threshold={threshold}",
        f"inversion.early_stop.batch={batch}",
    ]


def history(run: Path) -> list[dict]:
    with (run / "history.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def embeds(run: Path) -> torch.Tensor:
    return load_file(run / "learned_embeds.safetensors")["<concept>"]


def test_objective_is_identical_across_calls_and_untouched_by_training_randomness(tiny_sd, concept_images):
    cfg = compose_config(*overrides(tiny_sd, concept_images, "inversion.batch_size=2"))
    comps = load_components(str(tiny_sd), "fp32", "cpu")
    trainer = Trainer(cfg, comps, list_images(concept_images))
    objective = DenoisingObjective(trainer, batch=4, seed=0)
    state = trainer.generator.get_state()
    first = objective(trainer, 1)
    assert objective(trainer, 1) == first  # same vectors, same fixed batch: the same number
    assert torch.equal(trainer.generator.get_state(), state)  # measuring draws nothing from training's RNG
    trainer.draw(1)  # the trainer's generator and torch's global RNG move on ...
    torch.rand(7)
    rebuilt = DenoisingObjective(trainer, batch=4, seed=0)
    assert rebuilt(trainer, 1) == first  # ... and the objective, built from its own seed, does not care
    assert DenoisingObjective(trainer, batch=4, seed=1)(trainer, 1) != first  # the seed picks the batch
    trainer.step(1)
    assert objective(trainer, 1) != first  # it does measure the vectors


def test_measuring_does_not_change_training(tiny_sd, concept_images, tmp_path):
    # threshold tiny: never stops; the trajectory must be the one without early stopping
    steps = "inversion.steps=6"
    plain = invert(compose_config(*overrides(tiny_sd, concept_images, steps)), tmp_path / "plain")
    measured = invert(
        compose_config(*overrides(tiny_sd, concept_images, steps, *stop(threshold=1e-9))),
        tmp_path / "measured",
    )
    assert measured.stopped_at is None and plain.stopped_at is None
    # the same code path and the same draws (the objective's forward passes take no gradient, no RNG)
    assert torch.equal(embeds(tmp_path / "plain"), embeds(tmp_path / "measured"))
    rows = history(tmp_path / "measured")
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(float(r["objective"]) > 0 for r in rows) and "objective" not in history(tmp_path / "plain")[0]


def test_a_trial_stops_early_and_records_the_step(tiny_sd, tiny_judge, concept_images, tmp_path):
    from sweeper.trial import run_trial

    evaluation = [
        "evaluation/prompts=paper_examples",
        f"evaluation.judge={tiny_judge}",
        "evaluation.num_samples=2",
        "evaluation.steps=2",
        "evaluation.bootstrap=20",
        "evaluation.references=false",
        "evaluation.progress=false",
    ]
    logged: list[tuple[int, dict]] = []
    cfg = compose_config(*overrides(tiny_sd, concept_images, "inversion.steps=40", *stop(), *evaluation))
    run_trial(cfg, tmp_path / "stopped", on_log=lambda step, values: logged.append((step, values)))
    metrics = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    stopped = metrics["stopped_at_step"]
    # window 3 evaluations at steps 0, 2, 4: the earliest possible stop is step 4; a ratio just below 1
    # (threshold 1.0) is met as soon as the last 3 values vary less than all of them
    assert stopped is not None and 4 <= stopped < 40 and stopped % 2 == 0
    rows = history(tmp_path / "stopped")
    assert int(rows[-1]["step"]) == stopped and float(rows[-1]["objective_var_ratio"]) < 1.0
    assert logged[-1][0] == stopped and "objective" in logged[-1][1]  # the W&B curve gets the column
    with safe_open(str(tmp_path / "stopped" / "learned_embeds.safetensors"), "pt") as f:
        assert f.metadata()["stopped_at_step"] == str(stopped)
    assert json.loads((tmp_path / "stopped" / "status.json").read_text())["status"] == "completed"

    # early_stop off: the run goes to its last step
    cfg = compose_config(*overrides(tiny_sd, concept_images, "inversion.steps=8", *evaluation))
    run_trial(cfg, tmp_path / "full")
    assert json.loads((tmp_path / "full" / "metrics.json").read_text())["stopped_at_step"] is None
    assert int(history(tmp_path / "full")[-1]["step"]) == 8


def test_each_trial_of_a_group_stops_on_its_own(tiny_sd, concept_images, tmp_path):
    cfgs = [
        compose_config(*overrides(tiny_sd, concept_images, "inversion.steps=12", *stop())),
        compose_config(*overrides(tiny_sd, concept_images, "inversion.steps=12", *stop(threshold=1e-9))),
    ]
    early, late = train(cfgs, [tmp_path / "a", tmp_path / "b"])
    assert early.stopped_at is not None and early.stopped_at < 12 and late.stopped_at is None
    assert int(history(tmp_path / "a")[-1]["step"]) == early.stopped_at
    assert int(history(tmp_path / "b")[-1]["step"]) == 12
    alone = invert(cfgs[0], tmp_path / "alone")  # the same stop as when it runs alone
    assert alone.stopped_at == early.stopped_at
    # different code paths (batched vs alone): tolerance for floating-point summation order
    torch.testing.assert_close(embeds(tmp_path / "a"), embeds(tmp_path / "alone"), rtol=1e-4, atol=1e-5)


class Crash(Exception):
    pass


def test_resume_inside_an_early_stop_window_ends_as_the_uninterrupted_run(tiny_sd, concept_images, tmp_path):
    extra = ["inversion.steps=40", "inversion.checkpoint_every=3", *stop(every=1, window=6, threshold=0.9)]
    cfg = compose_config(*overrides(tiny_sd, concept_images, *extra))
    straight = invert(cfg, tmp_path / "straight")
    # the window (6 evaluations, one per step) is first full at step 5: the crash below is inside it
    assert straight.stopped_at is not None and straight.stopped_at >= 5

    def crash_at_4(step, values):
        if step >= 4:
            raise Crash

    with pytest.raises(Crash):  # checkpoint at step 3: its early-stop state holds the objective at steps 0..3
        invert(cfg, tmp_path / "resumed", on_log=crash_at_4)
    resumed = invert(cfg, tmp_path / "resumed")
    assert resumed.resumed_from == 3 and resumed.stopped_at == straight.stopped_at
    assert torch.equal(embeds(tmp_path / "straight"), embeds(tmp_path / "resumed"))
    assert history(tmp_path / "straight") == history(tmp_path / "resumed")
    again = invert(cfg, tmp_path / "resumed")  # a rerun of the stopped run stays stopped: nothing to train
    assert again.stopped_at == straight.stopped_at and again.resumed_from == straight.stopped_at


@pytest.mark.parametrize(
    "key, value",
    [("every", 0), ("window", 1), ("threshold", 0), ("threshold", 1.5), ("batch", 0), ("seed", -1)],
)
def test_bad_early_stop_settings_are_refused(key, value):
    # the ranges are the schema's (sweeper/config/schema.py EarlyStopConfig), checked before any model work
    cfg = compose_config(
        "data.images=concept", "inversion.init_word=cat", f"inversion.early_stop.{key}={value}"
    )
    with pytest.raises(ConfigError, match=rf"inversion.early_stop.{key}={value}: must be"):
        settings(cfg)


def test_early_stop_of_the_wrong_type_is_refused_while_composing():
    with pytest.raises(ConfigCompositionException) as caught:
        compose_config("inversion.init_word=cat", "inversion.early_stop.enabled=maybe")
    assert "inversion.early_stop.enabled=maybe" in str(caught.value)


def test_denoising_objective_as_optunas_intermediate_value(tmp_path, tiny_sd, tiny_judge):
    import optuna
    from conftest import write_concept_images
    from sweep_app.cli import pruning_sweep

    images = write_concept_images(tmp_path / "img", n=3)
    sweep = tmp_path / "sweeps" / "prune"
    pruning_sweep(
        sweep,
        tiny_sd,
        tiny_judge,
        images,
        "hydra.sweeper.n_trials=2",
        "hydra/sweeper/pruner=median",
        "inversion.num_vectors=1",
        "evaluation.quick.objective=denoising",
    )
    trials = optuna.load_study(study_name="prune", storage=f"sqlite:///{sweep}/optuna.db").trials
    assert len(trials) == 2
    for t in trials:
        run = sweep / f"trial_{t.number:04d}"
        assert set(t.intermediate_values) == {2, 4}
        for step, value in t.intermediate_values.items():
            quick = json.loads((run / "quick" / f"step_{step:06d}" / "metrics.json").read_text())
            assert (
                value == -quick["denoising_objective"] < 0
            )  # -loss: higher is better, as the study maximises
            assert not (run / "quick" / f"step_{step:06d}" / "samples").exists()  # no sampling


@pytest.mark.parametrize(
    "steps, every, expected",
    [(6100, 1, 310), (5000, 10, 25), (1000, 10, 5), (150, 10, 3), (150, 1, 8)],
)
def test_default_window_is_dvars_scaled_to_the_budget(steps, every, expected):
    from sweeper.training.early_stop import criterion

    cfg = compose_config(*cfg_overrides(steps), f"inversion.early_stop.every={every}")
    assert criterion(cfg).window == expected  # 310 evaluations over 6100 steps, at least 3
    explicit = compose_config(*cfg_overrides(steps), "inversion.early_stop.window=7")
    assert criterion(explicit).window == 7


def cfg_overrides(steps):
    return [
        "data.images=concept",
        "inversion.init_word=cat",
        f"inversion.steps={steps}",
        "inversion.early_stop.enabled=true",
    ]


def test_settings_that_cannot_act_are_warned_about_before_any_model_work(concept_images, caplog):
    from sweeper.checks import settings_that_cannot_act

    def warnings(*extra):
        return settings_that_cannot_act(settings(compose_config(f"data.images={concept_images}", *extra)))

    # the demo budget with the old fixed window: 10 x (20 - 1) = 190 steps >= 150
    demo = ["inversion.init_word=cat", "inversion.steps=150", "evaluation.num_samples=4"]
    found = warnings(*demo, "inversion.early_stop.enabled=true", "inversion.early_stop.window=20")
    assert len(found) == 1 and "every x (window - 1) = 10 x 19 = 190 steps" in found[0]
    assert "inversion.steps=150" in found[0]
    assert warnings(*demo, "inversion.early_stop.enabled=true") == []  # scaled window: 3, earliest stop 20
    assert warnings(*demo, "inversion.early_stop.window=20") == []  # off: nothing to warn about
    found = warnings(*demo, "evaluation.target_halfwidth=0.02")  # rounds of 8 > 4 samples
    assert len(found) == 1 and "evaluation.min_samples=8" in found[0] and "num_samples=4" in found[0]
    assert warnings(*demo, "evaluation.target_halfwidth=0.02", "evaluation.min_samples=2") == []
