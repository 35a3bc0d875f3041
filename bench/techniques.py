"""Each speed technique switched on alone over the reference loop, so its worth is measured, not assumed.

A `Variant` is the reference loop (bench/reference.py) with one or more of:
  cache_latents  encode every image (and its mirror image) once; each step samples from the cached
                 posterior (mean + std * noise), which is what encoding every step draws from
  sparse_rows    AdamW over the placeholder rows only (a [k, dim] parameter spliced into the
                 embedding output by a forward hook) instead of the whole matrix with rows restored
  autocast       bf16 autocast around the text encoder and UNet (fp32 master rows)
  math_attention the pre-2.0 attention (explicit softmax(QK^T)V) instead of PyTorch SDPA
  channels_last  UNet weights and activations in NHWC
  compile        torch.compile on the UNet
A variant that changes the UNet gets its own deep copy, so variants never disturb one another.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from bench.reference import IMAGENET_TEMPLATES_SMALL, ReferenceLoop
from sweeper.models import Components

TECHNIQUES = ("cache_latents", "sparse_rows", "autocast", "math_attention", "channels_last", "compile")


class Variant(ReferenceLoop):
    def __init__(self, components: Components, pixels: torch.Tensor, techniques: tuple[str, ...] = (), **kw):
        unknown = set(techniques) - set(TECHNIQUES)
        if unknown:
            raise ValueError(f"unknown technique(s) {sorted(unknown)}; known: {', '.join(TECHNIQUES)}")
        super().__init__(components, pixels, **kw)
        self.techniques = set(techniques)
        if self.techniques & {"math_attention", "channels_last", "compile"}:
            self.unet = copy.deepcopy(self.unet)
            if "math_attention" in self.techniques:
                from diffusers.models.attention_processor import AttnProcessor

                self.unet.set_attn_processor(AttnProcessor())
            if "channels_last" in self.techniques:
                self.unet.to(memory_format=torch.channels_last)
            if "compile" in self.techniques:
                self.unet = torch.compile(self.unet)
        if "cache_latents" in self.techniques:
            with torch.no_grad():
                both = torch.cat([self.pixels, self.pixels.flip(-1)])
                dist = self.vae.encode(both.to(self.vae.dtype)).latent_dist
                self.lat_mean, self.lat_std = dist.mean, dist.std
        if "sparse_rows" in self.techniques:
            emb = self.text_encoder.get_input_embeddings()
            emb.weight.requires_grad_(False)
            ids = torch.tensor(self.placeholder_ids, device=self.device)
            self.rows = torch.nn.Parameter(emb.weight[ids].detach().clone())
            self.row_of = torch.full((emb.weight.shape[0],), -1, dtype=torch.long, device=self.device)
            self.row_of[ids] = torch.arange(len(ids), device=self.device)
            emb.register_forward_hook(self._splice)
            self.optimizer = torch.optim.AdamW(
                [self.rows], lr=self.optimizer.defaults["lr"], betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8
            )

    def _splice(self, module, args, out):
        which = self.row_of[args[0]]
        return torch.where((which >= 0)[..., None], self.rows[which.clamp(min=0)].to(out.dtype), out)

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        if "cache_latents" not in self.techniques:
            return self.vae.encode(images.to(self.vae.dtype)).latent_dist.sample(self.gen).detach()
        # self._idx: the rows _batch picked (image i, or i + n for its mirror image)
        mean, std = self.lat_mean[self._idx], self.lat_std[self._idx]
        return mean + std * torch.randn(mean.shape, generator=self.gen, device=self.device, dtype=mean.dtype)

    def _batch(self):
        idx = [self.rng.randrange(len(self.pixels)) for _ in range(self.batch_size)]
        flips = [self.rng.random() < self.flip_p for _ in idx]
        self._idx = torch.tensor([i + len(self.pixels) * f for i, f in zip(idx, flips)], device=self.device)
        images = torch.stack([self.pixels[i].flip(-1) if f else self.pixels[i] for i, f in zip(idx, flips)])
        prompts = [self.rng.choice(IMAGENET_TEMPLATES_SMALL).format(self.placeholder_string) for _ in idx]
        return images, self._tokenize(prompts)

    def step(self) -> float:
        images, input_ids = self._batch()
        weight_dtype = self.unet.dtype
        latents = (self._latents(images) * self.vae.config.scaling_factor).to(weight_dtype)
        noise = torch.randn(latents.shape, generator=self.gen, device=self.device, dtype=latents.dtype)
        timesteps = torch.randint(
            0,
            self.noise_scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=self.gen,
            device=self.device,
        ).long()
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if "channels_last" in self.techniques:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled="autocast" in self.techniques):
            context = self.text_encoder(input_ids)[0].to(weight_dtype)
            pred = self.unet(noisy, timesteps, context).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        if "sparse_rows" not in self.techniques:
            with torch.no_grad():
                weight = self.text_encoder.get_input_embeddings().weight
                weight[self.keep] = self.orig_embeds[self.keep]
        return loss.detach().item()

    @property
    def learned(self) -> torch.Tensor:
        if "sparse_rows" in self.techniques:
            return self.rows.detach().cpu()
        return super().learned
