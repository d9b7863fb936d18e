/* kernels.h: the table of compute kernels one instruction set provides, and how to get one.
 *
 * Internal to libpyphi. Each kernels_<isa>.c file is compiled with its own flags and defines one
 * const table; dispatch.c picks the table at run time. Every entry of every SIMD table computes
 * what the same entry of pyphi_kernels_scalar defines (kernels_scalar.c): bit for bit where the
 * arithmetic is integer or exact, up to float summation order otherwise (see each entry).
 * Not here: argument checking and threading (matmul.c), block layouts (quants.h).
 */
#ifndef PYPHI_KERNELS_H
#define PYPHI_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* The per-type arrays are indexed by ggml type id; the ids we compute are all below this. */
#define PYPHI_TYPE_ID_LIMIT 31

/* *s = sum over i of w[i] * a[i].
 * w: one row of n values in the weight type; a: one row of n values in the activation type
 * (pyphi_vec_dot_type: block_q8_0 for Q4_0/Q5_0/Q8_0 weights, block_q8_1 for Q4_1/Q5_1,
 * float32 for F32/F16 weights, bfloat16 for BF16 weights, as in ggml: the activations are
 * rounded to bfloat16 (pyphi_quantize_row_bf16), which lets AVX512_BF16's vdpbf16ps take 32
 * products per instruction; a product of two bfloat16 numbers is exact in binary32).
 * n: values, a multiple of the weight type's block (callers check). No alignment is required.
 * Quantized types: each block's dot is an exact int32, scaled by d_w * d_a (that product of two
 * binary16 numbers is exact in binary32) and summed in float, as ggml does; summation order is
 * each ISA's own. Float types: products and sums in float32, order again each ISA's own.
 * Error bound, for every ISA (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed.,
 * sec. 3.1): |*s - exact dot of the decoded values| <= gamma(k) * sum |w[i] * a[i]|, with
 * gamma(k) = k u / (1 - k u), u = 2^-24 and k = m + 10, where m is the number of terms (n for
 * float types, the number of blocks for quantized ones). A term is rounded once when formed (a
 * block's int32 sum is exact and d_w * d_a is exact, so only their product rounds; a fused
 * multiply-add rounds product and sum once) and once per addition on its way to the result;
 * the longest such path is the m - 1 sequential additions of the scalar twin, or in the SIMD
 * versions m / lanes per lane plus at most 10 more (remainder loops, combining the accumulators,
 * the horizontal reduction of up to 16 lanes).
 * Weights with a minimum (Q4_1, Q5_1; activations Q8_1) follow ggml: a block's term is
 * (d_w d_a) isum + m_w s_a, isum over the unsigned codes q_j and s_a the activation block's
 * stored sum (an operand: it only approximates d_a sum a_j, so "exact" here means the sum of
 * these terms in exact arithmetic). m_w s_a is exact in binary32 too, but adding it rounds once
 * more, so for them k = m + 11 and sum |w[i] * a[i]| becomes
 * sum over blocks of |d_w d_a| sum_j |q_j a_j| + |m_w s_a|.
 * BF16 with AVX512_BF16 (the avx512bf16 table): vdpbf16ps adds each lane's two exact products
 * one after the other, rounding each sum to nearest even (Intel SDM, VDPBF16PS), so the bound
 * above holds as for an FMA; it also treats subnormal inputs as zero and flushes subnormal sums
 * to zero, which adds at most |w[i] a[i]| per subnormal operand and 2^-126 per addition (no
 * such values in real weights and activations, nor in the tests).
 * The K-quants (Q4_K/Q5_K/Q6_K x Q8_K) scale per 256-value super-block with d_a a full
 * binary32: their order and bound are stated with their scalar twins in kernels_scalar.c.
 * The NEON tables' quantized dots (every type, K-quants included) form the same exact integer
 * sums per block, then the scalar twin's float operations in its order: its bits (kernels_neon.h). */
typedef void (*pyphi_vec_dot_fn)(int64_t n, float *s, const void *w, const void *a);

/* x: (n,) float32 -> y: a row of n values in one activation type (Q8_0, Q8_1, Q8_K); n a multiple
 * of its block. Every ISA's version is bit-identical to the scalar codec of quants.c (for Q8_0,
 * pyphi_quantize_row_q8_0, i.e. gguf.quants.quantize). */
typedef void (*pyphi_quantize_fn)(const float *x, void *y, int64_t n);

/* A tile of the matmul: for r < n_rows and t < n_tok,
 *   y[t * y_stride + r] = vec_dot(n, w + r * w_stride, a + t * a_stride)
 * with the vec_dot entry of the same table and type, bit for bit. So every output element is the
 * same arithmetic however the matmul is cut into tiles, chunks and threads, and a decode step
 * (one token) gives what a prefill computes for that token. A blocked kernel only shares loads:
 * each weight block is unpacked once for several tokens and each activation block once for
 * several rows, with one accumulator per (row, token) doing exactly the dot's operations.
 * w: n_rows rows of n values in the weight type, w_stride bytes apart; a: n_tok rows in the
 * activation type, a_stride bytes apart; y: float32, row t of the output at y + t * y_stride
 * (elements). y must not overlap w or a. Tables without a blocked kernel for a type fill the
 * entry with the plain loop over their own vec_dot (PYPHI_DEFINE_GEMM_BY_DOT). */
typedef void (*pyphi_gemm_fn)(int64_t n, int64_t n_rows, int64_t n_tok, const void *w,
                              size_t w_stride, const void *a, size_t a_stride, float *y,
                              int64_t y_stride);

/* Defines NAME as the reference tile: one DOT call per (row, token), tokens outer. */
#define PYPHI_DEFINE_GEMM_BY_DOT(NAME, DOT)                                                        \
    static void NAME(int64_t n, int64_t n_rows, int64_t n_tok, const void *w, size_t w_stride,   \
                     const void *a, size_t a_stride, float *y, int64_t y_stride) {               \
        for (int64_t t = 0; t < n_tok; t++) {                                                     \
            const unsigned char *at = (const unsigned char *)a + (size_t)t * a_stride;            \
            for (int64_t r = 0; r < n_rows; r++) {                                                \
                DOT(n, &y[t * y_stride + r], (const unsigned char *)w + (size_t)r * w_stride, at); \
            }                                                                                     \
        }                                                                                         \
    }

/* The same product for weights in the packed layout (quants.h, PYPHI_PACK_ROWS rows interleaved
 * per block), which lets one SIMD lane hold one output row: for each group g < n_groups, each of
 * its 16 rows i and each token t < n_tok,
 *   y[t * y_stride + 16 g + i] = sum over blocks b, in order, of  (float)isum * (d_w * d_a)
 * with isum the exact int32 block dot of the decoded codes, each product rounded once and each
 * sum rounded once (no fused multiply-add). That is the scalar vec_dot's arithmetic
 * (pyphi_vec_dot_q*_0_q8_0_scalar) exactly, so every ISA gives the scalar twin's bits, whatever
 * the tiling or thread count. w: n_groups packed groups of n values per row, one after another;
 * a: n_tok rows of n / 32 block_q8_0, a_stride bytes apart; a_sums: (n_tok, n / 32) int32, the
 * sum of each activation block's 32 codes (the weight codes are stored biased to unsigned, and
 * bias * a_sum undoes that exactly). n: a multiple of 32. */
typedef void (*pyphi_gemm_packed_fn)(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                     const void *a, size_t a_stride, const int32_t *a_sums,
                                     float *y, int64_t y_stride);

/* The packed product, bit for bit, with the weights in ggml's layout: n_rows (a multiple of
 * PYPHI_PACK_ROWS) Q4_0 or Q8_0 rows w_stride bytes apart, the rest as pyphi_gemm_packed_fn. What
 * a model computes with until its packed copy is made. Scalar twin: the scalar gemm, one vec_dot
 * per (row, token), a_sums unused. */
typedef void (*pyphi_gemm_lanes_fn)(int64_t n, int64_t n_rows, int64_t n_tok, const void *w,
                                    size_t w_stride, const void *a, size_t a_stride,
                                    const int32_t *a_sums, float *y, int64_t y_stride);

/* x (n,) <- softmax(scale * x): x[i] = scale * x[i] (rounded), m = their maximum, e[i] =
 * pyphi_exp(x[i] - m), s = the sum of e in the fixed order below, x[i] = e[i] * (1 / s).
 * Every ISA computes exactly this, bit for bit: pyphi_exp is one sequence of roundings and fused
 * multiply-adds per value, the same in every lane, and the sum is 16 partial sums (value i goes
 * to partial sum i mod 16, in index order) combined as p[j] + p[j + 8], then + 4, + 2, + 1, the
 * lane order of a 512-bit register or two 256-bit ones.
 * pyphi_exp(x), x <= 0 (kernels_scalar.c): x = n ln2 + r, |r| <= ln2 / 2, n = round(x log2 e);
 * r by Cody and Waite's two-step reduction (exact steps with FMA); e^r by its degree-7 Taylor
 * polynomial in Horner form with FMA (truncation below 2^-27 relative on that interval); times
 * 2^n. Error: within 2 ulp of exp(x) for x >= ln(2^-126) (measured max 0.94 ulp over every
 * float32 in [-87.3, 0]; tests/test_kernels.py checks 2 ulp); 0 below (where expf returns a
 * subnormal: absolute error < 2^-126). NaN in, NaN out. n >= 1. */
typedef void (*pyphi_softmax_fn)(float *x, int64_t n, float scale);

/* Attention's scores . values: for q < n_q and i < n,
 *   out[q * out_stride + i] = sum over rows j = 0, 1, ..., n_rows - 1, in that order, of
 *                              p[q * p_stride + j] * v_j[i]
 * as s = s + p * v from s = 0, the product and the sum each rounded to float32 (no fused
 * multiply-add). Each output is one lane's own sequence of those operations, so every ISA gives
 * the scalar twin's bits. Error (Higham sec. 3.1, as for the dots): within gamma(n_rows + 1) of
 * sum over j of |p_j v_j[i]|. v: n_rows rows of n values in the cache type (F16 or F32), v_stride
 * bytes apart, read one after the other (one stream for the hardware prefetcher); p: float32;
 * out must not overlap v or p. */
typedef void (*pyphi_weighted_rows_fn)(int64_t n, int64_t n_rows, int64_t n_q, const void *v,
                                       size_t v_stride, const float *p, int64_t p_stride,
                                       float *out, int64_t out_stride);

/* pyphi_exp's constants, shared so every ISA rounds the same numbers: ln(2^-126); log2 e; ln 2
 * split into 0.693359375 (9 significant bits, so n * LN2_HI is exact for |n| <= 126) and the
 * rest; 1 / k! for k = 2..7 (rounded to float32). */
#define PYPHI_EXP_MIN (-87.33654475f)
#define PYPHI_EXP_LOG2E 1.44269504f
#define PYPHI_EXP_LN2_HI 0.693359375f
#define PYPHI_EXP_LN2_LO (-2.12194440e-4f)
#define PYPHI_EXP_C2 0.5f
#define PYPHI_EXP_C3 1.66666672e-1f
#define PYPHI_EXP_C4 4.16666679e-2f
#define PYPHI_EXP_C5 8.33333377e-3f
#define PYPHI_EXP_C6 1.38888892e-3f
#define PYPHI_EXP_C7 1.98412701e-4f

typedef struct pyphi_kernels {
    int isa;                                      /* enum pyphi_isa */
    int base; /* the ISA whose completed table fills this one's gaps (below isa; 0: scalar) */
    pyphi_vec_dot_fn vec_dot[PYPHI_TYPE_ID_LIMIT]; /* by weight type; NULL: type not computed */
    pyphi_gemm_fn gemm[PYPHI_TYPE_ID_LIMIT];       /* by weight type; set wherever vec_dot is */
    pyphi_gemm_packed_fn gemm_packed[PYPHI_TYPE_ID_LIMIT]; /* Q4_0 and Q8_0 only */
    pyphi_gemm_lanes_fn gemm_lanes[PYPHI_TYPE_ID_LIMIT];   /* Q4_0 and Q8_0 only */
    pyphi_quantize_fn quantize_act[PYPHI_TYPE_ID_LIMIT];   /* by activation type (pyphi_vec_dot_type) */
    pyphi_softmax_fn softmax; /* attention's scores */
    pyphi_weighted_rows_fn weighted_rows[PYPHI_TYPE_ID_LIMIT]; /* F16 and F32 (the cache types) */
} pyphi_kernels;

/* A SIMD table may leave any entry NULL: dispatch.c fills it from its base's completed table,
 * which is pyphi_kernels_scalar unless the table names another (a NULL vec_dot takes the base's
 * vec_dot and gemm together), so a new format can land with its scalar twin first and gain SIMD
 * kernels one ISA at a time, and an extension table (avx512bf16 on avx512) holds only what the
 * extension changes. pyphi_kernels_current never has a NULL entry where the scalar table has one. */

extern const pyphi_kernels pyphi_kernels_scalar;
/* Only in x86-64 builds; reached through pyphi_isa_kernels (cpu_x86.c). */
extern const pyphi_kernels pyphi_kernels_avx2;
extern const pyphi_kernels pyphi_kernels_avx512;
extern const pyphi_kernels pyphi_kernels_avx512bf16;
/* Only in AArch64 builds; reached through pyphi_isa_kernels (cpu_arm.c). */
extern const pyphi_kernels pyphi_kernels_neon;
extern const pyphi_kernels pyphi_kernels_neon_dotprod;

/* The scalar twins (kernels_scalar.c): the definitions every ISA's vec_dot entry follows, named
 * here so that later kernels (e.g. a blocked GEMM's reference) can be written in terms of them. */
void pyphi_vec_dot_f32_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_f16_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_bf16_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q8_0_q8_0_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q4_0_q8_0_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q5_0_q8_0_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q4_1_q8_1_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q5_1_q8_1_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q4_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q5_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q6_K_q8_K_scalar(int64_t n, float *s, const void *w, const void *a);
void pyphi_weighted_rows_f32_scalar(int64_t n, int64_t n_rows, int64_t n_q, const void *v,
                                    size_t v_stride, const float *p, int64_t p_stride, float *out,
                                    int64_t out_stride);
void pyphi_weighted_rows_f16_scalar(int64_t n, int64_t n_rows, int64_t n_q, const void *v,
                                    size_t v_stride, const float *p, int64_t p_stride, float *out,
                                    int64_t out_stride);
void pyphi_gemm_packed_q8_0_scalar(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride);
void pyphi_gemm_packed_q4_0_scalar(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride);

/* The K-quant kernels of the x86 tables, in their own files (kernels_avx512_k.c,
 * kernels_avx2_k.c) with their table's flags. */
void pyphi_vec_dot_q4_K_q8_K_avx512(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q5_K_q8_K_avx512(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q6_K_q8_K_avx512(int64_t n, float *s, const void *w, const void *a);
void pyphi_gemm_q4_K_q8_K_avx512(int64_t n, int64_t n_rows, int64_t n_tok, const void *w, size_t w_stride,
                                 const void *a, size_t a_stride, float *y, int64_t y_stride);
void pyphi_gemm_q5_K_q8_K_avx512(int64_t n, int64_t n_rows, int64_t n_tok, const void *w, size_t w_stride,
                                 const void *a, size_t a_stride, float *y, int64_t y_stride);
void pyphi_gemm_q6_K_q8_K_avx512(int64_t n, int64_t n_rows, int64_t n_tok, const void *w, size_t w_stride,
                                 const void *a, size_t a_stride, float *y, int64_t y_stride);
void pyphi_quantize_row_q8_K_avx512(const float *x, void *y, int64_t n);
void pyphi_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q5_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a);
void pyphi_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *w, const void *a);
void pyphi_gemm_q4_K_q8_K_avx2(int64_t n, int64_t n_rows, int64_t n_tok, const void *w, size_t w_stride,
                               const void *a, size_t a_stride, float *y, int64_t y_stride);
void pyphi_gemm_q5_K_q8_K_avx2(int64_t n, int64_t n_rows, int64_t n_tok, const void *w, size_t w_stride,
                               const void *a, size_t a_stride, float *y, int64_t y_stride);
void pyphi_gemm_q6_K_q8_K_avx2(int64_t n, int64_t n_rows, int64_t n_tok, const void *w, size_t w_stride,
                               const void *a, size_t a_stride, float *y, int64_t y_stride);
void pyphi_quantize_row_q8_K_avx2(const float *x, void *y, int64_t n);
/* The K-quants' packed tiles (pyphi_gemm_packed_fn with a = Q8_K rows and a_sums unused): Q4_K's
 * and Q6_K's (16 rows, one lane each) give the scalar vec_dot's bits on every ISA, as Q4_0/Q8_0's
 * do; Q5_K's (4 rows interleaved) give their own table's vec_dot's bits. */
void pyphi_gemm_packed_q4_K_scalar(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride);
void pyphi_gemm_packed_q5_K_scalar(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride);
void pyphi_gemm_packed_q6_K_scalar(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride);
void pyphi_gemm_packed_q5_K_avx2(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride);
void pyphi_gemm_packed_q4_K_avx512(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride);
void pyphi_gemm_packed_q5_K_avx512(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride);
void pyphi_gemm_packed_q6_K_avx512(int64_t n, int64_t n_groups, int64_t n_tok, const void *w,
                                   const void *a, size_t a_stride, const int32_t *a_sums,
                                   float *y, int64_t y_stride);

/* ---- Selection --------------------------------------------------------------------------- */

/* dispatch.c: the table in use now (chosen once, on first use, unless pyphi_isa_set changed it). */
const pyphi_kernels *pyphi_kernels_current(void);

/* cpu_x86.c on x86-64, cpu_arm.c on AArch64, cpu_generic.c elsewhere: what this architecture's
 * build offers. */
uint32_t pyphi_cpu_detect(void);                 /* pyphi_cpu_feature bits, OS support included */
const pyphi_kernels *pyphi_isa_kernels(int isa); /* the table built for isa, or NULL */
uint32_t pyphi_isa_requires(int isa);            /* feature bits the table needs to run */

/* Asks for the cache lines of [addr, addr + bytes) to be loaded into cache: a kernel streaming
 * weights from memory names the bytes it will read a little further on (kernels_avx512*.c say
 * how far and what it gained). The address is an integer, since near the end of the weights it
 * points past them, where a prefetch may reach but C pointer arithmetic may not. */
static inline void pyphi_prefetch(uintptr_t addr, size_t bytes) {
    for (size_t o = 0; o < bytes; o += 64) {
        __builtin_prefetch((const void *)(addr + o), 0, 3);
    }
}

#endif /* PYPHI_KERNELS_H */
