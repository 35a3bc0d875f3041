"""`python -m sweeper <overrides>`: one trial in Hydra's run folder; `-m` runs a sweep of trials.

Returns run_trial's Scores ((image_similarity, text_similarity), every metric by name in .metrics): Hydra's
sweepers read the return value. Bad input
is refused by the trial lifecycle (sweeper/trial.py), which also removes the folder Hydra made for the job.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from sweeper import CONF_DIR
from sweeper.checks import ConfigError
from sweeper.console import BadInput, quiet_libraries
from sweeper.evaluation.metrics import Scores
from sweeper.interrupt import TrialInterrupted
from sweeper.trial import run_trial


# sweeper/conf is the repository's conf/ (a symlink, shipped as package data). An absolute path: a relative one
# becomes pkg://sweeper.conf under a console script, which Hydra cannot read from a namespace package.
@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> Scores:
    """Also the `ti-sweeper` console script."""
    quiet_libraries()
    try:
        return run_trial(cfg)
    except TrialInterrupted as stop:
        if not _single_run():
            raise  # a sweep's launcher / the Optuna sweeper records and re-queues it
        # the trial recorded "interrupted" with its checkpoint: one line, not a traceback that reads as a crash
        print(
            f"{stop}: {cfg.run_dir} holds the checkpoint of its last completed step; rerun the same command to "
            "resume",
            file=sys.stderr,
        )
        sys.exit(128 + stop.signum)
    except ConfigError as err:  # evaluation.* errors included; the lifecycle removed Hydra's job folder
        if _single_run() and not os.environ.get("HYDRA_FULL_ERROR"):
            # one line and exit status 2, as ti-evaluate/ti-analyse; SystemExit passes Hydra's own reporting
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        # in a sweep the job fails and the sweeper reports it (Hydra's compact path: no traceback), or,
        # with HYDRA_FULL_ERROR=1, Hydra shows the full traceback
        raise BadInput(f"error: {err}") from err


def _single_run() -> bool:
    return HydraConfig.get().mode == RunMode.RUN


if __name__ == "__main__":
    main()
