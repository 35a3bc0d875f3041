"""Vectorised trials: N compatible inversions in one process, one batched UNet forward/backward per step.

    results = invert_vectorised(cfgs, run_dirs)          # N trials of the same model and concept
    scores  = run_trials(cfgs, run_dirs)                  # the same, plus evaluation and the run folders

Compatible = same model, precision, device, concept folder and data.property, and no pivotal tuning
(`compatibility_key`). Everything else is per trial: LR, reg weight, vector count, progressive
schedule, per-image tokens, seed, batch size, grad accumulation, steps, image subset.

How: every trial is a `sweeper.inversion.Trainer` on the SAME components. Each adds its own
placeholder tokens to the shared tokenizer (renamed "<concept>#i" inside the process when trials
share a name; the files carry the configured name) and splices its own fp32 vectors into the shared
embedding output. A step draws each trial's examples, latents, noise and timesteps from that trial's
own generator through `Trainer.draw` (the single trainer's own draws, in its order), concatenates
the trials' batches along the batch dimension for one text-encoder and one UNet call, and splits the prediction back into one
loss per trial. Batch elements never interact in these models (GroupNorm and attention are
per-sample), and the trials' parameters are disjoint, so each trial's gradient, optimizer step and
final embedding equal those of running it alone, up to floating-point summation order (tested).
Checkpoints are the single trainer's, so a vectorised run resumes alone or in a group alike.

A trial of the group ends alone, as it would alone: a non-finite loss (FloatingPointError), or an
Optuna pruner stopping it after a quick evaluation, fails or prunes that trial and drops it from the
batch; the others go on unchanged (tested). Each trial has its own W&B run (tracking config).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sweeper import tokens
from sweeper.checkpoints import (
    CHECKPOINTS,
    ResumeError,
    fingerprint,
    latest_checkpoint,
    read_history,
    save_checkpoint,
    write_history,
)
from sweeper.checks import select_images
from sweeper.inversion import InversionResult, Trainer
from sweeper.models import Components, load_components

log = logging.getLogger(__name__)


class IncompatibleTrials(ValueError):
    """Trials that cannot share one batched UNet call."""


def compatibility_key(cfg: DictConfig) -> tuple:
    """Trials with equal keys can run vectorised together."""
    piv = cfg.inversion.get("pivotal")
    return (
        str(cfg.model.pretrained),
        str(cfg.model.get("config")),
        str(cfg.inversion.precision),
        str(cfg.get("device", "auto")),
        str(Path(str(cfg.data.images)).expanduser().resolve()),
        str(cfg.data.property),
        bool(piv is not None and piv.get("enabled")),
    )


def group_compatible(cfgs: list[DictConfig], max_group: int | None = None) -> list[list[int]]:
    """Indices of `cfgs` grouped by compatibility_key (pivotal trials alone), in first-seen order."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, cfg in enumerate(cfgs):
        key = compatibility_key(cfg)
        groups[key if not key[-1] else (i,)].append(i)
    out = []
    for members in groups.values():
        size = max_group or len(members)
        out.extend(members[j : j + size] for j in range(0, len(members), size))
    return out


def _in_process_cfg(cfg: DictConfig, placeholder: str) -> DictConfig:
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.inversion.placeholder = placeholder
    return cfg


class VectorisedTrainer:
    """N trainers sharing components; `step(active, ms)` is one optimizer step of each active trial."""

    def __init__(self, cfgs: list[DictConfig], comps: Components, images: list[list[Path]]):
        if not cfgs:
            raise IncompatibleTrials("no trials given")
        keys = {compatibility_key(c) for c in cfgs}
        if len(keys) > 1:
            raise IncompatibleTrials(
                f"trials differ in model/precision/device/data.images/data.property: {sorted(keys)}"
            )
        if next(iter(keys))[-1]:
            raise IncompatibleTrials("inversion.pivotal.enabled trials fine-tune the UNet: run them alone")
        names = [str(c.inversion.placeholder) for c in cfgs]
        clash = len(set(names)) < len(names)
        self.placeholders = names
        self.trainers = [
            Trainer(_in_process_cfg(c, f"{n}#{i}") if clash else c, comps, imgs)
            for i, (c, n, imgs) in enumerate(zip(cfgs, names, images))
        ]
        # A trainer sized its token lookup when it was built; later trainers grew the vocabulary.
        for t in self.trainers:
            for s in t.splices:
                grow = s.embedding.num_embeddings - s.lookup.numel()
                if grow > 0:
                    s.lookup = torch.cat([s.lookup, s.lookup.new_full((grow,), -1)])
        self.comps = comps

    def step(self, active: list[int], ms: list[int]) -> dict[int, dict]:
        """One optimizer step of each trial in `active` (m = its active vector count); returns its logs."""
        comps, unet = self.comps, self.comps.unet
        accums = {i: int(self.trainers[i].cfg.inversion.grad_accum) for i in active}
        used = {i: [] for i in active}
        totals = dict.fromkeys(active, 0.0)
        for a in range(max(accums.values())):
            now = [i for i in active if a < accums[i]]
            draws = [self.trainers[i].draw(m) for i, m in zip(active, ms) if i in now]
            with torch.autocast(comps.device.type, dtype=comps.dtype, enabled=comps.dtype != torch.float32):
                hidden, added, ids = self.trainers[0].encode_prompts([p for d in draws for p in d["prompts"]])
                noisy = torch.cat([d["noisy"] for d in draws]).to(unet.dtype)
                pred = (
                    self.trainers[0]
                    .unet(
                        noisy,
                        torch.cat([d["t"] for d in draws]),
                        hidden.to(unet.dtype),
                        added_cond_kwargs=added,
                    )
                    .sample
                )
            objective, start = 0.0, 0
            for i, d in zip(now, draws):
                t, inv, sl = (
                    self.trainers[i],
                    self.trainers[i].cfg.inversion,
                    slice(start, start + len(d["t"])),
                )
                start = sl.stop
                m = ms[active.index(i)]
                loss = F.mse_loss(pred[sl].float(), d["target"].float())
                obj = loss + float(inv.reg_weight) * t.reg_loss(m) if inv.reg_weight else loss
                objective = objective + t.scaler.scale(obj / accums[i])
                used[i].append(ids[sl].unique().cpu())
                totals[i] += loss.item() / accums[i]
            objective.backward()
        return {i: self.trainers[i].apply_step(torch.cat(used[i]), totals[i]) for i in active}


def invert_vectorised(
    cfgs: list[DictConfig],
    run_dirs: list[Path],
    *,
    components: Components | None = None,
    on_logs: list[Callable[[int, dict], None] | None] | None = None,
    reports: list[Callable[[int, Trainer], None] | None] | None = None,
) -> list[InversionResult | Exception]:
    """`inversion.invert` for N compatible trials at once: history, checkpoints, embedding files per run.

    `on_logs[i]` / `reports[i]` are trial i's `invert` callbacks (W&B curves; pruning). Entry i of the
    result is trial i's InversionResult, or the exception that ended it alone (non-finite loss, pruned,
    a failing callback); such a trial writes no embedding file, like `invert` raising.
    """
    from sweeper.embeddings_io import save_learned_embeds

    if len(cfgs) != len(run_dirs):
        raise ValueError(f"{len(cfgs)} configs but {len(run_dirs)} run folders")
    run_dirs = [Path(r) for r in run_dirs]
    images = [select_images(c.data) for c in cfgs]
    first = cfgs[0]
    comps = components or load_components(
        first.model.pretrained,
        first.inversion.precision,
        first.get("device", "auto"),
        config=first.model.get("config"),
    )
    vt = VectorisedTrainer(cfgs, comps, images)
    n = len(cfgs)
    steps = [int(c.inversion.steps) for c in cfgs]
    fps = [fingerprint(c) for c in cfgs]
    starts, windows, rows, resumed = [0] * n, [[] for _ in cfgs], [], [None] * n
    for i, (run_dir, t) in enumerate(zip(run_dirs, vt.trainers)):
        ckpt = latest_checkpoint(run_dir, steps[i])
        if ckpt is not None:
            state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
            if state["fingerprint"] != fps[i]:
                raise ResumeError(
                    f"{ckpt}: checkpoint was made with a different config; "
                    f"use a new run folder or delete {run_dir / CHECKPOINTS}"
                )
            t.load_state_dict(state)
            starts[i], windows[i], resumed[i] = (
                int(state["step"]),
                list(state["loss_window"]),
                int(state["step"]),
            )
        rows.append(read_history(run_dir, starts[i]))
    log.info("vectorised: %d trials, steps %s", n, steps)
    on_logs, reports = on_logs or [None] * n, reports or [None] * n
    errors: list[Exception | None] = [None] * n
    bad = [0] * n  # consecutive non-finite losses per trial

    bar = tqdm(
        range(min(starts), max(steps)),
        initial=min(starts),
        total=max(steps),
        desc=f"inversion x{n}",
        dynamic_ncols=True,
        mininterval=1,
    )
    for step in bar:
        active = [i for i in range(n) if errors[i] is None and starts[i] <= step < steps[i]]
        if not active:
            continue
        ms = [
            tokens.active_count(step, vt.trainers[i].k, cfgs[i].inversion.progressive_every) for i in active
        ]
        outs = vt.step(active, ms)
        done = step + 1
        for i, m in zip(active, ms):
            inv, t = cfgs[i].inversion, vt.trainers[i]
            try:
                bad[i] = t.count_non_finite(outs[i]["loss"], bad[i], done)  # the rule of `invert`
            except FloatingPointError as err:
                errors[i] = err
                log.warning("vectorised trial %d stopped: %s", i, err)
                continue
            windows[i].append(outs[i]["loss"])
            if done % int(inv.log_every) == 0 or done == steps[i]:
                row = {"step": done, "loss": float(np.mean(windows[i])), "lr": t.lr, **t.distances()}
                rows[i].append(row)
                write_history(run_dirs[i], rows[i])
                windows[i] = []
                try:
                    if on_logs[i] is not None:
                        on_logs[i](done, dict(row, active_vectors=m))
                    if reports[i] is not None:
                        reports[i](done, t)
                except Exception as err:  # noqa: BLE001 - pruned (optuna.TrialPruned) or failed: this trial only
                    errors[i] = err
                    log.info(
                        "vectorised trial %d stopped at step %d: %s: %s", i, done, type(err).__name__, err
                    )
                    continue
            every = int(inv.checkpoint_every or 0)
            if every and (done % every == 0 or done == steps[i]):
                save_checkpoint(run_dirs[i], t, done, fps[i], windows[i])
    bar.close()

    results: list[InversionResult | Exception] = []
    for i, (cfg, t) in enumerate(zip(cfgs, vt.trainers)):
        if errors[i] is not None:
            results.append(errors[i])
            continue
        name = vt.placeholders[i]
        vectors = [s.vectors()[: t.k].cpu() for s in t.splices]
        per_image = None
        if t.image_tokens:
            per_image = {
                tok: [s.vectors()[t.k + j : t.k + j + 1].cpu() for s in t.splices]
                for j, tok in enumerate(tokens.image_tokens(name, len(images[i])))
            }
        meta = {
            "model": str(cfg.model.pretrained),
            "init_word": str(cfg.inversion.init_word),
            "steps": str(steps[i]),
            "tokens": " ".join(tokens.placeholder_tokens(name, t.k)),
            "vectorised": str(n),
        }
        paths = save_learned_embeds(run_dirs[i], name, vectors, per_image, meta)
        results.append(InversionResult(t, name, vectors, per_image, paths, images[i], t.lr, resumed[i]))
    return results


def run_trials(
    cfgs: list[DictConfig],
    run_dirs: list[Path],
    trial_numbers: list[int | None] | None = None,
    reports: list[Callable[[int, float | tuple[float, float]], None] | None] | None = None,
) -> list[tuple[float, float] | BaseException]:
    """`trial.run_trial` for N compatible trials: checks, one vectorised inversion, evaluation on one pipeline.

    Returns one entry per trial: its (image_similarity, text_similarity), or the exception that failed it
    (a bad config, a non-finite loss or a pruner stops only its own trial; a failing group inversion
    fails every trial of the group). `reports[i]` is trial i's Optuna report hook (search.report_hook):
    the trial is then quick-evaluated for pruning exactly as `run_trial` does. Each run folder ends as
    `run_trial` leaves it (config.yaml, status.json, history.csv, embeddings, metrics.json, samples/),
    and each trial has its own W&B run.
    """
    from sweeper import record
    from sweeper.checks import check_config
    from sweeper.config import evaluation_settings as check_evaluation
    from sweeper.embeddings_io import load_embedding_file, load_into_pipeline
    from sweeper.evaluation import evaluate_pipeline
    from sweeper.models import load_pipeline, resolve_device
    from sweeper.tracking import Tracker
    from sweeper.trial import quick_evaluation

    run_dirs = [Path(r) for r in run_dirs]
    numbers = trial_numbers or [None] * len(cfgs)
    reports = reports or [None] * len(cfgs)
    out: list = [None] * len(cfgs)
    ok = []
    for i, cfg in enumerate(cfgs):
        try:
            check_config(cfg)
            check_evaluation(cfg.evaluation)
            ok.append(i)
        except Exception as err:  # noqa: BLE001 - recorded for this trial only
            out[i] = err
        record.start_run(run_dirs[i], cfg, trial_number=numbers[i])
        if out[i] is not None:
            record.finish_run(run_dirs[i], out[i])
    trackers = {i: Tracker.from_config(cfgs[i], run_dirs[i], concurrent=True) for i in ok}

    def fail(i: int, err: BaseException) -> None:
        record.finish_run(run_dirs[i], err)
        trackers[i].finish("failed")
        out[i] = err

    try:
        results = invert_vectorised(
            [cfgs[i] for i in ok],
            [run_dirs[i] for i in ok],
            on_logs=[trackers[i].on_log for i in ok],
            reports=[quick_evaluation(cfgs[i], run_dirs[i], reports[i]) if reports[i] else None for i in ok],
        )
    except Exception as err:  # noqa: BLE001
        for i in ok:
            fail(i, err)
        return out
    inverted = dict(zip(ok, results))
    for i, result in inverted.items():
        if isinstance(result, Exception):
            fail(i, result)
    ok = [i for i in ok if out[i] is None]
    if not ok:
        return out
    ev = check_evaluation(cfgs[ok[0]].evaluation)
    device = resolve_device(cfgs[ok[0]].get("device"))
    precision = (
        ev["precision"] if ev["precision"] != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    )
    pipe = load_pipeline(
        str(cfgs[ok[0]].model.pretrained),
        precision,
        str(device),  # once for the group
        config=cfgs[ok[0]].model.get("config"),
    )
    for i in ok:
        result = inverted[i]
        try:
            ev_i = check_evaluation(cfgs[i].evaluation)
            ev_i["precision"] = precision
            loaded = load_embedding_file(run_dirs[i])
            token = load_into_pipeline(pipe, loaded)
            try:
                metrics = evaluate_pipeline(
                    pipe,
                    token,
                    ev_i,
                    result.training_images,
                    run_dirs[i],
                    model=str(cfgs[i].model.pretrained),
                    extra={
                        "embedding": str(run_dirs[i]),
                        "num_vectors": loaded.num_vectors,
                        "vectorised_group": len(results),
                    },
                    device=device,
                )
            finally:
                for tok, enc in (
                    (pipe.tokenizer, pipe.text_encoder),
                    (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)),
                ):
                    if tok is not None:
                        pipe.unload_textual_inversion(
                            tokens.placeholder_tokens(token, loaded.num_vectors),
                            tokenizer=tok,
                            text_encoder=enc,
                        )
            out[i] = (metrics["image_similarity"], metrics["text_similarity"])
            trackers[i].log_result(run_dirs[i], metrics)
            record.finish_run(run_dirs[i])
            trackers[i].finish("completed")
        except Exception as err:  # noqa: BLE001
            fail(i, err)
    return out
