"""Embedding files: diffusers / A1111 round trips through real (tiny) pipelines, and safe loading."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sweeper.store.embeddings import (
    EmbeddingFormatError,
    LoadedEmbedding,
    UnsafeEmbeddingError,
    load_embedding_file,
    load_into_pipeline,
    save_learned_embeds,
)

SD_DIM, SDXL_DIMS = 32, (32, 48)  # the tiny models' text-encoder widths


@pytest.fixture
def sd_pipe(tiny_sd):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny_sd)


@pytest.fixture
def sdxl_pipe(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)


def rows(tokenizer, encoder, tokens: list[str]) -> torch.Tensor:
    ids = tokenizer.convert_tokens_to_ids(tokens)
    assert tokenizer.unk_token_id not in ids
    return encoder.get_input_embeddings().weight[ids].detach()


def multi(token: str, k: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, k)]


def generate(pipe, prompt: str):
    out = pipe(
        prompt,
        num_inference_steps=2,
        height=32,
        width=32,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert out.shape == (1, 32, 32, 3)
    assert torch.isfinite(torch.from_numpy(out)).all()
    return out


def prompt_embeds(pipe, prompt: str) -> torch.Tensor:
    with torch.no_grad():
        return pipe.encode_prompt(
            prompt=prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
        )[0]


@pytest.mark.parametrize("k", [1, 3])
def test_diffusers_round_trip(tmp_path, sd_pipe, k):
    vectors = torch.randn(k, SD_DIM, generator=torch.Generator().manual_seed(k))
    paths = save_learned_embeds(tmp_path, "<cat>", [vectors], metadata={"init_word": "cat"})
    assert set(paths) == {"diffusers", "a1111"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "learned_embeds.safetensors",
        "learned_embeds_a1111.safetensors",
    ]  # no temporary files left
    stored = load_file(paths["diffusers"])
    assert list(stored) == ["<cat>"] and torch.equal(stored["<cat>"], vectors)

    before = prompt_embeds(sd_pipe, "a photo of")
    sd_pipe.load_textual_inversion(paths["diffusers"])  # diffusers' own loader reads our file
    assert torch.equal(rows(sd_pipe.tokenizer, sd_pipe.text_encoder, multi("<cat>", k)), vectors)
    assert sd_pipe.maybe_convert_prompt("a photo of <cat>", sd_pipe.tokenizer) == "a photo of " + " ".join(
        multi("<cat>", k)
    )
    with_token = prompt_embeds(sd_pipe, "a photo of <cat>")
    assert not torch.allclose(with_token, before)
    generate(sd_pipe, "a photo of <cat>")

    loaded = load_embedding_file(tmp_path)  # a run folder reads the same
    assert (
        loaded.placeholder == "<cat>" and loaded.num_vectors == k and torch.equal(loaded.vectors[0], vectors)
    )


def test_a1111_safetensors_round_trip(tmp_path, sd_pipe):
    vectors = torch.randn(2, SD_DIM)
    paths = save_learned_embeds(tmp_path, "<toy>", [vectors])
    stored = load_file(paths["a1111"])
    assert list(stored) == ["emb_params"] and torch.equal(stored["emb_params"], vectors)
    loaded = load_embedding_file(paths["a1111"])
    assert loaded.placeholder == "<toy>" and torch.equal(loaded.vectors[0], vectors)  # name from metadata
    assert load_into_pipeline(sd_pipe, paths["a1111"], token="<mytoy>") == "<mytoy>"
    assert torch.equal(rows(sd_pipe.tokenizer, sd_pipe.text_encoder, multi("<mytoy>", 2)), vectors)
    generate(sd_pipe, "a photo of <mytoy>")

    bare = tmp_path / "community.safetensors"  # a community file without our metadata
    save_file({"emb_params": vectors}, str(bare))
    assert load_embedding_file(bare).placeholder is None


@pytest.mark.parametrize("as_parameter", [False, True])
def test_a1111_pt_round_trip(tmp_path, sd_pipe, as_parameter):
    vectors = torch.randn(2, SD_DIM)
    param = torch.nn.Parameter(vectors.clone()) if as_parameter else vectors.clone()
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": param},
            "name": "charturner",
            "step": 1500,
            "sd_checkpoint": "abc123",
            "sd_checkpoint_name": "sd15",
        },
        tmp_path / "charturner.pt",
    )
    loaded = load_embedding_file(tmp_path / "charturner.pt")
    assert loaded.placeholder == "charturner" and torch.equal(loaded.vectors[0], vectors)
    assert load_into_pipeline(sd_pipe, tmp_path / "charturner.pt") == "charturner"
    assert torch.equal(rows(sd_pipe.tokenizer, sd_pipe.text_encoder, multi("charturner", 2)), vectors)
    generate(sd_pipe, "charturner, a photo")


def test_diffusers_bin_and_raw_tensor(tmp_path, sd_pipe):
    v = torch.randn(1, SD_DIM)
    torch.save({"<bin>": v}, tmp_path / "learned_embeds.bin")
    loaded = load_embedding_file(tmp_path / "learned_embeds.bin")
    assert loaded.placeholder == "<bin>" and torch.equal(loaded.vectors[0], v)
    torch.save(v[0], tmp_path / "raw.pt")  # a bare [dim] tensor
    raw = load_embedding_file(tmp_path / "raw.pt")
    assert raw.placeholder is None and raw.vectors[0].shape == (1, SD_DIM)
    assert load_into_pipeline(sd_pipe, raw) == "<concept>"
    assert torch.equal(rows(sd_pipe.tokenizer, sd_pipe.text_encoder, ["<concept>"]), v)
    # a safetensors file under another suffix is sniffed, not unpickled
    save_file({"<st>": v}, str(tmp_path / "st.bin"))
    assert load_embedding_file(tmp_path / "st.bin").placeholder == "<st>"


def test_sdxl_two_encoders_round_trip(tmp_path, sdxl_pipe):
    clip_l, clip_g = torch.randn(2, SDXL_DIMS[0]), torch.randn(2, SDXL_DIMS[1])
    per_image = {"<img0>": [torch.randn(1, SDXL_DIMS[0]), torch.randn(1, SDXL_DIMS[1])]}
    paths = save_learned_embeds(tmp_path, "<dog>", [clip_l, clip_g], per_image=per_image)
    assert set(paths) == {"diffusers", "diffusers_2", "a1111", "per_image", "per_image_2"}
    assert torch.equal(load_file(paths["diffusers_2"])["<dog>"], clip_g)
    a1111 = load_file(paths["a1111"])
    assert set(a1111) == {"clip_l", "clip_g"} and torch.equal(a1111["clip_g"], clip_g)
    assert torch.equal(load_file(paths["per_image_2"])["<img0>"], per_image["<img0>"][1])

    before = prompt_embeds(sdxl_pipe, "a photo of")
    assert load_into_pipeline(sdxl_pipe, tmp_path) == "<dog>"
    assert torch.equal(rows(sdxl_pipe.tokenizer, sdxl_pipe.text_encoder, multi("<dog>", 2)), clip_l)
    assert torch.equal(rows(sdxl_pipe.tokenizer_2, sdxl_pipe.text_encoder_2, multi("<dog>", 2)), clip_g)
    assert not torch.allclose(prompt_embeds(sdxl_pipe, "a photo of <dog>"), before)
    generate(sdxl_pipe, "a photo of <dog>")

    loaded = load_embedding_file(paths["a1111"])  # the community clip_l/clip_g file reads the same
    assert torch.equal(loaded.vectors[0], clip_l) and torch.equal(loaded.vectors[1], clip_g)


def test_sdxl_files_load_with_diffusers_own_loader(tmp_path, sdxl_pipe):
    clip_l, clip_g = torch.randn(1, SDXL_DIMS[0]), torch.randn(1, SDXL_DIMS[1])
    paths = save_learned_embeds(tmp_path, "<s>", [clip_l, clip_g])
    sdxl_pipe.load_textual_inversion(
        paths["diffusers"], text_encoder=sdxl_pipe.text_encoder, tokenizer=sdxl_pipe.tokenizer
    )
    sdxl_pipe.load_textual_inversion(
        paths["diffusers_2"], text_encoder=sdxl_pipe.text_encoder_2, tokenizer=sdxl_pipe.tokenizer_2
    )
    assert torch.equal(rows(sdxl_pipe.tokenizer_2, sdxl_pipe.text_encoder_2, ["<s>"]), clip_g)


def test_wrong_model_family_is_refused(tmp_path, sd_pipe, sdxl_pipe):
    save_learned_embeds(tmp_path / "sd", "<a>", [torch.randn(1, SD_DIM)])
    with pytest.raises(EmbeddingFormatError, match=r"1 vector set\(s\).*\[32, 48\]"):
        load_into_pipeline(sdxl_pipe, tmp_path / "sd")
    with pytest.raises(EmbeddingFormatError, match="different model family"):
        load_into_pipeline(sd_pipe, LoadedEmbedding("<b>", [torch.randn(1, 64)]))
    assert "<b>" not in sd_pipe.tokenizer.get_vocab()


def test_per_image_file(tmp_path):
    per_image = {f"<img{i}>": [torch.randn(SD_DIM)] for i in range(3)}
    paths = save_learned_embeds(tmp_path, "<c>", [torch.randn(1, SD_DIM)], per_image=per_image)
    stored = load_file(paths["per_image"])
    assert set(stored) == set(per_image)
    assert all(
        stored[t].shape == (1, SD_DIM) and torch.equal(stored[t][0], v[0]) for t, v in per_image.items()
    )


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="same number of vectors"):
        save_learned_embeds(tmp_path, "<x>", [torch.randn(2, 32), torch.randn(3, 48)])
    with pytest.raises(ValueError, match=r"\[k, dim\]"):
        save_learned_embeds(tmp_path, "<x>", [torch.randn(1, 2, 32)])
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- safe load


class _Payload:
    """Unpickling this runs code: it opens (creates) the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class _ShellPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path, sd_pipe):
    marker = tmp_path / "pwned"
    files = {}
    for protocol in (0, 2, 4, 5):
        files[f"evil_p{protocol}.pt"] = pickle.dumps(
            {"string_to_param": {"*": _Payload(marker)}, "name": "evil"}, protocol=protocol
        )
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    zipped = tmp_path / "learned_embeds.bin"
    torch.save({"<evil>": _ShellPayload(marker)}, zipped)  # torch's zip format, same trick inside
    raw = tmp_path / "evil_p2.pt"

    for path in [*(tmp_path / n for n in files), zipped]:
        with pytest.raises(
            UnsafeEmbeddingError, match=rf"{path.name}: refused: .*contains code.*(open|system)"
        ):
            load_embedding_file(path)
        assert not marker.exists()
    vocab = len(sd_pipe.tokenizer)
    with pytest.raises(UnsafeEmbeddingError):
        load_into_pipeline(sd_pipe, raw)
    assert not marker.exists() and len(sd_pipe.tokenizer) == vocab

    pickle.loads(raw.read_bytes())  # the file really is malicious: a plain unpickle runs it
    assert marker.exists()


def test_unreadable_and_unknown_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not an embedding\n" * 10)
    (tmp_path / "p4.pt").write_bytes(pickle.dumps({"<t>": torch.zeros(1, 4)}, protocol=4))  # tensors, no code
    for name in ("junk.pt", "p4.pt"):
        with pytest.raises(EmbeddingFormatError, match=name) as err:
            load_embedding_file(tmp_path / name)
        assert not isinstance(err.value, UnsafeEmbeddingError)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(EmbeddingFormatError, match="bad.safetensors"):
        load_embedding_file(tmp_path / "bad.safetensors")
    save_file({"alpha": torch.zeros(2), "beta": torch.zeros(2)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(
        EmbeddingFormatError, match=r"lora.safetensors: unknown embedding layout.*'alpha', 'beta'"
    ):
        load_embedding_file(tmp_path / "lora.safetensors")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(EmbeddingFormatError, match="list.pt.*list"):
        load_embedding_file(tmp_path / "list.pt")
    with pytest.raises(EmbeddingFormatError, match="no such file"):
        load_embedding_file(tmp_path / "missing.safetensors")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(EmbeddingFormatError, match="has no learned_embeds.safetensors"):
        load_embedding_file(tmp_path / "empty_run")


def test_half_precision_pipeline_and_taken_token(tmp_path, tiny_sd, sdxl_pipe):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, torch_dtype=torch.float16)
    vectors = torch.randn(2, SD_DIM)
    save_learned_embeds(tmp_path, "<half>", [vectors])
    assert load_into_pipeline(pipe, tmp_path) == "<half>"
    got = rows(pipe.tokenizer, pipe.text_encoder, multi("<half>", 2))
    assert got.dtype == torch.float16 and torch.equal(got, vectors.half())
    with pytest.raises(ValueError, match="'<half>' is already in the pipeline's vocabulary"):
        load_into_pipeline(pipe, tmp_path)

    sdxl_pipe.tokenizer_2.add_tokens("<dup>")  # taken on the second encoder only
    n1 = len(sdxl_pipe.tokenizer)
    emb = LoadedEmbedding("<dup>", [torch.randn(1, SDXL_DIMS[0]), torch.randn(1, SDXL_DIMS[1])])
    with pytest.raises(ValueError, match="already in the pipeline's vocabulary"):
        load_into_pipeline(sdxl_pipe, emb)
    assert len(sdxl_pipe.tokenizer) == n1  # the first encoder was not touched


# ------------------------------------------------------------------------------ the paper's own files


def write_official(path: Path, vectors: torch.Tensor, drop_keys: bool = False) -> Path:
    """An embeddings_gs-N.pt as rinongal/textual_inversion's EmbeddingManager.save() writes it: the token is a
    0-dim view into the tokenizer's output, the vectors an nn.ParameterDict of trainable Parameters."""
    tokens = torch.tensor([[49406, 265, 49407] + [49407] * 74])  # the tokenizer's [1, 77] output for "*"
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors.clone(), requires_grad=True)})
    if drop_keys:  # as torch < 1.12 pickled it: no _keys, which newer ParameterDict accessors need
        del params._keys
    torch.save({"string_to_token": {"*": tokens[0, 1]}, "string_to_param": params}, path)
    return path


@pytest.mark.parametrize("drop_keys", [False, True])
def test_the_official_codes_embeddings_are_read(tmp_path, sd_pipe, drop_keys):
    from sweeper.store.embeddings import _pickle_globals

    vectors = torch.randn(2, SD_DIM)
    path = write_official(tmp_path / "embeddings_gs-4999.pt", vectors, drop_keys)
    names = set(_pickle_globals(path))  # the classes that format needs beyond plain tensors
    assert "torch.nn.modules.container.ParameterDict" in names and "__builtin__.set" in names
    with pytest.raises(pickle.UnpicklingError, match="ParameterDict"):
        torch.load(path, weights_only=True)  # torch's own safe loader refuses it
    loaded = load_embedding_file(path)
    assert torch.equal(loaded.vectors[0], vectors) and not loaded.vectors[0].requires_grad
    assert load_into_pipeline(sd_pipe, loaded, token="<paper>") == "<paper>"
    assert torch.equal(rows(sd_pipe.tokenizer, sd_pipe.text_encoder, multi("<paper>", 2)), vectors)
    generate(sd_pipe, "a photo of <paper>")


def test_a_parameterdict_carrying_anything_else_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    hooked = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(1, SD_DIM))})
    hooked._forward_hooks[0] = _ShellPayload(marker)  # code inside the allowed class's state
    torch.save({"string_to_token": {"*": torch.tensor(265)}, "string_to_param": hooked}, tmp_path / "hook.pt")
    beside = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(1, SD_DIM))})
    torch.save({"string_to_param": beside, "extra": _ShellPayload(marker)}, tmp_path / "beside.pt")
    for name in ("hook.pt", "beside.pt"):
        with pytest.raises(UnsafeEmbeddingError, match=rf"{name}: refused: .*contains code.*system"):
            load_embedding_file(tmp_path / name)
    # another torch module is not code, but not the format either: refused without being built
    torch.save({"string_to_param": torch.nn.Linear(2, 2)}, tmp_path / "linear.pt")
    with pytest.raises(EmbeddingFormatError, match=r"linear.pt: torch's safe loader cannot read it.*Linear"):
        load_embedding_file(tmp_path / "linear.pt")
    assert not marker.exists()


# ------------------------------------------------------------------------------- non-finite values


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_embeddings_are_refused_when_read(tmp_path, bad):
    vectors = torch.randn(3, SD_DIM)
    vectors[1, 5] = bad
    save_file({"<nan>": vectors}, str(tmp_path / "nan.safetensors"))
    torch.save({"string_to_param": {"*": vectors}, "name": "nan"}, tmp_path / "nan.pt")
    write_official(tmp_path / "embeddings_gs-1.pt", vectors)
    for name in ("nan.safetensors", "nan.pt", "embeddings_gs-1.pt"):
        with pytest.raises(
            EmbeddingFormatError, match=rf"{name}: 1 of {3 * SD_DIM} values are NaN or infinite"
        ):
            load_embedding_file(tmp_path / name)
    save_learned_embeds(tmp_path / "run", "<x>", [torch.randn(1, 32), torch.full((1, 48), float("nan"))])
    with pytest.raises(EmbeddingFormatError, match=r"learned_embeds_2.safetensors: 48 of 48 .* \[0\]"):
        load_embedding_file(tmp_path / "run")


# ------------------------------------------------------------------------------ widths, before models


def test_width_is_checked_against_the_models_config_without_loading_it(tmp_path, tiny_sd, tiny_sdxl):
    from sweeper.store.embeddings import check_fits_model, model_text_widths

    assert model_text_widths(str(tiny_sd)) == [SD_DIM] and model_text_widths(str(tiny_sdxl)) == list(
        SDXL_DIMS
    )
    save_file({"<wide>": torch.randn(1, 768)}, str(tmp_path / "wide.safetensors"))
    wide = load_embedding_file(tmp_path / "wide.safetensors")
    with pytest.raises(
        EmbeddingFormatError, match=r"wide.safetensors: holds 1 vector set\(s\) of width \[768\]"
    ):
        check_fits_model(wide, str(tiny_sd))
    save_learned_embeds(tmp_path / "xl", "<xl>", [torch.randn(1, 32), torch.randn(1, 48)])
    xl = load_embedding_file(tmp_path / "xl")
    check_fits_model(xl, str(tiny_sdxl))
    with pytest.raises(EmbeddingFormatError, match=r"xl: holds 2 vector set\(s\) of width \[32, 48\]"):
        check_fits_model(xl, str(tiny_sd))


# ------------------------------------------------------------------------ bounded memory, header first

_PEAK_RSS_OF_A_REFUSAL = """
import json, resource, sys
from sweeper.store.embeddings import EmbeddingFormatError, load_embedding_file
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_embedding_file(sys.argv[1])
    refusal = None
except EmbeddingFormatError as err:
    refusal = str(err)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"refusal": refusal, "grew_kib": after - before}))
"""


def _sparse_safetensors(path: Path, shape: list[int], dtype: str = "F32") -> Path:
    """A safetensors file whose header claims `shape` and whose data is a hole: it costs no disk."""
    import json as _json
    import struct

    nbytes = 4 * int(torch.tensor(shape).prod())
    header = _json.dumps({"<huge>": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + nbytes)
    return path


def test_a_file_claiming_a_huge_tensor_is_refused_from_its_header_in_bounded_memory(tmp_path):
    import json as _json
    import subprocess
    import sys

    path = _sparse_safetensors(tmp_path / "huge.safetensors", [1, 2**28])  # 1 GiB claimed, a hole on disk
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS_OF_A_REFUSAL, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr
    result = _json.loads(out.stdout.strip().splitlines()[-1])
    assert (
        result["refusal"]
        and "huge.safetensors" in result["refusal"]
        and "[1, 268435456]" in result["refusal"]
    )
    assert result["grew_kib"] < 128 * 1024, result  # the 1 GiB tensor was never materialised
