"""`make screenshots`: report.html for a 6-trial search and for a 500-run search, as headless Chromium renders it,
saved as benchmarks/screenshots/report_<n>_runs.png (the top of the page: the findings, the plots, the front).

The run folders are SYNTHETIC (bench/run_folders.py: a search's files with made-up objectives, no model run);
the screenshots show how the report and its plots read at both sizes, not any result. Needs Chromium
(`make system-deps`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.run_folders import write_search

ROOT = Path(__file__).resolve().parent.parent
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",  # let the lazily loaded plots load before the picture is taken
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise SystemExit("error: no Chromium on PATH: run `make system-deps` (apt-get install chromium)")


def screenshot(report: Path, png: Path, window: str, profile: Path) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    cmd = [chromium(), *FLAGS, f"--user-data-dir={profile}", f"--window-size={window}", f"--screenshot={png}"]
    r = subprocess.run([*cmd, report.as_uri()], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 or not png.exists():
        raise SystemExit(f"error: Chromium could not take {png}: {r.stderr[-2000:]}")
    return png


def main(argv: list[str] | None = None) -> list[Path]:
    from analysis.analyse import analyse

    p = argparse.ArgumentParser(prog="python -m bench.screenshots", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="6,500", help="comma-separated run counts (default 6,500)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "screenshots")
    p.add_argument("--window", default="1280,2400", help="Chromium window WIDTH,HEIGHT in pixels")
    p.add_argument(
        "--keep", type=Path, default=None, help="write the run folders and reports here and keep them"
    )
    args = p.parse_args(argv)
    shots = []
    with tempfile.TemporaryDirectory(prefix="ti-screenshots-") as tmp:
        root = args.keep or Path(tmp)
        for n in (int(s) for s in args.sizes.split(",")):
            sweep = write_search(root / f"search_{n}", n, grid_px=256, history_rows=50, link_grids=True)
            res = analyse([sweep], root / f"analysis_{n}", wandb=False)
            png = args.out / f"report_{n}_runs.png"
            shots.append(
                screenshot(res["files"]["report.html"], png, args.window, Path(tmp) / f"profile_{n}")
            )
            print(f"[screenshots] {n} synthetic runs -> {png}", flush=True)
    return shots


if __name__ == "__main__":
    main()
