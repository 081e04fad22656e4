// Host-side argument checks of the raw patch_ratio_pool ops, shared by CPU and CUDA wrappers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace medmix {

struct PatchGrid {
  int64_t B, H, W, gh, gw;
};

inline PatchGrid check_patch_pool_args(const at::Tensor& s_a, const at::Tensor& s_b,
                                       int64_t patch, bool pad) {
  TORCH_CHECK(s_a.dim() == 4 && s_a.size(1) == 1 && s_a.scalar_type() == at::kFloat,
              "medmix::patch_pool: s_a must be float32 [B, 1, H, W], got ", s_a.scalar_type(),
              " ", s_a.sizes());
  TORCH_CHECK(s_a.sizes() == s_b.sizes() && s_b.scalar_type() == at::kFloat &&
                  s_a.device() == s_b.device(),
              "medmix::patch_pool: s_b must match s_a, got ", s_b.scalar_type(), " ", s_b.sizes());
  TORCH_CHECK(patch >= 1, "medmix::patch_pool: patch must be >= 1, got ", patch);
  const int64_t H = s_a.size(2), W = s_a.size(3);
  TORCH_CHECK(pad || (H % patch == 0 && W % patch == 0), "medmix::patch_pool: H, W = ", H, ", ",
              W, " not divisible by patch ", patch, " (use pad=true)");
  TORCH_CHECK(s_a.numel() > 0, "medmix::patch_pool: empty maps");
  return {s_a.size(0), H, W, (H + patch - 1) / patch, (W + patch - 1) / patch};
}

inline void check_patch_ratio_args(const at::Tensor& pooled, const at::Tensor& minmax) {
  TORCH_CHECK(pooled.dim() == 4 && pooled.size(1) == 2 && pooled.scalar_type() == at::kFloat,
              "medmix::patch_ratio: pooled must be float32 [B, 2, gh, gw], got ", pooled.sizes());
  TORCH_CHECK(minmax.dim() == 3 && minmax.size(0) == pooled.size(0) &&
                  minmax.size(1) == pooled.size(2) && minmax.size(2) == 4 &&
                  minmax.scalar_type() == at::kFloat && minmax.device() == pooled.device(),
              "medmix::patch_ratio: minmax must be float32 [B, gh, 4], got ", minmax.sizes());
}

}  // namespace medmix
