// Absolute-difference-map kernels on CUDA (VariMix ADM): one block per (sample, 4096-pixel
// chunk). Partials per chunk (min / max, mask counts) are reduced by their consumers, and the
// histogram uses integer atomics, so every result is deterministic. Contracts: csrc/ops.cpp.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cfloat>
#include <tuple>

#include "../common/adm.h"
#include "../common/adm_args.h"
#include "../common/strides.h"
#include "block_reduce.cuh"
#include "sample_chunks.cuh"

namespace medmix {
namespace {

constexpr int kThreads = 256;

// (lo, range) of sample bi from its T chunk partials, in every thread; range 0 when flat.
__device__ void sample_range(const float* minmax, int64_t T, int64_t bi, float* lo, float* range) {
  float l, h;
  reduce_sample_pairs(minmax, T, bi, MinOp{}, FLT_MAX, MaxOp{}, -FLT_MAX, &l, &h);
  *lo = l;
  *range = is_flat(l, h) ? 0.f : h - l;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    adm_minmax_kernel(const T* __restrict__ x, const T* __restrict__ xh, float* __restrict__ out,
                      int64_t C, int64_t W, int64_t T_, int64_t HW, Strides4 sx, Strides4 sh) {
  const Chunk ch = chunk_of(kAdmChunk, T_, HW);
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int64_t k = ch.k0 + threadIdx.x; k < ch.k1; k += blockDim.x) {
    const int64_t y = k / W, xx = k % W;
    for (int64_t c = 0; c < C; ++c) {
      const float d = fabsf(static_cast<float>(xh[sh.at(ch.bi, y, xx) + c * sh.c]) -
                            static_cast<float>(x[sx.at(ch.bi, y, xx) + c * sx.c]));
      lo = fminf(lo, d);
      hi = fmaxf(hi, d);
    }
  }
  store_chunk_minmax(out, ch.task, lo, hi);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    adm_apply_kernel(const T* __restrict__ x, const T* __restrict__ xh,
                     const float* __restrict__ minmax, const float* __restrict__ thr,
                     float* __restrict__ out, int32_t* __restrict__ count, int64_t C, int64_t W,
                     int64_t T_, int64_t HW, Strides4 sx, Strides4 sh, bool emit_score) {
  const Chunk ch = chunk_of(kAdmChunk, T_, HW);
  float lo, range;
  sample_range(minmax, T_, ch.bi, &lo, &range);
  const float t = thr[ch.bi];
  int n = 0;
  for (int64_t k = ch.k0 + threadIdx.x; k < ch.k1; k += blockDim.x) {
    const int64_t y = k / W, xx = k % W;
    const float a = range > 0.f ? adm_score(x + sx.at(ch.bi, y, xx), sx.c, xh + sh.at(ch.bi, y, xx), sh.c, C, lo, range) : 0.f;
    const bool on = range > 0.f && a >= t;
    out[ch.bi * HW + k] = emit_score ? a : (on ? 1.f : 0.f);
    n += on;
  }
  n = block_all_reduce(n, SumOp{}, 0);
  if (threadIdx.x == 0) count[ch.task] = n;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    adm_histogram_kernel(const T* __restrict__ x, const T* __restrict__ xh,
                         const float* __restrict__ minmax, int32_t* __restrict__ hist, int64_t C,
                         int64_t W, int64_t T_, int64_t HW, Strides4 sx, Strides4 sh) {
  __shared__ int32_t local[kAdmBins];
  for (int i = threadIdx.x; i < kAdmBins; i += blockDim.x) local[i] = 0;
  const Chunk ch = chunk_of(kAdmChunk, T_, HW);
  float lo, range;
  sample_range(minmax, T_, ch.bi, &lo, &range);  // its barriers also publish the zeroed bins
  for (int64_t k = ch.k0 + threadIdx.x; k < ch.k1; k += blockDim.x) {
    const int64_t y = k / W, xx = k % W;
    const float a = range > 0.f ? adm_score(x + sx.at(ch.bi, y, xx), sx.c, xh + sh.at(ch.bi, y, xx), sh.c, C, lo, range) : 0.f;
    atomicAdd(&local[adm_bin(a)], 1);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kAdmBins; i += blockDim.x)
    if (local[i]) atomicAdd(&hist[ch.bi * kAdmBins + i], local[i]);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    adm_mix_kernel(const T* __restrict__ x, const T* __restrict__ xh,
                   const int64_t* __restrict__ perm, const float* __restrict__ minmax,
                   const float* __restrict__ lam, T* __restrict__ x_src, T* __restrict__ x_ref,
                   int32_t* __restrict__ count, float* __restrict__ mask, int64_t B, int64_t C,
                   int64_t W, int64_t T_,
                   int64_t HW, Strides4 sx, Strides4 sh, Strides4 ss, Strides4 sr) {
  const Chunk ch = chunk_of(kAdmChunk, T_, HW);
  float lo, range;
  sample_range(minmax, T_, ch.bi, &lo, &range);
  // Clamped so that a bad index can never read outside x (the wrapper validates perm).
  const int64_t pj = min(max(perm[ch.bi], int64_t(0)), B - 1);
  const float t = lam[ch.bi];
  int n = 0;
  for (int64_t k = ch.k0 + threadIdx.x; k < ch.k1; k += blockDim.x) {
    const int64_t y = k / W, xx = k % W;
    const bool on = range > 0.f &&
                    adm_score(x + sx.at(ch.bi, y, xx), sx.c, xh + sh.at(ch.bi, y, xx), sh.c, C, lo, range) >= t;
    n += on;
    if (mask != nullptr) mask[ch.bi * HW + k] = on ? 1.f : 0.f;
    for (int64_t c = 0; c < C; ++c) {
      const T own = x[sx.at(ch.bi, y, xx) + c * sx.c];
      const T other = x[sx.at(pj, y, xx) + c * sx.c];
      x_src[ss.at(ch.bi, y, xx) + c * ss.c] = on ? own : other;
      x_ref[sr.at(ch.bi, y, xx) + c * sr.c] = on ? other : own;
    }
  }
  n = block_all_reduce(n, SumOp{}, 0);
  if (threadIdx.x == 0) count[ch.task] = n;
}

int64_t launch_blocks(const at::Tensor& x) {
  return chunk_grid(x.size(0), adm_chunks(x.size(2), x.size(3)), "medmix::adm");
}

#define MEDMIX_ADM_DISPATCH(x, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, (x).scalar_type(), name, __VA_ARGS__)

at::Tensor adm_minmax_cuda(const at::Tensor& x, const at::Tensor& x_hat) {
  check_adm_images(x, x_hat, "medmix::adm_minmax");
  TORCH_CHECK(x.is_cuda(), "medmix::adm_minmax (CUDA kernel) got a ", x.device(), " tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t T = adm_chunks(x.size(2), x.size(3));
  auto out = at::empty({x.size(0), T, 2}, x.options().dtype(at::kFloat));
  MEDMIX_ADM_DISPATCH(x, "adm_minmax_cuda", [&] {
    adm_minmax_kernel<scalar_t><<<launch_blocks(x), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), x_hat.const_data_ptr<scalar_t>(), out.mutable_data_ptr<float>(),
        x.size(1), x.size(3), T, x.size(2) * x.size(3), strides_of(x), strides_of(x_hat));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> adm_apply_cuda(const at::Tensor& x, const at::Tensor& x_hat,
                                                  const at::Tensor& minmax_in,
                                                  const at::Tensor& thr_in, bool emit_score) {
  check_adm_images(x, x_hat, "medmix::adm_apply");
  check_adm_minmax(x, minmax_in, "medmix::adm_apply");
  check_per_sample(thr_in, x.size(0), "thr", "medmix::adm_apply");
  TORCH_CHECK(x.is_cuda(), "medmix::adm_apply (CUDA kernel) got a ", x.device(), " tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3), T = adm_chunks(H, W);
  const auto minmax = minmax_in.contiguous(), thr = thr_in.contiguous();
  auto out = at::empty({B, 1, H, W}, x.options().dtype(at::kFloat));
  auto count = at::empty({B, T}, x.options().dtype(at::kInt));
  MEDMIX_ADM_DISPATCH(x, "adm_apply_cuda", [&] {
    adm_apply_kernel<scalar_t><<<launch_blocks(x), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), x_hat.const_data_ptr<scalar_t>(), minmax.const_data_ptr<float>(),
        thr.const_data_ptr<float>(), out.mutable_data_ptr<float>(), count.mutable_data_ptr<int32_t>(),
        x.size(1), W, T, H * W, strides_of(x), strides_of(x_hat), emit_score);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, count};
}

at::Tensor adm_histogram_cuda(const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& minmax_in) {
  check_adm_images(x, x_hat, "medmix::adm_histogram");
  check_adm_minmax(x, minmax_in, "medmix::adm_histogram");
  TORCH_CHECK(x.is_cuda(), "medmix::adm_histogram (CUDA kernel) got a ", x.device(), " tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t H = x.size(2), W = x.size(3), T = adm_chunks(H, W);
  const auto minmax = minmax_in.contiguous();
  auto hist = at::zeros({x.size(0), kAdmBins}, x.options().dtype(at::kInt));
  MEDMIX_ADM_DISPATCH(x, "adm_histogram_cuda", [&] {
    adm_histogram_kernel<scalar_t><<<launch_blocks(x), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), x_hat.const_data_ptr<scalar_t>(), minmax.const_data_ptr<float>(),
        hist.mutable_data_ptr<int32_t>(), x.size(1), W, T, H * W, strides_of(x), strides_of(x_hat));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return hist;
}

std::tuple<at::Tensor, at::Tensor> adm_mix_out_cuda(
    const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& perm_in,
    const at::Tensor& lam_in, bool write_mask, at::Tensor& mixed) {
  check_adm_images(x, x_hat, "medmix::adm_mix");
  check_adm_mixed(x, x_hat, mixed, "medmix::adm_mix_out");
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3), T = adm_chunks(H, W);
  check_per_sample(lam_in, B, "lam", "medmix::adm_mix");
  TORCH_CHECK(perm_in.dim() == 1 && perm_in.size(0) == B && perm_in.scalar_type() == at::kLong &&
                  perm_in.device() == x.device(),
              "medmix::adm_mix: perm must be int64 [", B, "] on x's device, got ", perm_in.sizes());
  TORCH_CHECK(x.is_cuda(), "medmix::adm_mix (CUDA kernel) got a ", x.device(), " tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  const auto perm = perm_in.contiguous(), lam = lam_in.contiguous();
  const auto minmax = adm_minmax_cuda(x, x_hat);  // kernel 1: per-chunk ranges (kernel 2 mixes)
  auto x_src = mixed.narrow(0, 0, B), x_ref = mixed.narrow(0, B, B);
  auto count = at::empty({B, T}, x.options().dtype(at::kInt));
  auto mask = at::empty(write_mask ? at::IntArrayRef{B, 1, H, W} : at::IntArrayRef{0},
                        x.options().dtype(at::kFloat));
  MEDMIX_ADM_DISPATCH(x, "adm_mix_cuda", [&] {
    adm_mix_kernel<scalar_t><<<launch_blocks(x), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), x_hat.const_data_ptr<scalar_t>(), perm.const_data_ptr<int64_t>(),
        minmax.const_data_ptr<float>(), lam.const_data_ptr<float>(), x_src.mutable_data_ptr<scalar_t>(),
        x_ref.mutable_data_ptr<scalar_t>(), count.mutable_data_ptr<int32_t>(),
        write_mask ? mask.mutable_data_ptr<float>() : nullptr, B, x.size(1), W, T,
        H * W, strides_of(x), strides_of(x_hat), strides_of(x_src), strides_of(x_ref));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {count, mask};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adm_mix_cuda(
    const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& perm, const at::Tensor& lam,
    bool write_mask) {
  return adm_mix_into_new(x, x_hat, perm, lam, write_mask, adm_mix_out_cuda);
}

}  // namespace

TORCH_LIBRARY_IMPL(medmix, CUDA, m) {
  m.impl("adm_minmax", &adm_minmax_cuda);
  m.impl("adm_apply", &adm_apply_cuda);
  m.impl("adm_histogram", &adm_histogram_cuda);
  m.impl("adm_mix", &adm_mix_cuda);
  m.impl("adm_mix_out", &adm_mix_out_cuda);
}

}  // namespace medmix
