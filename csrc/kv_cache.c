/* kv_cache.c: allocation, row stores and loads, and in-place re-rotation of the KV cache
 * (see kv_cache.h). */
#include "kv_cache.h"

#include "ops.h"
#include "quants.h"
#include "threadpool.h"

#include <stdlib.h>

int64_t pyphi_kv_bytes(int type, int64_t n_layer, int64_t n_ctx, int64_t row) {
    if (type != PYPHI_TYPE_F16 && type != PYPHI_TYPE_F32) {
        return PYPHI_E_TYPE;
    }
    int64_t bytes;
    if (n_layer < 1 || n_ctx < 1 || row < 1 ||
        __builtin_mul_overflow(n_layer, n_ctx, &bytes) ||
        __builtin_mul_overflow(bytes, row, &bytes) ||
        __builtin_mul_overflow(bytes, 2 * pyphi_type_block_bytes(type), &bytes)) {
        return PYPHI_E_SHAPE;
    }
    return bytes;
}

int pyphi_kv_init(struct pyphi_kv_cache *c, int type, int64_t n_layer, int64_t n_ctx,
                  int64_t n_head_kv, int64_t head_dim) {
    int64_t row;
    if (n_head_kv < 1 || head_dim < 1 || __builtin_mul_overflow(n_head_kv, head_dim, &row)) {
        return PYPHI_E_SHAPE;
    }
    int64_t bytes = pyphi_kv_bytes(type, n_layer, n_ctx, row);
    if (bytes < 0) {
        return (int)bytes;
    }
    c->type = type;
    c->n_layer = n_layer;
    c->n_ctx = n_ctx;
    c->n_head_kv = n_head_kv;
    c->head_dim = head_dim;
    c->head_bytes = (size_t)(head_dim * pyphi_type_block_bytes(type));
    /* calloc: the pages are committed as positions are first written, not all at once */
    c->k = calloc(1, (size_t)bytes / 2);
    c->v = calloc(1, (size_t)bytes / 2);
    if (c->k == NULL || c->v == NULL) {
        pyphi_kv_free(c);
        return PYPHI_E_NOMEM;
    }
    return PYPHI_OK;
}

void pyphi_kv_free(struct pyphi_kv_cache *c) {
    free(c->k);
    free(c->v);
    c->k = c->v = NULL;
}

/* Where head `head` of position pos of layer starts, in the key or the value array. */
static size_t head_offset(const struct pyphi_kv_cache *c, int64_t layer, int64_t head, int64_t pos) {
    return (((size_t)layer * (size_t)c->n_head_kv + (size_t)head) * (size_t)c->n_ctx + (size_t)pos) *
           c->head_bytes;
}

const void *pyphi_kv_k(const struct pyphi_kv_cache *c, int64_t layer, int64_t head, int64_t pos) {
    return c->k + head_offset(c, layer, head, pos);
}

const void *pyphi_kv_v(const struct pyphi_kv_cache *c, int64_t layer, int64_t head, int64_t pos) {
    return c->v + head_offset(c, layer, head, pos);
}

/* n float32 values -> the cache type (round to nearest even). */
static void row_from_f32(const struct pyphi_kv_cache *c, const float *src, void *dst, int64_t n) {
    if (c->type == PYPHI_TYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    uint16_t *h = dst; /* (n,) binary16 */
    for (int64_t i = 0; i < n; i++) {
        h[i] = pyphi_fp32_to_fp16(src[i]);
    }
}

/* n values in the cache type -> float32. */
static void row_to_f32(const struct pyphi_kv_cache *c, const void *src, float *dst, int64_t n) {
    if (c->type == PYPHI_TYPE_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    const uint16_t *h = src; /* (n,) binary16 */
    for (int64_t i = 0; i < n; i++) {
        dst[i] = pyphi_fp16_to_fp32(h[i]);
    }
}

void pyphi_kv_store(struct pyphi_kv_cache *c, int64_t layer, int64_t pos, const float *k,
                    const float *v, int64_t n, int64_t stride) {
    for (int64_t t = 0; t < n; t++) {
        for (int64_t g = 0; g < c->n_head_kv; g++) {
            size_t at = head_offset(c, layer, g, pos + t);
            row_from_f32(c, k + t * stride + g * c->head_dim, c->k + at, c->head_dim);
            row_from_f32(c, v + t * stride + g * c->head_dim, c->v + at, c->head_dim);
        }
    }
}

struct rerotate_job {
    struct pyphi_kv_cache *c;
    float *scratch; /* (pool size, head_dim + 2 n_rot): per thread a float32 key, two table rows */
    int64_t n_rot;
    int pairing; /* enum pyphi_rope_pairing */
    const float *inv_freq_from, *inv_freq_to; /* (n_rot / 2,) */
    float attn_factor;
};

/* Chunk = one position, in every layer. */
static void rerotate_position(void *ctx, int64_t pos, int thread) {
    struct rerotate_job *job = ctx;
    struct pyphi_kv_cache *c = job->c;
    float *key = job->scratch + (size_t)thread * (size_t)(c->head_dim + 2 * job->n_rot); /* (head_dim,) */
    float *cs_from = key + c->head_dim;  /* (n_rot,) */
    float *cs_to = cs_from + job->n_rot; /* (n_rot,) */
    pyphi_rope_table(cs_from, pos, 1, job->inv_freq_from, job->n_rot, job->attn_factor);
    pyphi_rope_table(cs_to, pos, 1, job->inv_freq_to, job->n_rot, job->attn_factor);
    for (int64_t layer = 0; layer < c->n_layer; layer++) {
        for (int64_t g = 0; g < c->n_head_kv; g++) {
            uint8_t *k = c->k + head_offset(c, layer, g, pos);
            row_to_f32(c, k, key, c->head_dim);
            pyphi_rope_rerotate(key, 1, c->head_dim, job->n_rot, job->pairing, cs_from, cs_to);
            row_from_f32(c, key, k, c->head_dim);
        }
    }
}

int pyphi_kv_rerotate(struct pyphi_kv_cache *c, pyphi_pool *pool, int64_t n_pos, int64_t n_rot,
                      int pairing, const float *inv_freq_from, const float *inv_freq_to,
                      float attn_factor) {
    struct rerotate_job job = {c, NULL, n_rot, pairing, inv_freq_from, inv_freq_to, attn_factor};
    size_t per_thread = (size_t)(c->head_dim + 2 * n_rot);
    job.scratch = malloc((size_t)pyphi_pool_size(pool) * per_thread * sizeof(float));
    if (job.scratch == NULL) {
        return PYPHI_E_NOMEM;
    }
    pyphi_pool_run(pool, rerotate_position, &job, n_pos);
    free(job.scratch);
    return PYPHI_OK;
}
