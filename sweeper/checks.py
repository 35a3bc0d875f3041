"""The pre-flight checks: every bad-input check that runs before any model weights are loaded and before a
run file is written.

`check_config(cfg)` raises ConfigError naming the config key or file and what to do, and returns the
run's derived values. Order: the schema's types and ranges (sweeper/config/schema.py: free), the device against
this machine, the image folder (decodes each image once), the model source (no weights), then the
placeholder and init word against the model's own tokenizer(s) (a few KB).

The checks call only the validators of the layers below them (the schema, `data/images.py`, `models.py`,
`training/tokens.py`), so any layer above those may run them without importing upwards. The derived
values alone (no decoding) are `sweeper.config.derived.derive`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from sweeper.config.derived import derived_values
from sweeper.config.schema import (
    Config,
    ConfigError,
    Derived,
    early_stop_window,
    settings,
)
from sweeper.data import images
from sweeper.models import ModelLoadError, resolve_model
from sweeper.training import tokens

__all__ = ["ConfigError", "check_config", "check_device"]

log = logging.getLogger(__name__)


def check_device(device: str, cuda_count: int | None = None) -> torch.device:
    """`device` (spelling already checked by the schema) against what this machine has; `cuda_count`
    defaults to torch's count of visible CUDA devices. Needs no model."""
    count = torch.cuda.device_count() if cuda_count is None else cuda_count
    if device == "auto":
        return torch.device("cuda" if count else "cpu")
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if count == 0:
            why = (
                "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            )
            raise ConfigError(f"device={device}: {why}; available: cpu. Use device=cpu (or device=auto)")
        if index >= count:
            raise ConfigError(
                f"device={device}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}; "
                "use one of them, or device=auto"
            )
    return torch.device(device)


def check_data(typed: Config) -> list[Path]:
    """The training images that the run will use, each decoded once."""
    try:
        images.templates_for(typed.data.property, typed.inversion.per_image_tokens)
        paths = images.list_images(typed.data.images)
        images.check_images(paths)
        return images.select_images(paths, typed.data.n_images, typed.data.subset_seed)
    except images.DataError as err:
        raise ConfigError(str(err)) from err


def load_tokenizers(source) -> list:
    """The model's tokenizer(s) alone (no weights); a single file's come from model.config, [] without one."""
    from transformers import CLIPTokenizer  # heavy import, only where a model is named

    key, where = "model.pretrained", source.pretrained
    if source.kind == "file":
        if source.config is None:
            return []  # diffusers' guessed config repo; tokens.py checks it again after loading
        key, where = "model.config", source.config
    subfolders = ["tokenizer", "tokenizer_2"] if source.is_sdxl else ["tokenizer"]
    try:
        return [CLIPTokenizer.from_pretrained(where, subfolder=s) for s in subfolders]
    except Exception as err:  # noqa: BLE001 - any failure here is the model folder's
        raise ConfigError(f"{key}={where}: cannot load its tokenizer: {err}") from err


def check_tokens(typed: Config, tokenizers: list, n_images: int) -> None:
    inv = typed.inversion
    names = tokens.placeholder_tokens(inv.placeholder, inv.num_vectors)
    if inv.per_image_tokens:
        names += tokens.image_tokens(inv.placeholder, n_images)
    try:
        for tokenizer in tokenizers:
            tokens.check_placeholder(tokenizer, names)
            tokens.init_word_ids(tokenizer, inv.init_word, inv.init_word_average)
    except tokens.TokenError as err:
        raise ConfigError(str(err)) from err


def check_at_steps(typed: Config) -> None:
    """evaluation.at_steps: positive multiples of inversion.log_every (the trainer reports after a history row)."""
    every = int(typed.inversion.log_every)
    for step in typed.evaluation.at_steps or []:
        if int(step) < 1 or int(step) % every:
            raise ConfigError(
                f"evaluation.at_steps: step {step} is not a positive multiple of inversion.log_every={every}; "
                f"use steps such as {every}, {2 * every}, ... or set inversion.log_every to divide them"
            )


def settings_that_cannot_act(typed: Config) -> list[str]:
    """Budget-saving settings that are on but can never save anything at this budget (a warning each, not a
    refusal: a sweep over inversion.steps or evaluation.num_samples may hold such trials on purpose)."""
    out = []
    stop, steps = typed.inversion.early_stop, int(typed.inversion.steps)
    if stop.enabled:
        window = early_stop_window(stop, steps)
        earliest = int(stop.every) * (window - 1)
        if earliest >= steps:
            out.append(
                f"inversion.early_stop: every x (window - 1) = {stop.every} x {window - 1} = {earliest} steps before "
                f"the criterion can decide, >= inversion.steps={steps}: it cannot stop early; lower "
                f"inversion.early_stop.window or .every (or window=null: DVAR's window scaled to the budget)"
            )
    ev = typed.evaluation
    if ev.target_halfwidth is not None and int(ev.min_samples) >= int(ev.num_samples):
        out.append(
            f"evaluation.target_halfwidth: the first adaptive round (evaluation.min_samples={ev.min_samples}) "
            f"already takes all evaluation.num_samples={ev.num_samples}: adaptive evaluation cannot save samples; "
            f"lower evaluation.min_samples below num_samples"
        )
    return out


def check_config(cfg: DictConfig) -> Derived:
    """Raise ConfigError for any input that cannot run; loads no model weights and writes nothing.
    Returns the derived values (as `config.derived.derive`, with every image decoded once on the way)."""
    typed = settings(cfg)
    device = check_device(typed.device)
    if typed.inversion.compile and device.type != "cuda":
        # Measured (torch 2.13, inductor on CPU): the compiled UNet's gradient with respect to the text
        # context is off by up to a third of its largest entry against eager and float64 (aot_eager is exact).
        raise ConfigError(
            f"inversion.compile=true on {device}: torch.compile's CPU backward gives "
            "wrong gradients for this UNet (BENCHMARKS.md); use it on CUDA, or inversion.compile=false"
        )
    check_at_steps(typed)
    for warning in settings_that_cannot_act(typed):
        log.warning("%s", warning)
    image_paths = check_data(typed)
    try:
        source = resolve_model(typed.model.pretrained, typed.model.config)
    except ModelLoadError as err:
        raise ConfigError(str(err)) from err
    check_tokens(typed, load_tokenizers(source), len(image_paths))
    return derived_values(typed, image_paths)
