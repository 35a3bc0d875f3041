"""Vectorised trials: each trial's result equals running it alone (same seeds), on real tiny components."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import wandb_files_written, write_concept_images
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from sweeper.models import load_components
from sweeper.training.grouping import IncompatibleTrials, group_compatible
from sweeper.training.inversion import invert, train
from sweeper.trial import TrialSpec, run_trials

CONF = str(Path(__file__).resolve().parent.parent / "conf")

# Three trials that differ in everything a vectorised group may vary.
TRIALS = [
    ["inversion.lr=5e-3", "inversion.seed=0", "inversion.num_vectors=1", "inversion.batch_size=2"],
    [
        "inversion.lr=2e-2",
        "inversion.seed=1",
        "inversion.num_vectors=2",
        "inversion.reg_weight=0.1",
        "data.n_images=3",
        "inversion.batch_size=3",
    ],
    [
        "inversion.lr=1e-3",
        "inversion.seed=2",
        "inversion.num_vectors=3",
        "inversion.progressive_every=2",
        "inversion.per_image_tokens=true",
        "inversion.grad_accum=2",
        "inversion.steps=3",
        "data.n_images=2",
        "inversion.scale_lr=false",
    ],
]


def make_cfg(model: Path, images: Path, extra: list[str]):
    common = [
        f"model.pretrained={model}",
        f"data.images={images}",
        "inversion.init_word=toy",
        "inversion.steps=4",
        "inversion.log_every=1",
        "inversion.checkpoint_every=0",
        "tracking=none",
    ]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("config", overrides=common + extra)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_concept_images(tmp_path_factory.mktemp("concept"), n=4)


def test_vectorised_equals_sequential(tiny_sd, images, tmp_path):
    cfgs = [make_cfg(tiny_sd, images, extra) for extra in TRIALS]
    alone = [
        invert(cfg, tmp_path / f"alone{i}", components=load_components(str(tiny_sd)))
        for i, cfg in enumerate(cfgs)
    ]
    together = train(cfgs, [tmp_path / f"vec{i}" for i in range(len(cfgs))])
    for i, (a, v) in enumerate(zip(alone, together)):
        assert v.placeholder == a.placeholder == "<concept>"
        assert v.vectors[0].shape == a.vectors[0].shape == (i + 1, 32)
        moved = (a.vectors[0] - a.trainer.splices[0].init[: i + 1].cpu()).abs().max()
        assert moved > 1e-4, "the trial did not train, so equality would prove nothing"
        torch.testing.assert_close(v.vectors[0], a.vectors[0], atol=1e-5, rtol=0)
        # the files a run folder holds match too, under the configured placeholder name
        fa = load_file(tmp_path / f"alone{i}" / "learned_embeds.safetensors")
        fv = load_file(tmp_path / f"vec{i}" / "learned_embeds.safetensors")
        assert fa.keys() == fv.keys() == {"<concept>"}
        torch.testing.assert_close(fv["<concept>"], fa["<concept>"], atol=1e-5, rtol=0)
        ha = (tmp_path / f"alone{i}" / "history.csv").read_text().splitlines()
        hv = (tmp_path / f"vec{i}" / "history.csv").read_text().splitlines()
        assert len(ha) == len(hv) and ha[0] == hv[0]
    assert alone[2].per_image is not None and together[2].per_image.keys() == alone[2].per_image.keys()


def test_grouping_and_refusals(tiny_sd, images, tmp_path):
    cfgs = [
        make_cfg(tiny_sd, images, e)
        for e in (
            [],
            ["inversion.lr=1e-2"],
            ["data.property=style"],
            ["inversion.pivotal.enabled=true"],
            ["inversion.pivotal.enabled=true"],
            ["inversion.seed=3"],
        )
    ]
    assert group_compatible(cfgs) == [[0, 1, 5], [2], [3], [4]]
    assert group_compatible(cfgs, max_group=2) == [[0, 1], [5], [2], [3], [4]]
    with pytest.raises(IncompatibleTrials, match="data.property"):
        train([cfgs[0], cfgs[2]], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(IncompatibleTrials, match="pivotal"):  # alone, a pivotal trial is a group of one
        train([cfgs[3], cfgs[4]], [tmp_path / "c", tmp_path / "d"])


def test_run_trials_fails_only_the_bad_trial(tiny_sd, tiny_judge, images, tmp_path):
    import json

    from sweep_app.cli import tiny_overrides

    base = tiny_overrides(tiny_sd, tiny_judge, images)
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfgs = [
            compose("config", overrides=base + extra)
            for extra in (["inversion.lr=1e-3"], ["data.n_images=99"], ["inversion.num_vectors=2"])
        ]
    dirs = [tmp_path / str(i) for i in range(3)]
    outs = run_trials([TrialSpec(c, d, n) for c, d, n in zip(cfgs, dirs, [0, 1, 2])])
    assert isinstance(outs[1], Exception) and "n_images" in str(outs[1])
    for i in (0, 2):
        assert len(outs[i]) == 2 and all(isinstance(x, float) for x in outs[i])
        metrics = json.loads((dirs[i] / "metrics.json").read_text())
        assert (metrics["image_similarity"], metrics["text_similarity"]) == outs[i]
        assert metrics["placeholder"] == "<concept>" and metrics["num_vectors"] == i // 2 + 1
    assert not dirs[1].exists()  # refused before any model work, as through run_trial: no run folder
    status = [json.loads((dirs[i] / "status.json").read_text()) for i in (0, 2)]
    assert [s["status"] for s in status] == ["completed", "completed"]
    assert [s["trial_number"] for s in status] == [0, 2]


def test_hydra_vectorised_launcher_runs_a_multirun_as_one_group(tiny_sd, tiny_judge, images, tmp_path):
    import json

    from sweep_app.cli import run_sweeper, tiny_overrides

    sweep = tmp_path / "sweep"
    out = run_sweeper(
        "-m",
        "hydra/launcher=vectorised",
        "inversion.lr=1e-3,2e-2",
        "inversion.seed=0,1",
        f"hydra.sweep.dir={sweep}",
        *tiny_overrides(tiny_sd, tiny_judge, images),
    )
    assert "as 1 vectorised group(s)" in out.stdout + out.stderr
    assert "(torch threads: 1)" in out.stdout + out.stderr  # OMP_NUM_THREADS=1, as make demo and joblib
    runs = sorted(p for p in sweep.iterdir() if (p / "config.yaml").is_file())
    assert [p.name for p in runs] == ["0", "1", "2", "3"]
    for run in runs:
        assert json.loads((run / "status.json").read_text())["status"] == "completed"
        assert json.loads((run / "metrics.json").read_text())["vectorised_group"] == 4
        assert (run / "learned_embeds.safetensors").is_file() and (run / "history.csv").is_file()
        # what Hydra's other launchers leave in a job's folder: .hydra/ and the job's log
        hydra_files = sorted(p.name for p in (run / ".hydra").iterdir())
        assert hydra_files == ["config.yaml", "hydra.yaml", "overrides.yaml"]
        assert "inversion.seed=" in (run / ".hydra" / "overrides.yaml").read_text()
        assert "trial done: " + str(run) in (run / "__main__.log").read_text()
    # a job's own phases (checks, records, evaluation) log to its file only; the shared training to all
    assert not any(f"trial done: {r}" in (runs[0] / "__main__.log").read_text() for r in runs[1:])
    # the console as under the other launchers: one line per trial (lr in the one convention), progress, summary
    assert (
        sum(line.startswith("[trial ") and "] completed: " in line for line in out.stdout.splitlines()) == 4
    )
    assert "; lr 0.02 (effective; base 0.02) (" not in out.stdout and "; lr 0.02 (" in out.stdout
    assert "[sweep] 4/4 trials done (4 completed, 0 failed), 0 to go" in out.stdout
    assert "[sweep] sweep finished in " in out.stdout and (sweep / "pareto_front.csv").is_file()


def test_a_non_finite_trial_stops_alone_and_the_others_are_unchanged(tiny_sd, images, tmp_path):
    # reg_weight=inf: 0 * inf makes the first objective NaN (as in test_inversion's single-trial case)
    cfgs = [make_cfg(tiny_sd, images, TRIALS[0]), make_cfg(tiny_sd, images, ["inversion.reg_weight=inf"])]
    alone = invert(cfgs[0], tmp_path / "alone", components=load_components(str(tiny_sd)))
    outs = train(cfgs, [tmp_path / "vec0", tmp_path / "vec1"])
    assert isinstance(outs[1], FloatingPointError) and "non-finite loss" in str(outs[1])
    assert not (tmp_path / "vec1" / "learned_embeds.safetensors").exists()
    torch.testing.assert_close(outs[0].vectors[0], alone.vectors[0], atol=1e-5, rtol=0)


def test_run_trials_prunes_tracks_and_fails_each_trial_alone(tiny_sd, tiny_judge, images, tmp_path):
    """Trial 0 completes, 1 is pruned by its report hook, 2 hits a non-finite loss; each has its own W&B run."""
    import json

    import optuna
    from sweep_app.cli import tiny_overrides

    base = tiny_overrides(tiny_sd, tiny_judge, images, tracking="wandb") + [
        "tracking.mode=offline",
        "evaluation.quick.every=2",
        "evaluation.quick.num_samples=2",
        "evaluation.quick.steps=2",
        "evaluation.quick.max_prompts=1",
    ]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfgs = [
            compose("config", overrides=base + extra)
            # reg_weight=1e308 is finite, so the checks let it through (inf is refused), but it overflows
            # float32: 0 * inf makes the first objective NaN and the next loss non-finite
            for extra in (["inversion.lr=1e-3"], ["inversion.lr=2e-3"], ["inversion.reg_weight=1e308"])
        ]
    seen = []

    def prune(step, values):
        seen.append((step, values))
        raise optuna.TrialPruned(f"pruned at step {step}")

    dirs = [tmp_path / f"trial_{i}" for i in range(3)]
    outs = run_trials(
        [TrialSpec(c, d, n, report=r) for c, d, n, r in zip(cfgs, dirs, [10, 11, 12], [None, prune, None])]
    )
    assert (
        len(outs[0]) == 2
        and isinstance(outs[1], optuna.TrialPruned)
        and isinstance(outs[2], FloatingPointError)
    )
    assert [s for s, _ in seen] == [2]  # trial 1 was quick-evaluated at step 2 and stopped there
    quick = json.loads((dirs[1] / "quick" / "step_000002" / "metrics.json").read_text())
    assert seen[0][1] == (quick["image_similarity"], quick["text_similarity"])
    status = [json.loads((d / "status.json").read_text()) for d in dirs]
    assert [s["status"] for s in status] == ["completed", "pruned", "failed"]
    assert [s["trial_number"] for s in status] == [10, 11, 12]
    assert "TrialPruned" in status[1]["error"] and "non-finite loss" in status[2]["error"]
    assert not (dirs[1] / "metrics.json").exists() and not (dirs[2] / "metrics.json").exists()
    assert json.loads((dirs[0] / "metrics.json").read_text())["vectorised_group"] == 3
    wandb_files_written()  # every run was finished by run_trials; read its files once W&B has written them
    for d in dirs:  # one offline W&B run per trial, named after its folder
        runs = list((d / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, (d, runs)
        data = next(runs[0].glob("run-*.wandb")).read_bytes()
        assert d.name.encode() in data and b"loss" in data
    assert (
        b"image_similarity"
        in next(next((dirs[0] / "wandb").glob("offline-run-*")).glob("run-*.wandb")).read_bytes()
    )


def test_an_interrupted_group_checkpoints_every_trial_and_resumes_exactly(
    tiny_sd, tiny_judge, images, tmp_path
):
    """Ctrl-C during a group's training: every trial says "interrupted" with a checkpoint at the step the group
    reached (checkpoint_every=0: the interruption's own); rerunning the group resumes both trials."""
    import json

    from sweep_app.cli import tiny_overrides

    base = tiny_overrides(tiny_sd, tiny_judge, images, steps=6) + ["inversion.checkpoint_every=0"]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfgs = [compose("config", overrides=base + [f"inversion.lr={lr}"]) for lr in ("1e-3", "2e-2")]

    def ctrl_c_at_3(step, values):
        if step == 3:
            raise KeyboardInterrupt

    dirs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(KeyboardInterrupt):
        run_trials([TrialSpec(cfgs[0], dirs[0], 0), TrialSpec(cfgs[1], dirs[1], 1, on_log=ctrl_c_at_3)])
    for d in dirs:
        assert json.loads((d / "status.json").read_text())["status"] == "interrupted"
        assert [p.name for p in (d / "checkpoints").iterdir()] == ["step_3"]
    outs = run_trials([TrialSpec(c, d, i) for i, (c, d) in enumerate(zip(cfgs, dirs))])
    assert all(isinstance(o, tuple) for o in outs), outs
    straight = train(cfgs, [tmp_path / "straight_a", tmp_path / "straight_b"])
    for d, s in zip(dirs, straight):
        assert json.loads((d / "status.json").read_text())["status"] == "completed"
        # the same process and code path: the resumed vectors are the uninterrupted ones, bit for bit
        assert torch.equal(load_file(d / "learned_embeds.safetensors")["<concept>"], s.vectors[0])
