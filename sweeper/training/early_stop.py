"""Early stopping of an inversion on a deterministic objective (DVAR: Voronov et al. 2023, arXiv 2302.04841).

The objective is the denoising loss of the current vectors on ONE fixed batch: images, flips, templates,
latent samples, noise and timesteps all drawn once, when the trial starts, from a generator of its own
(`inversion.early_stop.seed`), never from the trainer's. So it is the same number for the same vectors
every time it is computed, and measuring it changes nothing in training: a run with early stopping follows
the same trajectory as one without, up to the step where it stops. It is evaluated without gradients every
`every` steps (and once at step 0).

The criterion is DVAR's: with the objective's values so far v_0 .. v_n, stop when n + 1 >= `window` and

    var(last `window` values) / var(all values) < `threshold`

i.e. when the objective has stopped moving compared with how much it moved since the start. The value
at step 0 (the init vectors) is one of "all values" here; DVAR's code first measures after the first step.
On the world (BENCHMARKS.md, 48 pairs, window 20 every 10 steps) the first steps' drop dominated var(all), so
most trials stopped at or near the earliest step the window allows (every x (window - 1) = 190; 262 on average,
against 1000); a longer window makes that earliest step later. The ratio is scale free, so one threshold suits
models whose losses differ in size. A value just below 1 stops as soon as the window is full.

What DVAR measured (yandex-research/DVAR, its textual-inversion setting): a window of 310 evaluations, one per
step, threshold 0.15, against a 6100-step baseline; its 8-15x is a training-time ratio (evaluation runs after
the clock stops). The default window (`window: null`) is that window scaled to the budget: the same 310/6100 of
`inversion.steps`, in evaluations every `every` steps (at least 3): 5 at 1000 steps, 25 at 5000 (every 10).
A criterion that cannot act is warned about before any model work (sweeper/checks.py: `every x (window - 1)`,
its earliest stop, at or past `inversion.steps`).

The same objective is offered to Optuna as the intermediate value for pruning
(`evaluation.quick.objective=denoising`, sweeper/trial.py): cheap (one forward pass) and noise free.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import DictConfig

from sweeper.config.schema import EarlyStopConfig, early_stop_window
from sweeper.data.images import Example, PromptSampler
from sweeper.models import Components
from sweeper.training import tokens


class Trainer(Protocol):
    """What the objective needs of a trainer (sweeper/training/inversion.py's Trainer, which imports this
    module: this one does not import it back)."""

    cfg: Any
    comps: Components
    k: int
    sampler: PromptSampler
    cache: Any  # inversion.LatentCache: .sample(index, generator)
    noise_scheduler: Any

    def prompts(self, examples: list[Example], m: int) -> list[str]: ...

    def loss(self, draw: dict) -> tuple[torch.Tensor, torch.Tensor]: ...


_KEYS = tuple(f.name for f in dataclasses.fields(EarlyStopConfig))


def settings(cfg: DictConfig) -> EarlyStopConfig:
    """`inversion.early_stop` as the schema's dataclass (sweeper/config/schema.py), whose defaults fill
    the keys a config composed without the schema lacks."""
    node: Any = cfg.inversion.get("early_stop") or {}
    if isinstance(node, EarlyStopConfig):
        return node
    return EarlyStopConfig(**{k: node[k] for k in node if k in _KEYS})


def criterion(cfg: DictConfig) -> EarlyStopConfig | None:
    """`inversion.early_stop` when it is on (its window resolved: schema.early_stop_window), else None. Its
    ranges are the schema's, checked before this."""
    stop = settings(cfg)
    if not stop.enabled:
        return None
    return dataclasses.replace(stop, window=early_stop_window(stop, int(cfg.inversion.steps)))


def objective_settings(cfg: DictConfig) -> tuple[int, int]:
    """(batch, seed) of the objective: inversion.early_stop's, whether or not stopping is enabled."""
    stop = settings(cfg)
    return int(stop.batch), int(stop.seed)


class DenoisingObjective:
    """The denoising loss of a trainer's current vectors on one batch fixed at construction."""

    def __init__(self, trainer: Trainer, batch: int, seed: int):
        gen = torch.Generator().manual_seed(int(seed))
        self.examples = trainer.sampler.sample(int(batch), gen)
        latents = trainer.cache.sample([2 * ex.image_index + int(ex.flip) for ex in self.examples], gen)
        device = trainer.comps.device
        noise = torch.randn(latents.shape, generator=gen).to(device)
        sched = trainer.noise_scheduler
        self.t = torch.randint(0, sched.config.num_train_timesteps, (len(self.examples),), generator=gen).to(
            device
        )
        self.noisy = sched.add_noise(latents, noise, self.t)
        kind = sched.config.prediction_type
        target = {"epsilon": noise, "sample": latents}.get(kind)
        self.target = target if target is not None else sched.get_velocity(latents, noise, self.t)

    @torch.no_grad()
    def __call__(self, trainer: Trainer, m: int) -> float:
        """The loss with the first m concept vectors active (the prompts the trainer uses at m)."""
        draw = {
            "noisy": self.noisy,
            "t": self.t,
            "target": self.target,
            "prompts": trainer.prompts(self.examples, m),
        }
        loss, _ = trainer.loss(draw)
        return float(loss)


class EarlyStop:
    """One trial's early stopping: the objective's values so far and the step it stopped at."""

    def __init__(self, crit: EarlyStopConfig, trainer: Trainer):
        assert crit.window is not None, "criterion() resolves the window"
        self.crit, self.trainer, self.window = crit, trainer, int(crit.window)
        self.objective = DenoisingObjective(trainer, crit.batch, crit.seed)
        self.values: list[tuple[int, float]] = []  # (step, objective)
        self.stopped_at: int | None = None
        self.measure(0)

    def active_vectors(self, done: int) -> int:
        inv = self.trainer.cfg.inversion
        return tokens.active_count(max(done - 1, 0), self.trainer.k, inv.progressive_every)

    def measure(self, done: int) -> float:
        value = self.objective(self.trainer, self.active_vectors(done))
        self.values.append((done, value))
        return value

    def variance_ratio(self) -> float:
        """var(last window) / var(all values); 1.0 until the window is full (or when nothing moved)."""
        values = np.array([v for _, v in self.values])
        total = values.var()
        if len(values) < self.window or total == 0:
            return 1.0
        return float(values[-self.window :].var() / total)

    def after_step(self, done: int) -> bool:
        """Measure when due; True when the criterion says stop (recorded in `stopped_at`)."""
        if self.stopped_at is not None:
            return True
        if done % self.crit.every:
            return False
        self.measure(done)
        if len(self.values) >= self.window and self.variance_ratio() < self.crit.threshold:
            self.stopped_at = done
            return True
        return False

    def row(self) -> dict[str, float]:
        """history.csv / W&B columns: the latest objective value and the variance ratio."""
        return {"objective": self.values[-1][1], "objective_var_ratio": self.variance_ratio()}

    # --------------------------------------------------------------------------------- checkpoint
    def state_dict(self) -> dict:
        c = self.crit
        return {
            "objective": [c.batch, c.seed, c.every],
            "values": [[s, v] for s, v in self.values],
            "stopped_at": -1 if self.stopped_at is None else self.stopped_at,
        }

    def load_state_dict(self, state: dict | None, step: int) -> None:
        """Restore the values measured up to `step` (the checkpoint's). A checkpoint without early-stop state,
        or of another objective (batch, seed, every), keeps this run's fresh values: the objective is then
        measured from here on, and the window fills again."""
        c = self.crit
        if not state or list(state["objective"]) != [c.batch, c.seed, c.every]:
            self.values = [(step, self.objective(self.trainer, self.active_vectors(step)))]
            return
        self.values = [(int(s), float(v)) for s, v in state["values"] if int(s) <= step]
        stopped = int(state["stopped_at"])
        self.stopped_at = stopped if 0 <= stopped <= step else None
