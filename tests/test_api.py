"""pyphi.Llama on the tiny random model: OpenAI-shaped completions and chat completions, streamed
and not; stops, stop strings, max_tokens, seeds, cache reuse, a full context, tool calls (the
model's output forced by logit bias or a scripted sampler), usage and timings."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import pyphi
from pyphi import sampling
from pyphi.generate import ContextFullError, cached_tokens
from pyphi.llama import Llama

END, ENDOFTEXT, TOOL_CALL = 200020, 199999, 200025
FORCE = 100.0  # a logit bias that beats any logit of the random model
TIMINGS = {"prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms", "predicted_per_second",
           "cache_n", "ttft_ms"}
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def no_stop():
    return {END: -FORCE, ENDOFTEXT: -FORCE}


def chunk_text(chunks):
    return "".join(c["choices"][0]["text"] for c in chunks)


def delta_text(chunks):
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def check_shape(out, kind):
    assert out["object"] == kind and out["id"] and isinstance(out["created"], int) and out["model"]
    assert TIMINGS <= set(out["timings"])
    usage = out["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


# ---- tokens ----


def test_llama_cpp_python_accessors(llm):
    assert llm.n_ctx() == 512 and llm.n_vocab() == 200064
    assert llm.token_eos() == ENDOFTEXT and llm.token_bos() == ENDOFTEXT
    out = llm("Once upon a time", max_tokens=3, logit_bias=no_stop())
    assert out["object"] == "text_completion" and out["usage"]["completion_tokens"] == 3


def test_tokenize_and_detokenize(llm):
    ids = llm.tokenize(b"Hello <|user|>")
    assert ids == llm.tokenize("Hello <|user|>") and 200021 not in ids  # no BOS for Phi-4-mini
    assert llm.tokenize("Hello <|user|>", special=True)[-1] == 200021
    assert llm.detokenize(ids) == b"Hello <|user|>"
    special = llm.tokenize("Hello <|user|>", special=True)
    assert llm.detokenize(special) == b"Hello "  # a control token, left out as llama-cpp-python does
    assert llm.detokenize(special, special=True) == b"Hello <|user|>"


def test_llama_is_exported_lazily():
    code = "import sys, pyphi; assert 'pyphi.llama' not in sys.modules; from pyphi.llama import Llama; " \
           "assert pyphi.Llama is Llama"
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
    assert pyphi.Llama is Llama


def test_generate_yields_ids_until_a_stop_id(llm):
    ids = list(llm.generate(llm.tokenize("Hi"), logit_bias={ENDOFTEXT: FORCE}))
    assert ids == [ENDOFTEXT]
    ids = list(llm.generate(llm.tokenize("Hi"), max_tokens=5, logit_bias=no_stop()))
    assert len(ids) == 5


# ---- completions ----


@pytest.mark.parametrize("stop_id", [END, ENDOFTEXT])
def test_completion_stops_on_stop_ids(llm, stop_id):
    out = llm.create_completion("Once upon a time", max_tokens=20, logit_bias={stop_id: FORCE})
    check_shape(out, "text_completion")
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == ""
    assert out["usage"]["completion_tokens"] == 0 and out["timings"]["predicted_n"] == 1


def test_max_tokens_gives_length(llm):
    out = llm.create_completion("Once upon a time", max_tokens=9, logit_bias=no_stop())
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 9 and out["usage"]["prompt_tokens"] == len(llm.tokenize("Once upon a time"))


def test_stop_strings_never_leak(llm):
    full = llm.create_completion("Once upon a time", max_tokens=24, logit_bias=no_stop())["choices"][0]["text"]
    assert len(full) > 12
    stop = full[8:11]
    expected = full[:full.find(stop)]
    out = llm.create_completion("Once upon a time", max_tokens=24, logit_bias=no_stop(), stop=["never seen", stop])
    assert out["choices"][0]["text"] == expected and out["choices"][0]["finish_reason"] == "stop"
    chunks = list(llm.create_completion("Once upon a time", max_tokens=24, logit_bias=no_stop(), stop=stop, stream=True))
    assert chunk_text(chunks) == expected and not any(stop in c["choices"][0]["text"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_streamed_completion_reassembles_to_the_same_text(llm):
    kwargs = {"max_tokens": 20, "temperature": 0.9, "seed": 11, "logit_bias": no_stop()}
    out = llm.create_completion("Once upon a time", **kwargs)
    chunks = list(llm.create_completion("Once upon a time", stream=True, **kwargs))
    assert chunk_text(chunks) == out["choices"][0]["text"]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "length"
    assert chunks[-1]["usage"] == out["usage"]


def test_seeded_sampling_is_reproducible(llm):
    kwargs = {"max_tokens": 20, "temperature": 1.5, "logit_bias": no_stop()}
    a = llm.create_completion("Once upon a time", seed=7, **kwargs)["choices"][0]["text"]
    b = llm.create_completion("Once upon a time", seed=7, **kwargs)["choices"][0]["text"]
    c = llm.create_completion("Once upon a time", seed=8, **kwargs)["choices"][0]["text"]
    assert a == b and a != c


def test_default_is_greedy(llm):
    outs = {llm.create_completion("Once upon a time", max_tokens=10)["choices"][0]["text"] for _ in range(2)}
    assert len(outs) == 1


# ---- chat ----


def test_chat_completion_shape_and_usage(llm):
    out = llm.create_chat_completion(MESSAGES, max_tokens=6, logit_bias=no_stop())
    check_shape(out, "chat.completion")
    choice = out["choices"][0]
    assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"
    assert out["usage"]["prompt_tokens"] == len(llm.chat_prompt_ids(MESSAGES)) and out["usage"]["completion_tokens"] == 6


def test_chat_stops_and_streams_the_same_text(llm):
    kwargs = {"max_tokens": 30, "temperature": 0.8, "seed": 3, "logit_bias": no_stop()}
    out = llm.create_chat_completion(MESSAGES, **kwargs)
    chunks = list(llm.create_chat_completion(MESSAGES, stream=True, **kwargs))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert delta_text(chunks) == out["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"] == out["usage"]
    stopped = llm.create_chat_completion(MESSAGES, max_tokens=30, logit_bias={END: FORCE})
    assert stopped["choices"][0]["finish_reason"] == "stop" and stopped["choices"][0]["message"]["content"] == ""


def test_next_turn_prefills_only_its_own_tokens(llm):
    llm.model.reset()
    visible = {i: -FORCE for i in llm.tokenizer.control_ids}  # an answer of text, not role markers
    first = llm.create_chat_completion(MESSAGES, max_tokens=10, logit_bias=visible)
    assert first["timings"]["cache_n"] == 0
    answer = first["choices"][0]["message"]["content"]
    follow_up = {"role": "user", "content": "And tomorrow?"}
    second = llm.create_chat_completion([*MESSAGES, {"role": "assistant", "content": answer}, follow_up],
                                        max_tokens=3, logit_bias=no_stop())
    # Cached: the first prompt and the 10 answer tokens but the last (sampled, never evaluated).
    assert second["timings"]["cache_n"] == first["usage"]["prompt_tokens"] + 9
    new = llm.tokenize("<|end|><|user|>And tomorrow?<|end|><|assistant|>", special=True)
    assert second["timings"]["prompt_n"] == len(new) + 1


def test_context_full_error_and_shift(gguf):
    long = [{"role": "system", "content": "Keep this."}, {"role": "user", "content": "word " * 200}]
    with Llama(gguf, n_ctx=64, n_threads=1) as small, pytest.raises(ContextFullError, match="n_ctx"):
        small.create_chat_completion(long, max_tokens=4)
    with Llama(gguf, n_ctx=64, n_threads=1, context_shift=True) as small:
        out = small.create_chat_completion(long, max_tokens=100, logit_bias=no_stop())
        assert out["usage"]["completion_tokens"] == 100 and out["choices"][0]["finish_reason"] == "length"
        system = small.chat_prompt_ids(long[:1])[:-1]  # without the generation prompt
        assert cached_tokens(small.model)[:len(system)] == system


# ---- tool calls ----


def scripted(llm, monkeypatch, text):
    """Make the model 'say' text (added-token literals parsed), then <|end|>."""
    ids = iter(llm.tokenize(text, special=True) + [END])
    monkeypatch.setattr(sampling, "make_sampler", lambda **kwargs: lambda logits: next(ids))


CALL = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'


@pytest.mark.parametrize("before", ["", "Let me look. "])
def test_tool_calls_in_openai_form(llm, monkeypatch, before):
    scripted(llm, monkeypatch, before + CALL)
    out = llm.create_chat_completion(MESSAGES, tools=TOOLS, max_tokens=100)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == (before.strip() or None)
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_streamed_tool_calls_are_deltas_and_never_text(llm, monkeypatch):
    scripted(llm, monkeypatch, "Checking. " + CALL)
    chunks = list(llm.create_chat_completion(MESSAGES, tools=TOOLS, max_tokens=100, stream=True))
    assert delta_text(chunks) == "Checking."
    calls = [call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [c["index"] for c in calls] == [0] and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_text_that_only_looks_like_a_tool_call_is_released(llm, monkeypatch):
    scripted(llm, monkeypatch, "I like <|tool and more")
    chunks = list(llm.create_chat_completion(MESSAGES, tools=TOOLS, max_tokens=100, stream=True))
    assert delta_text(chunks) == "I like <|tool and more"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_tool_call_text_is_content_without_tools(llm, monkeypatch):
    scripted(llm, monkeypatch, CALL)
    out = llm.create_chat_completion(MESSAGES, max_tokens=100)
    assert out["choices"][0]["message"]["content"] == CALL and out["choices"][0]["finish_reason"] == "stop"


def test_tool_choice(llm, monkeypatch):
    seen = []
    monkeypatch.setattr(sampling, "make_sampler", lambda **kwargs: lambda logits: seen.append(logits.copy()) or END)
    llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice="required", max_tokens=5)
    named = {"type": "function", "function": {"name": "get_weather"}}
    llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice=named, max_tokens=5)
    llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice="auto", max_tokens=5)
    for logits, forced in zip(seen, [True, True, False]):
        assert (np.isfinite(logits).sum() == 1 and np.argmax(logits) == TOOL_CALL) == forced
    with pytest.raises(ValueError, match="not among the tools"):
        llm.create_chat_completion(MESSAGES, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "x"}})
    assert llm.chat_prompt_ids(MESSAGES) != llm.chat_prompt_ids(MESSAGES, TOOLS)
