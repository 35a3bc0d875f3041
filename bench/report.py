"""The benchmark's table, targets, BENCHMARKS.md and benchmarks/latest.json (both written atomically)."""

from __future__ import annotations

import json
import platform
import re
from datetime import datetime, timezone

import torch

from bench import harness
from bench.run import PAPER_TRIAL
from sweeper.evaluation.metrics import DEFAULT_OBJECTIVES
from sweeper.store import atomic


def _f(x, fmt=".3g") -> str:
    return "-" if x is None else format(x, fmt)


def rows(results: dict) -> list[tuple[str, str, str]]:
    """(what, figure, value) for every figure the run measured."""
    out = []
    sx = results.get("sdxl_memory")
    if sx:
        label = f"SDXL trial ({sx['shapes']}, {sx['resolution']} px, batch 1, {sx['precision']})"
        out += [
            (label, "latent-cache build peak GiB", f"{sx['latent_cache_peak_gib']:.2f}"),
            (label, "training-step peak GiB", f"{sx['step_peak_gib']:.2f}"),
            (label, "s/step", _f(sx["step_s"])),
        ]
        if "checkpointed_step_peak_gib" in sx:
            out += [
                (label, "step peak GiB, gradient checkpointing", f"{sx['checkpointed_step_peak_gib']:.2f}"),
                (label, "s/step, gradient checkpointing", _f(sx["checkpointed_step_s"])),
            ]
    tr = results.get("trainer")
    if tr:
        for side in ("reference", "trainer"):
            r = tr[side]
            name = (
                "re-implemented diffusers-example loop (bench/reference.py)" if side == "reference" else side
            )
            label = f"{name} (batch {r['batch']}, {r['precision']})"
            out += [
                (label, "image-passes/s", _f(r["image_passes_per_s"])),
                (label, "s/step", _f(r["step_s"])),
                (label, "achieved TFLOP/s", _f(r["achieved_tflops"])),
                (label, "peak memory GiB (excess over start)", f"{r['peak_gib']:.2f} ({r['delta_gib']:.2f})"),
            ]
            if "utilisation" in r:
                out.append((label, "utilisation of peak", f"{100 * r['utilisation']:.1f}%"))
        out.append(
            (
                "trainer / re-implemented example loop",
                "speedup (image-passes/s ratio)",
                f"{tr['speedup']:.2f}x",
            )
        )
        out.append(REAL_EXAMPLE_ROW)
        if "trainer+channels_last" in tr:
            out.append(
                (
                    "trainer + channels_last UNet (candidate) / reference",
                    "speedup",
                    f"{tr['trainer+channels_last']['speedup_over_reference']:.2f}x",
                )
            )
        if "trainer+compile" in tr:
            cc = tr["trainer+compile"]
            out += [
                (
                    "trainer, inversion.compile=true / reference",
                    "speedup",
                    f"{cc['speedup_over_reference']:.2f}x",
                ),
                ("trainer, inversion.compile=true", "compile time s (first 2 steps)", _f(cc["compile_s"])),
            ]
        big = tr.get("trainer_big_batch")
        if big:
            label = f"trainer (batch {big['batch']})"
            out += [
                (label, "image-passes/s", _f(big["image_passes_per_s"])),
                (label, "achieved TFLOP/s", _f(big["achieved_tflops"])),
                (
                    label,
                    "utilisation of peak",
                    "-" if big["utilisation"] is None else f"{100 * big['utilisation']:.1f}%",
                ),
                (label, "peak memory GiB", f"{big['peak_gib']:.2f}"),
            ]
    for name, r in (results.get("techniques") or {}).items():
        if name != "reference":
            out.append((f"technique: {name}", "speedup over reference", f"{r['speedup']:.2f}x"))
    sa = results.get("sampling")
    if sa:
        out += [
            (
                "evaluation=paper",
                f"s ({sa['prompts']} prompts x {sa['paper_samples']} samples)",
                _f(sa["paper_s"]),
            ),
            (
                "evaluation=fast",
                f"s ({sa['prompts']} prompts x {sa['fast_samples']} samples)",
                _f(sa["fast_s"]),
            ),
            ("paper / fast", "time ratio", f"{sa['time_ratio']:.2f}x"),
        ]
        for key in DEFAULT_OBJECTIVES:
            m = sa[key]
            out.append(("fast - paper", key, f"{m['diff']:+.4f} ({m['fast']:.4f} vs {m['paper']:.4f})"))
        st = sa.get("techniques")
        for name, c in (st or {}).get("cases", {}).items():
            label = f"sampling: {name} ({st['images']} images, {st['steps']} steps)"
            value = f"{c['images_per_s']:.3g}" + (
                ""
                if c["baseline"] is None
                else f" ('{c['baseline']}' is {c['technique_speedup']:.2f}x this; max pixel diff "
                f"{c['max_pixel_difference']:.0f})"
            )
            out.append((label, "images/s", value))
    ve = results.get("vectorised")
    if ve:
        label = f"{ve['trials']} trials (batch {ve['batch_per_trial']} each)"
        out += [
            (label, "trials/hour sequential (5000-step training)", _f(ve["trials_per_hour_sequential"])),
            (label, "trials/hour vectorised (5000-step training)", _f(ve["trials_per_hour_vectorised"])),
            (label, "vectorised / sequential", f"{ve['speedup']:.2f}x"),
            (label, "vectorised peak memory GiB (excess)", f"{ve['peak_gib']:.2f} ({ve['delta_gib']:.2f})"),
        ]
    return out


# Measured once beside this project's trainer (issue 18), not re-run by `make bench`: the real script needs
# accelerate and a diffusers checkout, and a process per run.
REAL_EXAMPLE_ROW = (
    "trainer / REAL diffusers example script (examples/textual_inversion/textual_inversion.py)",
    "speedup at world scale (32 px, batch 4, fp32, 1 thread, same concept and effective LR, "
    "8 interleaved pairs; measured for issue 18, not re-run here)",
    "1.14x per step (range 1.00-1.21); 1.17x per whole process; equal quality within intervals",
)


def paper_trial_estimate(results: dict) -> float | None:
    """Seconds for the issue's paper-protocol trial: 5000 steps at batch 4 + 64 samples x (1 + 8) prompts."""
    tr, sa = results.get("trainer"), results.get("sampling")
    if not tr or not sa or tr["trainer"]["batch"] != PAPER_TRIAL["batch_size"]:
        return None
    return (
        PAPER_TRIAL["steps"] * tr["trainer"]["step_s"]
        + (1 + PAPER_TRIAL["prompts"]) * sa["paper_s_per_prompt_at_64"]
    )


HEADLINE = (
    "HEADLINE: sweep throughput >= 3x (early stop + adaptive evaluation), both objectives within +-0.02 paired "
    "(world, bench/sweep_cost.py)"
)
VERDICT = {True: "met", False: "MISSED", None: "n/a"}


def headline_target(sweep_cost: dict | None) -> dict:
    """The headline target's row from bench.sweep_cost's result (its raw file), or "not measured"."""
    sweep = (sweep_cost or {}).get("summary")
    if not sweep:
        return {"target": HEADLINE, "value": "not measured (python -m bench.sweep_cost)", "met": None}
    value = (
        f"{sweep['speedup']:.2f}x; paired interval bound {sweep['max_objective_delta_ci_bound']:.3f} "
        f"({sweep['pairs']} pairs, size {sweep_cost['settings']['size']})"
    )
    return {"target": HEADLINE, "value": value, "met": bool(sweep["met"])}


def target_row(t: dict) -> str:
    return f"| {t['target']} | {t['value']} | {VERDICT[t['met']]} |"


def targets(args, results: dict, sweep_cost: dict | None = None) -> list[dict]:
    cuda = args.device.type == "cuda"
    out = []
    tr = results.get("trainer")
    out.append(headline_target(sweep_cost))
    if tr and not cuda:
        out.append(
            {
                "target": "trainer >= 2x re-implemented example loop (CPU): RETIRED, bounded at "
                f"{tr['reference']['flops_per_step'] / tr['trainer']['flops_per_step']:.2f}x by FLOPs",
                "value": f"{tr['speedup']:.2f}x",
                "met": None,
            }
        )
    if tr and cuda:
        goal = 3.0
        out.append(
            {
                "target": f"trainer >= {goal:g}x re-implemented example loop (GPU)",
                "value": f"{tr['speedup']:.2f}x",
                "met": tr["speedup"] >= goal,
            }
        )
        if "trainer+compile" in tr:
            cc = tr["trainer+compile"]
            out.append(
                {
                    "target": f"trainer with inversion.compile=true >= {goal:g}x reference",
                    "value": f"{cc['speedup_over_reference']:.2f}x (after {cc['compile_s']:.0f} s of compiling)",
                    "met": cc["speedup_over_reference"] >= goal,
                }
            )
    big = (tr or {}).get("trainer_big_batch")
    if cuda and big and big["utilisation"] is not None:
        out.append(
            {
                "target": ">= 45% of 800 TFLOP/s, training step at batch >= 16 (H100)",
                "value": f"{100 * big['utilisation']:.1f}% at batch {big['batch']}",
                "met": big["utilisation"] >= 0.45,
            }
        )
    else:
        out.append(
            {
                "target": ">= 45% of 800 TFLOP/s, training step at batch >= 16 (H100)",
                "value": "not measurable on this device",
                "met": None,
            }
        )
    est = paper_trial_estimate(results)
    out.append(
        {
            "target": "paper-protocol trial <= 4 min on one H100",
            "value": "-" if est is None else f"{est:.0f} s estimated at these shapes",
            "met": (est <= 240) if cuda and est is not None and args.profile == "sd15" else None,
        }
    )
    sx = results.get("sdxl_memory")
    if sx and sx["shapes"] == "sdxl":
        best = min(sx["step_peak_gib"], sx.get("checkpointed_step_peak_gib", float("inf")))
        value = f"step {best:.1f} GiB, latent cache {sx['latent_cache_peak_gib']:.1f} GiB"
    else:
        value = "needs CUDA and the full SDXL shapes" + (
            f" (sdxl-mini here: {sx['step_peak_gib']:.2f} GiB)" if sx else ""
        )
    out.append(
        {
            "target": "SDXL 1024 px trial fits in 24 GB",
            "value": value,
            "met": sx.get("fits_24gb") if sx and sx["shapes"] == "sdxl" else None,
        }
    )
    return out


def why_missed(results: dict) -> str:
    """The reason a missed trainer target is missed, from this run's own FLOP counts and times."""
    tr = results.get("trainer")
    if not tr:
        return ""
    ref, ours = tr["reference"], tr["trainer"]
    ceiling = ref["flops_per_step"] / ours["flops_per_step"]
    return f"""
### Why the trainer's ratio over the re-implemented loop is what it is

Per step the reference does {ref["flops_per_step"] / 1e9:.3g} GFLOP and the trainer {ours["flops_per_step"] / 1e9:.3g}
(the VAE encode is what the latent cache removes), so removing waste alone can give at most {ceiling:.2f}x when
both sides run at the same FLOP rate. Measured: {tr["speedup"]:.2f}x, because what remains (text encoder and
UNet forward + backward) runs at {ours["achieved_tflops"] * 1e3:.3g} GFLOP/s against the reference's
{ref["achieved_tflops"] * 1e3:.3g} (the VAE's large convolutions are the most efficient work on a CPU).
Going further means making the UNet pass itself faster (bf16 on hardware with bf16 units, torch.compile,
channels_last where it pays), not removing more work. At SD 1.5 shapes on a GPU the VAE is ~45% of the
reference's compute and bf16 against fp32 multiplies the rest (DESIGN.md, "Cost model").
"""


def markdown(args, results: dict, device: str, date: str, tgts: list[dict]) -> str:
    table = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows(results))
    tgt = "\n".join(target_row(t) for t in tgts)
    return f"""# Benchmarks

Generated by `make bench` (`python -m bench`, `python -m bench.phase_memory`, then `python -m bench.sweep_cost`);
the same figures are in `benchmarks/latest.json`. **Headline: sweep throughput** (trials/hour with early stopping and adaptive
evaluation against fixed budgets, section "Sweep throughput on the world" below). The per-step table compares
the trainer with the project's own RE-IMPLEMENTATION of the diffusers example loop (bench/reference.py); against
the real diffusers example script the trainer measured 1.14x per step (row below).

- device: {device}
- date: {date}
- torch {torch.__version__}, python {platform.python_version()}
- shapes: `{args.profile}` (bench/shapes.py; random weights: speed does not depend on weight values),
  trainer precision {args.precision}, reference fp32, batch {args.batch}, {args.steps} steps per timed call,
  {args.repeats} interleaved repeats

How to read it: the two sides of every comparison run interleaved (A, B, A, B, ...) after a warm-up and
each side's median is reported. This machine is shared (other jobs load the CPU while it measures), so
absolute times move between runs; the ratios, measured under the same load, are the figures to trust.
CPU peak memory is process RSS sampled every 2 ms (approximate); CUDA peak memory is
torch.cuda.max_memory_allocated, resident weights included. FLOPs are counted by
torch.utils.flop_counter on one step. Sampling metrics come from a random-weight model judged by a random
tiny CLIP: their fast-minus-paper difference shows protocol noise at these sample counts, not real-model quality.

| what | figure | value |
|---|---|---|
{table}

## Targets

| target | this run | verdict |
|---|---|---|
{tgt}
{why_missed(results)}
{NOTES}
"""


NOTES = """## Notes

- Reference = the project's re-implementation of diffusers' examples/textual_inversion loop (bench/reference.py),
  not the example script itself: image files decoded, resized and
  flipped with PIL in the training process every step (the example's default --dataloader_num_workers=0; the
  bench's images are stored at the training resolution, the cheapest case for it), VAE encode every step, fp32,
  AdamW over the whole embedding matrix with rows restored, prompt tokenised per example.
- Trainer = sweeper.training.inversion.Trainer, built on the same components so the comparison times steps, not loading.
- Against the REAL diffusers example script (examples/textual_inversion/textual_inversion.py run as a process)
  at the world's scale (32 px, batch 4, fp32, one thread, the same concept and effective LR, 8 interleaved
  pairs): the project trained 1.14x faster per step (range 1.00-1.21) and 1.17x per whole process, with equal
  quality within intervals (measurement reported in issue 18; not re-run by `make bench`). At that scale the VAE
  costs little, so the latent cache buys little; the re-implemented loop's 1.6x is at the bench's `mini` shapes.
- The CPU target "trainer >= 2x the re-implemented loop" is retired: removing waste alone is bounded by the
  FLOP ratio (2.14x at the `mini` shapes), and the trainer is not where a sweep's time goes. The headline is
  sweep throughput: early stopping and adaptive evaluation (bench/sweep_cost.py).
- Techniques (bench/techniques.py), each switched on alone over an in-memory-pixels reference:
  - kept in the project's trainer: cached latents; only the placeholder rows as parameters ("sparse_rows");
    autocast in the configured precision (bf16 on GPUs; fp32 on CPUs, where bf16 autocast measures slower);
    PyTorch SDPA attention (diffusers' default; "math_attention" is the pre-2.0 path, for comparison).
  - an option of the trainer on CUDA: torch.compile of the UNet (`inversion.compile=true`, timed on the real
    trainer by `--compile`, the default on CUDA); it pays on long runs only. Refused on a CPU: there inductor's
    backward was measured wrong (torch 2.13, tiny UNet: the gradient with respect to the text context off by up
    to a third of its largest entry against eager and float64, while aot_eager is exact), so the CPU
    "technique: compile" row, when asked for, times a computation the trainer does not use.
  - measured, left to the owners: channels_last (also timed on the real trainer as a candidate row).
  - sampling (sweeper/evaluation/sampling.py; bench/sampling_techniques.py times each switched off alone, the "sampling:"
    rows, at evaluation=fast's steps and batch with DDIM): guidance as one [uncond; cond] batch, the
    unconditional and each prompt's embedding computed once per prompt, not per batch ("text encoder only
    where tokens changed"), batches of 16; diffusers' own `pipe()` is timed beside them. "max pixel diff" is
    the largest difference from our samples (0-255): switching a technique off changes the speed only.
    In training every prompt carries the learned token, so the text encoder must run every step.
- Vectorised = sweeper.training.inversion.TrainerGroup: N trials share one UNet call per step; each trial's
  result equals running it alone (tests/test_vectorised.py). Trials/hour count training only.
- SDXL memory runs first, alone on the device. On a CPU it runs cut-down SDXL shapes (sdxl-mini) to exercise
  the path; the 24 GB claim needs CUDA and the full shapes.
- On a CPU the targets written for GPUs are n/a; the paper-trial estimate there is at the CPU shapes.
"""


BLOCK = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->\n?", re.S)


def kept_blocks(path) -> str:
    """The sections other benchmarks write into BENCHMARKS.md between their own markers (bench.scale,
    bench.phase_memory, bench.sweep_cost): kept as they are when this report is rewritten."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    return "".join(m.group(0).rstrip("\n") + "\n\n" for m in BLOCK.finditer(text))


def write(args, results: dict, date: str | None = None, device: str | None = None) -> dict:
    device = device or harness.device_name(args.device)
    date = date or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        previous = json.loads(args.json.read_text())
    except (OSError, ValueError):
        previous = {}
    kept = {k: v for k, v in previous.items() if k.startswith("sweep_cost")}  # bench.sweep_cost's keys
    tgts = targets(args, results, kept.get("sweep_cost"))
    tr, ve = results.get("trainer") or {}, results.get("vectorised") or {}
    summary = {
        "device": device,
        "date": date,
        "profile": args.profile,
        "precision": args.precision,
        "trainer_speedup": tr.get("speedup"),
        "trial_vectorised_speedup": ve.get("speedup"),
        "peak_memory_gib": (tr.get("trainer") or {}).get("own_peak_gib"),
        "sampling_time_ratio": (results.get("sampling") or {}).get("time_ratio"),
        "paper_trial_estimate_s": paper_trial_estimate(results),
        "targets": tgts,
        "settings": {
            k: (str(v) if k == "device" else v)
            for k, v in vars(args).items()
            if k not in ("out", "json", "render")
        },
        "results": results,
        **kept,
    }
    print(f"\nbenchmarks on {device}\n")
    width = max((len(a) for a, _, _ in rows(results)), default=10)
    for a, b, c in rows(results):
        print(f"  {a:<{width}}  {b:<45} {c}")
    for t in tgts:
        print(
            f"  target: {t['target']}: {t['value']} -> {({True: 'met', False: 'MISSED', None: 'n/a'})[t['met']]}"
        )
    blocks = kept_blocks(args.out)
    text = markdown(args, results, device, date, tgts).rstrip("\n") + "\n"
    atomic.write_text(args.out, text + ("\n" + blocks.rstrip("\n") + "\n" if blocks else ""))
    atomic.write_json(args.json, summary)
    print(f"\nwrote {args.out} and {args.json}")
    return summary
