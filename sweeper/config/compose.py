"""The project's configuration composed from conf/ (the installed `sweeper/conf`) with Hydra overrides, outside
a Hydra job: for re-evaluation, scripts and the world's experiments."""

from __future__ import annotations

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from sweeper import CONF_DIR


def compose(overrides: list[str]) -> DictConfig:
    """conf/config.yaml with `overrides` applied, checked against the typed schema as Hydra composes it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return hydra_compose("config", overrides=overrides)
