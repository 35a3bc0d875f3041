"""The plots: the tradeoff plane (the paper's Fig. 10a), objectives vs distance from init and vs
dataset size (Fig. 12), loss/distance curves. Each function returns (figure, plotted data) so tests
and the report can check exactly what was drawn. Sized for a paper column (3.3 in wide per facet).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from analysis.labels import repel_labels  # noqa: E402
from analysis.load import completed, plot_families  # noqa: E402
from analysis.pareto import pareto_front  # noqa: E402
from sweeper.atomic import save_figure  # noqa: E402

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
OBJECTIVES = {
    "image_similarity": "image similarity (reconstruction)",
    "text_similarity": "text similarity (editability)",
}
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


def family_styles(families) -> dict[str, tuple[Any, str]]:
    """Colour and marker per family, "ours" first; pairs stay distinct for up to 100 families."""
    import matplotlib.colors as mcolors

    names = sorted(set(families), key=lambda f: (f != "ours", f))
    colours = list(mcolors.TABLEAU_COLORS.values())
    return {f: (colours[i % 10], MARKERS[(i + i // 10) % len(MARKERS)]) for i, f in enumerate(names)}


def _facets(concepts: list[str], width: float, height: float) -> tuple[Figure, list]:
    n = max(len(concepts), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = new_figure(width * cols, height * rows)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def tradeoff_plot(df: pd.DataFrame, label_all_below: int = 15, max_families: int = 10) -> tuple[Figure, dict]:
    """x = image similarity, y = text similarity; one point per completed run with CI bars, colour and
    marker by family, the Pareto front (both maximised), the reference points; one facet per concept.
    Labels: every family once when a facet has fewer than `label_all_below` runs, else the front only.
    More than `max_families` families (a search): coarser families for colours (load.plot_families)."""
    done = completed(df)
    coarse = len(done) and done["family"].nunique() > max_families
    if len(done):  # colours/markers by family; coarser families when a search gives every run its own
        done = done.assign(family=plot_families(done, max_families))
    concepts = sorted(df["concept"].dropna().unique()) or ["unknown"]
    styles = family_styles(done["family"]) if len(done) else {}
    data: dict[str, Any] = {"concepts": {}, "styles": styles, "coarsened": bool(coarse)}
    with matplotlib.rc_context(STYLE):
        fig, axes = _facets(concepts, COLUMN_IN, 2.8)
        pending = []
        for ax, concept in zip(axes, concepts):
            sub = done[done["concept"] == concept]
            x, y = sub["image_similarity"].to_numpy(float), sub["text_similarity"].to_numpy(float)
            for fam, grp in sub.groupby("family", sort=False):
                colour, marker = styles[fam]
                ax.errorbar(
                    grp["image_similarity"],
                    grp["text_similarity"],
                    xerr=_ci_err(grp, "image_similarity"),
                    yerr=_ci_err(grp, "text_similarity"),
                    fmt=marker,
                    color=colour,
                    ms=3.5,
                    mew=0.5,
                    mec="white",
                    elinewidth=0.5,
                    capsize=1.2,
                    label=fam,
                    zorder=3,
                )
            front = pareto_front(x, y)
            if len(front) > 1:
                ax.plot(x[front], y[front], "--", color="0.25", lw=0.7, zorder=2, label="Pareto front")
            refs = _references(df[df["concept"] == concept])
            for key, (rx, ry) in refs.items():
                ax.plot([rx], [ry], REFERENCES[key][1], color="black", ms=5, zorder=4, ls="none")
            ax.set_xlabel(OBJECTIVES["image_similarity"])
            ax.set_ylabel(OBJECTIVES["text_similarity"])
            if len(concepts) > 1:
                ax.set_title(concept)
            ax.grid(alpha=0.25, lw=0.4)
            ax.margins(0.15)
            ax.autoscale_view()
            ax.set_xlim(ax.get_xlim())
            ax.set_ylim(ax.get_ylim())
            # what to label: the front first (it matters most), then the rest; each family once
            on_front = set(front.tolist())
            order = list(front) + (
                [i for i in range(len(sub)) if i not in on_front] if len(sub) < label_all_below else []
            )
            seen, lab_xy, lab_txt = set(), [], []
            for i in order:
                fam = sub["family"].iloc[i]
                if fam not in seen:
                    seen.add(fam)
                    lab_xy.append((x[i], y[i]))
                    lab_txt.append(fam)
            for key, (rx, ry) in refs.items():
                lab_xy.append((rx, ry))
                lab_txt.append(REFERENCES[key][0])
            bars = []
            for col, other, horizontal in (
                ("image_similarity", "text_similarity", True),
                ("text_similarity", "image_similarity", False),
            ):
                err = _ci_err(sub, col)
                if err is not None:
                    for v, o, lo, hi in zip(sub[col], sub[other], *err):
                        seg = (v - lo, o, v + hi, o) if horizontal else (o, v - lo, o, v + hi)
                        bars.append(seg)
            pending.append((ax, lab_xy, lab_txt, list(zip(x, y)) + list(refs.values()), bars))
            data["concepts"][concept] = {
                "runs": sub["run"].tolist(),
                "x": x.tolist(),
                "y": y.tolist(),
                "family": sub["family"].tolist(),
                "front": [sub["run"].iloc[i] for i in front],
                "references": refs,
            }
        handles, labels = [], []
        for ax in axes:  # every facet's families, once each
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        for key, (name, marker) in REFERENCES.items():
            if any(key in c["references"] for c in data["concepts"].values()):
                handles.append(axes[0].plot([], [], marker, color="black", ms=5, ls="none")[0])
                labels.append(name)
        fig.tight_layout()
        for ncol in range(min(3, len(labels)), 0, -1):  # as many columns as fit the figure's width
            leg = fig.legend(
                handles,
                labels,
                loc="upper center",
                bbox_to_anchor=(0.5, 0.0),
                frameon=False,
                ncol=ncol,
                fontsize=6,
                handletextpad=0.3,
                columnspacing=0.8,
                title="families coarsened (runs.csv has each run's own)" if coarse else None,
                title_fontsize=6,
            )
            if ncol == 1 or leg.get_window_extent(fig.canvas.get_renderer()).width <= fig.bbox.width:
                break
            leg.remove()
        for (ax, lab_xy, lab_txt, obstacles, bars), concept in zip(pending, concepts):
            data["concepts"][concept]["labels"] = repel_labels(ax, lab_xy, lab_txt, obstacles, bars)
    return fig, data


def _ci_err(grp: pd.DataFrame, col: str) -> np.ndarray | None:
    lo, hi = f"{col}_ci_low", f"{col}_ci_high"
    if lo not in grp or hi not in grp:
        return None
    v = grp[col].to_numpy(float)
    err = np.vstack(
        [
            v - pd.to_numeric(grp[lo], errors="coerce").to_numpy(float),
            pd.to_numeric(grp[hi], errors="coerce").to_numpy(float) - v,
        ]
    )
    return np.clip(np.nan_to_num(err, nan=0.0), 0, None)


def _references(df: pd.DataFrame) -> dict[str, tuple[float, float]]:
    refs = {}
    for key in REFERENCES:
        cx, cy = f"ref.{key}.image_similarity", f"ref.{key}.text_similarity"
        if cx in df and cy in df:
            rx = pd.to_numeric(df[cx], errors="coerce").median()
            ry = pd.to_numeric(df[cy], errors="coerce").median()
            if np.isfinite(rx) and np.isfinite(ry):
                refs[key] = (float(rx), float(ry))
    return refs


def distance_plot(df: pd.DataFrame, dist: str = "final_dist_l2") -> tuple[Figure, dict]:
    """Each objective against the final distance of the learned vectors from their init; Spearman rho
    per concept in the legend."""
    done = completed(df)
    done = done[done[dist].notna()]
    data: dict[str, dict] = {}
    with matplotlib.rc_context(STYLE):
        fig = new_figure(2 * COLUMN_IN, 2.4)
        for j, (obj, label) in enumerate(OBJECTIVES.items()):
            ax = fig.add_subplot(1, 2, j + 1)
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


def dataset_size_plot(df: pd.DataFrame) -> tuple[Figure, dict] | tuple[None, dict]:
    """Objectives against the training-set size (data.n_images), mean per size (Fig. 12)."""
    done = completed(df)
    if "data.n_images" not in done:
        return None, {}
    done = done.assign(n=pd.to_numeric(done["data.n_images"], errors="coerce")).dropna(subset=["n"])
    if done["n"].nunique() < 2:
        return None, {}
    data: dict[str, dict] = {}
    with matplotlib.rc_context(STYLE):
        fig = new_figure(2 * COLUMN_IN, 2.2)
        for j, (obj, label) in enumerate(OBJECTIVES.items()):
            ax = fig.add_subplot(1, 2, j + 1)
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
            ax.set_xlabel("training images (data.n_images)")
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
    styles = family_styles(df["family"])
    fam = dict(zip(df["run"], df["family"]))
    with matplotlib.rc_context(STYLE):
        fig = new_figure(2 * COLUMN_IN, 2.2)
        a1, a2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
        shown = set()
        for run, h in histories.items():
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
