"""bench/analysis_scale.py at a small size (the `make bench` figure is at 500 synthetic runs): it writes the
synthetic folders, measures the report that analysis writes for them, and records the figures in its section of
BENCHMARKS.md and in benchmarks/latest.json without touching their other contents."""

from __future__ import annotations

import json
import re

from bench import analysis_scale
from bench.run_folders import PROMPTS


def test_small_path_measures_the_report_and_records_it(tmp_path):
    md, latest = tmp_path / "BENCHMARKS.md", tmp_path / "latest.json"
    md.write_text("# Benchmarks\n\nkept text\n")
    latest.write_text(json.dumps({"other": 1}))
    keep = tmp_path / "folders"
    res = analysis_scale.main(
        [
            "--sizes",
            "6,3",
            "--grid-px",
            "400",
            "--history-rows",
            "20",
            "--out",
            str(md),
            "--json",
            str(latest),
        ]
        + ["--keep", str(keep)]
    )
    rows = res["rows"]
    assert [r["runs"] for r in rows] == [3, 6]  # smallest first
    for r in rows:
        report = keep / f"analysis_{r['runs']}" / "report.html"
        assert r["report_mb"] == report.stat().st_size / 1e6
        text = report.read_text()
        assert r["images_embedded"] == 0 and "data:" not in text
        # every grid is wider than a thumbnail: one thumbnail each, drawn once (the warm pass keeps them)
        assert r["thumbnails"] == len(PROMPTS) * r["runs"]
        assert r["images_shown"] == text.count("<img ") >= len(PROMPTS) * r["runs"]
        assert r["cold_cpu_s"] > 0 and r["warm_cpu_s"] > 0
    s = res["summary"]
    assert s["runs"] == 6 and s["met"] and s["report_mb"] == rows[-1]["report_mb"]
    assert s["cold_per_run_ratio"] == rows[1]["cold_cpu_ms_per_run"] / rows[0]["cold_cpu_ms_per_run"]
    text = md.read_text()
    assert "kept text" in text and text.count(analysis_scale.BEGIN) == 1
    assert "synthetic" in text and re.search(r"\| 6 \| [0-9.]+ \| \d+ / 0 \|", text)
    stored = json.loads(latest.read_text())
    assert stored["other"] == 1 and stored["analysis_report_mb"] == s["report_mb"]
    assert stored["analysis_scale"]["meta"]["synthetic"] is True
