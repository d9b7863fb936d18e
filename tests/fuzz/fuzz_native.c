/* libFuzzer harness over the C core's entry points that take file-derived data.
 *
 * A GGUF or safetensors file reaches the C core as (a) rows of raw block bytes and their declared
 * type and length (pyphi_dequantize_row, pyphi_vec_dot, pyphi_matmul; the converter's
 * pyphi_convert_rows on checkpoint rows, whose floats may be NaN or Inf), and (b) a model
 * description whose sizes, types and shapes come from the GGUF's metadata and tensor infos
 * (pyphi_model_sizes, pyphi_model_create, pyphi_model_eval). The fuzzer drives both with
 * bytes; ASan and UBSan (and the asserts here) report any read out of bounds, overflow or
 * inconsistent status. Every buffer is allocated at exactly the size the library is told, so an
 * overread lands in ASan's red zone.
 *
 * Build and run: see tests/fuzz/README.md (tests/fuzz/native.py builds it).
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

#include "pyphi.h"

struct input {
    const uint8_t *p;
    size_t n;
};

static uint64_t take(struct input *in, int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) {
        v |= (uint64_t)(in->n ? (in->n--, *in->p++) : 0) << (8 * i);
    }
    return v;
}

/* A copy of the next `size` input bytes (zeros past the end) in a buffer of exactly that size. */
static void *take_buffer(struct input *in, size_t size) {
    uint8_t *buf = malloc(size ? size : 1);
    size_t have = in->n < size ? in->n : size;
    memcpy(buf, in->p, have);
    memset(buf + have, 0, size - have);
    in->p += have;
    in->n -= have;
    return buf;
}

/* Type ids: mostly ones the library knows (0..31), sometimes anything. */
static int take_type(struct input *in) {
    uint8_t b = (uint8_t)take(in, 1);
    return b < 224 ? b % 32 : (int)(int32_t)take(in, 4);
}

/* ---- rows: dequantize, quantize, convert, dot, matmul ---------------------------------------- */

static void fuzz_rows(struct input *in) {
    int isa = (int)(take(in, 1) % PYPHI_ISA_COUNT);
    if (pyphi_isa_supported(isa)) {
        pyphi_isa_set(isa);
    }
    int type = take_type(in);
    int64_t n = (int64_t)(take(in, 2) % 1025);
    if (take(in, 1) == 0xff) {
        n = (int64_t)take(in, 8); /* any count, negative or huge: must be refused */
    }
    int64_t row_bytes = pyphi_row_bytes(type, n);
    if (row_bytes < 0 || n > 4096) {
        float y[4];
        uint8_t x[4] = {0};
        /* a bad type or count is refused before anything is read or written */
        if (row_bytes < 0) {
            assert(pyphi_dequantize_row(type, x, y, n) < 0);
            assert(pyphi_quantize_row(type, y, x, n) < 0);
        }
        return;
    }
    void *w = take_buffer(in, (size_t)row_bytes);
    float *values = malloc((size_t)n * sizeof(float) + 1);
    int deq = pyphi_dequantize_row(type, w, values, n);
    /* the row's floats, now also ones straight from the input (NaN, Inf, denormals) */
    if (take(in, 1) & 1) {
        void *raw = take_buffer(in, (size_t)n * sizeof(float));
        memcpy(values, raw, (size_t)n * sizeof(float));
        free(raw);
        deq = 0;
    }
    if (deq == 0) {
        int qtype = take_type(in);
        int64_t q_bytes = pyphi_row_bytes(qtype, n);
        void *q = malloc(q_bytes > 0 ? (size_t)q_bytes : 1);
        int status = pyphi_quantize_row(qtype, values, q, n);
        assert((status < 0) == (q_bytes < 0) || status < 0);
        free(q);
    }
    int atype = pyphi_vec_dot_type(type);
    int64_t a_bytes = atype >= 0 ? pyphi_row_bytes(atype, n) : -1;
    if (a_bytes >= 0 && n > 0) {
        void *a = take_buffer(in, (size_t)a_bytes);
        float out;
        pyphi_vec_dot(type, w, a, n, &out);
        free(a);
        int64_t n_out = row_bytes > 0 ? 1 : 0;
        float *x = take_buffer(in, (size_t)n * sizeof(float));
        float y;
        if (n_out) {
            pyphi_matmul(NULL, type, w, n_out, n, x, 1, &y);
        }
        free(x);
    }
    int dst_type = take_type(in);
    int64_t dst_bytes = pyphi_row_bytes(dst_type, n);
    if (dst_bytes >= 0) {
        void *dst = malloc(dst_bytes ? (size_t)dst_bytes : 1);
        pyphi_convert_rows(NULL, type, w, dst_type, dst, 1, n);
        free(dst);
    }
    free(values);
    free(w);
}

/* ---- model descriptions ---------------------------------------------------------------------- */

#define MAX_LAYERS 3
#define MAX_ALLOC ((int64_t)8 << 20) /* model memory the harness lets a description ask for */

/* Buffers handed out as tensor data in this run, freed at the end. */
struct arena {
    void *blocks[4 + 9 * MAX_LAYERS];
    int n;
};

/* Types a weight matrix may have: the ones the forward pass computes, and one it does not. */
static const int MATRIX_TYPES[] = {PYPHI_TYPE_F32, PYPHI_TYPE_F16, PYPHI_TYPE_BF16, PYPHI_TYPE_Q8_0,
                                   PYPHI_TYPE_Q4_0, PYPHI_TYPE_Q4_K, PYPHI_TYPE_Q6_K, 7};

/* Fills t as a (ne1 rows of ne0) tensor. Mostly what the description's dimensions imply, with a
 * fuzzed type (F32 for norms); rarely absent, of a wild type, or of a wild shape, so that both
 * the checks and the forward pass behind them are reached. */
static void take_tensor(struct input *in, struct arena *arena, struct pyphi_tensor *t, int64_t ne0,
                        int64_t ne1, int norm, int small) {
    uint8_t how = (uint8_t)take(in, 1);
    if (how == 0) {
        memset(t, 0, sizeof *t); /* absent */
        return;
    }
    int type = norm ? PYPHI_TYPE_F32 : MATRIX_TYPES[how % (sizeof MATRIX_TYPES / sizeof MATRIX_TYPES[0])];
    if (pyphi_row_bytes(type, ne0) < 0) {
        type = PYPHI_TYPE_F32; /* the row does not fill whole blocks */
    }
    t->type = how == 0xfd ? take_type(in) : type;
    t->ne0 = how == 0xfe ? (int64_t)take(in, 8) : ne0;
    t->ne1 = how == 0xff ? (int64_t)take(in, 8) : ne1;
    int64_t row = pyphi_row_bytes(t->type, t->ne0);
    int64_t bytes = row >= 0 && t->ne1 >= 0 && (t->ne1 == 0 || row <= MAX_ALLOC / t->ne1)
                        ? row * t->ne1
                        : -1;
    if (!small || bytes < 0 || bytes > MAX_ALLOC) {
        bytes = 1; /* too big to back: only pyphi_model_sizes sees it, which must not read it */
    }
    t->data = take_buffer(in, (size_t)bytes);
    arena->blocks[arena->n++] = (void *)t->data;
}

/* A description either "wild" (every number any int64: only pyphi_model_sizes runs, which must
 * refuse without overflow) or "small": dimensions consistent by construction (head counts that
 * divide, an even n_rot up to head_dim, widths of 32 or 64 when block types should fit), so the
 * model is created and evaluated on the fuzzed weights and tokens. */
static void fuzz_model(struct input *in) {
    struct pyphi_model_desc d;
    memset(&d, 0, sizeof d);
    int wild = (take(in, 1) & 7) == 0, small = !wild;
    if (wild) {
        int64_t *dims[] = {&d.n_vocab, &d.n_embd, &d.n_head, &d.n_head_kv, &d.head_dim, &d.n_ff,
                           &d.n_rot, &d.n_ctx_train, &d.n_ctx_orig, &d.sliding_window};
        for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++) {
            *dims[i] = (int64_t)take(in, 8);
        }
        d.n_layer = 1 + (int64_t)(take(in, 1) % MAX_LAYERS);
    } else {
        int blocks = take(in, 1) & 1; /* widths that whole Q8_0/Q4_0 blocks fill */
        d.n_vocab = 1 + (int64_t)(take(in, 1) % 40);
        d.n_embd = blocks ? 32 * (1 + (int64_t)(take(in, 1) % 2)) : 1 + (int64_t)(take(in, 1) % 40);
        d.n_layer = 1 + (int64_t)(take(in, 1) % MAX_LAYERS);
        d.n_head_kv = 1 + (int64_t)(take(in, 1) % 4);
        d.n_head = d.n_head_kv * (1 + (int64_t)(take(in, 1) % 3));
        d.head_dim = blocks ? 32 : 2 * (1 + (int64_t)(take(in, 1) % 8));
        d.n_ff = blocks ? 32 : 1 + (int64_t)(take(in, 1) % 40);
        d.n_rot = 2 * (int64_t)(take(in, 1) % (d.head_dim / 2 + 1));
        d.n_ctx_train = 1 + (int64_t)(take(in, 1) % 64);
        d.n_ctx_orig = (int64_t)(take(in, 1) % 8);
        d.sliding_window = (int64_t)(take(in, 1) % 8);
    }
    float floats[3] = {1e-5f, 10000.0f, 1.0f};
    if (wild || (take(in, 1) & 7) == 0) { /* NaN, Inf, negatives, denormals */
        for (int i = 0; i < 3; i++) {
            uint32_t bits = (uint32_t)take(in, 4);
            memcpy(&floats[i], &bits, 4);
        }
    }
    d.rms_eps = floats[0];
    d.rope_base = floats[1];
    d.rope_attn_factor = floats[2];

    struct pyphi_model_params p = {
        .n_ctx = wild ? (int64_t)take(in, 8) : 1 + (int64_t)(take(in, 1) % (uint64_t)d.n_ctx_train),
        .n_batch = wild ? (int64_t)take(in, 8) : 1 + (int64_t)(take(in, 1) % 8),
        .kv_type = (take(in, 1) & 1) ? PYPHI_TYPE_F16 : PYPHI_TYPE_F32,
        .longrope_switch = (int32_t)(take(in, 1) % 3),
        .pack_weights = (int32_t)(take(in, 1) & 1),
    };
    /* the shapes the forward pass expects (wild dimensions: passed through, the shapes are off) */
    int64_t q = small ? d.n_head * d.head_dim : d.n_head, kv = small ? d.n_head_kv * d.head_dim : 0;
    int64_t qkv = small ? q + 2 * kv : d.head_dim, ff2 = small ? 2 * d.n_ff : d.n_ff;

    struct arena arena = {.n = 0};
    struct pyphi_layer_weights layers[MAX_LAYERS];
    memset(layers, 0, sizeof layers);
    float *factors[2] = {NULL, NULL};
    take_tensor(in, &arena, &d.tok_embd, d.n_embd, d.n_vocab, 0, small);
    take_tensor(in, &arena, &d.output_norm, d.n_embd, 1, 1, small);
    if (take(in, 1) & 1) {
        d.output = d.tok_embd;
    } else {
        take_tensor(in, &arena, &d.output, d.n_embd, d.n_vocab, 0, small);
    }
    if (small && d.n_rot > 0) {
        for (int i = 0; i < 2; i++) {
            if (take(in, 1) & 1) {
                factors[i] = take_buffer(in, (size_t)(d.n_rot / 2) * sizeof(float));
            }
        }
        d.rope_factors_short = factors[0];
        d.rope_factors_long = factors[1];
    }
    for (int64_t l = 0; l < d.n_layer; l++) {
        struct pyphi_layer_weights *L = &layers[l];
        take_tensor(in, &arena, &L->attn_norm, d.n_embd, 1, 1, small);
        take_tensor(in, &arena, &L->wqkv, d.n_embd, qkv, 0, small);
        take_tensor(in, &arena, &L->wo, q, d.n_embd, 0, small);
        take_tensor(in, &arena, &L->ffn_norm, d.n_embd, 1, 1, small);
        take_tensor(in, &arena, &L->ffn_gate_up, d.n_embd, ff2, 0, small);
        take_tensor(in, &arena, &L->ffn_down, d.n_ff, d.n_embd, 0, small);
    }
    d.layers = layers;

    struct pyphi_model_sizes sizes;
    int status = pyphi_model_sizes(&d, &p, &sizes);
    if (status == PYPHI_OK) {
        assert(sizes.weights_bytes >= 0 && sizes.kv_bytes >= 0 && sizes.scratch_bytes >= 0 &&
               sizes.packed_bytes >= 0);
    }
    /* create and run only what the harness itself backed with memory */
    if (status == PYPHI_OK && small && sizes.weights_bytes <= MAX_ALLOC &&
        sizes.kv_bytes + sizes.scratch_bytes + sizes.packed_bytes <= MAX_ALLOC) {
        pyphi_model *m = NULL;
        if (pyphi_model_create(&d, &p, &m) == PYPHI_OK) {
            int32_t tokens[4];
            int64_t n_tokens = 1 + (int64_t)(take(in, 1) % 4);
            for (int i = 0; i < 4; i++) {
                tokens[i] = (int32_t)(take(in, 1) % (uint64_t)(d.n_vocab + 2)) - 1; /* -1, n_vocab: bad */
            }
            float *logits = malloc((size_t)d.n_vocab * sizeof(float));
            int64_t pos = (int64_t)(take(in, 1) % 3);
            pyphi_model_eval(m, NULL, tokens, n_tokens, 0, logits, 1);
            pyphi_model_truncate(m, pos);
            pyphi_model_eval(m, NULL, tokens, n_tokens, pos, logits, 1);
            free(logits);
            pyphi_model_free(m);
        }
    }
    for (int i = 0; i < arena.n; i++) {
        free(arena.blocks[i]);
    }
    free(factors[0]);
    free(factors[1]);
}

/* The library moves packed weights onto transparent huge pages (huge_pages.c): under ASan's
 * quarantine every freed model would keep a whole 2 MiB page resident, so peak RSS would measure
 * page sizes, not the memory the library touches (2.9 GB on a machine where huge pages were
 * plentiful). Without THP the collapsing thread ends at its first page. */
int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct input in = {data, size};
    if (take(&in, 1) & 1) {
        fuzz_model(&in);
    } else {
        fuzz_rows(&in);
    }
    return 0;
}
