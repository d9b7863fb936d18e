/* quants.c: the scalar reference codecs of every tensor type libpyphi stores, and their sizes.
 *
 * Quantizers are bit-identical to gguf.quants.quantize (gguf-py 0.19.0, gguf/quants.py), and
 * dequantizers to gguf.quants.dequantize. That code is numpy over float32, so this file keeps each
 * float32 operation, and its order, exactly as numpy evaluates it; the build passes
 * -ffp-contract=off so the compiler cannot fuse a multiply and an add into one rounding.
 * The Q4_1/Q5_0/Q5_1/Q8_1 codecs live in quants_legacy.c (their numpy twins share little with
 * the formats here, and this file stays the one place that lists every type); this file routes
 * to them.
 * Not here: SIMD (kernels_*.c; pyphi_quantize_row hands Q8_0/Q8_1 rows to the current ISA's
 * bit-identical quantizer) and threading (matmul.c runs these rows on the pool).
 */
#include "kernels.h"
#include "pyphi.h"
#include "quants.h"

/* ---- Sizes --------------------------------------------------------------------------------- */

int64_t pyphi_type_block_values(int type) {
    switch (type) {
    case PYPHI_TYPE_F32:
    case PYPHI_TYPE_F16:
    case PYPHI_TYPE_BF16:
        return 1;
    case PYPHI_TYPE_Q4_0:
        return PYPHI_QK4_0;
    case PYPHI_TYPE_Q8_0:
        return PYPHI_QK8_0;
    case PYPHI_TYPE_Q4_1:
    case PYPHI_TYPE_Q5_0:
    case PYPHI_TYPE_Q5_1:
    case PYPHI_TYPE_Q8_1:
        return 32;
    case PYPHI_TYPE_Q4_K:
    case PYPHI_TYPE_Q5_K:
    case PYPHI_TYPE_Q6_K:
    case PYPHI_TYPE_Q8_K:
        return PYPHI_QK_K;
    default:
        return 0;
    }
}

int64_t pyphi_type_block_bytes(int type) {
    switch (type) {
    case PYPHI_TYPE_F32:
        return 4;
    case PYPHI_TYPE_F16:
    case PYPHI_TYPE_BF16:
        return 2;
    case PYPHI_TYPE_Q4_0:
        return sizeof(block_q4_0);
    case PYPHI_TYPE_Q8_0:
        return sizeof(block_q8_0);
    case PYPHI_TYPE_Q4_1:
        return sizeof(block_q4_1);
    case PYPHI_TYPE_Q5_0:
        return sizeof(block_q5_0);
    case PYPHI_TYPE_Q5_1:
        return sizeof(block_q5_1);
    case PYPHI_TYPE_Q8_1:
        return sizeof(block_q8_1);
    case PYPHI_TYPE_Q4_K:
        return sizeof(block_q4_K);
    case PYPHI_TYPE_Q5_K:
        return sizeof(block_q5_K);
    case PYPHI_TYPE_Q6_K:
        return sizeof(block_q6_K);
    case PYPHI_TYPE_Q8_K:
        return sizeof(block_q8_K);
    default:
        return 0;
    }
}

int64_t pyphi_row_bytes(int type, int64_t n) {
    int64_t values = pyphi_type_block_values(type);
    if (values == 0) {
        return PYPHI_E_TYPE;
    }
    if (n < 0 || n % values != 0) {
        return PYPHI_E_SHAPE;
    }
    int64_t bytes;
    if (__builtin_mul_overflow(n / values, pyphi_type_block_bytes(type), &bytes)) {
        return PYPHI_E_SHAPE;
    }
    return bytes;
}

/* ---- Q8_0 (gguf-py Q8_0.quantize_blocks) ---------------------------------------------------- */

float pyphi_quantize_block_q8(const float *xb, uint16_t *dh, int8_t *qs) {
    /* amax = abs(block).max(): a NaN anywhere makes it NaN */
    float amax = 0.0f;
    for (int j = 0; j < PYPHI_QK8_0; j++) {
        float a = fabsf(xb[j]);
        if (isnan(a)) {
            amax = a;
            break;
        }
        amax = a > amax ? a : amax;
    }
    float d = amax / 127.0f;
    float id = d == 0.0f ? 0.0f : 1.0f / d; /* numpy multiplies by 1/d; it does not divide */
    *dh = pyphi_fp32_to_fp16(d);
    for (int j = 0; j < PYPHI_QK8_0; j++) {
        /* gguf's np_roundf is round-half-away-from-zero, which roundf is for every finite
         * float; for NaN/inf both give a non-finite value, which the cast maps to 0 */
        float q = roundf(xb[j] * id);
        qs[j] = (int8_t)pyphi_numpy_f32_to_u8(q);
    }
    return d;
}

void pyphi_quantize_row_q8_0(const float *x, void *vy, int64_t n) {
    block_q8_0 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK8_0; b++) {
        pyphi_quantize_block_q8(x + b * PYPHI_QK8_0, &y[b].d, y[b].qs);
    }
}

static void dequantize_row_q8_0(const void *vx, float *y, int64_t n) {
    const block_q8_0 *x = vx;
    for (int64_t b = 0; b < n / PYPHI_QK8_0; b++) {
        float d = pyphi_fp16_to_fp32(x[b].d);
        for (int j = 0; j < PYPHI_QK8_0; j++) {
            y[b * PYPHI_QK8_0 + j] = (float)x[b].qs[j] * d;
        }
    }
}

/* ---- Q4_0 (gguf-py Q4_0.quantize_blocks) ---------------------------------------------------- */

float pyphi_block_signed_absmax(const float *xb) {
    /* imax = abs(block).argmax(): the first largest magnitude, or the first NaN */
    int imax = 0;
    float amax = fabsf(xb[0]);
    for (int j = 1; j < 32 && !isnan(amax); j++) {
        float a = fabsf(xb[j]);
        if (isnan(a) || a > amax) {
            amax = a;
            imax = j;
        }
    }
    return xb[imax];
}

void pyphi_quantize_row_q4_0(const float *x, void *vy, int64_t n) {
    block_q4_0 *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK4_0; b++) {
        const float *xb = x + b * PYPHI_QK4_0; /* (32,) */
        /* the signed value of largest magnitude maps to -8 (ggml quantize_row_q4_0_ref) */
        float d = pyphi_block_signed_absmax(xb) / -8.0f;
        float id = d == 0.0f ? 0.0f : 1.0f / d;
        y[b].d = pyphi_fp32_to_fp16(d);
        uint8_t q[PYPHI_QK4_0];
        for (int j = 0; j < PYPHI_QK4_0; j++) {
            /* trunc(x * id + 8.5) is round-half-up of x * id, offset by 8; astype(uint8), then
             * clip(0, 15) (in that order in gguf-py) */
            uint8_t u = pyphi_numpy_f32_to_u8(truncf(xb[j] * id + 8.5f));
            q[j] = u > 15 ? 15 : u;
        }
        for (int j = 0; j < PYPHI_QK4_0 / 2; j++) {
            y[b].qs[j] = (uint8_t)(q[j] | (q[j + PYPHI_QK4_0 / 2] << 4));
        }
    }
}

static void dequantize_row_q4_0(const void *vx, float *y, int64_t n) {
    const block_q4_0 *x = vx;
    for (int64_t b = 0; b < n / PYPHI_QK4_0; b++) {
        float d = pyphi_fp16_to_fp32(x[b].d);
        for (int j = 0; j < PYPHI_QK4_0 / 2; j++) {
            y[b * PYPHI_QK4_0 + j] = d * (float)((x[b].qs[j] & 0x0f) - 8);
            y[b * PYPHI_QK4_0 + j + PYPHI_QK4_0 / 2] = d * (float)((x[b].qs[j] >> 4) - 8);
        }
    }
}

/* ---- Floats -------------------------------------------------------------------------------- */

static void quantize_row_f16(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    for (int64_t i = 0; i < n; i++) {
        y[i] = pyphi_fp32_to_fp16(x[i]);
    }
}

static void dequantize_row_f16(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    for (int64_t i = 0; i < n; i++) {
        y[i] = pyphi_fp16_to_fp32(x[i]);
    }
}

void pyphi_quantize_row_bf16(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    for (int64_t i = 0; i < n; i++) {
        y[i] = pyphi_fp32_to_bf16(x[i]);
    }
}

static void dequantize_row_bf16(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    for (int64_t i = 0; i < n; i++) {
        y[i] = pyphi_bf16_to_fp32(x[i]);
    }
}

/* ---- Public entry points -------------------------------------------------------------------- */

static int check_row(int type, const void *x, const void *y, int64_t n) {
    int64_t bytes = pyphi_row_bytes(type, n);
    if (bytes < 0) {
        return (int)bytes;
    }
    if (x == NULL || y == NULL) {
        return PYPHI_E_ARG;
    }
    return PYPHI_OK;
}

int pyphi_quantize_row(int type, const float *x, void *y, int64_t n) {
    int status = check_row(type, x, y, n);
    if (status != PYPHI_OK) {
        return status;
    }
    switch (type) {
    case PYPHI_TYPE_F32:
        memmove(y, x, (size_t)n * sizeof(float));
        break;
    case PYPHI_TYPE_F16:
        quantize_row_f16(x, y, n);
        break;
    case PYPHI_TYPE_BF16:
        pyphi_quantize_row_bf16(x, y, n);
        break;
    case PYPHI_TYPE_Q8_0:
    case PYPHI_TYPE_Q8_1:
        /* the current ISA's activation quantizer: bit-identical to the scalar codec by contract
         * (kernels.h), faster, and so testable against the references through this function */
        pyphi_kernels_current()->quantize_act[type](x, y, n);
        break;
    case PYPHI_TYPE_Q4_0:
        pyphi_quantize_row_q4_0(x, y, n);
        break;
    case PYPHI_TYPE_Q4_1:
        pyphi_quantize_row_q4_1(x, y, n);
        break;
    case PYPHI_TYPE_Q5_0:
        pyphi_quantize_row_q5_0(x, y, n);
        break;
    case PYPHI_TYPE_Q5_1:
        pyphi_quantize_row_q5_1(x, y, n);
        break;
    case PYPHI_TYPE_Q4_K:
        pyphi_quantize_row_q4_K(x, y, n);
        break;
    case PYPHI_TYPE_Q5_K:
        pyphi_quantize_row_q5_K(x, y, n);
        break;
    case PYPHI_TYPE_Q6_K:
        pyphi_quantize_row_q6_K(x, y, n);
        break;
    case PYPHI_TYPE_Q8_K:
        /* the current ISA's activation quantizer, bit-identical to pyphi_quantize_row_q8_K */
        pyphi_kernels_current()->quantize_act[PYPHI_TYPE_Q8_K](x, y, n);
        break;
    }
    return PYPHI_OK;
}

int pyphi_dequantize_row(int type, const void *x, float *y, int64_t n) {
    int status = check_row(type, x, y, n);
    if (status != PYPHI_OK) {
        return status;
    }
    switch (type) {
    case PYPHI_TYPE_F32:
        memmove(y, x, (size_t)n * sizeof(float));
        break;
    case PYPHI_TYPE_F16:
        dequantize_row_f16(x, y, n);
        break;
    case PYPHI_TYPE_BF16:
        dequantize_row_bf16(x, y, n);
        break;
    case PYPHI_TYPE_Q8_0:
        dequantize_row_q8_0(x, y, n);
        break;
    case PYPHI_TYPE_Q4_0:
        dequantize_row_q4_0(x, y, n);
        break;
    case PYPHI_TYPE_Q4_1:
        pyphi_dequantize_row_q4_1(x, y, n);
        break;
    case PYPHI_TYPE_Q5_0:
        pyphi_dequantize_row_q5_0(x, y, n);
        break;
    case PYPHI_TYPE_Q5_1:
        pyphi_dequantize_row_q5_1(x, y, n);
        break;
    case PYPHI_TYPE_Q8_1:
        pyphi_dequantize_row_q8_1(x, y, n);
        break;
    case PYPHI_TYPE_Q4_K:
        pyphi_dequantize_row_q4_K(x, y, n);
        break;
    case PYPHI_TYPE_Q5_K:
        pyphi_dequantize_row_q5_K(x, y, n);
        break;
    case PYPHI_TYPE_Q6_K:
        pyphi_dequantize_row_q6_K(x, y, n);
        break;
    case PYPHI_TYPE_Q8_K:
        pyphi_dequantize_row_q8_K(x, y, n);
        break;
    }
    return PYPHI_OK;
}

/* ---- Packed layout (quants.h) ---------------------------------------------------------------- */

void pyphi_pack_rows(int type, const void *w, int64_t n_rows, int64_t n, void *dst) {
    if (type != PYPHI_TYPE_Q4_0 && type != PYPHI_TYPE_Q8_0) {
        pyphi_pack_rows_k(type, w, n_rows, n, dst);
        return;
    }
    size_t block_bytes = (size_t)pyphi_type_block_bytes(type);
    size_t qs_bytes = block_bytes - sizeof(uint16_t); /* 16 (Q4_0) or 32 (Q8_0) */
    uint32_t flip = type == PYPHI_TYPE_Q8_0 ? 0x80808080u : 0; /* per byte */
    int64_t nb = n / 32;
    size_t row_bytes = (size_t)nb * block_bytes;
    uint8_t *out = dst;
    for (int64_t g = 0; g < n_rows / PYPHI_PACK_ROWS; g++) {
        const uint8_t *rows = (const uint8_t *)w + (size_t)g * PYPHI_PACK_ROWS * row_bytes;
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *qs = out + PYPHI_PACK_ROWS * sizeof(uint16_t); /* (qs_bytes / 4, 16, 4) */
            for (int i = 0; i < PYPHI_PACK_ROWS; i++) {
                const uint8_t *blk = rows + (size_t)i * row_bytes + (size_t)b * block_bytes;
                memcpy(out + i * sizeof(uint16_t), blk, sizeof(uint16_t)); /* d */
                for (size_t k = 0; k < qs_bytes / 4; k++) {
                    uint32_t four; /* qs[4k .. 4k + 3] */
                    memcpy(&four, blk + sizeof(uint16_t) + 4 * k, sizeof four);
                    four ^= flip;
                    memcpy(qs + (k * PYPHI_PACK_ROWS + (size_t)i) * 4, &four, sizeof four);
                }
            }
            out += PYPHI_PACK_ROWS * block_bytes;
        }
    }
}
