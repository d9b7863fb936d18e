"""pyphi-serve through the official `openai` client, on the tiny random model: chat, completions,
streaming, tool calls, stop strings, max_tokens, usage, prefix-cache reuse, OpenAI-shaped errors,
the API key, the queue (503 beyond it), a client that leaves mid-stream, concurrent clients, and
the command line.

Most servers run in a thread of this process (pyphi.server_http.Server on 127.0.0.1, a free
port) over one shared Llama, so a test can script what the model says by replacing
pyphi.sampling.make_sampler, as tests/test_api.py does. The command line runs in a subprocess.
Every request and wait has a timeout; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from pyphi import sampling
from pyphi.server_api import ServedModel
from pyphi.server_http import Server

END, ENDOFTEXT = 200020, 199999
TIMEOUT = 30.0  # seconds: any one request or wait
NO_STOP = {str(END): -100, str(ENDOFTEXT): -100}  # OpenAI's logit_bias form: ban the end tokens
MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CALL = '<|tool_call|>[{"name": "get_weather", "arguments": {"city": "Paris"}}]<|/tool_call|>'


@contextlib.contextmanager
def serving(llm, **options):
    """A Server for llm on 127.0.0.1 (a free port), in a thread."""
    server = Server(ServedModel.of(llm), ("127.0.0.1", 0), log_requests=False, **options)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@pytest.fixture(scope="module")
def server(llm):
    with serving(llm) as server:
        yield server


def client(server, api_key="unused"):
    host, port = server.server_address[:2]
    return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=api_key, timeout=TIMEOUT, max_retries=0)


@pytest.fixture
def api(server):
    return client(server)


@pytest.fixture
def model(server):
    return server.served.name


def raw(server, method, path, body: bytes | None = None, headers=None):
    """(status, parsed JSON body) of one plain HTTP request."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def script(monkeypatch, llm, *texts, delay=0.0):
    """Each request from now on makes the model 'say' the next of texts (added-token literals
    parsed), then <|end|>; with delay, each token takes that long. Returns the list of sampled
    ids, which grows as the model samples."""
    texts = iter(texts)
    sampled = []

    def make_sampler(**kwargs):
        ids = iter(llm.tokenize(next(texts), special=True) + [END])

        def sample(logits):
            time.sleep(delay)
            sampled.append(next(ids))
            return sampled[-1]

        return sample

    monkeypatch.setattr(sampling, "make_sampler", make_sampler)
    return sampled


def endless(monkeypatch, delay):
    """Every request's model says "a" forever, one token per `delay` seconds."""
    sampled = []

    def make_sampler(**kwargs):
        def sample(logits):
            time.sleep(delay)
            sampled.append(64)  # "a"
            return 64

        return sample

    monkeypatch.setattr(sampling, "make_sampler", make_sampler)
    return sampled


def extra(response, key):
    return response.to_dict()[key]


def check_error(status, body, expected_status, code=None):
    assert status == expected_status
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code


# ---- the endpoints ----


def test_models_and_health(server, api, model, gguf):
    assert model == "Phi 4 Mini Instruct"  # general.name of the converted checkpoint
    assert [m.id for m in api.models.list().data] == [model]
    assert api.models.retrieve(Path(gguf).stem).id == model
    assert raw(server, "GET", "/health") == (200, {"status": "ok"})


def test_chat_completion(api, model, llm, gguf):
    out = api.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6, logit_bias=NO_STOP)
    assert out.object == "chat.completion" and out.model == model and out.id.startswith("chatcmpl-")
    choice = out.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason == "length"
    assert out.usage.prompt_tokens == len(llm.chat_prompt_ids(MESSAGES)) and out.usage.completion_tokens == 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + 6
    assert set(extra(out, "timings")) >= {"prompt_n", "cache_n", "predicted_n", "predicted_per_second"}
    by_stem = api.chat.completions.create(model=Path(gguf).stem, messages=MESSAGES, max_tokens=6, logit_bias=NO_STOP)
    assert by_stem.choices[0].message.content == choice.message.content


def test_completion(api, model, llm):
    out = api.completions.create(model=model, prompt="Once upon a time", max_tokens=5, logit_bias=NO_STOP)
    assert out.object == "text_completion" and out.choices[0].finish_reason == "length"
    assert out.choices[0].text and out.usage.completion_tokens == 5
    assert out.usage.prompt_tokens == len(llm.tokenize("Once upon a time"))


def test_content_parts_are_joined(api, model):
    kwargs = {"model": model, "max_tokens": 4, "logit_bias": NO_STOP}
    parts = [{"type": "text", "text": "What is the weather "}, {"type": "text", "text": "in Paris?"}]
    joined = api.chat.completions.create(messages=[*MESSAGES[:1], {"role": "user", "content": parts}], **kwargs)
    assert joined.choices[0].message.content == api.chat.completions.create(messages=MESSAGES, **kwargs).choices[0].message.content
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(messages=[{"role": "user", "content": [image]}], **kwargs)
    assert e.value.param == "messages[0].content"


def test_streaming_reassembles_the_answer(api, model):
    kwargs = {"model": model, "max_tokens": 30, "temperature": 0.8, "seed": 3, "logit_bias": NO_STOP}
    whole = api.chat.completions.create(messages=MESSAGES, **kwargs)
    chunks = list(api.chat.completions.create(messages=MESSAGES, stream=True,
                                              stream_options={"include_usage": True}, **kwargs))
    assert all(c.object == "chat.completion.chunk" and c.model == model for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and len(text) > 0
    *_, finish, usage = chunks
    assert finish.choices[0].finish_reason == "length" and finish.usage is None
    assert usage.choices == [] and usage.usage == whole.usage

    plain = list(api.chat.completions.create(messages=MESSAGES, stream=True, **kwargs))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "length"

    kwargs["max_tokens"] = 12
    whole = api.completions.create(prompt="Once upon a time", **kwargs)
    chunks = list(api.completions.create(prompt="Once upon a time", stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text


def test_stop_strings_and_max_tokens(api, model):
    kwargs = {"model": model, "messages": MESSAGES, "logit_bias": NO_STOP}
    text = api.chat.completions.create(max_tokens=20, **kwargs).choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 2]
    out = api.chat.completions.create(max_tokens=20, stop=[stop, "never said"], **kwargs)
    assert out.choices[0].message.content == text[:text.index(stop)] and out.choices[0].finish_reason == "stop"
    assert out.usage.completion_tokens < 20
    for key in ("max_tokens", "max_completion_tokens"):
        out = api.chat.completions.create(**{key: 3}, **kwargs)
        assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"


def test_tool_call_round_trip(api, model, llm, monkeypatch):
    script(monkeypatch, llm, "Let me check. " + CALL, "It is sunny in Paris.")
    first = api.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, max_tokens=100)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    result = {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "clear", "celsius": 21})}
    history = [*MESSAGES, choice.message.model_dump(exclude_none=True), result]
    second = api.chat.completions.create(model=model, messages=history, tools=TOOLS, max_tokens=100)
    assert second.choices[0].message.content == "It is sunny in Paris."
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    # The second prompt holds the first: only the call's end, the result and the new tags are new.
    assert extra(second, "timings")["cache_n"] >= first.usage.prompt_tokens


def test_streamed_tool_call(api, model, llm, monkeypatch):
    script(monkeypatch, llm, CALL)
    chunks = list(api.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ""
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert [c.index for c in calls] == [0] and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_a_resent_chat_prefills_only_the_new_turn(api, model, llm):
    llm.model.reset()
    visible = {str(i): -100 for i in llm.tokenizer.control_ids}  # an answer of text, not role markers
    first = api.chat.completions.create(model=model, messages=MESSAGES, max_tokens=10, logit_bias=visible)
    assert extra(first, "timings")["cache_n"] == 0
    answer = {"role": "assistant", "content": first.choices[0].message.content}
    follow_up = {"role": "user", "content": "And tomorrow?"}
    second = api.chat.completions.create(model=model, messages=[*MESSAGES, answer, follow_up], max_tokens=3,
                                         logit_bias=NO_STOP)
    timings = extra(second, "timings")
    # Cached: the first prompt and the answer's tokens but its last (sampled, never evaluated).
    assert timings["cache_n"] == first.usage.prompt_tokens + 9
    assert timings["prompt_n"] == second.usage.prompt_tokens - timings["cache_n"]
    assert timings["prompt_n"] == len(llm.tokenize("<|end|><|user|>And tomorrow?<|end|><|assistant|>", special=True)) + 1


# ---- errors ----


def test_bad_requests(server, api, model):
    status, body = raw(server, "POST", "/v1/chat/completions", b'{"messages": [', {"Content-Type": "application/json"})
    check_error(status, body, 400, "invalid_json")
    status, body = raw(server, "POST", "/v1/chat/completions", json.dumps({"model": model}).encode())
    check_error(status, body, 400)
    assert body["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=model, messages=[])
    assert e.value.status_code == 400 and e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=model, messages=MESSAGES, temperature="hot")
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=model, messages=MESSAGES, n=2)
    assert e.value.param == "n"
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=model, messages=MESSAGES, response_format={"type": "json_object"})
    assert e.value.code == "unsupported_response_format"


def test_unknown_model_and_route(server, api):
    with pytest.raises(openai.NotFoundError) as e:
        api.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        api.models.retrieve("gpt-4o")
    check_error(*raw(server, "GET", "/v2/anything"), 404, "unknown_route")
    check_error(*raw(server, "POST", "/v1/models", b"{}"), 404, "unknown_route")
    check_error(*raw(server, "DELETE", "/v1/models/x"), 404, "unknown_route")


def test_prompt_longer_than_the_context(api, model):
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 600}])
    assert e.value.code == "context_length_exceeded" and "n_ctx" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        api.completions.create(model=model, prompt="word " * 600)
    assert e.value.code == "context_length_exceeded"


def test_oversized_body(llm, model):
    with serving(llm, max_body=4096) as server:
        with pytest.raises(openai.APIStatusError) as e:
            client(server).chat.completions.create(model=model, messages=[{"role": "user", "content": "x" * 100_000}])
        assert e.value.status_code == 413 and e.value.code == "request_too_large"
        ok = client(server).chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
        assert ok.choices[0].message.role == "assistant"


def test_api_key(llm, model):
    with serving(llm, api_key="s3cret") as server:
        with pytest.raises(openai.AuthenticationError) as e:
            client(server, api_key="wrong").chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
        check_error(*raw(server, "GET", "/v1/models"), 401, "invalid_api_key")
        check_error(*raw(server, "GET", "/health", headers={"Authorization": "Bearer s3cretX"}), 401)
        out = client(server, api_key="s3cret").chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
        assert out.usage.completion_tokens <= 2


def test_a_failing_generation_is_a_500(api, model, monkeypatch):
    def make_sampler(**kwargs):
        n = iter(range(1000))
        return lambda logits: 64 if next(n) < 3 else 1 / 0

    monkeypatch.setattr(sampling, "make_sampler", make_sampler)
    with pytest.raises(openai.InternalServerError) as e:
        api.chat.completions.create(model=model, messages=MESSAGES)
    assert e.value.status_code == 500 and "ZeroDivisionError" in e.value.message
    stream = api.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="ZeroDivisionError"):
        list(stream)  # the status was 200; the error comes as an event


# ---- one model, many clients ----


def first_chunks(stream, n):
    """Read n chunks of a stream (or fail after TIMEOUT)."""
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == n:
            return chunks
    raise AssertionError("the stream ended early")


def test_busy_beyond_the_queue_is_503(llm, model, monkeypatch):
    endless(monkeypatch, delay=0.01)
    with serving(llm, queue=0) as server:
        stream = client(server).chat.completions.create(model=model, messages=MESSAGES, stream=True)
        first_chunks(stream, 2)  # the model is busy with this one now
        with pytest.raises(openai.InternalServerError) as e:
            client(server).chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
        assert e.value.status_code == 503 and e.value.code == "server_busy"
        assert e.value.response.headers["Retry-After"] == "1"
        stream.close()


def test_a_client_that_leaves_mid_stream_frees_the_model(server, model, monkeypatch):
    sampled = endless(monkeypatch, delay=0.01)  # 512 tokens would take 5 s
    stream = client(server).chat.completions.create(model=model, messages=MESSAGES, stream=True)
    first_chunks(stream, 5)
    stream.close()
    left = time.monotonic()
    out = client(server).chat.completions.create(model=model, messages=MESSAGES, max_tokens=3)
    assert time.monotonic() - left < 1.0
    assert out.usage.completion_tokens == 3 and out.choices[0].message.content == "aaa"
    n = len(sampled)
    time.sleep(0.2)
    assert len(sampled) == n  # nothing is generating any more
    assert n < 100


def test_a_client_that_leaves_while_queued_gives_up_its_turn(llm, model, monkeypatch):
    sampled = endless(monkeypatch, delay=0.01)
    with serving(llm, queue=1) as server:
        stream = client(server).chat.completions.create(model=model, messages=MESSAGES, stream=True)
        first_chunks(stream, 2)
        waiting = client(server).with_options(timeout=0.3)
        with pytest.raises(openai.APITimeoutError):
            waiting.chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
        time.sleep(0.5)  # the queue notices the waiting client gone
        stream.close()
        out = client(server).chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
        assert out.choices[0].message.content == "aa"
        assert len(sampled) < 150  # the abandoned request was never served (it would run to n_ctx)


def test_concurrent_clients_are_served_in_turn(server, model):
    def ask(i):
        messages = [{"role": "user", "content": f"Question number {i}: what comes next?"}]
        out = client(server).chat.completions.create(model=model, messages=messages, max_tokens=4 + i,
                                                     logit_bias=NO_STOP)
        return out.choices[0].message.content, out.usage.completion_tokens, out.choices[0].finish_reason

    expected = [ask(i) for i in range(8)]
    assert [n for _, n, _ in expected] == [4 + i for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8), timeout=TIMEOUT))
    assert answers == expected


# ---- the command line ----


def test_command_line(gguf, tmp_path):
    cmd = [sys.executable, "-m", "pyphi.server", gguf, "--port", "0", "--n-ctx", "256", "--threads", "1",
           "--api-key", "k3y"]
    # SIGINT as in a terminal, even when this test run was started in the background (where `&`
    # makes it ignored, and that is inherited).
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        ready, _, _ = select.select([proc.stderr], [], [], TIMEOUT)
        assert ready, "pyphi-serve did not start"
        line = proc.stderr.readline()
        assert line.startswith("pyphi-serve: serving 'Phi 4 Mini Instruct' at http://127.0.0.1:"), line
        base = line.split(" at ")[1].split()[0]
        api = openai.OpenAI(base_url=base, api_key="k3y", timeout=TIMEOUT, max_retries=0)
        out = api.chat.completions.create(model=Path(gguf).stem, messages=MESSAGES, max_tokens=2)
        assert out.model == "Phi 4 Mini Instruct" and out.usage.prompt_tokens > 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)
        proc.stderr.close()


def test_command_line_bad_model_path(tmp_path):
    cmd = [sys.executable, "-m", "pyphi.server", str(tmp_path / "missing.gguf")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"pyphi-serve: error: {tmp_path / 'missing.gguf'}: no such file or directory"]
