"""Generation: a prompt's token ids in, a stream of sampled tokens (with their text) out.

    for r in generate(model, tokenizer, prompt_ids, sampler, max_tokens=256, stop=["\\n\\n"]):
        print(r.text, end="", flush=True)
    print(r.finish_reason, r.timings.predicted_per_second)

`generate` is a Python generator: each step samples one token, yields it, then evaluates it. It
ends on a stop id of the tokenizer (Phi-4-mini: `<|end|>` 200020 and `<|endoftext|>` 199999),
on a stop string (whose text is never yielded: text that may be the start of a stop string is
held back until it is known not to be) or after max_tokens; the last response carries the
finish_reason ("stop" or "length").

Prefix reuse: the token ids in a model's KV cache are kept beside the Model (`cached_tokens`).
A new call whose prompt shares a prefix with them truncates the cache to that prefix (O(1)) and
prefills only the rest, so a chat that re-sends its whole conversation each turn pays only for
the new turn. Evaluating through `Model.eval` directly bypasses that record; the next call then
trusts only the part of the record that still fits under `model.n_past`. One generation owns a
model's cache at a time: resuming a generator after a newer call started raises RuntimeError.

A full context: by default a prompt that does not leave room for one generated token raises
ContextFullError, and generation that fills the cache ends with finish_reason "length". With
context_shift=True, the first n_keep tokens (the system prompt) are kept, the oldest half of
the rest is dropped, and the remainder is re-prefilled at its new positions (a prefill of what is
kept, since RoPE positions change; nothing is re-rotated).

Not here: tokenization, chat templates, sampling (a `sampler(logits) -> id` and
`processor(ids, logits) -> logits` are passed in), OpenAI-shaped responses (pyphi.llama).
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .model import Model
from .sampling import LogitsProcessor, Sampler, check_stop_strings
from .tokenizer import Tokenizer

DEFAULT_MAX_TOKENS = 256


class ContextFullError(ValueError):
    """The prompt does not fit in the model's context (and no context shift was asked for)."""


@dataclasses.dataclass(frozen=True)
class GenerationTimings:
    """What one generate call cost, in the terms of llama.cpp's server: prompt_n tokens
    prefilled in prompt_ms (cache_n more were reused from the cache), predicted_n tokens sampled
    in predicted_ms after the prefill, ttft_ms from the call to the first sampled token."""

    prompt_n: int = 0
    prompt_ms: float = 0.0
    cache_n: int = 0
    predicted_n: int = 0
    predicted_ms: float = 0.0
    ttft_ms: float = 0.0

    @property
    def prompt_per_second(self) -> float:
        return 1000.0 * self.prompt_n / self.prompt_ms if self.prompt_ms else 0.0

    @property
    def predicted_per_second(self) -> float:
        return 1000.0 * self.predicted_n / self.predicted_ms if self.predicted_ms else 0.0

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "prompt_per_second": self.prompt_per_second,
                "predicted_per_second": self.predicted_per_second}


@dataclasses.dataclass(frozen=True)
class GenerationResponse:
    """One step: the sampled token id, the text it makes newly printable (may be empty: part
    of a UTF-8 character, or held back as a possible stop string), and on the last step the
    finish_reason. A stop id is yielded as the last token; its own text is not."""

    token: int
    text: str
    finish_reason: str | None
    timings: GenerationTimings


# ----------------------------------------------------------------------------------------------
# The KV cache's token record

_CACHED: weakref.WeakKeyDictionary[Model, list[int]] = weakref.WeakKeyDictionary()
# The generation that owns each model's cache now: a newer call takes it over, and an older
# generator that is resumed afterwards stops instead of appending to someone else's cache.
_OWNER: weakref.WeakKeyDictionary[Model, object] = weakref.WeakKeyDictionary()


def cached_tokens(model: Model) -> list[int]:
    """The ids in the model's KV cache, in order (the record generate keeps; a live list)."""
    tokens = _CACHED.setdefault(model, [])
    n_past = model.n_past
    if len(tokens) > n_past:
        del tokens[n_past:]
    elif len(tokens) < n_past:
        # Evaluated by someone else (or interrupted between eval and the record): unknown ids.
        model.truncate(len(tokens))
    return tokens


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    mismatch = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(mismatch[0]) if mismatch.size else n


def _prefill(model: Model, tokens: list[int], prompt: list[int]) -> tuple[np.ndarray, int]:
    """Logits after `prompt`, evaluating only what the cache does not hold already. Returns them
    and how many prompt tokens were reused. The last prompt token is always evaluated (its logits
    are not kept), so a fully cached prompt costs one token."""
    reuse = min(common_prefix_length(tokens, prompt), len(prompt) - 1)
    model.truncate(reuse)
    del tokens[reuse:]
    logits = model.eval(prompt[reuse:])
    tokens.extend(prompt[reuse:])
    return logits, reuse


def _fit_prompt(prompt: list[int], n_ctx: int, context_shift: bool, n_keep: int) -> list[int]:
    """The prompt if it leaves room for one generated token; else its first n_keep tokens and as
    many of its last ones as leave half the remaining room free (context_shift), or an error."""
    if len(prompt) < n_ctx:
        return prompt
    if not context_shift:
        raise ContextFullError(f"the prompt has {len(prompt)} tokens but the context holds {n_ctx} "
                               f"(n_ctx); at most {n_ctx - 1} leave room to generate")
    _check_keep(n_keep, n_ctx)
    n_tail = (n_ctx - n_keep) // 2
    return prompt[:n_keep] + prompt[len(prompt) - n_tail:]


def _check_keep(n_keep: int, n_ctx: int) -> None:
    """A shift must free room: what is kept has to be less than half the context."""
    if not 0 <= n_keep < n_ctx // 2:
        raise ContextFullError(f"the context ({n_ctx} tokens, n_ctx) is full and cannot be shifted: the "
                               f"{n_keep} tokens to keep (the system prompt) must be fewer than half of it")


def _shift(model: Model, tokens: list[int], n_keep: int) -> None:
    """Drop the oldest half of the cached tokens after the first n_keep and re-prefill the rest."""
    _check_keep(n_keep, model.n_ctx)
    n_discard = (len(tokens) - n_keep) // 2
    kept = tokens[:n_keep] + tokens[n_keep + n_discard:]
    model.truncate(n_keep)
    del tokens[n_keep:]
    if len(kept) > n_keep:
        model.eval(kept[n_keep:], logits=None)
    tokens[:] = kept


# ----------------------------------------------------------------------------------------------
# The loop


class _StopHoldback:
    """Generated text with stop strings cut off (pyphi.sampling.check_stop_strings): push(text)
    returns the text now known to come before any stop string, and whether one was found; the
    tail that may begin one is held; flush(text) releases it (and text) at the end. Only the
    held tail is searched: text released is no part of a stop string (it held the longest
    candidate tail)."""

    def __init__(self, stop: Sequence[str]):
        self._stop = stop
        self._held = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self._stop:
            return text, False
        held = self._held + text
        end, stopped = check_stop_strings(held, self._stop)
        self._held = "" if stopped else held[end:]
        return held[:end], stopped

    def flush(self, text: str = "") -> str:
        held, self._held = self._held + text, ""
        return held


def generate(model: Model, tokenizer: Tokenizer, prompt_ids: Iterable[int], sampler: Sampler, *,
             logits_processors: Sequence[LogitsProcessor] = (), max_tokens: int | None = DEFAULT_MAX_TOKENS,
             stop: Sequence[str] = (), stop_ids: Iterable[int] | None = None,
             context_shift: bool = False, n_keep: int = 0,
             hidden_ids: Iterable[int] = ()) -> Iterator[GenerationResponse]:
    """Sample up to max_tokens tokens (None: until a stop or a full context) after prompt_ids.

    sampler: logits (n_vocab,) float32 -> id; logits_processors: (ids so far, prompt included;
    logits) -> logits, applied in order before sampling. stop: strings that end generation, not
    included in the text. stop_ids: default the tokenizer's. context_shift / n_keep: see the
    module docstring. hidden_ids: tokens generated but not shown in the text (role markers).
    """
    start = time.perf_counter()
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"generate: max_tokens {max_tokens!r} must be at least 1 (or None)")
    prompt = _fit_prompt(list(prompt_ids), model.n_ctx, context_shift, n_keep)
    if not prompt:
        raise ValueError("generate: empty prompt")
    stop_ids = tokenizer.stop_ids if stop_ids is None else frozenset(stop_ids)
    tokens = cached_tokens(model)
    owner = _OWNER[model] = object()
    logits, cache_n = _prefill(model, tokens, prompt)
    prefilled = time.perf_counter()
    prompt_ms = 1000.0 * (prefilled - start)
    history = list(prompt)
    decoder = tokenizer.stream_decoder(hidden_ids)
    held = _StopHoldback([s for s in stop if s])
    ttft_ms = 0.0
    n = 0
    while True:
        for process in logits_processors:
            logits = process(history, logits)
        token = int(sampler(logits))
        n += 1
        now = time.perf_counter()
        if n == 1:
            ttft_ms = 1000.0 * (now - start)
        timings = GenerationTimings(len(prompt) - cache_n, prompt_ms, cache_n, n, 1000.0 * (now - prefilled), ttft_ms)
        if token in stop_ids:
            yield GenerationResponse(token, held.flush(decoder.flush()), "stop", timings)
            return
        history.append(token)
        text, stopped = held.push(decoder.push(token))
        if stopped:
            yield GenerationResponse(token, text, "stop", timings)
            return
        full = len(tokens) >= model.n_ctx and not context_shift
        if full or (max_tokens is not None and n >= max_tokens):
            yield GenerationResponse(token, text + held.flush(decoder.flush()), "length", timings)
            return
        yield GenerationResponse(token, text, None, timings)
        if _OWNER.get(model) is not owner:
            raise RuntimeError("a newer generation on this model has taken over its cache; this one cannot go on")
        if len(tokens) >= model.n_ctx:
            _shift(model, tokens, n_keep)
        logits = model.eval([token])
        tokens.append(token)
