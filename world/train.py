"""Train the embedded world on a CPU, in stages whose outputs are kept: `python -m world.train`.

    data       render the fixed training set once (uint8 images + specs)          -> WORK/data.npz
    vae        AutoencoderKL, 32 px <-> 4x16x16 latents; scaling_factor = 1/std    -> WORK/vae/
    judge      transformers CLIPModel, contrastive, its own tokenizer              -> WORK/judge/
    judge2     a second cycle from those weights that adds the zero-shot task itself: -> WORK/judge2/
               each image against its caption with one attribute swapped for every other value
    generator  UNet2DConditionModel + CLIPTextModel trained jointly on cached      -> WORK/generator/
               latents (10% caption dropout for classifier-free guidance)
    generator2 a second cosine cycle from those weights (warm restart)           -> WORK/generator2/
    generator3 a short third cycle with offset noise, so that samples can be dark  -> WORK/generator3/
               ("at night") or bright when sampling starts from pure noise
    concepts   the held-out concepts' images (5 each)                              -> world/concepts/<name>/
    assemble   StableDiffusionPipeline.save_pretrained + the judge folder          -> OUT/pipeline, OUT/judge
    quality    judge zero-shot accuracy and prompt following (world.quality)       -> OUT/quality.json

A finished stage is skipped unless named with --stage; the generator saves a checkpoint every
--ckpt-every steps and resumes from it. Everything is seeded and each process uses one thread (the
judge trains in a second process beside the VAE and generator, so two cores are busy): the same
machine type gives the same weights. `rm -rf .cache/world` retrains from scratch.
The judge never sees the generator's text encoder, so it does not share its blind spots.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sweeper import atomic
from world import draw
from world.tokenizer import MAX_LENGTH, FastIds, build_tokenizer

CONFIG = dict(
    seed=0, n_train=30_000, batch=32,
    vae_steps=800, vae_lr=2e-3, vae_kl=1e-6,
    judge_steps=2000, judge_batch=128, judge_lr=1e-3, judge2_steps=1500, judge2_lr=8e-4, judge2_shape_p=0.6,
    gen_steps=2000, gen_steps2=2500, gen_lr=8e-4, caption_dropout=0.1, min_snr_gamma=5.0, gen_steps3=1000, gen_lr3=4e-4, gen_offset_noise3=0.1,
)
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
STAGES = ["data", "judge", "judge2", "vae", "generator", "generator2", "generator3", "concepts", "assemble", "quality"]
CONCEPTS_DIR = Path(__file__).parent / "concepts"


def log(msg: str) -> None:
    print(f"[world {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# ------------------------------------------------------------------------------------------- data

SPEC_FIELDS = ["colour", "shape", "texture", "background", "size", "style", "companion", "x", "y"]


def load_data(work: Path, cfg: dict) -> tuple[torch.Tensor, list[draw.Spec]]:
    path = work / "data.npz"
    if not path.is_file():
        log(f"rendering {cfg['n_train']} training images")
        images, specs = draw.render_dataset(cfg["n_train"], cfg["seed"], draw.held_out_combos())
        rows = np.array([[str(getattr(s, f)) if f != "companion" else "|".join(s.companion or ())
                          for f in SPEC_FIELDS] for s in specs])
        atomic._write_via(path, lambda tmp: np.savez(open(tmp, "wb"), images=images, specs=rows))
    with np.load(path) as f:
        images, rows = f["images"], f["specs"]
    specs = [draw.Spec(r[0], r[1], r[2], r[3], r[4], r[5], tuple(r[6].split("|")) if r[6] else None,
                       float(r[7]), float(r[8])) for r in rows]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), specs


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float in [-1, 1], the VAE's range."""
    return images.float() / 127.5 - 1


# -------------------------------------------------------------------------------------------- vae


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=draw.SIZE, mid_block_add_attention=False,
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] image batches."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def held_out_images(n: int, seed: int) -> tuple[torch.Tensor, list[draw.Spec]]:
    """Photos of held-out attribute combinations (no model trains on these)."""
    rng = np.random.default_rng(seed)
    combos = sorted(draw.held_out_combos())
    specs = [draw.Spec(*combos[i % len(combos)], size=draw.SIZES[rng.integers(2)], x=float(rng.random()),
                       y=float(rng.random())) for i in range(n)]
    images = np.stack([draw.render(s, rng) for s in specs])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), specs


def train_vae(work: Path, cfg: dict) -> None:
    images, _ = load_data(work, cfg)
    torch.manual_seed(cfg["seed"])
    vae = build_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg["vae_lr"], weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg["seed"])
    t0 = time.time()
    for step in range(cfg["vae_steps"]):
        set_lr(opt, lr_at(step, cfg["vae_steps"], cfg["vae_lr"]))
        x = to_unit(images[torch.randint(len(images), (cfg["batch"],), generator=gen)])
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean + post.std * torch.randn(post.mean.shape, generator=gen)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg["vae_kl"] * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg["vae_steps"] - 1:
            log(f"vae step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(to_unit(images[i : i + 256])).latent_dist.mean
                           for i in range(0, min(4096, len(images)), 256)])
        vae.register_to_config(scaling_factor=float(1 / means.std()))
        test, _ = held_out_images(512, cfg["seed"] + 1)
        x = to_unit(test)
        score = psnr(vae.decode(vae.encode(x).latent_dist.mean).sample, x)
    log(f"vae: held-out PSNR {score:.2f} dB, scaling_factor {vae.config.scaling_factor:.4f}")
    with atomic.directory(work / "vae") as tmp:
        vae.save_pretrained(tmp)
        atomic.write_json(tmp / "stats.json", {"psnr_db": score, "seconds": time.time() - t0})


# ------------------------------------------------------------------------------------------ judge


def build_judge(vocab_size: int):
    from transformers import CLIPConfig, CLIPModel

    text = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=96, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                  image_size=draw.SIZE, patch_size=4)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


def judge_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> the CLIPImageProcessor's normalisation (resize/crop are identities at 32 px)."""
    return (images.float() / 255 - CLIP_MEAN) / CLIP_STD


def compatible(facts: list[dict], specs: list[draw.Spec]) -> torch.Tensor:
    """[n_images, n_texts]: 1 where image i has every fact caption j states."""
    return torch.tensor([[float(all(getattr(s, k) == v for k, v in f.items())) for f in facts] for s in specs])


def hard_negative(spec: draw.Spec, rng: np.random.Generator) -> draw.Spec:
    """`spec` with one attribute changed (shape half of the time): the caption a judge must not match.

    Random batches rarely hold two images that differ only in shape, so without these the judge learns
    colour, texture and background and hardly looks at shapes.
    """
    attr = "shape" if rng.random() < 0.5 else ["colour", "texture", "background"][rng.integers(3)]
    values = {"shape": [*draw.SHAPES, *draw.SECRET_SHAPES], "colour": list(draw.COLOURS),
              "texture": draw.TEXTURES, "background": list(draw.BACKGROUNDS)}[attr]
    if spec.style == "sketch" and attr in ("texture", "background"):
        attr, values = "colour", list(draw.COLOURS)
    others = [v for v in values if v != getattr(spec, attr)]
    return replace(spec, **{attr: others[rng.integers(len(others))]})


VARIANT_VALUES = {"shape": [*draw.SHAPES, *draw.SECRET_SHAPES], "colour": list(draw.COLOURS),
                  "texture": draw.TEXTURES, "background": list(draw.BACKGROUNDS)}


def variant_captions(spec: draw.Spec, attr: str, seed: int) -> tuple[list[str], int] | None:
    """One caption of `spec` per value of `attr` (same words otherwise), and the true value's index.

    None when the caption drawn does not state `attr` (then every variant would read the same).
    """
    values = VARIANT_VALUES[attr]
    texts = []
    for v in values:
        text, facts = draw.caption_facts(replace(spec, **{attr: v}), np.random.default_rng(seed), judge=True,
                                         drop=0.15)
        if facts.get(attr) != v:
            return None
        texts.append(text)
    return texts, values.index(getattr(spec, attr))


def train_judge(work: Path, cfg: dict, cycle: int = 1) -> None:
    """Cycle 1: contrastive from scratch. Cycle 2 continues from WORK/judge and adds the zero-shot task.

    Random batches rarely hold two images that differ in one attribute only, so contrastive training alone
    learns colour, texture and background and hardly looks at shapes (65% zero-shot). Cycle 2 adds, for
    each image, a cross-entropy over its caption with one attribute (shape half of the time) set to every
    value: the task `world.quality` measures, on training images only (held-out combinations never occur).
    """
    from transformers import CLIPModel

    images, specs = load_data(work, cfg)
    tokenizer = build_tokenizer(judge=True)
    ids = FastIds(tokenizer)
    seed = cfg["seed"] + (2 if cycle == 1 else 12)
    rng = np.random.default_rng(seed)
    ids.check([draw.caption(s, rng, judge=True) for s in specs[:200]])
    torch.manual_seed(seed)
    model = (build_judge(len(tokenizer)) if cycle == 1 else CLIPModel.from_pretrained(work / "judge")).train()
    steps, base_lr = (cfg["judge_steps"], cfg["judge_lr"]) if cycle == 1 else (cfg["judge2_steps"], cfg["judge2_lr"])
    opt = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    t0, b, name = time.time(), cfg["judge_batch"], "judge" if cycle == 1 else "judge2"
    for step in range(steps):
        set_lr(opt, lr_at(step, steps, base_lr, warmup=200 if cycle == 1 else 50))
        idx = torch.randint(len(images), (b,), generator=gen)
        batch_specs = [specs[i] for i in idx.tolist()]
        texts, facts = zip(*(draw.caption_facts(s, rng, judge=True, drop=0.15) for s in batch_specs))
        hard = [draw.caption_facts(hard_negative(s, rng), rng, judge=True, drop=0.0) for s in batch_specs]
        variants = []
        if cycle == 2:
            for i, s in enumerate(batch_specs):
                attrs = ["colour", "shape"] if s.style == "sketch" else ["colour", "texture", "background", "shape"]
                attr = "shape" if rng.random() < cfg["judge2_shape_p"] else attrs[rng.integers(len(attrs) - 1)]
                found = variant_captions(s, attr, int(rng.integers(2**31)))
                if found is not None:
                    variants.append((i, *found))
        all_texts = [*texts, *(t for t, _ in hard), *(t for _, vs, _ in variants for t in vs)]
        tok = ids(all_texts)
        tok = tok[:, : int((tok != ids.pad).sum(1).max()) + 1]
        pix = judge_pixels(images[idx]) + 0.05 * torch.randn((b, 3, draw.SIZE, draw.SIZE), generator=gen)
        out = model(input_ids=tok, pixel_values=pix)
        target = compatible([*facts, *(f for _, f in hard)], batch_specs)  # [b, 2b]
        logits = out.logits_per_image
        t2i = target[:, :b]  # captions of the batch's own images: each matches at least its image
        loss = 0.5 * (-(target / target.sum(1, keepdim=True) * logits[:, : 2 * b].log_softmax(1)).sum(1).mean()
                      - (t2i / t2i.sum(0, keepdim=True) * logits[:, :b].log_softmax(0)).sum(0).mean())
        if variants:
            col, ce = 2 * b, []
            for i, vs, true in variants:
                ce.append(F.cross_entropy(logits[i, col : col + len(vs)][None], torch.tensor([true])))
                col += len(vs)
            loss = loss + torch.stack(ce).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == steps - 1:
            log(f"{name} step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    with atomic.directory(work / name) as tmp:
        save_judge(model.eval(), tokenizer, tmp)
        atomic.write_json(tmp / "stats.json", {"seconds": time.time() - t0})


def save_judge(model, tokenizer, folder: Path) -> None:
    from transformers import CLIPImageProcessor

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": draw.SIZE},
                       crop_size={"height": draw.SIZE, "width": draw.SIZE}).save_pretrained(folder)


# -------------------------------------------------------------------------------------- generator


def build_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=MAX_LENGTH, projection_dim=64,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
    ))


def build_unet():
    from diffusers import UNet2DConditionModel

    # Attention only at 8x8 and 4x4: the attributes are global and 16x16 self-attention is most of the cost.
    return UNet2DConditionModel(
        sample_size=draw.SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 128), norm_num_groups=16, cross_attention_dim=64, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )


def build_scheduler():
    from diffusers import PNDMScheduler

    # SD 1.5's scheduler config, clip_sample=false included: DDIM/DDPM built from it would otherwise
    # clip x0 predictions to [-1, 1], which destroys latents of unit variance.
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    scheduler.register_to_config(clip_sample=False)
    return scheduler


@torch.no_grad()
def cache_latents(vae, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(images), 512):
        post = vae.encode(to_unit(images[i : i + 512])).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def train_generator(work: Path, cfg: dict, ckpt_every: int, cycle: int = 1) -> None:
    """Cycle 1 trains from scratch; cycle c > 1 is a warm restart (fresh AdamW and cosine) from cycle c - 1."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    images, specs = load_data(work, cfg)
    vae = AutoencoderKL.from_pretrained(work / "vae").eval()
    log("caching latents")
    mean, std = cache_latents(vae, images)
    scale = vae.config.scaling_factor
    tokenizer = build_tokenizer()
    ids = FastIds(tokenizer)
    seed = cfg["seed"] + 2 + cycle
    torch.manual_seed(seed)
    if cycle == 1:
        unet, text_encoder = build_unet().train(), build_text_encoder(len(tokenizer)).train()
    else:
        previous = work / ("generator" if cycle == 2 else f"generator{cycle - 1}")
        unet = UNet2DConditionModel.from_pretrained(previous / "unet").train()
        text_encoder = CLIPTextModel.from_pretrained(previous / "text_encoder").train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    base_lr = cfg.get(f"gen_lr{cycle}", cfg["gen_lr"])
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=0.01)
    alphas = build_scheduler().alphas_cumprod
    snr = alphas / (1 - alphas)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    name = "generator" if cycle == 1 else f"generator{cycle}"
    start, ckpt = 0, work / f"{name}_ckpt.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        rng.bit_generator.state = state["rng"]
        start = state["step"]
        log(f"generator: resumed at step {start}")
    ids.check([draw.caption(s, np.random.default_rng(0)) for s in specs[:200]] + [""])
    t0, b, total = time.time(), cfg["batch"], cfg["gen_steps" if cycle == 1 else f"gen_steps{cycle}"]
    for step in range(start, total):
        set_lr(opt, lr_at(step, total, base_lr, warmup=200 if cycle < 3 else 50))
        idx = torch.randint(len(images), (b,), generator=gen)
        texts = [draw.caption(specs[i], rng) if rng.random() >= cfg["caption_dropout"] else ""
                 for i in idx.tolist()]
        latents = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        noise = torch.randn(latents.shape, generator=gen)
        if cycle == 3:
            # Offset noise: at this schedule's last step a 4x16x16 latent keeps its mean (sqrt(alpha) ~ 0.07
            # over 1024 values), so a model trained on plain noise reads the background from it and, sampling
            # from pure noise, never draws "night". A per-channel offset teaches it to set the mean itself.
            noise = noise + cfg["gen_offset_noise3"] * torch.randn((b, noise.shape[1], 1, 1), generator=gen)
        t = torch.randint(0, 1000, (b,), generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        context = text_encoder(ids(texts))[0]
        pred = unet(noisy, t, context).sample
        weight = torch.clamp(snr[t], max=cfg["min_snr_gamma"]) / snr[t]  # min-SNR-5 for epsilon targets
        loss = (weight * (pred - noise).pow(2).mean((1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % 100 == 0 or step == total - 1:
            log(f"{name} step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
        if (step + 1) % ckpt_every == 0 and step + 1 < total:
            atomic.torch_save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(),
                               "opt": opt.state_dict(), "gen": gen.get_state(), "rng": rng.bit_generator.state,
                               "step": step + 1}, ckpt)
    with atomic.directory(work / name) as tmp:
        unet.eval().save_pretrained(tmp / "unet")
        text_encoder.eval().save_pretrained(tmp / "text_encoder")
        atomic.write_json(tmp / "stats.json", {"seconds_this_run": time.time() - t0, "steps": total})
    ckpt.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------- assemble


def write_concepts(root: Path = CONCEPTS_DIR) -> None:
    from PIL import Image

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
        tokenizer=build_tokenizer(), unet=UNet2DConditionModel.from_pretrained(work / "generator3" / "unet"),
        scheduler=build_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    with atomic.directory(out / "pipeline") as tmp:
        pipe.save_pretrained(tmp)
    with atomic.directory(out / "judge") as tmp:
        save_judge(CLIPModel.from_pretrained(work / "judge2"), build_tokenizer(judge=True), tmp)
    log(f"assembled {out / 'pipeline'} and {out / 'judge'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["all", *STAGES, "judges"], default="all",
                        help="one stage, or all that are not done yet ('judges': judge then judge2, if not done)")
    parser.add_argument("--work", type=Path, default=Path(".cache/world"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "weights")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (1: reproducible; the judge trains in a second process)")
    parser.add_argument("--ckpt-every", type=int, default=500)
    parser.add_argument("--quality-steps", type=int, default=50, help="DDIM steps of the prompt-following figure")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"override training settings (development only): {sorted(CONFIG)}")
    args = parser.parse_args()
    cfg = dict(CONFIG)
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in CONFIG:
            parser.error(f"--set {item}: unknown key {key!r}; known: {sorted(CONFIG)}")
        cfg[key] = type(CONFIG[key])(value)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    done = {"data": args.work / "data.npz", "vae": args.work / "vae", "judge": args.work / "judge",
            "judge2": args.work / "judge2", "generator": args.work / "generator", "generator2": args.work / "generator2",
            "generator3": args.work / "generator3"}
    t0 = time.time()
    judge_job = None
    for stage in STAGES:
        if args.stage == "all" and stage in ("judge", "judge2"):
            if stage == "judge" and not done["judge2"].exists():
                # The judges need nothing from the generator: they train beside it, in their own process.
                cmd = [sys.executable, "-m", "world.train", "--stage", "judges", "--threads", str(args.threads),
                       "--work", str(args.work), "--set", *args.set]
                log(f"stages judge, judge2: in the background ({args.work / 'judge.log'})")
                judge_job = subprocess.Popen(cmd, stdout=open(args.work / "judge.log", "w"), stderr=subprocess.STDOUT)
            continue
        if stage == "assemble" and judge_job is not None and judge_job.wait() != 0:
            raise SystemExit(f"the judge stages failed: see {args.work / 'judge.log'}")
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
            train_generator(args.work, cfg, args.ckpt_every, cycle=int(stage[len("generator"):] or 1))
        elif stage == "concepts":
            # beside the weights: world/concepts for the shipped world, OUT/../concepts for any other OUT
            write_concepts(args.out.parent / "concepts")
        elif stage == "assemble":
            assemble(args.work, args.out)
        else:
            from world.quality import main as quality

            quality(args.out, steps=args.quality_steps)
        log(f"stage {stage} done in {time.time() - s0:.0f}s")
    log(f"total {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
