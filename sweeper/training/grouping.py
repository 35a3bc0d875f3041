"""Which trials can train together as one vectorised group (`hydra/launcher=vectorised`).

Compatible = same model, precision, device and data.property, and no pivotal tuning (`compatibility_key`).
Everything else is per trial: the concept (each trainer caches its own images' latents), LR, reg weight, vector
count, progressive schedule, per-image tokens, seed, batch size, grad accumulation, steps, image subset.

A group trains through the one training loop (`sweeper.training.inversion.train` over a `TrainerGroup`: one batched
text-encoder and UNet call per step) and runs the one trial lifecycle (`sweeper.trial.run_trials`); a lone
trial is a group of one. Each trial of a group ends with the vectors it would have had alone, up to
floating-point summation order (tests/test_vectorised.py).
"""

from __future__ import annotations

from collections import defaultdict

from omegaconf import DictConfig


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
        str(cfg.data.property),
        bool(piv is not None and piv.get("enabled")),
    )


def check_compatible(cfgs: list[DictConfig]) -> None:
    """Raise IncompatibleTrials unless `cfgs` (one or more) can train as one group."""
    if not cfgs:
        raise IncompatibleTrials("no trials given")
    keys = {compatibility_key(c) for c in cfgs}
    if len(keys) > 1:
        raise IncompatibleTrials(f"trials differ in model/precision/device/data.property: {sorted(keys)}")
    if len(cfgs) > 1 and next(iter(keys))[-1]:
        raise IncompatibleTrials("inversion.pivotal.enabled trials fine-tune the UNet: run them alone")


def group_compatible(cfgs: list[DictConfig], max_group: int | None = None) -> list[list[int]]:
    """Indices of `cfgs` grouped by compatibility_key (pivotal trials alone), in first-seen order."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, cfg in enumerate(cfgs):
        key = compatibility_key(cfg)
        groups[key if not key[-1] else (i,)].append(i)
    out: list[list[int]] = []
    for members in groups.values():
        size = max_group or len(members)
        out.extend(members[j : j + size] for j in range(0, len(members), size))
    return out
