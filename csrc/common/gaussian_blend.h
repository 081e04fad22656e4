// Per-pixel math of gaussian_blend (DESIGN.md op 4), shared by the CPU and CUDA kernels.
#pragma once

#include "macros.h"

namespace medmix {

// out = alpha * a + (1 - alpha) * b; this form is exact at alpha = 0 and alpha = 1, so a hard
// mask copies pixels bit for bit.
template <typename acc_t>
MEDMIX_HOST_DEVICE inline acc_t blend_pixel(acc_t alpha, acc_t a, acc_t b) {
  return alpha * a + (acc_t(1) - alpha) * b;
}

// d out / d a = alpha, d out / d b = 1 - alpha (the mask is a constant).
template <typename acc_t>
MEDMIX_HOST_DEVICE inline void blend_pixel_grad(acc_t alpha, acc_t grad_out, acc_t* grad_a,
                                                acc_t* grad_b) {
  *grad_a = alpha * grad_out;
  *grad_b = (acc_t(1) - alpha) * grad_out;
}

}  // namespace medmix
