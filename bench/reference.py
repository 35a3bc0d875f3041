"""The reference: textual inversion trained the way diffusers' examples/textual_inversion does it.

What makes it the baseline (each is what the example does, on purpose):
- the VAE encodes the training images at every step (no latent cache);
- everything runs in fp32 (no autocast);
- AdamW (weight decay 1e-2) optimises the WHOLE token-embedding matrix, and after every step the
  rows that are not placeholders are copied back from a saved original (diffusers #507/#1009/#1176);
- the prompt is drawn from the 27 "imagenet_templates_small" and tokenised every step;
- DDPM noise schedule from the model's scheduler config, epsilon target, MSE loss.

- given image files, each step decodes, resizes (bicubic) and flips its images with PIL in the training
  process, as the example's dataset does with its default --dataloader_num_workers=0 (given a pixel
  tensor instead, that cost is skipped: the tests use this).
Random draws come from one
torch.Generator so runs are repeatable. The tokenizer and text encoder are deep-copied so that this
loop never disturbs the components another trainer is using (the UNet and VAE are shared).
"""

from __future__ import annotations

import copy
import random

import torch
import torch.nn.functional as F

from sweeper.data.templates import OBJECT_TEMPLATES
from sweeper.models import Components

# the diffusers example's imagenet_templates_small: the official list's first 27 (the photo templates)
IMAGENET_TEMPLATES_SMALL = OBJECT_TEMPLATES[:27]


class ReferenceLoop:
    """One textual-inversion run, diffusers-example style. `step()` is one optimisation step."""

    def __init__(
        self,
        components: Components,
        images: torch.Tensor | list,
        *,
        placeholder: str = "<ref>",
        init_word: str = "toy",
        num_vectors: int = 1,
        batch_size: int = 4,
        lr: float = 5e-3,
        flip_p: float = 0.5,
        seed: int = 0,
    ):
        from diffusers import DDPMScheduler

        if components.is_sdxl:
            raise ValueError("the reference loop follows the SD 1.x/2.x example (one text encoder)")
        self.device = components.device
        self.unet, self.vae = components.unet, components.vae
        self.tokenizer = copy.deepcopy(components.tokenizers[0])
        self.text_encoder = copy.deepcopy(components.text_encoders[0]).to(self.device, torch.float32)
        self.noise_scheduler = DDPMScheduler.from_config(components.scheduler.config)
        if isinstance(images, torch.Tensor):
            self.paths, self.pixels = None, images.to(self.device, torch.float32)
        else:
            self.paths, self.pixels = list(images), None
        self.n_images = len(images)
        self.resolution = components.resolution
        self.batch_size, self.flip_p = batch_size, flip_p
        self.rng = random.Random(seed)
        self.gen = torch.Generator(self.device).manual_seed(seed)

        tokens = [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]
        if self.tokenizer.add_tokens(tokens) != num_vectors:
            raise ValueError(f"placeholder {placeholder!r} is already in the tokenizer: pick another")
        init_ids = self.tokenizer.encode(init_word, add_special_tokens=False)
        if len(init_ids) != 1:
            raise ValueError(f"init word {init_word!r} must be a single token, got {len(init_ids)}")
        self.placeholder_ids = self.tokenizer.convert_tokens_to_ids(tokens)
        self.placeholder_string = " ".join(tokens)
        self.text_encoder.resize_token_embeddings(len(self.tokenizer))
        embeds = self.text_encoder.get_input_embeddings().weight
        with torch.no_grad():
            embeds[self.placeholder_ids] = embeds[init_ids[0]].clone()
        # Freeze all but the token embeddings, as the example does.
        self.text_encoder.requires_grad_(False)
        embeds.requires_grad_(True)
        self.text_encoder.train()
        self.optimizer = torch.optim.AdamW([embeds], lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        self.orig_embeds = embeds.detach().clone()
        self.keep = torch.ones(len(self.tokenizer), dtype=torch.bool, device=self.device)
        self.keep[min(self.placeholder_ids) : max(self.placeholder_ids) + 1] = False

    def _load(self, i: int, flip: bool) -> torch.Tensor:
        """The example's TextualInversionDataset.__getitem__ image path (PIL; mirror instead of torchvision)."""
        import numpy as np
        from PIL import Image, ImageOps

        if self.pixels is not None:
            return self.pixels[i].flip(-1) if flip else self.pixels[i]
        image = Image.open(self.paths[i])
        if image.mode != "RGB":
            image = image.convert("RGB")
        image = Image.fromarray(np.array(image).astype(np.uint8))
        image = image.resize((self.resolution, self.resolution), resample=Image.Resampling.BICUBIC)
        if flip:
            image = ImageOps.mirror(image)
        image = (np.array(image).astype(np.uint8) / 127.5 - 1.0).astype(np.float32)
        return torch.from_numpy(image).permute(2, 0, 1).to(self.device)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = [self.rng.randrange(self.n_images) for _ in range(self.batch_size)]
        flips = [self.rng.random() < self.flip_p for _ in idx]
        images = torch.stack([self._load(i, f) for i, f in zip(idx, flips)])
        prompts = [self.rng.choice(IMAGENET_TEMPLATES_SMALL).format(self.placeholder_string) for _ in idx]
        return images, self._tokenize(prompts)

    def _tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = [
            self.tokenizer(
                p,
                padding="max_length",
                truncation=True,
                max_length=self.tokenizer.model_max_length,
                return_tensors="pt",
            ).input_ids[0]
            for p in prompts
        ]  # one call per example
        return torch.stack(ids).to(self.device)

    def step(self) -> float:
        images, input_ids = self._batch()
        weight_dtype = self.unet.dtype
        latents = self.vae.encode(images.to(self.vae.dtype)).latent_dist.sample(self.gen).detach()
        latents = (latents * self.vae.config.scaling_factor).to(weight_dtype)
        noise = torch.randn(latents.shape, generator=self.gen, device=self.device, dtype=latents.dtype)
        timesteps = torch.randint(
            0,
            self.noise_scheduler.config.num_train_timesteps,
            (latents.shape[0],),
            generator=self.gen,
            device=self.device,
        ).long()
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)
        encoder_hidden_states = self.text_encoder(input_ids)[0].to(weight_dtype)
        model_pred = self.unet(noisy_latents, timesteps, encoder_hidden_states).sample
        loss = F.mse_loss(model_pred.float(), noise.float(), reduction="mean")
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            weight = self.text_encoder.get_input_embeddings().weight
            weight[self.keep] = self.orig_embeds[self.keep]
        return loss.detach().item()  # the example logs it every step (a device sync on GPU)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    @property
    def learned(self) -> torch.Tensor:
        """The placeholder rows, [num_vectors, dim] (the `learned_embeds.safetensors` payload)."""
        return self.text_encoder.get_input_embeddings().weight[self.placeholder_ids].detach().cpu()
