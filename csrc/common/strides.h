// Element strides of a [N, C, H, W] tensor, usable in host and device code, so kernels accept
// contiguous, channels_last and sliced tensors without copies.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "macros.h"

namespace medmix {

struct Strides4 {
  int64_t n, c, h, w;
  // Offset of (sample, row, column) at channel 0.
  MEDMIX_HOST_DEVICE int64_t at(int64_t b, int64_t y, int64_t x) const {
    return b * n + y * h + x * w;
  }
};

inline Strides4 strides_of(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// Unit column stride and W row stride: each channel plane of a [N, C, H, W] tensor is one
// contiguous run of H * W elements (NCHW, or a batch / channel slice of it).
inline bool is_planar(const at::Tensor& t) { return t.stride(3) == 1 && t.stride(2) == t.size(3); }

}  // namespace medmix
