"""Requantize: a phi3 GGUF file (F32, F16, BF16 or Q8_0 weights) -> a GGUF file of another --type.

What llama-quantize does with such a file (src/llama-quant.cpp `llama_model_quantize_impl`): every
key value is copied, with general.file_type set to the new type's and general.quantization_version
to 2 (both keep their place here; llama.cpp moves them to the end); each tensor gets the type
mixes.py chooses, and keeps its bytes when that is the type it has; a 1-D tensor or a norm is
copied. Unlike llama-quantize, tensors stay in the source file's order.

Tensors are read from the mapped source a chunk of rows at a time, dequantized to float32 and
quantized by the C core (`pyphi.quants.convert_rows`), and written to a temporary file renamed
into place at the end: memory stays a few chunks, whatever the model size.

A Q8_0 source works but loses quality twice (its rounding, then the new type's), so the caller is
warned; any other quantized source is refused, as it would lose more.

What this is not: the choice of types (mixes.py) or the checkpoint path (convert/__init__.py).
"""

from __future__ import annotations

import dataclasses
import mmap
from pathlib import Path

import numpy as np

from pyphi.gguf_format import GGML_TYPE_NAMES, ValueType
from pyphi.gguf_reader import GGUFError, GGUFFile, TensorInfo

from .errors import ConvertError
from .gguf_writer import GGUFWriter
from .mixes import MIXES, tensor_type
from .output import check_output, check_types, write_atomically

_T = {name: type_id for type_id, name in GGML_TYPE_NAMES.items()}
SOURCE_TYPES = (_T["F32"], _T["F16"], _T["BF16"], _T["Q8_0"])  # what may be requantized
LOSSY_SOURCE = _T["Q8_0"]
ARCH = "phi3"  # mixes.py has llama.cpp's rules for this architecture only
FILE_TYPE_KEY = "general.file_type"
QUANT_VERSION_KEY = "general.quantization_version"
GGML_QUANT_VERSION = 2  # gguf-py constants.py GGML_QUANT_VERSION
CHUNK_BYTES = 32 << 20  # source bytes per convert_rows call (as convert/__init__.py)


@dataclasses.dataclass(frozen=True)
class _PlannedTensor:
    info: TensorInfo  # in the source file: name, ggml type, ggml shape (ne[0] first), offset
    ggml_type: int  # in the output


def requantize(
    in_path,
    out_path,
    out_type: str,
    *,
    force: bool = False,
    n_threads: int | None = None,
    progress: bool = True,
    warn=None,
) -> Path:
    """Write `in_path` (a phi3 GGUF file) as `out_path` with weights in `out_type` (a key of
    mixes.MIXES). `warn(message)` is called for a lossy but accepted source (Q8_0). Raises
    ConvertError for bad input; on any failure no output or temporary file is left."""
    if out_type not in MIXES:
        raise ValueError(f"out_type {out_type!r}: expected one of {', '.join(MIXES)}")
    in_path, out_path = Path(in_path), Path(out_path)
    check_output(out_path, force)
    if out_path.exists() and out_path.resolve() == in_path.resolve():
        raise ConvertError(out_path, "is the input file")
    try:
        source = GGUFFile(in_path)
    except GGUFError as e:
        raise ConvertError(in_path, str(e).removeprefix(f"{in_path}: ")) from None
    except OSError as e:
        raise ConvertError(in_path, f"cannot open: {e.strerror or e}") from None
    with source:
        plan = _plan(source, in_path, out_type)
        if warn is not None and any(t.info.type == LOSSY_SOURCE != t.ggml_type for t in plan):
            warn(f"{in_path}: requantizing Q8_0 weights loses quality twice; a F16/BF16 source is better")
        writer = _header(source, plan, out_type)
        with open(in_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            write_atomically(out_path, force, lambda out: _write(out, writer, plan, data, n_threads, progress))
    return out_path


def _plan(source: GGUFFile, path: Path, out_type: str) -> list[_PlannedTensor]:
    arch = source.get("general.architecture")
    if arch != ARCH:
        raise ConvertError(path, f"'general.architecture' is {arch!r}, expected {ARCH!r}")
    n_layer = source.get(f"{ARCH}.block_count")
    if not isinstance(n_layer, int) or n_layer < 1:
        raise ConvertError(path, f"'{ARCH}.block_count' is {n_layer!r}, expected a positive integer")
    tied = "output.weight" not in source.tensors
    plan = []
    for info in source.tensors.values():
        wanted = tensor_type(info.name, info.shape, out_type, n_layer, tied)
        ggml_type = info.type if wanted is None else wanted
        if ggml_type != info.type and info.type not in SOURCE_TYPES:
            raise ConvertError(
                path,
                f"tensor {info.name!r} is {GGML_TYPE_NAMES.get(info.type, info.type)}; requantizing "
                "needs F32, F16, BF16 or Q8_0 weights (convert the original checkpoint instead)",
            )
        plan.append(_PlannedTensor(info, ggml_type))
    check_types([(t.info.name, t.ggml_type) for t in plan], out_type, path)
    return plan


def _header(source: GGUFFile, plan: list[_PlannedTensor], out_type: str) -> GGUFWriter:
    writer = GGUFWriter(alignment=source.alignment)
    values = dict(source.metadata)
    values[FILE_TYPE_KEY] = MIXES[out_type].file_type
    values[QUANT_VERSION_KEY] = GGML_QUANT_VERSION
    keys = list(source.metadata) + [k for k in (QUANT_VERSION_KEY, FILE_TYPE_KEY) if k not in source.metadata]
    for key in keys:
        if key in (FILE_TYPE_KEY, QUANT_VERSION_KEY):
            writer.add_uint32(key, values[key])
        elif source.value_type(key) is not ValueType.ARRAY:
            value_type = source.value_type(key)
            if value_type is ValueType.STRING:
                writer.add_string(key, values[key])
            else:
                writer.add_scalar(key, value_type, values[key])
        else:
            element_type = source.element_type(key)
            if element_type is ValueType.ARRAY:
                raise ConvertError(source.path, f"key {key!r} is an array of arrays, which pyphi does not copy")
            writer.add_array(key, element_type, values[key])
    for t in plan:
        writer.add_tensor(t.info.name, t.info.shape, t.ggml_type)
    return writer


def _write(out, writer: GGUFWriter, plan, data: mmap.mmap, n_threads: int | None, progress: bool) -> None:
    from tqdm import tqdm

    from pyphi.quants import convert_rows, row_bytes
    from pyphi.threadpool import ThreadPool

    writer.write_header(out)
    total = sum(t.info.nbytes for t in plan)
    with (
        ThreadPool(n_threads) as pool,
        tqdm(total=total, unit="B", unit_scale=True, disable=not progress, desc="requantizing", leave=False) as bar,
    ):
        for t in plan:
            n = t.info.shape[0]
            src_row = row_bytes(t.info.type, n)
            rows_per_chunk = max(1, CHUNK_BYTES // src_row)
            for begin in range(t.info.offset, t.info.offset + t.info.nbytes, rows_per_chunk * src_row):
                length = min(rows_per_chunk * src_row, t.info.offset + t.info.nbytes - begin)
                rows = np.frombuffer(data, dtype=np.uint8, count=length, offset=begin)
                if t.ggml_type == t.info.type:
                    writer.write_data(rows)
                else:
                    writer.write_data(convert_rows(pool, t.info.type, rows, t.ggml_type, n))
                del rows
                _release(data, begin, length)
                bar.update(length)
            writer.end_tensor()
    writer.finish()


def _release(data: mmap.mmap, begin: int, length: int) -> None:
    """Drop the pages just read from the resident set (as checkpoint.py does for the shards), so
    that requantizing a multi-GB file does not grow RSS to its size."""
    if hasattr(data, "madvise"):
        start = begin - begin % mmap.PAGESIZE
        data.madvise(mmap.MADV_DONTNEED, start, begin + length - start)
