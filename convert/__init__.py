"""pyphi.convert: a Hugging Face Phi3ForCausalLM checkpoint -> one GGUF file, as llama.cpp's
converter writes it (SPEC §5), plus Q8_0 / Q4_0 output done by the C core.

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
import os
import tempfile
from pathlib import Path

import numpy as np

from pyphi.gguf_format import GGML_BLOCK_SIZES, GGML_TYPE_NAMES

from . import model_card, naming
from .checkpoint import Checkpoint, TensorInfo
from .errors import ConvertError
from .gguf_writer import GGUFWriter
from .phi3 import Phi3
from .vocab import load_vocab

__all__ = ["OUT_TYPES", "ConvertError", "convert"]

_T = {name: type_id for type_id, name in GGML_TYPE_NAMES.items()}
F32, F16, BF16, Q8_0, Q4_0 = _T["F32"], _T["F16"], _T["BF16"], _T["Q8_0"], _T["Q4_0"]

# --type -> (ggml type of the weight matrices, general.file_type: llama.cpp's LlamaFileType
# ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q4_0 2, MOSTLY_Q8_0 7, MOSTLY_BF16 32; gguf-py constants.py).
OUT_TYPES = {
    "f32": (F32, 0),
    "f16": (F16, 1),
    "bf16": (BF16, 32),
    "q8_0": (Q8_0, 7),
    "q4_0": (Q4_0, 2),
}

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


def tensor_type(name: str, ne: tuple[int, ...], out_type: str, tied: bool) -> int:
    """The ggml type a tensor gets for `--type out_type` (llama.cpp conversion/base.py
    `prepare_tensors`, plus the Q4_0 rule below)."""
    # "Most of the codebase that takes in 1D tensors or norms only handles F32 tensors".
    if len(ne) == 1 or name.endswith("_norm.weight"):
        return F32
    ggml_type = OUT_TYPES[out_type][0]
    # The output head is the tensor most sensitive to quantization: llama-quantize gives it (and
    # a tied token_embd, which serves as the head) Q6_K in a Q4_0 file (src/llama-quant.cpp,
    # "quantize the token embeddings with the quantization of the output tensor"). pyphi has no
    # Q6_K; Q8_0 is what llama-quantize itself falls back to when Q6_K does not fit a tensor,
    # and it keeps the head near-lossless for 0.31 GB more than Q4_0 on Phi-4-mini.
    if ggml_type == Q4_0 and (name == "output.weight" or (tied and name == "token_embd.weight")):
        return Q8_0
    # gguf-py refuses rows that do not fill whole blocks; llama.cpp then writes F16.
    if ne[0] % GGML_BLOCK_SIZES[ggml_type][0]:
        return F16
    return ggml_type


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
    (a key of OUT_TYPES). Raises ConvertError for bad input or an existing output (without
    `force`); on any failure no output or temporary file is left. Returns the output path."""
    if out_type not in OUT_TYPES:
        raise ValueError(f"out_type {out_type!r}: expected one of {', '.join(OUT_TYPES)}")
    out_path = Path(out_path)
    _check_output(out_path, force)
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
        _write_atomically(out_path, force, lambda f: _write(f, writer, plan, checkpoint, n_threads, progress))
    return out_path


def _check_output(out_path: Path, force: bool) -> None:
    if out_path.is_dir():
        raise ConvertError(out_path, "is a directory")
    if out_path.exists() and not force:
        raise ConvertError(out_path, "exists (use --force to overwrite it)")
    if not out_path.parent.is_dir():
        raise ConvertError(out_path.parent, "output directory does not exist")


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
        plan.append(_PlannedTensor(name, ne, tensor_type(name, ne, out_type, model.tied), source))
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
    model.add_hparams(writer, OUT_TYPES[out_type][1])
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


def _write_atomically(out_path: Path, force: bool, write) -> None:
    """Run `write(file)` on a temporary file in the output's directory; fsync it, then rename it
    to `out_path` (the file appears whole or not at all). The temporary file is removed on any
    failure, including KeyboardInterrupt."""
    try:
        fd, tmp_name = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    except OSError as e:
        raise ConvertError(out_path.parent, f"cannot create a file here: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            if out_path.exists() and not force:
                raise ConvertError(out_path, "appeared during the conversion (use --force to overwrite it)")
            os.replace(tmp, out_path)
        except OSError as e:
            raise ConvertError(out_path, f"cannot write: {e.strerror or e}") from None
        _fsync_directory(out_path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(path: Path) -> None:
    """Make the rename durable (POSIX); not possible, and not needed, on Windows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
