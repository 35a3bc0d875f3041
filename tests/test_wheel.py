"""A wheel that runs (slow: builds the wheel, then real trials; `make test-slow`).

`pip wheel` builds ti-sweeper from a copy of the source tree, `pip install` puts it (not editable) into a fresh
virtualenv, and from an EMPTY folder the console scripts run the embedded world: `ti-sweeper` (a trial and a
`-m` sweep), `ti-evaluate` on the trial's folder, `ti-analyse` on the sweep. The new virtualenv takes its
third-party packages from this one's site-packages through a .pth line (the same versions `make install` put
there from requirements.lock, like --system-site-packages would); the project itself comes only from the wheel:
the test checks that `sweeper` is imported from the new environment, not from the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from conftest import SMOKE_EVALUATION, SMOKE_INVERSION

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SKIP = (
    ".venv",
    ".git",
    ".cache",
    "outputs",
    "multirun",
    "sweeps",
    "build",
    "dist",
    "__pycache__",
    "*.egg-info",
)
BUDGET = [
    *(
        o
        for o in (*SMOKE_INVERSION, *SMOKE_EVALUATION)
        if not o.startswith(("inversion.init_word", "evaluation/"))
    ),
    "inversion.steps=2",
]


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh virtualenv holding the ti-sweeper wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(*SKIP))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    # this environment's setuptools when it has one (Python < 3.12 venvs do), else pip's isolated build
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    run([*pip, "wheel", "-q", "--no-deps", *isolation, "-w", str(tmp / "dist"), str(src)], tmp, env)
    (wheel,) = (tmp / "dist").glob("ti_sweeper-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"sweeper", "analysis", "hydra_plugins"}, tops  # no generic top-level name such as world
    for needed in (
        "sweeper/conf/config.yaml",
        "sweeper/conf/model/toy.yaml",
        "sweeper/world/weights/pipeline/unet/diffusion_pytorch_model.safetensors",
        "sweeper/world/weights/judge/model.safetensors",
        "sweeper/world/concepts/arrow/00.png",
    ):
        assert needed in names, needed

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    purelib = run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        tmp,
        env,
    ).stdout.strip()
    (Path(purelib) / "ti_sweeper_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", str(wheel)], tmp, env)
    return venv / "bin"


def test_console_scripts_run_the_embedded_world_from_an_empty_folder(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", WANDB_MODE="offline")

    where = run(
        [str(installed / "python"), "-c", "import sweeper; print(sweeper.__file__)"], empty, env
    ).stdout
    assert where.startswith(str(installed.parent)) and str(ROOT) not in where, where

    toy = ["model=toy", "data=toy_arrow", "evaluation=toy", *BUDGET]
    trial = run([str(installed / "ti-sweeper"), *toy, "hydra.run.dir=trial"], empty, env)
    metrics = json.loads((empty / "trial" / "metrics.json").read_text())
    assert -1 <= metrics["image_similarity"] <= 1 and "[trial] completed" in trial.stdout
    assert str(installed.parent) in metrics["judge"]  # the judge shipped in the package

    run(
        [str(installed / "ti-sweeper"), "-m", *toy, "inversion.seed=0,1", "hydra.sweep.dir=sweep"], empty, env
    )
    assert all(
        json.loads((empty / "sweep" / n / "status.json").read_text())["status"] == "completed" for n in "01"
    )

    evaluation = [o for o in BUDGET if o.startswith("evaluation.")]
    # a prompt preset by name: read from the package's conf/evaluation/prompts/
    reeval = [
        str(installed / "ti-evaluate"),
        "trial",
        "--out",
        "reeval",
        *evaluation,
        "evaluation.prompts=style",
    ]
    run(reeval, empty, env)
    reevaluated = json.loads((empty / "reeval" / "metrics.json").read_text())
    assert reevaluated["num_samples"] == 2 and len(reevaluated["per_prompt"]) >= 2

    out = run([str(installed / "ti-analyse"), "sweep", "--out", "analysis", "--no-wandb"], empty, env).stdout
    assert "2 runs (2 completed)" in out and (empty / "analysis" / "report.html").is_file()
