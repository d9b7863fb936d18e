"""Chat messages -> the prompt string, rendered exactly as transformers' `apply_chat_template`
renders the model's Jinja chat template, plus the pieces of it that came from the caller.

`ChatTemplate(source)` compiles a template (the GGUF's `tokenizer.chat_template`, or, when the
file has none, Phi-4-mini's own template, `PHI4_MINI_CHAT_TEMPLATE`, verbatim from the model's
tokenizer_config.json) in the environment transformers 5.24 builds in
`utils/chat_template_utils.py`: Jinja2's `ImmutableSandboxedEnvironment` with trim_blocks,
lstrip_blocks and loop controls, the globals `raise_exception`, `strftime_now`, `dict` and
`namespace` (no underscore names), a `tojson` filter that does not escape HTML, and a no-op
`{% generation %}` block. Templates come with downloaded model files, so they are untrusted code:
besides the sandbox, a render is stopped with `ChatTemplateError` when the template's own output
passes `max_output_chars`, when it executes more than `max_steps` template lines (loops that print
nothing), or when `*` / `**` would build a huge string or number. Touching an unsafe attribute
(`x.__class__`) is an error at once, where Jinja would render an empty string first.

`render(messages, tools=..., add_generation_prompt=...)` returns `RenderedChat(text, segments)`.
`segments` is `[(text, trusted), ...]`, joining to `text`: trusted pieces were written by the
template (role tags, `<|end|>`), untrusted ones came from the caller's strings (message contents,
tool definitions, tool-call arguments), so a tokenizer (`Tokenizer.encode_segments`) can refuse
to turn user text into control tokens. They are found by rendering a second time with a unique
sentinel in place of every caller string, then aligning that render with the real one; a
template that rewrites caller strings beyond stripping or JSON-escaping them is refused.

Tools, for templates like Phi-4-mini's that do not read the `tools` variable (the model card's
"Tool-enabled function-calling format"; SPEC section 7):
- OpenAI tool definitions `[{"type": "function", "function": {...}}]` go into the system
  message's `tools` key as a JSON string of the function objects (`json.dumps`, default
  separators, as the model card's example), which the template writes as
  `<|system|>...<|tool|>[...]<|/tool|><|end|>`. Without a system message one is created with
  `TOOLS_SYSTEM_PROMPT`, the model card's own example prompt.
- An assistant message's `tool_calls`, which the template drops, are appended to its content as
  the model writes them: `<|tool_call|>[{"name": ..., "arguments": {...}}]<|/tool_call|>`.
- `{"role": "tool", "content": ...}` results render as the template renders them,
  `<|tool|>...<|end|>`.
Templates that read `tools` (or mention `tool_calls`) get them as transformers passes them.

What this is not: a tokenizer, or an OpenAI request validator. It imports jinja2 and, for
`from_gguf` on a path, the GGUF reader.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import string
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import jinja2
import jinja2.ext
import jinja2.meta
import jinja2.nodes
import jinja2.utils
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Verbatim `chat_template` of microsoft/Phi-4-mini-instruct's tokenizer_config.json.
PHI4_MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + "
    "'<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + "
    "message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)
# Phi-4-mini's bos/eos/unk/pad are all <|endoftext|> (tokenizer_config.json).
PHI4_MINI_SPECIAL_TOKENS = {name: "<|endoftext|>" for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
# System prompt of a conversation that has tools but no system message: the model card's example.
TOOLS_SYSTEM_PROMPT = "You are a helpful assistant with some tools."
TOOL_CALL_START = "<|tool_call|>"
TOOL_CALL_END = "<|/tool_call|>"

# Bounds on what a template may do. The output bound counts the template's own text (the
# sentinel render, in which a caller string of any length is ~20 characters), so it does not
# limit message sizes; the step bound counts executed lines of the compiled template.
MAX_OUTPUT_CHARS = 1 << 20
MAX_STEPS = 1_000_000
MAX_INT_BITS = 1 << 16  # bound on `**` results

# GGUF keys of the special tokens transformers passes to templates (`special_tokens_map`).
GGUF_SPECIAL_TOKEN_KEYS = {
    "bos_token": "tokenizer.ggml.bos_token_id",
    "eos_token": "tokenizer.ggml.eos_token_id",
    "unk_token": "tokenizer.ggml.unknown_token_id",
    "sep_token": "tokenizer.ggml.seperator_token_id",  # sic, as gguf-py spells it
    "pad_token": "tokenizer.ggml.padding_token_id",
    "cls_token": "tokenizer.ggml.cls_token_id",
    "mask_token": "tokenizer.ggml.mask_token_id",
}

_ROLE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # roles become markup (`<|role|>`): no free text
_TEMPLATE_FILENAME = "<template>"  # what Jinja's from_string compiles templates as


class ChatTemplateError(ValueError):
    """The template is invalid, failed, hit a bound, or the messages do not fit it."""


class RenderedChat(NamedTuple):
    text: str
    segments: list[tuple[str, bool]]  # (piece, trusted); "".join(pieces) == text


# ---------------------------------------------------------------------------------------------
# The sandbox
# ---------------------------------------------------------------------------------------------

class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` renders its body (transformers uses the tag to
    mark assistant tokens; here it only has to parse)."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> list[jinja2.nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _DictConstructor:
    """`dict(...)` and `dict.fromkeys(...)` for templates, without handing them the dict type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any) -> dict:
        return dict.fromkeys(*args)


def _check_namespace_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"templates cannot store underscore-prefixed attributes on a namespace ({name!r})")


class _Namespace(jinja2.utils.Namespace):
    """Jinja's namespace(), refusing underscore names (as transformers' TemplateNamespace)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # the same signature trick as Jinja's
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_namespace_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_namespace_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers' filter: Jinja's own escapes <, >, & and ' for HTML.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


# The render's bound on any one value, for the checks below (an int in the render's context).
_LIMIT_VAR = "_pyphi_value_limit"
_PERCENT_WIDTHS = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d+))?")
_FORMAT = string.Formatter()
# Filters and string methods whose int argument is the size of what they build.
_SIZED_BY_ARGUMENT = frozenset(("center", "ljust", "rjust", "zfill", "expandtabs", "indent", "wordwrap",
                                "batch", "slice"))


def _size(value: Any, limit: int) -> int:
    """About how many characters `value` prints as; counting stops past `limit`, so a value
    sharing one list many times over costs no more than that to measure."""
    total, stack = 0, [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, Mapping):
            total += 2 * len(item) + 2
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            total += 2 * len(item) + 2
            stack.extend(item)
        else:
            total += 8
    return total


def _format_widths(text: str) -> list[int]:
    """The field widths and precisions a printf-style or str.format string asks for."""
    numbers = [int(n) for groups in _PERCENT_WIDTHS.findall(text) for n in groups if n]
    try:
        for _, _, spec, _ in _FORMAT.parse(text):
            numbers += [int(n) for n in re.findall(r"\d+", spec or "")]
    except ValueError:
        pass  # malformed: the call itself will fail
    return numbers


def _check_call(limit: int, name: str, args: Sequence[Any]) -> None:
    """Refuse, before it runs, a call or filter whose arguments would build a value over `limit`
    characters: a width or count over it (`center(10**9)`, `'%0999999999d' | format`), arguments
    already over it, or a `replace` / `join` whose result would be."""
    def refuse(why: str) -> ChatTemplateError:
        return ChatTemplateError(f"chat template: {name} {why}, over the {limit} characters a value may have")

    if name in _SIZED_BY_ARGUMENT and any(type(a) is int and a > limit for a in args):
        raise refuse("is given a count or width")
    if _size(list(args), limit) > limit:
        raise refuse("is given arguments")
    text = args[0] if args and isinstance(args[0], str) else None
    if text is not None and name in ("format", "format_map", "%") and any(w > limit for w in _format_widths(text)):
        raise refuse("would pad to a width")
    if text is not None and name == "replace" and len(args) >= 3 and isinstance(args[2], str):
        count = text.count(args[1]) if isinstance(args[1], str) and args[1] else len(text) + 1
        if len(text) + count * len(args[2]) > limit:
            raise refuse("would build a string")
    if name == "join" and args and isinstance(args[0], (list, tuple)):
        glue = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        if _size(args[0], limit) + len(glue) * len(args[0]) > limit:
            raise refuse("would build a string")


def _checked_filter(name: str, func: Any) -> Any:
    """`func` (a Jinja filter) with _check_call before it and a size check on its result."""
    pass_arg = getattr(func, "jinja_pass_arg", None)

    def checked(*args: Any, **kwargs: Any) -> Any:
        context = args[0] if pass_arg is not None else None
        values = args[1:] if pass_arg is not None else args
        limit = context.get(_LIMIT_VAR, MAX_OUTPUT_CHARS) if isinstance(context, jinja2.runtime.Context) \
            else MAX_OUTPUT_CHARS
        _check_call(limit, name, [*values, *kwargs.values()])
        result = func(*args, **kwargs)
        if isinstance(result, (str, list, tuple)) and _size(result, limit) > limit:
            raise ChatTemplateError(f"chat template: {name} built a value over {limit} characters")
        return result

    if pass_arg is not None:
        checked.jinja_pass_arg = jinja2.utils._PassArg.context  # the limit is in the context
        inner = func
        func = {
            jinja2.utils._PassArg.context: inner,
            jinja2.utils._PassArg.eval_context: lambda ctx, *a, **k: inner(ctx.eval_ctx, *a, **k),
            jinja2.utils._PassArg.environment: lambda ctx, *a, **k: inner(ctx.environment, *a, **k),
        }[pass_arg]
    return checked


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset(("*", "**", "+", "%"))

    def __init__(self, max_output_chars: int):
        super().__init__(trim_blocks=True, lstrip_blocks=True,
                         extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
        self.max_output_chars = max_output_chars
        self.filters["tojson"] = _tojson
        self.filters = {name: _checked_filter(name, func) for name, func in self.filters.items()}
        self.globals.update(raise_exception=_raise_exception, dict=_DictConstructor(), namespace=_Namespace)

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Every call a template makes (macros, globals, methods such as `'x'.center(n)`) has its
        arguments checked first and its result after (see _check_call)."""
        limit = __context.get(_LIMIT_VAR, MAX_OUTPUT_CHARS)
        name = getattr(__obj, "__name__", "a call")
        # a method of a string (`'x'.center(n)`); Jinja hands out `str.format` wrapped
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        _check_call(limit, name, [owner, *args, *kwargs.values()] if isinstance(owner, str) else [*args, *kwargs.values()])
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, (str, list, tuple)) and _size(result, limit) > limit:
            raise ChatTemplateError(f"chat template: {name} built a value over {limit} characters")
        return result

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        limit = context.get(_LIMIT_VAR, self.max_output_chars)
        if operator == "*":
            sized, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(times, int) and hasattr(sized, "__len__") and _size(sized, limit) * times > limit:
                raise ChatTemplateError(f"chat template: '*' would build over {limit} characters")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0 \
                    and abs(left).bit_length() * right > MAX_INT_BITS:
                raise ChatTemplateError(f"chat template: '{left} ** {right}' is too large")
        elif operator == "+" and hasattr(left, "__len__") and hasattr(right, "__len__"):
            if _size(left, limit) + _size(right, limit) > limit:
                raise ChatTemplateError(f"chat template: '+' would build over {limit} characters")
        elif operator == "%" and isinstance(left, str):
            _check_call(limit, "%", [left, right])
        return super().call_binop(context, operator, left, right)


def _bounded_render(template: jinja2.Template, context: dict, max_chars: int, max_steps: int,
                    max_value_chars: int) -> str:
    """template.generate(**context) joined, stopped past max_chars of output or max_steps
    executed template lines, or when a value would pass max_value_chars (_Sandbox). The lines are counted by a trace function on the template's own
    frames only (the previous trace function, e.g. a coverage tool's, is restored after)."""
    steps = 0

    def count_lines(frame: Any, event: str, arg: Any) -> Any:
        nonlocal steps
        if event == "line":
            steps += 1
            if steps > max_steps:
                raise ChatTemplateError(f"chat template stopped after {max_steps} steps (a loop too long?)")
        return count_lines

    def trace_template_frames(frame: Any, event: str, arg: Any) -> Any:
        return count_lines if frame.f_code.co_filename == _TEMPLATE_FILENAME else None

    context = {**context, _LIMIT_VAR: max_value_chars}
    chunks: list[str] = []
    size = 0
    previous = sys.gettrace()
    sys.settrace(trace_template_frames)
    try:
        for chunk in template.generate(**context):
            size += len(chunk)
            if size > max_chars:
                raise ChatTemplateError(f"chat template output passed {max_chars} characters")
            chunks.append(chunk)
    finally:
        sys.settrace(previous)
    return "".join(chunks)


# ---------------------------------------------------------------------------------------------
# Messages and tools -> template inputs
# ---------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A copy made of JSON types only, so the template sees nothing with methods of its own
    (transformers' `_plain_template_data` does the same)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    for base in (bool, int, float, str):  # subclasses (enums, numpy scalars) -> the base type
        if isinstance(value, base):
            return base(value)
    raise ChatTemplateError(f"chat messages and tools must be JSON data, got {type(value).__name__}")


def _function_of(tool: Any) -> dict:
    """The function object of an OpenAI tool definition (or a bare function object)."""
    if not isinstance(tool, Mapping):
        raise ChatTemplateError(f"a tool must be a dict, got {tool!r}")
    if tool.get("type", "function") == "function" and isinstance(tool.get("function"), Mapping):
        return dict(tool["function"])
    if isinstance(tool.get("name"), str):
        return dict(tool)
    raise ChatTemplateError(f"a tool must be {{'type': 'function', 'function': {{'name': ...}}}}, got {tool!r}")


def _model_tool_calls(tool_calls: Sequence[Any]) -> list[dict]:
    """OpenAI tool_calls -> the model's own form [{"name", "arguments": object}]. OpenAI's
    `arguments` is a JSON string; one that does not parse is kept as a string."""
    calls = []
    for call in tool_calls:
        function = call.get("function", call) if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise ChatTemplateError(f"a tool call must have a function name, got {call!r}")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass
        calls.append({"name": function["name"], "arguments": arguments})
    return calls


def _mark_strings(value: Any, mark: Any) -> Any:
    """value with every string in it passed through mark (dict keys are left alone)."""
    if isinstance(value, str):
        return mark(value)
    if isinstance(value, dict):
        return {key: _mark_strings(item, mark) for key, item in value.items()}
    if isinstance(value, list):
        return [_mark_strings(item, mark) for item in value]
    return value


# ---------------------------------------------------------------------------------------------
# The template
# ---------------------------------------------------------------------------------------------

class ChatTemplate:
    def __init__(
        self,
        source: str | None = None,
        special_tokens: Mapping[str, str] | None = None,
        max_output_chars: int = MAX_OUTPUT_CHARS,
        max_steps: int = MAX_STEPS,
    ):
        """source: a Jinja chat template (None: Phi-4-mini's). special_tokens: the variables
        transformers passes from the tokenizer's special tokens map (`bos_token`, `eos_token`,
        ...; None: Phi-4-mini's)."""
        self.source = PHI4_MINI_CHAT_TEMPLATE if source is None else source
        self.special_tokens = dict(PHI4_MINI_SPECIAL_TOKENS if special_tokens is None else special_tokens)
        self.max_output_chars = max_output_chars
        self.max_steps = max_steps
        environment = _Sandbox(max_output_chars)
        try:
            self._template = environment.from_string(self.source)
            variables = jinja2.meta.find_undeclared_variables(environment.parse(self.source))
        except TemplateError as exc:
            raise ChatTemplateError(f"invalid chat template: {exc}") from exc
        # Phi-4-mini's template reads neither; templates written for OpenAI-style tools do.
        self.reads_tools = "tools" in variables
        self.renders_tool_calls = "tool_calls" in self.source

    @classmethod
    def from_gguf(cls, gguf: Any, max_output_chars: int = MAX_OUTPUT_CHARS, max_steps: int = MAX_STEPS) -> ChatTemplate:
        """The template of a GGUF file (a path or an open `GGUFFile`): its
        `tokenizer.chat_template`, else Phi-4-mini's, with the special tokens its ids name."""
        if isinstance(gguf, (str, os.PathLike)):
            from .gguf_reader import GGUFFile

            with GGUFFile(gguf) as opened:
                return cls.from_gguf(opened, max_output_chars, max_steps)
        tokens = gguf.get("tokenizer.ggml.tokens")
        special_tokens = None
        if tokens is not None:
            special_tokens = {name: tokens[gguf.get(key)] for name, key in GGUF_SPECIAL_TOKEN_KEYS.items()
                              if isinstance(gguf.get(key), int) and 0 <= gguf.get(key) < len(tokens)}
        return cls(gguf.get("tokenizer.chat_template"), special_tokens, max_output_chars, max_steps)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> RenderedChat:
        """The prompt for `messages` (OpenAI-style dicts: role, content, tool_calls, ...), with
        `tools` (OpenAI tool definitions) placed as the module docstring says. With
        add_generation_prompt the text ends with the assistant's tag (`<|assistant|>`), without
        it with what the template writes at the end (Phi-4-mini: eos, `<|endoftext|>`)."""
        if not messages:
            raise ChatTemplateError("cannot render an empty conversation")
        for message in messages:
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str) \
                    or not _ROLE.fullmatch(message["role"]):
                raise ChatTemplateError(f"a message needs a role made of letters, digits and _, got {message!r}")
        # Keys whose value is None are dropped, as transformers drops them (OpenAI's content=None).
        messages = [{key: value for key, value in _plain(message).items() if value is not None}
                    for message in messages]
        tools = None if tools is None else [_plain(tool) for tool in tools]
        now = datetime.now()
        strftime_now = now.strftime  # one clock reading for both renders

        # Render with sentinels in place of the caller's strings: what remains is the template's.
        nonce = secrets.token_hex(8)
        originals: list[str] = []

        def sentinel(text: str) -> str:
            if not text:
                return text
            originals.append(text)
            return f"\ue000{nonce}{len(originals) - 1}\ue001"

        context = self._context(messages, tools, add_generation_prompt, sentinel, strftime_now)
        skeleton = self._render(context, self.max_output_chars)
        # The real render may only add caller strings (JSON-escaped at worst, 12 chars per char).
        limit = len(skeleton) + 12 * sum(len(text) * skeleton.count(f"{nonce}{i}\ue001")
                                         for i, text in enumerate(originals))
        text = self._render(self._context(messages, tools, add_generation_prompt, lambda s: s, strftime_now), limit)
        pieces = re.split(f"\ue000{nonce}(\\d+)\ue001", skeleton)
        return RenderedChat(text, _align(text, pieces, originals))

    def _render(self, context: dict, max_chars: int) -> str:
        try:
            # values may pass the output bound (built, then cut or not printed), not both at once
            return _bounded_render(self._template, context, max_chars, self.max_steps,
                                   max(max_chars, self.max_output_chars))
        except ChatTemplateError:
            raise
        except Exception as exc:  # the template is untrusted code: whatever it raises is its error
            raise ChatTemplateError(f"chat template failed: {type(exc).__name__}: {exc}") from exc

    def _context(self, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool,
                 mark: Any, strftime_now: Any) -> dict:
        """The template's variables, every caller string passed through mark."""
        chat = []
        for message in messages:
            message = dict(message)
            tool_calls = message.pop("tool_calls", None) if not self.renders_tool_calls else None
            marked = {key: value if key == "role" else _mark_strings(value, mark) for key, value in message.items()}
            if tool_calls:
                content = marked.get("content", "")
                if not isinstance(content, str):
                    raise ChatTemplateError("an assistant message with tool_calls needs text content (or none)")
                calls = json.dumps(_model_tool_calls(tool_calls), ensure_ascii=False)
                marked["content"] = content + TOOL_CALL_START + mark(calls) + TOOL_CALL_END
            chat.append(marked)
        if tools and not self.reads_tools:  # an empty list is no tools
            tools_json = mark(json.dumps([_function_of(tool) for tool in tools], ensure_ascii=False))
            if chat[0]["role"] != "system":
                chat.insert(0, {"role": "system", "content": mark(TOOLS_SYSTEM_PROMPT)})
            if "tools" in chat[0]:
                raise ChatTemplateError("tools given both as an argument and in the system message")
            chat[0]["tools"] = tools_json
        return {
            **self.special_tokens,
            "messages": chat,
            "tools": None if tools is None else _mark_strings(tools, mark),
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
            "strftime_now": strftime_now,
        }


def _renderings(text: str) -> Iterator[str]:
    """What templates make of a caller string: itself, stripped, or escaped inside JSON."""
    yield text
    yield text.strip()
    yield text.lstrip()
    yield text.rstrip()
    yield json.dumps(text, ensure_ascii=False)[1:-1]
    yield json.dumps(text, ensure_ascii=True)[1:-1]


def _align(text: str, pieces: list[str], originals: list[str]) -> list[tuple[str, bool]]:
    """Segments of the real render `text`, given the sentinel render split into
    [template text, string index, template text, ...]: each template piece must appear in order,
    and each caller string as one of its `_renderings`, ending where the next template piece
    begins. Adjacent pieces of the same kind are merged; empty ones dropped."""
    segments: list[tuple[str, bool]] = []

    def add(piece: str, trusted: bool) -> None:
        if piece and segments and segments[-1][1] == trusted:
            segments[-1] = (segments[-1][0] + piece, trusted)
        elif piece:
            segments.append((piece, trusted))

    pos = 0
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if not text.startswith(piece, pos):
                raise _rewritten()
            add(piece, True)
            pos += len(piece)
            continue
        following = pieces[i + 1]
        for candidate in _renderings(originals[int(piece)]):
            if text.startswith(candidate + following, pos):
                add(candidate, False)
                pos += len(candidate)
                break
        else:
            raise _rewritten()
    if pos != len(text):
        raise _rewritten()
    return segments


def _rewritten() -> ChatTemplateError:
    return ChatTemplateError("the chat template rewrites message contents (more than strip or JSON escaping), "
                             "so the text that came from the caller cannot be told apart safely")
