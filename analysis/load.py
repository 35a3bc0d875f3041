"""Run folders -> one pandas DataFrame (one row per run). Reads only the results store.

A run folder is a folder holding `config.yaml` (see ARCHITECTURE.md). Every other file is optional:
a running trial has no metrics.json yet, a failed one has status.json with its error, a folder copied
half-way from another machine may lack history.csv. Nothing here fails on a missing file; a file
that exists but cannot be parsed is reported in the `load_error` column.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES, all_metrics, evaluation_metrics, summarised_metrics

# Folders inside a run that never hold a run of their own (Hydra's copy, checkpoints, W&B, temp dirs).
_SKIP_DIRS = {"checkpoints", "pivotal", "wandb", "samples", "__pycache__"}

# The paper's "ours" (Gal et al. 2022, Fig. 10a): one vector at an effective learning rate of 0.04 (base 5e-3
# x 2 GPUs x batch 4), no per-image tokens, no regularisation, no progressive words, no pivotal tuning, all images.
# These are the paper's numbers, not this checkout's defaults: a run's label depends on what it recorded only.
PAPER_OURS: dict[str, Any] = {
    "effective_lr": 0.04,
    "inversion.num_vectors": 1,
    "inversion.progressive_every": None,
    "inversion.per_image_tokens": False,
    "inversion.reg_weight": 0.0,
    "inversion.pivotal.enabled": False,
    "inversion.lr_schedule": "constant",  # the paper's lr is constant (runs from before the knob: the same)
    "inversion.lr_warmup_steps": 0,
}
# Image files a concept folder's size counts (sweeper/data/images.py reads these; not imported: it pulls in torch).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}

_LEADING_COLUMNS = ["run", "sweep", "concept", "family", "configuration", "status", "error"]
_TRAILING_COLUMNS = [
    "effective_lr",
    "n_images",
    "seed",
    "final_dist_l2",
    "final_dist_cos",
    "loss_tail_mean",
    "last_step",
    "wall_time_s",
    "trial_number",
    "started_at",
    "finished_at",
    "load_error",
    "run_dir",
]


def metric_columns() -> list[str]:
    """runs.csv's metric columns, from the registry: each summarised metric's value, then each one's interval
    (<name>_ci_low, <name>_ci_high)."""
    names = [m.name for m in summarised_metrics()]
    return names + [f"{n}_ci_{end}" for n in names for end in ("low", "high")]


def first_columns() -> list[str]:
    """runs.csv's leading columns, in order (every other column follows, sorted)."""
    return _LEADING_COLUMNS + metric_columns() + _TRAILING_COLUMNS


def _is_metric_key(key: str) -> bool:
    """A metrics.json key of a registered metric (its value, interval or flags): kept without a prefix."""
    return any(key == m.name or key.startswith(f"{m.name}_") for m in all_metrics())


FIRST_COLUMNS = first_columns()  # with today's registrations; first_columns() sees later ones


class StoreError(ValueError):
    """The given sweep folders cannot be read (missing, or no run folder inside)."""


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists are kept as JSON strings so they survive a CSV."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def _fmt_num(x: Any, sci: bool = False) -> str:
    """Short, the way the paper writes them: 0.01 -> '0.01'; with sci, 0.02 -> '2e-2'."""
    x = float(x)
    s = f"{x:.2e}" if sci and x != 0 else f"{x:.3g}"
    if "e" in s:
        mant, exp = s.split("e")
        mant = mant.rstrip("0").rstrip(".") if "." in mant else mant
        s = f"{mant}e{int(exp)}"
    return s


def _val(cfg: dict[str, Any], key: str) -> Any:
    """cfg[key] with NaN/NA (a missing key in a DataFrame row) read as None."""
    v = cfg.get(key)
    try:
        return None if v is None or pd.isna(v) else v
    except (TypeError, ValueError):  # lists, dicts
        return v


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return a == b


def _true(v: Any) -> bool:
    return v is not None and str(v).lower() in ("true", "1", "1.0", "yes")


def effective_lr(cfg: dict[str, Any]) -> float | None:
    """The learning rate the optimiser used: config.yaml's `derived.effective_lr` when the run recorded it,
    else inversion.lr x batch_size x grad_accum when inversion.scale_lr, else inversion.lr."""
    recorded = _val(cfg, "derived.effective_lr")
    if recorded is not None:
        return float(recorded)
    lr = _val(cfg, "inversion.lr")
    if lr is None:
        return None
    if _true(_val(cfg, "inversion.scale_lr")):
        batch = _val(cfg, "inversion.batch_size")
        accum = _val(cfg, "inversion.grad_accum")
        return float(lr) * float(1 if batch is None else batch) * float(1 if accum is None else accum)
    return float(lr)


def count_images(folder: Any) -> int | None:
    """Image files in a concept folder (absolute, or relative to the current folder), None when absent."""
    if folder is None:
        return None
    path = Path(str(folder)).expanduser()
    if not path.is_dir():
        return None
    return sum(1 for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def n_images(cfg: dict[str, Any]) -> int | None:
    """Training images the run used: `derived.n_images`, else data.n_images, else (null = all) the number
    of images in data.images when that folder is here."""
    for key in ("derived.n_images", "data.n_images"):
        v = _val(cfg, key)
        if v is not None:
            return int(v)
    return count_images(_val(cfg, "data.images"))


def job_overrides(cfg: dict[str, Any], run_dir: Path) -> list[str]:
    """The Hydra job's task overrides: `derived.overrides`, else the run's .hydra/overrides.yaml, else []."""
    recorded = _val(cfg, "derived.overrides")
    if isinstance(recorded, str):
        try:
            recorded = json.loads(recorded)
        except ValueError:
            recorded = None
    if isinstance(recorded, list):
        return [str(o) for o in recorded]
    try:
        hydra = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(o) for o in hydra] if isinstance(hydra, list) else []


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # someone else's process, or not a pid at all
        return True
    return True


def run_status(status: dict[str, Any], has_metrics: bool) -> str:
    """status.json's status; "stale" for a "running" run whose process (pid on this host) is gone;
    "completed" for a run with metrics.json and no status.json; else "unknown"."""
    st = status.get("status") if isinstance(status, dict) else None
    if st == "running":
        pid, host = status.get("pid"), status.get("host")
        if pid is not None and host == socket.gethostname():
            try:
                if not pid_alive(int(pid)):
                    return "stale"
            except (TypeError, ValueError):
                pass
    return str(st) if st else ("completed" if has_metrics else "unknown")


# Keys that do not make a configuration: seeds (the replication unit), the concept (a grouping of its own),
# bookkeeping, and the raw keys that effective_lr and n_images replace.
_NOT_CONFIGURATION = re.compile(
    r"(^|\.)[A-Za-z_]*seed$|^run_dir$|^tracking\.|^derived\.|^hydra\.|^device$|^config\."
    r"|^inversion\.(lr|scale_lr|log_every|checkpoint_every|compile|precision|placeholder|init_word"
    r"|init_word_average)$|^data\.(images|n_images|class_word|manifest)$"
    r"|^evaluation\.(progress|bootstrap|cache_dir|grid_samples|grid_tile|batch_size|precision|quick\..*)$"
)
# The axes a label names in the paper's words (everything else varied is named key=value).
NAMED_AXES = [
    "effective_lr",
    "inversion.num_vectors",
    "inversion.progressive_every",
    "inversion.per_image_tokens",
    "inversion.reg_weight",
    "inversion.pivotal.enabled",
    "inversion.lr_schedule",
    "inversion.lr_warmup_steps",
    "n_images",
    "inversion.steps",
]


def configuration_values(flat_cfg: dict[str, Any], eff_lr: float | None, n: int | None) -> dict[str, Any]:
    """What defines a run's configuration: its recorded keys without seeds, concept and bookkeeping, with
    effective_lr and n_images in place of the raw keys."""
    values = {k: v for k, v in flat_cfg.items() if not _NOT_CONFIGURATION.search(k)}
    values["effective_lr"] = None if eff_lr is None else float(f"{eff_lr:.6g}")
    values["n_images"] = n
    for key in ("inversion.per_image_tokens", "inversion.pivotal.enabled"):
        values[key] = _true(values.get(key))
    if values.get("inversion.progressive_every") in (0, None):
        values["inversion.progressive_every"] = None
    for key in ("inversion.lr_schedule", "inversion.lr_warmup_steps"):  # absent before the knob existed
        if _val(values, key) is None:
            values[key] = PAPER_OURS[key]
    return values


def family(
    values: dict[str, Any], varied: set[str] | frozenset[str] = frozenset(), subset: bool = False
) -> str:
    """A configuration's name in the paper's words, from its recorded values: what differs from the paper's
    "ours" (e.g. "3 vectors, progressive", "lr 0.0008", "cosine lr", "warm-up 100", "reg 0.01", "per-image
    tokens", "pivotal"), then any
    other axis in `varied` (the keys that differ between the analysed runs: "n=3 images", "150 steps",
    "key=value"); "ours" when nothing differs. `subset`: the run asked for a subset of its images."""
    parts = []
    k = _val(values, "inversion.num_vectors")
    if k is not None and int(k) != 1:
        parts.append(f"{int(k)} vectors")
    if _val(values, "inversion.progressive_every") is not None:
        parts.append("progressive")
    if _true(_val(values, "inversion.per_image_tokens")):
        parts.append("per-image tokens")
    reg = _val(values, "inversion.reg_weight")
    if reg is not None and float(reg) != 0:
        parts.append(f"reg {_fmt_num(reg)}")
    if _true(_val(values, "inversion.pivotal.enabled")):
        parts.append("pivotal")
    lr = _val(values, "effective_lr")
    if lr is not None and not _same(lr, PAPER_OURS["effective_lr"]):
        parts.append(f"lr {_fmt_num(lr)}")
    schedule = _val(values, "inversion.lr_schedule")
    if schedule is not None and schedule != PAPER_OURS["inversion.lr_schedule"]:
        parts.append(f"{schedule} lr")
    warmup = _val(values, "inversion.lr_warmup_steps")
    if warmup is not None and int(warmup) != 0:
        parts.append(f"warm-up {int(warmup)}")
    n = _val(values, "n_images")
    if n is not None and (subset or "n_images" in varied):
        parts.append(f"n={int(n)} image" + ("s" if int(n) != 1 else ""))
    steps = _val(values, "inversion.steps")
    if steps is not None and "inversion.steps" in varied:
        parts.append(f"{int(steps)} steps")
    for key in sorted(varied):
        if key not in NAMED_AXES and key in values:
            parts.append(f"{key}={_val(values, key)}")
    return ", ".join(parts) or "ours"


def lr_series(values: dict[str, Any], varied: set[str] | frozenset[str], subset: bool = False) -> str:
    """The family a run would have without its learning rate: runs sharing it form one LR series."""
    return family({**values, "effective_lr": PAPER_OURS["effective_lr"]}, varied - {"effective_lr"}, subset)


def natural_key(text: Any) -> list:
    """'run/10' after 'run/9': digit runs compare as numbers."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(text)) if t]


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Every run folder under `sweep_dir`, sorted: a folder with its own config.yaml, or (a run recorded by
    something else than sweeper.store.record) with status.json or metrics.json; its config is then Hydra's
    .hydra/config.yaml."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise StoreError(
            f"sweep folder {root} does not exist or is not a folder: pass the folder Hydra "
            f"wrote (hydra.sweep.dir, e.g. multirun/<date>/<time>) or a single run folder"
        )
    cand: set[Path] = set()  # every folder holding a run file
    for name in ("config.yaml", "status.json", "metrics.json"):
        for f in root.rglob(name):
            rel = f.parent.relative_to(root).parts
            if not any(p.startswith(".") or p in _SKIP_DIRS for p in rel):
                cand.add(f.parent)
    runs = []
    for d in sorted(cand):
        # a folder with config.yaml above other runs and no status is a sweep-level config, not a run;
        # anything below a folder with status.json belongs to that run.
        if not (d / "status.json").exists() and any(o != d and d in o.parents for o in cand):
            continue
        if any(a in cand and (a / "status.json").exists() for a in d.parents):
            continue
        runs.append(d)
    return runs


def _read(path: Path, parse, errors: list[str]) -> Any:
    if not path.exists():
        return None
    try:
        return parse(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported, never fatal
        errors.append(f"{path.name}: {type(e).__name__}: {e}")
        return None


def _config_file(run_dir: Path) -> Path:
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists() and (run_dir / ".hydra" / "config.yaml").exists():
        cfg_file = run_dir / ".hydra" / "config.yaml"
    return cfg_file


def _json_dict(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def skip_reason(run_dir: Path) -> str | None:
    """Why a folder holding a run file is not one of this project's runs (None when it is one): its config.yaml
    carries a YAML tag (read with a safe loader, nothing is constructed), or nothing in it is ours (no inversion
    settings in a config, no similarity in metrics.json, no status of a trial)."""
    cfg_file = _config_file(run_dir)
    cfg: Any = None
    if cfg_file.exists():
        try:
            cfg = yaml.safe_load(cfg_file.read_text())
        except yaml.constructor.ConstructorError as err:
            tag = str(getattr(err, "problem", "") or err).splitlines()[0]
            return f"{cfg_file}: holds a YAML tag the safe loader refuses ({tag}); nothing in it was run"
        except (OSError, yaml.YAMLError):
            return None  # a damaged file of a run: load_run reports it in load_error
    if isinstance(cfg, dict) and "inversion" in cfg:
        return None
    metrics = _json_dict(run_dir / "metrics.json")
    status = _json_dict(run_dir / "status.json")
    if set(DEFAULT_OBJECTIVES) & set(metrics) or {"status", "started_at"} <= set(status):
        return None
    return (
        f"{run_dir}: not a run of this project (no inversion settings in its config, no image or text similarity "
        "in its metrics.json)"
    )


def _metrics_columns(m: dict) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for k, v in m.items():
        if k.endswith("_ci") and isinstance(v, (list, tuple)) and len(v) == 2:
            row[f"{k}_low"], row[f"{k}_high"] = v
        elif k == "references" and isinstance(v, dict):
            row.update(flatten(v, "ref."))
        elif isinstance(v, dict):
            row.update(flatten(v, k + "."))
        else:
            row[k] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return row


LOSS_TAIL = 0.25  # loss_tail_mean: the mean loss over the last quarter of history.csv's rows


def load_run(run_dir: str | Path, sweep: str = "") -> dict[str, Any]:
    """One run folder -> one flat row (config keys dotted, metrics, status, final distances), from the run
    folder alone. `family` here names the run on its own; load_runs names it among the others (what varied).
    The configuration's values are under the private key "_values" (load_runs removes it)."""
    run_dir = Path(run_dir)
    errors: list[str] = []
    cfg_file = _config_file(run_dir)
    cfg = _read(cfg_file, lambda p: yaml.safe_load(p.read_text()), errors) or {}
    status = _read(run_dir / "status.json", lambda p: json.loads(p.read_text()), errors) or {}
    metrics = _read(run_dir / "metrics.json", lambda p: json.loads(p.read_text()), errors)
    hist = _read(run_dir / "history.csv", pd.read_csv, errors)

    flat_cfg = flatten(cfg) if isinstance(cfg, dict) else {}
    # config keys that share a name with a column of ours keep a "config." prefix (config.yaml's run_dir
    # is where the run was written, possibly on another machine; ours is where it is read from now)
    first = set(first_columns())
    row: dict[str, Any] = {(f"config.{k}" if k in first else k): v for k, v in flat_cfg.items()}
    if isinstance(metrics, dict):
        row.update(
            {
                (f"metrics.{k}" if k in first and not _is_metric_key(k) else k): v
                for k, v in _metrics_columns(metrics).items()
            }
        )
    row.update({"run_dir": str(run_dir), "sweep": sweep})
    images = flat_cfg.get("data.images")
    row["concept"] = Path(str(images).rstrip("/")).name if images else "unknown"
    row["effective_lr"] = effective_lr(flat_cfg)
    row["n_images"] = n_images(flat_cfg)
    row["seed"] = _val(flat_cfg, "inversion.seed")
    row["overrides"] = json.dumps(job_overrides(flat_cfg, run_dir))
    values = configuration_values(flat_cfg, row["effective_lr"], row["n_images"])
    subset = _val(flat_cfg, "data.n_images") is not None
    row["family"] = family(values, subset=subset)
    row["_values"], row["_subset"] = values, subset
    row["status"] = run_status(status, isinstance(metrics, dict))
    for key in ("error", "wall_time_s", "trial_number", "started_at", "finished_at"):
        row[key] = status.get(key) if isinstance(status, dict) else None
    if isinstance(hist, pd.DataFrame) and len(hist):
        last = hist.iloc[-1]
        for src, dst in (
            ("dist_l2_mean", "final_dist_l2"),
            ("dist_cos_mean", "final_dist_cos"),
            ("step", "last_step"),
        ):
            if src in hist.columns:
                row[dst] = last[src]
        if "loss" in hist.columns:  # one step's loss is mostly its timestep draw: average the tail
            tail = pd.to_numeric(hist["loss"], errors="coerce").iloc[
                -max(1, math.ceil(LOSS_TAIL * len(hist))) :
            ]
            row["loss_tail_mean"] = float(tail.mean())
    confirmation = _read(run_dir / CONFIRMED_FILE, lambda p: json.loads(p.read_text()), errors)
    row["confirmed"] = isinstance(confirmation, dict)
    row["confirmed_from"] = confirmation.get("source_trial") if isinstance(confirmation, dict) else None
    points = step_points_of(run_dir, errors)
    row["step_points"] = json.dumps(points) if points else None
    row["load_error"] = "; ".join(errors) or None
    return row


AT_STEPS_DIR = "at_steps"  # evaluation.at_steps' evaluations (sweeper/trial.py)
CONFIRMED_FILE = "confirmed.json"  # a run of `python -m sweeper.confirm` (sweeper/confirm.py)


def step_points_of(run_dir: Path, errors: list[str]) -> list[list[Any]]:
    """A run's checkpoint evaluations (evaluation.at_steps): [[step, image, text, evaluation CPU s], ...] by step."""
    points: list[list[Any]] = []
    folder = run_dir / AT_STEPS_DIR
    for f in sorted(folder.glob("step_*/metrics.json")) if folder.is_dir() else []:
        m = _read(f, lambda p: json.loads(p.read_text()), errors)
        if isinstance(m, dict) and m.get("step") is not None:
            cost = m.get("evaluation_cpu_s")
            points.append([int(m["step"]), m.get("image_similarity"), m.get("text_similarity"), cost])
    return sorted(points)


def sweep_label(sweep_dir: str | Path) -> str:
    return str(Path(sweep_dir)).rstrip("/") or "."


def varied_keys(values: list[dict[str, Any]]) -> set[str]:
    """Configuration keys whose value differs between runs (a key missing in some runs counts as varied)."""
    keys = set().union(*values) if values else set()
    return {k for k in keys if len({json.dumps(v.get(k), sort_keys=True, default=str) for v in values}) > 1}


def load_runs(sweep_dirs: list[str | Path] | str | Path) -> pd.DataFrame:
    """Every run under one or more sweep folders (merged) -> DataFrame, FIRST_COLUMNS first.
    `run` is "<sweep>/<path inside the sweep>", unique across merged sweeps; `configuration` identifies what
    the run recorded without its seed and concept; `family` names it by what varied between the runs."""
    if isinstance(sweep_dirs, (str, Path)):
        sweep_dirs = [sweep_dirs]
    if not sweep_dirs:
        raise StoreError(
            "no sweep folder given: pass one or more folders, e.g. `python -m analysis multirun/...`"
        )
    rows = []
    for sd in sweep_dirs:
        label = sweep_label(sd)
        for run_dir in find_runs(sd):
            reason = skip_reason(run_dir)
            if reason is not None:
                print(f"analysis: skipped {reason}", file=sys.stderr)
                continue
            row = load_run(run_dir, label)
            rel = run_dir.relative_to(Path(sd)).as_posix()
            row["run"] = label if rel == "." else f"{label}/{rel}"
            rows.append(row)
    if not rows:
        raise StoreError(
            f"no run folder (a folder with config.yaml, status.json or metrics.json) under "
            f"{', '.join(map(str, sweep_dirs))}: is this the sweep folder Hydra wrote?"
        )
    values = [r.pop("_values") for r in rows]
    subsets = [r.pop("_subset") for r in rows]
    varied = varied_keys(values)
    for row, v, subset in zip(rows, values, subsets):
        row["family"] = family(v, varied, subset)
        row["lr_series"] = lr_series(v, varied, subset)
        row["configuration"] = json.dumps(v, sort_keys=True, default=str)
    df = pd.DataFrame(rows)
    # the configuration's recorded values (JSON) stay in configuration_values; `configuration` is its name
    df["configuration_values"] = df["configuration"]
    first = first_columns()
    for col in first:
        if col not in df.columns:
            df[col] = None
    recorded = [m.name for m in evaluation_metrics() if m.name in df.columns]
    for col in (
        *recorded,
        "final_dist_l2",
        "final_dist_cos",
        "wall_time_s",
        "effective_lr",
        "n_images",
        "seed",
        "loss_tail_mean",
    ):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    names: dict[str, str] = {}
    seen: dict[str, int] = {}
    for fam, cfg in sorted(
        set(zip(df["family"], df["configuration_values"])), key=lambda f: natural_key(f[0])
    ):
        seen[fam] = seen.get(fam, 0) + 1  # two configurations with one label (rounding): numbered
        names[cfg] = fam if seen[fam] == 1 else f"{fam} #{seen[fam]}"
    df["configuration"] = df["configuration_values"].map(names)
    rest = sorted(c for c in df.columns if c not in first)
    order = sorted(range(len(df)), key=lambda i: (df["sweep"].iloc[i], natural_key(df["run"].iloc[i])))
    return df.iloc[order][first + rest].reset_index(drop=True)


def completed(df: pd.DataFrame, metrics: tuple[str, ...] | list[str] = DEFAULT_OBJECTIVES) -> pd.DataFrame:
    """Runs that can be placed on a plane of `metrics` (default: the tradeoff plane): completed, each of
    them finite."""
    ok = df["status"] == "completed"
    for name in metrics:
        ok &= pd.to_numeric(df[name], errors="coerce").notna() if name in df else False
    return df[ok]


def history(run_dir: str | Path) -> pd.DataFrame | None:
    """history.csv of one run, or None when missing/unreadable."""
    return _read(Path(run_dir) / "history.csv", pd.read_csv, [])
