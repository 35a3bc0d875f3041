"""Synthetic run folders: the files a search writes into each trial's folder (config.yaml, status.json,
history.csv, metrics.json, samples/*.png, per ARCHITECTURE.md), with no model run. The objectives are drawn
from a made-up tradeoff (a higher learning rate and more vectors raise reconstruction and lower editability,
plus noise); they stand for nothing measured. The analysis benchmark (bench/analysis_scale.py), the report
screenshots (`make screenshots`) and their tests read them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

PROMPTS = [
    "reconstruction",
    "a-photo-of-on-the-moon",
    "an-oil-painting-of",
    "elmo-holding-a",
    "a-red",
    "in-the-jungle",
    "on-the-beach",
    "a-sketch-of",
    "in-the-snow",
]


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in flat.items():
        d = out
        *head, last = k.split(".")
        for h in head:
            d = d.setdefault(h, {})
        d[last] = v
    return out


def trial_values(rng: np.random.Generator) -> dict[str, Any]:
    """One search trial's draw: base lr log-uniform, 1-3 vectors, regularisation half the time, image count."""
    return {
        "inversion.lr": float(10 ** rng.uniform(-4, -2)),
        "inversion.num_vectors": int(rng.integers(1, 4)),
        "inversion.reg_weight": float(10 ** rng.uniform(-4, -1)) if rng.random() < 0.5 else 0.0,
        "data.n_images": int(rng.choice([3, 5])),
    }


def objectives(values: dict[str, Any], rng: np.random.Generator) -> tuple[float, float]:
    """The made-up tradeoff: (image similarity, text similarity)."""
    push = 1 / (1 + math.exp(-(math.log10(values["inversion.lr"]) + 3) * 2))  # 0 .. 1 with the lr
    push += 0.08 * (values["inversion.num_vectors"] - 1) - 3 * values["inversion.reg_weight"]
    image = 0.62 + 0.22 * push + rng.normal(0, 0.012)
    text = 0.30 - 0.10 * push + 0.04 * push**2 + rng.normal(0, 0.006)
    return float(image), float(text)


def sample_grids(folder: Path, size: int, seed: int = 0) -> list[Path]:
    """One smooth random image per prompt (upscaled low-resolution noise: compresses like a photo grid)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PROMPTS:
        small = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
        path = folder / f"{name}.png"
        small.resize((size, size), Image.Resampling.BICUBIC).save(path)
        paths.append(path)
    return paths


def write_trial(
    run_dir: Path,
    number: int,
    values: dict[str, Any],
    xy: tuple[float, float],
    grids: list[Path],
    rows: int,
    link_grids: bool = False,
) -> None:
    """One completed trial's folder."""
    flat = {
        "model.pretrained": "synthetic",
        "data.images": "/data/concepts/cat_toy",
        "data.property": "object",
        "inversion.scale_lr": True,
        "inversion.batch_size": 4,
        "inversion.grad_accum": 2,
        "inversion.num_vectors": 1,
        "inversion.per_image_tokens": False,
        "inversion.reg_weight": 0.0,
        "inversion.progressive_every": None,
        "inversion.pivotal.enabled": False,
        "inversion.steps": 10 * rows,
        "inversion.seed": 0,
        "evaluation.num_samples": 8,
        "tracking.mode": "offline",
    } | values
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(_nest(flat)))
    steps = np.arange(rows) * 10
    k = int(flat["inversion.num_vectors"])
    final = 0.2 + 2.0 * max(xy[0] - 0.55, 0.0)  # further from the init word, higher reconstruction (Sec. 5)
    dist = final * (0.2 + 0.8 * steps / max(steps[-1], 1))
    hist: dict[str, Any] = {
        "step": steps,
        "loss": 0.2 + 0.05 * np.cos(steps / 7 + number),
        "lr": flat["inversion.lr"],
    }
    for i in range(k):
        hist[f"dist_l2_{i}"], hist[f"dist_cos_{i}"] = dist, dist / 5
    hist["dist_l2_mean"], hist["dist_cos_mean"] = dist, dist / 5
    lines = [",".join(hist)] + [
        ",".join(f"{(v[r] if isinstance(v, np.ndarray) else v):.6g}" for v in hist.values())
        for r in range(rows)
    ]
    (run_dir / "history.csv").write_text("\n".join(lines) + "\n")
    status = {
        "status": "completed",
        "error": None,
        "traceback": None,
        "started_at": "2026-12-07T10:00:00",
        "finished_at": "2026-12-07T10:05:00",
        "wall_time_s": 300.0,
        "trial_number": number,
    }
    (run_dir / "status.json").write_text(json.dumps(status))
    x, y = xy
    metrics = {
        "image_similarity": x,
        "text_similarity": y,
        "image_similarity_ci": [x - 0.015, x + 0.015],
        "text_similarity_ci": [y - 0.006, y + 0.006],
        "references": {
            "image_only": {"image_similarity": 0.9, "text_similarity": 0.17},
            "prompt_only": {"image_similarity": 0.5, "text_similarity": 0.31},
        },
        "judge": "synthetic",
        "num_samples": 8,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "samples").mkdir(exist_ok=True)
    for g in grids:
        if (
            link_grids
        ):  # a hard link: its own file name, no disk (the analysis reads each as a file of its own)
            os.link(g, run_dir / "samples" / g.name)
        else:
            shutil.copyfile(g, run_dir / "samples" / g.name)


def write_search(
    root: Path,
    n_runs: int,
    *,
    grid_px: int = 512,
    history_rows: int = 200,
    seed: int = 0,
    link_grids: bool = False,
) -> Path:
    """A search's sweep folder of `n_runs` synthetic completed trials (folders 0 .. n-1, trial numbers alike),
    each with len(PROMPTS) sample grids of grid_px x grid_px (copies, or hard links of one set with
    `link_grids`); returns the folder."""
    rng = np.random.default_rng(seed)
    grids = sample_grids(root / ".grids", grid_px, seed)
    for i in range(n_runs):
        values = trial_values(rng)
        write_trial(root / str(i), i, values, objectives(values, rng), grids, history_rows, link_grids)
    shutil.rmtree(root / ".grids")
    return root
