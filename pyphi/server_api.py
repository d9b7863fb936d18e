"""OpenAI's API over pyphi.Llama, without the HTTP: request bodies checked and turned into Llama
calls, and Llama's chunks shaped as OpenAI's server sends them. pyphi.server_http moves the bytes.

A request is read strictly: a known field of the wrong type is a 400 naming it (OpenAI's error
shape, `{"error": {"message", "type", "param", "code"}}`), and a feature pyphi cannot honour is
refused with a 400 instead of being ignored: n > 1, logprobs, echo, suffix, and response_format
json_object / json_schema (pyphi has no grammar-constrained sampling, so it cannot promise JSON).
Fields it does not know are ignored, as OpenAI's clients send some of their own. A message's
content may be OpenAI's list of parts if they are all text (they are joined).

The model: a request may name it by the GGUF's `general.name` or by the file's stem (the
`/v1/models` id is the former when present); any other name is a 404 `model_not_found`. A request
without `model` gets the one model.

A prompt that does not fit in the context is a 400 with code `context_length_exceeded`, as
OpenAI answers it (not a 413: clients handle this code, and the body was not too large).

Not here: sockets, the queue, SSE framing (pyphi.server_http); generation (pyphi.llama).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

from .generate import ContextFullError
from .gguf_reader import GGUFFile
from .llama import DEFAULT_COMPLETION_MAX_TOKENS, Llama, join_chat, join_completion

MAX_ABS_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values
OWNER = "pyphi"

_NUMBER = (int, float)
# Llama keyword arguments that come straight from a body field of the same name.
SAMPLING_FIELDS = {"temperature": _NUMBER, "top_p": _NUMBER, "top_k": int, "min_p": _NUMBER,
                   "repeat_penalty": _NUMBER, "frequency_penalty": _NUMBER, "presence_penalty": _NUMBER,
                   "seed": int}
# Fields whose other values pyphi cannot honour, and the value it can.
ONLY = {"n": 1, "logprobs": False, "top_logprobs": 0, "echo": False, "suffix": ""}


class APIError(Exception):
    """An error answer: HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.error = {"message": message, "type": type, "param": param, "code": code}

    def body(self) -> dict:
        return {"error": self.error}


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """The one model and the names requests may call it by."""

    llm: Llama
    name: str
    aliases: frozenset[str]
    created: int

    @classmethod
    def of(cls, llm: Llama) -> ServedModel:
        stem = Path(llm.model_path).stem
        with GGUFFile(llm.model_path) as gguf:
            name = gguf.get("general.name")
        name = name if isinstance(name, str) and name.strip() else stem
        return cls(llm, name, frozenset({name, stem}), int(time.time()))

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": OWNER}

    def check_name(self, name) -> None:
        if name is not None and name not in self.aliases:
            raise APIError(404, f"The model {name!r} does not exist; this server serves {self.name!r}",
                           param="model", code="model_not_found")


@dataclasses.dataclass(frozen=True)
class Request:
    """A checked generation request: which Llama method, its arguments, how to answer."""

    chat: bool
    args: dict
    stream: bool
    include_usage: bool


# ----------------------------------------------------------------------------------------------
# Reading requests


def _field(body: dict, key: str, types, default=None):
    value = body.get(key)
    if value is None:
        return default
    not_a_number = isinstance(value, bool) and types is not bool  # JSON true is an int to Python
    if not_a_number or not isinstance(value, types):
        raise APIError(400, f"{key!r} has the wrong type ({type(value).__name__})", param=key)
    return value


def _common(body: dict) -> dict:
    """The sampling and stopping arguments chat and completions share."""
    for key, allowed in ONLY.items():
        if body.get(key) not in (None, allowed):
            raise APIError(400, f"{key!r} = {body[key]!r} is not supported by pyphi (only {allowed!r})", param=key)
    args = {key: _field(body, key, types) for key, types in SAMPLING_FIELDS.items()}
    args = {key: value for key, value in args.items() if value is not None}
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise APIError(400, "'stop' must be a non-empty string or a list of them", param="stop")
        args["stop"] = stop
    bias = _logit_bias(body.get("logit_bias"))
    if bias:
        args["logit_bias"] = bias
    return args


def _logit_bias(bias) -> dict[int, float] | None:
    """OpenAI's {"token id": bias in [-100, 100]}."""
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise APIError(400, "'logit_bias' must map token ids to numbers", param="logit_bias")
    out = {}
    for key, value in bias.items():
        if not (isinstance(key, str) and key.isdigit()) or isinstance(value, bool) or not isinstance(value, _NUMBER) \
                or abs(value) > MAX_ABS_LOGIT_BIAS:
            raise APIError(400, f"'logit_bias' entry {key!r}: {value!r} must be a token id and a number "
                                f"in [-{MAX_ABS_LOGIT_BIAS:g}, {MAX_ABS_LOGIT_BIAS:g}]", param="logit_bias")
        out[int(key)] = float(value)
    return out


def _stream_options(body: dict) -> tuple[bool, bool]:
    stream = bool(_field(body, "stream", bool, False))
    options = _field(body, "stream_options", dict, {})
    return stream, bool(options.get("include_usage")) and stream


def _max_tokens(body: dict, key: str, default):
    value = _field(body, key, int, default)
    if value is not None and value < 1:
        raise APIError(400, f"{key!r} must be at least 1", param=key)
    return value


def chat_request(body: dict, served: ServedModel) -> Request:
    served.check_name(body.get("model"))
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' is required: a non-empty list of messages", param="messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise APIError(400, "each message must be an object with a string 'role'", param="messages")
    _check_response_format(body.get("response_format"))
    args = _common(body)
    args["messages"] = [_text_content(m, i) for i, m in enumerate(messages)]
    args["tools"] = _field(body, "tools", list)
    args["tool_choice"] = _field(body, "tool_choice", (str, dict))
    # max_completion_tokens is OpenAI's newer name; the older max_tokens wins if both are sent.
    args["max_tokens"] = _max_tokens(body, "max_tokens", _max_tokens(body, "max_completion_tokens", None))
    return Request(True, args, *_stream_options(body))


def _text_content(message: dict, i: int) -> dict:
    """A message whose content is OpenAI's list of parts, with the text parts joined: the
    template takes a string, and the model reads nothing but text."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        raise APIError(400, f"messages[{i}]: only text content parts are supported", param=f"messages[{i}].content")
    return {**message, "content": "".join(p["text"] for p in content)}


def _check_response_format(fmt) -> None:
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return
    if kind in ("json_object", "json_schema"):
        raise APIError(400, f"response_format {kind!r} is not supported: pyphi has no constrained (grammar) "
                            "sampling, so it cannot guarantee JSON; ask for JSON in the prompt instead",
                       param="response_format", code="unsupported_response_format")
    raise APIError(400, "'response_format' must be {\"type\": \"text\"}", param="response_format")


def completion_request(body: dict, served: ServedModel) -> Request:
    served.check_name(body.get("model"))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one
    token_ids = isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                           for t in prompt)
    if not (isinstance(prompt, str) and prompt) and not token_ids:
        raise APIError(400, "'prompt' is required: a non-empty string or list of token ids (one prompt)",
                       param="prompt")
    args = _common(body)
    args["prompt"] = prompt
    args["max_tokens"] = _max_tokens(body, "max_tokens", DEFAULT_COMPLETION_MAX_TOKENS)
    return Request(False, args, *_stream_options(body))


# ----------------------------------------------------------------------------------------------
# Running them (the caller holds the model)


def start(served: ServedModel, request: Request) -> Iterator[dict]:
    """Llama's chunks for request. The prompt is prefilled here, so its errors (a full context,
    a bad argument) are APIErrors raised before the first chunk is sent anywhere."""
    llm = served.llm
    try:
        if request.chat:
            chunks = llm.create_chat_completion(stream=True, **request.args)
        else:
            chunks = llm.create_completion(stream=True, **request.args)
        first = next(chunks)
    except ContextFullError as e:
        raise APIError(400, str(e), param="messages" if request.chat else "prompt",
                       code="context_length_exceeded") from e
    except ValueError as e:  # ChatTemplateError, a sampling setting out of range, a bad tool_choice
        raise APIError(400, str(e)) from e
    return _named(itertools.chain([first], chunks), served.name, chunks)


def _named(chunks, name: str, source) -> Iterator[dict]:
    """Chunks with the served model's name (Llama puts its file path there)."""
    try:
        for chunk in chunks:
            yield {**chunk, "model": name}
    finally:
        source.close()


def join(request: Request, chunks) -> dict:
    """The non-streamed response made of all the chunks, joined as Llama joins its own. (A
    request that is not streamed is still generated as a stream, so that the server can stop
    between chunks when its client has gone.)"""
    chunks = list(chunks)
    return join_chat(chunks) if request.chat else join_completion(chunks)


def events(request: Request, chunks) -> Iterator[dict]:
    """The chunks as OpenAI streams them: usage only with stream_options.include_usage, then in
    a last chunk of its own with no choices (Llama puts usage on the finishing chunk; timings,
    llama.cpp's extra, stay there)."""
    for chunk in chunks:
        usage = chunk.pop("usage", None)
        if request.include_usage:
            chunk["usage"] = None
        yield chunk
        if usage is not None and request.include_usage:
            yield {**{k: chunk[k] for k in ("id", "object", "created", "model")}, "choices": [], "usage": usage}
