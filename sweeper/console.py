"""What a person sees on the console: a trial's own progress and results, not library noise.

- `quiet_libraries()` (called by every entry point and by the trial lifecycle, so under every launcher: the
  vectorised one calls no task function): transformers, diffusers and huggingface_hub log only
  errors and draw no "Loading weights"/"Loading pipeline components" bars. `TI_VERBOSE=1` leaves them as
  they are (to debug a model load).
- `ConsoleCallback` (a Hydra callback, conf/config.yaml): in a sweep whose launcher runs trials in parallel
  worker processes (joblib), progress bars would interleave, so the workers get `TQDM_DISABLE=1` (tqdm >= 4.66
  reads its defaults from the environment when it is imported, which a worker does after it starts) and
  every finished trial prints one line instead, in any launcher (a pruned one: the Optuna sweeper's line).
- `BadInput`: bad input surfaces as one line through Hydra's compact error path (no traceback);
  `HYDRA_FULL_ERROR=1` shows the full traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.utils import JobStatus
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf

from sweeper import progress

# Lazy imports: diffusers'/transformers' loggers are imported only when quietened (at model load), not at CLI start-up.

log = logging.getLogger("sweeper")

# Launchers that run trials one after another in this process: their bars do not interleave.
SEQUENTIAL_LAUNCHERS = ("BasicLauncher", "VectorisedLauncher")


class BadInput(CompactHydraException):
    """A configuration or input error: Hydra prints its message alone and exits non-zero."""


def verbose() -> bool:
    return os.environ.get("TI_VERBOSE", "").lower() in ("1", "true", "yes")


def quiet_libraries() -> None:
    """Library logs at error level and no library progress bars (model loading), unless TI_VERBOSE=1."""
    if verbose():
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()


def progress_lines_only() -> bool:
    """True in a worker of a parallel sweep (set by ConsoleCallback), or when TQDM_DISABLE is set."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def _launcher_name(config: DictConfig) -> str:
    target = OmegaConf.select(config, "hydra.launcher._target_", default="") or ""
    return str(target).rsplit(".", 1)[-1]


def trial_line(
    number: Any,
    status: str,
    run_dir: str,
    values: Any = None,
    seconds: float | None = None,
    lr: str | None = None,
) -> str:
    """`[trial 3] completed in 41 s: image_similarity=0.5123 text_similarity=0.6345; lr 0.04 (effective;
    base 0.005) (outputs/demo/3)` (`lr`: sweeper.config.schema.lr_label)."""
    name = "trial" if number is None else f"trial {number}"
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES  # numpy: only once a trial ends

    scores = ""
    if isinstance(values, (tuple, list)) and len(values) == len(DEFAULT_OBJECTIVES):  # a trial's Scores
        scores = ": " + " ".join(f"{n}={float(v):.4f}" for n, v in zip(DEFAULT_OBJECTIVES, values))
    elif values is not None:
        scores = f": {values}"
    shown_lr = f"; {lr}" if lr else ""
    return f"[{name}] {status}{took}{scores}{shown_lr} ({run_dir})"


def lr_of(config: DictConfig) -> str | None:
    from sweeper.config.schema import inversion_lr_label

    try:
        return inversion_lr_label(config.inversion)
    except Exception:  # noqa: BLE001 - an app without the inversion group (tests' sweep app)
        return None


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - Hydra < 1.1
    Callback = object  # type: ignore[assignment,misc]


class ConsoleCallback(Callback):
    """Hydra callback: no interleaved bars in parallel sweeps; one line per finished trial."""

    def __init__(self) -> None:
        self._started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Runs in the sweep's own process before the launcher starts any worker: workers inherit the env.
        if _launcher_name(config) not in SEQUENTIAL_LAUNCHERS:
            os.environ["TQDM_DISABLE"] = "1"
        os.environ[progress.STARTED_ENV] = repr(time.time())
        total = grid_size(config)  # a grid's progress lines; the Optuna sweeper prints its own
        if total is None:
            os.environ.pop(progress.TOTAL_ENV, None)
        else:
            os.environ[progress.TOTAL_ENV] = str(total)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.monotonic()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        seconds = time.monotonic() - self._started if self._started is not None else None
        multirun = str(OmegaConf.select(config, "hydra.mode", default="")) == "RunMode.MULTIRUN"
        number = OmegaConf.select(config, "hydra.job.num", default=None) if multirun else None
        run_dir = OmegaConf.select(config, "hydra.runtime.output_dir", default="") or ""
        if job_return.status == JobStatus.COMPLETED:
            status = completed_or_skipped(run_dir, time.time() - (seconds or 0) - 1)
            line = trial_line(number, status, run_dir, job_return._return_value, seconds, lr_of(config))
        elif _is_pruned(job_return._return_value):
            return  # the Optuna sweeper's one line says so ("trial N pruned: ..."), for every launcher
        else:
            err = job_return._return_value
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            line = trial_line(number, "failed", run_dir, first, seconds)
        print(line, file=sys.stderr if job_return.status != JobStatus.COMPLETED else sys.stdout, flush=True)
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir", default=None)
        if multirun and sweep_dir is not None:
            progress_after_trial(sweep_dir)


def completed_or_skipped(run_dir: str | Path, since: float) -> str:
    """'skipped (record complete)' when the trial's status.json says a rerun skipped it since `since`."""
    state = progress.run_state(run_dir)
    skipped = state is not None and state.skipped_at is not None and state.skipped_at >= since
    return "skipped (record complete)" if skipped else "completed"


def progress_after_trial(sweep_dir: str | Path) -> None:
    """A grid's progress line, `[grid] 3/8 trials done (...), 5 to go, ETA 4 min`, counted from its sweep
    folder (so any process of any launcher can print it), and after the last one the grid's summary (printed
    here, not at the multirun's end, which Hydra skips when a trial failed); nothing outside a grid (a search
    prints its own)."""
    total, started = progress.started_from_env()
    if total is None or started is None:
        return
    print(progress.progress_line(sweep_dir, total, started), flush=True)
    if progress.finished_count(sweep_dir) >= total:  # the last trial: the grid's summary and its front
        for line in progress.summary_lines(sweep_dir, started):
            print(line, flush=True)


def grid_size(config: DictConfig) -> int | None:
    """The number of jobs Hydra's basic sweeper makes of this multirun's overrides; None for other sweepers."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
    if not target.endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
    try:
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(arguments), None)
    except Exception:  # noqa: BLE001 - Hydra refuses the overrides itself, with its own message
        return None
    return sum(len(batch) for batch in batches)


def _is_pruned(err: BaseException) -> bool:
    optuna = sys.modules.get("optuna")  # a TrialPruned can only come from an optuna already imported
    return optuna is not None and isinstance(err, optuna.TrialPruned)
