"""Load a Stable Diffusion-family model by name: a hub id, a local diffusers folder, or one file.

One path for every source: `from_pretrained` for hub ids and folders, `from_single_file` for
`.safetensors`/`.ckpt`. SD 1.x/2.x have one text encoder, SDXL two; callers iterate over
`Components.text_encoders` and never special-case the count.

Dtypes: the UNet runs in the compute dtype; text encoders stay fp32 so the learned rows of the
embedding matrix are fp32 master weights (autocast does the compute); the VAE stays fp32 under
fp16, where SDXL's VAE overflows into NaN/black images. Whoever decodes casts latents to
`vae.dtype`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model named by `model.pretrained` cannot be found or loaded."""


@dataclass
class ModelSource:
    pretrained: str
    kind: str  # "folder" | "file" | "hub"
    is_sdxl: bool


@dataclass
class Components:
    source: ModelSource
    tokenizers: list
    text_encoders: list
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object  # the model's own scheduler config, as loaded
    dtype: torch.dtype
    device: torch.device
    resolution: int
    extras: dict = field(default_factory=dict)

    @property
    def is_sdxl(self) -> bool:
        return self.source.is_sdxl


def resolve_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_model(pretrained: str) -> ModelSource:
    """Find out what `pretrained` is without loading weights; raise a plain ModelLoadError if unusable."""
    if not pretrained:
        raise ModelLoadError("model.pretrained is empty: give a hub id, a local diffusers folder or a .safetensors/.ckpt file")
    path = Path(pretrained).expanduser()
    if path.suffix in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ModelLoadError(f"model.pretrained={pretrained}: no such file")
        return ModelSource(str(path), "file", _single_file_is_sdxl(path))
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise ModelLoadError(
                f"model.pretrained={pretrained}: folder has no model_index.json; give a diffusers pipeline folder"
            )
        return ModelSource(str(path), "folder", _index_is_sdxl(json.loads(index.read_text())))
    if pretrained.startswith((".", "/", "~")) or pretrained.count("/") != 1:
        raise ModelLoadError(f"model.pretrained={pretrained}: no such folder or file, and not a hub id (owner/name)")
    return ModelSource(pretrained, "hub", _index_is_sdxl(json.loads(Path(_hub_index(pretrained)).read_text())))


def _hub_index(repo_id: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, "model_index.json")
    except Exception as err:  # offline, unreachable, gated, missing: all end the same way for the user
        reason = type(err).__name__
        hint = (
            "the Hugging Face Hub is unreachable (no network?) and the model is not in the local cache"
            if "Connect" in reason or "LocalEntryNotFound" in reason or "Offline" in reason or "Timeout" in reason
            else f"{reason}: {err}"
        )
        raise ModelLoadError(
            f"model.pretrained={repo_id}: cannot load it: {hint}. "
            "Download it where there is network and pass the local folder as model.pretrained=/path/to/folder."
        ) from err


def _index_is_sdxl(index: dict) -> bool:
    return "text_encoder_2" in index and index.get("text_encoder_2", [None])[0] is not None


def _single_file_is_sdxl(path: Path) -> bool:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith("conditioner.embedders.1") for k in f.keys())
    state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
    state = state.get("state_dict", state)
    return any(k.startswith("conditioner.embedders.1") for k in state)


def pipeline_class(source: ModelSource) -> type:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if source.is_sdxl else StableDiffusionPipeline


def load_pipeline(pretrained: str | ModelSource, precision: str = "fp32", device: str | None = None):
    """The diffusers pipeline, loaded the one way a user's checkpoint is: for sampling and evaluation."""
    source = pretrained if isinstance(pretrained, ModelSource) else resolve_model(pretrained)
    dtype = resolve_dtype(precision)
    cls = pipeline_class(source)
    kwargs = {"torch_dtype": dtype}
    if not source.is_sdxl:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        if source.kind == "file":
            pipe = cls.from_single_file(source.pretrained, **kwargs)
        else:
            pipe = cls.from_pretrained(source.pretrained, **kwargs)
    except Exception as err:
        raise ModelLoadError(f"model.pretrained={source.pretrained}: loading failed: {err}") from err
    if dtype == torch.float16:
        pipe.vae.to(torch.float32)
    pipe.to(resolve_device(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_components(pretrained: str | ModelSource, precision: str = "fp32", device: str | None = None) -> Components:
    """Frozen components for training: UNet in the compute dtype, text encoders fp32, VAE fp32 under fp16."""
    source = pretrained if isinstance(pretrained, ModelSource) else resolve_model(pretrained)
    dtype = resolve_dtype(precision)
    dev = resolve_device(device)
    pipe = load_pipeline(source, "fp32", "cpu")
    tokenizers = [t for t in (pipe.tokenizer, getattr(pipe, "tokenizer_2", None)) if t is not None]
    encoders = [e for e in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if e is not None]
    for module in (*encoders, pipe.unet, pipe.vae):
        module.requires_grad_(False)
        module.eval()
    for enc in encoders:
        enc.to(dev)
    pipe.unet.to(dev, dtype=dtype)
    pipe.vae.to(dev, dtype=torch.float32 if dtype == torch.float16 else dtype)
    resolution = pipe.unet.config.sample_size * pipe.vae_scale_factor
    return Components(
        source=source, tokenizers=tokenizers, text_encoders=encoders, unet=pipe.unet, vae=pipe.vae,
        scheduler=pipe.scheduler, dtype=dtype, device=dev, resolution=int(resolution),
    )


def pipeline_from_components(comps: Components):
    """A sampling pipeline over already-loaded (possibly training) components, sharing their weights."""
    cls = pipeline_class(comps.source)
    parts = dict(vae=comps.vae, text_encoder=comps.text_encoders[0], tokenizer=comps.tokenizers[0],
                 unet=comps.unet, scheduler=comps.scheduler)
    if comps.is_sdxl:
        parts.update(text_encoder_2=comps.text_encoders[1], tokenizer_2=comps.tokenizers[1])
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe
