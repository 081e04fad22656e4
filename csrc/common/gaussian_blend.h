// Per-pixel math of gaussian_blend (DESIGN.md op 4), shared by the CPU and CUDA kernels.
#pragma once

#include "macros.h"

namespace medmix {

// out = alpha * a + (1 - alpha) * b, except that a weight of exactly 1 or 0 selects one image:
// the other is never multiplied in, so a non-finite pixel under a zero weight (a partner's NaN
// outside a CutMix box) cannot become 0 * inf = NaN. For finite inputs the select and the formula
// give the same bits, so a hard mask copies pixels bit for bit either way. The compilers turn the
// selects into vector blends; the loops stay memory bound.
template <typename acc_t>
MEDMIX_HOST_DEVICE inline acc_t blend_pixel(acc_t alpha, acc_t a, acc_t b) {
  const acc_t mixed = alpha * a + (acc_t(1) - alpha) * b;
  return alpha == acc_t(1) ? a : (alpha == acc_t(0) ? b : mixed);
}

// d out / d a = alpha, d out / d b = 1 - alpha (the mask is a constant).
template <typename acc_t>
MEDMIX_HOST_DEVICE inline void blend_pixel_grad(acc_t alpha, acc_t grad_out, acc_t* grad_a,
                                                acc_t* grad_b) {
  *grad_a = alpha * grad_out;
  *grad_b = (acc_t(1) - alpha) * grad_out;
}

}  // namespace medmix
