// Host-side argument checks of the raw ADM ops, shared by the CPU and CUDA wrappers.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <tuple>

#include "adm.h"

namespace medmix {

inline int64_t adm_chunks(int64_t H, int64_t W) { return (H * W + kAdmChunk - 1) / kAdmChunk; }

inline void check_adm_images(const at::Tensor& x, const at::Tensor& x_hat, const char* op) {
  TORCH_CHECK(x.dim() == 4 && x.numel() > 0, op, ": x must be a non-empty [B, C, H, W], got ",
              x.sizes());
  TORCH_CHECK(x.sizes() == x_hat.sizes() && x.scalar_type() == x_hat.scalar_type() &&
                  x.device() == x_hat.device(),
              op, ": x_hat must match x in shape, dtype and device");
}

inline void check_adm_minmax(const at::Tensor& x, const at::Tensor& minmax, const char* op) {
  TORCH_CHECK(minmax.dim() == 3 && minmax.size(0) == x.size(0) &&
                  minmax.size(1) == adm_chunks(x.size(2), x.size(3)) && minmax.size(2) == 2 &&
                  minmax.scalar_type() == at::kFloat && minmax.device() == x.device(),
              op, ": minmax must be float32 [B, chunks, 2] from medmix::adm_minmax, got ",
              minmax.sizes());
}

// adm_mix's output: both directions in one [2B, C, H, W] tensor, channels_last exactly when x
// is (the fake kernel in medmix_ops/ops/adm.py applies the same rule).
inline at::Tensor adm_mixed_output(const at::Tensor& x) {
  const bool nhwc = x.is_contiguous(at::MemoryFormat::ChannelsLast) && !x.is_contiguous();
  return at::empty({2 * x.size(0), x.size(1), x.size(2), x.size(3)},
                   x.options().memory_format(nhwc ? at::MemoryFormat::ChannelsLast
                                                  : at::MemoryFormat::Contiguous));
}

// adm_mix into a new [2B] tensor through a backend's adm_mix_out (its kernel launcher).
template <typename MixOut>
std::tuple<at::Tensor, at::Tensor, at::Tensor> adm_mix_into_new(
    const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& perm, const at::Tensor& lam,
    bool write_mask, MixOut mix_out) {
  check_adm_images(x, x_hat, "medmix::adm_mix");
  auto mixed = adm_mixed_output(x);
  auto [count, mask] = mix_out(x, x_hat, perm, lam, write_mask, mixed);
  return {mixed, count, mask};
}

// A caller's adm_mix output: [2B, C, H, W] like x, any strides, sharing no memory with the
// inputs (the kernel reads x[perm] while it writes: an overlap would be a race).
inline void check_adm_mixed(const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& mixed,
                            const char* op) {
  TORCH_CHECK(mixed.dim() == 4 && mixed.size(0) == 2 * x.size(0) && mixed.size(1) == x.size(1) &&
                  mixed.size(2) == x.size(2) && mixed.size(3) == x.size(3) &&
                  mixed.scalar_type() == x.scalar_type() && mixed.device() == x.device(),
              op, ": out must be [2B, C, H, W] = [", 2 * x.size(0), ", ", x.size(1), ", ", x.size(2),
              ", ", x.size(3), "] ", x.scalar_type(), " on x's device, got ", mixed.scalar_type(), " ",
              mixed.sizes());
  TORCH_CHECK(!mixed.is_same(x) && !(mixed.has_storage() && x.has_storage() &&
                                     mixed.storage().is_alias_of(x.storage())) &&
                  !(mixed.has_storage() && x_hat.has_storage() &&
                    mixed.storage().is_alias_of(x_hat.storage())),
              op, ": out must not share memory with x or x_hat");
  TORCH_CHECK(at::has_internal_overlap(mixed) != at::MemOverlap::Yes,
              op, ": out must not have overlapping elements (an expanded view), got strides ",
              mixed.strides());
}

inline void check_per_sample(const at::Tensor& v, int64_t B, const char* name, const char* op) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == B && v.scalar_type() == at::kFloat,
              op, ": ", name, " must be float32 [", B, "], got ", v.scalar_type(), " ", v.sizes());
}

}  // namespace medmix
