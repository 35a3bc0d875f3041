"""Adaptive evaluation (a prefix of the fixed-noise samples) and the references' caches, on tiny models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from test_evaluation import eval_cfg

from sweeper.config.schema import EvaluationConfigError, evaluation_settings
from sweeper.data.images import list_images
from sweeper.evaluation.protocol import evaluate_run, halfwidth, objective_halfwidth
from sweeper.evaluation.sampling import Sampler
from sweeper.models import load_pipeline
from sweeper.store.embeddings import save_learned_embeds


def config(tiny_sd, tiny_judge, cache, **ev):
    return OmegaConf.create(
        {
            "model": {"pretrained": str(tiny_sd)},
            "device": "cpu",
            "evaluation": eval_cfg(tiny_judge, cache, **ev),
        }
    )


def test_rounds_continue_the_fixed_noise_sequence(tiny_sd):
    pipe = load_pipeline(str(tiny_sd), "fp32", "cpu")
    fixed = Sampler(pipe, steps=2, batch_size=4, progress=False).sample("a photo of a cat", 6, "k")
    rounds = Sampler(pipe, steps=2, batch_size=4, progress=False)
    prefix = rounds.sample("a photo of a cat", 2, "k") + rounds.sample("a photo of a cat", 3, "k", start=2)
    assert len(prefix) == 5
    for a, b in zip(prefix, fixed[:5]):
        # other batch compositions (rounds of 2 and 3 against batches of 4 and 2): batched convolutions may
        # round differently, so allow one 8-bit level
        assert np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() <= 1


def test_adaptive_samples_are_a_prefix_of_the_fixed_ones(tiny_sd, tiny_judge, concept_images, tmp_path):
    run = tmp_path / "run"
    save_learned_embeds(run, "<cat-toy>", [torch.randn(1, 32, generator=torch.Generator().manual_seed(0))])
    images = list_images(concept_images)
    common = {"num_samples": 6, "batch_size": 6, "references": False, "min_samples": 2}

    # a loose target: every prompt stops after its first round of min_samples
    loose = evaluate_run(
        config(tiny_sd, tiny_judge, tmp_path / "r", target_halfwidth=10.0, **common), run, images
    )
    assert set(loose["samples_per_prompt"].values()) == {2}
    assert loose["protocol"]["target_halfwidth"] == 10.0
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["samples_per_prompt"]["reconstruction"] == 2
    assert all(v["num_samples"] == 2 for v in on_disk["per_prompt"].values())

    # the fixed evaluation with 2 samples: the same noise, so the same samples and the same scores
    fixed = evaluate_run(
        config(tiny_sd, tiny_judge, tmp_path / "r", **{**common, "num_samples": 2}), run, images
    )
    # batches of 2 (adaptive round) vs 2 (fixed): the same computation; tolerance for the CLIP features'
    # float summation only
    assert loose["image_similarity"] == pytest.approx(fixed["image_similarity"], abs=1e-5)
    for p, vals in loose["per_prompt"].items():
        assert vals["mean_embedding"] == pytest.approx(fixed["per_prompt"][p]["mean_embedding"], abs=1e-5)

    # an unreachable target: every prompt takes num_samples, as the fixed evaluation does
    tight = evaluate_run(
        config(tiny_sd, tiny_judge, tmp_path / "r", target_halfwidth=1e-9, **common), run, images
    )
    full = evaluate_run(config(tiny_sd, tiny_judge, tmp_path / "r", **common), run, images)
    assert set(tight["samples_per_prompt"].values()) == {6} == set(full["samples_per_prompt"].values())
    # rounds of 2 against one batch of 6: other batch compositions, so a tolerance
    assert tight["image_similarity"] == pytest.approx(full["image_similarity"], abs=1e-4)
    assert tight["text_similarity"] == pytest.approx(full["text_similarity"], abs=1e-4)


def test_halfwidth_is_the_standard_error_of_a_mean_and_shrinks_with_samples():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(400, 8))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    text, training = feats[0], feats[:3]
    per_image = feats[:50] @ text
    assert halfwidth(feats[:50], text, training, "per_image") == pytest.approx(
        1.96 * per_image.std(ddof=1) / np.sqrt(50)
    )
    wide = halfwidth(feats[:20], text, training, "mean_embedding")
    narrow = halfwidth(feats[:400], text, training, "mean_embedding")
    assert 0 < narrow < wide
    assert halfwidth(feats[:1], None, training, "mean_embedding") == float("inf")


def test_the_text_objectives_halfwidth_is_that_of_a_mean_over_prompts():
    # P independent prompts with half-width h each: the mean's half-width is h / sqrt(P)
    assert objective_halfwidth([0.04] * 4) == pytest.approx(0.02)
    assert objective_halfwidth([0.03, 0.04]) == pytest.approx(0.025)


def test_prompts_advance_together_until_the_objectives_interval_is_reached(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    run = tmp_path / "run"
    save_learned_embeds(run, "<cat-toy>", [torch.randn(1, 32, generator=torch.Generator().manual_seed(0))])
    images = list_images(concept_images)
    common = {"num_samples": 8, "batch_size": 8, "references": False, "min_samples": 2}
    full = evaluate_run(config(tiny_sd, tiny_judge, tmp_path / "r", **common), run, images)
    widths = [v["halfwidth"] for v in full["per_prompt"].values()]
    assert len(widths) >= 2 and full["text_similarity_halfwidth"] == pytest.approx(
        objective_halfwidth(widths)
    )
    # a target between the text objective's half-width at 8 samples and the widest single prompt's: a
    # per-prompt rule would sample that prompt to the end; the objective's rule stops every prompt at the
    # same count, at or before the cap
    target = (full["text_similarity_halfwidth"] + max(widths)) / 2
    assert full["text_similarity_halfwidth"] < target < max(widths)
    adaptive = evaluate_run(
        config(tiny_sd, tiny_judge, tmp_path / "r", target_halfwidth=target, **common), run, images
    )
    counts = {p: c for p, c in adaptive["samples_per_prompt"].items() if p != "reconstruction"}
    assert len(set(counts.values())) == 1
    (count,) = set(counts.values())
    assert count % 2 == 0 and 2 <= count <= 8
    # at 8 samples the width is below the target, so the rounds always reach it
    assert adaptive["text_similarity_halfwidth"] <= target


@pytest.mark.parametrize(
    "key, value", [("target_halfwidth", 0), ("target_halfwidth", "x"), ("min_samples", 1)]
)
def test_bad_adaptive_settings_are_refused(tiny_judge, tmp_path, key, value):
    # the ranges and types are the schema's (sweeper/config/schema.py EvaluationConfig)
    with pytest.raises(EvaluationConfigError, match=f"evaluation.{key}"):
        evaluation_settings(eval_cfg(tiny_judge, tmp_path, **{key: value}))


def test_unknown_quick_objective_is_refused(tiny_judge, tmp_path):
    ev = eval_cfg(tiny_judge, tmp_path)
    ev["quick"]["objective"] = "loss"
    with pytest.raises(EvaluationConfigError, match="evaluation.quick.objective"):
        evaluation_settings(ev)
    ev["quick"]["objective"] = "denoising"
    assert evaluation_settings(ev)["quick"]["objective"] == "denoising"


def test_two_image_subsets_share_one_prompt_only_cache_entry(tiny_sd, tiny_judge, concept_images, tmp_path):
    run = tmp_path / "run"
    save_learned_embeds(run, "<cat-toy>", [torch.randn(1, 32)])
    images = list_images(concept_images)
    cache = tmp_path / "refs"
    cfg = config(tiny_sd, tiny_judge, cache, num_samples=2, batch_size=2)
    first = evaluate_run(cfg, run, images[:2])["references"]
    (entry,) = (cache / "prompt_only").glob("*.npz")
    mtime = entry.stat().st_mtime_ns
    second = evaluate_run(cfg, run, images[2:])["references"]
    assert list((cache / "prompt_only").glob("*.npz")) == [entry] and entry.stat().st_mtime_ns == mtime
    assert len(list((cache / "image_only").glob("*.json"))) == 2  # image only: one entry per image set
    # the prompt-only samples are shared; its image similarity compares them with each subset's images
    assert second["prompt_only"]["text_similarity"] == first["prompt_only"]["text_similarity"]
    assert second["prompt_only"]["image_similarity"] != first["prompt_only"]["image_similarity"]
    assert second["image_only"] != first["image_only"]
    # the adaptive evaluation's references are the fixed protocol's: the same cache entry
    evaluate_run(
        config(tiny_sd, tiny_judge, cache, num_samples=2, batch_size=2, target_halfwidth=0.5), run, images[:2]
    )
    assert len(list((cache / "prompt_only").glob("*.npz"))) == 1
