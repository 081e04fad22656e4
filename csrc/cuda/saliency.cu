// Saliency kernels on CUDA. saliency_map and fine_grained_saliency: a few launches over a
// (sample, 2048-pixel chunk) grid, through per-sample global scratch; per-sample min / max come
// from per-chunk partials (csrc/cuda/sample_chunks.cuh). spectral_residual_filter: one block per
// spectrum. Contracts: csrc/ops.cpp.
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
#include "sample_chunks.cuh"

namespace medmix {
namespace {

constexpr int kThreads = 256;
// Pixels a block takes per pass: a batch of a few large images still fills the GPU (32 x 224^2
// is 800 blocks), where one block per sample left most SMs idle at small B.
constexpr int64_t kChunk = 2048;

// The fine-grained window half-sizes, passed by value (no host-to-device copy).
struct Scales {
  static constexpr int64_t kMax = 16;
  int64_t n;
  int64_t v[kMax];
};

// Where a map pass writes. Into scratch; or, for the last pass of a map kept at its own size
// (minmax given), into the output itself, doing the output pass's work: rounded when
// round_out, gated-off samples as zeros, and the chunk's (min, max) partials.
struct MapSink {
  float* dst;
  float* minmax;
  bool round_out;
};

// One map pass over this block's chunk of a sample's h x w map: value(b, i, j) at each pixel
// of a gated-on sample (0 for a gated-off one, whose scratch is not written), through sink.
template <typename F>
__device__ void map_pass(const bool* gate, const MapSink& sink, int64_t h, int64_t w, F value) {
  const Chunk ch = chunk_of(kChunk, chunk_count(h * w, kChunk), h * w);
  const bool on = gate == nullptr || gate[ch.bi];
  if (!on && sink.minmax == nullptr) return;  // uniform over the block
  float* dst = sink.dst + ch.bi * h * w;
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int64_t k = ch.k0 + threadIdx.x; k < ch.k1; k += blockDim.x) {
    float v = on ? value(ch.bi, k / w, k % w) : 0.f;
    if (sink.minmax != nullptr) {
      v = quantize_value(v, sink.round_out);
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
    dst[k] = v;
  }
  if (sink.minmax != nullptr) store_chunk_minmax(sink.minmax, ch.task, lo, hi);
}

// saliency_map, pass 1 (not direct): the source at each pixel, with the single tap (and the
// square) when there is no filter.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    saliency_source_kernel(const T* __restrict__ src, const float* __restrict__ weights,
                           const float* __restrict__ taps, const bool* __restrict__ gate,
                           MapSink sink, int64_t mode, int64_t C, int64_t h, int64_t w,
                           int64_t T_, int64_t s_b, int64_t s_c, int64_t s_i, int64_t s_j,
                           bool square, bool quantize) {
  map_pass(gate, sink, h, w, [&](int64_t b, int64_t i, int64_t j) {
    const float* wb = weights != nullptr ? weights + b * C : nullptr;
    float v = quantize_value(saliency_source<T>(mode, src + b * s_b + i * s_i + j * s_j, s_c, C, wb),
                             quantize);
    if (T_ == 1) {
      v *= taps[0];
      if (square) v *= v;
    }
    return v;
  });
}

// saliency_map, passes 2 and 3: the filter's taps along rows or along columns (squared when
// asked).
__global__ void __launch_bounds__(kThreads)
    saliency_blur_kernel(const float* __restrict__ in_all, const float* __restrict__ taps,
                         const bool* __restrict__ gate, MapSink sink, int64_t h, int64_t w,
                         int64_t T_, bool vertical, bool square) {
  const int64_t r = T_ / 2;
  map_pass(gate, sink, h, w, [&](int64_t b, int64_t i, int64_t j) {
    const float* in = in_all + b * h * w;
    float v = 0.f;
    if (vertical)
      for (int64_t t = 0; t < T_; ++t) v += taps[t] * in[reflect_index(i + t - r, h) * w + j];
    else
      for (int64_t t = 0; t < T_; ++t) v += taps[t] * in[i * w + reflect_index(j + t - r, w)];
    return square ? v * v : v;
  });
}

// saliency_map, output pass: the map at (out_h, out_w) before normalisation (bilinear from s0, or
// from the source itself when direct), and each chunk's (min, max) -> minmax [B, T, 2].
template <typename T>
__global__ void __launch_bounds__(kThreads)
    saliency_output_kernel(const T* __restrict__ src, const float* __restrict__ weights,
                           const bool* __restrict__ gate, const float* __restrict__ s0_all,
                           float* __restrict__ out, float* __restrict__ minmax, int64_t mode,
                           int64_t C, int64_t h, int64_t w, int64_t out_h, int64_t out_w,
                           int64_t s_b, int64_t s_c, int64_t s_i, int64_t s_j, bool direct,
                           bool round_out, bool quantize) {
  const int64_t n_out = out_h * out_w;
  const Chunk ch = chunk_of(kChunk, chunk_count(n_out, kChunk), n_out);
  float* o = out + ch.bi * n_out;
  float lo = FLT_MAX, hi = -FLT_MAX;
  if (gate != nullptr && !gate[ch.bi]) {  // uniform over the block: zeros
    for (int64_t k = ch.k0 + threadIdx.x; k < ch.k1; k += blockDim.x) o[k] = 0.f;
  } else {
    const T* p0 = src + ch.bi * s_b;
    const float* wb = weights != nullptr ? weights + ch.bi * C : nullptr;
    const float* s0 = s0_all + ch.bi * h * w;
    for (int64_t k = ch.k0 + threadIdx.x; k < ch.k1; k += blockDim.x) {
      const int64_t y = k / out_w, x = k % out_w;
      float v = direct ? bilinear_source<T>(mode, p0, s_i, s_j, s_c, C, wb, quantize, h, w, y, x, out_h, out_w)
                       : bilinear_sample(s0, h, w, y, x, out_h, out_w);
      v = quantize_value(v, round_out);
      o[k] = v;
      lo = fminf(lo, v);
      hi = fmaxf(hi, v);
    }
  }
  store_chunk_minmax(minmax, ch.task, lo, hi);
}

// Last pass of saliency_map and fine_grained_saliency: each sample's (min, max) from its chunk
// partials; flat[b] (when flat is given) from the sample's first block and, when normalize,
// the min-max normalisation of every chunk in place. Launched over every chunk when normalize,
// else one block a sample. A gated-off sample stays zeros and is flat.
__global__ void __launch_bounds__(kThreads)
    saliency_finish_kernel(const float* __restrict__ minmax, const bool* __restrict__ gate,
                           float* __restrict__ out, bool* __restrict__ flat, int64_t n,
                           bool normalize) {
  const int64_t T = chunk_count(n, kChunk);
  const Chunk ch = chunk_of(kChunk, normalize ? T : 1, n);
  float lo, hi;
  reduce_sample_pairs(minmax, T, ch.bi, MinOp{}, FLT_MAX, MaxOp{}, -FLT_MAX, &lo, &hi);
  const bool on = gate == nullptr || gate[ch.bi];
  if (flat != nullptr && ch.k0 == 0 && threadIdx.x == 0) flat[ch.bi] = !on || is_flat(lo, hi);
  if (!(on && normalize)) return;
  float* o = out + ch.bi * n;
  for (int64_t k = ch.k0 + threadIdx.x; k < ch.k1; k += blockDim.x) o[k] = normalize_value(o[k], lo, hi);
}

// One block per sample: its largest amplitude (the log floor, amplitude_floor) first, then the
// residual of each frequency. A spectrum is the 64 x 64 working grid (32 KB), L1 / L2 resident.
__global__ void __launch_bounds__(kThreads)
spectral_residual_kernel(const float* __restrict__ spec, float* __restrict__ out, int64_t h,
                         int64_t w) {
  const int64_t hw = h * w, b = blockIdx.x;
  const float* s = spec + b * hw * 2;
  float* o = out + b * hw * 2;
  float max_amp = 0.f;
  for (int64_t k = threadIdx.x; k < hw; k += blockDim.x)
    max_amp = fmaxf(max_amp, amplitude(s, k));
  const float amp_floor = amplitude_floor(block_all_reduce(max_amp, MaxOp{}, 0.f));
  for (int64_t k = threadIdx.x; k < hw; k += blockDim.x)
    spectral_residual_at(s, h, w, k / w, k % w, amp_floor, o + 2 * k, o + 2 * k + 1);
}

// fine_grained_saliency, pass 1: on / off contrast summed over the scales (float64, like the
// integral image) -> on / off, and each chunk's (max on, max off) -> on_off_max [B, T, 2].
// Nothing for a gated-off sample: the intensity pass reads none of it.
__global__ void __launch_bounds__(kThreads)
    fine_grained_contrast_kernel(const float* __restrict__ grey, const double* __restrict__ integral,
                                 const Scales scales, const bool* __restrict__ gate,
                                 double* __restrict__ on_all, double* __restrict__ off_all,
                                 double* __restrict__ on_off_max, int64_t H, int64_t W) {
  const int64_t hw = H * W;
  const Chunk ch = chunk_of(kChunk, chunk_count(hw, kChunk), hw);
  if (gate != nullptr && !gate[ch.bi]) return;  // (uniform over the block: before any barrier)
  const double* S = integral + ch.bi * (H + 1) * (W + 1);
  double on_max = 0, off_max = 0;
  for (int64_t k = ch.k0 + threadIdx.x; k < ch.k1; k += blockDim.x) {
    double on, off;
    fine_grained_on_off(S, H, W, k / W, k % W, static_cast<double>(grey[ch.bi * hw + k]), scales.v,
                        scales.n, &on, &off);
    on_all[ch.bi * hw + k] = on;
    off_all[ch.bi * hw + k] = off;
    on_max = fmax(on_max, on);
    off_max = fmax(off_max, off);
  }
  on_max = block_all_reduce(on_max, MaxOp{}, 0.0);
  off_max = block_all_reduce(off_max, MaxOp{}, 0.0);
  if (threadIdx.x == 0) {
    on_off_max[ch.task * 2] = on_max;
    on_off_max[ch.task * 2 + 1] = off_max;
  }
}

// fine_grained_saliency, pass 2: on / max(on) + off / max(off) -> out, and each chunk's
// (min, max) -> minmax [B, T, 2] (saliency_finish_kernel normalises). A gated-off sample
// (whose contrast pass wrote nothing) gets zeros and partials (0, 0), which the finish keeps.
__global__ void __launch_bounds__(kThreads)
    fine_grained_intensity_kernel(const double* __restrict__ on, const double* __restrict__ off,
                                  const double* __restrict__ on_off_max, const bool* __restrict__ gate,
                                  float* __restrict__ out, float* __restrict__ minmax, int64_t hw) {
  const int64_t T = chunk_count(hw, kChunk);
  const Chunk ch = chunk_of(kChunk, T, hw);
  const bool gated_on = gate == nullptr || gate[ch.bi];
  double on_max = 0.0, off_max = 0.0;
  if (gated_on) reduce_sample_pairs(on_off_max, T, ch.bi, MaxOp{}, 0.0, MaxOp{}, 0.0, &on_max, &off_max);
  float lo = FLT_MAX, hi = -FLT_MAX;
  for (int64_t k = ch.bi * hw + ch.k0 + threadIdx.x; k < ch.bi * hw + ch.k1; k += blockDim.x) {
    const float v = !gated_on ? 0.f
                              : static_cast<float>((on_max > 0 ? on[k] / on_max : 0.0) +
                                                   (off_max > 0 ? off[k] / off_max : 0.0));
    out[k] = v;
    lo = fminf(lo, v);
    hi = fmaxf(hi, v);
  }
  store_chunk_minmax(minmax, ch.task, lo, hi);
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
  const int64_t hw = d.h * d.w, n_out = out_h * out_w, T_ = taps.size(0);
  const int64_t T_in = chunk_count(hw, kChunk), T_out = chunk_count(n_out, kChunk);
  auto out = at::empty({d.B, 1, out_h, out_w}, opts);
  auto flat = at::empty({d.B}, src.options().dtype(at::kBool));
  auto minmax = at::empty({d.B, T_out, 2}, opts);
  // Per-sample scratch for the full-size map and the blur's intermediate. None when direct
  // (the output pass samples the source); when the map keeps its size its last pass writes
  // the output itself (`in_place`), and no output pass runs.
  const bool direct = saliency_direct(T_, d.h, d.w, out_h, out_w);
  const bool in_place = !direct && out_h == d.h && out_w == d.w;
  auto s0 = at::empty({direct || (in_place && T_ == 1) ? 0 : d.B, hw}, opts);
  auto s1 = at::empty({T_ > 1 ? d.B : 0, hw}, opts);
  const auto w = weights.contiguous(), t = taps.contiguous(), g = gate.contiguous();
  const float* wp = w.numel() ? w.const_data_ptr<float>() : nullptr;
  const float* tp = t.const_data_ptr<float>();
  const bool* gp = g.numel() ? g.const_data_ptr<bool>() : nullptr;
  const bool complex_src = mode == kSrcComplexAbs;
  const int64_t si = complex_src ? src.stride(1) : src.stride(2);
  const int64_t sj = complex_src ? src.stride(2) : src.stride(3);
  const int64_t in_blocks = chunk_grid(d.B, T_in, "medmix::saliency_map");
  const int64_t out_blocks = chunk_grid(d.B, T_out, "medmix::saliency_map");
  const MapSink to_s0{s0.mutable_data_ptr<float>(), nullptr, false};
  const MapSink to_s1{s1.mutable_data_ptr<float>(), nullptr, false};
  const MapSink to_out{out.mutable_data_ptr<float>(), minmax.mutable_data_ptr<float>(),
                       quantize && !normalize};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, src.scalar_type(),
                                  "saliency_map_cuda", [&] {
    const scalar_t* sp = src.const_data_ptr<scalar_t>();
    if (!direct) {
      saliency_source_kernel<scalar_t><<<in_blocks, kThreads, 0, stream>>>(
          sp, wp, tp, gp, in_place && T_ == 1 ? to_out : to_s0, mode, d.C, d.h, d.w, T_,
          src.stride(0), d.sc, si, sj, square, quantize);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (T_ > 1) {
        saliency_blur_kernel<<<in_blocks, kThreads, 0, stream>>>(
            s0.const_data_ptr<float>(), tp, gp, to_s1, d.h, d.w, T_, /*vertical=*/false,
            /*square=*/false);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        saliency_blur_kernel<<<in_blocks, kThreads, 0, stream>>>(
            s1.const_data_ptr<float>(), tp, gp, in_place ? to_out : to_s0, d.h, d.w, T_,
            /*vertical=*/true, square);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    if (!in_place) {
      saliency_output_kernel<scalar_t><<<out_blocks, kThreads, 0, stream>>>(
          sp, wp, gp, s0.const_data_ptr<float>(), out.mutable_data_ptr<float>(),
          minmax.mutable_data_ptr<float>(), mode, d.C, d.h, d.w, out_h, out_w, src.stride(0),
          d.sc, si, sj, direct, quantize && !normalize, quantize);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  saliency_finish_kernel<<<normalize ? out_blocks : d.B, kThreads, 0, stream>>>(
      minmax.const_data_ptr<float>(), gp, out.mutable_data_ptr<float>(),
      flat.mutable_data_ptr<bool>(), n_out, normalize);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, flat};
}

at::Tensor spectral_residual_filter_cuda(const at::Tensor& spec_in) {
  check_spectrum(spec_in);
  TORCH_CHECK(spec_in.is_cuda(), "medmix::spectral_residual_filter (CUDA kernel) got a ",
              spec_in.device(), " tensor");
  const c10::cuda::CUDAGuard guard(spec_in.device());
  const auto spec = spec_in.contiguous();
  auto out = at::empty_like(spec);
  const int64_t B = spec.size(0);
  if (spec.numel() == 0) return out;
  TORCH_CHECK(B <= INT32_MAX, "medmix::spectral_residual_filter: at most 2^31 - 1 spectra, got ", B);
  spectral_residual_kernel<<<static_cast<unsigned>(B), kThreads, 0,
                             c10::cuda::getCurrentCUDAStream()>>>(
      spec.const_data_ptr<float>(), out.mutable_data_ptr<float>(), spec.size(1), spec.size(2));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor fine_grained_saliency_cuda(const at::Tensor& grey_in, at::IntArrayRef scales,
                                      const at::Tensor& gate_in) {
  check_fine_grained_args(grey_in, gate_in);
  TORCH_CHECK(grey_in.is_cuda(), "medmix::fine_grained_saliency (CUDA kernel) got a ",
              grey_in.device(), " tensor");
  TORCH_CHECK(static_cast<int64_t>(scales.size()) <= Scales::kMax,
              "medmix::fine_grained_saliency: at most ", Scales::kMax, " scales, got ", scales.size());
  const c10::cuda::CUDAGuard guard(grey_in.device());
  const auto grey = grey_in.contiguous(), gate = gate_in.contiguous();
  const bool* gp = gate.numel() ? gate.const_data_ptr<bool>() : nullptr;
  const int64_t B = grey.size(0), H = grey.size(2), W = grey.size(3), T = chunk_count(H * W, kChunk);
  // The float64 integral image [B, H + 1, W + 1] as the reference builds it (its bits: the
  // same cumsums, zero-padded at the top and left).
  const auto integral =
      at::constant_pad_nd(grey.select(1, 0).to(at::kDouble).cumsum(1).cumsum(2), {1, 0, 1, 0})
          .contiguous();
  auto out = at::empty_like(grey);
  auto on = at::empty({B, H * W}, grey.options().dtype(at::kDouble));
  auto off = at::empty_like(on);
  auto on_off_max = at::empty({B, T, 2}, on.options());
  auto minmax = at::empty({B, T, 2}, grey.options());
  Scales sc{static_cast<int64_t>(scales.size()), {}};
  for (size_t i = 0; i < scales.size(); ++i) sc.v[i] = scales[i];
  const int64_t blocks = chunk_grid(B, T, "medmix::fine_grained_saliency");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  fine_grained_contrast_kernel<<<blocks, kThreads, 0, stream>>>(
      grey.const_data_ptr<float>(), integral.const_data_ptr<double>(), sc, gp,
      on.mutable_data_ptr<double>(), off.mutable_data_ptr<double>(),
      on_off_max.mutable_data_ptr<double>(), H, W);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  fine_grained_intensity_kernel<<<blocks, kThreads, 0, stream>>>(
      on.const_data_ptr<double>(), off.const_data_ptr<double>(), on_off_max.const_data_ptr<double>(),
      gp, out.mutable_data_ptr<float>(), minmax.mutable_data_ptr<float>(), H * W);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  saliency_finish_kernel<<<blocks, kThreads, 0, stream>>>(
      minmax.const_data_ptr<float>(), gp, out.mutable_data_ptr<float>(), nullptr, H * W,
      /*normalize=*/true);
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
