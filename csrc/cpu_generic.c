/* cpu_generic.c: feature detection and kernel tables for builds that are not x86-64. Only the
 * portable scalar kernels exist there, and no x86 feature bit can be set. CMake compiles this file
 * in place of cpu_x86.c, so neither file needs an architecture #if.
 */
#include "kernels.h"
#include "pyphi.h"

uint32_t pyphi_cpu_detect(void) {
    return 0;
}

const pyphi_kernels *pyphi_isa_kernels(int isa) {
    return isa == PYPHI_ISA_SCALAR ? &pyphi_kernels_scalar : NULL;
}

uint32_t pyphi_isa_requires(int isa) {
    (void)isa;
    return 0;
}
