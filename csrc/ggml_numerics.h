/* ggml_numerics.h: llama.cpp's CPU arithmetic, operation for operation (ggml_numerics.c).
 *
 * Internal to libpyphi. A model created with PYPHI_NUMERICS_GGML runs its forward pass through
 * these functions instead of pyphi's own kernels, so that its logits equal llama.cpp's bit for
 * bit on the same file: same activation quantization (Q8_1 for Q4_1 weights, Q8_0 for Q8_0, Q8_K
 * for the K-quants), same order of every float sum, same f16 roundings of queries and attention
 * weights, same polynomial exp. The reference is ggml's CPU backend as built for a CPU with
 * AVX-512 (llama-cpp-python's default native build on such a CPU): its per-element order is the
 * same on any thread count.
 *
 * Each function names the ggml routine it reproduces. The scalar twins of the dot products
 * spell ggml's vector lanes out as arrays, with fmaf exactly where ggml's vector code fuses; the
 * AVX2 table computes the Q4_1/Q8_0/F16 ones with the same lanes, at a fraction of llama.cpp's
 * speed still (no repacking, scalar attention softmax). The K-quant dots are scalar only: a
 * reference mode, not a fast one.
 */
#ifndef PYPHI_GGML_NUMERICS_H
#define PYPHI_GGML_NUMERICS_H

#include "attention.h"
#include "pyphi.h"

#include <stdint.h>

/* 1 if the matrices of type are computed: Q4_1, Q8_0, Q5_K, Q6_K (llama.cpp's CPU backend dots
 * them with its plain vec_dot and tinyBLAS on x86) and Q4_K (which it repacks in groups of 8 rows
 * there: pyphi_ggml_matmul needs such a row count). Not Q4_0, which it repacks with other
 * orders. */
int pyphi_ggml_supports(int type);

/* Bytes of scratch pyphi_ggml_matmul needs for n activation rows of cols values. */
int64_t pyphi_ggml_matmul_scratch(int64_t n, int64_t cols);

/* y (n_rows, n) = x * (1 / sqrt(mean(x^2) + eps)) * w: ggml_compute_forward_rms_norm_f32 and the
 * MUL by the weight (the squares rounded to float, summed in double). */
void pyphi_ggml_rms_norm(float *y, const float *x, const float *w, int64_t n_rows, int64_t n,
                         float eps);

/* cs (n_pos, n_rot), cos | sin halves as pyphi_rope_table's: ggml_rope_cache_init, whose angle
 * for pair i is the position times base^(-2/n_rot) multiplied in i times in float32, divided by
 * factors[i] (n_rot / 2 of them, or NULL for none: LongRoPE's or Llama 3's), then cosf/sinf times
 * mscale (LongRoPE's attention factor, else 1). */
void pyphi_ggml_rope_table(float *cs, int64_t pos0, int64_t n_pos, int64_t n_rot, float base,
                           const float *factors, float mscale);

/* Rotates the first n_rot dims of each of n_heads heads of x (n_heads, head_dim) in place with
 * one position's row of pyphi_ggml_rope_table, on the pairs pyphi_rope_apply uses for pairing:
 * ggml's rotate_pairs, with the fused steps llama.cpp's build has. */
void pyphi_ggml_rope_apply(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int pairing,
                           const float *cs);

/* y (n, rows) = x (n, cols) . w^T for a matrix w (rows, cols) of a type pyphi_ggml_supports:
 * - Q4_1, Q8_0: x quantized per 32-value block to Q8_1 / Q8_0 (quantize_row_q8_1 / _q8_0, x86),
 *   each output ggml_vec_dot_q4_1_q8_1 / ggml_vec_dot_q8_0_q8_0 (AVX2; tinyBLAS's Q8_0 gemm has
 *   the same order);
 * - Q5_K, Q6_K: x quantized per 256 values to Q8_K (quantize_row_q8_K_ref), each output
 *   ggml_vec_dot_q5_K_q8_K / ggml_vec_dot_q6_K_q8_K (AVX2), or for 8 tokens or more as the tiled
 *   matmul (ggml-cpu/tiled, AVX-512 VNNI) sums it;
 * - Q4_K (rows a multiple of 8): the repacked matmul, whose whole groups of 4 tokens are
 *   quantized by ggml_quantize_mat_q8_K_4x8 and dotted as ggml_gemm_q4_K_8x8_q8_K does (a float
 *   step per 64 values), the rest by quantize_row_q8_K_ref and ggml_gemv_q4_K_8x8_q8_K (a float
 *   step per 256 values).
 * scratch: pyphi_ggml_matmul_scratch(n, cols) bytes. PYPHI_E_TYPE for another type, PYPHI_E_SHAPE
 * for cols not a multiple of the type's block or a Q4_K row count not a multiple of 8. */
int pyphi_ggml_matmul(pyphi_pool *pool, int type, const void *w, int64_t rows, int64_t cols,
                      const float *x, int64_t n, float *y, void *scratch);

/* pyphi_attention's result as llama.cpp computes it without flash attention on an F16 cache:
 * q rounded to f16, q.k by ggml_vec_dot_f16 for a batch of one token and by tinyBLAS for longer
 * batches, ggml_compute_forward_soft_max_f32 (ggml_v_expf, a double sum), the weights rounded to
 * f16 and dotted with v in the same two orders. scale_queries: the 1 / sqrt(head_dim) multiplies
 * the float queries first (llama.cpp's phi3 graph: ggml_scale, then a kq_scale of 1), else the
 * scores (llama's). The result depends on whether the batch has one token, as llama.cpp's does,
 * and not on the pool size. PYPHI_E_TYPE for an F32 cache. */
/* Floats of scratch per pool thread pyphi_ggml_attention needs (args.scratch). */
int64_t pyphi_ggml_attention_scratch_floats(int64_t head_dim, int64_t n_ctx);
int pyphi_ggml_attention(pyphi_pool *pool, const struct pyphi_attention_args *args,
                         int scale_queries);

/* out (n_rows, n_ff) = silu(gate) * up from gate_up (n_rows, 2 n_ff): ggml_vec_swiglu_f32, whose
 * silu is x / (1 + ggml_v_expf(-x)) on every whole run of 16 values and expf after. */
void pyphi_ggml_swiglu(float *out, const float *gate_up, int64_t n_rows, int64_t n_ff);

/* The dot products above, one table per instruction set: the scalar twins in ggml_numerics.c
 * define them, kernels_avx2_ggml.c computes the same bits with AVX2 + FMA + F16C (its lanes are
 * ggml's lanes, so no emulation is needed there). */
struct pyphi_ggml_kernels {
    /* ggml_vec_dot_q8_0_q8_0: n_blocks block_q8_0 of weights and of activations */
    float (*dot_q8_0)(const void *w, const void *x, int64_t n_blocks);
    /* ggml_vec_dot_q4_1_q8_1: n_blocks block_q4_1 of weights, block_q8_1 of activations */
    float (*dot_q4_1)(const void *w, const void *x, int64_t n_blocks);
    /* n f16 values of a and b (n a multiple of 16 for the gemm order): ggml_vec_dot_f16's order,
     * and tinyBLAS's */
    float (*dot_f16_vec)(const uint16_t *a, const uint16_t *b, int64_t n);
    float (*dot_f16_gemm)(const uint16_t *a, const uint16_t *b, int64_t n);
};
extern const struct pyphi_ggml_kernels pyphi_ggml_kernels_scalar;
extern const struct pyphi_ggml_kernels pyphi_ggml_kernels_avx2; /* x86-64 builds only */

#endif /* PYPHI_GGML_NUMERICS_H */
