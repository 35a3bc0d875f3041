"""The trial lifecycle, one for every launcher: a lone trial is a group of one.

    run_trial(cfg, run_dir)          -> Scores: (image_similarity, text_similarity), and every metric by
                                        name in .metrics (evaluation/metrics.py)   Hydra's task function (basic,
                                        joblib, submitit launchers)
    run_trials([TrialSpec, ...])     -> per trial: its scores or the exception that ended it
                                        (hydra/launcher=vectorised: N compatible trials in one process)

Per trial: checks -> status.json "running" + config.yaml -> W&B tracker -> inversion (the group's one
training loop, sweeper.training.inversion.train) -> pivotal tuning (groups of one) -> evaluation -> status.json on
ANY exit: "completed" | "failed" (error and traceback) | "pruned" (optuna.TrialPruned) | "interrupted"
(SIGTERM/SIGUSR1 inside `interruptible()`, or Ctrl-C: the loop checkpointed first; the exception then
propagates and a rerun of the folder resumes from that checkpoint).

Bad input is refused before any model work and leaves no run folder: the checks run before anything is
written, and a folder that then holds only what Hydra wrote for the job (.hydra/, its log) is removed.

Evaluation reuses the trained components (the learned vectors baked into the text encoder) when the
evaluation precision can be had from them without loss (same device; trained in that precision or in
fp32); otherwise the trainer is freed before the evaluation pipeline loads. Either way one UNet is alive
at a time, so peak memory is the larger phase, not the sum.

`wall_time_s` of a trial = its own phases (checks, records, its evaluation) + its share of what its group
did together (model loading and latent caches split evenly; each training step split among the trials it
trained). Over a group the trials' wall times add up to the group's; for a lone trial it is its wall time.
"""

from __future__ import annotations

import gc
import logging
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweeper import memory
from sweeper.checks import ConfigError, check_config
from sweeper.config.manifest import Concept, read_manifest
from sweeper.config.schema import evaluation_settings, resolve_prompts
from sweeper.console import quiet_libraries
from sweeper.evaluation.metrics import DENOISING_OBJECTIVE, Scores
from sweeper.evaluation.protocol import _apply_pivotal, class_word, evaluate_pipeline, evaluation_precision
from sweeper.interrupt import interruptible, is_interruption, signals_deferred
from sweeper.models import (
    PRECISIONS,
    Components,
    load_pipeline,
    pipeline_from_components,
    resolve_device,
    resolve_dtype,
)
from sweeper.search import current_trial_number, report_hook
from sweeper.store import atomic, record
from sweeper.store.embeddings import load_embedding_file, load_into_pipeline
from sweeper.tracking import Tracker
from sweeper.training import early_stop, tokens
from sweeper.training.early_stop import DenoisingObjective
from sweeper.training.grouping import group_compatible
from sweeper.training.inversion import InversionResult, Trainer, train
from sweeper.training.pivotal import pivotal_tune

log = logging.getLogger(__name__)

HYDRA_OWN = (".hydra",)  # what Hydra writes into a job's folder before the task runs (besides its .log)


@dataclass
class TrialSpec:
    """One trial for `run_trials`: its config, run folder, and what its launcher adds."""

    cfg: DictConfig
    run_dir: Path
    trial_number: int | None = None
    on_log: Callable[[int, dict], None] | None = None  # training curves (besides W&B)
    report: Callable[[int, Scores | float], None] | None = None  # Optuna's pruning hook (search.report_hook)
    scope: Callable[[], AbstractContextManager] = nullcontext  # the launcher's per-job context (Hydra, log)


@dataclass
class _Trial:
    spec: TrialSpec
    tracker: Tracker = field(default_factory=lambda: Tracker(None))
    seconds: float = 0.0  # wall time: its own phases plus its share of the group's
    open: bool = False  # status.json says "running"
    outcome: Scores | BaseException | None = None
    peak_memory_gib: dict = field(default_factory=dict)  # per phase, for status.json


def run_trial(
    cfg: DictConfig,
    run_dir: Path | None = None,
    *,
    on_log: Callable[[int, dict], None] | None = None,
    report: Callable[[int, Scores | float], None] | None = None,
) -> Scores:
    """Run one trial in `run_dir` (default: cfg.run_dir, Hydra's output folder); raise what ended it."""
    run_dir = _run_dir(cfg, run_dir)
    if cfg.data.get("manifest"):  # no pruning inside a manifest trial
        report = None
    else:
        report = report if report is not None else report_hook()  # Optuna pruning inside a search
    (outcome,) = run_trials([TrialSpec(cfg, run_dir, _trial_number(), on_log, report)])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def concept_config(cfg: DictConfig, concept: Concept) -> DictConfig:
    """The trial's configuration for one concept of its manifest: its folder, class word and init word."""
    one = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    assert isinstance(one, DictConfig)
    OmegaConf.set_struct(one, False)
    one.run_dir = None  # the concept's run folder is given to the lifecycle, not Hydra's job folder
    one.data.manifest = None
    one.data.images = str(concept.images)
    if concept.class_word is not None:
        one.data.class_word = concept.class_word
    if concept.init_word is not None:
        one.inversion.init_word = concept.init_word
    return one


def _expand_manifests(specs: list[TrialSpec]) -> tuple[list[TrialSpec], list[tuple[int, list[int]]]]:
    """Each spec with `data.manifest` becomes one spec per concept (sweeper/config/manifest.py: its run folder
    `<run_dir>/<name>/`, the trial's number, log and scope; no pruning inside a manifest trial). Returns the
    specs to run and, per manifest spec, (its index, the indices of its concepts' specs)."""
    out: list[TrialSpec] = []
    manifests: list[tuple[int, list[int]]] = []
    for j, spec in enumerate(specs):
        if not spec.cfg.data.get("manifest"):
            out.append(spec)
            continue
        concepts = read_manifest(str(spec.cfg.data.manifest))
        first = len(out)
        out.extend(
            TrialSpec(
                concept_config(spec.cfg, c),
                spec.run_dir / c.name,
                spec.trial_number,
                spec.on_log,
                None,
                spec.scope,
            )
            for c in concepts
        )
        manifests.append((j, list(range(first, len(out)))))
    return out, manifests


def manifest_outcome(
    spec: TrialSpec, names: list[str], outcomes: list[Scores | BaseException]
) -> Scores | BaseException:
    """A manifest trial's outcome from its concepts': Scores of every metric's mean over concepts, and
    `<run_dir>/concepts.json` (each concept's metrics, the means, their 95% t-intervals over concepts, the
    failures); the first concept's error when any failed (after the others ran)."""
    failed = [(n, o) for n, o in zip(names, outcomes) if isinstance(o, BaseException)]
    summary = concepts_summary({n: o for n, o in zip(names, outcomes) if not isinstance(o, BaseException)})
    summary["failed"] = {name: f"{type(err).__name__}: {err}" for name, err in failed}
    summary["manifest"] = str(spec.cfg.data.manifest)
    atomic.write_json(spec.run_dir / "concepts.json", summary)
    if failed:
        return failed[0][1]
    log.info(
        "concepts: image %.4f %s, text %.4f %s over %d concepts",
        summary["image_similarity"],
        summary["image_similarity_ci"],
        summary["text_similarity"],
        summary["text_similarity_ci"],
        len(names),
    )
    return Scores({k: v for k, v in summary.items() if isinstance(v, float)})


def concepts_summary(scores: dict[str, Scores], level: float = 0.95) -> dict:
    """Each concept's metrics, every metric's mean over concepts and a Student-t interval over concepts (one
    concept: no interval)."""
    from scipy.stats import t as student_t

    per = {name: dict(getattr(s, "metrics", {})) for name, s in scores.items()}
    out: dict = {"concepts": per}
    shared = set.intersection(*(set(m) for m in per.values())) if per else set()
    for key in sorted(shared):
        values = [float(m[key]) for m in per.values()]
        mean = sum(values) / len(values)
        ci: list[float | None] = [None, None]
        if len(values) > 1:
            sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            half = float(student_t.ppf((1 + level) / 2, len(values) - 1)) * sd / len(values) ** 0.5
            ci = [mean - half, mean + half]
        out[key], out[f"{key}_ci"] = mean, ci
    out["n_concepts"] = len(scores)
    return out


def run_trials(specs: list[TrialSpec]) -> list[Scores | BaseException]:
    """Run N >= 1 compatible trials (sweeper.training.grouping.group_compatible) as one group; see the module doc.

    A refusal, a non-finite loss, a pruner or a failing evaluation ends only its own trial; a failure of
    the group's shared work (loading the model) fails every trial of the group. An interruption marks
    every unfinished trial "interrupted" and propagates.
    """
    quiet_libraries()  # every launcher: the vectorised one calls no task function, joblib's run it in workers
    if any(spec.cfg.data.get("manifest") for spec in specs):
        return _run_with_manifests(specs)

    trials = [_Trial(spec) for spec in specs]
    with interruptible():
        try:
            for trial in trials:
                _start(trial, concurrent=len(trials) > 1)
            started = [t for t in trials if t.open]
            if started:
                _invert_and_evaluate(started)
        except BaseException as err:
            with signals_deferred():  # a second signal must not leave a trial "running"
                for trial in trials:
                    if trial.open:
                        _finish(trial, err)
            if not isinstance(err, Exception):
                raise
    outcomes: list[Scores | BaseException] = []
    for trial in trials:
        assert trial.outcome is not None, f"{trial.spec.run_dir}: the lifecycle ended without an outcome"
        outcomes.append(trial.outcome)
    return outcomes


def _run_with_manifests(specs: list[TrialSpec]) -> list[Scores | BaseException]:
    """run_trials over specs some of which are manifest trials: every concept of every manifest trial and the
    other specs run as compatible groups (a manifest's concepts in one group where they are compatible), then
    each manifest trial's outcome is made from its concepts' (manifest_outcome). A bad manifest is its trial's
    refusal."""
    outcomes: list[Scores | BaseException | None] = [None] * len(specs)
    runnable = []
    for j, spec in enumerate(specs):
        try:
            if spec.cfg.data.get("manifest"):
                read_manifest(str(spec.cfg.data.manifest))
            runnable.append(spec)
        except ConfigError as err:
            log.error("refused (no run folder written): %s", err)
            outcomes[j] = err
    index = [j for j in range(len(specs)) if outcomes[j] is None]
    expanded, manifests = _expand_manifests(runnable)
    results: list[Scores | BaseException] = [ValueError("not run")] * len(expanded)
    for group in group_compatible([s.cfg for s in expanded]):
        for i, out in zip(group, run_trials([expanded[i] for i in group])):
            results[i] = out
    owned = {i for _, members in manifests for i in members}
    plain = iter(r for i, r in enumerate(results) if i not in owned)
    by_spec = dict(manifests)
    for k, j in enumerate(index):
        spec = specs[j]
        if k in by_spec:
            names = [expanded[i].run_dir.name for i in by_spec[k]]
            outcomes[j] = manifest_outcome(spec, names, [results[i] for i in by_spec[k]])
        else:
            outcomes[j] = next(plain)
    return [o for o in outcomes if o is not None]


# ------------------------------------------------------------------------------------------- phases
def _start(trial: _Trial, concurrent: bool) -> None:
    """Checks (a refusal leaves no run folder), then status.json "running", config.yaml, the tracker."""
    spec = trial.spec
    with spec.scope(), _clock(trial):
        try:
            check_config(spec.cfg)  # nothing is loaded or written before this passes (evaluation.* included)
        except Exception as err:  # noqa: BLE001 - every failure of a check is a refusal
            drop_hydra_only_folder(spec.run_dir)
            log.error("refused (no run folder written): %s", err)
            trial.outcome = err
            return
        stored = record.complete_metrics(spec.run_dir, spec.cfg)
        if stored is not None:  # a rerun of a sweep: this trial's record is complete, nothing to redo
            record.mark_skipped(spec.run_dir)
            log.info(
                "skipped %s: its record is complete (status completed, metrics.json valid, same config)",
                spec.run_dir,
            )
            trial.outcome = Scores(stored)
            return
        trial.open = True
        try:
            record.start_run(spec.run_dir, spec.cfg, trial_number=spec.trial_number)
            trial.tracker = Tracker.from_config(spec.cfg, spec.run_dir, concurrent=concurrent)
        except Exception as err:  # noqa: BLE001 - e.g. a full disk: this trial fails, with its record
            _finish(trial, err)


def _invert_and_evaluate(trials: list[_Trial]) -> None:
    specs = [t.spec for t in trials]
    shares = [0.0] * len(trials)
    device = resolve_device(specs[0].cfg.get("device"))
    memory.reset_peak(device)
    try:
        results = train(
            [s.cfg for s in specs],
            [s.run_dir for s in specs],
            on_logs=[_both(s.on_log, t.tracker.on_log) for s, t in zip(specs, trials)],
            reports=[
                _both_reports(
                    quick_evaluation(s.cfg, s.run_dir, s.report) if s.report else None,
                    checkpoint_evaluation(s.cfg, s.run_dir),
                )
                for s in specs
            ],
            seconds=shares,
        )
    finally:
        for trial, share in zip(trials, shares):
            trial.seconds += share
    done: list[tuple[_Trial, InversionResult]] = []
    for trial, result in zip(trials, results):
        if isinstance(result, Exception):
            traceback.clear_frames(result.__traceback__)  # its frames would keep the trainers alive
            _finish(trial, result)
        else:
            done.append((trial, result))
    if len(done) == 1 and done[0][0].spec.cfg.inversion.pivotal.enabled:  # groups of one only (train)
        trial, result = done[0]
        with trial.spec.scope(), _clock(trial):
            pivotal_tune(
                trial.spec.cfg,
                result.trainer,
                trial.spec.run_dir,
                on_log=_both(trial.spec.on_log, trial.tracker.on_log),
            )
    training_peak = memory.peak_gib(device)  # the group's: the process trains its trials together
    for trial in trials:
        trial.peak_memory_gib = {"training": training_peak, "measured_by": memory.measured_by(device)}
    if done:
        _evaluate(done, group=len(trials))


def _evaluate(done: list[tuple[_Trial, InversionResult]], group: int) -> None:
    """Evaluate each trained trial on one sampling pipeline, then mark it completed (or failed)."""
    t0 = time.monotonic()
    cfg = done[0][0].spec.cfg
    ev = evaluation_settings(cfg.evaluation)
    device = resolve_device(cfg.get("device"))
    precision = evaluation_precision(ev["precision"], device)
    pivotal = bool(cfg.inversion.pivotal.enabled)
    gc.collect()  # the training step's last activations, before the phase's peak restarts
    memory.reset_peak(device)
    comps = done[0][1].trainer.comps
    reuse = reusable(comps, precision, device) and (ev["use_pivotal"] or not pivotal)
    if reuse:
        pipe = sampling_pipeline(comps, precision)
    else:  # free the trainer before the second copy of the model loads
        for _, result in done:
            result.trainer = None  # type: ignore[assignment]
        del comps
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        pipe = load_pipeline(
            str(cfg.model.pretrained), precision, str(device), config=cfg.model.get("config")
        )
        if pivotal and ev["use_pivotal"]:
            _apply_pivotal(pipe, done[0][0].spec.run_dir / "pivotal")
    setup = (time.monotonic() - t0) / len(done)
    for trial, result in done:
        trial.seconds += setup
        spec = trial.spec
        with spec.scope(), _clock(trial):
            try:
                metrics = _evaluate_one(pipe, spec, result, reuse, precision, device, group)
                trial.tracker.log_result(spec.run_dir, metrics)
                log.info("trial done: %s", spec.run_dir)
            except Exception as err:  # noqa: BLE001 - this trial only
                _finish(trial, err)
                continue
        trial.peak_memory_gib["evaluation"] = memory.peak_gib(device)  # since the group's evaluation began
        _finish(trial, None, Scores(metrics))


def _evaluate_one(
    pipe,
    spec: TrialSpec,
    result: InversionResult,
    reuse: bool,
    precision: str,
    device: torch.device,
    group: int,
) -> dict:
    """Evaluate one trial's embedding on the shared pipeline: its baked tokens when the pipeline is the
    trainer's and they carry the configured name, else its saved files loaded in (and unloaded after)."""
    ev = evaluation_settings(spec.cfg.evaluation)
    ev["precision"] = precision
    ev["dreambench"]["class_word"] = class_word(spec.cfg)
    extra = {
        "embedding": str(spec.run_dir),
        "num_vectors": int(result.vectors[0].shape[0]),
        "pivotal": _pivotal_mode(spec) if ev["use_pivotal"] else None,
        "vectorised_group": group,
        "stopped_at_step": result.stopped_at,  # inversion.early_stop's stop (None: trained every step)
    }
    evaluate = lambda token: evaluate_pipeline(  # noqa: E731 - one call, two ways to get the token
        pipe,
        token,
        ev,
        result.training_images,
        spec.run_dir,
        model=str(spec.cfg.model.pretrained),
        extra=extra,
        device=device,
    )
    if reuse and result.token == result.placeholder:
        return evaluate(result.token)
    loaded = load_embedding_file(spec.run_dir)
    token = load_into_pipeline(pipe, loaded)
    try:
        return evaluate(token)
    finally:
        for tokenizer, encoder in (
            (pipe.tokenizer, pipe.text_encoder),
            (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)),
        ):
            if tokenizer is not None:
                pipe.unload_textual_inversion(
                    tokens.placeholder_tokens(token, loaded.num_vectors),
                    tokenizer=tokenizer,
                    text_encoder=encoder,
                )


def _pivotal_mode(spec: TrialSpec) -> str | None:
    piv = spec.cfg.inversion.pivotal
    return str(piv.mode) if piv.enabled and (spec.run_dir / "pivotal").is_dir() else None


def reusable(comps: Components, precision: str, device: torch.device) -> bool:
    """Whether sampling at `precision` on `device` can use the training components as they are (or cast
    without loss: a fresh load casts the stored weights the same way)."""
    return comps.device == device and comps.dtype in (resolve_dtype(precision, device), torch.float32)


def sampling_pipeline(comps: Components, precision: str):
    """The evaluation pipeline over the training components, in the dtypes `load_pipeline` gives."""
    dtype = resolve_dtype(precision, comps.device)
    for encoder in comps.text_encoders:
        encoder.to(dtype)
    comps.unet.to(dtype)
    comps.vae.to(torch.float32 if dtype == torch.float16 else dtype)  # as load_pipeline: no fp16 VAE
    return pipeline_from_components(comps)


def _finish(trial: _Trial, error: BaseException | None, scores: Scores | None = None) -> None:
    """Record how the trial ended (a failure to record never hides the trial's own error)."""
    spec = trial.spec
    status = "completed" if error is None else outcome_status(error)
    trial.open, trial.outcome = False, error if error is not None else scores
    wall_time_s = round(trial.seconds, 3)
    with signals_deferred():
        try:
            record.finish_run(
                spec.run_dir,
                error,
                status=status,
                wall_time_s=wall_time_s,
                peak_memory_gib=_rounded(trial.peak_memory_gib),
            )
        except OSError as disk:
            log.error("%s: could not record status %r: %s", spec.run_dir, status, disk)
            if error is None:  # the result cannot be recorded: that is the trial's failure
                trial.outcome, status = disk, "failed"
        trial.tracker.finish(status, wall_time_s)


def _rounded(peaks: dict) -> dict | None:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in peaks.items()} or None


def outcome_status(error: BaseException) -> str:
    """The status.json value for a trial ended by `error`."""
    if is_interruption(error):
        return "interrupted"
    optuna = sys.modules.get("optuna")  # a TrialPruned can only come from an optuna already imported
    if optuna is not None and isinstance(error, optuna.TrialPruned):
        return "pruned"
    return "failed"


def drop_hydra_only_folder(run_dir: Path) -> None:
    """Bad input leaves no run folder behind: remove it if it holds only what Hydra wrote before the job."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and all(p.name in HYDRA_OWN or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def _clock(trial: _Trial) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        trial.seconds += time.monotonic() - t0


# ------------------------------------------------------------------------------------------ helpers
def quick_evaluation(cfg: DictConfig, run_dir: Path, report: Callable[..., None]) -> Callable:
    """For pruning: every `evaluation.quick.every` steps, measure the vectors as they are and report to Optuna.

    `evaluation.quick.objective=clip` (default): a few samples (no references, no CIs); reports its Scores
    (every metric by name), of which Optuna takes the study's objective. `denoising`: the
    early-stopping objective (training/early_stop.py: the denoising loss on a fixed batch, one forward pass,
    noise free; inversion.early_stop's batch and seed when set), reported as -loss so that higher is better
    like the similarities the study maximises. Values land in quick/step_<N>/metrics.json. With
    `hydra/sweeper/pruner=mo_halving` (sweeper/halving.py) it measures at the pruner's rungs instead, adding
    -denoising loss as the tie-break when the pruner breaks ties on it."""
    quick = cfg.evaluation.quick
    every, last = int(quick.every), int(cfg.inversion.steps)
    objectives: dict[int, DenoisingObjective] = {}
    # a rung-based pruner (sweeper.halving) says at which steps it decides, and whether it breaks ties on the
    # denoising objective; any other pruner is told every `evaluation.quick.every` steps
    rungs = set(report.steps(last)) if hasattr(report, "steps") else None
    tie_break = getattr(report, "tie_break", None) == "denoising"

    def denoising(step: int, trainer: Trainer) -> float:
        if id(trainer) not in objectives:
            objectives[id(trainer)] = DenoisingObjective(trainer, *early_stop.objective_settings(cfg))
        m = tokens.active_count(step - 1, trainer.k, cfg.inversion.progressive_every)
        return objectives[id(trainer)](trainer, m)

    def measure(step: int, trainer: Trainer) -> None:
        if (step not in rungs) if rungs is not None else (step % every and step != last):
            return
        if quick.objective == "denoising":  # the early-stopping objective, noise free
            loss = denoising(step, trainer)
            out = Path(run_dir) / "quick" / f"step_{step:06d}" / "metrics.json"
            atomic.write_json(
                out, {DENOISING_OBJECTIVE.name: loss, "intermediate_value": -loss, "step": step}
            )
            report(step, -loss)  # lower loss is better; the study maximises, so Optuna gets -loss
            return
        ev: dict = OmegaConf.to_container(cfg.evaluation, resolve=True)  # type: ignore[assignment]
        ev.update(
            num_samples=int(quick.num_samples),
            steps=int(quick.steps),
            references=False,
            bootstrap=1,
            progress=False,
        )
        ev["prompts"] = resolve_prompts(ev["prompts"])[: int(quick.max_prompts)]
        ev.pop("quick", None)
        ev["dreambench"] = {**ev["dreambench"], "enabled": False, "class_word": class_word(cfg)}
        metrics = evaluate_pipeline(
            pipeline_from_components(trainer.comps),
            str(trainer.cfg.inversion.placeholder),  # its name in this process (a group may rename it)
            ev,
            trainer.images,
            Path(run_dir) / "quick" / f"step_{step:06d}",
            model=str(cfg.model.pretrained),
            device=trainer.comps.device,
            announce=False,  # every few steps: the trial's phase lines stay its own
        )
        if tie_break:  # sweeper.halving's reporter: the denoising objective breaks ties within a front
            report(step, Scores(metrics), -denoising(step, trainer))
        else:
            report(step, Scores(metrics))

    return measure


AT_STEPS_DIR = "at_steps"  # <run>/at_steps/step_<N>/: evaluation.at_steps' evaluations


def checkpoint_evaluation(cfg: DictConfig, run_dir: Path) -> Callable | None:
    """`evaluation.at_steps`: at each of those steps below the last, evaluate the vectors as they are with the
    trial's own protocol (prompts, samples, sampler, seeds: the same noise as the final evaluation, so the points
    along a run share common random numbers), references off (they do not depend on the step). Each lands in
    at_steps/step_<N>/ (metrics.json with `step` and the evaluation's CPU and wall seconds); None when unset."""
    last = int(cfg.inversion.steps)
    steps = {int(s) for s in cfg.evaluation.get("at_steps") or [] if int(s) < last}
    if not steps:
        return None

    def measure(step: int, trainer: Trainer) -> None:
        if step not in steps:
            return
        ev: dict = OmegaConf.to_container(cfg.evaluation, resolve=True)  # type: ignore[assignment]
        # the training components' own precision (recorded as such: the final evaluation may load its own)
        precision = {v: k for k, v in PRECISIONS.items()}.get(trainer.comps.dtype, "fp32")
        ev.update(references=False, progress=False, precision=precision)
        ev["prompts"] = resolve_prompts(ev["prompts"])
        ev.pop("quick", None)
        ev["dreambench"] = {**ev["dreambench"], "class_word": class_word(cfg)}
        out = Path(run_dir) / AT_STEPS_DIR / f"step_{step:06d}"
        cpu, wall = time.process_time(), time.monotonic()
        metrics = evaluate_pipeline(
            pipeline_from_components(trainer.comps),
            str(trainer.cfg.inversion.placeholder),
            ev,
            trainer.images,
            out,
            model=str(cfg.model.pretrained),
            extra={"step": step},
            device=trainer.comps.device,
        )
        cost = {"evaluation_cpu_s": time.process_time() - cpu, "evaluation_wall_s": time.monotonic() - wall}
        atomic.write_json(out / "metrics.json", {**metrics, **cost})

    return measure


def _both_reports(a: Callable | None, b: Callable | None) -> Callable | None:
    """One per-row hook from two (the pruning report and the checkpoint evaluations); an exception (a pruned
    trial) from the first still ends the trial, after the second has measured this step."""
    if a is None or b is None:
        return a or b

    def call(step: int, trainer: Trainer) -> None:
        b(step, trainer)
        a(step, trainer)

    return call


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
    if current_trial_number() is not None:  # an Optuna sweep: the study's trial number
        return current_trial_number()
    try:
        hc = HydraConfig.get()
    except ValueError:  # not inside a Hydra job
        return None
    return int(hc.job.num) if hc.mode == RunMode.MULTIRUN else None


def _both(a: Callable | None, b: Callable) -> Callable:
    if a is None:
        return b

    def call(step: int, values: dict) -> None:
        a(step, values)
        b(step, values)

    return call
