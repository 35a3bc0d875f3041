"""W&B tracking in offline mode (not disabled): what a trial logs ends up in the offline run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from conftest import wandb_files_written
from omegaconf import OmegaConf
from PIL import Image

from sweeper.tracking import Tracker

CONF = Path(__file__).resolve().parents[1] / "conf" / "tracking"


def tracking_cfg(name: str = "wandb", **extra) -> OmegaConf:
    t = OmegaConf.load(CONF / f"{name}.yaml")
    t.mode = "offline"
    return OmegaConf.create(
        {"tracking": OmegaConf.merge(t, extra), "inversion": {"lr": 0.00731, "num_vectors": 2}}
    )


def offline_run(run_dir: Path) -> Path:
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_offline_run_holds_config_curves_metrics_images_and_embeddings(tmp_path):
    run_dir = tmp_path / "trial_0007"
    grid = run_dir / "samples" / "reconstruction.png"
    grid.parent.mkdir(parents=True)
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(grid)
    emb = run_dir / "learned_embeds.safetensors"
    emb.write_bytes(b"0123456789")

    tr = Tracker.from_config(tracking_cfg(group="my-study"), run_dir)
    assert tr.active
    assert tr.run.group == "my-study" and tr.run.name == "trial_0007"
    for step in (1, 2, 3):
        tr.on_log(step, {"loss": 0.5 / step, "dist_l2_mean": 0.01 * step, "note": "not a number"})
    tr.log_images({"reconstruction": grid, "missing": run_dir / "nope.png"})
    tr.log_artifact("embeddings-trial_0007", [emb])
    tr.summary(
        {"image_similarity": 0.61803, "image_similarity_ci": [0.6, 0.64], "per_prompt": {"p": {"m": 0.2}}}
    )
    tr.finish()
    assert not tr.active
    wandb_files_written()

    run = offline_run(run_dir)
    images = list((run / "files" / "media" / "images" / "samples").glob("reconstruction_*.png"))
    assert len(images) == 1
    data = next(run.glob("run-*.wandb")).read_bytes()
    for needle in (
        b"loss",
        b"dist_l2_mean",
        b"image_similarity",
        b"0.61803",
        b"per_prompt/p/m",
        b"samples/reconstruction",
        b"embeddings-trial_0007",
        b"0.00731",
        b"my-study",
    ):
        assert needle in data, needle
    assert b"not a number" not in data


def test_tracking_none_is_a_no_op(tmp_path):
    tr = Tracker.from_config(tracking_cfg("none"), tmp_path / "run")
    assert not tr.active
    tr.log({"loss": 1.0}, step=1)
    tr.log_images({"x": tmp_path / "x.png"})
    tr.finish()
    assert not (tmp_path / "run" / "wandb").exists()


def test_a_wandb_failure_is_a_warning_not_an_error(tmp_path, caplog):
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("W&B cannot make a folder here")
    with caplog.at_level(logging.WARNING, logger="sweeper.tracking"):
        tr = Tracker.from_config(tracking_cfg(dir=str(blocker / "wandb")), tmp_path / "run")
    assert not tr.active and "W&B init failed" in caplog.text

    tr = Tracker.from_config(tracking_cfg(), tmp_path / "run2")
    assert tr.active
    run = tr.run
    run.finish()  # W&B's run is gone under the tracker's feet: the calls below must not raise
    tr.log({"loss": 1.0}, step=1)
    tr.log_artifact("e", [blocker])
    tr.finish("failed")


def test_default_group_outside_hydra_is_none(tmp_path):
    tr = Tracker.from_config(tracking_cfg(), tmp_path / "solo")
    try:
        assert tr.run.group in (None, "")
    finally:
        tr.finish()
