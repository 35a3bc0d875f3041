"""Every bad-input check that runs before any model weights are loaded and before a run file is written.

`check_config(cfg)` raises ConfigError naming the config key or file and what to do. Order: plain
keys (free), then the image folder (decodes each image once), then the model source (no weights),
then the placeholder and init word against the model's own tokenizer(s) (a few KB).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from sweeper import data, tokens
from sweeper.models import PRECISIONS, ModelLoadError, resolve_model


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key or file and the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _number(node: DictConfig, key: str, prefix: str, kind: type = float):
    value = node.get(key)
    if value is None or isinstance(value, bool):
        raise ConfigError(f"{prefix}.{key}={value!r}: expected a number; set it, e.g. {prefix}.{key}=...")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{prefix}.{key}={value!r}: expected a number") from None
    if kind is int and number != int(number):
        raise ConfigError(f"{prefix}.{key}={value!r}: expected a whole number")
    return kind(number)


def check_inversion_keys(inv: DictConfig) -> None:
    p = "inversion"
    missing = [
        k for k in ("placeholder", "init_word") if OmegaConf.is_missing(inv, k) or inv.get(k) in (None, "")
    ]
    _require(
        not missing,
        f"{p}.{missing[0] if missing else ''} is not set: e.g. inversion.placeholder='<my-cat>' "
        "inversion.init_word=cat (a single-token coarse class word)",
    )
    _require(
        _number(inv, "num_vectors", p, int) >= 1, f"{p}.num_vectors={inv.num_vectors}: need k >= 1 vectors"
    )
    _require(
        _number(inv, "lr", p) > 0,
        f"{p}.lr={inv.lr}: the learning rate must be > 0 (paper: 5e-3 with scale_lr)",
    )
    _require(_number(inv, "steps", p, int) >= 1, f"{p}.steps={inv.steps}: need at least 1 step")
    _require(
        _number(inv, "batch_size", p, int) >= 1,
        f"{p}.batch_size={inv.batch_size}: need a batch of at least 1",
    )
    _require(_number(inv, "grad_accum", p, int) >= 1, f"{p}.grad_accum={inv.grad_accum}: must be >= 1")
    _require(_number(inv, "reg_weight", p) >= 0, f"{p}.reg_weight={inv.reg_weight}: must be >= 0 (0 = off)")
    _require(_number(inv, "weight_decay", p) >= 0, f"{p}.weight_decay={inv.weight_decay}: must be >= 0")
    _require(
        0 <= _number(inv, "per_image_p", p) <= 1, f"{p}.per_image_p={inv.per_image_p}: must be in [0, 1]"
    )
    _require(_number(inv, "log_every", p, int) >= 1, f"{p}.log_every={inv.log_every}: must be >= 1")
    _number(inv, "seed", p, int)
    _require(
        isinstance(inv.get("compile", False), bool),
        f"{p}.compile={inv.get('compile')!r}: must be true or false",
    )
    _require(
        inv.precision in (*PRECISIONS, "auto"),
        f"{p}.precision={inv.precision!r}: choose auto or one of {sorted(PRECISIONS)}",
    )
    if inv.get("progressive_every") is not None:
        _require(
            _number(inv, "progressive_every", p, int) >= 1,
            f"{p}.progressive_every={inv.progressive_every}: must be >= 1 step, or null for off",
        )
    if inv.get("checkpoint_every") is not None:
        _require(
            _number(inv, "checkpoint_every", p, int) >= 0,
            f"{p}.checkpoint_every={inv.checkpoint_every}: must be >= 0 (0 or null = no checkpoints)",
        )
    check_early_stop(inv)
    piv = inv.get("pivotal")
    if piv is not None and piv.get("enabled"):
        q = "inversion.pivotal"
        _require(piv.get("mode") in ("full", "lora"), f"{q}.mode={piv.get('mode')!r}: choose full or lora")
        _require(_number(piv, "steps", q, int) >= 1, f"{q}.steps={piv.steps}: need at least 1 step")
        _require(_number(piv, "lr", q) > 0, f"{q}.lr={piv.lr}: must be > 0")
        if piv.mode == "lora":
            _require(_number(piv, "lora_rank", q, int) >= 1, f"{q}.lora_rank={piv.lora_rank}: must be >= 1")


def check_early_stop(inv: DictConfig) -> None:
    """inversion.early_stop (sweeper/early_stop.py): absent or null = off (configs from before it existed)."""
    stop, q = inv.get("early_stop"), "inversion.early_stop"
    if stop is None:
        return
    _require(isinstance(stop, DictConfig), f"{q}={stop!r}: give a mapping, e.g. {q}.enabled=true")
    _require(
        isinstance(stop.get("enabled", False), bool), f"{q}.enabled={stop.get('enabled')!r}: true or false"
    )
    for key in ("every", "window", "batch"):
        if key in stop:
            _require(_number(stop, key, q, int) >= 1, f"{q}.{key}={stop[key]}: must be >= 1")
    if "window" in stop:
        _require(int(stop.window) >= 2, f"{q}.window={stop.window}: a variance needs >= 2 evaluations")
    if "threshold" in stop:
        _require(
            0 < _number(stop, "threshold", q) <= 1,
            f"{q}.threshold={stop.threshold}: a variance ratio in (0, 1] (DVAR: 0.15)",
        )
    if "seed" in stop:
        _number(stop, "seed", q, int)


def check_data(cfg: DictConfig) -> list:
    """The training images that the run will use (a DataError becomes a ConfigError)."""
    d = cfg.data
    _require(
        not OmegaConf.is_missing(d, "images") and d.get("images"),
        "data.images is not set: give a folder of concept images, e.g. data.images=/path/to/my-cat",
    )
    try:
        data.templates_for(d.property, bool(cfg.inversion.per_image_tokens))
        _require(0 <= float(d.get("flip_p", 0.5)) <= 1, f"data.flip_p={d.get('flip_p')}: must be in [0, 1]")
        paths = data.list_images(d.images)
        data.check_images(paths)
        return data.select_images(paths, d.get("n_images"), int(d.get("subset_seed", 0)))
    except data.DataError as err:
        raise ConfigError(str(err)) from err


def load_tokenizers(source) -> list:
    """The model's tokenizer(s) alone (no weights); a single file's come from model.config, [] without one."""
    from transformers import CLIPTokenizer

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


def check_tokens(cfg: DictConfig, tokenizers: list, n_images: int) -> None:
    inv = cfg.inversion
    names = tokens.placeholder_tokens(str(inv.placeholder), int(inv.num_vectors))
    if inv.per_image_tokens:
        names += tokens.image_tokens(str(inv.placeholder), n_images)
    try:
        for tokenizer in tokenizers:
            tokens.check_placeholder(tokenizer, names)
            tokens.init_word_ids(tokenizer, str(inv.init_word), bool(inv.get("init_word_average", False)))
    except tokens.TokenError as err:
        raise ConfigError(str(err)) from err


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for any input that cannot run; loads no model weights and writes nothing."""
    check_inversion_keys(cfg.inversion)
    if cfg.inversion.get("compile"):
        from sweeper.models import resolve_device

        device = resolve_device(cfg.get("device", "auto"))
        # Measured (torch 2.13, inductor on CPU): the compiled UNet's gradient with respect to the text
        # context is off by up to a third of its largest entry against eager and float64 (aot_eager is exact).
        _require(
            device.type == "cuda",
            f"inversion.compile=true on {device}: torch.compile's CPU backward gives "
            "wrong gradients for this UNet (BENCHMARKS.md); use it on CUDA, or inversion.compile=false",
        )
    images = check_data(cfg)
    _require(
        not OmegaConf.is_missing(cfg.model, "pretrained"),
        "model.pretrained is not set: a hub id or a local folder",
    )
    try:
        source = resolve_model(str(cfg.model.pretrained), cfg.model.get("config"))
    except ModelLoadError as err:
        raise ConfigError(str(err)) from err
    check_tokens(cfg, load_tokenizers(source), len(images))
