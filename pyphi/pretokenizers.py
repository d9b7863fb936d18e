"""BPE pre-tokenizers by their GGUF name (`tokenizer.ggml.pre`), and where each vocabulary's BPE
ranks come from.

A GGUF does not carry its pre-tokenizer regex, only a name that llama.cpp's converter picked by
hashing what the HF tokenizer does to a probe text (SPEC §5.1). Each name maps to one table
entry: the split pattern (evaluated by tiktoken) and the function that turns the vocabulary into
tiktoken's mergeable ranks. A vocabulary whose merge order is not its id order (GPT-2 style, e.g.
SmolLM2's `smollm` or Llama 3's `llama-bpe`) becomes one more entry with a rank function that
reads `tokenizer.ggml.merges`; nothing else changes.

What this is not: the tokenizer (that is `pyphi.tokenizer`, which imports this leaf module).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

# o200k_base, verbatim from tiktoken 0.14.0 `tiktoken_ext/openai_public.py` L104-114 (SPEC §6.2).
# Not llama.cpp's GPT4O rewrite (llama-vocab.cpp L438-444), which splits words with combining
# marks (Devanagari, Thai) differently from the pattern the model was trained with (SPEC §6.2).
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)


class RankError(ValueError):
    """The vocabulary cannot serve as BPE ranks; the message says why."""


def ranks_from_ids(token_bytes: list[bytes], normal_ids: list[int], merges: list[str]) -> dict[bytes, int]:
    """Rank = token id, as in tiktoken's own encodings: o200k_base's ids are its merge order
    (SPEC §6.1), so `merges` (the same order, spelled as pairs) adds nothing."""
    ranks = dict(zip([token_bytes[i] for i in normal_ids], normal_ids))
    if len(ranks) != len(normal_ids):
        raise RankError("two normal tokens have the same bytes, so ids cannot be ranks")
    return ranks


class PreTokenizer(NamedTuple):
    pattern: str  # the split regex, in tiktoken's (fancy-regex) syntax
    # (bytes of every id, the ids of NORMAL tokens, tokenizer.ggml.merges) -> mergeable ranks
    ranks: Callable[[list[bytes], list[int], list[str]], dict[bytes, int]]


PRE_TOKENIZERS = {
    "gpt-4o": PreTokenizer(O200K_PATTERN, ranks_from_ids),
}
