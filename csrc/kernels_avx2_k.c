/* kernels_avx2_k.c: the K-quant kernels of the AVX2 table (Q4_K, Q5_K, Q6_K x Q8_K, and the Q8_K
 * activation quantizer), for AVX2 + FMA + F16C cores.
 *
 * Compiled with kernels_avx2.c's flags and reached only through its table (pyphi_kernels_avx2)
 * after dispatch.c checked CPUID. The arithmetic is kernels_avx512_k.c's on 256-bit vectors:
 * a super-block is eight steps of 32 values; step s multiplies 32 unsigned weight codes with
 * a.qs[32 s .. 32 s + 31] by vpmaddubsw (int16 pairs, never saturating) and vpmaddwd with the
 * sub-block scales (int32), added into 8 exact int32 lanes (below 2^25 for every input); then
 *   acc += (float)lanes * (d_w * d_a);  acc -= (float)(min lanes) * (dmin_w * d_a)
 * by FMA, Q6_K's offset 32 subtracted in integer first, and the 8 lanes added at the end.
 * Rounding path of a lane: at most m + 6 for m super-blocks, inside kernels_scalar.c's
 * gamma(m + 10) * M. Tiles run the dot's operations per (row, token); the dot is the 1 x 1 tile.
 */
#include "kernels.h"
#include "pyphi.h"
#include "quants.h"

#include <immintrin.h>
#include <string.h>

/* ---- Weight side ----------------------------------------------------------------------------- */

/* Q4_K/Q5_K: bytes 0-7 the 8 scales, 8-15 the 8 mins (ggml's utmp unpacking of
 * get_scale_min_k4). */
static inline void k4_scales_mins(const uint8_t *scales, uint8_t out[16]) {
    uint32_t u[4];
    memcpy(u, scales, 12);
    u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4);
    const uint32_t mins_lo = u[1] & 0x3f3f3f3fu;
    u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);
    u[2] = mins_lo;
    u[0] &= 0x3f3f3f3fu;
    memcpy(out, u, 16);
}

/* Q4_K step s: nibble s % 2 of qs[32 (s / 2) ..] (sub-block s). */
static inline __m256i q4_K_codes(const block_q4_K *w, int s) {
    __m256i x = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * (s / 2)));
    return _mm256_and_si256(_mm256_srli_epi16(x, 4 * (s % 2)), _mm256_set1_epi8(0x0f));
}

/* Q5_K step s: the same nibbles, plus 16 where bit s of qh[l] is set. */
static inline __m256i q5_K_codes(const block_q5_K *w, int s) {
    __m256i x = _mm256_loadu_si256((const __m256i *)(w->qs + 32 * (s / 2)));
    __m256i lo = _mm256_and_si256(_mm256_srli_epi16(x, 4 * (s % 2)), _mm256_set1_epi8(0x0f));
    __m256i h = _mm256_loadu_si256((const __m256i *)w->qh);
    __m256i bit = _mm256_and_si256(_mm256_srli_epi16(h, s), _mm256_set1_epi8(1)); /* bit s of each byte */
    return _mm256_or_si256(lo, _mm256_slli_epi16(bit, 4));
}

/* Q6_K step s (values 32 s ..: half s / 4, quarter s % 4): see block_q6_K. */
static inline __m256i q6_K_codes(const block_q6_K *w, int s) {
    const int h = s / 4, quarter = s % 4;
    __m256i x = _mm256_loadu_si256((const __m256i *)(w->ql + 64 * h + 32 * (quarter & 1)));
    __m256i lo = _mm256_and_si256(_mm256_srli_epi16(x, 4 * (quarter >> 1)), _mm256_set1_epi8(0x0f));
    __m256i qh = _mm256_loadu_si256((const __m256i *)(w->qh + 32 * h));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * quarter), _mm256_set1_epi8(3));
    return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
}

/* ---- The tile ---------------------------------------------------------------------------------- */

enum { KIND_Q4_K = 4, KIND_Q5_K = 5, KIND_Q6_K = 6 };
#define KIND_BLOCK(kind) ((kind) == KIND_Q4_K   ? sizeof(block_q4_K)                                \
                          : (kind) == KIND_Q5_K ? sizeof(block_q5_K)                                \
                                                : sizeof(block_q6_K))

#define TILE_ROWS 2
#define TILE_TOKENS 2

static inline __attribute__((always_inline)) void tile_k(int kind, int nr, int nt, int64_t nb,
                                                         const uint8_t *w, size_t r_stride,
                                                         size_t b_stride, const uint8_t *a,
                                                         size_t a_stride,
                                                         float *y, int64_t y_stride) {
    __m256 acc[TILE_ROWS][TILE_TOKENS];
    _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++) {
        _Pragma("GCC unroll 2") for (int t = 0; t < nt; t++) acc[r][t] = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk[TILE_ROWS];
        uint8_t sm[TILE_ROWS][16]; /* Q4_K/Q5_K: scales then mins */
        _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++) {
            blk[r] = w + (size_t)r * r_stride + (size_t)b * b_stride;
            if (kind != KIND_Q6_K) {
                k4_scales_mins(((const block_q4_K *)blk[r])->scales, sm[r]); /* same offset in Q5_K */
            }
        }
        __m256i isum[TILE_ROWS][TILE_TOKENS];
        _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++) {
            _Pragma("GCC unroll 2") for (int t = 0; t < nt; t++) isum[r][t] = _mm256_setzero_si256();
        }
        _Pragma("GCC unroll 8") for (int s = 0; s < 8; s++) {
            __m256i code[TILE_ROWS], scv[TILE_ROWS];
            _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++) {
                if (kind == KIND_Q6_K) {
                    const int8_t *sc = ((const block_q6_K *)blk[r])->scales;
                    code[r] = q6_K_codes((const block_q6_K *)blk[r], s);
                    scv[r] = _mm256_setr_m128i(_mm_set1_epi16(sc[2 * s]), _mm_set1_epi16(sc[2 * s + 1]));
                } else {
                    code[r] = kind == KIND_Q4_K ? q4_K_codes((const block_q4_K *)blk[r], s)
                                                : q5_K_codes((const block_q5_K *)blk[r], s);
                    scv[r] = _mm256_set1_epi16(sm[r][s]);
                }
            }
            _Pragma("GCC unroll 2") for (int t = 0; t < nt; t++) {
                const block_q8_K *at = (const block_q8_K *)(a + (size_t)t * a_stride) + b;
                __m256i av = _mm256_loadu_si256((const __m256i *)(at->qs + 32 * s));
                _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++) {
                    __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(code[r], av), scv[r]);
                    isum[r][t] = _mm256_add_epi32(isum[r][t], p);
                }
            }
        }
        _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++) {
            const block_q4_K *b4 = (const block_q4_K *)blk[r]; /* d, dmin: same offsets in Q5_K */
            const float dw = _cvtsh_ss(kind == KIND_Q6_K ? ((const block_q6_K *)blk[r])->d : b4->d);
            const float dmw = kind == KIND_Q6_K ? 0.0f : _cvtsh_ss(b4->dmin);
            __m256i mins;
            if (kind == KIND_Q6_K) { /* 32 sc_j, one word per bsum */
                __m128i sc8 = _mm_loadu_si128((const __m128i *)((const block_q6_K *)blk[r])->scales);
                mins = _mm256_slli_epi16(_mm256_cvtepi8_epi16(sc8), 5);
            } else { /* [m0, m0, m1, m1, ..., m7, m7] */
                const __m128i pairs = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
                mins = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)sm[r]), pairs));
            }
            _Pragma("GCC unroll 2") for (int t = 0; t < nt; t++) {
                const block_q8_K *at = (const block_q8_K *)(a + (size_t)t * a_stride) + b;
                __m256i mlanes = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)at->bsums), mins);
                __m256i lanes = isum[r][t];
                if (kind == KIND_Q6_K) {
                    lanes = _mm256_sub_epi32(lanes, mlanes); /* the codes' offset 32, exact */
                }
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(dw * at->d), acc[r][t]);
                if (kind != KIND_Q6_K) {
                    acc[r][t] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(mlanes), _mm256_set1_ps(dmw * at->d),
                                                 acc[r][t]);
                }
            }
        }
    }
    _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++) {
        _Pragma("GCC unroll 2") for (int t = 0; t < nt; t++) {
            __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc[r][t]), _mm256_extractf128_ps(acc[r][t], 1));
            s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            s = _mm_add_ss(s, _mm_movehdup_ps(s));
            y[t * y_stride + r] = _mm_cvtss_f32(s);
        }
    }
}

#define DEFINE_DOT_K(NAME, KIND)                                                                   \
    void NAME(int64_t n, float *s, const void *w, const void *a) {                                \
        tile_k(KIND, 1, 1, n / PYPHI_QK_K, w, 0, KIND_BLOCK(KIND), a, 0, s, 0);                                     \
    }

DEFINE_DOT_K(pyphi_vec_dot_q4_K_q8_K_avx2, KIND_Q4_K)
DEFINE_DOT_K(pyphi_vec_dot_q5_K_q8_K_avx2, KIND_Q5_K)
DEFINE_DOT_K(pyphi_vec_dot_q6_K_q8_K_avx2, KIND_Q6_K)

/* Tokens in pairs (outer), rows in pairs; each edge size its own unrolled instance. */
#define DEFINE_GEMM_K(NAME, KIND)                                                                  \
    void NAME(int64_t n, int64_t n_rows, int64_t n_tok, const void *vw, size_t w_stride,          \
              const void *va, size_t a_stride, float *y, int64_t y_stride) {                      \
        const uint8_t *w = vw, *a = va;                                                           \
        int64_t nb = n / PYPHI_QK_K;                                                              \
        for (int64_t t0 = 0; t0 < n_tok; t0 += TILE_TOKENS) {                                     \
            int64_t nt = n_tok - t0 < TILE_TOKENS ? n_tok - t0 : TILE_TOKENS;                     \
            const uint8_t *at = a + (size_t)t0 * a_stride;                                        \
            for (int64_t r0 = 0; r0 < n_rows; r0 += TILE_ROWS) {                                  \
                int64_t nr = n_rows - r0 < TILE_ROWS ? n_rows - r0 : TILE_ROWS;                   \
                const uint8_t *wr = w + (size_t)r0 * w_stride;                                    \
                float *yr = y + t0 * y_stride + r0;                                               \
                switch (nr * 4 + nt) {                                                            \
                case 1 * 4 + 1: tile_k(KIND, 1, 1, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break; \
                case 1 * 4 + 2: tile_k(KIND, 1, 2, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break; \
                case 2 * 4 + 1: tile_k(KIND, 2, 1, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break; \
                default: tile_k(KIND, 2, 2, nb, wr, w_stride, KIND_BLOCK(KIND), at, a_stride, yr, y_stride); break;       \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

DEFINE_GEMM_K(pyphi_gemm_q4_K_q8_K_avx2, KIND_Q4_K)
DEFINE_GEMM_K(pyphi_gemm_q5_K_q8_K_avx2, KIND_Q5_K)
DEFINE_GEMM_K(pyphi_gemm_q6_K_q8_K_avx2, KIND_Q6_K)

/* Packed Q5_K (quants.h, PYPHI_PACK_ROWS_K rows per group, blocks interleaved): the same tiles
 * with the rows one block apart and a row's blocks a group-block apart, so each element is bit for
 * bit this file's dot. a_sums is not used (NULL). */
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
                for (int r0 = 0; r0 < PYPHI_PACK_ROWS_K; r0 += TILE_ROWS) {                       \
                    float *yr = y + t0 * y_stride + g * PYPHI_PACK_ROWS_K + r0;                   \
                    if (nt == 1) {                                                                \
                        tile_k(KIND, 2, 1, nb, wg + (size_t)r0 * blk, blk, b_stride, at, a_stride, yr, y_stride); \
                    } else {                                                                      \
                        tile_k(KIND, 2, 2, nb, wg + (size_t)r0 * blk, blk, b_stride, at, a_stride, yr, y_stride); \
                    }                                                                             \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

_Static_assert(PYPHI_PACK_ROWS_K % TILE_ROWS == 0, "a packed group is whole tiles");
DEFINE_GEMM_PACKED_K(pyphi_gemm_packed_q5_K_avx2, KIND_Q5_K)

/* ---- Q8_K activation quantizer: bit-identical to pyphi_quantize_row_q8_K ------------------- */

/* ggml's nearest_int on 8 lanes: the same float addition and bit arithmetic. */
static inline __m256i nearest_int8(__m256 v) {
    __m256i i = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(12582912.f)));
    return _mm256_sub_epi32(_mm256_and_si256(i, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

void pyphi_quantize_row_q8_K_avx2(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++, x += PYPHI_QK_K) {
        __m256 amaxv = _mm256_setzero_ps();
        int nan = 0;
        for (int k = 0; k < 32; k++) {
            __m256 v = _mm256_loadu_ps(x + 8 * k);
            nan |= _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            amaxv = _mm256_max_ps(amaxv, _mm256_and_ps(v, abs_mask));
        }
        if (nan) { /* the scalar scan order decides what a NaN does */
            pyphi_quantize_row_q8_K(x, &y[b], PYPHI_QK_K);
            continue;
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amaxv), _mm256_extractf128_ps(amaxv, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        if (!amax) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        float max = 0;
        for (int j = 0; j < PYPHI_QK_K; j++) { /* the first element of largest magnitude */
            if (fabsf(x[j]) == amax) {
                max = x[j];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m256 is = _mm256_set1_ps(iscale);
        for (int k = 0; k < 16; k++) { /* 16 codes: one bsum */
            __m256i q0 = _mm256_min_epi32(nearest_int8(_mm256_mul_ps(is, _mm256_loadu_ps(x + 16 * k))),
                                          _mm256_set1_epi32(127));
            __m256i q1 = _mm256_min_epi32(nearest_int8(_mm256_mul_ps(is, _mm256_loadu_ps(x + 16 * k + 8))),
                                          _mm256_set1_epi32(127));
            int32_t q[16];
            _mm256_storeu_si256((__m256i *)q, q0);
            _mm256_storeu_si256((__m256i *)(q + 8), q1);
            int sum = 0;
            for (int i = 0; i < 16; i++) {
                y[b].qs[16 * k + i] = (int8_t)q[i]; /* low byte, as the scalar cast */
                sum += y[b].qs[16 * k + i];
            }
            y[b].bsums[k] = (int16_t)sum;
        }
        y[b].d = 1 / iscale;
    }
}
