// Saliency kernels on the CPU, parallel over samples: saliency_map (source transform, separable
// taps, optional square, bilinear resize, min-max normalisation), spectral_residual_filter and
// fine_grained_saliency. See csrc/ops.cpp for the contracts.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <tuple>
#include <vector>

#include "../common/gaussian_taps.h"
#include "../common/saliency.h"
#include "../common/saliency_args.h"

namespace medmix {
namespace {

// Blurs s0 [h, w] in place with the separable taps (horizontal, then vertical), via s1.
void separable_taps(float* s0, float* s1, int64_t h, int64_t w, const float* taps, int64_t T) {
  if (T == 1) {
    for (int64_t k = 0; k < h * w; ++k) s0[k] *= taps[0];
    return;
  }
  const int64_t r = T / 2;
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = 0; j < w; ++j) {
      float v = 0.f;
      for (int64_t t = 0; t < T; ++t) v += taps[t] * s0[i * w + reflect_index(j + t - r, w)];
      s1[i * w + j] = v;
    }
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = 0; j < w; ++j) {
      float v = 0.f;
      for (int64_t t = 0; t < T; ++t) v += taps[t] * s1[reflect_index(i + t - r, h) * w + j];
      s0[i * w + j] = v;
    }
}

template <typename T>
void saliency_map_impl(const at::Tensor& src, int64_t mode, const at::Tensor& weights,
                       const at::Tensor& taps, bool square, int64_t out_h, int64_t out_w,
                       bool normalize, bool quantize, const at::Tensor& gate,
                       const SaliencyMapDims& d,
                       at::Tensor& out, at::Tensor& flat) {
  const T* ps = src.data_ptr<T>();
  const float* pw = weights.numel() ? weights.data_ptr<float>() : nullptr;
  const float* pt = taps.data_ptr<float>();
  const bool* pg = gate.numel() ? gate.data_ptr<bool>() : nullptr;
  float* po = out.data_ptr<float>();
  bool* pf = flat.data_ptr<bool>();
  const int64_t T_ = taps.size(0), h = d.h, w = d.w;
  const bool complex_src = mode == kSrcComplexAbs;
  const int64_t s0 = src.stride(0), si = complex_src ? src.stride(1) : src.stride(2),
                sj = complex_src ? src.stride(2) : src.stride(3);
  at::parallel_for(0, d.B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> a(h * w), b(h * w);
    for (int64_t bi = begin; bi < end; ++bi) {
      float* o = po + bi * out_h * out_w;
      if (pg && !pg[bi]) {
        std::fill(o, o + out_h * out_w, 0.f);
        pf[bi] = true;
        continue;
      }
      float src_lo = FLT_MAX, src_hi = -FLT_MAX;
      for (int64_t i = 0; i < h; ++i)
        for (int64_t j = 0; j < w; ++j) {
          const float v = quantize_value(
              saliency_source<T>(mode, ps + bi * s0 + i * si + j * sj, d.sc, d.C,
                                 pw ? pw + bi * d.C : nullptr),
              quantize);
          a[i * w + j] = v;
          src_lo = std::min(src_lo, v);
          src_hi = std::max(src_hi, v);
        }
      pf[bi] = is_flat(src_lo, src_hi);
      separable_taps(a.data(), b.data(), h, w, pt, T_);
      if (square)
        for (auto& v : a) v *= v;
      const bool round_out = quantize && !normalize;
      float lo = FLT_MAX, hi = -FLT_MAX;
      for (int64_t y = 0; y < out_h; ++y)
        for (int64_t x = 0; x < out_w; ++x) {
          const float v = quantize_value(bilinear_sample(a.data(), h, w, y, x, out_h, out_w), round_out);
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
      for (int64_t y = 0; y < out_h; ++y)
        for (int64_t x = 0; x < out_w; ++x) {
          const float v = quantize_value(bilinear_sample(a.data(), h, w, y, x, out_h, out_w), round_out);
          o[y * out_w + x] = normalize ? normalize_value(v, lo, hi) : v;
        }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> saliency_map_cpu(const at::Tensor& src, int64_t mode,
                                                    const at::Tensor& weights,
                                                    const at::Tensor& taps, bool square,
                                                    int64_t out_h, int64_t out_w, bool normalize,
                                                    bool quantize, const at::Tensor& gate) {
  const auto d = check_saliency_map_args(src, mode, weights, taps, out_h, out_w, gate);
  auto out = at::empty({d.B, 1, out_h, out_w}, src.options().dtype(at::kFloat));
  auto flat = at::empty({d.B}, src.options().dtype(at::kBool));
  const auto w = weights.contiguous();
  const auto t = taps.contiguous();
  const auto g = gate.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, src.scalar_type(),
                                  "saliency_map_cpu", [&] {
                                    saliency_map_impl<scalar_t>(src, mode, w, t, square, out_h,
                                                                out_w, normalize, quantize, g, d,
                                                                out, flat);
                                  });
  return {out, flat};
}

at::Tensor spectral_residual_filter_cpu(const at::Tensor& spec_in) {
  check_spectrum(spec_in);
  const auto spec = spec_in.contiguous();
  const int64_t B = spec.size(0), h = spec.size(1), w = spec.size(2);
  auto out = at::empty_like(spec);
  const float* ps = spec.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, B * h, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bi = row / h, i = row % h;
      const float* sb = ps + bi * h * w * 2;
      for (int64_t j = 0; j < w; ++j) {
        float* o = po + ((bi * h + i) * w + j) * 2;
        spectral_residual_at(sb, h, w, i, j, o, o + 1);
      }
    }
  });
  return out;
}

at::Tensor fine_grained_saliency_cpu(const at::Tensor& grey_in, const at::Tensor& integral_in,
                                     at::IntArrayRef scales) {
  check_fine_grained_args(grey_in, integral_in);
  const auto grey = grey_in.contiguous();
  const auto integral = integral_in.contiguous();
  const int64_t B = grey.size(0), H = grey.size(2), W = grey.size(3);
  auto out = at::empty({B, 1, H, W}, grey.options());
  const float* pg = grey.data_ptr<float>();
  const double* pS = integral.data_ptr<double>();
  float* po = out.data_ptr<float>();
  const std::vector<int64_t> sc(scales.begin(), scales.end());
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> on(H * W), off(H * W);
    std::vector<float> inten(H * W);
    for (int64_t bi = begin; bi < end; ++bi) {
      double on_max = 0, off_max = 0;
      for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
          const int64_t k = y * W + x;
          fine_grained_on_off(pS + bi * (H + 1) * (W + 1), H, W, y, x,
                              static_cast<double>(pg[bi * H * W + k]), sc.data(),
                              static_cast<int64_t>(sc.size()), &on[k], &off[k]);
          on_max = std::max(on_max, on[k]);
          off_max = std::max(off_max, off[k]);
        }
      float lo = FLT_MAX, hi = -FLT_MAX;
      for (int64_t k = 0; k < H * W; ++k) {
        const double v = (on_max > 0 ? on[k] / on_max : 0.0) + (off_max > 0 ? off[k] / off_max : 0.0);
        inten[k] = static_cast<float>(v);
        lo = std::min(lo, inten[k]);
        hi = std::max(hi, inten[k]);
      }
      for (int64_t k = 0; k < H * W; ++k) po[bi * H * W + k] = normalize_value(inten[k], lo, hi);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(medmix, CPU, m) {
  m.impl("saliency_map", &saliency_map_cpu);
  m.impl("spectral_residual_filter", &spectral_residual_filter_cpu);
  m.impl("fine_grained_saliency", &fine_grained_saliency_cpu);
}

}  // namespace medmix
