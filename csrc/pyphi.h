/* pyphi.h: the whole public ABI of libpyphi, the C core of pyphi.
 *
 * Python reads the block between the PYPHI_CDEF markers with cffi in ABI mode, so that block
 * holds plain C declarations only: no preprocessor lines, no inline functions, no macros.
 *
 * Conventions used by every declaration below:
 * - matrices are row-major; a "row" is one contiguous run of n values in the stated type;
 * - counts are in values (elements) unless the name ends in _bytes;
 * - a function that can fail returns an int status: PYPHI_OK (0) or a negative pyphi_status;
 * - nothing here allocates memory the caller must free, except the pool (pyphi_pool_destroy)
 *   and the model (pyphi_model_free).
 */
#ifndef PYPHI_H
#define PYPHI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library is built with -fvisibility=hidden; everything declared below is its export list. */
#if defined(PYPHI_BUILD) && defined(__GNUC__)
#pragma GCC visibility push(default)
#endif

/* PYPHI_CDEF_BEGIN */

/* Tensor element types. The values are ggml's type ids, as GGUF stores them (ggml.h ggml_type). */
enum pyphi_type {
    PYPHI_TYPE_F32 = 0,
    PYPHI_TYPE_F16 = 1,
    PYPHI_TYPE_Q4_0 = 2,
    PYPHI_TYPE_Q4_1 = 3,
    PYPHI_TYPE_Q5_0 = 6,
    PYPHI_TYPE_Q5_1 = 7,
    PYPHI_TYPE_Q8_0 = 8,
    PYPHI_TYPE_Q8_1 = 9,  /* activations only (dotted with Q4_1/Q5_1) */
    PYPHI_TYPE_Q4_K = 12,
    PYPHI_TYPE_Q5_K = 13,
    PYPHI_TYPE_Q6_K = 14,
    PYPHI_TYPE_Q8_K = 15, /* activations only (dotted with the K-quants) */
    PYPHI_TYPE_BF16 = 30
};

/* Instruction-set variants of the kernels; every variant computes what the scalar one defines. */
enum pyphi_isa {
    PYPHI_ISA_SCALAR = 0, /* portable C: the reference, and the fallback on any CPU */
    PYPHI_ISA_AVX2 = 1,   /* AVX2 + FMA + F16C (Haswell and later) */
    PYPHI_ISA_AVX512 = 2, /* AVX-512 F/BW/VL/DQ + VNNI (Ice Lake, Zen 4 and later) */
    PYPHI_ISA_AVX512BF16 = 3, /* AVX-512 + AVX512_BF16 (Cooper Lake, Sapphire Rapids, Zen 4) */
    PYPHI_ISA_NEON = 4,   /* AArch64 Advanced SIMD (every AArch64 Linux CPU) */
    PYPHI_ISA_NEON_DOTPROD = 5, /* AArch64 NEON + ARMv8.2 SDOT (Cortex-A55/A75, Neoverse, Apple M1 and later) */
    PYPHI_ISA_COUNT = 6
};

/* CPU feature bits returned by pyphi_cpu_features() (each one also enabled by the OS). */
enum pyphi_cpu_feature {
    PYPHI_CPU_SSE42 = 1,
    PYPHI_CPU_AVX = 2,
    PYPHI_CPU_AVX2 = 4,
    PYPHI_CPU_FMA = 8,
    PYPHI_CPU_F16C = 16,
    PYPHI_CPU_AVX512F = 32,
    PYPHI_CPU_AVX512BW = 64,
    PYPHI_CPU_AVX512VL = 128,
    PYPHI_CPU_AVX512DQ = 256,
    PYPHI_CPU_AVX512VNNI = 512,
    PYPHI_CPU_AVX512BF16 = 1024,
    PYPHI_CPU_AVXVNNI = 2048,
    PYPHI_CPU_NEON = 4096,   /* AArch64 HWCAP_ASIMD */
    PYPHI_CPU_DOTPROD = 8192 /* AArch64 HWCAP_ASIMDDP */
};

enum pyphi_status {
    PYPHI_OK = 0,
    PYPHI_E_TYPE = -1,  /* the type is not one this library computes */
    PYPHI_E_SHAPE = -2, /* a count is negative, too large, or not a multiple of the block size */
    PYPHI_E_ISA = -3,   /* this CPU (or build) lacks the requested instruction set */
    PYPHI_E_NOMEM = -4, /* an allocation failed */
    PYPHI_E_ARG = -5,   /* a NULL pointer or otherwise invalid argument */
    PYPHI_E_CONTEXT = -6 /* the sequence would not fit in the model's n_ctx */
};

const char *pyphi_version(void);
const char *pyphi_status_string(int status);

/* ---- CPU features and kernel dispatch (dispatch.c) ----------------------------------------- */

uint32_t pyphi_cpu_features(void);   /* OR of pyphi_cpu_feature bits */
int pyphi_isa_supported(int isa);    /* 1 if this CPU and build can run isa, else 0 */
int pyphi_isa_best(void);            /* the ISA chosen at load time: the best supported one */
int pyphi_isa_current(void);         /* the ISA the kernels use now */
int pyphi_isa_set(int isa);          /* force an ISA (tests, debugging); PYPHI_E_ISA if unsupported */
const char *pyphi_isa_name(int isa); /* "scalar", "avx2", "avx512", "avx512bf16", "neon", "neon_dotprod"; "unknown" otherwise */

/* ---- Block formats (quants.c): ggml's layouts byte for byte ------------------------------- */

int64_t pyphi_type_block_values(int type); /* values per block: 32 for Q4_0..Q8_1, 256 for Q4_K..Q8_K, 1 for floats; 0 if unsupported */
int64_t pyphi_type_block_bytes(int type);  /* bytes per block: 18 Q4_0, 20 Q4_1, 22 Q5_0, 24 Q5_1, 34 Q8_0,
                                            * 36 Q8_1, 144 Q4_K, 176 Q5_K, 210 Q6_K, 292 Q8_K, 4 F32,
                                            * 2 F16/BF16; 0 if unsupported */
int64_t pyphi_row_bytes(int type, int64_t n); /* bytes of a row of n values; negative status on error */

/* x: (n,) float32 -> y: pyphi_row_bytes(type, n) bytes. Bit-identical to gguf.quants.quantize
 * (Q8_1, which gguf-py lacks: to ggml's quantize_row_q8_1_ref, for finite x). */
int pyphi_quantize_row(int type, const float *x, void *y, int64_t n);
/* x: pyphi_row_bytes(type, n) bytes -> y: (n,) float32. Exact (bit-identical to gguf.quants.dequantize). */
int pyphi_dequantize_row(int type, const void *x, float *y, int64_t n);

/* ---- Thread pool (threadpool.c): persistent workers, knows nothing about models ----------- */

typedef struct pyphi_pool pyphi_pool;

pyphi_pool *pyphi_pool_create(int n_threads); /* n_threads >= 1 (the caller counts); NULL on failure */
void pyphi_pool_destroy(pyphi_pool *pool);    /* NULL is a no-op */
int pyphi_pool_size(const pyphi_pool *pool);  /* number of threads, the caller's included */

/* Row conversion on the pool: src (n_rows, n) in src_type -> dst (n_rows, n) in dst_type, each row
 * exactly pyphi_dequantize_row(src_type) then pyphi_quantize_row(dst_type). src and dst must not
 * overlap. Used by the converter (bf16 checkpoint rows -> GGUF rows). */
int pyphi_convert_rows(pyphi_pool *pool, int src_type, const void *src, int dst_type, void *dst,
                       int64_t n_rows, int64_t n);

/* ---- Dot products and matmul (kernels_*.c, matmul.c) -------------------------------------- */

/* The format activations take when dotted with weights of type wtype (ggml's vec_dot_type),
 * quantized on the fly as ggml does: Q8_0 for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the
 * K-quants; F32 for F32/F16, BF16 for BF16. PYPHI_E_TYPE for a type this build does not compute. */
int pyphi_vec_dot_type(int wtype);

/* *out = dot of w (a row of n values in wtype) with a (a row of n values in
 * pyphi_vec_dot_type(wtype)), with the kernels of the current ISA. */
int pyphi_vec_dot(int wtype, const void *w, const void *a, int64_t n, float *out);

/* x (n,) <- softmax(scale * x) with the current ISA's kernel, attention's (n >= 1): the same
 * bits on every ISA, its exp within 2 ulp of exp (the definition is in csrc/kernels.h). */
int pyphi_softmax(float *x, int64_t n, float scale);

/* out (n_q, n) float32 = p (n_q, n_rows) float32 . v (n_rows, n) in vtype (F16 or F32) with the
 * current ISA's kernel, attention's scores . values: each output a running sum over the rows in
 * order, product and sum rounded apart, the same bits on every ISA (csrc/kernels.h). All >= 1;
 * out must not overlap v or p. */
int pyphi_weighted_rows(int vtype, const void *v, int64_t n_rows, int64_t n, const float *p,
                        int64_t n_q, float *out);

/* y (n_tokens, n_out) float32 = x (n_tokens, n_in) float32 . w^T, where w is (n_out, n_in) in wtype
 * with rows of pyphi_row_bytes(wtype, n_in) bytes. y must not overlap x or w. The result does not
 * depend on the pool size. */
int pyphi_matmul(pyphi_pool *pool, int wtype, const void *w, int64_t n_out, int64_t n_in,
                 const float *x, int64_t n_tokens, float *y);

/* Packed weights: pyphi's own layout of a Q4_0 or Q8_0 matrix (quants.h: 16 rows interleaved per
 * block, the same number of bytes), built in memory, never stored. It lets the SIMD kernels
 * advance 16 output rows per instruction. Q4_K/Q5_K/Q6_K pack 4 rows, whole super-blocks
 * interleaved, so a 4-row kernel streams one contiguous run. The model packs its matrices on
 * a thread of its own from create on, then moves the copy onto huge pages while idle. pyphi_packed_bytes: the bytes
 * of the packed (n_out, n_in) matrix, or PYPHI_E_TYPE (another type) / PYPHI_E_SHAPE (n_out not
 * a multiple of 16 (4 for the K-quants), or n_in not a multiple of the block). */
int64_t pyphi_packed_bytes(int wtype, int64_t n_out, int64_t n_in);
/* w (n_out, n_in) in ggml's layout -> dst (pyphi_packed_bytes); w and dst must not overlap. */
int pyphi_pack_matrix(int wtype, const void *w, int64_t n_out, int64_t n_in, void *dst);
/* y (n_tokens, n_out) = x (n_tokens, n_in) . w^T with w packed. Every element is, bit for bit,
 * the scalar vec_dot (pyphi_isa_set(PYPHI_ISA_SCALAR) then pyphi_vec_dot) of its weight row with
 * its token quantized to Q8_0, on every ISA and for any pool size. K-quants: the current ISA's
 * vec_dot with the token quantized to Q8_K (what pyphi_matmul computes), for any pool size. */
int pyphi_matmul_packed(pyphi_pool *pool, int wtype, const void *w, int64_t n_out, int64_t n_in,
                        const float *x, int64_t n_tokens, float *y);
/* The same product, bit for bit, with w in ggml's layout: Q4_0/Q8_0 rows read where they are
 * (16 rows a lane each, as packed), the K-quants packed a group at a time into a scratch slice
 * of the thread just before its dots. What the model computes with while its packed copy is
 * still being made: slower than the packed copy, the same result. */
int pyphi_matmul_as_packed(pyphi_pool *pool, int wtype, const void *w, int64_t n_out, int64_t n_in,
                           const float *x, int64_t n_tokens, float *y);

/* ---- Model: hyperparameters + weights in, logits out (model.c, ops.c, attention.c) ------- */

/* x (n_heads, head_dim) float32, rotated in place as the forward pass rotates a query or key of
 * one token at position pos: inv_freq[i] = 1 / (factors[i] base^(2i / n_rot)) (factors NULL:
 * all 1), the pairing of enum pyphi_rope_pairing, dims n_rot .. head_dim - 1 untouched, no
 * attention factor. Exported for tests of the op itself. */
int pyphi_rope(float *x, int64_t n_heads, int64_t head_dim, int64_t n_rot, int32_t pairing,
               int64_t pos, float base, const float *factors);

/* One weight matrix (or vector) as the caller holds it: ne1 rows of ne0 values in `type`, rows
 * contiguous (ggml's ne order: ne0 is the row length). The library never copies or frees `data`:
 * it points into the caller's memory map of the GGUF file, which must outlive the model. A
 * vector (norm weights) has ne1 = 1. data == NULL means "absent". */
struct pyphi_tensor {
    int32_t type; /* enum pyphi_type */
    const void *data;
    int64_t ne0, ne1;
};

/* The weights of one decoder layer. Projections come either fused (Phi-3: wqkv, ffn_gate_up)
 * or separate (Llama: wq/wk/wv, ffn_gate/ffn_up); exactly one form must be present, the other
 * left NULL. The forward pass is the same either way. */
struct pyphi_layer_weights {
    struct pyphi_tensor attn_norm;   /* (n_embd,) F32 */
    struct pyphi_tensor wqkv;        /* (n_embd) -> (n_head + 2 n_head_kv) * head_dim: rows Q, K, V */
    struct pyphi_tensor wq, wk, wv;  /* (n_embd) -> n_head * head_dim, n_head_kv * head_dim (x2) */
    struct pyphi_tensor wo;          /* n_head * head_dim -> n_embd */
    struct pyphi_tensor ffn_norm;    /* (n_embd,) F32 */
    struct pyphi_tensor ffn_gate_up; /* (n_embd) -> 2 n_ff: rows gate, then up */
    struct pyphi_tensor ffn_gate, ffn_up; /* (n_embd) -> n_ff each */
    struct pyphi_tensor ffn_down;    /* n_ff -> n_embd */
};

/* Which dims of a head RoPE rotates together by the angle pos * inv_freq[i], i < n_rot / 2.
 * The two are the same rotation of differently ordered rows: llama.cpp's converter permutes the
 * Q and K rows of Llama checkpoints (convert_hf_to_gguf.py LlamaModel.permute) so that its
 * "normal" rope mode on the permuted rows computes what HF's rotate_half computes on the
 * original ones. */
enum pyphi_rope_pairing {
    PYPHI_ROPE_NEOX = 0,    /* dims (i, i + n_rot/2): HF rotate_half, ggml's NEOX mode; phi3 GGUFs */
    PYPHI_ROPE_ADJACENT = 1 /* dims (2i, 2i + 1): ggml's normal mode (GPT-J); llama GGUFs */
};

/* A decoder-only transformer with pre-norm RMSNorm, GQA attention, RoPE on the first n_rot dims
 * of each head (pairing as rope_pairing says; optionally LongRoPE) and a SwiGLU MLP: Phi-3 and
 * Llama. The library copies the struct and the layers array; the tensors' data must stay
 * valid. */
struct pyphi_model_desc {
    int64_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    int64_t n_rot;          /* rotated dims per head, even, <= head_dim */
    int32_t rope_pairing;   /* enum pyphi_rope_pairing (0, NEOX, for a zeroed struct) */
    int32_t queries_scaled; /* 1: llama.cpp's graph for this architecture multiplies the queries by
                             * 1 / sqrt(head_dim) before q.k (phi3), 0: the scores (llama). The same
                             * maths, rounded differently: only PYPHI_NUMERICS_GGML reads it */
    int64_t n_ctx_train;    /* the longest sequence the model supports */
    int64_t n_ctx_orig;     /* LongRoPE: long factors once the sequence is longer than this */
    int64_t sliding_window; /* key j is visible to query i iff i - window < j <= i; 0: no window */
    float rms_eps;
    float rope_base;        /* theta base, 10000 for Phi-3 */
    float rope_attn_factor; /* cos and sin are multiplied by this (LongRoPE's attention factor) */
    const float *rope_factors_short; /* (n_rot / 2,) or NULL (all 1) */
    const float *rope_factors_long;  /* (n_rot / 2,) or NULL: no LongRoPE switching */
    struct pyphi_tensor tok_embd;    /* (n_vocab rows of n_embd) */
    struct pyphi_tensor output_norm; /* (n_embd,) F32 */
    struct pyphi_tensor output;      /* (n_vocab rows of n_embd); the tied head is tok_embd */
    const struct pyphi_layer_weights *layers; /* (n_layer,) */
};

/* What happens to the cache when the LongRoPE factor set of the sequence changes (its length
 * crosses n_ctx_orig, up or back down). REPREFILL recomputes the cached prefix from its tokens
 * with the new factors: exactly what transformers computes for the whole sequence.
 * REROTATE turns every cached key from the old rotation to the new one in place: cheap, exact
 * for layer 0, but the keys and values of later layers keep what the old factors made of the
 * layers below, so it only approximates transformers (see model.c). */
enum pyphi_longrope_switch {
    PYPHI_LONGROPE_REPREFILL = 0,
    PYPHI_LONGROPE_REROTATE = 1
};

/* How the forward pass rounds. PYPHI pyphi's own kernels: each within its stated tolerance of the
 * exact maths (the tests bound them against transformers), the fastest layouts. GGML llama.cpp's
 * CPU arithmetic operation for operation (ggml_numerics.h): the logits equal llama.cpp's bit for
 * bit on the same file (llama.cpp built for AVX-512, flash attention off), at scalar speed; for
 * Q4_1/Q8_0/Q4_K/Q5_K/Q6_K matrices (Q4_K with rows in 8s), an F16 cache and no packing, else
 * create fails (PYPHI_E_TYPE for a matrix type, PYPHI_E_SHAPE for a Q4_K row count, PYPHI_E_ARG
 * otherwise). LongRoPE as llama.cpp does it: one factor set for the model's life, the long one
 * when n_ctx exceeds n_ctx_orig (or n_ctx_train when that is 0), never switched. Like llama.cpp's, its results depend on
 * how a sequence is split into evals: a one-token eval sums attention in another order than a
 * longer one (llama.cpp splits at n_ubatch, 512 by default). */
enum pyphi_numerics {
    PYPHI_NUMERICS_PYPHI = 0,
    PYPHI_NUMERICS_GGML = 1
};

struct pyphi_model_params {
    int64_t n_ctx;           /* cache capacity in positions, 1..n_ctx_train */
    int64_t n_batch;         /* tokens per forward step of a long prompt (activation memory) */
    int32_t kv_type;         /* PYPHI_TYPE_F16 or PYPHI_TYPE_F32 */
    int32_t longrope_switch; /* enum pyphi_longrope_switch */
    int32_t pack_weights;    /* 1: copy the Q4_0/Q8_0/K-quant matrices into the packed layout (faster
                              * kernels; anonymous memory of their size, allocated at create,
                              * filled by a thread of the model's own from create on, while
                              * evals compute from the caller's memory with the same result,
                              * pyphi_matmul_as_packed) and drop their pages from the process
                              * with MADV_DONTNEED, which requires them to be a read-only file
                              * mapping, as the GGUF is; 0: compute on the caller's memory as it
                              * is */
    int32_t numerics;        /* enum pyphi_numerics */
};

struct pyphi_model_sizes {
    int64_t weights_bytes; /* the tensors of the description (mapped, not allocated) */
    int64_t kv_bytes;      /* the KV cache: 2 n_layer n_ctx n_head_kv head_dim values */
    int64_t scratch_bytes; /* activations of one n_batch step and the model's own state */
    int64_t packed_bytes;  /* the packed copies of the matrices (pack_weights), allocated */
};

typedef struct pyphi_model pyphi_model;

/* Checks desc and params and fills *sizes without allocating anything. Errors are bare statuses
 * (PYPHI_E_SHAPE, _TYPE, _ARG); a caller that wants messages validates first (pyphi/model_file.py). */
int pyphi_model_sizes(const struct pyphi_model_desc *desc, const struct pyphi_model_params *params,
                      struct pyphi_model_sizes *sizes);
/* Allocates the cache and activations up front; *out = the model (free with pyphi_model_free). */
int pyphi_model_create(const struct pyphi_model_desc *desc, const struct pyphi_model_params *params,
                       pyphi_model **out);
void pyphi_model_free(pyphi_model *model); /* NULL is a no-op */

/* Runs tokens (n_tokens,) at positions pos .. pos + n_tokens - 1 and appends them to the cache.
 * pos <= n_past (pos < n_past first truncates the cache to pos); pos + n_tokens <= n_ctx, else
 * PYPHI_E_CONTEXT. logits (n_logits, n_vocab) float32 receives the logits of the last n_logits
 * tokens (1 <= n_logits <= n_tokens; or n_logits = 0 and logits NULL for none). The result does
 * not depend on the pool size, nor (except with PYPHI_NUMERICS_GGML) on how a sequence is split
 * into calls. */
int pyphi_model_eval(pyphi_model *model, pyphi_pool *pool, const int32_t *tokens, int64_t n_tokens,
                     int64_t pos, float *logits, int64_t n_logits);
/* Keeps the first n positions of the cache (n <= n_past), O(1); a LongRoPE factor change this
 * implies is applied by the next eval, which knows the new length. */
int pyphi_model_truncate(pyphi_model *model, int64_t n);
int64_t pyphi_model_n_past(const pyphi_model *model);
/* 1 if the cached keys are rotated with the long LongRoPE factors, else 0. */
int pyphi_model_rope_long(const pyphi_model *model);
/* How many times the cache was re-rotated or re-prefilled for a factor change (tests, stats). */
int64_t pyphi_model_rope_switches(const pyphi_model *model);
/* 1 once every packed copy (pack_weights) is complete, or if there are none; 0 while the
 * model's thread is still making them (evals give the same results either way). */
int pyphi_model_packed(const pyphi_model *model);

/* PYPHI_CDEF_END */

#if defined(PYPHI_BUILD) && defined(__GNUC__)
#pragma GCC visibility pop
#endif

#ifdef __cplusplus
}
#endif

#endif /* PYPHI_H */
