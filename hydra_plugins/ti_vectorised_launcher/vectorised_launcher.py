"""The launcher behind `hydra/launcher=vectorised` (see __init__.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


class VectorisedLauncher(Launcher):
    def __init__(self, max_group: int = 8) -> None:
        if int(max_group) < 1:
            raise ValueError(f"hydra.launcher.max_group={max_group}: must be >= 1")
        self.max_group = int(max_group)
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def _job(self, overrides: Sequence[str], num: int) -> tuple[DictConfig, DictConfig, Path]:
        """The job's full config (with hydra), its task config (without) and its run folder."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        HydraConfig.instance().set_config(sweep_config)
        run_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(run_dir.resolve())
        HydraConfig.instance().set_config(sweep_config)
        task = sweep_config.copy()
        with open_dict(task):
            del task["hydra"]
            task.run_dir = str(run_dir)
        OmegaConf.set_readonly(task, False)
        OmegaConf.resolve(task)  # ${hydra:...} now, while this job's HydraConfig is the current one
        return sweep_config, task, run_dir

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from sweeper.search import report_hook
        from sweeper.vectorised import group_compatible, run_trials

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._job(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        groups = group_compatible([task for _, task, _ in jobs], self.max_group)
        log.info("Launching %d jobs as %d vectorised group(s): %s", len(jobs), len(groups), groups)
        returns: list[JobReturn | None] = [None] * len(jobs)
        for group in groups:
            for i in group:
                log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(job_overrides[i])))
            # Under the Optuna sweeper each job carries its trial number (hydra.job.env_set): the run folder
            # records it and, in a single-objective study, the trial reports to the pruner as it would alone.
            numbers = [_optuna_number(jobs[i][0]) for i in group]
            reports = [
                report_hook(n, jobs[i][0].hydra) if n is not None else None for n, i in zip(numbers, group)
            ]
            outs = run_trials(
                [jobs[i][1] for i in group],
                [jobs[i][2] for i in group],
                [initial_job_idx + i if n is None else n for n, i in zip(numbers, group)],
                reports,
            )
            for i, out in zip(group, outs):
                sweep_config, task, run_dir = jobs[i]
                failed = isinstance(out, BaseException)
                returns[i] = JobReturn(
                    overrides=list(job_overrides[i]),
                    cfg=task,
                    hydra_cfg=sweep_config,
                    working_dir=str(run_dir),
                    task_name=str(sweep_config.hydra.job.name),
                    status=JobStatus.FAILED if failed else JobStatus.COMPLETED,
                    _return_value=out,
                )
        return returns


def _optuna_number(sweep_config: DictConfig) -> int | None:
    from sweeper.search import TRIAL_ENV

    value = OmegaConf.select(sweep_config, f"hydra.job.env_set.{TRIAL_ENV}", default=None)
    return int(value) if value not in (None, "") else None
