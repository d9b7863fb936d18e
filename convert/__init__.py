"""pyphi.convert: a Hugging Face Phi3ForCausalLM checkpoint -> one GGUF file, as llama.cpp's
converter writes it (SPEC §5), in a float type or quantized by the C core in llama-quantize's
per-tensor mixes (mixes.py); requantize.py does the same from a GGUF file, report.py measures
the result.

The steps: read and check everything first (config, shard headers, tensor shapes, tokenizer
files, the output path), so that bad input fails before a byte is written; then write the GGUF
header, then stream the tensors shard by shard, a chunk of rows at a time (mapped source rows ->
`pyphi.quants.convert_rows` -> the file), into a temporary file beside the output that is fsynced
and renamed into place at the end. Peak memory is a few chunks, whatever the checkpoint size.

What this is not: the runtime. Nothing here imports the model, tokenizer or generation code;
only the C core's row conversion and its thread pool, loaded when a conversion starts.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from pyphi.gguf_format import GGML_TYPE_NAMES

from . import model_card, naming
from .checkpoint import Checkpoint, TensorInfo
from .errors import ConvertError
from .gguf_writer import GGUFWriter
from .mixes import MIXES, tensor_type
from .output import check_output, check_types, write_atomically
from .phi3 import Phi3
from .vocab import load_vocab

__all__ = ["OUT_TYPES", "ConvertError", "convert"]

_T = {name: type_id for type_id, name in GGML_TYPE_NAMES.items()}
F32 = _T["F32"]

OUT_TYPES = list(MIXES)  # the --type names (mixes.py says what each writes)

# One class per architecture, keyed by config.json's `architectures` entry.
ARCHITECTURES = {name: cls for cls in (Phi3,) for name in cls.HF_ARCHITECTURES}

GGML_QUANT_VERSION = 2  # general.quantization_version (gguf-py constants.py GGML_QUANT_VERSION)

# Source bytes converted per call: big enough to keep the thread pool busy, small enough that
# the 1.2 GB embedding of the real model never sits in memory whole.
CHUNK_BYTES = 32 << 20


@dataclasses.dataclass(frozen=True)
class _PlannedTensor:
    name: str  # GGUF name
    ne: tuple[int, ...]  # ggml shape: ne[0] is the contiguous dimension (HF shape reversed)
    ggml_type: int
    source: TensorInfo | np.ndarray  # a checkpoint tensor, or float32 values made from the config


def convert(
    hf_dir,
    out_path,
    out_type: str,
    *,
    force: bool = False,
    n_threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Convert the checkpoint in `hf_dir` to the GGUF file `out_path` with weights in `out_type`
    (one of OUT_TYPES). Raises ConvertError for bad input or an existing output (without
    `force`); on any failure no output or temporary file is left. Returns the output path."""
    if out_type not in OUT_TYPES:
        raise ValueError(f"out_type {out_type!r}: expected one of {', '.join(OUT_TYPES)}")
    out_path = Path(out_path)
    check_output(out_path, force)
    with Checkpoint(hf_dir) as checkpoint:
        model = _architecture(checkpoint)
        model.check_tensors(checkpoint.tensors)
        vocab = load_vocab(checkpoint.dir, model.n_vocab, checkpoint.config)
        eot = model.eot_token_id(vocab)
        if eot is not None:
            vocab.special_ids["eot"] = eot
        plan = _plan(model, checkpoint, out_type)
        writer = GGUFWriter()
        _add_header(writer, model, vocab, checkpoint, plan, out_type)
        write_atomically(out_path, force, lambda f: _write(f, writer, plan, checkpoint, n_threads, progress))
    return out_path


def _architecture(checkpoint: Checkpoint):
    names = checkpoint.config.get("architectures")
    supported = [name for name in names if name in ARCHITECTURES] if isinstance(names, list) else []
    if not supported:
        raise ConvertError(
            checkpoint.config_path,
            f"'architectures' is {names!r}, expected {' or '.join(ARCHITECTURES)}",
        )
    return ARCHITECTURES[supported[0]](checkpoint.config, checkpoint.config_path)


def _plan(model, checkpoint: Checkpoint, out_type: str) -> list[_PlannedTensor]:
    """Every tensor in file order: the config-made tensors first, then the checkpoint's in the
    order they sit in the shards (the order llama.cpp's converter uses, and sequential reads)."""
    sources = model.extra_tensors()
    sources += [(model.gguf_name(hf_name), info) for hf_name, info in checkpoint.tensors.items()]
    plan = []
    for name, source in sources:
        ne = tuple(reversed(source.shape))
        ggml_type = tensor_type(name, ne, out_type, model.n_layer, model.tied)
        plan.append(_PlannedTensor(name, ne, F32 if ggml_type is None else ggml_type, source))
    check_types([(t.name, t.ggml_type) for t in plan], out_type, checkpoint.dir)
    return plan


def _add_header(
    writer: GGUFWriter, model, vocab, checkpoint: Checkpoint, plan: list[_PlannedTensor], out_type: str
) -> None:
    """Every key value and tensor info, in the order llama.cpp's converter writes them."""
    writer.add_string("general.architecture", model.ARCH)
    model.add_rope_scaling(writer)
    writer.add_string("general.type", "model")
    total_params = sum(math.prod(t.ne) for t in plan)
    naming.add_to(writer, naming.model_name(checkpoint.config, checkpoint.dir, total_params))
    model_card.add_to(writer, model_card.read_model_card(checkpoint.dir))
    model.add_hparams(writer, MIXES[out_type].file_type)
    writer.add_uint32("general.quantization_version", GGML_QUANT_VERSION)
    vocab.add_to(writer)
    for t in plan:
        writer.add_tensor(t.name, t.ne, t.ggml_type)


def _write(
    f, writer: GGUFWriter, plan, checkpoint: Checkpoint, n_threads: int | None, progress: bool
) -> None:
    from tqdm import tqdm

    from pyphi.quants import convert_rows
    from pyphi.threadpool import ThreadPool

    writer.write_header(f)
    total = sum(t.source.nbytes for t in plan)
    with (
        ThreadPool(n_threads) as pool,
        tqdm(
            total=total, unit="B", unit_scale=True, disable=not progress, desc="converting", leave=False
        ) as bar,
    ):
        for t in plan:
            for src_type, rows in _source_chunks(checkpoint, t.source):
                writer.write_data(convert_rows(pool, src_type, rows, t.ggml_type, t.ne[0]))
                bar.update(rows.nbytes)
            writer.end_tensor()
    writer.finish()


def _source_chunks(checkpoint: Checkpoint, source: TensorInfo | np.ndarray):
    """(ggml type, array of whole rows) pieces of a tensor's source data. Checkpoint rows are
    views of the mapped shard, CHUNK_BYTES at a time; each chunk's pages are dropped from the
    resident set once the caller is done with it."""
    if isinstance(source, np.ndarray):
        yield F32, source
        return
    rows_per_chunk = max(1, CHUNK_BYTES // source.row_bytes)
    for first in range(0, source.n_rows, rows_per_chunk):
        count = min(rows_per_chunk, source.n_rows - first)
        yield source.ggml_type, checkpoint.rows(source, first, count)
        checkpoint.release(source, first, count)
