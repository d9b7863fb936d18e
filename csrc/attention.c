/* attention.c: the scalar reference of GQA attention over the KV cache (see attention.h).
 *
 * Scores use the current ISA's dot kernel for the cache type (F16 or F32 rows against a float32
 * query, kernels.h), softmax and the weighted sum of values are plain float32 loops in position
 * order. The maths is transformers' eager_attention_forward (models/phi3/modeling_phi3.py):
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
    pyphi_vec_dot_fn dot; /* cache row (cache type) . query (float32) */
    float scale;
    int64_t scratch_stride; /* floats per thread */
    float *scratch;         /* (pool size, scratch_stride): scores (pos + n_tokens,), a value (head_dim,) */
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
    float *v = scores + a->pos + a->n_tokens;                        /* (head_dim,) */
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
        out[d] = 0.0f;
    }
    for (int64_t j = 0; j < n_keys; j++) {
        const uint8_t *v_cached = pyphi_kv_v(a->kv, a->layer, first + j);
        pyphi_kv_to_f32(a->kv, v_cached + (size_t)kv_head * head_bytes, v, a->head_dim);
        for (int64_t d = 0; d < a->head_dim; d++) {
            out[d] += scores[j] * v[d];
        }
    }
}

int pyphi_attention(pyphi_pool *pool, const struct pyphi_attention_args *args) {
    struct attention_job job = {
        .a = args,
        .dot = pyphi_kernels_current()->vec_dot[args->kv->type],
        .scale = (float)(1.0 / sqrt((double)args->head_dim)),
        .scratch_stride = args->pos + args->n_tokens + args->head_dim,
    };
    job.scratch = malloc((size_t)pyphi_pool_size(pool) * (size_t)job.scratch_stride * sizeof(float));
    if (job.scratch == NULL) {
        return PYPHI_E_NOMEM;
    }
    pyphi_pool_run(pool, attend, &job, args->n_tokens * args->n_head);
    free(job.scratch);
    return PYPHI_OK;
}
