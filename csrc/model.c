/* model.c: the transformer forward pass, the model's state (KV cache, token history, LongRoPE
 * factor set) and its public API (pyphi.h, "Model").
 *
 * Reading order: the checks and sizes of a description, create/free, then forward() -- the
 * whole forward pass of a batch of tokens, one stage per line -- and finally eval(), which
 * splits a call into batches of at most n_batch tokens and handles LongRoPE factor changes.
 *
 * The maths is transformers' Phi3ForCausalLM (5.24.0, models/phi3/modeling_phi3.py; the
 * project's SPEC §4): pre-norm decoder layers, fused QKV and gate-up projections, partial NeoX
 * RoPE with LongRoPE factors, GQA, SwiGLU, tied output head. LlamaForCausalLM is the same graph
 * with separate q/k/v and gate/up projections, full rotary and no LongRoPE; llama.cpp's llama
 * GGUFs store its Q/K rows permuted for the adjacent RoPE pairing (pyphi.h
 * pyphi_rope_pairing), which is a field of the description, not a second forward pass.
 *
 * LongRoPE (modeling_rope_utils.py, longrope_frequency_update): transformers picks the factor set
 * for a forward call from that call's sequence length, max(position) + 1: short factors up to
 * n_ctx_orig tokens, long factors for every position once longer. So the logits of a sequence
 * of more than n_ctx_orig tokens are those of the whole sequence run with long factors. We key
 * the choice on the length after the call (pos + n_tokens), which is the same thing, and when it
 * changes the factor set of what is cached:
 * - REPREFILL (default) recomputes the cached prefix from its tokens with the new set, inside the
 *   same call: the cache then holds exactly what a full forward with the new set computes. This
 *   is what transformers' generate does when a sequence reaches n_ctx_orig + 1 tokens
 *   (Phi3ForCausalLM.prepare_inputs_for_generation drops the cache), and what a full forward
 *   of the truncated sequence computes when it goes back down. That call costs a prefill of the
 *   whole sequence.
 * - REROTATE re-rotates the cached keys in place (undo the old rotation, apply the new one). RoPE
 *   is a per-position rotation, so layer 0's keys become exactly right (up to rounding); but the
 *   keys and values of layers 1.. were computed from hidden states that the old factors shaped
 *   through the attention of the layers below, and stay so. It is cheap (no recomputation) and
 *   close, not identical, to transformers; the tests measure how close.
 */
#include "attention.h"
#include "ggml_numerics.h"
#include "huge_pages.h"
#include "kv_cache.h"
#include "ops.h"
#include "pyphi.h"
#include "quants.h"
#include "threadpool.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define TRY(call)                                                                                  \
    do {                                                                                           \
        int status_ = (call);                                                                      \
        if (status_ < 0) {                                                                         \
            return status_;                                                                        \
        }                                                                                          \
    } while (0)

/* A matrix with a packed copy: t (the model's copy of the tensor; its data stays the caller's)
 * -> dst, inside the model's packed buffer. The filler thread sets started before its first
 * chunk and ready once the copy is complete. */
struct pack_item {
    const struct pyphi_tensor *t;
    uint8_t *dst;
    atomic_int started, ready;
};

struct pyphi_model {
    struct pyphi_model_desc d;
    struct pyphi_layer_weights *layers; /* (n_layer,): a copy; d.layers points here */
    struct pyphi_model_params p;
    struct pyphi_kv_cache kv;
    int32_t *tokens;     /* (n_ctx,): the tokens of the cached positions, for re-prefill */
    int64_t n_past;      /* cached positions: 0 .. n_past - 1 */
    int rope_long;       /* factor set of the cached keys: 1 long, 0 short */
    int64_t rope_switches;
    float *inv_freq[2];  /* (n_rot / 2,) each: [0] short factors, [1] long factors */
    float *attn_scratch; /* (attn_scratch_floats,): attention's per-thread scores, grown once */
    int64_t attn_scratch_floats;
    uint8_t *packed;     /* (packed_bytes,): the packed copies of the matrices */
    int64_t packed_bytes;
    struct pack_item *packs; /* (n_packs <= 1 + n_layer MATRICES_PER_LAYER,): in filling order */
    int64_t n_packs;
    pyphi_filler *filler;  /* the thread that makes the packed copies, then settles their pages */
    int sources_dropped;   /* every copy is made and eval has dropped all of the sources' pages */
    int ggml;              /* PYPHI_NUMERICS_GGML: every stage is ggml_numerics.h's */
    void *act_q;           /* (pyphi_ggml_matmul_scratch(n_batch, widest input),): GGML only */

    /* Activations of one batch of up to n_batch tokens. */
    float *x;       /* (n_batch, n_embd): the residual stream */
    float *xn;      /* (n_batch, n_embd): normalised input of a sublayer */
    float *qkv;     /* (n_batch, q_dim + 2 kv_dim): q | k | v per token */
    float *attn;    /* (n_batch, q_dim): attention output, heads concatenated */
    float *gate_up; /* (n_batch, 2 n_ff): gate | up per token */
    float *ffn;     /* (n_batch, n_ff): silu(gate) * up */
    float *proj;    /* (n_batch, proj_cols): wo / ffn_down outputs; separate q/k/v, gate/up parts */
    float *rope_cs; /* (n_batch, n_rot): cos | sin of the batch's positions */
};

/* ---- Description checks and sizes ----------------------------------------------------------- */

static int64_t q_dim(const struct pyphi_model_desc *d) { return d->n_head * d->head_dim; }
static int64_t kv_dim(const struct pyphi_model_desc *d) { return d->n_head_kv * d->head_dim; }
static int64_t qkv_dim(const struct pyphi_model_desc *d) { return q_dim(d) + 2 * kv_dim(d); }
static int uses_longrope(const struct pyphi_model_desc *d) {
    return d->rope_factors_long != NULL && d->n_ctx_orig > 0;
}

/* llama.cpp's LongRoPE factor set (llama_model::get_rope_factors): the long one for the model's
 * life when its context exceeds the original one (n_ctx_orig_yarn: rope.scaling.
 * original_context_length, else the training context). */
static int ggml_rope_long(const struct pyphi_model_desc *d, const struct pyphi_model_params *p) {
    int64_t n_ctx_orig = d->n_ctx_orig > 0 ? d->n_ctx_orig : d->n_ctx_train;
    return d->rope_factors_long != NULL && p->n_ctx > n_ctx_orig;
}

static int64_t max3(int64_t a, int64_t b, int64_t c) {
    int64_t m = a > b ? a : b;
    return m > c ? m : c;
}

/* Columns of `proj`: the widest of wo's and ffn_down's outputs (n_embd) and, for separate
 * projections, the widest part (q_dim, n_ff). */
static int64_t proj_cols(const struct pyphi_model_desc *d) {
    return max3(d->n_embd, q_dim(d), d->n_ff);
}

/* Bytes of t (0 if absent), or -1 if they do not fit in int64 (a description from a crafted file). */
static int64_t tensor_bytes(const struct pyphi_tensor *t) {
    if (t->data == NULL) {
        return 0;
    }
    int64_t row = pyphi_row_bytes(t->type, t->ne0), bytes;
    return row < 0 || t->ne1 < 0 || __builtin_mul_overflow(row, t->ne1, &bytes) ? -1 : bytes;
}

/* *sum += v, false if v < 0 (an overflow already) or the sum overflows. */
static int add_size(int64_t *sum, int64_t v) {
    return v >= 0 && !__builtin_add_overflow(*sum, v, sum);
}

/* A matrix mapping n_in -> n_out that the matmul computes. */
static int check_matrix(const struct pyphi_tensor *t, int64_t n_in, int64_t n_out) {
    if (t->data == NULL) {
        return PYPHI_E_ARG;
    }
    if (pyphi_vec_dot_type(t->type) < 0) {
        return PYPHI_E_TYPE;
    }
    return t->ne0 == n_in && t->ne1 == n_out && pyphi_row_bytes(t->type, n_in) > 0 ? PYPHI_OK
                                                                                   : PYPHI_E_SHAPE;
}

static int check_norm(const struct pyphi_tensor *t, int64_t n) {
    if (t->data == NULL) {
        return PYPHI_E_ARG;
    }
    if (t->type != PYPHI_TYPE_F32) {
        return PYPHI_E_TYPE;
    }
    return t->ne0 == n && t->ne1 == 1 ? PYPHI_OK : PYPHI_E_SHAPE;
}

/* Either the fused matrix (n_in -> sum of outs) or every part (n_in -> outs[i]), not both. */
static int check_projection(const struct pyphi_tensor *fused, const struct pyphi_tensor *parts,
                            const int64_t *outs, int n_parts, int64_t n_in) {
    int64_t total = 0;
    int n_present = 0;
    for (int i = 0; i < n_parts; i++) {
        total += outs[i];
        n_present += parts[i].data != NULL;
    }
    if (fused->data != NULL) {
        return n_present == 0 ? check_matrix(fused, n_in, total) : PYPHI_E_ARG;
    }
    for (int i = 0; i < n_parts; i++) {
        TRY(check_matrix(&parts[i], n_in, outs[i]));
    }
    return PYPHI_OK;
}

static int check_layer(const struct pyphi_model_desc *d, const struct pyphi_layer_weights *L) {
    const struct pyphi_tensor qkv_parts[3] = {L->wq, L->wk, L->wv};
    const int64_t qkv_outs[3] = {q_dim(d), kv_dim(d), kv_dim(d)};
    const struct pyphi_tensor gate_up_parts[2] = {L->ffn_gate, L->ffn_up};
    const int64_t gate_up_outs[2] = {d->n_ff, d->n_ff};
    TRY(check_norm(&L->attn_norm, d->n_embd));
    TRY(check_projection(&L->wqkv, qkv_parts, qkv_outs, 3, d->n_embd));
    TRY(check_matrix(&L->wo, q_dim(d), d->n_embd));
    TRY(check_norm(&L->ffn_norm, d->n_embd));
    TRY(check_projection(&L->ffn_gate_up, gate_up_parts, gate_up_outs, 2, d->n_embd));
    TRY(check_matrix(&L->ffn_down, d->n_ff, d->n_embd));
    return PYPHI_OK;
}

static int check_desc(const struct pyphi_model_desc *d) {
    if (d == NULL || d->layers == NULL) {
        return PYPHI_E_ARG;
    }
    if (d->n_vocab < 1 || d->n_vocab > INT32_MAX || d->n_embd < 1 || d->n_layer < 1 ||
        d->n_head < 1 || d->n_head_kv < 1 || d->n_head % d->n_head_kv != 0 || d->head_dim < 1 ||
        d->n_ff < 1 || d->n_rot < 0 || d->n_rot % 2 != 0 || d->n_rot > d->head_dim ||
        (d->rope_pairing != PYPHI_ROPE_NEOX && d->rope_pairing != PYPHI_ROPE_ADJACENT) ||
        d->n_ctx_train < 1 || d->n_ctx_orig < 0 || d->sliding_window < 0 || !(d->rms_eps > 0) ||
        !(d->rope_base > 0) || !(d->rope_attn_factor > 0)) {
        return PYPHI_E_SHAPE;
    }
    /* Every width the forward pass multiplies (q_dim, n_ff, n_embd...) fits in int32, so that
     * the sums and products of the sizes below cannot overflow int64 (descriptions come from
     * files; a real model's widths are below 2^17). */
    if (d->n_embd > INT32_MAX || d->n_ff > INT32_MAX || d->n_head > INT32_MAX ||
        d->head_dim > INT32_MAX || d->n_layer > INT32_MAX || d->n_ctx_train > INT32_MAX ||
        d->n_head * d->head_dim > INT32_MAX) {
        return PYPHI_E_SHAPE;
    }
    /* the embedding is read a row at a time by the dequantizer, the head is a matmul */
    if (d->tok_embd.data == NULL) {
        return PYPHI_E_ARG;
    }
    if (pyphi_type_block_values(d->tok_embd.type) == 0) {
        return PYPHI_E_TYPE;
    }
    if (d->tok_embd.ne0 != d->n_embd || d->tok_embd.ne1 != d->n_vocab ||
        pyphi_row_bytes(d->tok_embd.type, d->n_embd) < 0) {
        return PYPHI_E_SHAPE;
    }
    TRY(check_norm(&d->output_norm, d->n_embd));
    TRY(check_matrix(&d->output, d->n_embd, d->n_vocab));
    for (int64_t l = 0; l < d->n_layer; l++) {
        TRY(check_layer(d, &d->layers[l]));
    }
    return PYPHI_OK;
}

/* The matrices of a layer, in a fixed order (NULL-data parts are skipped by the callers): those
 * the model may pack (unpackable types are skipped too) and GGML numerics must compute. The tied
 * head (output == tok_embd) is packed as its own copy: the embedding keeps reading ggml's rows. */
#define MATRICES_PER_LAYER 9
static void layer_matrices(const struct pyphi_layer_weights *L,
                           const struct pyphi_tensor *out[MATRICES_PER_LAYER]) {
    const struct pyphi_tensor *ts[MATRICES_PER_LAYER] = {
        &L->wqkv, &L->wq, &L->wk, &L->wv, &L->wo, &L->ffn_gate_up, &L->ffn_gate, &L->ffn_up,
        &L->ffn_down};
    memcpy(out, ts, sizeof ts);
}

/* Whether PYPHI_NUMERICS_GGML computes matrix t: a type it reproduces, and for Q4_K, llama.cpp's
 * repacked layout, which takes rows in 8s. */
static int check_ggml_matrix(const struct pyphi_tensor *t) {
    if (!pyphi_ggml_supports(t->type)) {
        return PYPHI_E_TYPE;
    }
    return t->type == PYPHI_TYPE_Q4_K && t->ne1 % 8 != 0 ? PYPHI_E_SHAPE : PYPHI_OK;
}

/* What PYPHI_NUMERICS_GGML reproduces: the matrices check_ggml_matrix accepts, an F16 cache read
 * unpacked. */
static int check_ggml(const struct pyphi_model_desc *d, const struct pyphi_model_params *p) {
    if (p->kv_type != PYPHI_TYPE_F16 || p->pack_weights) {
        return PYPHI_E_ARG;
    }
    TRY(check_ggml_matrix(&d->output));
    for (int64_t l = 0; l < d->n_layer; l++) {
        const struct pyphi_tensor *ms[MATRICES_PER_LAYER];
        layer_matrices(&d->layers[l], ms);
        for (int i = 0; i < MATRICES_PER_LAYER; i++) {
            if (ms[i]->data != NULL) {
                TRY(check_ggml_matrix(ms[i]));
            }
        }
    }
    return PYPHI_OK;
}

static int check_params(const struct pyphi_model_desc *d, const struct pyphi_model_params *p) {
    if (p == NULL) {
        return PYPHI_E_ARG;
    }
    if (p->kv_type != PYPHI_TYPE_F16 && p->kv_type != PYPHI_TYPE_F32) {
        return PYPHI_E_TYPE;
    }
    if (p->n_ctx < 1 || p->n_ctx > d->n_ctx_train || p->n_batch < 1 || p->n_batch > INT32_MAX ||
        (p->longrope_switch != PYPHI_LONGROPE_REPREFILL &&
         p->longrope_switch != PYPHI_LONGROPE_REROTATE) ||
        (p->numerics != PYPHI_NUMERICS_PYPHI && p->numerics != PYPHI_NUMERICS_GGML)) {
        return PYPHI_E_ARG;
    }
    return p->numerics == PYPHI_NUMERICS_GGML ? check_ggml(d, p) : PYPHI_OK;
}

/* ---- Packed weights -------------------------------------------------------------------------- */

/* Rows per chunk of the pack, a multiple of every packed group (16 rows, 4 for the K-quants):
 * 1-4 MB of Phi-4-mini's rows, a piece large enough to time its page faults (huge_pages.c). */
#define PACK_CHUNK_ROWS 512
_Static_assert(PACK_CHUNK_ROWS % PYPHI_PACK_ROWS == 0 && PACK_CHUNK_ROWS % PYPHI_PACK_ROWS_K == 0,
               "a pack chunk must hold whole groups");

static int64_t packed_size(const struct pyphi_tensor *t) {
    if (t->data == NULL) {
        return 0;
    }
    int64_t bytes = pyphi_packed_bytes(t->type, t->ne1, t->ne0);
    return bytes > 0 ? (bytes + 63) / 64 * 64 : 0; /* each matrix 64-byte aligned */
}

/* The bytes of the packed buffer: packed_bytes rounded up to whole 2 MiB pages. */
static size_t packed_span(int64_t packed_bytes) {
    return ((size_t)packed_bytes + PYPHI_HUGE_PAGE - 1) / PYPHI_HUGE_PAGE * PYPHI_HUGE_PAGE;
}

/* Drops the whole pages inside [p, p + bytes) from the process. On the read-only file mapping
 * pyphi.h requires, MADV_DONTNEED only unmaps: the pages stay in the page cache (a reload is
 * fast) and a later read faults them back from the file. (MADV_PAGEOUT would evict them from the
 * page cache too, and the next load would read the disk.) */
static void drop_pages(const void *p, size_t bytes) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t begin = ((uintptr_t)p + page - 1) / page * page;
    uintptr_t end = ((uintptr_t)p + bytes) / page * page;
    if (end > begin) {
        madvise((void *)begin, end - begin, MADV_DONTNEED);
    }
}

/* Reserves t's packed copy at *cursor (advancing it), to be made by fill_packs. */
static void reserve_pack(pyphi_model *m, const struct pyphi_tensor *t, uint8_t **cursor) {
    int64_t size = packed_size(t);
    if (size == 0) {
        return;
    }
    struct pack_item *it = &m->packs[m->n_packs++];
    it->t = t;
    it->dst = *cursor;
    atomic_init(&it->started, 0);
    atomic_init(&it->ready, 0);
    *cursor += size;
}

/* The filler thread's job (huge_pages.h pyphi_fill_fn): makes the packed copies in order,
 * PACK_CHUNK_ROWS rows at a time, dropping the file pages each chunk came from (the model never
 * reads them again, once the copy is ready; a tied head's embedding reads a few rows, which
 * fault back in until forward drops them). Until a copy is ready, eval computes from the file
 * (pyphi_matmul_as_packed: the same bits), so the first token does not wait for gigabytes of
 * fresh memory. Returns 1 if the fill gave up huge pages. */
static int fill_packs(void *ctx, const atomic_bool *stop) {
    pyphi_model *m = ctx;
    uint8_t *end = m->packed + packed_span(m->packed_bytes);
    int small_pages = 0;
    for (int64_t i = 0; i < m->n_packs; i++) {
        struct pack_item *it = &m->packs[i];
        const struct pyphi_tensor *t = it->t;
        /* a packed group holds the bytes of its rows (quants.h): the same offset on both sides,
         * and every chunk is whole groups since t->ne1 is (packed_size checked it) */
        size_t row_bytes = (size_t)pyphi_row_bytes(t->type, t->ne0);
        atomic_store(&it->started, 1);
        for (int64_t r0 = 0; r0 < t->ne1; r0 += PACK_CHUNK_ROWS) {
            if (atomic_load(stop)) {
                return small_pages;
            }
            int64_t rows = t->ne1 - r0 < PACK_CHUNK_ROWS ? t->ne1 - r0 : PACK_CHUNK_ROWS;
            size_t offset = (size_t)r0 * row_bytes, bytes = (size_t)rows * row_bytes;
            const uint8_t *src = (const uint8_t *)t->data + offset;
            uint8_t *dst = it->dst + offset;
            /* the first chunk whose huge pages come slowly turns the rest to 4 KiB pages */
            if (!small_pages && !pyphi_fault_in_timed(dst, bytes)) {
                small_pages = 1;
                pyphi_huge_pages_decline(dst + bytes, end);
            }
            pyphi_pack_matrix(t->type, src, rows, t->ne0, dst); /* checked */
            drop_pages(src, bytes);
        }
        atomic_store_explicit(&it->ready, 1, memory_order_release);
    }
    return small_pages;
}

static int pack_ready(const struct pack_item *it) {
    return atomic_load_explicit(&it->ready, memory_order_acquire);
}

/* Once every copy is ready: drops the sources' pages again, all of them. Their chunks' shared
 * edge pages stayed, and an eval that read a matrix from the file while its copy was completing
 * faulted some back in. */
static void drop_sources_once_packed(pyphi_model *m) {
    if (m->sources_dropped || m->n_packs == 0 || !pack_ready(&m->packs[m->n_packs - 1])) {
        return;
    }
    for (int64_t i = 0; i < m->n_packs; i++) {
        const struct pyphi_tensor *t = m->packs[i].t;
        drop_pages(t->data, (size_t)pyphi_packed_bytes(t->type, t->ne1, t->ne0));
    }
    m->sources_dropped = 1;
}

/* Bytes of GGML numerics' quantized activations: one batch of the widest matmul input. */
static int64_t act_q_bytes(const struct pyphi_model_desc *d, int64_t n_batch) {
    return pyphi_ggml_matmul_scratch(n_batch, proj_cols(d));
}

/* Floats of the activation buffers for one batch of n_batch tokens. */
static int64_t activation_floats(const struct pyphi_model_desc *d, int64_t n_batch) {
    int64_t per_token = 2 * d->n_embd + qkv_dim(d) + q_dim(d) + 3 * d->n_ff + proj_cols(d) + d->n_rot;
    return n_batch * per_token;
}

int pyphi_model_sizes(const struct pyphi_model_desc *d, const struct pyphi_model_params *p,
                      struct pyphi_model_sizes *sizes) {
    TRY(check_desc(d));
    TRY(check_params(d, p));
    if (sizes == NULL) {
        return PYPHI_E_ARG;
    }
    int64_t weights = 0;
    int ok = add_size(&weights, tensor_bytes(&d->tok_embd)) &&
             add_size(&weights, tensor_bytes(&d->output_norm));
    if (d->output.data != d->tok_embd.data) { /* a tied head is the embedding itself */
        ok = ok && add_size(&weights, tensor_bytes(&d->output));
    }
    int64_t factors_bytes = d->n_rot / 2 * (int64_t)sizeof(float);
    weights += (d->rope_factors_short != NULL) * factors_bytes;
    weights += (d->rope_factors_long != NULL) * factors_bytes;
    for (int64_t l = 0; ok && l < d->n_layer; l++) {
        const struct pyphi_layer_weights *L = &d->layers[l];
        const struct pyphi_tensor *ts[] = {&L->attn_norm, &L->wqkv, &L->wq, &L->wk, &L->wv,
                                           &L->wo, &L->ffn_norm, &L->ffn_gate_up, &L->ffn_gate,
                                           &L->ffn_up, &L->ffn_down};
        for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
            ok = ok && add_size(&weights, tensor_bytes(ts[i]));
        }
    }
    if (!ok) {
        return PYPHI_E_SHAPE;
    }
    int64_t kv = pyphi_kv_bytes(p->kv_type, d->n_layer, p->n_ctx, kv_dim(d));
    if (kv < 0) {
        return (int)kv;
    }
    int64_t packed = 0;
    if (p->pack_weights) {
        ok = add_size(&packed, packed_size(&d->output));
        for (int64_t l = 0; l < d->n_layer; l++) {
            const struct pyphi_tensor *ms[MATRICES_PER_LAYER];
            layer_matrices(&d->layers[l], ms);
            for (int i = 0; i < MATRICES_PER_LAYER; i++) {
                ok = ok && add_size(&packed, packed_size(ms[i]));
            }
        }
    }
    /* widths are below 2^31 (check_desc), n_batch too (check_params): per_token < 2^35 */
    int64_t scratch_floats, scratch = p->n_ctx * (int64_t)sizeof(int32_t);
    if (p->numerics == PYPHI_NUMERICS_GGML) {
        scratch += act_q_bytes(d, p->n_batch);
    }
    if (!ok || __builtin_mul_overflow(activation_floats(d, 1), p->n_batch, &scratch_floats) ||
        !add_size(&scratch_floats, d->n_rot) || scratch_floats > INT64_MAX / (int64_t)sizeof(float) ||
        !add_size(&scratch, scratch_floats * (int64_t)sizeof(float))) {
        return PYPHI_E_SHAPE;
    }
    sizes->weights_bytes = weights;
    sizes->packed_bytes = packed;
    sizes->kv_bytes = kv;
    sizes->scratch_bytes = scratch;
    return PYPHI_OK;
}

/* ---- Create and free ------------------------------------------------------------------------ */

void pyphi_model_free(pyphi_model *m) {
    if (m == NULL) {
        return;
    }
    pyphi_filler_stop(m->filler);
    pyphi_kv_free(&m->kv);
    free(m->layers);
    free(m->tokens);
    free(m->inv_freq[0]);
    free(m->x); /* one allocation holds every activation buffer */
    free(m->packed);
    free(m->packs);
    free(m->attn_scratch);
    free(m->act_q);
    free(m);
}

int pyphi_model_create(const struct pyphi_model_desc *desc, const struct pyphi_model_params *params,
                       pyphi_model **out) {
    struct pyphi_model_sizes sizes;
    TRY(pyphi_model_sizes(desc, params, &sizes));
    if (out == NULL) {
        return PYPHI_E_ARG;
    }
    *out = NULL;
    pyphi_model *m = calloc(1, sizeof *m);
    if (m == NULL) {
        return PYPHI_E_NOMEM;
    }
    m->d = *desc;
    m->p = *params;
    int64_t n = params->n_batch, half = desc->n_rot / 2;
    m->layers = malloc((size_t)desc->n_layer * sizeof *m->layers);
    m->tokens = malloc((size_t)params->n_ctx * sizeof *m->tokens);
    m->inv_freq[0] = malloc((size_t)(2 * half + 1) * sizeof(float));
    m->x = malloc((size_t)activation_floats(desc, n) * sizeof(float));
    m->ggml = params->numerics == PYPHI_NUMERICS_GGML;
    if (m->ggml) {
        m->act_q = malloc((size_t)act_q_bytes(desc, n));
        m->rope_long = ggml_rope_long(desc, params);
    }
    int status = m->layers && m->tokens && m->inv_freq[0] && m->x && (m->act_q || !m->ggml)
                     ? PYPHI_OK
                     : PYPHI_E_NOMEM;
    if (status == PYPHI_OK) {
        status = pyphi_kv_init(&m->kv, params->kv_type, desc->n_layer, params->n_ctx,
                               desc->n_head_kv, desc->head_dim);
    }
    if (status < 0) {
        pyphi_model_free(m);
        return status;
    }
    memcpy(m->layers, desc->layers, (size_t)desc->n_layer * sizeof *m->layers);
    m->d.layers = m->layers;
    if (sizes.packed_bytes > 0) {
        /* whole 2 MiB pages, on transparent huge pages: a decode step streams all of it, and
         * 4 KiB pages cost it 2-20% in TLB misses (at once, or after the pack: huge_pages.c) */
        size_t span = packed_span(sizes.packed_bytes);
        m->packed = aligned_alloc(PYPHI_HUGE_PAGE, span);
        if (m->packed == NULL) {
            pyphi_model_free(m);
            return PYPHI_E_NOMEM;
        }
        pyphi_huge_pages_advise(m->packed, span);
        m->packed_bytes = sizes.packed_bytes;
        m->packs = malloc((size_t)(1 + desc->n_layer * MATRICES_PER_LAYER) * sizeof *m->packs);
        if (m->packs == NULL) {
            pyphi_model_free(m);
            return PYPHI_E_NOMEM;
        }
        /* in the order forward reads them, so that the first evals, which run ahead of the
         * filler, map the sources it has not reached yet rather than ones it already dropped
         * (else those would be resident twice, as file pages and as the copy) */
        uint8_t *cursor = m->packed;
        for (int64_t l = 0; l < desc->n_layer; l++) {
            const struct pyphi_tensor *ms[MATRICES_PER_LAYER];
            layer_matrices(&m->layers[l], ms);
            for (int i = 0; i < MATRICES_PER_LAYER; i++) {
                reserve_pack(m, ms[i], &cursor);
            }
        }
        /* a tied head's pages go too: the embedding faults back in the rows it reads, and
         * forward drops them again after each lookup */
        reserve_pack(m, &m->d.output, &cursor);
    }
    m->inv_freq[1] = m->inv_freq[0] + half;
    pyphi_rope_inv_freq(m->inv_freq[0], desc->n_rot, desc->rope_base, desc->rope_factors_short);
    pyphi_rope_inv_freq(m->inv_freq[1], desc->n_rot, desc->rope_base,
                        uses_longrope(desc) ? desc->rope_factors_long : desc->rope_factors_short);
    m->xn = m->x + n * desc->n_embd;
    m->qkv = m->xn + n * desc->n_embd;
    m->attn = m->qkv + n * qkv_dim(desc);
    m->gate_up = m->attn + n * q_dim(desc);
    m->ffn = m->gate_up + n * 2 * desc->n_ff;
    m->proj = m->ffn + n * desc->n_ff;
    m->rope_cs = m->proj + n * proj_cols(desc);
    if (m->n_packs > 0) {
        m->filler = pyphi_filler_start(m->packed, packed_span(m->packed_bytes), fill_packs, m);
    }
    *out = m;
    return PYPHI_OK;
}

/* ---- Forward pass --------------------------------------------------------------------------- */

/* x (n, n_embd) = rows tokens[t] of the embedding, dequantized (no scaling, SPEC §4.1). */
static void embed(const struct pyphi_tensor *tok_embd, const int32_t *tokens, int64_t n, float *x) {
    size_t row_bytes = (size_t)pyphi_row_bytes(tok_embd->type, tok_embd->ne0);
    for (int64_t t = 0; t < n; t++) {
        const uint8_t *row = (const uint8_t *)tok_embd->data + (size_t)tokens[t] * row_bytes;
        pyphi_dequantize_row(tok_embd->type, row, x + t * tok_embd->ne0, tok_embd->ne0);
    }
}

/* The pack item of the matrix whose data is w_data, or NULL if it has no packed copy. */
static const struct pack_item *pack_of(const pyphi_model *m, const void *w_data) {
    for (int64_t i = 0; i < m->n_packs; i++) {
        if (m->packs[i].t->data == w_data) {
            return &m->packs[i];
        }
    }
    return NULL;
}

/* A matrix with a packed copy goes to the packed matmul, from the copy once it is ready. */
static int matmul(const pyphi_model *m, pyphi_pool *pool, const struct pyphi_tensor *w,
                  const float *x, int64_t n, float *y) {
    if (m->ggml) {
        return pyphi_ggml_matmul(pool, w->type, w->data, w->ne1, w->ne0, x, n, y, m->act_q);
    }
    const struct pack_item *it = pack_of(m, w->data);
    if (it != NULL && pack_ready(it)) {
        return pyphi_matmul_packed(pool, w->type, it->dst, w->ne1, w->ne0, x, n, y);
    }
    if (it != NULL) {
        int status = pyphi_matmul_as_packed(pool, w->type, w->data, w->ne1, w->ne0, x, n, y);
        if (atomic_load(&it->started)) {
            /* the filler had dropped some of these pages, and this product mapped them again:
             * with the copy they would make the matrix resident twice */
            drop_pages(w->data, (size_t)pyphi_packed_bytes(w->type, w->ne1, w->ne0));
        }
        return status;
    }
    return pyphi_matmul(pool, w->type, w->data, w->ne1, w->ne0, x, n, y);
}

/* y (n, sum of outputs) = x . [fused or parts]^T. Separate parts (Llama's q/k/v, gate/up) are
 * multiplied one at a time into tmp and copied into their columns, so what follows sees the
 * fused layout either way. */
static int project(const pyphi_model *m, pyphi_pool *pool, const struct pyphi_tensor *fused,
                   const struct pyphi_tensor *parts, int n_parts, const float *x, int64_t n,
                   float *y, int64_t y_cols, float *tmp) {
    if (fused->data != NULL) {
        return matmul(m, pool, fused, x, n, y);
    }
    int64_t col = 0;
    for (int i = 0; i < n_parts; i++) {
        int64_t cols = parts[i].ne1;
        TRY(matmul(m, pool, &parts[i], x, n, tmp)); /* (n, cols) */
        for (int64_t t = 0; t < n; t++) {
            memcpy(y + t * y_cols + col, tmp + t * cols, (size_t)cols * sizeof(float));
        }
        col += cols;
    }
    return PYPHI_OK;
}

static int project_qkv(const pyphi_model *m, pyphi_pool *pool, const struct pyphi_layer_weights *L,
                       const struct pyphi_model_desc *d, const float *x, int64_t n, float *qkv,
                       float *tmp) {
    const struct pyphi_tensor parts[3] = {L->wq, L->wk, L->wv};
    return project(m, pool, &L->wqkv, parts, 3, x, n, qkv, qkv_dim(d), tmp);
}

static int project_gate_up(const pyphi_model *m, pyphi_pool *pool, const struct pyphi_layer_weights *L,
                           const struct pyphi_model_desc *d, const float *x, int64_t n,
                           float *gate_up, float *tmp) {
    const struct pyphi_tensor parts[2] = {L->ffn_gate, L->ffn_up};
    return project(m, pool, &L->ffn_gate_up, parts, 2, x, n, gate_up, 2 * d->n_ff, tmp);
}

/* SwiGLU over the pool, SWIGLU_CHUNK_ROWS tokens per chunk: its expf per value of a prefill's
 * (n, n_ff) gate is the costliest element-wise stage, and one thread doing it while the others
 * wait showed in 2-thread prefill. Each value is the same pyphi_swiglu arithmetic, so the result
 * does not depend on the pool size. */
#define SWIGLU_CHUNK_ROWS 8
struct swiglu_job {
    void (*rows_fn)(float *out, const float *gate_up, int64_t n_rows, int64_t n_ff);
    float *out;           /* (n, n_ff) */
    const float *gate_up; /* (n, 2 n_ff) */
    int64_t n, n_ff;
};

static void swiglu_chunk(void *ctx, int64_t chunk, int thread) {
    (void)thread;
    const struct swiglu_job *job = ctx;
    int64_t r0 = chunk * SWIGLU_CHUNK_ROWS;
    int64_t rows = job->n - r0 < SWIGLU_CHUNK_ROWS ? job->n - r0 : SWIGLU_CHUNK_ROWS;
    job->rows_fn(job->out + r0 * job->n_ff, job->gate_up + r0 * 2 * job->n_ff, rows, job->n_ff);
}

static void swiglu(const pyphi_model *m, pyphi_pool *pool, float *out, const float *gate_up,
                   int64_t n, int64_t n_ff) {
    struct swiglu_job job = {.rows_fn = m->ggml ? pyphi_ggml_swiglu : pyphi_swiglu,
                             .out = out, .gate_up = gate_up, .n = n, .n_ff = n_ff};
    if (n <= SWIGLU_CHUNK_ROWS) { /* a decode step: not worth a pool job */
        job.rows_fn(out, gate_up, n, n_ff);
        return;
    }
    pyphi_pool_run(pool, swiglu_chunk, &job, (n + SWIGLU_CHUNK_ROWS - 1) / SWIGLU_CHUNK_ROWS);
}

/* m->rope_cs (n, n_rot) = the rotations of positions pos .. pos + n - 1. */
static void rope_table(pyphi_model *m, int64_t pos, int64_t n) {
    const struct pyphi_model_desc *d = &m->d;
    if (m->ggml) {
        const float *factors = m->rope_long ? d->rope_factors_long : d->rope_factors_short;
        pyphi_ggml_rope_table(m->rope_cs, pos, n, d->n_rot, d->rope_base, factors,
                              d->rope_attn_factor);
    } else {
        pyphi_rope_table(m->rope_cs, pos, n, m->inv_freq[m->rope_long], d->n_rot,
                         d->rope_attn_factor);
    }
}

/* Rotates the q and k heads of every token of qkv (n, qkv_dim) in place, token t with row t of
 * the batch's table. */
static void rope_qk(const pyphi_model *m, float *qkv, const float *cs, int64_t n) {
    const struct pyphi_model_desc *d = &m->d;
    void (*apply)(float *, int64_t, int64_t, int64_t, int, const float *) =
        m->ggml ? pyphi_ggml_rope_apply : pyphi_rope_apply;
    for (int64_t t = 0; t < n; t++) {
        float *q = qkv + t * qkv_dim(d); /* (n_head, head_dim) */
        float *k = q + q_dim(d);         /* (n_head_kv, head_dim) */
        apply(q, d->n_head, d->head_dim, d->n_rot, d->rope_pairing, cs + t * d->n_rot);
        apply(k, d->n_head_kv, d->head_dim, d->n_rot, d->rope_pairing, cs + t * d->n_rot);
    }
}

static void rms_norm(const pyphi_model *m, float *y, const float *x, const struct pyphi_tensor *w,
                     int64_t n) {
    (m->ggml ? pyphi_ggml_rms_norm : pyphi_rms_norm)(y, x, w->data, n, m->d.n_embd, m->d.rms_eps);
}

static int attention(const pyphi_model *m, pyphi_pool *pool, const struct pyphi_attention_args *a) {
    return m->ggml ? pyphi_ggml_attention(pool, a, m->d.queries_scaled) : pyphi_attention(pool, a);
}

/* Runs tokens (n,) at positions pos .. pos + n - 1 (n <= n_batch), appending their keys and
 * values to the cache; if n_out > 0, logits (n_out, n_vocab) get the logits of the last n_out
 * tokens. */
static int forward(pyphi_model *m, pyphi_pool *pool, const int32_t *tokens, int64_t n,
                   int64_t pos, float *logits, int64_t n_out) {
    const struct pyphi_model_desc *d = &m->d;
    const struct pyphi_layer_weights *L;
    const int64_t E = d->n_embd, QKV = qkv_dim(d);
    /* attention's scores: one slice per pool thread, allocated on the first call with a pool */
    int64_t scratch = pyphi_pool_size(pool) *
                      (m->ggml ? pyphi_ggml_attention_scratch_floats(d->head_dim, m->kv.n_ctx)
                               : pyphi_attention_scratch_floats(d->n_head, d->n_head_kv, m->kv.n_ctx));
    if (scratch > m->attn_scratch_floats) {
        float *grown = realloc(m->attn_scratch, (size_t)scratch * sizeof(float));
        if (grown == NULL) {
            return PYPHI_E_NOMEM;
        }
        m->attn_scratch = grown;
        m->attn_scratch_floats = scratch;
    }
    struct pyphi_attention_args attn = {
        .q = m->qkv, .q_stride = QKV, .kv = &m->kv, .out = m->attn, .n_tokens = n, .pos = pos,
        .n_head = d->n_head, .n_head_kv = d->n_head_kv, .head_dim = d->head_dim,
        .window = d->sliding_window, .scratch = m->attn_scratch,
    };

    embed(&d->tok_embd, tokens, n, m->x);                                  /* x (n, E) */
    const struct pack_item *head = pack_of(m, d->output.data);
    if (d->output.data == d->tok_embd.data && head != NULL && pack_ready(head)) {
        /* Each row read faulted its page back in, and the kernel maps the cached pages around
         * it too (fault-around, up to a whole folio): on Phi-4-mini's q4_k_m the mapped part of
         * the tied embedding, beside its packed copy, grew by about 20 MiB per 512 varied tokens,
         * toward all 504 MB. Dropping the pages again costs a fault per row next time. */
        drop_pages(d->tok_embd.data, tensor_bytes(&d->tok_embd));
    }
    rope_table(m, pos, n);                                                 /* (n, n_rot) */
    for (int64_t l = 0; l < d->n_layer; l++) {
        L = &d->layers[l];
        attn.layer = l;
        rms_norm(m, m->xn, m->x, &L->attn_norm, n);                        /* (n, E) */
        TRY(project_qkv(m, pool, L, d, m->xn, n, m->qkv, m->proj));          /* (n, QKV) */
        rope_qk(m, m->qkv, m->rope_cs, n);                                 /* q, k rotated */
        pyphi_kv_store(&m->kv, l, pos, m->qkv + q_dim(d), m->qkv + q_dim(d) + kv_dim(d), n,
                       QKV);                                               /* cache pos..pos+n */
        TRY(attention(m, pool, &attn));                                    /* attn (n, q_dim) */
        TRY(matmul(m, pool, &L->wo, m->attn, n, m->proj));                    /* (n, E) */
        pyphi_add(m->x, m->proj, n * E);                                   /* residual */
        rms_norm(m, m->xn, m->x, &L->ffn_norm, n);                         /* (n, E) */
        TRY(project_gate_up(m, pool, L, d, m->xn, n, m->gate_up, m->proj));   /* (n, 2 n_ff) */
        swiglu(m, pool, m->ffn, m->gate_up, n, d->n_ff);                   /* (n, n_ff) */
        TRY(matmul(m, pool, &L->ffn_down, m->ffn, n, m->proj));               /* (n, E) */
        pyphi_add(m->x, m->proj, n * E);                                   /* residual */
    }
    if (n_out > 0) {
        const float *x_out = m->x + (n - n_out) * E;                       /* (n_out, E) */
        rms_norm(m, m->xn, x_out, &d->output_norm, n_out);
        TRY(matmul(m, pool, &d->output, m->xn, n_out, logits));               /* (n_out, n_vocab) */
    }
    return PYPHI_OK;
}

/* ---- LongRoPE factor changes ---------------------------------------------------------------- */

/* Re-rotates the n_past cached keys from the current factor set to the other one. */
static int rerotate_cache(pyphi_model *m, pyphi_pool *pool) {
    const struct pyphi_model_desc *d = &m->d;
    return pyphi_kv_rerotate(&m->kv, pool, m->n_past, d->n_rot, d->rope_pairing,
                             m->inv_freq[m->rope_long], m->inv_freq[!m->rope_long],
                             d->rope_attn_factor);
}

/* pyphi_model_eval after its checks: runs the batches. */
static int eval_batches(pyphi_model *m, pyphi_pool *pool, const int32_t *tokens, int64_t n_tokens,
                        int64_t pos, float *logits, int64_t n_logits) {
    drop_sources_once_packed(m);
    int64_t end = pos + n_tokens;
    /* GGML: llama.cpp's factor set, chosen at create */
    int want_long = m->ggml ? m->rope_long : uses_longrope(&m->d) && end > m->d.n_ctx_orig;
    int64_t start = pos; /* the first position this call computes */
    m->n_past = pos;
    if (m->n_past > 0 && want_long != m->rope_long) {
        if (m->p.longrope_switch == PYPHI_LONGROPE_REROTATE) {
            TRY(rerotate_cache(m, pool));
        } else {
            start = 0; /* recompute the cached prefix from its tokens */
        }
        m->rope_switches++;
    }
    m->rope_long = want_long;
    memcpy(m->tokens + pos, tokens, (size_t)n_tokens * sizeof *tokens);
    m->n_past = start;

    for (int64_t b0 = start; b0 < end; b0 += m->p.n_batch) {
        int64_t n = end - b0 < m->p.n_batch ? end - b0 : m->p.n_batch;
        /* logits rows wanted: positions end - n_logits .. end - 1 */
        int64_t first_wanted = end - n_logits > b0 ? end - n_logits : b0;
        int64_t n_out = b0 + n - first_wanted > 0 ? b0 + n - first_wanted : 0;
        float *out = n_out > 0 ? logits + (first_wanted - (end - n_logits)) * m->d.n_vocab : NULL;
        TRY(forward(m, pool, m->tokens + b0, n, b0, out, n_out));
        m->n_past = b0 + n;
    }
    return PYPHI_OK;
}

/* ---- Public API ----------------------------------------------------------------------------- */

int pyphi_model_eval(pyphi_model *m, pyphi_pool *pool, const int32_t *tokens, int64_t n_tokens,
                     int64_t pos, float *logits, int64_t n_logits) {
    if (m == NULL || tokens == NULL || n_tokens < 1 || pos < 0 || pos > m->n_past ||
        n_logits < 0 || n_logits > n_tokens || (n_logits > 0 && logits == NULL)) {
        return PYPHI_E_ARG;
    }
    if (n_tokens > m->p.n_ctx - pos) {
        return PYPHI_E_CONTEXT;
    }
    for (int64_t t = 0; t < n_tokens; t++) {
        if (tokens[t] < 0 || tokens[t] >= m->d.n_vocab) {
            return PYPHI_E_ARG;
        }
    }
    pyphi_filler_busy(m->filler, 1);
    int status = eval_batches(m, pool, tokens, n_tokens, pos, logits, n_logits);
    pyphi_filler_busy(m->filler, 0);
    return status;
}

int pyphi_model_truncate(pyphi_model *m, int64_t n) {
    if (m == NULL || n < 0 || n > m->n_past) {
        return PYPHI_E_ARG;
    }
    m->n_past = n;
    return PYPHI_OK;
}

int64_t pyphi_model_n_past(const pyphi_model *m) {
    return m == NULL ? PYPHI_E_ARG : m->n_past;
}

int pyphi_model_rope_long(const pyphi_model *m) {
    return m == NULL ? PYPHI_E_ARG : m->rope_long;
}

int64_t pyphi_model_rope_switches(const pyphi_model *m) {
    return m == NULL ? PYPHI_E_ARG : m->rope_switches;
}

int pyphi_model_packed(const pyphi_model *m) {
    if (m == NULL) {
        return PYPHI_E_ARG;
    }
    return m->n_packs == 0 || pack_ready(&m->packs[m->n_packs - 1]);
}
