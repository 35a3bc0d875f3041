"""Structured configs: `hydra/sweeper=optuna`, its samplers and pruners, and `hydra/launcher=joblib_gpus`."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from omegaconf import MISSING


@dataclass
class TPESamplerConfig:
    _target_: str = "optuna.samplers.TPESampler"
    # base seed: each sweeper process derives its own from it (recorded in each trial's sampler_seed)
    seed: int | None = None
    n_startup_trials: int = 10
    multivariate: bool = False
    constant_liar: bool = False  # set true when several workers share one study


@dataclass
class NSGAIISamplerConfig:
    _target_: str = "optuna.samplers.NSGAIISampler"
    seed: int | None = None
    population_size: int = 50
    mutation_prob: float | None = None
    crossover_prob: float = 0.9
    swapping_prob: float = 0.5


@dataclass
class GPSamplerConfig:
    """Optuna's Gaussian-process sampler (Optuna >= 4.2; multi-objective in Optuna 5): fewer trials to a good
    front than TPE on a small continuous space, each ask costs more (a GP fit). Not yet measured on the world
    (BENCHMARKS.md has no figure for it): use it as an option, not as the default."""

    _target_: str = "optuna.samplers.GPSampler"
    seed: int | None = None
    n_startup_trials: int = 10
    deterministic_objective: bool = False


@dataclass
class RandomSamplerConfig:
    _target_: str = "optuna.samplers.RandomSampler"
    seed: int | None = None


@dataclass
class GridSamplerConfig:
    # The grid is built from the search space (choice / range / stepped interval) by the sweeper.
    _target_: str = "optuna.samplers.GridSampler"
    _partial_: bool = True
    seed: int | None = None


@dataclass
class NopPrunerConfig:
    _target_: str = "optuna.pruners.NopPruner"


@dataclass
class MedianPrunerConfig:
    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class HyperbandPrunerConfig:
    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = 1
    max_resource: Any = "auto"
    reduction_factor: int = 3


@dataclass
class ThresholdPrunerConfig:
    """Prune a trial whose quick evaluation falls below `lower` (or above `upper`), e.g. a collapsed concept."""

    _target_: str = "optuna.pruners.ThresholdPruner"
    lower: float | None = None
    upper: float | None = None
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class MOHalvingPrunerConfig:
    """Multi-objective asynchronous successive halving (sweeper/halving.py): rungs at min_resource x
    reduction_factor^k training steps; at each the top 1/reduction_factor by non-dominated sorting continue."""

    _target_: str = "sweeper.halving.MOHalvingPruner"
    min_resource: int = 100  # the first rung, in training steps
    reduction_factor: int = 3
    tie_break: str | None = (
        "denoising"  # within a front: the denoising objective (lower loss first); null: none
    )


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.ti_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    defaults: list = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "nop"}])
    # the sampler stays a config: each sweeper process builds it with its own seed derived from `seed`
    _recursive_: bool = False

    sampler: Any = MISSING
    # the objectives by metric name (sweeper/evaluation/metrics.py), e.g. [image_similarity, text_similarity]:
    # each trial's values are taken by name, the directions are the registry's
    objectives: list | None = None
    # without `objectives`: "minimize" | "maximize" or a list of them (one per returned value, by position;
    # null = minimize); with them it may be left out (null) or must agree
    direction: Any = None
    # null = sqlite:///<sweep dir>/optuna.db; an SQLAlchemy URL (postgresql://...); or a journal file path
    storage: str | None = None
    # null = the sweep folder's name (so rerunning the same command continues the same study)
    study_name: str | None = None
    # total number of finished trials the study should hold (a rerun only runs what is missing)
    n_trials: int = 20
    # trials in flight at once: asynchronous slots on joblib / SLURM launchers (each slot asks its next
    # trial when its own finishes), one batch on in-process launchers (basic, vectorised)
    n_jobs: int = 1
    # stop the sweep when more than this fraction of its trials failed (1.0 = never stop)
    max_failure_rate: float = 1.0
    # without `objectives`: single-objective search of a multi-value task: which returned value is the objective
    objective: int = 0
    # search space as override strings: {inversion.lr: "tag(log, interval(1e-4, 2e-2))"}
    params: dict | None = None
    # "module.function(cfg, trial)" that suggests more parameters
    custom_search_space: str | None = None
    pruner: Any = MISSING
    # fixed configurations put in the study before searching (study.enqueue_trial): [{key: value}]
    enqueue: list = field(default_factory=list)
    # crash recovery on RDB storages: Optuna's heartbeat, and retries of trials whose worker died
    heartbeat_interval: int | None = 60
    grace_period: int | None = 180
    max_retry: int | None = 3
    # names of the objectives shown by optuna-dashboard; null = `objectives`, else image_similarity,
    # text_similarity (the trial's two values; the `objective`-th one for a single-objective study)
    metric_names: list | None = None


@dataclass
class JoblibGpusLauncherConf(JobLibLauncherConf):
    _target_: str = "hydra_plugins.ti_optuna_sweeper.gpu_launcher.JoblibGpusLauncher"
    # GPUs to spread the jobs over (null = all visible); n_jobs follows it; each job gets device=cuda:<k>
    gpus: int | None = None


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="ti_optuna_sweeper")
for name, node in [
    ("tpe", TPESamplerConfig),
    ("nsgaii", NSGAIISamplerConfig),
    ("random", RandomSamplerConfig),
    ("gp", GPSamplerConfig),
    ("grid", GridSamplerConfig),
]:
    cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="ti_optuna_sweeper")
for name, node in [
    ("nop", NopPrunerConfig),
    ("median", MedianPrunerConfig),
    ("hyperband", HyperbandPrunerConfig),
    ("threshold", ThresholdPrunerConfig),
    ("mo_halving", MOHalvingPrunerConfig),
]:
    cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="ti_optuna_sweeper")
cs.store(
    group="hydra/launcher", name="joblib_gpus", node=JoblibGpusLauncherConf, provider="ti_optuna_sweeper"
)


@dataclass
class CheckedSlurmLauncherConf(SlurmQueueConf):
    """hydra-submitit's SLURM launcher that reports unschedulable and cancelled jobs (slurm_launcher.py)."""

    _target_: str = "hydra_plugins.ti_optuna_sweeper.slurm_launcher.SlurmLauncher"
    # seconds between two looks at the queue (squeue) while jobs run
    poll_s: float = 2.0


cs.store(
    group="hydra/launcher",
    name="ti_submitit_slurm",
    node=CheckedSlurmLauncherConf,
    provider="ti_optuna_sweeper",
)
