"""The plots: the tradeoff plane (the paper's Fig. 10a), objectives vs distance from init and vs
dataset size (Fig. 12), loss/distance curves. Each function returns (figure, plotted data) so tests
and the report can check exactly what was drawn. Sized for a paper column (3.3 in wide per facet).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from analysis.labels import agg_renderer, repel_labels  # noqa: E402
from analysis.load import PAPER_OURS, completed, family, natural_key, varied_keys  # noqa: E402
from analysis.pareto import pareto_front  # noqa: E402
from analysis.stats import configurations  # noqa: E402
from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES, get  # noqa: E402
from sweeper.store.atomic import save_figure  # noqa: E402

# Lazy imports: matplotlib's colour helpers are imported where used: `python -m analysis --help` stays fast.

STYLE = {
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "legend.fontsize": 6,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "axes.linewidth": 0.6,
    "lines.linewidth": 0.8,
}
COLUMN_IN = 3.3
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
REFERENCES = {"image_only": ("image only", "*"), "prompt_only": ("prompt only", "X")}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=200)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, out_dir: str | Path, name: str, svg: bool = True, dpi: int | None = None) -> list[Path]:
    """Write <name>.png (and .svg) atomically; returns the written paths."""
    paths = [save_figure(fig, Path(out_dir) / f"{name}.png", bbox_inches="tight", dpi=dpi or fig.dpi)]
    if svg:
        paths.append(save_figure(fig, Path(out_dir) / f"{name}.svg", bbox_inches="tight"))
    return paths


def family_order(df: pd.DataFrame) -> list[str]:
    """Families in legend order: "ours" first, then by name with numbers compared as numbers, an LR series
    together and ordered by its effective LR."""
    first = df.drop_duplicates("family").set_index("family")
    series = first["lr_series"] if "lr_series" in first else first.index.to_series()
    lr = pd.to_numeric(first["effective_lr"], errors="coerce") if "effective_lr" in first else None

    def key(f: str):
        s = series.get(f, f)
        s = f if not isinstance(s, str) else s
        x = float(lr.get(f)) if lr is not None and pd.notna(lr.get(f)) else 0.0
        return (f != "ours", s != "ours", natural_key(s), x, natural_key(f))

    return sorted(first.index, key=key)


def family_styles(df: pd.DataFrame) -> dict[str, tuple[Any, str]]:
    """Colour and marker per family. The families of an LR series (differing only in effective LR) share a
    marker and one colour ramp, light to dark with the LR; every other family its own colour and marker."""
    import matplotlib.colors as mcolors
    from matplotlib import colormaps

    order = family_order(df)
    first = df.drop_duplicates("family").set_index("family")
    series = first["lr_series"] if "lr_series" in first else pd.Series(order, index=order)
    members: dict[str, list[str]] = {}
    for f in order:
        members.setdefault(series.get(f, f), []).append(f)
    ramps = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]
    colours = list(mcolors.TABLEAU_COLORS.values())
    styles: dict[str, tuple[Any, str]] = {}
    n_ramp = n_plain = 0
    for i, fams in enumerate(members.values()):
        marker = MARKERS[i % len(MARKERS)]
        if len(fams) >= 3 and n_ramp < len(ramps):  # a series: ordered by LR (family_order), one ramp
            cmap = colormaps[ramps[n_ramp]]
            n_ramp += 1
            for j, f in enumerate(fams):
                styles[f] = (mcolors.to_hex(cmap(0.35 + 0.6 * j / (len(fams) - 1))), marker)
        else:
            for f in fams:
                styles[f] = (colours[n_plain % 10], MARKERS[(i + n_plain // 10) % len(MARKERS)])
                n_plain += 1
    return styles


def coarse_families(df: pd.DataFrame, max_families: int = 10) -> pd.Series:
    """Families for markers when a search gives many configurations: the families themselves when at most
    `max_families`; else named by fewer of the keys that actually varied, dropping the key with the most
    distinct values first (a learning rate drawn from a range goes before a choice of 1, 2 or 3 vectors),
    until at most `max_families` remain. A key that was dropped is not named at all (no "reg" for every
    regularisation weight a search drew)."""
    if df["family"].nunique() <= max_families:
        return df["family"]
    values = _values(df)
    kept = sorted(varied_keys(values), key=lambda k: (_distinct(values, k), k))  # fewest values first
    names = [family_over(v, set()) for v in values]
    while kept:
        kept.pop()
        names = [family_over(v, set(kept)) for v in values]
        if len(set(names)) <= max_families:
            break
    return pd.Series(names, index=df.index)


# A family's name when every key it is named by is at the paper's "ours" (e.g. only the vector count was kept).
AT_OURS = {
    "inversion.num_vectors": "1 vector",
    "inversion.per_image_tokens": "no per-image tokens",
    "inversion.reg_weight": "no reg",
    "inversion.progressive_every": "not progressive",
    "inversion.pivotal.enabled": "no pivotal",
    "effective_lr": "lr 0.04",
}


def family_over(values: dict[str, Any], keys: set[str]) -> str:
    """A configuration's family named only by `keys` (every other named axis read at the paper's "ours")."""
    shown = {k: (v if k in keys or k not in PAPER_OURS else PAPER_OURS[k]) for k, v in values.items()}
    name = family(shown, keys)
    if name != "ours":
        one = "inversion.num_vectors" in keys and shown.get("inversion.num_vectors") == 1
        return f"1 vector, {name}" if one else name
    return next((AT_OURS[k] for k in AT_OURS if k in keys), "all runs" if not keys else "ours")


def _values(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Each row's recorded configuration values (load.configuration_values, stored as JSON)."""
    col = "configuration_values"
    return [json.loads(v) if isinstance(v, str) else {} for v in (df[col] if col in df else [None] * len(df))]


def _distinct(values: list[dict[str, Any]], key: str) -> int:
    return len({json.dumps(v.get(key), sort_keys=True, default=str) for v in values})


@dataclass
class ColourAxis:
    """The one configuration key a search's cloud is coloured by: a colour map over its range (log-scaled when
    it spans more than a decade) for a number with many values, one colour per value otherwise."""

    key: str
    name: str
    categories: list[Any] | None  # None: continuous
    norm: Any = None
    cmap: Any = None

    def colours(self, rows: pd.DataFrame) -> list[Any]:
        import matplotlib.colors as mcolors

        vals = [v.get(self.key) for v in _values(rows)]
        if self.categories is None:
            return [self.cmap(self.norm(float(v))) if _is_number(v) else "0.6" for v in vals]
        palette = list(mcolors.TABLEAU_COLORS.values())
        return [
            palette[self.categories.index(v) % len(palette)] if v in self.categories else "0.6" for v in vals
        ]


AXIS_NAMES = {
    "effective_lr": "effective learning rate",
    "inversion.num_vectors": "vectors",
    "inversion.reg_weight": "regularisation weight",
    "inversion.per_image_tokens": "per-image tokens",
    "inversion.progressive_every": "progressive every (steps)",
    "n_images": "training images",
    "inversion.steps": "steps",
}


def _is_number(v: Any) -> TypeGuard[float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def colour_axis(runs: pd.DataFrame, key: str | None = None) -> ColourAxis | None:
    """The axis to colour a cloud by: `key`, else the effective learning rate when it varied, else the varied
    key with the most distinct values; None when nothing varied."""
    import matplotlib.colors as mcolors
    from matplotlib import colormaps

    values = _values(runs)
    varied = varied_keys(values)
    if key is None:
        if not varied:
            return None
        key = (
            "effective_lr"
            if "effective_lr" in varied
            else max(sorted(varied), key=lambda k: _distinct(values, k))
        )
    vals = [v.get(key) for v in values]
    numbers = [float(v) for v in vals if _is_number(v)]
    name = AXIS_NAMES.get(key, key)
    if len(set(numbers)) > 6 and len(numbers) == len([v for v in vals if v is not None]):
        lo, hi = min(numbers), max(numbers)
        log = lo > 0 and hi / lo > 10
        norm = mcolors.LogNorm(lo, hi) if log else mcolors.Normalize(lo, hi)
        return ColourAxis(key, name + (" (log scale)" if log else ""), None, norm, colormaps["viridis"])
    cats = sorted({json.dumps(v, default=str) for v in vals}, key=natural_key)
    return ColourAxis(key, name, [json.loads(c) for c in cats])


def _facets(concepts: list[str], width: float, height: float) -> tuple[Figure, list[Axes]]:
    n = max(len(concepts), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = new_figure(width * cols, height * rows)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


@dataclass
class Facet:
    """One panel of the tradeoff plot: its runs and configuration means, where they are drawn, and what the
    layers put there (the Pareto front, the reference points, the obstacles the labels must avoid)."""

    ax: Axes
    concept: str
    runs: pd.DataFrame  # completed runs of this facet
    cfg: pd.DataFrame  # their configuration means (stats.configurations rows of this facet)
    x: np.ndarray  # configuration means on the x axis
    y: np.ndarray
    front: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))  # indices into cfg
    refs: dict[str, tuple[float, float]] = field(default_factory=dict)
    bars: list[tuple[float, float, float, float]] = field(default_factory=list)  # interval segments (data)
    dominated: dict[str, list[str]] = field(default_factory=dict)  # configuration -> references beating it
    dominated_note: str | None = None


@dataclass
class Plan:
    """What the whole figure shows, decided once before drawing: the runs and their families, the mode (a grid
    of named configurations, or a search's cloud coloured by one axis), styles and each configuration's key."""

    done: pd.DataFrame
    configs: pd.DataFrame
    cloud: ColourAxis | None  # not None: a search, drawn as a cloud coloured by this axis
    coarse: bool
    styles: dict[str, tuple[Any, str]]
    keys: dict[str, str]  # configuration -> its short label: "#<trial>" (one run) or "[k]"
    x: str = DEFAULT_OBJECTIVES[0]
    y: str = DEFAULT_OBJECTIVES[1]

    def has_intervals(self) -> bool:
        col = f"{self.x}_ci_low"
        return bool(len(self.configs)) and col in self.configs and self.configs[col].notna().any()


def tradeoff_plot(
    df: pd.DataFrame,
    label_all_below: int = 15,
    max_families: int = 10,
    x: str = DEFAULT_OBJECTIVES[0],
    y: str = DEFAULT_OBJECTIVES[1],
    colour_by: str | None = None,
) -> tuple[Figure, dict]:
    """Two registered metrics against each other (default x = image similarity, y = text similarity, as the
    paper's Fig. 10a; the front in each metric's direction): each configuration's mean over its
    runs with a 95% interval (where it has several runs) from seed (and, in the "all concepts" facet, concept)
    variation (stats.configurations), every run as a light point behind it, the Pareto front of the means (both
    maximised), the reference points; one facet per concept, plus "all concepts" first when there are several.
    A grid (at most `max_families` families) gives each configuration a colour and a marker; a search (more) is
    a cloud coloured by one axis (colour_axis: `colour_by`, else what varied most), markers by the coarser
    families (coarse_families), the front ringed. Labels: short names, else keys ("#<trial number>" for a
    one-run configuration, "[k]" otherwise, listed in the legend and the report); every configuration's when a
    grid's facet has fewer than `label_all_below`, else the front's only.
    The layers, each its own function, drawn in this order: points, intervals, front, references, the
    configurations a reference point beats on both axes (a red ring and a note), labels."""
    x, y = get(x).name, get(y).name  # an unknown metric: KeyError naming the registered ones
    plan = _plan(df, max_families, x, y, colour_by)
    concepts = sorted(df["concept"].dropna().unique(), key=natural_key) or ["unknown"]
    names = (["all"] if len(concepts) > 1 else []) + concepts
    data: dict[str, Any] = {
        "concepts": {},
        "styles": plan.styles,
        "coarsened": plan.coarse,
        "configurations": plan.configs,
        "keys": plan.keys,
        "colour_by": plan.cloud.key if plan.cloud else None,
        "axes": (x, y),
    }
    with matplotlib.rc_context(STYLE):
        fig, axes = _facets(names, COLUMN_IN, 2.8)
        facets = [_facet(ax, name, df, plan) for ax, name in zip(axes, names)]
        for f in facets:
            _draw_points(f, plan)
            paths = draw_step_paths(f, plan)
            _draw_intervals(f, plan)
            _draw_front(f, plan)
            _draw_references(f)
            _draw_dominated(f, plan)
            _finish_axes(f, x, y, several=len(facets) > 1)
            data["concepts"][f.concept] = _facet_data(f, plan) | {"step_paths": paths}
        data["legend"] = _legend(fig, axes, data, plan, several=len(facets) > 1)
        for f in facets:  # after the layout is final: label placement is measured in display space
            data["concepts"][f.concept]["labels"] = _draw_labels(f, plan, label_all_below)
    data["front_table"] = front_table(data)
    return fig, data


def _plan(df: pd.DataFrame, max_families: int, x: str, y: str, colour_by: str | None) -> Plan:
    done = completed(df, (x, y))
    coarse = bool(len(done)) and done["family"].nunique() > max_families
    if len(done):
        done = done.assign(family=coarse_families(done, max_families))
        if coarse:
            done = done.assign(lr_series=done["family"])
    configs = configurations(done, extra=(x, y)) if len(done) else pd.DataFrame()
    cloud = colour_axis(done, colour_by) if coarse or colour_by else None
    styles = family_styles(done) if len(done) else {}
    if cloud is not None:  # markers tell the families apart, colours the axis
        styles = {fam: ("0.35", MARKERS[i % len(MARKERS)]) for i, fam in enumerate(family_order(done))}
    return Plan(done, configs, cloud, coarse, styles, configuration_keys(done), x, y)


def configuration_keys(done: pd.DataFrame) -> dict[str, str]:
    """A short label per configuration: "#<trial number>" when it has one run whose trial number no other
    plotted run shares (a search's trials), else "[k]" in configuration order."""
    if not len(done):
        return {}
    trials = pd.to_numeric(
        done.get("trial_number", pd.Series(index=done.index, dtype=float)), errors="coerce"
    )
    unique = trials.notna() & ~trials.duplicated(keep=False)
    keys: dict[str, str] = {}
    k = 0
    for cfg, idx in done.groupby("configuration", sort=False).groups.items():
        if len(idx) == 1 and bool(unique.loc[idx[0]]):
            keys[str(cfg)] = f"#{int(trials.loc[idx[0]])}"
        else:
            k += 1
            keys[str(cfg)] = f"[{k}]"
    return keys


def _facet(ax: Axes, concept: str, df: pd.DataFrame, plan: Plan) -> Facet:
    done, configs = plan.done, plan.configs
    runs = done if concept == "all" else done[done["concept"] == concept]
    cfg = configs[configs["concept"] == concept] if len(configs) else configs
    if plan.coarse and len(cfg):  # several configurations per coarse family: one mark each, same style
        cfg = cfg.assign(family=cfg["configuration"].map(dict(zip(done["configuration"], done["family"]))))
    xs = cfg[f"{plan.x}_mean"].to_numpy(float) if len(cfg) else np.zeros(0)
    ys = cfg[f"{plan.y}_mean"].to_numpy(float) if len(cfg) else np.zeros(0)
    refs = _references(df if concept == "all" else df[df["concept"] == concept], plan.x, plan.y)
    return Facet(ax, concept, runs, cfg, xs, ys, refs=refs)


def _draw_points(f: Facet, plan: Plan) -> None:
    """Every run as a light point, each configuration's mean as a solid mark: in the family's colour and
    marker (a grid), or coloured by the cloud's axis with the family's marker (a search)."""
    for fam in family_order(f.runs) if len(f.runs) else []:
        colour, marker = plan.styles[fam]
        pts = f.runs[f.runs["family"] == fam]
        grp = f.cfg[f.cfg["family"] == fam]
        run_colour = plan.cloud.colours(pts) if plan.cloud else colour
        f.ax.scatter(
            pts[plan.x], pts[plan.y], s=6, marker=marker, c=run_colour, alpha=0.3, linewidths=0, zorder=2
        )
        if plan.cloud is None:
            f.ax.plot(
                grp[f"{plan.x}_mean"],
                grp[f"{plan.y}_mean"],
                marker,
                color=colour,
                ms=3.5,
                mew=0.5,
                mec="white",
                ls="none",
                label=fam,
                zorder=3,
                gid="configuration means",
            )
            continue
        f.ax.scatter(
            grp[f"{plan.x}_mean"],
            grp[f"{plan.y}_mean"],
            s=9,
            marker=marker,
            c=plan.cloud.colours(grp),
            linewidths=0,
            alpha=0.85,
            zorder=3,
            gid="configuration means",
        )
        f.ax.plot([], [], marker, color=colour, ms=3.5, ls="none", label=fam)  # the legend's marker


def draw_step_paths(f: Facet, plan: Plan) -> dict[str, list[tuple[int, float, float]]]:
    """Each run evaluated at checkpoints (evaluation.at_steps) as a thin line through its points in step order,
    ending at its final evaluation (the paper's Fig. 10a reads steps as an axis). Returns {run: [(step, x, y)]}."""
    paths: dict[str, list[tuple[int, float, float]]] = {}
    if "step_points" not in f.runs:
        return paths
    col = {"image_similarity": 1, "text_similarity": 2}
    for _, r in f.runs[f.runs["step_points"].notna()].iterrows():
        if plan.x not in col or plan.y not in col:
            break
        points = [
            (int(p[0]), float(p[col[plan.x]]), float(p[col[plan.y]])) for p in json.loads(r["step_points"])
        ]
        last = r.get("last_step")
        points.append((int(last) if pd.notna(last) else -1, float(r[plan.x]), float(r[plan.y])))
        colour = plan.styles.get(r["family"], ("0.5", "o"))[0] if plan.cloud is None else "0.5"
        f.ax.plot(
            [p[1] for p in points],
            [p[2] for p in points],
            "-",
            color=colour,
            lw=0.4,
            alpha=0.5,
            zorder=1,
            marker=".",
            ms=1.5,
            gid="step paths",
        )
        paths[str(r["run"])] = points
    return paths


def _draw_intervals(f: Facet, plan: Plan) -> None:
    """Each mean's 95% interval on both axes, only where one exists (a configuration with one run has none)."""
    for col, other, horizontal in ((plan.x, plan.y, True), (plan.y, plan.x, False)):
        err = _ci_err(f.cfg, col)
        if err is None:
            continue
        for v, o, lo, hi, fam in zip(f.cfg[f"{col}_mean"], f.cfg[f"{other}_mean"], *err, f.cfg["family"]):
            if not (np.isfinite(lo) and np.isfinite(hi)):
                continue
            seg = (v - lo, o, v + hi, o) if horizontal else (o, v - lo, o, v + hi)
            f.bars.append(seg)
            colour = "0.5" if plan.cloud else plan.styles[fam][0]
            f.ax.plot(seg[::2], seg[1::2], "-", color=colour, lw=0.6, zorder=3, solid_capstyle="butt")


def _draw_front(f: Facet, plan: Plan) -> None:
    """The Pareto front of the configuration means (both axes maximised): a dashed line; in a cloud its
    members ringed in black as well."""
    f.front = pareto_front(get(plan.x).oriented(f.x), get(plan.y).oriented(f.y))
    if len(f.front) > 1:
        f.ax.plot(f.x[f.front], f.y[f.front], "--", color="0.25", lw=0.7, zorder=2, label="Pareto front")
    if plan.cloud is not None and len(f.front):
        f.ax.scatter(
            f.x[f.front], f.y[f.front], s=28, facecolors="none", edgecolors="black", linewidths=0.7, zorder=4
        )


def _draw_references(f: Facet) -> None:
    """The reference points (image only, prompt only) as black marks."""
    for key, (rx, ry) in f.refs.items():
        f.ax.plot([rx], [ry], REFERENCES[key][1], color="black", ms=5, zorder=4, ls="none")


def _draw_dominated(f: Facet, plan: Plan) -> None:
    """A red ring on each configuration mean a reference point beats on both axes, and one note saying so
    (prompt only: the token learned nothing the prompt lacks; analysis.findings says it with intervals). The
    note names them as their labels do (a key for a long name), or counts them when there are many."""
    shown: dict[str, str] = {}
    for i, name in enumerate(f.cfg["configuration"].astype(str) if len(f.cfg) else []):
        beaten = [REFERENCES[k][0] for k, (rx, ry) in f.refs.items() if rx > f.x[i] and ry > f.y[i]]
        if beaten:
            f.dominated[name] = beaten
            shown[name] = _point_label(f.cfg.iloc[i], plan)
            f.ax.scatter([f.x[i]], [f.y[i]], s=60, facecolors="none", edgecolors="tab:red", lw=0.8, zorder=4)
    if not f.dominated:
        return
    by_ref: dict[str, list[str]] = {}
    for name, refs in f.dominated.items():
        for ref in refs:
            by_ref.setdefault(ref, []).append(shown[name])
    lines = [
        f"{ref} beats {', '.join(names) if len(names) <= 4 else f'{len(names)} configurations'} on both objectives"
        for ref, names in by_ref.items()
    ]
    if "prompt only" in by_ref:
        lines.append("(the token learned nothing the prompt lacks)")
    f.dominated_note = "\n".join(lines)
    f.ax.text(
        0.01, 0.01, f.dominated_note, transform=f.ax.transAxes, fontsize=5, color="tab:red", va="bottom"
    )


def _finish_axes(f: Facet, x: str, y: str, several: bool) -> None:
    f.ax.set_xlabel(get(x).label)
    f.ax.set_ylabel(get(y).label)
    if several:
        f.ax.set_title("all concepts" if f.concept == "all" else f.concept)
    f.ax.grid(alpha=0.25, lw=0.4)
    f.ax.margins(0.15)
    f.ax.autoscale_view()
    f.ax.set_xlim(f.ax.get_xlim())  # fixed before the labels are placed: a label must not move the axes
    f.ax.set_ylim(f.ax.get_ylim())


def _facet_data(f: Facet, plan: Plan) -> dict[str, Any]:
    """What the facet shows, for tests and the report."""
    configs = f.cfg["configuration"].tolist() if len(f.cfg) else []
    runs_of = f.runs.groupby("configuration")["run"].apply(list).to_dict() if len(f.runs) else {}
    return {
        "configurations": configs,
        "x": f.x.tolist(),
        "y": f.y.tolist(),
        "n": f.cfg["n"].tolist() if len(f.cfg) else [],
        "family": f.cfg["family"].tolist() if len(f.cfg) else [],
        "runs": f.runs["run"].tolist(),
        "run_x": f.runs[plan.x].tolist(),
        "run_y": f.runs[plan.y].tolist(),
        "front": [configs[i] for i in f.front],
        "front_runs": [runs_of.get(configs[i], []) for i in f.front],
        "front_keys": [plan.keys.get(configs[i], "") for i in f.front],
        "references": f.refs,
        "dominated": f.dominated,
        "dominated_note": f.dominated_note,
    }


def front_table(data: dict[str, Any]) -> pd.DataFrame:
    """One row per facet and front configuration: concept, key, configuration, both means, its runs."""
    rows = [
        {
            "concept": concept,
            "key": key,
            "configuration": cfg,
            "x": d["x"][d["configurations"].index(cfg)],
            "y": d["y"][d["configurations"].index(cfg)],
            "runs": runs,
        }
        for concept, d in data["concepts"].items()
        for cfg, key, runs in zip(d["front"], d["front_keys"], d["front_runs"])
    ]
    return pd.DataFrame(rows, columns=["concept", "key", "configuration", "x", "y", "runs"])


def _legend(fig: Figure, axes: list[Axes], data: dict[str, Any], plan: Plan, several: bool) -> list[str]:
    """One legend below the facets: every facet's families once each (family order, a keyed configuration with
    its key), the front, the reference points; as many columns as fit the figure's width; in a cloud, the
    colour bar of its axis below. The title claims intervals only where some configuration has one."""
    handles: list[Any] = []
    labels: list[str] = []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    for key, (name, marker) in REFERENCES.items():
        if any(key in c["references"] for c in data["concepts"].values()):
            handles.append(axes[0].plot([], [], marker, color="black", ms=5, ls="none")[0])
            labels.append(name)
    shown = [_legend_label(lab, plan) for lab in labels]
    fig.tight_layout()
    leg = None
    for ncol in range(min(3, len(labels)), 0, -1):
        leg = fig.legend(
            handles,
            shown,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            frameon=False,
            ncol=ncol,
            fontsize=6,
            handletextpad=0.3,
            columnspacing=0.8,
            title=_legend_title(plan, several),
            title_fontsize=6,
        )
        if ncol == 1 or leg.get_window_extent(agg_renderer(fig)).width <= fig.bbox.width:
            break
        leg.remove()
    if plan.cloud is not None and plan.cloud.categories is None and leg is not None:
        _colour_bar(fig, leg, plan.cloud)
    return shown


def _legend_label(label: str, plan: Plan) -> str:
    """A grid's family as the legend shows it: with its configuration's key when its marks are labelled by it."""
    key = plan.keys.get(label)
    return f"{key} {label}" if plan.cloud is None and key and len(label) > SHORT_LABEL else label


def _legend_title(plan: Plan, several: bool) -> str:
    if plan.cloud is not None:
        title = (
            f"a search: each point a configuration, coloured by {plan.cloud.name};\n"
            "ringed: the Pareto front, labelled by trial number (#) or configuration key ([k]);\n"
            "report.html lists every one with its run folder"
        )
    else:
        title = "mean of each configuration; light points: runs"
    if plan.has_intervals():
        title += "\nbars: 95% interval over seeds, where a configuration has several runs"
        if several:
            title += "\n(all concepts: interval over every run with each concept's overall level removed)"
    if plan.coarse:
        title += "\nmarkers: families by what varied least (configurations.csv lists each configuration)"
    return title


def _colour_bar(fig: Figure, leg: Any, axis: ColourAxis) -> None:
    """A horizontal colour bar for the cloud's continuous axis, below the legend."""
    from matplotlib.cm import ScalarMappable

    box = leg.get_window_extent(agg_renderer(fig)).transformed(fig.transFigure.inverted())
    cax = fig.add_axes((0.3, box.y0 - 0.06, 0.4, 0.025))
    bar = fig.colorbar(ScalarMappable(norm=axis.norm, cmap=axis.cmap), cax=cax, orientation="horizontal")
    bar.set_label(axis.name, fontsize=6)
    bar.ax.tick_params(labelsize=6)


SHORT_LABEL = 16  # a configuration's name longer than this is labelled by its key


def _draw_labels(f: Facet, plan: Plan, label_all_below: int) -> list[Text]:
    """The reference points' names, then labels beside the front's configurations (every configuration's when a
    grid's facet has fewer than `label_all_below`; at most MAX_FRONT_LABELS spread along a long front), placed
    so that none overlaps another, a mark or an interval (labels.repel_labels); a configuration's label that
    finds no free place is left out (the legend and the report's front table name every one). A grid's short
    names are shown as they are, longer ones and a cloud's by their key."""
    front = list(f.front)
    if len(front) > MAX_FRONT_LABELS:
        front = [front[int(i)] for i in np.linspace(0, len(front) - 1, MAX_FRONT_LABELS).round()]
    every = plan.cloud is None and len(f.cfg) < label_all_below
    order = front + ([i for i in range(len(f.cfg)) if i not in set(front)] if every else [])
    xy = list(f.refs.values()) + [(f.x[i], f.y[i]) for i in order]
    texts = [REFERENCES[key][0] for key in f.refs] + [_point_label(f.cfg.iloc[i], plan) for i in order]
    obstacles = list(zip(f.x, f.y)) + list(f.refs.values())
    return repel_labels(f.ax, xy, texts, obstacles, f.bars, required=len(f.refs))


MAX_FRONT_LABELS = 12


def _point_label(row: pd.Series, plan: Plan) -> str:
    name, key = str(row["configuration"]), plan.keys.get(str(row["configuration"]), "")
    return key if plan.cloud is not None or (key and len(name) > SHORT_LABEL) else name


def _ci_err(grp: pd.DataFrame, col: str) -> np.ndarray | None:
    """Interval lengths below/above each mean from the <col>_ci_low/high columns (NaN: no interval)."""
    lo, hi, mid = f"{col}_ci_low", f"{col}_ci_high", f"{col}_mean"
    if lo not in grp or hi not in grp:
        return None
    v = grp[mid if mid in grp else col].to_numpy(float)
    err = np.vstack(
        [
            v - pd.to_numeric(grp[lo], errors="coerce").to_numpy(float),
            pd.to_numeric(grp[hi], errors="coerce").to_numpy(float) - v,
        ]
    )
    return np.clip(err, 0, None)


def _references(
    df: pd.DataFrame, x: str = DEFAULT_OBJECTIVES[0], y: str = DEFAULT_OBJECTIVES[1]
) -> dict[str, tuple[float, float]]:
    refs = {}
    for key in REFERENCES:
        cx, cy = f"ref.{key}.{x}", f"ref.{key}.{y}"
        if cx in df and cy in df:
            rx = pd.to_numeric(df[cx], errors="coerce").median()
            ry = pd.to_numeric(df[cy], errors="coerce").median()
            if np.isfinite(rx) and np.isfinite(ry):
                refs[key] = (float(rx), float(ry))
    return refs


def distance_plot(
    df: pd.DataFrame, dist: str = "final_dist_l2", metrics: tuple[str, ...] = DEFAULT_OBJECTIVES
) -> tuple[Figure, dict]:
    """Each of `metrics` (registered names) against the final distance of the learned vectors from their
    init; Spearman rho per concept in the legend."""
    done = completed(df, metrics)
    done = done[done[dist].notna()]
    data: dict[str, dict] = {}
    with matplotlib.rc_context(STYLE):
        fig = new_figure(len(metrics) * COLUMN_IN, 2.4)
        for j, (obj, label) in enumerate((name, get(name).label) for name in metrics):
            ax = fig.add_subplot(1, len(metrics), j + 1)
            data[obj] = {}
            for i, (concept, grp) in enumerate(done.groupby("concept")):
                d, v = grp[dist].to_numpy(float), grp[obj].to_numpy(float)
                rho, p = (
                    spearmanr(d, v)
                    if len(d) >= 3 and np.ptp(d) > 0 and np.ptp(v) > 0
                    else (float("nan"), float("nan"))
                )
                rho, p = float(rho), float(p)
                data[obj][concept] = {"rho": rho, "p": p, "n": len(d)}
                ptxt = "p < 0.001" if p < 1e-3 else f"p = {p:.2g}"
                rtxt = (
                    f"ρ = {rho:.2f} ({ptxt}, n = {len(d)})" if np.isfinite(rho) else f"ρ n/a (n = {len(d)})"
                )
                ax.scatter(
                    d,
                    v,
                    s=10,
                    marker=MARKERS[i % len(MARKERS)],
                    label=f"{concept}: {rtxt}",
                    edgecolors="white",
                    linewidths=0.4,
                )
            ax.set_xlabel("L2 distance from init (final, mean over vectors)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.25, lw=0.4)
            if data[obj]:
                ax.legend(loc="best", frameon=False)
        fig.tight_layout()
    return fig, data


def dataset_size_plot(
    df: pd.DataFrame, metrics: tuple[str, ...] = DEFAULT_OBJECTIVES
) -> tuple[Figure, dict] | tuple[None, dict]:
    """`metrics` (registered names) against the training-set size, mean per size (Fig. 12). The size is what
    the run used (load.n_images: data.n_images=null counts the folder's images)."""
    done = completed(df, metrics)
    if "n_images" not in done:
        return None, {}
    done = done.assign(n=pd.to_numeric(done["n_images"], errors="coerce")).dropna(subset=["n"])
    if done["n"].nunique() < 2:
        return None, {}
    data: dict[str, dict] = {}
    with matplotlib.rc_context(STYLE):
        fig = new_figure(len(metrics) * COLUMN_IN, 2.2)
        for j, (obj, label) in enumerate((name, get(name).label) for name in metrics):
            ax = fig.add_subplot(1, len(metrics), j + 1)
            data[obj] = {}
            for i, (concept, grp) in enumerate(done.groupby("concept")):
                mean = grp.groupby("n")[obj].mean()
                data[obj][concept] = mean.to_dict()
                ax.scatter(grp["n"], grp[obj], s=6, alpha=0.4, color=f"C{i}", linewidths=0)
                ax.plot(
                    mean.index,
                    mean.values,
                    marker=MARKERS[i % len(MARKERS)],
                    ms=3,
                    color=f"C{i}",
                    label=concept,
                )
            ax.set_xlabel("training images used")
            ax.set_ylabel(label)
            ax.grid(alpha=0.25, lw=0.4)
            if done["concept"].nunique() > 1:
                ax.legend(frameon=False)
        fig.tight_layout()
    return fig, data


def curves_plot(hist: pd.DataFrame, title: str = "") -> Figure:
    """Loss (raw and smoothed) and the mean L2 distance from init against the step, for one run."""
    with matplotlib.rc_context(STYLE):
        fig = new_figure(COLUMN_IN, 1.5)
        a1, a2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        if "loss" in hist:
            a1.plot(hist["step"], hist["loss"], color="0.7", lw=0.4)
            win = max(1, len(hist) // 20)
            a1.plot(hist["step"], hist["loss"].rolling(win, min_periods=1).mean(), color="C0")
        a1.set_xlabel("step")
        a1.set_ylabel("loss")
        cols = [c for c in hist.columns if c.startswith("dist_l2_") and c != "dist_l2_mean"]
        for c in cols:
            a2.plot(hist["step"], hist[c], lw=0.5, alpha=0.6, label=c.removeprefix("dist_l2_"))
        if "dist_l2_mean" in hist:
            a2.plot(hist["step"], hist["dist_l2_mean"], color="black", label="mean")
        a2.set_xlabel("step")
        a2.set_ylabel("L2 from init")
        if title:
            fig.suptitle(title, fontsize=6)
        fig.tight_layout()
    return fig


def curves_overlay(df: pd.DataFrame, histories: dict[str, pd.DataFrame]) -> Figure | None:
    """All runs' smoothed loss and mean distance curves in one figure, coloured by family."""
    if not histories:
        return None
    df = df.assign(family=coarse_families(df, 24))  # a search: one colour per family of what varied least
    styles = family_styles(df)
    fam = dict(zip(df["run"], df["family"]))
    with matplotlib.rc_context(STYLE):
        fig = new_figure(2 * COLUMN_IN, 2.2)
        a1, a2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        shown = set()
        rank = {f: i for i, f in enumerate(family_order(df))}
        for run, h in sorted(histories.items(), key=lambda rh: rank[fam[rh[0]]]):
            colour = styles[fam[run]][0]
            lab = fam[run] if fam[run] not in shown else None
            shown.add(fam[run])
            if "loss" in h:
                a1.plot(
                    h["step"],
                    h["loss"].rolling(max(1, len(h) // 20), min_periods=1).mean(),
                    color=colour,
                    lw=0.6,
                    label=lab,
                )
            if "dist_l2_mean" in h:
                a2.plot(h["step"], h["dist_l2_mean"], color=colour, lw=0.6)
        a1.set(xlabel="step", ylabel="loss (smoothed)")
        a2.set(xlabel="step", ylabel="L2 from init (mean)")
        fig.tight_layout()
        if len(shown) <= 24:
            fig.legend(
                *a1.get_legend_handles_labels(),
                loc="upper center",
                bbox_to_anchor=(0.5, 0.0),
                frameon=False,
                ncol=4,
                fontsize=6,
            )
    return fig
