"""The legacy block formats (Q4_1, Q5_0, Q5_1, Q8_1) against ggml's own functions (marker `peer`).

A second oracle beside gguf-py's numpy (test_quants.py) and the hand-derived references
(test_kernels.py): ggml's reference codecs (libggml-base: quantize_row_*_ref, dequantize_row_*)
and its CPU dot products (libggml-cpu: ggml_vec_dot_*, the SIMD versions llama-cpp-python's
build dispatches to), called through ctypes from llama_cpp's bundled libraries.
Where ggml and gguf-py differ, pyphi follows gguf-py, so inputs here avoid those spots: ggml's
codecs cast with (int8_t) where numpy truncates first (differs, and is UB in C, only for
non-finite products: inputs are finite), and ggml keeps the first of equal extremes where numpy
keeps the last (differs only in the sign of a zero scale or minimum: no -0.0 in the inputs).
Dots: ggml sums in its own order, so both results must lie within kernels.h's bound of the exact
value (test_kernels.exact_and_bound). Not ggml's *_generic dots: in this build
ggml_vec_dot_q5_0_q8_0_generic returns wrong values (-61451 for a dot of 3061 on integer data;
its SIMD twin is right), so the shipped generic code is no oracle.
"""

from __future__ import annotations

import ctypes
import pathlib

import numpy as np
import pytest
from test_kernels import ISAS, encode_activations, exact_and_bound, random_case
from test_quants import corner_blocks

from pyphi import cpu, kernels, quants
from pyphi._native import lib

pytestmark = pytest.mark.peer

CODECS = {  # our type -> ggml's function-name stem
    lib.PYPHI_TYPE_Q4_1: "q4_1",
    lib.PYPHI_TYPE_Q5_0: "q5_0",
    lib.PYPHI_TYPE_Q5_1: "q5_1",
}
DOTS = {  # weight type -> ggml's vec_dot name
    lib.PYPHI_TYPE_Q4_1: "ggml_vec_dot_q4_1_q8_1",
    lib.PYPHI_TYPE_Q5_0: "ggml_vec_dot_q5_0_q8_0",
    lib.PYPHI_TYPE_Q5_1: "ggml_vec_dot_q5_1_q8_1",
}
TYPE_NAME = quants.type_names().get


@pytest.fixture(scope="module")
def ggml():
    """(libggml-base, libggml-cpu) from llama_cpp's bundled build, CPU backend initialised."""
    llama_cpp = pytest.importorskip("llama_cpp")
    libdir = pathlib.Path(llama_cpp.__file__).parent / "lib"
    base = ctypes.CDLL(str(libdir / "libggml-base.so"))
    cpu_lib = ctypes.CDLL(str(libdir / "libggml-cpu.so"))
    cpu_lib.ggml_cpu_init()  # fills the fp16 tables the CPU kernels read
    return base, cpu_lib


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return a.ctypes.data_as(ctypes.c_void_p)


def ggml_quantize(base, name: str, x: np.ndarray, row_bytes: int) -> np.ndarray:
    out = np.zeros(row_bytes, np.uint8)
    getattr(base, f"quantize_row_{name}_ref")(_ptr(x), _ptr(out), ctypes.c_int64(x.size))
    return out


def finite_corner_blocks(seed: int, n_blocks: int) -> np.ndarray:
    x = corner_blocks(np.random.default_rng(seed), n_blocks).reshape(-1, 32)
    return np.ascontiguousarray(x[np.isfinite(x).all(axis=1)].reshape(-1)) + np.float32(0.0)  # -0.0 -> 0.0


@pytest.mark.parametrize("t", list(CODECS), ids=TYPE_NAME)
def test_codecs_match_ggml(ggml, t):
    base, _ = ggml
    x = finite_corner_blocks(t, 1000)
    ours = quants.quantize(t, x)
    theirs = ggml_quantize(base, CODECS[t], x, ours.size)
    bad = np.flatnonzero(ours != theirs)
    assert bad.size == 0, f"first differing bytes {bad[:8]} of {ours.size}"
    back = np.zeros(x.size, np.float32)
    getattr(base, f"dequantize_row_{CODECS[t]}")(_ptr(theirs), _ptr(back), ctypes.c_int64(x.size))
    assert np.array_equal(quants.dequantize(t, theirs, x.size)[0].view(np.uint32), back.view(np.uint32))


@pytest.mark.parametrize("isa", ISAS)
def test_q8_1_matches_ggml(ggml, isa):
    base, _ = ggml
    x = finite_corner_blocks(99, 1000)
    with cpu.forced_isa(isa):
        ours = quants.quantize(lib.PYPHI_TYPE_Q8_1, x)
    assert np.array_equal(ours, ggml_quantize(base, "q8_1", x, ours.size))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wtype", list(DOTS), ids=TYPE_NAME)
def test_vec_dot_matches_ggml(ggml, wtype, isa):
    """Ours (each ISA) and ggml's within the bound of the exact value, on the same bytes."""
    _, cpu_lib = ggml
    rng = np.random.default_rng(800 + wtype)
    with cpu.forced_isa(isa):
        for n_in in (32, 32 * 7, 32 * 96, 32 * 97):
            wq, x = random_case(rng, wtype, 1, n_in, 1)
            a = np.ascontiguousarray(encode_activations(x, wtype)[0])
            w = np.ascontiguousarray(wq[0])
            exact, tol = exact_and_bound(wtype, wq, x)
            ours = kernels.vec_dot(wtype, w, a)
            s = ctypes.c_float()
            getattr(cpu_lib, DOTS[wtype])(ctypes.c_int(n_in), ctypes.byref(s), ctypes.c_size_t(0), _ptr(w),
                                          ctypes.c_size_t(0), _ptr(a), ctypes.c_size_t(0), ctypes.c_int(1))
            assert abs(s.value - exact[0, 0]) <= tol[0, 0], n_in
            assert abs(ours - exact[0, 0]) <= tol[0, 0], n_in
