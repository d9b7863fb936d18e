"""The quality report: how far a quantized file's next-token distributions are from a reference's.

Both models read the same fixed English text (report_text.txt, tokenized with the reference
file's tokenizer) in windows of WINDOW tokens, each window from an empty cache (as llama.cpp's
perplexity tool does); at every position the report compares the two next-token distributions:
KL(reference || quantized) in nats, its mean and 99th percentile over positions, and top-1
agreement (the same argmax). The reference is the F16/BF16 conversion of the same weights, so
the figures measure what quantization alone costs. With random weights (pyphi.testing) they only
compare recipes; on the real checkpoint they are the real figures.

The runtime (pyphi.model, pyphi.tokenizer) is imported inside `report`, not by this module: the
converter package does not depend on the runtime unless a report is asked for.

What this is not: a perplexity or task benchmark (no labels, only agreement with the reference).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

TEXT = Path(__file__).with_name("report_text.txt")
WINDOW = 512  # tokens evaluated from an empty cache
STEP = 64  # tokens per eval call: logits (STEP, 200064) float32 = 51 MB per model
PERCENTILE = 99


@dataclasses.dataclass(frozen=True)
class Quality:
    path: str
    size_bytes: int
    n_positions: int
    kl_mean: float  # nats
    kl_p99: float
    top1: float  # fraction of positions with the same argmax


def compare_logits(reference: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, n_vocab) logits of the reference and of another model -> per position
    KL(softmax(reference) || softmax(logits)) in nats (float64) and whether the argmaxes agree."""
    p = _log_softmax(reference)
    q = _log_softmax(logits)
    kl = np.einsum("ij,ij->i", np.exp(p), p - q)
    return np.maximum(kl, 0.0), reference.argmax(-1) == logits.argmax(-1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def text_tokens(path, text: str | None = None) -> list[int]:
    """The report text (or `text`) tokenized with the tokenizer of GGUF file `path`."""
    from pyphi.tokenizer import Tokenizer

    text = TEXT.read_text(encoding="utf-8") if text is None else text
    return Tokenizer.from_path(path).encode(text)


def report(reference, paths, *, tokens=None, window: int = WINDOW, n_threads: int | None = None) -> list[Quality]:
    """Quality of each GGUF file in `paths` against the GGUF file `reference` over `tokens`
    (default: the report text). All models stay open and read the text together, a STEP of
    tokens at a time, so only (STEP, n_vocab) logits per model are ever held."""
    from pyphi.model import Model

    tokens = text_tokens(reference) if tokens is None else list(tokens)
    ref_model = Model(reference, n_ctx=window, n_threads=n_threads)
    models = []
    try:
        for path in paths:
            models.append(Model(path, n_ctx=window, n_threads=n_threads))
        kls = [[] for _ in models]
        agree = [[] for _ in models]
        for start in range(0, len(tokens), window):
            for model in (ref_model, *models):
                model.reset()
            piece = tokens[start : start + window]
            for first in range(0, len(piece), STEP):
                step = piece[first : first + STEP]
                ref_logits = ref_model.eval(step, logits="all")
                for i, model in enumerate(models):
                    kl, same = compare_logits(ref_logits, model.eval(step, logits="all"))
                    kls[i].append(kl)
                    agree[i].append(same)
        results = []
        for path, model, kl, same in zip(paths, models, kls, agree):
            kl, same = np.concatenate(kl), np.concatenate(same)
            results.append(
                Quality(
                    os.fspath(path),
                    Path(path).stat().st_size,
                    int(kl.size),
                    float(kl.mean()),
                    float(np.percentile(kl, PERCENTILE)),
                    float(same.mean()),
                )
            )
        return results
    finally:
        for model in (ref_model, *models):
            model.close()


def format_table(results: list[Quality], reference) -> str:
    """A Markdown table, one row per file."""
    lines = [
        f"quality vs {os.fspath(reference)} ({results[0].n_positions if results else 0} positions)",
        "",
        "| file | size | KL mean | KL p99 | top-1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {Path(r.path).name} | {r.size_bytes / 1e6:.1f} MB | {r.kl_mean:.3g} | {r.kl_p99:.3g} | "
            f"{100 * r.top1:.1f}% |"
        )
    return "\n".join(lines)
