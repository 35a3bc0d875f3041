"""The world's CLIP judge (sweeper/world/train.py stages judge, judge2): a transformers CLIPModel with its own tokenizer,
trained apart from the generator's text encoder so that it does not share its blind spots."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sweeper.store import atomic
from sweeper.world import draw
from sweeper.world.tokenizer import MAX_LENGTH, FastIds, build_tokenizer
from sweeper.world.trainset import load_data, log, lr_at, set_lr

# Lazy imports: transformers is imported where the judge is built (import time of the world).

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def build_judge(vocab_size: int):
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    vision = dict(
        hidden_size=96,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=draw.SIZE,
        patch_size=4,
    )
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=64))


def judge_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> the CLIPImageProcessor's normalisation (resize/crop are identities at 32 px)."""
    return (images.float() / 255 - CLIP_MEAN) / CLIP_STD


def compatible(facts: list[dict], specs: list[draw.Spec]) -> torch.Tensor:
    """[n_images, n_texts]: 1 where image i has every fact caption j states.

    Compared as integer codes per attribute (a caption that does not state one matches every image there):
    the same 0/1 matrix as testing each pair in Python, ~50x faster at a judge batch's 128 x 256 pairs.
    """
    match = torch.ones(len(specs), len(facts), dtype=torch.bool)
    for key in sorted({k for f in facts for k in f}):
        code: dict = {}
        image = torch.tensor([code.setdefault(getattr(s, key), len(code)) for s in specs])
        text = torch.tensor([code.setdefault(f[key], len(code)) if key in f else -1 for f in facts])
        match &= (text == -1)[None, :] | (image[:, None] == text[None, :])
    return match.float()


def hard_negative(spec: draw.Spec, rng: np.random.Generator) -> draw.Spec:
    """`spec` with one attribute changed (shape half of the time): the caption a judge must not match.

    Random batches rarely hold two images that differ only in shape, so without these the judge learns
    colour, texture and background and hardly looks at shapes.
    """
    attr = "shape" if rng.random() < 0.5 else ["colour", "texture", "background"][rng.integers(3)]
    values = {
        "shape": [*draw.SHAPES, *draw.SECRET_SHAPES],
        "colour": list(draw.COLOURS),
        "texture": draw.TEXTURES,
        "background": list(draw.BACKGROUNDS),
    }[attr]
    if spec.style == "sketch" and attr in ("texture", "background"):
        attr, values = "colour", list(draw.COLOURS)
    others = [v for v in values if v != getattr(spec, attr)]
    return spec.with_attribute(attr, others[rng.integers(len(others))])


VARIANT_VALUES = {
    "shape": [*draw.SHAPES, *draw.SECRET_SHAPES],
    "colour": list(draw.COLOURS),
    "texture": draw.TEXTURES,
    "background": list(draw.BACKGROUNDS),
}


def variant_captions(spec: draw.Spec, attr: str, seed: int) -> tuple[list[str], int] | None:
    """One caption of `spec` per value of `attr` (same words otherwise), and the true value's index.

    None when the caption drawn does not state `attr` (then every variant would read the same).
    """
    values = VARIANT_VALUES[attr]
    texts = []
    for v in values:
        text, facts = draw.caption_facts(
            spec.with_attribute(attr, v), np.random.default_rng(seed), judge=True, drop=0.15
        )
        if facts.get(attr) != v:
            return None
        texts.append(text)
    return texts, values.index(getattr(spec, attr))


def train_judge(work: Path, cfg: dict, cycle: int = 1) -> None:
    """Cycle 1: contrastive from scratch. Cycle 2 continues from WORK/judge and adds the zero-shot task.

    Random batches rarely hold two images that differ in one attribute only, so contrastive training alone
    learns colour, texture and background and hardly looks at shapes (65% zero-shot). Cycle 2 adds, for
    each image, a cross-entropy over its caption with one attribute (shape half of the time) set to every
    value: the task `sweeper.world.quality` measures, on training images only (held-out combinations never occur).
    """
    from transformers import CLIPModel

    images, specs = load_data(work, cfg)
    tokenizer = build_tokenizer(judge=True)
    ids = FastIds(tokenizer)
    seed = cfg["seed"] + (2 if cycle == 1 else 12)
    rng = np.random.default_rng(seed)
    ids.check([draw.caption(s, rng, judge=True) for s in specs[:200]])
    torch.manual_seed(seed)
    model = (build_judge(len(tokenizer)) if cycle == 1 else CLIPModel.from_pretrained(work / "judge")).train()
    steps, base_lr = (
        (cfg["judge_steps"], cfg["judge_lr"]) if cycle == 1 else (cfg["judge2_steps"], cfg["judge2_lr"])
    )
    opt = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    t0, b, name = time.time(), cfg["judge_batch"], "judge" if cycle == 1 else "judge2"
    for step in range(steps):
        set_lr(opt, lr_at(step, steps, base_lr, warmup=200 if cycle == 1 else 50))
        idx = torch.randint(len(images), (b,), generator=gen)
        batch_specs = [specs[i] for i in idx.tolist()]
        texts, facts = zip(*(draw.caption_facts(s, rng, judge=True, drop=0.15) for s in batch_specs))
        hard = [draw.caption_facts(hard_negative(s, rng), rng, judge=True, drop=0.0) for s in batch_specs]
        variants = []
        if cycle == 2:
            for i, s in enumerate(batch_specs):
                attrs = (
                    ["colour", "shape"]
                    if s.style == "sketch"
                    else ["colour", "texture", "background", "shape"]
                )
                attr = (
                    "shape" if rng.random() < cfg["judge2_shape_p"] else attrs[rng.integers(len(attrs) - 1)]
                )
                found = variant_captions(s, attr, int(rng.integers(2**31)))
                if found is not None:
                    variants.append((i, *found))
        all_texts = [*texts, *(t for t, _ in hard), *(t for _, vs, _ in variants for t in vs)]
        tok = ids(all_texts)
        tok = tok[:, : int((tok != ids.pad).sum(1).max()) + 1]
        pix = judge_pixels(images[idx]) + 0.05 * torch.randn((b, 3, draw.SIZE, draw.SIZE), generator=gen)
        out = model(input_ids=tok, pixel_values=pix)
        target = compatible([*facts, *(f for _, f in hard)], batch_specs)  # [b, 2b]
        logits = out.logits_per_image
        t2i = target[:, :b]  # captions of the batch's own images: each matches at least its image
        loss = 0.5 * (
            -(target / target.sum(1, keepdim=True) * logits[:, : 2 * b].log_softmax(1)).sum(1).mean()
            - (t2i / t2i.sum(0, keepdim=True) * logits[:, :b].log_softmax(0)).sum(0).mean()
        )
        if variants:
            col, ce = 2 * b, []
            for i, vs, true in variants:
                ce.append(F.cross_entropy(logits[i, col : col + len(vs)][None], torch.tensor([true])))
                col += len(vs)
            loss = loss + torch.stack(ce).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == steps - 1:
            log(f"{name} step {step} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    with atomic.directory(work / name) as tmp:
        save_judge(model.eval(), tokenizer, tmp)
        atomic.write_json(tmp / "stats.json", {"seconds": time.time() - t0})


def save_judge(model, tokenizer, folder: Path) -> None:
    from transformers import CLIPImageProcessor

    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": draw.SIZE}, crop_size={"height": draw.SIZE, "width": draw.SIZE}
    ).save_pretrained(folder)
