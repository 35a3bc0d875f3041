"""The paper's claims, decided from whatever the analysed runs hold: findings.csv and the report's first section.

Each claim is tested only when the runs can test it (the configurations it compares exist, paired by concept
and seed), and says what the paper says:
- a direction claim (Fig. 10a: LR, regularisation, 2-/3-word) is a paired difference between a configuration
  and the reference configuration it differs from in that one choice; both sides are named in full;
- progressive words and per-image tokens are "near the curve" (the paper gives them no direction): the signed
  distance from the configuration to the curve of the configurations without them, with an interval;
- distance-from-init correlations are Spearman's rho within each vector count (the vector count moves both
  the distance and the objectives), and pooled over vector counts, labelled as such;
- a reference point (prompt only, image only) that beats a configuration on both objectives is a finding.
Verdicts: "holds" (the 95% interval excludes no effect, in the paper's direction), "contradicted" (it excludes
no effect, the other way), "inconclusive", "not enough runs: add seeds", or CONFOUNDED where the runs vary the
factor only together with other choices (no verdict can be drawn from such a design).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import PAPER_OURS, completed, natural_key
from analysis.pareto import distance_to_front
from analysis.stats import Estimate, paired_difference, spearman_interval, t_interval
from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES, Metric, get, summarised_metrics, with_role

MIN_PAIRS = 3  # a paired t-interval from 2 pairs has 1 degree of freedom (t = 12.7): no use for a verdict
MIN_CORRELATION_RUNS = 6
SMALL_RHO = 0.3  # "little effect" (Fig. 12): the whole interval inside (-0.3, 0.3)
# "Near the curve": the whole interval of the signed distance inside (-NEAR_CURVE, NEAR_CURVE), in cosine units
# of the tradeoff plane (the paper's Fig. 10a curve spans ~0.1 of image and ~0.05 of text similarity).
NEAR_CURVE = 0.01
UP, DOWN = "higher", "lower"
CONFOUNDED = "confounded: not testable from this design"
STRUCTURAL = [k for k in PAPER_OURS if k != "effective_lr"]
# The choices the tradeoff curve is drawn through (the curve the near-the-curve claims measure against).
CURVE_AXES = ("effective_lr", "inversion.num_vectors", "inversion.reg_weight")
EXTENSIONS = ("inversion.progressive_every", "inversion.per_image_tokens", "inversion.pivotal.enabled")
AXIS_WORDS = {
    "effective_lr": "LR",
    "inversion.num_vectors": "vectors",
    "inversion.reg_weight": "regularisation",
    "inversion.per_image_tokens": "per-image tokens",
    "inversion.progressive_every": "progressive",
    "inversion.pivotal.enabled": "pivotal",
    "n_images": "image count",
    "inversion.steps": "steps",
}
REFERENCE_WORDS = {
    "prompt_only": "prompt only beats this configuration on both objectives: the token learned nothing the "
    "prompt lacks",
    "image_only": "image only beats this configuration on both objectives: its samples are neither as "
    "faithful nor as editable as the training images themselves",
}

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
        """The paper's direction for `metric` (by its role); None for a metric with no role."""
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
        "2-word",
        ("inversion.num_vectors",),
        lambda v, r: v.get("inversion.num_vectors") == 2 and v.get("inversion.progressive_every") is None,
        UP,
        DOWN,
    ),
    DirectionClaim(
        "3-word",
        ("inversion.num_vectors",),
        lambda v, r: v.get("inversion.num_vectors") == 3 and v.get("inversion.progressive_every") is None,
        UP,
        DOWN,
    ),
]


@dataclass(frozen=True)
class CurveClaim:
    """An extension the paper places near the tradeoff curve, with no direction (Fig. 10a)."""

    claim: str
    key: str
    matches: Callable[[dict], bool]


CURVE_CLAIMS = [
    CurveClaim(
        "progressive",
        "inversion.progressive_every",
        lambda v: v.get("inversion.progressive_every") is not None,
    ),
    CurveClaim(
        "per-image tokens", "inversion.per_image_tokens", lambda v: bool(v.get("inversion.per_image_tokens"))
    ),
]
PLANE = (
    DEFAULT_OBJECTIVES  # the tradeoff plane's two metrics (curves, reference points beating a configuration)
)


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


def _differing(v: dict, r: dict, ignore=()) -> list[str]:
    """Keys whose recorded value differs between two configurations (missing counts as differing)."""
    keys = sorted((set(v) | set(r)) - set(ignore))
    return [k for k in keys if not _same_recorded(v.get(k), r.get(k))]


_PLAIN = (str, int, bool, type(None))


def _same_recorded(a: Any, b: Any) -> bool:
    """Whether two recorded values are the same as JSON: for two str/int/bool/None of one type that is ==,
    without the JSON encoding (called for every pair of configurations: the analysis's time at 500 runs)."""
    if type(a) is type(b) and type(a) in _PLAIN:
        return a == b
    return json.dumps(a, default=str) == json.dumps(b, default=str)


def _fmt(x: Any) -> str:
    return f"{float(x):.3g}"


def axis_words(v: dict, key: str) -> str:
    """One choice of a configuration in the paper's words, whatever its value ("1 vector", "no reg")."""
    x = v.get(key)
    if key == "effective_lr":
        return "lr ?" if x is None else f"lr {_fmt(x)}"
    if key == "inversion.num_vectors":
        k = int(x or 1)
        return f"{k} vector" + ("s" if k != 1 else "")
    if key == "inversion.reg_weight":
        return f"reg {_fmt(x)}" if x else "no reg"
    if key == "inversion.per_image_tokens":
        return "per-image tokens" if x else "one token"
    if key == "inversion.progressive_every":
        return "progressive" if x is not None else "not progressive"
    if key == "n_images":
        return "all images" if x is None else f"n={int(x)} image" + ("s" if int(x) != 1 else "")
    return f"{AXIS_WORDS.get(key, key)}={x}"


def side_name(name: str, v: dict, keys) -> str:
    """A comparison's side named with every compared choice, even one at the paper's default: "lr 0.008" as
    the reference of "2 vectors, lr 0.008" reads "1 vector, lr 0.008"; "ours" reads "1 vector (ours)"."""
    missing = [w for w in (axis_words(v, k) for k in keys) if w not in name]
    if not missing:
        return name
    return f"{', '.join(missing)} (ours)" if name == "ours" else f"{', '.join(missing)}, {name}"


def comparison(cfg: str, v: dict, ref: str, r: dict, keys) -> str:
    return f"{side_name(cfg, v, keys)} - {side_name(ref, r, keys)}"


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


NO_ESTIMATE = Estimate(math.nan, math.nan, math.nan, 0)


Pair = tuple[
    str, str, list[str], dict, dict
]  # (configuration, reference, other differing keys, their values)


def confounded_row(claim: str, source: str, pairs: list[Pair], keys) -> dict:
    """No verdict: the runs vary the claim's factor only together with other choices. Names the closest pair
    (fewest other differences; against the paper's one-vector reference when one is as close) and what moved
    with the factor."""
    cfg, ref, others, v, r = min(
        pairs,
        key=lambda p: (len(p[2]), not _is_structural_default(p[4]), natural_key(p[0]), natural_key(p[1])),
    )
    moved = ", ".join(AXIS_WORDS.get(k, k) for k in others)
    text = f"{comparison(cfg, v, ref, r, keys)}: also differ in {moved}"
    return _row(claim, source, "both", text, "", "", NO_ESTIMATE, CONFOUNDED)


def direction_findings(df: pd.DataFrame) -> tuple[list[dict], list[str]]:
    done = completed(df)
    values = _values(done)
    ref_lr = reference_lr(values)
    rows, untested = [], []
    for claim in DIRECTION_CLAIMS:
        found = False
        near: list[Pair] = []  # every pair that differs in the claim's factor
        for cfg in sorted(values, key=natural_key):
            v = values[cfg]
            for ref_cfg, r in values.items():
                if ref_cfg == cfg or not claim.matches(v, r):
                    continue
                if not all(r.get(k) == PAPER_OURS[k] for k in claim.changed if k in STRUCTURAL):
                    continue
                others = _differing(v, r, ignore=claim.changed)
                near.append((cfg, ref_cfg, others, v, r))
                if not _is_structural_default(r) or others:
                    continue
                if "effective_lr" in claim.changed and not math.isclose(_lr(r), ref_lr or math.nan):
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
                            comparison(cfg, v, ref_cfg, r, claim.changed),
                            expected,
                            "paired difference (concept, seed)",
                            est,
                            verdict(est, expected, MIN_PAIRS),
                        )
                    )
        if found:
            continue
        if near and all(p[2] for p in near):
            rows.append(confounded_row(claim.claim, "Fig. 10a", near, claim.changed))
        else:
            untested.append(claim.claim)
    return rows, untested


def _curve_distances(done: pd.DataFrame, cfg: str, curve_cfgs: list[str]) -> pd.Series:
    """Per (concept, seed): the signed distance of `cfg`'s point to the curve of `curve_cfgs`' points of the
    same concept and seed (the runs share their noise, as in a paired difference)."""
    keys = ["concept", "seed"]
    sub = done[done["configuration"].isin([cfg, *curve_cfgs])]
    means = sub.groupby([*keys, "configuration"])[list(PLANE)].mean()
    out = {}
    for unit, grp in means.groupby(level=[0, 1]):
        grp = grp.droplevel([0, 1])
        if cfg not in grp.index or not (grp.index != cfg).any():
            continue
        curve = grp.drop(index=cfg)
        x, y = grp.loc[cfg]
        out[unit] = distance_to_front(x, y, curve[PLANE[0]], curve[PLANE[1]])
    return pd.Series(out, dtype=float)


def near_verdict(est: Estimate) -> str:
    if est.n < MIN_PAIRS or not math.isfinite(est.low):
        return "not enough runs: add seeds"
    if -NEAR_CURVE < est.low and est.high < NEAR_CURVE:
        return "holds"
    if est.low > NEAR_CURVE or est.high < -NEAR_CURVE:
        return "contradicted"
    return "inconclusive"


def curve_findings(df: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """Progressive words and per-image tokens "near the curve": the signed distance (positive beyond the
    curve, negative behind it) from each such configuration to the curve drawn by the configurations that
    differ from it only in LR, vector count or regularisation and use neither extension."""
    done = completed(df)
    values = _values(done)
    rows, untested = [], []
    for claim in CURVE_CLAIMS:
        found = False
        near: list[Pair] = []
        for cfg in sorted(values, key=natural_key):
            v = values[cfg]
            if not claim.matches(v):
                continue
            curve = []
            for other, r in values.items():
                if other == cfg or any(r.get(k) != PAPER_OURS[k] for k in EXTENSIONS):
                    continue
                others = _differing(v, r, ignore=(*CURVE_AXES, claim.key))
                near.append((cfg, other, others, v, r))
                if not others:
                    curve.append(other)
            if not curve:
                continue
            found = True
            est = t_interval(_curve_distances(done, cfg, curve))
            rows.append(
                _row(
                    claim.claim,
                    "Fig. 10a",
                    "both",
                    f"{cfg} to the curve of {', '.join(sorted(curve, key=natural_key))}",
                    f"near the curve (|distance| < {NEAR_CURVE:g})",
                    "signed distance to the curve (concept, seed)",
                    est,
                    near_verdict(est),
                )
            )
        if found:
            continue
        if near:
            rows.append(confounded_row(claim.claim, "Fig. 10a", near, (claim.key,)))
        else:
            untested.append(claim.claim)
    return rows, untested


def _stratum_label(counts: list[int]) -> str:
    return ", ".join(str(k) for k in counts)


def distance_findings(done: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """Sec. 5: distance from init raises reconstruction and lowers editability. Spearman rho within concept
    for each vector count; with several vector counts also pooled over them, labelled as such, with no verdict
    (the vector count moves the distance and both objectives: it confounds the pooled correlation)."""
    tests = [
        *(("distance from init raises reconstruction", m.name, UP) for m in with_role("reconstruction")),
        *(("distance from init lowers editability", m.name, DOWN) for m in with_role("editability")),
    ]
    tests = [t for t in tests if t[1] in done]
    if "final_dist_l2" not in done or done["final_dist_l2"].notna().sum() < 4:
        return [], list(dict.fromkeys(t[0] for t in tests))
    vectors = pd.to_numeric(
        done.get("inversion.num_vectors", pd.Series(1, index=done.index)), errors="coerce"
    )
    vectors = vectors.fillna(1).astype(int)
    counts = sorted(vectors.unique())
    rows = []
    for claim, y, expected in tests:
        for k in counts:
            sub = done[vectors == k]
            est = spearman_interval(sub["final_dist_l2"], sub[y], sub["concept"])
            rows.append(
                _row(
                    claim,
                    "Sec. 5 / Fig. 10a",
                    get(y).words,
                    f"final_dist_l2 vs {y}, {k}-vector runs",
                    expected,
                    "Spearman rho within concept, pooled",
                    est,
                    verdict(est, expected, MIN_CORRELATION_RUNS),
                )
            )
        if len(counts) > 1:
            est = spearman_interval(done["final_dist_l2"], done[y], done["concept"])
            rows.append(
                _row(
                    claim,
                    "Sec. 5 / Fig. 10a",
                    get(y).words,
                    f"final_dist_l2 vs {y}, pooled over {_stratum_label(counts)} vectors",
                    expected,
                    "Spearman rho within concept, pooled over vector counts",
                    est,
                    CONFOUNDED,
                )
            )
    return rows, []


def correlation_findings(df: pd.DataFrame) -> tuple[list[dict], list[str]]:
    done = completed(df)
    rows, untested = distance_findings(done)
    claim = "reconstruction trades off against editability"
    pairs = [
        (r.name, e.name)
        for r in with_role("reconstruction")
        for e in with_role("editability")
        if r.name in done and e.name in done
    ]
    tested = [(x, y) for x, y in pairs if done[x].notna().sum() >= 4]
    if not tested:
        untested.append(claim)
    for x, y in tested:
        est = spearman_interval(done[x], done[y], done["concept"])
        rows.append(
            _row(
                claim,
                "Sec. 5 / Fig. 10a",
                get(y).words,
                f"{x} vs {y}, all completed runs",
                DOWN,
                "Spearman rho within concept, pooled",
                est,
                verdict(est, DOWN, MIN_CORRELATION_RUNS),
            )
        )
    size, size_confounded = dataset_size_finding(done)
    if size:
        rows.extend(size)
    elif size_confounded:
        rows.append(size_confounded)
    else:
        untested.append("dataset size (Fig. 12)")
    return rows, untested


def dataset_size_finding(done: pd.DataFrame) -> tuple[list[dict], dict | None]:
    """Fig. 12: training-set size changes the objectives little. Runs whose configurations differ only in
    n_images, Spearman within (concept, rest of the configuration), pooled. Returns the rows, or (none
    testable) a CONFOUNDED row when the runs vary n_images only together with other choices."""
    values = _values(done)
    rest = {cfg: _without(v, ("n_images",)) for cfg, v in values.items()}
    sub = done.assign(stratum=done["concept"] + "|" + done["configuration"].map(rest))
    sub = sub[sub.groupby("stratum")["n_images"].transform("nunique") >= 2]
    if not len(sub):
        pairs: list[Pair] = [
            (a, b, _differing(v, r, ignore=("n_images",)), v, r)
            for a, v in values.items()
            for b, r in values.items()
            if a != b and v.get("n_images") != r.get("n_images")
        ]
        if not pairs:
            return [], None
        return [], confounded_row("dataset size changes little", "Fig. 12", pairs, ("n_images",))
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
    return rows, None


def dominated_by_references(df: pd.DataFrame) -> dict[str, list[str]]:
    """{configuration: [reference keys]}: the reference points (prompt only, image only) whose recorded values
    beat the configuration's mean on both objectives (paired by run: each run records its references)."""
    done = completed(df)
    out: dict[str, list[str]] = {}
    for cfg, grp in done.groupby("configuration", sort=False):
        for key in REFERENCE_WORDS:
            diffs = _reference_differences(grp, key)
            if diffs is not None and all(d.mean() < 0 for d in diffs.values()):
                out.setdefault(str(cfg), []).append(key)
    return dict(sorted(out.items(), key=lambda kv: natural_key(kv[0])))


def _reference_differences(grp: pd.DataFrame, key: str) -> dict[str, pd.Series] | None:
    diffs = {}
    for col in PLANE:
        ref = f"ref.{key}.{col}"
        if ref not in grp:
            return None
        d = (grp[col] - pd.to_numeric(grp[ref], errors="coerce")).dropna()
        if not len(d):
            return None
        diffs[col] = d
    return diffs


def reference_findings(df: pd.DataFrame) -> list[dict]:
    """One row per objective for each configuration a reference point beats on both (on the means): the
    paired difference configuration - reference over its runs; "dominated" when both intervals lie below 0,
    else "dominated on the means" (the intervals, or too few runs, do not decide it)."""
    done = completed(df)
    rows = []
    for cfg, keys in dominated_by_references(df).items():
        grp = done[done["configuration"] == cfg]
        for key in keys:
            diffs = _reference_differences(grp, key)
            assert diffs is not None  # dominated_by_references found both objectives
            ests = {col: t_interval(d) for col, d in diffs.items()}
            decided = all(e.n >= MIN_PAIRS and np.isfinite(e.high) and e.high < 0 for e in ests.values())
            name = REFERENCE_WORDS[key].split(" beats")[0]
            for col, est in ests.items():
                rows.append(
                    _row(
                        REFERENCE_WORDS[key],
                        "reference point",
                        get(col).words,
                        f"{cfg} - {name}",
                        "",
                        "difference over the configuration's runs",
                        est,
                        "dominated" if decided else "dominated on the means",
                    )
                )
    return rows


def findings(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Every claim the runs can test -> (findings table, names of the claims they cannot test)."""
    a, untested_a = direction_findings(df)
    b, untested_b = curve_findings(df)
    c, untested_c = correlation_findings(df)
    d = reference_findings(df)
    return pd.DataFrame(a + b + c + d, columns=FINDINGS_COLUMNS), untested_a + untested_b + untested_c


def reference_note(df: pd.DataFrame) -> str | None:
    """Says which LR the Fig. 10a comparisons are against when no run is at the paper's 0.04."""
    ref = reference_lr(_values(completed(df)))
    if ref is None or math.isclose(ref, PAPER_OURS["effective_lr"]):
        return None
    return (
        f"No run is at the paper's effective LR 0.04: the Fig. 10a comparisons use the one-vector configuration "
        f"at effective LR {ref:g} as the reference."
    )
