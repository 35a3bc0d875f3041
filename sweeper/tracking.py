"""W&B view of one trial. The run folder is the source of truth; this is only a view of it.

One W&B run per trial: group = the Optuna study name (search) or the sweep folder's name (grid),
name = the run folder's name, config = the resolved Hydra config. Offline by default, so it works
with no network and no key; `wandb sync <run_dir>/wandb/offline-run-*` uploads later.

Every W&B call goes through `_safe`: a W&B failure is logged as a warning and never fails a trial.
`tracking=none` (tracking.enabled=false) gives a Tracker whose methods do nothing.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _safe(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> Any:
        if self.run is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never fail a trial
            log.warning(
                "W&B %s failed (%s: %s); the trial goes on, the run folder has everything",
                method.__name__,
                type(e).__name__,
                e,
            )
            return None

    return wrapper


def default_group(cfg: DictConfig | None = None) -> str | None:
    """The study name in an Optuna search, the sweep folder's name in any other multirun, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001 - not inside a Hydra job
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    study = OmegaConf.select(hc, "sweeper.study_name", default=None)
    return str(study) if study else Path(str(hc.sweep.dir)).name


def _plain_config(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra job
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


class Tracker:
    """Log one trial to W&B. `Tracker(None)` (or tracking=none) is a no-op tracker."""

    def __init__(self, run: Any = None, log_images: bool = True, log_embeddings: bool = True) -> None:
        self.run = run
        self._log_images = log_images
        self._log_embeddings = log_embeddings

    @classmethod
    def from_config(cls, cfg: DictConfig, run_dir: str | Path, *, concurrent: bool = False) -> Tracker:
        """A W&B run for the trial in `run_dir`; `concurrent`: beside other open runs (vectorised trials)."""
        t = OmegaConf.select(cfg, "tracking", default=None)
        if t is None or not t.get("enabled", False) or t.get("mode") == "disabled":
            return cls(None)
        run_dir = Path(run_dir)
        wandb_dir = Path(t.dir) if t.get("dir") else run_dir
        try:
            import wandb

            wandb_dir.mkdir(parents=True, exist_ok=True)
            run = wandb.init(
                mode=t.get("mode") or "offline",
                project=t.get("project"),
                entity=t.get("entity"),
                group=t.get("group") or default_group(cfg),
                name=run_dir.name,
                tags=list(t.get("tags") or []),
                config=_plain_config(cfg),
                dir=str(wandb_dir),
                reinit="create_new" if concurrent else "finish_previous",
                settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
            )
        except Exception as e:  # noqa: BLE001
            log.warning("W&B init failed (%s: %s); tracking is off for this trial", type(e).__name__, e)
            return cls(None)
        return cls(run, bool(t.get("log_images", True)), bool(t.get("log_embeddings", True)))

    @property
    def active(self) -> bool:
        return self.run is not None

    @_safe
    def log(self, values: dict, step: int | None = None) -> None:
        clean = {k: float(v) for k, v in values.items() if _is_number(v)}
        if clean:
            self.run.log(clean, step=step)

    def on_log(self, step: int, values: dict) -> None:
        """The trainer's on_log(step, values) callback: loss and distance-from-init curves."""
        self.log(values, step=step)

    @_safe
    def log_images(self, images: dict[str, Path], prefix: str = "samples") -> None:
        if not self._log_images:
            return
        import wandb

        present = {k: Path(p) for k, p in images.items() if Path(p).is_file()}
        if present:
            self.run.log({f"{prefix}/{k}": wandb.Image(str(p), caption=k) for k, p in present.items()})

    @_safe
    def log_table(self, name: str, df: Any) -> None:
        """A pandas DataFrame as a W&B Table; W&B wants one type per column, so non-numbers become text."""
        import pandas as pd
        import wandb

        clean = pd.DataFrame(
            {
                c: df[c]
                if pd.api.types.is_numeric_dtype(df[c])
                else df[c].astype(str).where(df[c].notna(), "")
                for c in df.columns
            }
        )
        self.run.log({name: wandb.Table(dataframe=clean)})

    @_safe
    def log_artifact(self, name: str, paths: list[Path], type: str = "embeddings") -> None:
        if not self._log_embeddings:
            return
        import wandb

        files = [Path(p) for p in paths if Path(p).is_file()]
        if not files:
            return
        art = wandb.Artifact(re.sub(r"[^A-Za-z0-9._-]+", "-", name), type=type)
        for f in files:
            art.add_file(str(f), name=f.name)
        self.run.log_artifact(art)

    def log_result(self, run_dir: Path, metrics: dict) -> None:
        """A finished trial: its two objectives, metrics.json as the summary, sample grids, embedding files."""
        run_dir = Path(run_dir)
        self.log(
            {"image_similarity": metrics["image_similarity"], "text_similarity": metrics["text_similarity"]}
        )
        self.summary(metrics)
        self.log_images({p.stem: p for p in sorted((run_dir / "samples").glob("*.png"))})
        self.log_artifact(f"embeddings-{run_dir.name}", sorted(run_dir.glob("*embeds*.safetensors")))

    @_safe
    def summary(self, values: dict) -> None:
        for k, v in _flatten(values).items():
            self.run.summary[k] = v

    @_safe
    def finish(self, status: str = "completed") -> None:
        self.run.summary["status"] = status
        self.run.finish(exit_code=0 if status == "completed" else 1)
        self.run = None


def _is_number(v: Any) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _flatten(values: dict, prefix: str = "") -> dict:
    """Numbers and strings of a nested dict (metrics.json) as 'a/b' keys; lists of two numbers (CIs) kept."""
    out: dict = {}
    for k, v in values.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}/"))
        elif isinstance(v, (str, bool)) or _is_number(v):
            out[key] = v
        elif isinstance(v, (list, tuple)) and all(_is_number(x) for x in v):
            out[key] = [float(x) for x in v]
    return out
