"""GGUF files from the Hugging Face Hub: `download_gguf("owner/repo:Q4_0")` lists the repo's
files, picks the GGUF whose name carries the quantization, and downloads it once, with a
progress bar, into huggingface_hub's cache (later calls find it there). The client honours
HF_ENDPOINT (a mirror, or a local stand-in in tests) and HF_HUB_CACHE.

Not here: loading the model; anything but GGUF files.
"""

from __future__ import annotations

import re

# When the spec names no quantization and the repo holds several GGUFs.
DEFAULT_QUANT = "Q4_0"


class HubError(Exception):
    """The repo cannot be listed, holds no matching GGUF, or the download failed."""


def parse_spec(spec: str) -> tuple[str, str | None]:
    """"owner/repo[:QUANT]" -> (repo_id, quant or None)."""
    repo, _, quant = spec.partition(":")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise HubError(f"{spec!r}: expected a Hugging Face repo id OWNER/NAME, optionally followed by :QUANT")
    return repo, quant or None


def pick_gguf(files: list[str], quant: str | None) -> str:
    """The GGUF among files whose name has quant as a separate word (case-insensitive, so
    "q4_0" finds "model-Q4_0.gguf" but not "model-Q4_0_4_4.gguf"); without quant, the only GGUF
    or the DEFAULT_QUANT one."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    if not ggufs:
        raise HubError("the repo has no .gguf file")
    if quant is None:
        if len(ggufs) == 1:
            return ggufs[0]
        quant = DEFAULT_QUANT
    word = re.compile(rf"(?<![A-Za-z0-9_]){re.escape(quant)}(?![A-Za-z0-9_])", re.IGNORECASE)
    matches = [f for f in ggufs if word.search(f.rsplit("/", 1)[-1][:-len(".gguf")])]
    if len(matches) != 1:
        problem = "no" if not matches else "several"
        raise HubError(f"{problem} GGUF file(s) match {quant!r}; the repo has: {', '.join(ggufs)}")
    return matches[0]


def download_gguf(spec: str) -> str:
    """The local path of the GGUF named by "owner/repo[:QUANT]", downloaded if not cached."""
    repo, quant = parse_spec(spec)
    try:
        import huggingface_hub
    except ImportError:
        raise HubError("downloading from the Hub needs huggingface_hub: pip install 'pyphi[hf]'") from None
    try:
        files = huggingface_hub.list_repo_files(repo)
    except Exception as e:  # noqa: BLE001 - HTTP statuses, and the HTTP client's own connection errors
        raise HubError(f"{repo}: cannot list the repo: {_first_line(e)}") from None
    filename = pick_gguf(files, quant)
    try:
        return huggingface_hub.hf_hub_download(repo, filename)
    except Exception as e:  # noqa: BLE001 - as above
        raise HubError(f"{repo}: cannot download {filename}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
