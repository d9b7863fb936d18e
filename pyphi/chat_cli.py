"""pyphi-chat: chat with a GGUF model in the terminal.

    pyphi-chat phi4-mini-q4_0.gguf                  # interactive, answers streamed
    pyphi-chat phi4-mini-q4_0.gguf -p "Hi!"         # one answer, then exit
    echo "Hi!" | pyphi-chat phi4-mini-q4_0.gguf     # the prompt from a pipe
    pyphi-chat --hf OWNER/REPO:Q4_0                 # downloaded once into the Hugging Face cache

Interactive input uses the standard library's readline (line editing, history in
~/.pyphi_chat_history): it behaves predictably on any terminal and in a pseudo-terminal, and
needs no dependency. `\"\"\"` starts and ends a multi-line message; /help lists the commands.
Ctrl-C stops the answer being generated; at an empty prompt, a second Ctrl-C exits (status 130).

The KV cache is kept across turns: each turn re-sends the conversation, and pyphi.generate
prefills only what the cache does not hold (see /stats). Sampling defaults are the model card's:
greedy.

Not here: the generation loop or the OpenAI-shaped API (pyphi.llama), downloading (pyphi.hub).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

from . import sampling
from .cli_errors import one_line
from .gguf_reader import GGUFError
from .hub import HubError, download_gguf
from .llama import Llama

PROG = "pyphi-chat"
PROMPT = ">>> "
CONTINUATION = "... "
MULTILINE = '"""'
HISTORY_FILE = "~/.pyphi_chat_history"
HISTORY_LENGTH = 1000
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# /set KEY VALUE: the sampling options a turn passes to Llama.create_chat_completion
# ("none" is accepted for those that may be None).
OPTIONAL_SETTINGS = ("max_tokens", "seed")
SETTINGS = {
    "temperature": float, "top_p": float, "top_k": int, "min_p": float, "repeat_penalty": float,
    "frequency_penalty": float, "presence_penalty": float, "max_tokens": int, "seed": int,
}

HELP = """\
Commands:
  /help               this list
  /clear              forget the conversation (keeps the system prompt) and empty the cache
  /system TEXT        set the system prompt
  /set                show the settings; /set KEY VALUE changes one
                      (keys: {keys})
  /show               model, context use, memory
  /stats              speed of the last answer and how much of its prompt was cached
  /save FILE          save the conversation as JSON; /load FILE loads one
  /bye                exit (or Ctrl-D)
Start and end a multi-line message with \"\"\". Ctrl-C stops an answer.""".format(keys=", ".join(SETTINGS))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Chat with a GGUF model (Phi-4-mini, or a llama-architecture model such as SmolLM2).")
    p.add_argument("model", nargs="?", help="path of a .gguf file")
    p.add_argument("--hf", metavar="REPO[:QUANT]", help="a Hugging Face repo holding GGUF files, e.g. OWNER/NAME:Q4_0")
    p.add_argument("-p", "--prompt", help="answer this prompt and exit")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--n-ctx", type=int, help="context length in tokens (default: 4096 or the model's)")
    p.add_argument("--threads", type=int, help="threads (default: the physical cores)")
    p.add_argument("--numerics", choices=("pyphi", "ggml"), default="pyphi",
                   help="ggml: llama.cpp's arithmetic, its logits bit for bit (Q4_1/Q8_0 files without LongRoPE; slower)")
    p.add_argument("--temperature", type=float, default=sampling.DEFAULT_TEMPERATURE)
    p.add_argument("--top-p", type=float, default=sampling.DEFAULT_TOP_P)
    p.add_argument("--top-k", type=int, default=sampling.DEFAULT_TOP_K)
    p.add_argument("--min-p", type=float, default=sampling.DEFAULT_MIN_P)
    p.add_argument("--repeat-penalty", type=float, default=sampling.DEFAULT_REPETITION_PENALTY)
    p.add_argument("--frequency-penalty", type=float, default=sampling.DEFAULT_FREQUENCY_PENALTY)
    p.add_argument("--presence-penalty", type=float, default=sampling.DEFAULT_PRESENCE_PENALTY)
    p.add_argument("--seed", type=int, help="seed of the sampler (default: fixed)")
    p.add_argument("--max-tokens", type=int, help="most tokens per answer (default: until the end or a full context)")
    p.add_argument("--context-shift", action="store_true",
                   help="when the context is full, drop the oldest tokens after the system prompt instead of stopping")
    p.add_argument("--ignore-eos", action="store_true", help="never stop at an end-of-answer token")
    args = p.parse_args(argv)
    if (args.model is None) == (args.hf is None):
        p.error("give a model path or --hf REPO[:QUANT] (one of them)")
    return args


class Chat:
    """The conversation, the settings and the last answer's timings, around one Llama."""

    def __init__(self, llm: Llama, system: str | None, settings: dict, logit_bias: dict[int, float] | None):
        self.llm = llm
        self.system = system
        self.settings = settings
        self.logit_bias = logit_bias
        self.messages: list[dict] = []
        self.last_timings: dict | None = None

    def conversation(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def answer(self, text: str, out) -> None:
        """Stream the answer to `text`. On Ctrl-C the partial answer is kept as the turn's
        answer (it is what the user saw) and KeyboardInterrupt propagates. A request that
        cannot start (a setting out of range, a full context) raises ValueError and leaves the
        conversation as it was."""
        question = {"role": "user", "content": text}
        chunks = self.llm.create_chat_completion([*self.conversation(), question], logit_bias=self.logit_bias,
                                                 stream=True, **self.settings)
        first = next(chunks)  # the prefill happens here, so its errors come before any output
        self.messages.append(question)
        reply = []
        try:
            for chunk in itertools.chain([first], chunks):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    reply.append(piece)
                    out.write(piece)
                    out.flush()
                if "timings" in chunk:
                    self.last_timings = {**chunk["timings"], **chunk["usage"]}
        finally:
            chunks.close()
            self.messages.append({"role": "assistant", "content": "".join(reply)})

    def clear(self) -> None:
        self.messages = []
        self.llm.model.reset()


# ----------------------------------------------------------------------------------------------
# Commands


def _cmd_help(chat: Chat, arg: str) -> str:
    return HELP


def _cmd_clear(chat: Chat, arg: str) -> str:
    chat.clear()
    return "Cleared the conversation and the cache."


def _cmd_system(chat: Chat, arg: str) -> str:
    chat.system = arg or None
    return f"System prompt set to: {arg}" if arg else "System prompt removed."


def _cmd_set(chat: Chat, arg: str) -> str:
    if not arg:
        return "\n".join(f"  {key} = {chat.settings.get(key)}" for key in SETTINGS)
    key, _, value = arg.partition(" ")
    if key not in SETTINGS:
        return f"Unknown setting {key!r}; one of: {', '.join(SETTINGS)}"
    try:
        none = value.strip().lower() == "none" and key in OPTIONAL_SETTINGS
        chat.settings[key] = None if none else SETTINGS[key](value.strip())
    except ValueError:
        return f"{key}: {value.strip()!r} is not a {SETTINGS[key].__name__}"
    return f"Set {key} to {chat.settings[key]}"


def _cmd_show(chat: Chat, arg: str) -> str:
    llm, model = chat.llm, chat.llm.model
    h = model.hparams
    return "\n".join([
        f"  model     {llm.model_path}",
        f"  shape     {h.arch}, {h.n_layer} layers, {h.n_embd} wide, vocab {h.n_vocab}, trained context {h.n_ctx_train}",
        f"  context   {model.n_past} / {model.n_ctx} tokens used",
        f"  memory    {model.sizes}; resident now {_resident_mib()}",
        f"  threads   {model.pool.n_threads}",
        f"  messages  {len(chat.messages)}" + (f" (+ system prompt: {chat.system})" if chat.system else ""),
    ])


def _resident_mib() -> str:
    """The process's resident memory (mapped weights count once their pages are read)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return "unknown"
    return f"{kib / 1024:.0f} MiB"


def _cmd_stats(chat: Chat, arg: str) -> str:
    t = chat.last_timings
    if t is None:
        return "No answer yet."
    return (f"  prompt  {t['prompt_tokens']} tokens: {t['prompt_n']} prefilled, {t['cache_n']} reused from the cache, "
            f"{t['prompt_per_second']:.1f} tok/s\n"
            f"  answer  {t['completion_tokens']} tokens, {t['predicted_per_second']:.1f} tok/s\n"
            f"  first token after {t['ttft_ms']:.0f} ms")


def _cmd_save(chat: Chat, arg: str) -> str:
    if not arg:
        return "Usage: /save FILE"
    with open(os.path.expanduser(arg), "w", encoding="utf-8") as f:
        json.dump({"messages": chat.conversation()}, f, ensure_ascii=False, indent=1)
    return f"Saved {len(chat.messages)} messages to {arg}"


def _cmd_load(chat: Chat, arg: str) -> str:
    if not arg:
        return "Usage: /load FILE"
    with open(os.path.expanduser(arg), encoding="utf-8") as f:
        data = json.load(f)
    messages = data["messages"] if isinstance(data, dict) else data
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return f"{arg}: expected a list of messages with a role"
    chat.system = next((m["content"] for m in messages if m["role"] == "system"), chat.system)
    chat.messages = [m for m in messages if m["role"] != "system"]
    return f"Loaded {len(chat.messages)} messages from {arg}"


COMMANDS = {"/help": _cmd_help, "/?": _cmd_help, "/clear": _cmd_clear, "/system": _cmd_system, "/set": _cmd_set,
            "/show": _cmd_show, "/stats": _cmd_stats, "/save": _cmd_save, "/load": _cmd_load}


def run_command(chat: Chat, line: str) -> str:
    name, _, arg = line.strip().partition(" ")
    command = COMMANDS.get(name)
    if command is None:
        return f"Unknown command {name}; /help lists them."
    try:
        return command(chat, arg.strip())
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{name}: {e}"


# ----------------------------------------------------------------------------------------------
# Input


def _setup_readline() -> None:
    try:
        import readline
    except ImportError:  # no readline (e.g. Windows): plain input()
        return
    path = os.path.expanduser(HISTORY_FILE)
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(HISTORY_LENGTH)
    import atexit

    atexit.register(_save_history, readline, path)


def _save_history(readline, path: str) -> None:
    try:
        readline.write_history_file(path)
    except OSError:
        pass


def _line_buffer() -> str:
    try:
        import readline
    except ImportError:
        return ""
    return readline.get_line_buffer()


def read_message() -> str:
    """One message: a line, or the lines between \"\"\" and \"\"\"."""
    line = input(PROMPT)
    if not line.lstrip().startswith(MULTILINE):
        return line
    text = line.lstrip()[len(MULTILINE):]
    lines = []
    while True:
        if text.rstrip().endswith(MULTILINE):
            lines.append(text.rstrip()[:-len(MULTILINE)])
            return "\n".join(lines)
        lines.append(text)
        text = input(CONTINUATION)


def repl(chat: Chat) -> int:
    _setup_readline()
    print(f"{PROG}: {os.path.basename(chat.llm.model_path)}, n_ctx {chat.llm.n_ctx()}. /help for help, /bye to exit.",
          flush=True)
    interrupted = False  # the last thing at the prompt was a Ctrl-C on an empty line
    while True:
        try:
            text = read_message()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            empty = not _line_buffer()
            if interrupted and empty:
                print()
                return EXIT_INTERRUPTED
            interrupted = empty
            print("\n(Ctrl-C again or /bye to exit)" if empty else "")
            continue
        interrupted = False
        if not text.strip():
            continue
        if text.strip() == "/bye":
            return 0
        if text.startswith("/") and "\n" not in text:  # a multi-line message is never a command
            print(run_command(chat, text), flush=True)
            continue
        try:
            chat.answer(text, sys.stdout)
            print(flush=True)
        except KeyboardInterrupt:
            print("\n(stopped)", flush=True)
        except ValueError as e:
            print(f"error: {e}", flush=True)


# ----------------------------------------------------------------------------------------------
# Entry point


def _model_path(args: argparse.Namespace) -> str:
    if args.hf is None:
        return args.model
    return download_gguf(args.hf)


def _settings(args: argparse.Namespace) -> dict:
    return {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "min_p": args.min_p,
            "repeat_penalty": args.repeat_penalty, "frequency_penalty": args.frequency_penalty,
            "presence_penalty": args.presence_penalty, "max_tokens": args.max_tokens, "seed": args.seed}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:  # while downloading, loading or answering a one-shot prompt
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    try:
        llm = Llama(_model_path(args), n_ctx=args.n_ctx, n_threads=args.threads, context_shift=args.context_shift,
                    numerics=args.numerics)
    except (OSError, GGUFError, HubError, ValueError, MemoryError) as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    logit_bias = {i: float("-inf") for i in llm.tokenizer.stop_ids} if args.ignore_eos else None
    chat = Chat(llm, args.system, _settings(args), logit_bias)
    if args.prompt is None and sys.stdin.isatty():
        return repl(chat)
    text = args.prompt if args.prompt is not None else sys.stdin.read().strip()
    if not text.strip():
        return 0
    try:
        chat.answer(text, sys.stdout)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
