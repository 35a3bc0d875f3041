"""Small random-weight SD-format components, saved with `save_pretrained` (test fixtures, not the library).

Tests, `make tiny` and bench's "tiny" shapes load these folders through exactly the `from_pretrained` path a user's
`stable-diffusion-v1-5/stable-diffusion-v1-5` takes. Nothing here is mocked: the UNet, VAE, CLIP text
encoder and tokenizer are the real diffusers/transformers classes, only small.

    python tests/tiny_components.py OUT_DIR [--sdxl] [--judge JUDGE_DIR] [--images IMAGES_DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sweeper.world.bpe import train_bpe

# Lazy imports: transformers and diffusers are imported where the components are built (import time).

# Words that become single tokens; anything else still tokenizes (into characters).
WORDS = """
a an the of in on at with by for and or to from is it its this that my one two three
photo picture rendition painting drawing sketch image style art artwork oil watercolor pencil
clean dirty dark bright small large big cool weird nice good close up cropped
cat dog toy teapot statue sculpture backpack bear clock vase shoe sneaker candle boot bowl can
person man woman child car tree house flower chair table cup book ball hat glasses box
moon beach jungle snow city street forest mountain water sea river desert field grass
sky space room kitchen floor rug wall background bucket basket
red blue green yellow purple black white orange pink brown gray grey shiny wet cube
holding sitting floating wearing top next front behind under inside elmo eiffel tower
""".split()


def build_tokenizer(words: list[str] | None = None):
    from transformers import CLIPTokenizer

    vocab, merges = train_bpe(words or WORDS)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _text_encoder(vocab_size: int, hidden: int, projection: int | None, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=projection or hidden,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def build_tiny_sd(out: str | Path, *, sdxl: bool = False, sample_size: int = 16, seed: int = 0) -> Path:
    """Save an SD 1.x-shaped (or SDXL-shaped: two text encoders) pipeline folder at `out`.

    Images are `sample_size * 2` pixels square (one VAE downsampling).
    """
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    out = Path(out)
    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer)
    text_encoder = _text_encoder(vocab_size, 32, None, seed)
    torch.manual_seed(seed + 1)
    unet_kwargs = dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4,
        norm_num_groups=8,
    )
    if sdxl:
        text_encoder_2 = _text_encoder(vocab_size, 48, 48, seed + 2)
        unet_kwargs.update(
            cross_attention_dim=32 + 48,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=48 + 6 * 8,
            transformer_layers_per_block=1,
        )
    else:
        unet_kwargs.update(cross_attention_dim=32)
    unet = UNet2DConditionModel(**unet_kwargs)
    torch.manual_seed(seed + 3)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=8,
        sample_size=sample_size * 2,
    )
    # The schedulers the real checkpoints ship (SD 1.5: PNDM; SDXL: Euler), same betas.
    betas = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if sdxl:
        scheduler = EulerDiscreteScheduler(**betas, steps_offset=1, timestep_spacing="leading")
    else:
        scheduler = PNDMScheduler(**betas, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    if sdxl:
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=build_tokenizer(),
            unet=unet,
            scheduler=scheduler,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.save_pretrained(out)
    return out


def build_tiny_clip(out: str | Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """Save a small transformers CLIPModel (+ tokenizer) usable as an evaluation judge."""
    build_clip(out, vision=(32, 2, 2, 64, image_size, 8), text=(32, 2, 2, 64), projection=32, seed=seed)
    return Path(out)


def build_clip(
    out: str | Path,
    *,
    vision: tuple[int, int, int, int, int, int],
    text: tuple[int, int, int, int],
    projection: int,
    seed: int = 0,
) -> int:
    """Save a random CLIPModel (+ this module's tokenizer and an image processor) as a judge folder; its parameter
    count. vision = (hidden, layers, heads, intermediate, image size, patch), text = (hidden, layers, heads,
    intermediate)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out = Path(out)
    tokenizer = build_tokenizer()
    vocab_size = len(tokenizer)
    hidden, layers, heads, inner, image_size, patch = vision
    t_hidden, t_layers, t_heads, t_inner = text
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=t_hidden,
            intermediate_size=t_inner,
            num_hidden_layers=t_layers,
            num_attention_heads=t_heads,
            max_position_embeddings=77,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        ),
        vision_config=dict(
            hidden_size=hidden,
            intermediate_size=inner,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            image_size=image_size,
            patch_size=patch,
        ),
        projection_dim=projection,
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(out)
    return sum(t.numel() for t in model.parameters())


def build_tiny_vit(out: str | Path, *, image_size: int = 32, patch: int = 8, seed: int = 0) -> Path:
    """Save a small random transformers ViTModel (DINO's architecture, ViT-S/16 in miniature) and its image
    processor: the DINO slot of evaluation.dreambench in tests."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=patch,
    )
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(out)
    ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(out)
    return Path(out)


def build_demo_images(out: str | Path, *, n: int = 5, size: int = 64, seed: int = 0) -> Path:
    """Write `n` procedural photos of one made-up concept (a two-tone disc with a bar) as PNGs.

    Each view moves, scales and recolours the background slightly, as photos of one object would.
    """

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        bg = tuple(int(c) for c in rng.integers(40, 200, 3))
        im = Image.new("RGB", (size, size), bg)
        draw = ImageDraw.Draw(im)
        r = size * rng.uniform(0.25, 0.35)
        cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(220, 60, 40))
        draw.pieslice([cx - r, cy - r, cx + r, cy + r], 180, 360, fill=(250, 200, 30))
        draw.rectangle([cx - r / 5, cy - 1.4 * r, cx + r / 5, cy - 0.8 * r], fill=(30, 30, 30))
        noise = rng.normal(0, 6, (size, size, 3))
        arr = np.clip(np.asarray(im, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(out / f"view_{i:02d}.png")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out")
    parser.add_argument("--sdxl", action="store_true")
    parser.add_argument("--judge", help="also save a small CLIP judge here")
    parser.add_argument("--images", help="also write a few procedural demo concept images here")
    args = parser.parse_args()
    print(f"saved {build_tiny_sd(args.out, sdxl=args.sdxl)}")
    if args.judge:
        print(f"saved {build_tiny_clip(args.judge)}")
    if args.images:
        print(f"saved {build_demo_images(args.images)}")


if __name__ == "__main__":
    main()
