"""`python -m sweeper <overrides>`: one trial in Hydra's run folder; `-m` runs a sweep of trials.

Returns run_trial's (image_similarity, text_similarity): Hydra's sweepers read the return value. Bad input
is refused by the trial lifecycle (sweeper/trial.py), which also removes the folder Hydra made for the job.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from sweeper.trial import run_trial


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> tuple[float, float]:
    return run_trial(cfg)


if __name__ == "__main__":
    main()
