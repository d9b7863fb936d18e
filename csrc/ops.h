/* ops.h: the element-wise and row-wise operations of the forward pass (ops.c).
 *
 * Internal to libpyphi. Each function is the scalar reference: plain loops in index order,
 * float32 arithmetic unless a comment says otherwise; a SIMD twin may come later and must match
 * it. Every formula cites the transformers code it reproduces (SPEC §4 of the project's notes,
 * transformers 5.24.0 models/phi3/modeling_phi3.py, modeling_rope_utils.py; ggml's rope for the
 * adjacent pairing of llama GGUFs).
 * Not here: matmul (matmul.c), attention (attention.c), the KV cache (kv_cache.c).
 */
#ifndef PYPHI_OPS_H
#define PYPHI_OPS_H

#include <stdint.h>

/* y (n_rows, n) = x / sqrt(mean(x^2) + eps) * w, per row (Phi3RMSNorm: normalise in float32,
 * then multiply by the stored weight, which is the multiplier itself, not 1 + w).
 * w: (n,). y may be x. */
void pyphi_rms_norm(float *y, const float *x, const float *w, int64_t n_rows, int64_t n, float eps);

/* x (n,) += y (n,). The residual connections. */
void pyphi_add(float *x, const float *y, int64_t n);

/* out (n_rows, n_ff) = silu(gate) * up, where gate_up (n_rows, 2 n_ff) holds gate in its first
 * n_ff columns and up in the last (Phi3MLP: gate, up = gate_up.chunk(2); up * silu(gate)). */
void pyphi_swiglu(float *out, const float *gate_up, int64_t n_rows, int64_t n_ff);

/* inv_freq (n_rot / 2,) = 1 / (factor[i] * base^(2i / n_rot)), computed in float32 in the
 * order transformers does (_compute_longrope_parameters; _compute_default_rope_parameters when
 * factors is NULL, which means all 1). */
void pyphi_rope_inv_freq(float *inv_freq, int64_t n_rot, float base, const float *factors);

/* The rotation of positions pos0 .. pos0 + n_pos - 1: cs (n_pos, n_rot) holds, per position,
 * cos(theta_i) * attn_factor in columns [0, n_rot/2) and sin(theta_i) * attn_factor in
 * [n_rot/2, n_rot), theta_i = float32(pos * inv_freq[i]) (Phi3RotaryEmbedding.forward). */
void pyphi_rope_table(float *cs, int64_t pos0, int64_t n_pos, const float *inv_freq,
                      int64_t n_rot, float attn_factor);

/* Rotates the first n_rot dims of each of n_heads heads of x (n_heads, head_dim) in place with
 * one position's cs row (n_rot,). Pair i < n_rot/2 is dims (a, b) = (i, i + n_rot/2) for
 * PYPHI_ROPE_NEOX (HF apply_rotary_pos_emb with rotate_half) or (2i, 2i + 1) for
 * PYPHI_ROPE_ADJACENT (ggml_rope's normal mode, ggml-cpu ops.cpp rotate_pairs with n_offset 1):
 * out[a] = x[a] c_i - x[b] s_i, out[b] = x[b] c_i + x[a] s_i. Dims n_rot .. head_dim - 1 pass
 * through. pairing: enum pyphi_rope_pairing. */
void pyphi_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int pairing,
                      const float *cs);

/* Turns a head already rotated with cs_from into the rotation of cs_to, in place: undo the
 * first (divide out the attention factor too) and apply the second, in double precision, on
 * the pairs pyphi_rope_apply rotates. Both rows are one position's (n_rot,) rows of
 * pyphi_rope_table. */
void pyphi_rope_rerotate(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int pairing,
                         const float *cs_from, const float *cs_to);

#endif /* PYPHI_OPS_H */
