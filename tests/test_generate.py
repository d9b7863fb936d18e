"""pyphi.generate on the tiny random model: stop ids, stop strings, max_tokens, prefix reuse,
a full context (error and shift), timings. Tokens are forced by logit bias or a scripted
sampler, so nothing depends on what the random weights prefer."""

from __future__ import annotations

import numpy as np
import pytest

from pyphi.generate import (
    ContextFullError,
    cached_tokens,
    common_prefix_length,
    generate,
)
from pyphi.model import Model
from pyphi.tokenizer import Tokenizer

END, ENDOFTEXT = 200020, 199999


@pytest.fixture(scope="module")
def gguf(model_zoo):
    return model_zoo.gguf("tiny", "f32")


@pytest.fixture(scope="module")
def tokenizer(gguf):
    return Tokenizer.from_path(gguf)


@pytest.fixture
def model(gguf):
    with Model(gguf, n_ctx=128, n_threads=1) as m:
        yield m


def argmax(logits):
    return int(np.argmax(logits))


def scripted(ids):
    """A sampler that returns ids in turn, whatever the logits."""
    it = iter(ids)
    return lambda logits: next(it)


def bias(token_id, after=0):
    """A logits processor that forces token_id once `after` tokens have been generated (it sees
    the prompt's length on its first call)."""
    n_prompt = []

    def process(ids, logits):
        if not n_prompt:
            n_prompt.append(len(ids))
        if len(ids) - n_prompt[0] >= after:
            logits = logits.copy()
            logits[token_id] = np.inf
        return logits
    return process


def run(*args, **kwargs):
    responses = list(generate(*args, **kwargs))
    return responses, "".join(r.text for r in responses)


def prompt_ids(tokenizer, text="The quick brown fox jumps over the lazy dog."):
    return tokenizer.encode(text)


@pytest.mark.parametrize("stop_id", [END, ENDOFTEXT])
def test_stops_on_stop_ids(model, tokenizer, stop_id):
    assert {END, ENDOFTEXT} <= tokenizer.stop_ids
    responses, _ = run(model, tokenizer, prompt_ids(tokenizer), argmax,
                       logits_processors=[bias(stop_id, after=3)], max_tokens=50)
    assert [r.finish_reason for r in responses] == [None, None, None, "stop"]
    assert responses[-1].token == stop_id and responses[-1].text == ""


def test_max_tokens_ends_with_length(model, tokenizer):
    no_stop = lambda ids, logits: np.where(np.isin(np.arange(logits.size), [END, ENDOFTEXT]), -np.inf, logits)
    responses, _ = run(model, tokenizer, prompt_ids(tokenizer), argmax, logits_processors=[no_stop], max_tokens=7)
    assert len(responses) == 7 and responses[-1].finish_reason == "length"
    assert all(r.finish_reason is None for r in responses[:-1])
    assert responses[-1].timings.predicted_n == 7


@pytest.mark.parametrize("stop", [["STOP"], ["xyz", " STOP"], ["OP m"]])
def test_stop_strings_never_leak(model, tokenizer, stop):
    script = [tokenizer.encode(piece)[0] for piece in ["Hello", " world", " ST", "OP", " more", " text"]]
    responses, text = run(model, tokenizer, prompt_ids(tokenizer), scripted(script), stop=stop, max_tokens=20)
    full = "Hello world STOP more text"
    assert text == full[:full.find(stop[-1])]
    assert responses[-1].finish_reason == "stop"
    assert not any(s in r.text for r in responses for s in stop)


def test_text_is_the_decoded_tokens_and_splits_no_character(model, tokenizer):
    script = tokenizer.encode("héllo 世界 🙂 end")
    responses, text = run(model, tokenizer, prompt_ids(tokenizer), scripted(script + [END]), max_tokens=100)
    assert text == "héllo 世界 🙂 end"
    assert all("\ufffd" not in r.text for r in responses)


def test_prefix_reuse_prefills_only_the_new_tokens(model, tokenizer):
    first = prompt_ids(tokenizer)
    responses, _ = run(model, tokenizer, first, argmax, logits_processors=[bias(END, after=5)])
    assert responses[-1].timings.prompt_n == len(first) and responses[-1].timings.cache_n == 0
    generated = [r.token for r in responses[:-1]]
    assert cached_tokens(model) == first + generated  # the stop id is not evaluated

    second = first + generated + [END] + tokenizer.encode(" And then?")
    before = model.timings.n_tokens
    responses, _ = run(model, tokenizer, second, argmax, max_tokens=3)
    timings = responses[-1].timings
    new = len(second) - len(first) - len(generated)
    assert timings.cache_n == len(second) - new and timings.prompt_n == new
    assert model.timings.n_tokens - before == new + 2  # the prompt's new part, then 2 decode steps

    # A prompt that diverges earlier: the cache is truncated to the common prefix.
    third = first[:4] + tokenizer.encode(" cat")
    responses, _ = run(model, tokenizer, third, argmax, max_tokens=1)
    assert responses[-1].timings.cache_n == 4 and responses[-1].timings.prompt_n == len(third) - 4


def test_reused_cache_gives_the_logits_of_a_fresh_prefill(model, gguf, tokenizer):
    first = prompt_ids(tokenizer)
    list(generate(model, tokenizer, first, argmax, max_tokens=5))
    second = first + tokenizer.encode(" Something else entirely.")
    got = []
    list(generate(model, tokenizer, second, lambda logits: got.append(logits.copy()) or END))
    with Model(gguf, n_ctx=128, n_threads=1) as fresh:
        np.testing.assert_allclose(got[0], fresh.eval(second), rtol=0, atol=1e-4)


def test_fully_cached_prompt_evaluates_one_token(model, tokenizer):
    ids = prompt_ids(tokenizer)
    list(generate(model, tokenizer, ids, argmax, max_tokens=1))
    responses, _ = run(model, tokenizer, ids, argmax, max_tokens=1)
    assert responses[-1].timings.prompt_n == 1 and responses[-1].timings.cache_n == len(ids) - 1


def test_record_survives_eval_behind_its_back_and_interruption(model, tokenizer):
    ids = prompt_ids(tokenizer)
    gen = generate(model, tokenizer, ids, argmax, max_tokens=50)
    for _ in range(3):
        next(gen)
    gen.close()
    assert cached_tokens(model) == model_tokens(model, ids)
    model.eval([1, 2, 3])  # unknown to the record: dropped on next use
    assert cached_tokens(model) == model_tokens(model, ids) and model.n_past == len(cached_tokens(model))


def model_tokens(model, ids):
    tokens = cached_tokens(model)
    assert tokens[:len(ids)] == ids
    return tokens


def test_prompt_that_fills_the_context_is_an_error(model, tokenizer):
    ids = [1000 + i for i in range(128)]
    with pytest.raises(ContextFullError, match=r"128 tokens.*128 \(n_ctx\)"):
        next(generate(model, tokenizer, ids, argmax))
    assert len(list(generate(model, tokenizer, ids[:127], argmax, logits_processors=[bias(1234)], max_tokens=5))) == 2


def test_generation_that_fills_the_context_ends_with_length(model, tokenizer):
    ids = [1000 + i for i in range(120)]
    responses, _ = run(model, tokenizer, ids, argmax, logits_processors=[bias(1234)], max_tokens=None)
    assert len(responses) == 9 and responses[-1].finish_reason == "length"
    assert model.n_past == 128


def test_context_shift_keeps_the_system_prefix(model, gguf, tokenizer):
    system = [2000 + i for i in range(10)]
    ids = system + [1000 + i for i in range(200)]
    got = []
    sampler = lambda logits: got.append(logits.copy()) or 1234
    responses, _ = run(model, tokenizer, ids, sampler, max_tokens=150, context_shift=True, n_keep=len(system))
    assert len(responses) == 150 and responses[-1].finish_reason == "length"
    tokens = cached_tokens(model)
    assert tokens[:10] == system and len(tokens) <= 128 and model.n_past == len(tokens)
    assert tokens[-5:] == [1234] * 5
    # The prompt kept its system prefix and its most recent tokens.
    assert responses[0].timings.prompt_n == 10 + (128 - 10) // 2
    # After the shifts, the cache is exactly a fresh prefill of the kept tokens.
    with Model(gguf, n_ctx=128, n_threads=1) as fresh:
        np.testing.assert_allclose(got[-1], fresh.eval(tokens), rtol=0, atol=1e-4)


def test_common_prefix_length():
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_length([1, 2], [1, 2, 3]) == 2


def test_shift_needs_room_beyond_what_it_keeps(model, tokenizer):
    ids = [1000 + i for i in range(60)]
    assert len(list(generate(model, tokenizer, ids, argmax, max_tokens=2, context_shift=True, n_keep=100))) == 2
    with pytest.raises(ContextFullError, match="cannot be shifted.*100 tokens to keep"):
        next(generate(model, tokenizer, ids * 3, argmax, context_shift=True, n_keep=100))


def test_an_older_generation_cannot_resume_after_a_newer_one(model, tokenizer):
    ids = prompt_ids(tokenizer)
    old = generate(model, tokenizer, ids, argmax, max_tokens=50)
    next(old)
    assert len(list(generate(model, tokenizer, ids[:3], argmax, max_tokens=2))) == 2
    with pytest.raises(RuntimeError, match="newer generation"):
        next(old)
    assert model.n_past == len(cached_tokens(model)) == 4
