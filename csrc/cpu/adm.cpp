// Absolute-difference-map kernels on the CPU (VariMix ADM): adm_minmax, adm_apply,
// adm_histogram and adm_mix, parallel over (sample, 4096-pixel chunk). Partial results per chunk
// are reduced in a fixed order, so results do not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/adm.h"
#include "../common/adm_args.h"
#include "../common/strides.h"
#include "clones.h"
#include "half_f16c.h"

namespace medmix {
namespace {

// lo and range of sample bi from its chunk partials; range 0 when the sample is flat.
void sample_range(const float* mm, int64_t T, int64_t bi, float* lo, float* range) {
  float l = FLT_MAX, h = -FLT_MAX;
  for (int64_t t = 0; t < T; ++t) {
    l = std::min(l, mm[(bi * T + t) * 2]);
    h = std::max(h, mm[(bi * T + t) * 2 + 1]);
  }
  *lo = l;
  *range = is_flat(l, h) ? 0.f : h - l;
}

// ---- fast path: every tensor has unit column stride and W row stride (NCHW planes), so the
// pixels of a chunk are contiguous within each channel plane ----------------------------------

constexpr int kLanes = 8;  // independent accumulators: vectorisable without reassociation

// dst[k] = mask[k] ? a[k] : b[k] on the raw bits (mask 0 or 1): branch-free, so a random mask
// costs no mispredictions, vectorisable, and exact (no float arithmetic touches the values).
template <typename T>
MEDMIX_CPU_CLONES void select_rows(const uint8_t* __restrict__ mask, const T* a, const T* b, T* __restrict__ dst,
                 int64_t n) {
  using U = std::conditional_t<sizeof(T) == 1, uint8_t,
            std::conditional_t<sizeof(T) == 2, uint16_t,
            std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>>;
  static_assert(sizeof(U) == sizeof(T), "element size");
  const U* ua = reinterpret_cast<const U*>(a);
  const U* ub = reinterpret_cast<const U*>(b);
  U* ud = reinterpret_cast<U*>(dst);
  for (int64_t k = 0; k < n; ++k) {
    const U m = static_cast<U>(0) - static_cast<U>(mask[k]);  // all ones or all zeros
    ud[k] = (ua[k] & m) | (ub[k] & static_cast<U>(~m));
  }
}

// Eight lanes as a GCC vector: min / max reductions over floats do not auto-vectorise without
// -ffast-math (NaN order), but `d < l ? d : l` on vectors is exactly the scalar std::min per lane.
typedef float Lanes8 __attribute__((vector_size(32)));
typedef int32_t Ints8 __attribute__((vector_size(32)));

// uint8 images: |h - x| is an exact small integer, so its min and max are taken on the bytes,
// 32 a vector, and converted once (float(h) - float(x) is exact too: the same bits). Converting
// every byte to float first ran one scalar conversion per pixel, compute bound.
MEDMIX_CPU_CLONES void chunk_minmax_bytes(const uint8_t* px, const uint8_t* ph, int64_t n, float* lo, float* hi) {
  if (n <= 0) return;  // (an empty span must not report 255 and 0)
  typedef uint8_t Bytes32 __attribute__((vector_size(32)));
  Bytes32 l, h;
  for (int j = 0; j < 32; ++j) l[j] = 255, h[j] = 0;
  int64_t k = 0;
  for (; k + 32 <= n; k += 32) {
    Bytes32 a, b;
    std::memcpy(&a, px + k, 32);
    std::memcpy(&b, ph + k, 32);
    const Bytes32 d = a > b ? a - b : b - a;
    l = d < l ? d : l;
    h = h < d ? d : h;
  }
  uint8_t lb = 255, hb = 0;
  for (int j = 0; j < 32; ++j) lb = std::min(lb, l[j]), hb = std::max(hb, h[j]);
  for (; k < n; ++k) {
    const uint8_t d = px[k] > ph[k] ? px[k] - ph[k] : ph[k] - px[k];
    lb = std::min(lb, d), hb = std::max(hb, d);
  }
  *lo = std::min(*lo, static_cast<float>(lb));
  *hi = std::max(*hi, static_cast<float>(hb));
}

template <typename T>
MEDMIX_CPU_CLONES void chunk_minmax(const T* px, const T* ph, int64_t n, float* lo, float* hi) {
  if constexpr (std::is_same_v<T, uint8_t>) {
    chunk_minmax_bytes(px, ph, n, lo, hi);
    return;
  }
  if constexpr (std::is_same_v<T, c10::Half>) {  // float blocks through F16C (half_f16c.h): min
    // and max do not depend on the order they see the values in, so the same bits
    if (for_half_blocks(px, ph, nullptr, nullptr, n, [&](const float* fx, const float* fh, float*, float*,
                                                         int64_t, int64_t m) {
          chunk_minmax<float>(fx, fh, m, lo, hi);
        }))
      return;
  }
  Lanes8 l, h;
  for (int j = 0; j < kLanes; ++j) l[j] = FLT_MAX, h[j] = -FLT_MAX;
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    Lanes8 d;
    for (int j = 0; j < kLanes; ++j) d[j] = static_cast<float>(ph[k + j]) - static_cast<float>(px[k + j]);
    d = (Lanes8)((Ints8)d & 0x7fffffff);  // fabs: clear the sign bit
    l = d < l ? d : l;                   // std::min(l, d)
    h = h < d ? d : h;                   // std::max(h, d)
  }
  for (; k < n; ++k) {
    const float d = std::fabs(static_cast<float>(ph[k]) - static_cast<float>(px[k]));
    l[0] = std::min(l[0], d);
    h[0] = std::max(h[0], d);
  }
  for (int j = 0; j < kLanes; ++j) *lo = std::min(*lo, l[j]), *hi = std::max(*hi, h[j]);
}

// acc[k] += channel c's term of A, (|h - x| - lo) / range, over n pixels.
template <typename T>
MEDMIX_CPU_CLONES void add_channel_score(const T* x, const T* h, int64_t n, float lo, float range, float* acc) {
  for (int64_t k = 0; k < n; ++k)
    acc[k] += (std::fabs(static_cast<float>(h[k]) - static_cast<float>(x[k])) - lo) / range;
}

// acc[k] = A at the chunk's pixels (channel planes px + c * sx, ph + c * sh), as adm_score.
template <typename T>
MEDMIX_CPU_CLONES void chunk_score(const T* px, int64_t sx, const T* ph, int64_t sh, int64_t C, int64_t n,
                 float lo, float range, float* acc) {
  std::fill(acc, acc + n, 0.f);
  for (int64_t c = 0; c < C; ++c) {
    const T* x = px + c * sx;
    const T* h = ph + c * sh;
    if constexpr (std::is_same_v<T, c10::Half>) {  // float blocks through F16C (half_f16c.h)
      if (for_half_blocks(x, h, nullptr, nullptr, n, [&](const float* fx, const float* fh, float*, float*,
                                                         int64_t k0, int64_t m) {
            add_channel_score<float>(fx, fh, m, lo, range, acc + k0);
          }))
        continue;
    }
    add_channel_score<T>(x, h, n, lo, range, acc);
  }
  const float inv = static_cast<float>(C);
  for (int64_t k = 0; k < n; ++k) acc[k] /= inv;
}

// ---- uint8 images: the threshold decision without the score -------------------------------
// With uint8 images every |x_hat - x| - lo is an integer n_c in [0, 255] and A is a function of
// (n_0, ..., n_{C-1}) within a relative (C + 1) 2^-24 of S / (range C), S = sum_c n_c: all its
// terms are >= 0, and each of its C + 1 roundings (C divisions and adds, the mean) errs by at
// most 2^-24 of its result. Integer sums below s_lo (whose every A is < t) are off, sums from
// s_hi (whose every A is >= t) are on, and only the few in between (1 or 2 values of S) get the
// exact score: the decision is A >= t bit for bit, at integer cost. The float score took
// two thirds of adm_mix on uint8 images (a division per channel and pixel).
constexpr int64_t kMaxDecideChannels = 256;  // S < 2^16: the sums stay uint16

struct SumThresholds {
  int32_t s_lo, s_hi;  // S < s_lo: off; S >= s_hi: on; in between: the exact score decides
};

inline SumThresholds sum_thresholds(float range, int64_t C, float t) {
  const double per_sum = 1.0 / (static_cast<double>(range) * static_cast<double>(C));
  const double m = static_cast<double>(C + 4) * 0x1p-23;  // > (1 + 2^-24)^(C + 1) - 1, twice over
  const int32_t top = static_cast<int32_t>(C * 255 + 1);
  // (any t: above 1 or NaN leaves every S off or undecided, below 0 every S on)
  const auto surely_on = [&](int32_t S) { return static_cast<double>(S) * per_sum * (1.0 - m) >= t; };
  const auto surely_off = [&](int32_t S) { return static_cast<double>(S) * per_sum * (1.0 + m) < t; };
  SumThresholds th{0, top};
  const double guess = static_cast<double>(t) / per_sum;
  int32_t s = static_cast<int32_t>(std::min<double>(top, std::max(0.0, std::floor(guess * (1.0 - 2 * m)))));
  while (s > 0 && !surely_off(s - 1)) --s;  // the first S that is not surely off
  while (s < top && surely_off(s)) ++s;
  th.s_lo = s;
  while (s < top && !surely_on(s)) ++s;  // the first S that is surely on
  th.s_hi = s;
  return th;
}

// sum[k] = sum_c |h - x| over the n pixels of a uint8 chunk (planes px + c * sx, ph + c * sh);
// returns the smallest |h - x| seen.
MEDMIX_CPU_CLONES uint8_t byte_diff_sums(const uint8_t* px, int64_t sx, const uint8_t* ph, int64_t sh,
                                         int64_t C, int64_t n, uint16_t* __restrict__ sum) {
  std::fill(sum, sum + n, uint16_t(0));
  uint8_t least = 255;
  for (int64_t c = 0; c < C; ++c) {
    const uint8_t* __restrict__ x = px + c * sx;
    const uint8_t* __restrict__ h = ph + c * sh;
    for (int64_t k = 0; k < n; ++k) {
      const uint8_t d = static_cast<uint8_t>(x[k] > h[k] ? x[k] - h[k] : h[k] - x[k]);
      sum[k] = static_cast<uint16_t>(sum[k] + d);
      least = d < least ? d : least;
    }
  }
  return least;
}

// on[k] = S >= s_hi with S = sum[k] - offset; counts them, and the S in [s_lo, s_hi).
MEDMIX_CPU_CLONES int32_t decide_sums(const uint16_t* __restrict__ sum, int64_t n, int32_t offset,
                                      SumThresholds th, uint8_t* __restrict__ on, int32_t* undecided) {
  int32_t count = 0, open = 0;
  for (int64_t k = 0; k < n; ++k) {
    const int32_t S = static_cast<int32_t>(sum[k]) - offset;
    on[k] = S >= th.s_hi;
    count += on[k];
    open += (S >= th.s_lo) & (S < th.s_hi);
  }
  *undecided = open;
  return count;
}

// The decisions A >= t of the n pixels of a uint8 chunk into on[], as above; returns how many
// are on. `sum`: n uint16 of scratch. A range that is not the integer one of byte differences,
// or a lo above a difference in the chunk (only a raw adm_apply given some other minmax), takes
// the exact score everywhere: the bound needs every n_c to be an integer >= 0.
int32_t decide_bytes(const uint8_t* px, int64_t sx, const uint8_t* ph, int64_t sh, int64_t C, int64_t n,
                     float lo, float range, float t, uint16_t* sum, uint8_t* on) {
  const uint8_t least = byte_diff_sums(px, sx, ph, sh, C, n, sum);
  const bool integral = lo >= 0.f && lo <= 255.f && lo == std::floor(lo) && range == std::floor(range);
  SumThresholds th{0, 0};
  int32_t offset = 0, undecided = 0, count = 0;
  if (integral && static_cast<float>(least) >= lo) {
    th = sum_thresholds(range, C, t);
    offset = static_cast<int32_t>(lo) * static_cast<int32_t>(C);
    count = decide_sums(sum, n, offset, th, on, &undecided);
    if (undecided == 0) return count;
  } else {
    th = SumThresholds{INT32_MIN, INT32_MAX};  // every pixel undecided
  }
  for (int64_t k = 0; k < n; ++k) {
    const int32_t S = static_cast<int32_t>(sum[k]) - offset;
    if (S >= th.s_lo && S < th.s_hi) {
      on[k] = adm_score(px + k, sx, ph + k, sh, C, lo, range) >= t;
      count += on[k];
    }
  }
  return count;
}

// decide_bytes for uint8 chunks (a template: the call compiles for every dispatched dtype).
template <typename T>
int32_t decide_chunk(const T* px, int64_t sx, const T* ph, int64_t sh, int64_t C, int64_t n, float lo,
                     float range, float t, uint16_t* sum, uint8_t* on) {
  if constexpr (std::is_same_v<T, uint8_t>) {
    return decide_bytes(px, sx, ph, sh, C, n, lo, range, t, sum, on);
  } else {
    TORCH_CHECK(false, "medmix::adm: decide_chunk is for uint8 images");
    return 0;
  }
}

// on[k] = acc[k] >= t; returns how many are on.
MEDMIX_CPU_CLONES int32_t threshold_chunk(const float* __restrict__ acc, float t,
                                          uint8_t* __restrict__ on, int64_t n) {
  int32_t count = 0;
  for (int64_t k = 0; k < n; ++k) {
    on[k] = acc[k] >= t;
    count += on[k];
  }
  return count;
}

// lo / hi of |x_hat - x| over the pixels [k0, k1) of sample bi, every channel. Min and max do
// not depend on the order they see the values in (NaN never wins either), so any split of a
// sample into chunks gives the same per-sample range bits.
template <typename T>
void chunk_range(const T* px, const Strides4& sx, const T* ph, const Strides4& sh, bool fast,
                 int64_t C, int64_t W, int64_t bi, int64_t k0, int64_t k1, float* lo, float* hi) {
  if (fast) {
    for (int64_t c = 0; c < C; ++c)
      chunk_minmax(px + bi * sx.n + c * sx.c + k0, ph + bi * sh.n + c * sh.c + k0, k1 - k0, lo, hi);
    return;
  }
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t y = k / W, xx = k % W;
    for (int64_t c = 0; c < C; ++c) {
      const float d = std::fabs(static_cast<float>(ph[sh.at(bi, y, xx) + c * sh.c]) -
                                static_cast<float>(px[sx.at(bi, y, xx) + c * sx.c]));
      *lo = std::min(*lo, d);
      *hi = std::max(*hi, d);
    }
  }
}

at::Tensor adm_minmax_cpu(const at::Tensor& x, const at::Tensor& x_hat) {
  check_adm_images(x, x_hat, "medmix::adm_minmax");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t T = adm_chunks(H, W);
  auto out = at::empty({B, T, 2}, x.options().dtype(at::kFloat));
  float* po = out.data_ptr<float>();
  const Strides4 sx = strides_of(x), sh = strides_of(x_hat);
  const bool fast = is_planar(x) && is_planar(x_hat);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, x.scalar_type(), "adm_minmax", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* ph = x_hat.data_ptr<scalar_t>();
    at::parallel_for(0, B * T, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / T, k0 = (task % T) * kAdmChunk;
        float lo = FLT_MAX, hi = -FLT_MAX;
        chunk_range(px, sx, ph, sh, fast, C, W, bi, k0, std::min(k0 + kAdmChunk, H * W), &lo, &hi);
        po[task * 2] = lo;
        po[task * 2 + 1] = hi;
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> adm_apply_cpu(const at::Tensor& x, const at::Tensor& x_hat,
                                                 const at::Tensor& minmax_in,
                                                 const at::Tensor& thr_in, bool emit_score) {
  check_adm_images(x, x_hat, "medmix::adm_apply");
  check_adm_minmax(x, minmax_in, "medmix::adm_apply");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  check_per_sample(thr_in, B, "thr", "medmix::adm_apply");
  const int64_t T = adm_chunks(H, W);
  const auto minmax = minmax_in.contiguous(), thr = thr_in.contiguous();
  auto out = at::empty({B, 1, H, W}, x.options().dtype(at::kFloat));
  auto count = at::empty({B, T}, x.options().dtype(at::kInt));
  const float* pm = minmax.data_ptr<float>();
  const float* pt = thr.data_ptr<float>();
  float* po = out.data_ptr<float>();
  int32_t* pc = count.data_ptr<int32_t>();
  const Strides4 sx = strides_of(x), sh = strides_of(x_hat);
  const bool fast = is_planar(x) && is_planar(x_hat);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, x.scalar_type(), "adm_apply", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* ph = x_hat.data_ptr<scalar_t>();
    // uint8 masks: decide_bytes (no score) where only the mask is asked for
    const bool by_sums = std::is_same_v<scalar_t, uint8_t> && !emit_score && C <= kMaxDecideChannels;
    at::parallel_for(0, B * T, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint16_t> sums(by_sums ? kAdmChunk : 0);
      std::vector<uint8_t> on(by_sums ? kAdmChunk : 0);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t bi = task / T, k0 = (task % T) * kAdmChunk, k1 = std::min(k0 + kAdmChunk, H * W);
        float lo, range;
        sample_range(pm, T, bi, &lo, &range);
        int32_t n = 0;
        float* o = po + bi * H * W;
        if (fast && range > 0.f && by_sums) {
          n = decide_chunk(px + bi * sx.n + k0, sx.c, ph + bi * sh.n + k0, sh.c, C, k1 - k0, lo, range, pt[bi],
                           sums.data(), on.data());
          for (int64_t k = k0; k < k1; ++k) o[k] = on[k - k0] ? 1.f : 0.f;
        } else if (fast && range > 0.f) {
          chunk_score(px + bi * sx.n + k0, sx.c, ph + bi * sh.n + k0, sh.c, C, k1 - k0, lo, range, o + k0);
          const float t = pt[bi];
          for (int64_t k = k0; k < k1; ++k) {
            const bool on = o[k] >= t;
            n += on;
            if (!emit_score) o[k] = on ? 1.f : 0.f;
          }
        } else {
          for (int64_t k = k0; k < k1; ++k) {
            const int64_t y = k / W, xx = k % W;
            const float a = range > 0.f ? adm_score(px + sx.at(bi, y, xx), sx.c, ph + sh.at(bi, y, xx), sh.c, C, lo, range) : 0.f;
            const bool on = range > 0.f && a >= pt[bi];
            o[k] = emit_score ? a : (on ? 1.f : 0.f);
            n += on;
          }
        }
        pc[task] = n;
      }
    });
  });
  return {out, count};
}

// hist[adm_bin(acc[k])] += 1 for the n <= kAdmChunk scores of a chunk: the bins in one vector
// loop, then counted into four sub-histograms in turn. Counted into one, the increments of a
// popular bin waited on each other (a store-to-load chain per pixel). The same counts.
MEDMIX_CPU_CLONES void add_to_histogram(const float* __restrict__ acc, int64_t n, int32_t* __restrict__ hist) {
  alignas(32) int32_t bins[kAdmChunk];
  for (int64_t k = 0; k < n; ++k) bins[k] = static_cast<int32_t>(adm_bin(acc[k]));
  int32_t sub[4][kAdmBins] = {};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    ++sub[0][bins[k]];
    ++sub[1][bins[k + 1]];
    ++sub[2][bins[k + 2]];
    ++sub[3][bins[k + 3]];
  }
  for (; k < n; ++k) ++sub[0][bins[k]];
  for (int64_t j = 0; j < kAdmBins; ++j) hist[j] += (sub[0][j] + sub[1][j]) + (sub[2][j] + sub[3][j]);
}

at::Tensor adm_histogram_cpu(const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& minmax_in) {
  check_adm_images(x, x_hat, "medmix::adm_histogram");
  check_adm_minmax(x, minmax_in, "medmix::adm_histogram");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t T = adm_chunks(H, W);
  const auto minmax = minmax_in.contiguous();
  auto hist = at::zeros({B, kAdmBins}, x.options().dtype(at::kInt));
  const float* pm = minmax.data_ptr<float>();
  int32_t* ph_out = hist.data_ptr<int32_t>();
  const Strides4 sx = strides_of(x), sh = strides_of(x_hat);
  const bool fast = is_planar(x) && is_planar(x_hat);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, x.scalar_type(), "adm_histogram", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* ph = x_hat.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(kAdmChunk);
      for (int64_t bi = begin; bi < end; ++bi) {
        float lo, range;
        sample_range(pm, T, bi, &lo, &range);
        int32_t* hb = ph_out + bi * kAdmBins;
        if (fast && range > 0.f) {  // scores of a chunk at a time, then their bins
          for (int64_t k0 = 0; k0 < H * W; k0 += kAdmChunk) {
            const int64_t len = std::min(kAdmChunk, H * W - k0);
            chunk_score(px + bi * sx.n + k0, sx.c, ph + bi * sh.n + k0, sh.c, C, len, lo, range, acc.data());
            add_to_histogram(acc.data(), len, hb);
          }
          continue;
        }
        for (int64_t k = 0; k < H * W; ++k) {
          const int64_t y = k / W, xx = k % W;
          const float a = range > 0.f ? adm_score(px + sx.at(bi, y, xx), sx.c, ph + sh.at(bi, y, xx), sh.c, C, lo, range) : 0.f;
          ++hb[adm_bin(a)];
        }
      }
    });
  });
  return hist;
}

// Samples per thread from which on adm_mix runs one task per sample (its range, then its mix,
// while the sample's x and x_hat are still in this core's cache); below it, too few samples
// to share out evenly, the ranges and the mix are two passes over (sample, chunk) tasks.
constexpr int64_t kAdmSamplesPerThread = 4;

std::tuple<at::Tensor, at::Tensor> adm_mix_out_cpu(
    const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& perm_in,
    const at::Tensor& lam_in, bool write_mask, at::Tensor& mixed) {
  check_adm_images(x, x_hat, "medmix::adm_mix");
  check_adm_mixed(x, x_hat, mixed, "medmix::adm_mix_out");
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  check_per_sample(lam_in, B, "lam", "medmix::adm_mix");
  TORCH_CHECK(perm_in.dim() == 1 && perm_in.size(0) == B && perm_in.scalar_type() == at::kLong,
              "medmix::adm_mix: perm must be int64 [", B, "], got ", perm_in.scalar_type(), " ", perm_in.sizes());
  const auto perm = perm_in.contiguous(), lam = lam_in.contiguous();
  const int64_t* pp = perm.data_ptr<int64_t>();
  for (int64_t i = 0; i < B; ++i)
    TORCH_CHECK(pp[i] >= 0 && pp[i] < B, "medmix::adm_mix: perm[", i, "] = ", pp[i], " is outside [0, ", B, ")");
  const int64_t T = adm_chunks(H, W);
  const bool per_sample = B >= kAdmSamplesPerThread * at::get_num_threads();
  // the two-pass split needs every chunk's range first
  const auto minmax = per_sample ? at::Tensor() : adm_minmax_cpu(x, x_hat);
  auto x_src = mixed.narrow(0, 0, B), x_ref = mixed.narrow(0, B, B);
  auto count = at::empty({B, T}, x.options().dtype(at::kInt));
  auto mask = at::empty(write_mask ? at::IntArrayRef{B, 1, H, W} : at::IntArrayRef{0},
                        x.options().dtype(at::kFloat));
  float* pk = write_mask ? mask.data_ptr<float>() : nullptr;
  const float* pl = lam.data_ptr<float>();
  int32_t* pc = count.data_ptr<int32_t>();
  const Strides4 sx = strides_of(x), sh = strides_of(x_hat), ss = strides_of(x_src), sr = strides_of(x_ref);
  const bool fast_in = is_planar(x) && is_planar(x_hat);
  const bool fast = fast_in && is_planar(x_src) && is_planar(x_ref);
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kByte, x.scalar_type(), "adm_mix", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* ph = x_hat.data_ptr<scalar_t>();
    scalar_t* ps = x_src.data_ptr<scalar_t>();
    scalar_t* pr = x_ref.data_ptr<scalar_t>();
    // K over chunk t of sample bi, both outputs written through it; K's pixel count in pc.
    auto mix_chunk = [&](int64_t bi, int64_t t, float lo, float range, float* acc, uint8_t* on_mask,
                         uint16_t* sums) {
      const int64_t k0 = t * kAdmChunk;
      int64_t k1 = std::min(k0 + kAdmChunk, H * W);
      const int64_t pj = pp[bi];
      int32_t n = 0;
      if (fast) {
        const int64_t len = k1 - k0;
        if (std::is_same_v<scalar_t, uint8_t> && range > 0.f && C <= kMaxDecideChannels) {
          n = decide_chunk(px + bi * sx.n + k0, sx.c, ph + bi * sh.n + k0, sh.c, C, len, lo, range, pl[bi],
                           sums, on_mask);
        } else {
          if (range > 0.f) {
            chunk_score(px + bi * sx.n + k0, sx.c, ph + bi * sh.n + k0, sh.c, C, len, lo, range, acc);
          } else {
            std::fill(acc, acc + len, -1.f);  // flat sample: empty mask
          }
          n = threshold_chunk(acc, pl[bi], on_mask, len);
        }
        if (pk)
          for (int64_t k = 0; k < len; ++k) pk[bi * H * W + k0 + k] = on_mask[k] ? 1.f : 0.f;
        // Bit selects: `cond ? own : other` compiles to a branch that mispredicts on the
        // random mask (~5x slower here).
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* own = px + bi * sx.n + c * sx.c + k0;
          const scalar_t* other = px + pj * sx.n + c * sx.c + k0;
          select_rows(on_mask, own, other, ps + bi * ss.n + c * ss.c + k0, len);
          select_rows(on_mask, other, own, pr + bi * sr.n + c * sr.c + k0, len);
        }
        k1 = k0;  // done
      }
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t y = k / W, xx = k % W;
        const bool on = range > 0.f &&
                        adm_score(px + sx.at(bi, y, xx), sx.c, ph + sh.at(bi, y, xx), sh.c, C, lo, range) >= pl[bi];
        n += on;
        if (pk) pk[bi * H * W + k] = on ? 1.f : 0.f;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t own = px[sx.at(bi, y, xx) + c * sx.c];
          const scalar_t other = px[sx.at(pj, y, xx) + c * sx.c];
          ps[ss.at(bi, y, xx) + c * ss.c] = on ? own : other;  // K x + (1 - K) x[perm]
          pr[sr.at(bi, y, xx) + c * sr.c] = on ? other : own;  // K x[perm] + (1 - K) x
        }
      }
      pc[bi * T + t] = n;
    };
    if (per_sample) {
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> acc(kAdmChunk);
        std::vector<uint8_t> on_mask(kAdmChunk);
        std::vector<uint16_t> sums(kAdmChunk);
        for (int64_t bi = begin; bi < end; ++bi) {
          float lo = FLT_MAX, hi = -FLT_MAX;
          chunk_range(px, sx, ph, sh, fast_in, C, W, bi, 0, H * W, &lo, &hi);
          const float range = is_flat(lo, hi) ? 0.f : hi - lo;
          for (int64_t t = 0; t < T; ++t) mix_chunk(bi, t, lo, range, acc.data(), on_mask.data(), sums.data());
        }
      });
      return;
    }
    const float* pm = minmax.data_ptr<float>();
    at::parallel_for(0, B * T, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> acc(kAdmChunk);
      std::vector<uint8_t> on_mask(kAdmChunk);
      std::vector<uint16_t> sums(kAdmChunk);
      for (int64_t task = begin; task < end; ++task) {
        float lo, range;
        sample_range(pm, T, task / T, &lo, &range);
        mix_chunk(task / T, task % T, lo, range, acc.data(), on_mask.data(), sums.data());
      }
    });
  });
  return {count, mask};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adm_mix_cpu(
    const at::Tensor& x, const at::Tensor& x_hat, const at::Tensor& perm, const at::Tensor& lam,
    bool write_mask) {
  return adm_mix_into_new(x, x_hat, perm, lam, write_mask, adm_mix_out_cpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(medmix, CPU, m) {
  m.impl("adm_minmax", &adm_minmax_cpu);
  m.impl("adm_apply", &adm_apply_cpu);
  m.impl("adm_histogram", &adm_histogram_cpu);
  m.impl("adm_mix", &adm_mix_cpu);
  m.impl("adm_mix_out", &adm_mix_out_cpu);
}

}  // namespace medmix
