// patch_ratio_pool on CUDA: patch_pool (one block per (sample, cell row); one warp per cell)
// and patch_ratio (one block per sample). Contracts: csrc/ops.cpp.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cfloat>
#include <tuple>

#include "../common/patch_ratio.h"
#include "../common/patch_ratio_args.h"
#include "block_reduce.cuh"

namespace medmix {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__global__ void __launch_bounds__(kThreads)
    patch_pool_kernel(const float* __restrict__ s_a, const float* __restrict__ s_b,
                      float* __restrict__ pooled, float* __restrict__ minmax, int64_t H,
                      int64_t W, int64_t patch, int64_t gh, int64_t gw) {
  const int64_t bi = blockIdx.x / gh, gi = blockIdx.x % gh;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t y0 = gi * patch, y1 = min(y0 + patch, H);
  float lo_a = FLT_MAX, hi_a = -FLT_MAX, lo_b = FLT_MAX, hi_b = -FLT_MAX;
  for (int64_t gj = warp; gj < gw; gj += kWarps) {
    const int64_t x0 = gj * patch, x1 = min(x0 + patch, W), pw = x1 - x0;
    const int64_t n = (y1 - y0) * pw;
    float sa = 0.f, sb = 0.f;
    for (int64_t k = lane; k < n; k += 32) {
      const int64_t off = (bi * H + y0 + k / pw) * W + x0 + k % pw;
      sa += s_a[off];
      sb += s_b[off];
    }
    sa = warp_reduce(sa, SumOp{}) / static_cast<float>(n);
    sb = warp_reduce(sb, SumOp{}) / static_cast<float>(n);
    if (lane == 0) {
      pooled[((bi * 2) * gh + gi) * gw + gj] = sa;
      pooled[((bi * 2 + 1) * gh + gi) * gw + gj] = sb;
    }
    lo_a = fminf(lo_a, sa), hi_a = fmaxf(hi_a, sa), lo_b = fminf(lo_b, sb), hi_b = fmaxf(hi_b, sb);
  }
  lo_a = block_all_reduce(lo_a, MinOp{}, FLT_MAX);
  hi_a = block_all_reduce(hi_a, MaxOp{}, -FLT_MAX);
  lo_b = block_all_reduce(lo_b, MinOp{}, FLT_MAX);
  hi_b = block_all_reduce(hi_b, MaxOp{}, -FLT_MAX);
  if (threadIdx.x == 0) {
    float* m = minmax + (bi * gh + gi) * 4;
    m[0] = lo_a, m[1] = hi_a, m[2] = lo_b, m[3] = hi_b;
  }
}

__global__ void __launch_bounds__(kThreads)
    patch_ratio_kernel(const float* __restrict__ pooled, const float* __restrict__ minmax,
                       float* __restrict__ ratios, float* __restrict__ mean, int64_t gh,
                       int64_t gw, float alpha) {
  const int64_t bi = blockIdx.x, n = gh * gw;
  float lo_a = FLT_MAX, hi_a = -FLT_MAX, lo_b = FLT_MAX, hi_b = -FLT_MAX;
  for (int64_t g = threadIdx.x; g < gh; g += blockDim.x) {
    const float* m = minmax + (bi * gh + g) * 4;
    lo_a = fminf(lo_a, m[0]), hi_a = fmaxf(hi_a, m[1]), lo_b = fminf(lo_b, m[2]), hi_b = fmaxf(hi_b, m[3]);
  }
  lo_a = block_all_reduce(lo_a, MinOp{}, FLT_MAX);
  hi_a = block_all_reduce(hi_a, MaxOp{}, -FLT_MAX);
  lo_b = block_all_reduce(lo_b, MinOp{}, FLT_MAX);
  hi_b = block_all_reduce(hi_b, MaxOp{}, -FLT_MAX);
  double sum = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) {
    const float r = patch_ratio(patch_saliency_level(pooled[(bi * 2) * n + k], lo_a, hi_a),
                                patch_saliency_level(pooled[(bi * 2 + 1) * n + k], lo_b, hi_b), alpha);
    ratios[bi * n + k] = r;
    sum += r;
  }
  sum = block_all_reduce(sum, SumOp{}, 0.0);
  if (threadIdx.x == 0) mean[bi] = static_cast<float>(sum / static_cast<double>(n));
}

std::tuple<at::Tensor, at::Tensor> patch_pool_cuda(const at::Tensor& s_a_in, const at::Tensor& s_b_in,
                                                   int64_t patch, bool pad) {
  const auto g = check_patch_pool_args(s_a_in, s_b_in, patch, pad);
  TORCH_CHECK(s_a_in.is_cuda(), "medmix::patch_pool (CUDA kernel) got a ", s_a_in.device(), " tensor");
  const c10::cuda::CUDAGuard guard(s_a_in.device());
  const auto s_a = s_a_in.contiguous(), s_b = s_b_in.contiguous();
  auto pooled = at::empty({g.B, 2, g.gh, g.gw}, s_a.options());
  auto minmax = at::empty({g.B, g.gh, 4}, s_a.options());
  const int64_t blocks = g.B * g.gh;
  TORCH_CHECK(blocks <= 0x7fffffffLL, "medmix::patch_pool: too many cell rows for one launch");
  patch_pool_kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      s_a.const_data_ptr<float>(), s_b.const_data_ptr<float>(), pooled.mutable_data_ptr<float>(),
      minmax.mutable_data_ptr<float>(), g.H, g.W, patch, g.gh, g.gw);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {pooled, minmax};
}

std::tuple<at::Tensor, at::Tensor> patch_ratio_cuda(const at::Tensor& pooled_in,
                                                    const at::Tensor& minmax_in, double alpha) {
  check_patch_ratio_args(pooled_in, minmax_in);
  TORCH_CHECK(pooled_in.is_cuda(), "medmix::patch_ratio (CUDA kernel) got a ", pooled_in.device(), " tensor");
  const c10::cuda::CUDAGuard guard(pooled_in.device());
  const auto pooled = pooled_in.contiguous(), minmax = minmax_in.contiguous();
  const int64_t B = pooled.size(0), gh = pooled.size(2), gw = pooled.size(3);
  auto ratios = at::empty({B, gh, gw}, pooled.options());
  auto mean = at::empty({B}, pooled.options());
  patch_ratio_kernel<<<B, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      pooled.const_data_ptr<float>(), minmax.const_data_ptr<float>(), ratios.mutable_data_ptr<float>(),
      mean.mutable_data_ptr<float>(), gh, gw, static_cast<float>(alpha));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ratios, mean};
}

}  // namespace

TORCH_LIBRARY_IMPL(medmix, CUDA, m) {
  m.impl("patch_pool", &patch_pool_cuda);
  m.impl("patch_ratio", &patch_ratio_cuda);
}

}  // namespace medmix
