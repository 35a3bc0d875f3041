"""Placeholder tokens: names, vocabulary checks, adding them to every tokenizer/encoder, progressive mask.

A concept with k vectors is written as k tokens, named the way diffusers' `load_textual_inversion`
expands a multi-vector embedding: "<t>", "<t>_1", ..., "<t>_{k-1}". Per-image tokens (the paper's
per-image-token ablation) are "<t>_img0", "<t>_img1", ..., one per training image.

The vocabulary checks take only a tokenizer, so `checks.py` can run them on a tokenizer loaded on
its own (cheap) before any model weights are read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class TokenError(ValueError):
    """A placeholder or init word that cannot be used with this tokenizer."""


def placeholder_tokens(placeholder: str, num_vectors: int) -> list[str]:
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, num_vectors)]


def image_tokens(placeholder: str, n_images: int) -> list[str]:
    return [f"{placeholder}_img{i}" for i in range(n_images)]


def active_count(step: int, num_vectors: int, progressive_every: int | None) -> int:
    """Progressive words: how many of the k vectors the prompt carries at optimizer step `step` (0-based)."""
    if not progressive_every:
        return num_vectors
    return min(step // progressive_every + 1, num_vectors)


def check_placeholder(tokenizer, tokens: list[str]) -> None:
    """Refuse placeholders that are empty, contain spaces, or already mean something to the tokenizer."""
    vocab = tokenizer.get_vocab()
    for tok in tokens:
        if not tok or any(c.isspace() for c in tok):
            raise TokenError(
                f"inversion.placeholder={tok!r}: must be non-empty and contain no spaces, e.g. '<my-cat>'"
            )
        # CLIP's BPE vocabulary stores whole words as "word</w>"; an added token equal to a word
        # would silently hijack that word in every prompt (the init word included).
        if tok in vocab or f"{tok.lower()}</w>" in vocab:
            raise TokenError(
                f"inversion.placeholder: token {tok!r} is already in the tokenizer's vocabulary; "
                "choose a new string such as '<my-concept>'"
            )


def init_word_ids(tokenizer, init_word: str, average: bool) -> list[int]:
    """Token ids of the init word; several tokens are refused (naming them) unless averaging is asked for."""
    if not init_word or not str(init_word).strip():
        raise TokenError(
            "inversion.init_word is empty: give a single-token coarse class word, e.g. inversion.init_word=dog"
        )
    ids = tokenizer.encode(str(init_word), add_special_tokens=False)
    names = tokenizer.convert_ids_to_tokens(ids)
    if not ids or tokenizer.unk_token_id in ids:
        raise TokenError(
            f"inversion.init_word={init_word!r} is unknown to the tokenizer (tokens: {names}); "
            "use a plain English word such as 'dog'"
        )
    if len(ids) > 1 and not average:
        raise TokenError(
            f"inversion.init_word={init_word!r} tokenizes to {len(ids)} tokens {names}; use a single-token "
            "word, or set inversion.init_word_average=true to initialise from their mean embedding"
        )
    return ids


@dataclass
class Placeholders:
    """The new rows of one text encoder: their token ids and init embeddings (fp32)."""

    tokens: list[str]  # concept tokens first (k), then per-image tokens
    ids: list[int]
    init: torch.Tensor  # [len(tokens), dim]
    num_vectors: int  # k: the first k rows are the concept's vectors


def add_placeholder_tokens(
    tokenizers: list, text_encoders: list, tokens: list[str], num_vectors: int, init_word: str, average: bool
) -> list[Placeholders]:
    """Add `tokens` to every tokenizer, grow every encoder's embedding, init the new rows from the init word."""
    out = []
    for tokenizer, encoder in zip(tokenizers, text_encoders):
        check_placeholder(tokenizer, tokens)
        word_ids = init_word_ids(tokenizer, init_word, average)
        added = tokenizer.add_tokens(tokens)
        if added != len(tokens):
            raise TokenError(
                f"inversion.placeholder: the tokenizer refused some of {tokens}; choose another placeholder"
            )
        encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        weight = encoder.get_input_embeddings().weight
        ids = tokenizer.convert_tokens_to_ids(tokens)
        with torch.no_grad():
            init = weight[word_ids].float().mean(0)
            weight[ids] = init.to(weight.dtype)
        out.append(Placeholders(tokens, ids, init.expand(len(tokens), -1).clone(), num_vectors))
    return out
