"""A console a person can read: no library noise at model load, one line per finished trial, no interleaved
bars in parallel sweeps, and bad input as one line (the traceback only with HYDRA_FULL_ERROR=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from sweeper.console import ConsoleCallback, quiet_libraries, trial_line

ROOT = Path(__file__).resolve().parents[1]
NOISE = ("Loading weights", "Loading pipeline components", "should be kept in float32", "torch_dtype")
# what the libraries print beside those under a sweep's launchers (transformers 5, diffusers)
SWEEP_NOISE = (*NOISE, "mean_resizing", "requires torchvision")


@pytest.fixture
def library_verbosity():
    """Restore the libraries' logging and bars after a test that quiets them."""
    import diffusers.utils.logging as dl
    import transformers.utils.logging as tl

    before = (
        tl.get_verbosity(),
        tl.is_progress_bar_enabled(),
        dl.get_verbosity(),
        dl.is_progress_bar_enabled(),
    )
    yield
    tl.set_verbosity(before[0])
    dl.set_verbosity(before[2])
    (tl.enable_progress_bar if before[1] else tl.disable_progress_bar)()
    (dl.enable_progress_bar if before[3] else dl.disable_progress_bar)()


def test_loading_a_model_after_quiet_libraries_prints_nothing(tiny_sd, capfd, library_verbosity, monkeypatch):
    from sweeper.models import load_components, load_pipeline

    monkeypatch.delenv("TI_VERBOSE", raising=False)
    quiet_libraries()
    capfd.readouterr()
    load_pipeline(str(tiny_sd), "fp32", "cpu")
    comps = load_components(str(tiny_sd), "fp32", "cpu")
    comps.unet.to("cpu", dtype=comps.unet.dtype)  # diffusers warns on .to(dtype) ("kept in float32: []")
    out = capfd.readouterr()
    noise = [n for n in NOISE if n in out.err + out.out]
    assert not noise, (noise, (out.err + out.out)[-2000:])


def test_ti_verbose_leaves_the_libraries_alone(monkeypatch, library_verbosity):
    import transformers.utils.logging as tl

    tl.set_verbosity_info()
    monkeypatch.setenv("TI_VERBOSE", "1")
    quiet_libraries()
    assert tl.get_verbosity() == tl.INFO


def job_config(launcher: str, mode: str = "RunMode.MULTIRUN", num: int = 3, out: str = "sweep/3"):
    return OmegaConf.create(
        {
            "hydra": {
                "launcher": {"_target_": launcher},
                "mode": mode,
                "job": {"num": num},
                "runtime": {"output_dir": out},
            }
        }
    )


@pytest.mark.parametrize(
    "launcher, parallel",
    [
        ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher", True),
        ("hydra_plugins.ti_optuna_sweeper.gpu_launcher.JoblibGpusLauncher", True),
        ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", False),
        ("hydra_plugins.ti_vectorised_launcher.vectorised_launcher.VectorisedLauncher", False),
    ],
)
def test_parallel_sweeps_turn_bars_off_in_their_workers(launcher, parallel, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    ConsoleCallback().on_multirun_start(job_config(launcher))
    assert (os.environ.get("TQDM_DISABLE") == "1") is parallel
    if parallel:  # a worker starts after this and imports tqdm: its bars are off by default
        code = "from tqdm.auto import tqdm; print(tqdm(range(3)).disable)"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.stdout.strip() == "True", r.stderr


def test_one_line_per_finished_trial(capsys):
    cb = ConsoleCallback()
    cfg = job_config("hydra._internal.core_plugins.basic_launcher.BasicLauncher")
    cb.on_job_start(cfg)
    cb.on_job_end(cfg, SimpleNamespace(status=JobStatus.COMPLETED, _return_value=(0.51234, 0.63449)))
    cb.on_job_start(cfg)
    cb.on_job_end(
        cfg,
        SimpleNamespace(status=JobStatus.FAILED, _return_value=FloatingPointError("non-finite loss\nmore")),
    )
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and out.startswith("[trial 3] completed in ")
    assert "image_similarity=0.5123 text_similarity=0.6345 (sweep/3)" in out
    assert err.strip().startswith("[trial 3] failed in ") and err.strip().endswith(
        ": non-finite loss (sweep/3)"
    )
    assert trial_line(None, "completed", "run", (0.1, 0.2)).startswith("[trial] completed: ")


def test_the_trial_line_shows_the_effective_lr_with_the_base_beside_it(capsys):
    cb = ConsoleCallback()
    cfg = job_config("hydra._internal.core_plugins.basic_launcher.BasicLauncher")
    cfg.inversion = {"lr": 0.005, "scale_lr": True, "batch_size": 4, "grad_accum": 2}
    cb.on_job_start(cfg)
    cb.on_job_end(cfg, SimpleNamespace(status=JobStatus.COMPLETED, _return_value=(0.5, 0.25)))
    out = capsys.readouterr().out
    assert "text_similarity=0.2500; lr 0.04 (effective; base 0.005) (sweep/3)" in out


def test_hydra_full_error_shows_the_traceback(tiny_sd, concept_images, tmp_path):
    """The CLI's short form is tested in test_checks.py; the full traceback is one variable away."""
    cmd = [
        sys.executable,
        "-m",
        "sweeper",
        f"model.pretrained={tiny_sd}",
        f"data.images={concept_images}",
        "inversion.init_word=cat",
        "inversion.steps=0",
        "tracking=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", HYDRA_FULL_ERROR="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    assert "inversion.steps=0: must be a whole number >= 1" in proc.stderr  # the schema's range message


@pytest.mark.parametrize(
    "launcher", [["hydra/launcher=vectorised"], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]]
)
def test_a_sweep_is_quiet_under_the_vectorised_and_joblib_launchers(
    launcher, tiny_sd, tiny_judge, concept_images, tmp_path
):
    """The basic launcher's quiet console (the task function quiets the libraries) under the launchers that
    call no task function (vectorised) or run it in worker processes (joblib): trial and progress lines only."""
    from sweep_app.cli import run_sweeper, tiny_overrides

    sweep = tmp_path / "sweep"
    overrides = tiny_overrides(tiny_sd, tiny_judge, concept_images, steps=2)
    out = run_sweeper("-m", *launcher, "inversion.seed=0,1", f"hydra.sweep.dir={sweep}", *overrides)
    console = out.stdout + out.stderr
    noise = [n for n in SWEEP_NOISE if n in console]
    assert not noise, (noise, console[-3000:])
    assert console.count("] completed") == 2 and "[sweep] 2/2 trials done" in console, console[-3000:]
