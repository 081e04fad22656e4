// Host-side argument checks of the raw gaussian_blend ops, shared by the CPU and CUDA wrappers.
// The public Python wrapper (medmix_ops/ops/gaussian_blend.py) gives users the friendly errors;
// these keep a direct torch.ops.medmix call from reading out of bounds.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

#include <tuple>

namespace medmix {

inline at::ScalarType opmath_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_mask_and_sigma(const at::Tensor& mask, const at::Tensor& sigma, int64_t B,
                                 int64_t H, int64_t W, at::ScalarType acc, int64_t max_radius) {
  TORCH_CHECK(mask.dim() == 4 && mask.size(0) == B && mask.size(1) == 1 && mask.size(2) == H &&
                  mask.size(3) == W,
              "medmix::gaussian_blend: mask must be [B, 1, H, W] = [", B, ", 1, ", H, ", ", W,
              "], got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == acc, "medmix::gaussian_blend: mask must be ", acc, ", got ",
              mask.scalar_type());
  TORCH_CHECK(sigma.dim() == 1 && sigma.size(0) == B && sigma.scalar_type() == at::kFloat,
              "medmix::gaussian_blend: sigma must be float32 [", B, "], got ",
              sigma.scalar_type(), " ", sigma.sizes());
  TORCH_CHECK(max_radius >= 0, "medmix::gaussian_blend: max_radius must be >= 0, got ",
              max_radius);
  TORCH_CHECK(mask.device() == sigma.device(),
              "medmix::gaussian_blend: mask and sigma must be on one device");
}

inline void check_gaussian_blend_args(const at::Tensor& a, const at::Tensor& b,
                                      const at::Tensor& mask, const at::Tensor& sigma,
                                      int64_t max_radius,
                                      const c10::optional<at::Tensor>& b_index) {
  TORCH_CHECK(a.dim() == 4, "medmix::gaussian_blend: a must be [B, C, H, W], got ", a.sizes());
  TORCH_CHECK(b.dim() == 4 && b.size(1) == a.size(1) && b.size(2) == a.size(2) &&
                  b.size(3) == a.size(3) && (b_index.has_value() || b.size(0) == a.size(0)),
              "medmix::gaussian_blend: a ", a.sizes(), " and b ", b.sizes(), " differ in shape");
  if (b_index.has_value()) {
    TORCH_CHECK(b_index->dim() == 1 && b_index->size(0) == a.size(0) &&
                    b_index->scalar_type() == at::kLong && b_index->device() == a.device(),
                "medmix::gaussian_blend: b_index must be int64 [", a.size(0), "] on a's device, got ",
                b_index->scalar_type(), " ", b_index->sizes());
    TORCH_CHECK(b.size(0) >= 1, "medmix::gaussian_blend: b_index given but b is empty");
  }
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "medmix::gaussian_blend: a and b dtypes differ");
  TORCH_CHECK(a.device() == b.device() && a.device() == mask.device(),
              "medmix::gaussian_blend: a, b and mask must be on one device");
  check_mask_and_sigma(mask, sigma, a.size(0), a.size(2), a.size(3),
                       opmath_dtype(a.scalar_type()), max_radius);
}

// A caller's gaussian_blend output: a's shape, dtype and device, any strides, sharing no memory
// with a or b (the kernels read b's partner rows while they write: an overlap would be a race,
// and the CPU loops assume no aliasing).
inline void check_gaussian_blend_out(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out) {
  TORCH_CHECK(out.sizes() == a.sizes() && out.scalar_type() == a.scalar_type() &&
                  out.device() == a.device(),
              "medmix::gaussian_blend_out: out must be ", a.sizes(), " ", a.scalar_type(),
              " on a's device, got ", out.scalar_type(), " ", out.sizes(), " on ", out.device());
  const auto shares = [&](const at::Tensor& t) {
    return out.is_same(t) || (out.has_storage() && t.has_storage() && out.storage().is_alias_of(t.storage()));
  };
  TORCH_CHECK(!shares(a) && !shares(b), "medmix::gaussian_blend_out: out must not share memory with a or b");
  TORCH_CHECK(at::has_internal_overlap(out) != at::MemOverlap::Yes,
              "medmix::gaussian_blend_out: out must not have overlapping elements (an expanded "
              "view), got strides ", out.strides());
}

// gaussian_blend into a new tensor like a through a backend's gaussian_blend_out.
template <typename BlendOut>
std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_blend_into_new(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask, const at::Tensor& sigma,
    int64_t max_radius, bool return_alpha, const c10::optional<at::Tensor>& b_index,
    BlendOut blend_out) {
  auto out = at::empty_like(a);
  auto [lam, alpha] = blend_out(a, b, mask, sigma, max_radius, return_alpha, b_index, out);
  return {out, lam, alpha};
}

inline void check_gaussian_blend_backward_args(const at::Tensor& grad_out, const at::Tensor& mask,
                                               const at::Tensor& sigma, int64_t max_radius) {
  TORCH_CHECK(grad_out.dim() == 4, "medmix::gaussian_blend_backward: grad_out must be 4-D, got ",
              grad_out.sizes());
  TORCH_CHECK(at::isFloatingType(grad_out.scalar_type()),
              "medmix::gaussian_blend_backward: grad_out must be floating, got ",
              grad_out.scalar_type());
  TORCH_CHECK(grad_out.device() == mask.device(),
              "medmix::gaussian_blend_backward: grad_out and mask must be on one device");
  check_mask_and_sigma(mask, sigma, grad_out.size(0), grad_out.size(2), grad_out.size(3),
                       opmath_dtype(grad_out.scalar_type()), max_radius);
}

}  // namespace medmix
