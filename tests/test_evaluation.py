"""CLIP metrics, bootstrap CIs, concept removal, references and the run-folder evaluation on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import compose_config
from omegaconf import OmegaConf
from PIL import Image

from sweeper.config.schema import ConfigError, evaluation_settings
from sweeper.evaluation.clip_score import Judge, image_only_similarity, image_similarity, score
from sweeper.evaluation.protocol import EvaluationConfigError, concept_removed, evaluate_run, fill

CONF = Path(__file__).resolve().parent.parent / "conf" / "evaluation"
SCHEMA_KEYS = {
    "image_similarity",
    "text_similarity",
    "text_similarity_mean_embedding",
    "text_similarity_per_image",
    "text_variant",
    "image_similarity_ci",
    "text_similarity_ci",
    "per_prompt",
    "references",
    "judge",
    "protocol",
    "seeds",
    "num_samples",
}


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def eval_cfg(judge: Path, cache: Path, **over) -> dict:
    """The paper preset + the paper_examples prompts, shrunk to tiny sizes."""
    ev = OmegaConf.to_container(compose_config("evaluation/prompts=paper_examples").evaluation, resolve=True)
    ev.update(
        judge=str(judge),
        num_samples=3,
        batch_size=2,
        steps=2,
        bootstrap=200,
        cache_dir=str(cache),
        progress=False,
        grid_samples=4,
    )
    ev.update(over)
    return ev


def test_concept_removed_is_exact():
    assert concept_removed("a photo of {} on the moon") == "a photo of on the moon"
    assert concept_removed("{} on the beach") == "on the beach"
    assert concept_removed("elmo holding a {}") == "elmo holding a"
    assert concept_removed("a  cube shaped {}\tthing ") == "a cube shaped thing"
    # The judge's text never comes from the filled prompt, so multi-vector expansion ("<t> <t>_1 <t>_2")
    # and per-image tokens cannot leak into it: it depends on the template alone.
    for placeholder in ("<t>", "<t> <t>_1 <t>_2", "<t> with <img-3>"):
        filled = fill("a {} in the jungle", placeholder)
        assert placeholder in filled and concept_removed("a {} in the jungle") == "a in the jungle"


def test_multi_vector_token_expands_in_prompt_but_not_in_judge_text(tiny_sd):
    from sweeper.models import load_pipeline
    from sweeper.store.embeddings import LoadedEmbedding, load_into_pipeline

    pipe = load_pipeline(str(tiny_sd), "fp32", "cpu")
    dim = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    token = load_into_pipeline(pipe, LoadedEmbedding("<t>", [torch.randn(3, dim)]))
    expanded = pipe.maybe_convert_prompt(fill("a photo of {} on the moon", token), pipe.tokenizer)
    assert expanded.split().count("<t>") == 1 and "<t>_1" in expanded and "<t>_2" in expanded
    assert concept_removed("a photo of {} on the moon") == "a photo of on the moon"


def test_image_similarity_is_one_for_identical_images(tiny_judge):
    judge = Judge(str(tiny_judge))
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    samples, training = (
        judge.images([im.copy() for _ in range(5)]),
        judge.images([im.copy() for _ in range(3)]),
    )
    assert image_similarity(samples, training) == pytest.approx(1.0, abs=1e-6)
    assert image_only_similarity(training) == pytest.approx(1.0, abs=1e-6)
    other = judge.images(
        [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(3)]
    )
    assert image_similarity(samples, other) < 1 - 1e-4
    np.testing.assert_allclose(np.linalg.norm(judge.texts(["a photo of", "a red"]), axis=1), 1.0, atol=1e-6)


def test_text_variants_and_image_similarity_match_direct_numpy():
    rng = np.random.default_rng(1)
    recon, training = _unit(rng, 6, 8), _unit(rng, 4, 8)
    prompts, texts = [_unit(rng, 5, 8) for _ in range(3)], _unit(rng, 3, 8)
    out = score(recon, training, prompts, texts, "mean_embedding", n_boot=50, seed=0)

    pairs = [float(np.dot(s, t)) for s in recon for t in training]
    assert out["image_similarity"] == pytest.approx(np.mean(pairs), abs=1e-12)
    mean_emb, per_img = [], []
    for s, t in zip(prompts, texts):
        m = s.mean(axis=0)
        mean_emb.append(float(np.dot(m / np.sqrt(np.sum(m**2)), t)))
        per_img.append(float(np.mean([np.dot(x, t) for x in s])))
    for got, me, pi in zip(out["per_prompt"], mean_emb, per_img):
        assert got["mean_embedding"] == pytest.approx(me, abs=1e-12)
        assert got["per_image"] == pytest.approx(pi, abs=1e-12)
    assert out["text_similarity_mean_embedding"] == pytest.approx(np.mean(mean_emb), abs=1e-12)
    assert out["text_similarity_per_image"] == pytest.approx(np.mean(per_img), abs=1e-12)
    assert out["text_similarity"] == out["text_similarity_mean_embedding"]
    assert (
        score(recon, training, prompts, texts, "per_image", 50)["text_similarity"]
        == out["text_similarity_per_image"]
    )
    # the two variants genuinely differ (averaging before the cosine raises it)
    assert out["text_similarity_mean_embedding"] != pytest.approx(out["text_similarity_per_image"], abs=1e-3)
    sims = training @ training.T
    assert image_only_similarity(training) == pytest.approx(sims[~np.eye(4, dtype=bool)].mean(), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_confidence_intervals_contain_point_estimates_and_are_seeded(seed):
    rng = np.random.default_rng(100 + seed)
    base = _unit(rng, 16)
    recon, training = _unit(rng, 32, 16) + base, _unit(rng, 4, 16) + base
    recon, training = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (recon, training))
    prompts, texts = [_unit(rng, 32, 16) + 0.5 * base for _ in range(3)], _unit(rng, 3, 16)
    prompts = [p / np.linalg.norm(p, axis=1, keepdims=True) for p in prompts]
    out = score(recon, training, prompts, texts, n_boot=500, seed=seed)
    for key in (
        "image_similarity",
        "text_similarity",
        "text_similarity_mean_embedding",
        "text_similarity_per_image",
    ):
        lo, hi = out[f"{key}_ci"]
        assert lo <= out[key] <= hi and lo < hi, key
    assert (
        score(recon, training, prompts, texts, n_boot=500, seed=seed)["text_similarity_ci"]
        == out["text_similarity_ci"]
    )
    fewer = score(recon[:6], training, [p[:6] for p in prompts], texts, n_boot=500, seed=seed)
    width = lambda o: o["image_similarity_ci"][1] - o["image_similarity_ci"][0]  # noqa: E731
    assert width(fewer) > width(out)


def test_bad_evaluation_config_is_refused_before_model_work(tiny_judge, tmp_path):
    good = eval_cfg(tiny_judge, tmp_path)
    with pytest.raises(ConfigError, match=r"evaluation.prompts: 'a photo on the moon'"):
        evaluation_settings({**good, "prompts": ["a photo on the moon"]})
    with pytest.raises(ConfigError, match="evaluation.sampler"):
        evaluation_settings({**good, "sampler": "plms"})
    with pytest.raises(ConfigError, match="evaluation.num_samples"):
        evaluation_settings({**good, "num_samples": 0})
    with pytest.raises(ConfigError, match="evaluation.prompts='nope'"):
        evaluation_settings({**good, "prompts": "nope"})
    assert evaluation_settings({**good, "prompts": "dreambench_object"})["prompts"][0] == "a {} in the jungle"
    with pytest.raises(ConfigError, match="evaluation.judge=.*no such folder"):
        evaluation_settings({**good, "judge": str(tmp_path / "no-such-judge")})
    with pytest.raises(ConfigError, match="evaluation.judge=.*config.json"):
        evaluation_settings({**good, "judge": str(tmp_path)})
    assert (
        evaluation_settings({**good, "judge": "openai/clip-vit-base-patch32"})["judge"]
        == "openai/clip-vit-base-patch32"
    )
    with pytest.raises(EvaluationConfigError, match="evaluation.judge=openai/nope"):
        Judge("openai/nope")  # a hub id that cannot be loaded (offline) fails with the key named


def test_prompt_presets():
    sets = {p.stem: yaml.safe_load(p.read_text()) for p in (CONF / "prompts").glob("*.yaml")}
    assert len(sets["dreambench_object"]["prompts"]) == 25 and len(sets["dreambench_live"]["prompts"]) == 25
    assert "a {} wearing a santa hat" in sets["dreambench_live"]["prompts"]
    assert sets["paper_examples"]["prompts"] == [
        "a photo of {} on the moon",
        "an oil painting of {}",
        "elmo holding a {}",
    ]
    for s in sets.values():
        assert all(p.count("{}") == 1 for p in s["prompts"])
    paper, fast = (compose_config(f"evaluation={n}").evaluation for n in ("paper", "fast"))
    assert (paper["sampler"], paper["steps"], paper["eta"], paper["guidance"]) == ("ddim", 50, 0.0, 5.0)
    assert (paper["negative_prompt"], paper["num_samples"], paper["batch_size"]) == ("", 64, 8)
    assert paper["judge"] == "openai/clip-vit-base-patch32"
    assert fast["sampler"] == "dpmsolver++" and fast["steps"] < paper["steps"]


def test_evaluate_run_writes_metrics_grids_and_cached_references(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    from sweeper.data.images import list_images
    from sweeper.store.embeddings import save_learned_embeds

    run = tmp_path / "run"
    # a 2-vector S* plus per-image tokens: only S* is evaluated, the per-image file is ignored
    save_learned_embeds(run, "<cat-toy>", [torch.randn(2, 32)], per_image={"<img-0>": [torch.randn(1, 32)]})
    cfg = OmegaConf.create(
        {
            "model": {"pretrained": str(tiny_sd)},
            "device": "cpu",
            "evaluation": eval_cfg(tiny_judge, tmp_path / "refs"),
        }
    )
    images = list_images(concept_images)
    metrics = evaluate_run(cfg, run, images)

    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert SCHEMA_KEYS <= set(on_disk)
    assert on_disk["placeholder"] == "<cat-toy>" and on_disk["num_vectors"] == 2
    assert set(on_disk["per_prompt"]) == {
        "a photo of {} on the moon",
        "an oil painting of {}",
        "elmo holding a {}",
    }
    assert on_disk["per_prompt"]["elmo holding a {}"]["text"] == "elmo holding a"
    assert on_disk["text_similarity"] == pytest.approx(
        np.mean([v["mean_embedding"] for v in on_disk["per_prompt"].values()])
    )
    for key in ("image_similarity", "text_similarity"):
        lo, hi = on_disk[f"{key}_ci"]
        assert -1 <= lo <= on_disk[key] <= hi <= 1
    assert on_disk["protocol"]["sampler"] == "ddim" and on_disk["protocol"]["steps"] == 2
    assert on_disk["protocol"]["precision"] == "fp32" and on_disk["seeds"]["noise"] == 0
    refs = on_disk["references"]
    assert set(refs) == {"image_only", "prompt_only"}
    assert -1 <= refs["prompt_only"]["text_similarity"] <= 1 and refs["image_only"]["image_similarity"] < 1
    grids = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert grids == [
        "a-photo-of-S-on-the-moon.png",
        "an-oil-painting-of-S.png",
        "elmo-holding-a-S.png",
        "reconstruction.png",
    ]
    assert Image.open(run / "samples" / "reconstruction.png").size == (64, 64)  # 2x2 grid of 32 px samples
    assert not list(run.rglob("*.tmp"))

    # references are cached: a second run of the same model/concept/protocol reads them back
    cache_files = list(
        (tmp_path / "refs").glob("prompt_only/*.npz")
    )  # per dependency (test_adaptive_evaluation)
    assert len(cache_files) == 1
    mtime = cache_files[0].stat().st_mtime_ns
    run2 = tmp_path / "run2"
    save_learned_embeds(run2, "<cat-toy>", [torch.randn(2, 32)])
    again = evaluate_run(cfg, run2, images)
    assert again["references"] == metrics["references"] and cache_files[0].stat().st_mtime_ns == mtime
    assert again["image_similarity"] != metrics["image_similarity"]  # a different embedding, same noise
    # ... and another protocol gets its own entry
    cfg.evaluation.guidance = 3.0
    evaluate_run(cfg, run2, images)
    assert len(list((tmp_path / "refs").glob("prompt_only/*.npz"))) == 2


def test_trial_runs_invert_then_evaluate_and_returns_both_objectives(
    tiny_sd, tiny_judge, concept_images, tmp_path
):
    from conftest import smoke_config

    from sweeper.trial import run_trial

    cfg = smoke_config(tiny_sd, concept_images, judge=tiny_judge)  # the one smoke configuration
    run = tmp_path / "run"
    scores = run_trial(cfg, run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert scores == (metrics["image_similarity"], metrics["text_similarity"])
    assert all(np.isfinite(scores)) and metrics["placeholder"] == "<concept>"
    assert (run / "samples" / "reconstruction.png").is_file()
    assert json.loads((run / "status.json").read_text())["status"] == "completed"


def test_trial_refuses_bad_evaluation_config_before_any_work(tiny_sd, concept_images, tmp_path):
    from conftest import compose_config

    from sweeper.trial import run_trial

    cfg = compose_config(
        f"model.pretrained={tiny_sd}",
        f"data.images={concept_images}",
        "inversion.init_word=cat",
        "evaluation.prompts=[a photo on the moon]",
        "tracking=none",
    )
    with pytest.raises(EvaluationConfigError, match="evaluation.prompts"):
        run_trial(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_run_with_pivotal_tuning_is_evaluated_with_its_tuned_unet(
    mode, tiny_sd, tiny_judge, concept_images, tmp_path
):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from sweeper.data.images import list_images
    from sweeper.store.embeddings import save_learned_embeds

    run = tmp_path / "run"
    save_learned_embeds(run, "<t>", [torch.randn(1, 32)])
    unet = UNet2DConditionModel.from_pretrained(tiny_sd / "unet")
    if mode == "full":
        with torch.no_grad():
            for p in unet.parameters():
                p.add_(0.05 * torch.randn_like(p))
        unet.save_pretrained(run / "pivotal" / "unet")
    else:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft import LoraConfig
        from peft.utils import get_peft_model_state_dict

        torch.manual_seed(0)
        unet.add_adapter(
            LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
        )
        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        StableDiffusionPipeline.save_lora_weights(run / "pivotal", unet_lora_layers=layers)
    ev = eval_cfg(tiny_judge, tmp_path / "refs", references=False, prompts=["a photo of {} on the moon"])
    cfg = OmegaConf.create({"model": {"pretrained": str(tiny_sd)}, "device": "cpu", "evaluation": ev})
    images = list_images(concept_images)
    tuned = evaluate_run(cfg, run, images)
    cfg.evaluation.use_pivotal = False
    base = evaluate_run(cfg, run, images)
    assert tuned["pivotal"] == mode and base["pivotal"] is None and base["references"] is None
    assert abs(tuned["image_similarity"] - base["image_similarity"]) > 1e-6


# ------------------------------------------------------------------------------- non-finite numbers


def test_non_finite_samples_are_refused_not_scored(tiny_sd, tiny_judge, concept_images, tmp_path):
    from diffusers import StableDiffusionPipeline

    from sweeper.data.images import list_images
    from sweeper.evaluation.clip_score import NonFiniteError
    from sweeper.evaluation.protocol import evaluate_pipeline
    from sweeper.evaluation.sampling import Sampler

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    with torch.no_grad():
        pipe.vae.decoder.conv_out.bias[0] = float("nan")  # a decoder that overflowed: NaN in every image
    with pytest.raises(NonFiniteError, match=r"decoded samples: .* NaN or infinite"):
        Sampler(pipe, steps=2, progress=False).sample("a photo of a cat", 2, noise_key="k")
    out = tmp_path / "out"
    with pytest.raises(NonFiniteError, match=r"prompt 'a photo of <t>': decoded samples"):
        evaluate_pipeline(
            pipe, "<t>", eval_cfg(tiny_judge, tmp_path / "refs"), list_images(concept_images), out, model="m"
        )
    assert not (out / "metrics.json").exists()


def test_non_finite_judge_features_are_refused_not_scored(tiny_sd, tiny_judge, concept_images, tmp_path):
    import shutil

    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel

    from sweeper.data.images import list_images
    from sweeper.evaluation.clip_score import NonFiniteError
    from sweeper.evaluation.protocol import evaluate_pipeline

    broken = shutil.copytree(tiny_judge, tmp_path / "judge")
    judge = CLIPModel.from_pretrained(broken)
    with torch.no_grad():
        judge.visual_projection.weight[0, 0] = float("inf")  # every image feature becomes non-finite
    judge.save_pretrained(broken)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    out = tmp_path / "out"
    with pytest.raises(
        NonFiniteError, match=r"the judge's features of the training images: .* NaN or infinite"
    ):
        evaluate_pipeline(
            pipe, "<t>", eval_cfg(broken, tmp_path / "refs"), list_images(concept_images), out, model="m"
        )
    assert not (out / "metrics.json").exists()
