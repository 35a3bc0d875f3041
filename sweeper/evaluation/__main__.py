"""Re-evaluate without training: a finished run folder, or any embedding file against a model.

    python -m sweeper.evaluation SOURCE [--out DIR | --in-place] [--token TOKEN] [OVERRIDE ...]

SOURCE    a run folder (its config.yaml gives model, data and evaluation settings), or an embedding file:
          diffusers .safetensors/.bin ({token: [k, dim]}), A1111/ComfyUI .pt/.safetensors, the official
          code's embeddings_gs-N.pt. Every file goes through store.embeddings.load_embedding_file: pickles are
          read by torch's weights-only unpickler, and a file carrying code, holding NaN/inf, or of a width
          the model's text encoder cannot take is refused before any model loads (exit status 2).
OVERRIDE  Hydra overrides, the same as for `python -m sweeper`, applied on top of the run's config (or of
          conf/config.yaml for a file): evaluation=fast, evaluation/prompts=paper_examples,
          evaluation.judge=/path/to/clip, evaluation.num_samples=16, model.pretrained=..., data.images=...
--out     where metrics.json, samples/ and config.yaml go (default outputs/reeval/<source>-<time>);
          the run's own metrics.json is only overwritten with --in-place.
--token   the placeholder to register (default: the file's own name, else "<concept>").

Examples:
    python -m sweeper.evaluation multirun/2025-01-01/12-00-00/3 evaluation=fast
    python -m sweeper.evaluation cat.pt model.pretrained=stable-diffusion-v1-5/stable-diffusion-v1-5 \\
        data.images=data/cat evaluation/prompts=dreambench_live
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeper import CONF_DIR
from sweeper.config.compose import compose
from sweeper.console import quiet_libraries
from sweeper.data.images import check_images, list_images, select_images
from sweeper.evaluation.clip_score import check_judge
from sweeper.evaluation.metrics import summarised_metrics
from sweeper.evaluation.protocol import evaluate_embedding
from sweeper.store import atomic
from sweeper.store.embeddings import check_fits_model, load_embedding_file

log = logging.getLogger(__name__)


def _override_nodes(override: str) -> list[str]:
    """The config nodes an override sets: 'a.b=1' -> [a.b]; 'g=x' -> [g]; 'g/s=x' -> the keys g/s/x.yaml sets."""
    key = override.split("=", 1)[0].lstrip("+~")
    if "/" not in key:
        return [key]
    option = override.split("=", 1)[1] if "=" in override else ""
    path = CONF_DIR / key / f"{option}.yaml"
    if not path.is_file():
        return [key.replace("/", ".")]
    text = path.read_text()
    header = next((ln.split("@package", 1)[1].strip() for ln in text.splitlines() if "@package" in ln), None)
    package = header or key.replace("/", ".")
    return [f"{package}.{k}" for k in (yaml.safe_load(text) or {})]


def load_config(source: Path, overrides: list[str]) -> DictConfig:
    """The run's own config.yaml with the overrides applied, or conf/config.yaml + overrides for a file."""
    composed = compose(overrides)
    if not source.is_dir():
        return composed
    run_config = source / "config.yaml"
    if not run_config.is_file():
        raise FileNotFoundError(
            f"{source}: a folder without config.yaml; give a run folder or an embedding file"
        )
    cfg = OmegaConf.load(run_config)
    if not isinstance(cfg, DictConfig):
        raise ValueError(f"{run_config}: not a mapping of config keys; give a run folder written by a trial")
    OmegaConf.set_struct(cfg, False)
    if "evaluation" not in cfg:
        cfg.evaluation = composed.evaluation
    kept = _run_measures(cfg, overrides)
    for override in overrides:
        for node in _override_nodes(override):
            OmegaConf.update(cfg, node, OmegaConf.select(composed, node), merge=False)
    for key, value in kept.items():
        OmegaConf.update(cfg, f"evaluation.{key}", value, merge=False)
    if kept:
        preset = " ".join(o for o in overrides if _replaces_evaluation(o))
        print(
            f"{preset}: the protocol changes; the run's own {', '.join(kept)} stay "
            f"(judge {kept.get('judge', cfg.evaluation.judge)}; set evaluation.judge= / evaluation/prompts= to change them)",
            file=sys.stderr,
        )
    return cfg


# What a run measures with, which an evaluation preset (`evaluation=fast`) does not replace in a run folder:
# the preset changes the protocol (sampler, steps, samples); the judge and prompts are the run's (a run on the
# embedded world keeps the world's judge, which `fast`'s hub CLIP would replace, and its edit prompts).
RUN_MEASURES = ("judge", "prompts", "prompt_set")


def _replaces_evaluation(override: str) -> bool:
    return override.split("=", 1)[0].lstrip("+~") == "evaluation"


def _run_measures(cfg: DictConfig, overrides: list[str]) -> dict:
    """The run's judge and prompts (RUN_MEASURES) that an override replacing the whole evaluation group would
    swap out and that no other override sets explicitly."""
    if not any(_replaces_evaluation(o) for o in overrides):
        return {}
    named = {n for o in overrides if not _replaces_evaluation(o) for n in _override_nodes(o)}
    own = OmegaConf.to_container(cfg.evaluation, resolve=False)
    assert isinstance(own, dict)
    return {k: own[k] for k in RUN_MEASURES if k in own and f"evaluation.{k}" not in named}


def training_images(cfg: DictConfig) -> list:
    if OmegaConf.is_missing(cfg.data, "images"):
        raise ValueError(
            "data.images is required to evaluate a file: pass data.images=FOLDER (the concept images)"
        )
    paths = select_images(
        list_images(cfg.data.images), cfg.data.get("n_images"), cfg.data.get("subset_seed", 0)
    )
    check_images(paths)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sweeper.evaluation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="run folder or embedding file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (key=value, group=option)")
    parser.add_argument("--out", type=Path, help="output folder (default outputs/reeval/<source>-<time>)")
    parser.add_argument(
        "--in-place", action="store_true", help="write into the run folder (overwrites metrics.json)"
    )
    parser.add_argument("--token", help="placeholder token to register for the embedding")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()

    source = args.source.expanduser()
    try:
        if not source.exists():
            raise FileNotFoundError(f"{source}: no such run folder or embedding file")
        if args.in_place and not source.is_dir():
            raise ValueError("--in-place needs a run folder as SOURCE")
        cfg = load_config(source, args.overrides)
        # before loading any model: refuse unsafe, unknown or non-finite files, and a width the model's
        # configs (or its single file's header) say its text encoder(s) cannot take
        check_fits_model(load_embedding_file(source), str(cfg.model.pretrained), cfg.model.get("config"))
        check_judge(str(cfg.evaluation.judge))
        images = training_images(cfg)
        out = (
            source
            if args.in_place
            else args.out
            or Path("outputs/reeval") / (f"{source.stem or source.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        )
        if not args.in_place and (out / "metrics.json").exists():
            raise FileExistsError(f"--out {out}: already holds a metrics.json; choose another folder")
        extra = {"source": str(source), "overrides": list(args.overrides)}
        metrics = evaluate_embedding(cfg, source, images, Path(out), token=args.token, extra=extra)
        if not args.in_place:
            atomic.write_text(Path(out) / "config.yaml", OmegaConf.to_yaml(cfg, resolve=False))
    except Exception as err:  # every failure ends as one readable line and a non-zero status
        known = type(err).__module__.startswith("sweeper") or isinstance(
            err, (OSError, ValueError, HydraException, OmegaConfBaseException)
        )
        if not known:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    values = " ".join(f"{m.name}={metrics[m.name]:.4f}" for m in summarised_metrics() if m.name in metrics)
    print(f"{out}/metrics.json: {values} ({metrics['text_variant']}, judge {metrics['judge']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
