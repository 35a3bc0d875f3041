"""Peak memory per phase of one trial (training, evaluation) at Stable Diffusion 1.5's shapes.

`python -m bench.phase_memory` (in `make bench`; about 5 minutes and 12 GiB on a CPU):

1. builds random components with SD 1.5's exact shapes (bench/shapes.py "sd15": UNet 860 M, CLIP-L text
   encoder 123 M, VAE 84 M) and a judge with CLIP ViT-L/14's shapes (`--judge large`, 428 M; `tiny` for a
   quick check), and saves them as a diffusers pipeline folder and a transformers CLIPModel folder;
2. runs one real trial through `sweeper.trial.run_trial`, which loads the folder with `from_pretrained` as a
   real model: 2 training steps at batch 1 and 512 px, then the evaluation (1 sample of the reconstruction
   prompt and of 1 edit prompt, 2 DDIM steps). status.json's `peak_memory_gib` holds each phase's peak
   (sweeper/memory.py: process RSS on a CPU, the CUDA allocator's peak on a GPU);
3. side by side in the same process, the evaluation as it was before issue 16: the training components
   still alive while a second pipeline loads and samples the same image with the same judge.

The figures to read: the trial's evaluation peak against its training peak (one UNet alive at a time: the
larger phase, not the sum) and against the two-copies evaluation. Writes its section of BENCHMARKS.md
(between the phase-memory markers) and phase_memory_* keys into benchmarks/latest.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench import harness
from sweeper import memory
from sweeper.console import quiet_libraries
from sweeper.store.atomic import write_json

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- phase-memory:begin -->", "<!-- phase-memory:end -->"
# CLIP ViT-L/14 (the paper's judge): vision 24 x 1024 at 224 px in 14 px patches, text 12 x 768, projection 768
JUDGES = {
    "large": dict(vision=(1024, 24, 16, 4096, 224, 14), text=(768, 12, 12, 3072), projection=768),
    "tiny": dict(vision=(32, 2, 2, 64, 32, 8), text=(32, 2, 2, 64), projection=32),
}


def millions(module: torch.nn.Module) -> str:
    return f"{sum(t.numel() for t in module.parameters()) / 1e6:.0f} M"


def save_model(out: Path, profile: str) -> dict:
    """The profile's random components saved as a StableDiffusionPipeline folder; their sizes."""
    from bench.shapes import build_components
    from sweeper.models import pipeline_from_components

    comps = build_components(profile)
    pipeline_from_components(comps).save_pretrained(out)
    return {
        "parameters": f"UNet {millions(comps.unet)}, text encoder {millions(comps.text_encoders[0])}, "
        f"VAE {millions(comps.vae)}",
        "resolution": comps.resolution,
    }


def save_judge(out: Path, size: str) -> str:
    """A random CLIPModel with the named judge's shapes (+ tokenizer and image processor); its size."""
    from tiny_components import build_clip

    return f"{build_clip(out, **JUDGES[size]) / 1e6:.0f} M"


def overrides(model: Path, judge: Path, images: Path, cache: Path, device: str) -> list[str]:
    return [
        f"model.pretrained={model}",
        f"data.images={images}",
        "inversion.init_word=dog",
        "inversion.steps=2",
        "inversion.batch_size=1",
        "inversion.grad_accum=1",
        "inversion.log_every=1",
        "inversion.checkpoint_every=0",
        "inversion.precision=fp32",
        "evaluation.prompts=['a photo of {} on the beach']",
        "evaluation.num_samples=1",
        "evaluation.batch_size=1",
        "evaluation.steps=2",
        "evaluation.bootstrap=10",
        "evaluation.references=false",
        "evaluation.progress=false",
        "evaluation.grid_samples=1",
        "evaluation.precision=fp32",
        f"evaluation.judge={judge}",
        f"evaluation.cache_dir={cache}",
        "tracking=none",
        f"device={device}",
    ]


def two_copies_peak(model: Path, judge: Path, device: str) -> float | None:
    """The evaluation before issue 16: the training components alive (and resident, as after training) while a
    second pipeline loads and samples and the judge scores."""
    from sweeper.evaluation.clip_score import Judge
    from sweeper.evaluation.sampling import Sampler
    from sweeper.models import load_components, load_pipeline

    comps = load_components(str(model), "fp32", device)
    for module in (comps.unet, comps.vae, *comps.text_encoders):  # resident, as training leaves them (the
        for weight in module.parameters():  # weights are memory-mapped: pages count once touched)
            weight.sum()
    memory.reset_peak(device)
    pipe = load_pipeline(str(model), "fp32", device)
    images = Sampler(pipe, steps=2, batch_size=1, progress=False).sample("a photo of a dog", 1, "k")
    Judge(str(judge), device).images(images)
    peak = memory.peak_gib(device)
    del comps, pipe
    gc.collect()
    return peak


def markdown(result: dict) -> str:
    m, p = result["meta"], result["peaks"]

    def gib(x):
        return "n/a" if x is None else f"{x:.2f}"

    ratio = f"{p['evaluation'] / p['training']:.2f}" if p["evaluation"] and p["training"] else "n/a"
    return "\n".join(
        [
            BEGIN,
            f"## Peak memory per phase at {m['profile']} shapes (`python -m bench.phase_memory`, in `make bench`)",
            "",
            f"Generated on {m['date']} ({m['machine']}; {m['device']}, fp32, {m['threads']} torch threads). "
            f"One real trial (`run_trial`) on random weights with bench/shapes.py's `{m['profile']}` shapes "
            f"({m['parameters']}) loaded from a pipeline folder and a judge with {m['judge']} shapes "
            f"({m['judge_parameters']}): 2 training steps at batch 1 and {m['resolution']} px, then 1 sample of the reconstruction prompt and of 1 edit prompt (2 DDIM "
            f"steps). Measured by {p['measured_by']} (sweeper/memory.py; status.json `peak_memory_gib`).",
            "",
            "| phase | peak GiB |",
            "|---|---:|",
            f"| training (loading, latent cache, steps) | {gib(p['training'])} |",
            f"| evaluation (the trainer's components reused; judge loaded; sampling) | {gib(p['evaluation'])} |",
            f"| evaluation as before issue 16 (a second pipeline loaded beside the trainer's) | "
            f"{gib(result['two_copies_gib'])} |",
            "",
            f"Evaluation / training peak: {ratio} (one UNet alive at a time: the larger phase, not the sum; "
            "the judge and the decoded images are what evaluation adds). The process's resident set includes "
            "the Python runtime and libraries (about 0.5 GiB).",
            END,
            "",
        ]
    )


def write_section(path: Path, section: str) -> None:
    harness.write_section(path, section, BEGIN, END)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.phase_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="sd15", help="bench/shapes.py profile of the model (default sd15)")
    p.add_argument("--judge", choices=sorted(JUDGES), default="large")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "latest.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_libraries()
    if memory.measured_by(args.device) is None:
        raise SystemExit(f"error: no per-phase peak memory on {args.device} here (sweeper/memory.py)")
    from hydra import compose, initialize_config_dir
    from tiny_components import build_demo_images

    from sweeper.trial import run_trial

    with tempfile.TemporaryDirectory(prefix="ti-phase-memory-") as tmp:
        tmp = Path(tmp)
        print(f"[phase_memory] building {args.profile} components and a {args.judge} judge", flush=True)
        model, judge = tmp / "model", tmp / "judge"
        sizes = save_model(model, args.profile)
        judge_parameters = save_judge(judge, args.judge)
        images = build_demo_images(tmp / "images", n=3, size=512)
        gc.collect()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            cfg = compose("config", overrides=overrides(model, judge, images, tmp / "refs", args.device))
        print("[phase_memory] one trial (2 steps, 2 samples)", flush=True)
        run_trial(cfg, tmp / "run")
        status = json.loads((tmp / "run" / "status.json").read_text())
        if status["status"] != "completed":
            raise SystemExit(f"error: the trial ended {status['status']}: {status.get('error')}")
        gc.collect()
        print("[phase_memory] the evaluation with a second copy of the model", flush=True)
        two = two_copies_peak(model, judge, args.device)
    result = {
        "meta": {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "device": torch.cuda.get_device_name() if args.device == "cuda" else "CPU",
            "threads": args.threads,
            "profile": args.profile,
            "judge": "CLIP ViT-L/14" if args.judge == "large" else "tiny CLIP",
            "judge_parameters": judge_parameters,
            **sizes,
        },
        "peaks": status["peak_memory_gib"],
        "two_copies_gib": two,
        "trial_wall_time_s": status["wall_time_s"],
    }
    print(markdown(result))
    write_section(args.out, markdown(result))
    latest = json.loads(args.json.read_text()) if args.json.exists() else {}
    latest.update(
        phase_memory_training_gib=result["peaks"]["training"],
        phase_memory_evaluation_gib=result["peaks"]["evaluation"],
        phase_memory_two_copies_gib=two,
        phase_memory=result,
    )
    write_json(args.json, latest)
    return result


if __name__ == "__main__":
    main()
