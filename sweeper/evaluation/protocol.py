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
- Bootstrap 95% CIs resample the samples (seeded).
- References, cached under evaluation.cache_dir by what each depends on (models and judges by their files'
  sizes and mtimes or hub revision: sweeper/evaluation/cache.py; a damaged entry is recomputed and rewritten):
  "prompt_only" samples (the CLIP features of the prompts without S*) by model, prompts, protocol and judge,
  NOT the concept images, so
  every image subset of a sweep shares them (only the cheap comparison with the images is redone);
  "image_only" (the training set against itself and the prompts' texts) by the images, judge and prompts.
- Adaptive evaluation (evaluation.target_halfwidth): sampling goes in rounds of evaluation.min_samples
  until each OBJECTIVE's 95% interval half-width is at most the target, or num_samples is reached.
  image_similarity: the reconstruction prompt's half-width (1.96 x the standard error of its mean).
  text_similarity, the mean over P edit prompts: every prompt gets the next round together (all prompts keep
  one sample count, so the per-prompt "mean_embedding" values stay comparable) until
  sqrt(sum of the prompts' squared half-widths) / P (prompts' samples are independent; each half-width is
  1.96 x a jackknife standard error) is at most the target. Sample i of prompt p always starts from the
  same noise, so the samples used are a prefix of the fixed evaluation's: common random numbers hold across
  runs. metrics.json records each prompt's sample count (samples_per_prompt) and each objective's
  half-width.

This module samples and records; the judge is sweeper/evaluation/clip_score.py, and the metrics (every key
metrics.json holds per metric: its value, `<name>_ci` and `<name>_ci_too_few_samples`) are the registry's,
sweeper/evaluation/metrics.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sweeper.config.schema import EvaluationConfigError, evaluation_settings
from sweeper.data.images import load_image
from sweeper.evaluation.cache import read_entry, source_identity
from sweeper.evaluation.clip_score import Judge, NonFiniteError, require_finite
from sweeper.evaluation.metrics import IMAGE_SIMILARITY, evaluation_metrics, image_only_similarity, score
from sweeper.evaluation.sampling import Sampler, save_grid, slugs
from sweeper.models import load_pipeline, resolve_device
from sweeper.store import atomic
from sweeper.store.embeddings import load_embedding_file, load_into_pipeline

log = logging.getLogger(__name__)
ADAPTIVE_KEYS = ("target_halfwidth", "min_samples")  # not part of the references' protocol


def evaluation_precision(precision: str, device: torch.device) -> str:
    """`evaluation.precision` on `device`: auto is fp16 on CUDA, fp32 elsewhere (the one place it resolves)."""
    if precision != "auto":
        return precision
    return "fp16" if device.type == "cuda" else "fp32"


def concept_removed(template: str) -> str:
    """The judge's text for a prompt template: the concept slot dropped, whitespace normalised."""
    return " ".join(template.replace("{}", " ").split())


def fill(template: str, placeholder: str) -> str:
    return template.replace("{}", placeholder)


# -------------------------------------------------------------------------------------- evaluation


def halfwidth(features: np.ndarray, text: np.ndarray | None, training: np.ndarray, variant: str) -> float:
    """95% interval half-width of one prompt's similarity: 1.96 x its jackknife standard error.

    text None: the reconstruction prompt's image similarity (a mean over samples: the jackknife is the
    standard error of the mean). Otherwise the prompt's text similarity in `variant`."""
    n = len(features)
    if n < 2:
        return float("inf")
    if text is None or variant == "per_image":
        values = (features @ training.T).mean(1) if text is None else features @ text
        return float(1.96 * values.std(ddof=1) / np.sqrt(n))
    leave_one_out = (features.sum(0) - features) / (n - 1)
    theta = (leave_one_out / np.linalg.norm(leave_one_out, axis=1, keepdims=True)) @ text
    return float(1.96 * np.sqrt((n - 1) / n * ((theta - theta.mean()) ** 2).sum()))


def _sample_and_judge(sampler: Sampler, judge: Judge, prompt: str, key: str, n: int, start: int):
    """Samples start .. start+n-1 of `prompt` and the judge's (finite) features of them."""
    try:
        images = sampler.sample(prompt, n, noise_key=key, desc=prompt[:40], start=start)
    except NonFiniteError as err:
        raise NonFiniteError(f"prompt {prompt!r}: {err}") from None
    feats = require_finite(judge.images(images), f"prompt {prompt!r}: the judge's features of the samples")
    return images, feats


def _sample_and_embed(
    sampler: Sampler,
    judge: Judge,
    prompt: str,
    key: str,
    n: int,
    grid_path=None,
    ev=None,
    width=None,
) -> np.ndarray:
    """CLIP features of samples 0 .. n-1 of `prompt`; with `width` (features -> half-width) and
    ev["target_halfwidth"], sampled in rounds of ev["min_samples"] that stop once the width is reached."""
    one = None if width is None else (lambda feats: width(feats[0]))
    (feats,) = _sample_in_rounds(sampler, judge, [prompt], [key], n, [grid_path], ev or {}, one)
    return feats


def _sample_in_rounds(
    sampler: Sampler,
    judge: Judge,
    prompts: list[str],
    keys: list[str],
    n: int,
    grid_paths: list,
    ev: dict,
    width,
    keep: list[list] | None = None,
) -> list[np.ndarray]:
    """CLIP features of samples 0 .. n-1 of each prompt. With `width` (the list of every prompt's features ->
    the objective's half-width) and ev["target_halfwidth"]: rounds of ev["min_samples"] samples of every
    prompt, stopping once the half-width is at most the target; each prompt's samples are a prefix of its
    fixed-noise sequence. `keep`: a list that receives each prompt's images (for a second encoder)."""
    target = ev.get("target_halfwidth")
    step = n if width is None or target is None else ev["min_samples"]
    images: list[list] = [[] for _ in prompts]
    parts: list[list[np.ndarray]] = [[] for _ in prompts]
    while len(images[0]) < n:
        more = min(step, n - len(images[0]))
        for i, (prompt, key) in enumerate(zip(prompts, keys)):
            new, new_feats = _sample_and_judge(sampler, judge, prompt, key, more, len(images[i]))
            images[i] += new
            parts[i].append(new_feats)
        if width is not None and target is not None and width([np.concatenate(p) for p in parts]) <= target:
            break
    for imgs, path in zip(images, grid_paths):
        if path is not None:
            save_grid(imgs, path, ev["grid_samples"], ev["grid_tile"])
    if keep is not None:
        keep.extend(images)
    return [np.concatenate(p) for p in parts]


def objective_halfwidth(halfwidths: list[float]) -> float:
    """95% half-width of a mean over prompts from each prompt's (independent samples): sqrt(sum hw^2) / P."""
    return float(np.sqrt(np.sum(np.square(halfwidths))) / len(halfwidths))


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _hash(blob: dict) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:24]


def prompt_only_key(model: str, ev: dict, protocol: dict) -> str:
    """What the prompt-only samples depend on: the model's and the judge's files (or hub revisions), prompts,
    protocol. Not the concept images."""
    return _hash(
        {
            "model": source_identity(model),
            "prompts": ev["prompts"],
            "reconstruction_prompt": ev["reconstruction_prompt"],
            "protocol": protocol,
            "judge": source_identity(ev["judge"]),
        }
    )


def image_only_key(training_images: list[Path], ev: dict, resolution: int) -> str:
    """What the image-only point depends on: the images (as the trainer sees them) and the judge; its text
    similarity also on the prompts and the variant."""
    return _hash(
        {
            "images": [_file_digest(p) for p in training_images],
            "resolution": resolution,
            "judge": source_identity(ev["judge"]),
            "prompts": ev["prompts"],
            "variant": ev["text_variant"],
        }
    )


def _values(scored: dict) -> dict:
    """A reference point: every registered evaluation metric's value (no intervals)."""
    return {m.name: scored[m.name] for m in evaluation_metrics()}


def _read_image_only(path: Path) -> dict:
    image_only = json.loads(path.read_text())["image_only"]
    names = [m.name for m in evaluation_metrics()]  # an entry from before a registration is recomputed
    if not all(isinstance(image_only.get(k), float) for k in names):
        raise ValueError(f"expected the float values {names}")
    return image_only


def _read_prompt_only(path: Path, n_prompts: int, n_samples: int) -> tuple[np.ndarray, list[np.ndarray]]:
    with np.load(path, allow_pickle=False) as stored:
        recon, prompts = stored["reconstruction"], stored["prompts"]
    if recon.ndim != 2 or prompts.shape[:2] != (n_prompts, n_samples) or len(recon) != n_samples:
        raise ValueError(
            f"shapes {recon.shape} and {prompts.shape} are not {n_prompts} prompts x {n_samples}"
        )
    require_finite(prompts, "the cached prompt-only features")
    require_finite(recon, "the cached reconstruction features")
    return recon, list(prompts)


def references(
    sampler, judge, training, texts, ev: dict, protocol: dict, model: str, training_images: list[Path]
) -> dict:
    """'image_only' (training set vs itself and vs the prompts' texts) and 'prompt_only' (concept removed),
    each from its own cache entry (see the module doc); the prompt-only samples always take num_samples."""
    root = Path(ev["cache_dir"]).expanduser()
    image_cache = root / "image_only" / f"{image_only_key(training_images, ev, sampler.resolution)}.json"
    image_only = read_entry(image_cache, _read_image_only)
    if image_only is None:
        scored = score(training, training, [training] * len(texts), texts, ev["text_variant"], 1)
        scored[IMAGE_SIMILARITY.name] = image_only_similarity(training)  # the off-diagonal pairs only
        image_only = _values(scored)
        atomic.write_json(image_cache, {"judge": ev["judge"], "image_only": image_only})

    key = prompt_only_key(model, ev, protocol)
    prompt_cache = root / "prompt_only" / f"{key}.npz"
    cached = read_entry(
        prompt_cache, lambda path: _read_prompt_only(path, len(ev["prompts"]), ev["num_samples"])
    )
    if cached is not None:
        recon, prompt_samples = cached
    else:
        n = ev["num_samples"]
        recon = _sample_and_embed(
            sampler, judge, concept_removed(ev["reconstruction_prompt"]), ev["reconstruction_prompt"], n
        )
        prompt_samples = [_sample_and_embed(sampler, judge, concept_removed(p), p, n) for p in ev["prompts"]]
        buf = io.BytesIO()
        np.savez(buf, reconstruction=recon, prompts=np.stack(prompt_samples))
        atomic.write_bytes(prompt_cache, buf.getvalue())
    scored = score(recon, training, prompt_samples, texts, ev["text_variant"], 1)
    return {"image_only": image_only, "prompt_only": _values(scored)}


def class_word(cfg) -> str | None:
    """The concept's class word (DreamBench's "{class}"): data.class_word, else inversion.init_word."""
    word = (cfg.get("data") or {}).get("class_word") or (cfg.get("inversion") or {}).get("init_word")
    return None if word is None else str(word)


def with_class(ev: dict) -> dict:
    """DreamBench's prompts for the concept's class: evaluation.dreambench.live_prompts for a live subject
    (its class in live_classes), and "{class}" filled with the class word in every template."""
    bench = ev["dreambench"]
    word = bench.get("class_word")
    templates = [*ev["prompts"], ev["reconstruction_prompt"]]
    if bench["enabled"] and word in bench["live_classes"] and bench["live_prompts"]:
        ev = {
            **ev,
            "prompts": list(bench["live_prompts"]),
            "prompt_set": f"{ev['prompt_set']} (live subject)",
        }
        templates = [*ev["prompts"], ev["reconstruction_prompt"]]
    if not any("{class}" in t for t in templates):
        return ev
    if not word:
        raise EvaluationConfigError(
            "evaluation.prompts: a template has '{class}' but no class word is known: set data.class_word "
            "(or inversion.init_word)"
        )
    fill_class = lambda t: t.replace("{class}", str(word))  # noqa: E731
    return {
        **ev,
        "prompts": [fill_class(p) for p in ev["prompts"]],
        "reconstruction_prompt": fill_class(ev["reconstruction_prompt"]),
    }


def dreambench_scores(
    judge: Judge, ev: dict, prompt_images: list[list], training_pils: list, training, device
) -> dict:
    """evaluation.dreambench: the registered metric dino over every edit prompt's samples (clip_i and clip_t
    come with the paper's two), and metrics.json's `dreambench` block: the real images' dino and clip_i, the
    DINO slot's encoder, the CLIP judge, the class word (sweeper/evaluation/dreambench.py)."""
    from sweeper.evaluation.dreambench import DinoEncoder, dino_scores

    dino = DinoEncoder(ev["dreambench"]["dino"], device)
    out = dino_scores(
        [dino.images(i) for i in prompt_images], dino.images(training_pils), ev["bootstrap"], ev["seed"]
    )
    block = {
        "real_images": {"dino": out.pop("real_images_dino"), "clip_i": image_only_similarity(training)},
        "dino_encoder": dino.identity(),
        "clip": judge.name,
        "class_word": ev["dreambench"].get("class_word"),
        "images_per_prompt": [len(i) for i in prompt_images],
    }
    return {**out, "dreambench": block}


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
    announce: bool = True,
) -> dict:
    """Sample, judge and score an embedding already loaded into `pipe` as `placeholder`; write metrics.json.
    `announce`: its phases (judge, sampling, references) as one log line each (not for quick evaluations)."""
    t0 = time.time()
    ev = with_class(evaluation_settings(ev))  # the schema's types, ranges and defaults; prompts resolved
    out_dir = Path(out_dir)
    say = log.info if announce else log.debug
    say("loading the CLIP judge %s", ev["judge"])
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
    reference_protocol = dict(protocol)  # the references always take num_samples: adaptivity is not in it
    protocol.update({k: ev[k] for k in ADAPTIVE_KEYS})

    def to_pil(path: Path) -> Image.Image:  # the training images as the trainer saw them (crop, resize)
        pixels = ((load_image(Path(path), sampler.resolution) + 1) * 127.5).round().clamp(0, 255)
        return Image.fromarray(pixels.byte().permute(1, 2, 0).numpy())

    training_pils = [to_pil(p) for p in training_images]
    training = require_finite(judge.images(training_pils), "the judge's features of the training images")
    texts = require_finite(
        judge.texts([concept_removed(p) for p in ev["prompts"]]), "the judge's text features"
    )
    n, samples, variant = ev["num_samples"], out_dir / "samples", ev["text_variant"]
    say(
        "sampling %s: the reconstruction prompt and %d edit prompts x %d samples, %d %s steps",
        placeholder,
        len(ev["prompts"]),
        n,
        ev["steps"],
        ev["sampler"],
    )
    recon = _sample_and_embed(
        sampler,
        judge,
        fill(ev["reconstruction_prompt"], placeholder),
        ev["reconstruction_prompt"],
        n,
        samples / "reconstruction.png",
        ev,
        width=lambda f: halfwidth(f, None, training, variant),
    )
    names = slugs(ev["prompts"])
    prompt_images: list[list] | None = [] if ev["dreambench"]["enabled"] else None
    prompt_samples = _sample_in_rounds(
        sampler,
        judge,
        [fill(p, placeholder) for p in ev["prompts"]],
        list(ev["prompts"]),
        n,
        [samples / f"{names[p]}.png" for p in ev["prompts"]],
        ev,
        width=lambda feats: objective_halfwidth(
            [halfwidth(f, t, training, variant) for f, t in zip(feats, texts)]
        ),
        keep=prompt_images,
    )
    metrics = score(recon, training, prompt_samples, texts, variant, ev["bootstrap"], ev["seed"])
    metrics["per_prompt"] = {
        p: {
            **vals,
            "text": concept_removed(p),
            "grid": f"samples/{names[p]}.png",
            "num_samples": len(f),
            "halfwidth": halfwidth(f, t, training, variant),
        }
        for p, vals, f, t in zip(ev["prompts"], metrics["per_prompt"], prompt_samples, texts)
    }
    metrics["text_variant"] = variant
    metrics["samples_per_prompt"] = {
        "reconstruction": len(recon),
        **{p: len(f) for p, f in zip(ev["prompts"], prompt_samples)},
    }
    metrics["reconstruction_halfwidth"] = halfwidth(recon, None, training, variant)
    metrics["text_similarity_halfwidth"] = objective_halfwidth(
        [halfwidth(f, t, training, variant) for f, t in zip(prompt_samples, texts)]
    )
    if prompt_images is not None:
        metrics.update(dreambench_scores(judge, ev, prompt_images, training_pils, training, device))
    refs = None
    if ev["references"]:
        say("reference points (image only, prompt only): from the cache or sampled once")
        refs = references(sampler, judge, training, texts, ev, reference_protocol, model, training_images)
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
        evaluation_time_s=round(
            time.time() - t0, 3
        ),  # this evaluation alone; the trial's is status.json's wall_time_s
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
    ev["dreambench"]["class_word"] = class_word(cfg)
    loaded = load_embedding_file(embedding)  # refuses pickles carrying code, before any model work
    if not training_images:
        raise EvaluationConfigError("data.images: no training images to compare the samples with")
    device = resolve_device(cfg.get("device"))
    ev["precision"] = evaluation_precision(ev["precision"], device)
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
