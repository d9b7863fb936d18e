/* kernels_avx512_k.c: the K-quant kernels of the AVX-512 table (Q4_K, Q5_K, Q6_K x Q8_K, and the
 * Q8_K activation quantizer), for AVX-512 F/BW/VL/DQ + VNNI cores.
 *
 * Compiled with kernels_avx512.c's flags and reached only through its table (pyphi_kernels_avx512)
 * after dispatch.c checked CPUID. Each function computes what the scalar twin of
 * kernels_scalar.c defines: the same exact integers per super-block, then float scaling in this
 * file's order, within the bound stated there.
 *
 * A super-block is four steps of 64 values. Step s multiplies 64 unsigned weight codes with the
 * 64 activation codes a.qs[64 s .. 64 s + 63] by vpmaddubsw (pairs to int16: |code * a| sums at
 * most 2 * 63 * 128, no saturation for any input) and vpdpwssd (int16 pairs times the sub-block
 * scale, summed into int32 lanes), so each (row, token) keeps one int32 accumulator per
 * super-block, exact: a lane gathers at most 4 steps x 2 products x 2 codes, below 2^25. Then
 *   acc += (float)lanes * (d_w * d_a)                       (one FMA per lane)
 *   acc -= (float)(min lanes) * (dmin_w * d_a)              (Q4_K, Q5_K; min lanes = m_j times
 *                                                            the activation sums, from bsums)
 * and the 16 lanes are added at the end. Q6_K's codes are stored + 32: its lanes subtract
 * 32 * sum_j sc_j bsums_j in integer before the conversion. Rounding path of any lane: the
 * conversion (above 2^24), d_w * d_a, one FMA per super-block, the min FMA, the 4-level reduction:
 * at most m + 7 for m super-blocks, inside kernels_scalar.c's gamma(m + 10) * M.
 * Tiles (gemm) run exactly the dot's operations per (row, token), sharing the weight unpacking
 * across tokens and the activation loads across rows; the dot is the 1 x 1 tile.
 */
#include "kernels.h"
#include "pyphi.h"
#include "quants.h"

#include <immintrin.h>
#include <string.h>

/* ---- Weight side: codes and scales of one super-block ------------------------------------- */

/* Q4_K/Q5_K: the 8 scales (words 0-7) and 8 mins (words 8-15) as int16 (ggml's utmp unpacking
 * of get_scale_min_k4, four 32-bit masks at a time). */
static inline __m256i k4_scales_mins(const uint8_t *scales) {
    uint32_t u[4];
    memcpy(u, scales, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    const uint32_t mins_lo = u[1] & 0x3f3f3f3fu;
    u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    u[2] = mins_lo;
    u[0] &= 0x3f3f3f3fu;
    return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)u));
}

/* vpermw indices of the scale words of each step: Q4_K/Q5_K step s takes sub-block 2s for the
 * low 32 codes (16 words) and 2s + 1 for the high 32; Q6_K step s takes sub-blocks 4s .. 4s + 3,
 * 16 codes (8 words) each. */
static const uint16_t K4_STEP_IDX[4][32] = {
#define HALVES(a, b) {a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b}
    HALVES(0, 1), HALVES(2, 3), HALVES(4, 5), HALVES(6, 7),
#undef HALVES
};
static const uint16_t K6_STEP_IDX[4][32] = {
#define QUARTERS(a) {a, a, a, a, a, a, a, a, a + 1, a + 1, a + 1, a + 1, a + 1, a + 1, a + 1, a + 1, \
                     a + 2, a + 2, a + 2, a + 2, a + 2, a + 2, a + 2, a + 2, a + 3, a + 3, a + 3, a + 3, a + 3, a + 3, a + 3, a + 3}
    QUARTERS(0), QUARTERS(4), QUARTERS(8), QUARTERS(12),
#undef QUARTERS
};

static inline __m512i step_scales(const uint16_t idx[32], __m256i words) {
    return _mm512_permutexvar_epi16(_mm512_loadu_si512(idx), _mm512_castsi256_si512(words));
}

/* [m0, m0, m1, m1, ..., m7, m7]: madd with bsums gives m_j * (bsums[2j] + bsums[2j + 1]). */
static inline __m256i k4_min_pairs(__m256i sc_m) {
    const __m256i idx = _mm256_setr_epi16(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
    return _mm256_permutexvar_epi16(idx, sc_m);
}

/* Q4_K codes of step s: the 32 bytes qs[32 s ..] low nibbles (sub-block 2s) then high nibbles. */
static inline __m512i q4_K_codes(const block_q4_K *w, int s) {
    __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w->qs + 32 * s)));
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    return _mm512_and_si512(_mm512_srlv_epi16(x, shift), _mm512_set1_epi8(0x0f));
}

/* Q5_K: the same nibbles, plus 16 where bit 2s (low half) or 2s + 1 (high half) of qh is set. */
static inline __m512i q5_K_codes(const block_q5_K *w, int s) {
    __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w->qs + 32 * s)));
    const __m512i shift = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(4), 1);
    __m512i lo = _mm512_and_si512(_mm512_srlv_epi16(x, shift), _mm512_set1_epi8(0x0f));
    __m512i h = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)w->qh));
    __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * s))),
                                     _mm256_set1_epi8((char)(1 << (2 * s + 1))), 1);
    return _mm512_mask_add_epi8(lo, _mm512_test_epi8_mask(h, bit), lo, _mm512_set1_epi8(16));
}

/* Q6_K codes of step s (values 64 s .. 64 s + 63: half s / 2, quarters 2 (s % 2) and
 * 2 (s % 2) + 1): nibble s % 2 of ql[64 h .. 64 h + 63], high bits from qh[32 h ..] at bit
 * pairs 4 (s % 2) (low 32 values) and 4 (s % 2) + 2 (high 32), moved to bits 4-5. */
static inline __m512i q6_K_codes(const block_q6_K *w, int s) {
    const int h = s / 2, p = s % 2;
    __m512i x = _mm512_loadu_si512(w->ql + 64 * h);
    __m512i lo = p ? _mm512_srli_epi16(x, 4) : x;
    lo = _mm512_and_si512(lo, _mm512_set1_epi8(0x0f));
    __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w->qh + 32 * h)));
    __m512i hb;
    if (p == 0) { /* bits 0-1 -> 4-5 (shift left 4), bits 2-3 -> 4-5 (shift left 2) */
        const __m512i sh = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        hb = _mm512_sllv_epi16(qh, sh);
    } else { /* bits 4-5 stay, bits 6-7 -> 4-5 (shift right 2) */
        const __m512i sh = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        hb = _mm512_srlv_epi16(qh, sh);
    }
    return _mm512_or_si512(lo, _mm512_and_si512(hb, _mm512_set1_epi8(0x30)));
}


/* ---- The tile: nr rows x nt tokens, the dot's operations per (row, token) ---------------- */

enum { KIND_Q4_K = 4, KIND_Q5_K = 5, KIND_Q6_K = 6 };
#define KIND_BLOCK(kind) ((kind) == KIND_Q4_K   ? sizeof(block_q4_K)                                \
                          : (kind) == KIND_Q5_K ? sizeof(block_q5_K)                                \
                                                : sizeof(block_q6_K))

#define TILE_ROWS 2
#define TILE_TOKENS 4
#define DECODE_ROWS 4 /* one token: more rows in flight per activation load */
#define MAX_ROWS 4

/* kind, nr and nt are compile-time constants at every call (the switch in DEFINE_GEMM_K), so
 * the loops unroll and the accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile_k(int kind, int nr, int nt, int64_t nb,
                                                         const uint8_t *w, size_t r_stride,
                                                         size_t b_stride, const uint8_t *a,
                                                         size_t a_stride,
                                                         float *y, int64_t y_stride) {
    const uint16_t(*step_idx)[32] = kind == KIND_Q6_K ? K6_STEP_IDX : K4_STEP_IDX;
    __m512 acc[MAX_ROWS][TILE_TOKENS];
    _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[r][t] = _mm512_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk[MAX_ROWS];
        __m256i words[MAX_ROWS]; /* scales (and mins) as int16 */
        _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
            blk[r] = w + (size_t)r * r_stride + (size_t)b * b_stride;
            words[r] = kind == KIND_Q6_K
                           ? _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)((const block_q6_K *)blk[r])->scales))
                           : k4_scales_mins(((const block_q4_K *)blk[r])->scales); /* same offset in Q5_K */
        }
        __m512i isum[MAX_ROWS][TILE_TOKENS];
        _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) isum[r][t] = _mm512_setzero_si512();
        }
        _Pragma("GCC unroll 4") for (int s = 0; s < 4; s++) {
            __m512i code[MAX_ROWS], scv[MAX_ROWS];
            _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
                code[r] = kind == KIND_Q4_K   ? q4_K_codes((const block_q4_K *)blk[r], s)
                          : kind == KIND_Q5_K ? q5_K_codes((const block_q5_K *)blk[r], s)
                                              : q6_K_codes((const block_q6_K *)blk[r], s);
                scv[r] = step_scales(step_idx[s], words[r]);
            }
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) {
                const block_q8_K *at = (const block_q8_K *)(a + (size_t)t * a_stride) + b;
                __m512i av = _mm512_loadu_si512(at->qs + 64 * s);
                _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
                    isum[r][t] = _mm512_dpwssd_epi32(isum[r][t], _mm512_maddubs_epi16(code[r], av), scv[r]);
                }
            }
        }
        _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
            const block_q4_K *b4 = (const block_q4_K *)blk[r]; /* d, dmin: same offsets in Q5_K */
            const float dw = _cvtsh_ss(kind == KIND_Q6_K ? ((const block_q6_K *)blk[r])->d : b4->d);
            const float dmw = kind == KIND_Q6_K ? 0.0f : _cvtsh_ss(b4->dmin);
            const __m256i mins = kind == KIND_Q6_K ? _mm256_slli_epi16(words[r], 5) /* 32 sc_j */
                                                   : k4_min_pairs(words[r]);
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) {
                const block_q8_K *at = (const block_q8_K *)(a + (size_t)t * a_stride) + b;
                __m256i bs = _mm256_loadu_si256((const __m256i *)at->bsums);
                __m512i mlanes = _mm512_zextsi256_si512(_mm256_madd_epi16(bs, mins));
                __m512i lanes = isum[r][t];
                if (kind == KIND_Q6_K) {
                    lanes = _mm512_sub_epi32(lanes, mlanes); /* the codes' offset 32, exact */
                }
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes), _mm512_set1_ps(dw * at->d), acc[r][t]);
                if (kind != KIND_Q6_K) {
                    acc[r][t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mlanes), _mm512_set1_ps(dmw * at->d),
                                                 acc[r][t]);
                }
            }
        }
    }
    _Pragma("GCC unroll 4") for (int r = 0; r < nr; r++) {
        _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) y[t * y_stride + r] = _mm512_reduce_add_ps(acc[r][t]);
    }
}

#define DEFINE_DOT_K(NAME, KIND)                                                                   \
    void NAME(int64_t n, float *s, const void *w, const void *a) {                                \
        tile_k(KIND, 1, 1, n / PYPHI_QK_K, w, 0, KIND_BLOCK(KIND), a, 0, s, 0);                                     \
    }

DEFINE_DOT_K(pyphi_vec_dot_q4_K_q8_K_avx512, KIND_Q4_K)
DEFINE_DOT_K(pyphi_vec_dot_q5_K_q8_K_avx512, KIND_Q5_K)
DEFINE_DOT_K(pyphi_vec_dot_q6_K_q8_K_avx512, KIND_Q6_K)

/* Tokens in groups of TILE_TOKENS (outer: their activations stay in L1 while the rows pass),
 * rows in groups of TILE_ROWS, or DECODE_ROWS for a single token; each edge size its own
 * unrolled instance. */
#define DEFINE_GEMM_K(NAME, KIND)                                                                  \
    void NAME(int64_t n, int64_t n_rows, int64_t n_tok, const void *vw, size_t w_stride,          \
              const void *va, size_t a_stride, float *y, int64_t y_stride) {                      \
        const uint8_t *w = vw, *a = va;                                                           \
        int64_t nb = n / PYPHI_QK_K;                                                              \
        for (int64_t t0 = 0; t0 < n_tok; t0 += TILE_TOKENS) {                                     \
            int64_t nt = n_tok - t0 < TILE_TOKENS ? n_tok - t0 : TILE_TOKENS;                     \
            const uint8_t *at = a + (size_t)t0 * a_stride;                                        \
            float *yt = y + t0 * y_stride;                                                        \
            int64_t r0 = 0;                                                                       \
            if (nt == 1) {                                                                        \
                for (; r0 + DECODE_ROWS <= n_rows; r0 += DECODE_ROWS) {                           \
                    tile_k(KIND, DECODE_ROWS, 1, nb, w + (size_t)r0 * w_stride, w_stride,         \
                           KIND_BLOCK(KIND), at, a_stride, yt + r0, y_stride);                    \
                }                                                                                 \
            }                                                                                     \
            for (; r0 < n_rows; r0 += TILE_ROWS) {                                                \
                int64_t nr = n_rows - r0 < TILE_ROWS ? n_rows - r0 : TILE_ROWS;                   \
                const uint8_t *wr = w + (size_t)r0 * w_stride;                                    \
                float *yr = yt + r0;                                                              \
                switch (nr * 8 + nt) {                                                            \
                case 1 * 8 + 1: tile_k(KIND, 1, 1, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break; \
                case 1 * 8 + 2: tile_k(KIND, 1, 2, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break; \
                case 1 * 8 + 3: tile_k(KIND, 1, 3, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break; \
                case 1 * 8 + 4: tile_k(KIND, 1, 4, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break; \
                case 2 * 8 + 1: tile_k(KIND, 2, 1, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break; \
                case 2 * 8 + 2: tile_k(KIND, 2, 2, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break; \
                case 2 * 8 + 3: tile_k(KIND, 2, 3, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break; \
                default: tile_k(KIND, 2, 4, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break;       \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

DEFINE_GEMM_K(pyphi_gemm_q4_K_q8_K_avx512, KIND_Q4_K)
DEFINE_GEMM_K(pyphi_gemm_q5_K_q8_K_avx512, KIND_Q5_K)
DEFINE_GEMM_K(pyphi_gemm_q6_K_q8_K_avx512, KIND_Q6_K)

/* Packed Q5_K (quants.h, PYPHI_PACK_ROWS_K = DECODE_ROWS rows per group, blocks interleaved):
 * the same tiles with the rows one block apart and a row's blocks a group-block apart, so each
 * element is bit for bit this file's dot. A single token runs the group as one tile, reading one
 * contiguous stream; a batch runs it as two TILE_ROWS tiles. a_sums is not used (NULL). */
#define DEFINE_GEMM_PACKED_K(NAME, KIND)                                                           \
    void NAME(int64_t n, int64_t n_groups, int64_t n_tok, const void *vw, const void *va,         \
              size_t a_stride, const int32_t *a_sums, float *y, int64_t y_stride) {               \
        (void)a_sums;                                                                             \
        const uint8_t *w = vw, *a = va;                                                           \
        const int64_t nb = n / PYPHI_QK_K;                                                        \
        const size_t blk = KIND_BLOCK(KIND), b_stride = PYPHI_PACK_ROWS_K * blk;                  \
        for (int64_t t0 = 0; t0 < n_tok; t0 += TILE_TOKENS) {                                     \
            int64_t nt = n_tok - t0 < TILE_TOKENS ? n_tok - t0 : TILE_TOKENS;                     \
            const uint8_t *at = a + (size_t)t0 * a_stride;                                        \
            for (int64_t g = 0; g < n_groups; g++) {                                              \
                const uint8_t *wg = w + (size_t)g * (size_t)nb * b_stride;                        \
                float *yg = y + t0 * y_stride + g * PYPHI_PACK_ROWS_K;                            \
                if (nt == 1) {                                                                    \
                    tile_k(KIND, DECODE_ROWS, 1, nb, wg, blk, b_stride, at, a_stride, yg, y_stride); \
                    continue;                                                                     \
                }                                                                                 \
                for (int r0 = 0; r0 < PYPHI_PACK_ROWS_K; r0 += TILE_ROWS) {                       \
                    const uint8_t *wr = wg + (size_t)r0 * blk;                                    \
                    switch (nt) {                                                                 \
                    case 2: tile_k(KIND, 2, 2, nb, wr, blk, b_stride, at, a_stride, yg + r0, y_stride); break; \
                    case 3: tile_k(KIND, 2, 3, nb, wr, blk, b_stride, at, a_stride, yg + r0, y_stride); break; \
                    default: tile_k(KIND, 2, 4, nb, wr, blk, b_stride, at, a_stride, yg + r0, y_stride); break; \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

_Static_assert(PYPHI_PACK_ROWS_K == DECODE_ROWS && PYPHI_PACK_ROWS_K % TILE_ROWS == 0,
               "a packed group is one decode tile, or whole batch tiles");
DEFINE_GEMM_PACKED_K(pyphi_gemm_packed_q5_K_avx512, KIND_Q5_K)

/* ---- Packed Q4_K: one lane per row, the scalar dot's arithmetic ---------------------------- */

/* Quants.h's Q4_K packed layout puts row i of a 16-row group in lane i, so one vpdpbusd of 16
 * rows x 4 codes with 4 broadcast activation codes advances every row's sub-block sum, and a lane
 * ends each super-block holding its row's exact isum and msum. A sub-block's 8 vpdpbusd run as two
 * chains of 4 (even and odd code groups), added at the end: integer, so exact. Against one chain
 * of 8, a single token's matmul reading the packed weights from memory went from 21-22 to 25-26
 * GB/s on one Zen 5 core (4 chains of 2 were slower again). Then per lane, like the scalar
 * twin: term = (float)isum * (d_w * d_a) - (float)msum * (dmin_w * d_a), added to the row's sum:
 * mul, mul, sub, add, each rounded once, no FMA. So every ISA's packed Q4_K gives the scalar
 * vec_dot's bits. Tiles: one group x up to PACKED_K_TOKENS tokens, the codes of a sub-block pair
 * unpacked once for all of them. */
#define PACKED_K_TOKENS 8
/* A tile asks for the next super-block's lines as it starts one (kernels.h pyphi_prefetch): a
 * single token's product streams the packed weights from memory, with enough arithmetic per byte
 * that the hardware prefetchers alone fall behind. On a 2-core Zen 5 VM the full-size Q4_K_M
 * model (Q4_K and Q6_K matrices) decoded at 13.1 tok/s on one core against 8.0 without, and at
 * 16-21 against 13-14.5 on two. */

static inline __m512i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* byte j (0..3) of each lane, zero-extended */
static inline __m512i lane_byte(__m512i v, int j) {
    return _mm512_and_si512(_mm512_srli_epi32(v, 8 * j), _mm512_set1_epi32(0xff));
}

static inline __attribute__((always_inline)) void packed_q4_K_tile(int nt, int64_t nb, const uint8_t *group,
                                                                   const uint8_t *a, size_t a_stride,
                                                                   float *y, int64_t y_stride) {
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    __m512 acc[PACKED_K_TOKENS];
    _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = group + (size_t)b * PYPHI_Q4_K_PACKED_BYTES;
        pyphi_prefetch((uintptr_t)blk + PYPHI_Q4_K_PACKED_BYTES, PYPHI_Q4_K_PACKED_BYTES);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
        const __m512 dmw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 32)));
        /* ggml's utmp unpacking of the 6-bit scales and mins, 16 rows at once */
        const __m512i u0 = _mm512_loadu_si512(blk + 64), u1 = _mm512_loadu_si512(blk + 128);
        const __m512i u2 = _mm512_loadu_si512(blk + 192);
        const __m512i m3f = _mm512_set1_epi32(0x3f3f3f3f), m0f = _mm512_set1_epi32(0x0f0f0f0f);
        const __m512i m03 = _mm512_set1_epi32(0x03030303);
        const __m512i sc_lo = _mm512_and_si512(u0, m3f); /* scales 0..3, a byte each */
        const __m512i sc_hi = _mm512_or_si512(_mm512_and_si512(u2, m0f),
                                              _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), m03), 4));
        const __m512i mn_lo = _mm512_and_si512(u1, m3f); /* mins 0..3 */
        const __m512i mn_hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), m0f),
                                              _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), m03), 4));
        __m512i isum[PACKED_K_TOKENS];
        _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) isum[t] = _mm512_setzero_si512();
        _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) { /* sub-blocks 2k (low), 2k + 1 (high) */
            const uint8_t *qs = blk + 256 + 512 * k;
            __m512i lo[8], hi[8];
            _Pragma("GCC unroll 8") for (int c = 0; c < 8; c++) {
                __m512i raw = _mm512_loadu_si512(qs + 64 * c);
                lo[c] = _mm512_and_si512(raw, nibble);
                hi[c] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
            }
            const __m512i sc_a = lane_byte(k < 2 ? sc_lo : sc_hi, (2 * k) % 4);
            const __m512i sc_b = lane_byte(k < 2 ? sc_lo : sc_hi, (2 * k + 1) % 4);
            _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) {
                const int8_t *aq = ((const block_q8_K *)(a + (size_t)t * a_stride) + b)->qs;
                __m512i s_a = _mm512_setzero_si512(), s_b = _mm512_setzero_si512();
                __m512i s_a1 = _mm512_setzero_si512(), s_b1 = _mm512_setzero_si512();
                _Pragma("GCC unroll 8") for (int c = 0; c < 8; c += 2) {
                    s_a = _mm512_dpbusd_epi32(s_a, lo[c], bcast4(aq + 64 * k + 4 * c));
                    s_b = _mm512_dpbusd_epi32(s_b, hi[c], bcast4(aq + 64 * k + 32 + 4 * c));
                    s_a1 = _mm512_dpbusd_epi32(s_a1, lo[c + 1], bcast4(aq + 64 * k + 4 * c + 4));
                    s_b1 = _mm512_dpbusd_epi32(s_b1, hi[c + 1], bcast4(aq + 64 * k + 32 + 4 * c + 4));
                }
                s_a = _mm512_add_epi32(s_a, s_a1);
                s_b = _mm512_add_epi32(s_b, s_b1);
                isum[t] = _mm512_add_epi32(isum[t], _mm512_add_epi32(_mm512_mullo_epi32(s_a, sc_a),
                                                                     _mm512_mullo_epi32(s_b, sc_b)));
            }
        }
        /* mins: m_j * (bsums[2j] + bsums[2j + 1]) by vpdpwssd on word pairs (m_j, m_j+2) */
        const __m512i even = _mm512_set1_epi32(0x00ff00ff);
        const __m512i m02 = _mm512_and_si512(mn_lo, even), m13 = _mm512_and_si512(_mm512_srli_epi32(mn_lo, 8), even);
        const __m512i m46 = _mm512_and_si512(mn_hi, even), m57 = _mm512_and_si512(_mm512_srli_epi32(mn_hi, 8), even);
        _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) {
            const block_q8_K *at = (const block_q8_K *)(a + (size_t)t * a_stride) + b;
            int32_t p[8]; /* bsums pairs, |.| <= 32 * 128: fit int16 */
            for (int j = 0; j < 8; j++) p[j] = at->bsums[2 * j] + at->bsums[2 * j + 1];
            #define PAIR(x, y) _mm512_set1_epi32((int32_t)(((uint32_t)(uint16_t)(x)) | ((uint32_t)(uint16_t)(y) << 16)))
            __m512i msum = _mm512_dpwssd_epi32(_mm512_setzero_si512(), m02, PAIR(p[0], p[2]));
            msum = _mm512_dpwssd_epi32(msum, m13, PAIR(p[1], p[3]));
            msum = _mm512_dpwssd_epi32(msum, m46, PAIR(p[4], p[6]));
            msum = _mm512_dpwssd_epi32(msum, m57, PAIR(p[5], p[7]));
            #undef PAIR
            const __m512 da = _mm512_set1_ps(at->d);
            __m512 term = _mm512_sub_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dw, da)),
                                        _mm512_mul_ps(_mm512_cvtepi32_ps(msum), _mm512_mul_ps(dmw, da)));
            acc[t] = _mm512_add_ps(acc[t], term);
        }
    }
    _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) _mm512_storeu_ps(y + t * y_stride, acc[t]);
}

/* ---- Packed Q6_K: one lane per row, the scalar dot's arithmetic ---------------------------- */

/* As packed Q4_K above: lane i is row i. A sub-block j (16 values, 4 dpbusd of 4 codes) gives
 * each row's sum of code * a with the unsigned 6-bit codes, times the row's scale; the codes'
 * offset 32 comes off in integer as 32 sc_j bsums_j (vpdpwssd of (32 sc_2p, 32 sc_2p+1) words,
 * |32 sc| <= 4096, with (-bsums) words), so a lane ends the super-block with its row's exact isum
 * and term = (float)isum * (d_w * d_a) is the scalar twin's, added in block order. */
static inline __attribute__((always_inline)) void packed_q6_K_tile(int nt, int64_t nb, const uint8_t *group,
                                                                   const uint8_t *a, size_t a_stride,
                                                                   float *y, int64_t y_stride) {
    const __m512i nibble = _mm512_set1_epi8(0x0f), six = _mm512_set1_epi8(0x3f);
    __m512 acc[PACKED_K_TOKENS];
    _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = group + (size_t)b * PYPHI_Q6_K_PACKED_BYTES;
        pyphi_prefetch((uintptr_t)blk + PYPHI_Q6_K_PACKED_BYTES, PYPHI_Q6_K_PACKED_BYTES);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));
        __m512i isum[PACKED_K_TOKENS];
        _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) isum[t] = _mm512_setzero_si512();
        _Pragma("GCC unroll 4") for (int u = 0; u < 4; u++) { /* quads, in address order */
            const int h = u / 2, m = u % 2;
            const uint8_t *quad = blk + 288 + 768 * u;
            _Pragma("GCC unroll 4") for (int q = 0; q < 4; q++) { /* sub-block j = 8h + 2q + m */
                const int j = 8 * h + 2 * q + m;
                const __m512i scw = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 32 + 32 * (j / 2))));
                if (m == 0) { /* the offset 32 of pair j / 2's two sub-blocks */
                    const __m512i scw32 = _mm512_slli_epi16(scw, 5);
                    _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) {
                        const int16_t *bs = ((const block_q8_K *)(a + (size_t)t * a_stride) + b)->bsums + j;
                        int32_t neg = (int32_t)(((uint32_t)(uint16_t)(-bs[0])) | ((uint32_t)(uint16_t)(-bs[1]) << 16));
                        isum[t] = _mm512_dpwssd_epi32(isum[t], scw32, _mm512_set1_epi32(neg));
                    }
                }
                const __m512i sc = m == 0 ? _mm512_srai_epi32(_mm512_slli_epi32(scw, 16), 16)
                                          : _mm512_srai_epi32(scw, 16);
                __m512i code[4];
                _Pragma("GCC unroll 4") for (int c = 0; c < 4; c++) {
                    __m512i ql = _mm512_loadu_si512(quad + 64 * (8 * (q & 1) + c));
                    __m512i qh = _mm512_loadu_si512(quad + 64 * (4 + c));
                    /* bits 0-3: the nibble; bits 4-5: qh bits 2q, 2q + 1, moved there by one
                     * 16-bit shift (the bits it carries across bytes land outside 0-5) */
                    __m512i lo = q >> 1 ? _mm512_srli_epi16(ql, 4) : ql;
                    __m512i hi = q == 0 ? _mm512_slli_epi16(qh, 4)
                               : q == 1 ? _mm512_slli_epi16(qh, 2)
                               : q == 2 ? qh : _mm512_srli_epi16(qh, 2);
                    /* nibble ? lo : hi, bit by bit (ternary-logic table 0xCA), then the 6 bits */
                    code[c] = _mm512_and_si512(_mm512_ternarylogic_epi32(nibble, lo, hi, 0xCA), six);
                }
                _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) {
                    const int8_t *aq = ((const block_q8_K *)(a + (size_t)t * a_stride) + b)->qs + 16 * j;
                    __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), code[0], bcast4(aq));
                    s = _mm512_dpbusd_epi32(s, code[1], bcast4(aq + 4));
                    s = _mm512_dpbusd_epi32(s, code[2], bcast4(aq + 8));
                    s = _mm512_dpbusd_epi32(s, code[3], bcast4(aq + 12));
                    isum[t] = _mm512_add_epi32(isum[t], _mm512_mullo_epi32(s, sc));
                }
            }
        }
        _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) {
            const __m512 da = _mm512_set1_ps(((const block_q8_K *)(a + (size_t)t * a_stride) + b)->d);
            acc[t] = _mm512_add_ps(acc[t], _mm512_mul_ps(_mm512_cvtepi32_ps(isum[t]), _mm512_mul_ps(dw, da)));
        }
    }
    _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) _mm512_storeu_ps(y + t * y_stride, acc[t]);
}

#define DEFINE_GEMM_PACKED_LANES(NAME, TILE, PACKED_BYTES)                                        \
    void NAME(int64_t n, int64_t n_groups, int64_t n_tok, const void *vw, const void *va,         \
              size_t a_stride, const int32_t *a_sums, float *y, int64_t y_stride) {               \
        (void)a_sums;                                                                             \
        const uint8_t *a = va;                                                                    \
        const int64_t nb = n / PYPHI_QK_K;                                                        \
        for (int64_t g = 0; g < n_groups; g++) {                                                  \
            const uint8_t *group = (const uint8_t *)vw + (size_t)g * (size_t)nb * (PACKED_BYTES); \
            for (int64_t t0 = 0; t0 < n_tok; t0 += PACKED_K_TOKENS) {                             \
                int64_t nt = n_tok - t0 < PACKED_K_TOKENS ? n_tok - t0 : PACKED_K_TOKENS;         \
                const uint8_t *at = a + (size_t)t0 * a_stride;                                    \
                float *yt = y + t0 * y_stride + g * PYPHI_PACK_ROWS;                              \
                switch (nt) {                                                                     \
                case 1: TILE(1, nb, group, at, a_stride, yt, y_stride); break;                    \
                case 2: TILE(2, nb, group, at, a_stride, yt, y_stride); break;                    \
                case 3: TILE(3, nb, group, at, a_stride, yt, y_stride); break;                    \
                case 4: TILE(4, nb, group, at, a_stride, yt, y_stride); break;                    \
                case 5: TILE(5, nb, group, at, a_stride, yt, y_stride); break;                    \
                case 6: TILE(6, nb, group, at, a_stride, yt, y_stride); break;                    \
                case 7: TILE(7, nb, group, at, a_stride, yt, y_stride); break;                    \
                default: TILE(8, nb, group, at, a_stride, yt, y_stride); break;                   \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

DEFINE_GEMM_PACKED_LANES(pyphi_gemm_packed_q4_K_avx512, packed_q4_K_tile, PYPHI_Q4_K_PACKED_BYTES)

DEFINE_GEMM_PACKED_LANES(pyphi_gemm_packed_q6_K_avx512, packed_q6_K_tile, PYPHI_Q6_K_PACKED_BYTES)

/* ---- Q8_K activation quantizer: bit-identical to pyphi_quantize_row_q8_K ------------------- */

/* ggml's nearest_int on 16 lanes: the same float addition and bit arithmetic. */
static inline __m512i nearest_int16(__m512 v) {
    __m512i i = _mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(12582912.f)));
    return _mm512_sub_epi32(_mm512_and_si512(i, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x00400000));
}

void pyphi_quantize_row_q8_K_avx512(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++, x += PYPHI_QK_K) {
        __m512 v[16];
        __m512 amaxv = _mm512_setzero_ps();
        __mmask16 nan = 0;
        for (int k = 0; k < 16; k++) {
            v[k] = _mm512_loadu_ps(x + 16 * k);
            nan |= _mm512_cmp_ps_mask(v[k], v[k], _CMP_UNORD_Q);
            amaxv = _mm512_max_ps(amaxv, _mm512_abs_ps(v[k]));
        }
        if (nan) { /* the scalar scan order decides what a NaN does */
            pyphi_quantize_row_q8_K(x, &y[b], PYPHI_QK_K);
            continue;
        }
        const float amax = _mm512_reduce_max_ps(amaxv);
        if (!amax) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        /* the signed value of the first element of largest magnitude */
        float max = 0;
        for (int k = 0; k < 16; k++) {
            __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(v[k]), _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (hit) {
                max = x[16 * k + __builtin_ctz(hit)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m512 is = _mm512_set1_ps(iscale);
        for (int k = 0; k < 16; k++) {
            __m512i q = _mm512_min_epi32(nearest_int16(_mm512_mul_ps(is, v[k])), _mm512_set1_epi32(127));
            _mm_storeu_si128((__m128i *)(y[b].qs + 16 * k), _mm512_cvtepi32_epi8(q)); /* low bytes */
            y[b].bsums[k] = (int16_t)_mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(_mm512_cvtepi32_epi8(q)));
        }
        y[b].d = 1 / iscale;
    }
}
