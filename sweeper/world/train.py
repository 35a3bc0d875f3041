"""Train the embedded world on a CPU, in stages whose outputs are kept: `python -m sweeper.world.train`.

    data       render the fixed training set once (uint8 images + specs)          -> WORK/data.npz
    vae        AutoencoderKL, 32 px <-> 4x16x16 latents; scaling_factor = 1/std    -> WORK/vae/
    judge      transformers CLIPModel, contrastive, its own tokenizer              -> WORK/judge/
    judge2     a second cycle from those weights that adds the zero-shot task itself: -> WORK/judge2/
               each image against its caption with one attribute swapped for every other value
    generator  UNet2DConditionModel + CLIPTextModel trained jointly on cached      -> WORK/generator/
               latents (10% caption dropout for classifier-free guidance)
    generator2 a second cosine cycle from those weights (warm restart)           -> WORK/generator2/
    generator3 a third cycle with offset noise, so that samples can be dark      -> WORK/generator3/
               ("at night") or bright when sampling starts from pure noise; on 2 threads
    concepts   the held-out concepts' images (5 each)                              -> sweeper/world/concepts/<name>/
    assemble   StableDiffusionPipeline.save_pretrained + the judge folder          -> OUT/pipeline, OUT/judge
    quality    judge zero-shot accuracy and prompt following (sweeper.world.quality)       -> OUT/quality.json

A finished stage is skipped unless named with --stage; the generator saves a checkpoint every
--ckpt-every steps and resumes from it. Everything is seeded and each process uses one thread (the
judge trains in a second process beside the VAE and generator, so two cores are busy): the same
machine type gives the same weights. `rm -rf .cache/world` retrains from scratch.
The judge never sees the generator's text encoder, so it does not share its blind spots.
The stages' code: sweeper/world/trainset.py (data, shared loop helpers), sweeper/world/judge.py, sweeper/world/generator.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from sweeper.store import atomic
from sweeper.world import draw
from sweeper.world.generator import build_scheduler, train_generator, train_vae
from sweeper.world.judge import save_judge, train_judge
from sweeper.world.quality import main as quality
from sweeper.world.tokenizer import build_tokenizer
from sweeper.world.trainset import load_data, log

# Lazy imports: diffusers and transformers are imported where the pipeline is assembled (import time of the world).

CONFIG = dict(
    seed=0,
    n_train=30_000,
    batch=32,
    vae_steps=800,
    vae_lr=2e-3,
    vae_kl=1e-6,
    judge_steps=2000,
    judge_batch=128,
    judge_lr=1e-3,
    judge2_steps=1500,
    judge2_lr=8e-4,
    judge2_shape_p=0.6,
    gen_steps=2000,
    gen_steps2=2500,
    gen_lr=8e-4,
    caption_dropout=0.1,
    min_snr_gamma=5.0,
    gen_steps3=4000,
    gen_lr3=4e-4,
    gen_offset_noise3=0.1,
    gen3_threads=2,
)
STAGES = [
    "data",
    "judge",
    "judge2",
    "vae",
    "generator",
    "generator2",
    "generator3",
    "concepts",
    "assemble",
    "quality",
]
CONCEPTS_DIR = Path(__file__).parent / "concepts"


# --------------------------------------------------------------------------------------- assemble


def write_concepts(root: Path = CONCEPTS_DIR) -> None:
    for name in draw.CONCEPTS:
        with atomic.directory(root / name) as tmp:
            for i, img in enumerate(draw.concept_images(name)):
                Image.fromarray(img).save(tmp / f"{i:02d}.png")
    log(f"wrote {len(draw.CONCEPTS)} concepts to {root}")


def assemble(work: Path, out: Path) -> None:
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel

    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(work / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(work / "generator3" / "text_encoder"),
        tokenizer=build_tokenizer(),
        unet=UNet2DConditionModel.from_pretrained(work / "generator3" / "unet"),
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    with atomic.directory(out / "pipeline") as tmp:
        pipe.save_pretrained(tmp)
    with atomic.directory(out / "judge") as tmp:
        save_judge(CLIPModel.from_pretrained(work / "judge2"), build_tokenizer(judge=True), tmp)
    log(f"assembled {out / 'pipeline'} and {out / 'judge'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stage",
        choices=["all", *STAGES, "judges"],
        default="all",
        help="one stage, or all that are not done yet ('judges': judge then judge2, if not done)",
    )
    parser.add_argument("--work", type=Path, default=Path(".cache/world"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process (1: reproducible; the judge trains in a second process)",
    )
    parser.add_argument("--ckpt-every", type=int, default=500)
    parser.add_argument(
        "--quality-steps", type=int, default=50, help="DDIM steps of the prompt-following figure"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help=f"override training settings (development only): {sorted(CONFIG)}",
    )
    args = parser.parse_args()
    cfg = dict(CONFIG)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in CONFIG:
            parser.error(f"--set {item}: unknown key {key!r}; known: {sorted(CONFIG)}")
        cfg[key] = type(CONFIG[key])(value)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    done = {
        "data": args.work / "data.npz",
        "vae": args.work / "vae",
        "judge": args.work / "judge",
        "judge2": args.work / "judge2",
        "generator": args.work / "generator",
        "generator2": args.work / "generator2",
        "generator3": args.work / "generator3",
    }
    t0 = time.time()
    judge_job = None
    for stage in STAGES:
        if args.stage == "all" and stage in ("judge", "judge2"):
            if stage == "judge" and not done["judge2"].exists():
                # The judges need nothing from the generator: they train beside it, in their own process.
                cmd = [
                    sys.executable,
                    "-m",
                    "sweeper.world.train",
                    "--stage",
                    "judges",
                    "--threads",
                    str(args.threads),
                    "--work",
                    str(args.work),
                    "--set",
                    *args.set,
                ]
                log(f"stages judge, judge2: in the background ({args.work / 'judge.log'})")
                judge_job = subprocess.Popen(
                    cmd, stdout=open(args.work / "judge.log", "w"), stderr=subprocess.STDOUT
                )
            continue
        if stage in ("generator3", "assemble") and judge_job is not None:
            # Cycle 3 takes both cores, so it waits for the judges' process: its two threads beside the judges'
            # one would oversubscribe two cores and slow both (the weights would not change: thread counts are fixed).
            if judge_job.wait() != 0:
                raise SystemExit(f"the judge stages failed: see {args.work / 'judge.log'}")
            log(f"stages judge, judge2 done ({time.time() - t0:.0f}s since the start)")
            judge_job = None
        wanted = args.stage in ("all", stage) or (args.stage == "judges" and stage in ("judge", "judge2"))
        if not wanted or (args.stage in ("all", "judges") and stage in done and done[stage].exists()):
            continue
        log(f"stage {stage}")
        s0 = time.time()
        if stage == "data":
            load_data(args.work, cfg)
        elif stage == "vae":
            train_vae(args.work, cfg)
        elif stage in ("judge", "judge2"):
            train_judge(args.work, cfg, cycle=1 if stage == "judge" else 2)
        elif stage in ("generator", "generator2", "generator3"):
            if stage == "generator3":
                # The judges' process has finished (above): the last cycle takes both cores (a fixed thread
                # count, so the same machine type still gives the same weights).
                torch.set_num_threads(max(args.threads, cfg["gen3_threads"]))
            train_generator(args.work, cfg, args.ckpt_every, cycle=int(stage[len("generator") :] or 1))
        elif stage == "concepts":
            # beside the weights: sweeper/world/concepts for the shipped world, OUT/../concepts for any other OUT
            write_concepts(args.out.parent / "concepts")
        elif stage == "assemble":
            assemble(args.work, args.out)
        else:
            quality(args.out, steps=args.quality_steps)
        log(f"stage {stage} done in {time.time() - s0:.0f}s")
    log(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
