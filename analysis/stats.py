"""Statistics over runs: configuration means with intervals from seed and concept variation, paired
differences between configurations (runs with the same seed and concept share their noise), Spearman
correlations with intervals. Every interval is 95% unless `level` says otherwise; n < 2 gives no interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm, spearmanr
from scipy.stats import t as student_t

from analysis.load import completed, natural_key
from sweeper.evaluation.metrics import clip_value, get, summarised_metrics

DIAGNOSTIC_COLUMNS = ["final_dist_l2", "loss_tail_mean"]


def summary_columns() -> list[str]:
    """What configurations.csv summarises: every summarised metric of the registry, then the diagnostics."""
    return [m.name for m in summarised_metrics()] + DIAGNOSTIC_COLUMNS


@dataclass(frozen=True)
class Estimate:
    """A value with its interval and the number of independent units behind it."""

    value: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and (self.low > 0 or self.high < 0))


def t_interval(values, level: float = 0.95) -> Estimate:
    """Mean and Student-t interval of independent values (NaN dropped)."""
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce").dropna(), dtype=float)
    n = len(v)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(v.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, n)
    half = float(student_t.ppf((1 + level) / 2, n - 1)) * float(v.std(ddof=1)) / math.sqrt(n)
    return Estimate(mean, mean - half, mean + half, n)


def concept_adjusted(df: pd.DataFrame, col: str) -> pd.Series:
    """Values with each concept's mean over all configurations removed and the grand mean added back:
    what is left varies with seed and with how a configuration suits a concept, not with how easy a
    concept is (an easy concept raises every configuration alike)."""
    values = pd.to_numeric(df[col], errors="coerce")
    return values - values.groupby(df["concept"]).transform("mean") + values.mean()


def configurations(df: pd.DataFrame, level: float = 0.95, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per (configuration, concept) and, with more than one concept, one per configuration over
    all concepts (concept = "all"): n runs, seeds, the means of the objectives, distance and tail loss, and
    each mean's interval. Per concept the interval is over seeds; over all concepts it is over every run of
    the configuration after removing each concept's overall level (concept_adjusted), so it holds seed and
    configuration x concept variation. `extra`: registered metrics to summarise besides summary_columns()
    (a plot's axis that is not summarised, e.g. a text similarity variant)."""
    done = completed(df)
    rows = []
    concepts = sorted(done["concept"].unique(), key=natural_key)
    scopes = [(c, done[done["concept"] == c], False) for c in concepts]
    if len(concepts) > 1:
        scopes.insert(0, ("all", done, True))
    for concept, sub, adjust in scopes:
        for cfg, grp in sub.groupby("configuration", sort=False):
            first = grp.iloc[0]
            row = {
                "configuration": cfg,
                "family": first["family"],
                "lr_series": first.get("lr_series"),
                "concept": concept,
                "n": len(grp),
                "seeds": int(grp["seed"].nunique()),
                "concepts": int(grp["concept"].nunique()),
                "effective_lr": first.get("effective_lr"),
                "n_images": first.get("n_images"),
            }
            for col in ("inversion.num_vectors", "inversion.steps"):
                row[col] = first.get(col)
            for col in [*summary_columns(), *(c for c in extra if c not in summary_columns())]:
                if col not in grp:
                    continue
                values = concept_adjusted(sub, col).loc[grp.index] if adjust else grp[col]
                est = t_interval(values, level)
                mean = float(pd.to_numeric(grp[col], errors="coerce").mean())
                low, high = est.low + (mean - est.value), est.high + (mean - est.value)
                if col not in DIAGNOSTIC_COLUMNS and math.isfinite(low):  # inside the metric's range
                    bounds = get(col).range
                    low, high = clip_value(low, bounds), clip_value(high, bounds)
                row[f"{col}_mean"], row[f"{col}_ci_low"], row[f"{col}_ci_high"] = mean, low, high
            row["configuration_values"] = first.get("configuration_values")
            rows.append(row)
    rows.sort(key=_row_order)
    return pd.DataFrame(rows)


def _row_order(row: dict) -> tuple:
    """ "all" first, then concepts; within one, "ours" first and an LR series together, by LR (as the legend)."""
    lr = pd.to_numeric(row["effective_lr"], errors="coerce")
    series = str(row["lr_series"] if isinstance(row["lr_series"], str) else row["family"])
    return (
        row["concept"] != "all",
        natural_key(row["concept"]),
        row["family"] != "ours",
        series != "ours",
        natural_key(series),
        0.0 if pd.isna(lr) else float(lr),
        natural_key(row["configuration"]),
    )


def paired_difference(
    df: pd.DataFrame, better: str, reference: str, col: str, level: float = 0.95
) -> tuple[Estimate, pd.DataFrame]:
    """Mean of col(better) - col(reference) over runs paired by (concept, seed), with a t-interval over the
    pairs; returns the estimate and the pairs (concept, seed, both values, difference)."""
    done = completed(df)
    keys = ["concept", "seed"]
    a = done[done["configuration"] == better].groupby(keys)[col].mean()
    b = done[done["configuration"] == reference].groupby(keys)[col].mean()
    pairs = pd.concat({"value": a, "reference": b}, axis=1).dropna()
    pairs["difference"] = pairs["value"] - pairs["reference"]
    return t_interval(pairs["difference"], level), pairs.reset_index()


def spearman_interval(x, y, strata=None, level: float = 0.95) -> Estimate:
    """Spearman's rho with a Fisher-z interval (standard error sqrt(1.06 / (n - 3)), Fieller et al. 1957).
    With strata (e.g. concepts), rho is computed within each stratum and pooled by z with weights n - 3, so
    differences between strata (an easy concept) do not make a correlation. n = runs used."""
    frame = pd.DataFrame({"x": pd.to_numeric(pd.Series(list(x)), errors="coerce")})
    frame["y"] = pd.to_numeric(pd.Series(list(y)), errors="coerce")
    frame["s"] = list(strata) if strata is not None else 0
    frame = frame.dropna()
    zs, weights, n_used = [], [], 0
    for _, grp in frame.groupby("s"):
        if len(grp) < 4 or grp["x"].nunique() < 2 or grp["y"].nunique() < 2:
            continue
        rho = float(spearmanr(grp["x"], grp["y"])[0])
        zs.append(math.atanh(max(min(rho, 0.999999), -0.999999)))
        weights.append(len(grp) - 3)
        n_used += len(grp)
    if not zs:  # no stratum large enough: n says how many runs there were
        return Estimate(math.nan, math.nan, math.nan, len(frame))
    z = float(np.average(zs, weights=weights))
    se = math.sqrt(1.06 / sum(weights))
    q = float(norm.ppf((1 + level) / 2))
    return Estimate(math.tanh(z), math.tanh(z - q * se), math.tanh(z + q * se), n_used)
