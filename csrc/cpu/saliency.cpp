// Saliency kernels on the CPU, parallel over samples (fine_grained_saliency: over rows):
// saliency_map (source transform, separable taps, optional square, bilinear resize, min-max
// normalisation), spectral_residual_filter and fine_grained_saliency. See csrc/ops.cpp for the contracts. Inner loops run over contiguous
// rows with the taps / channels outside, so the compiler vectorises them.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <cstring>
#include <memory>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/gaussian_taps.h"
#include "../common/saliency.h"
#include "../common/saliency_args.h"
#include "clones.h"
#include "half_f16c.h"
#include "vector_math.h"

namespace medmix {
namespace {

// Per output row / column: the two source indices and the weight of the second (PyTorch's
// align_corners=False arithmetic, computed once per call).
// used[i]: whether any output reads input index i.
struct BilinearTable {
  std::vector<int64_t> i0, i1;
  std::vector<float> l1;
  std::vector<char> used;
  BilinearTable(int64_t in, int64_t out) : i0(out), i1(out), l1(out), used(in, 0) {
    for (int64_t o = 0; o < out; ++o) {
      bilinear_coord(o, in, out, &i0[o], &i1[o], &l1[o]);
      used[i0[o]] = used[i1[o]] = 1;
    }
  }
};

// dst[x] = (1 - l) * a[x] + l * b[x]: bilinear_sample's blend of two resized rows.
MEDMIX_CPU_CLONES void lerp_rows(const float* __restrict__ a, const float* __restrict__ b, float l,
                                 float* __restrict__ dst, int64_t n) {
  for (int64_t x = 0; x < n; ++x) dst[x] = (1.f - l) * a[x] + l * b[x];
}

// Blurs s0 [h, w] in place with the separable taps (horizontal, then vertical).
void separable_taps(float* s0, int64_t h, int64_t w, const float* taps, int64_t T,
                    std::vector<float>& row, std::vector<float>& tmp) {
  const int64_t r = T / 2;
  row.resize(w + 2 * r);
  tmp.resize(h * w);
  std::vector<const float*> rows(T);  // the rows (or shifts) weighted by taps[0 .. T)
  for (int64_t i = 0; i < h; ++i) {
    float* pad = row.data() + r;
    const float* src = s0 + i * w;
    std::copy(src, src + w, pad);
    for (int64_t j = 1; j <= r; ++j) {
      pad[-j] = src[reflect_index(-j, w)];
      pad[w - 1 + j] = src[reflect_index(w - 1 + j, w)];
    }
    for (int64_t t = 0; t < T; ++t) rows[t] = pad + t - r;
    weighted_rows(taps, rows.data(), T, tmp.data() + i * w, w);
  }
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t t = 0; t < T; ++t) rows[t] = tmp.data() + reflect_index(i + t - r, h) * w;
    weighted_rows(taps, rows.data(), T, s0 + i * w, w);
  }
}

// The minimum and maximum of p[0, n) into *lo, *hi (FLT_MAX / -FLT_MAX when there is none), in
// 8 lanes: a serial min / max chain is latency bound (it was a quarter of saliency_map's time).
// Exact in any order, and a NaN is skipped in a lane as std::min / std::max skip it in a serial
// loop; only the sign of a zero extremum could depend on the order (+0 and -0 compare equal).
// always_inline: expanded in each AVX2 clone that calls it.
__attribute__((always_inline)) inline void min_max_lanes(const float* __restrict__ p, int64_t n,
                                                         float* lo, float* hi) {
  float l[8], h[8];
  for (int j = 0; j < 8; ++j) l[j] = FLT_MAX, h[j] = -FLT_MAX;
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int j = 0; j < 8; ++j) {
      l[j] = std::min(l[j], p[k + j]);
      h[j] = std::max(h[j], p[k + j]);
    }
  }
  for (; k < n; ++k) l[0] = std::min(l[0], p[k]), h[0] = std::max(h[0], p[k]);
  for (int j = 1; j < 8; ++j) l[0] = std::min(l[0], l[j]), h[0] = std::max(h[0], h[j]);
  *lo = l[0];
  *hi = h[0];
}

MEDMIX_CPU_CLONES void min_max_run(const float* __restrict__ p, int64_t n, float* lo, float* hi) {
  min_max_lanes(p, n, lo, hi);
}

// normalize_value over a row (its flat-map test hoisted: lo and hi are the sample's).
MEDMIX_CPU_CLONES void normalize_row(float* __restrict__ po, int64_t W, float lo, float hi) {
  if (is_flat(lo, hi)) {
    std::fill(po, po + W, 0.f);
    return;
  }
  for (int64_t k = 0; k < W; ++k) po[k] = (po[k] - lo) / (hi - lo);
}

// v = nearbyint(v) over a row (half to even: OpenCV's 8-bit intermediates). A clone of its own:
// in the AVX2 clone GCC inlines nearbyint as vroundps (-fno-trapping-math), where the callers'
// baseline code called libm's nearbyintf per pixel, a third of a uint8 fine_grained map's time.
MEDMIX_CPU_CLONES void round_row(float* __restrict__ v, int64_t n) {
  for (int64_t k = 0; k < n; ++k) v[k] = std::nearbyint(v[k]);
}

// One channel row into the map row o: its weighted value, |value| summed, or |value|'s max
// (|x| >= 0, so the zeroed row starts the max). Cloned: source_map itself has no AVX2 clone.
template <typename T>
MEDMIX_CPU_CLONES void add_source_row(int64_t mode, const T* __restrict__ src, float wc, int64_t wd,
                                      float* __restrict__ o) {
  if (mode == kSrcWeighted) {
    for (int64_t j = 0; j < wd; ++j) o[j] += wc * static_cast<float>(src[j]);
  } else if (mode == kSrcAbsSum) {
    for (int64_t j = 0; j < wd; ++j) o[j] += std::fabs(static_cast<float>(src[j]));
  } else {
    for (int64_t j = 0; j < wd; ++j) o[j] = std::max(o[j], std::fabs(static_cast<float>(src[j])));
  }
}

// Source values of sample bi into a [h, w] map (row-wise, channels outside, when possible).
template <typename T>
void source_map(const T* p0, int64_t mode, int64_t si, int64_t sj, int64_t sc, int64_t C,
                const float* w, bool q, int64_t h, int64_t wd, float* out) {
  const bool rows = sj == 1 && mode != kSrcComplexAbs && mode != kSrcReluWeighted;
  for (int64_t i = 0; i < h; ++i) {
    float* o = out + i * wd;
    if (rows) {
      std::fill(o, o + wd, 0.f);
      for (int64_t c = 0; c < C; ++c) {
        const T* src = p0 + i * si + c * sc;
        const float wc = w ? w[c] : 0.f;
        if constexpr (std::is_same_v<T, c10::Half>) {  // the row as floats through F16C (exact)
          if (cpu_has_f16c()) {
            thread_local std::vector<float> row;
            row.resize(wd);
            half_to_float(src, row.data(), wd);
            add_source_row<float>(mode, row.data(), wc, wd, o);
            continue;
          }
        }
        add_source_row<T>(mode, src, wc, wd, o);
      }
    } else {
      for (int64_t j = 0; j < wd; ++j) o[j] = saliency_source<T>(mode, p0 + i * si + j * sj, sc, C, w);
    }
    if (q) round_row(o, wd);
  }
}

template <typename T>
void saliency_map_impl(const at::Tensor& src, int64_t mode, const at::Tensor& weights,
                       const at::Tensor& taps, bool square, int64_t out_h, int64_t out_w,
                       bool normalize, bool quantize, const at::Tensor& gate,
                       const SaliencyMapDims& d, at::Tensor& out, at::Tensor& flat) {
  const T* ps = src.data_ptr<T>();
  const float* pw = weights.numel() ? weights.data_ptr<float>() : nullptr;
  const float* pt = taps.data_ptr<float>();
  const bool* pg = gate.numel() ? gate.data_ptr<bool>() : nullptr;
  float* po = out.data_ptr<float>();
  bool* pf = flat.data_ptr<bool>();
  const int64_t T_ = taps.size(0), h = d.h, w = d.w, n_out = out_h * out_w;
  const bool complex_src = mode == kSrcComplexAbs;
  const int64_t sb = src.stride(0), si = complex_src ? src.stride(1) : src.stride(2),
                sj = complex_src ? src.stride(2) : src.stride(3);
  const bool direct = saliency_direct(T_, h, w, out_h, out_w);
  const bool resize = out_h != h || out_w != w;
  const BilinearTable rows(h, out_h), cols(w, out_w);
  const bool round_out = quantize && !normalize;
  at::parallel_for(0, d.B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> map(direct ? 0 : h * w), row, tmp, hz;
    for (int64_t bi = begin; bi < end; ++bi) {
      float* o = po + bi * n_out;
      if (pg && !pg[bi]) {
        std::fill(o, o + n_out, 0.f);
        pf[bi] = true;
        continue;
      }
      const T* p0 = ps + bi * sb;
      const float* wb = pw ? pw + bi * d.C : nullptr;
      if (direct) {
        for (int64_t y = 0; y < out_h; ++y)
          for (int64_t x = 0; x < out_w; ++x)
            o[y * out_w + x] = bilinear_source<T>(mode, p0, si, sj, d.sc, d.C, wb, quantize, h, w,
                                                  y, x, out_h, out_w);
      } else {
        source_map<T>(p0, mode, si, sj, d.sc, d.C, wb, quantize, h, w, map.data());
        if (T_ > 1) {
          separable_taps(map.data(), h, w, pt, T_, row, tmp);
        } else if (pt[0] != 1.f) {
          for (auto& v : map) v *= pt[0];
        }
        if (square)
          for (auto& v : map) v *= v;
        if (!resize) {
          std::copy(map.begin(), map.end(), o);
        } else {
          // bilinear_sample in two passes: each source row that an output row reads is
          // resized along x once (its `top` / `bot` values), then every output row is one
          // vector blend of two of them. Per output pixel it had gathered four values and
          // resized both rows again: scalar code. The same operations, so the same bits.
          hz.resize(h * out_w);
          for (int64_t i = 0; i < h; ++i) {
            if (!rows.used[i]) continue;
            const float* r = map.data() + i * w;
            float* t = hz.data() + i * out_w;
            for (int64_t x = 0; x < out_w; ++x) {
              const float lx = cols.l1[x];
              t[x] = (1.f - lx) * r[cols.i0[x]] + lx * r[cols.i1[x]];
            }
          }
          for (int64_t y = 0; y < out_h; ++y)
            lerp_rows(hz.data() + rows.i0[y] * out_w, hz.data() + rows.i1[y] * out_w, rows.l1[y],
                      o + y * out_w, out_w);
        }
      }
      if (round_out) round_row(o, n_out);
      float lo, hi;
      min_max_run(o, n_out, &lo, &hi);
      pf[bi] = is_flat(lo, hi);
      if (normalize) normalize_row(o, n_out, lo, hi);  // (normalize_value over the map)
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

// The largest re^2 + im^2 of a [n, 2] spectrum (NaN ignored, as std::fmax does). Its sqrt is
// the largest amplitude bit for bit (sqrt is monotonic and correctly rounded). Eight
// independent maxima: one running max is a chain of n dependent compares, which cost this
// filter 0.14 ms at 32 spectra (a tenth of it).
static MEDMIX_CPU_CLONES float max_squared_amplitude(const float* s, int64_t n) {
  float m[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int u = 0; u < 8; ++u) {
      const float re = s[2 * (k + u)], im = s[2 * (k + u) + 1];
      const float sq = re * re + im * im;
      m[u] = sq > m[u] ? sq : m[u];
    }
  for (; k < n; ++k) {
    const float sq = s[2 * k] * s[2 * k] + s[2 * k + 1] * s[2 * k + 1];
    m[0] = sq > m[0] ? sq : m[0];
  }
  float r = 0.f;
  for (float v : m) r = v > r ? v : r;
  return r;
}

// la[k] = log(max(|s[k]|, floor)) over a [n, 2] spectrum: the log amplitude of every frequency,
// once (the 3x3 box reads each nine times).
static MEDMIX_CPU_CLONES void log_amplitudes(const float* __restrict__ s, float floor,
                                             float* __restrict__ la, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const float re = s[2 * k], im = s[2 * k + 1];
    const float a = std::sqrt(re * re + im * im);
    la[k] = vector_log(a > floor ? a : floor);
  }
}

// rs[j] = la[j - 1] + la[j] + la[j + 1] along one row of w, reflect border (reflect1's): the
// horizontal half of the separable 3x3 box.
static MEDMIX_CPU_CLONES void row_box3(const float* __restrict__ la, float* __restrict__ rs, int64_t w) {
  if (w == 1) {
    rs[0] = (la[0] + la[0]) + la[0];
    return;
  }
  rs[0] = (la[1] + la[0]) + la[1];
  for (int64_t j = 1; j + 1 < w; ++j) rs[j] = (la[j - 1] + la[j]) + la[j + 1];
  rs[w - 1] = (la[w - 2] + la[w - 1]) + la[w - 2];
}

// One output row: box = up + mid + down (the row sums of the rows above, at and below, already
// reflected), then spectral_residual_value's exp(la - box / 9) with the original phase.
static MEDMIX_CPU_CLONES void residual_row(const float* __restrict__ s, const float* __restrict__ la,
                                           const float* up, const float* mid, const float* down,
                                           float floor, float* __restrict__ o, int64_t w) {
  for (int64_t j = 0; j < w; ++j) {
    const float box = (up[j] + mid[j]) + down[j];
    const float re = s[2 * j], im = s[2 * j + 1];
    const float amp = std::sqrt(re * re + im * im);
    const float mag = vector_exp(la[j] - box / 9.f);
    const bool phased = amp > floor;
    o[2 * j] = phased ? mag * (re / amp) : mag;
    o[2 * j + 1] = phased ? mag * (im / amp) : 0.f;
  }
}

// Per spectrum: the largest amplitude, every log amplitude, the row sums of the 3x3 box, then
// each output row from three row sums. Separable, and exp / log in vector lanes
// (vector_math.h): the nine reflected lookups and scalar libm calls per frequency took about a
// quarter of the whole saliency op. The box is summed (row, then column) in another order than
// spectral_residual_at's nine terms, and exp / log are Cephes', not libm's: a few ulp apart.
at::Tensor spectral_residual_filter_cpu(const at::Tensor& spec_in) {
  check_spectrum(spec_in);
  const auto spec = spec_in.contiguous();
  const int64_t B = spec.size(0), h = spec.size(1), w = spec.size(2);
  auto out = at::empty_like(spec);
  const float* ps = spec.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> la(h * w), rs(h * w);
    for (int64_t bi = begin; bi < end; ++bi) {
      const float* sb = ps + bi * h * w * 2;
      float* ob = po + bi * h * w * 2;
      const float amp_floor = amplitude_floor(std::sqrt(max_squared_amplitude(sb, h * w)));
      log_amplitudes(sb, amp_floor, la.data(), h * w);
      for (int64_t i = 0; i < h; ++i) row_box3(la.data() + i * w, rs.data() + i * w, w);
      for (int64_t i = 0; i < h; ++i)
        residual_row(sb + 2 * i * w, la.data() + i * w, rs.data() + reflect1(i - 1, h) * w,
                     rs.data() + i * w, rs.data() + reflect1(i + 1, h) * w, amp_floor,
                     ob + 2 * i * w, w);
    }
  });
  return out;
}

// ---- fine_grained_saliency: one scale over a span of a row, vectorised ----
// fine_grained_on_off (csrc/common/saliency.h, the CUDA kernel's) clamps the box per pixel
// and scale, which keeps the loop scalar: one division and four dependent lookups at a time.
// Here a row is cut, per scale, into spans where each box edge is either clamped (a constant
// column, 0 or W) or follows x (a contiguous load), so the loop over x vectorises. Each term is
// that function's (fine_grained_add_term) and the scales are added in the same order, so the
// maps are bit-identical to it.

// Adds scale n's on / off terms of pixels [xa, xb) into on / off. r1, r2: rows y1, y2 of the
// integral image; dy = y2 - y1; grey, on, off: the row's. kLinearLo: x1 = x - n + 1 (else 0);
// kLinearHi: x2 = x + n + 1 (else W).
// A box corner that follows x is read through a pointer advanced to the span's first pixel and
// indexed by the step i: indexed by x - n + 1, GCC vectorised the loads as gathers built lane
// by lane (scalar loads and inserts, the loop's main cost). The box is summed in the same
// order. (int32 columns: AVX2 converts int32 lanes to double but not int64 ones, which kept
// the clamped spans, where x2 - x1 varies, scalar; the caller checks that W + n fits.)
template <bool kLinearLo, bool kLinearHi>
MEDMIX_CPU_CLONES void fine_grained_span(const double* __restrict__ r1, const double* __restrict__ r2,
                                         double dy, int32_t n, int32_t W,
                                         const float* __restrict__ grey, int32_t xa, int32_t xb,
                                         double* __restrict__ on, double* __restrict__ off) {
  const int32_t x1a = kLinearLo ? xa - n + 1 : 0, x2a = kLinearHi ? xa + n + 1 : W;
  const double *r1x1 = r1 + x1a, *r2x1 = r2 + x1a, *r1x2 = r1 + x2a, *r2x2 = r2 + x2a;
  const float* g = grey + xa;
  double *o = on + xa, *f = off + xa;
  for (int32_t i = 0; i < xb - xa; ++i) {
    const int32_t lo = kLinearLo ? i : 0, hi = kLinearHi ? i : 0;
    const double box = r2x2[hi] + r1x1[lo] - r2x1[lo] - r1x2[hi];
    // (x2 - x1) * (y2 - y1) - 1 of small integers: exact in double, as the integer product is
    fine_grained_add_term(box, static_cast<double>((x2a + hi) - (x1a + lo)) * dy - 1.0,
                          static_cast<double>(g[i]), &o[i], &f[i]);
  }
}

// on / off of row y of one sample (S: its integral image [H + 1, W + 1]).
void fine_grained_row(const double* S, int64_t H, int64_t W, int64_t y, const float* grey,
                      const std::vector<int64_t>& scales, double* on, double* off) {
  std::fill(on, on + W, 0.0);
  std::fill(off, off + W, 0.0);
  const int64_t W1 = W + 1;
  for (const int64_t n : scales) {
    const int64_t y1 = std::min(std::max<int64_t>(y - n + 1, 0), H);
    const int64_t y2 = std::min(y + n + 1, H);
    const double* r1 = S + y1 * W1;
    const double* r2 = S + y2 * W1;
    const double dy = static_cast<double>(y2 - y1);
    // x1 follows x from p = n - 1 on, x2 up to q = W - n (exclusive); clamped elsewhere
    const int64_t p = std::min(std::max<int64_t>(n - 1, 0), W), q = std::min(std::max<int64_t>(W - n, 0), W);
    const auto lo = static_cast<int32_t>(std::min(p, q)), hi = static_cast<int32_t>(std::max(p, q));
    const auto n32 = static_cast<int32_t>(n), W32 = static_cast<int32_t>(W);
    fine_grained_span<false, true>(r1, r2, dy, n32, W32, grey, 0, lo, on, off);
    if (p <= q) {
      fine_grained_span<true, true>(r1, r2, dy, n32, W32, grey, lo, hi, on, off);
    } else {
      fine_grained_span<false, false>(r1, r2, dy, n32, W32, grey, lo, hi, on, off);
    }
    fine_grained_span<true, false>(r1, r2, dy, n32, W32, grey, hi, W32, on, off);
  }
}

// The row's maxima of on and off into *mon, *moff, in vector lanes (exact in any order: the
// values are >= +0, never NaN); the serial std::max chain was 8% of the op. (GCC's vector
// types: the same loop over arrays of eight maxima stayed scalar for doubles.)
MEDMIX_CPU_CLONES void row_on_off_max(const double* __restrict__ on, const double* __restrict__ off,
                                      int64_t W, double* mon, double* moff) {
  typedef double Vec __attribute__((vector_size(32)));
  Vec a0 = Vec{} + 0.0, a1 = a0, b0 = a0, b1 = a0;
  int64_t k = 0;
  for (; k + 8 <= W; k += 8) {
    Vec x0, x1, y0, y1;
    std::memcpy(&x0, on + k, sizeof(Vec));
    std::memcpy(&x1, on + k + 4, sizeof(Vec));
    std::memcpy(&y0, off + k, sizeof(Vec));
    std::memcpy(&y1, off + k + 4, sizeof(Vec));
    a0 = a0 < x0 ? x0 : a0;
    a1 = a1 < x1 ? x1 : a1;
    b0 = b0 < y0 ? y0 : b0;
    b1 = b1 < y1 ? y1 : b1;
  }
  double a = 0.0, b = 0.0;
  for (int j = 0; j < 4; ++j) {
    a = std::max(a, std::max(a0[j], a1[j]));
    b = std::max(b, std::max(b0[j], b1[j]));
  }
  for (; k < W; ++k) a = std::max(a, on[k]), b = std::max(b, off[k]);
  *mon = a;
  *moff = b;
}

// po[k] = on[k] / mon + off[k] / moff in float (a zero maximum contributes 0), and the row's
// min / max into *lo, *hi. In a clone of its own, the divisions vectorise.
MEDMIX_CPU_CLONES void combine_on_off(const double* __restrict__ on, const double* __restrict__ off,
                                      double mon, double moff, int64_t W, float* __restrict__ po,
                                      float* lo, float* hi) {
  const bool use_on = mon > 0, use_off = moff > 0;
  for (int64_t k = 0; k < W; ++k)
    po[k] = static_cast<float>((use_on ? on[k] / mon : 0.0) + (use_off ? off[k] / moff : 0.0));
  min_max_lanes(po, W, lo, hi);
}

// The integral image of one sample's grey map [H, W]: S [H + 1, W + 1] in float64, S[y][x] =
// the sum of grey[:y, :x]. The reference's torch.cumsum(1).cumsum(2) adds in this order (each
// column's running sum down the rows, then each row's running sum of those), so S has its
// bits. A row's running sum is a serial chain of dependent adds; four rows are summed together
// so that four independent chains overlap. col: scratch [W].
void integral_image(const float* __restrict__ g, int64_t H, int64_t W,
                    double* __restrict__ S, double* __restrict__ col) {
  const int64_t W1 = W + 1;
  std::fill(S, S + W1, 0.0);
  std::fill(col, col + W, 0.0);
  int64_t y = 0;
  for (; y + 4 <= H; y += 4) {
    const float* g0 = g + y * W;
    double* s0 = S + (y + 1) * W1;
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    s0[0] = s0[W1] = s0[2 * W1] = s0[3 * W1] = 0.0;
    for (int64_t x = 0; x < W; ++x) {
      double c = col[x] + static_cast<double>(g0[x]);
      s0[x + 1] = a0 += c;
      c += static_cast<double>(g0[W + x]);
      s0[W1 + x + 1] = a1 += c;
      c += static_cast<double>(g0[2 * W + x]);
      s0[2 * W1 + x + 1] = a2 += c;
      c += static_cast<double>(g0[3 * W + x]);
      s0[3 * W1 + x + 1] = a3 += c;
      col[x] = c;
    }
  }
  for (; y < H; ++y) {
    double* s = S + (y + 1) * W1;
    double a = 0;
    s[0] = 0.0;
    for (int64_t x = 0; x < W; ++x) {
      col[x] += static_cast<double>(g[y * W + x]);
      s[x + 1] = a += col[x];
    }
  }
}

// Samples are processed in chunks whose scratch (integral image, on, off: 24 bytes a pixel)
// stays near this size: the whole batch's (39 MB at 32 x 224^2) was above glibc's mmap
// ceiling, so every call faulted it in page by page, and it left the cache between passes.
constexpr int64_t kFineGrainedScratchBytes = int64_t(8) << 20;

// Per chunk: the integral images (parallel over samples), then three passes parallel over rows
// of all the chunk's samples, not over samples (SaliencyMix's official mode maps one image,
// which a per-sample split would leave on one thread), with the per-sample maxima / extrema
// reduced in between (max and min are exact in any order, so the result does not depend on
// the split): on / off per pixel, then the combined intensity, then its min-max normalisation.
// A gated-off sample's rows are zeros from the intensity pass on (its contrast is not computed).
at::Tensor fine_grained_saliency_cpu(const at::Tensor& grey_in, at::IntArrayRef scales,
                                     const at::Tensor& gate_in) {
  check_fine_grained_args(grey_in, gate_in);
  const auto grey = grey_in.contiguous();
  const auto gate = gate_in.contiguous();
  const bool* pgate = gate.numel() ? gate.data_ptr<bool>() : nullptr;
  const int64_t B = grey.size(0), H = grey.size(2), W = grey.size(3), HW = H * W;
  auto out = at::empty({B, 1, H, W}, grey.options());
  const float* pg = grey.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const std::vector<int64_t> sc(scales.begin(), scales.end());
  // fine_grained_row's spans index columns in int32, and read x - n + 1 <= x unclamped
  TORCH_CHECK(W < (int64_t(1) << 30), "medmix::fine_grained_saliency: W must be below 2^30 on the CPU, got ", W);
  for (const int64_t n : sc) {
    TORCH_CHECK(n >= 0 && n < (int64_t(1) << 30),
                "medmix::fine_grained_saliency: scales must be in [0, 2^30), got ", n);
  }
  if (B == 0 || HW == 0) return out;
  const int64_t SS = (H + 1) * (W + 1);
  // at least a sample per thread, so that the integral images are computed in parallel
  const int64_t chunk = std::min(B, std::max<int64_t>(
      at::get_num_threads(), kFineGrainedScratchBytes / (8 * (SS + 2 * HW))));
  // (not std::vector: its zero fill was a pass over the scratch; every row is written first)
  const std::unique_ptr<double[]> integral(new double[chunk * SS]), on(new double[chunk * HW]),
      off(new double[chunk * HW]);
  std::vector<double> row_on_max(chunk * H), row_off_max(chunk * H);
  std::vector<float> row_lo(chunk * H), row_hi(chunk * H);
  std::vector<double> on_max(chunk), off_max(chunk);
  std::vector<float> lo(chunk), hi(chunk);
  // ~16K box lookups per task: rows of small images are grouped, large ones split finely.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, W * static_cast<int64_t>(sc.size())));
  for (int64_t b0 = 0; b0 < B; b0 += chunk) {
    const int64_t nb = std::min(chunk, B - b0), rows = nb * H;
    const float* cg = pg + b0 * HW;
    float* co = po + b0 * HW;
    at::parallel_for(0, nb, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> col(W);
      for (int64_t i = begin; i < end; ++i) integral_image(cg + i * HW, H, W, &integral[i * SS], col.data());
    });
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        if (pgate != nullptr && !pgate[b0 + row / H]) {
          row_on_max[row] = row_off_max[row] = 0.0;
          continue;
        }
        fine_grained_row(&integral[(row / H) * SS], H, W, row % H, cg + row * W, sc, &on[row * W],
                         &off[row * W]);
        row_on_off_max(&on[row * W], &off[row * W], W, &row_on_max[row], &row_off_max[row]);
      }
    });
    std::fill(on_max.begin(), on_max.end(), 0.0);
    std::fill(off_max.begin(), off_max.end(), 0.0);
    for (int64_t row = 0; row < rows; ++row) {
      on_max[row / H] = std::max(on_max[row / H], row_on_max[row]);
      off_max[row / H] = std::max(off_max[row / H], row_off_max[row]);
    }
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t bi = row / H;
        if (pgate != nullptr && !pgate[b0 + bi]) {  // zeros: normalize_row keeps a flat 0 map 0
          std::fill(co + row * W, co + (row + 1) * W, 0.f);
          row_lo[row] = row_hi[row] = 0.f;
          continue;
        }
        combine_on_off(&on[row * W], &off[row * W], on_max[bi], off_max[bi], W, co + row * W,
                       &row_lo[row], &row_hi[row]);
      }
    });
    std::fill(lo.begin(), lo.end(), FLT_MAX);
    std::fill(hi.begin(), hi.end(), -FLT_MAX);
    for (int64_t row = 0; row < rows; ++row) {
      lo[row / H] = std::min(lo[row / H], row_lo[row]);
      hi[row / H] = std::max(hi[row / H], row_hi[row]);
    }
    at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) normalize_row(co + row * W, W, lo[row / H], hi[row / H]);
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(medmix, CPU, m) {
  m.impl("saliency_map", &saliency_map_cpu);
  m.impl("spectral_residual_filter", &spectral_residual_filter_cpu);
  m.impl("fine_grained_saliency", &fine_grained_saliency_cpu);
}

}  // namespace medmix
