"""DreamBench's three metrics (Ruiz et al. 2023, DreamBooth section 4.1 and Table 1), beside the paper's two.

Each is a registered metric (sweeper/evaluation/metrics.py: clip_i and clip_t computed from the judge's
embeddings with the paper's two; dino, a second encoder's, here):
- dino: subject fidelity, the mean cosine over every (generated image, real image) pair of DINO ViT-S/16 CLS
  embeddings (`facebook/dino-vits16`: transformers' ViTModel, `last_hidden_state[:, 0]`, the CLS token after
  the final layer norm, as DreamBooth uses it; the untrained pooler is not used).
- clip_i: the same mean pairwise cosine with the CLIP judge's image embeddings.
- clip_t: prompt fidelity, the mean over prompts and generated images of cos(CLIP text embedding of the prompt,
  CLIP image embedding), the prompt with the learned token removed and the class word kept ("a dog in the
  jungle"; DreamBench writes "a {token} {class} in the jungle").
- real_images: DreamBooth's "Real Images" row, dino and clip_i between distinct real images (no interval: the
  real images are the fixed reference).
Generated images are every edit prompt's samples (DreamBench: 25 prompts x 4 images). Intervals: the
bias-corrected bootstrap of clip_score.bias_corrected_interval, each prompt's images resampled (a metric is
the mean over prompts of each prompt's mean).

The DINO slot takes a ViTModel folder or hub id; given a CLIPModel folder (the embedded world ships no DINO),
it uses that model's image tower's CLS embedding (`pooler_output`: CLS after the final layer norm) and
says so in `dino_encoder.kind`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sweeper.config.schema import EvaluationConfigError
from sweeper.evaluation.clip_score import require_finite
from sweeper.evaluation.metrics import Term, clip_interval, get, image_only_similarity

# Lazy imports: transformers is imported where an encoder is built.

DINO_KIND = "ViTModel CLS token (last_hidden_state[:, 0])"
CLIP_TOWER_KIND = "CLIP image tower CLS (pooler_output), standing in for DINO"


class DinoEncoder:
    """The DINO slot: image -> L2-normalised CLS embedding, from a ViTModel (DINO) or a CLIP image tower."""

    def __init__(self, name: str, device: str | torch.device = "cpu"):
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(name)
            if config.model_type == "clip":
                from transformers import CLIPVisionModel

                try:
                    from transformers import CLIPImageProcessorPil as Processor
                except ImportError:  # transformers < 5
                    from transformers import CLIPImageProcessor as Processor
                self.model: Any = CLIPVisionModel.from_pretrained(name)
                self.kind = CLIP_TOWER_KIND
            else:
                from transformers import ViTModel

                try:
                    from transformers import ViTImageProcessorPil as Processor  # type: ignore[no-redef]
                except ImportError:
                    from transformers import ViTImageProcessor as Processor  # type: ignore[no-redef]
                self.model = ViTModel.from_pretrained(name, add_pooling_layer=False)
                self.kind = DINO_KIND
            self.processor = Processor.from_pretrained(name)
        except Exception as err:
            raise EvaluationConfigError(
                f"evaluation.dreambench.dino={name}: cannot load a ViT image encoder ({type(err).__name__}: "
                f"{err}). Give a transformers ViTModel hub id or folder (facebook/dino-vits16, downloaded where "
                "there is network) or a CLIPModel folder (its image tower is used instead)."
            ) from err
        self.model = self.model.eval().to(device)
        self.name, self.device = str(name), torch.device(device)

    def identity(self) -> dict[str, str]:
        return {"name": self.name, "kind": self.kind}

    @torch.no_grad()
    def images(self, images: list, batch: int = 64) -> np.ndarray:
        feats = []
        for i in range(0, len(images), batch):
            pix = self.processor(images=images[i : i + batch], return_tensors="pt")["pixel_values"]
            out = self.model(pixel_values=pix.to(self.device))
            cls = out.pooler_output if self.kind == CLIP_TOWER_KIND else out.last_hidden_state[:, 0]
            feats.append(torch.nn.functional.normalize(cls.float(), dim=-1).cpu())
        feats_np = torch.cat(feats).double().numpy()
        require_finite(feats_np, f"the DINO slot's ({self.name}) features")
        return feats_np


def fidelity(generated: list[np.ndarray], real: np.ndarray) -> list[np.ndarray]:
    """Per prompt, each generated image's mean cosine with the real images (features normalised)."""
    return [(g @ real.T).mean(1) for g in generated]


def dino_scores(
    dino_generated: list[np.ndarray],
    dino_real: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The registered metric `dino` (sweeper/evaluation/metrics.py: its range, interval and coverage count):
    the mean over prompts of each prompt's mean (generated, real) cosine, with its interval (each prompt's
    images resampled), `dino_ci_too_few_samples`, and the real images' own dino (distinct pairs).
    dino_generated: one [images, dim] array per prompt; dino_real: [real images, dim]; all L2-normalised.
    CLIP-I and CLIP-T are the registry's clip_i and clip_t, computed with the paper's two."""
    if not dino_generated:
        raise ValueError("dino needs one feature array per edit prompt")
    metric = get("dino")
    rng = np.random.default_rng(seed)
    scale = 1.0 / len(dino_generated)
    terms = []
    for values in fidelity(dino_generated, dino_real):
        n = len(values)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n
        terms.append(Term(scale * float(values.mean()), scale * (w @ values), n))
    coverage = metric.coverage_from
    return {
        "dino": float(sum(t.value for t in terms)),
        "dino_ci": clip_interval(metric.interval(terms, level), metric.range),
        "dino_ci_too_few_samples": None if coverage is None else bool(min(t.n for t in terms) < coverage),
        "real_images_dino": image_only_similarity(dino_real),
    }
