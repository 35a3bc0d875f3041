"""Shared fixtures: small real SD-format components saved to disk and loaded back by path."""

from __future__ import annotations

import os
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
    from sweeper.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> Path:
    """An SDXL-shaped pipeline folder (two text encoders)."""
    from sweeper.tiny import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny-sdxl", sdxl=True)


@pytest.fixture(scope="session")
def tiny_judge(tmp_path_factory) -> Path:
    """A small transformers CLIPModel folder used as the evaluation judge."""
    from sweeper.tiny import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("models") / "tiny-judge")


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
