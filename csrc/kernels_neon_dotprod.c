/* kernels_neon_dotprod.c: the kernel table for AArch64 cores with the ARMv8.2 dot-product
 * instructions (SDOT: Cortex-A55/A75 and later, Neoverse, Apple M1 and later).
 *
 * Compiled with -march=armv8.2-a+dotprod (CMakeLists.txt) and reached only through dispatch.c
 * after cpu_arm.c saw HWCAP_ASIMDDP, so nothing here may be called from shared code. Only the
 * quantized dots differ from the NEON table: SDOT sums four int8 x int8 products into each int32
 * lane, exactly; every other entry comes from the NEON table (.base, filled in by dispatch.c).
 * Each block is then scaled and added in block order, as the scalar twin does, so results are
 * its bits.
 */
#include "kernels.h"
#include "kernels_neon.h"
#include "pyphi.h"
#include "quants.h"

#include <arm_neon.h>

/* The quantized dots: kernels_neon.h's bodies with SDOT. */
static inline int32x4_t dot16_sdot(int32x4_t acc, int8x16_t x, int8x16_t y) {
    return vdotq_s32(acc, x, y);
}

static void vec_dot_q8_0_q8_0_dotprod(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q8_0_neon(dot16_sdot, n, s, w, a);
}

static void vec_dot_q4_0_q8_0_dotprod(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q4_0_neon(dot16_sdot, n, s, w, a);
}

static void vec_dot_q5_0_q8_0_dotprod(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q5_0_neon(dot16_sdot, n, s, w, a);
}

static void vec_dot_q4_1_q8_1_dotprod(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q4_1_neon(dot16_sdot, n, s, w, a);
}

static void vec_dot_q5_1_q8_1_dotprod(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q5_1_neon(dot16_sdot, n, s, w, a);
}

static void vec_dot_q4_K_q8_K_dotprod(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q4_K_neon(dot16_sdot, n, s, w, a);
}

static void vec_dot_q5_K_q8_K_dotprod(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q5_K_neon(dot16_sdot, n, s, w, a);
}

static void vec_dot_q6_K_q8_K_dotprod(int64_t n, float *s, const void *w, const void *a) {
    pyphi_vec_dot_q6_K_neon(dot16_sdot, n, s, w, a);
}

PYPHI_DEFINE_GEMM_BY_DOT(gemm_q8_0_q8_0_dotprod, vec_dot_q8_0_q8_0_dotprod)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_0_q8_0_dotprod, vec_dot_q4_0_q8_0_dotprod)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_0_q8_0_dotprod, vec_dot_q5_0_q8_0_dotprod)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_1_q8_1_dotprod, vec_dot_q4_1_q8_1_dotprod)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_1_q8_1_dotprod, vec_dot_q5_1_q8_1_dotprod)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_K_q8_K_dotprod, vec_dot_q4_K_q8_K_dotprod)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_K_q8_K_dotprod, vec_dot_q5_K_q8_K_dotprod)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q6_K_q8_K_dotprod, vec_dot_q6_K_q8_K_dotprod)

/* Every entry not listed here is the NEON table's (itself completed from the scalar one). */
const pyphi_kernels pyphi_kernels_neon_dotprod = {
    .isa = PYPHI_ISA_NEON_DOTPROD,
    .base = PYPHI_ISA_NEON,
    .vec_dot = {
        [PYPHI_TYPE_Q8_0] = vec_dot_q8_0_q8_0_dotprod,
        [PYPHI_TYPE_Q4_0] = vec_dot_q4_0_q8_0_dotprod,
        [PYPHI_TYPE_Q5_0] = vec_dot_q5_0_q8_0_dotprod,
        [PYPHI_TYPE_Q4_1] = vec_dot_q4_1_q8_1_dotprod,
        [PYPHI_TYPE_Q5_1] = vec_dot_q5_1_q8_1_dotprod,
        [PYPHI_TYPE_Q4_K] = vec_dot_q4_K_q8_K_dotprod,
        [PYPHI_TYPE_Q5_K] = vec_dot_q5_K_q8_K_dotprod,
        [PYPHI_TYPE_Q6_K] = vec_dot_q6_K_q8_K_dotprod,
    },
    .gemm = {
        [PYPHI_TYPE_Q8_0] = gemm_q8_0_q8_0_dotprod,
        [PYPHI_TYPE_Q4_0] = gemm_q4_0_q8_0_dotprod,
        [PYPHI_TYPE_Q5_0] = gemm_q5_0_q8_0_dotprod,
        [PYPHI_TYPE_Q4_1] = gemm_q4_1_q8_1_dotprod,
        [PYPHI_TYPE_Q5_1] = gemm_q5_1_q8_1_dotprod,
        [PYPHI_TYPE_Q4_K] = gemm_q4_K_q8_K_dotprod,
        [PYPHI_TYPE_Q5_K] = gemm_q5_K_q8_K_dotprod,
        [PYPHI_TYPE_Q6_K] = gemm_q6_K_q8_K_dotprod,
    },
};
