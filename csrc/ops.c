/* ops.c: the scalar reference of the forward pass's element-wise and row-wise operations:
 * RMSNorm, residual add, SwiGLU and rotary embeddings (see ops.h for each contract), plus
 * pyphi_rope, the public entry to the rotation (pyphi.h); attention's softmax is a kernel
 * (kernels.h).
 *
 * Compiled with -ffp-contract=off like the rest of the library, so a * b + c rounds the product
 * and the sum separately, as torch's float32 element-wise kernels do.
 */
#include "ops.h"

#include "pyphi.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

void pyphi_rms_norm(float *y, const float *x, const float *w, int64_t n_rows, int64_t n, float eps) {
    for (int64_t r = 0; r < n_rows; r++) {
        const float *xr = x + r * n; /* (n,) */
        float *yr = y + r * n;       /* (n,) */
        /* the mean of squares in double: one rounding instead of n, whatever n is */
        double sum = 0.0;
        for (int64_t i = 0; i < n; i++) {
            sum += (double)xr[i] * (double)xr[i];
        }
        float mean = (float)(sum / (double)n);
        float scale = 1.0f / sqrtf(mean + eps); /* torch.rsqrt(variance + eps) */
        for (int64_t i = 0; i < n; i++) {
            yr[i] = w[i] * (xr[i] * scale); /* weight * hidden_states, hidden scaled first */
        }
    }
}

void pyphi_add(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        x[i] += y[i];
    }
}

void pyphi_swiglu(float *out, const float *gate_up, int64_t n_rows, int64_t n_ff) {
    for (int64_t r = 0; r < n_rows; r++) {
        const float *gate = gate_up + r * 2 * n_ff; /* (n_ff,) */
        const float *up = gate + n_ff;              /* (n_ff,) */
        float *o = out + r * n_ff;                  /* (n_ff,) */
        for (int64_t i = 0; i < n_ff; i++) {
            float silu = gate[i] / (1.0f + expf(-gate[i])); /* torch silu: x / (1 + exp(-x)) */
            o[i] = up[i] * silu;
        }
    }
}

void pyphi_rope_inv_freq(float *inv_freq, int64_t n_rot, float base, const float *factors) {
    for (int64_t i = 0; i < n_rot / 2; i++) {
        /* torch.arange(0, dim, 2).float() / dim, then base ** that in float32; pow in double
         * rounded once to float32 agrees with torch's float32 pow (measured: 47 of 48 entries
         * bit for bit for dim 96, the other one ulp away). */
        float exponent = (float)(2 * i) / (float)n_rot;
        float power = (float)pow((double)base, (double)exponent);
        float factor = factors != NULL ? factors[i] : 1.0f;
        inv_freq[i] = 1.0f / (factor * power);
    }
}

void pyphi_rope_table(float *cs, int64_t pos0, int64_t n_pos, const float *inv_freq,
                      int64_t n_rot, float attn_factor) {
    int64_t half = n_rot / 2;
    for (int64_t p = 0; p < n_pos; p++) {
        float *row = cs + p * n_rot; /* (n_rot,): cos (half,), then sin (half,) */
        float pos = (float)(pos0 + p); /* position_ids.float(): exact below 2^24 */
        for (int64_t i = 0; i < half; i++) {
            float theta = pos * inv_freq[i];
            /* cos and sin of the float32 angle, correctly rounded (torch's are within 1 ulp) */
            row[i] = (float)cos((double)theta) * attn_factor;
            row[half + i] = (float)sin((double)theta) * attn_factor;
        }
    }
}

/* The dims of pair i (i < half) of a head: see pyphi_rope_apply. */
static void rope_pair(int pairing, int64_t i, int64_t half, int64_t *a, int64_t *b) {
    if (pairing == PYPHI_ROPE_ADJACENT) {
        *a = 2 * i;
        *b = 2 * i + 1;
    } else {
        *a = i;
        *b = i + half;
    }
}

void pyphi_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int pairing,
                      const float *cs) {
    int64_t half = n_rot / 2, ia, ib;
    const float *c = cs, *s = cs + half; /* (half,) each */
    for (int64_t h = 0; h < n_heads; h++) {
        float *xh = x + h * head_dim; /* (head_dim,) */
        for (int64_t i = 0; i < half; i++) {
            rope_pair(pairing, i, half, &ia, &ib);
            float a = xh[ia], b = xh[ib];
            /* q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q2, q1); ggml's rotate_pairs
             * computes the same two expressions for its pair */
            xh[ia] = a * c[i] + (-b) * s[i];
            xh[ib] = b * c[i] + a * s[i];
        }
    }
}

void pyphi_rope_rerotate(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int pairing,
                         const float *cs_from, const float *cs_to) {
    int64_t half = n_rot / 2, ia, ib;
    for (int64_t h = 0; h < n_heads; h++) {
        float *xh = x + h * head_dim;
        for (int64_t i = 0; i < half; i++) {
            rope_pair(pairing, i, half, &ia, &ib);
            /* (c, s) = m (cos t, sin t) rotates by t and scales by m; its inverse is
             * (c, -s) / (c^2 + s^2) */
            double c0 = cs_from[i], s0 = cs_from[half + i];
            double c1 = cs_to[i], s1 = cs_to[half + i];
            double norm = c0 * c0 + s0 * s0;
            double a = (xh[ia] * c0 + xh[ib] * s0) / norm;
            double b = (xh[ib] * c0 - xh[ia] * s0) / norm;
            xh[ia] = (float)(a * c1 - b * s1);
            xh[ib] = (float)(b * c1 + a * s1);
        }
    }
}

int pyphi_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int32_t pairing,
               int64_t pos, float base, const float *factors) {
    if (x == NULL) {
        return PYPHI_E_ARG;
    }
    if (n_heads < 0 || head_dim < 1 || n_rot < 0 || n_rot % 2 != 0 || n_rot > head_dim ||
        pos < 0 || !(base > 0) ||
        (pairing != PYPHI_ROPE_NEOX && pairing != PYPHI_ROPE_ADJACENT)) {
        return PYPHI_E_SHAPE;
    }
    float *inv_freq = malloc((size_t)(n_rot / 2 + n_rot + 1) * sizeof(float)); /* (half,) */
    if (inv_freq == NULL) {
        return PYPHI_E_NOMEM;
    }
    float *cs = inv_freq + n_rot / 2; /* (n_rot,) */
    pyphi_rope_inv_freq(inv_freq, n_rot, base, factors);
    pyphi_rope_table(cs, pos, 1, inv_freq, n_rot, 1.0f);
    pyphi_rope_apply(x, n_heads, head_dim, n_rot, pairing, cs);
    free(inv_freq);
    return PYPHI_OK;
}
