// Host-side argument checks of the raw ADM ops, shared by the CPU and CUDA wrappers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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

inline void check_per_sample(const at::Tensor& v, int64_t B, const char* name, const char* op) {
  TORCH_CHECK(v.dim() == 1 && v.size(0) == B && v.scalar_type() == at::kFloat,
              op, ": ", name, " must be float32 [", B, "], got ", v.scalar_type(), " ", v.sizes());
}

}  // namespace medmix
