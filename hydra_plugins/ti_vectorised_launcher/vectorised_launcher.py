"""The launcher behind `hydra/launcher=vectorised` (see __init__.py)."""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    _save_config,
    configure_log,
    env_override,
    filter_overrides,
    setup_globals,
)
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

# Hydra imports every hydra_plugins module on every command: only sweeper modules that need nothing heavier
# than the standard library and Hydra are imported here; anything that pulls in torch is imported lazily.
from sweeper.search import TRIAL_ENV, report_hook
from sweeper.training.grouping import group_compatible

log = logging.getLogger(__name__)

# The run folder of the job whose phase is running (None while the group works together): its log file
# takes that job's records; the group's shared records go to every member's log.
_CURRENT_JOB: contextvars.ContextVar[Path | None] = contextvars.ContextVar("ti_vectorised_job", default=None)


class VectorisedLauncher(Launcher):
    def __init__(self, max_group: int = 8, threads: int | None = None) -> None:
        if int(max_group) < 1:
            raise ValueError(f"hydra.launcher.max_group={max_group}: must be >= 1")
        if threads is not None and int(threads) < 1:
            raise ValueError(
                f"hydra.launcher.threads={threads}: must be >= 1 (or null: $OMP_NUM_THREADS, else 1)"
            )
        self.max_group = int(max_group)
        self.threads = int(threads) if threads is not None else int(os.environ.get("OMP_NUM_THREADS") or 1)
        self.config: Any = None  # set by setup(); Hydra calls it before launch()
        self.hydra_context: Any = None
        self.task_function: Any = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def _job(self, overrides: Sequence[str], num: int) -> tuple[DictConfig, DictConfig, Path]:
        """The job's full config (with hydra), its task config (without) and its run folder; writes the
        folder's .hydra/ (config.yaml, hydra.yaml, overrides.yaml) as Hydra's run_job does."""
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
        if sweep_config.hydra.output_subdir is not None:
            hydra_output = run_dir / str(sweep_config.hydra.output_subdir)
            _save_config(task, "config.yaml", hydra_output)
            _save_config(OmegaConf.masked_copy(sweep_config, "hydra"), "hydra.yaml", hydra_output)
            _save_config(sweep_config.hydra.overrides.task, "overrides.yaml", hydra_output)
        with open_dict(task):
            task.run_dir = str(run_dir)
        OmegaConf.set_readonly(task, False)
        OmegaConf.resolve(task)  # ${hydra:...} now, while this job's HydraConfig is the current one
        return sweep_config, task, run_dir

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        # Lazy: Hydra imports every hydra_plugins module when it scans for plugins, on any command; torch and
        # sweeper.trial (diffusers, transformers) take seconds to import and only a launch needs them.
        import torch

        from sweeper.trial import TrialSpec, run_trials

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        torch.set_num_threads(self.threads)  # like make demo / the joblib workers: one process, few threads
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [self._job(o, initial_job_idx + i) for i, o in enumerate(job_overrides)]
        groups = group_compatible([task for _, task, _ in jobs], self.max_group)
        log.info(
            "Launching %d jobs as %d vectorised group(s): %s (torch threads: %d)",
            len(jobs),
            len(groups),
            groups,
            self.threads,
        )
        returns: list[JobReturn] = [JobReturn()] * len(jobs)  # each replaced by its job's below
        for group in groups:
            handlers = {i: _job_log(jobs[i][0], jobs[i][2]) for i in group}
            specs = []
            for i in group:
                sweep_config, task, run_dir = jobs[i]
                log.info("\t#%d : %s", initial_job_idx + i, " ".join(filter_overrides(job_overrides[i])))
                # Under the Optuna sweeper each job carries its trial number (hydra.job.env_set): the run
                # folder records it and, in a single-objective study, the trial reports to the pruner.
                value = OmegaConf.select(sweep_config, f"hydra.job.env_set.{TRIAL_ENV}", default=None)
                number = int(value) if value not in (None, "") else None
                specs.append(
                    TrialSpec(
                        task,
                        run_dir,
                        initial_job_idx + i if number is None else number,
                        report=report_hook(number, sweep_config.hydra) if number is not None else None,
                        scope=partial(_job_scope, sweep_config, run_dir),
                    )
                )
            launched = time.time()
            try:
                outs = run_trials(specs)
            finally:
                for handler in handlers.values():
                    if handler is not None:
                        logging.getLogger().removeHandler(handler)
                        handler.close()
            for i, out in zip(group, outs):
                sweep_config, task, run_dir = jobs[i]
                _print_trial_line(specs[group.index(i)].trial_number, run_dir, out, task, launched)
                returns[i] = JobReturn(
                    overrides=list(job_overrides[i]),
                    cfg=task,
                    hydra_cfg=sweep_config,
                    working_dir=str(run_dir),
                    task_name=str(sweep_config.hydra.job.name),
                    status=JobStatus.FAILED if isinstance(out, BaseException) else JobStatus.COMPLETED,
                    _return_value=out,
                )
        return returns


def _print_trial_line(number: int | None, run_dir: Path, out: Any, task: DictConfig, since: float) -> None:
    """What the console callback prints under the other launchers (Hydra calls no callback here): one line
    for the trial, then a grid's progress line (an Optuna search prints its own)."""
    from sweeper.console import completed_or_skipped, lr_of, progress_after_trial, trial_line

    failed = isinstance(out, BaseException)
    shown = (str(out).strip().splitlines() or [type(out).__name__])[0] if failed else out
    status = "failed" if failed else completed_or_skipped(run_dir, since)
    line = trial_line(number, status, str(run_dir), shown, lr=lr_of(task))
    print(line, file=sys.stderr if failed else sys.stdout, flush=True)
    progress_after_trial(run_dir.parent)


@contextmanager
def _job_scope(sweep_config: DictConfig, run_dir: Path) -> Iterator[None]:
    """While one job's own phase runs: its HydraConfig, its env_set, its log file alone."""
    previous = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(sweep_config)
    token = _CURRENT_JOB.set(run_dir)
    try:
        with env_override(sweep_config.hydra.job.env_set):
            yield
    finally:
        _CURRENT_JOB.reset(token)
        HydraConfig.instance().cfg = previous


def _job_log(sweep_config: DictConfig, run_dir: Path) -> logging.Handler | None:
    """The job's `<job name>.log` in its run folder, as Hydra's job_logging file handler writes it."""
    spec = OmegaConf.select(sweep_config, "hydra.job_logging.handlers.file", default=None)
    if spec is None or not spec.get("filename"):
        return None
    handler = logging.FileHandler(str(spec.filename))
    fmt = OmegaConf.select(sweep_config, f"hydra.job_logging.formatters.{spec.get('formatter')}.format")
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(lambda record: _CURRENT_JOB.get() in (None, run_dir))
    logging.getLogger().addHandler(handler)
    return handler
