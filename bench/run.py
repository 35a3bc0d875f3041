"""`make bench` = `python -m bench`: the project against the reference, on one device, in one run.

Sections (each a function returning rows for the table and figures for latest.json):
  trainer     reference loop (bench/reference.py) vs sweeper.training.inversion.Trainer, same components
  techniques  each technique alone over the reference (bench/techniques.py)
  sampling    evaluation=paper vs evaluation=fast on one learned embedding: time ratio, metric difference;
              each sampling technique switched off alone (bench/sampling_techniques.py)
  vectorised  N trials in one batched trainer (sweeper.training.inversion.TrainerGroup) vs the same N trials one by one
Defaults: CUDA -> SD 1.5 shapes, bf16, the real protocol sizes; CPU -> the `mini` shapes, fp32, and
the evaluation protocol cut to 16/8 samples per prompt (see bench/shapes.py).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import tempfile
from pathlib import Path

import torch

from bench import harness
from bench.shapes import PROFILES, build_components, concept_pixels

CONF = Path(__file__).resolve().parent.parent / "conf"
PAPER_TRIAL = {"steps": 5000, "batch_size": 4, "prompts": 8, "samples": 64}  # the trial to time


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return hydra_compose("config", overrides=overrides)


def own_text_side(comps):
    """The components with a private tokenizer and text encoder (trainers add tokens); UNet, VAE shared."""
    return dataclasses.replace(
        comps,
        tokenizers=[copy.deepcopy(t) for t in comps.tokenizers],
        text_encoders=[copy.deepcopy(e) for e in comps.text_encoders],
    )


def write_images(folder: Path, n: int, resolution: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = ((concept_pixels(n, resolution) + 1) * 127.5).round().clamp(0, 255).byte()
    paths = []
    for i, x in enumerate(pixels):
        paths.append(folder / f"img_{i:02d}.png")
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def trainer_cfg(args, images: Path, extra: list[str] = ()):
    return compose(
        [
            f"data.images={images}",
            "inversion.init_word=toy",
            f"inversion.batch_size={args.batch}",
            "inversion.grad_accum=1",
            f"inversion.precision={args.precision}",
            "tracking=none",
            *extra,
        ]
    )


# ------------------------------------------------------------------------------------------ sections
def bench_trainer(args, ctx) -> dict:
    from bench.reference import ReferenceLoop
    from sweeper.training.inversion import Trainer

    ref = ReferenceLoop(ctx["comps_fp32"], ctx["paths"], batch_size=args.batch)  # decodes files every step
    trainer = Trainer(trainer_cfg(args, ctx["images"]), own_text_side(ctx["comps"]), ctx["paths"])
    ctx["trainer"] = trainer
    # A candidate for the trainer, measured beside it: its UNet in channels_last (a private copy).
    nhwc = dataclasses.replace(own_text_side(ctx["comps"]), unet=copy.deepcopy(ctx["comps"].unet))
    nhwc.unet.to(memory_format=torch.channels_last)
    trainer_nhwc = Trainer(trainer_cfg(args, ctx["images"]), nhwc, ctx["paths"])
    cases = {
        "reference": lambda: [ref.step() for _ in range(args.steps)],
        "trainer": lambda: [trainer.step(1) for _ in range(args.steps)],
        "trainer+channels_last": lambda: [trainer_nhwc.step(1) for _ in range(args.steps)],
    }
    compile_s = None
    # inversion.compile=true: the same trainer with a torch.compile'd UNet (a private copy); CUDA only, as the
    # trainer allows it (on a CPU inductor's backward was measured wrong, so its speed would mean nothing).
    if args.compile and args.device.type == "cuda":
        cc = dataclasses.replace(own_text_side(ctx["comps"]), unet=copy.deepcopy(ctx["comps"].unet))
        trainer_cc = Trainer(trainer_cfg(args, ctx["images"], ["inversion.compile=true"]), cc, ctx["paths"])
        compile_s = harness.timed(lambda: [trainer_cc.step(1) for _ in range(2)], args.device)  # compiles
        cases["trainer+compile"] = lambda: [trainer_cc.step(1) for _ in range(args.steps)]
    times = harness.interleaved(cases, args.device, args.repeats)
    out = {
        "trainer+channels_last": {
            "step_s": harness.median(times["trainer+channels_last"]) / args.steps,
            "times_s": times["trainer+channels_last"],
        }
    }
    out["trainer+channels_last"]["speedup_over_reference"] = harness.median(
        times["reference"]
    ) / harness.median(times["trainer+channels_last"])
    if compile_s is not None:
        step_s = harness.median(times["trainer+compile"]) / args.steps
        out["trainer+compile"] = {
            "step_s": step_s,
            "times_s": times["trainer+compile"],
            "compile_s": compile_s,
            "speedup_over_reference": harness.median(times["reference"])
            / harness.median(times["trainer+compile"]),
        }
    for name, step in (("reference", ref.step), ("trainer", lambda: trainer.step(1))):
        per_step = harness.median(times[name]) / args.steps
        flops = harness.count_flops(step)
        mem = harness.peak_memory(step, args.device)
        out[name] = {
            "step_s": per_step,
            "image_passes_per_s": args.batch / per_step,
            "flops_per_step": flops,
            "achieved_tflops": flops / per_step / 1e12,
            "peak_gib": mem["peak_gib"],
            "delta_gib": mem["delta_gib"],
            "batch": args.batch,
            "precision": "fp32" if name == "reference" else args.precision,
            "times_s": times[name],
        }
        if args.peak_flops:
            out[name]["utilisation"] = flops / per_step / args.peak_flops
    out["speedup"] = out["reference"]["step_s"] / out["trainer"]["step_s"]
    # The trainer's own footprint. On CUDA other benchmark components are resident too, so count its
    # components' weights plus its allocation peak over the start; on CPU, the process RSS peak.
    weights = harness.resident_gib([ctx["comps"].unet, ctx["comps"].vae, *trainer.comps.text_encoders])
    out["trainer"]["own_peak_gib"] = (
        weights + out["trainer"]["delta_gib"] if args.device.type == "cuda" else out["trainer"]["peak_gib"]
    )
    if args.big_batch:  # utilisation at a large batch (the issue's >= 45% target is for batch >= 16)
        big = Trainer(
            trainer_cfg(args, ctx["images"], [f"inversion.batch_size={args.big_batch}"]),
            own_text_side(ctx["comps"]),
            ctx["paths"],
        )
        t = (
            harness.median(
                harness.interleaved(
                    {"big": lambda: [big.step(1) for _ in range(args.steps)]}, args.device, args.repeats
                )["big"]
            )
            / args.steps
        )
        flops = harness.count_flops(lambda: big.step(1))
        mem = harness.peak_memory(lambda: big.step(1), args.device)
        out["trainer_big_batch"] = {
            "batch": args.big_batch,
            "step_s": t,
            "image_passes_per_s": args.big_batch / t,
            "achieved_tflops": flops / t / 1e12,
            "peak_gib": mem["peak_gib"],
            "utilisation": flops / t / args.peak_flops if args.peak_flops else None,
        }
        del big
    return out


def bench_techniques(args, ctx) -> dict:
    from bench.techniques import Variant
    from sweeper.data.images import load_image

    pixels = torch.stack([load_image(p, ctx["res"]) for p in ctx["paths"]])
    names = [
        (),
        ("cache_latents",),
        ("sparse_rows",),
        ("autocast",),
        ("math_attention",),
        ("channels_last",),
        ("cache_latents", "sparse_rows"),
    ]
    if args.compile:
        names.append(("compile",))
    cases = {}
    for i, techniques in enumerate(names):
        v = Variant(ctx["comps_fp32"], pixels, techniques, placeholder=f"<tech{i}>", batch_size=args.batch)
        cases["+".join(techniques) or "reference"] = lambda v=v: [v.step() for _ in range(args.steps)]
    times = harness.interleaved(cases, args.device, args.repeats)
    base = harness.median(times["reference"])
    return {
        name: {"step_s": harness.median(t) / args.steps, "speedup": base / harness.median(t)}
        for name, t in times.items()
    }


def bench_sampling(args, ctx) -> dict:
    from diffusers import StableDiffusionPipeline
    from tiny_components import build_tiny_clip

    from bench import sampling_techniques
    from sweeper.evaluation.protocol import evaluate_pipeline

    comps = ctx["comps_sample"]
    side = own_text_side(comps)
    pipe = StableDiffusionPipeline(
        vae=comps.vae,
        text_encoder=side.text_encoders[0],
        tokenizer=side.tokenizers[0],
        unet=comps.unet,
        scheduler=comps.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    vectors = ctx["trainer"].splices[0].vectors() if "trainer" in ctx else None
    tok, enc = side.tokenizers[0], side.text_encoders[0]
    tok.add_tokens(["<bench>"])
    enc.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        row = vectors[0] if vectors is not None else enc.get_input_embeddings().weight[tok.encode("toy")[1]]
        enc.get_input_embeddings().weight[tok.convert_tokens_to_ids("<bench>")] = row.to(enc.dtype)
    judge = build_tiny_clip(ctx["tmp"] / "judge")
    common = [
        f"evaluation.judge={judge}",
        "evaluation/prompts=paper_examples",
        "evaluation.references=false",
        "evaluation.progress=false",
        f"evaluation.bootstrap={args.bootstrap}",
    ]
    protocols = {}
    for name in ("paper", "fast"):
        cfg = compose([f"evaluation={name}", *common])
        if args.samples:  # CPU: fewer samples, same paper:fast proportion
            n = args.samples if name == "paper" else args.samples // 2
            cfg.evaluation.num_samples = n
        protocols[name] = cfg.evaluation
    results, times = {}, {}

    def run(name):
        out = ctx["tmp"] / f"eval-{name}"
        results[name] = evaluate_pipeline(
            pipe, "<bench>", protocols[name], ctx["paths"], out, model="random", device=args.device
        )

    for name in protocols:  # interleaved, one repeat: each run is long (seconds to minutes)
        times[name] = harness.timed(lambda name=name: run(name), args.device)
    paper, fast = results["paper"], results["fast"]
    n_prompts = 1 + len(paper["per_prompt"])
    techniques = sampling_techniques.measure(pipe, protocols["fast"], args.device, args.repeats)
    per_prompt_paper = times["paper"] / n_prompts * (PAPER_TRIAL["samples"] / paper["num_samples"])
    return {
        "paper_s": times["paper"],
        "fast_s": times["fast"],
        "time_ratio": times["paper"] / times["fast"],
        "paper_samples": paper["num_samples"],
        "fast_samples": fast["num_samples"],
        "prompts": n_prompts,
        "paper_protocol": paper["protocol"],
        "fast_protocol": fast["protocol"],
        "image_similarity": {
            "paper": paper["image_similarity"],
            "fast": fast["image_similarity"],
            "diff": fast["image_similarity"] - paper["image_similarity"],
        },
        "text_similarity": {
            "paper": paper["text_similarity"],
            "fast": fast["text_similarity"],
            "diff": fast["text_similarity"] - paper["text_similarity"],
        },
        "paper_s_per_prompt_at_64": per_prompt_paper,
        "techniques": techniques,
    }


def bench_vectorised(args, ctx) -> dict:
    from sweeper.training.inversion import Trainer, TrainerGroup

    n = args.trials
    cfgs = [
        trainer_cfg(args, ctx["images"], [f"inversion.seed={i}", f"inversion.lr={1e-3 * (i + 1)}"])
        for i in range(n)
    ]
    singles = [Trainer(c, own_text_side(ctx["comps"]), ctx["paths"]) for c in cfgs]
    group = TrainerGroup(cfgs, own_text_side(ctx["comps"]), [ctx["paths"]] * n)
    everyone, ones = list(range(n)), [1] * n
    cases = {
        "sequential": lambda: [t.step(1) for t in singles for _ in range(args.steps)],
        "vectorised": lambda: [group.step(everyone, ones) for _ in range(args.steps)],
    }
    times = harness.interleaved(cases, args.device, max(2, args.repeats - 2))
    seq, vec = harness.median(times["sequential"]), harness.median(times["vectorised"])
    mem = harness.peak_memory(lambda: group.step(everyone, ones), args.device)
    full = PAPER_TRIAL["steps"] / args.steps  # training-only trials per hour at 5000 steps
    return {
        "trials": n,
        "batch_per_trial": args.batch,
        "sequential_s": seq,
        "vectorised_s": vec,
        "speedup": seq / vec,
        "trials_per_hour_sequential": 3600 / (seq * full / n),
        "trials_per_hour_vectorised": 3600 / (vec * full / n),
        "peak_gib": mem["peak_gib"],
        "delta_gib": mem["delta_gib"],
    }


def bench_sdxl_memory(args, ctx) -> dict:
    """Peak memory of an SDXL trial step at 1024 px, batch 1 (CPU: the cut-down sdxl-mini shapes)."""
    from bench.shapes import SDXL, build_sdxl_components
    from sweeper.training.inversion import Trainer

    cuda = args.device.type == "cuda"
    size = "sdxl" if cuda else "sdxl-mini"
    comps = build_sdxl_components(size, args.device, args.precision)
    res = SDXL[size]["resolution"]
    paths = write_images(ctx["tmp"] / "sdxl", 5, res)
    cfg = trainer_cfg(args, ctx["images"], ["inversion.batch_size=1"])
    made = {}
    cache = harness.peak_memory(lambda: made.setdefault("t", Trainer(cfg, comps, paths)), args.device)
    trainer = made["t"]
    trainer.step(1)  # warm-up (cuDNN autotuning, lazy allocations)
    plain = harness.peak_memory(lambda: trainer.step(1), args.device)
    out = {
        "shapes": size,
        "resolution": res,
        "batch": 1,
        "precision": args.precision,
        "latent_cache_peak_gib": cache["peak_gib"],
        "step_peak_gib": plain["peak_gib"],
        "step_s": harness.median([harness.timed(lambda: trainer.step(1), args.device) for _ in range(2)]),
    }
    if cuda and plain["peak_gib"] > 24:
        comps.unet.enable_gradient_checkpointing()
        ckpt = harness.peak_memory(lambda: trainer.step(1), args.device)
        out.update(
            checkpointed_step_peak_gib=ckpt["peak_gib"],
            checkpointed_step_s=harness.timed(lambda: trainer.step(1), args.device),
        )
    best = min(out["step_peak_gib"], out.get("checkpointed_step_peak_gib", float("inf")))
    out["fits_24gb"] = bool(cuda and max(best, out["latent_cache_peak_gib"]) <= 24) if cuda else None
    return out  # its components are freed on return


SECTIONS = {
    "sdxl_memory": bench_sdxl_memory,
    "trainer": bench_trainer,
    "techniques": bench_techniques,
    "sampling": bench_sampling,
    "vectorised": bench_vectorised,
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--profile", choices=sorted(PROFILES), help="default: sd15 on CUDA, mini on CPU")
    p.add_argument("--precision", help="the project trainer's precision (default bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--big-batch", type=int, help="also time the trainer at this batch (default 16 on CUDA)")
    p.add_argument("--steps", type=int, default=4, help="training steps per timed call")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed calls per side")
    p.add_argument("--trials", type=int, default=8, help="N for vectorised vs sequential")
    p.add_argument("--samples", type=int, help="paper-protocol samples per prompt (default 64 CUDA, 8 CPU)")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (default on CUDA)")
    p.add_argument(
        "--peak-flops", type=float, help="device peak FLOP/s for utilisation (default 800e12 on CUDA)"
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    p.add_argument("--json", type=Path, default=Path("benchmarks/latest.json"))
    p.add_argument(
        "--render", action="store_true", help="measure nothing: rewrite BENCHMARKS.md from --json's figures"
    )
    args = p.parse_args(argv)
    from sweeper.models import resolve_device

    args.device = resolve_device(args.device)
    cuda = args.device.type == "cuda"
    args.profile = args.profile or ("sd15" if cuda else "mini")
    args.precision = args.precision or ("bf16" if cuda else "fp32")
    args.big_batch = args.big_batch or (16 if cuda else None)
    args.samples = args.samples if args.samples is not None else (None if cuda else 8)
    args.compile = args.compile or cuda
    args.peak_flops = args.peak_flops or harness.default_peak_flops(args.device)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    from bench import report

    args = parse(argv)
    if args.render:  # the saved run's settings, results, date and device; today's report text
        import json

        saved = json.loads(args.json.read_text())
        for key, value in saved["settings"].items():
            if key not in ("device", "render"):
                setattr(args, key, value)
        return report.write(args, saved["results"], date=saved["date"], device=saved["device"])
    torch.set_num_threads(args.threads)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        res = PROFILES[args.profile].resolution
        ctx = {"tmp": Path(tmp), "images": Path(tmp) / "concept", "res": res}
        ctx["paths"] = write_images(ctx["images"], 5, res)
        if "sdxl_memory" in args.sections:  # first, while nothing else is resident on the device
            print("[bench] sdxl_memory ...", flush=True)
            results["sdxl_memory"] = bench_sdxl_memory(args, ctx)
            if args.device.type == "cuda":
                torch.cuda.empty_cache()
        ctx["comps"] = build_components(args.profile, args.device, args.precision)
        ctx["comps_fp32"] = (
            ctx["comps"] if args.precision == "fp32" else build_components(args.profile, args.device, "fp32")
        )
        ctx["comps_sample"] = (
            build_components(args.profile, args.device, "fp16")
            if args.device.type == "cuda"
            else ctx["comps_fp32"]
        )
        for name in ("trainer", "techniques", "sampling", "vectorised"):  # sampling reuses the trained vector
            if name in args.sections:
                print(f"[bench] {name} ...", flush=True)
                results[name] = SECTIONS[name](args, ctx)
    return report.write(args, results)


if __name__ == "__main__":
    main()
