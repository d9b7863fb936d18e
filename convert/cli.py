"""`pyphi-convert HF_DIR -o OUT.gguf --type TYPE`: the command line of pyphi.convert.

Bad input is reported as one line on stderr, `pyphi-convert: error: <file>: <what>`, with exit
status 2 (argparse's own status for usage errors); an unexpected exception is a bug and exits
with status 1, also as one line. No traceback either way, and no output file is left behind.
"""

from __future__ import annotations

import argparse
import signal
import sys

from . import OUT_TYPES, ConvertError, convert

PROG = "pyphi-convert"
DEFAULT_TYPE = "bf16"  # lossless for the bf16 checkpoints of this model family
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n"))


def _terminate(signum, frame):
    """SIGTERM unwinds like Ctrl-C, so that the temporary output file is removed."""
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Convert a Hugging Face Phi3ForCausalLM checkpoint (Phi-4-mini-instruct) to GGUF.",
    )
    parser.add_argument("hf_dir", help="directory with config.json, the safetensors and the tokenizer files")
    parser.add_argument("-o", "--outfile", required=True, help="the GGUF file to write")
    parser.add_argument(
        "--type",
        choices=list(OUT_TYPES),
        default=DEFAULT_TYPE,
        help=f"weight type (default {DEFAULT_TYPE}); norms and 1-D tensors are always f32",
    )
    parser.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads for quantization (default: one per physical core)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads is not None and args.threads < 1:
        print(f"{PROG}: error: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return EXIT_BAD_INPUT
    previous_handler = signal.signal(signal.SIGTERM, _terminate)
    try:
        out = convert(
            args.hf_dir,
            args.outfile,
            args.type,
            force=args.force,
            n_threads=args.threads,
            progress=not args.no_progress,
        )
    except ConvertError as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: say what it was in one line, as for bad input
        print(f"{PROG}: internal error: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    print(f"{PROG}: wrote {out} ({args.type}, {out.stat().st_size / 1e9:.2f} GB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
