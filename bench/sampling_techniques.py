"""The evaluation's sampling techniques, each switched off alone, so their worth is measured, not read off the code.

Every case draws the same `n` images of one prompt (same scheduler, steps, guidance and initial noise):
  ours                 sweeper.evaluation.sampling.Sampler: guidance as one [uncond; cond] UNet batch, the unconditional
                       and the prompt's embedding computed once, batches of `batch`
  small batches        the same at batch 4 (the paper's code samples 4 at a time)
  guidance two passes  unconditional and conditional UNet calls one after the other
  text per batch       the prompt and the unconditional embedding re-encoded for every batch (batch 4)
  diffusers pipe()     StableDiffusionPipeline.__call__ with the same DDIM scheduler, one call per batch of 4
Each is timed against the case that differs from it in that one technique (BASELINE).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from bench import harness
from sweeper.evaluation.sampling import Conditioning, Sampler, initial_noise


class TwoPassGuidance(Sampler):
    def _denoise(self, noise: torch.Tensor, cond: Conditioning):
        b, unet, sched = noise.shape[0], self.pipe.unet, self.scheduler
        sched.set_timesteps(self.steps, device=self.device)
        latents = noise.to(self.device) * sched.init_noise_sigma
        uncond = self.uncond.embeds.expand(b, -1, -1).to(self.device, unet.dtype)
        context = cond.embeds.expand(b, -1, -1).to(self.device, unet.dtype)
        extra = {"eta": self.eta} if self.takes_eta else {}
        for t in sched.timesteps:
            x = sched.scale_model_input(latents, t).to(unet.dtype)
            eps_uncond = unet(x, t, encoder_hidden_states=uncond).sample.float()
            eps_cond = unet(x, t, encoder_hidden_states=context).sample.float()
            latents = sched.step(
                eps_uncond + self.guidance * (eps_cond - eps_uncond), t, latents, **extra
            ).prev_sample
        return self.decode(latents)


class TextPerBatch(Sampler):
    @torch.no_grad()
    def sample(self, prompt: str, n: int, noise_key: str, desc: str | None = None):
        images = []
        for start in range(0, n, self.batch_size):
            self.uncond = self.encode("")
            idx = range(start, min(start + self.batch_size, n))
            images.extend(
                self._denoise(
                    initial_noise(self.latent_shape, self.seed, noise_key, idx), self.encode(prompt)
                )
            )
        return images


def pipe_call(pipe, sampler: Sampler, prompt: str, n: int, batch: int) -> list:
    """diffusers' own loop, with `sampler`'s scheduler and fed the same initial noise."""
    images, own = [], pipe.scheduler
    pipe.scheduler = sampler.scheduler
    try:
        for start in range(0, n, batch):
            idx = range(start, min(start + batch, n))
            latents = initial_noise(sampler.latent_shape, sampler.seed, "bench", idx)
            out = pipe(
                prompt,
                num_inference_steps=sampler.steps,
                guidance_scale=sampler.guidance,
                eta=sampler.eta,
                negative_prompt="",
                num_images_per_prompt=len(idx),
                latents=latents.to(sampler.device, pipe.unet.dtype),
                output_type="np",
            )
            images.extend(out.images)
    finally:
        pipe.scheduler = own
    return images


def cases(pipe, prompt: str, n: int, steps: int, batch: int) -> dict[str, Callable[[], list]]:
    kw = dict(sampler="ddim", steps=steps, guidance=5.0, eta=0.0, negative_prompt="", progress=False)
    ours, small = Sampler(pipe, batch_size=batch, **kw), Sampler(pipe, batch_size=4, **kw)
    two_pass, per_batch = (
        TwoPassGuidance(pipe, batch_size=batch, **kw),
        TextPerBatch(pipe, batch_size=4, **kw),
    )
    return {
        "ours": lambda: ours.sample(prompt, n, "bench"),
        "small batches (4)": lambda: small.sample(prompt, n, "bench"),
        "guidance two passes": lambda: two_pass.sample(prompt, n, "bench"),
        "text per batch (batch 4)": lambda: per_batch.sample(prompt, n, "bench"),
        "diffusers pipe() (batch 4)": lambda: pipe_call(pipe, small, prompt, n, 4),
    }


# Each case against the case that differs from it in that one technique only.
BASELINE = {
    "small batches (4)": "ours",
    "guidance two passes": "ours",
    "text per batch (batch 4)": "small batches (4)",
    "diffusers pipe() (batch 4)": "small batches (4)",
}


def _pixels(image) -> np.ndarray:
    x = np.asarray(image)  # PIL (uint8) from our sampler; [0, 1] floats from pipe(output_type="np")
    return x.astype(np.float32) if x.dtype == np.uint8 else x.astype(np.float32) * 255


def max_pixel_difference(a: list, b: list) -> float:
    """Largest difference (0-255 scale) between two cases' images: a technique must not change the samples."""
    return max(float(np.abs(_pixels(x) - _pixels(y)).max()) for x, y in zip(a, b))


def measure(pipe, ev, device: torch.device, repeats: int) -> dict:
    """Images/s of every case, interleaved, at the protocol `ev`'s steps and batch size (DDIM)."""
    n = max(ev.batch_size, 8)
    timed = cases(pipe, "a photo of <bench>", n, ev.steps, ev.batch_size)
    images = {name: fn() for name, fn in timed.items()}  # also the warm-up round
    times = harness.interleaved(timed, device, max(1, repeats // 2), warmup=0)
    med = {name: harness.median(t) for name, t in times.items()}
    return {
        "images": n,
        "steps": ev.steps,
        "batch": ev.batch_size,
        "cases": {
            name: {
                "images_per_s": n / med[name],
                "baseline": BASELINE.get(name),
                "technique_speedup": med[name] / med[BASELINE[name]] if name in BASELINE else 1.0,
                "max_pixel_difference": max_pixel_difference(images["ours"], images[name]),
            }
            for name in times
        },
    }
