"""The world's rendered training set (WORK/data.npz) and the helpers every training stage shares."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from sweeper.store import atomic
from sweeper.world import draw


def log(msg: str) -> None:
    print(f"[world {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


SPEC_FIELDS = ["colour", "shape", "texture", "background", "size", "style", "companion", "x", "y"]


def load_data(work: Path, cfg: dict) -> tuple[torch.Tensor, list[draw.Spec]]:
    path = work / "data.npz"
    if not path.is_file():
        log(f"rendering {cfg['n_train']} training images")
        images, specs = draw.render_dataset(cfg["n_train"], cfg["seed"], draw.held_out_combos())
        rows = np.array(
            [
                [str(getattr(s, f)) if f != "companion" else "|".join(s.companion or ()) for f in SPEC_FIELDS]
                for s in specs
            ]
        )
        atomic._write_via(path, lambda tmp: np.savez(open(tmp, "wb"), images=images, specs=rows))
    with np.load(path) as f:
        images, rows = f["images"], f["specs"]
    specs = [
        draw.Spec(
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            r[5],
            tuple(r[6].split("|")) if r[6] else None,
            float(r[7]),
            float(r[8]),
        )
        for r in rows
    ]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), specs


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float in [-1, 1], the VAE's range."""
    return images.float() / 127.5 - 1
