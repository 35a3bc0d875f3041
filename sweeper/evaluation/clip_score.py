"""The CLIP judge: L2-normalised CLIP embeddings of images and texts (Gal et al. 2022, section 5).

sweeper.evaluation.protocol samples the images this embeds; the metrics and their intervals are defined in
sweeper/evaluation/metrics.py (the registry; `score` and the similarity functions are re-exported here).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sweeper.config.schema import EvaluationConfigError
from sweeper.evaluation.metrics import (
    VARIANTS,
    bias_corrected_interval,
    image_only_similarity,
    image_similarity,
    norm_corrected_cosine,
    score,
    text_similarity,
)

__all__ = [
    "VARIANTS",
    "Judge",
    "check_judge",
    "NonFiniteError",
    "bias_corrected_interval",
    "image_only_similarity",
    "image_similarity",
    "norm_corrected_cosine",
    "require_finite",
    "score",
    "text_similarity",
]

# Lazy imports: transformers is imported where the judge is built: CLI start-up and config refusals stay fast.


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
