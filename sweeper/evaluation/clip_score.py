"""The CLIP judge and the paper's two similarities, with bias-corrected bootstrap CIs (Gal et al. 2022, section 5).

- image_similarity: mean cosine over every (sample, training image) pair of normalised CLIP image embeddings.
- text_similarity, per edit prompt: "mean_embedding" = cos(text, normalised mean of the samples' embeddings)
  (the paper's text); "per_image" = mean over samples of cos(text, sample) (the official code).

sweeper.evaluation.protocol samples the images these score; this module only embeds and scores them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import t as student_t

from sweeper.config.schema import EvaluationConfigError

# Lazy imports: transformers is imported where the judge is built: CLI start-up and config refusals stay fast.

VARIANTS = ("mean_embedding", "per_image")


class NonFiniteError(ValueError):
    """NaN or infinite numbers where evaluation needs finite ones (decoded samples, CLIP features)."""


def require_finite(values: np.ndarray | torch.Tensor, what: str) -> np.ndarray | torch.Tensor:
    """`values` unchanged if every entry is finite; NonFiniteError naming `what` otherwise.

    Without this, NaN samples become black images (uint8 conversion) and NaN features give NaN or
    normal-looking scores; a metric from either would be recorded as if it were a measurement."""
    array = values.detach().float().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    bad = ~np.isfinite(array)
    if bad.any():
        raise NonFiniteError(
            f"{what}: {int(bad.sum())} of {bad.size} values are NaN or infinite; the model, the embedding or the "
            "judge produces non-finite numbers (in fp16, try evaluation.precision=fp32), so no score is recorded"
        )
    return values


# -------------------------------------------------------------------------------------------- judge


def check_judge(name: str) -> None:
    """Refuse, in one line and in seconds, a judge that cannot load: a folder without a CLIP config, or a hub id
    neither in the local Hugging Face cache nor reachable (transformers would retry for minutes)."""
    path = Path(name).expanduser()
    if path.is_dir() or name.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise EvaluationConfigError(f"evaluation.judge={name}: not a CLIP model folder (no config.json)")
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    from sweeper.tracking import unreachable

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    why = "HF_HUB_OFFLINE is set" if offline else unreachable(constants.ENDPOINT)
    if why:
        raise EvaluationConfigError(
            f"evaluation.judge={name}: not in the local Hugging Face cache and the hub cannot be reached ({why}); "
            "pass a local CLIP folder as evaluation.judge=/path (on the embedded world: evaluation=toy)"
        )


class Judge:
    """A transformers CLIPModel scoring images and texts; every embedding comes back L2-normalised."""

    def __init__(self, name: str, device: str | torch.device = "cpu"):
        from transformers import CLIPModel, CLIPTokenizer

        try:
            from transformers import CLIPImageProcessorPil as Processor  # transformers 5: no torchvision
        except ImportError:
            from transformers import CLIPImageProcessor as Processor
        try:
            self.model = CLIPModel.from_pretrained(name).eval().to(device)
            self.tokenizer = CLIPTokenizer.from_pretrained(name)
            self.processor = Processor.from_pretrained(name)
        except Exception as err:
            raise EvaluationConfigError(
                f"evaluation.judge={name}: cannot load a CLIP model ({type(err).__name__}: {err}). "
                "Give a transformers CLIPModel hub id or a local folder (download it where there is network)."
            ) from err
        self.name, self.device = str(name), torch.device(device)

    @staticmethod
    def _features(out) -> torch.Tensor:
        if not torch.is_tensor(out):  # transformers 5 returns a model output holding the projection
            out = out.pooler_output
        return torch.nn.functional.normalize(out.float(), dim=-1).cpu()

    @torch.no_grad()
    def images(self, images: list, batch: int = 64) -> np.ndarray:
        feats = []
        for i in range(0, len(images), batch):
            pix = self.processor(images=images[i : i + batch], return_tensors="pt")["pixel_values"]
            feats.append(self._features(self.model.get_image_features(pixel_values=pix.to(self.device))))
        return torch.cat(feats).double().numpy()

    @torch.no_grad()
    def texts(self, texts: list[str]) -> np.ndarray:
        tok = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return self._features(self.model.get_text_features(**tok)).double().numpy()


# ------------------------------------------------------------------------------------------ metrics


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def image_similarity(samples: np.ndarray, training: np.ndarray) -> float:
    """Mean cosine over all (sample, training image) pairs of normalised embeddings."""
    return float((samples @ training.T).mean())


def image_only_similarity(training: np.ndarray) -> float | None:
    """Mean cosine over the training set's off-diagonal pairs (None with a single image)."""
    n = len(training)
    if n < 2:
        return None
    sims = training @ training.T
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def text_similarity(samples: np.ndarray, text: np.ndarray) -> dict[str, float]:
    """Both variants for one prompt: samples [N, d] and text [d], all normalised."""
    return {
        "mean_embedding": float(_normalise(samples.mean(0)) @ text),
        "per_image": float((samples @ text).mean()),
    }


def score(
    recon: np.ndarray,
    training: np.ndarray,
    prompt_samples: list[np.ndarray],
    texts: np.ndarray,
    variant: str = "mean_embedding",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Point estimates and bias-corrected bootstrap CIs (each prompt's samples resampled independently;
    see `bias_corrected_interval`). The training images are the fixed reference, not resampled."""
    per_prompt = [text_similarity(s, t) for s, t in zip(prompt_samples, texts)]
    out: dict[str, Any] = {"image_similarity": image_similarity(recon, training)}
    for v in VARIANTS:
        out[f"text_similarity_{v}"] = float(np.mean([p[v] for p in per_prompt]))
    out["text_similarity"] = out[f"text_similarity_{variant}"]

    rng = np.random.default_rng(seed)

    def weights(n: int) -> np.ndarray:  # [n_boot, n] resampling weights, each row sums to 1
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n

    # replicates per independently resampled group: {objective: [(replicates [n_boot], group size), ...]}
    # each independently resampled group's term of the objective, its bootstrap replicates and its size
    groups: dict[str, list[tuple]] = {
        "image_similarity": [
            (out["image_similarity"], weights(len(recon)) @ (recon @ training.T).mean(1), len(recon))
        ]
    }
    for v in VARIANTS:
        groups[f"text_similarity_{v}"] = []
    scale = 1.0 / len(texts)  # the objective is the mean over prompts
    for s, t, p in zip(prompt_samples, texts, per_prompt):
        w = weights(len(s))
        groups["text_similarity_mean_embedding"].append(
            (
                scale * p["mean_embedding"],
                scale * (_normalise(w @ s) @ t),
                len(s),
                None if (c := norm_corrected_cosine(s, t)) is None else scale * c,
            )
        )
        groups["text_similarity_per_image"].append((scale * p["per_image"], scale * (w @ (s @ t)), len(s)))
    groups["text_similarity"] = groups[f"text_similarity_{variant}"]
    for key, parts in groups.items():
        out[f"{key}_ci"] = bias_corrected_interval(parts, level)
    out["per_prompt"] = per_prompt
    return out


def norm_corrected_cosine(samples: np.ndarray, text: np.ndarray) -> float | None:
    """cos(text, mean embedding) with the mean's squared norm estimated without bias: the mean over pairs
    i != j of x_i . x_j instead of |mean|^2, which the samples' spread inflates by trace(cov)/n (why the
    plug-in cosine is biased towards 0 at few samples, most in many dimensions). None when the pairs'
    mean is not positive (samples too spread to estimate the norm)."""
    n = len(samples)
    if n < 2:
        return None
    total = samples.sum(0)
    pairs = float(total @ total - np.einsum("ij,ij->", samples, samples)) / (n * (n - 1))
    return float(samples.mean(0) @ text / np.sqrt(pairs)) if pairs > 0 else None


def bias_corrected_interval(groups: list[tuple], level: float = 0.95) -> list[float | None]:
    """A bias-corrected bootstrap interval for a statistic that is a sum of independently resampled groups'
    terms. `groups` holds, per group: its term, the term's bootstrap replicates, the group's size and
    optionally a less biased estimate of the term (norm_corrected_cosine).

    Centre: the sum of the less biased terms where given, else of term - bias with the bootstrap's bias
    estimate (mean of replicates - term, scaled by n/(n-1): a bootstrap of n values sees (n-1)/n of their
    variance); for the means (image similarity, per-image text similarity) this is ~0. Half-width: Student t
    quantile (Welch-Satterthwaite df over groups) x the bootstrap standard error, each group's variance
    scaled by n/(n-1). Why not BCa: at 4 samples a resampled mean never leaves the sample's range, so every
    percentile-type interval (BCa included) covers ~80% of 95%. The interval is for the population value:
    with spread samples it can sit above the recorded plug-in cosine, which is biased low.
    tests/test_intervals.py checks coverage. [None, None] when a group has fewer than 2 samples."""
    if not groups or any(g[2] < 2 for g in groups):
        return [None, None]
    centre = 0.0
    for term, reps, n, *better in groups:
        if better and better[0] is not None:
            centre += better[0]
        else:
            centre += term - (float(np.mean(reps)) - term) * n / (n - 1)
    variances = [float(np.var(g[1])) * g[2] / (g[2] - 1) for g in groups]
    var = sum(variances)
    if var <= 0:
        return [float(centre), float(centre)]
    df = var**2 / sum(v**2 / (g[2] - 1) for v, g in zip(variances, groups))
    half = float(student_t.ppf((1 + level) / 2, df)) * var**0.5
    return [float(centre - half), float(centre + half)]
