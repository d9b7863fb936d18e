/* ggml_numerics.c: llama.cpp's CPU arithmetic, operation for operation (see ggml_numerics.h).
 *
 * What makes two engines' logits differ is not the maths but the rounding: every matmul quantizes
 * its activations to int8 per block, so a one-ulp difference upstream can move an int8 by one step
 * and grow through the layers. Reproducing llama.cpp therefore means reproducing each rounding:
 * which float sums are fused (fmaf here where ggml calls an fmadd intrinsic), the lanes its
 * vector sums keep (8 for the AVX2 dots, 16 for AVX-512) and the tree they are folded with, and
 * which values it rounds to f16 on the way. The source file this file mirrors is named at each
 * function (llama.cpp's ggml/src/ggml-cpu: arch/x86/quants.c, arch/x86/repack.cpp, vec.h,
 * vec.cpp, ops.cpp, llamafile/sgemm.cpp). Products of two f16 values are exact in float32, so
 * whether ggml fuses those does not matter; the comments say where that is used.
 */
#include "ggml_numerics.h"

#include "quants.h"
#include "threadpool.h"

#include <math.h>
#include <stdlib.h>

#define LANES_AVX2 8
#define LANES_AVX512 16

int pyphi_ggml_supports(int type) {
    return type == PYPHI_TYPE_Q4_1 || type == PYPHI_TYPE_Q8_0 || type == PYPHI_TYPE_Q4_K ||
           type == PYPHI_TYPE_Q5_K || type == PYPHI_TYPE_Q6_K;
}

/* ---- Horizontal sums -------------------------------------------------------------------------- */

/* hsum_float_8 (arch/x86/quants.c) and tinyBLAS's hsum(__m256): upper half onto lower, then
 * lanes 2,3 onto 0,1, then lane 1 onto 0. */
static float hsum8(const float x[LANES_AVX2]) {
    float r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = x[i + 4] + x[i];
    }
    return (r[0] + r[2]) + (r[1] + r[3]);
}

/* _mm512_reduce_add_ps: the same halving tree over 16 lanes. */
static float hsum16(const float x[LANES_AVX512]) {
    float r[8];
    for (int i = 0; i < 8; i++) {
        r[i] = x[i + 8] + x[i];
    }
    return hsum8(r);
}

/* ---- exp and silu ------------------------------------------------------------------------------ */

/* ggml_v_expf (vec.h, the AVX-512 version) on one lane: n = round(x / ln 2) by the 1.5 * 2^23
 * trick, b = x - n ln 2 in two parts, a degree-5 polynomial in b, scaled by 2^n; |n| > 192
 * gives 0 or inf, NaN stays NaN. */
static float v_expf(float x) {
    const float r = 0x1.8p23f;
    float z = fmaf(x, 0x1.715476p+0f, r);
    float n = z - r;
    float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    if (isnan(n)) {
        return n;
    }
    if (fabsf(n) > 192.0f) {
        return n <= 0.0f ? 0.0f : INFINITY;
    }
    float u = b * b;
    float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                        fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                   u, fmaf(0x1.ffffecp-1f, b, 1.0f));
    return ldexpf(j, (int)n); /* _mm512_scalef_ps */
}

void pyphi_ggml_swiglu(float *out, const float *gate_up, int64_t n_rows, int64_t n_ff) {
    int64_t vectorized = n_ff / LANES_AVX512 * LANES_AVX512;
    for (int64_t r = 0; r < n_rows; r++) {
        const float *gate = gate_up + r * 2 * n_ff, *up = gate + n_ff; /* (n_ff,) each */
        float *y = out + r * n_ff;
        for (int64_t i = 0; i < vectorized; i++) { /* ggml_v_silu, then the product */
            y[i] = gate[i] / (1.0f + v_expf(0.0f - gate[i])) * up[i];
        }
        for (int64_t i = vectorized; i < n_ff; i++) { /* ggml_silu_f32 */
            y[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
        }
    }
}

/* ---- RMSNorm and RoPE -------------------------------------------------------------------------- */

void pyphi_ggml_rms_norm(float *y, const float *x, const float *w, int64_t n_rows, int64_t n,
                         float eps) {
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) {
            sum += (double)(xr[i] * xr[i]);
        }
        const float mean = (float)(sum / (double)n);
        const float scale = 1.0f / sqrtf(mean + eps);
        for (int64_t i = 0; i < n; i++) {
            yr[i] = xr[i] * scale * w[i];
        }
    }
}

void pyphi_ggml_rope_table(float *cs, int64_t pos0, int64_t n_pos, int64_t n_rot, float base,
                           const float *factors, float mscale) {
    int64_t half = n_rot / 2;
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    for (int64_t p = 0; p < n_pos; p++) {
        float *row = cs + p * n_rot; /* (n_rot,): cos (half,), then sin (half,) */
        float theta = (float)(pos0 + p);
        for (int64_t i = 0; i < half; i++) {
            /* rope_yarn with freq_scale 1 and no extrapolation mix: theta / ff, exactly theta
             * when there are no factors (ff = 1), as is the product by an mscale of 1 */
            float angle = theta / (factors != NULL ? factors[i] : 1.0f);
            row[i] = cosf(angle) * mscale;
            row[half + i] = sinf(angle) * mscale;
            theta *= theta_scale;
        }
    }
}

/* rotate_pairs (ops.cpp): as compiled by llama.cpp's build (gcc contracts x0*cos - x1*sin into one
 * fused step on x0*cos, measured against its tensors), on the pairs of pyphi_rope_apply. */
void pyphi_ggml_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int pairing,
                           const float *cs) {
    int64_t half = n_rot / 2;
    const float *c = cs, *s = cs + half; /* (half,) each */
    for (int64_t h = 0; h < n_heads; h++) {
        float *xh = x + h * head_dim; /* (head_dim,) */
        for (int64_t i = 0; i < half; i++) {
            int64_t ia = pairing == PYPHI_ROPE_ADJACENT ? 2 * i : i;
            int64_t ib = pairing == PYPHI_ROPE_ADJACENT ? 2 * i + 1 : i + half;
            float x0 = xh[ia], x1 = xh[ib];
            xh[ia] = fmaf(x0, c[i], -(x1 * s[i]));
            xh[ib] = fmaf(x0, s[i], x1 * c[i]);
        }
    }
}

/* The table for the ISA in use (pyphi_isa_set forces the scalar twins, as for pyphi's kernels). */
static const struct pyphi_ggml_kernels *kernels(void) {
#if defined(__x86_64__)
    int isa = pyphi_isa_current();
    if (isa == PYPHI_ISA_AVX2 || isa == PYPHI_ISA_AVX512 || isa == PYPHI_ISA_AVX512BF16) {
        return &pyphi_ggml_kernels_avx2;
    }
#endif
    return &pyphi_ggml_kernels_scalar;
}

/* ---- Matmul: the activations' quantizers, Q4_1 and Q8_0 dots ----------------------------------- */

int64_t pyphi_ggml_matmul_scratch(int64_t n, int64_t cols) {
    int64_t q8_1 = (cols / PYPHI_QK8_1) * (int64_t)sizeof(block_q8_1);
    int64_t q8_K = (cols / PYPHI_QK_K) * (int64_t)sizeof(block_q8_K);
    return n * (q8_1 > q8_K ? q8_1 : q8_K);
}

/* A rounded code as _mm256_cvtps_epi32 and the saturating packs make it: within -128..127 for
 * finite activations; a NaN or infinite one (a hostile file's) gives -128, without UB. */
static int8_t code_of(float v) {
    if (!(v >= -2147483648.0f && v < 2147483648.0f)) {
        return -128; /* cvtps_epi32's "integer indefinite", saturated */
    }
    long long i = (long long)v;
    return (int8_t)(i > 127 ? 127 : i < -128 ? -128 : i);
}

/* quantize_row_q8_0 / quantize_row_q8_1 (arch/x86/quants.c) on one block: *d = amax / 127,
 * codes = round-half-even(x * (127 / amax)); returns the codes' sum (Q8_1's s is *d times it,
 * *d before its rounding to f16; ggml sums the codes before saturating them, which differs only
 * for non-finite activations). */
static int quantize_block(const float *x, float *d, int8_t *qs) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) {
        amax = fmaxf(amax, fabsf(x[j]));
    }
    *d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        qs[j] = code_of(nearbyintf(x[j] * id));
        sum += qs[j];
    }
    return sum;
}

static void quantize_row_q8_0(const float *x, void *blocks, int64_t n) {
    block_q8_0 *y = blocks;
    for (int64_t b = 0; b < n / 32; b++) {
        float d;
        quantize_block(x + 32 * b, &d, y[b].qs);
        y[b].d = pyphi_fp32_to_fp16(d);
    }
}

static void quantize_row_q8_1(const float *x, void *blocks, int64_t n) {
    block_q8_1 *y = blocks;
    for (int64_t b = 0; b < n / 32; b++) {
        float d;
        int sum = quantize_block(x + 32 * b, &d, y[b].qs);
        y[b].d = pyphi_fp32_to_fp16(d);
        y[b].s = pyphi_fp32_to_fp16(d * (float)sum);
    }
}

/* The int8 dot of lane l of the AVX2 dots: values 4l .. 4l + 3 of a 32-value block
 * (mul_sum_us8_pairs_float / mul_sum_i8_pairs_float: vpdpbusd or maddubs + madd). */
static float lane_dot(const int8_t *a, const int8_t *b, int lane) {
    int s = 0;
    for (int i = 4 * lane; i < 4 * lane + 4; i++) {
        s += a[i] * b[i];
    }
    return (float)s;
}

/* ggml_vec_dot_q8_0_q8_0 (AVX2), and tinyBLAS_Q0_AVX's gemm for a row and a column: per block,
 * the 8 lanes += (d_w d_x) * lane dot, fused; then hsum_float_8. d_w d_x is exact (f16 x f16). */
static float dot_q8_0(const void *w_blocks, const void *x_blocks, int64_t n_blocks) {
    const block_q8_0 *w = w_blocks, *x = x_blocks;
    float acc[LANES_AVX2] = {0};
    for (int64_t b = 0; b < n_blocks; b++) {
        float d = pyphi_fp16_to_fp32(w[b].d) * pyphi_fp16_to_fp32(x[b].d);
        for (int l = 0; l < LANES_AVX2; l++) {
            acc[l] = fmaf(d, lane_dot(w[b].qs, x[b].qs, l), acc[l]);
        }
    }
    return hsum8(acc);
}

/* ggml_vec_dot_q4_1_q8_1 (AVX2): as dot_q8_0 on the 4-bit codes (low nibbles are values 0..15,
 * high nibbles 16..31), plus the m * s terms summed apart in block order (f16 x f16: exact, so
 * fused or not is the same) and added last. */
static float dot_q4_1(const void *w_blocks, const void *x_blocks, int64_t n_blocks) {
    const block_q4_1 *w = w_blocks;
    const block_q8_1 *x = x_blocks;
    float acc[LANES_AVX2] = {0}, summs = 0.0f;
    for (int64_t b = 0; b < n_blocks; b++) {
        int8_t codes[32];
        for (int j = 0; j < 16; j++) {
            codes[j] = (int8_t)(w[b].qs[j] & 15);
            codes[j + 16] = (int8_t)(w[b].qs[j] >> 4);
        }
        summs += pyphi_fp16_to_fp32(w[b].m) * pyphi_fp16_to_fp32(x[b].s);
        float d = pyphi_fp16_to_fp32(w[b].d) * pyphi_fp16_to_fp32(x[b].d);
        for (int l = 0; l < LANES_AVX2; l++) {
            acc[l] = fmaf(d, lane_dot(codes, x[b].qs, l), acc[l]);
        }
    }
    return hsum8(acc) + summs;
}

/* ---- K-quants: Q8_K activations ---------------------------------------------------------------- */

/* ggml_quantize_mat_q8_K_4x8 (arch/x86/repack.cpp) on one row: what llama.cpp's repacked Q4_K
 * matmul does to each whole group of 4 tokens. quantize_row_q8_K_ref (pyphi_quantize_row_q8_K)
 * but for the sign of the scale: negative when some value equals +amax, where the reference
 * takes the sign of the first value of largest magnitude (the two differ only when +amax and
 * -amax both occur, -amax first). */
static void quantize_row_q8_K_4x8(const float *x, void *blocks, int64_t n) {
    block_q8_K *y = blocks;
    for (int64_t b = 0; b < n / PYPHI_QK_K; b++, x += PYPHI_QK_K) {
        float amax = 0.0f;
        for (int j = 0; j < PYPHI_QK_K; j++) {
            amax = fmaxf(amax, fabsf(x[j]));
        }
        int positive_max = 0;
        for (int j = 0; j < PYPHI_QK_K; j++) {
            positive_max |= x[j] == amax;
        }
        float iscale = amax == 0.0f ? 0.0f : positive_max ? -127.0f / amax : 127.0f / amax;
        y[b].d = amax == 0.0f ? 0.0f : 1 / iscale;
        for (int j = 0; j < PYPHI_QK_K; j++) {
            y[b].qs[j] = code_of(nearbyintf(x[j] * iscale));
        }
        for (int k = 0; k < PYPHI_QK_K / 16; k++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) {
                sum += y[b].qs[16 * k + i];
            }
            y[b].bsums[k] = (int16_t)sum;
        }
    }
}

/* ---- K-quants: dots ---------------------------------------------------------------------------- */

/* Code i of sub-block j (32 values) of a Q4_K / Q5_K block (quants.h). */
static int code_q4_K(const block_q4_K *w, int j, int i) {
    uint8_t q = w->qs[32 * (j / 2) + i];
    return j % 2 == 0 ? q & 15 : q >> 4;
}

static int code_q5_K(const block_q5_K *w, int j, int i) {
    uint8_t q = w->qs[32 * (j / 2) + i];
    return (j % 2 == 0 ? q & 15 : q >> 4) | ((w->qh[i] >> j) & 1) << 4;
}

/* Code i (0..255, unsigned: the -32 is applied through the activations' bsums) of a Q6_K block. */
static int code_q6_K(const block_q6_K *w, int i) {
    int h = i / 128, l = i % 32, quarter = i % 128 / 32;
    uint8_t lo = w->ql[64 * h + l + (quarter % 2) * 32];
    lo = quarter < 2 ? lo & 15 : lo >> 4;
    return lo | ((w->qh[32 * h + l] >> (2 * quarter)) & 3) << 4;
}

/* codes . activations over sub-block j (32 values) of a Q4_K / Q5_K block: an exact integer. */
static int dot_sub_q4_K(const block_q4_K *w, const block_q8_K *x, int j) {
    int s = 0;
    for (int i = 0; i < 32; i++) {
        s += code_q4_K(w, j, i) * x->qs[32 * j + i];
    }
    return s;
}

static int dot_sub_q5_K(const block_q5_K *w, const block_q8_K *x, int j) {
    int s = 0;
    for (int i = 0; i < 32; i++) {
        s += code_q5_K(w, j, i) * x->qs[32 * j + i];
    }
    return s;
}

/* Sum of the 32 activation codes of sub-block j of a Q8_K block. */
static int bsum32(const block_q8_K *x, int j) {
    return x->bsums[2 * j] + x->bsums[2 * j + 1];
}

/* llama.cpp's repacked Q4_K (arch/x86/repack.cpp), with sub-blocks taken `run` at a time: the
 * integer sum over a run of scale x (codes . activations) and that of min x bsum, each converted
 * to float and fused into its own accumulator times d_w d_x (one rounded product); the mins'
 * accumulator subtracted last. */
static float dot_q4_K_runs(const block_q4_K *w, const block_q8_K *x, int64_t n_blocks, int run) {
    float acc = 0.0f, acc_min = 0.0f;
    for (int64_t b = 0; b < n_blocks; b++) {
        float d = pyphi_fp16_to_fp32(w[b].d) * x[b].d;
        float dmin = pyphi_fp16_to_fp32(w[b].dmin) * x[b].d;
        for (int j0 = 0; j0 < 8; j0 += run) {
            int isum = 0, imin = 0;
            for (int j = j0; j < j0 + run; j++) {
                uint8_t sc, m;
                pyphi_k_scale_min(j, w[b].scales, &sc, &m);
                isum += sc * dot_sub_q4_K(&w[b], &x[b], j);
                imin += m * bsum32(&x[b], j);
            }
            acc = fmaf((float)isum, d, acc);
            acc_min = fmaf((float)imin, dmin, acc_min);
        }
    }
    return acc - acc_min;
}

/* ggml_gemv_q4_K_8x8_q8_K (AVX2): a token outside the groups of 4, a whole super-block per run. */
static float dot_q4_K_gemv(const void *w, const void *x, int64_t n_blocks) {
    return dot_q4_K_runs(w, x, n_blocks, 8);
}

/* ggml_gemm_q4_K_8x8_q8_K (AVX-512, and its AVX2 path): a token of a group of 4, 64 values (two
 * sub-blocks) per run. */
static float dot_q4_K_gemm(const void *w, const void *x, int64_t n_blocks) {
    return dot_q4_K_runs(w, x, n_blocks, 2);
}

/* ggml_vec_dot_q5_K_q8_K (AVX2): lane l of 8 holds, per super-block, the integer sum over the
 * sub-blocks j of scale_j x (codes . activations) at values 4l .. 4l + 3 of j, fused into the
 * lane's float accumulator times d_x d_w; the min terms go to a float sum of their own, each
 * super-block's (-d_x dmin_w) x (sum of min x bsum) fused into it (gcc contracts ggml's
 * `summs += dmin * sum`), added after the lanes' hsum_float_8. */
static float dot_q5_K(const void *w_blocks, const void *x_blocks, int64_t n_blocks) {
    const block_q5_K *w = w_blocks;
    const block_q8_K *x = x_blocks;
    float acc[LANES_AVX2] = {0}, summs = 0.0f;
    for (int64_t b = 0; b < n_blocks; b++) {
        int lane[LANES_AVX2] = {0}, imin = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            pyphi_k_scale_min(j, w[b].scales, &sc, &m);
            for (int i = 0; i < 32; i++) {
                lane[i / 4] += sc * code_q5_K(&w[b], j, i) * x[b].qs[32 * j + i];
            }
            imin += m * bsum32(&x[b], j);
        }
        float d = x[b].d * pyphi_fp16_to_fp32(w[b].d);
        float dmin = -x[b].d * pyphi_fp16_to_fp32(w[b].dmin);
        summs = fmaf(dmin, (float)imin, summs);
        for (int l = 0; l < LANES_AVX2; l++) {
            acc[l] = fmaf(d, (float)lane[l], acc[l]);
        }
    }
    return hsum8(acc) + summs;
}

/* ggml_vec_dot_q6_K_q8_K (AVX2): lane l of 8 holds, per super-block, the integer sum over the 8
 * runs of 32 values of scale x code x activation at values 4l .. 4l + 3 of each run, minus 32 x
 * (scale x bsum) for the lane's two 16-value groups 2l and 2l + 1 (the -32 offset of the codes),
 * fused into the lane's float accumulator times d_x d_w; then hsum_float_8. */
static float dot_q6_K(const void *w_blocks, const void *x_blocks, int64_t n_blocks) {
    const block_q6_K *w = w_blocks;
    const block_q8_K *x = x_blocks;
    float acc[LANES_AVX2] = {0};
    for (int64_t b = 0; b < n_blocks; b++) {
        int lane[LANES_AVX2] = {0};
        for (int i = 0; i < PYPHI_QK_K; i++) {
            lane[i % 32 / 4] += w[b].scales[i / 16] * code_q6_K(&w[b], i) * x[b].qs[i];
        }
        for (int l = 0; l < LANES_AVX2; l++) {
            lane[l] -= 32 * (x[b].bsums[2 * l] * w[b].scales[2 * l] +
                             x[b].bsums[2 * l + 1] * w[b].scales[2 * l + 1]);
        }
        float d = x[b].d * pyphi_fp16_to_fp32(w[b].d);
        for (int l = 0; l < LANES_AVX2; l++) {
            acc[l] = fmaf(d, (float)lane[l], acc[l]);
        }
    }
    return hsum8(acc);
}

/* ggml-cpu/tiled (tiled.cpp, tiled-kernel.cpp: the AVX-512 VNNI microtile), which llama.cpp takes
 * for a Q5_K or Q6_K matrix and 8 or more tokens: per super-block the exact integer sum s1 of
 * scale x (codes . activations) (Q6_K's codes less 32) and, for Q5_K, s2 of min x bsum; then
 * r = s1 d_w, fused r - dmin_w s2, and r d_x fused into the accumulator (the microtile writes a
 * mul and an add, which gcc contracts: measured against llama.cpp's logits). */
static float dot_q5_K_tiled(const void *w_blocks, const void *x_blocks, int64_t n_blocks) {
    const block_q5_K *w = w_blocks;
    const block_q8_K *x = x_blocks;
    float acc = 0.0f;
    for (int64_t b = 0; b < n_blocks; b++) {
        int s1 = 0, s2 = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t sc, m;
            pyphi_k_scale_min(j, w[b].scales, &sc, &m);
            s1 += sc * dot_sub_q5_K(&w[b], &x[b], j);
            s2 += m * bsum32(&x[b], j);
        }
        float r = (float)s1 * pyphi_fp16_to_fp32(w[b].d);
        r = fmaf(-pyphi_fp16_to_fp32(w[b].dmin), (float)s2, r);
        acc = fmaf(r, x[b].d, acc);
    }
    return acc;
}

static float dot_q6_K_tiled(const void *w_blocks, const void *x_blocks, int64_t n_blocks) {
    const block_q6_K *w = w_blocks;
    const block_q8_K *x = x_blocks;
    float acc = 0.0f;
    for (int64_t b = 0; b < n_blocks; b++) {
        int s1 = 0;
        for (int k = 0; k < 16; k++) {
            int s = 0;
            for (int i = 16 * k; i < 16 * k + 16; i++) {
                s += code_q6_K(&w[b], i) * x[b].qs[i];
            }
            s1 += w[b].scales[k] * (s - 32 * x[b].bsums[k]);
        }
        acc = fmaf((float)s1 * pyphi_fp16_to_fp32(w[b].d), x[b].d, acc);
    }
    return acc;
}

/* ---- Matmul ------------------------------------------------------------------------------------ */

/* Tokens from which llama.cpp takes its tiled K-quant matmul (ggml_tiled_min_batch). */
#define TILED_MIN_TOKENS 8

/* Rows per chunk of the matmul's pool job. */
#define MATMUL_CHUNK_ROWS 16

struct matmul_job {
    float (*dot)(const void *w, const void *x, int64_t n_blocks);
    float (*dot_grouped)(const void *w, const void *x, int64_t n_blocks); /* tokens < grouped */
    int64_t grouped;
    const uint8_t *w;     /* (rows, row_bytes) */
    const uint8_t *xq;    /* (n, xq_bytes): the quantized activations */
    size_t row_bytes, xq_bytes;
    int64_t rows, n_blocks, n;
    float *y;             /* (n, rows) */
};

static void matmul_chunk(void *ctx, int64_t chunk, int thread) {
    (void)thread;
    const struct matmul_job *job = ctx;
    int64_t r1 = (chunk + 1) * MATMUL_CHUNK_ROWS < job->rows ? (chunk + 1) * MATMUL_CHUNK_ROWS : job->rows;
    for (int64_t t = 0; t < job->n; t++) {
        const void *x = job->xq + (size_t)t * job->xq_bytes;
        float (*dot)(const void *, const void *, int64_t) =
            t < job->grouped ? job->dot_grouped : job->dot;
        for (int64_t r = chunk * MATMUL_CHUNK_ROWS; r < r1; r++) {
            const void *w = job->w + (size_t)r * job->row_bytes;
            job->y[t * job->rows + r] = dot(w, x, job->n_blocks);
        }
    }
}

/* How llama.cpp's CPU backend multiplies a matrix of a type: the activations' block format and
 * quantizer, and the dot of a weight row with an activation row; for a repacked type, the
 * quantizer and dot of the tokens in whole groups of 4; for a tiled type, the dot of a batch of
 * TILED_MIN_TOKENS or more (else NULL). */
struct matmul_kind {
    int64_t block_values;
    size_t xq_block_bytes;
    void (*quantize)(const float *x, void *blocks, int64_t n);
    float (*dot)(const void *w, const void *x, int64_t n_blocks);
    void (*quantize_grouped)(const float *x, void *blocks, int64_t n);
    float (*dot_grouped)(const void *w, const void *x, int64_t n_blocks);
    float (*dot_tiled)(const void *w, const void *x, int64_t n_blocks);
};

static struct matmul_kind matmul_kind(int type) {
    struct matmul_kind q8_K = {.block_values = PYPHI_QK_K, .xq_block_bytes = sizeof(block_q8_K),
                               .quantize = pyphi_quantize_row_q8_K};
    switch (type) {
    case PYPHI_TYPE_Q4_1:
        return (struct matmul_kind){.block_values = 32, .xq_block_bytes = sizeof(block_q8_1),
                                    .quantize = quantize_row_q8_1, .dot = kernels()->dot_q4_1};
    case PYPHI_TYPE_Q8_0:
        return (struct matmul_kind){.block_values = 32, .xq_block_bytes = sizeof(block_q8_0),
                                    .quantize = quantize_row_q8_0, .dot = kernels()->dot_q8_0};
    case PYPHI_TYPE_Q4_K:
        q8_K.dot = dot_q4_K_gemv;
        q8_K.quantize_grouped = quantize_row_q8_K_4x8;
        q8_K.dot_grouped = dot_q4_K_gemm;
        return q8_K;
    case PYPHI_TYPE_Q5_K:
        q8_K.dot = dot_q5_K;
        q8_K.dot_tiled = dot_q5_K_tiled;
        return q8_K;
    default: /* Q6_K */
        q8_K.dot = dot_q6_K;
        q8_K.dot_tiled = dot_q6_K_tiled;
        return q8_K;
    }
}

int pyphi_ggml_matmul(pyphi_pool *pool, int type, const void *w, int64_t rows, int64_t cols,
                      const float *x, int64_t n, float *y, void *scratch) {
    if (!pyphi_ggml_supports(type)) {
        return PYPHI_E_TYPE;
    }
    struct matmul_kind kind = matmul_kind(type);
    /* llama.cpp repacks a Q4_K matrix of rows in 8s (arch/x86/repack.cpp); other row counts take
     * ggml_vec_dot_q4_K_q8_K, which is not reproduced here */
    if (cols % kind.block_values != 0 || (type == PYPHI_TYPE_Q4_K && rows % 8 != 0)) {
        return PYPHI_E_SHAPE;
    }
    int tiled = kind.dot_tiled != NULL && n >= TILED_MIN_TOKENS;
    struct matmul_job job = {
        .dot = tiled ? kind.dot_tiled : kind.dot, .dot_grouped = kind.dot_grouped, .w = w, .xq = scratch,
        /* the repacked matmul takes whole groups of 4 tokens its own way (ggml_gemm_*) */
        .grouped = kind.dot_grouped != NULL ? n / 4 * 4 : 0,
        .row_bytes = (size_t)pyphi_row_bytes(type, cols),
        .xq_bytes = (size_t)(cols / kind.block_values) * kind.xq_block_bytes,
        .rows = rows, .n_blocks = cols / kind.block_values, .n = n, .y = y,
    };
    for (int64_t t = 0; t < n; t++) {
        void (*quantize)(const float *, void *, int64_t) =
            t < job.grouped ? kind.quantize_grouped : kind.quantize;
        quantize(x + t * cols, (uint8_t *)scratch + (size_t)t * job.xq_bytes, cols);
    }
    pyphi_pool_run(pool, matmul_chunk, &job, (rows + MATMUL_CHUNK_ROWS - 1) / MATMUL_CHUNK_ROWS);
    return PYPHI_OK;
}

/* ---- Attention ---------------------------------------------------------------------------------- */

/* The two orders of ggml's f16 dot products, over n values (the queries, keys, weights and values
 * attention rounds to f16). Products of two f16 values are exact, so each fused step is one
 * rounded add; a tail padded with zeros changes nothing. */

/* ggml_vec_dot_f16 (vec.cpp, AVX-512): four 16-lane accumulators take runs of 16 in turn; they
 * are folded 0+2, 1+3, then 0+1, and reduced; leftovers past the last whole 64 are summed in
 * double after. */
static float dot_f16_vec(const uint16_t *a, const uint16_t *b, int64_t n) {
    float acc[4][LANES_AVX512] = {{0}};
    int64_t whole = n / 64 * 64;
    for (int64_t i = 0; i < whole; i++) {
        int64_t run = (i / LANES_AVX512) % 4, lane = i % LANES_AVX512;
        acc[run][lane] = fmaf(pyphi_fp16_to_fp32(a[i]), pyphi_fp16_to_fp32(b[i]), acc[run][lane]);
    }
    for (int l = 0; l < LANES_AVX512; l++) {
        acc[0][l] += acc[2][l];
        acc[1][l] += acc[3][l];
        acc[0][l] += acc[1][l];
    }
    double sum = hsum16(acc[0]);
    for (int64_t i = whole; i < n; i++) {
        sum += (double)(pyphi_fp16_to_fp32(a[i]) * pyphi_fp16_to_fp32(b[i]));
    }
    return (float)sum;
}

/* tinyBLAS's gemm (llamafile/sgemm.cpp, __m512): one 16-lane accumulator over all runs, then
 * reduced. llama.cpp's mul_mat uses it when the batch has 2 or more tokens. */
static float dot_f16_gemm(const uint16_t *a, const uint16_t *b, int64_t n) {
    float acc[LANES_AVX512] = {0};
    for (int64_t i = 0; i < n; i++) {
        int64_t lane = i % LANES_AVX512;
        acc[lane] = fmaf(pyphi_fp16_to_fp32(a[i]), pyphi_fp16_to_fp32(b[i]), acc[lane]);
    }
    return hsum16(acc);
}

const struct pyphi_ggml_kernels pyphi_ggml_kernels_scalar = {
    .dot_q8_0 = dot_q8_0, .dot_q4_1 = dot_q4_1,
    .dot_f16_vec = dot_f16_vec, .dot_f16_gemm = dot_f16_gemm,
};

static int64_t pad64(int64_t n) { return (n + 63) / 64 * 64; }

/* Floats of scratch one thread needs: the query and the weights in f16, the weights in float. */
int64_t pyphi_ggml_attention_scratch_floats(int64_t head_dim, int64_t n_ctx) {
    return pad64(head_dim) + 2 * pad64(n_ctx);
}

struct ggml_attention_job {
    const struct pyphi_attention_args *a;
    float (*dot)(const uint16_t *a, const uint16_t *b, int64_t n); /* the batch's order */
    const uint16_t *vt; /* (n_head_kv, head_dim, n_pad): the layer's values transposed, as
                         * llama.cpp's cache keeps them; zeros past the batch's last position */
    int64_t n_pad;      /* the batch's positions, padded to 64 (llama.cpp's n_kv: 256) */
    float q_scale;      /* the queries are multiplied by this first (ggml_scale) */
    float kq_scale;     /* the scores by this (soft_max_ext's scale) */
    int64_t group;      /* query heads per KV head */
    int64_t scratch_stride;
};

/* Chunk = (token t, query head h): softmax((q_scale q) k * kq_scale + mask) . v, ggml's way. */
static void ggml_attend(void *ctx, int64_t chunk, int thread) {
    const struct ggml_attention_job *job = ctx;
    const struct pyphi_attention_args *a = job->a;
    int64_t t = chunk / a->n_head, h = chunk % a->n_head, g = h / job->group;
    int64_t hd = a->head_dim, i = a->pos + t; /* the query's position */
    int64_t first = a->window > 0 && i - a->window + 1 > 0 ? i - a->window + 1 : 0;
    int64_t n_keys = i + 1;              /* keys 0 .. i are cached; those before first masked */
    int64_t n_pad = pad64(n_keys);       /* runs of this query's weights that can be non-zero */
    float *p = a->scratch + (size_t)thread * (size_t)job->scratch_stride; /* (job->n_pad,) */
    uint16_t *p16 = (uint16_t *)(p + job->n_pad);                          /* (job->n_pad,) */
    uint16_t *q16 = p16 + job->n_pad;                                      /* (pad64(hd),) */

    const float *q = a->q + t * a->q_stride + h * hd;
    for (int64_t d = 0; d < hd; d++) { /* mul_mat converts the queries to f16 */
        q16[d] = pyphi_fp32_to_fp16(q[d] * job->q_scale);
    }
    /* wp = kq * scale + mask (ggml_compute_forward_soft_max_f32), then its maximum */
    float max = -INFINITY;
    for (int64_t j = 0; j < n_pad; j++) {
        if (j < first || j >= n_keys) {
            p[j] = -INFINITY;
            continue;
        }
        p[j] = job->dot(pyphi_kv_k(a->kv, a->layer, g, j), q16, hd) * job->kq_scale;
        max = fmaxf(max, p[j]);
    }
    /* ggml_vec_soft_max_f32: exp of each run of 16, each run's reduced sum added in double */
    double sum = 0.0;
    for (int64_t j0 = 0; j0 < n_pad; j0 += LANES_AVX512) {
        for (int64_t j = j0; j < j0 + LANES_AVX512; j++) {
            p[j] = v_expf(p[j] - max);
        }
        sum += (double)hsum16(p + j0);
    }
    const float inv = (float)(1.0 / sum);
    for (int64_t j = 0; j < n_pad; j++) { /* kqv's mul_mat converts the weights to f16 */
        p16[j] = pyphi_fp32_to_fp16(p[j] * inv);
    }
    /* kqv: each output value the weights . one row of the transposed values */
    float *out = a->out + t * a->n_head * hd + h * hd;
    const uint16_t *vt = job->vt + g * hd * job->n_pad;
    for (int64_t d = 0; d < hd; d++) {
        out[d] = job->dot(vt + d * job->n_pad, p16, n_pad);
    }
}

int pyphi_ggml_attention(pyphi_pool *pool, const struct pyphi_attention_args *args,
                         int scale_queries) {
    if (args->kv->type != PYPHI_TYPE_F16) {
        return PYPHI_E_TYPE;
    }
    int64_t hd = args->head_dim, n_pad = pad64(args->pos + args->n_tokens);
    int gemm = args->n_tokens >= 2 && hd % LANES_AVX512 == 0;
    uint16_t *vt = calloc((size_t)(args->n_head_kv * hd * n_pad), sizeof *vt);
    if (vt == NULL) {
        return PYPHI_E_NOMEM;
    }
    for (int64_t g = 0; g < args->n_head_kv; g++) {
        for (int64_t j = 0; j < args->pos + args->n_tokens; j++) {
            const uint16_t *v = pyphi_kv_v(args->kv, args->layer, g, j); /* (head_dim,) */
            for (int64_t d = 0; d < hd; d++) {
                vt[(g * hd + d) * n_pad + j] = v[d];
            }
        }
    }
    struct ggml_attention_job job = {
        .a = args,
        .dot = gemm ? kernels()->dot_f16_gemm : kernels()->dot_f16_vec,
        .vt = vt,
        .n_pad = n_pad,
        /* a product by 1 is exact: the other scale changes nothing */
        .q_scale = scale_queries ? 1.0f / sqrtf((float)hd) : 1.0f,
        .kq_scale = scale_queries ? 1.0f : 1.0f / sqrtf((float)hd),
        .group = args->n_head / args->n_head_kv,
        .scratch_stride = pyphi_ggml_attention_scratch_floats(hd, args->kv->n_ctx),
    };
    pyphi_pool_run(pool, ggml_attend, &job, args->n_tokens * args->n_head);
    free(vt);
    return PYPHI_OK;
}
