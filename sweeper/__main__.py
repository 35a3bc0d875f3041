"""`python -m sweeper <overrides>`: one trial in Hydra's run folder; `-m` runs a sweep of trials.

Returns run_trial's (image_similarity, text_similarity): Hydra's sweepers read the return value.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from sweeper import CONF_DIR
from sweeper.checks import ConfigError
from sweeper.console import BadInput, quiet_libraries
from sweeper.evaluation import EvaluationConfigError
from sweeper.trial import run_trial

HYDRA_OWN = (".hydra",)


# sweeper/conf is the repository's conf/ (a symlink, shipped as package data). An absolute path: a relative one
# becomes pkg://sweeper.conf under a console script, which Hydra cannot read from a namespace package.
@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> tuple[float, float]:
    """Also the `ti-sweeper` console script."""
    quiet_libraries()
    try:
        return run_trial(cfg)
    except (ConfigError, EvaluationConfigError) as err:
        _drop_hydra_only_folder(cfg)
        if _single_run() and not os.environ.get("HYDRA_FULL_ERROR"):
            # one line and exit status 2, as ti-evaluate/ti-analyse; SystemExit passes Hydra's own reporting
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        # in a sweep the job fails and the sweeper reports it (Hydra's compact path: no traceback), or,
        # with HYDRA_FULL_ERROR=1, Hydra shows the full traceback
        raise BadInput(f"error: {err}") from err


def _single_run() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.RUN


def _drop_hydra_only_folder(cfg: DictConfig) -> None:
    """Bad input leaves no run folder behind: remove it if it holds only what Hydra wrote before the job."""
    try:
        run_dir = Path(str(cfg.run_dir))
    except Exception:  # noqa: BLE001 - nothing to clean
        return
    if run_dir.is_dir() and all(p.name in HYDRA_OWN or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
