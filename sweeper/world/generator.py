"""The world's SD-format generator (sweeper/world/train.py stages vae, generator, generator2, generator3): AutoencoderKL,
then UNet2DConditionModel + CLIPTextModel trained jointly on cached latents, with SD 1.5's scheduler config."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sweeper.store import atomic
from sweeper.world import draw
from sweeper.world.tokenizer import MAX_LENGTH, FastIds, build_tokenizer
from sweeper.world.trainset import load_data, log, lr_at, set_lr, to_unit

# Lazy imports: diffusers and transformers are imported where the components are built (import time of the world).


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=draw.SIZE,
        mid_block_add_attention=False,
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two [-1, 1] image batches."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def held_out_images(n: int, seed: int) -> tuple[torch.Tensor, list[draw.Spec]]:
    """Photos of held-out attribute combinations (no model trains on these)."""
    rng = np.random.default_rng(seed)
    combos = sorted(draw.held_out_combos())
    specs = [
        draw.Spec(
            *combos[i % len(combos)],
            size=draw.SIZES[rng.integers(2)],
            x=float(rng.random()),
            y=float(rng.random()),
        )
        for i in range(n)
    ]
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
        means = torch.cat(
            [
                vae.encode(to_unit(images[i : i + 256])).latent_dist.mean
                for i in range(0, min(4096, len(images)), 256)
            ]
        )
        vae.register_to_config(scaling_factor=float(1 / means.std()))
        test, _ = held_out_images(512, cfg["seed"] + 1)
        x = to_unit(test)
        score = psnr(vae.decode(vae.encode(x).latent_dist.mean).sample, x)
    log(f"vae: held-out PSNR {score:.2f} dB, scaling_factor {vae.config.scaling_factor:.4f}")
    with atomic.directory(work / "vae") as tmp:
        vae.save_pretrained(tmp)
        atomic.write_json(tmp / "stats.json", {"psnr_db": score, "seconds": time.time() - t0})


def build_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            projection_dim=64,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )


def build_unet():
    from diffusers import UNet2DConditionModel

    # Attention only at 8x8 and 4x4: the attributes are global and 16x16 self-attention is most of the cost.
    return UNet2DConditionModel(
        sample_size=draw.SIZE // 2,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 128),
        norm_num_groups=16,
        cross_attention_dim=64,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )


def build_scheduler():
    from diffusers import PNDMScheduler

    # SD 1.5's scheduler config, clip_sample=false included: DDIM/DDPM built from it would otherwise
    # clip x0 predictions to [-1, 1], which destroys latents of unit variance.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
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
        texts = [
            draw.caption(specs[i], rng) if rng.random() >= cfg["caption_dropout"] else ""
            for i in idx.tolist()
        ]
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
            atomic.torch_save(
                {
                    "unet": unet.state_dict(),
                    "text_encoder": text_encoder.state_dict(),
                    "opt": opt.state_dict(),
                    "gen": gen.get_state(),
                    "rng": rng.bit_generator.state,
                    "step": step + 1,
                },
                ckpt,
            )
    with atomic.directory(work / name) as tmp:
        unet.eval().save_pretrained(tmp / "unet")
        text_encoder.eval().save_pretrained(tmp / "text_encoder")
        atomic.write_json(tmp / "stats.json", {"seconds_this_run": time.time() - t0, "steps": total})
    ckpt.unlink(missing_ok=True)
