"""Multi-objective asynchronous successive halving (`hydra/sweeper/pruner=mo_halving`), in the style of Syne
Tune's MOASHA (syne_tune/optimizer/schedulers/multiobjective/moasha.py, its "stopping" variant).

Optuna prunes single-objective studies only (`Trial.report` raises for several objectives), so the decision
is made here, in the trial's report hook (sweeper.search.report_hook), over what the study's storage holds:

- Rungs on training steps: `min_resource` x `reduction_factor`^k (100, 300, 900, ... by default), each below
  the trial's last step (a decision at the last step would only throw away a finished training).
- At a rung the trial's quick evaluation (evaluation.quick: the study's objectives, e.g. image and text
  similarity; the denoising objective as a tie-break when `tie_break=denoising`) is stored in the trial's user
  attr `rung_<step>`, and the trial is ranked against every trial of the study that reached that rung (the
  latest attempt of each retry chain): first by non-dominated sorting (front 0 = not dominated by any other,
  front 1 = dominated only by front 0, ...), then by the tie-break. It continues when fewer than
  ceil(n / reduction_factor) of the n trials at the rung rank strictly before it (the top 1/eta; the first
  arrivals always continue, as in ASHA); otherwise it is pruned (optuna.TrialPruned).
- Each decision is written to the run folder, `quick/step_<N>/rung.json`, beside the quick evaluation's
  metrics.json.

Asynchronous: no trial waits for others; every decision uses what the storage holds at that moment, so it
works the same for the asynchronous slots, SLURM jobs (their report hook reaches the same storage) and the
vectorised launcher (each trial of a group decides on its own).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from sweeper.store.atomic import write_json

RUNG_ATTR = "rung_{step}"  # user attr: [objective values..., tie-break or null] at that rung


class MOHalvingPruner(optuna.pruners.BasePruner):
    """Settings of multi-objective successive halving; the decisions are `reporter`'s (module doc)."""

    def __init__(
        self, min_resource: int = 100, reduction_factor: int = 3, tie_break: str | None = "denoising"
    ):
        if int(min_resource) < 1 or int(reduction_factor) < 2:
            raise ValueError(
                f"hydra.sweeper.pruner: min_resource >= 1 and reduction_factor >= 2 needed, got "
                f"{min_resource}, {reduction_factor}"
            )
        if tie_break not in (None, "denoising"):
            raise ValueError(f"hydra.sweeper.pruner.tie_break: denoising or null, got {tie_break!r}")
        self.min_resource, self.reduction_factor = int(min_resource), int(reduction_factor)
        self.tie_break = tie_break

    def prune(self, study: optuna.Study, trial: Any) -> bool:
        return False  # Optuna's own path (single-objective Trial.report) is not used: see reporter

    def rungs(self, last: int) -> list[int]:
        """Rung steps below the trial's last step."""
        out, step = [], self.min_resource
        while step < last:
            out.append(step)
            step *= self.reduction_factor
        return out

    def reporter(
        self,
        study: optuna.Study,
        trial_id: int,
        run_dir: Path,
        names: Sequence[str] | None,
        positions: Sequence[int],
        signs: Sequence[float],
    ) -> Callable[..., None]:
        """report(step, scores, tie=None) for one trial: scores = the quick evaluation's (a Scores, whose
        `names` objectives are the study's; else its values at `positions`), tie = -denoising loss (the
        tie-break, when asked for); `signs` make each objective "higher is better"."""
        from sweeper.evaluation.metrics import objective_values

        pruner = self

        def report(step: int, values: Any, tie: float | None = None) -> None:
            if names:
                raw = objective_values(values, names)
            else:
                flat = [float(v) for v in (values if isinstance(values, (tuple, list)) else [values])]
                raw = [flat[i] for i in positions]
            scores = [s * v for v, s in zip(raw, signs)]
            tie = float(tie) if pruner.tie_break and tie is not None else None
            storage = study._storage
            storage.set_trial_user_attr(trial_id, RUNG_ATTR.format(step=step), [*scores, tie])
            me = storage.get_trial(trial_id)
            points, ties, mine = rung_entries(study, step, me)
            decision = pruner.decide(points, ties, mine)
            rung = pruner.rungs(step + 1).index(step) if step in pruner.rungs(step + 1) else None
            decision.update(rung=rung, step=step, scores=scores, tie_break=tie, trial=me.number)
            write_json(Path(run_dir) / "quick" / f"step_{step:06d}" / "rung.json", decision)
            if not decision["continued"]:
                raise optuna.TrialPruned(
                    f"pruned at step {step}: position {decision['position']} of {decision['at_rung']} at the "
                    f"rung (top {decision['keep']} continue; non-dominated sorting of {scores})"
                )

        report.steps = self.rungs  # type: ignore[attr-defined]  # where the quick evaluation is wanted
        report.tie_break = self.tie_break  # type: ignore[attr-defined]
        return report

    def decide(self, points: np.ndarray, ties: np.ndarray, mine: int) -> dict:
        """Rank entry `mine` among the rung's `points` (n x d, higher is better) and `ties` (NaN = none)."""
        n = len(points)
        ranks = nondominated_ranks(points)
        tie = np.where(np.isfinite(ties), ties, -np.inf)
        before = int(np.sum((ranks < ranks[mine]) | ((ranks == ranks[mine]) & (tie > tie[mine]))))
        keep = math.ceil(n / self.reduction_factor)
        return {
            "front": int(ranks[mine]),
            "position": before,
            "at_rung": n,
            "keep": keep,
            "continued": before < keep,
        }


def rung_entries(study: optuna.Study, step: int, me: Any) -> tuple[np.ndarray, np.ndarray, int]:
    """The rung's entries (scores, tie-breaks) over the study: the latest attempt of each retry chain; the
    index of `me`'s."""
    key = RUNG_ATTR.format(step=step)
    latest: dict[int, Any] = {}
    for t in study.get_trials(deepcopy=False):
        if key in t.user_attrs or t.number == me.number:
            root = int(t.system_attrs.get("failed_trial", t.number))
            if root not in latest or t.number > latest[root].number:
                latest[root] = t
    root_me = int(me.system_attrs.get("failed_trial", me.number))
    latest[root_me] = me
    roots = sorted(latest)
    rows = [latest[r].user_attrs[key] for r in roots]
    points = np.array([row[:-1] for row in rows], dtype=float)
    ties = np.array([np.nan if row[-1] is None else row[-1] for row in rows], dtype=float)
    return points, ties, roots.index(root_me)


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Front index of each point (all objectives maximised): 0 = dominated by none, 1 = only by front 0, ..."""
    p = np.nan_to_num(np.asarray(points, dtype=float), nan=-np.inf)  # a failed evaluation ranks last
    ranks = np.full(len(p), -1)
    left = np.arange(len(p))
    front = 0
    while len(left):
        sub = p[left]
        dominated = np.array(
            [bool(np.any(np.all(sub >= q, axis=1) & np.any(sub > q, axis=1))) for q in sub], dtype=bool
        )
        ranks[left[~dominated]] = front
        left = left[dominated]
        front += 1
    return ranks
