"""`python -m analysis SWEEP_DIR... [--out DIR] [--wandb] [--max-grids N] [--hv-reference IMAGE,TEXT]
[--colour-by KEY] [--run-curves]`"""

from __future__ import annotations

import argparse
import sys

from analysis.load import StoreError
from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES, evaluation_metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis",
        description=(
            "Turn sweep folders (run folders with config.yaml, metrics.json, ...) into runs.csv, the tradeoff "
            "and diagnostic plots (PNG + SVG) and report.html beside them."
        ),
    )
    p.add_argument("sweeps", nargs="+", metavar="SWEEP_DIR", help="sweep folder(s); several are merged")
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default: SWEEP_DIR/analysis, or ./analysis-merged for several sweeps)",
    )
    p.add_argument(
        "--wandb",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log the table and "
        "plots to the sweep's W&B summary run (default: when the sweep's runs had tracking on; "
        "--wandb forces it, offline if tracking was off; --no-wandb never)",
    )
    p.add_argument("--max-grids", type=int, default=None, help="embed at most N sample grids per run")
    p.add_argument(
        "--axes",
        nargs=2,
        metavar=("X", "Y"),
        default=list(DEFAULT_OBJECTIVES),
        help="the tradeoff plot's two metrics, by registered name (default: %(default)s; registered: "
        + ", ".join(m.name for m in evaluation_metrics())
        + ")",
    )
    p.add_argument(
        "--hv-reference",
        type=_point,
        default=None,
        metavar="IMAGE,TEXT",
        help="the hypervolume's reference point, fixed before any run (default: the worse value of each "
        "objective over the recorded reference points 'image only' and 'prompt only')",
    )
    p.add_argument(
        "--colour-by",
        default=None,
        metavar="KEY",
        help="colour the tradeoff plot's points by this configuration key (e.g. inversion.num_vectors; default: "
        "for a search, the effective learning rate when it varied, else the key that varied most)",
    )
    p.add_argument(
        "--run-curves",
        action="store_true",
        help="also draw each run's loss and distance curves as its own figure in report.html (curves.png always "
        "has every run's; at hundreds of runs the per-run figures are most of the analysis time)",
    )
    args = p.parse_args(argv)
    unknown = [a for a in args.axes if a not in {m.name for m in evaluation_metrics()}]
    if unknown:
        p.error(f"--axes: no metric {', '.join(unknown)} is registered")

    from analysis.analyse import analyse, default_out  # matplotlib import only after the arguments are valid

    try:
        res = analyse(
            args.sweeps,
            args.out,
            wandb=args.wandb,
            max_grids=args.max_grids,
            hv_reference=args.hv_reference,
            axes=tuple(args.axes),
            colour_by=args.colour_by,
            run_curves=args.run_curves,
        )
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output folder: unwritable, not a folder, a full disk
        out = args.out or default_out(args.sweeps)
        print(
            f"error: --out {out}: cannot write the analysis there ({e}); choose a writable --out",
            file=sys.stderr,
        )
        return 2
    df = res["runs"]
    counts = ", ".join(f"{v} {k}" for k, v in df["status"].value_counts().items())
    print(f"{len(df)} runs ({counts}) -> {res['out']}")
    for name in (
        "runs.csv",
        "configurations.csv",
        "findings.csv",
        "hypervolume.csv",
        "tradeoff.png",
        "report.html",
    ):
        print(f"  {res['files'][name]}")
    for _, row in df[df["status"] == "failed"].iterrows():
        print(f"  failed: {row['run']}: {row['error']}")
    if res["tracked"]:
        print(f"  W&B summary run: {res['out'] / 'wandb'}")
    print(findings_text(res["findings"], res["untested"]))
    return 0


def _point(text: str) -> tuple[float, float]:
    try:
        image, txt = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected IMAGE,TEXT (two numbers), got {text!r}") from None
    return image, txt


def findings_text(found, untested: list[str]) -> str:
    """The findings section as text: one line per claim and objective."""
    lines = ["Findings (effect [95% interval], n, verdict; report.html has the table):"]
    for _, r in found.iterrows():
        ci = "" if r["ci_low"] != r["ci_low"] else f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        effect = "" if r["effect"] != r["effect"] else f"{r['effect']:+.3f}{ci}, n={int(r['n'])}: "
        paper = f"paper {r['paper']}; " if isinstance(r["paper"], str) and r["paper"] else ""
        lines.append(
            f"  {r['claim']} ({r['source']}), {r['objective']}, {r['comparison']}: {paper}{effect}{r['verdict']}"
        )
    if not len(found):
        lines.append("  none: no claim of the paper can be tested from these runs")
    if untested:
        lines.append(f"  not testable from these runs: {', '.join(untested)}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
