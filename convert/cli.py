"""`pyphi-convert SOURCE -o OUT.gguf --type TYPE [--report]`: the command line of pyphi.convert.

SOURCE is a Hugging Face checkpoint directory (converted) or a GGUF file (requantized). With
--report, the new file's quality against the F16/BF16 weights is printed as a table after it
is written (report.py): against a temporary BF16 conversion for a checkpoint, against the source
itself for a GGUF file.

Bad input is reported as one line on stderr, `pyphi-convert: error: <file>: <what>`, with exit
status 2 (argparse's own status for usage errors); an unexpected exception is a bug and exits
with status 1, also as one line. No traceback either way, and no output file is left behind.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from . import OUT_TYPES, ConvertError, convert
from .requantize import requantize

PROG = "pyphi-convert"
DEFAULT_TYPE = "bf16"  # lossless for the bf16 checkpoints of this model family
REPORT_REFERENCE_TYPE = "bf16"  # the report's reference for a checkpoint: its exact weights
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
        description="Convert a Hugging Face Phi3ForCausalLM checkpoint (Phi-4-mini-instruct) to GGUF, "
        "or requantize a F32/F16/BF16/Q8_0 GGUF file to another type.",
    )
    parser.add_argument(
        "source",
        help="a directory with config.json, the safetensors and the tokenizer files, or a GGUF file",
    )
    parser.add_argument("-o", "--outfile", required=True, help="the GGUF file to write")
    parser.add_argument(
        "--type",
        choices=list(OUT_TYPES),
        default=DEFAULT_TYPE,
        help=f"weight type (default {DEFAULT_TYPE}): llama-quantize's names and per-tensor mixes, or "
        "q4_k_p, pyphi's 4-bit recipe (see README); norms and 1-D tensors are never quantized",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="after writing, print KL divergence and top-1 agreement against the F16/BF16 weights",
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
        out = _write(args)
        print(f"{PROG}: wrote {out} ({args.type}, {out.stat().st_size / 1e9:.2f} GB)", file=sys.stderr)
        if args.report:
            _report(args, out)
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
    return 0


def _write(args) -> Path:
    options = dict(force=args.force, n_threads=args.threads, progress=not args.no_progress)
    if Path(args.source).is_file():
        return requantize(args.source, args.outfile, args.type, warn=_warn, **options)
    return convert(args.source, args.outfile, args.type, **options)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr)


def _report(args, out: Path) -> None:
    """The quality table of `out` on stdout; the reference is the source GGUF, or a temporary
    BF16 conversion of the checkpoint beside the output (removed afterwards)."""
    from .report import format_table, report

    if Path(args.source).is_file():
        print(format_table(report(args.source, [out], n_threads=args.threads), args.source))
        return
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".pyphi-report-") as tmp:
        reference = Path(tmp) / f"reference-{REPORT_REFERENCE_TYPE}.gguf"
        convert(args.source, reference, REPORT_REFERENCE_TYPE, n_threads=args.threads,
                progress=not args.no_progress)
        print(format_table(report(reference, [out], n_threads=args.threads),
                           f"a {REPORT_REFERENCE_TYPE} conversion of {args.source}"))


if __name__ == "__main__":
    sys.exit(main())
