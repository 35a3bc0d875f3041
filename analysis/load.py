"""Run folders -> one pandas DataFrame (one row per run). Reads only the results store.

A run folder is a folder holding `config.yaml` (see ARCHITECTURE.md). Every other file is optional:
a running trial has no metrics.json yet, a failed one has status.json with its error, a folder copied
half-way from another machine may lack history.csv. Nothing here fails on a missing file; a file
that exists but cannot be parsed is reported in the `load_error` column.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

# Folders inside a run that never hold a run of their own (Hydra's copy, checkpoints, W&B, temp dirs).
_SKIP_DIRS = {"checkpoints", "pivotal", "wandb", "samples", "__pycache__"}

# The default configuration ("ours" in the paper's Fig. 10a). Overridden by the project's conf/ when
# it is there, so a changed default changes what counts as "ours".
FAMILY_DEFAULTS: dict[str, Any] = {
    "inversion.lr": 5e-3,
    "inversion.num_vectors": 1,
    "inversion.progressive_every": None,
    "inversion.per_image_tokens": False,
    "inversion.reg_weight": 0.0,
    "inversion.pivotal.enabled": False,
    "data.n_images": None,
}

FIRST_COLUMNS = [
    "run",
    "sweep",
    "concept",
    "family",
    "status",
    "error",
    "image_similarity",
    "text_similarity",
    "image_similarity_ci_low",
    "image_similarity_ci_high",
    "text_similarity_ci_low",
    "text_similarity_ci_high",
    "final_dist_l2",
    "final_dist_cos",
    "final_loss",
    "last_step",
    "wall_time_s",
    "trial_number",
    "started_at",
    "finished_at",
    "load_error",
    "run_dir",
]


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


def _project_defaults() -> dict[str, Any]:
    defaults = dict(FAMILY_DEFAULTS)
    # the configs ship inside the sweeper package (in the wheel too; in the repository, a symlink to conf/)
    conf = Path(__file__).resolve().parents[1] / "sweeper" / "conf"
    for group, name in (("inversion", "default"), ("data", "object")):
        f = conf / group / f"{name}.yaml"
        try:
            values = flatten(yaml.safe_load(f.read_text()) or {}, group + ".")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        defaults.update({k: values[k] for k in defaults if k in values})
    return defaults


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


def family(cfg: dict[str, Any], defaults: dict[str, Any] | None = None, level: int = 0) -> str:
    """Configuration family from a flattened config: what differs from the default, e.g. "lr=2e-2",
    "3 vectors", "per-image tokens", "reg=0.01", "pivotal", "n=5 images"; "ours" for the default.

    Coarser levels keep a search's plot readable when every trial has its own learning rate:
    level 1 rounds lr to its decade ("lr~1e-3") and says "reg" without its weight; level 2 keeps only
    the structural choices (vectors, progressive, per-image tokens, reg, pivotal)."""
    d = _project_defaults() if defaults is None else defaults
    parts = []
    lr = _val(cfg, "inversion.lr")
    if lr is not None and not _same(lr, d["inversion.lr"]) and level < 2:
        parts.append(f"lr={_fmt_num(lr, sci=True)}" if level == 0 else f"lr~1e{round(math.log10(float(lr)))}")
    k = _val(cfg, "inversion.num_vectors")
    if k is not None and not _same(k, d["inversion.num_vectors"]):
        parts.append(f"{int(k)} vector" + ("s" if int(k) != 1 else ""))
    prog = _val(cfg, "inversion.progressive_every")
    if prog not in (None, 0) and not _same(prog, d["inversion.progressive_every"]):
        parts.append("progressive")
    if _true(_val(cfg, "inversion.per_image_tokens")) and not d["inversion.per_image_tokens"]:
        parts.append("per-image tokens")
    reg = _val(cfg, "inversion.reg_weight")
    if reg is not None and not _same(reg, d["inversion.reg_weight"]):
        parts.append(f"reg={_fmt_num(reg)}" if level == 0 else "reg")
    if _true(_val(cfg, "inversion.pivotal.enabled")) and not d["inversion.pivotal.enabled"]:
        parts.append("pivotal")
    n = _val(cfg, "data.n_images")
    if n is not None and not _same(n, d["data.n_images"]) and level < 2:
        parts.append(f"n={int(n)} image" + ("s" if int(n) != 1 else ""))
    if not parts and level == 2:  # lr and dataset size were dropped: this is not "ours" any more
        kd = int(k if k is not None else d["inversion.num_vectors"])
        return f"{kd} vector" + ("s" if kd != 1 else "")
    return ", ".join(parts) or "ours"


def plot_families(
    df: pd.DataFrame, max_families: int = 10, defaults: dict[str, Any] | None = None
) -> pd.Series:
    """One family per row for colours/markers: the finest level with at most `max_families` families."""
    d = _project_defaults() if defaults is None else defaults
    rows = df.to_dict("records")
    fams = df["family"]
    for level in (0, 1, 2):
        fams = pd.Series([family(r, d, level) for r in rows], index=df.index)
        if fams.nunique() <= max_families:
            break
    return fams


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Every run folder under `sweep_dir`, sorted: a folder with its own config.yaml, or (a run recorded by
    something else than sweeper.record) with status.json or metrics.json; its config is then Hydra's
    .hydra/config.yaml."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise StoreError(
            f"sweep folder {root} does not exist or is not a folder: pass the folder Hydra "
            f"wrote (hydra.sweep.dir, e.g. multirun/<date>/<time>) or a single run folder"
        )
    found = set()
    for name in ("config.yaml", "status.json", "metrics.json"):
        for f in root.rglob(name):
            rel = f.parent.relative_to(root).parts
            if not any(p.startswith(".") or p in _SKIP_DIRS for p in rel):
                found.add(f.parent)
    found, cand = sorted(found), found
    runs = []
    for d in found:
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


def load_run(run_dir: str | Path, sweep: str = "", defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run folder -> one flat row (config keys dotted, metrics, status, final distances)."""
    run_dir = Path(run_dir)
    errors: list[str] = []
    cfg_file = run_dir / "config.yaml"
    if not cfg_file.exists() and (run_dir / ".hydra" / "config.yaml").exists():
        cfg_file = run_dir / ".hydra" / "config.yaml"
    cfg = _read(cfg_file, lambda p: yaml.safe_load(p.read_text()), errors) or {}
    status = _read(run_dir / "status.json", lambda p: json.loads(p.read_text()), errors) or {}
    metrics = _read(run_dir / "metrics.json", lambda p: json.loads(p.read_text()), errors)
    hist = _read(run_dir / "history.csv", pd.read_csv, errors)

    flat_cfg = flatten(cfg) if isinstance(cfg, dict) else {}
    # config keys that share a name with a column of ours keep a "config." prefix (config.yaml's run_dir
    # is where the run was written, possibly on another machine; ours is where it is read from now)
    row: dict[str, Any] = {(f"config.{k}" if k in FIRST_COLUMNS else k): v for k, v in flat_cfg.items()}
    if isinstance(metrics, dict):
        row.update(
            {
                (
                    f"metrics.{k}"
                    if k in FIRST_COLUMNS and not k.startswith(("image_sim", "text_sim"))
                    else k
                ): v
                for k, v in _metrics_columns(metrics).items()
            }
        )
    row.update({"run_dir": str(run_dir), "sweep": sweep})
    images = flat_cfg.get("data.images")
    row["concept"] = Path(str(images).rstrip("/")).name if images else "unknown"
    row["family"] = family(flat_cfg, defaults)
    st = status.get("status") if isinstance(status, dict) else None
    row["status"] = st or ("completed" if isinstance(metrics, dict) else "unknown")
    for key in ("error", "wall_time_s", "trial_number", "started_at", "finished_at"):
        row[key] = status.get(key) if isinstance(status, dict) else None
    if isinstance(hist, pd.DataFrame) and len(hist):
        last = hist.iloc[-1]
        for src, dst in (
            ("dist_l2_mean", "final_dist_l2"),
            ("dist_cos_mean", "final_dist_cos"),
            ("loss", "final_loss"),
            ("step", "last_step"),
        ):
            if src in hist.columns:
                row[dst] = last[src]
    row["load_error"] = "; ".join(errors) or None
    return row


def sweep_label(sweep_dir: str | Path) -> str:
    return str(Path(sweep_dir)).rstrip("/") or "."


def load_runs(
    sweep_dirs: list[str | Path] | str | Path, defaults: dict[str, Any] | None = None
) -> pd.DataFrame:
    """Every run under one or more sweep folders (merged) -> DataFrame, FIRST_COLUMNS first.
    `run` is "<sweep>/<path inside the sweep>", unique across merged sweeps."""
    if isinstance(sweep_dirs, (str, Path)):
        sweep_dirs = [sweep_dirs]
    if not sweep_dirs:
        raise StoreError(
            "no sweep folder given: pass one or more folders, e.g. `python -m analysis multirun/...`"
        )
    defaults = _project_defaults() if defaults is None else defaults
    rows = []
    for sd in sweep_dirs:
        label = sweep_label(sd)
        for run_dir in find_runs(sd):
            row = load_run(run_dir, label, defaults)
            rel = run_dir.relative_to(Path(sd)).as_posix()
            row["run"] = label if rel == "." else f"{label}/{rel}"
            rows.append(row)
    if not rows:
        raise StoreError(
            f"no run folder (a folder with config.yaml, status.json or metrics.json) under "
            f"{', '.join(map(str, sweep_dirs))}: is this the sweep folder Hydra wrote?"
        )
    df = pd.DataFrame(rows)
    for col in FIRST_COLUMNS:
        if col not in df.columns:
            df[col] = None
    for col in ("image_similarity", "text_similarity", "final_dist_l2", "final_dist_cos", "wall_time_s"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    rest = sorted(c for c in df.columns if c not in FIRST_COLUMNS)
    return df[FIRST_COLUMNS + rest].sort_values(["sweep", "run"], kind="stable").reset_index(drop=True)


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """Runs that can be placed on the tradeoff plane: completed with both objectives finite."""
    ok = (df["status"] == "completed") & df["image_similarity"].notna() & df["text_similarity"].notna()
    return df[ok]


def history(run_dir: str | Path) -> pd.DataFrame | None:
    """history.csv of one run, or None when missing/unreadable."""
    return _read(Path(run_dir) / "history.csv", pd.read_csv, [])
