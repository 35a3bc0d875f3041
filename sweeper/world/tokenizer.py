"""CLIP tokenizers for the world's vocabulary, built the way transformers 5 reads them correctly.

`CLIPTokenizer(vocab=dict, merges=list)` with BPE merges learned so that every world word is one token
(see DESIGN.md: the vocab_file/merges_file constructor silently maps every token to id 2). Words outside
the vocabulary still tokenize, into characters, as with any BPE.
"""

from __future__ import annotations

import torch

from sweeper.world.bpe import train_bpe
from sweeper.world.draw import vocabulary

# Lazy imports: transformers is imported where the tokenizer is built (import time of the world).

MAX_LENGTH = 77  # the SD text length: every pipeline, trainer and judge pads or truncates to this


def build_tokenizer(judge: bool = False):
    """The generator's tokenizer (judge=False) or the judge's, which also knows the secret shapes."""
    from transformers import CLIPTokenizer

    vocab, merges = train_bpe(vocabulary(judge=judge))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)


class FastIds:
    """Token ids of world captions, cached per word (exactly what the tokenizer gives; see `check`).

    The tokenizer's Python BPE would dominate a CPU training step; captions reuse a few dozen words.
    """

    def __init__(self, tokenizer, length: int = MAX_LENGTH):
        self.tokenizer, self.length = tokenizer, length
        self.cache: dict[str, list[int]] = {}
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.full((len(texts), self.length), self.pad, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.bos, *(i for w in text.split() for i in self._word(w)), self.eos][: self.length]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    def _word(self, word: str) -> list[int]:
        if word not in self.cache:
            self.cache[word] = self.tokenizer.encode(word, add_special_tokens=False)
        return self.cache[word]

    def check(self, texts: list[str]) -> None:
        ref = self.tokenizer(
            texts, padding="max_length", max_length=self.length, truncation=True, return_tensors="pt"
        ).input_ids
        if not torch.equal(ref, self(texts)):
            raise RuntimeError(
                "FastIds disagrees with the CLIPTokenizer: a caption word tokenizes differently in context"
            )
