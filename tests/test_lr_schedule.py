"""inversion.lr_schedule (constant, linear, cosine) and inversion.lr_warmup_steps: the rate at each step
(against diffusers' own schedules), the history.csv lr column, the resume fingerprint (a decaying schedule
makes `steps` part of it) and the analysis label."""

from __future__ import annotations

import csv
import math

import pytest
import torch
import yaml
from conftest import compose_config, smoke_overrides

from analysis.load import configuration_values, family
from sweeper.config.schema import (
    ConfigError,
    InversionConfig,
    fingerprinted_keys,
    resume_safe_fields,
    settings,
)
from sweeper.store import record
from sweeper.training import lr_schedule
from sweeper.training.inversion import ResumeError, invert

torch.set_num_threads(1)


def test_factor_at_given_steps():
    f = lr_schedule.factor
    assert [f("constant", 0, 10, s) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [f("constant", 4, 10, s) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert [f("linear", 0, 10, s) for s in (0, 5, 9)] == pytest.approx([1.0, 0.5, 0.1])
    assert [f("linear", 2, 10, s) for s in (1, 2, 6)] == pytest.approx([0.5, 1.0, 0.5])
    # the numbers: cosine at step 4 of a 6-step and of a 10-step run
    assert f("cosine", 0, 6, 4) == pytest.approx(0.25)
    assert f("cosine", 0, 10, 4) == pytest.approx(0.5 * (1 + math.cos(0.4 * math.pi)))
    assert f("cosine", 0, 10, 4) == pytest.approx(0.6545, abs=1e-4)
    with pytest.raises(ValueError, match="inversion.lr_schedule"):
        f("step", 0, 10, 1)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup", [0, 3])
def test_factor_matches_the_diffusers_example_schedules(schedule, warmup):
    """The same rates as diffusers.optimization.get_scheduler (what the example's --lr_scheduler builds)."""
    from diffusers.optimization import get_scheduler

    name = "constant_with_warmup" if schedule == "constant" and warmup else schedule
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=12)
    theirs = []
    for _ in range(12):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [lr_schedule.factor(schedule, warmup, 12, s) for s in range(12)] == pytest.approx(
        theirs, abs=1e-12
    )


def test_the_schema_checks_the_knobs():
    ok = compose_config("model.pretrained=m", "data.images=.", "inversion.init_word=dog")
    assert settings(ok).inversion.lr_schedule == "constant" and settings(ok).inversion.lr_warmup_steps == 0
    bad = compose_config(
        "model.pretrained=m", "data.images=.", "inversion.init_word=dog", "inversion.lr_schedule=step"
    )
    with pytest.raises(
        ConfigError, match=r"inversion.lr_schedule='step': choose one of constant, linear, cosine"
    ):
        settings(bad)
    neg = compose_config(
        "model.pretrained=m", "data.images=.", "inversion.init_word=dog", "inversion.lr_warmup_steps=-1"
    )
    with pytest.raises(ConfigError, match=r"inversion.lr_warmup_steps=-1: must be a whole number >= 0"):
        settings(neg)


def test_a_decaying_schedule_makes_steps_part_of_the_fingerprint():
    base = {f: getattr(InversionConfig(init_word="dog"), f) for f in InversionConfig.__dataclass_fields__}
    constant = fingerprinted_keys(base)
    assert "steps" in resume_safe_fields() and "steps" not in constant
    # at their defaults: checkpoints from before the knobs keep resuming (tests/test_config.py's old-JSON test)
    assert "lr_schedule" not in constant and "lr_warmup_steps" not in constant
    for schedule in ("linear", "cosine"):
        keys = fingerprinted_keys({**base, "lr_schedule": schedule})
        assert "steps" in keys and "lr_schedule" in keys
    warm = fingerprinted_keys({**base, "lr_warmup_steps": 5})
    assert "lr_warmup_steps" in warm and "steps" not in warm  # a warm-up alone does not depend on steps


def _lrs(run_dir) -> list[float]:
    with (run_dir / "history.csv").open(newline="") as f:
        return [float(row["lr"]) for row in csv.DictReader(f)]


def test_history_records_the_scheduled_lr_and_constant_is_the_effective_lr(tiny_sd, concept_images, tmp_path):
    args = smoke_overrides(tiny_sd, concept_images, "inversion.steps=5")
    constant = invert(compose_config(*args), tmp_path / "constant")
    assert _lrs(tmp_path / "constant") == [constant.effective_lr] * 5  # exactly: today's behaviour
    cosine = invert(
        compose_config(*args, "inversion.lr_schedule=cosine", "inversion.lr_warmup_steps=1"),
        tmp_path / "cosine",
    )
    expected = [cosine.effective_lr * lr_schedule.factor("cosine", 1, 5, s) for s in range(5)]
    assert _lrs(tmp_path / "cosine") == pytest.approx(expected)
    assert _lrs(tmp_path / "cosine")[0] == 0.0  # the warm-up's first step
    assert not torch.allclose(constant.vectors[0], cosine.vectors[0])  # the schedule changed the training
    record.write_config(tmp_path / "cosine", compose_config(*args, "inversion.lr_schedule=cosine"))
    recorded = yaml.safe_load((tmp_path / "cosine" / "config.yaml").read_text())
    assert recorded["inversion"]["lr_schedule"] == "cosine" and recorded["inversion"]["lr_warmup_steps"] == 0


def test_resume_with_other_steps_under_cosine_is_refused_with_one_line(tiny_sd, concept_images, tmp_path):
    args = [
        *smoke_overrides(tiny_sd, concept_images),
        "inversion.checkpoint_every=2",
        "inversion.lr_schedule=cosine",
    ]
    invert(compose_config(*args, "inversion.steps=4"), tmp_path / "run")
    with pytest.raises(ResumeError) as refused:
        invert(compose_config(*args, "inversion.steps=6"), tmp_path / "run")
    message = str(refused.value)
    assert len(message.splitlines()) == 1
    assert "inversion.steps differs" in message and "inversion.lr_schedule=cosine depends on it" in message
    # the same change under a constant lr resumes (steps is resume-safe there)
    const = [a for a in args if "lr_schedule" not in a]
    invert(compose_config(*const, "inversion.steps=4"), tmp_path / "constant")
    resumed = invert(compose_config(*const, "inversion.steps=6"), tmp_path / "constant")
    assert resumed.resumed_from == 4


def test_analysis_names_the_schedule_and_keeps_old_runs_ours():
    old = configuration_values({"inversion.num_vectors": 1}, 0.04, 5)  # a run from before the knob
    assert family(old) == "ours"
    cosine = configuration_values({"inversion.num_vectors": 1, "inversion.lr_schedule": "cosine"}, 0.04, 5)
    assert family(cosine) == "cosine lr"  # an all-cosine sweep is not the paper's "ours"
    warm = configuration_values(
        {"inversion.lr_schedule": "constant", "inversion.lr_warmup_steps": 100}, 0.04, 5
    )
    assert family(warm) == "warm-up 100"
    assert family(configuration_values({"inversion.lr_schedule": "constant"}, 0.04, 5)) == "ours"
