"""Optuna helpers shared by the sweeper plugin (hydra_plugins/ti_optuna_sweeper) and the trial it runs.

Storage: `None` = SQLite inside the sweep folder (`sqlite:///<sweep_dir>/optuna.db`); any SQLAlchemy
URL (`postgresql://user@host/db`) = an RDB storage with Optuna's heartbeat, whose stale trials are
failed and re-queued by Optuna's own RetryHeartbeatStaleTrialCallback; anything else is a path to a
journal file (JournalStorage + JournalFileBackend).

Crash recovery is Optuna's: heartbeat + retry callback for workers on any host. One addition for the
common single-box case: at start-up a RUNNING trial whose worker process (same host) is gone is failed
at once and re-queued through the same callback, instead of waiting out the grace period.

A retried trial keeps the run folder of the trial it retries (`trial_<original number>`), so the
trainer resumes from that folder's checkpoints.

Interrupted trials (SIGTERM/SIGUSR1: `scancel`, preemption, a time limit; or a SLURM job that ended
without a result) are told FAIL with the user attr `interrupted` (the reason) and no `error`, so they do
not count as finished, and are re-queued at once by `requeue` in Optuna's retry format (`failed_trial`,
`retry_history`): the retry runs in the same run folder and resumes from its checkpoint. Interruptions
are not bounded by max_retry (each resumes where the last stopped, so a time limit still progresses).

Per-process sampler seeds: every sweeper process (a worker, a restart, a SLURM array task) seeds its
sampler with `process_seed(base, trials already in the study, worker)`, so no two processes draw the same
sequence, and records the seed and what it was derived from in each trial it asks (`sampler_seed`,
`sampler_seed_from`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.utils import instantiate

# Lazy imports: optuna is imported where used: Hydra's plugin scan imports this module on every command, and a
# run without a search never needs optuna.

log = logging.getLogger(__name__)

TRIAL_ENV = "TI_OPTUNA_TRIAL"  # set for each job by the sweeper plugin: the Optuna trial number
WORKER_ATTR = "worker"  # user attr "<host>:<pid>" of the sweeper process that asked the trial
ERROR_ATTR = "error"  # user attr set on trials the sweeper told FAIL (their error); absent on stale ones
INTERRUPTED_ATTR = "interrupted"  # user attr of a trial stopped by a signal / a SLURM job gone: the reason
SEED_ATTR = "sampler_seed"  # user attr: the seed of the sampler of the process that asked the trial
SEED_FROM_ATTR = "sampler_seed_from"  # user attr: what that seed was derived from (base, trials, worker)
EFFECTIVE_LR_ATTR = "effective_lr"  # user attr: the optimiser's lr (the `inversion.lr` param is the base lr)
LAUNCH_FAILED_ATTR = "launch_failed"  # user attr of a trial whose launcher failed before it ran: the error
STALE_ATTR = "stale"  # user attr of a trial failed as stale (its worker died / sent no heartbeat): the reason
LR_ATTR = "lr"  # user attr: how the lr is shown everywhere, "lr 0.029 (effective; base 0.00363)" (lr_label)
# Attributes of one attempt, not carried over to its retry.
ATTEMPT_ATTRS = (
    WORKER_ATTR,
    ERROR_ATTR,
    INTERRUPTED_ATTR,
    SEED_ATTR,
    SEED_FROM_ATTR,
    STALE_ATTR,
    LAUNCH_FAILED_ATTR,
)


class StorageError(CompactHydraException):
    """The Optuna storage cannot be opened or written: Hydra shows the message alone (one line)."""


class JobEndedWithoutResult(RuntimeError):
    """A launcher's job ended without a result (cancelled, preempted, out of time, killed): resumable."""


def default_storage_url(sweep_dir: str | Path) -> str:
    return f"sqlite:///{Path(sweep_dir).resolve() / 'optuna.db'}"


def make_storage(
    url: str | None,
    sweep_dir: str | Path | None = None,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = 3,
) -> Any:
    """An Optuna storage for `url` (None = SQLite in `sweep_dir`; no '://' = a journal file path).

    One storage per URL and settings per process: every trial of a worker (its pruning hook included)
    shares one connection pool instead of opening a new one per trial."""
    if not url:
        if sweep_dir is None:
            raise ValueError("hydra.sweeper.storage is null and there is no sweep folder to put optuna.db in")
        url = default_storage_url(sweep_dir)
    key = (str(url), heartbeat_interval, grace_period, max_retry, os.getpid())
    with _STORAGES_LOCK:
        if key not in _STORAGES:
            _STORAGES[key] = _open_storage(str(url), heartbeat_interval, grace_period, max_retry)
        return _STORAGES[key]


_STORAGES: dict[tuple, Any] = {}
_STORAGES_LOCK = threading.Lock()


def _open_storage(
    url: str, heartbeat_interval: int | None, grace_period: int | None, max_retry: int | None
) -> Any:
    import optuna
    from optuna.storages import RDBStorage

    try:
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        if url.startswith("sqlite:///"):  # the sweep folder (default) or the folder a URL names
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only or full sweep folder
        raise StorageError(f"hydra.sweeper.storage={_redact(url)}: cannot write its folder ({e})") from e
    url = _postgres_driver(url)
    kwargs: dict[str, Any] = {}
    if heartbeat_interval:
        kwargs = dict(
            heartbeat_interval=int(heartbeat_interval),
            grace_period=int(grace_period) if grace_period else None,
            heartbeat_stale_trial_callback=retry_stale_callback(max_retry),
        )
    for attempt in range(5):
        try:
            return RDBStorage(url, **kwargs)
        except Exception as e:
            # Workers starting together on an empty database race to create Optuna's tables: the loser
            # sees a duplicate type/table/row (or SQLite's lock) and only has to connect again.
            if attempt < 4 and any(
                m in str(e)
                for m in (
                    "already exists",
                    "duplicate key",
                    "UniqueViolation",
                    "UNIQUE constraint failed",  # SQLite
                    "database is locked",
                )
            ):
                time.sleep(0.5 + random.random())
                continue
            raise StorageError(_open_failure(url, e)) from e
    raise AssertionError("unreachable")


DAMAGED_SQLITE = ("malformed", "not a database", "file is encrypted", "disk I/O error")


def _open_failure(url: str, err: Exception) -> str:
    """One line: what failed, and for a damaged SQLite file which file it is and what to do."""
    first = (str(err).splitlines() or [type(err).__name__])[0]
    if url.startswith("sqlite:///") and any(m in str(err) for m in DAMAGED_SQLITE):
        db = url[len("sqlite:///") :]
        return (
            f"{db}: the Optuna study database is damaged ({first}); move it aside (mv {db} {db}.damaged) and rerun "
            "to start a new study (finished run folders stay as they are; analysis reads them), or restore it "
            "from a backup"
        )
    return f"hydra.sweeper.storage={_redact(url)}: cannot open the Optuna storage ({first})"


def _postgres_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; use psycopg2 (the `postgres` extra) when that is what is installed."""
    if not url.startswith("postgresql://"):
        return url

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://") :]
    return url


def _redact(url: str) -> str:
    """Hide a password in a URL before it goes into a message."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        if ":" in creds:
            return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url


def root_trial_number(trial: Any) -> int:
    """The number of the first trial of a retry chain (the trial itself if it is no retry)."""
    first = trial.system_attrs.get("failed_trial")
    return int(first) if first is not None else int(trial.number)


def trial_folder_name(trial: Any) -> str:
    return f"trial_{root_trial_number(trial):04d}"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def process_token() -> str:
    """What makes this process unique among a study's workers: host, pid and the SLURM job/array task."""
    slurm = [os.environ.get(k) for k in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_ID")]
    slurm_part = "/".join(v for v in slurm if v)
    return worker_id() + (f":slurm={slurm_part}" if slurm_part else "")


def process_seed(base_seed: int | None, n_trials_before: int, token: str | None = None) -> tuple[int, str]:
    """A sampler seed for this process and the record of what it came from.

    Derived from the base seed (the config's `sampler.seed`), the number of trials the study held when the
    process started and a token unique to the process: restarts and concurrent workers draw different
    sequences, and the recorded basis reproduces each one. A null base seed draws a fresh random one
    (recorded too).
    """
    token = process_token() if token is None else token
    base = secrets.randbits(31) if base_seed is None else int(base_seed)
    basis = f"base={base} trials_before={n_trials_before} worker={token}"
    seed = int.from_bytes(hashlib.sha256(basis.encode()).digest()[:4], "little") & 0x7FFFFFFF
    return seed, basis


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_local_trials(study: Any, retry: Callable | None) -> list[int]:
    """Fail RUNNING trials whose sweeper process on this host is gone, and re-queue them via `retry`."""
    from optuna.trial import TrialState

    host, me = socket.gethostname(), os.getpid()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        w_host, _, w_pid = str(t.user_attrs.get(WORKER_ATTR, "")).rpartition(":")
        if w_host != host or not w_pid.isdigit():
            continue
        pid = int(w_pid)
        if pid != me and _pid_alive(pid):
            continue
        reason = f"its worker process (pid {pid} on {host}) died while it ran: failed as stale and re-queued"
        try:
            study._storage.set_trial_user_attr(t._trial_id, STALE_ATTR, reason)
        except Exception:  # noqa: BLE001 - finished meanwhile by another process: it recorded why
            continue
        if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
            failed.append(t.number)
            log.warning(
                "trial %d was running in a process that died (pid %d): failed and re-queued", t.number, pid
            )
            if retry is not None:
                retry(study, study._storage.get_trial(t._trial_id))
    return failed


def retry_stale_callback(max_retry: int | None) -> Any:
    """Optuna's RetryHeartbeatStaleTrialCallback, except that the retry does not inherit the failed attempt's
    own attributes (ATTEMPT_ATTRS: its worker, its stale reason, ...): those stay on the attempt they describe."""
    import copy

    from optuna.storages import RetryHeartbeatStaleTrialCallback

    class RetryStaleTrial(RetryHeartbeatStaleTrialCallback):
        def __call__(self, study: Any, trial: Any) -> None:
            trial = copy.deepcopy(trial)
            trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
            super().__call__(study, trial)

    return RetryStaleTrial(max_retry=max_retry)


def fail_stale_trials(study: Any) -> None:
    """Optuna's `fail_stale_trials` (heartbeat storages), each stale trial first given its reason (STALE_ATTR,
    shown by optuna-dashboard): a FAIL without an error would otherwise say nothing."""
    import optuna
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    storage = study._storage
    if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
        interval = storage.get_heartbeat_interval() or 0
        backend = getattr(storage, "_backend", storage)  # RDBStorage behind Optuna's cache
        grace = getattr(backend, "grace_period", None) or 2 * interval
        for trial_id in storage._get_stale_trial_ids(study._study_id):
            worker = storage.get_trial(trial_id).user_attrs.get(WORKER_ATTR, "its worker")
            reason = (
                f"no heartbeat from {worker} for over {grace} s (hydra.sweeper.grace_period): the worker died or "
                "lost the storage; failed as stale and re-queued"
            )
            try:
                storage.set_trial_user_attr(trial_id, STALE_ATTR, reason)
            except Exception:  # noqa: BLE001 - finished meanwhile: Optuna skips it too
                continue
    optuna.storages.fail_stale_trials(study)


def requeue(study: Any, trial: Any) -> int:
    """Put a WAITING copy of an interrupted trial in the study (Optuna's retry format); its number."""
    import optuna
    from optuna.trial import TrialState

    system_attrs: dict[str, Any] = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in ATTEMPT_ATTRS}
    retry = optuna.create_trial(
        state=TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=user_attrs,
        system_attrs=system_attrs,
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=retry)
    return study._storage.get_trial_number_from_id(trial_id)


def mark_never_ran(study: Any, trial_id: int, error: BaseException) -> int | None:
    """A RUNNING trial whose launcher failed before its job ran (sbatch refused it, SLURM cannot schedule it):
    FAIL with LAUNCH_FAILED_ATTR and no `error` (it does not count toward n_trials), re-queued so that a rerun
    with a working launcher runs it; the retry's number."""
    from optuna.trial import TrialState

    storage = study._storage
    storage.set_trial_user_attr(trial_id, LAUNCH_FAILED_ATTR, f"{type(error).__name__}: {error}"[:2000])
    if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
        return None
    return requeue(study, storage.get_trial(trial_id))


def announce_never_ran(study: Any) -> list[int]:
    """Log, at a sweep's start, the waiting retries of trials whose launcher failed before they ran."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    waiting = []
    for t in trials:
        history = t.system_attrs.get("retry_history") or []
        before = by_number.get(history[-1]) if history else None
        if t.state == TrialState.WAITING and before is not None and LAUNCH_FAILED_ATTR in before.user_attrs:
            waiting.append(t.number)
            log.warning(
                "trial %d never ran (its launcher failed: %s): it does not count toward n_trials; it runs now as "
                "trial %d",
                before.number,
                str(before.user_attrs[LAUNCH_FAILED_ATTR]).splitlines()[0][:300],
                t.number,
            )
    return waiting


def mark_interrupted(study: Any, trial_id: int, reason: str) -> int | None:
    """Fail a RUNNING trial as interrupted (not counted as finished) and re-queue it; the retry's number."""
    from optuna.trial import TrialState

    storage = study._storage
    storage.set_trial_user_attr(trial_id, INTERRUPTED_ATTR, reason[:2000])
    if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
        return None  # someone else (a stale-trial check) finished it first; it re-queued it then
    frozen = storage.get_trial(trial_id)
    number = requeue(study, frozen)
    log.warning("trial %d interrupted (%s): re-queued as trial %d", frozen.number, reason, number)
    return number


def is_abandoned(trial: Any) -> bool:
    """FAIL without an error told by a sweeper: a worker died; its retry (if any) carries on."""
    from optuna.trial import TrialState

    return trial.state == TrialState.FAIL and ERROR_ATTR not in trial.user_attrs


def current_trial_number() -> int | None:
    """Inside a job of an Optuna sweep: its trial number; else None."""
    value = os.environ.get(TRIAL_ENV)
    return int(value) if value not in (None, "") else None


def report_hook(
    number: int | None = None, hydra_cfg: Any = None
) -> Callable[[int, float | tuple[float, ...]], None] | None:
    """Inside a job of an Optuna sweep: report(step, value) for pruning; None anywhere else.

    `number` / `hydra_cfg`: the trial number and the job's `hydra` config, for a launcher that runs several
    jobs in one process (vectorised); by default the current job's (TI_OPTUNA_TRIAL, HydraConfig).

    Reports the intermediate value to the trial and raises optuna.TrialPruned when the study's pruner
    says the trial is hopeless. Optuna prunes single-objective studies only: in a multi-objective study
    there is no hook (None), except with sweeper.halving's MOHalvingPruner (`pruner=mo_halving`), whose own
    reporter decides at its rungs. The value must be better in the study's direction (higher when maximizing).
    """
    number = current_trial_number() if number is None else int(number)
    if number is None:
        return None
    import optuna

    hc = hydra_cfg if hydra_cfg is not None else HydraConfig.get()
    sweeper, sweep_dir = hc.sweeper, str(hc.sweep.dir)
    # The sweeper's own settings, so that a trial run in the sweeper's process shares its storage (pool).
    storage = make_storage(
        sweeper.get("storage"),
        sweep_dir,
        heartbeat_interval=sweeper.get("heartbeat_interval"),
        grace_period=sweeper.get("grace_period"),
        max_retry=sweeper.get("max_retry"),
    )
    study_name = sweeper.get("study_name") or Path(sweep_dir).name
    pruner = instantiate(sweeper.pruner) if sweeper.get("pruner") else None
    study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner)
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study_name), number
    )
    from sweeper.evaluation.metrics import objective_values  # numpy: not at plugin discovery
    from sweeper.halving import MOHalvingPruner

    index = int(sweeper.get("objective", 0) or 0)
    named = sweeper.get("objectives")
    objective, _ = study_objectives(
        [str(n) for n in named] if named else None, sweeper.get("direction"), index
    )
    if isinstance(pruner, MOHalvingPruner):  # multi-objective successive halving: its own decisions
        directions = study.directions
        positions = list(range(len(directions))) if len(directions) > 1 else [index]
        signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in directions]
        return pruner.reporter(study, trial_id, Path(str(hc.runtime.output_dir)), objective, positions, signs)
    if len(study.directions) > 1:
        return None
    trial = optuna.Trial(study, trial_id)

    def report(step: int, value: float | tuple[float, ...]) -> None:
        if isinstance(value, (tuple, list)):  # a trial's Scores: the study's objective by name, else position
            value = objective_values(value, objective)[0] if objective else value[index]
        trial.report(float(value), int(step))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (intermediate value {value:.4g})")

    return report


def study_objectives(
    objectives: list[str] | None, direction: Any, objective: int
) -> tuple[list[str] | None, list[str]]:
    """The study's objectives by name and their directions. Named objectives take the registry's directions;
    a single `direction` with several named objectives (`direction=maximize objective=1` on a preset that
    names two) makes a single-objective study of the `objective`-th; `direction`, when given, must agree.
    Without names: `direction` (one or a list; default minimize), the trial's values taken by position."""
    given = None
    if direction is not None:
        dirs = (
            list(direction)
            if isinstance(direction, Sequence) and not isinstance(direction, str)
            else [direction]
        )
        given = [str(getattr(d, "name", d)).lower() for d in dirs]
    if not objectives:
        return None, given or ["minimize"]
    if given is not None and len(given) == 1 and len(objectives) > 1:
        if not 0 <= objective < len(objectives):
            raise ValueError(f"hydra.sweeper.objective={objective}: pick one of {len(objectives)} objectives")
        objectives = [objectives[objective]]
    from sweeper.evaluation.metrics import directions  # numpy: not at plugin discovery

    wanted = directions(objectives)
    if given is not None and given != wanted:
        raise ValueError(
            f"hydra.sweeper.direction={given} disagrees with the directions {wanted} the metric registry "
            f"gives hydra.sweeper.objectives={objectives}: drop `direction` (the objectives set it)"
        )
    return objectives, wanted
