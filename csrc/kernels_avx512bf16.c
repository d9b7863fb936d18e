/* kernels_avx512bf16.c: the BF16 entries of the kernel table for AVX-512 cores that also have
 * AVX512_BF16 (Cooper Lake, Sapphire Rapids, Zen 4 and later). Every other entry comes from the
 * avx512 table, this table's base (kernels.h).
 *
 * Compiled with the avx512 table's flags plus -mavx512bf16 (CMakeLists.txt) and reached only
 * through dispatch.c after CPUID/XGETBV said these run. The activations of BF16 weights are
 * bfloat16 (pyphi_vec_dot_type, as ggml's), so one vdpbf16ps takes 32 weight x activation
 * products: each of its 16 lanes adds the exact products of a pair of values, odd element first,
 * rounding each sum (Intel SDM, VDPBF16PS; the bound and its subnormal caveat are in kernels.h).
 * Against the avx512 table's widen-and-FMA loop that halves the instructions per product, which
 * is what prefill on BF16 weights is bound by.
 */
#include "kernels.h"
#include "pyphi.h"

#include <immintrin.h>

/* 32 bfloat16 values as vdpbf16ps's operand: 16 pairs. */
static inline __m512bh load_pairs(const uint16_t *p) {
    return (__m512bh)_mm512_loadu_si512(p);
}

/* The first `remaining` (0..31) values, zeros after: a zero pair adds +0 to a lane. */
static inline __m512bh load_pairs_masked(const uint16_t *p, int64_t remaining) {
    __mmask32 m = (__mmask32)((1ull << remaining) - 1u);
    return (__m512bh)_mm512_maskz_loadu_epi16(m, p);
}

/* How far ahead of its reads dot_row asks for the weights (kernels.h pyphi_prefetch). The hardware
 * prefetchers stop at each 4 KiB page of the file mapping; asking for the lines 1 KiB on carries the
 * stream over. Full-size Phi-4-mini BF16 decode on the 2-core Zen 5 VM, A/B alternated: 1 thread
 * 4.42-4.47 -> 4.79-4.80 tok/s (3 of 3 rounds), 2 threads +1-6% (7 of 7); 512 bytes ahead gained
 * less, 1536 as much, 4096 lost. */
#define DECODE_PREFETCH_BYTES 1024

/* sum w[i] a[i]: one accumulator, 32 values per step, a masked last step, then the horizontal
 * sum; the batch tile below does exactly these steps per (row, token). The loop takes four steps
 * at a time with their four weight loads issued first: the additions stay in the same order (one
 * chain), but a single token's matmul, which is this function row after row and bound by reading
 * the weights, streams them about 20% faster than with one load per step (measured on Zen 5;
 * eight steps at a time were slower again). */
static inline __attribute__((always_inline)) float dot_row(int64_t n, const uint16_t *w,
                                                           const uint16_t *a) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 128 <= n; i += 128) {
        pyphi_prefetch((uintptr_t)(w + i) + DECODE_PREFETCH_BYTES, 256);
        __m512bh w0 = load_pairs(w + i), w1 = load_pairs(w + i + 32);
        __m512bh w2 = load_pairs(w + i + 64), w3 = load_pairs(w + i + 96);
        acc = _mm512_dpbf16_ps(acc, w0, load_pairs(a + i));
        acc = _mm512_dpbf16_ps(acc, w1, load_pairs(a + i + 32));
        acc = _mm512_dpbf16_ps(acc, w2, load_pairs(a + i + 64));
        acc = _mm512_dpbf16_ps(acc, w3, load_pairs(a + i + 96));
    }
    for (; i + 32 <= n; i += 32) {
        acc = _mm512_dpbf16_ps(acc, load_pairs(w + i), load_pairs(a + i));
    }
    if (i < n) {
        __m512bh wv = load_pairs_masked(w + i, n - i), av = load_pairs_masked(a + i, n - i);
        acc = _mm512_dpbf16_ps(acc, wv, av);
    }
    return _mm512_reduce_add_ps(acc);
}

static void vec_dot_bf16_avx512bf16(int64_t n, float *s, const void *vw, const void *va) {
    *s = dot_row(n, vw, va); /* w, a: (n,) bfloat16 */
}

/* Tiles of TILE_ROWS x TILE_TOKENS for a batch (16 accumulators, each weight and activation
 * vector loaded once for 4 products). Each (row, token) accumulator performs the dot's operations
 * in the dot's order, so every element is bit for bit vec_dot_bf16_avx512bf16.
 * A single token instead takes one row at a time (dot_row): decode is bound by reading the
 * weights, and consecutive rows are consecutive in memory, so one row at a time is one sequential
 * stream that the hardware prefetchers follow across 4 KiB pages. Eight rows at once (this file's
 * earlier decode tile) were eight streams a row apart, each crossing its own pages: on a 2-core
 * Zen 5 VM reading the unpacked BF16 file mapping, 17 GB/s against 23 GB/s for one row at a time
 * (and 15 GB/s for four rows at once). ggml's BF16 decode also walks one row at a time. */
#define TILE_ROWS 4
#define TILE_TOKENS 4

static inline __attribute__((always_inline)) void tile(int nr, int nt, int64_t n, const uint8_t *w,
                                                       size_t w_stride, const uint8_t *a,
                                                       size_t a_stride, float *y, int64_t y_stride) {
    __m512 acc[TILE_ROWS][TILE_TOKENS];
    _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[r][t] = _mm512_setzero_ps();
    }
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512bh wv[TILE_ROWS];
        _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
            wv[r] = load_pairs((const uint16_t *)(w + (size_t)r * w_stride) + i);
        }
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) {
            __m512bh av = load_pairs((const uint16_t *)(a + (size_t)t * a_stride) + i);
            _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
                acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv[r], av);
            }
        }
    }
    if (i < n) {
        __m512bh wv[TILE_ROWS];
        _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
            wv[r] = load_pairs_masked((const uint16_t *)(w + (size_t)r * w_stride) + i, n - i);
        }
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) {
            __m512bh av = load_pairs_masked((const uint16_t *)(a + (size_t)t * a_stride) + i, n - i);
            _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
                acc[r][t] = _mm512_dpbf16_ps(acc[r][t], wv[r], av);
            }
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) {
            y[t * y_stride + r] = _mm512_reduce_add_ps(acc[r][t]);
        }
    }
}

/* Tokens in groups of TILE_TOKENS (outer: a group's activations stay in L1 while the chunk's rows
 * pass), rows in groups of TILE_ROWS, or one at a time for a single token; every edge size gets
 * its own unrolled instance of the tile. */
static void gemm_bf16_avx512bf16(int64_t n, int64_t n_rows, int64_t n_tok, const void *vw,
                                 size_t w_stride, const void *va, size_t a_stride, float *y,
                                 int64_t y_stride) {
    const uint8_t *w = vw, *a = va;
    if (n_tok == 1) {
        for (int64_t r = 0; r < n_rows; r++) {
            y[r] = dot_row(n, (const uint16_t *)(w + (size_t)r * w_stride), (const uint16_t *)a);
        }
        return;
    }
    for (int64_t t0 = 0; t0 < n_tok; t0 += TILE_TOKENS) {
        int64_t nt = n_tok - t0 < TILE_TOKENS ? n_tok - t0 : TILE_TOKENS;
        const uint8_t *at = a + (size_t)t0 * a_stride;
        float *yt = y + t0 * y_stride;
        for (int64_t r0 = 0; r0 < n_rows; r0 += TILE_ROWS) {
            int64_t nr = n_rows - r0 < TILE_ROWS ? n_rows - r0 : TILE_ROWS;
            const uint8_t *wr = w + (size_t)r0 * w_stride;
            float *yr = yt + r0;
            switch (nr * 8 + nt) {
            case 1 * 8 + 1: tile(1, 1, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 1 * 8 + 2: tile(1, 2, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 1 * 8 + 3: tile(1, 3, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 1 * 8 + 4: tile(1, 4, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 2 * 8 + 1: tile(2, 1, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 2 * 8 + 2: tile(2, 2, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 2 * 8 + 3: tile(2, 3, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 2 * 8 + 4: tile(2, 4, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 3 * 8 + 1: tile(3, 1, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 3 * 8 + 2: tile(3, 2, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 3 * 8 + 3: tile(3, 3, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 3 * 8 + 4: tile(3, 4, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 4 * 8 + 1: tile(4, 1, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 4 * 8 + 2: tile(4, 2, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            case 4 * 8 + 3: tile(4, 3, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            default: tile(4, 4, n, wr, w_stride, at, a_stride, yr, y_stride); break;
            }
        }
    }
}

const pyphi_kernels pyphi_kernels_avx512bf16 = {
    .isa = PYPHI_ISA_AVX512BF16,
    .base = PYPHI_ISA_AVX512,
    .vec_dot = {[PYPHI_TYPE_BF16] = vec_dot_bf16_avx512bf16},
    .gemm = {[PYPHI_TYPE_BF16] = gemm_bf16_avx512bf16},
};
