/* cpu_x86.c: x86-64 feature detection and the kernel tables an x86-64 build carries.
 *
 * Compiled with the baseline flags only (CMake adds this file on x86-64 builds; cpu_generic.c
 * takes its place elsewhere): CPUID and XGETBV are baseline instructions, and nothing here calls
 * into a SIMD table, it only hands out their addresses.
 *
 * A feature counts only if the OS also saves the register state it needs: the CPUID bits say the
 * core can execute AVX/AVX-512, but XCR0 (read with XGETBV, allowed when CPUID.1:ECX.OSXSAVE is
 * set) says whether the kernel preserves YMM / ZMM and opmask registers across context switches.
 * Bit positions: Intel SDM vol. 2A, CPUID leaves 1 and 7; vol. 1 section 13.3 for XCR0.
 */
#include "kernels.h"
#include "pyphi.h"

#include <cpuid.h>

#define XCR0_SSE_AVX 0x06u    /* XMM (bit 1) and YMM upper halves (bit 2) */
#define XCR0_AVX512 0xe0u     /* opmask (bit 5), ZMM0-15 upper halves (6), ZMM16-31 (7) */

static uint64_t xgetbv0(void) {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

static int bit(uint32_t reg, int n) {
    return (reg >> n) & 1u;
}

uint32_t pyphi_cpu_detect(void) {
    uint32_t a, b, c, d;
    uint32_t max_leaf = __get_cpuid_max(0, NULL);
    if (max_leaf < 1) {
        return 0;
    }
    __cpuid_count(1, 0, a, b, c, d);
    uint32_t leaf1_c = c;
    uint32_t leaf7_b = 0, leaf7_c = 0, leaf7s1_a = 0;
    if (max_leaf >= 7) {
        __cpuid_count(7, 0, a, b, c, d);
        leaf7_b = b;
        leaf7_c = c;
        if (a >= 1) { /* EAX of leaf 7 sub-leaf 0: the highest sub-leaf */
            __cpuid_count(7, 1, a, b, c, d);
            leaf7s1_a = a;
        }
    }

    uint64_t xcr0 = bit(leaf1_c, 27) ? xgetbv0() : 0; /* OSXSAVE */
    int os_avx = (xcr0 & XCR0_SSE_AVX) == XCR0_SSE_AVX;
    int os_avx512 = os_avx && (xcr0 & XCR0_AVX512) == XCR0_AVX512;

    uint32_t f = 0;
    f |= bit(leaf1_c, 20) ? PYPHI_CPU_SSE42 : 0;
    if (os_avx) {
        f |= bit(leaf1_c, 28) ? PYPHI_CPU_AVX : 0;
        f |= bit(leaf1_c, 12) ? PYPHI_CPU_FMA : 0;
        f |= bit(leaf1_c, 29) ? PYPHI_CPU_F16C : 0;
        f |= bit(leaf7_b, 5) ? PYPHI_CPU_AVX2 : 0;
        f |= bit(leaf7s1_a, 4) ? PYPHI_CPU_AVXVNNI : 0;
    }
    if (os_avx512) {
        f |= bit(leaf7_b, 16) ? PYPHI_CPU_AVX512F : 0;
        f |= bit(leaf7_b, 17) ? PYPHI_CPU_AVX512DQ : 0;
        f |= bit(leaf7_b, 30) ? PYPHI_CPU_AVX512BW : 0;
        f |= bit(leaf7_b, 31) ? PYPHI_CPU_AVX512VL : 0;
        f |= bit(leaf7_c, 11) ? PYPHI_CPU_AVX512VNNI : 0;
        f |= bit(leaf7s1_a, 5) ? PYPHI_CPU_AVX512BF16 : 0;
    }
    return f;
}

const pyphi_kernels *pyphi_isa_kernels(int isa) {
    switch (isa) {
    case PYPHI_ISA_SCALAR:
        return &pyphi_kernels_scalar;
    case PYPHI_ISA_AVX2:
        return &pyphi_kernels_avx2;
    case PYPHI_ISA_AVX512:
        return &pyphi_kernels_avx512;
    case PYPHI_ISA_AVX512BF16:
        return &pyphi_kernels_avx512bf16;
    default:
        return NULL;
    }
}

uint32_t pyphi_isa_requires(int isa) {
    switch (isa) {
    case PYPHI_ISA_AVX2:
        return PYPHI_CPU_AVX | PYPHI_CPU_AVX2 | PYPHI_CPU_FMA | PYPHI_CPU_F16C;
    case PYPHI_ISA_AVX512:
        return PYPHI_CPU_AVX | PYPHI_CPU_AVX2 | PYPHI_CPU_FMA | PYPHI_CPU_F16C |
               PYPHI_CPU_AVX512F | PYPHI_CPU_AVX512BW | PYPHI_CPU_AVX512VL |
               PYPHI_CPU_AVX512DQ | PYPHI_CPU_AVX512VNNI;
    case PYPHI_ISA_AVX512BF16:
        return pyphi_isa_requires(PYPHI_ISA_AVX512) | PYPHI_CPU_AVX512BF16;
    default:
        return 0;
    }
}
