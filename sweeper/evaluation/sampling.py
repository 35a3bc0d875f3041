"""Batched sampling with classifier-free guidance and common random numbers.

Our own loop on the pipeline's components (not `pipe(...)`), so that:
- the unconditional embedding is computed once per model and reused for every batch;
- guidance runs in one batch: [uncond; cond] through the UNet together;
- the initial noise of sample i of prompt template p is drawn from a CPU generator seeded by
  (seed, p, i), so every run of a sweep starts sample i from the same noise whatever its
  embedding, batch size or device (common random numbers);
- latents stay fp32 between steps and are cast to `vae.dtype` before decoding (the VAE stays fp32
  under fp16, see models.py).

SD 1.x/2.x and SDXL (two encoders, pooled embeddings, add_time_ids) share the loop.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from sweeper.console import progress_lines_only
from sweeper.evaluation.clip_score import require_finite
from sweeper.store import atomic

# Lazy imports: diffusers' schedulers are imported where built: CLI start-up and config refusals stay fast.

SAMPLERS = ("ddim", "dpmsolver++", "unipc", "euler")


def make_scheduler(pipe, sampler: str):
    """A fresh scheduler of kind `sampler` built from the model's own scheduler config (same betas)."""
    from diffusers import (
        DDIMScheduler,
        DPMSolverMultistepScheduler,
        EulerDiscreteScheduler,
        UniPCMultistepScheduler,
    )

    config = pipe.scheduler.config
    if sampler == "ddim":  # latent diffusion never clips x0 to [-1, 1] (DDIMScheduler's default would)
        return DDIMScheduler.from_config(config, clip_sample=False)
    if sampler == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if sampler == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(config)
    raise ValueError(f"evaluation.sampler={sampler!r}: choose one of {', '.join(SAMPLERS)}")


def noise_seed(seed: int, key: str, index: int) -> int:
    """A stable 63-bit seed for sample `index` of prompt `key` (same in every process and run)."""
    digest = hashlib.sha256(f"{seed}|{key}|{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def initial_noise(shape: tuple[int, ...], seed: int, key: str, indices: range | list[int]) -> torch.Tensor:
    """Unit Gaussian noise [len(indices), *shape], one CPU generator per sample (device independent)."""
    out = []
    for i in indices:
        gen = torch.Generator("cpu").manual_seed(noise_seed(seed, key, i))
        out.append(torch.randn(shape, generator=gen, dtype=torch.float32))
    return torch.stack(out)


@dataclass
class Conditioning:
    embeds: torch.Tensor  # [1, seq, dim]
    pooled: torch.Tensor | None = None  # SDXL: [1, proj]


class Sampler:
    """Draws `n` images of one prompt: `Sampler(pipe, ...).sample(prompt, n, noise_key)`."""

    def __init__(
        self,
        pipe,
        *,
        sampler: str = "ddim",
        steps: int = 50,
        guidance: float = 5.0,
        eta: float = 0.0,
        negative_prompt: str | None = "",
        batch_size: int = 8,
        seed: int = 0,
        progress: bool = True,
    ):
        self.pipe = pipe
        self.scheduler = make_scheduler(pipe, sampler)
        self.steps, self.guidance, self.eta = int(steps), float(guidance), float(eta)
        self.batch_size, self.seed, self.progress = int(batch_size), int(seed), progress
        self.device = pipe.unet.device
        self.is_sdxl = getattr(pipe, "text_encoder_2", None) is not None
        self.takes_eta = "eta" in inspect.signature(self.scheduler.step).parameters
        size = pipe.unet.config.sample_size
        self.latent_shape = (pipe.unet.config.in_channels, size, size)
        self.resolution = int(size * pipe.vae_scale_factor)
        self.uncond = self._uncond(negative_prompt)  # once per model

    @torch.no_grad()
    def encode(self, prompt: str) -> Conditioning:
        """Text conditioning of one prompt; diffusers expands multi-vector placeholder tokens here."""
        if self.is_sdxl:
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompt, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return Conditioning(embeds.float(), pooled.float())
        embeds, _ = self.pipe.encode_prompt(prompt, self.device, 1, False)
        return Conditioning(embeds.float())

    def _uncond(self, negative_prompt: str | None) -> Conditioning:
        # None = the model's own convention: SDXL zeroes the unconditional input (force_zeros_for_empty_prompt).
        if (
            negative_prompt is None
            and self.is_sdxl
            and self.pipe.config.get("force_zeros_for_empty_prompt", False)
        ):
            cond = self.encode("")
            return Conditioning(torch.zeros_like(cond.embeds), torch.zeros_like(cond.pooled))
        return self.encode(negative_prompt or "")

    @torch.no_grad()
    def sample(
        self, prompt: str, n: int, noise_key: str, desc: str | None = None, start: int = 0
    ) -> list[Image.Image]:
        """`n` images of `prompt`, samples start .. start+n-1; sample i starts from the noise of
        (seed, noise_key, i), so rounds of an adaptive evaluation continue the fixed sequence."""
        cond = self.encode(prompt)
        images: list[Image.Image] = []
        bar = tqdm(
            total=n,
            desc=desc or prompt[:40],
            unit="img",
            leave=False,
            disable=not self.progress or progress_lines_only(),  # TQDM_DISABLE: a parallel sweep's worker
        )
        for first in range(start, start + n, self.batch_size):
            idx = range(first, min(first + self.batch_size, start + n))
            noise = initial_noise(self.latent_shape, self.seed, noise_key, idx)
            images.extend(self._denoise(noise, cond))
            bar.update(len(idx))
        bar.close()
        return images

    def _denoise(self, noise: torch.Tensor, cond: Conditioning) -> list[Image.Image]:
        b = noise.shape[0]
        unet = self.pipe.unet
        sched = self.scheduler
        sched.set_timesteps(self.steps, device=self.device)  # also resets multistep solvers' history
        latents = noise.to(self.device) * sched.init_noise_sigma
        context = torch.cat([self.uncond.embeds.expand(b, -1, -1), cond.embeds.expand(b, -1, -1)])
        context = context.to(self.device, unet.dtype)
        added = None
        if self.is_sdxl:
            assert self.uncond.pooled is not None and cond.pooled is not None  # SDXL prompts carry one
            r = self.resolution
            time_ids = torch.tensor([[r, r, 0, 0, r, r]], device=self.device, dtype=unet.dtype).expand(
                2 * b, -1
            )
            pooled = torch.cat([self.uncond.pooled.expand(b, -1), cond.pooled.expand(b, -1)])
            added = {"text_embeds": pooled.to(self.device, unet.dtype), "time_ids": time_ids}
        extra = {"eta": self.eta} if self.takes_eta else {}
        for t in sched.timesteps:
            x = sched.scale_model_input(torch.cat([latents, latents]), t)
            eps = unet(
                x.to(unet.dtype), t, encoder_hidden_states=context, added_cond_kwargs=added
            ).sample.float()
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + self.guidance * (eps_cond - eps_uncond)
            latents = sched.step(eps, t, latents, **extra).prev_sample
        return self.decode(latents)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.pipe.vae
        latents = latents / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            latents = latents + vae.config.shift_factor
        pixels = require_finite(
            vae.decode(latents.to(vae.device, vae.dtype)).sample.float(), "decoded samples"
        )
        pixels = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return [Image.fromarray((p * 255).round().astype(np.uint8)) for p in pixels]


def slug(template: str) -> str:
    """File-name form of a prompt template: 'a photo of {} on the moon' -> 'a-photo-of-S-on-the-moon'."""
    text = re.sub(r"[^A-Za-z0-9]+", "-", template.replace("{}", "S")).strip("-")
    return text[:80] or "prompt"


def grid(images: list[Image.Image], max_images: int = 16, tile: int = 256) -> Image.Image:
    """The first `max_images` images as a near-square grid, tiles at most `tile` pixels wide."""
    images = images[:max_images]
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    scale = min(1.0, tile / w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = Image.new("RGB", (cols * tw, rows * th), "white")
    for k, im in enumerate(images):
        canvas.paste(im.resize((tw, th), Image.BICUBIC), ((k % cols) * tw, (k // cols) * th))
    return canvas


def save_grid(images: list[Image.Image], path: Path, max_images: int = 16, tile: int = 256) -> Path:
    buf = io.BytesIO()
    grid(images, max_images, tile).save(buf, format="PNG")
    return atomic.write_bytes(path, buf.getvalue())


def slugs(templates: list[str]) -> dict[str, str]:
    """A distinct file name per template (never 'reconstruction', the reconstruction grid's name)."""
    names: dict[str, str] = {}
    for t in templates:
        name, k = slug(t), 2
        while name in names.values() or name == "reconstruction":
            name, k = f"{slug(t)}-{k}", k + 1
        names[t] = name
    return names
