"""pyphi-serve: an OpenAI-compatible HTTP server for one GGUF model.

    pyphi-serve phi4-mini-q4_0.gguf                       # http://127.0.0.1:8080/v1
    pyphi-serve phi4-mini-q4_0.gguf --port 9000 --api-key SECRET --queue 4

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="SECRET")
    client.chat.completions.create(model="phi4-mini-q4_0", messages=[...], stream=True)

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models (and
/v1/models/NAME), GET /health. It binds to loopback unless --host says otherwise; with
--api-key every request needs `Authorization: Bearer KEY`. One answer is generated at a time;
up to --queue requests wait, more are answered 503.

Not here: HTTP (pyphi.server_http), the meaning of requests (pyphi.server_api).
"""

from __future__ import annotations

import argparse
import sys

from .cli_errors import one_line
from .gguf_reader import GGUFError
from .llama import Llama
from .server_api import ServedModel
from .server_http import DEFAULT_MAX_BODY, DEFAULT_QUEUE, Server

PROG = "pyphi-serve"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Serve a Phi-4-mini GGUF model over OpenAI's HTTP API.")
    p.add_argument("model", help="path of a .gguf file")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--n-ctx", type=int, help="context length in tokens (default: 4096 or the model's)")
    p.add_argument("--threads", type=int, help="threads (default: the physical cores)")
    p.add_argument("--numerics", choices=("pyphi", "ggml"), default="pyphi",
                   help="ggml: llama.cpp's arithmetic, its logits bit for bit (Q4_1/Q8_0 files without LongRoPE; slower)")
    p.add_argument("--api-key", help="require `Authorization: Bearer API_KEY` on every request")
    p.add_argument("--queue", type=int, default=DEFAULT_QUEUE,
                   help=f"requests that may wait while one is answered; more get 503 (default {DEFAULT_QUEUE})")
    p.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY,
                   help=f"largest request body in bytes; larger ones get 413 (default {DEFAULT_MAX_BODY})")
    p.add_argument("--context-shift", action="store_true",
                   help="when the context is full, drop the oldest tokens after the system prompt instead of stopping")
    args = p.parse_args(argv)
    if args.queue < 0:
        p.error("--queue must be >= 0")
    if args.max_body < 1:
        p.error("--max-body must be >= 1")
    return args


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        llm = Llama(args.model, n_ctx=args.n_ctx, n_threads=args.threads, context_shift=args.context_shift,
                    numerics=args.numerics)
        server = Server(ServedModel.of(llm), (args.host, args.port), api_key=args.api_key, queue=args.queue,
                        max_body=args.max_body)
    except (OSError, GGUFError, ValueError, MemoryError) as e:
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    host, port = server.server_address[:2]
    print(f"{PROG}: serving {server.served.name!r} at http://{host}:{port}/v1 (n_ctx {llm.n_ctx()}); "
          "Ctrl-C stops", file=sys.stderr, flush=True)
    if not _is_loopback(args.host) and not args.api_key:
        print(f"{PROG}: warning: listening on {args.host} without --api-key: anyone who can reach it can use it",
              file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
