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
static _Atomic(const pyphi_kernels *) g_current; /* the table in use now */

static int supported(int isa) {
    const pyphi_kernels *k = pyphi_isa_kernels(isa);
    uint32_t need = pyphi_isa_requires(isa);
    return k != NULL && (g_features & need) == need;
}

static void init_once(void) {
    g_features = pyphi_cpu_detect();
    g_best = PYPHI_ISA_SCALAR;
    for (int isa = PYPHI_ISA_COUNT - 1; isa > PYPHI_ISA_SCALAR; isa--) {
        if (supported(isa)) {
            g_best = isa;
            break;
        }
    }
    atomic_store(&g_current, pyphi_isa_kernels(g_best));
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
    atomic_store_explicit(&g_current, pyphi_isa_kernels(isa), memory_order_release);
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
    default:
        return "unknown";
    }
}
