"""The 2-D hypervolume of a sweep's front (image similarity x text similarity, both maximised) and its growth
with the compute the sweep spent.

The hypervolume is the area that the front of configuration means over seeds (single noisy runs would bias it
upward) dominates above a reference point. The reference point is fixed before any run: either given
(`python -m analysis --hv-reference IMAGE,TEXT`) or, by default, the worse value of each objective over the
two reference points every evaluation records ("image only": the training set against itself; "prompt only":
the prompts without S*). Those depend on the concept's images, the prompts, the model and the judge, never on
a configuration's outcome, so no run of the sweep moves it. Per concept each reference is the median over the
runs that recorded it; over several concepts ("all") the worse value over the concepts. The reference used is
written beside the value (hypervolume.csv, findings.csv, the report).

Checkpoints as front points: a run evaluated at chosen steps (evaluation.at_steps) gives one point per step;
`hypervolume_with_checkpoints` counts each (configuration, step) as a configuration of its own (means over
seeds), so the front may hold a configuration at fewer steps than its budget.

Cheap first, then confirm: runs of `python -m sweeper.confirm` (load's `confirmed` column) give
`hypervolume_confirmed`, the front of the confirmed runs alone: the final front's.

Compute = each run's `wall_time_s` from status.json (its training and evaluation, its share of a vectorised
group), summed over every run that ended (completed, pruned, failed) in the order the runs finished.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis.load import completed, natural_key
from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

OBJECTIVES = DEFAULT_OBJECTIVES  # the metric registry's tradeoff plane (image, text similarity)
REFERENCE_KEYS = ("image_only", "prompt_only")
HYPERVOLUME_COLUMNS = [
    "concept",
    "hypervolume",
    "hypervolume_with_checkpoints",
    "hypervolume_confirmed",
    "reference_image",
    "reference_text",
    "reference_source",
    "configurations",
    "front_configurations",
]


def hypervolume_2d(points, reference) -> float:
    """Area dominated by `points` (N x 2, both objectives maximised) and dominating `reference` (2,).

    Points not strictly better than the reference on both objectives, and non-finite points, add nothing."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    rx, ry = (float(v) for v in np.asarray(reference, dtype=float).reshape(2))
    p = p[np.isfinite(p).all(axis=1) & (p[:, 0] > rx) & (p[:, 1] > ry)]
    area, best_y = 0.0, ry
    for x, y in p[np.lexsort((-p[:, 1], -p[:, 0]))]:  # x descending: each new y above the best adds a slab
        if y > best_y:
            area += (x - rx) * (y - best_y)
            best_y = y
    return float(area)


@dataclass(frozen=True)
class Reference:
    image: float
    text: float
    source: str  # "given" or what it was derived from

    @property
    def point(self) -> tuple[float, float]:
        return (self.image, self.text)


def reference_point(df: pd.DataFrame, given: tuple[float, float] | None = None) -> dict[str, Reference]:
    """The reference point per concept (and "all" over several), `given` for every scope when set; a scope
    whose runs recorded no reference points has none (its hypervolume is not computed)."""
    done = completed(df)
    concepts = sorted(done["concept"].unique(), key=natural_key)
    scopes = concepts + (["all"] if len(concepts) > 1 else [])
    if given is not None:
        return {c: Reference(float(given[0]), float(given[1]), "given") for c in scopes}
    refs: dict[str, Reference] = {}
    for concept in concepts:
        sub = done[done["concept"] == concept]
        worst = []
        for obj in OBJECTIVES:
            values = [
                float(pd.to_numeric(sub[col], errors="coerce").median())
                for key in REFERENCE_KEYS
                if (col := f"ref.{key}.{obj}") in sub
            ]
            worst.append(min(values) if len(values) == len(REFERENCE_KEYS) else math.nan)
        if all(math.isfinite(v) for v in worst):
            refs[concept] = Reference(worst[0], worst[1], "worse of image only / prompt only")
    if len(concepts) > 1 and len(refs) == len(concepts):
        refs["all"] = Reference(
            min(r.image for r in refs.values()),
            min(r.text for r in refs.values()),
            "worse of image only / prompt only over the concepts",
        )
    return refs


def configuration_means(done: pd.DataFrame) -> pd.DataFrame:
    """Mean of each objective per configuration (over seeds, and concepts when several are in `done`)."""
    return done.groupby("configuration", sort=False)[list(OBJECTIVES)].mean()


def step_points(df: pd.DataFrame) -> pd.DataFrame:
    """Every completed run's points along its training steps: its checkpoint evaluations (evaluation.at_steps,
    load's `step_points`) and its final evaluation (final = True, at its last step), one row each."""
    rows = []
    for _, r in completed(df).iterrows():
        base = {k: r[k] for k in ("run", "configuration", "concept", "seed")}
        raw = r.get("step_points")
        for step, image, text, _cost in json.loads(raw) if isinstance(raw, str) else []:
            rows.append({**base, "step": step, OBJECTIVES[0]: image, OBJECTIVES[1]: text, "final": False})
        last = pd.to_numeric(
            pd.Series([r.get("last_step"), r.get("inversion.steps")]), errors="coerce"
        ).dropna()
        step = int(last.iloc[0]) if len(last) else None
        rows.append(
            {
                **base,
                "step": step,
                OBJECTIVES[0]: r[OBJECTIVES[0]],
                OBJECTIVES[1]: r[OBJECTIVES[1]],
                "final": True,
            }
        )
    return pd.DataFrame(
        rows, columns=["run", "configuration", "concept", "seed", "step", *OBJECTIVES, "final"]
    )


def step_configuration_means(points: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per (configuration, step): each checkpoint is a configuration of its own (its step)."""
    if not len(points):
        return pd.DataFrame(columns=list(OBJECTIVES))
    keyed = points.assign(step=points["step"].fillna(-1))
    return keyed.groupby(["configuration", "step"], sort=False)[list(OBJECTIVES)].mean()


def _scope(done: pd.DataFrame, concept: str) -> pd.DataFrame:
    return done if concept == "all" else done[done["concept"] == concept]


def front_hypervolumes(df: pd.DataFrame, given: tuple[float, float] | None = None) -> pd.DataFrame:
    """One row per scope (concept, or "all"): the hypervolume of the front of configuration means, the
    reference point and where it came from, the number of configurations and of those on the front."""
    from analysis.pareto import pareto_mask

    done = completed(df)
    points = step_points(df)
    with_steps = bool(len(points)) and not points["final"].all()
    rows = []
    for concept, ref in reference_point(df, given).items():
        means = configuration_means(_scope(done, concept))
        on_front = pareto_mask(means[OBJECTIVES[0]], means[OBJECTIVES[1]])
        step_means = step_configuration_means(_scope(points, concept)) if with_steps else None
        confirmed = _scope(done, concept)
        confirmed = (
            confirmed[confirmed["confirmed"].fillna(False).astype(bool)]
            if "confirmed" in confirmed
            else confirmed[:0]
        )
        rows.append(
            {
                "concept": concept,
                "hypervolume": hypervolume_2d(means.to_numpy(), ref.point),
                "hypervolume_with_checkpoints": (
                    hypervolume_2d(step_means.to_numpy(), ref.point) if step_means is not None else math.nan
                ),
                "hypervolume_confirmed": (
                    hypervolume_2d(configuration_means(confirmed).to_numpy(), ref.point)
                    if len(confirmed)
                    else math.nan
                ),
                "reference_image": ref.image,
                "reference_text": ref.text,
                "reference_source": ref.source,
                "configurations": len(means),
                "front_configurations": int(on_front.sum()),
            }
        )
    rows.sort(key=lambda r: (r["concept"] != "all", natural_key(r["concept"])))
    return pd.DataFrame(rows, columns=HYPERVOLUME_COLUMNS)


def finish_order(df: pd.DataFrame) -> pd.DataFrame:
    """The runs that ended (any status but running/stale/unknown), in the order they finished (finished_at,
    then trial number, then run name)."""
    ended = df[df["status"].isin(["completed", "pruned", "failed", "interrupted"])].copy()
    ended["_finished"] = pd.to_datetime(ended["finished_at"], errors="coerce", utc=True)
    ended["_trial"] = pd.to_numeric(ended["trial_number"], errors="coerce")
    ended["_name"] = ended["run"].map(lambda r: tuple(natural_key(r)))
    return ended.sort_values(["_finished", "_trial", "_name"], na_position="last", kind="stable").drop(
        columns=["_finished", "_trial", "_name"]
    )


def hypervolume_trace(df: pd.DataFrame, given: tuple[float, float] | None = None) -> pd.DataFrame:
    """Hypervolume against compute, per scope: after each ended run (in finish order), the cumulative
    compute (seconds) and the hypervolume of the configuration means of the runs completed so far."""
    refs = reference_point(df, given)
    ordered = finish_order(df)
    rows = []
    for concept, ref in refs.items():
        sub = _scope(ordered, concept)
        compute = pd.to_numeric(sub["wall_time_s"], errors="coerce").fillna(0.0).cumsum().to_numpy()
        for i in range(len(sub)):
            means = configuration_means(completed(sub.iloc[: i + 1]))
            rows.append(
                {
                    "concept": concept,
                    "run": sub["run"].iloc[i],
                    "compute_s": float(compute[i]),
                    "hypervolume": hypervolume_2d(means.to_numpy(), ref.point) if len(means) else 0.0,
                }
            )
    return pd.DataFrame(rows, columns=["concept", "run", "compute_s", "hypervolume"])


def hypervolume_plot(trace: pd.DataFrame) -> Figure | None:
    """Hypervolume of the front so far against the compute spent, one step line per scope; None when empty."""
    if not len(trace):
        return None
    import matplotlib

    from analysis.plots import STYLE, new_figure

    with matplotlib.rc_context(STYLE):
        fig = new_figure(3.3, 2.4)
        ax = fig.add_subplot(1, 1, 1)
        for concept, grp in trace.groupby("concept", sort=False):
            ax.step(grp["compute_s"], grp["hypervolume"], where="post", label=str(concept))
        ax.set_xlabel("compute spent (s of training + evaluation, run records)")
        ax.set_ylabel("hypervolume of the front")
        ax.set_ylim(bottom=0)
        if trace["concept"].nunique() > 1:
            ax.legend(frameon=False)
        fig.tight_layout()
    return fig


def findings_rows(table: pd.DataFrame) -> list[dict]:
    """findings.csv rows (analysis.findings' columns): one per scope, a measurement, not a paper claim."""
    return [
        dict(
            claim="front hypervolume",
            source="sweep",
            objective="image x text similarity",
            comparison=f"{r['concept']}: reference ({r['reference_image']:.4g}, {r['reference_text']:.4g}), "
            f"{r['reference_source']}",
            paper="",
            statistic=f"2-D hypervolume of the front of configuration means over seeds "
            f"({r['front_configurations']} of {r['configurations']} configurations on it)",
            effect=r["hypervolume"],
            ci_low=math.nan,
            ci_high=math.nan,
            n=r["configurations"],
            verdict="measured",
        )
        for _, r in table.iterrows()
    ]
