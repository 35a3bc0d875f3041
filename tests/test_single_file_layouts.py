"""Single checkpoint files in key layouts diffusers' own loader does not read: the text encoder that diffusers'
convert_diffusers_to_original_stable_diffusion.py writes under transformers 5 (no `text_model.` prefix)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ldm_format import build_sd15_shaped, ldm_state_dict
from safetensors.torch import load_file, save_file

from sweeper.models import load_components, load_pipeline, resolve_model
from sweeper.store.embeddings import model_text_widths


def convert_like_diffusers_script(folder: Path, out: Path) -> Path:
    """What the conversion script does for an SD 1.x folder: UNet and VAE renamed to the LDM layout (the same
    tables as tests/ldm_format.py), the text encoder's state dict as saved, behind "cond_stage_model.transformer."
    (its convert_text_enc_state_dict is the identity). A .ckpt holds {"state_dict": ...} as the script saves it."""
    state = {k: v for k, v in ldm_state_dict(folder).items() if not k.startswith("cond_stage_model.")}
    text_encoder = load_file(str(folder / "text_encoder" / "model.safetensors"))  # as transformers 5 saved it
    state.update({"cond_stage_model.transformer." + k: v for k, v in text_encoder.items()})
    if out.suffix == ".safetensors":
        save_file(state, str(out))
    else:
        torch.save({"state_dict": state}, out)
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("t5-layout")
    folder = build_sd15_shaped(tmp / "diffusers")
    files = [convert_like_diffusers_script(folder, tmp / f"model.{s}") for s in ("safetensors", "ckpt")]
    return folder, files


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_converted_file_has_text_encoder_keys_without_text_model(converted):
    folder, (file, _) = converted
    keys = set(load_file(str(file)))
    assert "cond_stage_model.transformer.embeddings.token_embedding.weight" in keys
    assert not any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys)


@pytest.mark.parametrize("which", [0, 1], ids=["safetensors", "ckpt"])
def test_prefixless_text_encoder_file_loads_the_folders_weights(converted, which):
    folder, files = converted
    source = resolve_model(str(files[which]), str(folder))
    assert model_text_widths(str(files[which]), str(folder)) == [32]  # read from the header, no weights
    ref = load_components(str(folder), "fp32", "cpu")
    comps = load_components(source, "fp32", "cpu")
    for a, b in zip(
        (ref.unet, ref.vae, ref.text_encoders[0]), (comps.unet, comps.vae, comps.text_encoders[0])
    ):
        assert same_weights(a, b)
    pipe = load_pipeline(source, "fp16", "cpu")
    assert pipe.text_encoder.dtype == torch.float16 and pipe.unet.dtype == torch.float16
