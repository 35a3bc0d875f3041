"""Cheap first, then confirm: `python -m sweeper.confirm SWEEP_DIR [--epsilon E] [--seeds 0,1] [override ...]`.

A search run at a cheap budget (fewer steps, the quick protocol, a pruner) finds where the front is; this reruns
its configurations near the front at the full budget and records them as confirmed:

1. From the search's Optuna study (SWEEP_DIR/optuna.db, or --storage/--study), the completed trials'
   objectives, averaged over trials with the same parameters (configuration means).
2. The configurations within `epsilon` of the front: those no other configuration beats by more than
   `epsilon` on every objective (an epsilon-non-dominated set; epsilon = 0 keeps the front itself). A margin
   keeps configurations the cheap budget's noise or bias may have put just behind the front.
3. Each reruns from its trial's recorded overrides (config.yaml `derived.overrides`, without the search preset
   and Hydra's own keys) plus the given overrides (the full budget, e.g. `inversion.steps=5000
   evaluation=paper`), once per seed in `--seeds` (inversion.seed), in SWEEP_DIR/confirmed/trial_<N>_seed<S>/,
   a run folder like any other, with `confirmed.json` ({"source_trial", "source_values", "epsilon",
   "overrides"}). A rerun of the command skips folders already completed and resumes interrupted ones.

Analysis (`python -m analysis SWEEP_DIR`) marks these runs `confirmed` and reports the front's hypervolume over
them alone (`hypervolume_confirmed` in hypervolume.csv): the final front and its hypervolume come from them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sweeper import search

log = logging.getLogger(__name__)

CONFIRMED_DIR = "confirmed"
CONFIRMED_FILE = "confirmed.json"
_NOT_REPLAYED = ("hydra.", "+hydra.", "++hydra.", "search=", "run_dir=")


def epsilon_front(values: np.ndarray, epsilon: float) -> np.ndarray:
    """Indices of the rows (configurations, objectives maximised) that no other row beats by more than epsilon
    on every objective."""
    v = np.asarray(values, dtype=float)
    keep = []
    for i, p in enumerate(v):
        if not np.all(np.isfinite(p)):
            continue
        shifted = p + epsilon  # epsilon-dominance: epsilon = 0 is Pareto dominance
        if not np.any(np.all(v >= shifted, axis=1) & np.any(v > shifted, axis=1)):
            keep.append(i)
    return np.array(keep, dtype=int)


def candidates(study: Any, epsilon: float) -> list[dict]:
    """The study's configurations within epsilon of the front: [{"trial", "params", "values"}], one per
    configuration (its first completed trial), values = the means over its completed trials."""
    import optuna

    signs = np.array([1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions])
    groups: dict[str, list[Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        groups.setdefault(json.dumps(t.params, sort_keys=True, default=str), []).append(t)
    if not groups:
        return []
    firsts = [min(g, key=lambda t: t.number) for g in groups.values()]
    means = np.array([np.mean([t.values for t in g], axis=0) for g in groups.values()], dtype=float)
    return [
        {"trial": firsts[i].number, "params": firsts[i].params, "values": [float(x) for x in means[i]]}
        for i in epsilon_front(means * signs, epsilon)
    ]


def replay_overrides(run_dir: Path) -> list[str]:
    """A trial's own overrides from its run folder, without the search preset and Hydra's keys."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    recorded = (cfg.get("derived") or {}).get("overrides") or []
    return [str(o) for o in recorded if not str(o).startswith(_NOT_REPLAYED)]


def confirm(
    sweep_dir: Path,
    overrides: list[str],
    *,
    epsilon: float = 0.0,
    seeds: list[int] | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    dry_run: bool = False,
) -> list[dict]:
    """Rerun the study's epsilon-front configurations with `overrides` (module doc); returns one record per run."""
    import optuna

    from sweeper.config.compose import compose
    from sweeper.trial import run_trial

    sweep_dir = Path(sweep_dir)
    if storage is None and not (sweep_dir / "optuna.db").is_file():
        raise FileNotFoundError(
            f"{sweep_dir}: no optuna.db: pass the search's sweep folder (or --storage URL)"
        )
    store = search.make_storage(storage, sweep_dir)
    if study_name is None:  # the storage's only study, else the one named after the folder (as the sweeper)
        names = optuna.get_all_study_names(store)
        study_name = names[0] if len(names) == 1 else sweep_dir.name
    study = optuna.load_study(study_name=study_name, storage=store)
    records = []
    for cand in candidates(study, epsilon):
        source = sweep_dir / f"trial_{cand['trial']:04d}"
        for seed in seeds if seeds is not None else [None]:
            name = f"trial_{cand['trial']:04d}" + ("" if seed is None else f"_seed{seed}")
            run_dir = sweep_dir / CONFIRMED_DIR / name
            replay = replay_overrides(source) + list(overrides)
            replay += [] if seed is None else [f"inversion.seed={seed}"]
            record = {
                "source_trial": cand["trial"],
                "source_values": cand["values"],
                "epsilon": epsilon,
                "overrides": replay,
                "run_dir": str(run_dir),
            }
            records.append(record)
            if dry_run or _completed(run_dir):
                continue
            from sweeper.store.atomic import write_json

            cfg = compose(replay)
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json(run_dir / CONFIRMED_FILE, {k: v for k, v in record.items() if k != "run_dir"})
            label = f"trial {cand['trial']}" + ("" if seed is None else f" seed {seed}")
            try:
                scores = run_trial(cfg, run_dir)
            except Exception as e:  # noqa: BLE001 - recorded in its status.json; the others still run
                print(
                    f"[confirm] {label} failed: {type(e).__name__}: {e} ({run_dir})",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            print(
                f"[confirmed] {label}: image_similarity={scores[0]:.4f} text_similarity={scores[1]:.4f} ({run_dir})",
                flush=True,
            )
    return records


def _completed(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "status.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m sweeper.confirm",
        description="Rerun a search's configurations within epsilon of its front at the full budget "
        "(the given overrides), recorded as confirmed in SWEEP_DIR/confirmed/.",
    )
    p.add_argument(
        "sweep", type=Path, metavar="SWEEP_DIR", help="the search's sweep folder (holds optuna.db)"
    )
    p.add_argument("overrides", nargs="*", help="the full budget, e.g. inversion.steps=5000 evaluation=paper")
    p.add_argument(
        "--epsilon", type=float, default=0.0, help="margin on every objective (default 0: the front)"
    )
    p.add_argument(
        "--seeds", default=None, help="comma-separated inversion.seed values (default: the trial's)"
    )
    p.add_argument("--storage", default=None, help="the study's storage URL (default: SWEEP_DIR/optuna.db)")
    p.add_argument("--study", default=None, help="the study's name (default: the storage's only study)")
    p.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    args = p.parse_args(argv)
    if args.epsilon < 0:
        p.error("--epsilon must be >= 0")
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        p.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    from sweeper.console import quiet_libraries

    quiet_libraries()
    try:
        records = confirm(
            args.sweep,
            list(args.overrides),
            epsilon=args.epsilon,
            seeds=seeds,
            storage=args.storage,
            study_name=args.study,
            dry_run=args.dry_run,
        )
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{len(records)} confirmation run(s) of {len({r['source_trial'] for r in records})} configuration(s) "
        f"within epsilon={args.epsilon} of the front -> {args.sweep / CONFIRMED_DIR}"
    )
    for r in records if args.dry_run else []:
        print(f"  trial {r['source_trial']} {r['source_values']}: {' '.join(r['overrides'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
