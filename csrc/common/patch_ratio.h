// Per-patch math of patch_ratio_pool (DESIGN.md op 2, SPMix), shared by CPU and CUDA kernels.
#pragma once

#include "macros.h"
#include "saliency.h"

namespace medmix {

// p in [lo, hi] -> (p - lo) / (hi - lo) / 2 + 0.5 in [0.5, 1] (0.5 for a flat map).
MEDMIX_HOST_DEVICE inline float patch_saliency_level(float p, float lo, float hi) {
  return normalize_value(p, lo, hi) / 2.f + 0.5f;
}

// r = min(alpha, max(level_a, level_b))
MEDMIX_HOST_DEVICE inline float patch_ratio(float level_a, float level_b, float alpha) {
  const float m = level_a > level_b ? level_a : level_b;
  return m < alpha ? m : alpha;
}

}  // namespace medmix
