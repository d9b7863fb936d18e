/* quants_legacy.c: scalar reference codecs of ggml's other 32-value block formats: Q4_1, Q5_0 and
 * Q5_1 (weights) and Q8_1 (the activations dotted with Q4_1 and Q5_1).
 *
 * Q4_1/Q5_0/Q5_1 are bit-identical to gguf.quants.quantize and gguf.quants.dequantize (gguf-py
 * 0.19.0, gguf/quants.py, classes Q4_1, Q5_0, Q5_1): each float32 operation is the one numpy
 * performs, in its order, with no contraction (-ffp-contract=off). gguf-py has no Q8_1; ours is ggml's quantize_row_q8_1_ref (ggml-quants.c) bit for bit on finite input: Q8_0's
 * codes and scale (ggml computes them identically) plus s.
 * Not here: the routing by type and the sizes (quants.c), SIMD (kernels_*.c).
 */
#include "quants.h"

/* ---- Shared pieces ---------------------------------------------------------------------------- */

/* x: 32 codes in 0..31 -> nibbles (low: values 0..15, high: 16..31) and, for 5-bit formats, the
 * little-endian bit-4 word (gguf: packbits(q >> 4, bitorder="little")). */
static void pack_nibbles(const uint8_t *q, uint8_t *qs) {
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 0x0f) | (q[j + 16] << 4)); /* numpy's uint8 shift drops bit 4 */
    }
}

static void pack_high_bits(const uint8_t *q, uint8_t *qh) {
    uint32_t h = 0;
    for (int j = 0; j < 32; j++) {
        h |= (uint32_t)((q[j] >> 4) & 1u) << j;
    }
    for (int k = 0; k < 4; k++) {
        qh[k] = (uint8_t)(h >> (8 * k));
    }
}

/* Code j (0..15, or 0..31 with qh) of a block. */
static int nibble(const uint8_t *qs, int j) {
    return (qs[j % 16] >> (4 * (j / 16))) & 0x0f;
}

static int high_bit(const uint8_t *qh, int j) {
    return (qh[j / 8] >> (j % 8)) & 1;
}

/* Q4_1 / Q5_1 (gguf-py quantize_blocks): levels = 15 or 31.
 *   max, min = block.max(), block.min()      (a NaN anywhere: both NaN)
 * Of equal extremes numpy returns the last one, which only shows for zeros: a block holding +0.0
 * and -0.0 as its minimum stores the sign of the last of them in m (measured on numpy 2.4 over
 * 10,000 random blocks of signed zeros, with and without other values; also for max, whose sign
 * reaches d through max - min).
 *   d = (max - min) / levels;  id = 0 if d == 0 else 1 / d
 *   q = trunc((x - min) * id + 0.5).astype(uint8).clip(0, levels)
 * and d, min stored as binary16. */
static void quantize_block_min(const float *xb, int levels, uint16_t *d16, uint16_t *m16,
                               uint8_t *q) {
    float lo = xb[0], hi = xb[0];
    for (int j = 1; j < 32 && !isnan(lo); j++) {
        float v = xb[j];
        if (isnan(v)) {
            lo = hi = v;
        } else {
            lo = v <= lo ? v : lo;
            hi = v >= hi ? v : hi;
        }
    }
    float d = (hi - lo) / (float)levels;
    float id = d == 0.0f ? 0.0f : 1.0f / d;
    *d16 = pyphi_fp32_to_fp16(d);
    *m16 = pyphi_fp32_to_fp16(lo);
    for (int j = 0; j < 32; j++) {
        uint8_t u = pyphi_numpy_f32_to_u8(truncf((xb[j] - lo) * id + 0.5f));
        q[j] = u > levels ? (uint8_t)levels : u;
    }
}

/* ---- Q4_1 ----------------------------------------------------------------------------------- */

void pyphi_quantize_row_q4_1(const float *x, void *vy, int64_t n) {
    block_q4_1 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK4_1; b++) {
        uint8_t q[PYPHI_QK4_1];
        quantize_block_min(x + b * PYPHI_QK4_1, 15, &y[b].d, &y[b].m, q);
        pack_nibbles(q, y[b].qs);
    }
}

void pyphi_dequantize_row_q4_1(const void *vx, float *y, int64_t n) {
    const block_q4_1 *x = vx;
    for (int64_t b = 0; b < n / PYPHI_QK4_1; b++) {
        float d = pyphi_fp16_to_fp32(x[b].d), m = pyphi_fp16_to_fp32(x[b].m);
        for (int j = 0; j < PYPHI_QK4_1; j++) {
            y[b * PYPHI_QK4_1 + j] = d * (float)nibble(x[b].qs, j) + m; /* (d * q) + m */
        }
    }
}

/* ---- Q5_0 ----------------------------------------------------------------------------------- */

void pyphi_quantize_row_q5_0(const float *x, void *vy, int64_t n) {
    block_q5_0 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK5_0; b++) {
        const float *xb = x + b * PYPHI_QK5_0; /* (32,) */
        /* as Q4_0 with 5 bits: the value of largest magnitude maps to -16 (ggml
         * quantize_row_q5_0_ref); q = trunc(x * id + 16.5).astype(uint8).clip(0, 31) */
        float d = pyphi_block_signed_absmax(xb) / -16.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        y[b].d = pyphi_fp32_to_fp16(d);
        uint8_t q[PYPHI_QK5_0];
        for (int j = 0; j < PYPHI_QK5_0; j++) {
            uint8_t u = pyphi_numpy_f32_to_u8(truncf(xb[j] * id + 16.5f));
            q[j] = u > 31 ? 31 : u;
        }
        pack_nibbles(q, y[b].qs);
        pack_high_bits(q, y[b].qh);
    }
}

void pyphi_dequantize_row_q5_0(const void *vx, float *y, int64_t n) {
    const block_q5_0 *x = vx;
    for (int64_t b = 0; b < n / PYPHI_QK5_0; b++) {
        float d = pyphi_fp16_to_fp32(x[b].d);
        for (int j = 0; j < PYPHI_QK5_0; j++) {
            int q = nibble(x[b].qs, j) | high_bit(x[b].qh, j) << 4;
            y[b * PYPHI_QK5_0 + j] = d * (float)(q - 16);
        }
    }
}

/* ---- Q5_1 ----------------------------------------------------------------------------------- */

void pyphi_quantize_row_q5_1(const float *x, void *vy, int64_t n) {
    block_q5_1 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK5_1; b++) {
        uint8_t q[PYPHI_QK5_1];
        quantize_block_min(x + b * PYPHI_QK5_1, 31, &y[b].d, &y[b].m, q);
        pack_nibbles(q, y[b].qs);
        pack_high_bits(q, y[b].qh);
    }
}

void pyphi_dequantize_row_q5_1(const void *vx, float *y, int64_t n) {
    const block_q5_1 *x = vx;
    for (int64_t b = 0; b < n / PYPHI_QK5_1; b++) {
        float d = pyphi_fp16_to_fp32(x[b].d), m = pyphi_fp16_to_fp32(x[b].m);
        for (int j = 0; j < PYPHI_QK5_1; j++) {
            int q = nibble(x[b].qs, j) | high_bit(x[b].qh, j) << 4;
            y[b * PYPHI_QK5_1 + j] = d * (float)q + m;
        }
    }
}

/* ---- Q8_1 ----------------------------------------------------------------------------------- */

void pyphi_quantize_row_q8_1(const float *x, void *vy, int64_t n) {
    block_q8_1 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK8_1; b++) {
        float d = pyphi_quantize_block_q8(x + b * PYPHI_QK8_1, &y[b].d, y[b].qs);
        int32_t sum = 0;
        for (int j = 0; j < PYPHI_QK8_1; j++) {
            sum += y[b].qs[j];
        }
        /* ggml: GGML_FP32_TO_FP16(sum * d), with the binary32 d before its rounding to binary16;
         * (float)sum is exact (|sum| <= 4096) */
        y[b].s = pyphi_fp32_to_fp16((float)sum * d);
    }
}

void pyphi_dequantize_row_q8_1(const void *vx, float *y, int64_t n) {
    const block_q8_1 *x = vx;
    for (int64_t b = 0; b < n / PYPHI_QK8_1; b++) {
        float d = pyphi_fp16_to_fp32(x[b].d);
        for (int j = 0; j < PYPHI_QK8_1; j++) {
            y[b * PYPHI_QK8_1 + j] = (float)x[b].qs[j] * d;
        }
    }
}
