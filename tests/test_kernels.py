"""Dot products and matmul of every weight type on every ISA, against numpy float64.

Reference: the exact dot of the decoded operands. Weights and Q8_0 activations are encoded and
decoded with gguf-py (gguf.quants), not with our code, and the decoded values multiply exactly
in float64 (24-bit significands), so numpy's float64 result is exact up to ~1e-16 relative.
Q4_1/Q5_1 weights dot Q8_1 activations (encoded by test_quants.q8_1_reference, ggml's
quantize_row_q8_1_ref derived by hand), whose stored s = d * sum(codes) is an operand of ggml's
formula: there the exact value is sum over blocks of d_w d_a sum_j q_j a_j + m_w s_a, from the
codes, scales and sums read out of the bytes.

Tolerance (derived in csrc/kernels.h, after Higham sec. 3.1): every ISA's result r satisfies
    |r - exact| <= gamma(m + 10) * sum |w_i a_i|,   gamma(k) = k u / (1 - k u),  u = 2^-24,
m = number of terms (n_in for float weights, n_in / 32 blocks for quantized ones); for Q4_1/Q5_1
gamma(m + 11) * sum over blocks of (|d_w d_a| sum_j |q_j a_j| + |m_w s_a|). So two ISAs may
differ by twice that. Where every partial sum is an integer below 2^24 (integer-valued data,
unit scales) no rounding happens in any order and all ISAs must agree bit for bit, with numpy's
integer dot too. Thread counts never change a bit.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from test_quants import q8_1_reference

from pyphi import cpu, kernels, quants
from pyphi._native import NativeError, ffi, lib
from pyphi.threadpool import ThreadPool, physical_core_count

G = gguf.GGMLQuantizationType
U = 2.0**-24
TYPE_NAME = quants.type_names().get
GGUF_TYPE = {
    lib.PYPHI_TYPE_F32: G.F32,
    lib.PYPHI_TYPE_F16: G.F16,
    lib.PYPHI_TYPE_BF16: G.BF16,
    lib.PYPHI_TYPE_Q8_0: G.Q8_0,
    lib.PYPHI_TYPE_Q4_0: G.Q4_0,
    lib.PYPHI_TYPE_Q4_1: G.Q4_1,
    lib.PYPHI_TYPE_Q5_0: G.Q5_0,
    lib.PYPHI_TYPE_Q5_1: G.Q5_1,
}
WTYPES = list(GGUF_TYPE)
QUANTIZED = (lib.PYPHI_TYPE_Q8_0, lib.PYPHI_TYPE_Q4_0, lib.PYPHI_TYPE_Q4_1, lib.PYPHI_TYPE_Q5_0, lib.PYPHI_TYPE_Q5_1)
WITH_MIN = (lib.PYPHI_TYPE_Q4_1, lib.PYPHI_TYPE_Q5_1)  # d * q + m weights, dotted with Q8_1 (ggml)
PACKED = (lib.PYPHI_TYPE_Q8_0, lib.PYPHI_TYPE_Q4_0)  # types with a packed layout
N_IN = [32 * k for k in (1, 3, 7, 31, 97)]  # odd block counts: never a multiple of a SIMD width
N_OUT = [1, 3, 17, 257]
N_TOKENS = [1, 2, 7]
ISAS = cpu.supported_isas()
# Tables whose quantized dots give the scalar twin's bits (csrc/kernels_neon.h: exact block sums,
# then the twin's float operations in its order); the others are held to the bound.
SCALAR_BITS_ISAS = ("neon", "neon_dotprod")


def gguf_encode(x: np.ndarray, t: int) -> np.ndarray:
    """float32 (rows, n) -> the rows' bytes in type t, by gguf-py: (rows, row_bytes) uint8."""
    q = gguf.quants.quantize(np.ascontiguousarray(x, dtype=np.float32), GGUF_TYPE[t])
    return np.ascontiguousarray(q).view(np.uint8).reshape(x.shape[0], -1)


def gguf_decode(data: np.ndarray, t: int, n: int) -> np.ndarray:
    """(rows, row_bytes) uint8 in type t -> float64 (rows, n), by gguf-py."""
    if t in (lib.PYPHI_TYPE_F32, lib.PYPHI_TYPE_F16):
        data = data.view(np.float32 if t == lib.PYPHI_TYPE_F32 else np.float16)
    return gguf.quants.dequantize(data, GGUF_TYPE[t]).astype(np.float64).reshape(-1, n)


def encode_activations(x: np.ndarray, wtype: int) -> np.ndarray:
    """x (T, n) float32 -> the activation rows quantized weights of wtype are dotted with."""
    return q8_1_reference(x) if wtype in WITH_MIN else gguf_encode(x, lib.PYPHI_TYPE_Q8_0)


def decoded_activations(x: np.ndarray, wtype: int) -> np.ndarray:
    """What the kernels really multiply the weights with: x, or x through Q8_0, or through
    BF16 for BF16 weights (ggml's vec_dot_type; gguf-py rounds it), as float64."""
    if wtype in QUANTIZED and wtype not in WITH_MIN:
        return gguf_decode(gguf_encode(x, lib.PYPHI_TYPE_Q8_0), lib.PYPHI_TYPE_Q8_0, x.shape[1])
    if wtype == lib.PYPHI_TYPE_BF16:
        return gguf_decode(gguf_encode(x, lib.PYPHI_TYPE_BF16), lib.PYPHI_TYPE_BF16, x.shape[1])
    return x.astype(np.float64)


def f16_field(blocks: np.ndarray, at: int) -> np.ndarray:
    """The binary16 field at byte `at` of every block (..., block bytes) -> float64 (...)."""
    return np.ascontiguousarray(blocks[..., at : at + 2]).view(np.float16)[..., 0].astype(np.float64)


def min_type_terms(wq: np.ndarray, wtype: int, x: np.ndarray):
    """Q4_1/Q5_1 weights (n_out, bytes) dotted with x (T, n) through Q8_1: (exact, magnitude),
    each (T, n_out), of ggml's per-block formula (module docstring). The unsigned weight codes are
    gguf's dequantization of the blocks with d set to 1 and m to 0."""
    n_out, n = wq.shape[0], x.shape[1]
    nb = n // 32
    wb = wq.reshape(n_out, nb, -1)
    unit = wb.copy()
    unit[..., 0:2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    unit[..., 2:4] = 0
    q = gguf_decode(unit.reshape(n_out, -1), wtype, n).reshape(n_out, nb, 32)  # (n_out, nb, 32)
    ab = encode_activations(x, wtype).reshape(x.shape[0], nb, 36)
    a = ab[..., 4:].view(np.int8).astype(np.float64)  # (T, nb, 32)
    dd = f16_field(ab, 0)[:, None, :] * f16_field(wb, 0)[None, :, :]  # (T, n_out, nb)
    ms = f16_field(ab, 2)[:, None, :] * f16_field(wb, 2)[None, :, :]
    isum = np.einsum("tbj,rbj->trb", a, q)
    iabs = np.einsum("tbj,rbj->trb", np.abs(a), q)
    return (dd * isum + ms).sum(-1), (np.abs(dd) * iabs + np.abs(ms)).sum(-1)


def exact_and_bound(wtype: int, wq: np.ndarray, x: np.ndarray):
    """((T, n_out) exact value of matmul(wq, x), (T, n_out) error bound), kernels.h's bound."""
    n_in = x.shape[1]
    if wtype in WITH_MIN:
        exact, magnitude = min_type_terms(wq, wtype, x)
    else:
        w64, a64 = gguf_decode(wq, wtype, n_in), decoded_activations(x, wtype)
        exact, magnitude = a64 @ w64.T, np.abs(a64) @ np.abs(w64).T
    k = (n_in // 32 if wtype in QUANTIZED else n_in) + (11 if wtype in WITH_MIN else 10)
    return exact, k * U / (1 - k * U) * magnitude * (1 + 1e-12)


def random_case(rng: np.random.Generator, wtype: int, n_out: int, n_in: int, n_tokens: int):
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    w[:, rng.integers(0, n_in)] *= 50  # an outlier column, as real weights have
    x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
    return gguf_encode(w, wtype), x


# ---- vec_dot and matmul vs numpy float64 ----------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wtype", WTYPES, ids=TYPE_NAME)
def test_matmul_within_bound_of_exact(wtype, isa):
    rng = np.random.default_rng(wtype)
    with cpu.forced_isa(isa):
        for n_in in N_IN:
            for n_out in N_OUT if n_in < 1024 else N_OUT[:3]:  # keep the run short
                n_tokens = N_TOKENS[(n_in + n_out) % len(N_TOKENS)]
                wq, x = random_case(rng, wtype, n_out, n_in, n_tokens)
                exact, tol = exact_and_bound(wtype, wq, x)
                y = kernels.matmul(None, wtype, wq, x)
                assert y.shape == (n_tokens, n_out) and y.dtype == np.float32
                err = np.abs(y - exact)
                assert (err <= tol).all(), f"n_in={n_in} n_out={n_out}: max err/tol {np.max(err / tol)}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wtype", WTYPES, ids=TYPE_NAME)
def test_vec_dot_within_bound_and_equal_to_matmul(wtype, isa):
    rng = np.random.default_rng(100 + wtype)
    with cpu.forced_isa(isa):
        for n_in in N_IN:
            wq, x = random_case(rng, wtype, 1, n_in, 1)
            exact, tol = exact_and_bound(wtype, wq, x)
            got = kernels.vec_dot(wtype, wq[0], x[0])
            assert abs(got - exact[0, 0]) <= tol[0, 0]
            # the same kernel computes each matmul element
            assert np.float32(got) == kernels.matmul(None, wtype, wq, x)[0, 0]
            # activations given already encoded, by gguf (Q8_0) or by hand (Q8_1)
            if wtype in QUANTIZED:
                assert kernels.vec_dot(wtype, wq[0], encode_activations(x, wtype)[0]) == got


def f16_bytes(v) -> np.ndarray:
    """float values (...) -> their binary16 bytes (..., 2)."""
    v = np.asarray(v, dtype=np.float16)
    return np.ascontiguousarray(v).view(np.uint8).reshape(*v.shape, 2)


def nibble_blocks(codes: np.ndarray, five_bit: bool) -> np.ndarray:
    """codes (..., 32) in 0..15 (0..31) -> ggml's qh (five_bit only) and qs bytes (..., 4 + 16):
    value j's low nibble in qs[j % 16] (high half for j >= 16), bit 4 as bit j of qh (LE)."""
    qs = ((codes[..., :16] & 15) | ((codes[..., 16:] & 15) << 4)).astype(np.uint8)
    if not five_bit:
        return qs
    qh = ((codes >> 4) << np.arange(32)).sum(axis=-1).astype("<u4")
    return np.concatenate([np.ascontiguousarray(qh).view(np.uint8).reshape(*codes.shape[:-1], 4), qs], axis=-1)


def integer_case_5_or_min(rng: np.random.Generator, wtype: int, n_out: int, n_in: int, n_tokens: int):
    """integer_case for Q4_1/Q5_0/Q5_1: d_w = d_a = 1, integer minimums m_w in -8..8 and Q8_1
    sums s stored as binary16 (exact integers or not: s is an operand), all partial sums integers
    below 2^24. Returns as integer_case, plus the exact result (T, n_out)."""
    nb = n_in // 32
    five = wtype != lib.PYPHI_TYPE_Q4_1
    codes = rng.integers(0, 32 if five else 16, (n_out, nb, 32))
    acodes = rng.integers(-128, 128, (n_tokens, nb, 32))
    ones_w = f16_bytes(np.ones((n_out, nb)))
    wint = codes - 16 if wtype == lib.PYPHI_TYPE_Q5_0 else codes
    exact = np.einsum("tbj,rbj->tr", acodes, wint)
    if wtype == lib.PYPHI_TYPE_Q5_0:
        wq = np.concatenate([ones_w, nibble_blocks(codes, True)], axis=2)
        aq = np.concatenate([f16_bytes(np.ones((n_tokens, nb))), acodes.astype(np.int8).view(np.uint8)], axis=2)
    else:
        m = rng.integers(-8, 9, (n_out, nb))
        s = acodes.sum(-1).astype(np.float16)  # rounds above 2048: still the operand ggml uses
        wq = np.concatenate([ones_w, f16_bytes(m), nibble_blocks(codes, five)], axis=2)
        aq = np.concatenate([f16_bytes(np.ones((n_tokens, nb))), f16_bytes(s), acodes.astype(np.int8).view(np.uint8)], axis=2)
        exact = exact + s.astype(np.int64) @ m.T
    return wq.reshape(n_out, -1), aq.reshape(n_tokens, -1), wint.reshape(n_out, n_in), acodes.reshape(n_tokens, n_in), exact


def integer_case(rng: np.random.Generator, wtype: int, n_out: int, n_in: int, n_tokens: int):
    """Operands whose every partial dot sum is an integer below 2^24 in magnitude, so no ISA
    rounds: quantized blocks with scale 1.0 and arbitrary codes (Q8_0's -128 included), or
    small integers for float types. Returns (weight bytes, activation rows in the activation
    format, int64 weights (n_out, n), int64 activations (T, n))."""
    if wtype in QUANTIZED:
        one = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
        nb = n_in // 32
        wcodes = rng.integers(-128, 128, (n_out, nb, 32)) if wtype == lib.PYPHI_TYPE_Q8_0 else rng.integers(0, 16, (n_out, nb, 32))
        acodes = rng.integers(-128, 128, (n_tokens, nb, 32))
        if wtype == lib.PYPHI_TYPE_Q8_0:
            wq = np.concatenate([np.broadcast_to(one, (n_out, nb, 2)), wcodes.astype(np.int8).view(np.uint8)], axis=2)
            wint = wcodes
        else:
            packed = (wcodes[..., :16] | (wcodes[..., 16:] << 4)).astype(np.uint8)
            wq = np.concatenate([np.broadcast_to(one, (n_out, nb, 2)), packed], axis=2)
            wint = wcodes - 8
        aq = np.concatenate([np.broadcast_to(one, (n_tokens, nb, 2)), acodes.astype(np.int8).view(np.uint8)], axis=2)
        return (wq.reshape(n_out, -1), aq.reshape(n_tokens, -1), wint.reshape(n_out, n_in), acodes.reshape(n_tokens, n_in))
    wint = rng.integers(-8, 9, (n_out, n_in))
    aint = rng.integers(-8, 9, (n_tokens, n_in))
    return gguf_encode(wint.astype(np.float32), wtype), aint.astype(np.float32), wint, aint


@pytest.mark.parametrize("wtype", WTYPES, ids=TYPE_NAME)
def test_every_isa_exact_on_integer_data(wtype):
    rng = np.random.default_rng(200 + wtype)
    for n_in in N_IN:
        if wtype in PACKED or wtype not in QUANTIZED:
            wq, aq, wint, aint = integer_case(rng, wtype, 3, n_in, 2)
            exact = (aint @ wint.T).astype(np.float32)
        else:
            wq, aq, _, _, exact = integer_case_5_or_min(rng, wtype, 3, n_in, 2)
            exact = exact.astype(np.float32)
        for isa in ISAS:
            with cpu.forced_isa(isa):
                for i in range(3):
                    for t in range(2):
                        assert kernels.vec_dot(wtype, wq[i], aq[t]) == exact[t, i], (isa, n_in, i, t)


@pytest.mark.parametrize("wtype", WTYPES, ids=TYPE_NAME)
def test_isas_agree_with_scalar_twin(wtype):
    """Bit-identical activation codes (through Q8_0 weights with unit scale, which are exact) and
    results within twice the bound of each other; the NEON tables' quantized dots bit for bit."""
    rng = np.random.default_rng(300 + wtype)
    n_in, n_out, n_tokens = 32 * 31, 17, 7
    wq, x = random_case(rng, wtype, n_out, n_in, n_tokens)
    _, tol = exact_and_bound(wtype, wq, x)
    with cpu.forced_isa("scalar"):
        ref = kernels.matmul(None, wtype, wq, x)
    for isa in ISAS:
        with cpu.forced_isa(isa):
            y = kernels.matmul(None, wtype, wq, x)
        assert (np.abs(y.astype(np.float64) - ref) <= 2 * tol).all(), isa
        if isa in SCALAR_BITS_ISAS and wtype in QUANTIZED:
            assert np.array_equal(_bits(y), _bits(ref)), isa


# ---- tiles and packed weights ------------------------------------------------------------------


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wtype", WTYPES, ids=TYPE_NAME)
def test_matmul_tiles_equal_the_isa_dot_bit_for_bit(wtype, isa):
    """matmul's blocked tiles (kernels.h pyphi_gemm_fn) give each element exactly the same ISA's
    vec_dot, for every edge of the tiling (rows and tokens not multiples of 4 or 8)."""
    rng = np.random.default_rng(500 + wtype)
    with cpu.forced_isa(isa):
        shapes = [(32 * 3, 13, 9), (32 * 7, 8, 1), (32 * 31, 21, 5), (32, 3, 4)]
        if wtype not in QUANTIZED:  # masked tails: attention dots over any number of positions
            shapes += [(37, 5, 4), (130, 3, 3), (7, 2, 1)]
        for n_in, n_out, n_tokens in shapes:
            wq, x = random_case(rng, wtype, n_out, n_in, n_tokens)
            y = kernels.matmul(None, wtype, wq, x)
            dots = np.array([[kernels.vec_dot(wtype, wq[r], x[t]) for r in range(n_out)] for t in range(n_tokens)])
            assert np.array_equal(_bits(y), _bits(dots)), (n_in, n_out, n_tokens)


PACKED_SHAPES = [(32, 16, 1), (32 * 3, 32, 9), (32 * 7, 48, 17), (32 * 97, 16, 8), (32 * 2, 64, 70)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wtype", PACKED, ids=TYPE_NAME)
def test_packed_matmul_equals_the_scalar_dot_bit_for_bit(wtype, isa):
    """Every ISA's packed kernel gives the scalar twin's bits (kernels.h pyphi_gemm_packed_fn):
    odd block counts, token counts around the 8-token tile and the 64-token chunk, several row
    groups, Q8_0's -128 codes (random_case's outlier column makes some)."""
    rng = np.random.default_rng(600 + wtype)
    for n_in, n_out, n_tokens in PACKED_SHAPES:
        wq, x = random_case(rng, wtype, n_out, n_in, n_tokens)
        with cpu.forced_isa("scalar"):
            ref = kernels.matmul(None, wtype, wq, x)
        with cpu.forced_isa(isa):
            y = kernels.matmul_packed(None, wtype, kernels.pack(wtype, wq, n_in), n_out, x)
        assert np.array_equal(_bits(y), _bits(ref)), (n_in, n_out, n_tokens)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("wtype", PACKED, ids=TYPE_NAME)
def test_as_packed_matmul_equals_the_scalar_dot_bit_for_bit(wtype, isa):
    """The product the model computes while its packed copy is being made (pyphi.h
    pyphi_matmul_as_packed: ggml's layout in; on AVX-512 the lanes kernel, whose tree of integer
    adds must land each row in its lane) gives the scalar twin's bits too, on 1 and 2 threads."""
    rng = np.random.default_rng(650 + wtype)
    with ThreadPool(2) as pool:
        for n_in, n_out, n_tokens in PACKED_SHAPES + [(32 * 3, 48, 130)]:
            wq, x = random_case(rng, wtype, n_out, n_in, n_tokens)
            with cpu.forced_isa("scalar"):
                ref = kernels.matmul(None, wtype, wq, x)
            with cpu.forced_isa(isa):
                for p in (None, pool):
                    y = kernels.matmul_as_packed(p, wtype, wq, n_out, x)
                    assert np.array_equal(_bits(y), _bits(ref)), (n_in, n_out, n_tokens)


@pytest.mark.parametrize("wtype", PACKED, ids=TYPE_NAME)
def test_packed_matmul_exact_on_integer_data(wtype):
    rng = np.random.default_rng(700 + wtype)
    wq, aq, wint, aint = integer_case(rng, wtype, 32, 32 * 5, 3)
    # activations as float values that Q8_0 encodes with unit scale: max |code| is 127 per block
    acodes = np.clip(aint, -127, 127)
    acodes.reshape(3, 5, 32)[:, :, 0] = 127
    exact = (acodes @ wint.T).astype(np.float32)
    packed = kernels.pack(wtype, wq, 32 * 5)
    for isa in ISAS:
        with cpu.forced_isa(isa):
            assert np.array_equal(kernels.matmul_packed(None, wtype, packed, 32, acodes.astype(np.float32)), exact), isa


def test_pack_rejects_bad_shapes():
    w = np.zeros((8, 18), dtype=np.uint8)
    with pytest.raises(NativeError):
        kernels.pack("q4_0", w, 32)  # 8 rows: not a multiple of 16
    with pytest.raises(NativeError):
        kernels.pack("f16", np.zeros((16, 64), dtype=np.uint8), 32)


# ---- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
def test_matmul_bit_identical_for_any_thread_count(isa):
    rng = np.random.default_rng(400)
    pools = [ThreadPool(n) for n in (1, 2, 3)]
    try:
        with cpu.forced_isa(isa):
            for wtype in WTYPES:
                # (32 * 5, 201, 1): one token's rows in several chunks, the last one partial
                for n_in, n_out, n_tokens in [(32 * 7, 257, 7), (32 * 3, 1, 2), (32 * 97, 17, 1), (32 * 5, 201, 1)]:
                    wq, x = random_case(rng, wtype, n_out, n_in, n_tokens)
                    ys = [kernels.matmul(p, wtype, wq, x) for p in [None, *pools]]
                    for y in ys[1:]:
                        assert np.array_equal(y.view(np.uint32), ys[0].view(np.uint32)), (wtype, n_in, n_out)
            for wtype in PACKED:
                for n_in, n_out, n_tokens in [(32 * 7, 272, 130), (32 * 3, 16, 1)]:
                    wq, x = random_case(rng, wtype, n_out, n_in, n_tokens)
                    packed = kernels.pack(wtype, wq, n_in)
                    ys = [kernels.matmul_packed(p, wtype, packed, n_out, x) for p in [None, *pools]]
                    for y in ys[1:]:
                        assert np.array_equal(_bits(y), _bits(ys[0])), (wtype, n_in, n_out)
    finally:
        for p in pools:
            p.close()


def test_pool_shared_by_python_threads():
    """cffi releases the GIL during C calls, so two Python threads can run jobs on one pool at
    once; the pool serialises them and both get the right answer."""
    import threading

    rng = np.random.default_rng(6)
    cases = [random_case(rng, wtype, 1025, 32 * 15, 3) for wtype in (lib.PYPHI_TYPE_Q4_0, lib.PYPHI_TYPE_F16)]
    expected = [kernels.matmul(None, wtype, wq, x) for wtype, (wq, x) in zip((lib.PYPHI_TYPE_Q4_0, lib.PYPHI_TYPE_F16), cases)]
    failures = []
    with ThreadPool(2) as pool:

        def work(i: int, wtype: int) -> None:
            wq, x = cases[i]
            for _ in range(30):
                if not np.array_equal(kernels.matmul(pool, wtype, wq, x), expected[i]):
                    failures.append(i)

        wtypes = (lib.PYPHI_TYPE_Q4_0, lib.PYPHI_TYPE_F16)
        threads = [threading.Thread(target=work, args=(i, t), daemon=True) for i, t in enumerate(wtypes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)  # an unserialised pool can deadlock here rather than fail
        assert not any(t.is_alive() for t in threads), "pool deadlocked"
    assert not failures


def test_pool_is_reusable_and_closes():
    with ThreadPool(3) as pool:
        assert lib.pyphi_pool_size(pool.handle) == 3
        wq, x = random_case(np.random.default_rng(5), lib.PYPHI_TYPE_Q4_0, 64, 64, 3)
        first = kernels.matmul(pool, lib.PYPHI_TYPE_Q4_0, wq, x)
        for _ in range(200):  # many short jobs: workers spin, sleep and wake without losing one
            assert np.array_equal(kernels.matmul(pool, lib.PYPHI_TYPE_Q4_0, wq, x), first)
    with pytest.raises(ValueError):
        pool.handle
    assert lib.pyphi_pool_create(0) == ffi.NULL
    assert lib.pyphi_pool_size(ffi.NULL) == 1
    lib.pyphi_pool_destroy(ffi.NULL)
    assert physical_core_count() >= 1
    with pytest.raises(ValueError):
        ThreadPool(0)


# ---- bad arguments ---------------------------------------------------------------------------


def test_matmul_and_vec_dot_reject_bad_arguments():
    q4, f32 = lib.PYPHI_TYPE_Q4_0, lib.PYPHI_TYPE_F32
    w = np.zeros((4, 36), np.uint8)  # 4 rows of 64 Q4_0 values
    x = np.zeros((2, 64), np.float32)
    y = np.zeros((2, 4), np.float32)
    wp, xp, yp = (ffi.from_buffer("uint8_t[]", w), ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", y))
    mm = lib.pyphi_matmul
    assert mm(ffi.NULL, q4, wp, 4, 64, xp, 2, yp) == lib.PYPHI_OK
    assert mm(ffi.NULL, 4, wp, 4, 64, xp, 2, yp) == lib.PYPHI_E_TYPE
    assert mm(ffi.NULL, -1, wp, 4, 64, xp, 2, yp) == lib.PYPHI_E_TYPE
    assert mm(ffi.NULL, q4, ffi.NULL, 4, 64, xp, 2, yp) == lib.PYPHI_E_ARG
    assert mm(ffi.NULL, q4, wp, 4, 64, ffi.NULL, 2, yp) == lib.PYPHI_E_ARG
    assert mm(ffi.NULL, q4, wp, 4, 64, xp, 2, ffi.NULL) == lib.PYPHI_E_ARG
    assert mm(ffi.NULL, q4, wp, 4, 48, xp, 2, yp) == lib.PYPHI_E_SHAPE  # not whole blocks
    assert mm(ffi.NULL, q4, wp, -4, 64, xp, 2, yp) == lib.PYPHI_E_SHAPE
    assert mm(ffi.NULL, q4, wp, 4, -64, xp, 2, yp) == lib.PYPHI_E_SHAPE
    assert mm(ffi.NULL, q4, wp, 4, 64, xp, -2, yp) == lib.PYPHI_E_SHAPE
    assert mm(ffi.NULL, q4, wp, 2**62, 64, xp, 2, yp) == lib.PYPHI_E_SHAPE  # bytes overflow
    assert mm(ffi.NULL, f32, wp, 4, 2**61, xp, 2, yp) == lib.PYPHI_E_SHAPE
    assert mm(ffi.NULL, q4, wp, 4, 64, xp, 2**58, yp) == lib.PYPHI_E_SHAPE  # x bytes overflow
    assert mm(ffi.NULL, q4, wp, 4, 64, xp, 2, xp + 4) == lib.PYPHI_E_ARG  # y overlaps x
    assert mm(ffi.NULL, q4, wp, 4, 64, xp, 2, ffi.cast("float *", wp)) == lib.PYPHI_E_ARG  # y overlaps w
    assert mm(ffi.NULL, q4, wp + 1, 4, 64, xp, 2, yp) == lib.PYPHI_E_ARG  # misaligned
    assert mm(ffi.NULL, q4, wp, 0, 64, xp, 2, yp) == lib.PYPHI_OK  # empty output
    out = ffi.new("float *")
    assert lib.pyphi_vec_dot(q4, wp, wp, 64, out) == lib.PYPHI_OK
    assert lib.pyphi_vec_dot(q4, wp, wp, 65, out) == lib.PYPHI_E_SHAPE
    assert lib.pyphi_vec_dot(q4, wp, wp, 64, ffi.NULL) == lib.PYPHI_E_ARG
    assert lib.pyphi_vec_dot(q4, ffi.NULL, wp, 64, out) == lib.PYPHI_E_ARG
    assert lib.pyphi_vec_dot(4, wp, wp, 64, out) == lib.PYPHI_E_TYPE
    assert lib.pyphi_vec_dot(f32, xp, xp, 0, out) == lib.PYPHI_OK and out[0] == 0.0
    assert lib.pyphi_vec_dot_type(q4) == lib.PYPHI_TYPE_Q8_0
    assert lib.pyphi_vec_dot_type(lib.PYPHI_TYPE_BF16) == lib.PYPHI_TYPE_BF16  # as ggml's
    assert lib.pyphi_vec_dot_type(lib.PYPHI_TYPE_F16) == lib.PYPHI_TYPE_F32
    assert lib.pyphi_vec_dot_type(4) == lib.PYPHI_E_TYPE
    with pytest.raises(ValueError):
        kernels.matmul(None, q4, w, np.zeros((2, 96), np.float32))  # 144 bytes: not rows of 96
    with pytest.raises(ValueError):
        kernels.vec_dot_type(5)  # not a pyphi_type (ggml's removed Q4_2)
    with pytest.raises(NativeError):
        kernels.matmul(None, q4, w, np.zeros((2, 48), np.float32))  # n_in not whole blocks


# ---- ISA selection ---------------------------------------------------------------------------


def test_isa_selection():
    info = cpu.system_info()
    assert info["isa_current"] in info["isa_supported"] and info["isa_best"] == info["isa_supported"][-1]
    assert info["version"] and "scalar" in info["isa_supported"]
    assert cpu.isa_names() == ["scalar", "avx2", "avx512", "avx512bf16", "neon", "neon_dotprod"]
    assert lib.pyphi_isa_set(lib.PYPHI_ISA_COUNT) == lib.PYPHI_E_ISA
    assert lib.pyphi_isa_set(-1) == lib.PYPHI_E_ISA
    assert ffi.string(lib.pyphi_isa_name(42)) == b"unknown"
    before = cpu.current_isa()
    with cpu.forced_isa("scalar"):
        assert cpu.current_isa() == "scalar" and lib.pyphi_isa_current() == lib.PYPHI_ISA_SCALAR
    assert cpu.current_isa() == before
    with pytest.raises(ValueError):
        cpu.set_isa("sse4")
    features = lib.pyphi_cpu_features()
    needs = {lib.PYPHI_ISA_AVX2: lib.PYPHI_CPU_AVX2 | lib.PYPHI_CPU_FMA | lib.PYPHI_CPU_F16C,
             lib.PYPHI_ISA_AVX512: lib.PYPHI_CPU_AVX512F | lib.PYPHI_CPU_AVX512BW | lib.PYPHI_CPU_AVX512VNNI,
             lib.PYPHI_ISA_AVX512BF16: lib.PYPHI_CPU_AVX512F | lib.PYPHI_CPU_AVX512VNNI | lib.PYPHI_CPU_AVX512BF16,
             lib.PYPHI_ISA_NEON: lib.PYPHI_CPU_NEON,
             lib.PYPHI_ISA_NEON_DOTPROD: lib.PYPHI_CPU_NEON | lib.PYPHI_CPU_DOTPROD}
    x86 = lib.PYPHI_CPU_SSE42 | lib.PYPHI_CPU_AVX | lib.PYPHI_CPU_AVX2
    arm = lib.PYPHI_CPU_NEON | lib.PYPHI_CPU_DOTPROD
    assert not (features & x86 and features & arm)  # one architecture's bits only
    for isa in range(lib.PYPHI_ISA_COUNT):  # an ISA is offered only with its features present
        if lib.pyphi_isa_supported(isa) and isa in needs:
            assert features & needs[isa] == needs[isa]
        if not lib.pyphi_isa_supported(isa):
            with pytest.raises(NativeError):
                cpu.set_isa(cpu.isa_names()[isa])


# ---- softmax (attention's) ---------------------------------------------------------------------


def softmax_bound(n: int) -> float:
    """Relative error bound of each softmax output (csrc/kernels.h): exp within 2 ulp (2^-22),
    the sum of n values along 16 lanes, ceil(n / 16) - 1 additions each plus 4 to combine them
    (gamma), then 1 / sum and the product rounded once each; 2^-21 more covers how the exp
    errors of the other values move the sum and the second-order terms."""
    k = -(-n // 16) + 4
    return 2.0**-22 + k * U / (1 - k * U) + 2 * U + 2.0**-21


@pytest.mark.parametrize("isa", ISAS)
def test_softmax_exp_within_2_ulp(isa):
    """softmax([0, x]) = [1, e^x] / (1 + e^x): for x <= -17, 1 + e^x rounds to 1 and the second
    output is the kernel's exp(x) itself, so it is checked against float64 exp at 2 ulp (plus the
    2^-126 of the flush below ln 2^-126); above, the softmax bound covers it."""
    rng = np.random.default_rng(800)
    xs = np.concatenate([rng.uniform(-87.3, 0, 3000), -np.logspace(-8, np.log10(87.3), 1000),
                         [-87.33654, -87.33655, -87.4, -100.0, -np.inf, -17.0, -0.5 * np.log(2), -1e-30, -0.0]])
    xs = xs.astype(np.float32)
    with cpu.forced_isa(isa):
        for x in xs:
            got = kernels.softmax(np.array([0.0, x], np.float32))
            e = np.exp(np.float64(x))
            ref = np.array([1.0, e]) / (1.0 + e)
            if x <= -17:
                ulp = 2.0 ** (np.floor(np.log2(e)) - 23) if e >= 2.0**-126 else 2.0**-149
                assert abs(got[1] - e) <= 2 * ulp + (2.0**-126 if e < 2.0**-126 else 0), x
            assert (np.abs(got - ref) <= softmax_bound(2) * ref + 2.0**-126).all(), x


@pytest.mark.parametrize("isa", ISAS)
def test_softmax_within_bound_and_equal_to_the_scalar_twin(isa):
    """Rows of every length around the 8 and 16 lanes, scaled as attention scales its scores:
    every ISA gives the scalar twin's bits, and both stay within softmax_bound of float64.
    Each row holds a 0 at its maximum so that x - max is exact and the bound covers all."""
    rng = np.random.default_rng(801)
    for n in [*range(1, 40), 63, 64, 65, 257, 4096, 4103]:
        x = -np.abs(rng.standard_normal(n) * rng.choice([0.5, 8.0, 40.0])).astype(np.float32)
        x[rng.integers(0, n)] = 0.0
        with cpu.forced_isa("scalar"):
            ref_bits = _bits(kernels.softmax(x))
        with cpu.forced_isa(isa):
            got = kernels.softmax(x)
        assert np.array_equal(_bits(got), ref_bits), n
        e = np.exp(x.astype(np.float64))
        exact = e / e.sum()
        assert (np.abs(got - exact) <= softmax_bound(n) * exact + 2.0**-126).all(), n
        # the scale is applied first, rounded, as attention's scores are
        with cpu.forced_isa(isa):
            scaled = kernels.softmax(x, 0.125)
        with cpu.forced_isa("scalar"):
            assert np.array_equal(_bits(scaled), _bits(kernels.softmax(x * np.float32(0.125))))


# ---- weighted sum of rows (attention's scores . values) ---------------------------------------


def weighted_rows_reference(v: np.ndarray, p: np.ndarray) -> np.ndarray:
    """kernels.h's definition in numpy float32: s = s + p_j * v_j over the rows in order, the
    product and the sum each rounded to float32."""
    s = np.zeros((p.shape[0], v.shape[1]), np.float32)
    vf = v.astype(np.float32)
    for j in range(v.shape[0]):
        s = s + p[:, j : j + 1] * vf[j]
    return s


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("vtype", ["F16", "F32"])
def test_weighted_rows_is_the_rounded_running_sum(isa, vtype):
    """Every ISA gives the bits of the running sum in numpy float32, for widths around the 8, 16,
    32 and 128 values a register or tile holds, query counts around the 3 a tile holds, and rows
    up to a few hundred; and it stays within gamma(n_rows + 1) of the float64 sum (kernels.h)."""
    rng = np.random.default_rng(810)
    dtype = np.float16 if vtype == "F16" else np.float32
    for n, n_rows, n_q in [(1, 1, 1), (7, 3, 2), (16, 5, 3), (31, 9, 4), (32, 2, 1), (33, 17, 5),
                           (64, 40, 3), (100, 7, 6), (127, 3, 1), (128, 300, 3), (129, 11, 2),
                           (256, 64, 3), (300, 5, 7)]:
        v = rng.standard_normal((n_rows, n)).astype(dtype)
        p = rng.uniform(0, 1, (n_q, n_rows)).astype(np.float32)
        ref = weighted_rows_reference(v, p)
        with cpu.forced_isa(isa):
            got = kernels.weighted_rows(vtype, v, p)
        assert np.array_equal(_bits(got), _bits(ref)), (n, n_rows, n_q)
        exact = p.astype(np.float64) @ v.astype(np.float64)
        k = n_rows + 1
        bound = k * U / (1 - k * U) * (np.abs(p.astype(np.float64)) @ np.abs(v.astype(np.float64)))
        assert (np.abs(got - exact) <= bound).all(), (n, n_rows, n_q)


def test_weighted_rows_rejects_bad_arguments():
    v = np.zeros((2, 4), np.float32)
    p = np.zeros((1, 2), np.float32)
    out = np.zeros((1, 4), np.float32)
    f = lambda a: ffi.from_buffer("float[]", a)  # noqa: E731
    assert lib.pyphi_weighted_rows(quants.type_id("Q8_0"), f(v), 2, 4, f(p), 1, f(out)) == lib.PYPHI_E_TYPE
    assert lib.pyphi_weighted_rows(quants.type_id("F32"), f(v), 0, 4, f(p), 1, f(out)) == lib.PYPHI_E_ARG
    assert lib.pyphi_weighted_rows(quants.type_id("F32"), ffi.NULL, 2, 4, f(p), 1, f(out)) == lib.PYPHI_E_ARG
    assert lib.pyphi_weighted_rows(quants.type_id("F32"), f(v), 2, 4, f(p), 1, f(v)) == lib.PYPHI_E_ARG


def test_softmax_rejects_bad_arguments():
    x = np.zeros(4, np.float32)
    assert lib.pyphi_softmax(ffi.from_buffer("float[]", x), 0, 1.0) == lib.PYPHI_E_ARG
    assert lib.pyphi_softmax(ffi.NULL, 4, 1.0) == lib.PYPHI_E_ARG
    assert np.array_equal(kernels.softmax(x), np.full(4, 0.25, np.float32))
