"""The K-quant codecs (Q4_K, Q5_K, Q6_K, Q8_K) against independent references.

- Dequantization: gguf.quants.dequantize bit for bit, on quantized rows and on random block bytes
  (every scale and code pattern), and hand-derived values for a block built byte by byte.
- Quantization: ggml's own reference quantizers (quantize_row_q*_K_ref in llama-cpp-python's
  libggml-base.so, through ctypes; @peer) bit for bit on hundreds of random and awkward rows;
  without llama.cpp, the round trip through gguf's dequantizer must stay within the format's
  step, and Q8_K is checked against a numpy transcription of its definition.
Q8_K runs once per ISA because pyphi_quantize_row uses the current ISA's activation quantizer.
"""

from __future__ import annotations

import ctypes
import os

import gguf
import numpy as np
import pytest

from pyphi import cpu, quants
from pyphi._native import lib

G = gguf.GGMLQuantizationType
TYPE_NAME = quants.type_names().get
Q4_K, Q5_K, Q6_K, Q8_K = lib.PYPHI_TYPE_Q4_K, lib.PYPHI_TYPE_Q5_K, lib.PYPHI_TYPE_Q6_K, lib.PYPHI_TYPE_Q8_K
WEIGHT_TYPES = [Q4_K, Q5_K, Q6_K]
GGUF_TYPE = {Q4_K: G.Q4_K, Q5_K: G.Q5_K, Q6_K: G.Q6_K}
BLOCK_BYTES = {Q4_K: 144, Q5_K: 176, Q6_K: 210, Q8_K: 292}  # ggml-common.h


def bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def gguf_dequantize(data: np.ndarray, t: int) -> np.ndarray:
    return gguf.quants.dequantize(np.ascontiguousarray(data), GGUF_TYPE[t]).reshape(data.shape[0], -1)


def awkward_rows(rng: np.random.Generator, n_rows: int, n: int) -> np.ndarray:
    """(n_rows, n) float32: normal rows interleaved with the cases a quantizer trips on."""
    kinds = [
        lambda x: x,
        lambda x: np.zeros_like(x),
        lambda x: np.full_like(x, 1.5),
        lambda x: np.full_like(x, -0.75),
        lambda x: x * np.float32(1e30),
        lambda x: x * np.float32(1e-30),  # scales below binary16's range
        lambda x: x * np.float32(1e-6),
        lambda x: np.where(np.arange(x.size) == rng.integers(0, x.size), np.float32(1000), x),  # one outlier
        lambda x: np.abs(x),  # no negative value: min 0
        lambda x: -np.abs(x),
        lambda x: np.round(x * 4) / 4,  # many ties
        lambda x: x * np.float32(rng.uniform(1e-3, 1e3)),
        lambda x: np.where(np.arange(x.size) % 256 < 32, np.float32(0), x),  # a zero sub-block
        lambda x: np.where(np.arange(x.size) % 16 == 3, x * 64, x),
        lambda x: (rng.standard_t(2, x.size)).astype(np.float32),  # heavy tails
    ]
    out = rng.standard_normal((n_rows, n)).astype(np.float32)
    for i in range(n_rows):
        out[i] = kinds[i % len(kinds)](out[i])
    return out


# ---- sizes -----------------------------------------------------------------------------------


def test_block_sizes_are_ggml_s():
    for t, size in BLOCK_BYTES.items():
        assert (quants.block_values(t), quants.block_bytes(t)) == (256, size)
        if t in GGUF_TYPE:
            assert gguf.GGML_QUANT_SIZES[GGUF_TYPE[t]] == (256, size)
    assert quants.row_bytes(Q4_K, 512) == 288
    assert lib.pyphi_row_bytes(Q6_K, 128) == lib.PYPHI_E_SHAPE
    assert {"q4_k", "q5_k", "q6_k", "q8_k"} <= set(quants.type_names().values())


# ---- dequantize vs gguf ----------------------------------------------------------------------


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=TYPE_NAME)
def test_dequantize_random_blocks_matches_gguf(t):
    """Random bytes are valid blocks once the binary16 scales are finite: every 6-bit scale/min,
    every code, every qh pattern, negative Q6_K scales, subnormal d."""
    rng = np.random.default_rng(t)
    n_blocks = 600
    raw = rng.integers(0, 256, (n_blocks, BLOCK_BYTES[t]), dtype=np.uint8)
    scale_offsets = [raw.shape[1] - 2] if t == Q6_K else [0, 2]
    for off in scale_offsets:
        h = (rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-9, 4, n_blocks)).astype(np.float16)
        h[::50] = np.float16(6e-8)  # binary16 subnormal
        raw[:, off : off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    rows = raw.reshape(n_blocks // 3, -1)
    ours = quants.dequantize(t, rows, 256 * 3)
    with np.errstate(all="ignore"):
        ref = gguf_dequantize(rows, t)
    assert np.array_equal(bits(ours), bits(ref))


def test_dequantize_hand_built_blocks():
    """One block of each type written byte by byte from ggml-common.h, values derived by hand."""
    # Q4_K: d = 0.5, dmin = 0.25; sub-block 0: scale 3, min 2 (scales[0], scales[4]);
    # sub-block 5: scale 33 = 0b100001 (low nibble of scales[9], top bits in scales[1] >> 6),
    # min 18 = 0b010010 (high nibble of scales[9], top bits in scales[5] >> 6).
    b = np.zeros(144, np.uint8)
    b[0:2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    b[2:4] = np.frombuffer(np.float16(0.25).tobytes(), np.uint8)
    sc = b[4:16]
    sc[0], sc[4] = 3, 2
    sc[9] = 0x1 | (0x2 << 4)
    sc[1] |= 0b10 << 6
    sc[5] |= 0b01 << 6
    qs = b[16:]
    qs[0] = 0x07  # value 0 (sub-block 0, low nibble) = 7
    qs[64 + 5] = 0xA0  # value 5 of sub-block 5 (high nibbles of qs[64..95]) = 10
    y = quants.dequantize(Q4_K, b, 256)[0]
    assert y[0] == 0.5 * 3 * 7 - 0.25 * 2
    assert y[1] == -0.25 * 2
    assert y[5 * 32 + 5] == 0.5 * 33 * 10 - 0.25 * 18
    assert y[5 * 32] == -0.25 * 18
    assert y[2 * 32] == 0.0  # sub-block 2: scale and min 0
    # Q5_K: the same scales; the fifth bit of value 5 of sub-block 5 is bit 5 of qh[5]
    b5 = np.concatenate([b[:16], np.zeros(32, np.uint8), b[16:]])
    b5[16 + 5] = 1 << 5
    y = quants.dequantize(Q5_K, b5, 256)[0]
    assert y[5 * 32 + 5] == 0.5 * 33 * (10 + 16) - 0.25 * 18
    assert y[0] == 0.5 * 3 * 7 - 0.25 * 2
    # Q6_K: d = 2, scale of sub-block 9 (values 144..159) = -3; value 150 is in half 1, position
    # 22 of its quarter 0: low nibble of ql[64 + 22], bits 0-1 of qh[32 + 22]; code 0b10_0101 = 37
    b6 = np.zeros(210, np.uint8)
    b6[208:210] = np.frombuffer(np.float16(2.0).tobytes(), np.uint8)
    b6[192 + 9] = np.uint8(np.int8(-3).view(np.uint8))
    b6[64 + 22] = 0x5
    b6[128 + 32 + 22] = 0b10
    y = quants.dequantize(Q6_K, b6, 256)[0]
    assert y[150] == 2.0 * -3 * (37 - 32)
    assert y[151] == 2.0 * -3 * (0 - 32)
    assert y[0] == 0.0  # scale 0
    # Q8_K: value i = d * qs[i]
    b8 = np.zeros(292, np.uint8)
    b8[0:4] = np.frombuffer(np.float32(0.125).tobytes(), np.uint8)
    b8[4 + 7] = np.uint8(np.int8(-100).view(np.uint8))
    y = quants.dequantize(Q8_K, b8, 256)[0]
    assert y[7] == -12.5 and np.count_nonzero(y) == 1


# ---- quantize ----------------------------------------------------------------------------------


@pytest.mark.parametrize("t", WEIGHT_TYPES, ids=TYPE_NAME)
def test_quantize_round_trip_within_the_step(t):
    """Without llama.cpp: gguf decodes our blocks to values within each sub-block's step of the
    input (the codes are the rounded, clamped fits of ggml's algorithm), and re-quantizing the
    decoded row changes nothing (a fixed point, as for ggml's quantizer)."""
    rng = np.random.default_rng(10 + t)
    x = rng.standard_normal((60, 1024)).astype(np.float32)
    q = quants.quantize(t, x)
    assert q.shape == (60, 4 * BLOCK_BYTES[t])
    y = gguf_dequantize(q, t)
    sub = 16 if t == Q6_K else 32
    xs, ys = x.reshape(-1, sub), y.reshape(-1, sub)
    spread = xs.max(axis=1) - np.minimum(xs.min(axis=1), 0)
    levels = {Q4_K: 15, Q5_K: 31, Q6_K: 32}[t]
    # the 6-bit (8-bit for Q6_K) scale rounding can widen a step by 1/63; allow 2 steps
    assert (np.abs(xs - ys).max(axis=1) <= 2 * spread / levels).all()
    rms = np.sqrt(np.mean((x - y) ** 2) / np.mean(x**2))
    assert rms < {Q4_K: 0.12, Q5_K: 0.06, Q6_K: 0.03}[t], rms


def q8_K_by_definition(x: np.ndarray) -> np.ndarray:
    """numpy transcription of ggml's Q8_K (quantize_row_q8_K_ref): per 256 values, the first
    largest magnitude m, iscale = -127 / m in float32, codes round-half-even(iscale * x) capped
    at 127, d = 1 / iscale, bsums of 16; an all-zero block is all zeros. -> (rows, nb * 292)."""
    rows = []
    for row in x.reshape(x.shape[0], -1, 256):
        blocks = []
        for blk in row:
            out = np.zeros(292, np.uint8)
            i = int(np.argmax(np.abs(blk)))
            if blk[i] != 0:
                iscale = np.float32(-127.0) / blk[i]
                codes = np.minimum(np.rint(iscale * blk), 127).astype(np.int8)
                out[0:4] = np.frombuffer((np.float32(1.0) / iscale).tobytes(), np.uint8)
                out[4:260] = codes.view(np.uint8)
                out[260:] = codes.astype(np.int16).reshape(16, 16).sum(axis=1).astype(np.int16).view(np.uint8)
            blocks.append(out)
        rows.append(np.concatenate(blocks))
    return np.stack(rows)


@pytest.mark.parametrize("isa", cpu.supported_isas())
def test_quantize_q8_K_matches_its_definition(isa):
    rng = np.random.default_rng(15)
    x = awkward_rows(rng, 45, 256 * 3)
    with cpu.forced_isa(isa):
        assert np.array_equal(quants.quantize(Q8_K, x), q8_K_by_definition(x))


# ---- quantize vs ggml's reference quantizers (llama-cpp-python's libggml-base) -----------------


@pytest.fixture(scope="module")
def ggml_base():
    llama_cpp = pytest.importorskip("llama_cpp")
    return ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))


def ggml_quantize(lib_base, t: int, x: np.ndarray) -> np.ndarray:
    fn = {Q4_K: "quantize_row_q4_K_ref", Q5_K: "quantize_row_q5_K_ref", Q6_K: "quantize_row_q6_K_ref",
          Q8_K: "quantize_row_q8_K_ref"}[t]
    out = np.zeros((x.shape[0], x.shape[1] // 256 * BLOCK_BYTES[t]), np.uint8)
    for r in range(x.shape[0]):
        xr = np.ascontiguousarray(x[r], dtype=np.float32)
        getattr(lib_base, fn)(xr.ctypes.data_as(ctypes.c_void_p), out[r].ctypes.data_as(ctypes.c_void_p),
                              ctypes.c_int64(xr.size))
    return out


@pytest.mark.peer
@pytest.mark.parametrize("t", [Q4_K, Q5_K, Q6_K, Q8_K], ids=TYPE_NAME)
def test_quantize_bit_identical_to_ggml(t, ggml_base):
    """300 rows of 3 super-blocks (900 blocks) per type, a third of them awkward, plus rows of
    a real-looking weight scale, on every ISA (Q8_K uses the ISA's quantizer)."""
    rng = np.random.default_rng(20 + t)
    x = np.concatenate([awkward_rows(rng, 150, 768),
                        (rng.standard_normal((150, 768)) * 0.02).astype(np.float32)])
    ref = ggml_quantize(ggml_base, t, x)
    for isa in cpu.supported_isas() if t == Q8_K else ["scalar"]:
        with cpu.forced_isa(isa):
            ours = quants.quantize(t, x)
        bad = np.flatnonzero((ours != ref).any(axis=1))
        assert bad.size == 0, f"{isa}: {bad.size} rows differ, first {bad[:5]}"
