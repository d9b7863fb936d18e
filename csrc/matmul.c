/* matmul.c: the public compute entry points that take whole rows or matrices: argument checks,
 * activation quantization, and splitting the work over the thread pool.
 *
 * Determinism: every output element is one call of one kernel on one thread, with the same
 * inputs whatever the pool size, so results are bit-identical for any number of threads. How the
 * work is chunked must never change what a kernel computes for an element; a future
 * register-blocked GEMM kernel (several rows x several tokens per call) has to keep that property.
 * Not here: the kernels themselves (kernels_*.c) or the pool mechanics (threadpool.c).
 */
#include "kernels.h"
#include "pyphi.h"
#include "quants.h"
#include "threadpool.h"

#include <stdlib.h>

/* Weight bytes one chunk of output rows should cover: about a quarter of a 48 KB L1 data cache,
 * so a chunk's rows stay in L1 while every token of the batch is dotted with them. */
#define CHUNK_WEIGHT_BYTES (12 * 1024)
#define MAX_ROWS_PER_CHUNK 64
/* Values per chunk of pyphi_convert_rows: big enough to amortise the chunk fetch. */
#define CONVERT_CHUNK_VALUES (64 * 1024)

/* ---- Argument checks ------------------------------------------------------------------------ */

/* Natural alignment of a row's elements: the kernels load binary16 scales and values as
 * uint16_t and floats as float. */
static size_t type_alignment(int type) {
    return type == PYPHI_TYPE_F32 ? 4 : 2;
}

static int aligned(const void *p, size_t alignment) {
    return ((uintptr_t)p & (alignment - 1)) == 0;
}

static int overlap(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
    uintptr_t a0 = (uintptr_t)a, b0 = (uintptr_t)b;
    return a_bytes != 0 && b_bytes != 0 && a0 < b0 + b_bytes && b0 < a0 + a_bytes;
}

/* bytes = rows * row_bytes, or PYPHI_E_SHAPE if it does not fit. */
static int64_t matrix_bytes(int64_t rows, int64_t row_bytes) {
    int64_t bytes;
    if (rows < 0 || __builtin_mul_overflow(rows, row_bytes, &bytes)) {
        return PYPHI_E_SHAPE;
    }
    return bytes;
}

/* The kernel table's dot for wtype, or NULL if wtype is not a weight type we compute. */
static pyphi_vec_dot_fn dot_for(const pyphi_kernels *k, int wtype) {
    if (pyphi_type_block_values(wtype) == 0) {
        return NULL;
    }
    return k->vec_dot[wtype];
}

int pyphi_vec_dot_type(int wtype) {
    switch (wtype) {
    case PYPHI_TYPE_Q4_0:
    case PYPHI_TYPE_Q8_0:
        return PYPHI_TYPE_Q8_0;
    case PYPHI_TYPE_F32:
    case PYPHI_TYPE_F16:
    case PYPHI_TYPE_BF16:
        return PYPHI_TYPE_F32;
    default:
        return PYPHI_E_TYPE;
    }
}

/* ---- Dot product ---------------------------------------------------------------------------- */

int pyphi_vec_dot(int wtype, const void *w, const void *a, int64_t n, float *out) {
    const pyphi_kernels *k = pyphi_kernels_current();
    pyphi_vec_dot_fn dot = dot_for(k, wtype);
    if (dot == NULL) {
        return PYPHI_E_TYPE;
    }
    int atype = pyphi_vec_dot_type(wtype);
    if (pyphi_row_bytes(wtype, n) < 0 || pyphi_row_bytes(atype, n) < 0) {
        return PYPHI_E_SHAPE;
    }
    if (w == NULL || a == NULL || out == NULL || !aligned(w, type_alignment(wtype)) ||
        !aligned(a, type_alignment(atype)) || !aligned(out, sizeof(float))) {
        return PYPHI_E_ARG;
    }
    dot(n, out, w, a);
    return PYPHI_OK;
}

/* ---- Matmul --------------------------------------------------------------------------------- */

struct matmul_job {
    const pyphi_kernels *k;
    pyphi_vec_dot_fn dot;
    const float *x;      /* (n_tokens, n_in) float32 */
    const uint8_t *w;    /* (n_out, w_row_bytes) in the weight type */
    const uint8_t *act;  /* (n_tokens, act_row_bytes) in the activation type: x or scratch */
    uint8_t *act_quant;  /* scratch (n_tokens, act_row_bytes) block_q8_0, or NULL for float */
    float *y;            /* (n_tokens, n_out) float32 */
    int64_t n_out, n_in, n_tokens;
    size_t w_row_bytes, act_row_bytes;
    int64_t rows_per_chunk;
};

/* Chunk = one token: its row of x to Q8_0. */
static void quantize_activations(void *ctx, int64_t token, int thread) {
    (void)thread;
    struct matmul_job *job = ctx;
    job->k->quantize_row_q8_0(job->x + token * job->n_in,
                              job->act_quant + (size_t)token * job->act_row_bytes, job->n_in);
}

/* Chunk = a run of output rows, for every token. */
static void matmul_rows(void *ctx, int64_t chunk, int thread) {
    (void)thread;
    struct matmul_job *job = ctx;
    int64_t r0 = chunk * job->rows_per_chunk;
    int64_t r1 = r0 + job->rows_per_chunk < job->n_out ? r0 + job->rows_per_chunk : job->n_out;
    for (int64_t t = 0; t < job->n_tokens; t++) {
        const uint8_t *a = job->act + (size_t)t * job->act_row_bytes; /* (act_row_bytes,) */
        float *y = job->y + t * job->n_out;                            /* (n_out,) */
        for (int64_t r = r0; r < r1; r++) {
            job->dot(job->n_in, &y[r], job->w + (size_t)r * job->w_row_bytes, a);
        }
    }
}

int pyphi_matmul(pyphi_pool *pool, int wtype, const void *w, int64_t n_out, int64_t n_in,
                 const float *x, int64_t n_tokens, float *y) {
    const pyphi_kernels *k = pyphi_kernels_current();
    pyphi_vec_dot_fn dot = dot_for(k, wtype);
    if (dot == NULL) {
        return PYPHI_E_TYPE;
    }
    int atype = pyphi_vec_dot_type(wtype);
    int64_t w_row_bytes = pyphi_row_bytes(wtype, n_in);
    int64_t act_row_bytes = pyphi_row_bytes(atype, n_in);
    if (w_row_bytes < 0 || act_row_bytes < 0 || pyphi_row_bytes(PYPHI_TYPE_F32, n_in) < 0) {
        return PYPHI_E_SHAPE;
    }
    int64_t w_bytes = matrix_bytes(n_out, w_row_bytes);
    int64_t x_bytes = matrix_bytes(n_tokens, pyphi_row_bytes(PYPHI_TYPE_F32, n_in));
    int64_t act_bytes = matrix_bytes(n_tokens, act_row_bytes);
    int64_t y_bytes = matrix_bytes(n_tokens, n_out);
    if (w_bytes < 0 || x_bytes < 0 || act_bytes < 0 || y_bytes < 0 ||
        __builtin_mul_overflow(y_bytes, (int64_t)sizeof(float), &y_bytes)) {
        return PYPHI_E_SHAPE;
    }
    if (w == NULL || x == NULL || y == NULL || !aligned(w, type_alignment(wtype)) ||
        !aligned(x, sizeof(float)) || !aligned(y, sizeof(float)) ||
        overlap(y, (size_t)y_bytes, x, (size_t)x_bytes) ||
        overlap(y, (size_t)y_bytes, w, (size_t)w_bytes)) {
        return PYPHI_E_ARG;
    }
    if (n_out == 0 || n_tokens == 0) {
        return PYPHI_OK;
    }

    struct matmul_job job = {
        .k = k,
        .dot = dot,
        .x = x,
        .w = w,
        .act = (const uint8_t *)x,
        .act_quant = NULL,
        .y = y,
        .n_out = n_out,
        .n_in = n_in,
        .n_tokens = n_tokens,
        .w_row_bytes = (size_t)w_row_bytes,
        .act_row_bytes = (size_t)act_row_bytes,
    };
    int64_t rows = CHUNK_WEIGHT_BYTES / (w_row_bytes > 0 ? w_row_bytes : 1);
    job.rows_per_chunk = rows < 1 ? 1 : rows > MAX_ROWS_PER_CHUNK ? MAX_ROWS_PER_CHUNK : rows;

    if (atype == PYPHI_TYPE_Q8_0) {
        /* quantize each row of x once; every output row of the batch then reuses it */
        job.act_quant = malloc(act_bytes > 0 ? (size_t)act_bytes : 1);
        if (job.act_quant == NULL) {
            return PYPHI_E_NOMEM;
        }
        job.act = job.act_quant;
        pyphi_pool_run(pool, quantize_activations, &job, n_tokens);
    }
    int64_t n_chunks = (n_out + job.rows_per_chunk - 1) / job.rows_per_chunk;
    pyphi_pool_run(pool, matmul_rows, &job, n_chunks);
    free(job.act_quant);
    return PYPHI_OK;
}

/* ---- Row conversion --------------------------------------------------------------------------- */

struct convert_job {
    int src_type, dst_type;
    const uint8_t *src;  /* (n_rows, src_row_bytes) */
    uint8_t *dst;        /* (n_rows, dst_row_bytes) */
    float *scratch;      /* (pool size, n) float32: one row per thread */
    int64_t n, n_rows, rows_per_chunk;
    size_t src_row_bytes, dst_row_bytes;
};

static void convert_chunk(void *ctx, int64_t chunk, int thread) {
    struct convert_job *job = ctx;
    float *tmp = job->scratch + (size_t)thread * (size_t)job->n; /* (n,) */
    int64_t r0 = chunk * job->rows_per_chunk;
    int64_t r1 = r0 + job->rows_per_chunk < job->n_rows ? r0 + job->rows_per_chunk : job->n_rows;
    for (int64_t r = r0; r < r1; r++) {
        /* arguments were checked once by pyphi_convert_rows; these cannot fail */
        pyphi_dequantize_row(job->src_type, job->src + (size_t)r * job->src_row_bytes, tmp, job->n);
        pyphi_quantize_row(job->dst_type, tmp, job->dst + (size_t)r * job->dst_row_bytes, job->n);
    }
}

int pyphi_convert_rows(pyphi_pool *pool, int src_type, const void *src, int dst_type, void *dst,
                       int64_t n_rows, int64_t n) {
    int64_t src_row_bytes = pyphi_row_bytes(src_type, n);
    int64_t dst_row_bytes = pyphi_row_bytes(dst_type, n);
    if (src_row_bytes == PYPHI_E_TYPE || dst_row_bytes == PYPHI_E_TYPE) {
        return PYPHI_E_TYPE;
    }
    if (src_row_bytes < 0 || dst_row_bytes < 0) {
        return PYPHI_E_SHAPE;
    }
    int64_t src_bytes = matrix_bytes(n_rows, src_row_bytes);
    int64_t dst_bytes = matrix_bytes(n_rows, dst_row_bytes);
    int64_t scratch_values = matrix_bytes(pyphi_pool_size(pool), n);
    if (src_bytes < 0 || dst_bytes < 0 || scratch_values < 0 ||
        matrix_bytes(scratch_values, sizeof(float)) < 0) {
        return PYPHI_E_SHAPE;
    }
    if (src == NULL || dst == NULL || !aligned(src, type_alignment(src_type)) ||
        !aligned(dst, type_alignment(dst_type)) ||
        overlap(src, (size_t)src_bytes, dst, (size_t)dst_bytes)) {
        return PYPHI_E_ARG;
    }
    if (n_rows == 0 || n == 0) {
        return PYPHI_OK;
    }
    struct convert_job job = {
        .src_type = src_type,
        .dst_type = dst_type,
        .src = src,
        .dst = dst,
        .n = n,
        .n_rows = n_rows,
        .rows_per_chunk = n >= CONVERT_CHUNK_VALUES ? 1 : CONVERT_CHUNK_VALUES / n,
        .src_row_bytes = (size_t)src_row_bytes,
        .dst_row_bytes = (size_t)dst_row_bytes,
    };
    job.scratch = malloc((size_t)scratch_values * sizeof(float));
    if (job.scratch == NULL) {
        return PYPHI_E_NOMEM;
    }
    pyphi_pool_run(pool, convert_chunk, &job, (n_rows + job.rows_per_chunk - 1) / job.rows_per_chunk);
    free(job.scratch);
    return PYPHI_OK;
}
