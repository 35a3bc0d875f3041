"""analysis.hypervolume: the 2-D hypervolume against Optuna's own (private, test-only) implementation, the
reference point from the recorded "image only" / "prompt only" points, configuration means over seeds, the
hypervolume against compute, and what `python -m analysis` writes (hypervolume.csv, findings.csv, the plot)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from optuna._hypervolume import compute_hypervolume
from test_analysis import REFS, ROOT, write_run

from analysis.hypervolume import front_hypervolumes, hypervolume_2d, hypervolume_trace, reference_point
from analysis.load import load_runs


@pytest.mark.parametrize("n", [1, 2, 5, 30, 200])
def test_matches_optuna_on_random_points(n):
    rng = np.random.default_rng(n)
    for _ in range(20):
        points = rng.uniform(0, 1, (n, 2))
        points[rng.integers(0, n, n // 4)] = points[0]  # duplicates and ties on one axis
        points[:, 0][rng.random(n) < 0.2] = 0.5
        ref = rng.uniform(-0.2, 0.4, 2)
        inside = points[(points > ref).all(axis=1)]  # optuna needs every point to dominate the reference
        expected = compute_hypervolume(-inside, -ref) if len(inside) else 0.0
        assert hypervolume_2d(points, ref) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_hand_made_values():
    assert hypervolume_2d([[0.8, 0.3]], [0.5, 0.2]) == pytest.approx(0.3 * 0.1)
    # two front points: the union of their rectangles; a dominated point and one below the reference add nothing
    pts = [[0.8, 0.3], [0.6, 0.5], [0.7, 0.25], [0.4, 0.9], [np.nan, 1.0]]
    assert hypervolume_2d(pts, [0.5, 0.2]) == pytest.approx(0.3 * 0.1 + 0.1 * 0.2)
    assert hypervolume_2d(np.empty((0, 2)), [0, 0]) == 0.0


def _store(root, values, concept="cat_toy", status="completed", wall=100.0, start=0):
    """Runs of `values`: {config lr: [(image, text) per seed]}; returns the folder."""
    i = start
    for lr, seeds in values.items():
        for seed, xy in enumerate(seeds):
            x, y = xy if xy is not None else (None, None)
            write_run(
                root / f"r{i:02d}",
                concept,
                {"inversion.lr": lr, "inversion.seed": seed},
                x,
                y,
                0.1,
                status if xy is not None else "pruned",
                seed=i,
                status_extra={"wall_time_s": wall, "finished_at": f"2024-05-01T10:{i:02d}:00"},
            )
            i += 1
    return root


def test_reference_point_is_the_worse_of_the_recorded_references(tmp_path):
    _store(tmp_path / "s", {5e-3: [(0.8, 0.25)]})
    _store(tmp_path / "s", {5e-3: [(0.85, 0.2)]}, concept="teapot", start=10)
    refs = reference_point(load_runs(tmp_path / "s"))
    (img, prm) = REFS["cat_toy"]
    assert refs["cat_toy"].point == (min(img[0], prm[0]), min(img[1], prm[1]))
    (img2, prm2) = REFS["teapot"]
    assert refs["all"].point == (min(img[0], prm[0], img2[0], prm2[0]), min(img[1], prm[1], img2[1], prm2[1]))
    given = reference_point(load_runs(tmp_path / "s"), (0.1, 0.05))
    assert {r.point for r in given.values()} == {(0.1, 0.05)} and set(given) == {"cat_toy", "teapot", "all"}


def test_front_is_of_configuration_means_over_seeds(tmp_path):
    # one noisy configuration: its best seed alone would dominate everything; its mean does not
    values = {5e-3: [(0.9, 0.29), (0.6, 0.21)], 1e-3: [(0.7, 0.25), (0.7, 0.25)], 2e-2: [(0.8, 0.26)] * 2}
    df = load_runs(_store(tmp_path / "s", values))
    hv = front_hypervolumes(df)
    ref = reference_point(df)["cat_toy"].point
    means = [np.mean(v, axis=0) for v in values.values()]
    assert hv["hypervolume"].item() == pytest.approx(hypervolume_2d(means, ref))
    assert hv["hypervolume"].item() < hypervolume_2d([v for s in values.values() for v in s], ref)
    assert (hv["configurations"].item(), hv["front_configurations"].item()) == (3, 1)
    assert hv["reference_source"].item().startswith("worse of image only / prompt only")


def test_trace_charges_every_ended_run_and_ends_at_the_front(tmp_path):
    values = {5e-3: [(0.8, 0.25), None], 1e-3: [(0.7, 0.28)]}  # None: a pruned run (compute, no point)
    df = load_runs(_store(tmp_path / "s", values, wall=50.0))
    trace = hypervolume_trace(df)
    assert list(trace["compute_s"]) == [50.0, 100.0, 150.0]
    assert trace["hypervolume"].is_monotonic_increasing  # means here never leave the front worse
    assert trace["hypervolume"].iloc[1] == trace["hypervolume"].iloc[0]  # the pruned run adds no point
    assert trace["hypervolume"].iloc[-1] == pytest.approx(front_hypervolumes(df)["hypervolume"].item())


def test_analysis_writes_hypervolume_files_and_findings_row(tmp_path):
    from analysis.analyse import analyse

    _store(tmp_path / "s", {5e-3: [(0.8, 0.25), (0.78, 0.24)], 1e-3: [(0.7, 0.28)] * 2})
    res = analyse([tmp_path / "s"], tmp_path / "out", wandb=False, hv_reference=(0.5, 0.2))
    table = pd.read_csv(tmp_path / "out" / "hypervolume.csv")
    expected = hypervolume_2d([[0.79, 0.245], [0.7, 0.28]], [0.5, 0.2])
    assert table["hypervolume"].item() == pytest.approx(expected)
    assert (table["reference_image"].item(), table["reference_source"].item()) == (0.5, "given")
    found = pd.read_csv(tmp_path / "out" / "findings.csv")
    row = found[found["claim"] == "front hypervolume"].iloc[0]
    assert row["effect"] == pytest.approx(expected) and "reference (0.5, 0.2)" in row["comparison"]
    assert (tmp_path / "out" / "hypervolume_vs_compute.png").stat().st_size > 0
    html = (tmp_path / "out" / "report.html").read_text()
    assert "front hypervolume" in html and "Hypervolume of the front against compute spent" in html
    assert res["hypervolume_trace"]["compute_s"].iloc[-1] == pytest.approx(4 * 100.0)


def test_cli_refuses_a_bad_reference_in_one_line(tmp_path):
    _store(tmp_path / "s", {5e-3: [(0.8, 0.25)]})
    r = subprocess.run(
        [sys.executable, "-m", "analysis", str(tmp_path / "s"), "--hv-reference", "0.5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "--hv-reference: expected IMAGE,TEXT" in r.stderr
    assert not (tmp_path / "s" / "analysis").exists()
