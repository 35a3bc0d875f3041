"""bench/sweep_cost.py's arithmetic and bookkeeping: paired intervals, the latest.json keys it adds without
dropping others, and BENCHMARKS.md sections that survive `python -m bench` rewriting the file."""

from __future__ import annotations

import json
import math
from argparse import Namespace

import numpy as np
import pytest

from bench import report, sweep_cost


def pair(config, fixed_s, adaptive_s, d_image, d_text, stop=200):
    base = {"image_similarity": 0.5, "text_similarity": 0.6, "samples": 144, "evaluation_s": 10.0}
    return {
        "config": config,
        "concept": "toy_arrow",
        "seed": 0,
        "fixed": {**base, "wall_s": fixed_s, "stopped_at_step": None},
        "adaptive": {
            **base,
            "wall_s": adaptive_s,
            "stopped_at_step": stop,
            "samples": 72,
            "image_similarity": 0.5 + d_image,
            "text_similarity": 0.6 + d_text,
        },
    }


def test_paired_interval_is_the_t_interval_of_the_differences():
    diffs = [0.01, -0.02, 0.015, 0.0, 0.005, -0.01]
    out = sweep_cost.paired(diffs)
    half = 2.571 * np.std(diffs, ddof=1) / math.sqrt(6)  # t(0.975, 5 df)
    assert out["mean"] == pytest.approx(np.mean(diffs))
    assert out["ci"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half])


def test_summary_speedup_and_verdict():
    args = Namespace(steps=1000)
    pairs = [pair("a", 400, 100, 0.001, -0.002), pair("b", 500, 100, -0.001, 0.002)]
    s = sweep_cost.summarise(pairs, args)
    assert s["speedup"] == pytest.approx(900 / 200)
    assert s["trials_per_hour_adaptive"] == pytest.approx(3600 * 2 / 200)
    assert s["max_objective_delta"] == pytest.approx(0.0)  # the means cancel here
    assert s["met"] is (s["max_objective_delta_ci_bound"] <= 0.02)
    worse = sweep_cost.summarise([pair("a", 400, 100, -0.1, 0.0), pair("b", 400, 100, -0.12, 0.0)], args)
    assert worse["max_objective_delta"] == pytest.approx(0.11) and worse["met"] is False


def test_keys_and_sections_of_other_benchmarks_survive(tmp_path):
    latest, md = tmp_path / "latest.json", tmp_path / "BENCHMARKS.md"
    stale = report.headline_target(None)  # as `python -m bench` wrote it before this measurement
    other = {"target": "another target", "value": "1", "met": None}
    latest.write_text(json.dumps({"trainer_speedup": 1.6, "targets": [stale, other]}))
    md.write_text(
        "# Benchmarks\n\nOLD-REPORT-TEXT\n\n"
        f"{report.target_row(stale)}\n{report.target_row(other)}\n\n"
        "<!-- scale:begin -->\n## Scale\nkept\n<!-- scale:end -->\n"
    )
    pairs = [pair("a", 400, 100, 0.001, -0.002), pair("b", 500, 100, -0.001, 0.002)]
    result = {
        "meta": {"date": "d", "machine": "m"},
        "settings": {"size": "ours", "steps": 1000, "samples": 16, "target": 0.02},
        "pairs": pairs,
        "summary": sweep_cost.summarise(pairs, Namespace(steps=1000)),
    }
    sweep_cost.update_latest(latest, result)
    sweep_cost.write_section(md, sweep_cost.markdown(result))
    sweep_cost.update_headline_row(md, result)
    saved = json.loads(latest.read_text())
    assert saved["trainer_speedup"] == 1.6 and saved["sweep_cost_speedup"] == pytest.approx(4.5)
    assert "sweep_cost_max_objective_delta" in saved
    # the Targets table's headline row follows the new measurement, in latest.json and in BENCHMARKS.md
    headline = report.headline_target(result)
    assert saved["targets"] == [headline, other] and headline["value"].startswith("4.50x")
    text = md.read_text()
    assert report.target_row(headline) in text and report.target_row(stale) not in text
    assert report.target_row(other) in text
    assert "kept" in text and sweep_cost.BEGIN in text
    blocks = report.kept_blocks(md)  # what `python -m bench` carries over when it rewrites the file
    assert "<!-- scale:begin -->" in blocks and sweep_cost.BEGIN in blocks and "OLD-REPORT-TEXT" not in blocks
