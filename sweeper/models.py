"""Load a Stable Diffusion-family model by name: a hub id, a local diffusers folder, or one file.

One path for every source: `from_pretrained` for hub ids and folders, `from_single_file` for
`.safetensors`/`.ckpt`. SD 1.x/2.x have one text encoder, SDXL two; callers iterate over
`Components.text_encoders` and never special-case the count.

A single file holds weights only. diffusers takes the component configs and tokenizers from
`model.config` (a local diffusers folder or hub id of the same architecture) or, without it, from the
hub repo it guesses from the checkpoint's keys; offline, that guess cannot be fetched, so we say so
before any weights load. `.ckpt` files are read with `weights_only=True`: a pickle that carries code
is refused, never run.

Dtypes: the UNet runs in the compute dtype; text encoders stay fp32 so the learned rows of the
embedding matrix are fp32 master weights (autocast does the compute); the VAE stays fp32 under
fp16, where SDXL's VAE overflows into NaN/black images. Whoever decodes casts latents to
`vae.dtype`.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Lazy imports: huggingface_hub, safetensors, diffusers and transformers are imported where used: resolving a model
# (checks before any model work) must not pay for diffusers' import.

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model named by `model.pretrained` cannot be found or loaded."""


@dataclass
class ModelSource:
    pretrained: str
    kind: str  # "folder" | "file" | "hub"
    is_sdxl: bool
    config: str | None = None  # single files: the diffusers folder / hub id with their configs and tokenizers


@dataclass
class Components:
    source: ModelSource
    tokenizers: list
    text_encoders: list
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: Any  # the model's own scheduler (a diffusers SchedulerMixin: its .config), as loaded
    dtype: torch.dtype
    device: torch.device
    resolution: int

    @property
    def is_sdxl(self) -> bool:
        return self.source.is_sdxl


def resolve_dtype(precision: str, device: str | torch.device | None = None) -> torch.dtype:
    """`auto` is bf16 on a GPU that has it and fp32 elsewhere (bf16 autocast measured slower on CPUs)."""
    if precision == "auto":
        dev = resolve_device(device)
        cuda_bf16 = dev.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)} or auto, got {precision!r}")
    return PRECISIONS[precision]


def resolve_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_model(pretrained: str, config: str | None = None) -> ModelSource:
    """Find out what `pretrained` is without loading weights; raise a plain ModelLoadError if unusable.

    `config` (model.config) only applies to a single checkpoint file: the diffusers folder or hub id whose
    component configs and tokenizers describe the file's architecture.
    """
    if not pretrained:
        raise ModelLoadError(
            "model.pretrained is empty: give a hub id, a local diffusers folder or a .safetensors/.ckpt file"
        )
    path = Path(pretrained).expanduser()
    if path.suffix in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise ModelLoadError(f"model.pretrained={pretrained}: no such file")
        shapes = single_file_shapes(path)
        is_sdxl = any(k.startswith("conditioner.embedders.1") for k in shapes)
        return ModelSource(
            str(path), "file", is_sdxl, _single_file_config(str(path), shapes, is_sdxl, config)
        )
    if config:
        raise ModelLoadError(
            f"model.config={config}: only a single .safetensors/.ckpt checkpoint needs it; "
            f"model.pretrained={pretrained} carries its own configs. Drop model.config (model.config=null)."
        )
    if path.is_dir():
        return ModelSource(str(path), "folder", _folder_is_sdxl(path, "model.pretrained"))
    if pretrained.startswith((".", "/", "~")) or pretrained.count("/") != 1:
        raise ModelLoadError(
            f"model.pretrained={pretrained}: no such folder or file, and not a hub id (owner/name)"
        )
    return ModelSource(
        pretrained, "hub", _index_is_sdxl(json.loads(Path(_hub_index(pretrained)).read_text()))
    )


def _folder_is_sdxl(path: Path, key: str) -> bool:
    index = path / "model_index.json"
    if not index.is_file():
        raise ModelLoadError(
            f"{key}={path}: folder has no model_index.json; give a diffusers pipeline folder"
        )
    return _index_is_sdxl(json.loads(index.read_text()))


def _hub_index(repo_id: str, key: str = "model.pretrained") -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo_id, "model_index.json")
    except Exception as err:  # offline, unreachable, gated, missing: all end the same way for the user
        raise ModelLoadError(
            f"{key}={repo_id}: cannot load it: {_hub_reason(err)}. "
            f"Download it where there is network and pass the local folder as {key}=/path/to/folder."
        ) from err


def _hub_reason(err: Exception) -> str:
    reason = type(err).__name__
    if any(word in reason for word in ("Connect", "LocalEntryNotFound", "Offline", "Timeout")):
        return "the Hugging Face Hub is unreachable (no network?) and the model is not in the local cache"
    return f"{reason}: {err}"


def single_file_shapes(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors as shape-only meta tensors (no weights read); a .ckpt's "state_dict" unwrapped.

    A .ckpt is unpickled with weights_only=True: one that holds anything but tensors and plain containers
    (a pickle can carry code) is refused here, before anything else runs.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
        try:
            state = torch.load(path, map_location="meta", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):  # a legacy (pre-zip) torch.save file cannot be memory-mapped
                raise
            state = torch.load(path, map_location="meta", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ModelLoadError(
            f"model.pretrained={path}: refused: this .ckpt pickles objects other than tensors, and unpickling them "
            "could run code. Only plain state dicts are read (torch.load weights_only=True); convert it to "
            f".safetensors in a sandbox you trust, or use the model's .safetensors release. ({str(err).splitlines()[0]})"
        ) from err
    except Exception as err:  # noqa: BLE001 - truncated, corrupt, not a checkpoint
        raise ModelLoadError(f"model.pretrained={path}: cannot read this checkpoint file: {err}") from err
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ModelLoadError(f"model.pretrained={path}: no state dict of tensors in this file")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _single_file_config(pretrained: str, shapes: dict, is_sdxl: bool, config: str | None) -> str | None:
    """model.config checked (exists, same family as the file); without it, diffusers' guess must be fetchable."""
    if config:
        path = Path(config).expanduser()
        if path.is_dir():
            config_sdxl = _folder_is_sdxl(path, "model.config")
            config = str(path)
        elif config.startswith((".", "/", "~")) or config.count("/") != 1:
            raise ModelLoadError(f"model.config={config}: no such folder, and not a hub id (owner/name)")
        else:
            config_sdxl = _index_is_sdxl(json.loads(Path(_hub_index(config, "model.config")).read_text()))
        if config_sdxl != is_sdxl:
            family = {True: "SDXL (two text encoders)", False: "SD 1.x/2.x (one text encoder)"}
            raise ModelLoadError(
                f"model.config={config} describes {family[config_sdxl]} but model.pretrained={pretrained} is "
                f"{family[is_sdxl]}: give a diffusers folder of the checkpoint's own architecture"
            )
        return config
    guess = _diffusers_default_repo(shapes)
    if guess is None:
        return None  # diffusers reads values to tell; load_pipeline words an offline failure the same way
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(guess, "model_index.json")
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(single_file_hint(pretrained, guess, _hub_reason(err))) from err
    return None


def single_file_hint(pretrained: str, guess: str | None, reason: str) -> str:
    return (
        f"model.pretrained={pretrained} is a single checkpoint file: it holds weights but not the configs and "
        f"tokenizers diffusers needs, which it would fetch from the hub repo {guess or '(unknown)'}, and {reason}: "
        "pass model.config=<a local diffusers folder of the same architecture> (e.g. a downloaded copy of "
        f"{guess or 'the base model'}: its model_index.json, */config.json, scheduler and tokenizer files suffice)."
    )


def _diffusers_default_repo(shapes: dict) -> str | None:
    """The hub repo diffusers' from_single_file takes configs from when none is given (None: cannot tell)."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    try:
        return fetch_diffusers_config(shapes)["pretrained_model_name_or_path"]
    except Exception:  # noqa: BLE001 - a model type whose detection reads values, not shapes
        return None


# Where a single file's (first) text encoder sits in the HF CLIP layout. diffusers' own
# convert_diffusers_to_original_stable_diffusion.py prefixes the text encoder's state dict as it finds it, and
# transformers 5 saves CLIPTextModel without "text_model.", so under transformers 5 that script writes keys
# diffusers' single-file loader does not recognise (it then asks for text_encoder= in Python).
HF_TEXT_ENCODER_PREFIXES = ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.")


def prefixless_text_encoder(source: ModelSource, dtype: torch.dtype) -> dict:
    """{"text_encoder": model} for a single file whose HF-layout text encoder lacks the `text_model.` prefix,
    built from the file's own weights and the text encoder config of model.config (or diffusers' default
    repo for the file); {} for any other file, which diffusers reads itself."""
    shapes = single_file_shapes(source.pretrained)
    prefix = next(
        (p for p in HF_TEXT_ENCODER_PREFIXES if f"{p}embeddings.token_embedding.weight" in shapes), None
    )
    if prefix is None:
        return {}
    from transformers import CLIPTextConfig, CLIPTextModel

    where = source.config or _diffusers_default_repo(shapes)
    try:
        config = CLIPTextConfig.from_pretrained(where, subfolder="text_encoder")
    except Exception as err:  # noqa: BLE001 - offline hub, missing folder: the user's fix is model.config
        raise ModelLoadError(single_file_hint(source.pretrained, where, _hub_reason(err))) from err
    names = [k for k in shapes if k.startswith(prefix)]
    state = _read_tensors(Path(source.pretrained), names)
    encoder = CLIPTextModel(config)
    own = encoder.state_dict()
    state = {k.removeprefix(prefix): v for k, v in state.items()}
    # transformers 4 names the same weights text_model.*; accept the file either way round
    state = {
        k if k in own or f"text_model.{k}" not in own else f"text_model.{k}": v for k, v in state.items()
    }
    state = {
        k: v for k, v in state.items() if not k.endswith("position_ids")
    }  # a buffer, rebuilt by the model
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"model.pretrained={source.pretrained}: its text encoder ({prefix}*, saved without text_model.) does "
            f"not match the text encoder config of {where}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return {"text_encoder": encoder.to(dtype).eval()}


def _read_tensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Some tensors of a single checkpoint file (a .ckpt only through weights_only=True)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in names}
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {k: state[k] for k in names}


def _index_is_sdxl(index: dict) -> bool:
    return "text_encoder_2" in index and index.get("text_encoder_2", [None])[0] is not None


def pipeline_class(source: ModelSource) -> Any:  # a diffusers pipeline class
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if source.is_sdxl else StableDiffusionPipeline


def load_pipeline(
    pretrained: str | ModelSource,
    precision: str = "fp32",
    device: str | None = None,
    config: str | None = None,
):
    """The diffusers pipeline, loaded the one way a user's checkpoint is: for sampling and evaluation.

    `config` is model.config (single files only); a ModelSource already carries it.
    """
    source = pretrained if isinstance(pretrained, ModelSource) else resolve_model(str(pretrained), config)
    log.info("loading model %s for sampling (%s on %s)", source.pretrained, precision, resolve_device(device))
    return _load_pipeline(source, precision, device)


def _load_pipeline(source: ModelSource, precision: str, device: str | None):
    dtype = resolve_dtype(precision, device)
    cls = pipeline_class(source)
    kwargs = {"dtype": dtype}
    if not source.is_sdxl:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if source.kind == "file":
        kwargs.update(prefixless_text_encoder(source, dtype))
    try:
        if source.kind == "file":
            pipe = cls.from_single_file(source.pretrained, config=source.config, **kwargs)
        else:
            pipe = cls.from_pretrained(source.pretrained, **kwargs)
    except Exception as err:
        if source.kind == "file" and source.config is None and "unreachable" in _hub_reason(err):
            raise ModelLoadError(single_file_hint(source.pretrained, None, _hub_reason(err))) from err
        using = f" with model.config={source.config}" if source.config else ""
        raise ModelLoadError(f"model.pretrained={source.pretrained}: loading failed{using}: {err}") from err
    if dtype == torch.float16:
        pipe.vae.to(torch.float32)
    pipe.to(resolve_device(device))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_components(
    pretrained: str | ModelSource,
    precision: str = "fp32",
    device: str | None = None,
    config: str | None = None,
) -> Components:
    """Frozen components for training: UNet in the compute dtype, text encoders fp32, VAE fp32 under fp16."""
    source = pretrained if isinstance(pretrained, ModelSource) else resolve_model(str(pretrained), config)
    dtype = resolve_dtype(precision, device)
    dev = resolve_device(device)
    log.info("loading model %s for training (%s on %s)", source.pretrained, precision, dev)
    pipe = _load_pipeline(source, "fp32", "cpu")
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
        source=source,
        tokenizers=tokenizers,
        text_encoders=encoders,
        unet=pipe.unet,
        vae=pipe.vae,
        scheduler=pipe.scheduler,
        dtype=dtype,
        device=dev,
        resolution=int(resolution),
    )


def pipeline_from_components(comps: Components):
    """A sampling pipeline over already-loaded (possibly training) components, sharing their weights."""
    cls = pipeline_class(comps.source)
    parts = dict(
        vae=comps.vae,
        text_encoder=comps.text_encoders[0],
        tokenizer=comps.tokenizers[0],
        unet=comps.unet,
        scheduler=comps.scheduler,
    )
    if comps.is_sdxl:
        parts.update(text_encoder_2=comps.text_encoders[1], tokenizer_2=comps.tokenizers[1])
    else:
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe
