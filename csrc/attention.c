/* attention.c: GQA attention over the KV cache (see attention.h).
 *
 * Both products are the current ISA's kernels for the cache type (kernels.h, each with its
 * scalar twin as reference): the scores are the dot tile (F16 or F32 keys against float32
 * queries), the query heads sharing a KV head sharing its loads, a score being a key . the query;
 * the outputs are the weighted sum of the value rows by the scores, each the same sequence of
 * roundings on every ISA, reading the head's values once for the whole group. Softmax is the
 * ISA's kernel too (kernels.h: a polynomial exp within 2 ulp of expf, the same bits on every
 * ISA). The maths is transformers' eager_attention_forward (models/phi3/modeling_phi3.py):
 * softmax(q k^T * head_dim^-0.5 + mask) v in float32, with the sliding-window causal mask of
 * masking_utils (key j visible to query i iff i - window < j <= i).
 */
#include "attention.h"

#include "kernels.h"
#include "threadpool.h"

#include <math.h>

struct attention_job {
    const struct pyphi_attention_args *a;
    pyphi_gemm_fn gemm; /* cache-type rows . float32 rows (kernels.h tile) */
    pyphi_weighted_rows_fn weighted_rows; /* float32 weights . cache-type rows */
    pyphi_softmax_fn softmax;
    float scale;
    int64_t group;          /* query heads per KV head */
    int64_t scratch_stride; /* floats per thread */
};

/* Floats of scratch one thread needs: the scores of a KV head's query heads. */
int64_t pyphi_attention_scratch_floats(int64_t n_head, int64_t n_head_kv, int64_t n_ctx) {
    return n_head / n_head_kv * n_ctx;
}

/* Chunk = (token t, KV head g) = t * n_head_kv + g: the group of query heads reading g. Each key
 * and value of g is loaded once for the whole group; every score is the current ISA's dot of one
 * key with one query, every output value one lane's running sum over the positions in order. */
static void attend(void *ctx, int64_t chunk, int thread) {
    struct attention_job *job = ctx;
    const struct pyphi_attention_args *a = job->a;
    int64_t t = chunk / a->n_head_kv, g = chunk % a->n_head_kv;
    int64_t i = a->pos + t; /* the query's position */
    int64_t first = a->window > 0 && i - a->window + 1 > 0 ? i - a->window + 1 : 0;
    int64_t n_keys = i + 1 - first;
    int64_t hd = a->head_dim;

    const float *q = a->q + t * a->q_stride + g * job->group * hd;       /* (group, head_dim) */
    float *scores = a->scratch + (size_t)thread * (size_t)job->scratch_stride; /* (group, n_keys) */
    float *out = a->out + t * a->n_head * hd + g * job->group * hd;      /* (group, head_dim) */

    const void *k = pyphi_kv_k(a->kv, a->layer, g, first); /* (n_keys, head_dim): contiguous */
    job->gemm(hd, n_keys, job->group, k, a->kv->head_bytes, q, (size_t)hd * sizeof(float), scores,
              n_keys);
    for (int64_t h = 0; h < job->group; h++) {
        job->softmax(scores + h * n_keys, n_keys, job->scale);
    }
    const void *v = pyphi_kv_v(a->kv, a->layer, g, first); /* (n_keys, head_dim): contiguous */
    job->weighted_rows(hd, n_keys, job->group, v, a->kv->head_bytes, scores, n_keys, out, hd);
}

int pyphi_attention(pyphi_pool *pool, const struct pyphi_attention_args *args) {
    struct attention_job job = {
        .a = args,
        .gemm = pyphi_kernels_current()->gemm[args->kv->type],
        .weighted_rows = pyphi_kernels_current()->weighted_rows[args->kv->type],
        .softmax = pyphi_kernels_current()->softmax,
        .scale = (float)(1.0 / sqrt((double)args->head_dim)),
        .group = args->n_head / args->n_head_kv,
        .scratch_stride = pyphi_attention_scratch_floats(args->n_head, args->n_head_kv, args->kv->n_ctx),
    };
    pyphi_pool_run(pool, attend, &job, args->n_tokens * args->n_head_kv);
    return PYPHI_OK;
}
