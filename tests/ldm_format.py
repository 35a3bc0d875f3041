"""Write a diffusers pipeline folder as ONE original-layout (CompVis/Stability LDM) checkpoint file.

The test-side inverse of diffusers.loaders.single_file_utils (which reads LDM files): the key layout
follows diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py, with the block indices
derived from the UNet/VAE config instead of hard-coded to SD 1.5's 4 x 2 blocks, and modern diffusers
attention names (to_q, ..., to_out.0) in the VAE. Layout of the file:

    model.diffusion_model.*                         UNet (input_blocks / middle_block / output_blocks)
    first_stage_model.*                             VAE (encoder.down.N.block.M, mid.attn_1 as 1x1 convs, ...)
    cond_stage_model.transformer.text_model.*       SD 1.x: the HF CLIP text model
    conditioner.embedders.0.transformer.text_model.*  SDXL: CLIP-L, HF layout
    conditioner.embedders.1.model.*                   SDXL: OpenCLIP layout (resblocks, fused in_proj)

Also `build_sd15_shaped` / `build_sdxl_shaped`: tiny pipeline folders with those models' UNet and VAE
topology (small channels), so the file has the real models' key layout.
"""

from __future__ import annotations

from pathlib import Path

import torch

RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def _resnet(rest: str) -> str:
    for hf, sd in RESNET:
        if rest.startswith(hf + "."):
            return sd + rest[len(hf) :]
    raise KeyError(rest)


def unet_key(key: str, config: dict) -> str:
    """One diffusers UNet2DConditionModel key -> its LDM name (without the model.diffusion_model. prefix)."""
    lpb = config["layers_per_block"]
    parts = key.split(".")
    for n in (1, 2):  # conv_in.weight, time_embedding.linear_1.weight
        if ".".join(parts[:n]) in UNET_TOP:
            return UNET_TOP[".".join(parts[:n])] + "." + ".".join(parts[n:])
    if parts[0] == "down_blocks":
        b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        first = 1 + b * (lpb + 1)
        if kind == "resnets":
            return f"input_blocks.{first + j}.0.{_resnet(rest)}"
        if kind == "attentions":
            return f"input_blocks.{first + j}.1.{rest}"
        if kind == "downsamplers":  # down_blocks.b.downsamplers.0.conv.weight
            return f"input_blocks.{first + lpb}.0.op.{rest.removeprefix('conv.')}"
    if parts[0] == "up_blocks":
        b, kind, j, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        first = b * (lpb + 1)
        if kind == "resnets":
            return f"output_blocks.{first + j}.0.{_resnet(rest)}"
        if kind == "attentions":
            return f"output_blocks.{first + j}.1.{rest}"
        if kind == "upsamplers":  # after the block's last layer, behind its attention if it has one
            has_attn = "CrossAttn" in config["up_block_types"][b]
            return f"output_blocks.{first + lpb}.{2 if has_attn else 1}.{rest}"
    if parts[0] == "mid_block":
        kind, j, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_resnet(rest)}"
        if kind == "attentions":
            return f"middle_block.1.{rest}"
    raise KeyError(f"no LDM name for UNet key {key}")


VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def vae_key(key: str, config: dict) -> str:
    """One diffusers AutoencoderKL key -> its LDM name (without first_stage_model.)."""
    n_up = len(config["up_block_types"])
    for hf, sd in (("conv_norm_out", "norm_out"),):
        key = key.replace(hf, sd)
    parts = key.split(".")
    coder = parts[0]
    if len(parts) < 3 or parts[1] not in ("down_blocks", "up_blocks", "mid_block"):
        return key  # conv_in, conv_out, norm_out, quant_conv, post_quant_conv
    if parts[1] == "mid_block":
        kind, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"{coder}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
        for hf, sd in VAE_ATTN:
            if rest.startswith(hf + "."):
                return f"{coder}.mid.attn_1.{sd}{rest[len(hf) :]}"
    b, kind, j, rest = int(parts[2]), parts[3], int(parts[4]), ".".join(parts[5:])
    level = b if parts[1] == "down_blocks" else n_up - 1 - b  # LDM numbers decoder levels bottom-up
    updown = "down" if parts[1] == "down_blocks" else "up"
    if kind == "resnets":
        return f"{coder}.{updown}.{level}.block.{j}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    return f"{coder}.{updown}.{level}.{'downsample' if updown == 'down' else 'upsample'}.{rest}"


def vae_value(ldm_key: str, value: torch.Tensor) -> torch.Tensor:
    # LDM's VAE mid attention uses 1x1 convolutions where diffusers has linear layers
    if ".mid.attn_1." in ldm_key and ldm_key.endswith("weight") and value.ndim == 2:
        return value[:, :, None, None]
    return value


def hf_clip(state: dict, prefix: str) -> dict:
    """HF CLIPTextModel keys under `prefix` + text_model.* (CLIPTextModel is flattened in transformers 5)."""
    return {prefix + "text_model." + k.removeprefix("text_model."): v for k, v in state.items()}


OPEN_CLIP = [
    ("text_model.encoder.layers.", "transformer.resblocks."),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
    (".self_attn.out_proj.", ".attn.out_proj."),
]
OPEN_CLIP_TOP = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}


def open_clip(state: dict, prefix: str) -> dict:
    """HF CLIP text model -> OpenCLIP text tower layout (fused q/k/v, transposed projection)."""
    out = {}
    state = {
        k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
        for k, v in state.items()
    }
    for k, v in state.items():
        if k in OPEN_CLIP_TOP:
            out[prefix + OPEN_CLIP_TOP[k]] = v
        elif k == "text_projection.weight":
            out[prefix + "text_projection"] = v.T.contiguous()
        elif ".self_attn." in k and not k.split(".self_attn.")[1].startswith("out_proj"):
            layer, name = k.split(".self_attn.")
            if name.startswith("q_proj"):
                kind = name.split(".")[1]  # weight | bias
                fused = torch.cat([state[f"{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"])
                new = layer
                for hf, sd in OPEN_CLIP:
                    new = new.replace(hf, sd)
                out[f"{prefix}{new}.attn.in_proj_{kind}"] = fused
        else:
            new = k
            for hf, sd in OPEN_CLIP:
                new = new.replace(hf, sd)
            out[prefix + new] = v
    return out


def ldm_state_dict(folder: str | Path, sd2: bool = False) -> dict[str, torch.Tensor]:
    """The whole pipeline folder as one LDM-layout state dict (SD 1.x or SDXL, from model_index.json; `sd2`:
    SD 2.x, whose one text encoder is OpenCLIP, written under cond_stage_model.model.)."""
    import json

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    sdxl = json.loads((folder / "model_index.json").read_text()).get("text_encoder_2", [None])[0] is not None
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    state = {"model.diffusion_model." + unet_key(k, unet.config): v for k, v in unet.state_dict().items()}
    for k, v in vae.state_dict().items():
        name = vae_key(k, vae.config)
        state["first_stage_model." + name] = vae_value(name, v)
    te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").state_dict()
    if sdxl:
        state.update(hf_clip(te, "conditioner.embedders.0.transformer."))
        te2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2").state_dict()
        state.update(open_clip(te2, "conditioner.embedders.1.model."))
    elif sd2:
        state.update(open_clip(te, "cond_stage_model.model."))
    else:
        state.update(hf_clip(te, "cond_stage_model.transformer."))
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def write_single_file(folder: str | Path, out: str | Path, sd2: bool = False) -> Path:
    """`out` ending in .safetensors (flat) or .ckpt ({"state_dict": ...} as torch.save writes it)."""
    out = Path(out)
    state = ldm_state_dict(folder, sd2)
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out))
    else:
        torch.save({"state_dict": state, "global_step": 0}, out)
    return out


def _sd_vae(seed: int, sample_size: int):
    """SD's VAE topology (shared by SD 1.x/2.x and SDXL): 4 levels x 2 layers, mid attention; tiny channels."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=4,
        sample_size=sample_size,
    )


def build_sd15_shaped(out: str | Path, seed: int = 0, sd2: bool = False) -> Path:
    """A tiny pipeline folder with SD 1.5's topology: UNet 4 levels (CrossAttn x3 + Down), 2 layers each, channel
    ratios 1:2:4:4 (so the same skip connections exist), SD's VAE; 64 px images. `sd2`: SD 2.x's variant (linear
    transformer projections, a wider text encoder, v-prediction)."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tiny_components import _text_encoder, build_tokenizer

    tokenizer = build_tokenizer()
    width = 48 if sd2 else 32
    text_encoder = _text_encoder(len(tokenizer), width, None, seed)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(2, 2, 4, 4) if sd2 else 2,
        norm_num_groups=4,
        cross_attention_dim=width,
        use_linear_projection=sd2,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=_sd_vae(seed + 2, 64),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out)
    return Path(out)


def build_sdxl_shaped(out: str | Path, seed: int = 0) -> Path:
    """A tiny pipeline folder with SDXL base's topology: UNet 3 levels (Down, CrossAttn x2), 2 layers each,
    deeper transformers in the lower levels, linear projections, text_time conditioning; CLIP-L-like encoder
    (HF layout) + a projected second encoder (OpenCLIP layout in the file); SD's VAE; 64 px images."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from tiny_components import _text_encoder, build_tokenizer

    tokenizer = build_tokenizer()
    text_encoder = _text_encoder(len(tokenizer), 32, None, seed)
    text_encoder_2 = _text_encoder(len(tokenizer), 48, 48, seed + 3)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(8, 16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=(2, 2, 4),
        norm_num_groups=4,
        use_linear_projection=True,
        cross_attention_dim=32 + 48,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=48 + 6 * 8,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=_sd_vae(seed + 2, 64),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_tokenizer(),
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(out)
    return Path(out)
