"""Sweep folders -> runs.csv, configurations.csv, findings.csv, the plots (PNG + SVG) and report.html, in one
call; optionally the same tables and plots logged to the sweep's W&B summary run through sweeper.tracking."""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from analysis import dreambench, hypervolume, plots
from analysis.findings import findings, reference_note
from analysis.load import history, load_runs
from analysis.pareto import pareto_mask
from analysis.report import write_report
from analysis.stats import configurations
from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES, get, summarised_metrics
from sweeper.store.atomic import write_text
from sweeper.tracking import Tracker

log = logging.getLogger(__name__)


def default_out(sweep_dirs: list[str | Path]) -> Path:
    """<sweep>/analysis for one sweep; ./analysis-merged for several."""
    return Path(sweep_dirs[0]) / "analysis" if len(sweep_dirs) == 1 else Path("analysis-merged")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "run"


def analyse(
    sweep_dirs: list[str | Path],
    out: str | Path | None = None,
    *,
    wandb: bool | None = None,
    max_grids: int | None = None,
    hv_reference: tuple[float, float] | None = None,
    axes: tuple[str, str] = DEFAULT_OBJECTIVES,
    colour_by: str | None = None,
    run_curves: bool = False,
) -> dict[str, Any]:
    """Everything `python -m analysis` does. Returns {"runs": DataFrame, "files": {name: Path},
    "tradeoff": plotted data, "distance": rho per objective/concept, "dataset_size": means,
    "hypervolume": per scope, "hypervolume_trace": against compute, "tracked": bool}. wandb: None = log when
    the sweep's runs had tracking on; True = always; False = never. hv_reference: the hypervolume's reference
    point (image, text), fixed before the runs; None = from the recorded reference points
    (analysis.hypervolume). axes: the two registered metrics of the tradeoff plot (x, y). colour_by: the
    configuration key a search's cloud is coloured by (plots.colour_axis; default: what varied most).
    run_curves: draw each run's curves as its own figure (curves.png always has every run's)."""
    sweep_dirs = list(sweep_dirs)
    axes = (get(axes[0]).name, get(axes[1]).name)  # an unknown metric: KeyError naming the registered ones
    df = load_runs(sweep_dirs)  # raises StoreError (clear message) before anything is written
    out = Path(out) if out is not None else default_out(sweep_dirs)
    with output_folder(out):
        return _analyse(df, out, wandb, max_grids, hv_reference, axes, colour_by, run_curves)


@contextmanager
def output_folder(out: Path) -> Iterator[Path]:
    """Hold <out>/.analysis.lock while writing, so two analyses into one folder take turns; whoever holds it
    removes the temporary files (.<name>.*.tmp) an analysis killed mid-write left behind."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".analysis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for tmp in out.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        yield out


def _analyse(
    df: pd.DataFrame,
    out: Path,
    wandb: bool | None,
    max_grids: int | None,
    hv_reference: tuple[float, float] | None = None,
    axes: tuple[str, str] = DEFAULT_OBJECTIVES,
    colour_by: str | None = None,
    run_curves: bool = False,
) -> dict[str, Any]:
    files: dict[str, Path] = {}
    runs_csv = df.drop(columns=["configuration_values"])
    files["runs.csv"] = write_text(out / "runs.csv", runs_csv.to_csv(index=False))
    configs = configurations(df)
    files["configurations.csv"] = write_text(out / "configurations.csv", configs.to_csv(index=False))
    bench = dreambench.dreambench_table(df)
    if bench is not None:
        files["dreambench.csv"] = write_text(out / "dreambench.csv", bench.to_csv(index=False))
    found, untested = findings(df)
    hv = hypervolume.front_hypervolumes(df, hv_reference)
    files["hypervolume.csv"] = write_text(out / "hypervolume.csv", hv.to_csv(index=False))
    if len(hv):
        found = pd.DataFrame(found.to_dict("records") + hypervolume.findings_rows(hv), columns=found.columns)
    files["findings.csv"] = write_text(out / "findings.csv", found.to_csv(index=False))

    titles: dict[str, Path | None] = {}
    fig, tradeoff = plots.tradeoff_plot(df, x=axes[0], y=axes[1], colour_by=colour_by)
    png, svg = plots.save(fig, out, "tradeoff")
    files.update({"tradeoff.png": png, "tradeoff.svg": svg})
    titles[_tradeoff_title(axes)] = png

    fig, distance = plots.distance_plot(df)
    png, svg = plots.save(fig, out, "objectives_vs_distance")
    files.update({"objectives_vs_distance.png": png, "objectives_vs_distance.svg": svg})
    titles["Objectives vs distance from the init embedding"] = png

    hv_trace = hypervolume.hypervolume_trace(df, hv_reference)
    hv_fig = hypervolume.hypervolume_plot(hv_trace)
    if hv_fig is not None:
        png, svg = plots.save(hv_fig, out, "hypervolume_vs_compute")
        files.update({"hypervolume_vs_compute.png": png, "hypervolume_vs_compute.svg": svg})
        titles["Hypervolume of the front against compute spent"] = png

    notes = []
    fig, sizes = plots.dataset_size_plot(df)
    if fig is not None:
        png, svg = plots.save(fig, out, "objectives_vs_dataset_size")
        files.update({"objectives_vs_dataset_size.png": png, "objectives_vs_dataset_size.svg": svg})
        titles["Objectives vs training-set size"] = png
    else:
        notes.append("No dataset-size plot: fewer than two distinct data.n_images among completed runs.")

    histories = {r: h for r, d in zip(df["run"], df["run_dir"]) if (h := history(d)) is not None and len(h)}
    fig = plots.curves_overlay(df, histories)
    if fig is not None:
        png, svg = plots.save(fig, out, "curves")
        files.update({"curves.png": png, "curves.svg": svg})
        titles["Loss and distance curves (all runs)"] = png
    curve_pngs = {}
    # on request only: at hundreds of runs one figure per run was most of the analysis time
    for run, h in histories.items() if run_curves else []:
        fig = plots.curves_plot(h, title=run)
        curve_pngs[run] = plots.save(fig, out / "curves", _slug(run), svg=False, dpi=120)[0]

    if note := reference_note(df):
        notes.insert(0, note)
    files["report.html"] = write_report(
        df,
        titles,
        out,
        curve_pngs,
        notes,
        max_grids=max_grids,
        findings=found,
        untested=untested,
        configs=configs,
        front=tradeoff["front_table"],
        dreambench=dreambench.table_html(bench, df),
    )
    result = {
        "runs": df,
        "configurations": configs,
        "dreambench": bench,
        "findings": found,
        "untested": untested,
        "files": files,
        "tradeoff": tradeoff,
        "distance": distance,
        "dataset_size": sizes,
        "hypervolume": hv,
        "hypervolume_trace": hv_trace,
        "out": out,
    }
    images = {Path(p).stem: p for p in titles.values()}
    result["tracked"] = wandb is not False and log_to_tracking(df, images, out, force=bool(wandb), axes=axes)
    return result


def _tradeoff_title(axes: tuple[str, str]) -> str:
    if tuple(axes) == DEFAULT_OBJECTIVES:
        return "Image vs text similarity (the tradeoff plane)"
    x, y = get(axes[0]), get(axes[1])
    return f"{x.words[:1].upper()}{x.words[1:]} vs {y.words} (the tradeoff plane)"


def log_to_tracking(
    df: pd.DataFrame,
    images: dict[str, Path],
    out: Path,
    force: bool = False,
    axes: tuple[str, str] = DEFAULT_OBJECTIVES,
) -> bool:
    """Log the runs table, the plots, a scatter of `axes` and summary numbers to the sweep's W&B summary run through
    sweeper.tracking.Tracker, with the tracking settings of the sweep's own runs (offline by default).
    The summary run is named after `out` and grouped with the sweep's trials (tracking.group, else the
    sweep folder's name, as the trials are). Tracking off in the sweep: nothing is logged unless `force`
    (then offline). Returns whether a W&B run was written."""
    cfg = OmegaConf.load(Path(df["run_dir"].iloc[0]) / "config.yaml")
    OmegaConf.set_struct(cfg, False)
    t = OmegaConf.select(cfg, "tracking", default=None)
    on = t is not None and bool(t.get("enabled", False)) and t.get("mode") != "disabled"
    if not on and not force:
        return False
    if not on:
        cfg.tracking = OmegaConf.merge(t or {}, {"enabled": True, "mode": "offline", "log_images": True})
    if not cfg.tracking.get("group"):
        cfg.tracking.group = "+".join(Path(s).name for s in sorted(df["sweep"].unique()))
    cfg.tracking.dir = None  # the summary run lives beside the report: <out>/wandb/
    with wandb_data_dir(out / "wandb"):
        return _log_summary_run(cfg, df, images, out, axes)


@contextmanager
def wandb_data_dir(path: Path) -> Iterator[None]:
    """W&B stages artifact files (a logged Table's too) under WANDB_DATA_DIR, ~/.local/share/wandb by default:
    point it under the analysis output while the summary run lives, and restore it after."""
    before = os.environ.get("WANDB_DATA_DIR")
    path.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_DATA_DIR"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("WANDB_DATA_DIR", None)
        else:
            os.environ["WANDB_DATA_DIR"] = before


def scatter_points(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The completed runs' (x, y) with kind run or front (on the Pareto front), plus one row per reference
    point (image only / prompt only, the median over runs) of kind reference."""
    done = df[df["status"] == "completed"]
    xs = pd.to_numeric(done[x], errors="coerce") if x in done else pd.Series(dtype=float)
    ys = pd.to_numeric(done[y], errors="coerce") if y in done else pd.Series(dtype=float)
    ok = xs.notna() & ys.notna()
    xs, ys, names = (
        xs[ok].to_numpy(float),
        ys[ok].to_numpy(float),
        [Path(str(r)).name for r in done.loc[ok, "run"]],
    )
    front = get(x).oriented(xs), get(y).oriented(ys)
    on_front = pareto_mask(*front) if len(xs) else []
    rows = [
        {"name": n, "kind": "front" if f else "run", x: float(a), y: float(b)}
        for n, f, a, b in zip(names, on_front, xs, ys)
    ]
    rows += [
        {"name": key, "kind": "reference", x: rx, y: ry}
        for key, (rx, ry) in plots._references(df, x, y).items()
    ]
    return pd.DataFrame(rows, columns=["name", "kind", x, y])


def _log_summary_run(
    cfg: Any, df: pd.DataFrame, images: dict[str, Any], out: Path, axes: tuple[str, str]
) -> bool:
    tracker = Tracker.from_config(cfg, out, job_type="analysis")
    if not tracker.active:
        return False
    keep = [
        c
        for c in df.columns
        if not c.startswith(("per_prompt.", "protocol.", "seeds.")) and c != "configuration_values"
    ]
    tracker.log_table("runs", df[keep])
    tracker.log_images({k: Path(v) for k, v in images.items()}, prefix="plots")
    x, y = axes  # the tradeoff plot's registered metric names
    tracker.log_scatter(
        "tradeoff_scatter",
        scatter_points(df, x, y),
        x,
        y,
        title=f"{get(x).label} vs {get(y).label} (kind: run, front, reference)",
    )
    done = df[df["status"] == "completed"]
    best = {
        f"best_{m.name}": float(
            pd.to_numeric(done[m.name], errors="coerce").max()
            if m.direction == "maximize"
            else pd.to_numeric(done[m.name], errors="coerce").min()
        )
        for m in summarised_metrics()
        if len(done) and m.name in done
    }
    tracker.summary(
        {
            "runs_total": len(df),
            "runs_completed": len(done),
            "runs_failed": int((df["status"] == "failed").sum()),
            **best,
        }
    )
    tracker.finish("completed")
    return True
