/* kernels_neon.c: the kernel table for AArch64 cores with Advanced SIMD (NEON), which every
 * AArch64 Linux system has (the kernel requires FP/ASIMD; cpu_arm.c still checks HWCAP_ASIMD).
 *
 * Compiled with the baseline AArch64 flags, like the shared code; the dot-product variant that
 * needs ARMv8.2's SDOT lives in kernels_neon_dotprod.c with its own flags, and its table takes
 * every other entry from this one (its base). Each function computes what the same table entry of
 * pyphi_kernels_scalar (kernels_scalar.c, quants.c) defines; see kernels.h for how closely.
 *
 * Quantized dots, every type of the scalar table (Q5_0/Q4_1/Q5_1 and the K-quants through
 * kernels_neon.h's bodies): each block's int32 sum is exact for every block content (int8 x int8
 * products widen to int16 without overflow: |-128 * -128| = 16384), and the blocks are then
 * scaled and added in block order exactly as the scalar twin does, so the result is the scalar
 * twin's bits.
 */
#include "kernels.h"
#include "kernels_neon.h"
#include "pyphi.h"
#include "quants.h"

#include <arm_neon.h>

/* ---- Float weights x float32 activations ------------------------------------------------- */

static inline float32x4_t load_f32(const float *p) {
    return vld1q_f32(p);
}

/* FCVTL converts binary16 exactly (subnormals too: Linux leaves FPCR.FZ16 clear). */
static inline float32x4_t load_f16(const uint16_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

/* bfloat16 is the top half of a binary32: widen to 32 bits, shifted left by 16. */
static inline float32x4_t load_bf16(const uint16_t *p) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}

static inline float f32_identity(float v) {
    return v;
}

/* One body for the three float weight types: W / A are the weight / activation element types
 * (activations are float32, or bfloat16 for BF16 weights: pyphi_vec_dot_type), LOAD / ALOAD
 * widen 4 of them to binary32 and TO_F32 / A_TO_F32 one of them (the scalar twin's conversion)
 * for the last n % 4 values. Four accumulators (16 lanes) hide the FMA latency; the longest
 * rounding path is n / 16 + 3 fused steps in one lane, 4 additions reducing the lanes and 3
 * tail additions: n / 16 + 10, within kernels.h's m + 10. */
#define DEFINE_VEC_DOT_FLOAT(NAME, W, LOAD, TO_F32, A, ALOAD, A_TO_F32)                           \
    static void NAME(int64_t n, float *s, const void *vw, const void *va) {                       \
        const W *w = vw; /* (n,) */                                                                \
        const A *a = va; /* (n,) */                                                                \
        float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);                            \
        float32x4_t acc2 = vdupq_n_f32(0.0f), acc3 = vdupq_n_f32(0.0f);                            \
        int64_t i = 0;                                                                             \
        for (; i + 16 <= n; i += 16) {                                                             \
            acc0 = vfmaq_f32(acc0, LOAD(w + i), ALOAD(a + i));                                     \
            acc1 = vfmaq_f32(acc1, LOAD(w + i + 4), ALOAD(a + i + 4));                             \
            acc2 = vfmaq_f32(acc2, LOAD(w + i + 8), ALOAD(a + i + 8));                             \
            acc3 = vfmaq_f32(acc3, LOAD(w + i + 12), ALOAD(a + i + 12));                           \
        }                                                                                          \
        for (; i + 4 <= n; i += 4) {                                                               \
            acc0 = vfmaq_f32(acc0, LOAD(w + i), ALOAD(a + i));                                     \
        }                                                                                          \
        float sum = vaddvq_f32(vaddq_f32(vaddq_f32(acc0, acc1), vaddq_f32(acc2, acc3)));           \
        for (; i < n; i++) {                                                                       \
            sum += TO_F32(w[i]) * A_TO_F32(a[i]);                                                  \
        }                                                                                          \
        *s = sum;                                                                                  \
    }

DEFINE_VEC_DOT_FLOAT(vec_dot_f32_neon, float, load_f32, f32_identity, float, load_f32, f32_identity)
DEFINE_VEC_DOT_FLOAT(vec_dot_f16_neon, uint16_t, load_f16, pyphi_fp16_to_fp32, float, load_f32,
                     f32_identity)
DEFINE_VEC_DOT_FLOAT(vec_dot_bf16_neon, uint16_t, load_bf16, pyphi_bf16_to_fp32, uint16_t,
                     load_bf16, pyphi_bf16_to_fp32)

/* ---- Quantized weights x Q8_0 activations ------------------------------------------------ */

/* Exact int32 sum of 16 int8 x int8 products: widening multiplies, then pairwise accumulation. */
static inline int32x4_t dot16_s8(int32x4_t acc, int8x16_t x, int8x16_t y) {
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(x), vget_low_s8(y)));
    return vpadalq_s16(acc, vmull_high_s8(x, y));
}

/* The quantized dots: kernels_neon.h's bodies with the widening dot. */
static void vec_dot_q8_0_q8_0_neon(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q8_0_neon(dot16_s8, n, s, w, a);
}

static void vec_dot_q4_0_q8_0_neon(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q4_0_neon(dot16_s8, n, s, w, a);
}

static void vec_dot_q5_0_q8_0_neon(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q5_0_neon(dot16_s8, n, s, w, a);
}

static void vec_dot_q4_1_q8_1_neon(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q4_1_neon(dot16_s8, n, s, w, a);
}

static void vec_dot_q5_1_q8_1_neon(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q5_1_neon(dot16_s8, n, s, w, a);
}

static void vec_dot_q4_K_q8_K_neon(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q4_K_neon(dot16_s8, n, s, w, a);
}

static void vec_dot_q5_K_q8_K_neon(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q5_K_neon(dot16_s8, n, s, w, a);
}

static void vec_dot_q6_K_q8_K_neon(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q6_K_neon(dot16_s8, n, s, w, a);
}

/* ---- Activation quantizer: float32 -> Q8_0, bit-identical to pyphi_quantize_row_q8_0 ------ */

/* roundf(v * id) through the numpy cast of quants.h (pyphi_numpy_f32_to_u8), 4 lanes as int32:
 * FRINTA is roundf (ties away from zero); FCVTZS of the rounded value is exact where
 * |r| < 2^31, and every other lane (NaN, inf, out of int32 range) becomes 0. The caller keeps
 * the low byte, as the scalar cast does. */
static inline int32x4_t round_scaled(float32x4_t v, float32x4_t id) {
    float32x4_t r = vrndaq_f32(vmulq_f32(v, id));
    uint32x4_t in_range = vcaltq_f32(r, vdupq_n_f32(2147483648.0f)); /* false for NaN */
    return vandq_s32(vcvtq_s32_f32(r), vreinterpretq_s32_u32(in_range));
}

static void quantize_row_q8_0_neon(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK8_0; b++) {
        const float *xb = x + b * PYPHI_QK8_0; /* (32,) */
        float32x4_t v[8];
        uint32x4_t ordered = vdupq_n_u32(~0u);
        float32x4_t m = vdupq_n_f32(0.0f);
        for (int k = 0; k < 8; k++) {
            v[k] = vld1q_f32(xb + 4 * k);
            ordered = vandq_u32(ordered, vceqq_f32(v[k], v[k]));
            m = vmaxq_f32(m, vabsq_f32(v[k]));
        }
        if (vminvq_u32(ordered) == 0) {
            /* which NaN becomes the scale is defined by the scalar scan order */
            pyphi_quantize_row_q8_0(xb, &y[b], PYPHI_QK8_0);
            continue;
        }
        float amax = vmaxvq_f32(m);
        float d = amax / 127.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        y[b].d = pyphi_fp32_to_fp16(d);
        float32x4_t idv = vdupq_n_f32(id);
        for (int k = 0; k < 8; k += 4) {
            /* int32 -> int16 -> int8 keeping the low bits (XTN), like the scalar uint8 cast */
            int16x8_t lo = vcombine_s16(vmovn_s32(round_scaled(v[k], idv)),
                                        vmovn_s32(round_scaled(v[k + 1], idv)));
            int16x8_t hi = vcombine_s16(vmovn_s32(round_scaled(v[k + 2], idv)),
                                        vmovn_s32(round_scaled(v[k + 3], idv)));
            vst1q_s8(y[b].qs + 4 * k, vcombine_s8(vmovn_s16(lo), vmovn_s16(hi)));
        }
    }
}

/* ---- Matmul tiles: one dot per (row, token), no blocked kernels on this ISA yet ---------- */

PYPHI_DEFINE_GEMM_BY_DOT(gemm_f32_neon, vec_dot_f32_neon)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_f16_neon, vec_dot_f16_neon)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_bf16_neon, vec_dot_bf16_neon)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q8_0_q8_0_neon, vec_dot_q8_0_q8_0_neon)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_0_q8_0_neon, vec_dot_q4_0_q8_0_neon)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_0_q8_0_neon, vec_dot_q5_0_q8_0_neon)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_1_q8_1_neon, vec_dot_q4_1_q8_1_neon)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_1_q8_1_neon, vec_dot_q5_1_q8_1_neon)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_K_q8_K_neon, vec_dot_q4_K_q8_K_neon)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_K_q8_K_neon, vec_dot_q5_K_q8_K_neon)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q6_K_q8_K_neon, vec_dot_q6_K_q8_K_neon)

/* Packed weights and the Q8_1/Q8_K activation quantizers are not listed here: they take the
 * scalar twin (dispatch.c fills the gaps). */
const pyphi_kernels pyphi_kernels_neon = {
    .isa = PYPHI_ISA_NEON,
    .vec_dot = {
        [PYPHI_TYPE_F32] = vec_dot_f32_neon,
        [PYPHI_TYPE_F16] = vec_dot_f16_neon,
        [PYPHI_TYPE_BF16] = vec_dot_bf16_neon,
        [PYPHI_TYPE_Q8_0] = vec_dot_q8_0_q8_0_neon,
        [PYPHI_TYPE_Q4_0] = vec_dot_q4_0_q8_0_neon,
        [PYPHI_TYPE_Q5_0] = vec_dot_q5_0_q8_0_neon,
        [PYPHI_TYPE_Q4_1] = vec_dot_q4_1_q8_1_neon,
        [PYPHI_TYPE_Q5_1] = vec_dot_q5_1_q8_1_neon,
        [PYPHI_TYPE_Q4_K] = vec_dot_q4_K_q8_K_neon,
        [PYPHI_TYPE_Q5_K] = vec_dot_q5_K_q8_K_neon,
        [PYPHI_TYPE_Q6_K] = vec_dot_q6_K_q8_K_neon,
    },
    .gemm = {
        [PYPHI_TYPE_F32] = gemm_f32_neon,
        [PYPHI_TYPE_F16] = gemm_f16_neon,
        [PYPHI_TYPE_BF16] = gemm_bf16_neon,
        [PYPHI_TYPE_Q8_0] = gemm_q8_0_q8_0_neon,
        [PYPHI_TYPE_Q4_0] = gemm_q4_0_q8_0_neon,
        [PYPHI_TYPE_Q5_0] = gemm_q5_0_q8_0_neon,
        [PYPHI_TYPE_Q4_1] = gemm_q4_1_q8_1_neon,
        [PYPHI_TYPE_Q5_1] = gemm_q5_1_q8_1_neon,
        [PYPHI_TYPE_Q4_K] = gemm_q4_K_q8_K_neon,
        [PYPHI_TYPE_Q5_K] = gemm_q5_K_q8_K_neon,
        [PYPHI_TYPE_Q6_K] = gemm_q6_K_q8_K_neon,
    },
    .quantize_act = {[PYPHI_TYPE_Q8_0] = quantize_row_q8_0_neon},
};
