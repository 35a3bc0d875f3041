"""The typed configuration: one dataclass per config group, registered in Hydra's ConfigStore.

Every knob is defined here once: its type, its default, its range and whether changing it between a run
and its resumption is safe. conf/config.yaml extends this schema (`defaults: [schema, ...]`), so composing
a config type-checks it: an unknown key (`inversion.lrr=1`) or a value of the wrong type
(`inversion.steps=abc`, `inversion.steps=nan`) fails at compose time with Hydra's message naming the key.
The YAML files in conf/ hold presets only (a model's hub id, the toy protocol, an experiment): values that
differ from the defaults here.

    cfg = compose(...)                # typed by the schema
    typed = settings(cfg)             # ranges, finiteness, choices, templates: ConfigError naming the key

Adding an inversion knob: one `knob(...)` line in InversionConfig (with its range, and `resume_safe=True`
if changing it must not block a resume, `fingerprints_with=(...)` for the knobs its effect depends on,
`fingerprinted_when_set=True` if checkpoints from before it must still resume), and its use in the
trainer. The resume fingerprint
(store/checkpoints.py), the run folder's config.yaml and the checks pick it up from here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from sweeper import CONF_DIR

SCHEMA = "schema"  # the ConfigStore name conf/config.yaml extends
PROMPTS_DIR = CONF_DIR / "evaluation" / "prompts"  # inside the package: found from a wheel too

PRECISIONS = ("fp32", "bf16", "fp16")  # models.PRECISIONS' keys (tests/test_config.py keeps them equal)
SAMPLERS = ("ddim", "dpmsolver++", "unipc", "euler")  # sampling.SAMPLERS
TEXT_VARIANTS = ("mean_embedding", "per_image")  # clip_score.VARIANTS
PROPERTIES = ("object", "style")  # data.PROPERTIES
TRACKING_MODES = ("offline", "online", "disabled")
LR_SCHEDULES = ("constant", "linear", "cosine")  # inversion.lr_schedule (sweeper/training/lr_schedule.py)
QUICK_OBJECTIVES = ("clip", "denoising")  # evaluation.quick.objective: Optuna's intermediate value
SEED_MAX = 2**32 - 1  # numpy's np.random.seed refuses anything larger (and negative seeds)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key or file and the fix."""


class EvaluationConfigError(ConfigError):
    """A bad `evaluation.*` setting; the message names the key and what to do."""


def _error(key: str, message: str) -> ConfigError:
    return (EvaluationConfigError if key.startswith("evaluation") else ConfigError)(message)


def knob(
    default: Any = MISSING,
    *,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
    resume_safe: bool = False,
    fingerprints_with: tuple[str, ...] = (),
    fingerprinted_when_set: bool = False,
    hint: str = "",
) -> Any:
    """A schema field with its range. Numbers are always checked finite. Resume safety (inversion knobs),
    declared here for each knob: `resume_safe` marks a knob that may change between a run and its
    resumption (it is left out of the resume fingerprint); `fingerprints_with` names the knobs this one's
    effect depends on, which enter the fingerprint while this knob is away from its default, resume-safe or
    not (a cosine schedule depends on `steps`); `fingerprinted_when_set` keeps a knob at its default out of
    the fingerprint (a knob added after checkpoints were written: those still resume)."""
    meta = {
        "gt": gt,
        "ge": ge,
        "le": le,
        "choices": choices,
        "resume_safe": resume_safe,
        "fingerprints_with": fingerprints_with,
        "fingerprinted_when_set": fingerprinted_when_set,
        "hint": hint,
    }
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# -------------------------------------------------------------------------------------------- groups


@dataclass
class ModelConfig:
    pretrained: str = knob(hint="a hub id, a local diffusers folder or one .safetensors/.ckpt file")
    # single .safetensors/.ckpt files only: a local diffusers folder (or hub id) of the same architecture
    config: str | None = None


@dataclass
class DataConfig:
    images: str = knob(hint="a folder of concept images, e.g. data.images=/path/to/my-cat")
    n_images: int | None = knob(None, ge=1, hint="null = all; otherwise a seeded subset")
    subset_seed: int = knob(0, ge=0, le=SEED_MAX)
    property: str = knob("object", choices=PROPERTIES, hint="picks the template set")
    flip_p: float = knob(0.5, ge=0, le=1, hint="probability of a horizontal flip per sample")
    # the concept's class word, DreamBench's "{class}" in evaluation prompts ("stuffed animal"); null = init word
    class_word: str | None = None
    # a YAML list of concept folders with class words: the trial runs every concept (sweeper/config/manifest.py)
    manifest: str | None = None


@dataclass
class PivotalConfig:
    """Optional UNet fine-tune after inversion, embedding frozen (saved to pivotal/)."""

    enabled: bool = False
    mode: str = knob("lora", choices=("lora", "full"))
    steps: int = knob(500, ge=1)
    lr: float = knob(1.0e-4, gt=0)
    lora_rank: int = knob(4, ge=1)


@dataclass
class EarlyStopConfig:
    """Stop when the denoising loss on a fixed batch stops moving (DVAR; sweeper/training/early_stop.py)."""

    enabled: bool = False
    every: int = knob(10, ge=1, hint="steps between evaluations of the objective (no gradients)")
    # evaluations in the window: stop when var(last window) / var(all so far) < threshold; null = DVAR's
    # window scaled to the budget (early_stop_window: 310 of 6100 steps, in evaluations every `every` steps)
    window: int | None = knob(None, ge=2, hint="a variance needs >= 2 evaluations, or null (DVAR's, scaled)")
    # DVAR's default; a ratio, so one value suits any loss scale
    threshold: float = knob(0.15, gt=0, le=1, hint="a variance ratio (DVAR: 0.15)")
    # fixed examples (image, flip, template, latent sample, noise, timestep) in the objective
    batch: int = knob(8, ge=1)
    seed: int = knob(0, ge=0, le=SEED_MAX)  # the objective's own generator, apart from the trainer's


@dataclass
class InversionConfig:
    """Textual inversion of one concept (Gal et al. 2022); the defaults follow the paper: one vector,
    5000 steps, base lr 5e-3 scaled by batch x accumulation (paper: 2 GPUs x batch 4 = 0.04 effective;
    here batch 4 x accum 2)."""

    # new token(s) "<concept>", "<concept>_1", ... (must not be in the vocabulary)
    placeholder: str = knob(
        "<concept>", hint="e.g. \"inversion.placeholder='<my-cat>'\" (quoted twice in a shell: Hydra reads <)"
    )
    init_word: str = knob(hint="a single-token coarse class word, e.g. inversion.init_word=cat")
    init_word_average: bool = False  # true: a multi-token init word is averaged instead of refused
    num_vectors: int = knob(1, ge=1, hint="k vectors for S*")
    per_image_tokens: bool = False  # a shared S* plus one token per training image
    per_image_p: float = knob(0.25, ge=0, le=1, hint="probability of an 'a photo of a {} with {}' template")
    reg_weight: float = knob(0.0, ge=0, hint="0 = off; loss += reg_weight * squared L2 distance from init")
    progressive_every: int | None = knob(
        None, ge=1, hint="null = off; else add the next vector every N steps"
    )
    lr: float = knob(5.0e-3, gt=0, hint="the paper: 5e-3 with scale_lr=true")
    scale_lr: bool = True  # effective lr = lr * batch_size * grad_accum
    # the diffusers example's --lr_scheduler: constant | linear | cosine (to 0 at `steps`, after the warm-up)
    lr_schedule: str = knob(
        "constant", choices=LR_SCHEDULES, fingerprints_with=("steps",), fingerprinted_when_set=True
    )
    # optimizer steps over which the lr rises linearly from 0 (the example's --lr_warmup_steps)
    lr_warmup_steps: int = knob(0, ge=0, fingerprinted_when_set=True, hint="0 = no warm-up")
    steps: int = knob(5000, ge=1, resume_safe=True)
    batch_size: int = knob(4, ge=1)
    grad_accum: int = knob(2, ge=1)
    weight_decay: float = knob(0.01, ge=0, hint="AdamW; touches only the placeholder vectors")
    seed: int = knob(0, ge=0, le=SEED_MAX)
    # true: torch.compile the UNet; CUDA only (its CPU backward is wrong, BENCHMARKS.md)
    compile: bool = knob(False, resume_safe=True)
    # auto (bf16 on a GPU, fp32 on a CPU) | fp32 | bf16 | fp16 (UNet compute; vectors stay fp32)
    precision: str = knob("auto", choices=("auto", *PRECISIONS))
    log_every: int = knob(50, ge=1, resume_safe=True, hint="history.csv row every N steps")
    # checkpoints/step_<N>/ every N steps (0 or null = off); reruns resume from the last
    checkpoint_every: int | None = knob(500, ge=0, resume_safe=True, hint="0 or null = no checkpoints")
    # tuned after the inversion: the inverted vectors do not depend on it
    pivotal: PivotalConfig = knob(PivotalConfig(), resume_safe=True)
    # measuring the objective uses no training randomness, so it never changes the trajectory
    early_stop: EarlyStopConfig = knob(EarlyStopConfig(), resume_safe=True)


@dataclass
class QuickEvaluationConfig:
    """Intermediate evaluation reported to Optuna for pruning (searches with a pruner)."""

    every: int = knob(500, ge=1, hint="inversion steps between quick evaluations")
    num_samples: int = knob(4, ge=1)  # samples per prompt (no references, no CIs): a cheap, noisy signal
    steps: int = knob(10, ge=1)
    max_prompts: int = knob(3, ge=1)  # the first prompts of the set
    # clip (the few samples above) | denoising (the early-stopping objective, reported as -loss)
    objective: str = knob("clip", choices=QUICK_OBJECTIVES)


@dataclass
class DreamBenchConfig:
    """DreamBench's DINO, CLIP-I and CLIP-T (Ruiz et al. 2023, DreamBooth section 4.1) over every edit prompt's
    samples, beside the paper's two (sweeper/evaluation/dreambench.py; evaluation=dreambench turns it on)."""

    enabled: bool = False
    # the DINO slot: a transformers ViTModel (CLS token) hub id or folder; a CLIPModel folder: its image tower
    dino: str = "facebook/dino-vits16"
    # DreamBench's live subjects take live_prompts instead of evaluation.prompts (its table: cats and dogs)
    live_classes: list[str] = knob(["cat", "dog"])
    live_prompts: list[str] = knob([])
    class_word: str | None = None  # set by the trial from data.class_word (else inversion.init_word)


@dataclass
class EvaluationConfig:
    """The paper's protocol (section 5 and the official evaluation code): CLIP ViT-B/32 judge; DDIM 50 steps,
    eta 0, guidance 5.0, unconditional prompt ""; 64 samples per prompt in batches of 8. The edit prompts
    come from the nested group evaluation/prompts."""

    judge: str = "openai/clip-vit-base-patch32"  # transformers CLIPModel: hub id or local folder
    num_samples: int = knob(64, ge=1, hint="samples per prompt (and of the reconstruction prompt)")
    batch_size: int = knob(8, ge=1)
    sampler: str = knob("ddim", choices=SAMPLERS)
    steps: int = knob(50, ge=1)
    guidance: float = knob(5.0, ge=0, hint="classifier-free guidance scale; 1 = no guidance")
    eta: float = knob(0.0, ge=0, le=1, hint="DDIM eta (ignored by the other samplers)")
    negative_prompt: str | None = ""  # the unconditional prompt; null = the model's own (SDXL: zeros)
    seed: int = knob(0, ge=0, le=SEED_MAX)  # noise of sample i of prompt p: seeded by (seed, p, i)
    precision: str = knob("auto", choices=("auto", *PRECISIONS), hint="auto = fp16 on CUDA, fp32 on CPU")
    # the text_similarity objective: mean_embedding (paper text) | per_image (official code)
    text_variant: str = knob("mean_embedding", choices=TEXT_VARIANTS)
    bootstrap: int = knob(1000, ge=1, hint="bootstrap resamples for the 95% CIs")
    references: bool = True  # compute (once, cached) the image_only and prompt_only reference points
    cache_dir: str = ".cache/references"
    grid_samples: int = knob(16, ge=1, hint="samples shown in each samples/<prompt>.png grid")
    grid_tile: int = knob(256, ge=8, hint="max tile width in pixels in the grids")
    progress: bool = True  # tqdm bars while sampling
    use_pivotal: bool = True  # a run with pivotal/ is evaluated with its tuned UNet
    # adaptive evaluation: sample each prompt in rounds until its 95% half-width <= this (null = off)
    target_halfwidth: float | None = knob(None, gt=0, hint="a 95% half-width, e.g. 0.01, or null for off")
    # adaptive evaluation: samples in the first round and in each further round (an interval needs two;
    # a value above num_samples means one round of num_samples)
    min_samples: int = knob(8, ge=2)
    prompt_set: str | None = None  # the preset's name, recorded with the metrics
    reconstruction_prompt: str = "a photo of {}"
    # edit prompt templates ("{}" = S*), or the name of a preset in conf/evaluation/prompts/
    prompts: Any = knob(hint="e.g. evaluation/prompts=paper_examples")
    quick: QuickEvaluationConfig = field(default_factory=QuickEvaluationConfig)
    # checkpoints as front points: also evaluate the vectors at these training steps (multiples of
    # inversion.log_every, below inversion.steps), with this same protocol and noise: at_steps/step_<N>/
    at_steps: list[int] | None = None
    dreambench: DreamBenchConfig = field(default_factory=DreamBenchConfig)


@dataclass
class TrackingConfig:
    """W&B view of each trial (the run folder stays the source of truth); offline by default."""

    enabled: bool = True
    mode: str = knob("${oc.env:WANDB_MODE,offline}", choices=TRACKING_MODES)
    project: str = "textual-inversion"
    entity: str | None = None
    group: str | None = None  # null = the Optuna study name in a search, the sweep folder's name in a grid
    dir: str | None = None  # null = the run folder (W&B writes <run_dir>/wandb/)
    tags: list[str] = knob([])
    # seconds wandb.init may take online before the trial logs offline instead (wandb's own default: 90)
    init_timeout: float = knob(15.0, gt=0)
    log_images: bool = True  # sample grids as wandb.Image
    log_embeddings: bool = True  # learned embeddings as an artifact


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    inversion: InversionConfig = field(default_factory=InversionConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    device: str = knob("auto", hint="auto | cpu | cuda | cuda:N")
    run_dir: str = "${hydra:runtime.output_dir}"


GROUPS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "inversion": InversionConfig,
    "evaluation": EvaluationConfig,
    "tracking": TrackingConfig,
}


def register() -> None:
    """Put the schema into Hydra's ConfigStore as `schema` (idempotent; done on import)."""
    ConfigStore.instance().store(name=SCHEMA, node=Config)


register()


# ------------------------------------------------------------------------------------------ checking


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value) if isinstance(value, int) else repr(value)


def _check_field(key: str, value: Any, meta: dict) -> None:
    hint = f" ({meta['hint']})" if meta.get("hint") else ""
    if meta.get("choices") and value not in meta["choices"]:
        raise _error(key, f"{key}={value!r}: choose one of {', '.join(meta['choices'])}")
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    bounds = [
        (meta.get("gt"), lambda b: value > b, "> {}"),
        (meta.get("ge"), lambda b: value >= b, ">= {}"),
        (meta.get("le"), lambda b: value <= b, "<= {}"),
    ]
    rule = " and ".join(text.format(b) for b, _, text in bounds if b is not None)
    in_range = all(ok(b) for b, ok, _ in bounds if b is not None)
    if not math.isfinite(value) or not in_range:
        kind = "a whole number" if isinstance(value, int) else "a finite number"
        raise _error(key, f"{key}={_shown(value)}: must be {kind}{' ' + rule if rule else ''}{hint}")


def check_fields(obj: Any, prefix: str) -> None:
    """Every field of a schema dataclass (and its nested groups) against its range, choices, finiteness."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{prefix}.{f.name}")
        else:
            _check_field(f"{prefix}.{f.name}" if prefix else f.name, value, dict(f.metadata))


def _template_check(key: str, template: str) -> None:
    if str(template).count("{}") != 1:
        raise EvaluationConfigError(f"{key}: {template!r} must contain '{{}}' exactly once (where S* goes)")


def resolve_prompts(prompts: Any) -> list[str]:
    """`evaluation.prompts` as a list of templates; a string names a preset in conf/evaluation/prompts/."""
    if isinstance(prompts, str):
        preset = PROMPTS_DIR / f"{prompts}.yaml"
        if not preset.is_file():
            names = sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))
            raise EvaluationConfigError(
                f"evaluation.prompts={prompts!r}: not a list and not a preset name; presets: {', '.join(names)}"
            )
        prompts = yaml.safe_load(preset.read_text())["prompts"]
    if prompts is not None and not isinstance(prompts, (list, tuple, ListConfig)):
        raise EvaluationConfigError(
            f"evaluation.prompts={prompts!r}: give a list of templates or a preset name (conf/evaluation/prompts/)"
        )
    return [str(p) for p in (prompts or [])]


def check_evaluation(ev: EvaluationConfig) -> list[str]:
    """The evaluation group's own rules beyond ranges; returns the resolved edit prompts."""
    check_fields(ev, "evaluation")
    prompts = resolve_prompts(ev.prompts)
    if not prompts:
        raise EvaluationConfigError(
            "evaluation.prompts is empty: give edit prompts such as 'a photo of {} on the moon'"
        )
    for p in prompts:
        _template_check("evaluation.prompts", p)
    _template_check("evaluation.reconstruction_prompt", ev.reconstruction_prompt)
    local = Path(ev.judge).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise EvaluationConfigError(
            f"evaluation.judge={ev.judge}: folder has no config.json; give a CLIPModel folder"
        )
    if not local.exists() and (
        not ev.judge or ev.judge.startswith((".", "/", "~")) or ev.judge.count("/") != 1
    ):
        raise EvaluationConfigError(
            f"evaluation.judge={ev.judge!r}: no such folder, and not a hub id (owner/name)"
        )
    return prompts


def check_device(device: str) -> None:
    """The spelling of `device` (whether this machine has it is checks.check_device's)."""
    kind, _, index = device.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"device={device!r}: choose auto, cpu, cuda or cuda:N (N = the GPU's index)")


def _key(prefix: str, full_key: Any) -> str:
    """The dotted key an OmegaConf error is about, whether its full_key is relative to the group or not."""
    full = str(full_key or "")
    return full if full == prefix or full.startswith(prefix + ".") else f"{prefix}.{full}".rstrip(".")


def _refuse_unknown_keys(schema: type, node: Any, prefix: str) -> None:
    """A key the schema lacks (`+inversion.lrr=1` gets past Hydra's struct mode) is refused, not ignored."""
    if not isinstance(node, (dict, DictConfig)):
        return
    hints = typing.get_type_hints(schema)  # the fields' types, string annotations resolved
    names = [f.name for f in dataclasses.fields(schema)]
    for key in map(str, node.keys()):
        if key not in names:
            raise _error(prefix, f"{prefix}.{key}: no such key; known keys: {', '.join(names)}")
        nested = hints.get(key)
        if isinstance(nested, type) and dataclasses.is_dataclass(nested):
            _refuse_unknown_keys(nested, node[key], f"{prefix}.{key}")


def _typed(schema: type, node: Any, prefix: str) -> Any:
    """`node` (a DictConfig, typed or not, or a dict) as an instance of `schema`; ConfigError names the key."""
    _refuse_unknown_keys(schema, node, prefix)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)
    except MissingMandatoryValue as err:
        key = _key(prefix, err.full_key)
        meta = _metadata(schema, key.removeprefix(prefix + "."))
        raise _error(key, f"{key} is not set: {meta.get('hint') or 'give it a value'}") from None
    except ConfigKeyError as err:
        known = ", ".join(f.name for f in dataclasses.fields(schema))
        raise _error(prefix, f"{prefix}: {str(err).splitlines()[0]}; known keys: {known}") from None
    except OmegaConfBaseException as err:  # ValidationError and the like: a value of the wrong type
        key = _key(prefix, getattr(err, "full_key", ""))
        raise _error(key, f"{key}: {str(err).splitlines()[0]}") from None


def _metadata(schema: type, dotted: str) -> dict:
    names = dotted.split(".")
    for f in dataclasses.fields(schema):
        if f.name == names[0]:
            nested = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if len(names) > 1 and dataclasses.is_dataclass(nested):
                return _metadata(type(nested), ".".join(names[1:]))
            return dict(f.metadata)
    return {}


def _resolved(node: DictConfig, prefix: str) -> dict:
    try:
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = _key(prefix, getattr(err, "full_key", ""))
        raise _error(key, f"{key}: {str(err).splitlines()[0]}") from None


def settings(cfg: DictConfig | dict) -> Config:
    """The whole configuration typed and checked (types, required keys, ranges, finiteness, choices,
    templates, the device's spelling); touches no model and writes nothing. Raises ConfigError."""
    groups = {}
    for name, schema in GROUPS.items():
        node = cfg.get(name) if cfg.get(name) is not None else {}
        if isinstance(node, DictConfig):
            own = OmegaConf.get_type(node)
            if isinstance(own, type) and issubclass(own, schema):
                schema = own  # a node typed by an extension of the group's schema is checked against it
            node = _resolved(node, name)  # in the whole config: ${inversion.steps} and the like
        groups[name] = _typed(schema, node, name)
    for name in ("model", "data", "inversion", "tracking"):
        check_fields(groups[name], name)
    if not groups["inversion"].placeholder.strip():
        raise ConfigError("inversion.placeholder is empty: e.g. inversion.placeholder='<my-cat>'")
    if not groups["inversion"].init_word.strip():
        raise ConfigError("inversion.init_word is empty: " + _metadata(InversionConfig, "init_word")["hint"])
    check_evaluation(groups["evaluation"])
    device = str(cfg.get("device") or "auto")
    check_device(device)
    run_dir = (
        OmegaConf.select(cfg, "run_dir", throw_on_resolution_failure=False)
        if isinstance(cfg, DictConfig)
        else cfg.get("run_dir")
    )
    return Config(**groups, device=device, run_dir=str(run_dir or ""))


def evaluation_settings(ev: Any) -> dict:
    """`evaluation.*` (a DictConfig, a dict or an EvaluationConfig) checked, as a plain dict whose
    `prompts` are the resolved templates: what evaluation/protocol.py reads."""
    if isinstance(ev, EvaluationConfig):
        ev = dataclasses.asdict(ev)
    elif isinstance(ev, DictConfig):
        ev = _resolved(ev, "evaluation")
    typed = _typed(EvaluationConfig, ev, "evaluation")
    prompts = check_evaluation(typed)
    return {**dataclasses.asdict(typed), "prompts": prompts}


# ------------------------------------------------------------------------------------------- derived


# DVAR's textual-inversion setting (yandex-research/DVAR): a window of 310 evaluations, one per step, against a
# 6100-step baseline; threshold 0.15. Its 8-15x speed-up counts training time only (evaluation after the clock).
DVAR_WINDOW_STEPS, DVAR_BASELINE_STEPS = 310, 6100
MIN_SCALED_WINDOW = 3  # two values make a variance; one more so that the window is not all the values at once


def early_stop_window(stop: Any, steps: int) -> int:
    """Evaluations in the early-stopping window: `stop.window`, or (null) DVAR's window scaled to the budget:
    the same fraction of `steps` (310 / 6100), counted in evaluations every `stop.every` steps."""
    if stop.window is not None:
        return int(stop.window)
    scaled = round(int(steps) * DVAR_WINDOW_STEPS / DVAR_BASELINE_STEPS / int(stop.every))
    return max(MIN_SCALED_WINDOW, scaled)


def effective_lr(inversion: Any) -> float:
    """The optimizer's learning rate: lr * batch_size * grad_accum when scale_lr, else lr."""
    scale = int(inversion.batch_size) * int(inversion.grad_accum) if inversion.scale_lr else 1
    return float(inversion.lr) * scale


LR_CONVENTION = (
    "lr = the effective learning rate, the optimiser's: inversion.lr x batch_size x grad_accum with "
    "inversion.scale_lr (the paper's 0.04 = base 5e-3 x 8), inversion.lr itself without"
)


def lr_label(effective: float, base: float | None = None) -> str:
    """THE way a learning rate is shown to a person (console, Optuna user attrs, optimization_results.yaml, plot
    labels, findings, W&B): the effective (optimiser's) lr, with the base `inversion.lr` named beside it where
    it differs: `lr 0.029 (effective; base 0.00363)`; `lr 0.005` where they agree or the base is unknown."""
    shown = f"lr {short_number(effective)}"
    if base is None or math.isclose(float(base), float(effective), rel_tol=1e-6):
        return shown
    return f"{shown} (effective; base {short_number(base)})"


def inversion_lr_label(inversion: Any) -> str:
    """`lr_label` of an inversion config (`cfg.inversion`)."""
    return lr_label(effective_lr(inversion), float(inversion.lr))


def short_number(x: float, digits: int = 3) -> str:
    """`digits` significant digits, the way the paper writes them: 0.0290 -> '0.029', 5e-05 -> '5e-5'."""
    s = f"{float(x):.{digits}g}"
    if "e" in s:
        mantissa, exponent = s.split("e")
        s = f"{mantissa}e{int(exponent)}"
    return s


def resume_safe_fields(schema: type = InversionConfig) -> list[str]:
    """The inversion knobs that may change between a run and its resumption (left out of the fingerprint)."""
    return [f.name for f in dataclasses.fields(schema) if f.metadata.get("resume_safe")]


def default_of(f: dataclasses.Field) -> Any:
    """A schema field's default value."""
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def fingerprinted_keys(values: dict, schema: type = InversionConfig) -> list[str]:
    """The keys of `values` (one run's inversion group) a checkpoint must match to be resumed, as the schema
    declares them: every key not marked resume-safe (a key the schema lacks included), less a
    `fingerprinted_when_set` knob at its default, plus the knobs a knob away from its default
    `fingerprints_with` (lr_schedule=cosine: steps)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    keep = set()
    for key, value in values.items():
        f = fields.get(key)
        if f is None:
            keep.add(key)
            continue
        at_default = value == default_of(f)
        if not f.metadata.get("resume_safe") and not (
            f.metadata.get("fingerprinted_when_set") and at_default
        ):
            keep.add(key)
        if not at_default:
            keep.update(k for k in f.metadata.get("fingerprints_with", ()) if k in values)
    return [k for k in values if k in keep]


def job_overrides() -> list[str]:
    """The Hydra job's task overrides (`inversion.lr=0.01 data=style`); [] outside a Hydra job."""
    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


@dataclass
class Derived:
    """Values computed once from the configuration; recorded as config.yaml's `derived:` block."""

    effective_lr: float
    images: list[Path]  # the training images actually used (data.n_images' seeded subset, or all)
    prompts: list[str]  # the resolved edit prompt templates
    overrides: list[str]

    @property
    def n_images(self) -> int:
        return len(self.images)

    def as_dict(self) -> dict:
        """The `derived:` block of config.yaml (image file names, not paths: data.images holds the folder)."""
        return {
            "effective_lr": self.effective_lr,
            "n_images": self.n_images,
            "images": [p.name for p in self.images],
            "prompts": list(self.prompts),
            "overrides": list(self.overrides),
        }
