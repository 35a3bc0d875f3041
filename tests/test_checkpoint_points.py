"""Checkpoints as front points (`evaluation.at_steps`): a trial evaluated at chosen steps with its own protocol
and noise, each recorded in at_steps/step_<N>/; training untouched by it; analysis reads each as a point with
its step (the hypervolume may count it, the tradeoff plot draws each run's path along its steps)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from test_analysis import write_run

from sweeper.checks import check_config
from sweeper.config.schema import ConfigError
from sweeper.trial import run_trial


def test_a_trial_evaluated_at_steps_records_each_and_trains_the_same(smoke_cfg, tmp_path):
    plain = smoke_cfg("inversion.steps=4")
    run_trial(plain, tmp_path / "plain")
    cfg = smoke_cfg("inversion.steps=4", "evaluation.at_steps=[2,4,9]")  # 4 is the final, 9 past the end
    run_trial(cfg, tmp_path / "points")
    folders = sorted(p.name for p in (tmp_path / "points" / "at_steps").iterdir())
    assert folders == ["step_000002"]
    at2 = json.loads((tmp_path / "points" / "at_steps" / "step_000002" / "metrics.json").read_text())
    final = json.loads((tmp_path / "points" / "metrics.json").read_text())
    assert at2["step"] == 2 and at2["evaluation_cpu_s"] > 0 and at2["evaluation_wall_s"] > 0
    assert (
        at2["seeds"] == final["seeds"] and at2["protocol"] == final["protocol"]
    )  # the same noise, same protocol
    assert at2["num_samples"] == final["num_samples"] and set(at2["per_prompt"]) == set(final["per_prompt"])
    # evaluating mid-training changes nothing in training: the same vectors as the run without it
    a = load_file(str(tmp_path / "plain" / "learned_embeds.safetensors"))
    b = load_file(str(tmp_path / "points" / "learned_embeds.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert final["image_similarity"] == pytest.approx(
        json.loads((tmp_path / "plain" / "metrics.json").read_text())["image_similarity"], abs=1e-5
    )


def test_at_steps_off_the_history_rows_are_refused(smoke_cfg):
    with pytest.raises(
        ConfigError, match=r"evaluation.at_steps: step 3 is not a positive multiple of inversion.log_every=2"
    ):
        check_config(smoke_cfg("inversion.log_every=2", "evaluation.at_steps=[2,3]"))


def _points(run, steps):
    (run / "at_steps").mkdir(parents=True)
    for step, x, y in steps:
        d = run / "at_steps" / f"step_{step:06d}"
        d.mkdir()
        (d / "metrics.json").write_text(
            json.dumps({"step": step, "image_similarity": x, "text_similarity": y, "evaluation_cpu_s": 1.5})
        )


def test_analysis_treats_each_checkpoint_as_a_point(tmp_path):
    from analysis.analyse import analyse
    from analysis.hypervolume import hypervolume_2d, step_points

    # two seeds of one configuration; at step 50 it was more editable than at its end (step 100)
    for seed, (x, y) in enumerate([(0.8, 0.22), (0.82, 0.2)]):
        run = tmp_path / "s" / f"r{seed}"
        write_run(run, "cat_toy", {"inversion.seed": seed}, x, y, 0.1, "completed", seed=seed)
        _points(run, [(50, 0.7, 0.28 + 0.01 * seed)])
    res = analyse([tmp_path / "s"], tmp_path / "out", wandb=False, hv_reference=(0.5, 0.1))
    points = step_points(res["runs"])
    assert sorted(zip(points["step"], points["final"])) == [
        (50, False),
        (50, False),
        (100, True),
        (100, True),
    ]
    hv = res["hypervolume"].iloc[0]
    assert hv["hypervolume"] == pytest.approx(hypervolume_2d([[0.81, 0.21]], [0.5, 0.1]))
    expected = hypervolume_2d([[0.81, 0.21], [0.7, 0.285]], [0.5, 0.1])  # the step-50 mean joins the front
    assert hv["hypervolume_with_checkpoints"] == pytest.approx(expected) and expected > hv["hypervolume"]
    paths = res["tradeoff"]["concepts"]["cat_toy"]["step_paths"]
    assert {k.split("/")[-1]: v for k, v in paths.items()} == {
        "r0": [(50, 0.7, 0.28), (100, 0.8, 0.22)],
        "r1": [(50, 0.7, 0.28 + 0.01), (100, 0.82, 0.2)],
    }
