/* quants.h: ggml's block formats byte for byte, and the scalar number conversions they rely on.
 *
 * Internal to libpyphi (not part of the ABI). Everything here is portable C11 with no SIMD, so
 * every kernel file, whatever its compile flags, can include it. The conversions reproduce what
 * numpy does, because the reference we must match bit for bit is gguf-py's numpy code
 * (gguf/quants.py, PyPI gguf 0.19.0), which itself matches ggml-quants.c for finite inputs.
 */
#ifndef PYPHI_QUANTS_H
#define PYPHI_QUANTS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- Block layouts (ggml-common.h) ---------------------------------------------------------- */

#define PYPHI_QK4_0 32 /* values per Q4_0 block */
#define PYPHI_QK8_0 32 /* values per Q8_0 block */

/* ggml block_q4_0: value j of the block is ((qs[j % 16] >> (4 * (j / 16))) & 15) - 8, times d.
 * So the low nibbles hold values 0..15 and the high nibbles values 16..31. */
typedef struct {
    uint16_t d;                   /* scale, IEEE binary16 bits */
    uint8_t qs[PYPHI_QK4_0 / 2];  /* 32 x 4-bit unsigned codes, offset by 8 */
} block_q4_0;
_Static_assert(sizeof(block_q4_0) == 18, "block_q4_0 must be 18 bytes, as in ggml");

/* ggml block_q8_0: value j is qs[j] * d. */
typedef struct {
    uint16_t d;              /* scale, IEEE binary16 bits */
    int8_t qs[PYPHI_QK8_0];  /* 32 x signed 8-bit codes */
} block_q8_0;
_Static_assert(sizeof(block_q8_0) == 34, "block_q8_0 must be 34 bytes, as in ggml");

/* The "legacy" formats beside Q4_0/Q8_0 (ggml-common.h). Q4_1 and Q5_1 store a minimum m as well
 * as a scale, so value j is d * code_j + m with unsigned codes; Q5_0 and Q5_1 keep a fifth bit
 * per value in qh, a little-endian uint32 whose bit j belongs to value j. Nibbles are ordered as in
 * Q4_0 (low nibbles: values 0..15, high: 16..31). */
#define PYPHI_QK4_1 32
#define PYPHI_QK5_0 32
#define PYPHI_QK5_1 32
#define PYPHI_QK8_1 32

/* ggml block_q4_1: value j is ((qs[j % 16] >> (4 * (j / 16))) & 15) * d + m. */
typedef struct {
    uint16_t d;                  /* scale, IEEE binary16 bits */
    uint16_t m;                  /* minimum, IEEE binary16 bits */
    uint8_t qs[PYPHI_QK4_1 / 2]; /* 32 x 4-bit unsigned codes */
} block_q4_1;
_Static_assert(sizeof(block_q4_1) == 20, "block_q4_1 must be 20 bytes, as in ggml");

/* ggml block_q5_0: value j is (low nibble j | bit j of qh << 4) - 16, times d. */
typedef struct {
    uint16_t d;                  /* scale, IEEE binary16 bits */
    uint8_t qh[4];               /* bit 4 of each code, little-endian uint32 */
    uint8_t qs[PYPHI_QK5_0 / 2]; /* bits 0..3 of each code */
} block_q5_0;
_Static_assert(sizeof(block_q5_0) == 22, "block_q5_0 must be 22 bytes, as in ggml");

/* ggml block_q5_1: value j is (low nibble j | bit j of qh << 4) * d + m. */
typedef struct {
    uint16_t d;                  /* scale, IEEE binary16 bits */
    uint16_t m;                  /* minimum, IEEE binary16 bits */
    uint8_t qh[4];               /* bit 4 of each code, little-endian uint32 */
    uint8_t qs[PYPHI_QK5_1 / 2]; /* bits 0..3 of each code */
} block_q5_1;
_Static_assert(sizeof(block_q5_1) == 24, "block_q5_1 must be 24 bytes, as in ggml");

/* ggml block_q8_1, the activations dotted with Q4_1/Q5_1: value j is qs[j] * d, and s caches
 * d * sum(qs) (rounded from the binary32 scale before d was rounded to binary16, as ggml's
 * quantize_row_q8_1_ref does), which carries the weights' m term: sum (d_w q + m) (d_a a) =
 * d_w d_a sum q a + m s. */
typedef struct {
    uint16_t d;             /* scale, IEEE binary16 bits */
    uint16_t s;             /* d * sum(qs), IEEE binary16 bits */
    int8_t qs[PYPHI_QK8_1]; /* 32 x signed 8-bit codes */
} block_q8_1;
_Static_assert(sizeof(block_q8_1) == 36, "block_q8_1 must be 36 bytes, as in ggml");
/* ---- K-quant super-blocks (ggml-common.h; QK_K = 256) -------------------------------------- */

#define PYPHI_QK_K 256
#define PYPHI_K_SCALE_SIZE 12

/* ggml block_q4_K: 8 sub-blocks of 32 values; value i of sub-block j is
 *   d * sc[j] * q_i - dmin * m[j],
 * sc and m 6-bit (pyphi_k_scale_min), q_i a nibble: sub-blocks 2k and 2k + 1 share
 * qs[32 k .. 32 k + 31], 2k in the low nibbles, 2k + 1 in the high ones. */
typedef struct {
    uint16_t d;                           /* super-block scale of the scales, binary16 */
    uint16_t dmin;                        /* super-block scale of the mins, binary16 */
    uint8_t scales[PYPHI_K_SCALE_SIZE];   /* 8 scales and 8 mins, 6 bits each */
    uint8_t qs[PYPHI_QK_K / 2];           /* 256 x 4-bit codes */
} block_q4_K;
_Static_assert(sizeof(block_q4_K) == 144, "block_q4_K must be 144 bytes, as in ggml");

/* ggml block_q5_K: block_q4_K's codes plus a fifth bit: bit 2k of qh[l] is the high bit of
 * value l of sub-block 2k, bit 2k + 1 that of value l of sub-block 2k + 1 (codes 0..31). */
typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[PYPHI_K_SCALE_SIZE];
    uint8_t qh[PYPHI_QK_K / 8];           /* high bits */
    uint8_t qs[PYPHI_QK_K / 2];           /* low 4 bits */
} block_q5_K;
_Static_assert(sizeof(block_q5_K) == 176, "block_q5_K must be 176 bytes, as in ggml");

/* ggml block_q6_K: 16 sub-blocks of 16 values; value i of sub-block j is d * scales[j] * (q_i - 32),
 * q_i 6 bits. In each half h (128 values) with ql + 64 h, qh + 32 h, for l < 32:
 *   value l      = low nibble of ql[l]      | ((qh[l] >> 0) & 3) << 4
 *   value l + 32 = low nibble of ql[l + 32] | ((qh[l] >> 2) & 3) << 4
 *   value l + 64 = high nibble of ql[l]     | ((qh[l] >> 4) & 3) << 4
 *   value l + 96 = high nibble of ql[l + 32]| ((qh[l] >> 6) & 3) << 4 */
typedef struct {
    uint8_t ql[PYPHI_QK_K / 2];           /* low 4 bits */
    uint8_t qh[PYPHI_QK_K / 4];           /* high 2 bits */
    int8_t scales[PYPHI_QK_K / 16];       /* 8-bit sub-block scales */
    uint16_t d;                           /* super-block scale, binary16 */
} block_q6_K;
_Static_assert(sizeof(block_q6_K) == 210, "block_q6_K must be 210 bytes, as in ggml");

/* ggml block_q8_K, the activations the K-quants are dotted with: value i is d * qs[i];
 * bsums[k] = sum of qs[16 k .. 16 k + 15] (for the K-quants' min terms). */
typedef struct {
    float d;                              /* scale, binary32 */
    int8_t qs[PYPHI_QK_K];
    int16_t bsums[PYPHI_QK_K / 16];
} block_q8_K;
_Static_assert(sizeof(block_q8_K) == 292, "block_q8_K must be 292 bytes, as in ggml");

/* Scale and min of sub-block j < 8 of a Q4_K/Q5_K block, 6 bits each (ggml get_scale_min_k4):
 * j < 4: the low 6 bits of scales[j] and scales[j + 4]; j >= 4: the nibbles of scales[j + 4]
 * below, the top 2 bits of scales[j - 4] (scale) and scales[j] (min) above. */
static inline void pyphi_k_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* ---- Packed layout (pyphi's own, built at load time; never in a file) -------------------------
 *
 * Rows of Q4_0 or Q8_0 weights in groups of PYPHI_PACK_ROWS, so that one 512-bit register holds
 * 4 bytes of each of 16 rows and a dot instruction advances 16 output rows at once. A group of n
 * values per row is n / 32 packed blocks, one per block index b, each the same bytes as the 16
 * rows' blocks b (16 x 18 or 16 x 34), rearranged:
 *   uint16_t d[16];                 row i's scale
 *   uint8_t  qs[QS / 4][16][4];     qs[k][i][j] = row i's qs[4 k + j]  (QS = 16 for Q4_0, 32 for Q8_0)
 * Q4_0 codes keep their nibbles (low: value 4k + j, high: value 16 + 4k + j; unsigned, offset 8).
 * Q8_0 codes are stored XOR 0x80, i.e. as the unsigned code + 128. */
#define PYPHI_PACK_ROWS 16

/* Q5_K matrices pack PYPHI_PACK_ROWS_K rows per group, whole super-blocks interleaved: group g
 * holds block b of its rows 0..3, then block b + 1 of rows 0..3, ... (n / 256 x 4 blocks), bytes
 * unchanged. A 4-row kernel then reads one contiguous stream instead of four. */
#define PYPHI_PACK_ROWS_K 4

/* Q4_K matrices pack PYPHI_PACK_ROWS (16) rows per group, one lane per row as Q4_0 does: per
 * super-block b, PYPHI_Q4_K_PACKED_BYTES (16 x 144) bytes:
 *   uint16_t d[16], dmin[16];        row i's d and dmin
 *   uint32_t scales[3][16];          scales[k][i] = row i's scales[4k .. 4k + 3]
 *   uint8_t  qs[4][8][16][4];        qs[k][c][i][j] = row i's qs[32 k + 4 c + j]
 * (nibbles kept: low = sub-block 2k, high = sub-block 2k + 1, value 4c + j of each). */
#define PYPHI_Q4_K_PACKED_BYTES (PYPHI_PACK_ROWS * 144)

/* Q6_K matrices pack PYPHI_PACK_ROWS (16) rows per group, one lane per row: per super-block,
 * PYPHI_Q6_K_PACKED_BYTES (16 x 210) bytes:
 *   uint16_t d[16];                  row i's d
 *   int8_t   scales[8][16][2];       scales[p][i][j] = row i's scales[2 p + j]
 *   uint8_t  quads[4][12][16][4];    the 4-byte groups of row i's ql and qh by quad u = 2h + m
 *                                    (h: half, m: 0 or 1), in the order the kernel first reads
 *                                    them: ql groups 16h + 4m + c, then qh 8h + 4m + c, then ql
 *                                    16h + 8 + 4m + c, c = 0..3 (group c = bytes 4c .. 4c + 3)
 * A quad holds the codes of sub-blocks 8h + 2q + m, q = 0..3. That first-read order is the
 * address order, which the hardware prefetchers follow: with the second ql run before qh, a
 * single token's matmul read the packed weights from memory at 18.6-19.7 GB/s on one Zen 5 core,
 * against 22.7 in address order. */
#define PYPHI_Q6_K_PACKED_BYTES (PYPHI_PACK_ROWS * 210)

/* ---- Bit casts ------------------------------------------------------------------------------ */

static inline uint32_t pyphi_f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float pyphi_f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- binary16 <-> binary32 ------------------------------------------------------------------ */

/* binary16 -> binary32, exact. A NaN keeps its sign and payload (shifted up 13 bits) without being
 * quieted, as numpy's npy_halfbits_to_floatbits does (hardware F16C would set the quiet bit). */
static inline float pyphi_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) { /* inf or NaN */
        return pyphi_f32_from_bits(sign | 0x7f800000u | (mant << 13));
    }
    if (exp == 0) {
        if (mant == 0) {
            return pyphi_f32_from_bits(sign);
        }
        /* subnormal half: mant * 2^-24; normalise so that bit 10 is the implicit one */
        uint32_t e = 113; /* binary32 biased exponent of 2^-14, the smallest normal half */
        while (!(mant & 0x400u)) {
            mant <<= 1;
            e--;
        }
        return pyphi_f32_from_bits(sign | (e << 23) | ((mant & 0x3ffu) << 13));
    }
    return pyphi_f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
}

/* binary32 -> binary16, round to nearest, ties to even, with gradual underflow and overflow to
 * inf. NaN: sign kept, payload truncated to its top 10 bits and forced non-zero so it stays a NaN
 * (numpy's npy_floatbits_to_halfbits, which `ndarray.astype(np.float16)` uses). */
static inline uint16_t pyphi_fp32_to_fp16(float f) {
    uint32_t x = pyphi_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) { /* inf or NaN */
        if (ax == 0x7f800000u) {
            return sign | 0x7c00u;
        }
        uint16_t h = (uint16_t)(0x7c00u + ((ax & 0x7fffffu) >> 13));
        return sign | (h == 0x7c00u ? 0x7c01u : h);
    }
    if (ax >= 0x477ff000u) { /* >= 65520, halfway between 65504 and 2^16: rounds to inf */
        return sign | 0x7c00u;
    }
    if (ax >= 0x38800000u) { /* >= 2^-14: a normal half; rebias the exponent, round 13 bits away */
        uint32_t h = (ax >> 13) - 0x1c000u; /* 0x1c000 = (127 - 15) << 10 */
        uint32_t rem = ax & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) {
            h++; /* a carry into the exponent is the right answer */
        }
        return sign | (uint16_t)h;
    }
    if (ax <= 0x33000000u) { /* <= 2^-25, half the smallest subnormal: ties to even gives 0 */
        return sign;
    }
    /* subnormal half: the value in units of 2^-24 is mant * 2^(exp - 126), exp in [102, 112] */
    uint32_t exp = ax >> 23;
    uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - exp; /* 14..24 */
    uint32_t h = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) {
        h++; /* may carry into the smallest normal, 0x0400, which is the right encoding */
    }
    return sign | (uint16_t)h;
}

/* ---- bfloat16 <-> binary32 ------------------------------------------------------------------ */

static inline float pyphi_bf16_to_fp32(uint16_t b) {
    return pyphi_f32_from_bits((uint32_t)b << 16);
}

/* binary32 -> bfloat16, round to nearest even; a NaN keeps its top bits with the quiet bit set.
 * This is ggml_compute_fp32_to_bf16 (ggml-impl.h), which gguf-py's BF16.quantize_blocks copies. */
static inline uint16_t pyphi_fp32_to_bf16(float f) {
    uint32_t x = pyphi_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((x >> 16) | 64u);
    }
    /* cannot overflow 32 bits: the largest non-NaN pattern is 0xff800000 */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* ---- numpy's float -> small integer casts --------------------------------------------------- */

/* `ndarray.astype(np.int8 / np.uint8)` on x86-64 truncates toward zero to a 32-bit integer (NaN,
 * inf and anything out of int32 range become INT32_MIN, the x86 "integer indefinite") and keeps
 * the low byte. gguf-py relies on this for blocks whose scale under- or overflows (e.g. a block
 * of tiny values gives an infinite inverse scale), so we reproduce it rather than C's undefined
 * float -> int conversion. Measured on numpy 2.4 (NaN, +-inf, +-1e10 -> 0; 300 -> 44; -300 -> 212). */
static inline uint8_t pyphi_numpy_f32_to_u8(float v) {
    if (!(fabsf(v) < 2147483648.0f)) {
        return 0; /* low byte of INT32_MIN */
    }
    return (uint8_t)(uint32_t)(int32_t)v;
}

/* ---- Scalar row codecs (quants.c) ----------------------------------------------------------- */

/* x: (n,) float32 -> y: (n / 32) blocks. n must be a multiple of 32 (callers check). These are the
 * reference quantizers: gguf.quants.quantize bit for bit. The Q8_0 one is also the scalar
 * activation quantizer of the kernel table. */
void pyphi_quantize_row_q8_0(const float *x, void *y, int64_t n);
void pyphi_quantize_row_q4_0(const float *x, void *y, int64_t n);
/* x: (n,) float32 -> y: (n,) bfloat16, pyphi_fp32_to_bf16 each (gguf.quants BF16 bit for bit);
 * also the activation quantizer for BF16 weights. Any n. */
void pyphi_quantize_row_bf16(const float *x, void *y, int64_t n);

/* The value of a block of 32 with the largest magnitude, the first one if several tie, or the
 * first NaN (gguf-py's take_along_axis(x, abs(x).argmax())): Q4_0 and Q5_0 map it to code 0. */
float pyphi_block_signed_absmax(const float *xb);

/* One block of 32 values to Q8_0's codes and binary16 scale (*d); returns the binary32 scale that
 * *d rounds from (Q8_1's s is computed from it). pyphi_quantize_row_q8_0 is this, block by block. */
float pyphi_quantize_block_q8(const float *xb, uint16_t *d, int8_t *qs);

/* quants_legacy.c: Q4_1, Q5_0, Q5_1 (gguf.quants bit for bit, both ways) and Q8_1 (ggml's
 * quantize_row_q8_1_ref bit for bit on finite input; gguf-py has no Q8_1). Same contract as
 * above: x (n,) float32 <-> n / 32 blocks. The Q8_1 quantizer is the scalar activation
 * quantizer of the kernel table. */
void pyphi_quantize_row_q4_1(const float *x, void *y, int64_t n);
void pyphi_quantize_row_q5_0(const float *x, void *y, int64_t n);
void pyphi_quantize_row_q5_1(const float *x, void *y, int64_t n);
void pyphi_quantize_row_q8_1(const float *x, void *y, int64_t n);
void pyphi_dequantize_row_q4_1(const void *x, float *y, int64_t n);
void pyphi_dequantize_row_q5_0(const void *x, float *y, int64_t n);
void pyphi_dequantize_row_q5_1(const void *x, float *y, int64_t n);
void pyphi_dequantize_row_q8_1(const void *x, float *y, int64_t n);
/* K-quant row codecs (quants_k.c). x: (n,) float32 -> y: n / 256 blocks, n a multiple of 256
 * (callers check). Quantizers: bit-identical to ggml's quantize_row_q*_K_ref (no importance
 * matrix), which is what llama-quantize writes without --imatrix. Dequantizers: bit-identical to
 * gguf.quants.dequantize (and ggml's dequantize_row_q*_K). The Q8_K quantizer is also the scalar
 * activation quantizer of the kernel table. */
void pyphi_quantize_row_q4_K(const float *x, void *y, int64_t n);
void pyphi_quantize_row_q5_K(const float *x, void *y, int64_t n);
void pyphi_quantize_row_q6_K(const float *x, void *y, int64_t n);
void pyphi_quantize_row_q8_K(const float *x, void *y, int64_t n);
void pyphi_dequantize_row_q4_K(const void *x, float *y, int64_t n);
void pyphi_dequantize_row_q5_K(const void *x, float *y, int64_t n);
void pyphi_dequantize_row_q6_K(const void *x, float *y, int64_t n);
void pyphi_dequantize_row_q8_K(const void *x, float *y, int64_t n);

/* w: (n_rows, row bytes) Q4_K, Q5_K or Q6_K -> dst: the type's packed layout, the same number of
 * bytes. n_rows a multiple of the group (16 for Q4_K/Q6_K, PYPHI_PACK_ROWS_K for Q5_K), n of 256
 * (callers check). */
void pyphi_pack_rows_k(int type, const void *w, int64_t n_rows, int64_t n, void *dst);
/* Row i < 16 of one packed Q4_K (Q6_K) super-block -> its block_q4_K (block_q6_K). */
void pyphi_unpack_q4_K(const void *packed_block, int i, void *out);
void pyphi_unpack_q6_K(const void *packed_block, int i, void *out);

/* w: (n_rows, row bytes) Q4_0 or Q8_0 in ggml's layout -> dst: the packed layout, the same number
 * of bytes. n_rows a multiple of PYPHI_PACK_ROWS, n of 32 (callers check). */
void pyphi_pack_rows(int type, const void *w, int64_t n_rows, int64_t n, void *dst);

#endif /* PYPHI_QUANTS_H */
