/* dispatch.c: which kernel table runs. The best ISA this CPU and build support is chosen once, on
 * first use (pthread_once, so any thread may be first); pyphi_isa_set can force another one.
 *
 * Portable: it only asks cpu_<arch>.c what exists (pyphi_isa_kernels, pyphi_isa_requires) and
 * what the CPU has (pyphi_cpu_detect), so this file needs no per-architecture code and runs no
 * instruction beyond the target's baseline.
 */
#include "kernels.h"
#include "pyphi.h"

#include <pthread.h>
#include <stdatomic.h>

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static uint32_t g_features;                     /* written once under g_once */
static int g_best;                              /* written once under g_once */
static pyphi_kernels g_tables[PYPHI_ISA_COUNT]; /* each ISA's table, gaps filled; under g_once */
static _Atomic(const pyphi_kernels *) g_current; /* the table in use now */

/* isa's completed table, or NULL before init_once or if this build has none. */
static const pyphi_kernels *table(int isa) {
    return g_tables[isa].vec_dot[PYPHI_TYPE_F32] != NULL ? &g_tables[isa] : NULL;
}

/* Fills g_tables[isa]: isa's own table with every NULL entry taken from its base's completed
 * table (kernels.h), the scalar one by default; left empty if this build has no table for isa. Called in increasing isa order,
 * so a base (always below isa) is complete first. A missing vec_dot brings the base's gemm with
 * it, so a tile always computes what its table's vec_dot does. */
static void complete_table(int isa) {
    const pyphi_kernels *own = pyphi_isa_kernels(isa);
    if (own == NULL) {
        return;
    }
    const pyphi_kernels *base = own->base > 0 && own->base < isa && table(own->base) != NULL
                                    ? table(own->base)
                                    : &pyphi_kernels_scalar;
    pyphi_kernels *t = &g_tables[isa];
    *t = *own;
    for (int type = 0; type < PYPHI_TYPE_ID_LIMIT; type++) {
        if (t->vec_dot[type] == NULL) {
            t->vec_dot[type] = base->vec_dot[type];
            t->gemm[type] = base->gemm[type];
        }
        if (t->gemm_packed[type] == NULL) {
            t->gemm_packed[type] = base->gemm_packed[type];
        }
        if (t->gemm_lanes[type] == NULL) {
            t->gemm_lanes[type] = base->gemm_lanes[type];
        }
        if (t->quantize_act[type] == NULL) {
            t->quantize_act[type] = base->quantize_act[type];
        }
        if (t->weighted_rows[type] == NULL) {
            t->weighted_rows[type] = base->weighted_rows[type];
        }
    }
    if (t->softmax == NULL) {
        t->softmax = base->softmax;
    }
}

static int supported(int isa) {
    const pyphi_kernels *k = table(isa);
    uint32_t need = pyphi_isa_requires(isa);
    return k != NULL && (g_features & need) == need;
}

static void init_once(void) {
    for (int isa = 0; isa < PYPHI_ISA_COUNT; isa++) {
        complete_table(isa);
    }
    g_features = pyphi_cpu_detect();
    g_best = PYPHI_ISA_SCALAR;
    for (int isa = PYPHI_ISA_COUNT - 1; isa > PYPHI_ISA_SCALAR; isa--) {
        if (supported(isa)) {
            g_best = isa;
            break;
        }
    }
    atomic_store(&g_current, table(g_best));
}

static void ensure_init(void) {
    pthread_once(&g_once, init_once);
}

const pyphi_kernels *pyphi_kernels_current(void) {
    ensure_init();
    return atomic_load_explicit(&g_current, memory_order_acquire);
}

uint32_t pyphi_cpu_features(void) {
    ensure_init();
    return g_features;
}

int pyphi_isa_supported(int isa) {
    ensure_init();
    return isa >= 0 && isa < PYPHI_ISA_COUNT && supported(isa);
}

int pyphi_isa_best(void) {
    ensure_init();
    return g_best;
}

int pyphi_isa_current(void) {
    return pyphi_kernels_current()->isa;
}

int pyphi_isa_set(int isa) {
    if (!pyphi_isa_supported(isa)) {
        return PYPHI_E_ISA;
    }
    atomic_store_explicit(&g_current, table(isa), memory_order_release);
    return PYPHI_OK;
}

const char *pyphi_isa_name(int isa) {
    switch (isa) {
    case PYPHI_ISA_SCALAR:
        return "scalar";
    case PYPHI_ISA_AVX2:
        return "avx2";
    case PYPHI_ISA_AVX512:
        return "avx512";
    case PYPHI_ISA_AVX512BF16:
        return "avx512bf16";
    case PYPHI_ISA_NEON:
        return "neon";
    case PYPHI_ISA_NEON_DOTPROD:
        return "neon_dotprod";
    default:
        return "unknown";
    }
}
