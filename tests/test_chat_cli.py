"""pyphi-chat driven like a person: through a pseudo-terminal with pexpect (the REPL), and as a
command in a pipe (-p, stdin). `--hf` downloads from a stand-in Hub on 127.0.0.1: an HTTP server
answering the two endpoints huggingface_hub calls for list_repo_files and hf_hub_download
(GET /api/models/{repo}/tree/{revision}, HEAD and GET /{repo}/resolve/{revision}/{file}).

Subprocesses run in a temporary directory (never the source tree, whose `pyphi` has no compiled
library) with HOME there too (readline history)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pexpect
import pytest

from pyphi.llama import Llama

PROMPT = ">>> "
TIMEOUT = 60
MAX_TOKENS = 12


@pytest.fixture
def workdir(tmp_path):
    return tmp_path


def env_for(workdir, **extra):
    env = {**os.environ, "HOME": str(workdir), "PYTHONUNBUFFERED": "1", "TERM": "dumb", **extra}
    return env


def default_sigint():
    """Ctrl-C interrupts the child as in a terminal, even when this test run was started in the
    background (a non-interactive shell's `&` makes SIGINT ignored, and that is inherited)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def command(*args):
    return [sys.executable, "-m", "pyphi.chat_cli", *map(str, args)]


def spawn(workdir, *args):
    cmd = command(*args)
    child = pexpect.spawn(cmd[0], cmd[1:], cwd=str(workdir), env=env_for(workdir), encoding="utf-8",
                          timeout=TIMEOUT, dimensions=(50, 200), preexec_fn=default_sigint)
    child.expect_exact(PROMPT)
    return child


def say(child, line):
    """Send a line and return what the program printed before its next prompt."""
    child.sendline(line)
    child.expect_exact(PROMPT)
    return child.before


def run(workdir, *args, stdin="", **kwargs):
    return subprocess.run(command(*args), check=False, input=stdin, capture_output=True, text=True, cwd=workdir,
                          env=env_for(workdir, **kwargs), timeout=TIMEOUT)


def expected_answer(gguf, text, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    with Llama(gguf, n_threads=1) as llm:
        out = llm.create_chat_completion(messages, max_tokens=MAX_TOKENS)
    return out["choices"][0]["message"]["content"]


def stats(child):
    out = say(child, "/stats")
    m = re.search(r"prompt\s+(\d+) tokens: (\d+) prefilled, (\d+) reused", out)
    assert m, out
    return tuple(map(int, m.groups()))


# ---- the REPL ----


def test_two_turn_chat_reuses_the_cache(gguf, workdir):
    # Sampled, not greedy: the random model's greedy answer is role markers, which are not shown.
    # The seed gives an answer that does not start with whitespace: such an answer is re-encoded
    # (Llama._encode_with_answers), and the cache would then hold only the first prompt.
    child = spawn(workdir, gguf, "--max-tokens", MAX_TOKENS, "--threads", 1, "--system", "Be brief.",
                  "--temperature", 1, "--seed", 3)
    answer = say(child, "Hello there").split("\r\n", 1)[1]  # after the echoed line
    assert answer.strip() and not answer[:1].isspace(), repr(answer)
    total1, prefilled1, cached1 = stats(child)
    assert cached1 == 0 and prefilled1 == total1

    say(child, "And a second question?")
    total2, prefilled2, cached2 = stats(child)
    # The second prompt re-sends the first turn: all of its prompt and (nearly all of) the answer
    # come from the cache, so only the new turn is prefilled.
    with Llama(gguf, n_threads=1) as llm:
        new_turn = len(llm.tokenize("<|end|><|user|>And a second question?<|end|><|assistant|>", special=True))
    assert total2 == prefilled2 + cached2 and cached2 >= total1
    assert prefilled2 <= new_turn + 3, (prefilled2, new_turn)
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_commands(gguf, workdir):
    child = spawn(workdir, gguf, "--max-tokens", MAX_TOKENS, "--threads", 1)
    out = say(child, "/help")
    assert "/clear" in out and "/set" in out and "/bye" in out and '"""' in out
    assert "Set temperature to 0.7" in say(child, "/set temperature 0.7")
    assert "temperature = 0.7" in say(child, "/set")
    assert "not a float" in say(child, "/set temperature hot")
    assert "Unknown setting" in say(child, "/set colour blue")
    say(child, "/set seed 3")
    say(child, "Hi")
    show = say(child, "/show")
    used = int(re.search(r"context\s+(\d+) / (\d+) tokens used", show).group(1))
    assert used > 0 and "KV cache" in show and re.search(r"resident now \d+ MiB", show)
    assert "Cleared" in say(child, "/clear")
    assert re.search(r"context\s+0 / \d+ tokens used", say(child, "/show"))
    assert "System prompt set" in say(child, "/system You are terse.")
    say(child, "Hi again")
    saved = workdir / "conv.json"
    assert "Saved 2 messages" in say(child, f"/save {saved}")
    messages = json.loads(saved.read_text())["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == "You are terse." and messages[1]["content"] == "Hi again"
    say(child, "/clear")
    assert "Loaded 2 messages" in say(child, f"/load {saved}")
    assert "Unknown command" in say(child, "/frobnicate")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_line_editing_and_history(gguf, workdir):
    child = spawn(workdir, gguf, "--threads", 1)
    assert "Set top_k to 5" in say(child, "/set top_k 5")
    child.send("\x1b[A")  # up arrow: the previous line again
    assert "Set top_k to 5" in say(child, "")
    child.send("/set top_p 0.5\x1b[D\x1b[D\x7f7")  # left, left, backspace, 7: "/set top_p 7.5"
    assert "Set top_p to 7.5" in say(child, "")
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    # readline does not repeat a line equal to the previous one
    assert (workdir / ".pyphi_chat_history").read_text().splitlines() == ["/set top_k 5", "/set top_p 7.5", "/bye"]


def test_multiline_message(gguf, workdir):
    child = spawn(workdir, gguf, "--max-tokens", MAX_TOKENS, "--threads", 1)
    child.sendline('"""first line')
    child.expect_exact("... ")
    child.sendline("second line")
    child.expect_exact("... ")
    child.sendline('third"""')
    child.expect_exact(PROMPT)
    saved = workdir / "conv.json"
    say(child, f"/save {saved}")
    user = json.loads(saved.read_text())["messages"][0]
    assert user == {"role": "user", "content": "first line\nsecond line\nthird"}
    child.sendline("/bye")
    child.expect(pexpect.EOF)


def test_errors_keep_the_repl_going(gguf, workdir):
    child = spawn(workdir, gguf, "--max-tokens", MAX_TOKENS, "--threads", 1, "--n-ctx", 48)
    assert "error: the prompt has" in say(child, "word " * 60) and "48 (n_ctx)" in child.before
    say(child, "/set temperature -1")
    assert "error: temperature must be >= 0" in say(child, "Hi")
    say(child, "/set temperature 0")
    assert say(child, "Hi").strip()
    saved = workdir / "conv.json"
    say(child, f"/save {saved}")
    assert [m["content"] for m in json.loads(saved.read_text())["messages"]][:1] == ["Hi"]
    child.sendline("/bye")
    child.expect(pexpect.EOF)


def test_ctrl_c_stops_generation_then_twice_exits_130(gguf, workdir):
    child = spawn(workdir, gguf, "--ignore-eos", "--threads", 1, "--n-ctx", 4096)
    child.sendline("Tell me everything")
    child.expect(r"\S{3}")  # the answer is streaming
    started = time.monotonic()
    child.sendintr()
    child.expect_exact("(stopped)")
    child.expect_exact(PROMPT)
    assert time.monotonic() - started < 10
    # Still usable: the conversation goes on.
    assert "Set max_tokens to 5" in say(child, "/set max_tokens 5")
    say(child, "Next")
    child.sendintr()
    child.expect_exact("Ctrl-C again")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130 or child.signalstatus == signal.SIGINT


# ---- non-interactive ----


def test_prompt_flag_prints_the_answer(gguf, workdir):
    result = run(workdir, gguf, "-p", "What is 2+2?", "--max-tokens", MAX_TOKENS, "--threads", 1)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_answer(gguf, "What is 2+2?") + "\n"


def test_ctrl_c_in_prompt_mode_exits_130(gguf, workdir):
    cmd = command(gguf, "-p", "Go on", "--ignore-eos", "--threads", 1)
    child = pexpect.spawn(cmd[0], cmd[1:], cwd=str(workdir), env=env_for(workdir), encoding="utf-8", timeout=TIMEOUT,
                          preexec_fn=default_sigint)
    child.expect(r"\S{3}")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130 and "Traceback" not in child.before


def test_prompt_from_a_pipe(gguf, workdir):
    result = run(workdir, gguf, "--max-tokens", MAX_TOKENS, "--threads", 1, "--system", "S", stdin="hi\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_answer(gguf, "hi", system="S") + "\n"


def test_context_shift_answers_a_prompt_longer_than_the_context(workdir, gguf):
    args = ["-p", "word " * 80, "--max-tokens", 100, "--threads", 1, "--n-ctx", 64, "--system", "S", "--ignore-eos"]
    assert "n_ctx" in run(workdir, gguf, *args).stderr
    result = run(workdir, gguf, *args, "--context-shift")
    assert result.returncode == 0 and result.stdout.strip(), result.stderr


@pytest.mark.parametrize("make, message", [("missing", "no such file"), ("not_gguf", "shorter than a GGUF header"),
                                           ("directory", "is a directory"), ("truncated", "left in the file")])
def test_bad_model_path_is_one_line_and_exit_2(gguf, workdir, make, message):
    path = workdir / "model.gguf"
    if make == "not_gguf":
        path.write_bytes(b"not a gguf")
    elif make == "directory":
        path.mkdir()
    elif make == "truncated":
        with open(gguf, "rb") as f:
            path.write_bytes(f.read(100_000))
    result = run(workdir, path, "-p", "hi")
    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"pyphi-chat: error: {path}") and message in result.stderr, result.stderr


def test_entry_point_is_installed():
    assert shutil.which("pyphi-chat") or os.path.exists(os.path.join(os.path.dirname(sys.executable), "pyphi-chat"))


# ---- --hf against a stand-in Hub ----


class FakeHub(http.server.ThreadingHTTPServer):
    """Serves `files` ({path: bytes}) of one repo at one commit, and counts requests."""

    def __init__(self, repo: str, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.repo, self.files = repo, files
        self.commit = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self._answer(body=True)

    def do_HEAD(self):
        self._answer(body=False)

    def _answer(self, body: bool):
        hub: FakeHub = self.server
        path = self.path.split("?")[0]
        hub.requests.append((self.command, path))
        tree = f"/api/models/{hub.repo}/tree/main"
        resolve = f"/{hub.repo}/resolve/main/"
        if path == tree:
            listing = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                       for name, data in hub.files.items()]
            return self._send(200, json.dumps(listing).encode(), {"Content-Type": "application/json"}, body)
        if path.startswith(resolve) and path[len(resolve):] in hub.files:
            data = hub.files[path[len(resolve):]]
            headers = {"X-Repo-Commit": hub.commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                       "Content-Type": "application/octet-stream"}
            return self._send(200, data, headers, body)
        self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, body)

    def _send(self, status, data, headers, body):
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


@pytest.fixture
def hub(gguf):
    with open(gguf, "rb") as f:
        data = f.read()
    server = FakeHub("someone/phi4-tiny-GGUF", {"README.md": b"# tiny\n", "phi4-tiny-Q4_0_4_4.gguf": b"wrong",
                                                 "phi4-tiny-Q4_0.gguf": data, "phi4-tiny-Q8_0.gguf": b"wrong"})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_hf_downloads_once_and_picks_the_quant(hub, gguf, workdir):
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(workdir / "hub-cache"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    args = ["--hf", "someone/phi4-tiny-GGUF:q4_0", "-p", "hi", "--max-tokens", MAX_TOKENS, "--threads", 1]
    # First in a terminal, where the progress bar is drawn.
    cmd = command(*args)
    child = pexpect.spawn(cmd[0], cmd[1:], cwd=str(workdir), env=env_for(workdir, **env), encoding="utf-8",
                          timeout=TIMEOUT, dimensions=(50, 200), preexec_fn=default_sigint)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert "phi4-tiny-Q4_0.gguf" in child.before and "100%" in child.before
    second = run(workdir, *args, **env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == expected_answer(gguf, "hi") + "\n"
    downloads = [r for r in hub.requests if r == ("GET", "/someone/phi4-tiny-GGUF/resolve/main/phi4-tiny-Q4_0.gguf")]
    assert len(downloads) == 1
    assert all(path.startswith(("/api/models/someone/phi4-tiny-GGUF/tree/main", "/someone/phi4-tiny-GGUF/resolve/main/"))
               for _, path in hub.requests)


@pytest.mark.parametrize("spec, message", [("someone/phi4-tiny-GGUF:Q5_K_M", "no GGUF file(s) match"),
                                           ("someone/other-repo:Q4_0", "cannot list the repo"),
                                           ("not-a-repo-id", "expected a Hugging Face repo id")])
def test_hf_errors_are_one_line(hub, workdir, spec, message):
    result = run(workdir, "--hf", spec, "-p", "hi", HF_ENDPOINT=hub.url, HF_HUB_CACHE=str(workdir / "c"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
