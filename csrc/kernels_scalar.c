/* kernels_scalar.c: the portable reference kernels. They define what every SIMD variant computes,
 * run on any CPU, and are the oracle the tests compare the SIMD tables against.
 *
 * Written for clarity: one accumulator, values in index order (ggml's *_generic functions play
 * the same role). Compiled with the baseline flags of the target, like all shared code.
 */
#include "kernels.h"
#include "pyphi.h"
#include "quants.h"

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

const pyphi_kernels pyphi_kernels_scalar = {
    .isa = PYPHI_ISA_SCALAR,
    .vec_dot = {
        [PYPHI_TYPE_F32] = pyphi_vec_dot_f32_scalar,
        [PYPHI_TYPE_F16] = pyphi_vec_dot_f16_scalar,
        [PYPHI_TYPE_BF16] = pyphi_vec_dot_bf16_scalar,
        [PYPHI_TYPE_Q8_0] = pyphi_vec_dot_q8_0_q8_0_scalar,
        [PYPHI_TYPE_Q4_0] = pyphi_vec_dot_q4_0_q8_0_scalar,
    },
    .quantize_row_q8_0 = pyphi_quantize_row_q8_0,
};
