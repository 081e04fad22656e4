// Per-pixel math of the absolute-difference-map ops (DESIGN.md op 3, VariMix ADM).
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"
#include "saliency.h"

namespace medmix {

constexpr int64_t kAdmChunk = 4096;  // pixels per partial result: partials are [B, cdiv(HW, 4096), ...]
constexpr int64_t kAdmBins = 256;    // Otsu histogram bins over [0, 1]

// A = mean_c((|xh_c - x_c| - lo) / range) at one pixel; pa / ph point at channel 0.
template <typename T>
MEDMIX_HOST_DEVICE inline float adm_score(const T* px, int64_t sx, const T* ph, int64_t sh,
                                          int64_t C, float lo, float range) {
  float acc = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    const float d = std::fabs(static_cast<float>(ph[c * sh]) - static_cast<float>(px[c * sx]));
    acc += (d - lo) / range;
  }
  return acc / static_cast<float>(C);
}

MEDMIX_HOST_DEVICE inline int64_t adm_bin(float a) {
  // Written so that NaN (a NaN pixel in x or x_hat) lands in bin 0: casting NaN to an integer
  // is undefined and would index outside the histogram.
  // (int32: v * 256 lies in [0, 256]; AVX2 converts float lanes to int32, not to int64)
  const float v = a > 0.f ? (a < 1.f ? a : 1.f) : 0.f;
  const int32_t k = static_cast<int32_t>(v * static_cast<float>(kAdmBins));
  return k > kAdmBins - 1 ? kAdmBins - 1 : k;
}

}  // namespace medmix
