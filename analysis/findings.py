"""The paper's claims, decided from whatever the analysed runs hold: findings.csv and the report's first section.

Each claim is tested only when the runs can test it (the configurations it compares exist, paired by concept
and seed). A direction claim (Fig. 10a) is a paired difference between a configuration and the reference
configuration it differs from in one choice; a correlation claim is Spearman's rho within each concept,
pooled. Verdicts: "holds" (the 95% interval excludes no effect, in the paper's direction), "contradicted"
(it excludes no effect, the other way), "inconclusive", or "not enough runs: add seeds".
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.load import PAPER_OURS, completed, natural_key
from analysis.stats import Estimate, paired_difference, spearman_interval
from sweeper.evaluation.metrics import Metric, get, summarised_metrics, with_role

MIN_PAIRS = 3  # a paired t-interval from 2 pairs has 1 degree of freedom (t = 12.7): no use for a verdict
MIN_CORRELATION_RUNS = 6
SMALL_RHO = 0.3  # "little effect" (Fig. 12): the whole interval inside (-0.3, 0.3)
UP, DOWN = "higher", "lower"
STRUCTURAL = [k for k in PAPER_OURS if k != "effective_lr"]

FINDINGS_COLUMNS = [
    "claim",
    "source",
    "objective",
    "comparison",
    "paper",
    "statistic",
    "effect",
    "ci_low",
    "ci_high",
    "n",
    "verdict",
]


@dataclass(frozen=True)
class DirectionClaim:
    """A configuration that differs from the reference in `changed` only, and the paper's direction of its
    reconstruction (`image`) and editability (`text`) against the reference (Fig. 10a as this project reads
    it: README "Analysis"); tested on every summarised metric of that role (the metric registry)."""

    claim: str
    changed: tuple[str, ...]
    matches: Callable[[dict, dict], bool]  # (values, reference values) -> is this the claim's configuration
    image: str
    text: str

    def expected(self, metric: Metric) -> str | None:
        """The paper's direction for `metric` (by its role), None for a metric with no role."""
        return {"reconstruction": self.image, "editability": self.text}.get(metric.role or "")


def _lr(v: dict) -> float:
    return float(v.get("effective_lr") or math.nan)


DIRECTION_CLAIMS = [
    DirectionClaim("lower LR than ours", ("effective_lr",), lambda v, r: _lr(v) < _lr(r), DOWN, UP),
    DirectionClaim("higher LR than ours", ("effective_lr",), lambda v, r: _lr(v) > _lr(r), UP, DOWN),
    DirectionClaim(
        "regularisation",
        ("inversion.reg_weight",),
        lambda v, r: float(v.get("inversion.reg_weight") or 0) > 0,
        DOWN,
        UP,
    ),
    DirectionClaim(
        "2-word", ("inversion.num_vectors",), lambda v, r: v.get("inversion.num_vectors") == 2, UP, DOWN
    ),
    DirectionClaim(
        "3-word", ("inversion.num_vectors",), lambda v, r: v.get("inversion.num_vectors") == 3, UP, DOWN
    ),
    DirectionClaim(
        "per-image tokens",
        ("inversion.per_image_tokens",),
        lambda v, r: bool(v.get("inversion.per_image_tokens")),
        UP,
        DOWN,
    ),
    DirectionClaim(
        "progressive",
        ("inversion.num_vectors", "inversion.progressive_every"),
        lambda v, r: v.get("inversion.progressive_every") is not None,
        UP,
        DOWN,
    ),
]


def _values(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {
        c: json.loads(v)
        for c, v in zip(df["configuration"], df["configuration_values"])
        if isinstance(v, str)
    }


def _is_structural_default(v: dict) -> bool:
    return all(v.get(k) == PAPER_OURS[k] for k in STRUCTURAL)


def reference_lr(values: dict[str, dict]) -> float | None:
    """The reference configurations' effective LR: the paper's 0.04 when a run has it, else the one nearest
    to it on a log scale (e.g. 0.02 in a sweep at batch 4 without gradient accumulation)."""
    lrs = sorted({_lr(v) for v in values.values() if _is_structural_default(v) and _lr(v) > 0})
    if not lrs:
        return None
    return min(lrs, key=lambda x: (abs(math.log(x / PAPER_OURS["effective_lr"])), x))


def _without(v: dict, keys) -> str:
    return json.dumps({k: x for k, x in v.items() if k not in keys}, sort_keys=True, default=str)


def verdict(est: Estimate, expected: str, min_n: int) -> str:
    if est.n < min_n or not math.isfinite(est.low):
        return "not enough runs: add seeds"
    if not est.excludes_zero():
        return "inconclusive"
    return "holds" if (est.value > 0) == (expected == UP) else "contradicted"


def _row(claim, source, objective, comparison, paper, statistic, est: Estimate, verdict_: str) -> dict:
    return dict(
        claim=claim,
        source=source,
        objective=objective,
        comparison=comparison,
        paper=paper,
        statistic=statistic,
        effect=est.value,
        ci_low=est.low,
        ci_high=est.high,
        n=est.n,
        verdict=verdict_,
    )


def direction_findings(df: pd.DataFrame) -> tuple[list[dict], list[str]]:
    done = completed(df)
    values = _values(done)
    ref_lr = reference_lr(values)
    rows, untested = [], []
    for claim in DIRECTION_CLAIMS:
        found = False
        for cfg in sorted(values, key=natural_key):
            v = values[cfg]
            for ref_cfg, r in values.items():
                if ref_cfg == cfg or not _is_structural_default(r):
                    continue
                if "effective_lr" in claim.changed and not math.isclose(_lr(r), ref_lr or math.nan):
                    continue
                if _without(v, claim.changed) != _without(r, claim.changed) or not claim.matches(v, r):
                    continue
                found = True
                for metric in summarised_metrics():
                    expected = claim.expected(metric)
                    if expected is None or metric.name not in done:
                        continue
                    est, _ = paired_difference(done, cfg, ref_cfg, metric.name)
                    rows.append(
                        _row(
                            claim.claim,
                            "Fig. 10a",
                            metric.words,
                            f"{cfg} - {ref_cfg}",
                            expected,
                            "paired difference (concept, seed)",
                            est,
                            verdict(est, expected, MIN_PAIRS),
                        )
                    )
        if not found:
            untested.append(claim.claim)
    return rows, untested


def correlation_findings(df: pd.DataFrame) -> tuple[list[dict], list[str]]:
    done = completed(df)
    rows, untested = [], []
    recon, edit = with_role("reconstruction"), with_role("editability")
    tests = [
        *(("distance from init raises reconstruction", "final_dist_l2", m.name, UP) for m in recon),
        *(("distance from init lowers editability", "final_dist_l2", m.name, DOWN) for m in edit),
        *(
            ("reconstruction trades off against editability", r.name, e.name, DOWN)
            for r in recon
            for e in edit
        ),
    ]
    for claim, x, y, expected in tests:
        if x not in done or y not in done or done[x].notna().sum() < 4:
            if claim not in untested:
                untested.append(claim)
            continue
        est = spearman_interval(done[x], done[y], done["concept"])
        rows.append(
            _row(
                claim,
                "Sec. 5 / Fig. 10a",
                get(y).words,
                f"{x} vs {y}, all completed runs",
                expected,
                "Spearman rho within concept, pooled",
                est,
                verdict(est, expected, MIN_CORRELATION_RUNS),
            )
        )
    size = dataset_size_finding(done)
    if size:
        rows.extend(size)
    else:
        untested.append("dataset size (Fig. 12)")
    return rows, untested


def dataset_size_finding(done: pd.DataFrame) -> list[dict]:
    """Fig. 12: training-set size changes the objectives little. Runs whose configurations differ only in
    n_images, Spearman within (concept, rest of the configuration), pooled."""
    values = _values(done)
    rest = {cfg: _without(v, ("n_images",)) for cfg, v in values.items()}
    sub = done.assign(stratum=done["concept"] + "|" + done["configuration"].map(rest))
    sub = sub[sub.groupby("stratum")["n_images"].transform("nunique") >= 2]
    if not len(sub):
        return []
    rows = []
    for metric in summarised_metrics():
        if metric.role is None or metric.name not in sub:
            continue
        col = metric.name
        est = spearman_interval(sub["n_images"], sub[col], sub["stratum"])
        if est.n < MIN_CORRELATION_RUNS or not math.isfinite(est.low):
            v = "not enough runs: add seeds"
        elif -SMALL_RHO < est.low and est.high < SMALL_RHO:
            v = "holds"
        elif est.low > SMALL_RHO or est.high < -SMALL_RHO:
            v = "contradicted"
        else:
            v = "inconclusive"
        rows.append(
            _row(
                "dataset size changes little",
                "Fig. 12",
                metric.words,
                "n_images vs objective, runs differing only in n_images",
                f"|rho| < {SMALL_RHO}",
                "Spearman rho within concept and configuration, pooled",
                est,
                v,
            )
        )
    return rows


def findings(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Every claim the runs can test -> (findings table, names of the claims they cannot test)."""
    a, untested_a = direction_findings(df)
    b, untested_b = correlation_findings(df)
    return pd.DataFrame(a + b, columns=FINDINGS_COLUMNS), untested_a + untested_b


def reference_note(df: pd.DataFrame) -> str | None:
    """Says which LR the Fig. 10a comparisons are against when no run is at the paper's 0.04."""
    ref = reference_lr(_values(completed(df)))
    if ref is None or math.isclose(ref, PAPER_OURS["effective_lr"]):
        return None
    return (
        f"No run is at the paper's effective LR 0.04: the Fig. 10a comparisons use the one-vector configuration "
        f"at effective LR {ref:g} as the reference."
    )
