/* ops.c: the scalar reference of the forward pass's element-wise and row-wise operations:
 * RMSNorm, residual add, SwiGLU and rotary embeddings (see ops.h for each contract); attention's
 * softmax is a kernel (kernels.h).
 *
 * Compiled with -ffp-contract=off like the rest of the library, so a * b + c rounds the product
 * and the sum separately, as torch's float32 element-wise kernels do.
 */
#include "ops.h"

#include <math.h>
#include <stddef.h>

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

void pyphi_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, const float *cs) {
    int64_t half = n_rot / 2;
    const float *c = cs, *s = cs + half; /* (half,) each */
    for (int64_t h = 0; h < n_heads; h++) {
        float *x1 = x + h * head_dim; /* (half,): dims [0, half) */
        float *x2 = x1 + half;        /* (half,): dims [half, n_rot) */
        for (int64_t i = 0; i < half; i++) {
            float a = x1[i], b = x2[i];
            /* q * cos + rotate_half(q) * sin, rotate_half(q) = cat(-q2, q1) */
            x1[i] = a * c[i] + (-b) * s[i];
            x2[i] = b * c[i] + a * s[i];
        }
    }
}

void pyphi_rope_rerotate(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot,
                         const float *cs_from, const float *cs_to) {
    int64_t half = n_rot / 2;
    for (int64_t h = 0; h < n_heads; h++) {
        float *x1 = x + h * head_dim;
        float *x2 = x1 + half;
        for (int64_t i = 0; i < half; i++) {
            /* (c, s) = m (cos t, sin t) rotates by t and scales by m; its inverse is
             * (c, -s) / (c^2 + s^2) */
            double c0 = cs_from[i], s0 = cs_from[half + i];
            double c1 = cs_to[i], s1 = cs_to[half + i];
            double norm = c0 * c0 + s0 * s0;
            double a = (x1[i] * c0 + x2[i] * s0) / norm;
            double b = (x2[i] * c0 - x1[i] * s0) / norm;
            x1[i] = (float)(a * c1 - b * s1);
            x2[i] = (float)(b * c1 + a * s1);
        }
    }
}
