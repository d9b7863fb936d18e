"""Llama: the high-level API, shaped like llama-cpp-python's so its users feel at home.

    from pyphi import Llama
    llm = Llama("phi4-mini-q4_0.gguf", n_ctx=4096)
    out = llm.create_chat_completion([{"role": "user", "content": "Hi!"}], max_tokens=64)
    print(out["choices"][0]["message"]["content"], out["timings"]["predicted_per_second"])
    for chunk in llm.create_chat_completion(messages, stream=True):
        print(chunk["choices"][0]["delta"].get("content", ""), end="")

Responses are OpenAI-shaped dicts (`text_completion`, `chat.completion`, and with stream=True
`text_completion` / `chat.completion.chunk` chunks whose last one carries the finish_reason,
`usage` and `timings`). `timings` has the fields of llama.cpp's server (prompt_n, prompt_ms,
prompt_per_second, predicted_n, predicted_ms, predicted_per_second, cache_n) plus ttft_ms.

Defaults follow the model card: greedy decoding (temperature 0) unless asked. One KV cache is
shared by all calls; each call reuses the longest prefix it shares with the previous one
(pyphi.generate), so a chat that re-sends its conversation prefills only the new turn.

Chat works with any GGUF chat template (Phi-4-mini's, ChatML for SmolLM2, ...); stop tokens are
the tokenizer's (llama.cpp's end-of-generation set).

Tools (Phi-4-mini's format; a model whose vocabulary has no `<|tool_call|>` refuses `tools` with
a ValueError): OpenAI-style `tools` are rendered into the system message by the GGUF's chat template
(pyphi.chat_template); output of the form `<|tool_call|>[{"name": ..., "arguments": {...}}]`
comes back as the message's `tool_calls` with finish_reason "tool_calls". While streaming, text
that may be the start of a tool call is held back until it is known not to be one.
tool_choice: "none" leaves the tools out; "required" or {"type": "function", "function":
{"name": N}} (only N offered) make the first generated token `<|tool_call|>`.

Not here: the generation loop (pyphi.generate), sampling (pyphi.sampling), the template
(pyphi.chat_template), tool-call parsing (pyphi.tool_calls).
"""

from __future__ import annotations

import itertools
import sys
import time
import uuid
from collections.abc import Iterator, Sequence

import numpy as np

from . import sampling, tool_calls
from .chat_template import ChatTemplate
from .generate import GenerationResponse, GenerationTimings, generate
from .gguf_reader import GGUFFile
from .model import Model
from .tokenizer import Tokenizer, TokenizerError

DEFAULT_SEED = 0
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's and llama-cpp-python's default for completions
# Answers whose generated ids are remembered, most recent last (see Llama.chat_prompt_ids).
ANSWER_MEMORY = 256


class Llama:
    """A model, its tokenizer and chat template, and one KV cache. seed: of the random
    generator that calls without their own seed draw from. context_shift: when the context is
    full, drop the oldest tokens after the system prompt instead of failing (pyphi.generate).
    numerics: "pyphi" (default) or "ggml", llama.cpp's arithmetic (pyphi.model.Model).
    One generation at a time: a call takes the single cache over, and a stream of an earlier
    call that is resumed after that raises RuntimeError."""

    def __init__(self, model_path, *, n_ctx: int | None = None, n_threads: int | None = None,
                 seed: int = DEFAULT_SEED, context_shift: bool = False, verbose: bool = False,
                 numerics: str = "pyphi"):
        self.model_path = str(model_path)
        self.verbose = verbose
        self.context_shift = context_shift
        with GGUFFile(model_path) as gguf:
            self.tokenizer = Tokenizer.from_gguf(gguf)
            self.chat_template = ChatTemplate.from_gguf(gguf)
            self._add_bos = bool(gguf.get("tokenizer.ggml.add_bos_token", False))
        self.model = Model(model_path, n_ctx=n_ctx, n_threads=n_threads, numerics=numerics)
        if self.tokenizer.n_vocab != self.model.n_vocab:  # llama.cpp refuses such files too
            self.model.close()
            raise TokenizerError(f"{self.model_path}: tokenizer.ggml.tokens has {self.tokenizer.n_vocab} "
                                 f"entries but tensor 'token_embd.weight' has {self.model.n_vocab} rows")
        self._rng = np.random.default_rng(seed)
        self._answers: dict[str, list[int]] = {}
        self._answer_tag = self._generation_tag()
        # Role markers and other control tokens the model may emit are left out of the text
        # (llama.cpp's default), except the tool-call markers tool_calls.py parses.
        markers = {self.tokenizer.added_tokens.get(t) for t in (tool_calls.TOOL_CALL_START, tool_calls.TOOL_CALL_END)}
        self._hidden_ids = self.tokenizer.control_ids - markers
        if verbose:
            print(f"pyphi: {self.model!r}: {self.model.sizes}", file=sys.stderr)

    # Methods, not properties, as in llama-cpp-python.
    def n_ctx(self) -> int:
        return self.model.n_ctx

    def n_vocab(self) -> int:
        return self.model.n_vocab

    def token_eos(self) -> int | None:
        return self.tokenizer.eos_id

    def token_bos(self) -> int | None:
        return self.tokenizer.bos_id

    def close(self) -> None:
        self.model.close()

    def __enter__(self) -> Llama:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- tokens ----

    def tokenize(self, text: bytes | str, add_bos: bool = True, special: bool = False) -> list[int]:
        """Ids of text. add_bos adds the BOS token only if the model asks for one (Phi-4-mini
        does not); special=True parses added-token literals such as `<|user|>`."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        ids = self.tokenizer.encode(text, special=special)
        if add_bos and self._add_bos and self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id, *ids]
        return ids

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> bytes:
        """Bytes of tokens; CONTROL tokens (role markers) only with special=True, as in
        llama-cpp-python."""
        return self.tokenizer.decode_bytes(tokens, special)

    # ---- generation ----

    def generate(self, tokens: Sequence[int], *, max_tokens: int | None = None, temperature: float = sampling.DEFAULT_TEMPERATURE,
                 top_p: float = sampling.DEFAULT_TOP_P, top_k: int = sampling.DEFAULT_TOP_K,
                 min_p: float = sampling.DEFAULT_MIN_P, repeat_penalty: float = sampling.DEFAULT_REPETITION_PENALTY,
                 frequency_penalty: float = sampling.DEFAULT_FREQUENCY_PENALTY, presence_penalty: float = sampling.DEFAULT_PRESENCE_PENALTY,
                 logit_bias: dict[int, float] | None = None, seed: int | None = None) -> Iterator[int]:
        """Sampled token ids after `tokens`, ending after a stop id (which is yielded) or
        max_tokens (None: until the context is full)."""
        sampler, processors = self._sampling(temperature, top_p, top_k, min_p, repeat_penalty, frequency_penalty,
                                             presence_penalty, logit_bias, seed)
        for r in self._generate(tokens, sampler, processors, max_tokens, (), 0):
            yield r.token

    def _sampling(self, temperature, top_p, top_k, min_p, repeat_penalty, frequency_penalty, presence_penalty,
                  logit_bias, seed, first_token: int | None = None):
        if seed is None:  # draws continue the stream seeded when the Llama was made
            seed = int(self._rng.integers(2**63))
        sampler = sampling.make_sampler(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed)
        processors = sampling.make_logits_processors(
            logit_bias=logit_bias, repetition_penalty=repeat_penalty, frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty)
        if first_token is not None:
            processors = [*processors, _force_first(first_token)]
        return sampler, processors

    def _generate(self, prompt_ids, sampler, processors, max_tokens, stop, n_keep) -> Iterator[GenerationResponse]:
        responses = generate(self.model, self.tokenizer, prompt_ids, sampler, logits_processors=processors,
                             max_tokens=max_tokens, stop=stop, context_shift=self.context_shift, n_keep=n_keep,
                             hidden_ids=self._hidden_ids)
        for r in responses:
            if r.finish_reason and self.verbose:
                _print_timings(r.timings)
            yield r

    # ---- completions ----

    def create_completion(self, prompt: str | Sequence[int], *, max_tokens: int | None = DEFAULT_COMPLETION_MAX_TOKENS,
                          temperature: float = sampling.DEFAULT_TEMPERATURE, top_p: float = sampling.DEFAULT_TOP_P,
                          top_k: int = sampling.DEFAULT_TOP_K, min_p: float = sampling.DEFAULT_MIN_P,
                          repeat_penalty: float = sampling.DEFAULT_REPETITION_PENALTY, frequency_penalty: float = sampling.DEFAULT_FREQUENCY_PENALTY,
                          presence_penalty: float = sampling.DEFAULT_PRESENCE_PENALTY, logit_bias: dict[int, float] | None = None,
                          stop: str | Sequence[str] | None = None, seed: int | None = None, stream: bool = False):
        """Complete `prompt` (text, whose added-token literals such as `<|user|>` are parsed as
        in llama-cpp-python, or ids). Returns a `text_completion` dict, or with stream=True an
        iterator of them."""
        prompt_ids = self.tokenize(prompt, special=True) if isinstance(prompt, (str, bytes)) else list(prompt)
        sampler, processors = self._sampling(temperature, top_p, top_k, min_p, repeat_penalty, frequency_penalty,
                                             presence_penalty, logit_bias, seed)
        responses = self._generate(prompt_ids, sampler, processors, max_tokens, _stop_list(stop), 0)
        chunks = self._completion_chunks(responses, len(prompt_ids))
        return chunks if stream else join_completion(list(chunks))

    def _completion_chunks(self, responses, n_prompt: int) -> Iterator[dict]:
        head = _head("cmpl", "text_completion", self.model_path)
        for r in responses:
            chunk = {**head, "choices": [{"text": r.text, "index": 0, "logprobs": None, "finish_reason": r.finish_reason}]}
            if r.finish_reason:
                chunk.update(_usage_and_timings(r, n_prompt, self.tokenizer.stop_ids))
            yield chunk

    __call__ = create_completion  # llm("Q: ...", max_tokens=32), as in llama-cpp-python

    # ---- chat ----

    def create_chat_completion(self, messages: list[dict], *, tools: list[dict] | None = None,
                               tool_choice: str | dict | None = None, max_tokens: int | None = None,
                               temperature: float = sampling.DEFAULT_TEMPERATURE, top_p: float = sampling.DEFAULT_TOP_P,
                               top_k: int = sampling.DEFAULT_TOP_K, min_p: float = sampling.DEFAULT_MIN_P,
                               repeat_penalty: float = sampling.DEFAULT_REPETITION_PENALTY, frequency_penalty: float = sampling.DEFAULT_FREQUENCY_PENALTY,
                               presence_penalty: float = sampling.DEFAULT_PRESENCE_PENALTY, logit_bias: dict[int, float] | None = None,
                               stop: str | Sequence[str] | None = None, seed: int | None = None, stream: bool = False):
        """Answer a conversation of OpenAI-style messages. Returns a `chat.completion` dict, or
        with stream=True an iterator of `chat.completion.chunk` dicts."""
        tools, force_call = _apply_tool_choice(tools, tool_choice)
        if tools and tool_calls.TOOL_CALL_START not in self.tokenizer.added_tokens:
            raise ValueError(f"{self.model_path}: tools are for models with Phi-4-mini's tool-call format "
                             f"({tool_calls.TOOL_CALL_START}); this model's vocabulary has no such token")
        prompt_ids = self.chat_prompt_ids(messages, tools)
        sampler, processors = self._sampling(temperature, top_p, top_k, min_p, repeat_penalty, frequency_penalty,
                                             presence_penalty, logit_bias, seed,
                                             self.tokenizer.added_tokens[tool_calls.TOOL_CALL_START] if force_call else None)
        n_keep = self._system_prefix_length(messages, tools, prompt_ids)
        responses = self._generate(prompt_ids, sampler, processors, max_tokens, _stop_list(stop), n_keep)
        chunks = self._chat_chunks(responses, len(prompt_ids), parse_tools=bool(tools))
        return chunks if stream else join_chat(list(chunks))

    def _system_prefix_length(self, messages: list[dict], tools: list[dict] | None, prompt_ids: list[int]) -> int:
        """Tokens of the system message, kept when the context shifts: where the prompt and the
        template's rendering of the system message alone part (Phi-4-mini: through its `<|end|>`,
        before the eos the template writes at the end; ChatML: through `<|im_end|>` and its
        newline)."""
        if not messages or messages[0].get("role") != "system":
            return 0
        alone = self.tokenizer.encode_segments(self.chat_template.render(messages[:1], tools=tools).segments)
        return next((i for i, (a, b) in enumerate(zip(alone, prompt_ids)) if a != b), min(len(alone), len(prompt_ids)))

    def chat_prompt_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        """The conversation rendered by the model's chat template, with a generation prompt.
        Only the template's own text may produce control tokens, never message content."""
        rendered = self.chat_template.render(messages, tools=tools, add_generation_prompt=True)
        return self._encode_with_answers(rendered.segments)

    def _encode_with_answers(self, segments: list[tuple[str, bool]]) -> list[int]:
        """encode_segments, except that an answer this Llama generated gets the ids it was
        generated as. Re-encoding the text of sampled ids need not give them back (BPE has many
        spellings of a string, and a model may emit any), and the cache holds the generated ids:
        without this, a chat's next turn would re-prefill from the first such difference. Only
        caller text right after the template's assistant tag (`<|assistant|>`: where answers go,
        never user text, so user text never gets the control tokens an answer may hold), before
        another added token and not starting with whitespace (which the tag would swallow) is
        replaced, so the split points are the same."""
        ids: list[int] = []
        start = 0
        for i, (text, trusted) in enumerate(segments):
            answer = None if trusted else self._answers.get(text)
            if answer is None or text[:1].isspace() or not self._is_answer_slot(segments, i):
                continue
            ids += self.tokenizer.encode_segments(segments[start:i]) + answer
            start = i + 1
        return ids + self.tokenizer.encode_segments(segments[start:])

    def _is_answer_slot(self, segments, i: int) -> bool:
        before = segments[i - 1] if i > 0 else ("", False)
        after = segments[i + 1] if i + 1 < len(segments) else ("", False)
        return (self._answer_tag is not None and before[1] and after[1] and before[0].endswith(self._answer_tag)
                and any(after[0].startswith(t) for t in self.tokenizer.added_tokens))

    def _generation_tag(self) -> str | None:
        """The added token that ends the template's generation prompt (`<|assistant|>`), if any."""
        text, trusted = self.chat_template.render([{"role": "user", "content": "x"}], add_generation_prompt=True).segments[-1]
        tags = [t for t in self.tokenizer.added_tokens if trusted and text.endswith(t)]
        return max(tags, key=len, default=None)

    def _remember_answer(self, text: str, ids: list[int]) -> None:
        if not text or self.tokenizer.decode(i for i in ids if i not in self._hidden_ids) != text:
            return
        self._answers.pop(text, None)
        self._answers[text] = ids
        while len(self._answers) > ANSWER_MEMORY:
            del self._answers[next(iter(self._answers))]

    def _chat_chunks(self, responses, n_prompt: int, parse_tools: bool) -> Iterator[dict]:
        head = _head("chatcmpl", "chat.completion.chunk", self.model_path)

        def chunk(delta, finish_reason=None):
            return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        responses = iter(responses)
        first = next(responses)  # the prefill, and its errors (a full context), come before any chunk
        yield chunk({"role": "assistant", "content": ""})
        text, sent, ids = "", 0, []
        for r in itertools.chain([first], responses):
            text += r.text
            ids.append(r.token)
            shown = tool_calls.content_end(text) if parse_tools else len(text)
            if shown > sent:
                yield chunk({"content": text[sent:shown]})
                sent = shown
            if not r.finish_reason:
                continue
            parsed = tool_calls.parse_tool_calls(text) if parse_tools else None
            if parsed and parsed.tool_calls:
                # The content shown so far is a prefix of the parsed content (content_end).
                if parsed.content and len(parsed.content) > sent:
                    yield chunk({"content": parsed.content[sent:]})
                yield chunk({"tool_calls": [{"index": i, **call} for i, call in enumerate(parsed.tool_calls)]})
                last = chunk({}, "tool_calls")
            else:
                if len(text) > sent:
                    yield chunk({"content": text[sent:]})
                self._remember_answer(text, [i for i in ids if i not in self.tokenizer.stop_ids])
                last = chunk({}, r.finish_reason)
            last.update(_usage_and_timings(r, n_prompt, self.tokenizer.stop_ids))
            yield last


# ----------------------------------------------------------------------------------------------
# Response shapes


def _head(prefix: str, kind: str, model: str) -> dict:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": model}


def _usage_and_timings(last: GenerationResponse, n_prompt: int, stop_ids) -> dict:
    """usage counts generated tokens without a final stop id (it is not part of the text)."""
    t: GenerationTimings = last.timings
    n_completion = t.predicted_n - (last.token in stop_ids)
    return {"usage": {"prompt_tokens": n_prompt, "completion_tokens": n_completion,
                      "total_tokens": n_prompt + n_completion},
            "timings": t.as_dict()}


def join_completion(chunks: list[dict]) -> dict:
    last = chunks[-1]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    return {**last, "choices": [{**last["choices"][0], "text": text}]}


def join_chat(chunks: list[dict]) -> dict:
    last = chunks[-1]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    content = "".join(d.get("content", "") for d in deltas)
    message = {"role": "assistant", "content": content or (None if calls else "")}
    if calls:
        message["tool_calls"] = [{key: value for key, value in call.items() if key != "index"} for call in calls]
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": last["choices"][0]["finish_reason"]}
    return {**last, "object": "chat.completion", "choices": [choice]}


# ----------------------------------------------------------------------------------------------
# Helpers


def _stop_list(stop: str | Sequence[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def _apply_tool_choice(tools: list[dict] | None, tool_choice: str | dict | None) -> tuple[list[dict] | None, bool]:
    """The tools to offer and whether the answer must start with a tool call."""
    if not tools or tool_choice in (None, "auto"):
        return tools or None, False
    if tool_choice == "none":
        return None, False
    if tool_choice == "required":
        return tools, True
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = tool_choice.get("function", {}).get("name")
        chosen = [t for t in tools if t.get("function", t).get("name") == name]
        if not chosen:
            raise ValueError(f"tool_choice names {name!r}, which is not among the tools")
        return chosen, True
    raise ValueError(f"tool_choice {tool_choice!r}: expected 'auto', 'none', 'required' or a function")


def _force_first(token_id: int):
    """A logits processor that makes the first generated token token_id."""
    n_prompt: list[int] = []

    def process(ids, logits):
        if not n_prompt:
            n_prompt.append(len(ids))
        if len(ids) > n_prompt[0]:
            return logits
        forced = np.full_like(logits, -np.inf)
        forced[token_id] = 0.0
        return forced

    return process


def _print_timings(t: GenerationTimings) -> None:
    print(f"pyphi: prompt {t.prompt_n} tokens ({t.cache_n} cached) in {t.prompt_ms:.1f} ms "
          f"({t.prompt_per_second:.1f} tok/s); generated {t.predicted_n} tokens in {t.predicted_ms:.1f} ms "
          f"({t.predicted_per_second:.1f} tok/s); first token after {t.ttft_ms:.1f} ms", file=sys.stderr)
