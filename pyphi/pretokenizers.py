"""BPE pre-tokenizers by their GGUF name (`tokenizer.ggml.pre`), and where each vocabulary's BPE
ranks come from.

A GGUF does not carry its pre-tokenizer regex, only a name that llama.cpp's converter picked by
hashing what the HF tokenizer does to a probe text (SPEC §5.1). Each name maps to one table
entry: the split pattern (evaluated by tiktoken) and the function that turns the vocabulary into
tiktoken's mergeable ranks. Names and regexes are llama.cpp's (src/llama-vocab.cpp, the
`tokenizer_pre` -> `LLAMA_VOCAB_PRE_TYPE_*` mapping and `llm_tokenizer_bpe`'s regex lists, at
llama-cpp-python 0.3.36); where llama.cpp applies a list of regexes one after the other, the
entry here is one regex that splits the same way (see each pattern's comment).

Ranks: tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank;
HF's BPE (and llama.cpp's) merges the pair listed first in the merges. Giving each token the
position of the merge that makes it turns one into the other for vocabularies trained by BPE,
where every token is made by exactly one merge. o200k_base's ids are already its merge order;
GPT-2-style vocabularies (SmolLM2's `smollm`, Llama 3's `llama-bpe`) rank by
`tokenizer.ggml.merges`, and then a rank is not an id: the rank function also returns the id of
each rank.

What this is not: the tokenizer (that is `pyphi.tokenizer`, which imports this leaf module).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

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


# GPT-2's split (llama.cpp LLAMA_VOCAB_PRE_TYPE_GPT2; HF ByteLevel's regex). llama.cpp runs it
# without the final `|\s+`, but its hand-written matcher (unicode.cpp
# unicode_regex_split_custom_gpt2) takes a lone whitespace before a non-space as `\s+` does.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# llama.cpp's SMOLLM (also STARCODER, REFACT): first every number character is split off on its
# own (`\p{N}`; HF's Digits(individual_digits=True)), then GPT-2's regex runs on each stretch
# between them. As one regex: a number is its own piece; GPT-2's ` ?\p{N}+` can no longer match;
# and a whitespace run right before a number is the end of its stretch, so `\s+(?!\S)` keeps
# the whole run there (the lookahead accepts a number as it accepts the end of the text).
DIGITS_GPT2_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""

# llama.cpp's LLAMA3: Llama 3's tokenizer.json regex (tiktoken's cl100k_base) with the
# case-insensitive contractions spelled out as llama.cpp spells them, so that Unicode case
# folding (`'ſ` would match `(?i:'s)`) does not apply.
LLAMA3_PATTERN = (
    r"""(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


class RankError(ValueError):
    """The vocabulary cannot serve as BPE ranks; the message says why."""


# (bytes of every id, the ids of NORMAL tokens, a function returning the bytes each
# tokenizer.ggml.merges entry makes, called only by rank functions that read the merges)
# -> (mergeable ranks, the id of each rank or None when ranks are ids). An id of -1 marks a byte
# the vocabulary has no token for: its ranks exist because tiktoken needs every byte, and the
# tokenizer drops it, as llama.cpp does (llm_tokenizer_bpe_session::tokenize skips bytes that
# are not tokens).
Merges = Callable[[], list[bytes]]
RankFunction = Callable[[list[bytes], list[int], Merges], tuple[dict[bytes, int], Optional[list[int]]]]


def ranks_from_ids(token_bytes: list[bytes], normal_ids: list[int], merges: Merges):
    """Rank = token id, as in tiktoken's own encodings: o200k_base's ids are its merge order
    (SPEC §6.1), so `merges` (the same order, spelled as pairs) adds nothing."""
    ranks = dict(zip([token_bytes[i] for i in normal_ids], normal_ids))
    if len(ranks) != len(normal_ids):
        raise RankError("two normal tokens have the same bytes, so ids cannot be ranks")
    return ranks, None


def ranks_from_merges(token_bytes: list[bytes], normal_ids: list[int], merges: Merges):
    """Rank of a single byte = the byte (below every merge); rank of any other token = 256 +
    the position of the first merge that makes it. Normal tokens no merge makes are left out:
    BPE never produces them (llama.cpp's neither)."""
    merges = merges()
    if not merges:
        raise RankError("tokenizer.ggml.merges is missing or empty, and this pre-tokenizer ranks by it")
    id_of = {token_bytes[i]: i for i in normal_ids}
    ranks = {bytes([b]): b for b in range(256)}
    ids = [id_of.get(bytes([b]), -1) for b in range(256)]
    for k, made in enumerate(merges):
        if made in ranks:
            continue  # a later merge making the same token: the first one ranks it
        token_id = id_of.get(made)
        if token_id is None:
            raise RankError(f"tokenizer.ggml.merges[{k}] makes {made!r}, which is not a normal token")
        ranks[made] = len(ids)
        ids.append(token_id)
    return ranks, ids


class PreTokenizer(NamedTuple):
    pattern: str  # the split regex, in tiktoken's (fancy-regex) syntax
    ranks: RankFunction


PRE_TOKENIZERS = {
    "gpt-4o": PreTokenizer(O200K_PATTERN, ranks_from_ids),
    "gpt-2": PreTokenizer(GPT2_PATTERN, ranks_from_merges),
    "smollm": PreTokenizer(DIGITS_GPT2_PATTERN, ranks_from_merges),
    "starcoder": PreTokenizer(DIGITS_GPT2_PATTERN, ranks_from_merges),
    "refact": PreTokenizer(DIGITS_GPT2_PATTERN, ranks_from_merges),
    "llama-bpe": PreTokenizer(LLAMA3_PATTERN, ranks_from_merges),
    "llama3": PreTokenizer(LLAMA3_PATTERN, ranks_from_merges),
    "llama-v3": PreTokenizer(LLAMA3_PATTERN, ranks_from_merges),
}
