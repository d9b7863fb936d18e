/* attention.c: the scalar reference of GQA attention over the KV cache (see attention.h).
 *
 * Both products are the current ISA's dot kernel for the cache type (kernels.h: F16 or F32
 * values against float32 ones, whose scalar twin is the reference): a score is a key row . the
 * query, and each output value is a row of the transposed values . the scores. Softmax is a plain
 * float32 loop (ops.c). The maths is transformers' eager_attention_forward (models/phi3/modeling_phi3.py):
 * softmax(q k^T * head_dim^-0.5 + mask) v in float32, with the sliding-window causal mask of
 * masking_utils (key j visible to query i iff i - window < j <= i).
 */
#include "attention.h"

#include "kernels.h"
#include "ops.h"
#include "threadpool.h"

#include <math.h>
#include <stdlib.h>

struct attention_job {
    const struct pyphi_attention_args *a;
    pyphi_vec_dot_fn dot; /* cache-type values . float32 values: keys . query, values . scores */
    float scale;
    int64_t scratch_stride; /* floats per thread */
    float *scratch;         /* (pool size, scratch_stride): scores (pos + n_tokens,) */
};

/* Chunk = (token t, query head h) = t * n_head + h. */
static void attend(void *ctx, int64_t chunk, int thread) {
    struct attention_job *job = ctx;
    const struct pyphi_attention_args *a = job->a;
    int64_t t = chunk / a->n_head, h = chunk % a->n_head;
    int64_t kv_head = h / (a->n_head / a->n_head_kv);
    int64_t i = a->pos + t; /* the query's position */
    int64_t first = a->window > 0 && i - a->window + 1 > 0 ? i - a->window + 1 : 0;
    int64_t n_keys = i + 1 - first;

    const float *q = a->q + t * a->q_stride + h * a->head_dim; /* (head_dim,) */
    float *scores = job->scratch + (size_t)thread * (size_t)job->scratch_stride; /* (n_keys,) */
    float *out = a->out + t * a->n_head * a->head_dim + h * a->head_dim; /* (head_dim,) */

    size_t head_bytes = a->kv->row_bytes / (size_t)a->n_head_kv; /* one head of a cache row */
    for (int64_t j = 0; j < n_keys; j++) {
        const uint8_t *k = pyphi_kv_k(a->kv, a->layer, first + j); /* (row,) in the cache type */
        float s;
        job->dot(a->head_dim, &s, k + (size_t)kv_head * head_bytes, q);
        scores[j] = s * job->scale;
    }
    pyphi_softmax(scores, n_keys);
    for (int64_t d = 0; d < a->head_dim; d++) {
        /* value d of the KV head over positions first .. i, in the cache type */
        const void *v = pyphi_kv_v(a->kv, a->layer, kv_head * a->head_dim + d, first);
        job->dot(n_keys, &out[d], v, scores);
    }
}

int pyphi_attention(pyphi_pool *pool, const struct pyphi_attention_args *args) {
    struct attention_job job = {
        .a = args,
        .dot = pyphi_kernels_current()->vec_dot[args->kv->type],
        .scale = (float)(1.0 / sqrt((double)args->head_dim)),
        .scratch_stride = args->pos + args->n_tokens,
    };
    job.scratch = malloc((size_t)pyphi_pool_size(pool) * (size_t)job.scratch_stride * sizeof(float));
    if (job.scratch == NULL) {
        return PYPHI_E_NOMEM;
    }
    pyphi_pool_run(pool, attend, &job, args->n_tokens * args->n_head);
    free(job.scratch);
    return PYPHI_OK;
}
