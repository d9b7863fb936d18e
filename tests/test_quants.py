"""libpyphi's tensor codecs against gguf-py, the independent reference (gguf.quants, numpy).

Quantized bytes must equal gguf.quants.quantize bit for bit and dequantized floats must equal
gguf.quants.dequantize bit for bit (compared as uint32 so NaN payloads and -0.0 count), for every
type, at awkward sizes, on data built to hit the corner cases of each format: rounding ties,
all-zero and negative-only blocks, scales that overflow binary16 or whose inverse overflows
binary32, subnormals, infinities, NaNs. Q8_0 and Q8_1 run once per ISA because
pyphi_quantize_row uses the current ISA's (SIMD) activation quantizer. gguf-py has no Q8_1: its
reference here is derived by hand from ggml's quantize_row_q8_1_ref (Q8_0's codes and scale, and
s = fp16(sum * d)); test_kernels_peer.py also checks it against ggml's own function.
"""

from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest

from pyphi import cpu, quants
from pyphi._native import NativeError, ffi, lib
from pyphi.threadpool import ThreadPool

G = gguf.GGMLQuantizationType
TYPE_NAME = quants.type_names().get  # pytest ids
TYPES = {  # our id -> gguf's
    lib.PYPHI_TYPE_F32: G.F32,
    lib.PYPHI_TYPE_F16: G.F16,
    lib.PYPHI_TYPE_BF16: G.BF16,
    lib.PYPHI_TYPE_Q8_0: G.Q8_0,
    lib.PYPHI_TYPE_Q4_0: G.Q4_0,
    lib.PYPHI_TYPE_Q4_1: G.Q4_1,
    lib.PYPHI_TYPE_Q5_0: G.Q5_0,
    lib.PYPHI_TYPE_Q5_1: G.Q5_1,
}
BLOCK_TYPES = [t for t in TYPES if quants.block_values(t) == 32]
BLOCK_COUNTS = [1, 2, 3, 7, 31, 100, 1000]
FLOAT_LENGTHS = [1, 2, 5, 33, 1000, 4099]


def gguf_quantize(x: np.ndarray, t: int) -> np.ndarray:
    with warnings.catch_warnings():  # gguf's numpy casts NaN/inf on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        q = gguf.quants.quantize(x, TYPES[t])
    return np.ascontiguousarray(q).view(np.uint8).reshape(x.shape[0], -1)


def gguf_dequantize(data: np.ndarray, t: int, n: int) -> np.ndarray:
    with np.errstate(all="ignore"):  # inf * 0 in blocks with an infinite scale
        if t in (lib.PYPHI_TYPE_F32, lib.PYPHI_TYPE_F16):
            dtype = np.float32 if t == lib.PYPHI_TYPE_F32 else np.float16
            return gguf.quants.dequantize(data.view(dtype), TYPES[t]).astype(np.float32).reshape(-1, n)
        return gguf.quants.dequantize(data, TYPES[t]).reshape(-1, n)


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def corner_blocks(rng: np.random.Generator, n_blocks: int) -> np.ndarray:
    """(1, 32 * n_blocks) float32: random normal blocks interleaved with corner cases."""
    x = rng.standard_normal((n_blocks, 32)).astype(np.float32)
    ramp = (np.arange(32, dtype=np.float32) - 16) / 16
    kinds = [
        lambda b: b,
        lambda b: np.zeros(32, np.float32),
        lambda b: -np.abs(b),  # negative-only: Q4_0's scale is positive
        lambda b: np.abs(b),
        # Q8_0 ties: amax 127 gives d = id = 1, so k + 0.5 lands exactly on a tie
        lambda b: np.concatenate([[127.0], np.arange(31, dtype=np.float32) - 15.5]).astype(np.float32),
        # Q4_0 ties: max -8 gives d = id = 1, so x * id + 8.5 is an integer for x = k + 0.5
        lambda b: np.concatenate([[-8.0], np.arange(31, dtype=np.float32) / 4 - 3.75]).astype(np.float32),
        # Q4_1 / Q5_1 ties: min 0 and max 15 (31) give d = id = 1, so x - min + 0.5 is an integer
        lambda b: np.concatenate([[0.0, 15.0], np.arange(30, dtype=np.float32) / 2]).astype(np.float32),
        lambda b: np.concatenate([[31.0, 0.0], np.arange(30, dtype=np.float32) + 0.5]).astype(np.float32),
        # Q5_0 ties: max -16 gives d = id = 1, so x * id + 16.5 is an integer for x = k + 0.5
        lambda b: np.concatenate([[-16.0], np.arange(31, dtype=np.float32) - 15.5]).astype(np.float32),
        lambda b: b - np.float32(100),  # Q4_1 / Q5_1: a large minimum, small spread
        lambda b: np.round(b * 4) / 4,
        lambda b: b * np.float32(1e5),  # Q8_0/Q4_0 scale overflows binary16 to inf
        lambda b: b * np.float32(3e38),  # near float32 max
        lambda b: b * np.float32(1e-37),  # tiny normals: 1/d overflows to inf
        lambda b: b * np.float32(1e-39),  # float32 subnormals
        lambda b: b * np.float32(1e-44),
        lambda b: ramp * np.float32(127 * 2.0**-20),  # scale is a binary16 subnormal
        lambda b: np.where(b > 1.0, np.float32(np.inf), b),
        lambda b: np.where(b < -1.0, np.float32(-np.inf), b),
        lambda b: np.where(np.arange(32) == 7, np.float32(np.nan), b),  # one canonical NaN
        lambda b: np.full(32, -0.0, np.float32),
        # signed zeros mixed: which zero is the min/max decides the signs of Q4_1/Q5_1's m and d
        lambda b: np.where(b > 0, np.float32(0.0), np.float32(-0.0)),
        lambda b: np.where(b > 0.5, np.float32(0.0), np.where(b < -0.5, np.float32(-0.0), np.float32(-1.0))),
        lambda b: np.full(32, 2.5, np.float32),
    ]
    with np.errstate(over="ignore"):  # 3e38 * N(0, 1) overflows to inf on purpose
        for i in range(n_blocks):
            x[i] = kinds[i % len(kinds)](x[i])
    return x.reshape(1, -1)


def float_corners(rng: np.random.Generator, n: int) -> np.ndarray:
    """(1, n) float32 for the float formats: normals, random bit patterns (NaN payloads,
    subnormals, infinities included) and values on binary16/bfloat16 rounding ties."""
    x = rng.standard_normal(n).astype(np.float32)
    x[::3] = rng.integers(0, 2**32, len(x[::3]), dtype=np.uint64).astype(np.uint32).view(np.float32)
    ties = np.array([1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8, 65504, 65519.99,
                     65520, 2.0**-25, 3 * 2.0**-25, 2.0**-24, 2.0**-14 - 2.0**-25, 1e-40],
                    dtype=np.float32)
    x[1::3][: len(ties)] = ties[: len(x[1::3])]
    return x.reshape(1, -1)


# ---- quantize / dequantize vs gguf ---------------------------------------------------------


@pytest.mark.parametrize("isa", cpu.supported_isas())
@pytest.mark.parametrize("t", BLOCK_TYPES, ids=TYPE_NAME)
def test_block_formats_match_gguf(t, isa):
    rng = np.random.default_rng(t)
    with cpu.forced_isa(isa):
        for n_blocks in BLOCK_COUNTS:
            x = corner_blocks(rng, n_blocks)
            ours = quants.quantize(t, x)
            ref = gguf_quantize(x, t)
            assert ours.shape == ref.shape == (1, quants.row_bytes(t, x.shape[1]))
            bad = np.flatnonzero((ours != ref)[0])
            assert bad.size == 0, f"{n_blocks} blocks: first differing bytes {bad[:8]}"
            assert np.array_equal(
                bits(quants.dequantize(t, ref, x.shape[1])), bits(gguf_dequantize(ref, t, x.shape[1]))
            )


def q8_1_reference(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_1_ref for finite x (rows, n) -> (rows, row bytes), derived by hand:
    d and the codes are Q8_0's (gguf; ggml computes them alike: amax / 127, round(x / d) half away
    from zero), and s = fp16(float32(sum of codes) * d32) with d32 the binary32 scale before its
    fp16 rounding."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    q8_0 = gguf_quantize(x, lib.PYPHI_TYPE_Q8_0).reshape(-1, 34)
    codes = q8_0[:, 2:].view(np.int8)
    d32 = np.abs(x.reshape(-1, 32)).max(axis=1) / np.float32(127)
    with np.errstate(over="ignore"):
        s = (codes.sum(axis=1).astype(np.float32) * d32).astype(np.float16)
    q8_1 = np.concatenate([q8_0[:, :2], s.view(np.uint8).reshape(-1, 2), q8_0[:, 2:]], axis=1)
    return q8_1.reshape(x.shape[0], -1)


@pytest.mark.parametrize("isa", cpu.supported_isas())
def test_q8_1_matches_ggml_reference(isa):
    """Finite blocks (ggml's domain) against the derivation; all corner blocks, NaN and inf
    included, bit for bit the scalar twin's bytes."""
    rng = np.random.default_rng(9)
    with cpu.forced_isa(isa):
        for n_blocks in BLOCK_COUNTS:
            everything = corner_blocks(rng, n_blocks)
            with cpu.forced_isa("scalar"):
                scalar = quants.quantize(lib.PYPHI_TYPE_Q8_1, everything)
            assert np.array_equal(quants.quantize(lib.PYPHI_TYPE_Q8_1, everything), scalar)
            x = everything.reshape(-1, 32)[np.isfinite(everything.reshape(-1, 32)).all(axis=1)].reshape(1, -1)
            ours = quants.quantize(lib.PYPHI_TYPE_Q8_1, x)
            ref = q8_1_reference(x)
            assert ours.shape == ref.shape == (1, quants.row_bytes(lib.PYPHI_TYPE_Q8_1, x.shape[1]))
            bad = np.flatnonzero((ours != ref)[0])
            assert bad.size == 0, f"{n_blocks} blocks: first differing bytes {bad[:8]}"
            # value j = code j * d (as Q8_0's, through gguf)
            as_q8_0 = np.delete(ref.reshape(-1, 36), [2, 3], axis=1).reshape(1, -1)
            assert np.array_equal(bits(quants.dequantize(lib.PYPHI_TYPE_Q8_1, ref, x.shape[1])),
                                  bits(gguf_dequantize(as_q8_0, lib.PYPHI_TYPE_Q8_0, x.shape[1])))


@pytest.mark.parametrize("t", [lib.PYPHI_TYPE_F32, lib.PYPHI_TYPE_F16, lib.PYPHI_TYPE_BF16], ids=TYPE_NAME)
def test_float_formats_match_gguf(t):
    rng = np.random.default_rng(t)
    for n in FLOAT_LENGTHS:
        x = float_corners(rng, n)
        ours = quants.quantize(t, x)
        ref = gguf_quantize(x, t)
        assert np.array_equal(ours, ref), f"n={n}"
        assert np.array_equal(bits(quants.dequantize(t, ref, n)), bits(gguf_dequantize(ref, t, n)))


@pytest.mark.parametrize("t", [lib.PYPHI_TYPE_F16, lib.PYPHI_TYPE_BF16], ids=TYPE_NAME)
def test_16_bit_formats_exhaustive(t):
    """Every one of the 65536 16-bit patterns decodes as gguf decodes it; and every binary32
    midpoint between neighbouring values, and its two float32 neighbours, rounds as gguf rounds."""
    every = np.arange(2**16, dtype=np.uint16).view(np.uint8).reshape(1, -1)
    assert np.array_equal(bits(quants.dequantize(t, every, 2**16)), bits(gguf_dequantize(every, t, 2**16)))

    values = gguf_dequantize(every, t, 2**16)[0]
    finite = np.sort(values[np.isfinite(values)].astype(np.float64))
    mid = ((finite[1:] + finite[:-1]) / 2).astype(np.float32)  # exact: both have few bits
    probes = np.concatenate([mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(-np.inf))])
    probes = probes.reshape(1, -1)
    assert np.array_equal(quants.quantize(t, probes), gguf_quantize(probes, t))


def test_row_bytes():
    assert quants.row_bytes(lib.PYPHI_TYPE_Q4_0, 64) == 36
    assert quants.row_bytes(lib.PYPHI_TYPE_Q8_0, 64) == 68
    assert quants.row_bytes(lib.PYPHI_TYPE_Q4_1, 64) == 40  # ggml-common.h: 20, 22, 24, 36 per block
    assert quants.row_bytes(lib.PYPHI_TYPE_Q5_0, 64) == 44
    assert quants.row_bytes(lib.PYPHI_TYPE_Q5_1, 64) == 48
    assert quants.row_bytes(lib.PYPHI_TYPE_Q8_1, 64) == 72
    assert quants.row_bytes(lib.PYPHI_TYPE_F32, 3) == 12
    assert quants.row_bytes(lib.PYPHI_TYPE_F16, 3) == 6
    assert quants.row_bytes(lib.PYPHI_TYPE_BF16, 0) == 0
    for t, g in TYPES.items():
        block, size = gguf.GGML_QUANT_SIZES[g]
        assert (quants.block_values(t), quants.block_bytes(t)) == (block, size)
    assert lib.pyphi_row_bytes(lib.PYPHI_TYPE_Q4_0, 33) == lib.PYPHI_E_SHAPE
    assert lib.pyphi_row_bytes(lib.PYPHI_TYPE_F32, -1) == lib.PYPHI_E_SHAPE
    assert lib.pyphi_row_bytes(lib.PYPHI_TYPE_F32, 2**62) == lib.PYPHI_E_SHAPE  # bytes overflow
    assert lib.pyphi_row_bytes(4, 32) == lib.PYPHI_E_TYPE  # ggml's removed Q4_2
    assert lib.pyphi_type_block_values(10) == 0 and lib.pyphi_type_block_bytes(-1) == 0  # Q2_K
    with pytest.raises(NativeError):
        quants.row_bytes(lib.PYPHI_TYPE_Q8_0, 31)


def test_row_functions_reject_bad_arguments():
    x = np.zeros(64, np.float32)
    y = np.zeros(128, np.uint8)
    xp, yp = ffi.from_buffer("float[]", x), ffi.from_buffer("uint8_t[]", y)
    assert lib.pyphi_quantize_row(lib.PYPHI_TYPE_Q4_0, ffi.NULL, yp, 64) == lib.PYPHI_E_ARG
    assert lib.pyphi_quantize_row(lib.PYPHI_TYPE_Q4_0, xp, ffi.NULL, 64) == lib.PYPHI_E_ARG
    assert lib.pyphi_quantize_row(lib.PYPHI_TYPE_Q4_0, xp, yp, 48) == lib.PYPHI_E_SHAPE
    assert lib.pyphi_quantize_row(lib.PYPHI_TYPE_Q4_0, xp, yp, -32) == lib.PYPHI_E_SHAPE
    assert lib.pyphi_quantize_row(4, xp, yp, 64) == lib.PYPHI_E_TYPE
    assert lib.pyphi_dequantize_row(lib.PYPHI_TYPE_Q8_0, yp, ffi.NULL, 64) == lib.PYPHI_E_ARG
    assert lib.pyphi_dequantize_row(99, yp, xp, 64) == lib.PYPHI_E_TYPE
    assert lib.pyphi_quantize_row(lib.PYPHI_TYPE_Q8_0, xp, yp, 0) == lib.PYPHI_OK


# ---- convert_rows ----------------------------------------------------------------------------


def test_convert_rows_bf16_checkpoint_to_every_type():
    """The converter's path: bf16 rows -> each type, equal to gguf's dequantize-then-quantize, on
    1, 2 and 3 threads, from bytes, from a misaligned buffer and from an array."""
    rng = np.random.default_rng(7)
    n_rows, n = 37, 32 * 9
    x = corner_blocks(rng, n_rows * 9).reshape(n_rows, n)
    src = gguf_quantize(x, lib.PYPHI_TYPE_BF16)  # (n_rows, 2 n) bytes
    as_f32 = gguf_dequantize(src, lib.PYPHI_TYPE_BF16, n)
    misaligned = memoryview(bytearray(b"\0" + src.tobytes()))[1:]
    for t in TYPES:
        ref = gguf_quantize(as_f32, t)
        for n_threads in (1, 2, 3):
            with ThreadPool(n_threads) as pool:
                assert np.array_equal(quants.convert_rows(pool, lib.PYPHI_TYPE_BF16, src, t, n), ref)
        assert np.array_equal(quants.convert_rows(None, "bf16", src.tobytes(), t, n), ref)
        assert np.array_equal(quants.convert_rows(None, "bf16", misaligned, t, n), ref)


def test_convert_rows_rejects_bad_arguments():
    src = np.zeros((4, 64), np.uint8)
    dst = np.zeros((4, 128), np.uint8)
    s, d = ffi.from_buffer("uint8_t[]", src), ffi.from_buffer("uint8_t[]", dst)
    f32, q4 = lib.PYPHI_TYPE_F32, lib.PYPHI_TYPE_Q4_0
    assert lib.pyphi_convert_rows(ffi.NULL, f32, s, q4, d, 2, 32) == lib.PYPHI_OK
    assert lib.pyphi_convert_rows(ffi.NULL, f32, ffi.NULL, q4, d, 2, 32) == lib.PYPHI_E_ARG
    assert lib.pyphi_convert_rows(ffi.NULL, f32, s, q4, ffi.NULL, 2, 32) == lib.PYPHI_E_ARG
    assert lib.pyphi_convert_rows(ffi.NULL, f32, s, q4, d, 2, 33) == lib.PYPHI_E_SHAPE
    assert lib.pyphi_convert_rows(ffi.NULL, f32, s, q4, d, -1, 32) == lib.PYPHI_E_SHAPE
    assert lib.pyphi_convert_rows(ffi.NULL, f32, s, q4, d, 2**62, 32) == lib.PYPHI_E_SHAPE
    assert lib.pyphi_convert_rows(ffi.NULL, f32, s, 5, d, 2, 32) == lib.PYPHI_E_TYPE
    assert lib.pyphi_convert_rows(ffi.NULL, f32, s, q4, s + 4, 2, 32) == lib.PYPHI_E_ARG  # overlap
    assert lib.pyphi_convert_rows(ffi.NULL, f32, s + 1, q4, d, 2, 32) == lib.PYPHI_E_ARG  # misaligned
    with pytest.raises(ValueError):
        quants.convert_rows(None, "f32", b"\0" * 12, "q8_0", 32)  # not a whole row
    with pytest.raises(ValueError):
        quants.type_id("q2_k")
