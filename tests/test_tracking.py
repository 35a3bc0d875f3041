"""W&B tracking in offline mode (not disabled): what a trial logs ends up in the offline run."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config, smoke_overrides, wandb_files_written
from omegaconf import OmegaConf
from PIL import Image

from sweeper.tracking import Tracker


def tracking_cfg(name: str = "wandb", **extra) -> OmegaConf:
    t = compose_config(f"tracking={name}").tracking  # the preset over the schema's defaults
    t.mode = "offline"
    return OmegaConf.create(
        {
            "tracking": OmegaConf.merge(t, extra),
            "inversion": {
                "lr": 0.00731,
                "num_vectors": 2,
                "scale_lr": True,
                "batch_size": 4,
                "grad_accum": 2,
            },
        }
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
    tr.finish()  # the run's records are on disk when finish() returns (it waits for W&B's service)
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
        b"lr 0.0585 (effective; base 0.00731)",  # the one lr convention beside the config's base lr
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


# --------------------------------------------------------------------- failures W&B must not pass on
# Each runs in a fresh process with its own HOME: wandb's service and its settings (base URL) are per process,
# and what W&B writes outside the run folder must be seen.

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, home: Path, **env: str) -> subprocess.CompletedProcess:
    home.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**keep, "HOME": str(home), "PYTHONPATH": str(ROOT / "tests"), **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


ONLINE = """
import logging, sys, time
import conftest  # torch threads, offline hub
from omegaconf import OmegaConf
from sweeper.config.schema import TrackingConfig
from sweeper.tracking import Tracker

logging.basicConfig(level=logging.WARNING, format="%(message)s")
t = OmegaConf.structured(TrackingConfig)  # the schema's defaults (conf/tracking/wandb.yaml changes none)
t.mode = "online"
t.init_timeout = 5
start = time.monotonic()
tracker = Tracker.from_config(OmegaConf.create({"tracking": t, "inversion": {"lr": 0.00731}}), sys.argv[1])
tracker.log({"loss": 0.25}, step=1)
tracker.finish()
print("seconds", time.monotonic() - start)
"""

FAKE_KEY = "x" * 40  # online init needs some key before it tries the network; nothing is ever sent anywhere


def refusing_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("server", ["refusing", "silent"])
def test_online_without_a_server_falls_back_to_offline_in_seconds(tmp_path, server):
    # "refusing": nothing listens (the probe fails at once); "silent": a loopback socket that accepts and never
    # answers, so wandb.init itself has to give up (tracking.init_timeout=5 instead of wandb's 90 s)
    listener = socket.socket()
    if server == "silent":
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
    else:
        port = refusing_port()
    run_dir = tmp_path / "trial_0003"
    script = ONLINE.replace("sys.argv[1]", repr(str(run_dir)))
    try:
        proc = run_script(
            script, tmp_path / "home", WANDB_BASE_URL=f"http://127.0.0.1:{port}", WANDB_API_KEY=FAKE_KEY
        )
    finally:
        listener.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    offline = offline_run(run_dir)  # the W&B run is kept, offline, in the run folder
    data = next(offline.glob("run-*.wandb")).read_bytes()
    assert b"loss" in data and b"0.00731" in data
    assert f"wandb sync {offline}" in proc.stderr and "W&B online is not available" in proc.stderr
    seconds = float(proc.stdout.split()[-1])
    # wandb's own default waited 90 s per trial and then dropped the run; a loose bound, far from both
    assert seconds < 60, seconds


SERVICE_DIES = """
import os, signal, sys
import psutil  # installed with peft, a dependency
import conftest
from omegaconf import OmegaConf
from sweeper.config.schema import TrackingConfig
from sweeper.tracking import Tracker

t = OmegaConf.structured(TrackingConfig)
t.mode = "offline"
run_dir = sys.argv[1]
tracker = Tracker.from_config(OmegaConf.create({"tracking": t}), run_dir)
assert tracker.active
tracker.log({"loss": 0.5}, step=1)
for child in psutil.Process().children(recursive=True):  # what SIGTERM from scancel does to W&B's service
    if child.name().startswith("wandb"):
        child.send_signal(signal.SIGTERM)
        child.wait(60)
import peft, diffusers  # first imports of packages wandb watches: they raised ConnectionResetError
tracker.log({"loss": 0.25}, step=2)
tracker.log_result(__import__("pathlib").Path(run_dir), {"image_similarity": 0.5, "text_similarity": 0.25})
tracker.finish("completed")
assert not tracker.active
print("trial code went on")
"""


def test_wandb_service_dying_on_sigterm_fails_nothing(tmp_path):
    run_dir = tmp_path / "trial_0000"
    script = SERVICE_DIES.replace("sys.argv[1]", repr(str(run_dir)))
    proc = run_script(script, tmp_path / "home")
    assert proc.returncode == 0 and "trial code went on" in proc.stdout, proc.stderr[-3000:]
    assert "W&B's service is gone" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr and not last.startswith("ConnectionResetError"), proc.stderr[-3000:]


TRIAL = """
import json, signal, sys
import psutil  # installed with peft, a dependency
from conftest import compose_config
from sweeper.tracking import Tracker
from sweeper.trial import run_trial

assert "diffusers" not in sys.modules  # the trial imports the model code itself, after W&B started
real_from_config = Tracker.from_config.__func__

def from_config_then_sigterm(cls, *args, **kwargs):
    # fault injection: the job's SIGTERM arrives as the trial starts; W&B's service dies of it
    tracker = real_from_config(cls, *args, **kwargs)
    assert tracker.active
    for child in psutil.Process().children(recursive=True):
        if child.name().startswith("wandb"):
            child.send_signal(signal.SIGTERM)
            child.wait(60)
    return tracker

Tracker.from_config = classmethod(from_config_then_sigterm)
run_trial(compose_config(*OVERRIDES), RUN_DIR)
print(json.load(open(f"{RUN_DIR}/status.json"))["status"])
"""


def test_a_trial_survives_its_wandb_service_dying(tiny_sd, tiny_judge, tmp_path):
    from conftest import write_concept_images

    images = write_concept_images(tmp_path / "concept", n=2)
    run_dir = tmp_path / "trial_0001"
    # the one smoke configuration, with W&B on (offline)
    overrides = smoke_overrides(tiny_sd, images, "tracking=wandb", "tracking.mode=offline", judge=tiny_judge)
    script = TRIAL.replace("OVERRIDES", repr(overrides)).replace("RUN_DIR", repr(str(run_dir)))
    proc = run_script(script, tmp_path / "home")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "completed" and (run_dir / "metrics.json").is_file()


def test_artifacts_reference_the_run_folder_and_are_named_per_sweep(tmp_path):
    script = """
import sys
import conftest
from pathlib import Path
from omegaconf import OmegaConf
from sweeper.config.schema import TrackingConfig
from sweeper.tracking import Tracker

for study in ("study-a", "study-b"):
    run_dir = Path(sys.argv[1]) / study / "trial_0000"
    run_dir.mkdir(parents=True)
    (run_dir / "learned_embeds.safetensors").write_bytes(b"0123456789")
    t = OmegaConf.structured(TrackingConfig)
    t.mode, t.group = "offline", study
    tracker = Tracker.from_config(OmegaConf.create({"tracking": t}), run_dir)
    tracker.log_result(run_dir, {"image_similarity": 0.5, "text_similarity": 0.25})
    tracker.finish()
""".replace("sys.argv[1]", repr(str(tmp_path / "sweeps")))
    home = tmp_path / "home"
    proc = run_script(script, home)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for study in ("study-a", "study-b"):
        run_dir = tmp_path / "sweeps" / study / "trial_0000"
        data = next(offline_run(run_dir).glob("run-*.wandb")).read_bytes()
        assert f"embeddings-{study}-trial_0000".encode() in data  # unique across sweeps
        assert str(run_dir / "learned_embeds.safetensors").encode() in data  # the file where it lies
    staged = [p for p in home.rglob("*") if p.is_file() and "artifacts" in p.parts]
    assert staged == []  # no copy under ~/.local/share/wandb/artifacts/staging


def wandb_run_records(path: Path) -> list:
    """The `run` records of an offline `.wandb` file, decoded (W&B's log format: a 7-byte header, then
    32 KiB blocks of chunks with a 7-byte header each: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, buf, runs = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # the rest of the block is padding
            pos += room
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind == 2 else buf + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            if record.WhichOneof("record_type") == "run":
                runs.append(record.run)
    return runs


def test_one_wandb_run_per_trial_across_interruptions_with_its_job_type_and_folder_said_at_start(
    tmp_path, caplog
):
    """A trial resumed after an interruption logs to the same W&B run (the id its run folder keeps); the run's
    job_type is "trial"; its offline folder is in the log as soon as the run starts."""
    import logging

    from sweeper.tracking import RUN_ID_FILE

    run_dir = tmp_path / "run_0003"
    with caplog.at_level(logging.INFO, logger="sweeper.tracking"):
        first = Tracker.from_config(tracking_cfg(), run_dir)
        said = caplog.text
    assert first.sync_dir and f"offline in {first.sync_dir}" in said  # before any step is logged
    run_id = first.run.id
    assert (run_dir / RUN_ID_FILE).read_text().strip() == run_id
    first.on_log(1, {"loss": 0.25})
    first.finish("interrupted")
    second = Tracker.from_config(tracking_cfg(), run_dir)  # the rerun of the folder
    assert second.run.id == run_id
    second.on_log(2, {"loss": 0.125})
    second.finish()
    wandb_files_written()
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    # one id, two attempts (`wandb sync` joins them); W&B adds "-1" when both start in the same second
    assert len(runs) == 2 and all(re.search(rf"-{run_id}(-\d+)?$", r.name) for r in runs)
    for run in runs:
        (record,) = wandb_run_records(next(run.glob("run-*.wandb")))[:1]
        assert (record.run_id, record.job_type, record.display_name) == (run_id, "trial", "run_0003")

    analysis = Tracker.from_config(tracking_cfg(), tmp_path / "report", job_type="analysis")
    assert analysis.run.id != run_id and not (tmp_path / "report" / RUN_ID_FILE).exists()
    analysis.finish()
    wandb_files_written()
    (analysis_run,) = (tmp_path / "report" / "wandb").glob("offline-run-*")
    assert wandb_run_records(next(analysis_run.glob("run-*.wandb")))[0].job_type == "analysis"
