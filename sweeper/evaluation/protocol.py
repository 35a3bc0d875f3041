"""CLIP reconstruction and editability of a learned embedding (Gal et al. 2022, section 5).

    metrics = evaluate_run(cfg, run_dir, training_images)   # writes run_dir/metrics.json + samples/*.png

- image_similarity: mean cosine over every (sample of "a photo of S*", training image) pair of CLIP
  image embeddings.
- text_similarity, per edit prompt p (a template with "{}" where S* goes): the judge's text is p with the
  concept removed (whitespace normalised). Two named variants, averaged over prompts:
  "mean_embedding" = cos(text, normalised mean of the samples' image embeddings) (the paper's text, the
  default objective); "per_image" = mean over samples of cos(text, sample) (the official code).
- `ev` is `evaluation.*` (sweeper/config/schema.py EvaluationConfig: defaults, types, ranges); a dict is checked
  against it too.
- Bootstrap 95% CIs resample the samples (seeded); references "image_only" and "prompt_only" are cached
  on disk under evaluation.cache_dir, keyed by a hash of model, concept images, prompts, protocol and judge.

This module samples and records; the judge and the similarity arithmetic are sweeper/evaluation/clip_score.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch
from PIL import Image

from sweeper.config.schema import EvaluationConfigError, evaluation_settings
from sweeper.data.images import load_image
from sweeper.evaluation.clip_score import (
    VARIANTS,
    Judge,
    NonFiniteError,
    image_only_similarity,
    require_finite,
    score,
)
from sweeper.evaluation.sampling import Sampler, save_grid, slugs
from sweeper.models import load_pipeline, resolve_device
from sweeper.store import atomic
from sweeper.store.embeddings import load_embedding_file, load_into_pipeline


def concept_removed(template: str) -> str:
    """The judge's text for a prompt template: the concept slot dropped, whitespace normalised."""
    return " ".join(template.replace("{}", " ").split())


def fill(template: str, placeholder: str) -> str:
    return template.replace("{}", placeholder)


# -------------------------------------------------------------------------------------- evaluation


def _sample_and_embed(sampler: Sampler, judge: Judge, prompt: str, key: str, n: int, grid_path=None, ev=None):
    try:
        images = sampler.sample(prompt, n, noise_key=key, desc=prompt[:40])
    except NonFiniteError as err:
        raise NonFiniteError(f"prompt {prompt!r}: {err}") from None
    if grid_path is not None:
        save_grid(images, grid_path, ev["grid_samples"], ev["grid_tile"])
    return require_finite(judge.images(images), f"prompt {prompt!r}: the judge's features of the samples")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reference_key(model: str, training_images: list[Path], ev: dict, protocol: dict) -> str:
    model_path = Path(model).expanduser()
    model_id = str(model_path.resolve()) if model_path.exists() else model
    if (model_path / "model_index.json").is_file():
        model_id += f"@{(model_path / 'model_index.json').stat().st_mtime_ns}"
    blob = json.dumps(
        {
            "model": model_id,
            "images": [_file_digest(p) for p in training_images],
            "prompts": ev["prompts"],
            "reconstruction_prompt": ev["reconstruction_prompt"],
            "protocol": protocol,
            "judge": ev["judge"],
            "variant": ev["text_variant"],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def references(sampler, judge, training, texts, ev: dict, protocol: dict, key: str) -> dict:
    """'image_only' (training set vs itself and vs the prompts' texts) and 'prompt_only' (concept removed)."""
    cache = Path(ev["cache_dir"]).expanduser() / f"{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())["references"]
    n = ev["num_samples"]
    image_only = score(training, training, [training] * len(texts), texts, ev["text_variant"], 1)
    image_only["image_similarity"] = image_only_similarity(training)
    recon = _sample_and_embed(
        sampler, judge, concept_removed(ev["reconstruction_prompt"]), ev["reconstruction_prompt"], n
    )
    prompt_samples = [_sample_and_embed(sampler, judge, concept_removed(p), p, n) for p in ev["prompts"]]
    prompt_only = score(recon, training, prompt_samples, texts, ev["text_variant"], 1)
    keep = ("image_similarity", "text_similarity", *(f"text_similarity_{v}" for v in VARIANTS))
    refs = {
        name: {k: r[k] for k in keep}
        for name, r in (("image_only", image_only), ("prompt_only", prompt_only))
    }
    atomic.write_json(cache, {"key": key, "judge": ev["judge"], "protocol": protocol, "references": refs})
    return refs


def evaluate_pipeline(
    pipe,
    placeholder: str,
    ev,
    training_images: list[Path],
    out_dir: Path,
    *,
    model: str,
    extra: dict | None = None,
    device: str | torch.device = "cpu",
) -> dict:
    """Sample, judge and score an embedding already loaded into `pipe` as `placeholder`; write metrics.json."""
    t0 = time.time()
    ev = evaluation_settings(ev)  # the schema's types, ranges and defaults; prompts resolved
    out_dir = Path(out_dir)
    judge = Judge(ev["judge"], device)
    sampler = Sampler(
        pipe,
        sampler=ev["sampler"],
        steps=ev["steps"],
        guidance=ev["guidance"],
        eta=ev["eta"],
        negative_prompt=ev["negative_prompt"],
        batch_size=ev["batch_size"],
        seed=ev["seed"],
        progress=ev.get("progress", True),
    )
    protocol = {
        k: ev[k]
        for k in (
            "sampler",
            "steps",
            "guidance",
            "eta",
            "negative_prompt",
            "num_samples",
            "batch_size",
            "reconstruction_prompt",
            "prompt_set",
            "precision",
        )
    }
    protocol["resolution"] = sampler.resolution

    def to_pil(path: Path) -> Image.Image:  # the training images as the trainer saw them (crop, resize)
        pixels = ((load_image(Path(path), sampler.resolution) + 1) * 127.5).round().clamp(0, 255)
        return Image.fromarray(pixels.byte().permute(1, 2, 0).numpy())

    training = require_finite(
        judge.images([to_pil(p) for p in training_images]), "the judge's features of the training images"
    )
    texts = require_finite(
        judge.texts([concept_removed(p) for p in ev["prompts"]]), "the judge's text features"
    )
    n, samples = ev["num_samples"], out_dir / "samples"
    recon = _sample_and_embed(
        sampler,
        judge,
        fill(ev["reconstruction_prompt"], placeholder),
        ev["reconstruction_prompt"],
        n,
        samples / "reconstruction.png",
        ev,
    )
    names = slugs(ev["prompts"])
    prompt_samples = [
        _sample_and_embed(sampler, judge, fill(p, placeholder), p, n, samples / f"{names[p]}.png", ev)
        for p in ev["prompts"]
    ]
    metrics = score(recon, training, prompt_samples, texts, ev["text_variant"], ev["bootstrap"], ev["seed"])
    metrics["per_prompt"] = {
        p: {**vals, "text": concept_removed(p), "grid": f"samples/{names[p]}.png"}
        for p, vals in zip(ev["prompts"], metrics["per_prompt"])
    }
    metrics["text_variant"] = ev["text_variant"]
    refs = None
    if ev["references"]:
        key = reference_key(model, training_images, ev, protocol)
        refs = references(sampler, judge, training, texts, ev, protocol, key)
    metrics.update(
        references=refs,
        judge=ev["judge"],
        protocol=protocol,
        num_samples=n,
        placeholder=placeholder,
        seeds={
            "noise": ev["seed"],
            "noise_rule": "sha256(f'{seed}|{template}|{index}')[:8]",
            "bootstrap": ev["seed"],
            "bootstrap_resamples": ev["bootstrap"],
        },
        model=model,
        training_images=[str(p) for p in training_images],
        wall_time_s=round(time.time() - t0, 3),
        **(extra or {}),
    )
    atomic.write_json(out_dir / "metrics.json", metrics)
    return metrics


def evaluate_embedding(
    cfg,
    embedding: str | Path,
    training_images: list[Path],
    out_dir: Path,
    token: str | None = None,
    extra: dict | None = None,
) -> dict:
    """Load the model and an embedding file (or run folder) safely, then evaluate_pipeline."""
    ev = evaluation_settings(cfg.evaluation)
    loaded = load_embedding_file(embedding)  # refuses pickles carrying code, before any model work
    if not training_images:
        raise EvaluationConfigError("data.images: no training images to compare the samples with")
    device = resolve_device(cfg.get("device"))
    if ev["precision"] == "auto":
        ev["precision"] = "fp16" if device.type == "cuda" else "fp32"
    pipe = load_pipeline(
        str(cfg.model.pretrained), ev["precision"], str(device), config=cfg.model.get("config")
    )
    placeholder = load_into_pipeline(pipe, loaded, token)
    pivotal = _apply_pivotal(pipe, Path(embedding) / "pivotal") if ev["use_pivotal"] else None
    info = {
        "embedding": str(embedding),
        "num_vectors": loaded.num_vectors,
        "pivotal": pivotal,
        **(extra or {}),
    }
    return evaluate_pipeline(
        pipe,
        placeholder,
        ev,
        training_images,
        out_dir,
        model=str(cfg.model.pretrained),
        extra=info,
        device=device,
    )


def _apply_pivotal(pipe, folder: Path) -> str | None:
    """Use a run's pivotal-tuned UNet (full weights or LoRA) if it has one; return the mode used."""
    if (folder / "unet").is_dir():
        from diffusers import UNet2DConditionModel

        unet = pipe.unet
        pipe.unet = UNet2DConditionModel.from_pretrained(folder / "unet", dtype=unet.dtype).to(unet.device)
        return "full"
    if folder.is_dir() and any(folder.glob("*.safetensors")):
        pipe.load_lora_weights(str(folder))
        return "lora"
    return None


def evaluate_run(cfg, run_dir: Path, training_images: list[Path]) -> dict:
    """The trial's evaluation: the run folder's shared S* only (per-image tokens are not evaluated)."""
    return evaluate_embedding(cfg, Path(run_dir), training_images, Path(run_dir))
