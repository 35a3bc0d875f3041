"""analysis/ statistics and run-folder reading: labels from the run folder alone, statuses (stale, pruned,
interrupted), folder sizes, the tail loss, configuration intervals, paired comparisons and the findings'
verdicts, on synthetic stores written per ARCHITECTURE.md (tests/test_analysis.py's write_run)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy.stats import t as student_t
from test_analysis import ROOT, write_run

from analysis.findings import findings
from analysis.load import load_runs
from analysis.stats import paired_difference, spearman_interval, t_interval

CONFIGS = {  # name -> overrides of the paper's "ours" (base 5e-3 x batch 4 x accumulation 2 = 0.04)
    "ours": {},
    "lr 0.0008": {"inversion.lr": 1e-4},
    "lr 0.16": {"inversion.lr": 2e-2},
    "3 vectors": {"inversion.num_vectors": 3},
    "reg 0.01": {"inversion.reg_weight": 0.01},
}


def paired_store(root: Path, effects: dict[str, tuple[float, float]], seeds: int, noise: float = 0.05):
    """Two concepts x `seeds` seeds x CONFIGS: each (concept, seed) has its own offset shared by every
    configuration (common random numbers), each configuration adds its (image, text) effect and a small
    independent jitter. Returns {(concept, seed, config): (image, text)}."""
    rng = np.random.default_rng(0)
    values = {}
    i = 0
    for concept in ("cat_toy", "teapot"):
        for seed in range(seeds):
            shared = rng.normal(0, noise, 2)
            for name, over in CONFIGS.items():
                dx, dy = effects.get(name, (0.0, 0.0))
                jitter = rng.normal(0, 0.002, 2)
                x, y = 0.7 + shared[0] + dx + jitter[0], 0.3 + shared[1] + dy + jitter[1]
                write_run(
                    root / f"{concept}-{seed}-{i}",
                    concept,
                    over | {"inversion.seed": seed},
                    float(x),
                    float(y),
                    0.5 + 10 * dx,
                    "completed",
                    seed=i,
                )
                values[(concept, seed, name)] = (float(x), float(y))
                i += 1
    return values


def test_paired_differences_and_verdicts(tmp_path):
    effects = {
        "lr 0.0008": (-0.05, +0.03),  # the paper's direction: less reconstruction, more editability
        "lr 0.16": (-0.05, +0.03),  # against the paper on both (it expects more reconstruction, less editing)
        "3 vectors": (0.0, 0.0),  # no effect
    }
    values = paired_store(tmp_path / "s", effects, seeds=3)
    df = load_runs(tmp_path / "s")
    assert sorted(df["configuration"].unique()) == sorted(CONFIGS)
    est, pairs = paired_difference(df, "lr 0.0008", "ours", "image_similarity")
    diffs = [
        values[(c, s, "lr 0.0008")][0] - values[(c, s, "ours")][0]
        for c in ("cat_toy", "teapot")
        for s in range(3)
    ]
    assert est.n == 6 and len(pairs) == 6
    assert est.value == pytest.approx(np.mean(diffs))
    half = student_t.ppf(0.975, 5) * np.std(diffs, ddof=1) / np.sqrt(6)
    assert (est.low, est.high) == pytest.approx((np.mean(diffs) - half, np.mean(diffs) + half))
    # pairing removes the shared (concept, seed) noise: the unpaired interval would not exclude 0
    unpaired = np.std(
        [values[k][0] for k in values if k[2] == "lr 0.0008"]
        + [values[k][0] for k in values if k[2] == "ours"],
        ddof=1,
    )
    assert half < 0.2 * unpaired

    found, untested = findings(df)
    v = {(r["claim"], r["objective"]): r["verdict"] for _, r in found.iterrows()}
    assert v[("lower LR than ours", "image similarity")] == "holds"
    assert v[("lower LR than ours", "text similarity")] == "holds"
    assert v[("higher LR than ours", "image similarity")] == "contradicted"
    assert v[("higher LR than ours", "text similarity")] == "contradicted"
    assert v[("3-word", "image similarity")] == "inconclusive"
    assert {"2-word", "per-image tokens", "progressive"} <= set(untested)
    assert "dataset size (Fig. 12)" in untested
    row = found[(found["claim"] == "lower LR than ours") & (found["objective"] == "image similarity")].iloc[0]
    assert row["comparison"] == "lr 0.0008 - lr 0.04 (ours)" and row["n"] == 6
    three = found[found["claim"] == "3-word"].iloc[0]
    assert three["comparison"] == "3 vectors - 1 vector (ours)"  # both sides named, the reference too
    # distance from init: built as 0.5 + 10 x image effect, so it rises with image similarity within concepts;
    # within each vector count (24 one-vector runs, 6 three-vector ones) and pooled over both, with no verdict
    dist = found[found["claim"] == "distance from init raises reconstruction"].set_index("comparison")
    one = dist.loc["final_dist_l2 vs image_similarity, 1-vector runs"]
    assert one["effect"] > 0 and one["n"] == 24 and one["verdict"] == "holds"
    assert dist.loc["final_dist_l2 vs image_similarity, 3-vector runs"]["n"] == 6
    pooled = dist.loc["final_dist_l2 vs image_similarity, pooled over 1, 3 vectors"]
    assert pooled["n"] == 30 and pooled["verdict"] == "confounded: not testable from this design"


def test_two_seeds_of_one_concept_are_not_enough(tmp_path):
    paired_store(tmp_path / "s", {"lr 0.0008": (-0.05, 0.03)}, seeds=1)  # 2 pairs: one per concept
    found, _ = findings(load_runs(tmp_path / "s"))
    lower = found[found["claim"] == "lower LR than ours"]
    assert set(lower["verdict"]) == {"not enough runs: add seeds"} and set(lower["n"]) == {2}


def test_report_opens_with_the_findings_and_writes_the_tables(tmp_path):
    from analysis.analyse import analyse

    paired_store(tmp_path / "s", {"lr 0.0008": (-0.05, 0.03)}, seeds=3)
    res = analyse([tmp_path / "s"], tmp_path / "out", wandb=False)
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.index('id="findings-title"') < html.index("<h2>Plots</h2>") < html.index("<h2>Runs</h2>")
    holds = int((res["findings"]["verdict"] == "holds").sum())
    assert holds >= 2 and html.count('<td class="holds">holds</td>') == holds  # lower LR: both objectives
    csv = pd.read_csv(tmp_path / "out" / "findings.csv")
    assert list(csv.columns)[:4] == ["claim", "source", "objective", "comparison"] and len(csv) == len(
        res["findings"]
    )
    configs = pd.read_csv(tmp_path / "out" / "configurations.csv")
    ours = configs[(configs["concept"] == "cat_toy") & (configs["configuration"] == "ours")].iloc[0]
    runs = res["runs"][(res["runs"]["concept"] == "cat_toy") & (res["runs"]["configuration"] == "ours")]
    est = t_interval(runs["image_similarity"])
    assert ours["n"] == 3 and ours["seeds"] == 3
    assert (ours["image_similarity_mean"], ours["image_similarity_ci_low"]) == pytest.approx(
        (est.value, est.low)
    )
    # the "all" rows pool both concepts (6 runs)
    assert configs[(configs["concept"] == "all") & (configs["configuration"] == "ours")]["n"].item() == 6


def test_spearman_within_concepts_is_not_fooled_by_concept_levels():
    # within each concept y rises with x; across concepts the easy one has low x and high y
    x = [1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16]
    y = [0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.1, 0.11, 0.12, 0.13, 0.14, 0.15]
    concept = ["a"] * 6 + ["b"] * 6
    pooled = spearman_interval(x, y)
    within = spearman_interval(x, y, concept)
    assert pooled.value < 0 < within.value and within.value == pytest.approx(1.0, abs=1e-5)
    assert within.n == 12 and within.low > 0.8
    assert np.isnan(spearman_interval([1, 2, 3], [1, 2, 3]).low)  # n < 4: no interval


def test_labels_come_from_the_run_folder_not_the_checkout(tmp_path):
    """An old run's label does not depend on any conf/ file: the analysis of a run folder opens no file
    under a conf/ folder (audited in a subprocess), and a checkout whose defaults say otherwise changes
    nothing."""
    write_run(
        tmp_path / "s" / "0",
        "cat_toy",
        {"inversion.lr": 0.04, "inversion.scale_lr": False},
        0.8,
        0.2,
        0.5,
        "completed",
        0,
    )
    write_run(
        tmp_path / "s" / "1",
        "cat_toy",
        {"inversion.lr": 5e-3, "inversion.scale_lr": False},
        0.8,
        0.2,
        0.5,
        "completed",
        1,
    )
    fake = tmp_path / "checkout" / "conf" / "inversion"
    fake.mkdir(parents=True)
    (fake / "default.yaml").write_text(yaml.safe_dump({"lr": 5e-3, "scale_lr": False}))
    code = (
        "import sys, json\n"
        "opened = []\n"
        "sys.addaudithook(lambda e, a: opened.append(str(a[0])) if e == 'open' and a and isinstance(a[0], str) else None)\n"
        "from analysis.load import load_runs\n"
        "df = load_runs(sys.argv[1])\n"
        "print(json.dumps({'families': df['family'].tolist(), 'conf': [p for p in opened if '/conf/' in p]}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s")],
        cwd=tmp_path / "checkout",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["families"] == ["ours", "lr 0.005"] and out["conf"] == []


def test_statuses_stale_pruned_interrupted(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is now free: a "running" record naming it on this host is stale
    host = socket.gethostname()
    cases = {
        "stale": {"status": "running", "pid": dead.pid, "host": host},
        "running": {"status": "running", "pid": os.getpid(), "host": host},
        "elsewhere": {"status": "running", "pid": dead.pid, "host": host + "-other"},
        "pruned": {"status": "pruned"},
        "interrupted": {"status": "interrupted"},
    }
    for name, extra in cases.items():
        write_run(tmp_path / "s" / name, "cat_toy", {}, None, None, 0.1, "running", 0, status_extra=extra)
    df = load_runs(tmp_path / "s").set_index("run")
    got = {r.rsplit("/", 1)[1]: s for r, s in df["status"].items()}
    assert got == {
        "stale": "stale",
        "running": "running",
        "elsewhere": "running",
        "pruned": "pruned",
        "interrupted": "interrupted",
    }
    from analysis.analyse import analyse

    html = (analyse([tmp_path / "s"], tmp_path / "out", wandb=False)["files"]["report.html"]).read_text()
    for status in ("stale", "pruned", "interrupted"):
        assert f'<tr class="run {status}"' in html


def test_folder_size_for_all_images_and_tail_loss(tmp_path):
    concept = tmp_path / "concepts" / "cat_toy"
    concept.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8)).save(concept / f"{i}.png")
    (concept / "notes.txt").write_text("not an image")
    steps = np.arange(0, 101, 10)
    last_equal = np.r_[np.full(10, 0.30), 0.05]  # same last row as below, different tail
    for i, (n, loss) in enumerate([(None, last_equal), (2, np.r_[np.full(10, 0.10), 0.05])]):
        write_run(
            tmp_path / "s" / str(i),
            "cat_toy",
            {"data.images": str(concept), "data.n_images": n},
            0.8,
            0.2,
            0.5,
            "completed",
            i,
            loss=loss,
        )
    df = load_runs(tmp_path / "s")
    assert df["n_images"].tolist() == [3, 2]
    assert df["family"].tolist() == ["n=3 images", "n=2 images"]
    assert len(steps) == 11
    # the last quarter of 11 rows = 3 rows
    assert df["loss_tail_mean"].tolist() == pytest.approx([(0.3 + 0.3 + 0.05) / 3, (0.1 + 0.1 + 0.05) / 3])
    # a derived block (written by the trial) wins over counting the folder
    cfg_file = tmp_path / "s" / "0" / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text()) | {
        "derived": {"n_images": 5, "effective_lr": 0.04, "overrides": ["a=1"]}
    }
    cfg_file.write_text(yaml.safe_dump(cfg))
    row = load_runs(tmp_path / "s").iloc[0]
    assert row["n_images"] == 5 and json.loads(row["overrides"]) == ["a=1"]


def test_a_killed_analysis_leaves_no_temporary_file_behind(tmp_path):
    from analysis.analyse import analyse

    write_run(tmp_path / "s" / "0", "cat_toy", {}, 0.8, 0.2, 0.5, "completed", 0)
    out = tmp_path / "out"
    (out / "curves").mkdir(parents=True)
    for f in (out / ".curves.png.x1y2.tmp", out / "curves" / ".s_0.png.abc.tmp"):
        f.write_bytes(b"half a png")  # what a killed analysis leaves (sweeper.store.atomic's temporary names)
    analyse([tmp_path / "s"], out, wandb=False)
    assert not list(out.rglob(".*.tmp")) and (out / "curves.png").stat().st_size > 0
