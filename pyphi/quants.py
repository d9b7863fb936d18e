"""numpy wrappers of libpyphi's tensor codecs: row sizes, quantize, dequantize, convert rows.

Rows are the last axis. Quantized data is uint8 of shape (..., row_bytes), byte for byte what
gguf.quants.quantize returns and what a GGUF file stores. Type ids are libpyphi's enum pyphi_type
(ggml's ids), e.g. `lib.PYPHI_TYPE_Q4_0`; a lowercase name such as "q4_0" is accepted as well.
"""

from __future__ import annotations

import numpy as np

from ._native import check, ffi, lib
from .threadpool import ThreadPool, pool_handle

_TYPE_PREFIX = "PYPHI_TYPE_"


def type_names() -> dict[int, str]:
    """{type id: lowercase name} for every type libpyphi stores (quantizes and dequantizes), e.g.
    {2: "q4_0", ...}. The header may name types a build does not store yet; they are left out."""
    elements = ffi.typeof("enum pyphi_type").elements
    return {value: name[len(_TYPE_PREFIX) :].lower() for value, name in elements.items()
            if lib.pyphi_type_block_values(value) > 0}


def type_id(t: int | str) -> int:
    """The enum pyphi_type value of `t` (an id, or a name like "bf16")."""
    names = type_names()
    if isinstance(t, str):
        by_name = {name: value for value, name in names.items()}
        if t.lower() not in by_name:
            raise ValueError(f"unknown type {t!r}; known: {', '.join(by_name)}")
        return by_name[t.lower()]
    if int(t) not in names:
        raise ValueError(f"unknown type id {t!r}")
    return int(t)


def block_values(t: int | str) -> int:
    return int(lib.pyphi_type_block_values(type_id(t)))


def block_bytes(t: int | str) -> int:
    return int(lib.pyphi_type_block_bytes(type_id(t)))


def row_bytes(t: int | str, n: int) -> int:
    """Bytes of one row of `n` values in type `t` (n must be a multiple of the block)."""
    return check(lib.pyphi_row_bytes(type_id(t), n), f"row_bytes({t!r}, {n})")


def _element_alignment(t: int) -> int:
    return 4 if t in (lib.PYPHI_TYPE_F32, lib.PYPHI_TYPE_Q8_K) else 2


def as_row_bytes(data, alignment: int) -> np.ndarray:
    """A C-contiguous uint8 view of a bytes-like object or array (copied only if it is not
    contiguous or not aligned to `alignment` bytes, as the C functions require)."""
    if isinstance(data, np.ndarray):
        array = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    else:
        array = np.frombuffer(data, dtype=np.uint8)
    if array.ctypes.data % alignment:
        array = array.copy()  # numpy allocations are at least 16-byte aligned
    return array


def convert_rows(pool: ThreadPool | None, src_type: int | str, src, dst_type: int | str, n: int) -> np.ndarray:
    """Rows of `n` values in `src_type` (a bytes-like or array holding whole rows) -> uint8 array
    (rows, row_bytes(dst_type, n)): each row dequantized to float32 then quantized, on the pool."""
    src_t, dst_t = type_id(src_type), type_id(dst_type)
    src_rb, dst_rb = row_bytes(src_t, n), row_bytes(dst_t, n)
    data = as_row_bytes(src, _element_alignment(src_t))
    if src_rb == 0:
        raise ValueError("convert_rows: n must be positive")
    if data.size % src_rb:
        raise ValueError(f"convert_rows: {data.size} bytes is not a whole number of {src_rb}-byte rows")
    n_rows = data.size // src_rb
    out = np.empty((n_rows, dst_rb), dtype=np.uint8)
    check(
        lib.pyphi_convert_rows(
            pool_handle(pool),
            src_t,
            ffi.from_buffer("uint8_t[]", data),
            dst_t,
            ffi.from_buffer("uint8_t[]", out, require_writable=True),
            n_rows,
            n,
        ),
        "convert_rows",
    )
    return out


def quantize(t: int | str, x, pool: ThreadPool | None = None) -> np.ndarray:
    """float array (..., n) -> uint8 (..., row_bytes(t, n)), bit-identical to
    gguf.quants.quantize (the input is first cast to float32, as gguf does)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0:
        raise ValueError("quantize: need at least one axis")
    n = x.shape[-1]
    rb = row_bytes(t, n)
    if x.size == 0:
        return np.empty((*x.shape[:-1], rb), dtype=np.uint8)
    out = convert_rows(pool, lib.PYPHI_TYPE_F32, x, t, n)
    return out.reshape(*x.shape[:-1], rb)


def dequantize(t: int | str, data, n: int, pool: ThreadPool | None = None) -> np.ndarray:
    """Rows of `n` values in type `t` (bytes-like or uint8 array) -> float32 (rows, n), exactly
    gguf.quants.dequantize."""
    data = as_row_bytes(data, _element_alignment(type_id(t)))
    if n == 0 or data.size == 0:
        return np.empty((0, n), dtype=np.float32)
    out = convert_rows(pool, t, data, lib.PYPHI_TYPE_F32, n)
    return out.view(np.float32)
