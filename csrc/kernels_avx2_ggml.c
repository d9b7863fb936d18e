/* kernels_avx2_ggml.c: the dot products of ggml_numerics.h with AVX2 + FMA + F16C.
 *
 * Compiled with -mavx2 -mfma -mf16c (CMakeLists.txt) and reached only through ggml_numerics.c's
 * table choice, which follows pyphi_isa_current (dispatch.c checked that these instructions run).
 * Each function gives its scalar twin's bits (ggml_numerics.c): the lanes here are the twin's
 * arrays, the integer block dots are exact (weight codes within -128..127 times the activation
 * codes of finite activations, within -127..127, cannot saturate maddubs's int16 pairs), and every
 * float operation is the twin's, fused where it fuses. (A non-finite activation, from a hostile
 * file, gives a -128 code that may saturate here: garbage either way, without UB.)
 */
#include "ggml_numerics.h"

#include "quants.h"

#include <immintrin.h>

/* hsum8 of ggml_numerics.c: upper half onto lower, lanes 2,3 onto 0,1, lane 1 onto 0. */
static inline float hsum8(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* Lane l = the int dot of values 4l .. 4l + 3 of u (unsigned codes) and s (signed), as float. */
static inline __m256 lane_dots(__m256i u, __m256i s) {
    __m256i pairs = _mm256_maddubs_epi16(u, s);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

static inline float f16(uint16_t h) {
    return _cvtsh_ss(h);
}

static float dot_q8_0(const void *w_blocks, const void *x_blocks, int64_t n_blocks) {
    const block_q8_0 *w = w_blocks, *x = x_blocks;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < n_blocks; b++) {
        __m256 d = _mm256_set1_ps(f16(w[b].d) * f16(x[b].d));
        __m256i qw = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i qx = _mm256_loadu_si256((const __m256i *)x[b].qs);
        /* |w| times x with w's sign: the same products */
        __m256 dots = lane_dots(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
        acc = _mm256_fmadd_ps(d, dots, acc);
    }
    return hsum8(acc);
}

static float dot_q4_1(const void *w_blocks, const void *x_blocks, int64_t n_blocks) {
    const block_q4_1 *w = w_blocks;
    const block_q8_1 *x = x_blocks;
    const __m256i low = _mm256_set1_epi8(15);
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t b = 0; b < n_blocks; b++) {
        summs += f16(w[b].m) * f16(x[b].s);
        __m256 d = _mm256_set1_ps(f16(w[b].d) * f16(x[b].d));
        __m128i packed = _mm_loadu_si128((const __m128i *)w[b].qs);
        __m256i codes = _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low); /* values 0..15 | 16..31 */
        __m256i qx = _mm256_loadu_si256((const __m256i *)x[b].qs);
        acc = _mm256_fmadd_ps(d, lane_dots(codes, qx), acc);
    }
    return hsum8(acc) + summs;
}

/* 16 lanes as two registers: lo holds lanes 0..7, hi 8..15. */
static inline __m256 load8_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

/* hsum16: lanes 8..15 onto 0..7, then hsum8. */
static inline float hsum16(__m256 lo, __m256 hi) {
    return hsum8(_mm256_add_ps(hi, lo));
}

static float dot_f16_vec(const uint16_t *a, const uint16_t *b, int64_t n) {
    __m256 lo[4], hi[4];
    for (int r = 0; r < 4; r++) {
        lo[r] = hi[r] = _mm256_setzero_ps();
    }
    int64_t whole = n / 64 * 64;
    for (int64_t i = 0; i < whole; i += 64) {
        for (int r = 0; r < 4; r++) {
            const uint16_t *ar = a + i + 16 * r, *br = b + i + 16 * r;
            lo[r] = _mm256_fmadd_ps(load8_f16(ar), load8_f16(br), lo[r]);
            hi[r] = _mm256_fmadd_ps(load8_f16(ar + 8), load8_f16(br + 8), hi[r]);
        }
    }
    lo[0] = _mm256_add_ps(lo[0], lo[2]);
    hi[0] = _mm256_add_ps(hi[0], hi[2]);
    lo[1] = _mm256_add_ps(lo[1], lo[3]);
    hi[1] = _mm256_add_ps(hi[1], hi[3]);
    lo[0] = _mm256_add_ps(lo[0], lo[1]);
    hi[0] = _mm256_add_ps(hi[0], hi[1]);
    double sum = hsum16(lo[0], hi[0]);
    for (int64_t i = whole; i < n; i++) {
        sum += (double)(f16(a[i]) * f16(b[i]));
    }
    return (float)sum;
}

static float dot_f16_gemm(const uint16_t *a, const uint16_t *b, int64_t n) {
    __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        lo = _mm256_fmadd_ps(load8_f16(a + i), load8_f16(b + i), lo);
        hi = _mm256_fmadd_ps(load8_f16(a + i + 8), load8_f16(b + i + 8), hi);
    }
    return hsum16(lo, hi);
}

const struct pyphi_ggml_kernels pyphi_ggml_kernels_avx2 = {
    .dot_q8_0 = dot_q8_0, .dot_q4_1 = dot_q4_1,
    .dot_f16_vec = dot_f16_vec, .dot_f16_gemm = dot_f16_gemm,
};
