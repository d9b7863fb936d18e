/* kernels_neon.h: NEON helpers shared by the NEON table (kernels_neon.c, baseline AArch64 flags)
 * and the dot-product table (kernels_neon_dotprod.c). Internal to libpyphi, AArch64 builds only.
 */
#ifndef PYPHI_KERNELS_NEON_H
#define PYPHI_KERNELS_NEON_H

#include <arm_neon.h>
#include <stdint.h>

/* The 32 codes of a Q4_0 block (16 bytes qs) as signed values -8..7: values 0..15 (low
 * nibbles) in *lo, values 16..31 (high nibbles) in *hi, matching block_q8_0's order. */
static inline void pyphi_q4_0_codes_neon(const uint8_t *qs, int8x16_t *lo, int8x16_t *hi) {
    uint8x16_t packed = vld1q_u8(qs);
    const int8x16_t eight = vdupq_n_s8(8);
    *lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(packed, vdupq_n_u8(0x0f))), eight);
    *hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(packed, 4)), eight);
}

#endif /* PYPHI_KERNELS_NEON_H */
