/* quants_k.c: the K-quant super-block codecs (Q4_K, Q5_K, Q6_K, and the Q8_K activations).
 *
 * Quantizers reproduce ggml's reference quantizers without importance matrix
 * (ggml-quants.c: quantize_row_q4_K_ref, _q5_K_ref, _q6_K_ref, _q8_K_ref, and their helpers
 * make_qkx2_quants, make_qx_quants, nearest_int), which llama-quantize runs when it has no
 * imatrix. The algorithm is ggml's; to give the same bits every float32 operation is kept in
 * ggml's order, and, like the libggml-base.so that llama-cpp-python ships (plain SSE2 code, no
 * fused multiply-add in it), the build passes -ffp-contract=off. Dequantizers are
 * gguf.quants.dequantize's (and ggml's) arithmetic: d * sc first, then times the code, minus
 * dmin * m.
 * Not here: the dot kernels (kernels_*.c), the legacy 32-value formats (quants.c).
 */
#include "pyphi.h"
#include "quants.h"

/* ggml's GROUP_MAX_EPS: a group whose largest magnitude is below this is all zero. */
#define GROUP_MAX_EPS 1e-15f

/* ggml's nearest_int: adding 1.5 * 2^23 rounds fval to an integer in the low mantissa bits (to
 * nearest, ties to even) for |fval| < 2^22; outside that range it returns what the bit
 * arithmetic gives, as ggml does (ggml only asserts the range in debug builds). No UB for any
 * input, NaN included. */
static inline int nearest_int(float fval) {
    float val = fval + 12582912.f;
    int32_t i;
    memcpy(&i, &val, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

static inline int clamp_int(int v, int lo, int hi) {
    return v < lo ? lo : v > hi ? hi : v;
}

/* ---- Shared fitting helpers (ggml make_qkx2_quants, make_qx_quants) --------------------------- */

/* Fits x (n,) with scale * L + min_, L in 0..nmax, min_ <= 0, minimising sum weights * err^2: a
 * first guess from the range, then nstep + 1 trial scales (rmin + rdelta * is + nmax) / range,
 * each with the weighted least-squares scale and min for its codes; the best one wins.
 * Returns the scale; *neg_min = -min_; L: the codes. Laux: (n,) scratch. */
static float fit_scale_min(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                           float *neg_min, uint8_t *Laux, float rmin, float rdelta, int nstep) {
    float min = x[0];
    float max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)clamp_int(l, 0, nmax);
        float diff = scale * L[i] + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax);
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *neg_min = -min;
    return scale;
}

/* Fits x (n,) with scale * l, l in -nmax..nmax-1, weighting each value by x^2 (ggml's
 * rmse_type 1): the scale that maps the largest magnitude to -nmax, then 18 nearby ones, keeping
 * the least-squares scale of the codes with the best sumlx^2 / suml2. L = l + nmax. */
static float fit_scale_symmetric(int n, int nmax, const float *x, int8_t *L) {
    float max = 0;
    float amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0;
    float suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) {
            continue;
        }
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = clamp_int(nearest_int(iscale * x[i]), -nmax, nmax - 1);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                int l = nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + clamp_int(l, -nmax, nmax - 1));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* ---- Q4_K and Q5_K: 8 sub-blocks of 32 with a 6-bit scale and min each ------------------------ */

/* One super-block x (256,) -> the 6-bit scales and mins packed into scales[12], d and dmin, and
 * the codes L (256,) in 0..nmax, as ggml's q4_K/q5_K reference quantizers do. */
static void quantize_k_scales_mins(const float *x, int nmax, float rmin, int nstep,
                                   uint8_t scales_out[PYPHI_K_SCALE_SIZE], uint16_t *d_out,
                                   uint16_t *dmin_out, uint8_t L[PYPHI_QK_K]) {
    float mins[PYPHI_QK_K / 32];
    float scales[PYPHI_QK_K / 32];
    float weights[32];
    uint8_t Laux[32];
    float max_scale = 0; /* scales and mins are >= 0 here: the min is subtracted */
    float max_min = 0;
    for (int j = 0; j < PYPHI_QK_K / 32; ++j) {
        const float *xs = x + 32 * j; /* (32,) */
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(xs[l]);
        scales[j] = fit_scale_min(32, nmax, xs, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(scales_out, 0, PYPHI_K_SCALE_SIZE);
    for (int j = 0; j < PYPHI_QK_K / 32; ++j) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]); /* low byte, as ggml */
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            scales_out[j] = ls;
            scales_out[j + 4] = lm;
        } else {
            scales_out[j + 4] = (uint8_t)((ls & 0xf) | ((lm & 0xf) << 4));
            scales_out[j - 4] |= (uint8_t)((ls >> 4) << 6);
            scales_out[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = pyphi_fp32_to_fp16(max_scale / 63.f);
    *dmin_out = pyphi_fp32_to_fp16(max_min / 63.f);
    /* requantize with the 6-bit scales actually stored; a zero scale keeps the fitted codes */
    for (int j = 0; j < PYPHI_QK_K / 32; ++j) {
        uint8_t sc, m;
        pyphi_k_scale_min(j, scales_out, &sc, &m);
        const float d = pyphi_fp16_to_fp32(*d_out) * sc;
        if (!d) continue;
        const float dm = pyphi_fp16_to_fp32(*dmin_out) * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)clamp_int(l, 0, nmax);
        }
    }
}

void pyphi_quantize_row_q4_K(const float *x, void *vy, int64_t n) {
    block_q4_K *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++) {
        uint8_t L[PYPHI_QK_K];
        quantize_k_scales_mins(x + b * PYPHI_QK_K, 15, -1.f, 20, y[b].scales, &y[b].d, &y[b].dmin, L);
        for (int k = 0; k < 4; k++) { /* sub-blocks 2k (low nibbles) and 2k + 1 (high) */
            for (int l = 0; l < 32; ++l) {
                y[b].qs[32 * k + l] = (uint8_t)(L[64 * k + l] | (L[64 * k + 32 + l] << 4));
            }
        }
    }
}

void pyphi_quantize_row_q5_K(const float *x, void *vy, int64_t n) {
    block_q5_K *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++) {
        uint8_t L[PYPHI_QK_K];
        quantize_k_scales_mins(x + b * PYPHI_QK_K, 31, -0.5f, 15, y[b].scales, &y[b].d, &y[b].dmin, L);
        memset(y[b].qh, 0, sizeof y[b].qh);
        for (int k = 0; k < 4; k++) {
            for (int l = 0; l < 32; ++l) {
                int l1 = L[64 * k + l], l2 = L[64 * k + 32 + l];
                y[b].qh[l] |= (uint8_t)(((l1 >> 4) << (2 * k)) | ((l2 >> 4) << (2 * k + 1)));
                y[b].qs[32 * k + l] = (uint8_t)((l1 & 0xf) | ((l2 & 0xf) << 4));
            }
        }
    }
}

void pyphi_dequantize_row_q4_K(const void *vx, float *y, int64_t n) {
    const block_q4_K *x = vx;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++) {
        const float d = pyphi_fp16_to_fp32(x[b].d);
        const float min = pyphi_fp16_to_fp32(x[b].dmin);
        for (int j = 0; j < PYPHI_QK_K / 32; j++) {
            uint8_t sc, m;
            pyphi_k_scale_min(j, x[b].scales, &sc, &m);
            const float dj = d * sc, mj = min * m;
            const uint8_t *q = x[b].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; ++l) {
                *y++ = dj * ((q[l] >> shift) & 0xf) - mj;
            }
        }
    }
}

void pyphi_dequantize_row_q5_K(const void *vx, float *y, int64_t n) {
    const block_q5_K *x = vx;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++) {
        const float d = pyphi_fp16_to_fp32(x[b].d);
        const float min = pyphi_fp16_to_fp32(x[b].dmin);
        for (int j = 0; j < PYPHI_QK_K / 32; j++) {
            uint8_t sc, m;
            pyphi_k_scale_min(j, x[b].scales, &sc, &m);
            const float dj = d * sc, mj = min * m;
            const uint8_t *q = x[b].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; ++l) {
                int code = ((q[l] >> shift) & 0xf) | (((x[b].qh[l] >> j) & 1) << 4);
                *y++ = dj * code - mj;
            }
        }
    }
}

/* ---- Q6_K: 16 sub-blocks of 16 with an 8-bit signed scale each -------------------------------- */

void pyphi_quantize_row_q6_K(const float *x, void *vy, int64_t n) {
    block_q6_K *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++, x += PYPHI_QK_K) {
        int8_t L[PYPHI_QK_K];
        float scales[PYPHI_QK_K / 16];
        float max_scale = 0;
        float max_abs_scale = 0;
        for (int ib = 0; ib < PYPHI_QK_K / 16; ++ib) {
            const float scale = fit_scale_symmetric(16, 32, x + 16 * ib, L + 16 * ib);
            scales[ib] = scale;
            const float abs_scale = fabsf(scale);
            if (abs_scale > max_abs_scale) {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        float iscale = -128.f / max_scale;
        y[b].d = pyphi_fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < PYPHI_QK_K / 16; ++ib) {
            int s = nearest_int(iscale * scales[ib]);
            y[b].scales[ib] = (int8_t)(s < 127 ? s : 127); /* low byte, as ggml */
        }
        for (int j = 0; j < PYPHI_QK_K / 16; ++j) {
            float d = pyphi_fp16_to_fp32(y[b].d) * y[b].scales[j];
            if (!d) continue; /* keeps the fitted codes */
            for (int ii = 0; ii < 16; ++ii) {
                int l = clamp_int(nearest_int(x[16 * j + ii] / d), -32, 31);
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }
        for (int h = 0; h < 2; h++) { /* each half of 128 values: see block_q6_K */
            uint8_t *ql = y[b].ql + 64 * h;
            uint8_t *qh = y[b].qh + 32 * h;
            const int8_t *Lh = L + 128 * h;
            for (int l = 0; l < 32; ++l) {
                ql[l] = (uint8_t)((Lh[l] & 0xf) | ((Lh[l + 64] & 0xf) << 4));
                ql[l + 32] = (uint8_t)((Lh[l + 32] & 0xf) | ((Lh[l + 96] & 0xf) << 4));
                qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                                  ((Lh[l + 96] >> 4) << 6));
            }
        }
    }
}

void pyphi_dequantize_row_q6_K(const void *vx, float *y, int64_t n) {
    const block_q6_K *x = vx;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++) {
        const float d = pyphi_fp16_to_fp32(x[b].d);
        for (int i = 0; i < PYPHI_QK_K; i++) {
            int h = i / 128, r = i % 128, l = r % 32, quarter = r / 32;
            uint8_t lo = x[b].ql[64 * h + l + 32 * (quarter & 1)];
            int code = ((lo >> (4 * (quarter >> 1))) & 0xf) | (((x[b].qh[32 * h + l] >> (2 * quarter)) & 3) << 4);
            y[i] = d * x[b].scales[i / 16] * (code - 32);
        }
        y += PYPHI_QK_K;
    }
}

/* ---- Q8_K: the activations -------------------------------------------------------------------- */

void pyphi_quantize_row_q8_K(const float *x, void *vy, int64_t n) {
    block_q8_K *y = vy;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++, x += PYPHI_QK_K) {
        float max = 0;
        float amax = 0;
        for (int j = 0; j < PYPHI_QK_K; ++j) {
            float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (!amax) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        /* -127, not -128: ggml keeps codes in -127..127 for its SIMD dots */
        const float iscale = -127.f / max;
        for (int j = 0; j < PYPHI_QK_K; ++j) {
            int v = nearest_int(iscale * x[j]);
            y[b].qs[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int k = 0; k < PYPHI_QK_K / 16; ++k) {
            int sum = 0;
            for (int i = 0; i < 16; ++i) sum += y[b].qs[16 * k + i];
            y[b].bsums[k] = (int16_t)sum;
        }
        y[b].d = 1 / iscale;
    }
}

void pyphi_dequantize_row_q8_K(const void *vx, float *y, int64_t n) {
    const block_q8_K *x = vx;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++) {
        for (int j = 0; j < PYPHI_QK_K; ++j) {
            *y++ = x[b].d * x[b].qs[j];
        }
    }
}

/* ---- Packed layouts (quants.h) ----------------------------------------------------------- */

/* The 16-lane layouts (Q4_K, Q6_K) move whole 4-byte groups: 4-byte group 16 k + i of the
 * packed super-block's lane part is row i's group map(k). Packing takes 4 rows at a time, loads 4
 * consecutive source groups of each and stores them transposed, 16 bytes per store (GCC's
 * generic vectors: SSE2 on x86-64, NEON on arm64, both baseline), and walks the 4 rows from start
 * to end, so the hardware prefetcher sees 4 streams, not 16 rows visited block by block. The
 * unpackers (one row, group by group) are the plain statement of the layout. */
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));

static inline uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint16_t load_u16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline u32x4 load_u32x4(const uint8_t *p) {
    u32x4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* r[j] = 4 groups (k .. k + 3) of row j -> c[q] = group k + q of rows 0..3. */
static inline void transpose4(const u32x4 r[4], u32x4 c[4]) {
    u32x4 t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5);
    u32x4 t1 = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
    u32x4 t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5);
    u32x4 t3 = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
    c[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    c[1] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    c[2] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    c[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
}

/* Source groups src_group .. + 3 of the 4 blocks blk[0..3] (rows i .. i + 3) -> packed groups
 * 16 (k + q) + i (q = 0..3), one 16-byte store each. */
static inline void lanes_store4(const uint8_t *const blk[4], int src_group, uint8_t *packed, int k,
                                int i) {
    u32x4 r[4], c[4];
    for (int j = 0; j < 4; j++) {
        r[j] = load_u32x4(blk[j] + 4 * src_group);
    }
    transpose4(r, c);
    for (int q = 0; q < 4; q++) {
        memcpy(packed + 4 * (16 * (k + q) + i), &c[q], sizeof c[q]);
    }
}

/* Q4_K (quants.h): the block's 36 4-byte groups transposed (map(k) = k), except group 0 (d,
 * dmin), whose halves go to d[16] and dmin[16]. */
static inline void q4_K_to_lanes4(const uint8_t *const blk[4], int i, uint8_t *packed) {
    u32x4 r[4], c[4];
    for (int j = 0; j < 4; j++) {
        r[j] = load_u32x4(blk[j]);
    }
    transpose4(r, c);
    u16x8 dm = __builtin_shufflevector((u16x8)c[0], (u16x8)c[0], 0, 2, 4, 6, 1, 3, 5, 7);
    memcpy(packed + 2 * i, &dm, 8);
    memcpy(packed + 32 + 2 * i, (const uint8_t *)&dm + 8, 8);
    for (int q = 1; q < 4; q++) {
        memcpy(packed + 4 * (16 * q + i), &c[q], sizeof c[q]);
    }
    for (int k = 4; k < 144 / 4; k += 4) {
        lanes_store4(blk, k, packed, k, i);
    }
}

static inline void q4_K_from_lane(const uint8_t *packed, int i, uint8_t *blk) {
    memcpy(blk, packed + 2 * i, 2);
    memcpy(blk + 2, packed + 32 + 2 * i, 2);
    for (int k = 1; k < 144 / 4; k++) {
        uint32_t v = load_u32(packed + 4 * (16 * k + i));
        memcpy(blk + 4 * k, &v, 4);
    }
}

/* Q6_K (quants.h): quad u = 2h + m is ql groups 16h + 4m + c, qh groups 8h + 4m + c, ql groups
 * 16h + 8 + 4m + c (c = 0..3); as the first of 4 consecutive 4-byte groups of block_q6_K (qh
 * starts at group 32), for packed groups 4 t .. 4 t + 3 of the quads. */
static const uint8_t Q6_K_QUAD_RUNS[4 * 3] = {
    0, 32, 8,  /* h 0, m 0 */
    4, 36, 12, /* h 0, m 1 */
    16, 40, 24, /* h 1, m 0 */
    20, 44, 28, /* h 1, m 1 */
};
#define Q6_K_SCALES_AT 32            /* packed: scales[8][16][2] */
#define Q6_K_QUADS_AT (32 + 16 * 16) /* packed: quads[4][12][16][4] */

static inline void q6_K_to_lanes4(const uint8_t *const blk[4], int i, uint8_t *packed) {
    for (int j = 0; j < 4; j++) {
        memcpy(packed + 2 * (i + j), blk[j] + offsetof(block_q6_K, d), 2);
        for (int p = 0; p < 8; p++) {
            uint16_t v = load_u16(blk[j] + offsetof(block_q6_K, scales) + 2 * p);
            memcpy(packed + Q6_K_SCALES_AT + 2 * (16 * p + i + j), &v, 2);
        }
    }
    for (int t = 0; t < 4 * 3; t++) {
        lanes_store4(blk, Q6_K_QUAD_RUNS[t], packed + Q6_K_QUADS_AT, 4 * t, i);
    }
}

static inline void q6_K_from_lane(const uint8_t *packed, int i, uint8_t *blk) {
    memcpy(blk + offsetof(block_q6_K, d), packed + 2 * i, 2);
    for (int p = 0; p < 8; p++) {
        uint16_t v = load_u16(packed + Q6_K_SCALES_AT + 2 * (16 * p + i));
        memcpy(blk + offsetof(block_q6_K, scales) + 2 * p, &v, 2);
    }
    for (int t = 0; t < 4 * 3; t++) {
        for (int c = 0; c < 4; c++) {
            uint32_t v = load_u32(packed + Q6_K_QUADS_AT + 4 * (16 * (4 * t + c) + i));
            memcpy(blk + 4 * (Q6_K_QUAD_RUNS[t] + c), &v, 4);
        }
    }
}

/* w (n_rows, nb blocks of block_bytes) -> dst, 16 rows a group, one lane per row. */
#define DEFINE_PACK_LANES(name, block_bytes, packed_bytes, to_lanes4)                              \
    static void name(const void *w, int64_t n_rows, int64_t n, void *dst) {                      \
        const int64_t nb = n / PYPHI_QK_K;                                                       \
        const size_t row_bytes = (size_t)nb * (block_bytes);                                     \
        for (int64_t g = 0; g < n_rows / PYPHI_PACK_ROWS; g++) {                                 \
            const size_t at = (size_t)g * PYPHI_PACK_ROWS * row_bytes; /* same on both sides */  \
            uint8_t *group = (uint8_t *)dst + at;                                                \
            for (int i = 0; i < PYPHI_PACK_ROWS; i += 4) {                                       \
                const uint8_t *rows = (const uint8_t *)w + at + (size_t)i * row_bytes;           \
                for (int64_t b = 0; b < nb; b++) {                                               \
                    const uint8_t *blk[4];                                                       \
                    for (int j = 0; j < 4; j++) {                                                \
                        blk[j] = rows + (size_t)j * row_bytes + (size_t)b * (block_bytes);       \
                    }                                                                            \
                    to_lanes4(blk, i, group + (size_t)b * (packed_bytes));                       \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }

DEFINE_PACK_LANES(pack_rows_q4_K, sizeof(block_q4_K), PYPHI_Q4_K_PACKED_BYTES, q4_K_to_lanes4)
DEFINE_PACK_LANES(pack_rows_q6_K, sizeof(block_q6_K), PYPHI_Q6_K_PACKED_BYTES, q6_K_to_lanes4)

void pyphi_unpack_q4_K(const void *packed_block, int i, void *out) {
    q4_K_from_lane(packed_block, i, out);
}

void pyphi_unpack_q6_K(const void *packed_block, int i, void *out) {
    q6_K_from_lane(packed_block, i, out);
}

void pyphi_pack_rows_k(int type, const void *w, int64_t n_rows, int64_t n, void *dst) {
    if (type == PYPHI_TYPE_Q4_K) {
        pack_rows_q4_K(w, n_rows, n, dst);
        return;
    }
    if (type == PYPHI_TYPE_Q6_K) {
        pack_rows_q6_K(w, n_rows, n, dst);
        return;
    }
    const size_t block = (size_t)pyphi_type_block_bytes(type);
    const int64_t nb = n / PYPHI_QK_K;
    const size_t row_bytes = (size_t)nb * block;
    uint8_t *out = dst;
    for (int64_t g = 0; g < n_rows / PYPHI_PACK_ROWS_K; g++) {
        const uint8_t *rows = (const uint8_t *)w + (size_t)g * PYPHI_PACK_ROWS_K * row_bytes;
        for (int64_t b = 0; b < nb; b++) {
            for (int i = 0; i < PYPHI_PACK_ROWS_K; i++) {
                memcpy(out, rows + (size_t)i * row_bytes + (size_t)b * block, block);
                out += block;
            }
        }
    }
}
