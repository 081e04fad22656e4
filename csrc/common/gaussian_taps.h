// Gaussian taps and reflect-border indexing, the per-tap math of every blur in medmix_ops.
// Used by the CPU and CUDA kernels alike so the CPU tests exercise the GPU arithmetic.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace medmix {

// Index into [0, n) for a reflect border that does not repeat the edge pixel, like
// F.pad(mode="reflect"), extended periodically (period 2(n-1)) so radii >= n stay defined.
MEDMIX_HOST_DEVICE inline int64_t reflect_index(int64_t i, int64_t n) {
  if (i >= 0 && i < n) return i;
  if (n <= 1) return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

// radius = ceil(3 sigma), computed in double from the float32 sigma every backend receives.
MEDMIX_HOST_DEVICE inline int gaussian_radius(float sigma) {
  return static_cast<int>(std::ceil(3.0 * static_cast<double>(sigma)));
}

// 1 / (2 sigma^2); 0 for sigma == 0 so that the single tap t = 0 gets weight exp(0) = 1.
template <typename acc_t>
MEDMIX_HOST_DEVICE inline acc_t gaussian_inv_two_sigma_sq(float sigma) {
  const acc_t s = static_cast<acc_t>(sigma);
  return s > acc_t(0) ? acc_t(1) / (acc_t(2) * s * s) : acc_t(0);
}

// Unnormalised weight of tap t: exp(-t^2 / (2 sigma^2)).
template <typename acc_t>
MEDMIX_HOST_DEVICE inline acc_t gaussian_weight(int t, acc_t inv_two_sigma_sq) {
  return std::exp(-static_cast<acc_t>(t) * static_cast<acc_t>(t) * inv_two_sigma_sq);
}

// Fills taps[0 .. 2r] with the normalised 1-D kernel of sigma (taps[r] is the centre).
template <typename acc_t>
MEDMIX_HOST_DEVICE inline void gaussian_taps(float sigma, int r, acc_t* taps) {
  const acc_t inv = gaussian_inv_two_sigma_sq<acc_t>(sigma);
  acc_t norm = 0;
  for (int t = -r; t <= r; ++t) {
    taps[t + r] = gaussian_weight<acc_t>(t, inv);
    norm += taps[t + r];
  }
  for (int t = 0; t <= 2 * r; ++t) taps[t] /= norm;
}

// A blurred mask value as a weight: the normalised taps can sum to one ulp above 1 after
// rounding, so a window of ones may blur to 1.0000001 (and lam exceed 1). Every backend caps
// a blurred alpha (radius > 0) at 1 this way; a NaN stays NaN. With sigma = 0 alpha is the
// mask as given.
template <typename acc_t>
MEDMIX_HOST_DEVICE inline acc_t at_most_one(acc_t v) {
  return v > acc_t(1) ? acc_t(1) : v;
}

}  // namespace medmix
