"""Optuna search as a Hydra sweeper, on Optuna's ask-and-tell API.

Override grammar -> Optuna distribution (as in the released hydra-optuna-sweeper):
  a,b,c | choice(a,b,c)          CategoricalDistribution
  range(start, stop[, step])     IntDistribution over start, start+step, ... < stop (Hydra's range
                                 excludes stop, as in the basic sweeper; floats give a stepped Float)
  interval(lo, hi)               FloatDistribution (IntDistribution when both ends are ints)
  tag(log, interval(lo, hi))     the same on a log scale
  anything else                  a fixed value passed to every trial

Loop: ask a batch of n_jobs trials -> suggest -> launch one job per trial in the run folder
`trial_<original number>` -> tell each its values, or FAIL with the error as a user attr, or PRUNED.
`n_trials` is the number of finished trials the study should hold, so rerunning the same command runs
only what is missing.

Two ways to run n_jobs trials at once:
- asynchronous slots (launchers whose jobs run in other processes: joblib, submitit/SLURM): n_jobs threads,
  each asks one trial, launches it alone, tells it, and asks the next. No batch barrier: a slow trial
  holds only its own slot (GPU). Asking and telling are serialised by a lock.
- batches (in-process launchers: the basic one, the vectorised one, which trains a batch together):
  ask n_jobs, launch them as one batch, tell all.
Many workers: start N sweeper processes on one RDB or journal study (README, "Many workers").

Each process seeds its sampler from the config's base seed, the trials already in the study and the
process (sweeper.search.process_seed), recorded in every trial it asks: workers and restarts never
replay one another's suggestions. SIGTERM/SIGUSR1 to the sweeper (scancel, preemption, time limit) fail
its running trials as interrupted and re-queue them (sweeper.search.mark_interrupted) before it exits;
a launcher's job that ended without a result (a cancelled SLURM job) is re-queued the same way.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

# Hydra imports every hydra_plugins module on every command: only sweeper modules that need nothing heavier
# than the standard library and Hydra are imported here; anything that pulls in torch is imported lazily.
from sweeper import progress, search
from sweeper.config.schema import lr_label
from sweeper.evaluation.metrics import objective_values
from sweeper.interrupt import TrialInterrupted, interruptible
from sweeper.store.atomic import write_text

log = logging.getLogger(__name__)
# Heartbeats are Optuna's own mechanism; they are just driven from this ask-and-tell loop.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
# Launchers whose jobs run in other processes: safe to call from several threads at once (async slots).
OUT_OF_PROCESS_LAUNCHERS = (
    "hydra_plugins.hydra_joblib_launcher",
    "hydra_plugins.hydra_submitit_launcher",
    "hydra_plugins.ti_optuna_sweeper.gpu_launcher",
    "hydra_plugins.ti_optuna_sweeper.slurm_launcher",
)


def distribution_from_override(override: Override) -> Any:
    """An Optuna distribution for a sweep override, or the plain value of a fixed one."""
    if not override.is_sweep_override():
        return override.get_value_element_as_str()
    value = override.value()
    key = override.get_key_element()
    if override.is_choice_sweep() or (override.is_range_sweep() and value.shuffle):
        choices = list(override.sweep_iterator(transformer=Transformer.encode))
        for c in choices:
            if not isinstance(c, (str, int, float, bool, type(None))):
                raise ValueError(f"{key}: a choice takes str, int, float, bool or null values, got {c!r}")
        return CategoricalDistribution(choices)
    if override.is_range_sweep():
        assert isinstance(value, RangeSweep)
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"{key}={override.get_value_element_as_str()}: the range is empty")
        if all(isinstance(v, int) for v in (value.start, value.stop, value.step)):
            return IntDistribution(int(values[0]), int(values[-1]), step=int(value.step))
        return FloatDistribution(float(values[0]), float(values[-1]), step=float(value.step))
    if override.is_interval_sweep():
        assert isinstance(value, IntervalSweep)
        log_scale = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log_scale)
        return FloatDistribution(float(value.start), float(value.end), log=log_scale)
    raise NotImplementedError(f"{override.input_line}: this sweep is not supported by the Optuna sweeper")


def search_space_from_overrides(
    arguments: Sequence[str],
) -> tuple[dict[str, BaseDistribution], dict[str, str]]:
    distributions: dict[str, BaseDistribution] = {}
    fixed: dict[str, str] = {}
    for override in OverridesParser.create().parse_overrides(list(arguments)):
        value = distribution_from_override(override)
        name = override.get_key_element()
        if isinstance(value, BaseDistribution):
            distributions[name] = value
            fixed.pop(name, None)
        else:
            fixed[name] = value
            distributions.pop(name, None)
    return distributions, fixed


def grid_values(name: str, d: BaseDistribution) -> list:
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    if isinstance(d, (IntDistribution, FloatDistribution)) and d.step is not None and not d.log:
        n = int(round((d.high - d.low) / d.step)) + 1
        return [d.low + i * d.step for i in range(n)]
    raise ValueError(
        f"{name}: the grid sampler needs a finite axis (choice, range or a stepped interval), got {d}"
    )


class OptunaSweeperImpl:
    def __init__(
        self,
        sampler: Any,
        direction: Any,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        objective: int,
        params: DictConfig | None,
        custom_search_space: str | None,
        pruner: Any,
        enqueue: Any,
        heartbeat_interval: int | None,
        grace_period: int | None,
        max_retry: int | None,
        metric_names: Sequence[str] | None = None,
        objectives: Sequence[str] | None = None,
    ) -> None:
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate must be in [0, 1], got {max_failure_rate}")
        if n_trials < 0 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials >= 0 and n_jobs >= 1 needed, got {n_trials}, {n_jobs}")
        # The sampler config stays a config (the sweeper config is not instantiated recursively): each
        # process builds it with its own seed (_create_study).
        self.sampler_config = sampler
        self.pruner = instantiate(pruner) if OmegaConf.is_config(pruner) else pruner
        # objectives by name: their directions are the metric registry's (sweeper/evaluation/metrics.py)
        names = [str(n) for n in objectives] if objectives else None
        self.objectives, self.directions = search.study_objectives(names, direction, int(objective))
        self.storage_url, self.study_name = storage, study_name
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.max_failure_rate, self.objective = float(max_failure_rate), int(objective)
        self.params = dict(params or {})
        self.extender = get_method(custom_search_space) if custom_search_space else None
        self.enqueue = [dict(e) for e in (enqueue or [])]
        self.heartbeat = dict(
            heartbeat_interval=heartbeat_interval, grace_period=grace_period, max_retry=max_retry
        )
        self.retry = search.retry_stale_callback(max_retry)
        self.metric_names = self._metric_names(metric_names)
        self.lock = threading.RLock()  # ask / tell / bookkeeping, shared by the async slots
        self.in_flight: dict[int, optuna.Trial] = {}  # trial id -> trial launched by this process
        self.told: list[bool] = []  # this process's finished trials: True = failed
        self.ask_s: dict[int, float] = {}  # trial id -> seconds its ask took (logged when told)
        self.job_idx = 0
        self.started = time.time()  # this command's start: the ETA counts the trials it finished since
        self.front: list[int] = []  # the trial numbers of the front last written (printed when it changes)
        self.seed: int | None = None
        self.seed_from = ""

    def _metric_names(self, names: Sequence[str] | None) -> list[str] | None:
        from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES

        if self.objectives and not names:
            return list(self.objectives)
        if names:
            names = [str(n) for n in names]
            if len(names) != len(self.directions):
                raise ValueError(
                    f"hydra.sweeper.metric_names: {len(names)} names for {len(self.directions)} directions"
                )
            return names
        if len(self.directions) == len(DEFAULT_OBJECTIVES):
            return list(DEFAULT_OBJECTIVES)
        if len(self.directions) == 1 and 0 <= self.objective < len(DEFAULT_OBJECTIVES):
            return [DEFAULT_OBJECTIVES[self.objective]]
        return None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir))

    def _build_sampler(self, distributions: dict[str, BaseDistribution], n_before: int) -> Any:
        cfg = self.sampler_config
        if not OmegaConf.is_config(cfg):  # an already built sampler (Python callers): used as given
            return cfg
        base = cfg.get("seed")
        self.seed, self.seed_from = search.process_seed(base, n_before)
        sampler = instantiate(cfg, seed=self.seed)
        if getattr(sampler, "func", None) is optuna.samplers.GridSampler:  # a partial: build the grid
            sampler = sampler({k: grid_values(k, d) for k, d in distributions.items()})
        return sampler

    def _create_study(self, distributions: dict[str, BaseDistribution]) -> optuna.Study:
        storage = search.make_storage(self.storage_url, self.sweep_dir, **self.heartbeat)
        self.study_name = self.study_name or self.sweep_dir.name
        study = optuna.create_study(
            study_name=self.study_name,
            storage=storage,
            sampler=optuna.samplers.RandomSampler(),  # replaced below, once the study's size is known
            pruner=self.pruner,
            directions=self.directions,
            load_if_exists=True,
        )
        if list(d.name.lower() for d in study.directions) != [d.lower() for d in self.directions]:
            raise ValueError(
                f"study {self.study_name!r} in {self.storage_url or 'optuna.db'} has directions "
                f"{[d.name for d in study.directions]}, the config asks for {self.directions}"
            )
        study.sampler = self._build_sampler(distributions, len(study.get_trials(deepcopy=False)))
        if self.metric_names and study.metric_names != self.metric_names:
            study.set_metric_names(self.metric_names)
        for params in self.enqueue:
            study.enqueue_trial(params, skip_if_exists=True)
        return study

    def _check_overrides(self, distributions: dict[str, BaseDistribution], fixed: dict[str, str]) -> None:
        """Compose one job's config before any trial is asked: a bad key fails here, not in a RUNNING trial."""
        sample = {name: _sample_value(d) for name, d in distributions.items()}
        overrides = [f"{k}={_encode(v)}" for k, v in {**sample, **fixed}.items()]
        self.hydra_context.config_loader.load_sweep_config(self.config, overrides)

    def sweep(self, arguments: list[str]) -> None:
        check_pruner(self.pruner, self.directions)
        distributions, fixed = search_space_from_overrides(
            [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        )
        self._check_overrides(distributions, fixed)
        study = self._create_study(distributions)
        if isinstance(study.sampler, optuna.samplers.GridSampler):
            self.n_trials = min(
                self.n_trials, math.prod(len(grid_values(k, d)) for k, d in distributions.items())
            )
        asynchronous = self.n_jobs > 1 and _runs_out_of_process(self.launcher)
        log.info(
            "Study %s (%s seed %s, %s) in %s: %d trials, directions %s, %d at once (%s)",
            study.study_name,
            type(study.sampler).__name__,
            self.seed,
            type(study.pruner).__name__,
            search._redact(self.storage_url or search.default_storage_url(self.sweep_dir)),
            self.n_trials,
            self.directions,
            self.n_jobs,
            "asynchronous slots" if asynchronous else "batches",
        )
        search.fail_dead_local_trials(study, self.retry)
        search.announce_never_ran(study)
        self.started = time.time()
        try:
            with interruptible():
                if asynchronous:
                    self._run_slots(study, distributions, fixed)
                else:
                    self._run_batches(study, distributions, fixed)
        except TrialInterrupted as e:
            cancel = getattr(self.launcher, "cancel_running", None)
            if cancel is not None:  # jobs on a cluster would go on writing to run folders the rerun reuses
                log.warning("cancelled the sweep's running jobs: %s", cancel())
            with self.lock:
                for trial in list(self.in_flight.values()):
                    search.mark_interrupted(study, trial._trial_id, f"sweeper {e}")
                self.in_flight.clear()
            log.warning("sweep stopped (%s): rerun the same command to resume", e)
            raise SystemExit(128 + e.signum) from None
        self._write_results(study)

    def _run_batches(self, study: optuna.Study, distributions: dict, fixed: dict) -> None:
        while True:
            with self.lock:
                trials = self._ask_up_to(study, self.n_jobs)
                if not trials:
                    return
                overrides = [self._overrides(t, distributions, fixed) for t in trials]
                job_idx, self.job_idx = self.job_idx, self.job_idx + len(trials)
            returns = self._launch(study, trials, overrides, job_idx)
            with self.lock:
                failures = sum(self._tell(study, t, r) for t, r in zip(trials, returns))
                self._progress(study)
            if failures / len(returns) > self.max_failure_rate:
                raise RuntimeError(
                    f"{failures} of {len(returns)} trials failed in a batch "
                    f"(hydra.sweeper.max_failure_rate={self.max_failure_rate}); see their status.json"
                )

    def _run_slots(self, study: optuna.Study, distributions: dict, fixed: dict) -> None:
        """n_jobs threads, each: ask one trial, launch it alone, tell it, ask the next (no barrier)."""
        errors: list[BaseException] = []
        stop = threading.Event()

        def slot() -> None:
            while not stop.is_set():
                with self.lock:
                    trials = self._ask_up_to(study, 1)
                    if not trials:
                        return
                    overrides = [self._overrides(trials[0], distributions, fixed)]
                    job_idx, self.job_idx = self.job_idx, self.job_idx + 1
                try:
                    returns = self._launch(study, trials, overrides, job_idx)
                except BaseException as e:  # noqa: BLE001 - handed to the main thread
                    errors.append(e)
                    stop.set()
                    return
                with self.lock:
                    self._tell(study, trials[0], returns[0])
                    self._progress(study)
                    failed, n = sum(self.told), len(self.told)
                    if n >= self.n_jobs and failed / n > self.max_failure_rate:
                        errors.append(
                            RuntimeError(
                                f"{failed} of {n} trials failed "
                                f"(hydra.sweeper.max_failure_rate={self.max_failure_rate}); see their status.json"
                            )
                        )
                        stop.set()

        threads = [threading.Thread(target=slot, name=f"slot{k}", daemon=True) for k in range(self.n_jobs)]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():  # a timed join keeps the main thread responsive to SIGTERM/SIGUSR1
                t.join(timeout=0.5)
        if errors:
            raise errors[0]

    def _ask_up_to(self, study: optuna.Study, n: int) -> list[optuna.Trial]:
        search.fail_stale_trials(study)  # Optuna's, each stale trial given its reason
        trials: list[optuna.Trial] = []
        for _ in range(n):
            if not self._work_left(study):
                break
            started = time.perf_counter()
            trial = self._ask(study)
            if trial is None:
                break
            self.ask_s[trial._trial_id] = time.perf_counter() - started
            trials.append(trial)
            self.in_flight[trial._trial_id] = trial
        return trials

    def _launch(self, study: optuna.Study, trials: list, overrides: list, job_idx: int) -> Sequence[Any]:
        """Launch the jobs of `trials`; if the launcher itself fails, mark them never run (and re-queued) first."""
        try:
            with _Heartbeats(study, trials):
                return self.launcher.launch(overrides, initial_job_idx=job_idx)
        except Exception as e:  # no job ran: not counted toward n_trials, re-queued for a rerun (search.py)
            with self.lock:
                for trial in trials:
                    search.mark_never_ran(study, trial._trial_id, e)
                    self.in_flight.pop(trial._trial_id, None)
            raise

    def _work_left(self, study: optuna.Study) -> bool:
        """Fewer than n_trials trials in the study's budget, or a WAITING one (a retry, an enqueued
        configuration) among the first n_trials still to run."""
        counted = self._counted(study)  # in trial-number order
        return len(counted) < self.n_trials or any(
            t.state == TrialState.WAITING for t in counted[: self.n_trials]
        )

    def _counted(self, study: optuna.Study) -> list:
        return [t for t in study.get_trials(deepcopy=False) if not search.is_abandoned(t)]

    def _ask(self, study: optuna.Study) -> optuna.Trial | None:
        """Ask one trial; give it back (WAITING) when other workers already asked the last ones needed."""
        trial = study.ask()
        rank = sum(1 for t in self._counted(study) if t.number < trial.number)
        if rank < self.n_trials:
            trial.set_user_attr(search.WORKER_ATTR, search.worker_id())
            if self.seed is not None:
                trial.set_user_attr(search.SEED_ATTR, self.seed)
                trial.set_user_attr(search.SEED_FROM_ATTR, self.seed_from)
            return trial
        study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
        return None

    def _overrides(self, trial: optuna.Trial, distributions: dict, fixed: dict) -> list[str]:
        for name, dist in distributions.items():
            trial._suggest(name, dist)
        for name, value in fixed.items():
            trial.set_user_attr(name, value)
        if self.extender is not None:
            self.extender(self.config, trial)
        frozen = study_trial(trial)
        enqueued = frozen.system_attrs.get("fixed_params", {})
        params = {**{k: v for k, v in enqueued.items() if k not in trial.params}, **trial.params, **fixed}
        return [f"{k}={_encode(v)}" for k, v in params.items()] + [
            f"hydra.sweep.subdir={search.trial_folder_name(frozen)}",
            f"++hydra.job.env_set.{search.TRIAL_ENV}={trial.number}",
        ]

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> bool:
        """Tell Optuna how the job ended; True when it failed (an interruption is re-queued, not failed)."""
        self.in_flight.pop(trial._trial_id, None)
        started = time.perf_counter()
        self._record_lr(trial, ret)
        try:
            if _pruned(ret):  # Hydra's return_value would first print "Error executing job with overrides"
                raise ret._return_value
            value = ret.return_value  # re-raises the job's exception
            if self.objectives:  # by name (the trial's Scores carry every metric)
                values = objective_values(value, self.objectives)
            else:  # by position in what the task returned
                values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
                if len(self.directions) == 1 and len(values) > 1:
                    values = [values[self.objective]]
            if len(values) != len(self.directions):
                raise ValueError(
                    f"the task returned {len(values)} values for {len(self.directions)} directions"
                )
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"non-finite objective {values}: {_run_error(ret) or 'see status.json'}")
        except optuna.TrialPruned as e:
            _tell(study, trial, state=TrialState.PRUNED)
            log.info("trial %d pruned: %s (%s)", trial.number, e, _run_folder(ret) or "no run folder")
            return self._told(trial, False, started)
        except (Exception, TrialInterrupted) as e:  # noqa: BLE001 - a failing trial never stops the sweep
            if isinstance(e, (TrialInterrupted, search.JobEndedWithoutResult)) or _run_status(ret) == (
                "interrupted"
            ):
                search.mark_interrupted(study, trial._trial_id, f"{type(e).__name__}: {e}")
                return False
            trial.set_user_attr(search.ERROR_ATTR, f"{type(e).__name__}: {e}"[:2000])
            _tell(study, trial, state=TrialState.FAIL)
            log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
            return self._told(trial, True, started)
        _tell(study, trial, values=values)
        return self._told(trial, False, started)

    def _record_lr(self, trial: optuna.Trial, ret: Any) -> None:
        """User attrs `effective_lr` (the optimiser's) and `lr` (sweeper.config.schema.lr_label): Optuna's
        `inversion.lr` param is the base lr, which is not what the plot and the family names show."""
        lr = _run_lr(_run_folder(ret) or self.sweep_dir / search.trial_folder_name(study_trial(trial)))
        if lr is not None:
            trial.set_user_attr(search.EFFECTIVE_LR_ATTR, lr[0])
            trial.set_user_attr(search.LR_ATTR, lr_label(*lr))

    def _told(self, trial: optuna.Trial, failed: bool, started: float) -> bool:
        self.told.append(failed)
        log.info(
            "trial %d told (%s): ask %.3f s, tell %.3f s",
            trial.number,
            "failed" if failed else "ok",
            self.ask_s.pop(trial._trial_id, math.nan),
            time.perf_counter() - started,
        )
        return failed

    def _progress(self, study: optuna.Study) -> None:
        trials = self._counted(study)
        n = {s: sum(t.state == s for t in trials) for s in FINISHED}
        done = sum(n.values())
        left = max(self.n_trials - done, 0)
        log.info(
            "[%s] %d/%d trials done (%d complete, %d failed, %d pruned), %d to go, %s",
            study.study_name,
            done,
            self.n_trials,
            n[TrialState.COMPLETE],
            n[TrialState.FAIL],
            n[TrialState.PRUNED],
            left,
            progress.eta(left, len(self.told), time.time() - self.started),
        )
        self._write_front(study)

    def _front_rows(self, study: optuna.Study) -> list[dict]:
        """The study's current Pareto front (its best trial, single-objective): number, folder, objectives, lr."""
        names = self.metric_names or [f"value_{i}" for i in range(len(self.directions))]
        best = study.best_trials if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) else []
        return [
            {
                "trial": t.number,
                "folder": search.trial_folder_name(t),
                **dict(zip(names, t.values)),
                **_lr_attrs(t),
            }
            for t in sorted(best, key=lambda t: t.number)
        ]

    def _write_front(self, study: optuna.Study) -> None:
        """pareto_front.csv/.json in the sweep folder after every trial; one line when the front changed."""
        rows = self._front_rows(study)
        if not rows:
            return
        path = progress.write_front(self.sweep_dir, rows)
        numbers = [r["trial"] for r in rows]
        if numbers != self.front:
            self.front = numbers
            names = self.metric_names or [f"value_{i}" for i in range(len(self.directions))]
            log.info("%s", progress.front_line(rows, path, str(study.study_name), names))

    def _write_results(self, study: optuna.Study) -> None:
        complete = study.get_trials(states=(TrialState.COMPLETE,))
        results: dict[str, Any] = {
            "name": "optuna",
            "study_name": study.study_name,
            "n_complete": len(complete),
        }
        if complete and len(self.directions) == 1:
            best = study.best_trial
            results.update(best_params=best.params, best_value=best.value, best_trial=best.number)
            results.update(_lr_attrs(best, "best_"))
        elif complete:
            results["solutions"] = [
                {
                    "trial": t.number,
                    "folder": search.trial_folder_name(t),
                    "params": t.params,
                    **_lr_attrs(t),
                    "values": t.values,
                }
                for t in study.best_trials
            ]
            log.info(
                "Pareto front: %d trials (%s); %s, %s",
                len(results["solutions"]),
                ", ".join(f"#{t['trial']}" for t in results["solutions"]),
                self.sweep_dir / progress.FRONT_CSV,
                self.sweep_dir / "optimization_results.yaml",
            )
        write_text(self.sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(OmegaConf.create(results)))
        skipped = [
            r.folder.name
            for r in progress.run_states(self.sweep_dir)
            if r.skipped_at is not None and r.skipped_at >= self.started
        ]
        if skipped:
            log.info(
                "[%s] skipped %d trials whose records were complete (not run again): %s",
                study.study_name,
                len(skipped),
                ", ".join(skipped),
            )


def check_pruner(pruner: Any, directions: Sequence[str]) -> None:
    """Refuse, at sweep start, a single-objective pruner on a multi-objective study: Optuna's `Trial.report`
    raises for several objectives, so it would prune nothing while the log names it as active."""
    from sweeper.halving import MOHalvingPruner

    if (
        len(directions) < 2
        or pruner is None
        or isinstance(pruner, (optuna.pruners.NopPruner, MOHalvingPruner))
    ):
        return
    # one line and exit status 2, as bad input to a single trial (sweeper/__main__.py); SystemExit passes Hydra's
    # own reporting, which would add its HYDRA_FULL_ERROR hint
    print(
        f"error: hydra.sweeper.pruner: {type(pruner).__name__} prunes single-objective studies only and this study "
        f"has {len(directions)} directions; use hydra/sweeper/pruner=mo_halving (multi-objective successive "
        f"halving), or nop",
        file=sys.stderr,
    )
    raise SystemExit(2)


def _pruned(ret: Any) -> bool:
    """The job ended with optuna.TrialPruned (Hydra stores the exception as the job's return value)."""
    return ret.status == JobStatus.FAILED and isinstance(ret._return_value, optuna.TrialPruned)


def _tell(study: optuna.Study, trial: optuna.Trial, **kwargs: Any) -> None:
    try:
        study.tell(trial, **kwargs)
    except (
        RuntimeError
    ) as e:  # the grid sampler calls study.stop() once the grid is done; the state is stored
        if "Study.stop" not in str(e):
            raise


def study_trial(trial: optuna.Trial) -> Any:
    return trial.study._storage.get_trial(trial._trial_id)


def _encode(value: Any) -> str:
    if isinstance(value, str) or value is None:
        return "null" if value is None else value
    return str(value)


def _run_folder(ret: Any) -> Path | None:
    """A job's run folder, None when its return does not say (a SLURM job that ended without a result)."""
    hydra_cfg = getattr(ret, "hydra_cfg", None)  # None for a SLURM job that was cancelled before its result
    output_dir = OmegaConf.select(hydra_cfg, "hydra.runtime.output_dir") if hydra_cfg is not None else None
    folder = output_dir or getattr(
        ret, "working_dir", None
    )  # working_dir is the cwd when hydra.job.chdir=false
    return Path(str(folder)) if folder else None


def _run_record(ret: Any) -> dict:
    """The run folder's status.json of a job, {} when there is none."""
    try:
        return dict(json.loads((_run_folder(ret) / "status.json").read_text()))  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - no folder, no file, or a job that never started
        return {}


def _run_lr(folder: Path) -> tuple[float, float] | None:
    """(effective, base) learning rate from a run folder's config.yaml (its `derived:` block), None without."""
    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        return float(cfg["derived"]["effective_lr"]), float(cfg["inversion"]["lr"])
    except Exception:  # noqa: BLE001 - a trial refused before its config was written, or an old folder
        return None


def _lr_attrs(trial: Any, prefix: str = "") -> dict:
    """optimization_results.yaml's `lr` (the label) and `effective_lr` of a trial, where it recorded them."""
    attrs = trial.user_attrs
    keys = (search.LR_ATTR, search.EFFECTIVE_LR_ATTR)
    return {f"{prefix}{k}": attrs[k] for k in keys if k in attrs}


def _run_error(ret: Any) -> str | None:
    """The error a run folder's status.json recorded, if the task wrote one."""
    return _run_record(ret).get("error")


def _run_status(ret: Any) -> str | None:
    return _run_record(ret).get("status")


def _sample_value(d: BaseDistribution) -> Any:
    """One value of a distribution, to compose a job's config before asking any trial."""
    if isinstance(d, CategoricalDistribution):
        return d.choices[0]
    return d.low


def _runs_out_of_process(launcher: Any) -> bool:
    return any(c.__module__.startswith(OUT_OF_PROCESS_LAUNCHERS) for c in type(launcher).__mro__)


class _Heartbeats:
    """Record Optuna heartbeats for the running trials while their jobs run (RDB storages only)."""

    def __init__(self, study: optuna.Study, trials: list) -> None:
        storage = study._storage
        self.interval = (
            storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        )
        self.storage, self.ids = storage, [t._trial_id for t in trials]
        self.stop = threading.Event()

    def _beat(self) -> None:
        while True:
            for i in self.ids:
                try:
                    self.storage.record_heartbeat(i)
                except Exception as e:  # noqa: BLE001
                    log.warning("heartbeat for trial id %d failed: %s", i, e)
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeats:
        if self.interval:
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        if self.interval:
            self.thread.join()


__all__ = ["OptunaSweeperImpl", "distribution_from_override", "search_space_from_overrides", "grid_values"]
