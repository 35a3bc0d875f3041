"""CLIP-style BPE merges learned from a word list, so that every listed word is one token: the embedded world's
tokenizers (sweeper/world/tokenizer.py) and the tests' small components (tests/tiny_components.py) use it."""

from __future__ import annotations

from collections import Counter

SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def train_bpe(words: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Learn CLIP-style BPE merges until every word in `words` is one token.

    Merges are learned greedily by pair frequency, the standard algorithm, so applying them in
    order reproduces the learned segmentation (hand-written merge lists conflict silently).
    """
    corpus = {w: [*w[:-1], w[-1] + "</w>"] for w in sorted(set(words))}
    alphabet = [chr(c) for c in range(33, 127)]
    vocab_list = [*alphabet, *(c + "</w>" for c in alphabet)]
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols in corpus.values():
            pairs.update(zip(symbols, symbols[1:]))
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        joined = best[0] + best[1]
        vocab_list.append(joined)
        for word, symbols in corpus.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            corpus[word] = out
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    for tok in SPECIAL:
        vocab[tok] = len(vocab)
    return vocab, merges
