"""The CLIP judge and the paper's two similarities, with bootstrap CIs (Gal et al. 2022, section 5).

- image_similarity: mean cosine over every (sample, training image) pair of normalised CLIP image embeddings.
- text_similarity, per edit prompt: "mean_embedding" = cos(text, normalised mean of the samples' embeddings)
  (the paper's text); "per_image" = mean over samples of cos(text, sample) (the official code).

sweeper.evaluation samples the images these score; this module only embeds and scores them.
"""

from __future__ import annotations

import numpy as np
import torch

from sweeper.config import EvaluationConfigError

VARIANTS = ("mean_embedding", "per_image")


class NonFiniteError(ValueError):
    """NaN or infinite numbers where evaluation needs finite ones (decoded samples, CLIP features)."""


def require_finite(values: np.ndarray | torch.Tensor, what: str) -> np.ndarray | torch.Tensor:
    """`values` unchanged if every entry is finite; NonFiniteError naming `what` otherwise.

    Without this, NaN samples become black images (uint8 conversion) and NaN features give NaN or
    normal-looking scores; a metric from either would be recorded as if it were a measurement."""
    array = values.detach().float().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)
    bad = ~np.isfinite(array)
    if bad.any():
        raise NonFiniteError(
            f"{what}: {int(bad.sum())} of {bad.size} values are NaN or infinite; the model, the embedding or the "
            "judge produces non-finite numbers (in fp16, try evaluation.precision=fp32), so no score is recorded"
        )
    return values


# -------------------------------------------------------------------------------------------- judge


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
    """Point estimates and percentile-bootstrap CIs (each prompt's samples resampled independently)."""
    per_prompt = [text_similarity(s, t) for s, t in zip(prompt_samples, texts)]
    out = {"image_similarity": image_similarity(recon, training)}
    for v in VARIANTS:
        out[f"text_similarity_{v}"] = float(np.mean([p[v] for p in per_prompt]))
    out["text_similarity"] = out[f"text_similarity_{variant}"]

    rng = np.random.default_rng(seed)

    def weights(n: int) -> np.ndarray:  # [n_boot, n] resampling weights, each row sums to 1
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n

    boot = {"image_similarity": weights(len(recon)) @ (recon @ training.T).mean(1)}
    boot.update({f"text_similarity_{v}": np.zeros(n_boot) for v in VARIANTS})
    for s, t in zip(prompt_samples, texts):
        w = weights(len(s))
        boot["text_similarity_mean_embedding"] += _normalise(w @ s) @ t / len(texts)
        boot["text_similarity_per_image"] += w @ (s @ t) / len(texts)
    boot["text_similarity"] = boot[f"text_similarity_{variant}"]
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    for key, values in boot.items():
        out[f"{key}_ci"] = [float(x) for x in np.percentile(values, q)]
    out["per_prompt"] = per_prompt
    return out
