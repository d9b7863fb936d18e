/* kernels_scalar.c: the portable reference kernels. They define what every SIMD variant computes,
 * run on any CPU, and are the oracle the tests compare the SIMD tables against.
 *
 * Written for clarity: one accumulator, values in index order (ggml's *_generic functions play
 * the same role). Compiled with the baseline flags of the target, like all shared code.
 */
#include "kernels.h"
#include "pyphi.h"
#include "quants.h"

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
    const float *a = va;    /* (n,) */
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        sum += pyphi_bf16_to_fp32(w[i]) * a[i];
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

/* 5-bit code j of a Q5_0/Q5_1 block: nibble j | bit j of qh << 4 (0..31). */
static inline int32_t code5(const uint8_t *qs, const uint8_t *qh, int j) {
    uint32_t h;
    memcpy(&h, qh, sizeof h); /* little-endian, as ggml reads it */
    return ((qs[j % 16] >> (4 * (j / 16))) & 0x0f) | (int32_t)(((h >> j) & 1u) << 4);
}

void pyphi_vec_dot_q5_0_q8_0_scalar(int64_t n, float *s, const void *vw, const void *va) {
    const block_q5_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK5_0; b++) {
        int32_t isum = 0; /* |isum| <= 32 * 16 * 128: exact */
        for (int j = 0; j < PYPHI_QK5_0; j++) {
            isum += (code5(w[b].qs, w[b].qh, j) - 16) * (int32_t)a[b].qs[j];
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
        int32_t isum = 0; /* |isum| <= 32 * 31 * 128: exact */
        for (int j = 0; j < PYPHI_QK5_1; j++) {
            isum += code5(w[b].qs, w[b].qh, j) * (int32_t)a[b].qs[j];
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

/* The reference tiles: by definition, one dot per (row, token). */
PYPHI_DEFINE_GEMM_BY_DOT(gemm_f32_scalar, pyphi_vec_dot_f32_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_f16_scalar, pyphi_vec_dot_f16_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_bf16_scalar, pyphi_vec_dot_bf16_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q8_0_q8_0_scalar, pyphi_vec_dot_q8_0_q8_0_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_0_q8_0_scalar, pyphi_vec_dot_q4_0_q8_0_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_1_q8_1_scalar, pyphi_vec_dot_q4_1_q8_1_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_0_q8_0_scalar, pyphi_vec_dot_q5_0_q8_0_scalar)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_1_q8_1_scalar, pyphi_vec_dot_q5_1_q8_1_scalar)

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
    },
    .gemm_packed = {
        [PYPHI_TYPE_Q8_0] = pyphi_gemm_packed_q8_0_scalar,
        [PYPHI_TYPE_Q4_0] = pyphi_gemm_packed_q4_0_scalar,
    },
    .quantize_act = {
        [PYPHI_TYPE_Q8_0] = pyphi_quantize_row_q8_0,
        [PYPHI_TYPE_Q8_1] = pyphi_quantize_row_q8_1,
    },
};
