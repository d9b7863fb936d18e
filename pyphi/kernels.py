"""numpy wrappers of libpyphi's dot product and matmul (the kernels of the ISA in use now).

Weights are rows in a weight type (uint8 data of shape (n_out, row_bytes)); activations are
float32 and are quantized on the fly to the weight type's activation format
(`vec_dot_type`), exactly as the C matmul does.
"""

from __future__ import annotations

import numpy as np

from ._native import check, ffi, lib
from .quants import as_row_bytes, block_bytes, block_values, quantize, row_bytes, type_id
from .threadpool import ThreadPool, pool_handle


def vec_dot_type(wtype: int | str) -> int:
    """The type activations take when dotted with weights of `wtype` (Q8_0, Q8_1 or F32)."""
    return check(lib.pyphi_vec_dot_type(type_id(wtype)), "vec_dot_type")


def vec_dot(wtype: int | str, w_row, a_row) -> float:
    """Dot of one weight row (bytes in `wtype`) with one activation row.

    `a_row` is either float32 values (quantized here first if the activation type is quantized), or
    bytes already in vec_dot_type(wtype)."""
    wt = type_id(wtype)
    at = vec_dot_type(wt)
    w = as_row_bytes(w_row, 4)
    if w.size % block_bytes(wt):
        raise ValueError("vec_dot: w_row is not a whole number of blocks")
    n = w.size // block_bytes(wt) * block_values(wt)
    if isinstance(a_row, np.ndarray) and a_row.dtype != np.uint8:
        a_row = quantize(at, np.asarray(a_row, dtype=np.float32).reshape(-1))
    a = as_row_bytes(a_row, 4)
    if a.size != row_bytes(at, n):
        raise ValueError(f"vec_dot: a_row has {a.size} bytes, expected {row_bytes(at, n)}")
    out = ffi.new("float *")
    check(
        lib.pyphi_vec_dot(wt, ffi.from_buffer("uint8_t[]", w), ffi.from_buffer("uint8_t[]", a), n, out),
        "vec_dot",
    )
    return float(out[0])


def softmax(x, scale: float = 1.0) -> np.ndarray:
    """softmax(scale * x) of a 1-D float32 row with the current ISA's kernel (attention's)."""
    y = np.array(x, dtype=np.float32).reshape(-1)
    check(lib.pyphi_softmax(ffi.from_buffer("float[]", y, require_writable=True), y.size, scale), "softmax")
    return y


def weighted_rows(vtype: int | str, v, p) -> np.ndarray:
    """p (n_q, n_rows) float32 . v (n_rows, n) with the current ISA's kernel (attention's scores .
    values) -> float32 (n_q, n). v: float32 or float16 values for F32 / F16."""
    vt = type_id(vtype)
    dtype = {type_id("F32"): np.float32, type_id("F16"): np.float16}.get(vt)
    if dtype is None:
        raise ValueError("weighted_rows: vtype must be F32 or F16")
    v = np.ascontiguousarray(v, dtype=dtype)
    p = np.ascontiguousarray(p, dtype=np.float32)
    if v.ndim != 2 or p.ndim != 2 or p.shape[1] != v.shape[0]:
        raise ValueError(f"weighted_rows: p {p.shape} and v {v.shape} do not chain")
    out = np.empty((p.shape[0], v.shape[1]), np.float32)
    check(
        lib.pyphi_weighted_rows(vt, ffi.from_buffer("uint8_t[]", v), v.shape[0], v.shape[1],
                                ffi.from_buffer("float[]", p), p.shape[0],
                                ffi.from_buffer("float[]", out, require_writable=True)),
        "weighted_rows",
    )
    return out


def matmul(pool: ThreadPool | None, wtype: int | str, w, x) -> np.ndarray:
    """y = x . w^T: x float (T, n_in) (or (n_in,)), w the (n_out, n_in) weights in `wtype` as
    uint8 (n_out, row_bytes) or any bytes-like holding whole rows -> float32 (T, n_out)
    (or (n_out,) for a 1-D x)."""
    wt = type_id(wtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    squeeze = x.ndim == 1
    x2 = x.reshape(1, -1) if squeeze else x
    if x2.ndim != 2:
        raise ValueError(f"matmul: x must be 1-D or 2-D, got shape {x.shape}")
    n_tokens, n_in = x2.shape
    rb = row_bytes(wt, n_in)
    wb = as_row_bytes(w, 4)
    if rb == 0 or wb.size % rb:
        raise ValueError(f"matmul: w has {wb.size} bytes, not whole rows of {rb} bytes")
    n_out = wb.size // rb
    y = np.empty((n_tokens, n_out), dtype=np.float32)
    check(
        lib.pyphi_matmul(
            pool_handle(pool),
            wt,
            ffi.from_buffer("uint8_t[]", wb),
            n_out,
            n_in,
            ffi.from_buffer("float[]", x2),
            n_tokens,
            ffi.from_buffer("float[]", y, require_writable=True),
        ),
        "matmul",
    )
    return y[0] if squeeze else y


def pack(wtype: int | str, w, n_in: int) -> np.ndarray:
    """Q4_0/Q8_0 (n_out a multiple of 16) or Q4_K/Q5_K/Q6_K (n_out a multiple of 4) weights
    (n_out, row_bytes) in ggml's layout -> the same bytes in the packed layout the model
    computes with (csrc/quants.h)."""
    wt = type_id(wtype)
    rb = row_bytes(wt, n_in)
    wb = as_row_bytes(w, 4)
    n_out = wb.size // rb
    out = np.empty(check(lib.pyphi_packed_bytes(wt, n_out, n_in), "packed_bytes"), dtype=np.uint8)
    check(lib.pyphi_pack_matrix(wt, ffi.from_buffer("uint8_t[]", wb), n_out, n_in,
                                ffi.from_buffer("uint8_t[]", out, require_writable=True)), "pack")
    return out


def matmul_packed(pool: ThreadPool | None, wtype: int | str, packed, n_out: int, x) -> np.ndarray:
    """y = x . w^T for w packed by `pack`: float32 (T, n_out); each element is, bit for bit,
    the scalar vec_dot's value (Q4_0/Q8_0) or the current ISA's vec_dot's (the K-quants)."""
    return _packed_product("matmul_packed", pool, wtype, packed, n_out, x)


def matmul_as_packed(pool: ThreadPool | None, wtype: int | str, w, n_out: int, x) -> np.ndarray:
    """`matmul_packed`'s result, bit for bit, from w in ggml's layout, as the model computes while
    its packed copy is being made."""
    return _packed_product("matmul_as_packed", pool, wtype, w, n_out, x)


def _packed_product(name: str, pool: ThreadPool | None, wtype: int | str, w, n_out: int, x) -> np.ndarray:
    wt = type_id(wtype)
    x2 = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    n_tokens, n_in = x2.shape
    y = np.empty((n_tokens, n_out), dtype=np.float32)
    check(getattr(lib, "pyphi_" + name)(pool_handle(pool), wt, ffi.from_buffer("uint8_t[]", as_row_bytes(w, 4)), n_out, n_in,
             ffi.from_buffer("float[]", x2), n_tokens, ffi.from_buffer("float[]", y, require_writable=True)),
          name)
    return y
