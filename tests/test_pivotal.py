"""Pivotal tuning: the UNet learns (full or LoRA), the embedding stays frozen, the output loads back with diffusers."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import smoke_config
from diffusers import UNet2DConditionModel

from sweeper.models import load_pipeline
from sweeper.training.inversion import invert
from sweeper.training.pivotal import pivotal_tune


def make_cfg(model, images, mode):
    return smoke_config(
        model,
        images,
        "inversion.init_word=cat",
        "inversion.steps=3",
        "inversion.batch_size=2",
        "inversion.log_every=2",
        "inversion.num_vectors=2",
        "inversion.pivotal.enabled=true",
        f"inversion.pivotal.mode={mode}",
        "inversion.pivotal.steps=4",
        "inversion.pivotal.lr=1e-2",
        "inversion.pivotal.lora_rank=2",
    )


def unet_out(unet, is_sdxl: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    added = None
    if is_sdxl:
        added = {
            "text_embeds": torch.randn(1, 48, generator=g),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]]),
        }
    with torch.no_grad():
        return unet(x, torch.tensor([500]), ctx, added_cond_kwargs=added).sample


def run_pivotal(cfg, run_dir):
    res = invert(cfg, run_dir)
    enc = res.trainer.comps.text_encoders[0]
    before = enc.get_input_embeddings().weight.detach().clone()
    logged = []
    out = pivotal_tune(cfg, res.trainer, run_dir, on_log=lambda s, v: logged.append(s))
    assert torch.equal(enc.get_input_embeddings().weight, before), "the embedding moved during pivotal tuning"
    assert logged == [3 + 2, 3 + 4]  # after the inversion's steps
    with open(out / "history.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [2, 4]
    return res, out


@pytest.mark.parametrize("model_fixture", ["tiny_sd", "tiny_sdxl"])
def test_lora_pivotal_loads_with_load_lora_weights(model_fixture, concept_images, tmp_path, request):
    model = request.getfixturevalue(model_fixture)
    res, out = run_pivotal(make_cfg(model, concept_images, "lora"), tmp_path / "run")
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    pipe = load_pipeline(str(model), "fp32", "cpu")
    base = unet_out(pipe.unet, res.trainer.comps.is_sdxl)
    pipe.load_lora_weights(out)
    tuned = unet_out(pipe.unet, res.trainer.comps.is_sdxl)
    assert not torch.allclose(base, tuned, atol=1e-6), "the LoRA weights change nothing"


def test_full_pivotal_saves_a_tuned_unet(tiny_sd, concept_images, tmp_path):
    res, out = run_pivotal(make_cfg(tiny_sd, concept_images, "full"), tmp_path / "run")
    tuned = UNet2DConditionModel.from_pretrained(out / "unet")
    original = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    changed = [k for k, v in original.state_dict().items() if not torch.equal(v, tuned.state_dict()[k])]
    assert len(changed) > 10
    assert not torch.allclose(unet_out(original, False), unet_out(tuned, False), atol=1e-6)
    # the saved embedding is the inversion's, untouched by pivotal tuning
    from sweeper.store.embeddings import load_embedding_file

    assert torch.equal(load_embedding_file(tmp_path / "run").vectors[0], res.vectors[0])
