// Per-pixel math of the saliency kernels (DESIGN.md op 1), shared by the CPU and CUDA kernels.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace medmix {

// How saliency_map reads its source at one pixel (see csrc/ops.cpp).
enum SaliencySource : int64_t {
  kSrcWeighted = 0,      // sum_c w[b, c] * x[b, c]           (grey; a single map with w = 1)
  kSrcReluWeighted = 1,  // relu(sum_c w[b, c] * x[b, c])     (Grad-CAM)
  kSrcAbsMax = 2,        // max_c |x[b, c]|                   (input-gradient saliency)
  kSrcAbsSum = 3,        // sum_c |x[b, c]|
  kSrcComplexAbs = 4,    // |re + i im|, x = [B, h, w, 2]     (inverse FFT output)
  kSrcCount = 5,
};

// The source value at one pixel. p points at channel 0 of the pixel (for kSrcComplexAbs at the
// real part); sc is the channel (or re/im) stride; w the sample's C weights (may be null).
template <typename T>
MEDMIX_HOST_DEVICE inline float saliency_source(int64_t mode, const T* p, int64_t sc, int64_t C,
                                                const float* w) {
  if (mode == kSrcComplexAbs) {
    const float re = static_cast<float>(p[0]), im = static_cast<float>(p[sc]);
    return std::sqrt(re * re + im * im);
  }
  float acc = 0.f;
  for (int64_t c = 0; c < C; ++c) {
    const float v = static_cast<float>(p[c * sc]);
    if (mode == kSrcAbsMax) {
      acc = c == 0 ? std::fabs(v) : std::fmax(acc, std::fabs(v));
    } else if (mode == kSrcAbsSum) {
      acc += std::fabs(v);
    } else {
      acc += w[c] * v;
    }
  }
  return mode == kSrcReluWeighted ? std::fmax(acc, 0.f) : acc;
}

// Bilinear source coordinate of output index o (align_corners=False, no antialias), computed in
// float exactly as PyTorch's upsample_bilinear2d: i0, i1 the two source indices, l1 the weight
// of i1.
MEDMIX_HOST_DEVICE inline void bilinear_coord(int64_t o, int64_t in_size, int64_t out_size,
                                              int64_t* i0, int64_t* i1, float* l1) {
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  float src = scale * (static_cast<float>(o) + 0.5f) - 0.5f;
  if (src < 0.f) src = 0.f;
  int64_t a = static_cast<int64_t>(src);
  if (a > in_size - 1) a = in_size - 1;
  *i0 = a;
  *i1 = a + (a < in_size - 1 ? 1 : 0);
  *l1 = src - static_cast<float>(a);
}

// Bilinear sample of the source itself (no intermediate map) at output pixel (oy, ox): the
// direct path, used when the output has at most a quarter of the source's pixels and no filter.
// p0 points at sample b, channel 0; si / sj are the row / column strides; q rounds each tap.
template <typename T>
MEDMIX_HOST_DEVICE inline float bilinear_source(int64_t mode, const T* p0, int64_t si, int64_t sj,
                                                int64_t sc, int64_t C, const float* w, bool q,
                                                int64_t h, int64_t wd, int64_t oy, int64_t ox,
                                                int64_t out_h, int64_t out_w) {
  int64_t y0, y1, x0, x1;
  float ly, lx;
  bilinear_coord(oy, h, out_h, &y0, &y1, &ly);
  bilinear_coord(ox, wd, out_w, &x0, &x1, &lx);
  auto at = [&](int64_t y, int64_t x) {
    const float v = saliency_source<T>(mode, p0 + y * si + x * sj, sc, C, w);
    return q ? std::nearbyint(v) : v;
  };
  const float top = (1.f - lx) * at(y0, x0) + lx * at(y0, x1);
  const float bot = (1.f - lx) * at(y1, x0) + lx * at(y1, x1);
  return (1.f - ly) * top + ly * bot;
}

// Whether saliency_map samples the source directly rather than through a full-size map.
MEDMIX_HOST_DEVICE inline bool saliency_direct(int64_t taps, int64_t h, int64_t w, int64_t out_h,
                                               int64_t out_w) {
  return taps == 1 && 4 * out_h * out_w <= h * w;
}

// Bilinear sample of a row-major h x w map at output pixel (oy, ox) of an out_h x out_w grid.
MEDMIX_HOST_DEVICE inline float bilinear_sample(const float* m, int64_t h, int64_t w, int64_t oy,
                                                int64_t ox, int64_t out_h, int64_t out_w) {
  if (h == out_h && w == out_w) return m[oy * w + ox];
  int64_t y0, y1, x0, x1;
  float ly, lx;
  bilinear_coord(oy, h, out_h, &y0, &y1, &ly);
  bilinear_coord(ox, w, out_w, &x0, &x1, &lx);
  const float top = (1.f - lx) * m[y0 * w + x0] + lx * m[y0 * w + x1];
  const float bot = (1.f - lx) * m[y1 * w + x0] + lx * m[y1 * w + x1];
  return (1.f - ly) * top + ly * bot;
}

// Round half to even when quantize (OpenCV's 8-bit intermediates), else v unchanged.
MEDMIX_HOST_DEVICE inline float quantize_value(float v, bool quantize) {
  return quantize ? std::nearbyint(v) : v;
}

// A map whose range is at most 1e-5 of its magnitude is flat: float32 rounding, not content,
// would decide its normalised values, so it normalises to 0 (a constant image gives zeros).
MEDMIX_HOST_DEVICE inline bool is_flat(float lo, float hi) {
  const float mag = std::fmax(std::fabs(lo), std::fabs(hi));
  return !(hi - lo > 1e-5f * mag);
}

// Min-max normalisation over [lo, hi]; a flat map gives 0.
MEDMIX_HOST_DEVICE inline float normalize_value(float v, float lo, float hi) {
  return is_flat(lo, hi) ? 0.f : (v - lo) / (hi - lo);
}

// Spectral residual at one frequency (i, j) of a [h, w, 2] spectrum: log amplitude minus its
// 3x3 box mean (reflect border), back to a complex value with the original phase.
MEDMIX_HOST_DEVICE inline float amplitude(const float* spec, int64_t k) {
  const float re = spec[2 * k], im = spec[2 * k + 1];
  return std::sqrt(re * re + im * im);
}

// Amplitudes below this fraction of the sample's largest are floored there before the log.
// They are the FFT's rounding noise (about 1e-8 of the largest in float32) or exact zeros (an
// image constant along its rows or columns, e.g. one pixel wide, zeroes all but one column of
// its spectrum). Unfloored, noise decides the map, and under an absolute 1e-30 floor the box
// mean next to a zero column puts exp() at about e^46 (the squared map overflows to inf).
// Natural images' spectra stay above it (SynthLesion at 224^2: about 1 coefficient in 10^6
// is below 1e-6 of the largest), and a coefficient that small adds nothing to the map anyway.
constexpr float kAmplitudeFloor = 1e-6f;  // the reference's AMPLITUDE_FLOOR

// The floor for a sample whose largest amplitude is max_amp (never 0: log(0) is -inf).
MEDMIX_HOST_DEVICE inline float amplitude_floor(float max_amp) {
  return std::fmax(max_amp * kAmplitudeFloor, 1e-30f);
}

MEDMIX_HOST_DEVICE inline float log_amplitude(const float* spec, int64_t k, float amp_floor) {
  const float a = amplitude(spec, k);
  return std::log(a > amp_floor ? a : amp_floor);
}

MEDMIX_HOST_DEVICE inline int64_t reflect1(int64_t i, int64_t n) {
  // One reflection (the 3x3 box never reaches further); n == 1 maps everything to 0.
  if (n == 1) return 0;
  return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i);
}

// The residual spectrum value from a frequency's (re, im), its log amplitude la and the sum
// `box` of the 9 log amplitudes around it: exp(la - box / 9) with the original phase. A
// frequency at or under the floor has no phase of its own (rounding noise would choose it): it
// takes phase 0, as an exact zero does, so that every backend gives the same map.
MEDMIX_HOST_DEVICE inline void spectral_residual_value(float re, float im, float la, float box,
                                                       float amp_floor, float* out_re,
                                                       float* out_im) {
  const float amp = std::sqrt(re * re + im * im);
  const float mag = std::exp(la - box / 9.f);
  const bool phased = amp > amp_floor;
  *out_re = phased ? mag * (re / amp) : mag;
  *out_im = phased ? mag * (im / amp) : 0.f;
}

// amp_floor: amplitude_floor of the sample's largest amplitude.
MEDMIX_HOST_DEVICE inline void spectral_residual_at(const float* spec, int64_t h, int64_t w,
                                                    int64_t i, int64_t j, float amp_floor,
                                                    float* out_re, float* out_im) {
  float box = 0.f;
  for (int64_t di = -1; di <= 1; ++di)
    for (int64_t dj = -1; dj <= 1; ++dj)
      box += log_amplitude(spec, reflect1(i + di, h) * w + reflect1(j + dj, w), amp_floor);
  const int64_t k = i * w + j;
  spectral_residual_value(spec[2 * k], spec[2 * k + 1], log_amplitude(spec, k, amp_floor), box,
                          amp_floor, out_re, out_im);
}

// One scale's term: the surround's mean (box: the box sum with the centre, surround: the
// box's pixel count less the centre) against the centre c, added to on or off.
MEDMIX_HOST_DEVICE inline void fine_grained_add_term(double box, double surround, double c,
                                                     double* on, double* off) {
  const double mean = surround > 0 ? (box - c) / surround : c;
  *on += c > mean ? c - mean : 0.0;
  *off += mean > c ? mean - c : 0.0;
}

// Fine-grained centre-surround contrast at (y, x) summed over scales: S is the float64
// integral image [H + 1, W + 1]; c the smoothed grey value at (y, x).
MEDMIX_HOST_DEVICE inline void fine_grained_on_off(const double* S, int64_t H, int64_t W,
                                                   int64_t y, int64_t x, double c,
                                                   const int64_t* scales, int64_t n_scales,
                                                   double* on, double* off) {
  const int64_t W1 = W + 1;
  double on_sum = 0, off_sum = 0;
  for (int64_t k = 0; k < n_scales; ++k) {
    const int64_t n = scales[k];
    const int64_t y1 = y - n + 1 < 0 ? 0 : (y - n + 1 > H ? H : y - n + 1);
    const int64_t y2 = y + n + 1 > H ? H : y + n + 1;
    const int64_t x1 = x - n + 1 < 0 ? 0 : (x - n + 1 > W ? W : x - n + 1);
    const int64_t x2 = x + n + 1 > W ? W : x + n + 1;
    const double box = S[y2 * W1 + x2] + S[y1 * W1 + x1] - S[y2 * W1 + x1] - S[y1 * W1 + x2];
    fine_grained_add_term(box, static_cast<double>((x2 - x1) * (y2 - y1) - 1), c, &on_sum, &off_sum);
  }
  *on = on_sum;
  *off = off_sum;
}

}  // namespace medmix
