/* kernels_avx512.c: the kernel table for AVX-512 F/BW/VL/DQ + VNNI cores (Ice Lake, Zen 4 and
 * later).
 *
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni -mfma -mf16c
 * (CMakeLists.txt) and reached only through dispatch.c after CPUID/XGETBV said these run. Each
 * function computes what the same table entry of pyphi_kernels_scalar defines; see kernels.h.
 *
 * Integer dots use VNNI's vpdpbusd (unsigned bytes x signed bytes, four products summed into each
 * int32 lane). Every weight format is made unsigned so every block content stays exact:
 *   Q4_0: sum (q - 8) a = dpbusd(q, a) - dpbusd(8, a), q the raw nibble in 0..15;
 *   Q5_0: sum (q - 16) a = dpbusd(q, a) - dpbusd(16, a), q the 5-bit code in 0..31;
 *   Q4_1, Q5_1: dpbusd(q, a), the codes being unsigned already (plus m_w s_a per block);
 *   Q8_0: sum w a = dpbusd(w + 128, a) - dpbusd(128, a), w + 128 being w XOR 0x80 as unsigned.
 * Two blocks fill one 512-bit register: lanes 0-7 hold block b, lanes 8-15 block b + 1.
 * Float rows end with a masked load rather than a scalar loop.
 */
#include "kernels.h"
#include "pyphi.h"
#include "quants.h"

#include <immintrin.h>
#include <string.h>

/* ---- Float weights x float32 activations ------------------------------------------------- */

static inline __mmask16 tail_mask(int64_t remaining) {
    return (__mmask16)((1u << remaining) - 1u); /* remaining in 0..15 */
}

static inline __m512 load_f16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 load_f16_masked(const uint16_t *p, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

/* bfloat16 is the top half of a binary32: widen to 32 bits and shift left by 16. */
static inline __m512 load_bf16(const uint16_t *p) {
    __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}

static inline __m512 load_bf16_masked(const uint16_t *p, __mmask16 m) {
    __m512i u = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
}

static inline __m512 load_f32(const float *p) {
    return _mm512_loadu_ps(p);
}

static inline __m512 load_f32_masked(const float *p, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, p);
}

/* One body for the three float weight types: W / A are the weight / activation element types,
 * LOAD / LOAD_MASKED and ALOAD / ALOAD_MASKED widen 16 of them to binary32. Four accumulators
 * hide the FMA latency. */
#define DEFINE_VEC_DOT_FLOAT(NAME, W, LOAD, LOAD_MASKED, A, ALOAD, ALOAD_MASKED)                   \
    static void NAME(int64_t n, float *s, const void *vw, const void *va) {                      \
        const W *w = vw;     /* (n,) */                                                           \
        const A *a = va;     /* (n,) */                                                           \
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();                            \
        __m512 acc2 = _mm512_setzero_ps(), acc3 = _mm512_setzero_ps();                            \
        int64_t i = 0;                                                                            \
        for (; i + 64 <= n; i += 64) {                                                            \
            acc0 = _mm512_fmadd_ps(LOAD(w + i), ALOAD(a + i), acc0);                     \
            acc1 = _mm512_fmadd_ps(LOAD(w + i + 16), ALOAD(a + i + 16), acc1);           \
            acc2 = _mm512_fmadd_ps(LOAD(w + i + 32), ALOAD(a + i + 32), acc2);           \
            acc3 = _mm512_fmadd_ps(LOAD(w + i + 48), ALOAD(a + i + 48), acc3);           \
        }                                                                                         \
        for (; i + 16 <= n; i += 16) {                                                            \
            acc0 = _mm512_fmadd_ps(LOAD(w + i), ALOAD(a + i), acc0);                     \
        }                                                                                         \
        if (i < n) {                                                                              \
            __mmask16 m = tail_mask(n - i);                                                       \
            acc1 = _mm512_fmadd_ps(LOAD_MASKED(w + i, m), ALOAD_MASKED(a + i, m), acc1);  \
        }                                                                                         \
        *s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3))); \
    }

DEFINE_VEC_DOT_FLOAT(vec_dot_f32_avx512, float, load_f32, load_f32_masked, float, load_f32,
                     load_f32_masked)
DEFINE_VEC_DOT_FLOAT(vec_dot_f16_avx512, uint16_t, load_f16, load_f16_masked, float, load_f32,
                     load_f32_masked)
/* bfloat16 activations (kernels.h): the products are exact, the FMA rounds only the sum */
DEFINE_VEC_DOT_FLOAT(vec_dot_bf16_avx512, uint16_t, load_bf16, load_bf16_masked, uint16_t, load_bf16,
                     load_bf16_masked)

/* ---- Quantized weights x Q8_0 activations ------------------------------------------------ */

/* d_w * d_a of blocks b and b + 1 (each product exact in binary32), broadcast to lanes 0-7 and
 * 8-15. F16C converts binary16 exactly. */
static inline __m512 pair_scale(uint16_t dw0, uint16_t dw1, uint16_t da0, uint16_t da1) {
    __m128 dw = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(dw0 | ((uint32_t)dw1 << 16))));
    __m128 da = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(da0 | ((uint32_t)da1 << 16))));
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_mul_ps(dw, da)));
}

/* The 32 codes of two Q8_0 or Q8_1 blocks, b (qs0) and b + 1 (qs1): (64,) s8, or (32,) then zeros
 * when only b exists. */
static inline __m512i load_codes_pair(const int8_t *qs0, const int8_t *qs1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)qs0)),
                              _mm256_loadu_si256((const __m256i *)qs1), 1);
}

static inline __m512i load_codes_one(const int8_t *qs0) {
    return _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)qs0));
}

static inline __m512i load_q8_0_pair(const block_q8_0 *a) {
    return load_codes_pair(a[0].qs, a[1].qs);
}

static inline __m512i load_q8_0_one(const block_q8_0 *a) {
    return load_codes_one(a[0].qs);
}

/* The 64 nibbles 0..15 of blocks b (qs0) and b + 1 (qs1), any 4-bit-nibble format (Q4_0, Q4_1,
 * the low bits of Q5_0/Q5_1), in value order. In a block, low nibbles are values 0..15 and high
 * nibbles values 16..31, so split both blocks' bytes at once into (lo b, lo b+1, hi b, hi b+1)
 * 128-bit lanes, then swap the middle two lanes. */
static inline __m512i unpack_nibbles_pair(const uint8_t *qs0, const uint8_t *qs1) {
    __m256i packed = _mm256_loadu2_m128i((const __m128i *)qs1, (const __m128i *)qs0);
    __m256i mask = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_and_si256(packed, mask);
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
    __m512i lanes = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    return _mm512_shuffle_i64x2(lanes, lanes, _MM_SHUFFLE(3, 1, 2, 0));
}

/* The same for block b alone, codes in the low 256 bits, zeros above. */
static inline __m512i unpack_nibbles_one(const uint8_t *qs0) {
    __m128i packed = _mm_loadu_si128((const __m128i *)qs0);
    __m128i mask = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(packed, mask);
    __m128i hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    return _mm512_zextsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1));
}

static inline __m512i unpack_q4_0_pair(const block_q4_0 *w) {
    return unpack_nibbles_pair(w[0].qs, w[1].qs);
}

static inline __m512i unpack_q4_0_one(const block_q4_0 *w) {
    return unpack_nibbles_one(w[0].qs);
}

/* Q5_0/Q5_1: nibbles (value order, as above) | bit 4 from qh. Bit j of a block's little-endian
 * qh word belongs to value j, i.e. to byte j of its 32 codes, so the two words side by side are
 * a byte mask over the 64 codes of the pair. */
static inline __m512i add_high_bits(__m512i nibbles, const uint8_t *qh0, const uint8_t *qh1) {
    uint32_t h0, h1 = 0;
    memcpy(&h0, qh0, sizeof h0);
    if (qh1 != NULL) {
        memcpy(&h1, qh1, sizeof h1);
    }
    __mmask64 bit4 = (__mmask64)h0 | (__mmask64)h1 << 32;
    return _mm512_mask_add_epi8(nibbles, bit4, nibbles, _mm512_set1_epi8(0x10)); /* | 16 */
}

/* sum (q - 8) a per 4-byte group, (16,) int32; q unsigned 0..15, a signed. */
static inline __m512i dot_q4_0(__m512i q, __m512i a) {
    __m512i qa = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, a);
    __m512i ea = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(8), a);
    return _mm512_sub_epi32(qa, ea);
}

static void vec_dot_q4_0_q8_0_avx512(int64_t n, float *s, const void *vw, const void *va) {
    const block_q4_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    int64_t nb = n / PYPHI_QK4_0;
    __m512 acc = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i sum32 = dot_q4_0(unpack_q4_0_pair(&w[b]), load_q8_0_pair(&a[b]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum32),
                              pair_scale(w[b].d, w[b + 1].d, a[b].d, a[b + 1].d), acc);
    }
    if (b < nb) { /* odd block count: the upper half is zero, so its scale does not matter */
        __m512i sum32 = dot_q4_0(unpack_q4_0_one(&w[b]), load_q8_0_one(&a[b]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum32), pair_scale(w[b].d, 0, a[b].d, 0), acc);
    }
    *s = _mm512_reduce_add_ps(acc);
}

/* sum w a per 4-byte group, (16,) int32, both signed: bias w to unsigned, remove 128 sum a. */
static inline __m512i dot_q8_0(__m512i w, __m512i a) {
    const __m512i bias = _mm512_set1_epi8((char)0x80);
    __m512i wa = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_xor_si512(w, bias), a);
    __m512i ba = _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, a);
    return _mm512_sub_epi32(wa, ba);
}

static void vec_dot_q8_0_q8_0_avx512(int64_t n, float *s, const void *vw, const void *va) {
    const block_q8_0 *w = vw; /* (n / 32,) */
    const block_q8_0 *a = va; /* (n / 32,) */
    int64_t nb = n / PYPHI_QK8_0;
    __m512 acc = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i sum32 = dot_q8_0(load_q8_0_pair(&w[b]), load_q8_0_pair(&a[b]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum32),
                              pair_scale(w[b].d, w[b + 1].d, a[b].d, a[b + 1].d), acc);
    }
    if (b < nb) {
        __m512i sum32 = dot_q8_0(load_q8_0_one(&w[b]), load_q8_0_one(&a[b]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum32), pair_scale(w[b].d, 0, a[b].d, 0), acc);
    }
    *s = _mm512_reduce_add_ps(acc);
}

/* ---- Matmul tiles: blocked, bit for bit the vec_dot above per (row, token) -------------- */

/* Each (row, token) accumulator performs exactly the dot's operations in the dot's order; the
 * tile only shares work that is the same for all of them:
 * - a weight block pair is unpacked (Q4_0) or biased (Q8_0) once for every token of the tile;
 * - an activation block pair is loaded once for every row, with its bias term
 *   dpbusd(bias, a) computed once and used as the starting value of the row's dpbusd, so
 *   dpbusd(-dpbusd(bias, a), q, a) is the dot's dpbusd(q, a) - dpbusd(bias, a) (exact int32);
 * - the scale d_w * d_a is formed as (d_w spread) * (d_a spread): the same exact product the
 *   dot's pair_scale forms, lane for lane.
 * Tiles are TILE_ROWS x TILE_TOKENS for a batch, and DECODE_ROWS x 1 for a single token, where
 * more rows per activation load keep more weight streams in flight. */
#define TILE_ROWS 4
#define TILE_TOKENS 4
#define DECODE_ROWS 8

/* binary16 scales d0, d1 -> lanes 0-7 d0, lanes 8-15 d1, as binary32 (exact). */
static inline __m512 spread_pair(uint16_t d0, uint16_t d1) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m128 d = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(d0 | ((uint32_t)d1 << 16))));
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(d));
}

/* The weight codes of blocks b, b + 1 as dpbusd's unsigned operand (see dot_q4_0 / dot_q8_0). */
static inline __m512i weight_pair_q4_0(const void *row, int64_t b) {
    return unpack_q4_0_pair((const block_q4_0 *)row + b);
}
static inline __m512i weight_one_q4_0(const void *row, int64_t b) {
    return unpack_q4_0_one((const block_q4_0 *)row + b);
}
static inline __m512i weight_pair_q8_0(const void *row, int64_t b) {
    return _mm512_xor_si512(load_q8_0_pair((const block_q8_0 *)row + b), _mm512_set1_epi8((char)0x80));
}
static inline __m512i weight_one_q8_0(const void *row, int64_t b) {
    /* the upper half stays zero, as in the dot: it multiplies zero activations either way */
    return _mm512_xor_si512(load_q8_0_one((const block_q8_0 *)row + b),
                            _mm512_zextsi256_si512(_mm256_set1_epi8((char)0x80)));
}

/* Q5_0 / Q4_1 / Q5_1 weight codes, unsigned (Q5_0 is biased by 16: dpbusd subtracts 16 sum a). */
static inline __m512i weight_pair_q5_0(const void *row, int64_t b) {
    const block_q5_0 *w = (const block_q5_0 *)row + b;
    return add_high_bits(unpack_nibbles_pair(w[0].qs, w[1].qs), w[0].qh, w[1].qh);
}
static inline __m512i weight_one_q5_0(const void *row, int64_t b) {
    const block_q5_0 *w = (const block_q5_0 *)row + b;
    return add_high_bits(unpack_nibbles_one(w[0].qs), w[0].qh, NULL);
}
static inline __m512i weight_pair_q4_1(const void *row, int64_t b) {
    const block_q4_1 *w = (const block_q4_1 *)row + b;
    return unpack_nibbles_pair(w[0].qs, w[1].qs);
}
static inline __m512i weight_one_q4_1(const void *row, int64_t b) {
    return unpack_nibbles_one(((const block_q4_1 *)row + b)->qs);
}
static inline __m512i weight_pair_q5_1(const void *row, int64_t b) {
    const block_q5_1 *w = (const block_q5_1 *)row + b;
    return add_high_bits(unpack_nibbles_pair(w[0].qs, w[1].qs), w[0].qh, w[1].qh);
}
static inline __m512i weight_one_q5_1(const void *row, int64_t b) {
    const block_q5_1 *w = (const block_q5_1 *)row + b;
    return add_high_bits(unpack_nibbles_one(w[0].qs), w[0].qh, NULL);
}

/* The minimum term of Q4_1/Q5_1 x Q8_1 (ggml: + m_w s_a per block): m_w of blocks b, b + 1 and
 * s_a of the activation blocks, spread like the scales (two = 0: block b alone, zero above); the
 * masked FMA adds the exact product m_w s_a to lanes 0 and 8 only, rounding once, and leaves the
 * other lanes as they are (so an infinite s_a cannot meet a zero there). */
static inline __m512 min_pair_q4_1(const void *blk, int two) {
    const block_q4_1 *w = blk;
    return spread_pair(w[0].m, two ? w[1].m : 0);
}
static inline __m512 min_pair_q5_1(const void *blk, int two) {
    const block_q5_1 *w = blk;
    return spread_pair(w[0].m, two ? w[1].m : 0);
}
static inline __m512 sum_pair_q8_1(const void *blk, int two) {
    const block_q8_1 *a = blk;
    return spread_pair(a[0].s, two ? a[1].s : 0);
}
static inline __m512 no_pair(const void *blk, int two) { /* formats without a minimum */
    (void)blk;
    (void)two;
    return _mm512_setzero_ps();
}
static inline __m512 add_min_term(__m512 acc, __m512 mw, __m512 sa) {
    return _mm512_mask3_fmadd_ps(mw, sa, acc, (__mmask16)0x0101);
}

/* One tile of nr rows x nt tokens (compile-time constants at every call, so the loops unroll
 * and the accumulators live in registers). WBLOCK / ABLOCK: weight and activation block types
 * (Q8_0, or Q8_1 for weights with a minimum); BIAS: the constant dpbusd subtracts (8 for Q4_0,
 * 16 for Q5_0, 128 for Q8_0, 0 for the unsigned Q4_1/Q5_1 codes); PAIR / ONE: weight_pair_* /
 * weight_one_*; MIN / ASUM: min_pair_* / sum_pair_q8_1 for Q4_1/Q5_1, whose blocks add m_w s_a
 * (add_min_term) after the codes' term, no_pair otherwise. For these new types the vec_dot is this tile at 1 x 1, so tile and dot agree by
 * construction; for Q4_0/Q8_0 the separate dots above do the same operations. */
#define DEFINE_TILE(NAME, WBLOCK, ABLOCK, BIAS, PAIR, ONE, MIN, ASUM)                                    \
    static inline __attribute__((always_inline)) void NAME(                                       \
        int nr, int nt, int64_t nb, const uint8_t *w, size_t w_stride, const uint8_t *a,          \
        size_t a_stride, float *y, int64_t y_stride) {                                            \
        const __m512i bias = _mm512_set1_epi8((char)(BIAS));                                      \
        __m512 acc[DECODE_ROWS][TILE_TOKENS];                                                     \
        _Pragma("GCC unroll 8") for (int r = 0; r < nr; r++) {                                    \
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) acc[r][t] = _mm512_setzero_ps();  \
        }                                                                                         \
        int64_t b = 0;                                                                            \
        for (; b + 2 <= nb; b += 2) {                                                             \
            __m512i q[DECODE_ROWS];                                                               \
            __m512 dw[DECODE_ROWS], mw[DECODE_ROWS];                                              \
            _Pragma("GCC unroll 8") for (int r = 0; r < nr; r++) {                                \
                const WBLOCK *wr = (const WBLOCK *)(w + (size_t)r * w_stride) + b;                \
                q[r] = PAIR(wr, 0);                                                               \
                dw[r] = spread_pair(wr[0].d, wr[1].d);                                            \
                mw[r] = MIN(wr, 1);                                                               \
            }                                                                                     \
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) {                                \
                const ABLOCK *at = (const ABLOCK *)(a + (size_t)t * a_stride) + b;                \
                __m512i av = load_codes_pair(at[0].qs, at[1].qs);                                 \
                __m512i start = (BIAS) ? _mm512_sub_epi32(_mm512_setzero_si512(),                 \
                                     _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, av))       \
                                       : _mm512_setzero_si512();                                  \
                __m512 da = spread_pair(at[0].d, at[1].d);                                        \
                __m512 sa = ASUM(at, 1);                                                          \
                _Pragma("GCC unroll 8") for (int r = 0; r < nr; r++) {                            \
                    __m512i sum32 = _mm512_dpbusd_epi32(start, q[r], av);                         \
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum32),                        \
                                                _mm512_mul_ps(dw[r], da), acc[r][t]);             \
                    if (MIN != no_pair) acc[r][t] = add_min_term(acc[r][t], mw[r], sa);           \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        if (b < nb) { /* odd block count: upper halves and their scales are zero, as in the dot */ \
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) {                                \
                const ABLOCK *at = (const ABLOCK *)(a + (size_t)t * a_stride) + b;                \
                __m512i av = load_codes_one(at[0].qs);                                            \
                __m512i start = (BIAS) ? _mm512_sub_epi32(_mm512_setzero_si512(),                 \
                                     _mm512_dpbusd_epi32(_mm512_setzero_si512(), bias, av))       \
                                       : _mm512_setzero_si512();                                  \
                __m512 da = spread_pair(at[0].d, 0);                                              \
                __m512 sa = ASUM(at, 0);                                                          \
                _Pragma("GCC unroll 8") for (int r = 0; r < nr; r++) {                            \
                    const WBLOCK *wr = (const WBLOCK *)(w + (size_t)r * w_stride) + b;            \
                    __m512i sum32 = _mm512_dpbusd_epi32(start, ONE(wr, 0), av);                   \
                    acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum32),                        \
                                                _mm512_mul_ps(spread_pair(wr[0].d, 0), da),       \
                                                acc[r][t]);                                       \
                    if (MIN != no_pair) acc[r][t] = add_min_term(acc[r][t], MIN(wr, 0), sa);      \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 8") for (int r = 0; r < nr; r++) {                                    \
            _Pragma("GCC unroll 4") for (int t = 0; t < nt; t++) {                                \
                y[t * y_stride + r] = _mm512_reduce_add_ps(acc[r][t]);                            \
            }                                                                                     \
        }                                                                                         \
    }

DEFINE_TILE(tile_q4_0, block_q4_0, block_q8_0, 8, weight_pair_q4_0, weight_one_q4_0, no_pair, no_pair)
DEFINE_TILE(tile_q8_0, block_q8_0, block_q8_0, 0x80, weight_pair_q8_0, weight_one_q8_0, no_pair, no_pair)
DEFINE_TILE(tile_q5_0, block_q5_0, block_q8_0, 16, weight_pair_q5_0, weight_one_q5_0, no_pair, no_pair)
DEFINE_TILE(tile_q4_1, block_q4_1, block_q8_1, 0, weight_pair_q4_1, weight_one_q4_1, min_pair_q4_1,
            sum_pair_q8_1)
DEFINE_TILE(tile_q5_1, block_q5_1, block_q8_1, 0, weight_pair_q5_1, weight_one_q5_1, min_pair_q5_1,
            sum_pair_q8_1)

/* The gemm entry: tokens in groups of TILE_TOKENS (outer, so a group's activations stay in L1
 * while the rows stream past), rows in groups of TILE_ROWS; a single token uses DECODE_ROWS.
 * Every edge size gets its own unrolled instance of the tile. */
#define DEFINE_GEMM(NAME, TILE)                                                                    \
    static void NAME(int64_t n, int64_t n_rows, int64_t n_tok, const void *vw, size_t w_stride,  \
                     const void *va, size_t a_stride, float *y, int64_t y_stride) {              \
        const uint8_t *w = vw, *a = va;                                                           \
        int64_t nb = n / PYPHI_QK8_0;                                                             \
        for (int64_t t0 = 0; t0 < n_tok; t0 += TILE_TOKENS) {                                     \
            int64_t nt = n_tok - t0 < TILE_TOKENS ? n_tok - t0 : TILE_TOKENS;                     \
            const uint8_t *at = a + (size_t)t0 * a_stride;                                        \
            float *yt = y + t0 * y_stride;                                                        \
            int64_t r0 = 0;                                                                       \
            if (nt == 1) {                                                                        \
                for (; r0 + DECODE_ROWS <= n_rows; r0 += DECODE_ROWS) {                           \
                    TILE(DECODE_ROWS, 1, nb, w + (size_t)r0 * w_stride, w_stride, at, a_stride,   \
                         yt + r0, y_stride);                                                      \
                }                                                                                 \
            }                                                                                     \
            for (; r0 < n_rows; r0 += TILE_ROWS) {                                                \
                int64_t nr = n_rows - r0 < TILE_ROWS ? n_rows - r0 : TILE_ROWS;                   \
                const uint8_t *wr = w + (size_t)r0 * w_stride;                                    \
                float *yr = yt + r0;                                                              \
                switch (nr * 8 + nt) {                                                            \
                case 1 * 8 + 1: TILE(1, 1, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 1 * 8 + 2: TILE(1, 2, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 1 * 8 + 3: TILE(1, 3, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 1 * 8 + 4: TILE(1, 4, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 2 * 8 + 1: TILE(2, 1, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 2 * 8 + 2: TILE(2, 2, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 2 * 8 + 3: TILE(2, 3, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 2 * 8 + 4: TILE(2, 4, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 3 * 8 + 1: TILE(3, 1, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 3 * 8 + 2: TILE(3, 2, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 3 * 8 + 3: TILE(3, 3, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 3 * 8 + 4: TILE(3, 4, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 4 * 8 + 1: TILE(4, 1, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 4 * 8 + 2: TILE(4, 2, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                case 4 * 8 + 3: TILE(4, 3, nb, wr, w_stride, at, a_stride, yr, y_stride); break;  \
                default: TILE(4, 4, nb, wr, w_stride, at, a_stride, yr, y_stride); break;         \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

DEFINE_GEMM(gemm_q4_0_q8_0_avx512, tile_q4_0)
DEFINE_GEMM(gemm_q8_0_q8_0_avx512, tile_q8_0)
DEFINE_GEMM(gemm_q5_0_q8_0_avx512, tile_q5_0)
DEFINE_GEMM(gemm_q4_1_q8_1_avx512, tile_q4_1)
DEFINE_GEMM(gemm_q5_1_q8_1_avx512, tile_q5_1)

/* The dots of the formats added after Q4_0/Q8_0: their tile at one row x one token. */
#define DEFINE_DOT_BY_TILE(NAME, TILE)                                                             \
    static void NAME(int64_t n, float *s, const void *w, const void *a) {                        \
        TILE(1, 1, n / 32, w, 0, a, 0, s, 0);                                                     \
    }

DEFINE_DOT_BY_TILE(vec_dot_q5_0_q8_0_avx512, tile_q5_0)
DEFINE_DOT_BY_TILE(vec_dot_q4_1_q8_1_avx512, tile_q4_1)
DEFINE_DOT_BY_TILE(vec_dot_q5_1_q8_1_avx512, tile_q5_1)

/* Float weights: tiles of FLOAT_ROWS rows x FLOAT_TOKENS tokens, each element with the four
 * accumulators of DEFINE_VEC_DOT_FLOAT and the same loop structure (64-value steps, 16-value
 * steps, a masked tail, then (acc0 + acc1) + (acc2 + acc3)), so bit for bit the dot; the tile
 * converts each weight vector once for all tokens and loads each activation vector once for all
 * rows. Attention uses it too: keys x the query heads of a KV head, values x their scores.
 * A single token takes one row at a time (the 1 x 1 tile): consecutive rows are consecutive in
 * memory, so a decode step reads the weights as one sequential stream (as kernels_avx512bf16.c's
 * decode does; two rows at once are two streams crossing pages apart). */
#define FLOAT_ROWS 2
#define FLOAT_TOKENS 3

#define DEFINE_FLOAT_TILE(NAME, W, LOAD, LOAD_MASKED, A, ALOAD, ALOAD_MASKED)                      \
    static inline __attribute__((always_inline)) void NAME(                                       \
        int nr, int nt, int64_t n, const uint8_t *w, size_t w_stride, const uint8_t *a,           \
        size_t a_stride, float *y, int64_t y_stride) {                                            \
        __m512 acc[FLOAT_ROWS][FLOAT_TOKENS][4];                                                  \
        _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++)                                      \
        _Pragma("GCC unroll 3") for (int t = 0; t < nt; t++)                                      \
        _Pragma("GCC unroll 4") for (int c = 0; c < 4; c++) acc[r][t][c] = _mm512_setzero_ps();    \
        int64_t i = 0;                                                                            \
        for (; i + 64 <= n; i += 64) {                                                            \
            _Pragma("GCC unroll 4") for (int c = 0; c < 4; c++) {                                 \
                __m512 wv[FLOAT_ROWS];                                                            \
                _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++)                              \
                    wv[r] = LOAD((const W *)(w + (size_t)r * w_stride) + i + 16 * c);             \
                _Pragma("GCC unroll 3") for (int t = 0; t < nt; t++) {                            \
                    __m512 av = ALOAD((const A *)(a + (size_t)t * a_stride) + i + 16 * c); \
                    _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++)                          \
                        acc[r][t][c] = _mm512_fmadd_ps(wv[r], av, acc[r][t][c]);                  \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
        for (; i + 16 <= n; i += 16) {                                                            \
            __m512 wv[FLOAT_ROWS];                                                                \
            _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++)                                  \
                wv[r] = LOAD((const W *)(w + (size_t)r * w_stride) + i);                          \
            _Pragma("GCC unroll 3") for (int t = 0; t < nt; t++) {                                \
                __m512 av = ALOAD((const A *)(a + (size_t)t * a_stride) + i);       \
                _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++)                              \
                    acc[r][t][0] = _mm512_fmadd_ps(wv[r], av, acc[r][t][0]);                      \
            }                                                                                     \
        }                                                                                         \
        if (i < n) {                                                                              \
            __mmask16 m = tail_mask(n - i);                                                       \
            __m512 wv[FLOAT_ROWS];                                                                \
            _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++)                                  \
                wv[r] = LOAD_MASKED((const W *)(w + (size_t)r * w_stride) + i, m);                \
            _Pragma("GCC unroll 3") for (int t = 0; t < nt; t++) {                                \
                __m512 av = ALOAD_MASKED((const A *)(a + (size_t)t * a_stride) + i, m); \
                _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++)                              \
                    acc[r][t][1] = _mm512_fmadd_ps(wv[r], av, acc[r][t][1]);                      \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 2") for (int r = 0; r < nr; r++)                                      \
        _Pragma("GCC unroll 3") for (int t = 0; t < nt; t++)                                      \
            y[t * y_stride + r] = _mm512_reduce_add_ps(                                           \
                _mm512_add_ps(_mm512_add_ps(acc[r][t][0], acc[r][t][1]),                          \
                              _mm512_add_ps(acc[r][t][2], acc[r][t][3])));                        \
    }

DEFINE_FLOAT_TILE(tile_f32, float, load_f32, load_f32_masked, float, load_f32, load_f32_masked)
DEFINE_FLOAT_TILE(tile_f16, uint16_t, load_f16, load_f16_masked, float, load_f32, load_f32_masked)
DEFINE_FLOAT_TILE(tile_bf16, uint16_t, load_bf16, load_bf16_masked, uint16_t, load_bf16,
                  load_bf16_masked)

#define DEFINE_GEMM_FLOAT(NAME, TILE)                                                              \
    static void NAME(int64_t n, int64_t n_rows, int64_t n_tok, const void *vw, size_t w_stride,  \
                     const void *va, size_t a_stride, float *y, int64_t y_stride) {              \
        const uint8_t *w = vw, *a = va;                                                           \
        if (n_tok == 1) {                                                                         \
            for (int64_t r = 0; r < n_rows; r++) {                                                \
                TILE(1, 1, n, w + (size_t)r * w_stride, w_stride, a, a_stride, y + r, y_stride);  \
            }                                                                                     \
            return;                                                                               \
        }                                                                                         \
        for (int64_t t0 = 0; t0 < n_tok; t0 += FLOAT_TOKENS) {                                    \
            int64_t nt = n_tok - t0 < FLOAT_TOKENS ? n_tok - t0 : FLOAT_TOKENS;                   \
            const uint8_t *at = a + (size_t)t0 * a_stride;                                        \
            for (int64_t r0 = 0; r0 < n_rows; r0 += FLOAT_ROWS) {                                 \
                int64_t nr = n_rows - r0 < FLOAT_ROWS ? n_rows - r0 : FLOAT_ROWS;                 \
                const uint8_t *wr = w + (size_t)r0 * w_stride;                                    \
                float *yr = y + t0 * y_stride + r0;                                               \
                switch (nr * 4 + nt) {                                                            \
                case 1 * 4 + 1: TILE(1, 1, n, wr, w_stride, at, a_stride, yr, y_stride); break;   \
                case 1 * 4 + 2: TILE(1, 2, n, wr, w_stride, at, a_stride, yr, y_stride); break;   \
                case 1 * 4 + 3: TILE(1, 3, n, wr, w_stride, at, a_stride, yr, y_stride); break;   \
                case 2 * 4 + 1: TILE(2, 1, n, wr, w_stride, at, a_stride, yr, y_stride); break;   \
                case 2 * 4 + 2: TILE(2, 2, n, wr, w_stride, at, a_stride, yr, y_stride); break;   \
                default: TILE(2, 3, n, wr, w_stride, at, a_stride, yr, y_stride); break;          \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

DEFINE_GEMM_FLOAT(gemm_f32_avx512, tile_f32)
DEFINE_GEMM_FLOAT(gemm_f16_avx512, tile_f16)
DEFINE_GEMM_FLOAT(gemm_bf16_avx512, tile_bf16)

/* ---- Weighted sums of rows (attention's scores . values) --------------------------------- */

/* kernels.h's sequence per lane: a tile keeps the running sums of up to WROWS_Q queries x 128
 * values (24 registers), converts each value row once for all queries and multiplies then adds,
 * as the scalar twin does. FULL: all 128 values present (no masks). */
#define WROWS_Q 3
#define WROWS_VECS 8

#define DEFINE_WEIGHTED_ROWS_TILE(NAME, T, LOAD, LOAD_MASKED)                                      \
    static inline __attribute__((always_inline)) void NAME(                                       \
        int nq, int full, int64_t rem, int64_t n_rows, const uint8_t *v, size_t v_stride,          \
        const float *p, int64_t p_stride, float *out, int64_t out_stride) {                       \
        __m512 acc[WROWS_Q][WROWS_VECS];                                                          \
        __mmask16 m[WROWS_VECS];                                                                  \
        _Pragma("GCC unroll 8") for (int c = 0; c < WROWS_VECS; c++) {                           \
            int64_t left = rem - 16 * c;                                                          \
            m[c] = left >= 16 ? (__mmask16)0xFFFF : left > 0 ? tail_mask(left) : 0;               \
            _Pragma("GCC unroll 3") for (int q = 0; q < nq; q++) acc[q][c] = _mm512_setzero_ps(); \
        }                                                                                         \
        for (int64_t j = 0; j < n_rows; j++) {                                                    \
            const T *row = (const T *)(v + (size_t)j * v_stride); /* (rem,) */                    \
            __m512 x[WROWS_VECS];                                                                 \
            _Pragma("GCC unroll 8") for (int c = 0; c < WROWS_VECS; c++)                          \
                x[c] = full ? LOAD(row + 16 * c) : LOAD_MASKED(row + 16 * c, m[c]);               \
            _Pragma("GCC unroll 3") for (int q = 0; q < nq; q++) {                                \
                __m512 pj = _mm512_set1_ps(p[q * p_stride + j]);                                  \
                _Pragma("GCC unroll 8") for (int c = 0; c < WROWS_VECS; c++)                      \
                    acc[q][c] = _mm512_add_ps(acc[q][c], _mm512_mul_ps(pj, x[c]));                \
            }                                                                                     \
        }                                                                                         \
        _Pragma("GCC unroll 3") for (int q = 0; q < nq; q++)                                      \
        _Pragma("GCC unroll 8") for (int c = 0; c < WROWS_VECS; c++)                              \
            _mm512_mask_storeu_ps(out + q * out_stride + 16 * c, m[c], acc[q][c]);                \
    }

DEFINE_WEIGHTED_ROWS_TILE(wrows_tile_f32, float, load_f32, load_f32_masked)
DEFINE_WEIGHTED_ROWS_TILE(wrows_tile_f16, uint16_t, load_f16, load_f16_masked)

#define DEFINE_WEIGHTED_ROWS(NAME, T, TILE)                                                        \
    static void NAME(int64_t n, int64_t n_rows, int64_t n_q, const void *vv, size_t v_stride,    \
                     const float *p, int64_t p_stride, float *out, int64_t out_stride) {         \
        const uint8_t *v = vv;                                                                    \
        for (int64_t q0 = 0; q0 < n_q; q0 += WROWS_Q) {                                           \
            int nq = n_q - q0 < WROWS_Q ? (int)(n_q - q0) : WROWS_Q;                              \
            for (int64_t d0 = 0; d0 < n; d0 += 16 * WROWS_VECS) {                                 \
                int64_t rem = n - d0 < 16 * WROWS_VECS ? n - d0 : 16 * WROWS_VECS;                \
                const uint8_t *vd = v + (size_t)d0 * sizeof(T);                                   \
                const float *pq = p + q0 * p_stride;                                              \
                float *o = out + q0 * out_stride + d0;                                            \
                int full = rem == 16 * WROWS_VECS;                                                \
                switch (nq * 2 + full) {                                                          \
                case 1 * 2 + 0: TILE(1, 0, rem, n_rows, vd, v_stride, pq, p_stride, o, out_stride); break; \
                case 1 * 2 + 1: TILE(1, 1, rem, n_rows, vd, v_stride, pq, p_stride, o, out_stride); break; \
                case 2 * 2 + 0: TILE(2, 0, rem, n_rows, vd, v_stride, pq, p_stride, o, out_stride); break; \
                case 2 * 2 + 1: TILE(2, 1, rem, n_rows, vd, v_stride, pq, p_stride, o, out_stride); break; \
                case 3 * 2 + 0: TILE(3, 0, rem, n_rows, vd, v_stride, pq, p_stride, o, out_stride); break; \
                default: TILE(3, 1, rem, n_rows, vd, v_stride, pq, p_stride, o, out_stride); break;  \
                }                                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

DEFINE_WEIGHTED_ROWS(weighted_rows_f32_avx512, float, wrows_tile_f32)
DEFINE_WEIGHTED_ROWS(weighted_rows_f16_avx512, uint16_t, wrows_tile_f16)

/* ---- Packed weights: 16 rows per register lane set, the scalar dot's arithmetic ---------- */

/* One lane per output row (quants.h, packed layout): for a block, dpbusd of a register of 16
 * rows x 4 codes with 4 activation codes broadcast advances all 16 rows' exact int32 block sums;
 * 8 of them cover the block (two chains of 4, added: integer, so exact). Then per token, like the
 * scalar twin, the block's term is (float)isum * (d_w * d_a), rounded, added to the row's sum,
 * rounded: mul and add, deliberately no FMA. Tiles: one group x up to PACKED_TOKENS tokens, with
 * the group's weights unpacked once per block for all of them. */
#define PACKED_TOKENS 8
/* A tile asks for the lines of the block PACKED_PREFETCH_BLOCKS on as it starts one (kernels.h
 * pyphi_prefetch; 2.3 KB ahead for Q4_0, 4.3 KB for Q8_0). The full-size Q4_0 model decoded
 * 4-7% faster with it on a 2-core Zen 5 VM (1 thread 13.8 against 13.1-13.3 tok/s, 2 threads
 * 21.4-22.0 against 20.2-20.6); 1 and 4 blocks ahead gained less. */
#define PACKED_PREFETCH_BLOCKS 8

static inline __m512i broadcast_codes(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* Q: 1 for Q4_0 (4 registers of nibble pairs, bias 8), 0 for Q8_0 (8 registers, bias 128). */
static inline __attribute__((always_inline)) void packed_tile(
    int q4, int nt, int64_t nb, const uint8_t *group, const uint8_t *a, size_t a_stride,
    const int32_t *a_sums, float *y, int64_t y_stride) {
    const size_t packed_block = PYPHI_PACK_ROWS * (q4 ? sizeof(block_q4_0) : sizeof(block_q8_0));
    const int32_t bias = q4 ? 8 : 128;
    const __m512i nibble = _mm512_set1_epi8(0x0f);
    __m512 acc[PACKED_TOKENS];
    _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = group + (size_t)b * packed_block;
        pyphi_prefetch((uintptr_t)blk + PACKED_PREFETCH_BLOCKS * packed_block, packed_block);
        const uint8_t *qs = blk + PYPHI_PACK_ROWS * sizeof(uint16_t);
        __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk)); /* 16 rows */
        __m512i c[8]; /* (16 rows x 4 codes) each, unsigned */
        int off[8];   /* the activation codes each one multiplies */
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {
            if (q4 && k < 4) {
                __m512i raw = _mm512_loadu_si512(qs + 64 * k);
                c[k] = _mm512_and_si512(raw, nibble);
                c[k + 4] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), nibble);
                off[k] = 4 * k;
                off[k + 4] = 16 + 4 * k;
            } else if (!q4) {
                c[k] = _mm512_loadu_si512(qs + 64 * k);
                off[k] = 4 * k;
            }
        }
        _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) {
            const block_q8_0 *at = (const block_q8_0 *)(a + (size_t)t * a_stride) + b;
            __m512i s0 = _mm512_set1_epi32(-bias * a_sums[t * nb + b]);
            __m512i s1 = _mm512_setzero_si512();
            _Pragma("GCC unroll 4") for (int k = 0; k < 8; k += 2) {
                s0 = _mm512_dpbusd_epi32(s0, c[k], broadcast_codes(at->qs + off[k]));
                s1 = _mm512_dpbusd_epi32(s1, c[k + 1], broadcast_codes(at->qs + off[k + 1]));
            }
            __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(_cvtsh_ss(at->d))); /* exact */
            __m512 term = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), dd);
            acc[t] = _mm512_add_ps(acc[t], term);
        }
    }
    _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) _mm512_storeu_ps(y + t * y_stride, acc[t]);
}

/* ---- The packed product from ggml's layout (kernels.h pyphi_gemm_lanes_fn) ---------------- */

/* packed_tile's arithmetic on 16 rows read where they are. A register holds two rows' codes for
 * one block (row r in its low half, row r + 4 in its high half), and one dpbusd with the token's
 * block broadcast to both halves leaves 8 partial sums per row. A tree of unpacks and adds turns
 * the 8 registers (rows 0-3 | 4-7, then 8-11 | 12-15) into one of the 16 rows' block sums, in row
 * order: integer adds, so exactly packed_tile's isum, and the float steps are packed_tile's. */
static inline __m512i row_sums16(const __m512i p[8]) {
    __m512i q[4], r[2];
    _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {
        /* per 128-bit lane: rows 2k, 2k + 1, each partials 0+2 and 1+3 of that lane */
        q[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2 * k], p[2 * k + 1]),
                                _mm512_unpackhi_epi32(p[2 * k], p[2 * k + 1]));
    }
    _Pragma("GCC unroll 2") for (int k = 0; k < 2; k++) {
        /* per 128-bit lane: 4 rows, each the sum of that lane's 4 partials */
        r[k] = _mm512_add_epi32(_mm512_unpacklo_epi64(q[2 * k], q[2 * k + 1]),
                                _mm512_unpackhi_epi64(q[2 * k], q[2 * k + 1]));
    }
    /* r[0]'s lanes: rows 0-3 (partials 0-3), rows 0-3 (4-7), rows 4-7 (0-3), rows 4-7 (4-7);
     * r[1] the same for rows 8-15. Even lanes plus odd lanes: rows 0-15. */
    return _mm512_add_epi32(_mm512_shuffle_i32x4(r[0], r[1], 0x88),
                            _mm512_shuffle_i32x4(r[0], r[1], 0xDD));
}

/* Register k's two rows: k and k + 4 for k < 4, else k + 4 and k + 8. */
static inline int lanes_row(int k) {
    return k < 4 ? k : k + 4;
}

static inline __attribute__((always_inline)) void lanes_tile(
    int q4, int nt, int64_t nb, const uint8_t *w, size_t w_stride, __m512i row_offsets,
    const uint8_t *a, size_t a_stride, const int32_t *a_sums, float *y, int64_t y_stride) {
    const size_t block_bytes = q4 ? sizeof(block_q4_0) : sizeof(block_q8_0);
    const int32_t bias = q4 ? 8 : 128;
    const __m512i nibble = _mm512_set1_epi8(0x0f), flip = _mm512_set1_epi8((char)0x80);
    __m512 acc[PACKED_TOKENS];
    _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blocks = w + (size_t)b * block_bytes; /* row 0's block b */
        /* the 16 scales: a dword from each row's block, its low half */
        __m512i d32 = _mm512_i32gather_epi32(row_offsets, blocks, 1);
        __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(d32));
        __m512i c[8]; /* (row, row + 4) x 32 codes, unsigned */
        _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {
            const uint8_t *lo = blocks + (size_t)lanes_row(k) * w_stride + sizeof(uint16_t);
            const uint8_t *hi = lo + 4 * w_stride;
            if (q4) {
                __m256i v = _mm256_loadu2_m128i((const __m128i *)hi, (const __m128i *)lo);
                __m256i low = _mm256_and_si256(v, _mm512_castsi512_si256(nibble));
                __m256i high = _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm512_castsi512_si256(nibble));
                /* [lo row: values 0-15 | row + 4: 0-15 | lo row: 16-31 | row + 4: 16-31] -> rows */
                __m512i mixed = _mm512_inserti64x4(_mm512_castsi256_si512(low), high, 1);
                c[k] = _mm512_shuffle_i64x2(mixed, mixed, 0xD8);
            } else {
                __m512i v = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)lo)),
                    _mm256_loadu_si256((const __m256i *)hi), 1);
                c[k] = _mm512_xor_si512(v, flip);
            }
        }
        _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) {
            const block_q8_0 *at = (const block_q8_0 *)(a + (size_t)t * a_stride) + b;
            __m512i codes = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)at->qs));
            __m512i p[8];
            _Pragma("GCC unroll 8") for (int k = 0; k < 8; k++) {
                p[k] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c[k], codes);
            }
            __m512i isum = _mm512_add_epi32(row_sums16(p), _mm512_set1_epi32(-bias * a_sums[t * nb + b]));
            __m512 dd = _mm512_mul_ps(dw, _mm512_set1_ps(_cvtsh_ss(at->d))); /* exact */
            __m512 term = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), dd);
            acc[t] = _mm512_add_ps(acc[t], term);
        }
    }
    _Pragma("GCC unroll 8") for (int t = 0; t < nt; t++) _mm512_storeu_ps(y + t * y_stride, acc[t]);
}

/* One tile: packed_tile over a packed group (lanes 0), lanes_tile over 16 rows of ggml's layout
 * (lanes 1). */
static inline __attribute__((always_inline)) void tile(
    int q4, int lanes, int nt, int64_t nb, const uint8_t *group, size_t w_stride,
    __m512i row_offsets, const uint8_t *a, size_t a_stride, const int32_t *a_sums, float *y,
    int64_t y_stride) {
    if (lanes) {
        lanes_tile(q4, nt, nb, group, w_stride, row_offsets, a, a_stride, a_sums, y, y_stride);
    } else {
        packed_tile(q4, nt, nb, group, a, a_stride, a_sums, y, y_stride);
    }
}

/* The product in tiles of 16 rows x up to PACKED_TOKENS tokens. A group of 16 rows takes the same
 * 16 w_stride bytes (w_stride: a row's bytes) in either layout. The row offsets of lanes_tile's
 * scale gather need 15 w_stride to fit an int32, which matmul.c checks (a row of over 140 MB). */
static inline __attribute__((always_inline)) void tiles(
    int q4, int lanes, int64_t n, int64_t n_groups, int64_t n_tok, const void *vw, size_t w_stride,
    const void *va, size_t a_stride, const int32_t *a_sums, float *y, int64_t y_stride) {
    const uint8_t *a = va;
    int64_t nb = n / PYPHI_QK8_0;
    __m512i row_offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32((int32_t)w_stride));
    for (int64_t g = 0; g < n_groups; g++) {
        const uint8_t *group = (const uint8_t *)vw + (size_t)g * PYPHI_PACK_ROWS * w_stride;
        for (int64_t t0 = 0; t0 < n_tok; t0 += PACKED_TOKENS) {
            int64_t nt = n_tok - t0 < PACKED_TOKENS ? n_tok - t0 : PACKED_TOKENS;
            const uint8_t *at = a + (size_t)t0 * a_stride;
            const int32_t *st = a_sums + t0 * nb;
            float *yt = y + t0 * y_stride + g * PYPHI_PACK_ROWS;
#define TILE(NT) tile(q4, lanes, NT, nb, group, w_stride, row_offsets, at, a_stride, st, yt, y_stride)
            switch (nt) {
            case 1: TILE(1); break;
            case 2: TILE(2); break;
            case 3: TILE(3); break;
            case 4: TILE(4); break;
            case 5: TILE(5); break;
            case 6: TILE(6); break;
            case 7: TILE(7); break;
            default: TILE(8); break;
            }
#undef TILE
        }
    }
}

#define DEFINE_GEMM_PACKED(NAME, Q4, BLOCK)                                                        \
    static void NAME(int64_t n, int64_t n_groups, int64_t n_tok, const void *w, const void *a,    \
                     size_t a_stride, const int32_t *a_sums, float *y, int64_t y_stride) {       \
        tiles(Q4, 0, n, n_groups, n_tok, w, (size_t)(n / PYPHI_QK8_0) * sizeof(BLOCK), a,         \
              a_stride, a_sums, y, y_stride);                                                     \
    }

#define DEFINE_GEMM_LANES(NAME, Q4)                                                                \
    static void NAME(int64_t n, int64_t n_rows, int64_t n_tok, const void *w, size_t w_stride,    \
                     const void *a, size_t a_stride, const int32_t *a_sums, float *y,             \
                     int64_t y_stride) {                                                          \
        tiles(Q4, 1, n, n_rows / PYPHI_PACK_ROWS, n_tok, w, w_stride, a, a_stride, a_sums, y,     \
              y_stride);                                                                          \
    }

DEFINE_GEMM_PACKED(gemm_packed_q4_0_avx512, 1, block_q4_0)
DEFINE_GEMM_PACKED(gemm_packed_q8_0_avx512, 0, block_q8_0)
DEFINE_GEMM_LANES(gemm_lanes_q4_0_avx512, 1)
DEFINE_GEMM_LANES(gemm_lanes_q8_0_avx512, 0)

/* ---- Softmax: the scalar twin's operations in 16 lanes (kernels.h) ------------------------ */

/* pyphi_exp of 16 values (kernels_scalar.c, exp_nonpositive): the same roundings and FMAs. */
static inline __m512 exp_nonpositive16(__m512 x) {
    __mmask16 in_range = _mm512_cmp_ps_mask(x, _mm512_set1_ps(PYPHI_EXP_MIN), _CMP_GE_OQ);
    __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(PYPHI_EXP_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fmadd_ps(n, _mm512_set1_ps(-PYPHI_EXP_LN2_HI), x);
    r = _mm512_fmadd_ps(n, _mm512_set1_ps(-PYPHI_EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(PYPHI_EXP_C7);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(PYPHI_EXP_C6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(PYPHI_EXP_C5));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(PYPHI_EXP_C4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(PYPHI_EXP_C3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(PYPHI_EXP_C2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    /* 2^n for the lanes in range (n in -126..0); the others become 0 or stay NaN below */
    __m512i e = _mm512_maskz_cvtps_epi32(in_range, n);
    __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(e, _mm512_set1_epi32(127)), 23));
    __m512 y = _mm512_maskz_mul_ps(in_range, p, scale);
    return _mm512_mask_mov_ps(y, nan, x);
}

static void softmax_avx512(float *x, int64_t n, float scale) {
    const __m512 sv = _mm512_set1_ps(scale);
    __m512 maxv = _mm512_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), sv);
        _mm512_storeu_ps(x + i, v);
        maxv = _mm512_max_ps(maxv, v);
    }
    __mmask16 tail = tail_mask(n - i);
    if (tail) {
        __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + i), sv);
        _mm512_mask_storeu_ps(x + i, tail, v);
        maxv = _mm512_mask_max_ps(maxv, tail, maxv, v);
    }
    __m512 max = _mm512_set1_ps(_mm512_reduce_max_ps(maxv));
    __m512 part = _mm512_setzero_ps(); /* lane j: the values i = j mod 16, in order */
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = exp_nonpositive16(_mm512_sub_ps(_mm512_loadu_ps(x + i), max));
        _mm512_storeu_ps(x + i, e);
        part = _mm512_add_ps(part, e);
    }
    if (tail) {
        __m512 e = exp_nonpositive16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + i), max));
        _mm512_mask_storeu_ps(x + i, tail, e);
        part = _mm512_mask_add_ps(part, tail, part, e);
    }
    /* lanes j + 8, + 4, + 2, + 1 folded in, as the scalar twin does */
    __m256 p8 = _mm256_add_ps(_mm512_castps512_ps256(part), _mm512_extractf32x8_ps(part, 1));
    __m128 p4 = _mm_add_ps(_mm256_castps256_ps128(p8), _mm256_extractf128_ps(p8, 1));
    __m128 p2 = _mm_add_ps(p4, _mm_movehl_ps(p4, p4));
    __m128 p1 = _mm_add_ss(p2, _mm_movehdup_ps(p2));
    __m512 inv = _mm512_set1_ps(1.0f / _mm_cvtss_f32(p1));
    for (i = 0; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    }
    if (tail) {
        _mm512_mask_storeu_ps(x + i, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + i), inv));
    }
}

/* ---- Activation quantizer: float32 -> Q8_0, bit-identical to pyphi_quantize_row_q8_0 ------ */

/* round-half-away-from-zero(v * id) as 16 int32, 0 where the product is not finite (numpy's cast
 * of NaN/inf, see quants.h). Exact: floor and the 0.5 test see the exact fraction. */
static inline __m512i round_scaled(__m512 v, __m512 id) {
    __m512 t = _mm512_mul_ps(v, id);
    __m512 mag = _mm512_abs_ps(t);
    __m512 fl = _mm512_roundscale_ps(mag, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __mmask16 up = _mm512_cmp_ps_mask(_mm512_sub_ps(mag, fl), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    __m512 r = _mm512_mask_add_ps(fl, up, fl, _mm512_set1_ps(1.0f));
    __mmask16 finite = _mm512_cmp_ps_mask(mag, _mm512_set1_ps(INFINITY), _CMP_LT_OQ);
    __mmask16 negative = _mm512_cmp_ps_mask(t, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512i i = _mm512_maskz_cvttps_epi32(finite, r); /* finite |r| <= 127 here */
    return _mm512_mask_sub_epi32(i, negative, _mm512_setzero_si512(), i);
}

/* One block of 32 values without NaN (the caller checks) -> Q8_0's codes and binary16 scale, as
 * pyphi_quantize_block_q8; *sum = the sum of the codes. Returns the binary32 scale. */
static inline float quantize_block_q8(__m512 v0, __m512 v1, uint16_t *dh, int8_t *qs, int32_t *sum) {
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    float d = amax / 127.0f;
    float id = d == 0.0f ? 0.0f : 1.0f / d;
    /* d is not NaN here, and F16C rounds to nearest even like pyphi_fp32_to_fp16 */
    *dh = (uint16_t)_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT);
    __m512 idv = _mm512_set1_ps(id);
    __m512i i0 = round_scaled(v0, idv), i1 = round_scaled(v1, idv);
    _mm_storeu_si128((__m128i *)qs, _mm512_cvtepi32_epi8(i0)); /* truncating narrow; values fit */
    _mm_storeu_si128((__m128i *)(qs + 16), _mm512_cvtepi32_epi8(i1));
    *sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    return d;
}

static inline int has_nan(__m512 v0, __m512 v1) {
    return (_mm512_cmp_ps_mask(v0, v0, _CMP_UNORD_Q) | _mm512_cmp_ps_mask(v1, v1, _CMP_UNORD_Q)) != 0;
}

static void quantize_row_q8_0_avx512(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK8_0; b++) {
        const float *xb = x + b * PYPHI_QK8_0; /* (32,) */
        __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
        if (has_nan(v0, v1)) {
            /* which NaN becomes the scale is defined by the scalar scan order */
            pyphi_quantize_row_q8_0(xb, &y[b], PYPHI_QK8_0);
            continue;
        }
        int32_t sum;
        quantize_block_q8(v0, v1, &y[b].d, y[b].qs, &sum);
    }
}

/* Q8_1: Q8_0's codes and scale, and s = fp16(sum * d) from the binary32 d, as
 * pyphi_quantize_row_q8_1 (ggml's quantize_row_q8_1_ref); (float)sum is exact. */
static void quantize_row_q8_1_avx512(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK8_1; b++) {
        const float *xb = x + b * PYPHI_QK8_1; /* (32,) */
        __m512 v0 = _mm512_loadu_ps(xb), v1 = _mm512_loadu_ps(xb + 16);
        if (has_nan(v0, v1)) {
            pyphi_quantize_row_q8_1(xb, &y[b], PYPHI_QK8_1);
            continue;
        }
        int32_t sum;
        float d = quantize_block_q8(v0, v1, &y[b].d, y[b].qs, &sum);
        /* the scalar twin's conversion: sum * d is NaN for 0 * inf (a block holding an inf) */
        y[b].s = pyphi_fp32_to_fp16((float)sum * d);
    }
}

const pyphi_kernels pyphi_kernels_avx512 = {
    .isa = PYPHI_ISA_AVX512,
    .softmax = softmax_avx512,
    .weighted_rows = {
        [PYPHI_TYPE_F32] = weighted_rows_f32_avx512,
        [PYPHI_TYPE_F16] = weighted_rows_f16_avx512,
    },
    .vec_dot = {
        [PYPHI_TYPE_F32] = vec_dot_f32_avx512,
        [PYPHI_TYPE_F16] = vec_dot_f16_avx512,
        [PYPHI_TYPE_BF16] = vec_dot_bf16_avx512,
        [PYPHI_TYPE_Q8_0] = vec_dot_q8_0_q8_0_avx512,
        [PYPHI_TYPE_Q4_0] = vec_dot_q4_0_q8_0_avx512,
        [PYPHI_TYPE_Q4_K] = pyphi_vec_dot_q4_K_q8_K_avx512,
        [PYPHI_TYPE_Q5_K] = pyphi_vec_dot_q5_K_q8_K_avx512,
        [PYPHI_TYPE_Q6_K] = pyphi_vec_dot_q6_K_q8_K_avx512,
        [PYPHI_TYPE_Q5_0] = vec_dot_q5_0_q8_0_avx512,
        [PYPHI_TYPE_Q4_1] = vec_dot_q4_1_q8_1_avx512,
        [PYPHI_TYPE_Q5_1] = vec_dot_q5_1_q8_1_avx512,
    },
    .gemm = {
        [PYPHI_TYPE_F32] = gemm_f32_avx512,
        [PYPHI_TYPE_F16] = gemm_f16_avx512,
        [PYPHI_TYPE_BF16] = gemm_bf16_avx512,
        [PYPHI_TYPE_Q8_0] = gemm_q8_0_q8_0_avx512,
        [PYPHI_TYPE_Q4_0] = gemm_q4_0_q8_0_avx512,
        [PYPHI_TYPE_Q4_K] = pyphi_gemm_q4_K_q8_K_avx512,
        [PYPHI_TYPE_Q5_K] = pyphi_gemm_q5_K_q8_K_avx512,
        [PYPHI_TYPE_Q6_K] = pyphi_gemm_q6_K_q8_K_avx512,
        [PYPHI_TYPE_Q5_0] = gemm_q5_0_q8_0_avx512,
        [PYPHI_TYPE_Q4_1] = gemm_q4_1_q8_1_avx512,
        [PYPHI_TYPE_Q5_1] = gemm_q5_1_q8_1_avx512,
    },
    .gemm_lanes = {
        [PYPHI_TYPE_Q8_0] = gemm_lanes_q8_0_avx512,
        [PYPHI_TYPE_Q4_0] = gemm_lanes_q4_0_avx512,
    },
    .gemm_packed = {
        [PYPHI_TYPE_Q8_0] = gemm_packed_q8_0_avx512,
        [PYPHI_TYPE_Q4_0] = gemm_packed_q4_0_avx512,
        [PYPHI_TYPE_Q4_K] = pyphi_gemm_packed_q4_K_avx512,
        [PYPHI_TYPE_Q5_K] = pyphi_gemm_packed_q5_K_avx512,
        [PYPHI_TYPE_Q6_K] = pyphi_gemm_packed_q6_K_avx512,
    },
    .quantize_act = {
        [PYPHI_TYPE_Q8_0] = quantize_row_q8_0_avx512,
        [PYPHI_TYPE_Q8_1] = quantize_row_q8_1_avx512,
        [PYPHI_TYPE_Q8_K] = pyphi_quantize_row_q8_K_avx512,
    },
};
