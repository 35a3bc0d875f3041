import pytest
import torch

from sweeper.models import ModelLoadError, load_components, load_pipeline, resolve_model


def test_folder_loads_through_from_pretrained(tiny_sd):
    comps = load_components(str(tiny_sd), "bf16", "cpu")
    assert not comps.is_sdxl and len(comps.text_encoders) == 1 and len(comps.tokenizers) == 1
    assert comps.unet.dtype == torch.bfloat16
    assert comps.text_encoders[0].dtype == torch.float32
    assert comps.resolution == 32
    assert not any(p.requires_grad for p in comps.unet.parameters())


def test_sdxl_has_two_encoders(tiny_sdxl):
    comps = load_components(str(tiny_sdxl), "fp16", "cpu")
    assert comps.is_sdxl and len(comps.text_encoders) == 2 and len(comps.tokenizers) == 2
    assert comps.vae.dtype == torch.float32  # the fp16 VAE overflow trap
    pipe = load_pipeline(str(tiny_sdxl), "fp32", "cpu")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"


@pytest.mark.parametrize(
    "name, message",
    [
        ("/nonexistent/folder", "not a hub id"),
        ("missing.safetensors", "no such file"),
        ("", "empty"),
    ],
)
def test_bad_sources_say_what_is_wrong(name, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_model(name)


def test_unreachable_hub_says_no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="no network"):
        resolve_model("nobody-here/no-such-model-xyz")


def test_folder_without_index_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        resolve_model(str(tmp_path))


def test_auto_precision_is_fp32_on_cpu(tiny_sd):
    from sweeper.models import resolve_dtype

    assert resolve_dtype("auto", "cpu") == torch.float32
    assert load_components(str(tiny_sd), "auto", "cpu").unet.dtype == torch.float32
    with pytest.raises(ValueError, match="auto"):
        resolve_dtype("fp8")
