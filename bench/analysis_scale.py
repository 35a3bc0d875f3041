"""The analysis of a search at scale: report.html's size and the analysis's CPU time against the number of runs.

`python -m bench.analysis_scale` (in `make bench`; a few minutes on 2 cores). The run folders are SYNTHETIC
(bench/run_folders.py: the files a trial writes, with made-up objectives and no model run): for each size
(default 125, 250 and 500 runs, each with 9 sample grids of 512 px, hard links of one set of 9 images, and a
200-row history.csv) it runs `analysis.analyse` on the folders twice: cold (every thumbnail drawn) and warm
(the same folders again: the thumbnails are kept). It reports report.html's size, the images it shows and
embeds, the thumbnails beside it, and the process's CPU seconds per run.

The figures to read: report.html at 500 runs against the 5 MB target (issue 27 measured 59.2 MB with 5004
embedded images before), and CPU seconds per run staying flat from the smallest size to the largest (the
analysis's time linear in runs). Writes its section of BENCHMARKS.md (between the analysis-scale markers) and
analysis_* keys into benchmarks/latest.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import harness
from bench.run_folders import PROMPTS, write_search

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- analysis-scale:begin -->", "<!-- analysis-scale:end -->"
TARGET_MB = 5.0


def analyse_timed(sweep: Path, out: Path) -> dict[str, float]:
    """CPU and wall seconds of one `analysis.analyse` of `sweep` into `out`."""
    from analysis.analyse import analyse

    wall, cpu = time.perf_counter(), time.process_time()
    analyse([sweep], out, wandb=False)
    return {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}


def measure(root: Path, n: int, grid_px: int, history_rows: int = 200) -> dict[str, Any]:
    """One size: write the synthetic folders, analyse them cold then warm, read what was written."""
    sweep = write_search(root / f"sweep_{n}", n, grid_px=grid_px, history_rows=history_rows, link_grids=True)
    out = root / f"analysis_{n}"
    cold = analyse_timed(sweep, out)
    warm = analyse_timed(sweep, out)
    report = out / "report.html"
    text = report.read_text()
    thumbs = [p for p in (out / "thumbs").rglob("*") if p.is_file()] if (out / "thumbs").is_dir() else []
    return {
        "runs": n,
        "report_mb": report.stat().st_size / 1e6,
        "images_shown": text.count("<img "),
        "images_embedded": text.count("data:image"),
        "thumbnails": len(thumbs),
        "thumbnails_mb": sum(p.stat().st_size for p in thumbs) / 1e6,
        "cold_cpu_s": cold["cpu_s"],
        "cold_wall_s": cold["wall_s"],
        "warm_cpu_s": warm["cpu_s"],
        "warm_wall_s": warm["wall_s"],
        "cold_cpu_ms_per_run": 1e3 * cold["cpu_s"] / n,
        "warm_cpu_ms_per_run": 1e3 * warm["cpu_s"] / n,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The largest size's report against the target; per-run CPU at the largest size over the smallest."""
    small, large = rows[0], rows[-1]
    return {
        "runs": large["runs"],
        "report_mb": large["report_mb"],
        "target_mb": TARGET_MB,
        "met": large["report_mb"] <= TARGET_MB and large["images_embedded"] == 0,
        "cold_per_run_ratio": large["cold_cpu_ms_per_run"] / small["cold_cpu_ms_per_run"],
        "warm_per_run_ratio": large["warm_cpu_ms_per_run"] / small["warm_cpu_ms_per_run"],
    }


def markdown(result: dict[str, Any]) -> str:
    meta, s = result["meta"], result["summary"]
    lines = [
        BEGIN,
        "## Analysis at scale: report.html size and CPU time against runs (synthetic run folders)",
        "",
        f"`python -m bench.analysis_scale`, {meta['date']}, {meta['machine']}. The run folders are **synthetic** "
        f"(bench/run_folders.py: a search's files with made-up objectives, no model run): {len(PROMPTS)} sample "
        f"grids of {meta['grid_px']} px per run (hard links of one set), a {meta['history_rows']}-row history.csv. "
        "Each size is analysed cold (thumbnails drawn), then warm (same folders; thumbnails kept). CPU = the "
        "analysing process's CPU time. A shared machine slows both alike; read the per-run ratios.",
        "",
        "| runs | report.html (MB) | images shown / embedded | thumbnails (files, MB) | cold CPU (s) | "
        "cold CPU per run (ms) | warm CPU (s) | warm CPU per run (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['runs']} | {r['report_mb']:.2f} | {r['images_shown']} / {r['images_embedded']} | "
            f"{r['thumbnails']}, {r['thumbnails_mb']:.1f} | {r['cold_cpu_s']:.1f} | {r['cold_cpu_ms_per_run']:.0f} | "
            f"{r['warm_cpu_s']:.1f} | {r['warm_cpu_ms_per_run']:.0f} |"
        )
    verdict = "met" if s["met"] else "missed"
    lines += [
        "",
        f"Target (issue 27): report.html <= {s['target_mb']:.0f} MB at 500 runs with no embedded image: "
        f"{s['report_mb']:.2f} MB at {s['runs']} runs, **{verdict}** (59.2 MB and 5004 embedded images before). "
        f"CPU per run at {s['runs']} runs over the smallest size: {s['cold_per_run_ratio']:.2f}x cold, "
        f"{s['warm_per_run_ratio']:.2f}x warm (1.0 = linear in runs).",
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.analysis_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="125,250,500", help="comma-separated run counts (default 125,250,500)")
    p.add_argument("--grid-px", type=int, default=512, help="sample grid width and height in pixels")
    p.add_argument("--history-rows", type=int, default=200)
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "latest.json")
    p.add_argument("--keep", type=Path, default=None, help="write the folders here and keep them")
    args = p.parse_args(argv)
    sizes = sorted(int(n) for n in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="ti-analysis-scale-") as tmp:
        root = args.keep or Path(tmp)
        rows = []
        for n in sizes:
            print(f"[analysis_scale] {n} synthetic runs", flush=True)
            rows.append(measure(root, n, args.grid_px, args.history_rows))
    result = {
        "meta": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "grid_px": args.grid_px,
            "history_rows": args.history_rows,
            "synthetic": True,
        },
        "rows": rows,
        "summary": summarise(rows),
    }
    text = markdown(result)
    print(text)
    harness.write_section(args.out, text, BEGIN, END)
    harness.update_latest(
        args.json,
        analysis_report_mb=result["summary"]["report_mb"],
        analysis_cpu_per_run_ratio=result["summary"]["cold_per_run_ratio"],
        analysis_scale=result,
    )
    return result


if __name__ == "__main__":
    main()
