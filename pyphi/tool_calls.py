"""Phi-4-mini's tool calls: from generated text to OpenAI-style `tool_calls`, and what a stream
may show before a call is known.

The model writes a call as `<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>`
(Berkeley Function-Calling Leaderboard's Phi-4-mini handler, `phi_fc.py`, whose comments also
record the quirks tolerated here: the closing tag is often missing, and parallel calls sometimes
come as bare `{...}, {...}` without the list brackets). `arguments` may be an object or a JSON
string. Text before the first tag is the message's content.

`<|tool_call|>` and `<|/tool_call|>` are non-special added tokens (ids 200025, 200026), so a
decoder that skips special tokens still writes them; this parser works on that text.

What this is not: a JSON repairer. Text that cannot be read as calls comes back whole as
content with `failed=True`, never as an exception.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any, NamedTuple

TOOL_CALL_START = "<|tool_call|>"
TOOL_CALL_END = "<|/tool_call|>"
CALL_ID_PREFIX = "call_"  # OpenAI's tool-call id prefix


def new_call_id() -> str:
    """A fresh OpenAI-style call id, `call_` and 24 hex digits."""
    return CALL_ID_PREFIX + secrets.token_hex(12)


class ParsedToolCalls(NamedTuple):
    content: str | None  # the text that is not a call (None when there is none)
    tool_calls: list[dict[str, Any]]  # OpenAI form: {"id", "type": "function", "function": {...}}
    failed: bool  # a call was started but could not be read; content is then the whole text


def parse_tool_calls(text: str, make_id: Callable[[], str] = new_call_id) -> ParsedToolCalls:
    """Split generated text into content and tool calls.

    Every `<|tool_call|>` block (up to its `<|/tool_call|>`, or the end of the text) is read as
    one or more JSON values separated by commas or whitespace: a list of calls, or call objects.
    Each call needs a string `name`; `arguments` (an object, any JSON value, or a string holding
    JSON) becomes the JSON string OpenAI's `function.arguments` is; missing arguments are `{}`.
    An empty list `[]` is no call. The text outside the blocks, without the whitespace next to
    the tags and its parts joined by a newline, is the content (None if empty); with no tag at
    all the text is returned unchanged."""
    if TOOL_CALL_START not in text:
        return ParsedToolCalls(text, [], False)
    outside: list[str] = []  # the text before, between and after the blocks
    calls: list[dict[str, Any]] = []
    rest = text
    while (start := rest.find(TOOL_CALL_START)) >= 0:
        outside.append(rest[:start])
        rest = rest[start + len(TOOL_CALL_START):]
        end = rest.find(TOOL_CALL_END)
        body, rest = (rest, "") if end < 0 else (rest[:end], rest[end + len(TOOL_CALL_END):])
        block = _read_calls(body)
        if block is None:
            return ParsedToolCalls(text, [], True)
        calls.extend(block)
    outside.append(rest)
    # The first part keeps its leading whitespace: a stream has already shown it (content_end).
    parts = [outside[0].rstrip()] + [part.strip() for part in outside[1:]]
    content = "\n".join(part for part in parts if part) or None
    tool_calls = [{"id": make_id(), "type": "function", "function": call} for call in calls]
    return ParsedToolCalls(content, tool_calls, False)


def _read_calls(body: str) -> list[dict[str, str]] | None:
    """The calls of one block as {"name", "arguments" (JSON string)}, or None if unreadable."""
    values = _json_values(body)
    if not values:  # unreadable, or nothing after the tag (a generation cut short)
        return None
    items: list[Any] = []
    for value in values:
        items.extend(value if isinstance(value, list) else [value])
    calls = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            return None
        arguments = item.get("arguments", {})
        if isinstance(arguments, str):
            try:
                json.loads(arguments)
            except ValueError:
                return None
        else:
            arguments = json.dumps(arguments, ensure_ascii=False)
        calls.append({"name": item["name"], "arguments": arguments})
    return calls


def _json_values(body: str) -> list[Any] | None:
    """The JSON values in body, separated by commas and/or whitespace, or None."""
    decoder = json.JSONDecoder()
    values = []
    pos = 0
    while True:
        while pos < len(body) and (body[pos].isspace() or body[pos] == ","):
            pos += 1
        if pos == len(body):
            return values
        try:
            value, pos = decoder.raw_decode(body, pos)
        except ValueError:
            return None
        values.append(value)


def _call_start(text: str) -> int:
    """Index of the first `<|tool_call|>`, else of a tail that could still become one (`<|tool`),
    else len(text)."""
    start = text.find(TOOL_CALL_START)
    if start >= 0:
        return start
    for i in range(max(0, len(text) - len(TOOL_CALL_START) + 1), len(text)):
        if TOOL_CALL_START.startswith(text[i:]):
            return i
    return len(text)


def content_end(text: str) -> int:
    """For streaming: how much of the generation so far can be shown as content now. Everything
    before the first `<|tool_call|>` (or before a tail that may become one), less the whitespace
    just before it, which `parse_tool_calls` drops (and which a later tag may turn out to follow).
    So text[:content_end(text)] is always a prefix of the content the final parse returns; when
    the generation ends without a call, the held-back whitespace belongs to the content too."""
    return len(text[:_call_start(text)].rstrip())


def may_be_tool_call(text: str) -> bool:
    """True when the generation so far contains `<|tool_call|>` or ends with the beginning of
    it, so a streaming API must hold back text from `content_end(text)` on until it knows."""
    return _call_start(text) < len(text)
