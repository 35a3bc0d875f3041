"""Quality figures of the shipped world: `python -m sweeper.world.quality [WEIGHTS_DIR]`.

    judge accuracy     zero-shot, on photos of held-out attribute combinations: for each attribute the
                       judge picks, among full captions that differ only in that attribute, the one
                       closest to the image ("a photo of a red striped star on the grass" vs "... blue ...").
    prompt following   the pipeline draws one sample per held-out combination from its full caption
                       (DDIM 50, eta 0, guidance 5, the paper's protocol; fixed seeds); the judge
                       classifies each attribute of the sample the same way; the figure is the fraction
                       that matches the prompt.

Nothing here trains; both loaders are the plain `from_pretrained` ones.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sweeper.models import load_pipeline
from sweeper.store import atomic
from sweeper.world import draw

# Lazy imports: diffusers and transformers are imported where used (import time of the world).


def _save_png(img: Image.Image, path: Path) -> None:
    img.save(path, format="png")


ATTRIBUTES = {
    "colour": list(draw.COLOURS),
    "shape": draw.SHAPES,
    "texture": draw.TEXTURES,
    "background": list(draw.BACKGROUNDS),
}
BARS = {
    "judge": {"colour": 0.9, "shape": 0.9, "texture": 0.9, "background": 0.9},
    "prompt_following": {"colour": 0.8, "shape": 0.6, "texture": 0.6, "background": 0.8},
}
WEIGHTS = Path(__file__).parent / "weights"


class WorldJudge:
    """The world's CLIP judge, loaded like any transformers CLIPModel folder."""

    def __init__(self, folder: str | Path):
        from transformers import CLIPModel, CLIPTokenizer

        try:
            from transformers import CLIPImageProcessorPil as Processor  # transformers 5 without torchvision
        except ImportError:
            from transformers import CLIPImageProcessor as Processor
        self.model = CLIPModel.from_pretrained(folder).eval()
        self.tokenizer = CLIPTokenizer.from_pretrained(folder)
        self.processor = Processor.from_pretrained(folder)

    @torch.no_grad()
    def images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> L2-normalised embeddings [N, D]."""
        feats = []
        for i in range(0, len(images), 128):
            pix = self.processor(images=list(images[i : i + 128]), return_tensors="pt")["pixel_values"]
            feats.append(_features(self.model.get_image_features(pixel_values=pix)))
        return torch.cat(feats)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        feats = []
        for i in range(0, len(texts), 256):
            tok = self.tokenizer(texts[i : i + 256], padding=True, return_tensors="pt")
            feats.append(_features(self.model.get_text_features(**tok)))
        return torch.cat(feats)


def _features(out) -> torch.Tensor:
    out = out if torch.is_tensor(out) else out.pooler_output
    return torch.nn.functional.normalize(out.float(), dim=-1)


def attribute_accuracy(judge: WorldJudge, images: np.ndarray, specs: list[draw.Spec]) -> dict[str, float]:
    """Per attribute: the fraction of images whose attribute the judge picks correctly (others held fixed)."""
    feats = judge.images(images)
    hits: dict[str, list] = {a: [] for a in ATTRIBUTES}
    for attr, values in ATTRIBUTES.items():
        variants = [[draw.full_caption(s.with_attribute(attr, v)) for v in values] for s in specs]
        text = judge.texts([c for row in variants for c in row]).view(len(specs), len(values), -1)
        picked = torch.einsum("nd,nvd->nv", feats, text).argmax(1)
        hits[attr] = [values[p] == getattr(s, attr) for p, s in zip(picked.tolist(), specs)]
    return {a: float(np.mean(h)) for a, h in hits.items()}


def held_out_specs(n: int, seed: int) -> list[draw.Spec]:
    """`n` specs cycling through the held-out combinations, photo style, random size and position."""
    rng = np.random.default_rng(seed)
    combos = sorted(draw.held_out_combos())
    return [
        draw.Spec(
            *combos[i % len(combos)],
            size=draw.SIZES[rng.integers(2)],
            x=float(rng.random()),
            y=float(rng.random()),
        )
        for i in range(n)
    ]


def judge_accuracy(judge_dir: str | Path, n: int = 360, seed: int = 1234) -> dict[str, float]:
    rng = np.random.default_rng(seed + 1)
    specs = held_out_specs(n, seed)
    images = np.stack([draw.render(s, rng) for s in specs])
    return attribute_accuracy(WorldJudge(judge_dir), images, specs)


@torch.no_grad()
def generate(
    pipeline_dir: str | Path,
    prompts: list[str],
    seed: int = 0,
    steps: int = 50,
    guidance: float = 5.0,
    batch: int = 36,
) -> np.ndarray:
    """One sample per prompt (prompt i seeded with seed + i), DDIM eta 0, uint8 [N, H, W, 3]."""
    from diffusers import DDIMScheduler

    pipe = load_pipeline(str(pipeline_dir), "fp32", "cpu")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        gens = [torch.Generator().manual_seed(seed + i + j) for j in range(len(chunk))]
        images = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance,
            eta=0.0,
            generator=gens,
            output_type="np",
        ).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def prompt_following(
    pipeline_dir: str | Path, judge_dir: str | Path, seed: int = 0, steps: int = 50, guidance: float = 5.0
) -> tuple[dict[str, float], np.ndarray, list[draw.Spec]]:
    """Accuracy per attribute of samples drawn from the held-out combinations' full captions."""
    specs = held_out_specs(len(draw.held_out_combos()), seed)
    prompts = [draw.full_caption(s, judge=False) for s in specs]
    images = generate(pipeline_dir, prompts, seed=seed, steps=steps, guidance=guidance)
    return attribute_accuracy(WorldJudge(judge_dir), images, specs), images, specs


def grid(images: np.ndarray, cols: int, scale: int = 3) -> np.ndarray:
    n, h, w, c = images.shape
    rows = -(-n // cols)
    pad = np.full((rows * cols - n, h, w, c), 255, np.uint8)
    g = np.concatenate([images, pad]).reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4)
    g = g.reshape(rows * h, cols * w, c)
    return g.repeat(scale, 0).repeat(scale, 1)


def main(weights: str | Path = WEIGHTS, steps: int = 50) -> dict:
    weights = Path(weights)
    t0 = time.time()
    judge = judge_accuracy(weights / "judge")
    t1 = time.time()
    following, images, specs = prompt_following(weights / "pipeline", weights / "judge", steps=steps)
    t2 = time.time()
    report: dict[str, Any] = {
        "judge_zero_shot": judge,
        "prompt_following": following,
        "bars": BARS,
        "passes": {
            k: all(v[a] >= BARS[k][a] for a in ATTRIBUTES)
            for k, v in (("judge", judge), ("prompt_following", following))
        },
        "n_held_out_combos": len(specs),
        "seconds": {"judge": t1 - t0, "prompt_following": t2 - t1},
    }
    atomic.write_json(weights / "quality.json", report)
    figures = (
        Path(__file__).parent / "figures" if weights.resolve() == WEIGHTS.resolve() else weights / "figures"
    )
    img = Image.fromarray(grid(images[:48], 12))
    atomic._write_via(figures / "prompt_following.png", lambda tmp: img.save(tmp, format="png"))
    atomic.write_text(
        figures / "prompt_following.txt",
        "\n".join(draw.full_caption(s, judge=False) for s in specs[:48]) + "\n",
    )
    concepts = np.stack([img for name in draw.CONCEPTS for img in draw.concept_images(name)])
    training, _ = draw.render_dataset(48, 99, draw.held_out_combos())
    for name, images_ in (("concepts", concepts), ("training_images", training)):
        img = Image.fromarray(grid(images_, 5 if name == "concepts" else 12))
        atomic._write_via(figures / f"{name}.png", functools.partial(_save_png, img))
    for kind in ("judge_zero_shot", "prompt_following"):
        print(f"{kind:18s} " + "  ".join(f"{a} {v:.1%}" for a, v in report[kind].items()))
    print(f"passes {report['passes']}  ({t2 - t0:.0f}s)")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("weights", nargs="?", default=str(WEIGHTS))
    torch.set_num_threads(2)
    main(parser.parse_args().weights)
