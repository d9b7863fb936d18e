/* matmul.c: the public compute entry points that take whole rows or matrices: argument checks,
 * activation quantization, and splitting the work over the thread pool.
 *
 * Determinism: every output element is the current ISA's vec_dot of its row and token, bit for
 * bit, whichever tile (kernels.h, pyphi_gemm_fn) and thread computes it, so results are
 * bit-identical for any number of threads and any batch split.
 * Not here: the kernels themselves (kernels_*.c) or the pool mechanics (threadpool.c).
 */
#include "kernels.h"
#include "pyphi.h"
#include "quants.h"
#include "threadpool.h"

#include <stdlib.h>

/* Weight bytes one chunk of output rows should cover: about a third of a 1 MB L2 cache. The
 * blocked kernels keep one tile of tokens' activations in L1 while the chunk's rows pass, so the
 * rows come from L2 once per token tile. (Sized for L1 instead, which a BF16 row of 3072 fills
 * at 8 rows, the activations of every token streamed from L3 once per chunk: a 3072 x 8192 BF16
 * matmul of 512 tokens ran at 270 GFLOP/s on a Zen 5 core against 340 now.) */
#define CHUNK_WEIGHT_BYTES (384 * 1024)
#define MAX_ROWS_PER_CHUNK 64
/* A single token reuses no weight, so its chunks are sized for the weight stream instead: each
 * thread's share in this many long runs of consecutive rows, which the hardware prefetchers
 * follow with few restarts, while a thread that falls behind (a busy core, a slower one) still
 * leaves chunks to the others. On a 2-core Zen 5 VM, against 64-row chunks (every 110-384 KB
 * the two threads' streams crossed), the full-size Q4_0 model decoded 7-15% faster on 2
 * threads (4 of 4 alternated runs) and BF16 4-30% (3 of 4). */
#define DECODE_CHUNKS_PER_THREAD 4
/* Chunks hold whole tiles of the blocked kernels (8 rows for one token, 4 for a batch). */
#define ROWS_MULTIPLE 8
/* Values per chunk of pyphi_convert_rows: big enough to amortise the chunk fetch. */
#define CONVERT_CHUNK_VALUES (64 * 1024)

/* Units (rows, or packed groups of rows) per chunk of a single token's product of n units: at
 * least 1, which an empty product (n = 0) divides by. */
static int64_t decode_chunk(int64_t n, const pyphi_pool *pool) {
    int64_t chunks = (int64_t)DECODE_CHUNKS_PER_THREAD * pyphi_pool_size(pool);
    return n > chunks ? (n + chunks - 1) / chunks : 1;
}

/* ---- Argument checks ------------------------------------------------------------------------ */

/* Natural alignment of a row's elements: the kernels load binary16 scales and values as
 * uint16_t and floats (F32 values, Q8_K's scale) as float. */
static size_t type_alignment(int type) {
    return type == PYPHI_TYPE_F32 || type == PYPHI_TYPE_Q8_K ? 4 : 2;
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
    if (pyphi_vec_dot_type(wtype) < 0) {
        return NULL;
    }
    return k->vec_dot[wtype];
}

int pyphi_vec_dot_type(int wtype) {
    if (pyphi_type_block_values(wtype) == 0) {
        return PYPHI_E_TYPE; /* a type this build does not store */
    }
    switch (wtype) {
    case PYPHI_TYPE_F32:
    case PYPHI_TYPE_F16:
        return PYPHI_TYPE_F32;
    case PYPHI_TYPE_BF16:
        return PYPHI_TYPE_BF16; /* ggml's vec_dot_type too: AVX512_BF16 dots pairs of bf16 */
    case PYPHI_TYPE_Q4_0:
    case PYPHI_TYPE_Q5_0:
    case PYPHI_TYPE_Q8_0:
        return PYPHI_TYPE_Q8_0;
    case PYPHI_TYPE_Q4_1:
    case PYPHI_TYPE_Q5_1:
        return PYPHI_TYPE_Q8_1;
    case PYPHI_TYPE_Q4_K:
    case PYPHI_TYPE_Q5_K:
    case PYPHI_TYPE_Q6_K:
        return PYPHI_TYPE_Q8_K;
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

/* ---- Softmax -------------------------------------------------------------------------------- */

int pyphi_softmax(float *x, int64_t n, float scale) {
    if (x == NULL || n < 1 || !aligned(x, sizeof(float))) {
        return PYPHI_E_ARG;
    }
    pyphi_kernels_current()->softmax(x, n, scale);
    return PYPHI_OK;
}

int pyphi_weighted_rows(int vtype, const void *v, int64_t n_rows, int64_t n, const float *p,
                        int64_t n_q, float *out) {
    if (vtype != PYPHI_TYPE_F16 && vtype != PYPHI_TYPE_F32) {
        return PYPHI_E_TYPE;
    }
    size_t elem = vtype == PYPHI_TYPE_F32 ? sizeof(float) : sizeof(uint16_t);
    int64_t v_bytes, p_floats, out_floats;
    if (v == NULL || p == NULL || out == NULL || n_rows < 1 || n < 1 || n_q < 1 ||
        !aligned(v, elem) || !aligned(p, sizeof(float)) || !aligned(out, sizeof(float)) ||
        __builtin_mul_overflow(n_rows, n, &v_bytes) ||
        __builtin_mul_overflow(v_bytes, (int64_t)elem, &v_bytes) ||
        __builtin_mul_overflow(n_q, n_rows, &p_floats) || p_floats > INT64_MAX / 4 ||
        __builtin_mul_overflow(n_q, n, &out_floats) || out_floats > INT64_MAX / 4) {
        return PYPHI_E_ARG;
    }
    size_t out_bytes = (size_t)out_floats * sizeof(float);
    if (overlap(out, out_bytes, v, (size_t)v_bytes) ||
        overlap(out, out_bytes, p, (size_t)p_floats * sizeof(float))) {
        return PYPHI_E_ARG;
    }
    pyphi_kernels_current()->weighted_rows[vtype](n, n_rows, n_q, v, (size_t)n * elem, p, n_rows,
                                                  out, n);
    return PYPHI_OK;
}

/* ---- Matmul --------------------------------------------------------------------------------- */

struct matmul_job {
    const pyphi_kernels *k;
    pyphi_gemm_fn gemm;
    const float *x;      /* (n_tokens, n_in) float32 */
    const uint8_t *w;    /* (n_out, w_row_bytes) in the weight type */
    const uint8_t *act;  /* (n_tokens, act_row_bytes) in the activation type: x or scratch */
    pyphi_quantize_fn quantize; /* float32 -> the activation type, or NULL for float32 */
    uint8_t *act_quant;  /* scratch (n_tokens, act_row_bytes) in the activation type, or NULL */
    float *y;            /* (n_tokens, n_out) float32 */
    int64_t n_out, n_in, n_tokens;
    size_t w_row_bytes, act_row_bytes;
    int64_t rows_per_chunk;
};

/* Chunk = one token: its row of x to the activation type. */
static void quantize_activations(void *ctx, int64_t token, int thread) {
    (void)thread;
    struct matmul_job *job = ctx;
    job->quantize(job->x + token * job->n_in,
                              job->act_quant + (size_t)token * job->act_row_bytes, job->n_in);
}

/* Chunk = a run of output rows, for every token: one tile call (kernels.h), which blocks the
 * rows and tokens for the ISA. */
static void matmul_rows(void *ctx, int64_t chunk, int thread) {
    (void)thread;
    struct matmul_job *job = ctx;
    int64_t r0 = chunk * job->rows_per_chunk;
    int64_t r1 = r0 + job->rows_per_chunk < job->n_out ? r0 + job->rows_per_chunk : job->n_out;
    job->gemm(job->n_in, r1 - r0, job->n_tokens, job->w + (size_t)r0 * job->w_row_bytes,
              job->w_row_bytes, job->act, job->act_row_bytes, job->y + r0, job->n_out);
}

int pyphi_matmul(pyphi_pool *pool, int wtype, const void *w, int64_t n_out, int64_t n_in,
                 const float *x, int64_t n_tokens, float *y) {
    const pyphi_kernels *k = pyphi_kernels_current();
    if (dot_for(k, wtype) == NULL) {
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
        .gemm = k->gemm[wtype],
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
    int64_t rows = CHUNK_WEIGHT_BYTES / (w_row_bytes > 0 ? w_row_bytes : 1) / ROWS_MULTIPLE * ROWS_MULTIPLE;
    job.rows_per_chunk = n_tokens == 1
                             ? (decode_chunk(n_out, pool) + ROWS_MULTIPLE - 1) / ROWS_MULTIPLE * ROWS_MULTIPLE
                         : rows < ROWS_MULTIPLE ? ROWS_MULTIPLE
                         : rows > MAX_ROWS_PER_CHUNK ? MAX_ROWS_PER_CHUNK
                                                    : rows;

    if (atype != PYPHI_TYPE_F32) {
        /* quantize each row of x once; every output row of the batch then reuses it */
        job.quantize = k->quantize_act[atype];
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

/* ---- Matmul over packed weights --------------------------------------------------------------- */

/* A batch's chunk is PACKED_CHUNK_ROWS rows (whole groups) x PACKED_CHUNK_TOKENS tokens: about
 * 110 KB of Q4_0 weights (n_in 3072) and 200 KB of activations, both L2-resident while the chunk
 * runs. A single token's chunks are decode_chunk's long runs of groups instead. */
#define PACKED_CHUNK_ROWS 64
#define PACKED_CHUNK_TOKENS 64

struct packed_job {
    const pyphi_kernels *k;
    pyphi_gemm_packed_fn gemm;
    pyphi_gemm_lanes_fn lanes; /* w in ggml's layout, a type with a lanes kernel; else NULL */
    int wtype;
    const float *x;      /* (n_tokens, n_in) float32 */
    const uint8_t *w;    /* (n_groups, group_bytes) packed, or in ggml's layout to repack */
    int atype;           /* activation type: Q8_0, or Q8_K for the K-quants */
    uint8_t *act;        /* (n_tokens, act_row_bytes) in atype */
    int32_t *sums;       /* Q8_0: (n_tokens, n_in / 32) code sums of act's blocks; else NULL */
    uint8_t *group_scratch; /* repacking: (pool size, group_bytes), one packed group per thread */
    float *y;            /* (n_tokens, n_out) */
    int64_t n_out, n_in, n_tokens, n_groups, group_rows, chunk_groups, group_chunks;
    size_t group_bytes, act_row_bytes;
};

/* Rows per packed group (quants.h): 16 for Q4_0/Q8_0/Q4_K/Q6_K, 4 for Q5_K; 0 if not packable. */
static int64_t pack_group_rows(int wtype) {
    switch (wtype) {
    case PYPHI_TYPE_Q4_0:
    case PYPHI_TYPE_Q8_0:
    case PYPHI_TYPE_Q4_K:
    case PYPHI_TYPE_Q6_K:
        return PYPHI_PACK_ROWS;
    case PYPHI_TYPE_Q5_K:
        return PYPHI_PACK_ROWS_K;
    default:
        return 0;
    }
}

int64_t pyphi_packed_bytes(int wtype, int64_t n_out, int64_t n_in) {
    int64_t group_rows = pack_group_rows(wtype);
    if (group_rows == 0) {
        return PYPHI_E_TYPE;
    }
    int64_t row_bytes = pyphi_row_bytes(wtype, n_in);
    if (row_bytes < 0 || n_out < 0 || n_out % group_rows != 0) {
        return PYPHI_E_SHAPE;
    }
    return matrix_bytes(n_out, row_bytes);
}

int pyphi_pack_matrix(int wtype, const void *w, int64_t n_out, int64_t n_in, void *dst) {
    int64_t bytes = pyphi_packed_bytes(wtype, n_out, n_in);
    if (bytes < 0) {
        return (int)bytes;
    }
    if (w == NULL || dst == NULL || overlap(w, (size_t)bytes, dst, (size_t)bytes)) {
        return PYPHI_E_ARG;
    }
    pyphi_pack_rows(wtype, w, n_out, n_in, dst);
    return PYPHI_OK;
}

/* Chunk = one token: its row of x to the activation type, and for Q8_0 each block's code sum. */
static void quantize_packed_activations(void *ctx, int64_t token, int thread) {
    (void)thread;
    struct packed_job *job = ctx;
    const block_q8_0 *a = (const block_q8_0 *)(job->act + (size_t)token * job->act_row_bytes);
    job->k->quantize_act[job->atype](job->x + token * job->n_in, (void *)a, job->n_in);
    if (job->sums == NULL) {
        return;
    }
    int64_t nb = job->n_in / PYPHI_QK8_0;
    for (int64_t b = 0; b < nb; b++) {
        int32_t s = 0;
        for (int j = 0; j < PYPHI_QK8_0; j++) {
            s += a[b].qs[j];
        }
        job->sums[token * nb + b] = s;
    }
}

static void matmul_packed_chunk(void *ctx, int64_t chunk, int thread) {
    (void)thread;
    struct packed_job *job = ctx;
    int64_t g0 = chunk % job->group_chunks * job->chunk_groups;
    int64_t t0 = chunk / job->group_chunks * PACKED_CHUNK_TOKENS;
    int64_t ng = job->n_groups - g0 < job->chunk_groups ? job->n_groups - g0 : job->chunk_groups;
    int64_t nt = job->n_tokens - t0 < PACKED_CHUNK_TOKENS ? job->n_tokens - t0 : PACKED_CHUNK_TOKENS;
    const uint8_t *w = job->w + (size_t)g0 * job->group_bytes; /* the same in either layout */
    const uint8_t *at = job->act + (size_t)t0 * job->act_row_bytes;
    const int32_t *st = job->sums != NULL ? job->sums + t0 * (job->n_in / PYPHI_QK8_0) : NULL;
    float *yt = job->y + t0 * job->n_out + g0 * job->group_rows;
    if (job->lanes != NULL) {
        job->lanes(job->n_in, ng * job->group_rows, nt, w, job->group_bytes / (size_t)job->group_rows,
                   at, job->act_row_bytes, st, yt, job->n_out);
    } else {
        job->gemm(job->n_in, ng, nt, w, at, job->act_row_bytes, st, yt, job->n_out);
    }
}

/* Chunk = one group of a repacking job (a type without a lanes kernel): its rows of ggml's layout
 * packed into the thread's slice of the scratch, then every token chunk of the batch. */
static void matmul_repacking_group(void *ctx, int64_t g, int thread) {
    struct packed_job *job = ctx;
    uint8_t *group = job->group_scratch + (size_t)thread * job->group_bytes; /* (group_bytes,) */
    pyphi_pack_rows(job->wtype, job->w + (size_t)g * job->group_bytes, job->group_rows, job->n_in, group);
    for (int64_t t0 = 0; t0 < job->n_tokens; t0 += PACKED_CHUNK_TOKENS) {
        int64_t nt = job->n_tokens - t0 < PACKED_CHUNK_TOKENS ? job->n_tokens - t0 : PACKED_CHUNK_TOKENS;
        job->gemm(job->n_in, 1, nt, group, job->act + (size_t)t0 * job->act_row_bytes,
                  job->act_row_bytes,
                  job->sums != NULL ? job->sums + t0 * (job->n_in / PYPHI_QK8_0) : NULL,
                  job->y + t0 * job->n_out + g * job->group_rows, job->n_out);
    }
}

/* pyphi_matmul_packed (as_packed 0) and pyphi_matmul_as_packed (1: w in ggml's layout, read by
 * the lanes kernel, or else packed a group at a time into a scratch slice per pool thread). */
static int matmul_packed_layout(pyphi_pool *pool, int wtype, const void *w, int64_t n_out,
                                int64_t n_in, const float *x, int64_t n_tokens, float *y,
                                int as_packed) {
    int64_t w_bytes = pyphi_packed_bytes(wtype, n_out, n_in);
    if (w_bytes < 0) {
        return (int)w_bytes;
    }
    int64_t x_bytes = matrix_bytes(n_tokens, pyphi_row_bytes(PYPHI_TYPE_F32, n_in));
    int64_t y_bytes = matrix_bytes(n_tokens, n_out);
    if (x_bytes < 0 || y_bytes < 0 || __builtin_mul_overflow(y_bytes, (int64_t)sizeof(float), &y_bytes)) {
        return PYPHI_E_SHAPE;
    }
    if (w == NULL || x == NULL || y == NULL || !aligned(x, sizeof(float)) ||
        !aligned(y, sizeof(float)) || overlap(y, (size_t)y_bytes, x, (size_t)x_bytes) ||
        overlap(y, (size_t)y_bytes, w, (size_t)w_bytes) ||
        (as_packed && !aligned(w, type_alignment(wtype)))) {
        return PYPHI_E_ARG;
    }
    if (n_tokens == 0) {
        return PYPHI_OK;
    }
    const pyphi_kernels *k = pyphi_kernels_current();
    int atype = pyphi_vec_dot_type(wtype);
    int64_t group_rows = pack_group_rows(wtype);
    /* act_row_bytes fits: it is at most the float row's 4 n_in bytes, checked in x_bytes */
    struct packed_job job = {
        .k = k,
        .gemm = k->gemm_packed[wtype],
        .wtype = wtype,
        .x = x,
        .w = w,
        .atype = atype,
        .y = y,
        .n_out = n_out,
        .n_in = n_in,
        .n_tokens = n_tokens,
        .n_groups = n_out / group_rows,
        .group_rows = group_rows,
        .chunk_groups = n_tokens == 1 ? decode_chunk(n_out / group_rows, pool)
                                      : PACKED_CHUNK_ROWS / group_rows,
        .group_bytes = (size_t)pyphi_row_bytes(wtype, n_in) * (size_t)group_rows,
        .act_row_bytes = (size_t)pyphi_row_bytes(atype, n_in),
    };
    job.group_chunks = (job.n_groups + job.chunk_groups - 1) / job.chunk_groups;
    /* the lanes kernels gather the 16 rows' scales with int32 offsets: 15 rows must fit */
    int lanes_fit = (size_t)pyphi_row_bytes(wtype, n_in) <= (size_t)INT32_MAX / PYPHI_PACK_ROWS;
    job.lanes = as_packed && lanes_fit ? k->gemm_lanes[wtype] : NULL;
    int repack = as_packed && job.lanes == NULL;
    size_t sums_bytes = atype == PYPHI_TYPE_Q8_0
                            ? (size_t)n_tokens * (size_t)(n_in / PYPHI_QK8_0) * sizeof(int32_t)
                            : 0;
    /* act, then the group slices 64-byte aligned like the packed matrices they stand for; each
     * slice is group_rows rows of w, whose bytes w_bytes counted */
    size_t act_bytes = ((size_t)n_tokens * job.act_row_bytes + 63) / 64 * 64;
    size_t groups_bytes = repack ? (size_t)pyphi_pool_size(pool) * job.group_bytes : 0;
    size_t total = ((sums_bytes + 63) / 64 * 64 + act_bytes + groups_bytes + 63) / 64 * 64;
    uint8_t *scratch = aligned_alloc(64, total);
    if (scratch == NULL) {
        return PYPHI_E_NOMEM;
    }
    job.sums = sums_bytes > 0 ? (int32_t *)scratch : NULL;
    job.act = scratch + (sums_bytes + 63) / 64 * 64;
    job.group_scratch = job.act + act_bytes;
    pyphi_pool_run(pool, quantize_packed_activations, &job, n_tokens);
    if (repack) {
        pyphi_pool_run(pool, matmul_repacking_group, &job, job.n_groups);
    } else {
        int64_t token_chunks = (n_tokens + PACKED_CHUNK_TOKENS - 1) / PACKED_CHUNK_TOKENS;
        pyphi_pool_run(pool, matmul_packed_chunk, &job, job.group_chunks * token_chunks);
    }
    free(scratch);
    return PYPHI_OK;
}

int pyphi_matmul_packed(pyphi_pool *pool, int wtype, const void *w, int64_t n_out, int64_t n_in,
                        const float *x, int64_t n_tokens, float *y) {
    return matmul_packed_layout(pool, wtype, w, n_out, n_in, x, n_tokens, y, 0);
}

int pyphi_matmul_as_packed(pyphi_pool *pool, int wtype, const void *w, int64_t n_out, int64_t n_in,
                           const float *x, int64_t n_tokens, float *y) {
    return matmul_packed_layout(pool, wtype, w, n_out, n_in, x, n_tokens, y, 1);
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
