"""analysis/: the Pareto front, runs.csv against a synthetic results store with known values, the plots.

The store is written here exactly per ARCHITECTURE.md (config.yaml, status.json, history.csv,
metrics.json, samples/*.png, Hydra's .hydra/config.yaml beside it), with completed, failed and
running runs, two sweeps ("machines") and two concepts.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from analysis import StoreError, find_runs, load_runs, pareto_front, pareto_mask, plots
from analysis.labels import text_box
from analysis.load import configuration_values, family
from analysis.plots import tradeoff_plot

ROOT = Path(__file__).resolve().parents[1]

# (sweep, run, concept, overrides, image_sim, text_sim, final L2 distance, status); base lr 5e-3 x batch 4 x
# accumulation 2 = the paper's effective 0.04 ("ours")
SPECS = [
    ("sweepA", "0", "cat_toy", {}, 0.80, 0.22, 0.50, "completed"),
    ("sweepA", "1", "cat_toy", {"inversion.lr": 2e-2}, 0.84, 0.18, 0.90, "completed"),
    ("sweepA", "2", "cat_toy", {"inversion.lr": 1e-4}, 0.70, 0.27, 0.10, "completed"),
    ("sweepA", "3", "cat_toy", {"inversion.num_vectors": 3}, 0.83, 0.19, 0.70, "completed"),
    ("sweepA", "4", "cat_toy", {"inversion.per_image_tokens": True}, 0.75, 0.23, 0.30, "completed"),
    ("sweepA", "5", "cat_toy", {"inversion.reg_weight": 0.01}, 0.72, 0.26, 0.20, "completed"),
    ("sweepA", "6", "cat_toy", {"inversion.pivotal.enabled": True}, None, None, 0.40, "failed"),
    ("sweepA", "7", "cat_toy", {"inversion.lr": 1e-3}, None, None, 0.05, "running"),
    ("sweepB", "0", "teapot", {"data.n_images": 1}, 0.90, 0.15, 0.80, "completed"),
    ("sweepB", "1", "teapot", {"data.n_images": 3}, 0.85, 0.20, 0.60, "completed"),
    ("sweepB", "2", "teapot", {"data.n_images": 5}, 0.80, 0.24, 0.40, "completed"),
    ("sweepB", "3", "teapot", {"data.n_images": 5, "inversion.seed": 1}, 0.78, 0.24, 0.35, "completed"),
]
REFS = {"cat_toy": ((0.92, 0.17), (0.55, 0.30)), "teapot": ((0.95, 0.16), (0.50, 0.31))}
ERROR = "RuntimeError: loss became NaN at step 120 (lower inversion.lr)"
# each SPECS row's family among the merged store (sweepB varies n_images: "n=... images")
FAMILIES = [
    "ours",
    "lr 0.16",
    "lr 0.0008",
    "3 vectors",
    "per-image tokens",
    "reg 0.01",
    "pivotal",
    "lr 0.008",
    "n=1 image",
    "n=3 images",
    "n=5 images",
    "n=5 images",
]


def _nest(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        d = out
        *head, last = k.split(".")
        for h in head:
            d = d.setdefault(h, {})
        d[last] = v
    return out


def base_config(concept: str) -> dict:
    flat = {
        "model.pretrained": ".cache/tiny-sd",
        "data.images": f"/data/concepts/{concept}",
        "data.n_images": None,
        "data.property": "object",
        "inversion.lr": 5e-3,
        "inversion.scale_lr": True,
        "inversion.batch_size": 4,
        "inversion.grad_accum": 2,
        "inversion.num_vectors": 1,
        "inversion.per_image_tokens": False,
        "inversion.reg_weight": 0.0,
        "inversion.progressive_every": None,
        "inversion.pivotal.enabled": False,
        "inversion.steps": 100,
        "inversion.seed": 0,
        "evaluation.num_samples": 8,
        "tracking.mode": "offline",
    }
    return flat


def _grid_png(path: Path, seed: int, size: int = 96) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def write_run(
    run_dir: Path,
    concept: str,
    overrides: dict,
    x,
    y,
    dist: float,
    status: str,
    seed: int,
    status_extra: dict | None = None,
    loss: np.ndarray | None = None,
) -> dict:
    """One run folder per the contract; returns the flat config written."""
    cfg = base_config(concept) | overrides
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(_nest(cfg)))
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(_nest(cfg)))
    k = int(cfg["inversion.num_vectors"])
    steps = np.arange(0, 101, 10)
    hist = {
        "step": steps,
        "loss": 0.2 + 0.1 * np.cos(steps + seed) if loss is None else loss,
        "lr": cfg["inversion.lr"],
    }
    for i in range(k):
        hist[f"dist_l2_{i}"] = dist * steps / 100 * (1 + 0.01 * i)
        hist[f"dist_cos_{i}"] = 0.1 * steps / 100
    hist["dist_l2_mean"] = np.mean([hist[f"dist_l2_{i}"] for i in range(k)], axis=0)
    hist["dist_cos_mean"] = 0.1 * steps / 100
    n_rows = 6 if status == "running" else len(steps)
    pd.DataFrame(hist).iloc[:n_rows].to_csv(run_dir / "history.csv", index=False)
    finished = None if status == "running" else "2024-05-01T10:05:00"
    st = {
        "status": status,
        "error": ERROR if status == "failed" else None,
        "traceback": "Traceback (most recent call last):\n  ...\n" + ERROR if status == "failed" else None,
        "started_at": "2024-05-01T10:00:00",
        "finished_at": finished,
        "wall_time_s": None if status == "running" else 300.0 + seed,
        "trial_number": seed,
    } | (status_extra or {})
    (run_dir / "status.json").write_text(json.dumps(st))
    if status == "completed":
        (img_ref, prm_ref) = REFS[concept]
        m = {
            "image_similarity": x,
            "text_similarity": y,
            "text_similarity_mean_embedding": y,
            "text_similarity_per_image": y - 0.01,
            "text_variant": "mean_embedding",
            "image_similarity_ci": [x - 0.01, x + 0.02],
            "text_similarity_ci": [y - 0.005, y + 0.004],
            "per_prompt": {"a photo of {} on the moon": {"mean_embedding": y, "per_image": y - 0.01}},
            "references": {
                "image_only": {"image_similarity": img_ref[0], "text_similarity": img_ref[1]},
                "prompt_only": {"image_similarity": prm_ref[0], "text_similarity": prm_ref[1]},
            },
            "judge": "openai/clip-vit-base-patch32",
            "protocol": {"steps": 50, "guidance": 5.0},
            "seeds": {"sampling": 0},
            "num_samples": 8,
        }
        (run_dir / "metrics.json").write_text(json.dumps(m))
        _grid_png(run_dir / "samples" / "reconstruction.png", seed, size=900)  # big: gets downscaled
        _grid_png(run_dir / "samples" / "a-photo-of-on-the-moon.png", seed + 100)
    return cfg


def write_store(root: Path) -> dict[str, Path]:
    """Two sweep folders under root; returns {sweep name: folder}."""
    sweeps = {}
    for i, (sweep, run, concept, over, x, y, dist, status) in enumerate(SPECS):
        sweeps[sweep] = root / sweep
        write_run(root / sweep / run, concept, over, x, y, dist, status, seed=i)
    (root / "sweepA" / "multirun.yaml").write_text("hydra: {}\n")
    return sweeps


@pytest.fixture
def store(tmp_path) -> dict[str, Path]:
    return write_store(tmp_path / "store")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """The synthetic store analysed once (both sweeps merged): (store, analyse() result, out folder)."""
    from analysis.analyse import analyse

    root = tmp_path_factory.mktemp("analysed")
    sweeps = write_store(root / "store")
    out = root / "out"
    return sweeps, analyse([sweeps["sweepA"], sweeps["sweepB"]], out), out


# --- Pareto front ---------------------------------------------------------------------------------


def brute_force_front(x, y) -> np.ndarray:
    pts = list(zip(x, y))
    out = []
    for i, (a, b) in enumerate(pts):
        if not (np.isfinite(a) and np.isfinite(b)):
            out.append(False)
            continue
        dominated = any(
            c >= a and d >= b and (c > a or d > b)
            for j, (c, d) in enumerate(pts)
            if j != i and np.isfinite(c) and np.isfinite(d)
        )
        out.append(not dominated)
    return np.array(out)


def test_pareto_front_hand_made():
    #          0    1    2    3    4    5    6    7     8
    x = [1.0, 2.0, 3.0, 2.0, 3.0, 1.0, 0.5, 3.0, np.nan]
    y = [3.0, 2.0, 1.0, 2.0, 0.5, 2.0, 3.0, 1.0, 9.0]
    # 0: best y; 1 and 3 duplicates (both kept); 2 and 7 duplicates at best x; 4 same x as 2, lower y
    # (dominated); 5 same y as 1, lower x (dominated); 6 same y as 0, lower x (dominated); 8 NaN.
    mask = pareto_mask(x, y)
    assert mask.tolist() == [True, True, True, True, False, False, False, True, False]
    assert pareto_front(x, y).tolist() == [0, 1, 3, 2, 7]  # ordered by x for drawing
    assert pareto_mask([], []).tolist() == []
    assert pareto_mask([1.0], [1.0]).tolist() == [True]
    with pytest.raises(ValueError, match="same length"):
        pareto_mask([1, 2], [1])


def test_pareto_front_matches_brute_force_with_many_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 25))
        x = rng.integers(0, 5, n).astype(float)
        y = rng.integers(0, 5, n).astype(float)
        if n > 3:
            x[0] = np.nan
        assert pareto_mask(x, y).tolist() == brute_force_front(x, y).tolist()


# --- families and discovery -----------------------------------------------------------------------


def test_family_names_from_recorded_values():
    def name(over: dict, varied=frozenset()) -> str:
        from analysis.load import effective_lr, n_images

        flat = base_config("cat_toy") | over
        return family(configuration_values(flat, effective_lr(flat), n_images(flat)), varied)

    assert name({}) == "ours"  # 5e-3 x 4 x 2 = 0.04
    assert name({"inversion.lr": 0.04, "inversion.scale_lr": False}) == "ours"  # the paper's "ours"
    assert name({"inversion.scale_lr": False}) == "lr 0.005"  # effective 5e-3 is not "ours"
    assert name({"inversion.grad_accum": 1}) == "lr 0.02"
    assert name({"inversion.lr": 2e-2}) == "lr 0.16"
    assert name({"inversion.num_vectors": 3}) == "3 vectors"
    assert name({"inversion.per_image_tokens": True}) == "per-image tokens"
    assert name({"inversion.reg_weight": 0.01}) == "reg 0.01"
    assert name({"inversion.pivotal.enabled": True}) == "pivotal"
    assert name({"inversion.num_vectors": 3, "inversion.progressive_every": 2000}) == "3 vectors, progressive"
    assert name({"data.n_images": 5}, {"n_images"}) == "n=5 images"
    assert name({"inversion.steps": 150}, {"inversion.steps"}) == "150 steps"
    assert name({"inversion.steps": 150}) == "ours"  # steps are named only when the runs vary them
    assert name({"evaluation.num_samples": 4}, {"evaluation.num_samples"}) == "evaluation.num_samples=4"
    # the recorded derived block wins over recomputing from the keys
    assert name({"derived.effective_lr": 0.04, "inversion.lr": 1.0}) == "ours"


def test_find_runs_skips_hydra_copies_and_nested_folders(store, tmp_path):
    runs = find_runs(store["sweepA"])
    assert [r.name for r in runs] == [str(i) for i in range(8)]
    # a run folder given directly is one run
    assert find_runs(store["sweepA"] / "3") == [store["sweepA"] / "3"]
    # a run recorded without config.yaml (only Hydra's copy) is still found, its config read from .hydra/
    (store["sweepA"] / "3" / "config.yaml").unlink()
    assert [r.name for r in find_runs(store["sweepA"])] == [str(i) for i in range(8)]
    row = load_runs([store["sweepA"]]).set_index("run").loc[f"{store['sweepA']}/3"]
    assert row["family"] == "3 vectors" and row["image_similarity"] == pytest.approx(0.83)
    with pytest.raises(StoreError, match="does not exist"):
        find_runs(tmp_path / "nope")


# --- runs.csv matches the store -------------------------------------------------------------------


def test_runs_csv_matches_store(analysed):
    store, _res, out = analysed
    csv = pd.read_csv(out / "runs.csv")
    assert len(csv) == len(SPECS)
    by_run = {r["run"]: r for _, r in csv.iterrows()}
    for i, (sweep, run, concept, over, x, y, dist, status) in enumerate(SPECS):
        r = by_run[f"{store[sweep]}/{run}"]
        assert r["sweep"] == str(store[sweep])
        assert r["concept"] == concept and r["status"] == status
        assert r["family"] == FAMILIES[i]
        cfg = base_config(concept) | over
        assert r["effective_lr"] == pytest.approx(cfg["inversion.lr"] * 4 * 2)
        assert r["inversion.lr"] == pytest.approx((base_config(concept) | over)["inversion.lr"])
        assert r["inversion.num_vectors"] == (base_config(concept) | over)["inversion.num_vectors"]
        if status == "completed":
            assert r["image_similarity"] == pytest.approx(x) and r["text_similarity"] == pytest.approx(y)
            assert r["image_similarity_ci_low"] == pytest.approx(x - 0.01)
            assert r["text_similarity_ci_high"] == pytest.approx(y + 0.004)
            assert r["text_similarity_per_image"] == pytest.approx(y - 0.01)
            assert r["ref.image_only.image_similarity"] == pytest.approx(REFS[concept][0][0])
            assert r["final_dist_l2"] == pytest.approx(
                dist
                * 1.0
                * np.mean(
                    [1 + 0.01 * j for j in range((base_config(concept) | over)["inversion.num_vectors"])]
                )
            )
            assert r["wall_time_s"] == pytest.approx(300.0 + i)
            assert r["last_step"] == 100
        else:
            assert pd.isna(r["image_similarity"]) and pd.isna(r["text_similarity"])
        if status == "failed":
            assert r["error"] == ERROR
        if status == "running":
            assert r["last_step"] == 50 and pd.isna(r["wall_time_s"])
    for name in (
        "configurations.csv",
        "findings.csv",
        "tradeoff.png",
        "tradeoff.svg",
        "objectives_vs_distance.png",
        "objectives_vs_distance.svg",
        "objectives_vs_dataset_size.png",
        "curves.png",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.rglob(".*.tmp")), "temporary files left behind"
    html = (out / "report.html").read_text()
    assert html.count('<tr class="run ') == len(SPECS)
    assert ERROR in html and 'src="http' not in html
    # every completed run's sample grids are shown, as files beside the report (nothing embedded), loaded
    # lazily; the 900 px grid as a downscaled JPEG thumbnail, the 96 px one as it is
    from analysis.report import THUMB_PX

    n_done = sum(s[7] == "completed" for s in SPECS)
    assert (
        html.count('<img alt="reconstruction"') == html.count('<img alt="a-photo-of-on-the-moon"') == n_done
    )
    assert "data:" not in html
    imgs = re.findall(r"<img [^>]*>", html)
    assert imgs and all('loading="lazy"' in tag for tag in imgs)
    for src in (re.search(r'src="([^"]+)"', tag).group(1) for tag in imgs):
        assert (out / src).is_file(), src
    thumbs = re.findall(
        r'alt="reconstruction" title="reconstruction" loading="lazy" src="(thumbs/[^"]+\.jpg)"', html
    )
    assert len(thumbs) == n_done
    for t in thumbs:
        with Image.open(out / t) as im:
            assert im.width <= THUMB_PX
    assert html.count('src="../store/') == n_done  # the 96 px grids: linked where they are
    assert not (out / "curves").exists()  # per-run curves only on request (--run-curves)
    # the plot's front, with each run linked to its run folder (relative: the report and the store move together)
    front = html[html.index('<table class="sortable" id="front">') :]
    front = front[: front.index("</table>")]
    folders = re.findall(r'<a href="([^"#][^"]*)/">', front)
    assert folders and all((out / f / "config.yaml").is_file() for f in folders)
    assert front.count("<tr>") - 1 == sum(len(d["front"]) for d in _res["tradeoff"]["concepts"].values())
    assert all((out / f / "config.yaml").is_file() for f in re.findall(r'<td><a href="([^"#][^"]*)/">', html))


def test_unreadable_file_is_reported_not_fatal(store):
    (store["sweepA"] / "0" / "metrics.json").write_text("{not json")
    df = load_runs([store["sweepA"]])
    row = df[df["run"].str.endswith("/0")].iloc[0]
    assert "metrics.json" in row["load_error"] and pd.isna(row["image_similarity"])


# --- the plots ------------------------------------------------------------------------------------


def test_tradeoff_plot_configuration_means_over_light_run_points(analysed):
    _, res, out = analysed
    data = res["tradeoff"]["concepts"]
    assert list(data) == ["all", "cat_toy", "teapot"]  # several concepts: "all concepts" first
    for concept, d in data.items():
        expect = [(s, f) for s, f in zip(SPECS, FAMILIES) if s[7] == "completed" and concept in (s[2], "all")]
        assert sorted(d["run_x"]) == pytest.approx(sorted(s[4] for s, _ in expect))
        means: dict[str, list] = {}
        for s, f in expect:
            means.setdefault(f, []).append((s[4], s[5]))
        assert sorted(d["configurations"]) == sorted(means)
        for cfg, x, y in zip(d["configurations"], d["x"], d["y"]):
            assert x == pytest.approx(np.mean([p[0] for p in means[cfg]]))
            assert y == pytest.approx(np.mean([p[1] for p in means[cfg]]))
        front = {c for c, m in zip(d["configurations"], brute_force_front(d["x"], d["y"])) if m}
        assert set(d["front"]) == front and front
        if concept != "all":
            assert d["references"] == {"image_only": REFS[concept][0], "prompt_only": REFS[concept][1]}
        _assert_labels_apart(d["labels"])
    # the artists: the solid marks are the configuration means, the light scatter the runs
    teapot = data["teapot"]
    ax = teapot["labels"][0].figure.axes[2]
    means = [line for line in ax.get_lines() if line.get_gid() == "configuration means"]
    drawn = sorted((float(px), float(py)) for line in means for px, py in zip(*line.get_data()))
    np.testing.assert_allclose(drawn, sorted(zip(teapot["x"], teapot["y"])))
    np.testing.assert_allclose(drawn[0], (0.79, 0.24))  # n=5 images: two seeds (0.80, 0.78) averaged
    runs = sorted(tuple(p) for coll in ax.collections if coll.get_alpha() == 0.3 for p in coll.get_offsets())
    np.testing.assert_allclose(runs, sorted(zip(teapot["run_x"], teapot["run_y"])))
    # its interval is the t-interval over the two seeds
    cfg = res["configurations"].set_index(["concept", "configuration"]).loc[("teapot", "n=5 images")]
    half = 12.706 * np.std([0.80, 0.78], ddof=1) / np.sqrt(2)
    assert cfg["n"] == 2 and cfg["image_similarity_ci_low"] == pytest.approx(0.79 - half, abs=1e-3)
    # legible at column width: 3.3 in per facet, legend included, one facet = one column
    assert teapot["labels"][0].figure.get_size_inches()[0] == pytest.approx(3 * 3.3)
    one, _ = tradeoff_plot(res["runs"][res["runs"]["concept"] == "cat_toy"])
    plots.save(one, out, "one_facet", svg=False)
    with Image.open(out / "one_facet.png") as im:
        assert im.width <= 3.3 * 200 * 1.05, im.width
    with Image.open(out / "tradeoff.png") as im:
        assert im.width >= 3 * 3.3 * 200 * 0.8
    assert "<svg" in (out / "tradeoff.svg").read_text()[:500]


def test_distance_and_dataset_size_plots(analysed):
    _, res, out = analysed
    rho = res["distance"]
    # cat_toy: text similarity falls monotonically with the distance from init (rho = -1)
    cat = [s for s in SPECS if s[2] == "cat_toy" and s[7] == "completed"]
    from scipy.stats import spearmanr

    dists = [
        s[6]
        * np.mean([1 + 0.01 * j for j in range((base_config("cat_toy") | s[3])["inversion.num_vectors"])])
        for s in cat
    ]
    assert rho["text_similarity"]["cat_toy"]["rho"] == pytest.approx(spearmanr(dists, [s[5] for s in cat])[0])
    assert rho["text_similarity"]["cat_toy"]["rho"] == pytest.approx(-1.0)
    assert rho["image_similarity"]["teapot"]["n"] == 4
    svg = (out / "objectives_vs_distance.svg").read_text()
    assert "ρ = -1.00" in svg or "ρ = −1.00" in svg
    means = res["dataset_size"]["text_similarity"]["teapot"]
    assert means == pytest.approx({1.0: 0.15, 3.0: 0.20, 5.0: 0.24})
    assert "cat_toy" not in means  # its folder is not here: data.n_images=null has no known size


def test_partial_sweep_and_bad_input(tmp_path, capsys):
    from analysis.__main__ import main

    root = tmp_path / "partial"
    write_run(root / "0", "cat_toy", {}, None, None, 0.1, "running", seed=0)
    assert main([str(root)]) == 0
    out = root / "analysis"
    assert "running" in pd.read_csv(out / "runs.csv")["status"].tolist()
    assert (out / "report.html").exists() and (out / "tradeoff.png").exists()
    # a second analysis of the same sweep does not mistake its own output folder for a run
    assert main([str(root)]) == 0 and len(pd.read_csv(out / "runs.csv")) == 1

    assert main([str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no run folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_subprocess_does_not_import_torch(store, tmp_path):
    code = (
        "import sys; from analysis.__main__ import main; rc = main(sys.argv[1:]);"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(store["sweepB"]), "--out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "analysis", str(store["sweepB"]), "--out", str(tmp_path / "o2")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "4 runs" in r.stdout and (tmp_path / "o2" / "report.html").exists()
    r = subprocess.run(
        [sys.executable, "-m", "analysis", str(store["sweepA"]), "--out", str(tmp_path / "o3")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and f"failed: {store['sweepA']}/6: {ERROR}" in r.stdout, r.stdout + r.stderr


def test_search_families_are_coarsened_for_the_plot(tmp_path):
    """An Optuna search gives every trial its own lr: the plot's colours fall back to coarser families."""
    from analysis.plots import coarse_families

    rng = np.random.default_rng(0)
    for i in range(30):
        over = {
            "inversion.lr": float(10 ** rng.uniform(-4, -2)),
            "inversion.num_vectors": 1 + i % 3,
            "data.n_images": 1 + i % 5,
            "inversion.per_image_tokens": i % 2 == 0,
        }
        write_run(
            tmp_path / "s" / str(i),
            "cat_toy",
            over,
            rng.uniform(0.6, 0.9),
            rng.uniform(0.15, 0.3),
            0.5,
            "completed",
            seed=i,
        )
    df = load_runs(tmp_path / "s")
    assert df["family"].nunique() == 30
    assert [r.rsplit("/", 1)[1] for r in df["run"]] == [str(i) for i in range(30)]  # 10 after 9
    fams = coarse_families(df)
    # named by what varied with the fewest values (vectors, per-image tokens): the lr (30 values) and the
    # image count (5) are dropped, not named for every run
    assert set(fams) == {
        "1 vector",
        "2 vectors",
        "3 vectors",
        "1 vector, per-image tokens",
        "2 vectors, per-image tokens",
        "3 vectors, per-image tokens",
    }
    assert coarse_families(df.iloc[:3]).tolist() == df["family"].iloc[:3].tolist()  # few runs: full names
    fig, data = tradeoff_plot(df)
    assert data["coarsened"] and len(data["styles"]) == 6
    assert len(data["concepts"]["cat_toy"]["runs"]) == 30
    # a cloud coloured by the axis that varied most, the front labelled by trial number
    assert data["colour_by"] == "effective_lr"
    facet = data["concepts"]["cat_toy"]
    trial = dict(zip(df["run"], df["trial_number"]))
    assert facet["front_keys"] == [f"#{trial[runs[0]]}" for runs in facet["front_runs"]]
    shown = [t.get_text() for t in facet["labels"]]
    assert {"image only", "prompt only"} <= set(shown)
    assert set(shown) - {"image only", "prompt only"} <= set(facet["front_keys"]) and len(shown) > 3
    title = fig.legends[0].get_title().get_text()
    assert "coloured by effective learning rate" in title
    assert "95%" not in title  # one run per configuration: no interval exists, none is promised
    table = data["front_table"]
    assert table["key"].tolist() == facet["front_keys"] and table["runs"].tolist() == facet["front_runs"]
    _assert_labels_apart(facet["labels"])
    # another axis on request: a choice of values is one colour each
    _, by_vectors = tradeoff_plot(df, colour_by="inversion.num_vectors")
    assert by_vectors["colour_by"] == "inversion.num_vectors"


def _assert_labels_apart(labels) -> None:
    """No two labels overlap, every label is inside its axes, and no two leader lines cross."""
    from matplotlib.path import Path as MPath
    from matplotlib.text import Annotation

    ax = labels[0].axes
    renderer = ax.figure.canvas.get_renderer()
    boxes = [text_box(t, renderer) for t in labels]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    inside = ax.get_window_extent(renderer)
    for b in boxes:
        assert inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1, b
    leaders = [
        MPath(ax.transData.transform([a.xy, a.xyann]))
        for a in ax.texts
        if isinstance(a, Annotation) and a.arrowprops
    ]
    for a, b in itertools.combinations(leaders, 2):
        assert not a.intersects_path(b), (a.vertices, b.vertices)


def test_six_trial_search_is_labelled_by_trial_number(tmp_path):
    """Six trials that each move several knobs: long names go to the legend, keyed by trial number; the
    marks carry the key; no interval is drawn or promised with one seed each."""
    for i in range(6):
        over = {
            "inversion.lr": [2e-3, 8e-4, 3e-3, 1e-3, 4e-4, 2.5e-3][i],
            "inversion.num_vectors": 1 + i % 3,
            "inversion.reg_weight": [0.0, 1e-3, 0.02, 0.0, 5e-3, 0.1][i],
            "data.n_images": [3, 5][i % 2],
        }
        x, y = 0.7 + 0.03 * i, 0.28 - 0.012 * i + 0.004 * (i % 2)
        write_run(tmp_path / "s" / str(i), "cat_toy", over, x, y, 0.5, "completed", seed=i)
    df = load_runs(tmp_path / "s")
    fig, data = tradeoff_plot(df)
    facet = data["concepts"]["cat_toy"]
    assert data["colour_by"] is None and not data["coarsened"]  # six configurations: each its own style
    keys = {f"#{t}" for t in df["trial_number"]}
    shown = {t.get_text() for t in facet["labels"]} - {"image only", "prompt only"}
    assert shown and shown <= keys
    for fam, key in zip(df["family"], (f"#{t}" for t in df["trial_number"])):
        assert f"{key} {fam}" in data["legend"]
    assert "95%" not in fig.legends[0].get_title().get_text()
    ax = facet["labels"][0].axes
    assert not [line for line in ax.get_lines() if len(line.get_xdata()) == 2 and line.get_linestyle() == "-"]
    _assert_labels_apart(facet["labels"])


def test_moved_sweep_reads_its_own_folders(store, tmp_path):
    """config.yaml records where the run was written (run_dir); a sweep copied from another machine is
    read from where it is now."""
    cfg_file = store["sweepA"] / "0" / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text()) | {"run_dir": "/elsewhere/machine2/sweepA/0"}
    cfg_file.write_text(yaml.safe_dump(cfg))
    df = load_runs([store["sweepA"]])
    row = df[df["run"] == f"{store['sweepA']}/0"].iloc[0]
    assert row["run_dir"] == str(store["sweepA"] / "0")
    assert row["config.run_dir"] == "/elsewhere/machine2/sweepA/0"
    assert row["final_dist_l2"] == pytest.approx(0.5)


def test_findings_of_single_runs_are_folded_below_the_verdicts():
    """A search gives one "not enough runs" row per pair of single runs: beyond FOLD_THIN_ROWS they go into a
    closed <details> under the table, so that the plots stay near the top; the other rows stay in the table."""
    from analysis.report import FOLD_THIN_ROWS, findings_section

    row = dict(claim="c", source="Fig. 10a", objective="both", paper="higher", effect=0.1, ci_low=0.0)
    rows = [row | dict(comparison="a - b", ci_high=0.2, n=6, verdict="holds")]
    rows += [
        row | dict(comparison=f"lr {i} - ours", ci_high=0.2, n=1, verdict="not enough runs: add seeds")
        for i in range(FOLD_THIN_ROWS + 1)
    ]
    html = findings_section(pd.DataFrame(rows), [], [])
    table = html[html.index('<table id="findings">') : html.index("</table>")]
    assert '<td class="holds">holds</td>' in table and "not enough runs" not in table
    assert (
        f"<summary>{FOLD_THIN_ROWS + 1} more comparisons" in html and html.count("lr ") == FOLD_THIN_ROWS + 1
    )
    few = findings_section(pd.DataFrame(rows[:3]), [], [])
    assert "<details>" not in few and few.count("not enough runs: add seeds</td>") == 2
