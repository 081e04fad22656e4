// Host-side argument checks of the raw saliency ops, shared by the CPU and CUDA wrappers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "saliency.h"

namespace medmix {

// gate: empty (no gate) or bool [B] on the input's device (the kernels read it there).
inline void check_gate(const char* op, const at::Tensor& gate, const at::Tensor& input) {
  TORCH_CHECK(gate.numel() == 0 || (gate.dim() == 1 && gate.size(0) == input.size(0) &&
                                    gate.scalar_type() == at::kBool && gate.device() == input.device()),
              op, ": gate must be empty or bool [B] = [", input.size(0), "] on ", input.device(),
              ", got ", gate.scalar_type(), " ", gate.sizes(), " on ", gate.device());
}

struct SaliencyMapDims {
  int64_t B, C, h, w, sc;  // sc: stride between channels (or between re and im)
};

inline SaliencyMapDims check_saliency_map_args(const at::Tensor& src, int64_t mode,
                                               const at::Tensor& weights, const at::Tensor& taps,
                                               int64_t out_h, int64_t out_w,
                                               const at::Tensor& gate) {
  TORCH_CHECK(src.dim() == 4, "medmix::saliency_map: src must be 4-D, got ", src.sizes());
  TORCH_CHECK(mode >= 0 && mode < kSrcCount, "medmix::saliency_map: unknown src_mode ", mode);
  SaliencyMapDims d{};
  d.B = src.size(0);
  if (mode == kSrcComplexAbs) {
    TORCH_CHECK(src.size(3) == 2 && src.scalar_type() == at::kFloat,
                "medmix::saliency_map: a complex source is float32 [B, h, w, 2], got ",
                src.scalar_type(), " ", src.sizes());
    d.C = 1, d.h = src.size(1), d.w = src.size(2), d.sc = src.stride(3);
  } else {
    d.C = src.size(1), d.h = src.size(2), d.w = src.size(3), d.sc = src.stride(1);
  }
  TORCH_CHECK(d.C >= 1 && d.h >= 1 && d.w >= 1 && out_h >= 1 && out_w >= 1,
              "medmix::saliency_map: empty source or output size");
  if (mode == kSrcWeighted || mode == kSrcReluWeighted) {
    TORCH_CHECK(weights.dim() == 2 && weights.size(0) == d.B && weights.size(1) == d.C &&
                    weights.scalar_type() == at::kFloat && weights.device() == src.device(),
                "medmix::saliency_map: weights must be float32 [B, C] = [", d.B, ", ", d.C,
                "] on the source's device, got ", weights.scalar_type(), " ", weights.sizes());
  }
  TORCH_CHECK(taps.dim() == 1 && taps.size(0) % 2 == 1 && taps.scalar_type() == at::kFloat,
              "medmix::saliency_map: taps must be float32 [odd T], got ", taps.sizes());
  check_gate("medmix::saliency_map", gate, src);
  return d;
}

inline void check_fine_grained_args(const at::Tensor& grey, const at::Tensor& gate) {
  TORCH_CHECK(grey.dim() == 4 && grey.size(1) == 1 && grey.scalar_type() == at::kFloat,
              "medmix::fine_grained_saliency: grey must be float32 [B, 1, H, W], got ",
              grey.scalar_type(), " ", grey.sizes());
  check_gate("medmix::fine_grained_saliency", gate, grey);
}

inline void check_spectrum(const at::Tensor& spec) {
  TORCH_CHECK(spec.dim() == 4 && spec.size(3) == 2 && spec.scalar_type() == at::kFloat,
              "medmix::spectral_residual_filter: spec must be float32 [B, h, w, 2], got ",
              spec.scalar_type(), " ", spec.sizes());
}

}  // namespace medmix
