"""The run's derived values, computed once from the configuration: what config.yaml's `derived:` block
records and what the trainer and the evaluation use (effective lr, the images used, the resolved prompts,
the job's overrides).

`derive(cfg)` lists the image folder and decodes nothing; the pre-flight checks (sweeper/checks.py) decode
every image once and build the same values with `derived_values`.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from sweeper.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    Derived,
    effective_lr,
    job_overrides,
    resolve_prompts,
    settings,
)
from sweeper.data import images

__all__ = ["derive", "derived_values", "select_images"]


def select_images(d: DataConfig | DictConfig) -> list[Path]:
    """The training images the run uses (listed, not decoded); a DataError becomes a ConfigError."""
    try:
        return images.select_images(images.list_images(d.images), d.n_images, int(d.subset_seed))
    except images.DataError as err:
        raise ConfigError(str(err)) from err


def derived_values(typed: Config, image_paths: list[Path]) -> Derived:
    return Derived(
        effective_lr=effective_lr(typed.inversion),
        images=image_paths,
        prompts=resolve_prompts(typed.evaluation.prompts),
        overrides=job_overrides(),
    )


def derive(cfg: DictConfig | Config) -> Derived:
    """The run's derived values (effective LR, images used, resolved prompts, the job's overrides):
    the one place they are computed. Lists the image folder; loads and decodes nothing."""
    typed = cfg if isinstance(cfg, Config) else settings(cfg)
    return derived_values(typed, select_images(typed.data))
