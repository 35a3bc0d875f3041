"""W&B view of one trial. The run folder is the source of truth; this is only a view of it.

One W&B run per trial: group = the Optuna study name (search) or the sweep folder's name (grid),
name = the run folder's name, config = the resolved Hydra config. Offline by default, so it works
with no network and no key; `wandb sync <run_dir>/wandb/offline-run-*` uploads later.

Failure isolation (a W&B failure never fails a trial):
- Every W&B call goes through `_safe`: a failure is logged as a warning; once W&B's service is gone
  (it dies with the job on SIGTERM, e.g. `scancel`) the tracker stops calling it.
- wandb registers post-import hooks that report to its service when packages such as diffusers, peft or
  huggingface_hub are first imported; after the service died, such an import anywhere in the trial raised
  ConnectionResetError. The tracker removes those hooks right after `wandb.init`.
- `tracking.mode=online` with no reachable server falls back to offline within seconds: the server (or
  proxy) is probed first, and `wandb.init` gets `tracking.init_timeout` seconds (wandb's default, 90 s,
  stalled every trial). The offline run stays in the run folder and the log says how to sync it.
- Artifact files are referenced where they lie in the run folder (`policy="immutable"`: no copy staged
  under ~/.local/share/wandb; `wandb sync` uploads them from the run folder). Artifact names carry the
  sweep (study) name and the run folder's name, so they differ across sweeps.

`tracking=none` (tracking.enabled=false) gives a Tracker whose methods do nothing.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sweeper.config.schema import TrackingConfig, effective_lr, inversion_lr_label
from sweeper.evaluation.metrics import summarised_metrics

log = logging.getLogger(__name__)

DEFAULT_INIT_TIMEOUT: float = TrackingConfig.init_timeout  # the schema's default
PROBE_TIMEOUT = 5.0  # seconds for the TCP probe of the W&B server (or its proxy)
# a failure of these kinds means W&B's service process is gone: nothing later can reach it
SERVICE_LOST = (ConnectionError, EOFError, BrokenPipeError)
_OPEN_RUNS: set[int] = set()  # the W&B runs this process opened through a Tracker and has not finished


def _forget_dead_service() -> None:
    """Drop wandb's connection to its dead service, and the exit hook that would talk to it: at exit it raised
    ConnectionResetError, and the job's stderr ended in that traceback as if the trial had crashed."""
    try:
        from wandb.sdk import wandb_setup

        setup = wandb_setup._singleton
        connection = getattr(setup, "_connection", None)
        if connection is not None:
            cleanup = getattr(connection, "_cleanup", None)
            if cleanup is not None:
                cleanup()  # unregisters wandb's teardown_atexit
            setup._connection = None  # the next wandb.init starts a new service
    except Exception as e:  # noqa: BLE001 - a wandb without these internals: its exit hook may still complain
        log.debug("could not detach W&B's dead service: %s", e)


def _safe(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(self: Tracker, *args: Any, **kwargs: Any) -> Any:
        if self.run is None:
            return None
        try:
            return method(self, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - tracking must never fail a trial
            if isinstance(e, SERVICE_LOST):
                self.run = None
                _forget_dead_service()
                log.warning(
                    "W&B %s failed (%s: %s): W&B's service is gone (killed with the job?); W&B logging stops "
                    "for this trial, which goes on; the run folder has everything%s",
                    method.__name__,
                    type(e).__name__,
                    e,
                    f"; what W&B got so far is in {self.sync_dir}" if self.sync_dir else "",
                )
                return None
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
        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001 - not inside a Hydra job
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    study = OmegaConf.select(cast(Any, hc), "sweeper.study_name", default=None)  # a structured config
    return str(study) if study else Path(str(hc.sweep.dir)).name


def _plain_config(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra job
        return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def lr_config(cfg: DictConfig) -> dict:
    """The run's learning rate in the one convention, beside the config's base `inversion.lr`:
    `effective_lr` (a number to chart) and `lr` ("lr 0.029 (effective; base 0.00363)")."""
    try:
        return {"effective_lr": effective_lr(cfg.inversion), "lr": inversion_lr_label(cfg.inversion)}
    except Exception:  # noqa: BLE001 - a config without the inversion group (a re-evaluation)
        return {}


def unreachable(base_url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the W&B server at `base_url` cannot be reached (a TCP connect to it, or to the proxy the
    environment names for it), or None when it can. Seconds at most, where wandb.init would wait 90."""
    url = urllib.parse.urlsplit(base_url)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return f"base URL {base_url!r} names no host"
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        purl = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = purl.hostname or host, purl.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port} unreachable ({type(e).__name__}: {e})"


def _drop_import_hooks(run: Any) -> None:
    """Remove the post-import hooks wandb.init registered for `run` (see the module docstring)."""
    try:
        from wandb.sdk.lib import import_hooks, telemetry

        for module_name in telemetry.list_telemetry_imports():
            import_hooks.unregister_post_import_hook(module_name, run.settings.run_id)
    except Exception as e:  # noqa: BLE001 - a wandb without these internals: nothing to remove
        log.debug("W&B import hooks not removed (%s: %s)", type(e).__name__, e)


def _init_timeout(t: DictConfig) -> float:
    value = t.get("init_timeout", DEFAULT_INIT_TIMEOUT)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        log.warning(
            "tracking.init_timeout=%r: not a positive number of seconds; using %s",
            value,
            DEFAULT_INIT_TIMEOUT,
        )
        return DEFAULT_INIT_TIMEOUT
    return seconds


class Tracker:
    """Log one trial to W&B. `Tracker(None)` (or tracking=none) is a no-op tracker."""

    def __init__(
        self,
        run: Any = None,
        log_images: bool = True,
        log_embeddings: bool = True,
        group: str | None = None,
        sync_dir: str | None = None,
    ) -> None:
        self.run = run
        self._log_images = log_images
        self._log_embeddings = log_embeddings
        self.group = group
        self.sync_dir = sync_dir  # the offline run's folder (what `wandb sync` uploads); None online
        self._fell_back = False  # online was asked for, offline is what runs

    @classmethod
    def from_config(
        cls, cfg: DictConfig, run_dir: str | Path, *, concurrent: bool = False, job_type: str = "trial"
    ) -> Tracker:
        """A W&B run for the trial in `run_dir`; `concurrent`: beside other open runs (vectorised trials).
        `job_type` "trial": the run id is kept in the run folder (RUN_ID_FILE), so a resumed trial (after an
        interruption) goes on in the same W&B run; "analysis": a new run each time."""
        t = OmegaConf.select(cfg, "tracking", default=None)
        if t is None or not t.get("enabled", False) or t.get("mode") == "disabled":
            return cls(None)
        run_dir = Path(run_dir)
        wandb_dir = Path(t.dir) if t.get("dir") else run_dir
        group = t.get("group") or default_group(cfg)
        mode = t.get("mode") or "offline"
        fell_back = None
        try:
            import wandb  # heavy, and only needed with tracking on

            wandb_dir.mkdir(parents=True, exist_ok=True)
            timeout = _init_timeout(t)
            run_id = trial_run_id(run_dir) if job_type == "trial" else None

            def init(mode: str, run_id: str | None = run_id):
                return wandb.init(
                    mode=mode,  # type: ignore[arg-type]  # online | offline | disabled: the schema's choices
                    project=t.get("project"),
                    entity=t.get("entity"),
                    group=group,
                    name=run_dir.name,
                    job_type=job_type,
                    id=run_id,
                    resume="allow" if run_id else None,
                    tags=list(t.get("tags") or []),
                    config={**_plain_config(cfg), **lr_config(cfg)},
                    dir=str(wandb_dir),
                    reinit="create_new" if concurrent else "finish_previous",
                    settings=wandb.Settings(
                        console="off", silent=True, x_disable_stats=True, init_timeout=timeout
                    ),
                )

            run = None
            if mode == "online":
                base_url = wandb.setup().settings.base_url
                fell_back = unreachable(base_url, min(PROBE_TIMEOUT, timeout))
                if fell_back is None:
                    try:
                        run = init("online")
                    except Exception as e:  # noqa: BLE001 - CommError on timeout, auth errors, ...
                        fell_back = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        run_id = None  # W&B's service still holds the failed online run's id: a new one
                if fell_back is not None:
                    fell_back = f"W&B server {base_url}: {fell_back}"
            if run is None:
                run = init("offline" if mode == "online" else mode, run_id)
            _drop_import_hooks(run)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B init failed (%s: %s); tracking is off for this trial", type(e).__name__, e)
            return cls(None)
        sync_dir = None if run.settings.mode == "online" else str(run.settings.sync_dir)
        if fell_back:
            log.warning(
                "W&B online is not available (%s); this trial logs to W&B offline in %s. "
                "Upload it when there is network with: wandb sync %s",
                fell_back,
                sync_dir,
                sync_dir,
            )
        if sync_dir and not fell_back:
            log.info("W&B run %s offline in %s (upload it with: wandb sync %s)", run.id, sync_dir, sync_dir)
        _OPEN_RUNS.add(id(run))
        tracker = cls(
            run, bool(t.get("log_images", True)), bool(t.get("log_embeddings", True)), group, sync_dir
        )
        tracker._fell_back = bool(fell_back)
        return tracker

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
    def log_scatter(self, name: str, df: Any, x: str, y: str, title: str) -> None:
        """An interactive scatter of columns x against y of `df` (a W&B Table of its own, logged under `name`)."""
        import wandb

        table = wandb.Table(dataframe=df)
        self.run.log({name: wandb.plot.scatter(table, x, y, title=title)})

    @_safe
    def log_artifact(self, name: str, paths: list[Path], type: str = "embeddings") -> None:
        if not self._log_embeddings:
            return
        import wandb

        files = [Path(p) for p in paths if Path(p).is_file()]
        if not files:
            return
        art = wandb.Artifact(artifact_name(name), type=type)
        for f in files:  # referenced where it lies in the run folder: nothing staged under ~/.local/share
            art.add_file(str(f.resolve()), name=f.name, policy="immutable")
        self.run.log_artifact(art)

    def log_result(self, run_dir: Path, metrics: dict) -> None:
        """A finished trial: its summarised metrics (the registry's), metrics.json as the summary, sample
        grids, embedding files."""
        run_dir = Path(run_dir)
        self.log({m.name: metrics[m.name] for m in summarised_metrics() if m.name in metrics})
        self.summary(metrics)
        self.log_images({p.stem: p for p in sorted((run_dir / "samples").glob("*.png"))})
        sweep = (
            self.group or run_dir.resolve().parent.name
        )  # the study / sweep, so names differ across sweeps
        self.log_artifact(f"embeddings-{sweep}-{run_dir.name}", sorted(run_dir.glob("*embeds*.safetensors")))

    @_safe
    def summary(self, values: dict) -> None:
        for k, v in _flatten(values).items():
            self.run.summary[k] = v

    @_safe
    def finish(self, status: str = "completed", wall_time_s: float | None = None) -> None:
        """End the run with the trial's status and its `wall_time_s` (status.json's: the trial's own cost)."""
        run, self.run = self.run, None
        try:
            run.summary["status"] = status
            if wall_time_s is not None:
                run.summary["wall_time_s"] = wall_time_s
            run.finish(exit_code=0 if status == "completed" else 1)
        finally:
            _OPEN_RUNS.discard(id(run))
        if not _OPEN_RUNS:
            import wandb

            # finish() only tells W&B's service the run is over; the service writes the run's last records
            # after that. Shutting it down (the next wandb.init starts a new one) waits for them, so the run
            # folder's W&B run is complete when the trial is.
            wandb.teardown()
        if self._fell_back:
            log.warning(
                "W&B run kept offline in %s; upload it with: wandb sync %s", self.sync_dir, self.sync_dir
            )


RUN_ID_FILE = "wandb_run_id"  # in the run folder: the trial's one W&B run id, across interruptions


def trial_run_id(run_dir: Path) -> str:
    """The trial's W&B run id: the one its run folder keeps (RUN_ID_FILE), else a new one, kept there first."""
    from wandb.sdk.lib.runid import generate_id

    from sweeper.store import atomic

    path = Path(run_dir) / RUN_ID_FILE
    try:
        kept = path.read_text().strip()
    except OSError:
        kept = ""
    if re.fullmatch(r"[a-z0-9]{4,64}", kept):
        return kept
    new = generate_id()
    atomic.write_text(path, new + "\n")
    return new


def artifact_name(name: str) -> str:
    """`name` in the characters W&B allows in artifact names, at most 128 of them."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)[:128]


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
