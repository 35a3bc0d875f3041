"""Hydra launcher `hydra/launcher=vectorised`: compatible jobs of a multirun train as one vectorised batch.

    python -m sweeper -m hydra/launcher=vectorised inversion.lr=1e-3,5e-3,2e-2 inversion.seed=0,1

Jobs of one launch (a grid, or one batch of n_jobs asked by the Optuna sweeper) that share model,
precision, device, concept folder and data.property, with no pivotal tuning, run through
sweeper.trial.run_trials (the lifecycle every launcher uses): one batched UNet forward/backward per step
for the whole group, then evaluation on one pipeline. Other jobs run in groups of one, the same way. Each
job keeps its own run folder (hydra.sweep.dir/hydra.sweep.subdir) with what Hydra's other launchers leave
there (.hydra/ and <job name>.log) and returns its (image_similarity, text_similarity). Under the Optuna
sweeper each job records its Optuna trial number and reports to the study's pruner.

torch runs `threads` threads (default: $OMP_NUM_THREADS, else 1, as `make demo` and the joblib workers):
on a small shared CPU torch's default measured ~30x slower per step for a 2-trial group.
"""

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore


@dataclass
class VectorisedLauncherConf:
    _target_: str = "hydra_plugins.ti_vectorised_launcher.vectorised_launcher.VectorisedLauncher"
    max_group: int = 8  # trials per batched group (GPU memory grows with it)
    threads: Optional[int] = None  # noqa: UP045 - OmegaConf reads this annotation; null: $OMP_NUM_THREADS, else 1


ConfigStore.instance().store(
    group="hydra/launcher", name="vectorised", node=VectorisedLauncherConf, provider="ti_vectorised_launcher"
)
