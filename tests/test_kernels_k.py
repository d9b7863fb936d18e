"""Dot products and matmul of the K-quant weights (Q4_K, Q5_K, Q6_K) x Q8_K on every ISA.

Reference: the exact dot of the operands, from their codes. The weights' bytes are decoded here
in numpy from ggml-common.h's layout, and that decoder is checked against gguf.quants.dequantize
bit for bit; the Q8_K activations (d * code) are decoded the same way. The exact dot is formed
from int64 sums and float64 scales (relative error ~1e-16).

Tolerance (csrc/kernels_scalar.c, K-quants): |r - exact| <= gamma(m + 10) * M with m = n / 256
super-blocks and M = sum_i (|d sc_j| |q_i| + |dmin m_j|) |d_a a_i| (Q6_K: |d sc_j| (|q_i| + 32)
|d_a a_i|). With unit scales and small codes every partial sum is an integer below 2^24 and all
ISAs must agree bit for bit. Tiles equal their ISA's vec_dot bit for bit; thread counts never
change a bit. @peer: ggml's own vec_dot (libggml-cpu) within the bound of ours.
"""

from __future__ import annotations

import ctypes
import os

import gguf
import numpy as np
import pytest

from pyphi import cpu, kernels, quants
from pyphi._native import lib
from pyphi.threadpool import ThreadPool

G = gguf.GGMLQuantizationType
U = 2.0**-24
TYPE_NAME = quants.type_names().get
Q4_K, Q5_K, Q6_K, Q8_K = lib.PYPHI_TYPE_Q4_K, lib.PYPHI_TYPE_Q5_K, lib.PYPHI_TYPE_Q6_K, lib.PYPHI_TYPE_Q8_K
WTYPES = [Q4_K, Q5_K, Q6_K]
GGUF_TYPE = {Q4_K: G.Q4_K, Q5_K: G.Q5_K, Q6_K: G.Q6_K}
ISAS = cpu.supported_isas()
# Tables whose dots give the scalar twin's bits (csrc/kernels_neon.h: each super-block's exact
# isum and msum, then the twin's float operations in its order); the others are held to the bound.
SCALAR_BITS_ISAS = ("neon", "neon_dotprod")


# ---- decoding the blocks (ggml-common.h) ---------------------------------------------------


def f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float64).reshape(raw.shape[:-1])


def scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scales (nb, 12) -> 6-bit scales and mins (nb, 8) (ggml get_scale_min_k4)."""
    s = s.astype(np.int64)
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return sc, m


def decode(t: int, row: np.ndarray):
    """One row's bytes -> (d, dmin, sc, m, q): scales (nb,), per-sub-block scales and mins
    (nb, 8 or 16), codes (nb, 256) as signed ints (Q6_K: code - 32; dmin = m = 0)."""
    if t == Q6_K:
        b = row.reshape(-1, 210)
        ql, qh = b[:, :128].astype(np.int64), b[:, 128:192].astype(np.int64)
        sc = b[:, 192:208].view(np.int8).astype(np.int64)
        d = f16(b[:, 208:210])
        q = np.zeros((b.shape[0], 256), np.int64)
        for h in range(2):
            for quarter in range(4):
                lo = ql[:, 64 * h + 32 * (quarter & 1) : 64 * h + 32 * (quarter & 1) + 32] >> (4 * (quarter >> 1))
                hi = qh[:, 32 * h : 32 * h + 32] >> (2 * quarter)
                q[:, 128 * h + 32 * quarter : 128 * h + 32 * quarter + 32] = (lo & 15) | ((hi & 3) << 4)
        return d, np.zeros_like(d), sc, np.zeros_like(sc), q - 32
    size = 144 if t == Q4_K else 176
    b = row.reshape(-1, size)
    d, dmin = f16(b[:, 0:2]), f16(b[:, 2:4])
    sc, m = scale_min_k4(b[:, 4:16])
    qs = b[:, size - 128 :].astype(np.int64).reshape(-1, 4, 32)
    q = np.stack([qs & 15, qs >> 4], axis=2).reshape(-1, 256)  # sub-blocks 2k, 2k + 1
    if t == Q5_K:
        qh = b[:, 16:48].astype(np.int64)
        q = q + 16 * ((qh[:, None, :] >> np.arange(8)[None, :, None]) & 1).reshape(-1, 256)
    return d, dmin, sc, m, q


def decode_q8_K(row: np.ndarray):
    b = row.reshape(-1, 292)
    return np.ascontiguousarray(b[:, :4]).view(np.float32).astype(np.float64)[:, 0], b[:, 4:260].view(np.int8).astype(np.int64)


def exact_and_magnitude(t: int, wrow: np.ndarray, arow: np.ndarray) -> tuple[float, float]:
    d, dmin, sc, m, q = decode(t, wrow)
    da, a = decode_q8_K(arow)
    sub = 16 if t == Q6_K else 32
    nb = q.shape[0]
    qa = (q * a).reshape(nb, -1, sub).sum(axis=2)
    asum = a.reshape(nb, -1, sub).sum(axis=2)
    isum, msum = (sc * qa).sum(axis=1), (m * asum).sum(axis=1)
    exact = float(np.sum(da * (d * isum - dmin * msum)))
    qmag = np.abs(q) + (32 if t == Q6_K else 0)
    absa = np.abs(a).reshape(nb, -1, sub)
    mag = np.abs(da) * (np.abs(d) * (np.abs(sc) * (qmag.reshape(nb, -1, sub) * absa).sum(axis=2)).sum(axis=1)
                        + np.abs(dmin) * (m * absa.sum(axis=2)).sum(axis=1))
    return exact, float(mag.sum())


def gamma(k: int) -> float:
    return k * U / (1 - k * U)


def random_weights(rng: np.random.Generator, t: int, n_out: int, n_in: int) -> np.ndarray:
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    w[:, rng.integers(0, n_in)] *= 50  # an outlier column, as real weights have
    return quants.quantize(t, w)


def test_decoder_matches_gguf():
    rng = np.random.default_rng(1)
    for t in WTYPES:
        wq = random_weights(rng, t, 5, 512)
        ref = gguf.quants.dequantize(wq, GGUF_TYPE[t]).reshape(5, 512)
        for r in range(5):
            d, dmin, sc, m, q = decode(t, wq[r])
            sub = 16 if t == Q6_K else 32
            ds = (d[:, None].astype(np.float32) * np.repeat(sc, sub, axis=1).astype(np.float32))
            dm = (dmin[:, None].astype(np.float32) * np.repeat(m, sub, axis=1).astype(np.float32))
            y = (ds * q.astype(np.float32) - dm).astype(np.float32).reshape(-1)
            assert np.array_equal(y.view(np.uint32), ref[r].view(np.uint32)), (t, r)


# ---- vec_dot and matmul vs the exact dot -------------------------------------------------------


N_IN = [256 * k for k in (1, 3, 7, 12)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", WTYPES, ids=TYPE_NAME)
def test_matmul_within_bound_of_exact(t, isa):
    rng = np.random.default_rng(100 + t)
    with cpu.forced_isa(isa):
        for n_in in N_IN:
            for n_out, n_tokens in [(1, 1), (3, 2), (17, 7), (70, 9)]:
                wq = random_weights(rng, t, n_out, n_in)
                x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
                aq = quants.quantize(Q8_K, x)
                y = kernels.matmul(None, t, wq, x)
                for tok in range(n_tokens):
                    for r in range(n_out):
                        exact, mag = exact_and_magnitude(t, wq[r], aq[tok])
                        tol = gamma(n_in // 256 + 10) * mag * (1 + 1e-9)
                        assert abs(float(y[tok, r]) - exact) <= tol, (n_in, r, tok, y[tok, r], exact, tol)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", WTYPES, ids=TYPE_NAME)
def test_matmul_tiles_equal_the_isa_dot_bit_for_bit(t, isa):
    """The blocked tiles give each element exactly its ISA's vec_dot, at every tiling edge."""
    rng = np.random.default_rng(200 + t)
    with cpu.forced_isa(isa):
        for n_in, n_out, n_tokens in [(256 * 3, 13, 9), (256, 8, 1), (256 * 12, 21, 5), (256 * 2, 3, 4), (256, 37, 17)]:
            wq = random_weights(rng, t, n_out, n_in)
            x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
            y = kernels.matmul(None, t, wq, x)
            dots = np.array([[kernels.vec_dot(t, wq[r], x[tok]) for r in range(n_out)] for tok in range(n_tokens)],
                            dtype=np.float32)
            assert np.array_equal(y.view(np.uint32), dots.view(np.uint32)), (n_in, n_out, n_tokens)


def integer_case(rng: np.random.Generator, t: int, n_out: int, n_in: int, n_tokens: int):
    """Blocks with d = dmin = 1, activations with d = 1, random codes and scales small enough
    that every partial sum stays an integer below 2^24 -> (weights, activations, exact (T, n_out))."""
    nb = n_in // 256
    one16 = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    if t == Q6_K:
        w = rng.integers(0, 256, (n_out, nb, 210), dtype=np.uint8)
        w[:, :, 192:208] = rng.integers(-6, 7, (n_out, nb, 16)).astype(np.int8).view(np.uint8)
        w[:, :, 208:210] = one16
    else:
        size = 144 if t == Q4_K else 176
        w = rng.integers(0, 256, (n_out, nb, size), dtype=np.uint8)
        w[:, :, 0:2] = one16
        w[:, :, 2:4] = one16
        w[:, :, 4:12] &= np.uint8(0x07)  # every 6-bit scale and min below 8: no top bits,
        w[:, :, 12:16] &= np.uint8(0x77)  # nibbles below 8
    w = w.reshape(n_out, -1)
    codes = rng.integers(-127, 128, (n_tokens, nb, 256))
    a = np.zeros((n_tokens, nb, 292), np.uint8)
    a[:, :, 0:4] = np.frombuffer(np.float32(1.0).tobytes(), np.uint8)
    a[:, :, 4:260] = codes.astype(np.int8).view(np.uint8)
    a[:, :, 260:] = codes.reshape(n_tokens, nb, 16, 16).sum(axis=3).astype(np.int16).view(np.uint8).reshape(n_tokens, nb, 32)
    a = a.reshape(n_tokens, -1)
    exact = np.array([[exact_and_magnitude(t, w[r], a[k])[0] for r in range(n_out)] for k in range(n_tokens)])
    assert np.abs(exact).max() < 2**23
    return w, a, exact


@pytest.mark.parametrize("t", WTYPES, ids=TYPE_NAME)
def test_every_isa_exact_on_integer_data(t):
    rng = np.random.default_rng(300 + t)
    for n_in in (256, 256 * 3):
        w, a, exact = integer_case(rng, t, 5, n_in, 3)
        for isa in ISAS:
            with cpu.forced_isa(isa):
                for r in range(5):
                    for k in range(3):
                        assert kernels.vec_dot(t, w[r], a[k]) == exact[k, r], (isa, n_in, r, k)


@pytest.mark.parametrize("t", WTYPES, ids=TYPE_NAME)
def test_isas_agree_with_scalar_twin(t):
    rng = np.random.default_rng(400 + t)
    n_in, n_out, n_tokens = 256 * 12, 19, 6
    wq = random_weights(rng, t, n_out, n_in)
    x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
    with cpu.forced_isa("scalar"):
        ref = kernels.matmul(None, t, wq, x)
        aq = quants.quantize(Q8_K, x)
    mag = np.array([[exact_and_magnitude(t, wq[r], aq[k])[1] for r in range(n_out)] for k in range(n_tokens)])
    for isa in ISAS:
        with cpu.forced_isa(isa):
            y = kernels.matmul(None, t, wq, x)
            assert np.array_equal(quants.quantize(Q8_K, x), aq), isa
        assert (np.abs(y.astype(np.float64) - ref) <= 2 * gamma(12 + 10) * mag).all(), isa
        if isa in SCALAR_BITS_ISAS:
            assert np.array_equal(y.view(np.uint32), ref.view(np.uint32)), isa


@pytest.mark.parametrize("isa", ISAS)
def test_matmul_bit_identical_for_any_thread_count(isa):
    rng = np.random.default_rng(500)
    pools = [ThreadPool(n) for n in (1, 2, 3)]
    try:
        with cpu.forced_isa(isa):
            for t in WTYPES:
                for n_in, n_out, n_tokens in [(256 * 3, 133, 7), (256, 1, 2), (256 * 12, 40, 1)]:
                    wq = random_weights(rng, t, n_out, n_in)
                    x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
                    ys = [kernels.matmul(p, t, wq, x) for p in [None, *pools]]
                    for y in ys[1:]:
                        assert np.array_equal(y.view(np.uint32), ys[0].view(np.uint32)), (t, n_in, n_out)
    finally:
        for p in pools:
            p.close()


# ---- ggml's own dots (libggml-cpu) -------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.parametrize("t", WTYPES, ids=TYPE_NAME)
def test_vec_dot_close_to_ggml(t):
    """ggml_vec_dot_q*_K_q8_K on the same bytes: both within the bound of the exact dot, so
    within twice of each other."""
    llama_cpp = pytest.importorskip("llama_cpp")
    cpu_lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-cpu.so"))
    cpu_lib.ggml_cpu_init()  # fills the binary16 lookup table the dots read d through
    fn = getattr(cpu_lib, {Q4_K: "ggml_vec_dot_q4_K_q8_K", Q5_K: "ggml_vec_dot_q5_K_q8_K",
                           Q6_K: "ggml_vec_dot_q6_K_q8_K"}[t])
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    rng = np.random.default_rng(600 + t)
    for n_in in N_IN:
        wq = random_weights(rng, t, 4, n_in)
        x = rng.standard_normal((4, n_in)).astype(np.float32)
        aq = quants.quantize(Q8_K, x)
        for r in range(4):
            out = np.zeros(1, np.float32)
            fn(n_in, out.ctypes.data, 0, wq[r].ctypes.data, 0, aq[r].ctypes.data, 0, 1)
            exact, mag = exact_and_magnitude(t, wq[r], aq[r])
            tol = gamma(n_in // 256 + 10) * mag
            assert abs(float(out[0]) - exact) <= 2 * tol  # ggml's summation differs from ours
            for isa in ISAS:
                with cpu.forced_isa(isa):
                    assert abs(kernels.vec_dot(t, wq[r], aq[r]) - float(out[0])) <= 3 * tol, isa


# ---- packed weights ----------------------------------------------------------------------------


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("t", WTYPES, ids=TYPE_NAME)
def test_packed_matmul_bit_for_bit(t, isa):
    """Packed Q4_K and Q6_K (16 rows, one lane each) give the scalar dot's bits on every ISA;
    packed Q5_K (4 rows, super-blocks interleaved) changes no bit of the ISA's own result. Single
    tokens, batches around the tiles and the 64-token chunk, several groups, 1 and 2 threads;
    the same from ggml's layout repacked a group at a time (pyphi.h pyphi_matmul_as_packed)."""
    rng = np.random.default_rng(700 + t)
    with cpu.forced_isa(isa), ThreadPool(2) as pool:
        for n_in, n_out, n_tokens in [(256, 16, 1), (256 * 3, 32, 9), (256 * 12, 80, 1), (256 * 2, 16, 70), (256, 144, 5)]:
            wq = random_weights(rng, t, n_out, n_in)
            x = rng.standard_normal((n_tokens, n_in)).astype(np.float32)
            with cpu.forced_isa("scalar" if t in (Q4_K, Q6_K) else isa):
                ref = kernels.matmul(None, t, wq, x)
            packed = kernels.pack(t, wq, n_in)
            assert packed.nbytes == wq.nbytes
            for p in (None, pool):
                y = kernels.matmul_packed(p, t, packed, n_out, x)
                assert np.array_equal(y.view(np.uint32), ref.view(np.uint32)), (n_in, n_out, n_tokens)
                y = kernels.matmul_as_packed(p, t, wq, n_out, x)  # what the model uses meanwhile
                assert np.array_equal(y.view(np.uint32), ref.view(np.uint32)), (n_in, n_out, n_tokens)


def test_pack_layouts():
    """Hand-derived from quants.h. Q5_K: group g holds block b of rows 4g .. 4g + 3, then block
    b + 1. Q4_K: per super-block of a 16-row group, d[16], dmin[16], the scales as uint32
    [3][16], then qs as [4][8][16][4]. Q6_K: d[16], scales as [8][16][2], then per quad
    u = 2h + m the 4-byte groups ql 16h + 4m + c, qh 8h + 4m + c, ql 16h + 8 + 4m + c (c < 4),
    as [12][16][4]."""
    rng = np.random.default_rng(800)
    wq = random_weights(rng, Q5_K, 8, 512)  # 2 groups x 2 super-blocks of 176 bytes
    packed = kernels.pack(Q5_K, wq, 512).reshape(2, 2, 4, 176)  # (group, block, row, bytes)
    assert np.array_equal(packed, wq.reshape(2, 4, 2, 176).transpose(0, 2, 1, 3))
    with pytest.raises(Exception):
        kernels.pack(Q5_K, wq[:6], 512)  # 6 rows: not whole groups

    def lanes(field: np.ndarray, size: int) -> np.ndarray:  # (16 rows, n) -> (n / size, 16, size)
        return field.reshape(16, -1, size).transpose(1, 0, 2)

    wq = random_weights(rng, Q6_K, 16, 512)
    packed = kernels.pack(Q6_K, wq, 512).reshape(2, 3360)
    blocks = wq.reshape(16, 2, 210)
    for b in range(2):
        p, blk = packed[b], blocks[:, b]
        assert np.array_equal(p[0:32].reshape(16, 2), blk[:, 208:210])
        assert np.array_equal(p[32:288].reshape(8, 16, 2), lanes(blk[:, 192:208], 2))
        ql, qh = lanes(blk[:, 0:128], 4), lanes(blk[:, 128:192], 4)  # (32, 16, 4), (16, 16, 4)
        for u in range(4):
            h, m = divmod(u, 2)
            quad = np.concatenate([ql[16 * h + 4 * m : 16 * h + 4 * m + 4], qh[8 * h + 4 * m : 8 * h + 4 * m + 4],
                                   ql[16 * h + 8 + 4 * m : 16 * h + 12 + 4 * m]])
            assert np.array_equal(p[288 + 768 * u : 288 + 768 * (u + 1)].reshape(12, 16, 4), quad), u

    wq = random_weights(rng, Q4_K, 16, 512)
    packed = kernels.pack(Q4_K, wq, 512).reshape(2, 2304)  # (block, bytes)
    blocks = wq.reshape(16, 2, 144)  # (row, block, bytes)
    for b in range(2):
        p = packed[b]
        assert np.array_equal(p[0:32].reshape(16, 2), blocks[:, b, 0:2])
        assert np.array_equal(p[32:64].reshape(16, 2), blocks[:, b, 2:4])
        assert np.array_equal(p[64:256].reshape(3, 16, 4), blocks[:, b, 4:16].reshape(16, 3, 4).transpose(1, 0, 2))
        qs = p[256:].reshape(4, 8, 16, 4)
        assert np.array_equal(qs, blocks[:, b, 16:].reshape(16, 4, 8, 4).transpose(1, 2, 0, 3))
    with pytest.raises(Exception):
        kernels.pack(Q4_K, wq[:8], 512)  # 8 rows: not a 16-row group
