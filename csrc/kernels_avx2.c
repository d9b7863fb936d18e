/* kernels_avx2.c: the kernel table for AVX2 + FMA + F16C cores (Haswell, Zen 1 and later).
 *
 * Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt) and reached only through dispatch.c after
 * CPUID/XGETBV said these instructions run, so no function here may be called directly from
 * shared code. Each function computes what the same table entry of pyphi_kernels_scalar
 * (kernels_scalar.c, quants.c) defines, with the same signature; see kernels.h for how closely.
 *
 * Integer dots are exact for every possible block content (no saturating tricks that break on a
 * -128 code): Q4_0 uses the unsigned nibble with maddubs and subtracts 8 * sum(a) separately,
 * Q5_0 the same with its 5-bit code and 16; Q4_1/Q5_1 codes are unsigned already (their m_w s_a
 * terms are summed apart and added last); Q8_0 x Q8_0 widens to int16 and uses madd.
 */
#include "kernels.h"
#include "pyphi.h"
#include "quants.h"

#include <immintrin.h>
#include <string.h>

/* ---- Helpers ----------------------------------------------------------------------------- */

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* d_w * d_a of two blocks (exact in binary32), broadcast. F16C converts binary16 exactly. */
static inline __m256 block_scale(uint16_t dw, uint16_t da) {
    __m128 d = _mm_cvtph_ps(_mm_set_epi16(0, 0, 0, 0, 0, 0, (short)da, (short)dw));
    return _mm256_set1_ps(_mm_cvtss_f32(d) * _mm_cvtss_f32(_mm_movehdup_ps(d)));
}

/* ---- Float weights x float32 (bfloat16 for BF16) activations ---------------------------- */

static inline __m256 load_f32(const float *p) {
    return _mm256_loadu_ps(p);
}

static inline __m256 load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* bfloat16 is the top half of a binary32: widen to 32 bits and shift left by 16. */
static inline __m256 load_bf16(const uint16_t *p) {
    __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
}

/* One body for the three float weight types: W / A are the weight / activation element types,
 * LOAD / ALOAD widen 8 of them to binary32 and TO_F32 / A_TO_F32 one of them (the scalar twin's
 * conversion) for the last n % 8 values. Four independent accumulators hide the FMA latency. */
#define DEFINE_VEC_DOT_FLOAT(NAME, W, LOAD, TO_F32, A, ALOAD, A_TO_F32)                          \
    static void NAME(int64_t n, float *s, const void *vw, const void *va) {                      \
        const W *w = vw; /* (n,) */                                                               \
        const A *a = va; /* (n,) */                                                               \
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();                            \
        __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();                            \
        int64_t i = 0;                                                                            \
        for (; i + 32 <= n; i += 32) {                                                            \
            acc0 = _mm256_fmadd_ps(LOAD(w + i), ALOAD(a + i), acc0);                               \
            acc1 = _mm256_fmadd_ps(LOAD(w + i + 8), ALOAD(a + i + 8), acc1);                       \
            acc2 = _mm256_fmadd_ps(LOAD(w + i + 16), ALOAD(a + i + 16), acc2);                     \
            acc3 = _mm256_fmadd_ps(LOAD(w + i + 24), ALOAD(a + i + 24), acc3);                     \
        }                                                                                         \
        for (; i + 8 <= n; i += 8) {                                                              \
            acc0 = _mm256_fmadd_ps(LOAD(w + i), ALOAD(a + i), acc0);                               \
        }                                                                                         \
        float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3))); \
        for (; i < n; i++) {                                                                      \
            sum += TO_F32(w[i]) * A_TO_F32(a[i]);                                                 \
        }                                                                                         \
        *s = sum;                                                                                 \
    }

static inline float f32_identity(float v) {
    return v;
}

DEFINE_VEC_DOT_FLOAT(vec_dot_f32_avx2, float, load_f32, f32_identity, float, load_f32, f32_identity)
DEFINE_VEC_DOT_FLOAT(vec_dot_f16_avx2, uint16_t, load_f16, pyphi_fp16_to_fp32, float, load_f32,
                     f32_identity)
/* bfloat16 activations (kernels.h): the products are exact, the FMA rounds only the sum */
DEFINE_VEC_DOT_FLOAT(vec_dot_bf16_avx2, uint16_t, load_bf16, pyphi_bf16_to_fp32, uint16_t, load_bf16,
                     pyphi_bf16_to_fp32)

/* ---- Quantized weights x Q8_0 activations ------------------------------------------------ */

/* The 32 codes 0..15 of a Q4_0 block (or the nibbles of Q4_1/Q5_0/Q5_1) in value order: low nibbles (values 0..15) in the low
 * 128-bit lane, high nibbles (values 16..31) in the high lane. */
static inline __m256i unpack_q4_0(const uint8_t *qs) {
    __m128i packed = _mm_loadu_si128((const __m128i *)qs); /* (16,) bytes */
    __m128i mask = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(packed, mask);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

static void vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *vw, const void *va) {
    const block_q4_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    const __m256i eight = _mm256_set1_epi8(8);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / PYPHI_QK4_0; b++) {
        __m256i q = unpack_q4_0(w[b].qs);                             /* (32,) u8 in 0..15 */
        __m256i y = _mm256_loadu_si256((const __m256i *)a[b].qs);     /* (32,) s8 */
        /* sum (q - 8) y = sum q y - sum 8 y; pairwise int16 sums stay within +-3840 and +-2048 */
        __m256i qy = _mm256_maddubs_epi16(q, y);
        __m256i ey = _mm256_maddubs_epi16(eight, y);
        __m256i sum32 = _mm256_madd_epi16(_mm256_sub_epi16(qy, ey), ones); /* (8,) int32 */
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum32), block_scale(w[b].d, a[b].d), acc);
    }
    *s = hsum_ps(acc);
}

/* Bit j of a Q5_0/Q5_1 block's little-endian qh word as byte j of 32: 16 where set, else 0 (bit 4
 * of the code of value j, which unpack_q4_0's value order puts in byte j). Each qh byte k is
 * copied to bytes 8k..8k+7, and byte i keeps only its bit i % 8. */
static inline __m256i high_bits_q5(const uint8_t *qh) {
    uint32_t h;
    memcpy(&h, qh, sizeof h);
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)h), spread); /* per 128-bit lane */
    __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

static void vec_dot_q5_0_q8_0_avx2(int64_t n, float *s, const void *vw, const void *va) {
    const block_q5_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    const __m256i sixteen = _mm256_set1_epi8(16);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / PYPHI_QK5_0; b++) {
        __m256i q = _mm256_or_si256(unpack_q4_0(w[b].qs), high_bits_q5(w[b].qh)); /* u8 0..31 */
        __m256i y = _mm256_loadu_si256((const __m256i *)a[b].qs);
        /* sum (q - 16) y = sum q y - sum 16 y; pairwise int16 sums within +-7936 and +-4096 */
        __m256i qy = _mm256_maddubs_epi16(q, y);
        __m256i sy = _mm256_maddubs_epi16(sixteen, y);
        __m256i sum32 = _mm256_madd_epi16(_mm256_sub_epi16(qy, sy), ones);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum32), block_scale(w[b].d, a[b].d), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- Weights with a minimum (Q4_1, Q5_1) x Q8_1 activations ------------------------------- */

/* Codes 0..15 or 0..31 are unsigned, so maddubs takes them directly (pairwise int16 sums within
 * 31 * 128 * 2 = 7936). The m_w s_a terms (exact products) go to their own float sum, added last. */
#define DEFINE_VEC_DOT_MIN(NAME, WBLOCK, CODES)                                                    \
    static void NAME(int64_t n, float *s, const void *vw, const void *va) {                      \
        const WBLOCK *w = vw;     /* (n / 32,) */                                                 \
        const block_q8_1 *a = va; /* (n / 32,) */                                                 \
        const __m256i ones = _mm256_set1_epi16(1);                                                \
        __m256 acc = _mm256_setzero_ps();                                                         \
        float msum = 0.0f;                                                                        \
        for (int64_t b = 0; b < n / 32; b++) {                                                    \
            __m256i y = _mm256_loadu_si256((const __m256i *)a[b].qs);                             \
            __m256i sum32 = _mm256_madd_epi16(_mm256_maddubs_epi16(CODES(&w[b]), y), ones);       \
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum32), block_scale(w[b].d, a[b].d), acc);   \
            msum += _cvtsh_ss(w[b].m) * _cvtsh_ss(a[b].s); /* F16C: exact */                      \
        }                                                                                         \
        *s = hsum_ps(acc) + msum;                                                                 \
    }

static inline __m256i codes_q4_1(const block_q4_1 *w) {
    return unpack_q4_0(w->qs);
}

static inline __m256i codes_q5_1(const block_q5_1 *w) {
    return _mm256_or_si256(unpack_q4_0(w->qs), high_bits_q5(w->qh));
}

DEFINE_VEC_DOT_MIN(vec_dot_q4_1_q8_1_avx2, block_q4_1, codes_q4_1)
DEFINE_VEC_DOT_MIN(vec_dot_q5_1_q8_1_avx2, block_q5_1, codes_q5_1)

/* 16 signed bytes widened to int16, times 16 others, summed pairwise to (8,) int32: exact. */
static inline __m256i dot16_s8(const int8_t *x, const int8_t *y) {
    __m256i x16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)x));
    __m256i y16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)y));
    return _mm256_madd_epi16(x16, y16);
}

static void vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *vw, const void *va) {
    const block_q8_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n / PYPHI_QK8_0; b++) {
        __m256i sum32 = _mm256_add_epi32(dot16_s8(w[b].qs, a[b].qs),
                                         dot16_s8(w[b].qs + 16, a[b].qs + 16)); /* (8,) int32 */
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum32), block_scale(w[b].d, a[b].d), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- Activation quantizer: float32 -> Q8_0, bit-identical to pyphi_quantize_row_q8_0 ------ */

/* round-half-away-from-zero(v * id) as int32, and 0 where the product is not finite (numpy's
 * cast of NaN/inf, see quants.h). Exact: floor and the 0.5 test see the exact fraction. */
static inline __m256i round_scaled(__m256 v, __m256 id) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 t = _mm256_mul_ps(v, id);
    __m256 mag = _mm256_andnot_ps(sign_bit, t);
    __m256 fl = _mm256_floor_ps(mag);
    __m256 up = _mm256_cmp_ps(_mm256_sub_ps(mag, fl), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 r = _mm256_add_ps(fl, _mm256_and_ps(up, _mm256_set1_ps(1.0f)));
    __m256 finite = _mm256_cmp_ps(mag, _mm256_set1_ps(INFINITY), _CMP_LT_OQ);
    r = _mm256_and_ps(finite, _mm256_or_ps(r, _mm256_and_ps(sign_bit, t))); /* copy the sign */
    return _mm256_cvttps_epi32(r); /* finite |r| <= 127 here, see pyphi_quantize_row_q8_0 */
}

static inline int has_nan(const float *xb) {
    __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
    __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
    __m256 nan = _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(v0, v0, _CMP_UNORD_Q),
                                           _mm256_cmp_ps(v1, v1, _CMP_UNORD_Q)),
                              _mm256_or_ps(_mm256_cmp_ps(v2, v2, _CMP_UNORD_Q),
                                           _mm256_cmp_ps(v3, v3, _CMP_UNORD_Q)));
    return _mm256_movemask_ps(nan) != 0;
}

/* One block of 32 values without NaN (the caller checks) -> Q8_0's codes and binary16 scale, as
 * pyphi_quantize_block_q8; *sum = the sum of the codes. Returns the binary32 scale. */
static inline float quantize_block_q8(const float *xb, uint16_t *dh, int8_t *qs, int32_t *sum) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
    __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign_bit, v0), _mm256_andnot_ps(sign_bit, v1)),
                             _mm256_max_ps(_mm256_andnot_ps(sign_bit, v2), _mm256_andnot_ps(sign_bit, v3)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    float d = amax / 127.0f;
    float id = d == 0.0f ? 0.0f : 1.0f / d;
    /* d is not NaN here, and F16C rounds to nearest even like pyphi_fp32_to_fp16 */
    *dh = (uint16_t)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
    __m256 idv = _mm256_set1_ps(id);
    __m256i i0 = round_scaled(v0, idv), i1 = round_scaled(v1, idv);
    __m256i i2 = round_scaled(v2, idv), i3 = round_scaled(v3, idv);
    /* int32 -> int8 (values within +-127, so saturation never triggers); the two packs work
     * per 128-bit lane, and the final permute restores value order (as ggml does) */
    __m256i i16 = _mm256_packs_epi32(i0, i1);
    __m256i j16 = _mm256_packs_epi32(i2, i3);
    __m256i i8 = _mm256_packs_epi16(i16, j16);
    i8 = _mm256_permutevar8x32_epi32(i8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, i8);
    __m256i s8 = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    *sum = _mm_cvtsi128_si32(s4);
    return d;
}

static void quantize_row_q8_0_avx2(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK8_0; b++) {
        const float *xb = x + b * PYPHI_QK8_0; /* (32,) */
        if (has_nan(xb)) {
            /* which NaN becomes the scale is defined by the scalar scan order */
            pyphi_quantize_row_q8_0(xb, &y[b], PYPHI_QK8_0);
            continue;
        }
        int32_t sum;
        quantize_block_q8(xb, &y[b].d, y[b].qs, &sum);
    }
}

/* Q8_1: Q8_0's codes and scale, and s = fp16(sum * d) from the binary32 d, as
 * pyphi_quantize_row_q8_1 (ggml's quantize_row_q8_1_ref); (float)sum is exact. */
static void quantize_row_q8_1_avx2(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK8_1; b++) {
        const float *xb = x + b * PYPHI_QK8_1; /* (32,) */
        if (has_nan(xb)) {
            pyphi_quantize_row_q8_1(xb, &y[b], PYPHI_QK8_1);
            continue;
        }
        int32_t sum;
        float d = quantize_block_q8(xb, &y[b].d, y[b].qs, &sum);
        /* the scalar twin's conversion: sum * d is NaN for 0 * inf (a block holding an inf) */
        y[b].s = pyphi_fp32_to_fp16((float)sum * d);
    }
}

/* ---- Matmul tiles: one dot per (row, token), no blocked kernels on this ISA yet ---------- */

PYPHI_DEFINE_GEMM_BY_DOT(gemm_f32_avx2, vec_dot_f32_avx2)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_f16_avx2, vec_dot_f16_avx2)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_bf16_avx2, vec_dot_bf16_avx2)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q8_0_q8_0_avx2, vec_dot_q8_0_q8_0_avx2)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_0_q8_0_avx2, vec_dot_q4_0_q8_0_avx2)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_0_q8_0_avx2, vec_dot_q5_0_q8_0_avx2)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q4_1_q8_1_avx2, vec_dot_q4_1_q8_1_avx2)
PYPHI_DEFINE_GEMM_BY_DOT(gemm_q5_1_q8_1_avx2, vec_dot_q5_1_q8_1_avx2)

/* ---- Softmax: the scalar twin's operations, 16 lanes in two registers (kernels.h) -------- */

/* pyphi_exp of 8 values (kernels_scalar.c, exp_nonpositive): the same roundings and FMAs. */
static inline __m256 exp_nonpositive8(__m256 x) {
    __m256 in_range = _mm256_cmp_ps(x, _mm256_set1_ps(PYPHI_EXP_MIN), _CMP_GE_OQ);
    __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(PYPHI_EXP_LOG2E)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-PYPHI_EXP_LN2_HI), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(-PYPHI_EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(PYPHI_EXP_C7);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PYPHI_EXP_C6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PYPHI_EXP_C5));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PYPHI_EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PYPHI_EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(PYPHI_EXP_C2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    /* 2^n for the lanes in range (n in -126..0); the others become 0 or stay NaN below */
    __m256i e = _mm256_and_si256(_mm256_cvtps_epi32(n), _mm256_castps_si256(in_range));
    __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127)), 23));
    __m256 y = _mm256_and_ps(_mm256_mul_ps(p, scale), in_range);
    return _mm256_blendv_ps(y, x, nan);
}

/* Lanes i .. i + 7 of the last partial step: a load mask and the -inf that exp sends to 0. */
static inline __m256i lanes_below(int64_t count) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), idx);
}

static inline __m256 load_or_minus_inf(const float *p, __m256i m) {
    return _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}

static void softmax_avx2(float *x, int64_t n, float scale) {
    const __m256 sv = _mm256_set1_ps(scale);
    float max = -INFINITY;
    __m256 maxv = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + i), sv);
        _mm256_storeu_ps(x + i, v);
        maxv = _mm256_max_ps(maxv, v);
    }
    for (int64_t j = i; j < n; j++) {
        x[j] *= scale;
        max = x[j] > max ? x[j] : max;
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, maxv);
    for (int j = 0; j < 8; j++) {
        max = lanes[j] > max ? lanes[j] : max;
    }
    __m256 mv = _mm256_set1_ps(max);
    __m256 part0 = _mm256_setzero_ps(), part1 = _mm256_setzero_ps(); /* lanes 0-7, 8-15 */
    for (i = 0; i + 16 <= n; i += 16) {
        __m256 e0 = exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        __m256 e1 = exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), mv));
        _mm256_storeu_ps(x + i, e0);
        _mm256_storeu_ps(x + i + 8, e1);
        part0 = _mm256_add_ps(part0, e0);
        part1 = _mm256_add_ps(part1, e1);
    }
    if (i < n) { /* lanes past n see -inf, whose exp 0 leaves their partial sums as they are */
        __m256i m0 = lanes_below(n - i), m1 = lanes_below(n - i - 8);
        __m256 e0 = exp_nonpositive8(_mm256_sub_ps(load_or_minus_inf(x + i, m0), mv));
        __m256 e1 = exp_nonpositive8(_mm256_sub_ps(load_or_minus_inf(x + i + 8, m1), mv));
        _mm256_maskstore_ps(x + i, m0, e0);
        _mm256_maskstore_ps(x + i + 8, m1, e1);
        part0 = _mm256_add_ps(part0, e0);
        part1 = _mm256_add_ps(part1, e1);
    }
    /* lanes j + 8, + 4, + 2, + 1 folded in, as the scalar twin does */
    __m256 p8 = _mm256_add_ps(part0, part1);
    __m128 p4 = _mm_add_ps(_mm256_castps256_ps128(p8), _mm256_extractf128_ps(p8, 1));
    __m128 p2 = _mm_add_ps(p4, _mm_movehl_ps(p4, p4));
    __m128 p1 = _mm_add_ss(p2, _mm_movehdup_ps(p2));
    __m256 inv = _mm256_set1_ps(1.0f / _mm_cvtss_f32(p1));
    for (i = 0; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    }
    for (; i < n; i++) {
        x[i] *= _mm256_cvtss_f32(inv);
    }
}

/* ---- Weighted sums of rows (attention's scores . values) --------------------------------- */

/* kernels.h's sequence per lane: a tile keeps the running sums of up to WROWS_Q queries x 32
 * values (12 registers), converts each value row once for all queries and multiplies then adds,
 * as the scalar twin does; the last n % 32 values are the scalar twin's own (same bits). */
#define WROWS_Q 3
#define WROWS_VECS 4

#define DEFINE_WEIGHTED_ROWS(NAME, T, LOAD, SCALAR)                                                \
    static inline __attribute__((always_inline)) void NAME##_tile(                                \
        int nq, int64_t n_rows, const uint8_t *v, size_t v_stride, const float *p,                \
        int64_t p_stride, float *out, int64_t out_stride) {                                       \
        __m256 acc[WROWS_Q][WROWS_VECS];                                                          \
        _Pragma("GCC unroll 3") for (int q = 0; q < nq; q++)                                      \
        _Pragma("GCC unroll 4") for (int c = 0; c < WROWS_VECS; c++) acc[q][c] = _mm256_setzero_ps(); \
        for (int64_t j = 0; j < n_rows; j++) {                                                    \
            const T *row = (const T *)(v + (size_t)j * v_stride); /* (32,) */                     \
            __m256 x[WROWS_VECS];                                                                 \
            _Pragma("GCC unroll 4") for (int c = 0; c < WROWS_VECS; c++) x[c] = LOAD(row + 8 * c); \
            _Pragma("GCC unroll 3") for (int q = 0; q < nq; q++) {                                \
                __m256 pj = _mm256_set1_ps(p[q * p_stride + j]);                                  \
                _Pragma("GCC unroll 4") for (int c = 0; c < WROWS_VECS; c++)                      \
                    acc[q][c] = _mm256_add_ps(acc[q][c], _mm256_mul_ps(pj, x[c]));                \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 3") for (int q = 0; q < nq; q++)                                      \
        _Pragma("GCC unroll 4") for (int c = 0; c < WROWS_VECS; c++)                              \
            _mm256_storeu_ps(out + q * out_stride + 8 * c, acc[q][c]);                            \
    }                                                                                             \
    static void NAME(int64_t n, int64_t n_rows, int64_t n_q, const void *vv, size_t v_stride,    \
                     const float *p, int64_t p_stride, float *out, int64_t out_stride) {         \
        const uint8_t *v = vv;                                                                    \
        int64_t n_full = n / (8 * WROWS_VECS) * (8 * WROWS_VECS);                                 \
        for (int64_t q0 = 0; q0 < n_q; q0 += WROWS_Q) {                                           \
            int nq = n_q - q0 < WROWS_Q ? (int)(n_q - q0) : WROWS_Q;                              \
            const float *pq = p + q0 * p_stride;                                                  \
            for (int64_t d0 = 0; d0 < n_full; d0 += 8 * WROWS_VECS) {                             \
                const uint8_t *vd = v + (size_t)d0 * sizeof(T);                                   \
                float *o = out + q0 * out_stride + d0;                                            \
                switch (nq) {                                                                     \
                case 1: NAME##_tile(1, n_rows, vd, v_stride, pq, p_stride, o, out_stride); break; \
                case 2: NAME##_tile(2, n_rows, vd, v_stride, pq, p_stride, o, out_stride); break; \
                default: NAME##_tile(3, n_rows, vd, v_stride, pq, p_stride, o, out_stride); break; \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        if (n_full < n) {                                                                         \
            SCALAR(n - n_full, n_rows, n_q, v + (size_t)n_full * sizeof(T), v_stride, p, p_stride, \
                   out + n_full, out_stride);                                                     \
        }                                                                                         \
    }

DEFINE_WEIGHTED_ROWS(weighted_rows_f32_avx2, float, load_f32, pyphi_weighted_rows_f32_scalar)
DEFINE_WEIGHTED_ROWS(weighted_rows_f16_avx2, uint16_t, load_f16, pyphi_weighted_rows_f16_scalar)

const pyphi_kernels pyphi_kernels_avx2 = {
    .isa = PYPHI_ISA_AVX2,
    .softmax = softmax_avx2,
    .weighted_rows = {
        [PYPHI_TYPE_F32] = weighted_rows_f32_avx2,
        [PYPHI_TYPE_F16] = weighted_rows_f16_avx2,
    },
    .vec_dot = {
        [PYPHI_TYPE_F32] = vec_dot_f32_avx2,
        [PYPHI_TYPE_F16] = vec_dot_f16_avx2,
        [PYPHI_TYPE_BF16] = vec_dot_bf16_avx2,
        [PYPHI_TYPE_Q8_0] = vec_dot_q8_0_q8_0_avx2,
        [PYPHI_TYPE_Q4_0] = vec_dot_q4_0_q8_0_avx2,
        [PYPHI_TYPE_Q4_K] = pyphi_vec_dot_q4_K_q8_K_avx2,
        [PYPHI_TYPE_Q5_K] = pyphi_vec_dot_q5_K_q8_K_avx2,
        [PYPHI_TYPE_Q6_K] = pyphi_vec_dot_q6_K_q8_K_avx2,
        [PYPHI_TYPE_Q5_0] = vec_dot_q5_0_q8_0_avx2,
        [PYPHI_TYPE_Q4_1] = vec_dot_q4_1_q8_1_avx2,
        [PYPHI_TYPE_Q5_1] = vec_dot_q5_1_q8_1_avx2,
    },
    .gemm = {
        [PYPHI_TYPE_F32] = gemm_f32_avx2,
        [PYPHI_TYPE_F16] = gemm_f16_avx2,
        [PYPHI_TYPE_BF16] = gemm_bf16_avx2,
        [PYPHI_TYPE_Q8_0] = gemm_q8_0_q8_0_avx2,
        [PYPHI_TYPE_Q4_0] = gemm_q4_0_q8_0_avx2,
        [PYPHI_TYPE_Q4_K] = pyphi_gemm_q4_K_q8_K_avx2,
        [PYPHI_TYPE_Q5_K] = pyphi_gemm_q5_K_q8_K_avx2,
        [PYPHI_TYPE_Q6_K] = pyphi_gemm_q6_K_q8_K_avx2,
        [PYPHI_TYPE_Q5_0] = gemm_q5_0_q8_0_avx2,
        [PYPHI_TYPE_Q4_1] = gemm_q4_1_q8_1_avx2,
        [PYPHI_TYPE_Q5_1] = gemm_q5_1_q8_1_avx2,
    },
    /* no AVX2 packed kernel yet: the scalar twin, which defines the result anyway */
    .gemm_packed = {
        [PYPHI_TYPE_Q8_0] = pyphi_gemm_packed_q8_0_scalar,
        [PYPHI_TYPE_Q4_0] = pyphi_gemm_packed_q4_0_scalar,
        [PYPHI_TYPE_Q4_K] = pyphi_gemm_packed_q4_K_scalar,
        [PYPHI_TYPE_Q5_K] = pyphi_gemm_packed_q5_K_avx2,
        [PYPHI_TYPE_Q6_K] = pyphi_gemm_packed_q6_K_scalar,
    },
    .quantize_act = {
        [PYPHI_TYPE_Q8_0] = quantize_row_q8_0_avx2,
        [PYPHI_TYPE_Q8_1] = quantize_row_q8_1_avx2,
        [PYPHI_TYPE_Q8_K] = pyphi_quantize_row_q8_K_avx2,
    },
};
