// Saliency kernels on CUDA. saliency_map and fine_grained_saliency: one block per sample, several
// passes over the sample through per-sample global scratch, separated by __syncthreads().
// spectral_residual_filter: one thread per frequency. Contracts: csrc/ops.cpp.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cfloat>
#include <tuple>

#include "../common/gaussian_taps.h"
#include "../common/saliency.h"
#include "../common/saliency_args.h"
#include "block_reduce.cuh"

namespace medmix {
namespace {

constexpr int kThreads = 256;

// The fine-grained window half-sizes, passed by value (no host-to-device copy).
struct Scales {
  static constexpr int64_t kMax = 16;
  int64_t n;
  int64_t v[kMax];
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    saliency_map_kernel(const T* __restrict__ src, const float* __restrict__ weights,
                        const float* __restrict__ taps, const bool* __restrict__ gate,
                        float* __restrict__ out, bool* __restrict__ flat, float* s0_all,
                        float* s1_all, int64_t mode, int64_t C, int64_t h, int64_t w,
                        int64_t out_h, int64_t out_w, int64_t T_, int64_t s_b, int64_t s_c,
                        int64_t s_i, int64_t s_j, bool square, bool normalize, bool quantize) {
  const int64_t b = blockIdx.x, hw = h * w, n_out = out_h * out_w;
  float* o = out + b * n_out;
  if (gate != nullptr && !gate[b]) {  // uniform over the block
    for (int64_t k = threadIdx.x; k < n_out; k += blockDim.x) o[k] = 0.f;
    if (threadIdx.x == 0) flat[b] = true;
    return;
  }
  const T* p0 = src + b * s_b;
  const float* wb = weights != nullptr ? weights + b * C : nullptr;
  const bool direct = saliency_direct(T_, h, w, out_h, out_w);
  float* s0 = s0_all + b * hw;
  float* s1 = s1_all + b * hw;
  if (!direct) {
    for (int64_t k = threadIdx.x; k < hw; k += blockDim.x) {
      const int64_t i = k / w, j = k % w;
      float v = quantize_value(saliency_source<T>(mode, p0 + i * s_i + j * s_j, s_c, C, wb), quantize);
      if (T_ == 1) {
        v *= taps[0];
        if (square) v *= v;
      }
      s0[k] = v;
    }
    __syncthreads();
    if (T_ > 1) {
      const int64_t r = T_ / 2;
      for (int64_t k = threadIdx.x; k < hw; k += blockDim.x) {
        const int64_t i = k / w, j = k % w;
        float v = 0.f;
        for (int64_t t = 0; t < T_; ++t) v += taps[t] * s0[i * w + reflect_index(j + t - r, w)];
        s1[k] = v;
      }
      __syncthreads();
      for (int64_t k = threadIdx.x; k < hw; k += blockDim.x) {
        const int64_t i = k / w, j = k % w;
        float v = 0.f;
        for (int64_t t = 0; t < T_; ++t) v += taps[t] * s1[reflect_index(i + t - r, h) * w + j];
        s0[k] = square ? v * v : v;
      }
      __syncthreads();
    }
  }
  // Output pass: the map at (out_h, out_w), before normalisation, with its min / max.
  const bool round_out = quantize && !normalize;
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int64_t k = threadIdx.x; k < n_out; k += blockDim.x) {
    const int64_t y = k / out_w, x = k % out_w;
    float v = direct ? bilinear_source<T>(mode, p0, s_i, s_j, s_c, C, wb, quantize, h, w, y, x, out_h, out_w)
                     : bilinear_sample(s0, h, w, y, x, out_h, out_w);
    v = quantize_value(v, round_out);
    o[k] = v;
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  lo = block_all_reduce(lo, MinOp{}, FLT_MAX);  // barriers: o is complete after these
  hi = block_all_reduce(hi, MaxOp{}, -FLT_MAX);
  if (threadIdx.x == 0) flat[b] = is_flat(lo, hi);
  if (normalize)
    for (int64_t k = threadIdx.x; k < n_out; k += blockDim.x) o[k] = normalize_value(o[k], lo, hi);
}

__global__ void spectral_residual_kernel(const float* __restrict__ spec, float* __restrict__ out,
                                         int64_t total, int64_t h, int64_t w) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= total) return;
  const int64_t hw = h * w, b = idx / hw, k = idx % hw;
  spectral_residual_at(spec + b * hw * 2, h, w, k / w, k % w, out + 2 * idx, out + 2 * idx + 1);
}

__global__ void __launch_bounds__(kThreads)
    fine_grained_kernel(const float* __restrict__ grey, const double* __restrict__ integral,
                        const Scales scales, float* __restrict__ out, double* on_all, double* off_all, int64_t H,
                        int64_t W) {
  const int64_t b = blockIdx.x, hw = H * W;
  const double* S = integral + b * (H + 1) * (W + 1);
  double* on = on_all + b * hw;
  double* off = off_all + b * hw;
  float* o = out + b * hw;
  double on_max = 0, off_max = 0;
  for (int64_t k = threadIdx.x; k < hw; k += blockDim.x) {
    fine_grained_on_off(S, H, W, k / W, k % W, static_cast<double>(grey[b * hw + k]), scales.v,
                        scales.n, &on[k], &off[k]);
    on_max = fmax(on_max, on[k]);
    off_max = fmax(off_max, off[k]);
  }
  on_max = block_all_reduce(on_max, MaxOp{}, 0.0);
  off_max = block_all_reduce(off_max, MaxOp{}, 0.0);
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int64_t k = threadIdx.x; k < hw; k += blockDim.x) {
    const float v = static_cast<float>((on_max > 0 ? on[k] / on_max : 0.0) +
                                       (off_max > 0 ? off[k] / off_max : 0.0));
    o[k] = v;
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  lo = block_all_reduce(lo, MinOp{}, FLT_MAX);
  hi = block_all_reduce(hi, MaxOp{}, -FLT_MAX);  // also orders the writes above before the reads
  for (int64_t k = threadIdx.x; k < hw; k += blockDim.x) o[k] = normalize_value(o[k], lo, hi);
}

std::tuple<at::Tensor, at::Tensor> saliency_map_cuda(const at::Tensor& src, int64_t mode,
                                                     const at::Tensor& weights,
                                                     const at::Tensor& taps, bool square,
                                                     int64_t out_h, int64_t out_w, bool normalize,
                                                     bool quantize, const at::Tensor& gate) {
  const auto d = check_saliency_map_args(src, mode, weights, taps, out_h, out_w, gate);
  TORCH_CHECK(src.is_cuda(), "medmix::saliency_map (CUDA kernel) got a ", src.device(), " tensor");
  const c10::cuda::CUDAGuard guard(src.device());
  auto opts = src.options().dtype(at::kFloat);
  auto out = at::empty({d.B, 1, out_h, out_w}, opts);
  auto flat = at::empty({d.B}, src.options().dtype(at::kBool));
  // Per-sample scratch for the full-size map and the blur's intermediate (none when direct).
  const bool direct = saliency_direct(taps.size(0), d.h, d.w, out_h, out_w);
  auto s0 = at::empty({direct ? 0 : d.B, d.h * d.w}, opts);
  auto s1 = taps.size(0) > 1 ? at::empty({d.B, d.h * d.w}, opts) : s0;
  const auto w = weights.contiguous(), t = taps.contiguous(), g = gate.contiguous();
  const bool complex_src = mode == kSrcComplexAbs;
  const int64_t si = complex_src ? src.stride(1) : src.stride(2);
  const int64_t sj = complex_src ? src.stride(2) : src.stride(3);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, src.scalar_type(),
                                  "saliency_map_cuda", [&] {
    saliency_map_kernel<scalar_t><<<d.B, kThreads, 0, stream>>>(
        src.const_data_ptr<scalar_t>(), w.numel() ? w.const_data_ptr<float>() : nullptr,
        t.const_data_ptr<float>(), g.numel() ? g.const_data_ptr<bool>() : nullptr,
        out.mutable_data_ptr<float>(), flat.mutable_data_ptr<bool>(),
        s0.mutable_data_ptr<float>(), s1.mutable_data_ptr<float>(), mode, d.C, d.h, d.w, out_h,
        out_w, t.size(0), src.stride(0), d.sc, si, sj, square, normalize, quantize);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, flat};
}

at::Tensor spectral_residual_filter_cuda(const at::Tensor& spec_in) {
  check_spectrum(spec_in);
  TORCH_CHECK(spec_in.is_cuda(), "medmix::spectral_residual_filter (CUDA kernel) got a ",
              spec_in.device(), " tensor");
  const c10::cuda::CUDAGuard guard(spec_in.device());
  const auto spec = spec_in.contiguous();
  auto out = at::empty_like(spec);
  const int64_t total = spec.size(0) * spec.size(1) * spec.size(2);
  if (total == 0) return out;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  spectral_residual_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      spec.const_data_ptr<float>(), out.mutable_data_ptr<float>(), total, spec.size(1),
      spec.size(2));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor fine_grained_saliency_cuda(const at::Tensor& grey_in, at::IntArrayRef scales) {
  check_fine_grained_args(grey_in);
  TORCH_CHECK(grey_in.is_cuda(), "medmix::fine_grained_saliency (CUDA kernel) got a ",
              grey_in.device(), " tensor");
  const c10::cuda::CUDAGuard guard(grey_in.device());
  const auto grey = grey_in.contiguous();
  const int64_t B = grey.size(0), H = grey.size(2), W = grey.size(3);
  // The float64 integral image [B, H + 1, W + 1] as the reference builds it (its bits: the
  // same cumsums, zero-padded at the top and left).
  const auto integral =
      at::constant_pad_nd(grey.select(1, 0).to(at::kDouble).cumsum(1).cumsum(2), {1, 0, 1, 0})
          .contiguous();
  auto out = at::empty_like(grey);
  auto on = at::empty({B, H * W}, grey.options().dtype(at::kDouble));
  auto off = at::empty_like(on);
  TORCH_CHECK(static_cast<int64_t>(scales.size()) <= Scales::kMax,
              "medmix::fine_grained_saliency: at most ", Scales::kMax, " scales, got ", scales.size());
  Scales sc{static_cast<int64_t>(scales.size()), {}};
  for (size_t i = 0; i < scales.size(); ++i) sc.v[i] = scales[i];
  fine_grained_kernel<<<B, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      grey.const_data_ptr<float>(), integral.const_data_ptr<double>(), sc,
      out.mutable_data_ptr<float>(),
      on.mutable_data_ptr<double>(), off.mutable_data_ptr<double>(), H, W);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(medmix, CUDA, m) {
  m.impl("saliency_map", &saliency_map_cuda);
  m.impl("spectral_residual_filter", &spectral_residual_filter_cuda);
  m.impl("fine_grained_saliency", &fine_grained_saliency_cuda);
}

}  // namespace medmix
