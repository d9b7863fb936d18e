/* kernels_scalar.c: the portable reference kernels. They define what every SIMD variant computes,
 * run on any CPU, and are the oracle the tests compare the SIMD tables against.
 *
 * Written for clarity: one accumulator, values in index order (ggml's *_generic functions play
 * the same role). Compiled with the baseline flags of the target, like all shared code.
 */
#include "kernels.h"
#include "pyphi.h"
#include "quants.h"

#include <math.h>
#include <string.h>

void pyphi_vec_dot_f32_scalar(int64_t n, float *s, const void *vw, const void *va) {
    const float *w = vw; /* (n,) */
    const float *a = va; /* (n,) */
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        sum += w[i] * a[i];
    }
    *s = sum;
}

void pyphi_vec_dot_f16_scalar(int64_t n, float *s, const void *vw, const void *va) {
    const uint16_t *w = vw; /* (n,) binary16 */
    const float *a = va;    /* (n,) */
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        sum += pyphi_fp16_to_fp32(w[i]) * a[i];
    }
    *s = sum;
}

void pyphi_vec_dot_bf16_scalar(int64_t n, float *s, const void *vw, const void *va) {
    const uint16_t *w = vw; /* (n,) bfloat16 */
    const uint16_t *a = va; /* (n,) bfloat16 */
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        /* 8-bit significands: the product is exact in binary32, only the sum rounds */
        sum += pyphi_bf16_to_fp32(w[i]) * pyphi_bf16_to_fp32(a[i]);
    }
    *s = sum;
}

void pyphi_vec_dot_q8_0_q8_0_scalar(int64_t n, float *s, const void *vw, const void *va) {
    const block_q8_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK8_0; b++) {
        int32_t isum = 0; /* |isum| <= 32 * 128 * 128: exact */
        for (int j = 0; j < PYPHI_QK8_0; j++) {
            isum += (int32_t)w[b].qs[j] * (int32_t)a[b].qs[j];
        }
        float dd = pyphi_fp16_to_fp32(w[b].d) * pyphi_fp16_to_fp32(a[b].d); /* exact */
        sum += (float)isum * dd;
    }
    *s = sum;
}

void pyphi_vec_dot_q4_0_q8_0_scalar(int64_t n, float *s, const void *vw, const void *va) {
    const block_q4_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK4_0; b++) {
        int32_t isum = 0;
        for (int j = 0; j < PYPHI_QK4_0 / 2; j++) {
            isum += ((w[b].qs[j] & 0x0f) - 8) * (int32_t)a[b].qs[j];
            isum += ((w[b].qs[j] >> 4) - 8) * (int32_t)a[b].qs[j + PYPHI_QK4_0 / 2];
        }
        float dd = pyphi_fp16_to_fp32(w[b].d) * pyphi_fp16_to_fp32(a[b].d);
        sum += (float)isum * dd;
    }
    *s = sum;
}

/* The 32 codes 0..31 of a Q5_0/Q5_1 block: nibble j | bit j of the little-endian qh << 4. */
static inline void codes5(const uint8_t *qs, const uint8_t *qh, int32_t *q) {
    uint32_t h;
    memcpy(&h, qh, sizeof h);
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 0x0f) | (int32_t)(((h >> j) & 1u) << 4);
        q[j + 16] = (qs[j] >> 4) | (int32_t)(((h >> (j + 16)) & 1u) << 4);
    }
}

void pyphi_vec_dot_q5_0_q8_0_scalar(int64_t n, float *s, const void *vw, const void *va) {
    const block_q5_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK5_0; b++) {
        int32_t q[PYPHI_QK5_0], isum = 0; /* |isum| <= 32 * 16 * 128: exact */
        codes5(w[b].qs, w[b].qh, q);
        for (int j = 0; j < PYPHI_QK5_0; j++) {
            isum += (q[j] - 16) * (int32_t)a[b].qs[j];
        }
        float dd = pyphi_fp16_to_fp32(w[b].d) * pyphi_fp16_to_fp32(a[b].d); /* exact */
        sum += (float)isum * dd;
    }
    *s = sum;
}

/* Weights with a minimum (Q4_1, Q5_1) x Q8_1, ggml's formula (ggml_vec_dot_q4_1_q8_1_generic):
 * per block, (d_w * d_a) * isum + m_w * s_a, with isum over the unsigned codes. d_w * d_a and
 * m_w * s_a are products of two binary16 numbers, exact in binary32; (float)isum * dd and the
 * sum of the two terms round once each, then the block is added to the row's sum. */
static inline float min_block_term(uint16_t dw, uint16_t mw, const block_q8_1 *a, int32_t isum) {
    float dd = pyphi_fp16_to_fp32(dw) * pyphi_fp16_to_fp32(a->d); /* exact */
    float ms = pyphi_fp16_to_fp32(mw) * pyphi_fp16_to_fp32(a->s); /* exact */
    return (float)isum * dd + ms;
}

void pyphi_vec_dot_q4_1_q8_1_scalar(int64_t n, float *s, const void *vw, const void *va) {
    const block_q4_1 *w = vw; /* (n / 32,) */
    const block_q8_1 *a = va; /* (n / 32,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK4_1; b++) {
        int32_t isum = 0; /* |isum| <= 32 * 15 * 128: exact */
        for (int j = 0; j < PYPHI_QK4_1 / 2; j++) {
            isum += (w[b].qs[j] & 0x0f) * (int32_t)a[b].qs[j];
            isum += (w[b].qs[j] >> 4) * (int32_t)a[b].qs[j + PYPHI_QK4_1 / 2];
        }
        sum += min_block_term(w[b].d, w[b].m, &a[b], isum);
    }
    *s = sum;
}

void pyphi_vec_dot_q5_1_q8_1_scalar(int64_t n, float *s, const void *vw, const void *va) {
    const block_q5_1 *w = vw; /* (n / 32,) */
    const block_q8_1 *a = va; /* (n / 32,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK5_1; b++) {
        int32_t q[PYPHI_QK5_1], isum = 0; /* |isum| <= 32 * 31 * 128: exact */
        codes5(w[b].qs, w[b].qh, q);
        for (int j = 0; j < PYPHI_QK5_1; j++) {
            isum += q[j] * (int32_t)a[b].qs[j];
        }
        sum += min_block_term(w[b].d, w[b].m, &a[b], isum);
    }
    *s = sum;
}

/* Packed weights (quants.h): per (row, token) the scalar dot's arithmetic above, block by block:
 * the exact block sum, times the exact d_w * d_a, added in block order. The biased codes give
 * sum (code - bias) a = sum code a - bias * sum a, exact in int32. */
static void gemm_packed_scalar(int type, int64_t n, int64_t n_groups, int64_t n_tok,
                               const void *vw, const void *va, size_t a_stride,
                               const int32_t *a_sums, float *y, int64_t y_stride) {
    const int q4 = type == PYPHI_TYPE_Q4_0;
    const int32_t bias = q4 ? 8 : 128;
    const size_t qs_bytes = q4 ? 16 : 32;
    const size_t packed_block = PYPHI_PACK_ROWS * (sizeof(uint16_t) + qs_bytes);
    const int64_t nb = n / 32;
    for (int64_t g = 0; g < n_groups; g++) {
        const uint8_t *group = (const uint8_t *)vw + (size_t)g * (size_t)nb * packed_block;
        for (int64_t t = 0; t < n_tok; t++) {
            const block_q8_0 *a = (const block_q8_0 *)((const uint8_t *)va + (size_t)t * a_stride);
            for (int i = 0; i < PYPHI_PACK_ROWS; i++) {
                float sum = 0.0f;
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *blk = group + (size_t)b * packed_block;
                    const uint8_t *qs = blk + PYPHI_PACK_ROWS * sizeof(uint16_t);
                    uint16_t dw;
                    memcpy(&dw, blk + i * sizeof(uint16_t), sizeof dw);
                    int32_t isum = -bias * a_sums[t * nb + b];
                    for (size_t k = 0; k < qs_bytes / 4; k++) {
                        for (int j = 0; j < 4; j++) {
                            uint8_t c = qs[(k * PYPHI_PACK_ROWS + (size_t)i) * 4 + (size_t)j];
                            if (q4) {
                                isum += (c & 0x0f) * (int32_t)a[b].qs[4 * k + (size_t)j];
                                isum += (c >> 4) * (int32_t)a[b].qs[16 + 4 * k + (size_t)j];
                            } else {
                                isum += c * (int32_t)a[b].qs[4 * k + (size_t)j];
                            }
                        }
                    }
                    float dd = pyphi_fp16_to_fp32(dw) * pyphi_fp16_to_fp32(a[b].d); /* exact */
                    sum += (float)isum * dd;
                }
                y[t * y_stride + g * PYPHI_PACK_ROWS + i] = sum;
            }
        }
    }
}

void pyphi_gemm_packed_q8_0_scalar(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride) {
    gemm_packed_scalar(PYPHI_TYPE_Q8_0, n, n_groups, n_tok, w, a, a_stride, a_sums, y, y_stride);
}

void pyphi_gemm_packed_q4_0_scalar(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride) {
    gemm_packed_scalar(PYPHI_TYPE_Q4_0, n, n_groups, n_tok, w, a, a_stride, a_sums, y, y_stride);
}

/* ---- K-quants x Q8_K ------------------------------------------------------------------------
 * Per super-block of 256 values, everything integer first, exact in int32:
 *   isum = sum over sub-blocks j of sc_j * (sum of its code * activation code products)
 *   msum = sum over sub-blocks j of m_j * (sum of its activation codes, from bsums)
 * (Q4_K |isum| <= 8 * 63 * 32 * 15 * 127 < 2^25; Q6_K's codes are q - 32 and it has no msum,
 * |isum| <= 16 * 128 * 16 * 32 * 128 < 2^28). Then in float, in this order, each operation
 * rounded once (no fused multiply-add):
 *   term = (float)isum * (d_w * d_a) - (float)msum * (dmin_w * d_a);  sum += term
 * over the super-blocks in order. d_a is a full binary32, so d_w * d_a rounds (unlike Q8_0's).
 * Error bound (the kernels.h argument with m = n / 256 super-blocks): a term's longest rounding
 * path is 4 (int -> float above 2^24, the scale product, the product, the subtraction) plus the
 * m - 1 additions, within gamma(m + 10) of
 *   M = sum over values i of (|d_w sc_j| |q_i| + |dmin_w m_j|) * |d_a a_i|
 * (Q6_K: |d_w sc_j| (|q_i| + 32) |d_a a_i|, the offset 32 counted apart), which bounds every
 * partial sum whatever order a SIMD version forms the integer parts in. */

static int32_t dot_32(const uint8_t *q, int shift, const int8_t *a) {
    int32_t s = 0;
    for (int l = 0; l < 32; l++) {
        s += ((q[l] >> shift) & 0xf) * (int32_t)a[l];
    }
    return s;
}

/* One super-block's term of each dot (the formula above). */
static float term_q4_K(const void *vw, const block_q8_K *a) {
    const block_q4_K *w = vw;
    int32_t isum = 0, msum = 0;
    for (int j = 0; j < PYPHI_QK_K / 32; j++) {
        uint8_t sc, m;
        pyphi_k_scale_min(j, w->scales, &sc, &m);
        isum += sc * dot_32(w->qs + 32 * (j / 2), 4 * (j % 2), a->qs + 32 * j);
        msum += m * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
    }
    float dd = pyphi_fp16_to_fp32(w->d) * a->d;
    float dm = pyphi_fp16_to_fp32(w->dmin) * a->d;
    return (float)isum * dd - (float)msum * dm;
}

static float term_q5_K(const void *vw, const block_q8_K *a) {
    const block_q5_K *w = vw;
    int32_t isum = 0, msum = 0;
    for (int j = 0; j < PYPHI_QK_K / 32; j++) {
        uint8_t sc, m;
        pyphi_k_scale_min(j, w->scales, &sc, &m);
        const uint8_t *q = w->qs + 32 * (j / 2);
        int32_t d = 0;
        for (int l = 0; l < 32; l++) {
            int code = ((q[l] >> (4 * (j % 2))) & 0xf) | (((w->qh[l] >> j) & 1) << 4);
            d += code * (int32_t)a->qs[32 * j + l];
        }
        isum += sc * d;
        msum += m * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
    }
    float dd = pyphi_fp16_to_fp32(w->d) * a->d;
    float dm = pyphi_fp16_to_fp32(w->dmin) * a->d;
    return (float)isum * dd - (float)msum * dm;
}

static float term_q6_K(const void *vw, const block_q8_K *a) {
    const block_q6_K *w = vw;
    int32_t isum = 0;
    for (int j = 0; j < PYPHI_QK_K / 16; j++) {
        int32_t d = 0;
        for (int l = 0; l < 16; l++) {
            int i = 16 * j + l; /* value index; its bits as in block_q6_K */
            int h = i / 128, r = i % 128, quarter = r / 32, k = r % 32;
            uint8_t lo = w->ql[64 * h + k + 32 * (quarter & 1)];
            int code = ((lo >> (4 * (quarter >> 1))) & 0xf) | (((w->qh[32 * h + k] >> (2 * quarter)) & 3) << 4);
            d += (code - 32) * (int32_t)a->qs[i];
        }
        isum += w->scales[j] * d;
    }
    float dd = pyphi_fp16_to_fp32(w->d) * a->d;
    return (float)isum * dd;
}

/* The dot: the terms of the super-blocks b_stride bytes apart (the row's, or a packed group's
 * row), added in order. */
static float dot_k(float (*term)(const void *, const block_q8_K *), int64_t nb, const uint8_t *w,
                   size_t b_stride, const block_q8_K *a) {
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        sum += term(w + (size_t)b * b_stride, &a[b]);
    }
    return sum;
}

void pyphi_vec_dot_q4_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *a) {
    *s = dot_k(term_q4_K, n / PYPHI_QK_K, w, sizeof(block_q4_K), a);
}

void pyphi_vec_dot_q5_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *a) {
    *s = dot_k(term_q5_K, n / PYPHI_QK_K, w, sizeof(block_q5_K), a);
}

void pyphi_vec_dot_q6_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *a) {
    *s = dot_k(term_q6_K, n / PYPHI_QK_K, w, sizeof(block_q6_K), a);
}

/* Packed Q5_K/Q6_K weights (quants.h, PYPHI_PACK_ROWS_K): per (row, token) the dot above, bit for
 * bit, reading the row's blocks at the group's stride. a_sums is not used (NULL). */
#define DEFINE_GEMM_PACKED_K(NAME, TERM, BLOCK)                                                    \
    void NAME(int64_t n, int64_t n_groups, int64_t n_tok, const void *w, const void *a,           \
              size_t a_stride, const int32_t *a_sums, float *y, int64_t y_stride) {               \
        (void)a_sums;                                                                             \
        const int64_t nb = n / PYPHI_QK_K;                                                        \
        const size_t b_stride = PYPHI_PACK_ROWS_K * sizeof(BLOCK);                                \
        for (int64_t g = 0; g < n_groups; g++) {                                                  \
            const uint8_t *group = (const uint8_t *)w + (size_t)g * (size_t)nb * b_stride;        \
            for (int64_t t = 0; t < n_tok; t++) {                                                 \
                const block_q8_K *at = (const block_q8_K *)((const uint8_t *)a + (size_t)t * a_stride); \
                for (int i = 0; i < PYPHI_PACK_ROWS_K; i++) {                                     \
                    y[t * y_stride + g * PYPHI_PACK_ROWS_K + i] =                                 \
                        dot_k(TERM, nb, group + (size_t)i * sizeof(BLOCK), b_stride, at);         \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }


DEFINE_GEMM_PACKED_K(pyphi_gemm_packed_q5_K_scalar, term_q5_K, block_q5_K)

/* Q4_K's and Q6_K's packed layouts (one lane per row, quants.h): each row's block rebuilt, then
 * the dot's terms in order, so bit for bit the scalar dot. */
#define DEFINE_GEMM_PACKED_LANES(NAME, TERM, BLOCK, PACKED_BYTES, UNPACK)                           \
    void NAME(int64_t n, int64_t n_groups, int64_t n_tok, const void *w, const void *a,           \
              size_t a_stride, const int32_t *a_sums, float *y, int64_t y_stride) {               \
        (void)a_sums;                                                                             \
        const int64_t nb = n / PYPHI_QK_K;                                                        \
        for (int64_t g = 0; g < n_groups; g++) {                                                  \
            const uint8_t *group = (const uint8_t *)w + (size_t)g * (size_t)nb * (PACKED_BYTES);  \
            for (int64_t t = 0; t < n_tok; t++) {                                                 \
                const block_q8_K *at = (const block_q8_K *)((const uint8_t *)a + (size_t)t * a_stride); \
                for (int i = 0; i < PYPHI_PACK_ROWS; i++) {                                       \
                    float sum = 0.0f;                                                             \
                    for (int64_t b = 0; b < nb; b++) {                                            \
                        BLOCK blk;                                                                \
                        UNPACK(group + (size_t)b * (PACKED_BYTES), i, &blk);                      \
                        sum += TERM(&blk, &at[b]);                                                \
                    }                                                                             \
                    y[t * y_stride + g * PYPHI_PACK_ROWS + i] = sum;                              \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

DEFINE_GEMM_PACKED_LANES(pyphi_gemm_packed_q4_K_scalar, term_q4_K, block_q4_K, PYPHI_Q4_K_PACKED_BYTES,
                         pyphi_unpack_q4_K)
DEFINE_GEMM_PACKED_LANES(pyphi_gemm_packed_q6_K_scalar, term_q6_K, block_q6_K, PYPHI_Q6_K_PACKED_BYTES,
                         pyphi_unpack_q6_K)

/* ---- Softmax (kernels.h) ------------------------------------------------------------------- */

/* pyphi_exp, the definition every ISA's lanes follow operation for operation (fmaf is the
 * correctly rounded fused multiply-add, the hardware FMA's result). */
static float exp_nonpositive(float x) {
    if (!(x >= PYPHI_EXP_MIN)) {
        return x != x ? x : 0.0f; /* NaN stays NaN; below ln(2^-126) flushes to 0 */
    }
    float n = nearbyintf(x * PYPHI_EXP_LOG2E); /* -126 .. 0 */
    float r = fmaf(n, -PYPHI_EXP_LN2_HI, x);   /* exact */
    r = fmaf(n, -PYPHI_EXP_LN2_LO, r);
    float p = PYPHI_EXP_C7;
    p = fmaf(p, r, PYPHI_EXP_C6);
    p = fmaf(p, r, PYPHI_EXP_C5);
    p = fmaf(p, r, PYPHI_EXP_C4);
    p = fmaf(p, r, PYPHI_EXP_C3);
    p = fmaf(p, r, PYPHI_EXP_C2);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    uint32_t bits = (uint32_t)((int32_t)n + 127) << 23; /* 2^n, a normal float */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static void softmax_scalar(float *x, int64_t n, float scale) {
    float max = -INFINITY;
    for (int64_t i = 0; i < n; i++) {
        x[i] *= scale;
        max = x[i] > max ? x[i] : max;
    }
    float part[16] = {0};
    for (int64_t i = 0; i < n; i++) {
        x[i] = exp_nonpositive(x[i] - max);
        part[i % 16] += x[i];
    }
    for (int width = 8; width >= 1; width /= 2) {
        for (int j = 0; j < width; j++) {
            part[j] += part[j + width];
        }
    }
    float inv = 1.0f / part[0];
    for (int64_t i = 0; i < n; i++) {
        x[i] *= inv;
    }
}

/* The reference tiles: by definition, one dot per (row, token). */
PYPHI_DEFINE_GEMM_BY_DOT(gemm_f32_scalar, pyphi_vec_dot_f32_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_f16_scalar, pyphi_vec_dot_f16_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_bf16_scalar, pyphi_vec_dot_bf16_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q8_0_q8_0_scalar, pyphi_vec_dot_q8_0_q8_0_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_0_q8_0_scalar, pyphi_vec_dot_q4_0_q8_0_scalar)

/* pyphi_gemm_lanes_fn: by definition the scalar dots, which the packed product equals. */
static void gemm_lanes_q8_0_scalar(int64_t n, int64_t n_rows, int64_t n_tok, const void *w,
                                   size_t w_stride, const void *a, size_t a_stride,
                                   const int32_t *a_sums, float *y, int64_t y_stride) {
    (void)a_sums;
    gemm_q8_0_q8_0_scalar(n, n_rows, n_tok, w, w_stride, a, a_stride, y, y_stride);
}

static void gemm_lanes_q4_0_scalar(int64_t n, int64_t n_rows, int64_t n_tok, const void *w,
                                   size_t w_stride, const void *a, size_t a_stride,
                                   const int32_t *a_sums, float *y, int64_t y_stride) {
    (void)a_sums;
    gemm_q4_0_q8_0_scalar(n, n_rows, n_tok, w, w_stride, a, a_stride, y, y_stride);
}
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_1_q8_1_scalar, pyphi_vec_dot_q4_1_q8_1_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_0_q8_0_scalar, pyphi_vec_dot_q5_0_q8_0_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_1_q8_1_scalar, pyphi_vec_dot_q5_1_q8_1_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_K_q8_K_scalar, pyphi_vec_dot_q4_K_q8_K_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_K_q8_K_scalar, pyphi_vec_dot_q5_K_q8_K_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q6_K_q8_K_scalar, pyphi_vec_dot_q6_K_q8_K_scalar)

/* The weighted sum of rows (kernels.h): one running sum per output, rows in order; compiled
 * with -ffp-contract=off, so the product and the sum are rounded apart. */
#define DEFINE_WEIGHTED_ROWS(NAME, T, TO_F32)                                                      \
    void NAME(int64_t n, int64_t n_rows, int64_t n_q, const void *v, size_t v_stride,            \
              const float *p, int64_t p_stride, float *out, int64_t out_stride) {                \
        for (int64_t q = 0; q < n_q; q++) {                                                       \
            float *o = out + q * out_stride; /* (n,) */                                           \
            for (int64_t i = 0; i < n; i++) {                                                     \
                o[i] = 0.0f;                                                                      \
            }                                                                                     \
            for (int64_t j = 0; j < n_rows; j++) {                                                \
                const T *row = (const T *)((const uint8_t *)v + (size_t)j * v_stride); /* (n,) */ \
                float pj = p[q * p_stride + j];                                                   \
                for (int64_t i = 0; i < n; i++) {                                                 \
                    o[i] = o[i] + pj * TO_F32(row[i]);                                            \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

static inline float f32_as_is(float x) { return x; }
DEFINE_WEIGHTED_ROWS(pyphi_weighted_rows_f32_scalar, float, f32_as_is)
DEFINE_WEIGHTED_ROWS(pyphi_weighted_rows_f16_scalar, uint16_t, pyphi_fp16_to_fp32)

const pyphi_kernels pyphi_kernels_scalar = {
    .isa = PYPHI_ISA_SCALAR,
    .vec_dot = {
        [PYPHI_TYPE_F32] = pyphi_vec_dot_f32_scalar,
        [PYPHI_TYPE_F16] = pyphi_vec_dot_f16_scalar,
        [PYPHI_TYPE_BF16] = pyphi_vec_dot_bf16_scalar,
        [PYPHI_TYPE_Q8_0] = pyphi_vec_dot_q8_0_q8_0_scalar,
        [PYPHI_TYPE_Q4_0] = pyphi_vec_dot_q4_0_q8_0_scalar,
        [PYPHI_TYPE_Q4_1] = pyphi_vec_dot_q4_1_q8_1_scalar,
        [PYPHI_TYPE_Q5_0] = pyphi_vec_dot_q5_0_q8_0_scalar,
        [PYPHI_TYPE_Q5_1] = pyphi_vec_dot_q5_1_q8_1_scalar,
        [PYPHI_TYPE_Q4_K] = pyphi_vec_dot_q4_K_q8_K_scalar,
        [PYPHI_TYPE_Q5_K] = pyphi_vec_dot_q5_K_q8_K_scalar,
        [PYPHI_TYPE_Q6_K] = pyphi_vec_dot_q6_K_q8_K_scalar,
    },
    .gemm = {
        [PYPHI_TYPE_F32] = gemm_f32_scalar,
        [PYPHI_TYPE_F16] = gemm_f16_scalar,
        [PYPHI_TYPE_BF16] = gemm_bf16_scalar,
        [PYPHI_TYPE_Q8_0] = gemm_q8_0_q8_0_scalar,
        [PYPHI_TYPE_Q4_0] = gemm_q4_0_q8_0_scalar,
        [PYPHI_TYPE_Q4_1] = gemm_q4_1_q8_1_scalar,
        [PYPHI_TYPE_Q5_0] = gemm_q5_0_q8_0_scalar,
        [PYPHI_TYPE_Q5_1] = gemm_q5_1_q8_1_scalar,
        [PYPHI_TYPE_Q4_K] = gemm_q4_K_q8_K_scalar,
        [PYPHI_TYPE_Q5_K] = gemm_q5_K_q8_K_scalar,
        [PYPHI_TYPE_Q6_K] = gemm_q6_K_q8_K_scalar,
    },
    .gemm_lanes = {
        [PYPHI_TYPE_Q8_0] = gemm_lanes_q8_0_scalar,
        [PYPHI_TYPE_Q4_0] = gemm_lanes_q4_0_scalar,
    },
    .gemm_packed = {
        [PYPHI_TYPE_Q8_0] = pyphi_gemm_packed_q8_0_scalar,
        [PYPHI_TYPE_Q4_0] = pyphi_gemm_packed_q4_0_scalar,
        [PYPHI_TYPE_Q4_K] = pyphi_gemm_packed_q4_K_scalar,
        [PYPHI_TYPE_Q5_K] = pyphi_gemm_packed_q5_K_scalar,
        [PYPHI_TYPE_Q6_K] = pyphi_gemm_packed_q6_K_scalar,
    },
    .softmax = softmax_scalar,
    .weighted_rows = {
        [PYPHI_TYPE_F32] = pyphi_weighted_rows_f32_scalar,
        [PYPHI_TYPE_F16] = pyphi_weighted_rows_f16_scalar,
    },
    .quantize_act = {
        [PYPHI_TYPE_BF16] = pyphi_quantize_row_bf16,
        [PYPHI_TYPE_Q8_0] = pyphi_quantize_row_q8_0,
        [PYPHI_TYPE_Q8_1] = pyphi_quantize_row_q8_1,
        [PYPHI_TYPE_Q8_K] = pyphi_quantize_row_q8_K,
    },
};
