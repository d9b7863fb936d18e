/* cpu_arm.c: AArch64 feature detection (Linux) and the kernel tables an AArch64 build carries.
 *
 * Compiled with the baseline flags only (CMake adds this file on AArch64 builds in place of
 * cpu_x86.c / cpu_generic.c). User space cannot read the ID registers portably, so the kernel's
 * answer is asked instead: getauxval(AT_HWCAP), whose bits the Linux arm64 ABI fixes
 * (Documentation/arch/arm64/elf_hwcaps.rst; arch/arm64/include/uapi/asm/hwcap.h).
 */
#include "kernels.h"
#include "pyphi.h"

#include <sys/auxv.h>

#define HWCAP_BIT_ASIMD (1ul << 1)    /* Advanced SIMD (NEON) */
#define HWCAP_BIT_ASIMDDP (1ul << 20) /* SDOT / UDOT (ARMv8.2 dot product) */

uint32_t pyphi_cpu_detect(void) {
    unsigned long hwcap = getauxval(AT_HWCAP);
    uint32_t f = 0;
    f |= (hwcap & HWCAP_BIT_ASIMD) ? PYPHI_CPU_NEON : 0;
    f |= (hwcap & HWCAP_BIT_ASIMDDP) ? PYPHI_CPU_DOTPROD : 0;
    return f;
}

const pyphi_kernels *pyphi_isa_kernels(int isa) {
    switch (isa) {
    case PYPHI_ISA_SCALAR:
        return &pyphi_kernels_scalar;
    case PYPHI_ISA_NEON:
        return &pyphi_kernels_neon;
    case PYPHI_ISA_NEON_DOTPROD:
        return &pyphi_kernels_neon_dotprod;
    default:
        return NULL;
    }
}

uint32_t pyphi_isa_requires(int isa) {
    switch (isa) {
    case PYPHI_ISA_NEON:
        return PYPHI_CPU_NEON;
    case PYPHI_ISA_NEON_DOTPROD:
        return PYPHI_CPU_NEON | PYPHI_CPU_DOTPROD;
    default:
        return 0;
    }
}
