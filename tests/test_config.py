"""The typed schema (sweeper/config/schema.py): every knob defined once, every preset in conf/ checked against it,
the resume fingerprint and config.yaml's `derived:` block taken from it, and a new knob picked up without
any edit outside the schema (and the trainer that uses it)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import CONF_DIR, compose_config
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from sweeper import models
from sweeper.checks import check_config
from sweeper.config.derived import derive
from sweeper.config.schema import (
    PRECISIONS,
    PROPERTIES,
    SAMPLERS,
    TEXT_VARIANTS,
    Config,
    ConfigError,
    InversionConfig,
    effective_lr,
    evaluation_settings,
    inversion_lr_label,
    job_overrides,
    knob,
    lr_label,
    resume_safe_fields,
    settings,
)
from sweeper.data import images
from sweeper.evaluation import clip_score, sampling
from sweeper.store import record
from sweeper.store.checkpoints import fingerprint

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DEFAULTS = OmegaConf.structured(Config)


def base(images: Path | str = "concept") -> list[str]:
    return [f"data.images={images}", "inversion.init_word=cat", "tracking=none"]


def test_schema_choices_are_the_modules_own():
    assert set(PRECISIONS) == set(models.PRECISIONS)
    assert SAMPLERS == sampling.SAMPLERS
    assert TEXT_VARIANTS == clip_score.VARIANTS
    assert PROPERTIES == images.PROPERTIES


# --------------------------------------------------------------------------------- conf/ vs schema


def _package(path: Path) -> str | None:
    """Where a conf/ file's keys land: '' for the root, None for files that configure Hydra itself."""
    header = next(
        (ln.split("@package", 1)[1].strip() for ln in path.read_text().splitlines() if "@package" in ln), None
    )
    if header is not None:
        return None if header.startswith("hydra") else "" if header == "_global_" else header
    group = path.parent.relative_to(CONF_DIR).as_posix()
    return "" if group == "." else group.replace("/", ".")


def _leaves(node, prefix: str) -> dict:
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def _conf_files() -> list[Path]:
    skip = ("hydra", "search")  # Hydra's launcher and sweeper settings: not the job's config
    return [p for p in sorted(CONF_DIR.rglob("*.yaml")) if p.relative_to(CONF_DIR).parts[0] not in skip]


def _schema_default(dotted: str):
    node = SCHEMA_DEFAULTS
    for part in dotted.split("."):
        if not OmegaConf.is_config(node) or part not in node.keys():  # `in` alone skips ??? values
            raise KeyError(dotted)
        node = node._get_node(part)
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node._value()


def test_conf_has_no_key_the_schema_lacks_and_restates_no_default():
    """Defaults live in the schema only; conf/'s presets set values that differ from it (experiment
    overlays excepted: "ours" says lr=5e-3 on purpose, whatever the default becomes)."""
    checked = 0
    for path in _conf_files():
        package = _package(path)
        if package is None:
            continue
        loaded = yaml.safe_load(path.read_text()) or {}
        loaded = {k: v for k, v in loaded.items() if k not in ("defaults", "hydra")}
        for key, value in _leaves(loaded, package).items():
            if not key or key == package:
                continue
            try:
                default = _schema_default(key)
            except KeyError:
                pytest.fail(
                    f"{path.relative_to(ROOT)}: {key} is not in the schema (sweeper/config/schema.py)"
                )
            if path.relative_to(CONF_DIR).parts[0] != "experiment":
                assert value != default or value == "???", (
                    f"{path.relative_to(ROOT)}: {key}={value!r} restates the schema's default"
                )
            checked += 1
    assert checked > 30  # the presets were read (models, data, evaluation, prompts, tracking, experiments)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


PRESETS = (
    [f"model={o}" for o in _options("model")]
    + [f"data={o}" for o in _options("data")]
    + [f"evaluation={o}" for o in _options("evaluation")]
    + [f"evaluation/prompts={o}" for o in _options("evaluation/prompts")]
    + [f"tracking={o}" for o in _options("tracking")]
    + [f"+experiment/fig10@_global_={o}" for o in _options("experiment/fig10")]
    + [f"+experiment/pivotal_variant@_global_={o}" for o in _options("experiment/pivotal_variant")]
    + [f"experiment={o}" for o in _options("experiment")]
)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_typed_and_passes_the_schema(preset, monkeypatch):
    monkeypatch.chdir(ROOT)  # the world's presets name folders relative to the repository root
    cfg = compose_config(*base(), preset)
    assert OmegaConf.get_type(cfg) is Config and OmegaConf.get_type(cfg.inversion) is InversionConfig
    typed = settings(cfg)
    assert isinstance(typed.inversion, InversionConfig) and typed.data.images == "concept"


def test_no_defaults_outside_the_schema():
    """evaluation.DEFAULTS (now evaluation.protocol) and the inversion/evaluation defaults in conf/ are gone: the composed default
    config is the schema's defaults plus what the chosen presets say."""
    from sweeper.evaluation import protocol

    assert not hasattr(protocol, "DEFAULTS") and not hasattr(protocol, "check_config")
    cfg = compose_config(*base())
    for group in ("inversion", "tracking"):  # their default presets change nothing
        composed = OmegaConf.to_container(cfg[group], resolve=False)
        assert composed == OmegaConf.to_container(SCHEMA_DEFAULTS[group], resolve=False) | (
            {"init_word": "cat"}
            if group == "inversion"
            else {"enabled": False, "mode": "disabled", "log_images": False, "log_embeddings": False}
        )


# ------------------------------------------------------------------------------- fingerprint


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 0.125
    if value is None:
        return 3
    return f"{value}x"


def test_every_inversion_knob_is_in_the_fingerprint_unless_marked_resume_safe():
    cfg = compose_config(*base())
    before = fingerprint(cfg)
    safe = set(resume_safe_fields())
    assert {"lr", "seed", "num_vectors", "batch_size", "scale_lr", "init_word"}.isdisjoint(safe)
    for f in dataclasses.fields(InversionConfig):
        changed = copy.deepcopy(cfg)
        node, name = changed.inversion, f.name
        if OmegaConf.is_config(node[name]):  # a nested group (pivotal, early_stop): change one of its knobs
            node, name = node[name], next(k for k in node[name] if k != "enabled")
        node[name] = _changed(node[name])
        assert (fingerprint(changed) == before) == (f.name in safe), f.name


def test_fingerprint_is_unchanged_for_old_checkpoints():
    """Checkpoints written before the schema carry the old JSON: the same keys, the same values."""
    cfg = compose_config(*base(), "inversion.num_vectors=2", "+experiment/fig10@_global_=progressive")
    old_resumable = ("steps", "log_every", "checkpoint_every", "pivotal", "compile")
    # knobs added since, absent from those checkpoints' JSON: resume-safe, or fingerprinted only when set
    newer = ("early_stop", "lr_schedule", "lr_warmup_steps")
    inv = {
        k: v
        for k, v in OmegaConf.to_container(cfg.inversion, resolve=True).items()
        if k not in old_resumable + newer
    }
    old = {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "inversion": inv,
    }
    assert fingerprint(cfg) == json.dumps(old, sort_keys=True, default=str)


# ------------------------------------------------------------------------------- a new knob


@dataclass
class InversionWithWarmup(InversionConfig):
    """An inversion knob added the way the module docstring says: one line each, nothing else."""

    warmup_frac: float = knob(0.0, ge=0, le=1, hint="fraction of the steps with a linear LR warm-up")
    warmup_log: bool = knob(False, resume_safe=True)


@dataclass
class ConfigWithWarmup(Config):
    inversion: InversionWithWarmup = field(default_factory=InversionWithWarmup)


def _with_warmup(cfg):
    return OmegaConf.merge(OmegaConf.structured(ConfigWithWarmup), OmegaConf.to_container(cfg, resolve=False))


def test_a_new_inversion_knob_is_checked_fingerprinted_and_recorded_without_other_edits(
    concept_images, tmp_path
):
    cfg = _with_warmup(compose_config(*base(concept_images)))
    assert settings(cfg).inversion.warmup_frac == 0.0

    bad = cfg.copy()
    bad.inversion.warmup_frac = math.nan
    with pytest.raises(
        ConfigError, match=r"inversion.warmup_frac=nan: must be a finite number >= 0 and <= 1"
    ):
        settings(bad)
    bad.inversion.warmup_frac = 1.5
    with pytest.raises(ConfigError, match=r"inversion.warmup_frac=1.5"):
        settings(bad)

    fp = fingerprint(cfg)
    more = cfg.copy()
    more.inversion.warmup_frac = 0.1
    assert fingerprint(more) != fp  # it changes training: a checkpoint without it cannot be resumed
    louder = cfg.copy()
    louder.inversion.warmup_log = True
    assert fingerprint(louder) == fp  # marked resume-safe

    record.write_config(tmp_path, more)
    written = OmegaConf.load(tmp_path / record.CONFIG)
    assert written.inversion.warmup_frac == pytest.approx(0.1)
    assert written.derived.n_images == 4


# ------------------------------------------------------------------------------- derived values


def test_config_yaml_records_the_derived_block(concept_images, tmp_path):
    cfg = compose_config(
        *base(concept_images),
        "data.n_images=2",
        "data.subset_seed=3",
        "evaluation/prompts=paper_examples",
        "inversion.lr=0.01",
        "inversion.batch_size=3",
        "inversion.grad_accum=2",
    )
    record.start_run(tmp_path, cfg)
    derived = yaml.safe_load((tmp_path / record.CONFIG).read_text())["derived"]
    assert derived["effective_lr"] == pytest.approx(
        0.01 * 3 * 2
    )  # one float product; approx for its last bit
    folder = sorted(p.name for p in concept_images.iterdir())
    assert derived["n_images"] == 2 and len(derived["images"]) == 2 and set(derived["images"]) <= set(folder)
    assert derived["images"] == sorted(derived["images"], key=folder.index)  # in the folder's order
    preset = yaml.safe_load((CONF_DIR / "evaluation" / "prompts" / "paper_examples.yaml").read_text())
    assert derived["prompts"] == preset["prompts"]
    assert derived["overrides"] == []  # outside a Hydra job
    assert OmegaConf.load(tmp_path / record.CONFIG).inversion.lr == pytest.approx(0.01)  # the config too

    unscaled = compose_config(*base(concept_images), "inversion.lr=0.04", "inversion.scale_lr=false")
    assert derive(unscaled).effective_lr == pytest.approx(0.04) == effective_lr(unscaled.inversion)


def test_one_learning_rate_label_names_the_base_beside_the_effective_lr():
    assert lr_label(0.02904, 0.00363) == "lr 0.029 (effective; base 0.00363)"
    assert lr_label(0.005, 0.005) == "lr 0.005"  # no scaling: one number
    assert lr_label(0.04) == "lr 0.04"  # the base unknown (an old run folder)
    assert lr_label(8e-4, 1e-4) == "lr 0.0008 (effective; base 0.0001)"
    assert lr_label(4e-5, 5e-6) == "lr 4e-5 (effective; base 5e-6)"
    scaled = InversionConfig(lr=0.005, batch_size=4, grad_accum=2)
    assert inversion_lr_label(scaled) == "lr 0.04 (effective; base 0.005)"
    assert inversion_lr_label(InversionConfig(lr=0.005, batch_size=4, scale_lr=False)) == "lr 0.005"


def test_check_config_returns_what_derive_computes(tiny_sd, concept_images):
    cfg = compose_config(
        *base(concept_images), f"model.pretrained={tiny_sd}", "data.n_images=3", "device=cpu"
    )
    assert check_config(cfg) == derive(cfg)


def test_overrides_are_the_hydra_jobs_task_overrides(concept_images):
    overrides = [*base(concept_images), "inversion.lr=0.02", "evaluation=fast"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        full = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(full)
    try:
        assert job_overrides() == overrides
        assert derive(compose_config(*overrides)).overrides == overrides
    finally:
        HydraConfig.instance().cfg = None
    assert job_overrides() == []


# ------------------------------------------------------------------------------- evaluation


def test_evaluation_settings_fill_defaults_and_refuse_bad_values(tiny_judge):
    ev = evaluation_settings({"judge": str(tiny_judge), "prompts": "paper_examples", "num_samples": 3})
    assert ev["steps"] == 50 and ev["sampler"] == "ddim" and ev["num_samples"] == 3  # the schema's defaults
    assert ev["prompts"][0] == "a photo of {} on the moon"
    for bad, message in [
        ({"num_samples": 0}, r"evaluation.num_samples=0: must be a whole number >= 1"),
        ({"guidance": float("nan")}, r"evaluation.guidance=nan: must be a finite number >= 0"),
        ({"eta": 2.0}, r"evaluation.eta=2: must be a finite number >= 0 and <= 1"),
        ({"sampler": "plms"}, r"evaluation.sampler='plms': choose one of ddim"),
        ({"num_samples": "many"}, r"evaluation.num_samples: .*could not be converted to Integer"),
        ({"samplr": "ddim"}, r"evaluation.samplr: no such key"),
        ({"quick": {"every": 0}}, r"evaluation.quick.every=0: must be a whole number >= 1"),
        ({"prompts": 5}, r"evaluation.prompts=5: give a list of templates or a preset name"),
        ({"prompts": []}, r"evaluation.prompts is empty"),
    ]:
        with pytest.raises(ConfigError, match=message):
            evaluation_settings({"judge": str(tiny_judge), "prompts": "paper_examples", **bad})
    with pytest.raises(ConfigError, match=r"evaluation.prompts is not set"):
        evaluation_settings({"judge": str(tiny_judge)})
    # the evaluation's own error is a ConfigError too: the engine removes a run folder on either
    assert issubclass(clip_score.EvaluationConfigError, ConfigError)


def test_a_refused_config_is_recorded_without_a_derived_block(tmp_path):
    """A launcher that records a refused trial as failed still gets its config.yaml (no derived values)."""
    cfg = compose_config(*base(tmp_path / "no-such-folder"))
    record.start_run(tmp_path / "run", cfg)
    written = yaml.safe_load((tmp_path / "run" / record.CONFIG).read_text())
    assert "derived" not in written and written["data"]["images"].endswith("no-such-folder")


def test_the_schema_is_registered_for_any_hydra_entry_point(tmp_path):
    """hydra_plugins/ti_config_schema registers it when Hydra starts: composing conf/ in a fresh process
    that never imported sweeper is typed, and loads no torch."""
    code = (
        "import sys\n"
        "from hydra import compose, initialize_config_dir\n"
        "from omegaconf import OmegaConf\n"
        f"with initialize_config_dir(config_dir={str(CONF_DIR)!r}, version_base=None):\n"
        "    cfg = compose('config', overrides=['data.images=x'])\n"
        "print(OmegaConf.get_type(cfg.inversion).__name__, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.split() == ["InversionConfig", "False"], proc.stderr[-2000:]
