"""Measure the paper's Fig. 10a directions on the world: `python -m sweeper.world.directions [OUT_DIR]`.

Real trials (sweeper.trial.run_trial) on toy_arrow with the world's evaluation preset, two seeds each;
prints mean image/text similarity per configuration with the mean of the runs' bootstrap 95% CIs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from sweeper.config.compose import compose
from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES
from sweeper.trial import run_trial

BASE = [
    "model=toy",
    "data=toy_arrow",
    "evaluation=toy",
    "tracking=none",
    "device=cpu",
    "inversion.steps=300",
    "inversion.batch_size=4",
    "inversion.grad_accum=1",
    "inversion.log_every=50",
    "inversion.checkpoint_every=0",
    "evaluation.references=false",
    "evaluation.progress=false",
    "evaluation.bootstrap=500",
]
CONFIGS = {  # effective lr = lr x batch 4 (scale_lr)
    "ours (lr 5e-3 x 4)": [],
    "high lr (2e-2 x 4)": ["inversion.lr=2e-2"],
    "low lr (1e-4 x 4)": ["inversion.lr=1e-4"],
    "regularisation (0.01)": ["inversion.reg_weight=0.01"],
    "3 vectors": ["inversion.num_vectors=3"],
}


def main(out: Path, configs: dict = CONFIGS, seeds: tuple = (0, 1)) -> dict:
    torch.set_num_threads(1)
    table = {}
    for name, overrides in configs.items():
        runs = []
        for seed in seeds:
            run_dir = out / f"{name.split(' (')[0].replace(' ', '_')}_s{seed}"
            if not (run_dir / "metrics.json").is_file():
                run_trial(compose([*BASE, *overrides, f"inversion.seed={seed}"]), run_dir)
            runs.append(json.loads((run_dir / "metrics.json").read_text()))
        row = {}
        for key in DEFAULT_OBJECTIVES:
            row[key] = sum(m[key] for m in runs) / len(runs)
            row[f"{key}_ci_halfwidth"] = sum((m[f"{key}_ci"][1] - m[f"{key}_ci"][0]) / 2 for m in runs) / len(
                runs
            )
        table[name] = row
        print(
            f"{name:24s} image {row['image_similarity']:.4f} +- {row['image_similarity_ci_halfwidth']:.4f}  "
            f"text {row['text_similarity']:.4f} +- {row['text_similarity_ci_halfwidth']:.4f}",
            flush=True,
        )
    return table


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/world-directions"))
