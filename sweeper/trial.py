"""One trial: check -> invert -> (pivotal) -> evaluate -> record; returns the two objectives.

    run_trial(cfg, run_dir)  ->  (image_similarity, text_similarity)

Bad input raises ConfigError before any model is loaded or any run file is written. Past that
point the run folder records everything (ARCHITECTURE.md); a failure writes status.json "failed"
with the error and traceback, then re-raises. Rerunning a folder resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from sweeper import record
from sweeper.checks import ConfigError, check_config
from sweeper.evaluation import evaluate_run
from sweeper.search import report_hook
from sweeper.tracking import Tracker

log = logging.getLogger(__name__)


def _run_dir(cfg: DictConfig, run_dir: Path | str | None) -> Path:
    if run_dir is not None:
        return Path(run_dir)
    try:
        return Path(str(cfg.run_dir))
    except Exception as err:  # ${hydra:runtime.output_dir} outside a Hydra job
        raise ConfigError(
            "run_dir: not inside a Hydra job; pass run_trial(cfg, run_dir=...) or set run_dir="
        ) from err


def _trial_number() -> int | None:
    from sweeper.search import current_trial_number

    if current_trial_number() is not None:  # an Optuna sweep: the study's trial number
        return current_trial_number()
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return int(hc.job.num) if hc.mode == RunMode.MULTIRUN else None
    except Exception:  # noqa: BLE001 - not inside a Hydra job
        return None


def run_trial(
    cfg: DictConfig,
    run_dir: Path | None = None,
    *,
    on_log: Callable[[int, dict], None] | None = None,
    report: Callable[[int, float], None] | None = None,
) -> tuple[float, float]:
    """Run one trial in `run_dir` (default: cfg.run_dir, Hydra's output folder)."""
    run_dir = _run_dir(cfg, run_dir)
    check_config(cfg)  # nothing is loaded or written before this passes (evaluation.* included)
    record.start_run(run_dir, cfg, trial_number=_trial_number())
    tracker = Tracker.from_config(cfg, run_dir)  # W&B view; never fails the trial
    on_log = _both(on_log, tracker.on_log)
    report = report if report is not None else report_hook()  # Optuna pruning inside a search
    quick = quick_evaluation(cfg, run_dir, report) if report is not None else None
    try:
        from sweeper.inversion import invert

        result = invert(cfg, run_dir, on_log=on_log, report=quick)

        if cfg.inversion.pivotal.enabled:
            from sweeper.pivotal import pivotal_tune

            pivotal_tune(cfg, result.trainer, run_dir, on_log=on_log)

        metrics = evaluate_run(cfg, run_dir, result.training_images)  # writes metrics.json, samples/
        scores = (metrics["image_similarity"], metrics["text_similarity"])
        log.info("trial done: %s", run_dir)
        tracker.log_result(run_dir, metrics)
    except BaseException as err:
        record.finish_run(run_dir, err)
        tracker.finish("failed")
        raise
    record.finish_run(run_dir)
    tracker.finish("completed")
    return scores


def quick_evaluation(cfg: DictConfig, run_dir: Path, report: Callable) -> Callable:
    """For pruning: every `evaluation.quick.every` steps, evaluate the vectors as they are with a few
    samples (no references, no CIs) and report (image_similarity, text_similarity) to Optuna, which
    takes the study's objective. Values land in quick/step_<N>/metrics.json beside the run's record."""
    from omegaconf import OmegaConf

    from sweeper.config import resolve_prompts
    from sweeper.evaluation import evaluate_pipeline
    from sweeper.models import pipeline_from_components

    quick = cfg.evaluation.quick
    every, last = int(quick.every), int(cfg.inversion.steps)

    def measure(step: int, trainer) -> None:
        if step % every and step != last:
            return
        ev = OmegaConf.to_container(cfg.evaluation, resolve=True)
        ev.update(
            num_samples=int(quick.num_samples),
            steps=int(quick.steps),
            references=False,
            bootstrap=1,
            progress=False,
        )
        ev["prompts"] = resolve_prompts(ev["prompts"])[: int(quick.max_prompts)]
        ev.pop("quick", None)
        pipe = pipeline_from_components(trainer.comps)
        metrics = evaluate_pipeline(
            pipe,
            str(cfg.inversion.placeholder),
            ev,
            trainer.images,
            run_dir / "quick" / f"step_{step:06d}",
            model=str(cfg.model.pretrained),
            device=trainer.comps.device,
        )
        report(step, (metrics["image_similarity"], metrics["text_similarity"]))

    return measure


def _both(a: Callable | None, b: Callable) -> Callable:
    if a is None:
        return b

    def call(step: int, values: dict) -> None:
        a(step, values)
        b(step, values)

    return call
