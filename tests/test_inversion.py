"""The trainer on the tiny SD/SDXL components loaded from disk: what learns, what must not, and the knobs."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import smoke_config
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel

from sweeper.data.images import list_images
from sweeper.models import load_components
from sweeper.store.embeddings import load_embedding_file
from sweeper.training.inversion import Trainer, invert
from sweeper.training.tokens import active_count


def make_cfg(model, images, *extra):
    return smoke_config(
        model,
        images,
        "inversion.init_word=cat",
        "inversion.steps=6",
        "inversion.batch_size=2",
        "inversion.log_every=2",
        *extra,
    )


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_only_placeholder_rows_learn_with_weight_decay(tiny_sd, concept_images, tmp_path):
    cfg = make_cfg(
        tiny_sd, concept_images, "inversion.weight_decay=0.5", "inversion.num_vectors=2", "inversion.lr=0.05"
    )
    res = invert(cfg, tmp_path / "run")
    assert res.trainer.optimizer.param_groups[0]["weight_decay"] == 0.5
    comps = res.trainer.comps
    fresh = CLIPTextModel.from_pretrained(tiny_sd, subfolder="text_encoder").state_dict()
    trained = comps.text_encoders[0].state_dict()
    (key,) = [k for k in fresh if k.endswith("token_embedding.weight")]
    n0 = fresh[key].shape[0]
    assert trained[key].shape[0] == n0 + 2
    for name, tensor in fresh.items():
        if name == key:
            assert torch.equal(trained[name][:n0], tensor), "a non-placeholder embedding row changed"
        else:
            assert torch.equal(trained[name], tensor), f"{name} changed"
    init = res.trainer.splices[0].init
    for i in range(2):  # the placeholder rows did learn, and the baked matrix holds them
        assert not torch.equal(trained[key][n0 + i], init[i])
        assert torch.equal(trained[key][n0 + i], res.vectors[0][i])
    for cls, sub, module in ((UNet2DConditionModel, "unet", comps.unet), (AutoencoderKL, "vae", comps.vae)):
        ref = cls.from_pretrained(tiny_sd, subfolder=sub).state_dict()
        assert all(torch.equal(module.state_dict()[k], v) for k, v in ref.items()), f"{sub} changed"


def test_latents_encoded_once(tiny_sd, concept_images, tmp_path):
    comps = load_components(str(tiny_sd), "fp32", "cpu")
    seen = []
    encode = comps.vae.encode

    def counting(x, *args, **kwargs):
        seen.append(x.shape[0])
        return encode(x, *args, **kwargs)

    comps.vae.encode = counting
    invert(make_cfg(tiny_sd, concept_images, "inversion.steps=5"), tmp_path / "run", components=comps)
    assert sum(seen) == 2 * 4  # four images and their flips, once, whatever the step count


@pytest.mark.parametrize("scale_lr, expected", [(True, 1e-3 * 2 * 3), (False, 1e-3)])
def test_effective_lr_and_history_columns(tiny_sd, concept_images, tmp_path, scale_lr, expected):
    cfg = make_cfg(
        tiny_sd,
        concept_images,
        "inversion.lr=1e-3",
        "inversion.grad_accum=3",
        f"inversion.scale_lr={scale_lr}",
        "inversion.num_vectors=2",
    )
    logged = []
    res = invert(cfg, tmp_path / "run", on_log=lambda step, values: logged.append((step, values)))
    assert res.effective_lr == pytest.approx(expected)
    rows = read_csv(tmp_path / "run" / "history.csv")
    assert list(rows[0]) == [
        "step",
        "loss",
        "lr",
        "dist_l2_0",
        "dist_l2_1",
        "dist_cos_0",
        "dist_cos_1",
        "dist_l2_mean",
        "dist_cos_mean",
    ]
    assert [int(r["step"]) for r in rows] == [2, 4, 6] and [s for s, _ in logged] == [2, 4, 6]
    assert all(float(r["lr"]) == pytest.approx(expected) for r in rows)
    assert all(float(r["loss"]) > 0 for r in rows)
    l2 = [float(r["dist_l2_mean"]) for r in rows]
    assert l2[-1] > 0 and logged[-1][1]["dist_l2_mean"] == pytest.approx(l2[-1])


def test_progressive_words_learn_one_at_a_time(tiny_sd, concept_images):
    cfg = make_cfg(
        tiny_sd,
        concept_images,
        "inversion.num_vectors=3",
        "inversion.progressive_every=3",
        "inversion.weight_decay=0.1",
    )
    trainer = Trainer(cfg, load_components(str(tiny_sd), "fp32", "cpu"), list_images(concept_images))
    examples = trainer.sampler.sample(2, torch.Generator().manual_seed(0))
    assert all("<concept> <concept>_1" in p and "_2" not in p for p in trainer.prompts(examples, 2))
    init = trainer.splices[0].init
    for step in range(6):
        m = active_count(step, 3, 3)
        norms = trainer.step(m)["grad_norms"]
        assert all(g > 0 for g in norms[:m]) and all(g == 0 for g in norms[m:]), (step, norms)
        for i in range(m, 3):  # not yet in the prompt: untouched, weight decay included
            assert torch.equal(trainer.splices[0].params[i].detach(), init[i])
    assert not torch.equal(trainer.splices[0].params[1].detach(), init[1])


def test_regularisation_pulls_towards_init(tiny_sd, concept_images, tmp_path):
    final = {}
    for reg in (0.0, 100.0):
        cfg = make_cfg(
            tiny_sd, concept_images, f"inversion.reg_weight={reg}", "inversion.steps=10", "inversion.lr=0.01"
        )
        invert(cfg, tmp_path / f"reg{reg}")
        final[reg] = float(read_csv(tmp_path / f"reg{reg}" / "history.csv")[-1]["dist_l2_mean"])
    assert 0 < final[100.0] < 0.5 * final[0.0], final


def test_per_image_tokens_trained_and_saved(tiny_sd, concept_images, tmp_path):
    cfg = make_cfg(
        tiny_sd,
        concept_images,
        "inversion.per_image_tokens=true",
        "inversion.per_image_p=0.5",
        "inversion.steps=8",
        "inversion.batch_size=4",
    )
    res = invert(cfg, tmp_path / "run")
    assert res.trainer.image_tokens == [f"<concept>_img{i}" for i in range(4)]
    saved = load_file(res.paths["per_image"])
    assert sorted(saved) == res.trainer.image_tokens and all(v.shape == (1, 32) for v in saved.values())
    init = res.trainer.splices[0].init[0]
    moved = [not torch.equal(v[0], init) for v in saved.values()]
    assert sum(moved) >= 1
    assert not torch.equal(res.vectors[0][0], init)


def test_sdxl_learns_a_vector_set_per_encoder(tiny_sdxl, concept_images, tmp_path):
    res = invert(make_cfg(tiny_sdxl, concept_images, "inversion.num_vectors=2"), tmp_path / "run")
    assert {"diffusers", "diffusers_2", "a1111"} <= set(res.paths)
    emb = load_embedding_file(tmp_path / "run")
    assert [tuple(v.shape) for v in emb.vectors] == [(2, 32), (2, 48)]
    for vecs, splice in zip(emb.vectors, res.trainer.splices):
        assert torch.equal(vecs, splice.vectors())
        assert not torch.equal(vecs[0], splice.init[0])
    assert set(load_file(res.paths["a1111"])) == {"clip_l", "clip_g"}


@pytest.mark.parametrize(
    "precision, model", [("bf16", "tiny_sd"), ("fp16", "tiny_sd"), ("fp16", "tiny_sdxl")]
)
def test_mixed_precision_keeps_fp32_vectors(concept_images, tmp_path, precision, model, request):
    res = invert(
        make_cfg(
            request.getfixturevalue(model),
            concept_images,
            f"inversion.precision={precision}",
            "inversion.lr=0.05",
        ),
        tmp_path / "r",
    )
    comps = res.trainer.comps
    assert comps.unet.dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert all(p.dtype == torch.float32 for p in res.trainer.parameters())
    rows = read_csv(tmp_path / "r" / "history.csv")
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    assert torch.isfinite(res.vectors[0]).all() and not torch.equal(
        res.vectors[0][0], res.trainer.splices[0].init[0]
    )


def test_vectors_never_in_a_prompt_stay_at_init_despite_weight_decay(tiny_sd, concept_images, tmp_path):
    cfg = make_cfg(
        tiny_sd,
        concept_images,
        "inversion.per_image_tokens=true",
        "inversion.per_image_p=0",
        "inversion.weight_decay=0.5",
        "inversion.lr=0.05",
    )
    res = invert(cfg, tmp_path / "run")
    init = res.trainer.splices[0].init[0]
    assert not torch.equal(res.vectors[0][0], init)
    assert all(torch.equal(v[0][0], init) for v in res.per_image.values())


def test_v_prediction_models_train(tiny_sd, concept_images, tmp_path):
    import json
    import shutil

    model = shutil.copytree(tiny_sd, tmp_path / "v-model")
    sched = model / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps(json.loads(sched.read_text()) | {"prediction_type": "v_prediction"}))
    losses = {}
    for name, path in (("v", model), ("eps", tiny_sd)):
        res = invert(
            make_cfg(path, concept_images, "inversion.steps=2", "inversion.log_every=1"), tmp_path / name
        )
        losses[name] = [float(r["loss"]) for r in read_csv(tmp_path / name / "history.csv")]
        assert (
            res.trainer.noise_scheduler.config.prediction_type
            == {"v": "v_prediction", "eps": "epsilon"}[name]
        )
    assert all(x > 0 for x in losses["v"]) and losses["v"] != losses["eps"]  # same draws, another target


def test_non_finite_loss_stops_the_run_with_a_clear_error(tiny_sd, concept_images, tmp_path):
    # 0 * inf: the first step's objective is NaN, its gradient turns the vector into NaN, the next loss is NaN
    cfg = make_cfg(tiny_sd, concept_images, "inversion.reg_weight=inf")
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step [0-9]+: lower inversion.lr"):
        invert(cfg, tmp_path / "nan")
    assert not (tmp_path / "nan" / "learned_embeds.safetensors").exists()
