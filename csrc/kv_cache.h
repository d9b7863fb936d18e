/* kv_cache.h: the key/value cache of a model (kv_cache.c).
 *
 * Internal to libpyphi. For every layer, keys and values of positions 0 .. n_ctx - 1, n_head_kv
 * heads of head_dim values each, in F16 or F32, allocated once. Keys are stored already rotated
 * (RoPE), values as they are. The cache knows nothing about which positions are valid: the
 * model counts them (truncation is just a smaller count).
 * Both are head-major, (layer, head, position, head_dim): attention reads one KV head of one
 * layer over all positions, and that way its keys, then its values, are each one contiguous run
 * the hardware prefetcher streams. (Position-major key rows put a head's 256 bytes every 2 KiB
 * for Phi-4-mini, and a transposed value matrix had the tile read two 8 KiB rows at once: a
 * decode step's attention at 4064 positions took 4x as long, measured on Zen 5.) A new position
 * also writes one run per head, not one value into each of n_head_kv * head_dim rows.
 */
#ifndef PYPHI_KV_CACHE_H
#define PYPHI_KV_CACHE_H

#include "pyphi.h"

#include <stddef.h>
#include <stdint.h>

struct pyphi_kv_cache {
    int type;         /* PYPHI_TYPE_F16 or PYPHI_TYPE_F32 */
    int64_t n_layer;
    int64_t n_ctx;    /* positions per layer */
    int64_t n_head_kv, head_dim;
    size_t head_bytes; /* one head's keys (or values) at one position */
    uint8_t *k;       /* (n_layer, n_head_kv, n_ctx, head_dim) in type: head-major */
    uint8_t *v;       /* (n_layer, n_head_kv, n_ctx, head_dim) in type: head-major */
};

/* Bytes of keys and values together, or a negative status for a bad type or size. */
int64_t pyphi_kv_bytes(int type, int64_t n_layer, int64_t n_ctx, int64_t row);
int pyphi_kv_init(struct pyphi_kv_cache *c, int type, int64_t n_layer, int64_t n_ctx,
                  int64_t n_head_kv, int64_t head_dim);
void pyphi_kv_free(struct pyphi_kv_cache *c);

/* The key (value) of KV head `head` at position pos in layer (head_bytes bytes); those of
 * positions pos + 1, pos + 2, ... follow it, head_bytes apart. */
const void *pyphi_kv_k(const struct pyphi_kv_cache *c, int64_t layer, int64_t head, int64_t pos);
const void *pyphi_kv_v(const struct pyphi_kv_cache *c, int64_t layer, int64_t head, int64_t pos);

/* Stores n float32 rows of keys and values as positions pos .. pos + n - 1 of layer, converted
 * to the cache type (round to nearest even). Row t of k is at k + t * stride, likewise v. */
void pyphi_kv_store(struct pyphi_kv_cache *c, int64_t layer, int64_t pos, const float *k,
                    const float *v, int64_t n, int64_t stride);

/* Changes the rotation of the keys of positions 0 .. n_pos - 1 in every layer from the one
 * inv_freq_from gives to the one inv_freq_to gives ((n_rot / 2,) each; the rotations are
 * pyphi_rope_table's with attn_factor, on the pairs of `pairing`, enum pyphi_rope_pairing), on
 * the pool, a position per chunk. */
int pyphi_kv_rerotate(struct pyphi_kv_cache *c, pyphi_pool *pool, int64_t n_pos, int64_t n_rot,
                      int pairing, const float *inv_freq_from, const float *inv_freq_to,
                      float attn_factor);

#endif /* PYPHI_KV_CACHE_H */
