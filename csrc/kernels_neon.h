/* kernels_neon.h: NEON helpers shared by the NEON table (kernels_neon.c, baseline AArch64 flags)
 * and the dot-product table (kernels_neon_dotprod.c). Internal to libpyphi, AArch64 builds only.
 */
#ifndef PYPHI_KERNELS_NEON_H
#define PYPHI_KERNELS_NEON_H

#include "pyphi.h"
#include "quants.h"

#include <arm_neon.h>
#include <stddef.h>
#include <stdint.h>

/* The 32 codes of a Q4_0 block (16 bytes qs) as signed values -8..7: values 0..15 (low
 * nibbles) in *lo, values 16..31 (high nibbles) in *hi, matching block_q8_0's order. */
static inline void pyphi_q4_0_codes_neon(const uint8_t *qs, int8x16_t *lo, int8x16_t *hi) {
    uint8x16_t packed = vld1q_u8(qs);
    const int8x16_t eight = vdupq_n_s8(8);
    *lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))), eight);
    *hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(packed, 4)), eight);
}

/* ---- Shared by both tables: the quantized dots ---------------------------------------------
 * Each file instantiates these bodies with its own exact 16-value dot (pyphi_dot16_neon_fn:
 * acc plus the int32 sum of x[i] * y[i], spread over the 4 lanes in any way): widening
 * multiplies in kernels_neon.c, SDOT in kernels_neon_dotprod.c. A block's integer sums are exact
 * in int32 whatever the lane split, and the float arithmetic after them is the scalar twin's,
 * operation for operation and in block order (kernels_scalar.c; -ffp-contract=off for every
 * file), so every dot here gives the scalar twin's bits. */

typedef int32x4_t (*pyphi_dot16_neon_fn)(int32x4_t acc, int8x16_t x, int8x16_t y);

#define PYPHI_NEON_INLINE static inline __attribute__((always_inline))

/* The 32 unsigned codes 0..15 of a Q4_1 block: values 0..15 in *lo, 16..31 in *hi. */
PYPHI_NEON_INLINE void pyphi_nibbles_neon(const uint8_t *qs, int8x16_t *lo, int8x16_t *hi) {
    uint8x16_t packed = vld1q_u8(qs);
    *lo = vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f)));
    *hi = vreinterpretq_s8_u8(vshrq_n_u8(packed, 4));
}

/* The 32 codes 0..31 of a Q5_0/Q5_1 block (kernels_scalar.c codes5): nibble j | bit j of the
 * little-endian qh << 4. Byte j of a vector holding qh's byte j / 8 in lanes 8 (j / 8) .. is
 * tested against 1 << (j % 8). */
PYPHI_NEON_INLINE void pyphi_codes5_neon(const uint8_t *qs, const uint8_t *qh, int8x16_t *lo,
                                         int8x16_t *hi) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t bits = vld1q_u8(bit), sixteen = vdupq_n_u8(0x10);
    uint8x16_t h_lo = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
    uint8x16_t h_hi = vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3]));
    int8x16_t n_lo, n_hi;
    pyphi_nibbles_neon(qs, &n_lo, &n_hi);
    *lo = vorrq_s8(n_lo, vreinterpretq_s8_u8(vandq_u8(vtstq_u8(h_lo, bits), sixteen)));
    *hi = vorrq_s8(n_hi, vreinterpretq_s8_u8(vandq_u8(vtstq_u8(h_hi, bits), sixteen)));
}

/* Exact int32 dot of 32 codes with a Q8 block's 32 codes. */
PYPHI_NEON_INLINE int32_t pyphi_dot32_neon(pyphi_dot16_neon_fn dot, int8x16_t lo, int8x16_t hi,
                                           const int8_t *a) {
    int32x4_t acc = dot(vdupq_n_s32(0), lo, vld1q_s8(a));
    return vaddvq_s32(dot(acc, hi, vld1q_s8(a + 16)));
}

/* kernels_scalar.c min_block_term: (d_w d_a) isum + m_w s_a, the two products exact. */
PYPHI_NEON_INLINE float pyphi_min_block_term_neon(uint16_t dw, uint16_t mw, const block_q8_1 *a,
                                                  int32_t isum) {
    float dd = pyphi_fp16_to_fp32(dw) * pyphi_fp16_to_fp32(a->d); /* exact */
    float ms = pyphi_fp16_to_fp32(mw) * pyphi_fp16_to_fp32(a->s); /* exact */
    return (float)isum * dd + ms;
}

PYPHI_NEON_INLINE void pyphi_vec_dot_q8_0_neon(pyphi_dot16_neon_fn dot, int64_t n, float *s,
                                               const void *vw, const void *va) {
    const block_q8_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK8_0; b++) {
        int32_t isum = pyphi_dot32_neon(dot, vld1q_s8(w[b].qs), vld1q_s8(w[b].qs + 16), a[b].qs);
        float dd = pyphi_fp16_to_fp32(w[b].d) * pyphi_fp16_to_fp32(a[b].d); /* exact */
        sum += (float)isum * dd;
    }
    *s = sum;
}

PYPHI_NEON_INLINE void pyphi_vec_dot_q4_0_neon(pyphi_dot16_neon_fn dot, int64_t n, float *s,
                                               const void *vw, const void *va) {
    const block_q4_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK4_0; b++) {
        int8x16_t lo, hi; /* values 0..15 and 16..31 of the block, in -8..7 */
        pyphi_q4_0_codes_neon(w[b].qs, &lo, &hi);
        int32_t isum = pyphi_dot32_neon(dot, lo, hi, a[b].qs);
        float dd = pyphi_fp16_to_fp32(w[b].d) * pyphi_fp16_to_fp32(a[b].d); /* exact */
        sum += (float)isum * dd;
    }
    *s = sum;
}

PYPHI_NEON_INLINE void pyphi_vec_dot_q5_0_neon(pyphi_dot16_neon_fn dot, int64_t n, float *s,
                                               const void *vw, const void *va) {
    const block_q5_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    const int8x16_t sixteen = vdupq_n_s8(16);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK5_0; b++) {
        int8x16_t lo, hi;
        pyphi_codes5_neon(w[b].qs, w[b].qh, &lo, &hi);
        int32_t isum = pyphi_dot32_neon(dot, vsubq_s8(lo, sixteen), vsubq_s8(hi, sixteen), a[b].qs);
        float dd = pyphi_fp16_to_fp32(w[b].d) * pyphi_fp16_to_fp32(a[b].d); /* exact */
        sum += (float)isum * dd;
    }
    *s = sum;
}

PYPHI_NEON_INLINE void pyphi_vec_dot_q4_1_neon(pyphi_dot16_neon_fn dot, int64_t n, float *s,
                                               const void *vw, const void *va) {
    const block_q4_1 *w = vw; /* (n / 32,) */
    const block_q8_1 *a = va; /* (n / 32,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK4_1; b++) {
        int8x16_t lo, hi;
        pyphi_nibbles_neon(w[b].qs, &lo, &hi);
        int32_t isum = pyphi_dot32_neon(dot, lo, hi, a[b].qs);
        sum += pyphi_min_block_term_neon(w[b].d, w[b].m, &a[b], isum);
    }
    *s = sum;
}

PYPHI_NEON_INLINE void pyphi_vec_dot_q5_1_neon(pyphi_dot16_neon_fn dot, int64_t n, float *s,
                                               const void *vw, const void *va) {
    const block_q5_1 *w = vw; /* (n / 32,) */
    const block_q8_1 *a = va; /* (n / 32,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK5_1; b++) {
        int8x16_t lo, hi;
        pyphi_codes5_neon(w[b].qs, w[b].qh, &lo, &hi);
        int32_t isum = pyphi_dot32_neon(dot, lo, hi, a[b].qs);
        sum += pyphi_min_block_term_neon(w[b].d, w[b].m, &a[b], isum);
    }
    *s = sum;
}

/* ---- K-quants x Q8_K: per super-block the scalar twin's exact isum and msum (kernels_scalar.c),
 * the sub-block dots in NEON, each times its scale in int32 lanes (every lane's partial sum is
 * bounded by the |isum| bounds there: below 2^28), then its float formula. */

/* msum = sum over sub-blocks j of m_j (bsums[2j] + bsums[2j + 1]), exact (pairs widened to
 * int32, as the scalar twin's int arithmetic, whatever the bsums hold). */
PYPHI_NEON_INLINE int32_t pyphi_k_msum_neon(const uint8_t mins[8], const int16_t *bsums) {
    int32x4_t p0 = vpaddlq_s16(vld1q_s16(bsums)), p1 = vpaddlq_s16(vld1q_s16(bsums + 8));
    uint16x8_t m = vmovl_u8(vld1_u8(mins));
    int32x4_t m0 = vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(m)));
    int32x4_t m1 = vreinterpretq_s32_u32(vmovl_high_u16(m));
    return vaddvq_s32(vmlaq_s32(vmulq_s32(p0, m0), p1, m1));
}

/* Q4_K/Q5_K super-block (the fields of block_q4_K or block_q5_K; qh NULL for Q4_K): 8
 * sub-blocks of 32, sub-blocks 2k and 2k + 1 in the low and high nibbles of qs[32 k ..]. */
PYPHI_NEON_INLINE float pyphi_term_q45_K_neon(pyphi_dot16_neon_fn dot, uint16_t d, uint16_t dmin,
                                              const uint8_t *scales, const uint8_t *qs,
                                              const uint8_t *qh, const block_q8_K *a) {
    uint8_t sc[8], mins[8];
    for (int j = 0; j < 8; j++) {
        pyphi_k_scale_min(j, scales, &sc[j], &mins[j]);
    }
    uint8x16_t h0 = vdupq_n_u8(0), h1 = vdupq_n_u8(0);
    if (qh != NULL) {
        h0 = vld1q_u8(qh);
        h1 = vld1q_u8(qh + 16);
    }
    int32x4_t acc = vdupq_n_s32(0);
    for (int k = 0; k < 4; k++) {
        uint8x16_t q0 = vld1q_u8(qs + 32 * k), q1 = vld1q_u8(qs + 32 * k + 16);
        uint8x16_t c[4] = {vandq_u8(q0, vdupq_n_u8(0x0f)), vandq_u8(q1, vdupq_n_u8(0x0f)),
                           vshrq_n_u8(q0, 4), vshrq_n_u8(q1, 4)};
        if (qh != NULL) { /* bit 2k (2k + 1) of qh[l]: bit 4 of value l of sub-block 2k (2k + 1) */
            const uint8x16_t lo_bit = vdupq_n_u8((uint8_t)(1u << (2 * k)));
            const uint8x16_t hi_bit = vdupq_n_u8((uint8_t)(2u << (2 * k)));
            const uint8x16_t sixteen = vdupq_n_u8(0x10);
            c[0] = vorrq_u8(c[0], vandq_u8(vtstq_u8(h0, lo_bit), sixteen));
            c[1] = vorrq_u8(c[1], vandq_u8(vtstq_u8(h1, lo_bit), sixteen));
            c[2] = vorrq_u8(c[2], vandq_u8(vtstq_u8(h0, hi_bit), sixteen));
            c[3] = vorrq_u8(c[3], vandq_u8(vtstq_u8(h1, hi_bit), sixteen));
        }
        const int8_t *ak = a->qs + 64 * k;
        int32x4_t d0 = dot(vdupq_n_s32(0), vreinterpretq_s8_u8(c[0]), vld1q_s8(ak));
        d0 = dot(d0, vreinterpretq_s8_u8(c[1]), vld1q_s8(ak + 16));
        int32x4_t d1 = dot(vdupq_n_s32(0), vreinterpretq_s8_u8(c[2]), vld1q_s8(ak + 32));
        d1 = dot(d1, vreinterpretq_s8_u8(c[3]), vld1q_s8(ak + 48));
        acc = vmlaq_n_s32(acc, d0, sc[2 * k]);
        acc = vmlaq_n_s32(acc, d1, sc[2 * k + 1]);
    }
    int32_t isum = vaddvq_s32(acc);
    int32_t msum = pyphi_k_msum_neon(mins, a->bsums);
    float dd = pyphi_fp16_to_fp32(d) * a->d;
    float dm = pyphi_fp16_to_fp32(dmin) * a->d;
    return (float)isum * dd - (float)msum * dm;
}

/* Q6_K super-block: 16 sub-blocks of 16; half h, quarter u hold values 128 h + 32 u .. (see
 * block_q6_K), codes - 32 in -32..31. */
PYPHI_NEON_INLINE float pyphi_term_q6_K_neon(pyphi_dot16_neon_fn dot, const block_q6_K *w,
                                             const block_q8_K *a) {
    const int8x16_t off = vdupq_n_s8(32);
    int32x4_t acc = vdupq_n_s32(0);
    for (int h = 0; h < 2; h++) {
        const uint8x16_t qh0 = vld1q_u8(w->qh + 32 * h), qh1 = vld1q_u8(w->qh + 32 * h + 16);
        for (int u = 0; u < 4; u++) {
            const uint8_t *ql = w->ql + 64 * h + 32 * (u & 1);
            uint8x16_t l0 = vld1q_u8(ql), l1 = vld1q_u8(ql + 16);
            if (u >> 1) {
                l0 = vshrq_n_u8(l0, 4);
                l1 = vshrq_n_u8(l1, 4);
            } else {
                l0 = vandq_u8(l0, vdupq_n_u8(0x0f));
                l1 = vandq_u8(l1, vdupq_n_u8(0x0f));
            }
            const int8x16_t shift = vdupq_n_s8((int8_t)(-2 * u)); /* right by 2u */
            uint8x16_t hi0 = vandq_u8(vshlq_u8(qh0, shift), vdupq_n_u8(3));
            uint8x16_t hi1 = vandq_u8(vshlq_u8(qh1, shift), vdupq_n_u8(3));
            int8x16_t c0 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(l0, vshlq_n_u8(hi0, 4))), off);
            int8x16_t c1 = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(l1, vshlq_n_u8(hi1, 4))), off);
            const int j = 8 * h + 2 * u; /* sub-block of the first 16 values */
            const int8_t *aj = a->qs + 16 * j;
            acc = vmlaq_n_s32(acc, dot(vdupq_n_s32(0), c0, vld1q_s8(aj)), w->scales[j]);
            acc = vmlaq_n_s32(acc, dot(vdupq_n_s32(0), c1, vld1q_s8(aj + 16)), w->scales[j + 1]);
        }
    }
    float dd = pyphi_fp16_to_fp32(w->d) * a->d;
    return (float)vaddvq_s32(acc) * dd;
}

PYPHI_NEON_INLINE void pyphi_vec_dot_q4_K_neon(pyphi_dot16_neon_fn dot, int64_t n, float *s,
                                               const void *vw, const void *va) {
    const block_q4_K *w = vw; /* (n / 256,) */
    const block_q8_K *a = va; /* (n / 256,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++) {
        sum += pyphi_term_q45_K_neon(dot, w[b].d, w[b].dmin, w[b].scales, w[b].qs, NULL, &a[b]);
    }
    *s = sum;
}

PYPHI_NEON_INLINE void pyphi_vec_dot_q5_K_neon(pyphi_dot16_neon_fn dot, int64_t n, float *s,
                                               const void *vw, const void *va) {
    const block_q5_K *w = vw; /* (n / 256,) */
    const block_q8_K *a = va; /* (n / 256,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++) {
        sum += pyphi_term_q45_K_neon(dot, w[b].d, w[b].dmin, w[b].scales, w[b].qs, w[b].qh, &a[b]);
    }
    *s = sum;
}

PYPHI_NEON_INLINE void pyphi_vec_dot_q6_K_neon(pyphi_dot16_neon_fn dot, int64_t n, float *s,
                                               const void *vw, const void *va) {
    const block_q6_K *w = vw; /* (n / 256,) */
    const block_q8_K *a = va; /* (n / 256,) */
    float sum = 0.0f;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++) {
        sum += pyphi_term_q6_K_neon(dot, &w[b], &a[b]);
    }
    *s = sum;
}

#endif /* PYPHI_KERNELS_NEON_H */
