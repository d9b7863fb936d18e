/* attention.h: grouped-query attention of a batch of queries over the KV cache (attention.c).
 *
 * Internal to libpyphi. The queries are already rotated and the batch's own keys and values are
 * already in the cache, so a query attends to cache rows only, whether it came in a long prefill
 * or alone: a token's result does not depend on how the sequence was split into calls.
 */
#ifndef PYPHI_ATTENTION_H
#define PYPHI_ATTENTION_H

#include "kv_cache.h"
#include "pyphi.h"

struct pyphi_attention_args {
    const float *q;   /* query t, head h at q + t * q_stride + h * head_dim: (head_dim,) */
    int64_t q_stride;
    const struct pyphi_kv_cache *kv;
    int64_t layer;
    float *out;       /* (n_tokens, n_head * head_dim): heads concatenated in order */
    int64_t n_tokens;
    int64_t pos;      /* absolute position of query 0; query t is at pos + t */
    int64_t n_head, n_head_kv, head_dim;
    int64_t window;   /* sliding window (key j visible to query i iff i - window < j <= i); 0: none */
    float *scratch;   /* (pool size, pyphi_attention_scratch_floats) float32, the caller's */
};

/* Floats of scratch per pool thread for a cache of n_ctx positions. */
int64_t pyphi_attention_scratch_floats(int64_t n_head, int64_t n_head_kv, int64_t n_ctx);

/* out = softmax(q k^T / sqrt(head_dim) + causal mask) v per query head, query head h reading KV
 * head h / (n_head / n_head_kv) (HF repeat_kv). One (token, KV head) per chunk of the pool, every
 * score one dot and every output one weighted sum of the ISA (kernels.h), computed by one thread
 * in a fixed order, so the result does not depend on the pool size. */
int pyphi_attention(pyphi_pool *pool, const struct pyphi_attention_args *args);

#endif /* PYPHI_ATTENTION_H */
