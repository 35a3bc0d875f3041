"""report.html: one page (no network, no external script) beside the plots it shows and a thumbs/ folder of
sample-grid thumbnails, all referenced by relative paths and loaded lazily, so that its size grows with the
rows of its tables, not with the images (500 runs: about 2 MB, bench/analysis_scale.py): first the findings
(each claim of the paper the runs can test, with its verdict), then the plots, the Pareto front, the
configurations table, a sortable table with one row per run, failed runs with their errors, each run's
sample grids (and curves, when drawn: `python -m analysis --run-curves`). Move the analysis folder together
with the sweep: the grids' links point into the run folders."""

from __future__ import annotations

import html
import io
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from PIL import Image

from sweeper.evaluation.metrics import all_metrics, summarised_metrics
from sweeper.store.atomic import write_bytes, write_text

THUMB_PX = (
    384  # sample grids wider than this are shown as a JPEG thumbnail (a 16-sample grid is ~1 MB as a PNG)
)
THUMBS = "thumbs"  # <out>/thumbs/<run>/<grid>.jpg

_LEADING = [("run", "run"), ("concept", "concept"), ("family", "family"), ("status", "status")]
_TRAILING = [
    ("seed", "seed"),
    ("trial_number", "trial"),
    ("final_dist_l2", "L2 from init"),
    ("loss_tail_mean", "loss (mean of last 25% of rows)"),
    ("last_step", "steps"),
    ("wall_time_s", "wall time (s)"),
    ("effective_lr", "effective lr"),
    ("inversion.num_vectors", "vectors"),
    ("n_images", "images"),
    ("sweep", "sweep"),
    ("error", "error"),
]


def table_columns() -> list[tuple[str, str]]:
    """The runs table's (column, header): every summarised metric of the registry after the status."""
    return _LEADING + [(m.name, m.short) for m in summarised_metrics()] + _TRAILING


TOO_FEW = "too few samples"  # beside an interval below the sample count its coverage was measured at

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
.plots img{max-width:100%;border:1px solid #eee;margin:6px 0}
table{border-collapse:collapse;font-size:12px}th,td{border:1px solid #ddd;padding:3px 6px;text-align:left}
th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0}
th.asc::after{content:" \\25B2"}th.desc::after{content:" \\25BC"}
tr.failed td{background:#fff0f0}tr.running td{background:#f4f8ff}tr.stale td{background:#fff8e0}
tr.pruned td{background:#f3f3f3;color:#666}tr.interrupted td{background:#fff4e8}
td.holds{color:#060;font-weight:bold}td.contradicted{color:#a00;font-weight:bold}td.inconclusive{color:#666}td.confounded{color:#666;font-style:italic}td.dominated{color:#a00}
p.dominated{color:#a00;font-weight:bold}
.findings{border:2px solid #333;padding:4px 16px 12px;margin:12px 0}
td.num{text-align:right;font-variant-numeric:tabular-nums}.few{color:#a60;font-size:10px}
.grids img{height:192px;margin:2px;border:1px solid #eee}.err{color:#a00;white-space:pre-wrap}
pre{font-size:11px;background:#f8f8f8;padding:6px;overflow-x:auto}
"""

# Click a header to sort by it; numbers (data-v) sort numerically, empty cells last.
JS = """
document.querySelectorAll('table.sortable th').forEach(function(th){
  th.addEventListener('click', function(){
    var col = th.cellIndex;  // the column within its own table (the report has several sortable tables)
    var table = th.closest('table'), body = table.tBodies[0];
    var asc = !th.classList.contains('asc');
    table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
    th.classList.add(asc ? 'asc' : 'desc');
    var rows = Array.prototype.slice.call(body.rows);
    function key(r){var c = r.cells[col]; var v = c.getAttribute('data-v'); return v === null ? c.textContent : v;}
    rows.sort(function(a, b){
      var x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
      if (x === '' || y === '') return (x === '') - (y === '');
      var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? r : -r;
    });
    rows.forEach(function(r){body.appendChild(r);});
  });
});
// report.html#sort=<column name> (twice for descending) opens the table sorted: a shareable link
(function(){
  var m = location.hash.match(/^#sort=([^&]+)(&desc)?$/); if (!m) return;
  document.querySelectorAll('table.sortable th').forEach(function(th){
    if (th.textContent === decodeURIComponent(m[1])) { th.click(); if (m[2]) th.click(); }
  });
})();
"""


def _blank(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _true(v) -> bool:
    return not _blank(v) and str(v).lower() in ("true", "1", "1.0")


def _cell(row: pd.Series, col: str) -> str:
    v = row.get(col)
    if _blank(v):
        return "<td></td>"
    if col in {m.name for m in all_metrics()}:
        lo, hi = row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high")
        ci = "" if _blank(lo) or _blank(hi) else f" [{float(lo):.3f}, {float(hi):.3f}]"
        if ci and _true(row.get(f"{col}_ci_too_few_samples")):
            ci += f' <span class="few" title="below the sample count its coverage was measured at">({TOO_FEW})</span>'
        return f'<td class="num" data-v="{float(v):.6g}">{float(v):.3f}{ci}</td>'
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f'<td class="num" data-v="{float(v):.6g}">{float(v):.4g}</td>'
    return f"<td>{html.escape(str(v))}</td>"


def _folder_link(row: pd.Series, out_dir: Path | None) -> str:
    """The run's name linking to its run folder (relative to the report, so the pair can be moved together)."""
    name = html.escape(str(row["run"]))
    if out_dir is None or _blank(row.get("run_dir")):
        return name
    href = html.escape(os.path.relpath(str(row["run_dir"]), out_dir) + "/")
    return f'<a href="{href}">{name}</a>'


def runs_table(df: pd.DataFrame, out_dir: Path | None = None) -> str:
    cols = [(c, name) for c, name in table_columns() if c in df.columns]
    head = "".join(f"<th>{html.escape(name)}</th>" for _, name in cols)
    body = []
    for _, row in df.iterrows():
        cells = "".join(
            f"<td>{_folder_link(row, out_dir)}</td>" if c == "run" else _cell(row, c) for c, _ in cols
        )
        body.append(
            f'<tr class="run {html.escape(str(row["status"]))}" id="{_anchor(row["run"])}">{cells}</tr>'
        )
    return (
        f'<table class="sortable" id="runs"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _anchor(run: str) -> str:
    return "run-" + "".join(ch if ch.isalnum() else "-" for ch in str(run))


def _failed(df: pd.DataFrame) -> str:
    failed = df[df["status"] == "failed"]
    if not len(failed):
        return "<p>No failed runs.</p>"
    items = []
    for _, row in failed.iterrows():
        tb = ""
        try:
            tb = json.loads((Path(row["run_dir"]) / "status.json").read_text()).get("traceback") or ""
        except (OSError, ValueError):
            pass
        tb_html = f"<details><summary>traceback</summary><pre>{html.escape(tb)}</pre></details>" if tb else ""
        items.append(
            f'<li><a href="#{_anchor(row["run"])}">{html.escape(row["run"])}</a>: '
            f'<span class="err">{html.escape(str(row["error"] or "(no error recorded)"))}</span>{tb_html}</li>'
        )
    return f"<ul>{''.join(items)}</ul>"


def thumbnail(src: Path, out_dir: Path, run: str) -> Path:
    """The image to show for the grid `src`: itself when at most THUMB_PX wide, else a JPEG thumbnail under
    <out_dir>/thumbs/<run>/ (written atomically; kept while it is newer than its grid, so a second analysis
    of the same folders redraws none)."""
    thumb = out_dir / THUMBS / _slug(run) / f"{src.stem}.jpg"
    if thumb.exists() and thumb.stat().st_mtime >= src.stat().st_mtime:
        return thumb
    with Image.open(src) as im:
        if im.width <= THUMB_PX:
            return src
        # reduced by an integer factor first, then resampled: several times faster than resampling it whole
        im.thumbnail(
            (THUMB_PX, THUMB_PX * im.height // im.width + 1), Image.Resampling.BILINEAR, reducing_gap=2.0
        )
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=80)
    return write_bytes(thumb, buf.getvalue())


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in str(s)).strip("_") or "run"


def _rel(path: Path, out_dir: Path) -> str:
    return html.escape(os.path.relpath(path, out_dir))


def _run_sections(df: pd.DataFrame, curve_pngs: dict[str, Path], out_dir: Path, max_grids: int | None) -> str:
    """One closed <details> per run: its sample grids as lazily loaded thumbnails linking to the full grid, its
    curves when drawn (else a link to history.csv, which curves.png draws with every other run)."""
    parts = []
    for _, row in df.iterrows():
        run_dir = Path(row["run_dir"])
        grids = sorted(
            (run_dir / "samples").glob("*.png"), key=lambda p: (p.stem != "reconstruction", p.name)
        )
        shown = grids if max_grids is None else grids[:max_grids]
        imgs = "".join(
            f'<a href="{_rel(p, out_dir)}"><img alt="{html.escape(p.stem)}" title="{html.escape(p.stem)}" '
            f'loading="lazy" src="{_rel(thumbnail(p, out_dir, row["run"]), out_dir)}"></a>'
            for p in shown
        )
        more = (
            f"<p>{len(grids) - len(shown)} more grids in {html.escape(str(run_dir / 'samples'))}</p>"
            if len(shown) < len(grids)
            else ""
        )
        curve = curve_pngs.get(row["run"])
        if curve:
            curve_html = f'<img alt="curves" loading="lazy" src="{_rel(curve, out_dir)}" style="width:520px">'
        elif (run_dir / "history.csv").exists():
            curve_html = f'<p><a href="{_rel(run_dir / "history.csv", out_dir)}">history.csv</a></p>'
        else:
            curve_html = ""
        status = html.escape(str(row["status"]))
        parts.append(
            f'<details class="runsec"><summary><b>{html.escape(row["run"])}</b> — {html.escape(row["family"])} '
            f'— {status}</summary>{curve_html}<div class="grids">{imgs or "<p>no samples yet</p>"}</div>'
            f"{more}</details>"
        )
    return "".join(parts)


def _fmt(v, digits: int = 3) -> str:
    return "" if _blank(v) else f"{float(v):+.{digits}f}"


def _dominated_lines(found: pd.DataFrame) -> str:
    """Each configuration a reference point beats on both objectives, said first (findings' reference rows)."""
    rows = found[found["source"] == "reference point"].drop_duplicates(["claim", "comparison"])
    return "".join(
        f'<p class="dominated">{html.escape(str(r["comparison"]).split(" - ")[0])}: '
        f"{html.escape(str(r['claim']))} ({html.escape(str(r['verdict']))}).</p>"
        for _, r in rows.iterrows()
    )


FINDINGS_HEAD = (
    "<thead><tr><th>claim</th><th>source</th><th>objective</th><th>comparison</th>"
    "<th>paper</th><th>effect</th><th>95% interval</th><th>n</th><th>verdict</th></tr></thead>"
)
FOLD_THIN_ROWS = 12  # more "not enough runs" rows than this: folded under the table


def findings_section(found: pd.DataFrame | None, untested: list[str] | None, notes: list[str] | None) -> str:
    """The report's first section: one row per claim and objective, with effect, interval, n and verdict; when
    more than FOLD_THIN_ROWS rows have too few runs for a verdict (a search's single runs), those are folded
    into a closed <details> below the table."""
    if found is None or not len(found):
        body = "<p>No claim of the paper can be tested from these runs (no completed runs to compare).</p>"
    else:
        counts = found["verdict"].value_counts().to_dict()
        summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        rows: list[str] = []
        thin: list[str] = []
        folded = (found["verdict"].astype(str).str.startswith("not enough runs")).sum() > FOLD_THIN_ROWS
        for _, r in found.iterrows():
            ci = "" if _blank(r["ci_low"]) else f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
            cls = str(r["verdict"]).split(":")[0].replace(" ", "-")
            (thin if folded and str(r["verdict"]).startswith("not enough runs") else rows).append(
                f"<tr><td>{html.escape(str(r['claim']))}</td><td>{html.escape(str(r['source']))}</td>"
                f"<td>{html.escape(str(r['objective']))}</td><td>{html.escape(str(r['comparison']))}</td>"
                f'<td>{html.escape(str(r["paper"]))}</td><td class="num">{_fmt(r["effect"])}</td>'
                f'<td class="num">{ci}</td><td class="num">{int(r["n"])}</td>'
                f'<td class="{cls}">{html.escape(str(r["verdict"]))}</td></tr>'
            )
        body = (
            f"{_dominated_lines(found)}<p>{summary}. Effects are paired differences (configuration - reference, "
            "same concept and seed), signed distances to the tradeoff curve (positive beyond it) or Spearman's "
            "rho within concept; 95% intervals; <i>paper</i> is what the paper reports. "
            "A verdict needs the interval to exclude no effect; these are properties of the runs analysed "
            "(their model, concepts, steps), not a replication of the paper.</p>"
            f'<table id="findings">{FINDINGS_HEAD}<tbody>{"".join(rows)}</tbody></table>'
        )
        if thin:  # a search: one comparison per pair of single runs would push the plots off the page
            body += (
                f"<details><summary>{len(thin)} more comparisons without enough runs for a verdict (add seeds)"
                f'</summary><table id="findings-thin">{FINDINGS_HEAD}<tbody>{"".join(thin)}</tbody></table>'
                "</details>"
            )
    if untested:
        body += f"<p>Not testable from these runs: {html.escape(', '.join(untested))}.</p>"
    body += "".join(f"<p><i>{html.escape(n)}</i></p>" for n in notes or [])
    return f'<div class="findings"><h2 id="findings-title">Findings</h2>{body}</div>'


def front_section(front: pd.DataFrame | None, df: pd.DataFrame, out_dir: Path) -> str:
    """The Pareto front of each facet of the tradeoff plot: the key its label shows (#trial number or [k]),
    the configuration, both means, and each of its runs linked to its row and its run folder."""
    if front is None or not len(front):
        return "<p>No Pareto front: no completed runs.</p>"
    by_run = {str(r["run"]): r for _, r in df.iterrows()}
    rows = []
    for _, r in front.iterrows():
        runs = ", ".join(
            f'<a href="#{_anchor(run)}">row</a> / {_folder_link(by_run[run], out_dir)}'
            if run in by_run
            else html.escape(run)
            for run in r["runs"]
        )
        rows.append(
            f"<tr><td>{html.escape(str(r['concept']))}</td><td>{html.escape(str(r['key']))}</td>"
            f"<td>{html.escape(str(r['configuration']))}</td>"
            f'<td class="num">{float(r["x"]):.3f}</td><td class="num">{float(r["y"]):.3f}</td><td>{runs}</td></tr>'
        )
    return (
        "<p>The configurations on each facet's front, as the tradeoff plot labels them.</p>"
        '<table class="sortable" id="front"><thead><tr><th>concept</th><th>label</th><th>configuration</th>'
        "<th>image sim.</th><th>text sim.</th><th>runs (table row / run folder)</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def configurations_table(configs: pd.DataFrame | None) -> str:
    if configs is None or not len(configs):
        return "<p>No completed runs.</p>"
    shown = [m for m in summarised_metrics() if f"{m.name}_mean" in configs]
    head = (
        "<tr><th>concept</th><th>configuration</th><th>n runs</th><th>seeds</th><th>effective lr</th>"
        + "".join(f"<th>{html.escape(m.short)} [95%]</th>" for m in shown)
        + "<th>L2 from init</th><th>loss (tail mean)</th></tr>"
    )
    body = []
    for _, r in configs.iterrows():
        cells = [
            html.escape(str(r["concept"])),
            html.escape(str(r["configuration"])),
            str(r["n"]),
            str(r["seeds"]),
        ]
        cells.append("" if _blank(r.get("effective_lr")) else f"{float(r['effective_lr']):.3g}")
        for col in (m.name for m in shown):
            lo, hi = r.get(f"{col}_ci_low"), r.get(f"{col}_ci_high")
            ci = "" if _blank(lo) else f" [{float(lo):.3f}, {float(hi):.3f}]"
            cells.append(f"{float(r[f'{col}_mean']):.3f}{ci}")
        for col in ("final_dist_l2_mean", "loss_tail_mean_mean"):
            cells.append("" if _blank(r.get(col)) else f"{float(r[col]):.4g}")
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="sortable" id="configurations"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def write_report(
    df: pd.DataFrame,
    plots: dict[str, Path],
    out_dir: str | Path,
    curve_pngs: dict[str, Path] | None = None,
    notes: list[str] | None = None,
    max_grids: int | None = None,
    findings: pd.DataFrame | None = None,
    untested: list[str] | None = None,
    configs: pd.DataFrame | None = None,
    front: pd.DataFrame | None = None,
    dreambench: str = "",
) -> Path:
    """Write <out_dir>/report.html (atomically) and return its path. `plots` maps a title to a PNG beside it;
    `findings` (analysis.findings) is the first section, `configs` (stats.configurations) a table, `front`
    (plots.front_table) the tradeoff plot's front with links to its runs, `dreambench` the DreamBench
    section's HTML (analysis.dreambench.table_html) or ""."""
    out_dir = Path(out_dir)
    counts = df["status"].value_counts().to_dict()
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    concepts = ", ".join(sorted(map(str, df["concept"].unique())))
    sweeps = "".join(f"<li><code>{html.escape(s)}</code></li>" for s in sorted(df["sweep"].unique()))
    figs = "".join(
        f'<h3>{html.escape(t)}</h3><img alt="{html.escape(t)}" loading="lazy" src="{_rel(Path(p), out_dir)}">'
        for t, p in plots.items()
        if p is not None
    )
    first = findings_section(findings, untested, notes)
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Textual-inversion sweep report</title>
<style>{CSS}</style></head><body>
<h1>Textual-inversion sweep report</h1>
<p>{len(df)} runs ({summary}); concepts: {html.escape(concepts)};
generated {datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")} from the run folders.</p>
{first}
<ul>{sweeps}</ul>
{dreambench}
<h2>Plots</h2><div class="plots">{figs}</div>
<h2>Pareto front</h2><div style="overflow-x:auto">{front_section(front, df, out_dir)}</div>
<h2>Configurations</h2><p>Means over each configuration's runs (seed excluded); 95% t-intervals over seeds, and
in the "all" rows over every run after removing each concept's overall level.</p>
<div style="overflow-x:auto">{configurations_table(configs)}</div>
<h2>Runs</h2><p>Click a column header to sort. Similarities are raw CLIP cosines with 95% CIs, clipped to each
metric's range; "{TOO_FEW}": fewer samples than the count from which the interval's coverage was measured.</p>
<div style="overflow-x:auto">{runs_table(df, out_dir)}</div>
<h2>Failed runs</h2>{_failed(df)}
<h2>Per run: curves and sample grids</h2><p>Each run's curves are in curves.png with every other run's;
<code>python -m analysis --run-curves</code> draws one figure per run as well.</p>{_run_sections(df, curve_pngs or {}, out_dir, max_grids)}
<script>{JS}</script>
</body></html>
"""
    return write_text(out_dir / "report.html", doc)
