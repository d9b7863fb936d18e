"""pyphi.tool_calls: Phi-4-mini's `<|tool_call|>[...]<|/tool_call|>` output, well-formed and as the
model really writes it (missing closing tag, bare objects), and the streaming holdback helper."""

from __future__ import annotations

import json
from itertools import count

import pytest

from pyphi.tool_calls import content_end, may_be_tool_call, parse_tool_calls

WEATHER = {"name": "get_weather", "arguments": {"city": "Paris"}}
TIME = {"name": "get_time", "arguments": {"tz": "Europe/Paris"}}


def call(name: str, arguments) -> tuple[str, object]:
    return (name, arguments)


# (generated text, expected content, expected calls as (name, parsed arguments), failed)
CASES = {
    "well-formed": (
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>',
        None, [call("get_weather", {"city": "Paris"})], False),
    "unclosed": (
        '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
        None, [call("get_weather", {"city": "Paris"})], False),
    "single bare object": (
        '<|tool_call|>{"name": "get_weather", "arguments": {"city": "Paris"}}<|/tool_call|>',
        None, [call("get_weather", {"city": "Paris"})], False),
    "bare comma-separated objects, unclosed": (
        '<|tool_call|>{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}',
        None, [call("get_weather", {"city": "Paris"}), call("get_time", {"tz": "Europe/Paris"})], False),
    "multiple calls in one list": (
        f"<|tool_call|>{json.dumps([WEATHER, TIME])}<|/tool_call|>",
        None, [call("get_weather", {"city": "Paris"}), call("get_time", {"tz": "Europe/Paris"})], False),
    "two blocks": (
        f"<|tool_call|>{json.dumps([WEATHER])}<|/tool_call|><|tool_call|>{json.dumps([TIME])}<|/tool_call|>",
        None, [call("get_weather", {"city": "Paris"}), call("get_time", {"tz": "Europe/Paris"})], False),
    "nested JSON arguments": (
        '<|tool_call|>[{"name": "book", "arguments": {"trip": {"from": "Paris", "to": {"city": "Oslo", '
        '"legs": [{"day": 1}, {"day": 2}]}}, "notes": null}}]<|/tool_call|>',
        None, [call("book", {"trip": {"from": "Paris", "to": {"city": "Oslo", "legs": [{"day": 1}, {"day": 2}]}},
                             "notes": None})], False),
    "array arguments": (
        '<|tool_call|>[{"name": "compare", "arguments": {"cities": ["Paris", "Oslo"], "days": [1, 2, 3]}}]',
        None, [call("compare", {"cities": ["Paris", "Oslo"], "days": [1, 2, 3]})], False),
    "arguments as a top-level array": (
        '<|tool_call|>[{"name": "sum", "arguments": [1, 2, 3]}]<|/tool_call|>',
        None, [call("sum", [1, 2, 3])], False),
    "arguments as a JSON string": (
        '<|tool_call|>[{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}]<|/tool_call|>',
        None, [call("get_weather", {"city": "Paris"})], False),
    "no arguments": (
        '<|tool_call|>[{"name": "now"}]<|/tool_call|>', None, [call("now", {})], False),
    "text before the call": (
        'Let me check.\n<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>',
        "Let me check.", [call("get_weather", {"city": "Paris"})], False),
    "text before and after": (
        'Checking. <|tool_call|>[{"name": "now"}]<|/tool_call|> Done.',
        "Checking.\nDone.", [call("now", {})], False),
    "unicode and spacing": (
        '<|tool_call|>\n[ {"name" : "météo" , "arguments" : {"ville": "Zürich ☀"} } ]\n<|/tool_call|>',
        None, [call("météo", {"ville": "Zürich ☀"})], False),
    "empty list is no call": ("<|tool_call|>[]<|/tool_call|>", None, [], False),
    "plain text": ("Paris is sunny today.", "Paris is sunny today.", [], False),
    "plain text keeps its whitespace": ("  spaced \n", "  spaced \n", [], False),
    "garbage": ("<|tool_call|>get_weather(city='Paris')<|/tool_call|>", None, [], True),
    "truncated JSON": ('Sure. <|tool_call|>[{"name": "get_weather", "arguments": {"ci', None, [], True),
    "truncated after the tag": ("<|tool_call|>", None, [], True),
    "missing name": ('<|tool_call|>[{"arguments": {"city": "Paris"}}]<|/tool_call|>', None, [], True),
    "name not a string": ('<|tool_call|>[{"name": 3}]<|/tool_call|>', None, [], True),
    "arguments string not JSON": ('<|tool_call|>[{"name": "f", "arguments": "Paris"}]<|/tool_call|>', None, [], True),
    "a list of strings": ('<|tool_call|>["get_weather"]<|/tool_call|>', None, [], True),
    "trailing garbage after a call": ('<|tool_call|>[{"name": "now"}] oops<|/tool_call|>', None, [], True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_parse_tool_calls(name):
    text, content, calls, failed = CASES[name]
    ids = (f"call_{i}" for i in count())
    parsed = parse_tool_calls(text, make_id=lambda: next(ids))
    assert parsed.failed == failed
    if failed:
        assert parsed.content == text  # the whole text comes back, nothing is lost
        assert parsed.tool_calls == []
        return
    assert parsed.content == content
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.tool_calls] == calls
    for i, c in enumerate(parsed.tool_calls):
        assert c["id"] == f"call_{i}" and c["type"] == "function"
        assert set(c) == {"id", "type", "function"} and set(c["function"]) == {"name", "arguments"}
        assert isinstance(c["function"]["arguments"], str)


def test_arguments_string_is_passed_through_verbatim_and_objects_keep_unicode():
    parsed = parse_tool_calls('<|tool_call|>[{"name": "f", "arguments": "{\\"a\\":1}"}]')
    assert parsed.tool_calls[0]["function"]["arguments"] == '{"a":1}'
    parsed = parse_tool_calls('<|tool_call|>[{"name": "f", "arguments": {"ville": "Zürich"}}]')
    assert parsed.tool_calls[0]["function"]["arguments"] == '{"ville": "Zürich"}'


def test_default_ids_are_unique_openai_style():
    parsed = parse_tool_calls(f"<|tool_call|>{json.dumps([WEATHER, TIME])}")
    ids = [c["id"] for c in parsed.tool_calls]
    assert len(set(ids)) == 2 and all(i.startswith("call_") and len(i) == 29 for i in ids)


@pytest.mark.parametrize("text, end, maybe", [
    ("Hello", 5, False),
    ("Hello <", 5, True),             # "<" may start <|tool_call|>; the space is held too
    ("Hello <|tool_c", 5, True),
    ("Hello <|tool_call|>[{", 5, True),
    ("<|tool", 0, True),
    ("Hello <|user|>", 14, False),    # a different tag is content
    ("a < b", 5, False),
    ("trailing space ", 14, False),   # held back: a tag may follow it
    ("", 0, False),
])
def test_streaming_holdback(text, end, maybe):
    assert content_end(text) == end
    assert may_be_tool_call(text) == maybe


def test_streamed_content_is_a_prefix_of_the_parsed_content():
    text = 'I will look it up. \n<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'
    final = parse_tool_calls(text).content
    for n in range(len(text) + 1):
        assert final.startswith(text[:content_end(text[:n])])
