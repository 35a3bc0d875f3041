"""model.pretrained = one .safetensors/.ckpt checkpoint in the original LDM layout, with model.config offline.

The files are written by tests/ldm_format.py from small pipeline folders with SD 1.5's (and SDXL's) topology;
that folder is also the model.config. Everything is loaded back through diffusers' from_single_file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config, write_concept_images
from ldm_format import build_sd15_shaped, build_sdxl_shaped, write_single_file
from safetensors import safe_open
from safetensors.torch import load_file
from sweep_app.cli import env, run_sweeper, tiny_overrides

from sweeper.checks import ConfigError, check_config
from sweeper.models import ModelLoadError, ModelSource, load_components, load_pipeline, resolve_model
from sweeper.training.inversion import invert

ROOT = Path(__file__).resolve().parents[1]
PLAIN = "pass model.config=<a local diffusers folder of the same architecture>"


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """(diffusers folder, .safetensors file, .ckpt file) of one tiny SD 1.5-shaped model."""
    tmp = tmp_path_factory.mktemp("sd15")
    folder = build_sd15_shaped(tmp / "diffusers")
    return (
        folder,
        write_single_file(folder, tmp / "model.safetensors"),
        write_single_file(folder, tmp / "model.ckpt"),
    )


# Weights are compared bit for bit: the single-file loader only renames, reshapes and splits tensors (no
# arithmetic). What the two pipelines COMPUTE is compared with a tolerance: the two load paths build the modules
# differently (layouts, fused attention projections, contiguity), so the CPU may run other kernels or another
# summation order, and the last float bits differ between CPUs (equal on an Intel Xeon, not on an AMD EPYC).
# fp32 carries ~1.2e-7 relative precision; a few dozen fp32 layers on values of order 1 accumulate ~1e-6.
# 1e-5 absolute sits 10x above that and far below any real difference (a wrong weight moves outputs by ~1e-2).
FP32_PATHS_ATOL = 1e-5


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, name: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys(), f"{name}: {sorted(set(sa) ^ set(sb))[:5]}"
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"{name}: {len(differ)} tensors differ, e.g. {differ[:3]}"


def test_file_has_the_original_ldm_layout(sd15):
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    _, file, ckpt = sd15
    state = load_file(str(file))
    assert {k.split(".")[0] for k in state} == {"model", "first_stage_model", "cond_stage_model"}
    assert not any("down_blocks" in k or "mid_block" in k for k in state)  # no diffusers names left
    for key in (
        CHECKPOINT_KEY_NAMES["v1"],
        CHECKPOINT_KEY_NAMES["clip"],
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.middle_block.2.emb_layers.1.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight",
    ):
        assert key in state, key
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # LDM's 1x1 conv attention
    assert infer_diffusers_model_type(state) == "v1"
    ckpt_state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert ckpt_state.keys() == state.keys() and all(torch.equal(ckpt_state[k], state[k]) for k in state)


@pytest.mark.parametrize("suffix", ["safetensors", "ckpt"])
def test_single_file_loads_the_same_weights_as_the_folder(sd15, suffix):
    folder, file, ckpt = sd15
    path = file if suffix == "safetensors" else ckpt
    source = resolve_model(str(path), str(folder))
    assert (source.kind, source.is_sdxl, source.config) == ("file", False, str(folder))
    ref, comps = (
        load_components(str(folder), "fp32", "cpu"),
        load_components(str(path), "fp32", "cpu", config=str(folder)),
    )
    assert not comps.is_sdxl and len(comps.text_encoders) == 1 and comps.resolution == ref.resolution == 64
    for name, a, b in (
        ("unet", ref.unet, comps.unet),
        ("vae", ref.vae, comps.vae),
        ("text_encoder", ref.text_encoders[0], comps.text_encoders[0]),
    ):
        assert_same_weights(a, b, name)
    assert comps.tokenizers[0].get_vocab() == ref.tokenizers[0].get_vocab()


def test_single_file_pipeline_generates_what_the_folder_does(sd15):
    folder, file, _ = sd15
    pipe, ref = (
        load_pipeline(str(file), "fp32", "cpu", config=str(folder)),
        load_pipeline(str(folder), "fp32", "cpu"),
    )
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(ref, name), getattr(pipe, name), name)
    images = [
        p(
            "a photo of a cat",
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images
        for p in (pipe, ref)
    ]
    assert images[0].shape == (1, 3, 64, 64)
    # pixels in [0, 1] after 2 denoising steps, a VAE decode: fp32 paths agree to FP32_PATHS_ATOL (see above)
    torch.testing.assert_close(images[0], images[1], atol=FP32_PATHS_ATOL, rtol=0)
    assert images[0].std() > 10 * FP32_PATHS_ATOL  # not a blank image, so the tolerance is not vacuous


def test_inversion_from_a_single_file_equals_inversion_from_the_folder(sd15, tmp_path):
    folder, file, _ = sd15
    images = write_concept_images(tmp_path / "concept", n=2)
    common = [
        f"data.images={images}",
        "inversion.init_word=cat",
        "inversion.steps=3",
        "inversion.batch_size=1",
        "inversion.grad_accum=1",
        "inversion.log_every=1",
        "inversion.checkpoint_every=0",
        "device=cpu",
    ]
    a = invert(
        compose_config(f"model.pretrained={file}", f"model.config={folder}", *common), tmp_path / "file"
    )
    b = invert(compose_config(f"model.pretrained={folder}", *common), tmp_path / "folder")
    assert a.trainer.comps.source.kind == "file" and b.trainer.comps.source.kind == "folder"
    history = (tmp_path / "file" / "history.csv").read_text().splitlines()
    header, last = history[0].split(","), history[-1].split(",")
    assert len(history) == 4 and float(last[header.index("dist_l2_0")]) > 0  # the vector moved from its init
    # 3 AdamW steps from the same init: each moves an element by ~lr (5e-3), and Adam's normalised update
    # carries the forward/backward's ~1e-6 relative float differences across the two load paths into the
    # vectors at that scale, so FP32_PATHS_ATOL (1e-5) is ~500x below the distance they travelled.
    moved = (a.vectors[0] - a.trainer.splices[0].init).abs().max()
    assert moved > 100 * FP32_PATHS_ATOL
    torch.testing.assert_close(a.vectors[0], b.vectors[0], atol=FP32_PATHS_ATOL, rtol=0)
    saved = load_file(str(tmp_path / "file" / "learned_embeds.safetensors"))
    assert torch.equal(saved[a.placeholder], a.vectors[0])  # the same tensor written and read back: exact


def test_python_m_sweeper_runs_a_trial_from_a_single_file(sd15, tiny_judge, tmp_path):
    folder, _, ckpt = sd15
    images = write_concept_images(tmp_path / "concept", n=2)
    run = tmp_path / "run"
    run_sweeper(
        *tiny_overrides(ckpt, tiny_judge, images, steps=2), f"model.config={folder}", f"hydra.run.dir={run}"
    )
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    metrics = json.loads((run / "metrics.json").read_text())
    assert -1 <= metrics["image_similarity"] <= 1 and -1 <= metrics["text_similarity"] <= 1
    with safe_open(str(run / "learned_embeds.safetensors"), framework="pt") as f:
        assert [f.get_slice(k).get_shape() for k in f.keys()] == [[1, 32]]


class RunsCode:
    """Unpickling this creates `marker`: a stand-in for a checkpoint that carries code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_ckpt_carrying_code_is_refused_before_anything_runs(sd15, tmp_path):
    folder, _, ckpt = sd15
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": torch.load(ckpt, weights_only=True)["state_dict"], "hook": RunsCode(marker)}, evil
    )
    torch.load(evil, weights_only=False)  # proof that the payload is live: a plain unpickle runs it
    assert marker.exists()
    marker.unlink()
    cfg = compose_config(
        f"model.pretrained={evil}",
        f"model.config={folder}",
        "inversion.init_word=cat",
        f"data.images={write_concept_images(tmp_path / 'concept', n=2)}",
    )
    with pytest.raises(
        ConfigError, match=r"model.pretrained=.*evil.ckpt: refused: .*could run code.*weights_only=True"
    ):
        check_config(cfg)
    with pytest.raises(ModelLoadError, match="refused"):
        load_pipeline(str(evil), "fp32", "cpu", config=str(folder))
    assert not marker.exists()


def test_missing_model_config_offline_says_what_to_do(sd15, tmp_path):
    _, file, ckpt = sd15
    for path in (file, ckpt):
        with pytest.raises(ModelLoadError, match=r"no network") as err:
            resolve_model(str(path))
        assert PLAIN in str(err.value) and "stable-diffusion-v1-5/stable-diffusion-v1-5" in str(err.value)
    # past the early check too (a ModelSource built by hand): diffusers' own failure is reworded the same way
    with pytest.raises(ModelLoadError, match="no network") as err:
        load_pipeline(ModelSource(str(file), "file", False, None), "fp32", "cpu")
    assert PLAIN in str(err.value)


def test_cli_without_model_config_offline_fails_plainly_before_loading(sd15, tmp_path):
    _, file, _ = sd15
    run = tmp_path / "run"
    images = write_concept_images(tmp_path / "concept", n=2)
    cmd = [
        sys.executable,
        "-m",
        "sweeper",
        f"model.pretrained={file}",
        f"data.images={images}",
        "inversion.init_word=cat",
        "tracking=none",
        "device=cpu",
        f"hydra.run.dir={run}",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**env(), "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0 and PLAIN in proc.stderr, proc.stderr[-2000:]
    assert "Loading pipeline components" not in proc.stderr + proc.stdout and not run.exists()


@pytest.mark.parametrize(
    "case",
    [
        "sdxl-config-for-sd-file",
        "config-for-a-folder",
        "no-such-config",
        "hub-config-offline",
        "placeholder-in-config-vocab",
    ],
)
def test_bad_model_config_is_named_before_any_model_work(case, sd15, tiny_sdxl, tmp_path):
    folder, file, _ = sd15
    images = write_concept_images(tmp_path / "concept", n=2)
    overrides, message = {
        "sdxl-config-for-sd-file": (
            [f"model.pretrained={file}", f"model.config={tiny_sdxl}"],
            r"model.config=.* describes SDXL .* but model.pretrained=.* is SD 1.x/2.x",
        ),
        "config-for-a-folder": (
            [f"model.pretrained={folder}", f"model.config={folder}"],
            r"only a single .safetensors/.ckpt checkpoint needs it.*model.config=null",
        ),
        "no-such-config": (
            [f"model.pretrained={file}", f"model.config={tmp_path}/nowhere"],
            r"model.config=.*nowhere: no such folder",
        ),
        "hub-config-offline": (
            [f"model.pretrained={file}", "model.config=nobody-here/no-such-model"],
            r"model.config=nobody-here/no-such-model: cannot load it: .*no network.*model.config=/path",
        ),
        "placeholder-in-config-vocab": (
            [f"model.pretrained={file}", f"model.config={folder}", "inversion.placeholder=dog"],
            r"token 'dog' is already in the tokenizer",
        ),
    }[case]
    with pytest.raises(ConfigError, match=message):
        check_config(compose_config(*overrides, f"data.images={images}", "inversion.init_word=cat"))


def test_sdxl_single_file_loads_both_encoders(tmp_path):
    folder = build_sdxl_shaped(tmp_path / "diffusers")
    file = write_single_file(folder, tmp_path / "sdxl.safetensors")
    state_keys = set(load_file(str(file)))
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in state_keys
    assert "model.diffusion_model.label_emb.0.0.weight" in state_keys
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in state_keys
    source = resolve_model(str(file), str(folder))
    assert source.is_sdxl and source.config == str(folder)
    ref, comps = (
        load_components(str(folder), "fp32", "cpu"),
        load_components(str(file), "fp32", "cpu", config=str(folder)),
    )
    assert comps.is_sdxl and len(comps.text_encoders) == 2 and len(comps.tokenizers) == 2
    assert type(load_pipeline(comps.source)).__name__ == "StableDiffusionXLPipeline"
    for name, a, b in (
        ("unet", ref.unet, comps.unet),
        ("vae", ref.vae, comps.vae),
        ("text_encoder", ref.text_encoders[0], comps.text_encoders[0]),
        ("text_encoder_2", ref.text_encoders[1], comps.text_encoders[1]),
    ):
        assert_same_weights(a, b, name)


def test_sd2_single_file_with_an_openclip_text_encoder(tmp_path):
    folder = build_sd15_shaped(tmp_path / "diffusers", sd2=True)
    file = write_single_file(folder, tmp_path / "sd2.safetensors", sd2=True)
    state_keys = set(load_file(str(file)))
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in state_keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in state_keys)
    ref, comps = (
        load_components(str(folder), "fp32", "cpu"),
        load_components(str(file), "fp32", "cpu", config=str(folder)),
    )
    assert not comps.is_sdxl and comps.scheduler.config.prediction_type == "v_prediction"
    for name, a, b in (
        ("unet", ref.unet, comps.unet),
        ("vae", ref.vae, comps.vae),
        ("text_encoder", ref.text_encoders[0], comps.text_encoders[0]),
    ):
        assert_same_weights(a, b, name)
    images = write_concept_images(tmp_path / "concept", n=2)
    common = [
        f"data.images={images}",
        "inversion.init_word=cat",
        "inversion.steps=2",
        "inversion.batch_size=1",
        "inversion.grad_accum=1",
        "inversion.checkpoint_every=0",
        "device=cpu",
    ]
    a = invert(
        compose_config(f"model.pretrained={file}", f"model.config={folder}", *common),
        tmp_path / "file",
        components=comps,
    )
    b = invert(compose_config(f"model.pretrained={folder}", *common), tmp_path / "folder", components=ref)
    assert a.vectors[0].shape == (1, 48)
    # two AdamW steps through two load paths (SD 2's OpenCLIP text encoder split from fused in_proj): see above
    torch.testing.assert_close(a.vectors[0], b.vectors[0], atol=FP32_PATHS_ATOL, rtol=0)
