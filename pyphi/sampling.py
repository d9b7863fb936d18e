"""Sampling: from one step's logits to the next token, and stop strings in generated text.

Small pure functions over a 1-D float32 logits vector (vocab,), composed the way mlx-lm composes
them (`mlx_lm/sample_utils.py`):

- `make_logits_processors(...)` -> callables `processor(tokens, logits) -> logits` that need the
  token history: logit bias, then the repetition, frequency and presence penalties;
- `make_sampler(...)` -> a callable `sampler(logits) -> token id` that filters, scales and draws
  with its own seeded `numpy.random.Generator` (same seed, same logits -> same tokens, always).

Order of the chain, chosen to be llama.cpp's default (`common/common.h` `samplers` =
penalties, dry, top_n_sigma, top_k, typ_p, top_p, min_p, xtc, temperature; `common/sampling.cpp`
adds the logit-bias sampler ahead of that list), minus the samplers pyphi does not implement:

    logit bias -> penalties -> top-k -> top-p -> min-p -> temperature -> draw

Temperature comes last, as in llama.cpp, so top-p and min-p see the temperature-1 distribution
(HF's warpers scale by temperature first, so the same settings keep a different set there).
Temperature 0 is greedy: the argmax of the processed logits, with no filter and no draw (the
filters all keep the top token, so they could not change it). Greedy is the default because the
model card's reference usage is greedy (`do_sample=False`).

Removed tokens get -inf logits. Probabilities are computed in float64 so that a filter's cut does
not depend on float32 rounding of a cumulative sum.

What this is not: generation (which decides what history to pass and when to stop on token ids);
it imports only numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

DEFAULT_TEMPERATURE = 0.0  # greedy: the model card's reference usage
DEFAULT_TOP_K = 0  # 0 disables top-k
DEFAULT_TOP_P = 1.0  # 1 disables top-p
DEFAULT_MIN_P = 0.0  # 0 disables min-p
DEFAULT_REPETITION_PENALTY = 1.0  # 1 disables it
DEFAULT_FREQUENCY_PENALTY = 0.0
DEFAULT_PRESENCE_PENALTY = 0.0
# How many of the most recent tokens the penalties look at: llama.cpp's `penalty_last_n`
# default (common/common.h). None means the whole history passed in (HF's repetition penalty).
DEFAULT_PENALTY_CONTEXT_SIZE = 64
# top-p first orders only this many of the most probable tokens (llama.cpp's top-p uses 256 too).
TOP_P_PARTIAL_SORT = 256

Logits = np.ndarray  # (vocab,) float32
Sampler = Callable[[Logits], int]
LogitsProcessor = Callable[[np.ndarray, Logits], Logits]


# ---------------------------------------------------------------------------------------------
# Filters and temperature: logits in, logits out (a new array; the input is never modified)
# ---------------------------------------------------------------------------------------------

def softmax(logits: Logits) -> np.ndarray:
    """Probabilities (float64) of a logits vector; -inf entries get probability 0."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def apply_top_k(logits: Logits, k: int) -> Logits:
    """Keep the k largest logits. Tokens tied with the k-th largest are all kept (HF
    TopKLogitsWarper's `scores < kth_value` rule), so the result never depends on a sort's
    tie order. k <= 0 or k >= vocab keeps everything."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits.copy()
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf).astype(np.float32)


def apply_top_p(logits: Logits, p: float) -> Logits:
    """Nucleus filter: keep the most probable tokens until their probability mass reaches p,
    including the token that reaches it (llama.cpp `llama_sampler_top_p_apply`: keep i + 1
    tokens at the first i with cumulative p >= top_p). Tokens tied with the last kept one are
    kept too. p >= 1 keeps everything."""
    if p >= 1.0:
        return logits.copy()
    probs = softmax(logits)
    candidates = np.flatnonzero(probs > 0.0)
    # As llama.cpp does, order only the largest tokens when they already hold mass p (a full
    # sort of a 200k vocabulary costs ~50 ms); the kept set is the same either way.
    if len(candidates) > TOP_P_PARTIAL_SORT:
        largest = candidates[np.argpartition(-probs[candidates], TOP_P_PARTIAL_SORT - 1)[:TOP_P_PARTIAL_SORT]]
        if probs[largest].sum() >= p:
            candidates = largest
    order = candidates[np.argsort(-probs[candidates], kind="stable")]
    cumulative = np.cumsum(probs[order])
    n_keep = int(np.searchsorted(cumulative, p, side="left")) + 1  # first index with cum >= p
    threshold = logits[order[min(n_keep, len(order)) - 1]]
    return np.where(logits >= threshold, logits, -np.inf).astype(np.float32)


def apply_min_p(logits: Logits, min_p: float) -> Logits:
    """Keep tokens whose probability is at least min_p times the top token's, i.e. whose logit
    is at least max_logit + log(min_p) (llama.cpp `llama_sampler_min_p_apply`, HF
    MinPLogitsWarper). min_p <= 0 keeps everything."""
    if min_p <= 0.0:
        return logits.copy()
    threshold = np.float64(logits.max()) + np.log(min_p)
    return np.where(logits >= threshold, logits, -np.inf).astype(np.float32)


def apply_temperature(logits: Logits, temperature: float) -> Logits:
    """Divide the logits by a positive temperature (< 1 sharpens, > 1 flattens)."""
    return (logits / np.float32(temperature)).astype(np.float32)


def sample_categorical(logits: Logits, rng: np.random.Generator) -> int:
    """Draw one token from softmax(logits) by inverting the cumulative distribution at one
    uniform draw of rng, in token-id order: one `rng.random()` per token, so a seeded
    generator gives the same tokens on every platform and numpy version that keeps its
    bit generator's stream."""
    cumulative = np.cumsum(softmax(logits))
    u = rng.random() * cumulative[-1]
    index = int(np.searchsorted(cumulative, u, side="right"))
    # u can reach the total only through rounding; then take the last token with mass.
    last_with_mass = int(np.searchsorted(cumulative, cumulative[-1], side="left"))
    return min(index, last_with_mass)


def warp_logits(
    logits: Logits,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int = DEFAULT_TOP_K,
    top_p: float = DEFAULT_TOP_P,
    min_p: float = DEFAULT_MIN_P,
) -> Logits:
    """The logits the sampler draws from: top-k -> top-p -> min-p -> temperature (temperature
    must be > 0 here; 0 means argmax and never reaches this). softmax() of the result is the
    sampling distribution, e.g. for reporting log-probabilities."""
    logits = apply_top_k(logits, top_k)
    logits = apply_top_p(logits, top_p)
    logits = apply_min_p(logits, min_p)
    return apply_temperature(logits, temperature)


def make_sampler(
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int = DEFAULT_TOP_K,
    top_p: float = DEFAULT_TOP_P,
    min_p: float = DEFAULT_MIN_P,
    seed: int | None = None,
) -> Sampler:
    """A `sampler(logits) -> token id`. Temperature 0 is argmax (lowest id among ties);
    otherwise `warp_logits` then a draw from a `numpy.random.Generator` seeded with `seed`
    (None: fresh OS entropy, so runs differ). The generator lives in the sampler, so one
    sampler per generation gives the same tokens for the same seed and logits."""
    if temperature < 0.0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")

    if temperature == 0.0:
        return lambda logits: int(np.argmax(logits))

    rng = np.random.default_rng(seed)
    return lambda logits: sample_categorical(warp_logits(logits, temperature, top_k, top_p, min_p), rng)


# ---------------------------------------------------------------------------------------------
# Logits processors: they see the token history
# ---------------------------------------------------------------------------------------------

def apply_logit_bias(logits: Logits, bias: Mapping[int, float]) -> Logits:
    """Add bias[id] to logits[id] (OpenAI `logit_bias`; -100 in practice bans a token)."""
    out = logits.copy()
    for token, value in bias.items():
        if not 0 <= token < out.shape[-1]:
            raise ValueError(f"logit_bias token id {token} is outside the vocabulary (0..{out.shape[-1] - 1})")
        out[token] += np.float32(value)
    return out


def apply_repetition_penalty(logits: Logits, tokens: np.ndarray, penalty: float) -> Logits:
    """Penalise every distinct token of `tokens` once: positive logits are divided by `penalty`,
    negative ones multiplied (llama.cpp `llama_sampler_penalties_apply`, HF
    RepetitionPenaltyLogitsProcessor; CTRL, Keskar et al. 2019, only divided, which would make
    tokens with negative logits more likely)."""
    out = logits.copy()
    seen = np.unique(np.asarray(tokens, dtype=np.int64))
    values = out[seen]
    out[seen] = np.where(values > 0, values / np.float32(penalty), values * np.float32(penalty))
    return out


def apply_frequency_presence_penalties(
    logits: Logits, tokens: np.ndarray, frequency_penalty: float, presence_penalty: float
) -> Logits:
    """OpenAI's penalties: logit[j] -= count[j] * frequency_penalty + (count[j] > 0) *
    presence_penalty, with count[j] the occurrences of j in `tokens` (the same formula in
    llama.cpp's penalties sampler)."""
    out = logits.copy()
    seen, counts = np.unique(np.asarray(tokens, dtype=np.int64), return_counts=True)
    out[seen] -= (counts * frequency_penalty + presence_penalty).astype(np.float32)
    return out


def make_logits_processors(
    logit_bias: Mapping[int, float] | None = None,
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY,
    frequency_penalty: float = DEFAULT_FREQUENCY_PENALTY,
    presence_penalty: float = DEFAULT_PRESENCE_PENALTY,
    penalty_context_size: int | None = DEFAULT_PENALTY_CONTEXT_SIZE,
) -> list[LogitsProcessor]:
    """The processors to apply, in order, as `logits = p(tokens, logits)` before the sampler:
    logit bias, then the penalties (llama.cpp's order). `tokens` is the history the caller
    passes (prompt and generated tokens, as llama.cpp's server and mlx-lm pass); all three
    penalties look at its last `penalty_context_size` tokens (None: all of it). Keys of
    `logit_bias` may be ints or decimal strings (OpenAI's JSON). Disabled options add nothing."""
    if repetition_penalty <= 0.0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
    if penalty_context_size is not None and penalty_context_size < 0:
        raise ValueError(f"penalty_context_size must be >= 0 or None, got {penalty_context_size}")

    def window(tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64)
        if penalty_context_size is None:
            return tokens
        return tokens[max(0, len(tokens) - penalty_context_size):]

    processors: list[LogitsProcessor] = []
    if logit_bias:
        bias = {int(token): float(value) for token, value in logit_bias.items()}
        processors.append(lambda tokens, logits: apply_logit_bias(logits, bias))
    if repetition_penalty != 1.0:
        processors.append(
            lambda tokens, logits: apply_repetition_penalty(logits, window(tokens), repetition_penalty))
    if frequency_penalty != 0.0 or presence_penalty != 0.0:
        processors.append(lambda tokens, logits: apply_frequency_presence_penalties(
            logits, window(tokens), frequency_penalty, presence_penalty))
    return processors


# ---------------------------------------------------------------------------------------------
# Stop strings
# ---------------------------------------------------------------------------------------------

class StopCheck(NamedTuple):
    end: int  # text[:end] may be emitted now (everything, when `stopped`, that is returned)
    stopped: bool  # a stop string occurs in text and text[end:] starts with it


def check_stop_strings(text: str, stop_strings: Sequence[str]) -> StopCheck:
    """How much of the generated `text` is safe to emit, given the stop strings.

    If a stop string occurs, cut at the earliest occurrence of any of them (as llama.cpp's server
    `find_stopping_strings` does): `StopCheck(start_of_it, True)`, and the stop string and what
    follows are never returned. Otherwise hold back the longest tail of `text` that is the
    beginning of some stop string, since the next chunk may complete it:
    `StopCheck(len(text) - len(tail), False)`. Call it on the whole text so far after each
    chunk; a stop string split across chunks is then found as soon as it is complete."""
    if any(not stop for stop in stop_strings):
        raise ValueError("stop strings must not be empty")
    found = [i for i in (text.find(stop) for stop in stop_strings) if i >= 0]
    if found:
        return StopCheck(min(found), True)
    longest = max((len(stop) for stop in stop_strings), default=1)
    for start in range(max(0, len(text) - longest + 1), len(text)):
        tail = text[start:]
        if any(stop.startswith(tail) for stop in stop_strings):
            return StopCheck(start, False)
    return StopCheck(len(text), False)
