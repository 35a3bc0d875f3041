"""Placeholder tokens on the real tiny tokenizers/encoders loaded from disk."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from sweeper.training import tokens


@pytest.fixture
def tok_enc(tiny_sd):
    return (
        CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer"),
        CLIPTextModel.from_pretrained(tiny_sd, subfolder="text_encoder"),
    )


def test_names_follow_diffusers_multi_vector_convention():
    assert tokens.placeholder_tokens("<t>", 3) == ["<t>", "<t>_1", "<t>_2"]
    assert tokens.placeholder_tokens("<t>", 1) == ["<t>"]
    assert tokens.image_tokens("<t>", 2) == ["<t>_img0", "<t>_img1"]


def test_progressive_active_count():
    assert [tokens.active_count(s, 3, 10) for s in (0, 9, 10, 19, 20, 50)] == [1, 1, 2, 2, 3, 3]
    assert tokens.active_count(0, 3, None) == 3


@pytest.mark.parametrize("bad", ["dog", "photo", "a b", ""])
def test_placeholder_in_vocabulary_or_malformed_is_refused(tok_enc, bad):
    with pytest.raises(tokens.TokenError, match="inversion.placeholder"):
        tokens.check_placeholder(tok_enc[0], [bad])


def test_new_placeholder_accepted(tok_enc):
    tokens.check_placeholder(tok_enc[0], ["<my-cat>", "<my-cat>_1"])


def test_init_word_single_multi_unknown(tok_enc):
    tok = tok_enc[0]
    assert len(tokens.init_word_ids(tok, "dog", False)) == 1
    with pytest.raises(tokens.TokenError, match=r"tokenizes to \d+ tokens \[.*'z'") as err:
        tokens.init_word_ids(tok, "zzqx", False)
    assert "init_word_average=true" in str(err.value)
    assert len(tokens.init_word_ids(tok, "zzqx", True)) > 1
    with pytest.raises(tokens.TokenError, match="unknown"):
        tokens.init_word_ids(tok, "\u00e9\u00e9", True)
    with pytest.raises(tokens.TokenError, match="empty"):
        tokens.init_word_ids(tok, " ", False)


def test_rows_added_and_initialised_from_init_word(tok_enc):
    tok, enc = tok_enc
    n0 = len(tok)
    dog = enc.get_input_embeddings().weight[tok.convert_tokens_to_ids("dog</w>")].detach().clone()
    (rows,) = tokens.add_placeholder_tokens([tok], [enc], ["<c>", "<c>_1", "<c>_img0"], 2, "dog", False)
    assert len(tok) == n0 + 3 and enc.get_input_embeddings().weight.shape[0] == n0 + 3
    assert rows.ids == list(range(n0, n0 + 3)) and rows.num_vectors == 2
    weight = enc.get_input_embeddings().weight
    for i in rows.ids:
        assert torch.equal(weight[i], dog)
    assert torch.equal(rows.init, dog.expand(3, -1))
    # The prompt tokenizes the placeholder to its own id, not to characters.
    ids = tok("a photo of <c> <c>_1").input_ids
    assert rows.ids[0] in ids and rows.ids[1] in ids


def test_multi_token_init_word_averaged(tok_enc):
    tok, enc = tok_enc
    word_ids = tok.encode("zzqx", add_special_tokens=False)
    mean = enc.get_input_embeddings().weight[word_ids].detach().mean(0)
    (rows,) = tokens.add_placeholder_tokens([tok], [enc], ["<c>"], 1, "zzqx", True)
    assert torch.allclose(enc.get_input_embeddings().weight[rows.ids[0]], mean)


def test_sdxl_both_encoders_get_rows(tiny_sdxl):
    from transformers import CLIPTextModelWithProjection

    toks = [CLIPTokenizer.from_pretrained(tiny_sdxl, subfolder=s) for s in ("tokenizer", "tokenizer_2")]
    encs = [
        CLIPTextModel.from_pretrained(tiny_sdxl, subfolder="text_encoder"),
        CLIPTextModelWithProjection.from_pretrained(tiny_sdxl, subfolder="text_encoder_2"),
    ]
    rows = tokens.add_placeholder_tokens(toks, encs, ["<c>", "<c>_1"], 2, "cat", False)
    assert [r.init.shape for r in rows] == [torch.Size([2, 32]), torch.Size([2, 48])]
    for tok, enc, r in zip(toks, encs, rows):
        assert enc.get_input_embeddings().weight.shape[0] == len(tok)
        cat = enc.get_input_embeddings().weight[tok.convert_tokens_to_ids("cat</w>")]
        assert torch.equal(enc.get_input_embeddings().weight[r.ids[1]], cat)
