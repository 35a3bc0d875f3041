"""Shared fixtures: small real SD-format components saved to disk and loaded back by path, the one smoke
configuration every test that runs a trial (or part of one) starts from, and the `system` marker."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """An SD 1.x-shaped pipeline folder (32 px images, one text encoder)."""
    from tiny_components import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """An SDXL-shaped pipeline folder (two text encoders)."""
    from tiny_components import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sdxl", sdxl=True)


@pytest.fixture(scope="session")
def tiny_judge(tmp_path_factory) -> Path:
    """A small transformers CLIPModel folder used as the evaluation judge."""
    from tiny_components import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-judge")


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> Path:
    """A small random transformers ViTModel folder: the DINO slot of evaluation.dreambench."""
    from tiny_components import build_tiny_vit

    return build_tiny_vit(tmp_path_factory.mktemp("models") / "tiny-vit")


def write_concept_images(folder: Path, n: int = 4, size: int = 40, seed: int = 0) -> Path:
    """`n` distinct small PNGs (a coloured square on a noisy background)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        arr[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = rng.integers(120, 255, 3, dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:02d}.png")
    return folder


@pytest.fixture
def concept_images(tmp_path) -> Path:
    return write_concept_images(tmp_path / "concept")


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(*overrides: str):
    """The project's config with `overrides`, composed from conf/ as `python -m sweeper` does (outside a Hydra job)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


# The smoke configuration: a trial of a few seconds on the tiny components (a few steps, 2 samples per prompt,
# no references, no tracking). Tests add what they study after it; a later override of a key wins in Hydra.
SMOKE_INVERSION = (
    "inversion.init_word=dog",
    "inversion.steps=4",
    "inversion.batch_size=1",
    "inversion.grad_accum=1",
    "inversion.log_every=1",
    "inversion.checkpoint_every=0",
    "tracking=none",
    "device=cpu",
)
SMOKE_EVALUATION = (
    "evaluation/prompts=paper_examples",
    "evaluation.num_samples=2",
    "evaluation.steps=2",
    "evaluation.batch_size=2",
    "evaluation.bootstrap=10",
    "evaluation.references=false",
    "evaluation.progress=false",
    "evaluation.grid_samples=2",
)


def smoke_evaluation(judge: Path | str, *extra: str) -> list[str]:
    """The smoke configuration's evaluation overrides with `judge` (then `extra`)."""
    return [*SMOKE_EVALUATION, f"evaluation.judge={judge}", *extra]


def smoke_overrides(
    model: Path | str, images: Path | str, *extra: str, judge: Path | str | None = None
) -> list[str]:
    """The smoke configuration's overrides for `model` and `images` (and the evaluation's, given a judge)."""
    evaluation = smoke_evaluation(judge) if judge is not None else []
    return [f"model.pretrained={model}", f"data.images={images}", *SMOKE_INVERSION, *evaluation, *extra]


def smoke_config(model: Path | str, images: Path | str, *extra: str, judge: Path | str | None = None):
    """The smoke configuration, composed (see smoke_overrides)."""
    return compose_config(*smoke_overrides(model, images, *extra, judge=judge))


@pytest.fixture
def smoke_cfg(tiny_sd, tiny_judge, concept_images):
    """`smoke_cfg(*extra)`: the smoke configuration on the tiny model, judge and concept images."""
    return lambda *extra: smoke_config(tiny_sd, concept_images, *extra, judge=tiny_judge)


def wandb_files_written() -> None:
    """Return once W&B has written every finished run's offline files. `run.finish()` can return while the
    service still holds the `.wandb` log in its buffers (the file had only its 7-byte header on a loaded
    machine); `wandb.teardown()` stops the service, which flushes and closes every stream before it exits.
    The next `wandb.init` starts a new service. No sleeps, no polling."""
    import wandb

    wandb.teardown()


# ----------------------------------------------------------------------------------------- system tests
# Tests that need a system service (Chromium, PostgreSQL, a SLURM cluster) carry @pytest.mark.system: `make test`
# leaves them out, `make test-system` installs what they need and runs them. Without the binary a developer's
# run skips them with the reason; under CI (CI=true) a missing binary is a failure.


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str, *candidates: str, install: str) -> str:
    """The path of `name` (first found of PATH and `candidates`), or skip (fail under CI) saying how to get it."""
    found = shutil.which(name) or next((c for c in candidates if Path(c).is_file()), None)
    if found:
        return found
    reason = f"{name} not found: `{install}` installs it (system test)"
    if under_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)
