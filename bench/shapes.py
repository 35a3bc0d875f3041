"""Random-weight components for benchmarking, built in memory (speed does not depend on weight values).

Two profiles:
  sd15  SD 1.5's exact architecture (UNet 320/640/1280/1280, CLIP-L text encoder 12x768, the SD VAE)
        at 512 px: what a GPU benchmark measures.
  mini  the same architecture scaled down in width (UNet 32/64/128/128, 4-level VAE, 128 px, 16x16
        latent) so a CPU run finishes in minutes while the VAE/UNet/text-encoder cost ratios stay
        SD-like (the VAE is what cached latents save, so a toy VAE would flatter nobody).
  tiny  tests/tiny_components.py's shapes (for tests).

The tokenizer is tests/tiny_components.py's small BPE, padded with filler entries to CLIP's 49408-token vocabulary so
the reference loop's AdamW over the whole embedding matrix costs what it costs on a real model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sweeper.models import Components, ModelSource

CLIP_VOCAB = 49408


@dataclass(frozen=True)
class Profile:
    name: str
    unet_channels: tuple[int, ...]
    unet_layers: int
    unet_heads: int
    text_hidden: int
    text_layers: int
    text_heads: int
    vae_channels: tuple[int, ...]
    vae_layers: int
    resolution: int
    norm_groups: int = 32
    vocab: int = CLIP_VOCAB

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)


PROFILES = {
    "sd15": Profile("sd15", (320, 640, 1280, 1280), 2, 8, 768, 12, 12, (128, 256, 512, 512), 2, 512),
    "mini": Profile("mini", (32, 64, 128, 128), 2, 8, 64, 4, 4, (16, 32, 64, 64), 2, 128, norm_groups=8),
    "tiny": Profile("tiny", (32, 64), 1, 8, 32, 2, 2, (16, 32), 1, 32, norm_groups=8, vocab=0),
}


def padded_tokenizer(vocab_size: int):
    """tests/tiny_components.py's BPE tokenizer with filler tokens appended so that len(tokenizer) == vocab_size."""
    from tiny_components import WORDS
    from transformers import CLIPTokenizer

    from sweeper.world.bpe import SPECIAL, train_bpe

    vocab, merges = train_bpe(WORDS)
    for tok in SPECIAL:  # specials go last, as in CLIP
        vocab.pop(tok)
    for i in range(len(vocab), vocab_size - len(SPECIAL)):
        vocab[f"<filler{i}>"] = i
    for tok in SPECIAL:
        vocab[tok] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_components(
    profile: str | Profile = "mini",
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    seed: int = 0,
) -> Components:
    """Frozen random components shaped like `profile`, as sweeper.models.load_components returns them."""
    from diffusers import PNDMScheduler
    from tiny_components import build_tokenizer

    from sweeper.models import resolve_dtype

    p = PROFILES[profile] if isinstance(profile, str) else profile
    dtype = resolve_dtype(precision)
    device = torch.device(device)
    tokenizer = padded_tokenizer(p.vocab) if p.vocab else build_tokenizer()
    n = len(tokenizer)
    torch.manual_seed(seed)
    text_encoder, unet, vae = build_text_encoder(p, n), build_unet(p), build_vae(p)
    # SD 1.5 ships PNDM; trainers and samplers derive theirs with from_config, as with a real model.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        skip_prk_steps=True,
        set_alpha_to_one=False,
    )
    for module in (text_encoder, unet, vae):
        module.requires_grad_(False)
        module.eval()
    text_encoder.to(device)
    unet.to(device, dtype=dtype)
    vae.to(device, dtype=torch.float32 if dtype == torch.float16 else dtype)
    return Components(
        source=ModelSource(f"random:{p.name}", "memory", False),
        tokenizers=[tokenizer],
        text_encoders=[text_encoder],
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        dtype=dtype,
        device=device,
        resolution=p.resolution,
    )


def build_text_encoder(p: Profile, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=p.text_hidden,
            intermediate_size=4 * p.text_hidden,
            num_hidden_layers=p.text_layers,
            num_attention_heads=p.text_heads,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        )
    )


def build_unet(p: Profile):
    from diffusers import UNet2DConditionModel

    levels = len(p.unet_channels)
    return UNet2DConditionModel(
        sample_size=p.latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=p.unet_layers,
        block_out_channels=p.unet_channels,
        attention_head_dim=p.unet_heads,
        norm_num_groups=p.norm_groups,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=p.text_hidden,
    )


def build_vae(p: Profile):
    from diffusers import AutoencoderKL

    levels = len(p.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=p.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=p.vae_layers,
        norm_num_groups=p.norm_groups,
        sample_size=p.resolution,
    )


def concept_pixels(n: int, resolution: int, seed: int = 0) -> torch.Tensor:
    """`n` images in [-1, 1], [n, 3, res, res]: a bright square on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, resolution, resolution, generator=g) * 0.4 - 1.0
    lo, hi = resolution // 4, 3 * resolution // 4
    x[:, :, lo:hi, lo:hi] = torch.rand(n, 3, 1, 1, generator=g) * 0.8 + 0.2
    return x


# SDXL base 1.0's UNet/encoders at full width ("sdxl") or cut down for a CPU smoke run ("sdxl-mini").
SDXL = {
    "sdxl": dict(
        channels=(320, 640, 1280),
        transformer_layers=(1, 2, 10),
        heads=(5, 10, 20),
        te1=(768, 12, 12),
        te2=(1280, 32, 20),
        time_dim=256,
        vae=(128, 256, 512, 512),
        groups=32,
        resolution=1024,
    ),
    "sdxl-mini": dict(
        channels=(32, 64, 128),
        transformer_layers=(1, 1, 2),
        heads=(2, 2, 4),
        te1=(32, 2, 2),
        te2=(48, 2, 2),
        time_dim=8,
        vae=(16, 32, 64, 64),
        groups=8,
        resolution=128,
    ),
}


def build_sdxl_components(
    size: str = "sdxl", device: str | torch.device = "cpu", precision: str = "bf16", seed: int = 0
) -> Components:
    """SDXL-shaped random components (two text encoders, text_time conditioning), as load_components returns."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from sweeper.models import resolve_dtype

    s, dtype, device = SDXL[size], resolve_dtype(precision), torch.device(device)
    tokenizers = [padded_tokenizer(CLIP_VOCAB), padded_tokenizer(CLIP_VOCAB)]
    torch.manual_seed(seed)
    h1, h2 = s["te1"][0], s["te2"][0]
    te1 = build_text_encoder(Profile("te1", (), 0, 0, h1, s["te1"][1], s["te1"][2], (), 0, 0), CLIP_VOCAB)
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB,
            hidden_size=h2,
            intermediate_size=4 * h2,
            num_hidden_layers=s["te2"][1],
            num_attention_heads=s["te2"][2],
            max_position_embeddings=77,
            hidden_act="gelu",
            projection_dim=h2,
            bos_token_id=CLIP_VOCAB - 2,
            eos_token_id=CLIP_VOCAB - 1,
            pad_token_id=CLIP_VOCAB - 1,
        )
    )
    latent = s["resolution"] // 8
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=s["channels"],
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=s["transformer_layers"],
        attention_head_dim=s["heads"],
        cross_attention_dim=h1 + h2,
        use_linear_projection=True,
        norm_num_groups=s["groups"],
        addition_embed_type="text_time",
        addition_time_embed_dim=s["time_dim"],
        projection_class_embeddings_input_dim=h2 + 6 * s["time_dim"],
    )
    v = s["vae"]
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=v,
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * len(v),
        up_block_types=("UpDecoderBlock2D",) * len(v),
        norm_num_groups=s["groups"],
        sample_size=s["resolution"],
        scaling_factor=0.13025,
    )
    with torch.device("cpu"):  # schedulers keep CPU tables, also when the modules are built on "meta"
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            num_train_timesteps=1000,
            steps_offset=1,
            timestep_spacing="leading",
        )
    for module in (te1, te2, unet, vae):
        module.requires_grad_(False)
        module.eval()
    te1.to(device)
    te2.to(device)
    unet.to(device, dtype=dtype)
    vae.to(device, dtype=torch.float32 if dtype == torch.float16 else dtype)
    return Components(
        source=ModelSource(f"random:{size}", "memory", True),
        tokenizers=tokenizers,
        text_encoders=[te1, te2],
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        dtype=dtype,
        device=device,
        resolution=s["resolution"],
    )
