// gaussian_blend on the CPU: one pass over the image, one blurred mask row at a time.
// Each (sample, row) task blurs the mask vertically into a row buffer, then horizontally from a
// reflect-padded copy of it, and hands the alpha row to a consumer (blend or its gradient).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../common/gaussian_blend.h"
#include "../common/gaussian_blend_args.h"
#include "../common/gaussian_taps.h"
#include "../common/strides.h"
#include "clones.h"
#include "env_flags.h"
#include "half_f16c.h"
#include "pixel_io.h"

namespace medmix {
namespace {

// Every sample's radius fits max_radius (the row buffers and the hard path rely on it).
void check_radii(const at::Tensor& sigma, int64_t max_radius) {
  const float* s = sigma.data_ptr<float>();
  for (int64_t i = 0; i < sigma.numel(); ++i) {
    TORCH_CHECK(gaussian_radius(s[i]) <= max_radius, "medmix::gaussian_blend: max_radius ",
                max_radius, " is smaller than ceil(3 * sigma[", i, "]) for sigma ", s[i]);
  }
}

// The order in which samples are visited when sample i blends with partner b_rows[i]: along
// the partner chains, i, b_rows[i], b_rows[b_rows[i]], ... (a permutation's cycles; Mixup's
// flip gives 0, B-1, 1, B-2, ...). In that order the partner that one sample reads is the
// anchor the next one reads, while it is still in cache, and a thread's contiguous share of
// the samples reads about its own share of the batch, not the whole batch: at 32 x 3 x 64 x 64
// the batch no longer fits a core's L2 when each thread reads all of it. No b_rows: in order.
std::vector<int64_t> partner_chain_order(int64_t B, const int64_t* b_rows) {
  std::vector<int64_t> order(B);
  if (!b_rows) {
    for (int64_t i = 0; i < B; ++i) order[i] = i;
    return order;
  }
  std::vector<char> seen(B, 0);
  int64_t k = 0;
  for (int64_t start = 0; start < B; ++start) {
    // b_rows need not be a permutation (partners drawn with replacement): a chain then stops
    // at the first sample already visited
    for (int64_t i = start; !seen[i]; i = b_rows[i]) {
      seen[i] = 1;
      order[k++] = i;
    }
  }
  return order;
}

// ---- flat rows: a blurred row whose whole window is one value ----
// Most of a box or blob mask is 0 or 1 far from its edges. Where every mask row that a blurred
// row reads (rows h - r .. h + r, reflected) holds one value v in every pixel, both passes of
// the blur see only v, so every pixel of that row gets the same value: the tap chain
// ((0 + taps[0] v) + taps[1] v) + ... of the vertical pass, then of the horizontal pass over
// its result. Those are the very operations, in the very order, that weighted_rows runs on
// every lane (no FMA), so the row is filled with that value at the same bits, without the
// 2 (2r + 1) multiply-adds a pixel. A NaN never counts as flat (NaN != NaN).
// MEDMIX_DISABLE_FLAT_ROWS=1 in the environment (read once) blurs every row: the tests compare
// the two paths' bits that way.
bool flat_rows_enabled() {
  static const bool on = !env_flag_on("MEDMIX_DISABLE_FLAT_ROWS");
  return on;
}

// Whether every one of the n values equals v: vector compares in blocks of 64 bytes x 4, so a
// row that is not flat usually stops within its first block.
template <typename T>
MEDMIX_CPU_CLONES bool all_equal(const T* __restrict__ a, int64_t n, T v) {
  typedef T Vec __attribute__((vector_size(32)));
  using Mask = decltype(Vec{} == Vec{});
  constexpr int64_t kLanes = 32 / sizeof(T), kVecs = 4, kBlock = kLanes * kVecs;
  const Vec vv = Vec{} + v;
  int64_t k = 0;
  for (; k + kBlock <= n; k += kBlock) {
    Mask same = ~Mask{};  // all lanes set
#pragma GCC unroll 4
    for (int64_t j = 0; j < kVecs; ++j) {
      Vec x;
      std::memcpy(&x, a + k + j * kLanes, sizeof(Vec));
      same &= x == vv;
    }
    for (int64_t l = 0; l < kLanes; ++l)
      if (!same[l]) return false;
  }
  for (; k < n; ++k)
    if (!(a[k] == v)) return false;
  return true;
}

// The tap chain of one pass over a constant input v: weighted_rows' per-lane arithmetic.
template <typename acc_t>
acc_t tap_chain(const acc_t* taps, int64_t ntaps, acc_t v) {
  acc_t acc = acc_t(0);
  for (int64_t t = 0; t < ntaps; ++t) acc += taps[t] * v;
  return acc;
}

// at_most_one over a row (vectorised: a min against 1 that keeps NaN).
template <typename acc_t>
MEDMIX_CPU_CLONES void cap_at_one(acc_t* __restrict__ a, int64_t n) {
  for (int64_t k = 0; k < n; ++k) a[k] = at_most_one(a[k]);
}

// For each mask row (b, h): flat_end[b * H + h] = the last row of the run of flat rows with
// one value that starts at h (h - 1 when row h is not flat), flat_value the row's value. A
// blurred row h of radius r is flat when flat_end[lo] >= hi for lo = max(0, h - r),
// hi = min(H - 1, h + r): every row its window reads, reflected ones included, lies in
// [lo, hi]. Only samples with a radius are scanned.
template <typename acc_t>
void find_flat_rows(const acc_t* m, const float* sigma, int64_t B, int64_t H, int64_t W,
                    std::vector<int32_t>& flat_end, std::vector<acc_t>& flat_value) {
  flat_end.assign(B * H, -1);
  flat_value.assign(B * H, acc_t(0));
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, W));
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      if (gaussian_radius(sigma[row / H]) == 0) continue;
      const acc_t* mr = m + row * W;
      if (all_equal(mr, W, mr[0])) {
        flat_value[row] = mr[0];
        flat_end[row] = 0;  // flat; its run's end is set below
      }
    }
  });
  for (int64_t bi = 0; bi < B; ++bi) {
    int32_t* fe = flat_end.data() + bi * H;
    const acc_t* fv = flat_value.data() + bi * H;
    for (int64_t h = H - 1; h >= 0; --h) {
      if (fe[h] < 0) {
        fe[h] = static_cast<int32_t>(h - 1);
      } else {
        const bool joins_next = h + 1 < H && fe[h + 1] >= h + 1 && fv[h + 1] == fv[h];
        fe[h] = joins_next ? fe[h + 1] : static_cast<int32_t>(h);
      }
    }
  }
}

// Calls consume(b, h, alpha_row) for every row of every sample, in parallel over rows.
// mask: contiguous [B, 1, H, W] of acc_t; sigma: contiguous float32 [B].
// Samples are visited in `order` (partner_chain_order).
template <typename acc_t, typename Consume>
void for_each_alpha_row(const at::Tensor& mask, const at::Tensor& sigma, int64_t max_radius,
                        int64_t C, const std::vector<int64_t>& order, const Consume& consume) {
  const int64_t B = mask.size(0), H = mask.size(2), W = mask.size(3);
  const acc_t* m = mask.data_ptr<acc_t>();
  const float* s = sigma.data_ptr<float>();  // radii checked by the caller (check_radii)
  std::vector<int32_t> flat_end;
  std::vector<acc_t> flat_value;
  const bool flat = max_radius > 0 && H <= INT32_MAX && flat_rows_enabled();
  if (flat) find_flat_rows(m, s, B, H, W, flat_end, flat_value);
  // ~64K element touches per task keeps scheduling overhead small on small images.
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, W * (C + 2)));
  at::parallel_for(0, B * H, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> taps(2 * max_radius + 1), padded(W + 2 * max_radius), alpha(W);
    std::vector<const acc_t*> rows(2 * max_radius + 1);
    int64_t taps_of = -1;
    int r = 0;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t bi = order[row / H], h = row % H;
      if (bi != taps_of) {
        r = gaussian_radius(s[bi]);
        gaussian_taps<acc_t>(s[bi], r, taps.data());
        taps_of = bi;
      }
      const acc_t* mb = m + bi * H * W;
      if (r == 0) {  // sigma = 0: the mask row is alpha (hard masks, Mixup's constant masks)
        consume(bi, h, mb + h * W);
        continue;
      }
      if (flat) {
        const int64_t lo = std::max<int64_t>(0, h - r), hi = std::min<int64_t>(H - 1, h + r);
        if (flat_end[bi * H + lo] >= hi) {
          const int64_t n = 2 * r + 1;
          const acc_t v =
              at_most_one(tap_chain(taps.data(), n, tap_chain(taps.data(), n, flat_value[bi * H + lo])));
          std::fill(alpha.begin(), alpha.end(), v);
          consume(bi, h, alpha.data());
          continue;
        }
      }
      // Vertical pass into padded[r .. r + W): mask rows h - r .. h + r (reflected).
      acc_t* col = padded.data() + r;
      for (int dy = -r; dy <= r; ++dy) rows[dy + r] = mb + reflect_index(h + dy, H) * W;
      weighted_rows(taps.data(), rows.data(), 2 * r + 1, col, W);
      // Reflect-pad the row, then the horizontal pass over its 2r+1 shifts.
      for (int64_t j = 1; j <= r; ++j) {
        col[-j] = col[reflect_index(-j, W)];
        col[W - 1 + j] = col[reflect_index(W - 1 + j, W)];
      }
      for (int dx = -r; dx <= r; ++dx) rows[dx + r] = col + dx;
      weighted_rows(taps.data(), rows.data(), 2 * r + 1, alpha.data(), W);
      cap_at_one(alpha.data(), W);
      consume(bi, h, alpha.data());
    }
  });
}

// Sum of a row in double with 8 independent lanes combined in a fixed order: deterministic,
// and without the 4-cycle dependency chain of one accumulator (which dominated small images).
template <typename acc_t>
MEDMIX_CPU_CLONES double row_sum(const acc_t* __restrict__ a, int64_t n) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) lane[j] += a[k + j];
  for (; k < n; ++k) lane[0] += a[k];
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// ---- sigma = 0 everywhere (hard masks, Mixup's per-sample constant weights) on NCHW planes ----
// alpha is the mask itself, so each channel plane blends as one contiguous run: no row buffers,
// no per-row index arithmetic (which dominated small images), and a per-sample constant mask
// (a broadcast view, strides 0) is never materialised.

constexpr int64_t kPlaneChunk = 16384;  // pixels per task, at most

// A per-sample constant mask: [B, 1, H, W] with zero H and W strides (lam.view(B,1,1,1).expand).
bool per_sample_constant(const at::Tensor& m) {
  return m.stride(2) == 0 && m.stride(3) == 0;
}

// blend_pixel for images of PixelIO IO. Images that hold only finite values (uint8) skip its
// exact-0 / 1 selects: there the formula gives the same bits (1 * a + 0 * b == a).
template <typename IO, typename acc_t>
inline acc_t blend_io(acc_t alpha, acc_t a, acc_t b) {
  if constexpr (IO::kFinite) {
    return alpha * a + (acc_t(1) - alpha) * b;
  } else {
    return blend_pixel<acc_t>(alpha, a, b);
  }
}

// The per-pixel blend of a run (uint8 stores through pixel_io.h's store_run).
template <typename IO, typename acc_t = typename IO::acc_t, typename T = typename IO::scalar>
MEDMIX_CPU_CLONES void blend_run(const acc_t* __restrict__ alpha, const T* __restrict__ a,
                                 const T* __restrict__ b, T* __restrict__ o, int64_t n) {
  if constexpr (std::is_same_v<T, c10::Half>) {  // float blocks through F16C (half_f16c.h)
    if (for_half_blocks(a, b, o, nullptr, n, [&](const float* fa, const float* fb, float* fo, float*,
                                                 int64_t k0, int64_t m) {
          blend_run<PixelIO<float>>(alpha + k0, fa, fb, fo, m);
        }))
      return;
  }
  store_run<IO>([&](int64_t k) __attribute__((always_inline)) {
    return blend_io<IO>(alpha[k], IO::load(a[k]), IO::load(b[k]));
  }, o, n);
}

// 2-byte floats go through the select and copy loops as their bits: GCC vectorises uint16_t
// loops, not loops over c10::Half / c10::BFloat16 (classes with conversions), and a select or
// a copy does no arithmetic.
template <typename T>
struct bits_of {
  using type = T;
};
template <>
struct bits_of<c10::Half> {
  using type = uint16_t;
};
template <>
struct bits_of<c10::BFloat16> {
  using type = uint16_t;
};
template <typename T>
const typename bits_of<T>::type* as_bits(const T* p) {
  return reinterpret_cast<const typename bits_of<T>::type*>(p);
}
template <typename T>
typename bits_of<T>::type* as_bits(T* p) {
  return reinterpret_cast<typename bits_of<T>::type*>(p);
}

// Pixels [s, e) under a mask that only holds 0 and 1: a select per pixel. blend_pixel gives
// the same bits there (it selects at exact 0 and 1), without the arithmetic it computes and
// discards. Inline, so that it compiles into each caller's AVX2 clone.
template <typename scalar_t, typename acc_t>
inline void select_pixels(const acc_t* __restrict__ alpha, const scalar_t* __restrict__ a,
                          const scalar_t* __restrict__ b, scalar_t* __restrict__ o, int64_t s,
                          int64_t e) {
  // both loads unconditional, so that the compiler emits plain vector loads and a blend
  // rather than masked loads
  for (int64_t k = s; k < e; ++k) {
    const scalar_t va = a[k], vb = b[k];
    o[k] = alpha[k] != acc_t(0) ? va : vb;
  }
}

template <typename scalar_t, typename acc_t>
MEDMIX_CPU_CLONES void select_run(const acc_t* __restrict__ alpha, const scalar_t* __restrict__ a,
                                  const scalar_t* __restrict__ b, scalar_t* __restrict__ o, int64_t n) {
  select_pixels(alpha, a, b, o, 0, n);
}

// True when every value of m[0, n) is exactly 0 or 1.
template <typename acc_t>
MEDMIX_CPU_CLONES bool all_binary(const acc_t* __restrict__ m, int64_t n) {
  // In blocks, so that a soft mask (the common non-binary case) is told apart after one block
  // instead of a pass over the chunk. (An int, not a bool: GCC vectorises the integer OR.)
  constexpr int64_t kBlock = 256;
  for (int64_t k0 = 0; k0 < n; k0 += kBlock) {
    const int64_t k1 = std::min(n, k0 + kBlock);
    int32_t other = 0;
    for (int64_t k = k0; k < k1; ++k) other |= (m[k] != acc_t(0)) & (m[k] != acc_t(1));
    if (other) return false;
  }
  return true;
}

// ---- a binary mask shared by the batch, as runs ----
// CutMix's and SaliencyMix's boxes: the pixels outside the box rows take the anchor and the
// box's inside the partner, in long stretches. A stretch of at least kMinCopy pixels under one
// weight is copied from the one image it takes; a per-pixel select reads both images (half of
// its loads wasted there). Shorter stretches (a box's left and right edges on a small image)
// merge into select runs: a copy per short run costs more than it saves. Only a mask shared
// by the batch takes this path: its runs are found once per batch.
struct Run {
  int64_t start, len;
  int kind;  // kCopyB, kCopyA or kSelect
};
constexpr int kCopyB = 0, kCopyA = 1, kSelect = 2;
constexpr int64_t kMinCopy = 64;
// A chunk with more stretches than n / kMaxStretchRatio (on average shorter than that) is left
// to the plain select: finding them is a scalar step per stretch, and a noisy mask (SPMix-like
// patches, thresholded maps) would pay it with nothing to copy.
constexpr int64_t kMaxStretchRatio = 32;
constexpr int64_t kSkipBlock = 64;

// The runs of a chunk m[0, n) that only holds 0 and 1, into `runs`; false (runs unusable) when
// the chunk has too many stretches. The scan skips kSkipBlock pixels at a time while the weight
// stays (a vectorised test), so a box costs a few steps per row.
template <typename acc_t>
MEDMIX_CPU_CLONES bool binary_runs(const acc_t* __restrict__ m, int64_t n, std::vector<Run>& runs) {
  runs.clear();
  const int64_t max_stretches = std::max<int64_t>(4, n / kMaxStretchRatio);
  int64_t stretches = 0;
  for (int64_t s = 0; s < n;) {
    const bool one = m[s] != acc_t(0);
    const acc_t w = one ? acc_t(1) : acc_t(0);  // the stretch's weight (-0.0 == 0 compares equal)
    int64_t e = s + 1;
    while (e < n) {  // whole blocks of the same weight, then pixel by pixel to the change
      const int64_t e1 = std::min(n, e + kSkipBlock);
      int32_t differs = 0;  // (an int and a runtime trip count: GCC vectorises this loop)
      for (int64_t k = e; k < e1; ++k) differs |= m[k] != w;
      if (differs) break;
      e = e1;
    }
    while (e < n && m[e] == w) ++e;
    if (++stretches > max_stretches) return false;
    const int kind = e - s >= kMinCopy ? (one ? kCopyA : kCopyB) : kSelect;
    if (!runs.empty() && runs.back().kind == kind) {
      runs.back().len += e - s;
    } else {
      runs.push_back(Run{s, e - s, kind});
    }
    s = e;
  }
  return true;
}

// One channel plane of a binary chunk, run by run: the same bits as select_run over it. (One
// AVX2 clone for the plane, so the select inlines instead of an ifunc call per run; GCC makes
// each copy loop a memcpy call, cheap at kMinCopy pixels and up.)
template <typename scalar_t, typename acc_t>
MEDMIX_CPU_CLONES void copy_runs(const Run* runs, int64_t count, const acc_t* __restrict__ m,
                                 const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                 scalar_t* __restrict__ o) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t s = runs[i].start, e = s + runs[i].len;
    if (runs[i].kind == kSelect) {
      select_pixels(m, a, b, o, s, e);
    } else {
      const scalar_t* __restrict__ src = runs[i].kind == kCopyA ? a : b;
      for (int64_t k = s; k < e; ++k) o[k] = src[k];
    }
  }
}

// A run under one weight (Mixup's lam). blend_pixel's exact-0 / 1 selects are decided once
// for the run, outside the loop: left inside, GCC kept the fp16 loop scalar, a branch per
// pixel (1/45 of a copy's speed, 4x slower than under a per-pixel mask). The same bits: an
// exact 0 or 1 copies one image, any other weight (a NaN included) takes the formula.
template <typename IO, typename acc_t = typename IO::acc_t, typename T = typename IO::scalar>
MEDMIX_CPU_CLONES void blend_run_const(acc_t alpha, const T* __restrict__ a, const T* __restrict__ b,
                                       T* __restrict__ o, int64_t n) {
  if (alpha == acc_t(1) || alpha == acc_t(0)) {
    std::memcpy(o, alpha == acc_t(1) ? a : b, n * sizeof(T));
    return;
  }
  if constexpr (std::is_same_v<T, c10::Half>) {  // float blocks through F16C (half_f16c.h)
    if (for_half_blocks(a, b, o, nullptr, n, [&](const float* fa, const float* fb, float* fo, float*,
                                                 int64_t, int64_t m) {
          blend_run_const<PixelIO<float>>(alpha, fa, fb, fo, m);
        }))
      return;
  }
  const acc_t beta = acc_t(1) - alpha;
  const auto mixed = [&](int64_t k) __attribute__((always_inline)) {
    return alpha * IO::load(a[k]) + beta * IO::load(b[k]);
  };
  if constexpr (IO::kFinite) {
    // uint8 under a weight in [0, 1]: every value is in range, no clamp (NaN fails the test)
    if (alpha >= acc_t(0) && alpha <= acc_t(1)) {
      store_run<IO, true>(mixed, o, n);
      return;
    }
  }
  store_run<IO>(mixed, o, n);
}

// True when it handled the call: every sigma is 0 and a, b, out are NCHW planes.
template <typename scalar_t>
bool blend_forward_hard_planar(const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask,
                               int64_t max_radius, at::Tensor& out, at::Tensor& lam,
                               at::Tensor* alpha_out, const int64_t* b_rows) {
  using IO = PixelIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  if (max_radius != 0 || !is_planar(a) || !is_planar(b) || !is_planar(out)) return false;
  const bool constant = per_sample_constant(mask);
  if (!constant && !is_planar(mask)) return false;
  const int64_t B = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3), HW = H * W;
  // Chunks of (nearly) equal size, multiples of 64 pixels: the tasks run chunk-major below, so
  // a short last chunk would leave a thread with less work (at 224 x 224, 16384-pixel chunks
  // split the plane 3 : 1 + 1/16 between two threads).
  const int64_t T0 = (HW + kPlaneChunk - 1) / kPlaneChunk;
  const int64_t chunk = std::min(HW, ((HW + T0 - 1) / T0 + 63) / 64 * 64);
  const int64_t T = (HW + chunk - 1) / chunk;
  const Strides4 sa = strides_of(a), sb = strides_of(b), so = strides_of(out), sm = strides_of(mask);
  const scalar_t* pa = a.data_ptr<scalar_t>();
  const scalar_t* pb = b.data_ptr<scalar_t>();
  scalar_t* po = out.data_ptr<scalar_t>();
  const acc_t* pm = mask.data_ptr<acc_t>();
  acc_t* palpha = alpha_out ? alpha_out->data_ptr<acc_t>() : nullptr;
  std::vector<double> part(B * T);  // per-chunk sums, reduced below in a fixed order
  // One mask shared by the batch (CutMix's box as a broadcast view, batch stride 0): its
  // chunk sums are the same for every sample, so they are summed once here instead of B times
  // (the double-precision sum was a fifth of the blend's time on a 64 x 64 batch).
  std::vector<double> shared_part;
  enum ChunkPath : char { kBlendChunk, kSelectChunk, kRunsChunk };
  std::vector<ChunkPath> shared_path;
  std::vector<std::vector<Run>> shared_runs;
  if (!constant && sm.n == 0) {
    shared_part.resize(T);
    shared_path.resize(T);
    shared_runs.resize(T);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t k0 = t * chunk, n = std::min(chunk, HW - k0);
      shared_part[t] = row_sum(pm + k0, n);
      shared_path[t] = !all_binary(pm + k0, n)                 ? kBlendChunk
                       : binary_runs(pm + k0, n, shared_runs[t]) ? kRunsChunk
                                                                 : kSelectChunk;
    }
  }
  // Tasks run chunk-major, and within a chunk along the partner chains: a thread's share is a
  // range of pixels, and the partner chunk one task reads is the anchor chunk of the next.
  const std::vector<int64_t> order = partner_chain_order(B, b_rows);
  const int64_t grain = std::max<int64_t>(1, 65536 / chunk / (C + 1));
  at::parallel_for(0, B * T, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t t = task / B, bi = order[task % B];
      const int64_t k0 = t * chunk, n = std::min(chunk, HW - k0);
      const scalar_t* ra = pa + bi * sa.n + k0;
      const scalar_t* rb = pb + (b_rows ? b_rows[bi] : bi) * sb.n + k0;
      scalar_t* ro = po + bi * so.n + k0;
      if (constant) {
        const acc_t m = pm[bi * sm.n];
        // n copies of a float32 sum exactly in double: the same lam as summing the pixels
        part[bi * T + t] = static_cast<double>(m) * static_cast<double>(n);
        if (palpha) std::fill(palpha + bi * HW + k0, palpha + bi * HW + k0 + n, m);
        for (int64_t c = 0; c < C; ++c)
          blend_run_const<IO>(m, ra + c * sa.c, rb + c * sb.c, ro + c * so.c, n);
      } else {
        const acc_t* rm = pm + bi * sm.n + k0;
        if (palpha) std::copy(rm, rm + n, palpha + bi * HW + k0);
        ChunkPath path;
        if (!shared_part.empty()) {
          part[bi * T + t] = shared_part[t];
          path = shared_path[t];
        } else {
          // (no runs for a per-sample mask: finding them, a pass per sample, cost more than
          // the copies saved in every measurement, 224 x 224 boxes included)
          part[bi * T + t] = row_sum(rm, n);
          path = all_binary(rm, n) ? kSelectChunk : kBlendChunk;  // the chunk was just read
        }
        if (path == kRunsChunk) {
          const std::vector<Run>& rs = shared_runs[t];
          for (int64_t c = 0; c < C; ++c)
            copy_runs(rs.data(), static_cast<int64_t>(rs.size()), rm, as_bits(ra + c * sa.c),
                      as_bits(rb + c * sb.c), as_bits(ro + c * so.c));
          continue;
        }
        if (path == kSelectChunk) {
          for (int64_t c = 0; c < C; ++c)
            select_run(rm, as_bits(ra + c * sa.c), as_bits(rb + c * sb.c), as_bits(ro + c * so.c), n);
          continue;
        }
        for (int64_t c = 0; c < C; ++c)
          blend_run<IO>(rm, ra + c * sa.c, rb + c * sb.c, ro + c * so.c, n);
      }
    }
  });
  acc_t* plam = lam.data_ptr<acc_t>();
  for (int64_t bi = 0; bi < B; ++bi) {
    double sum = 0;
    for (int64_t t = 0; t < T; ++t) sum += part[bi * T + t];
    plam[bi] = static_cast<acc_t>(sum / static_cast<double>(HW));
  }
  return true;
}

// dst[w * C + c] = alpha[w]: a row's weights for channels_last pixels. (C = 3, RGB, as a
// compile-time count: GCC vectorises its interleaved stores; the runtime-C loop reloaded
// alpha[w] for every store and cost twice the blend it feeds.)
template <int64_t C, typename acc_t>
MEDMIX_CPU_CLONES void repeat_per_channel(const acc_t* __restrict__ alpha, int64_t W, acc_t* __restrict__ dst) {
  for (int64_t w = 0; w < W; ++w)
    for (int64_t c = 0; c < C; ++c) dst[w * C + c] = alpha[w];
}
template <typename acc_t>
void repeat_per_channel(const acc_t* __restrict__ alpha, int64_t W, int64_t C, acc_t* __restrict__ dst) {
  for (int64_t w = 0; w < W; ++w) {
    const acc_t v = alpha[w];
    for (int64_t c = 0; c < C; ++c) dst[w * C + c] = v;
  }
}

// A row's weights for its W * C channels_last elements, in a per-thread buffer valid until the
// thread's next call.
template <typename acc_t>
const acc_t* channels_last_weights(const acc_t* alpha, int64_t W, int64_t C) {
  thread_local std::vector<acc_t> buf;
  buf.resize(W * C);
  if (C == 3) {
    repeat_per_channel<3>(alpha, W, buf.data());
  } else {
    repeat_per_channel(alpha, W, C, buf.data());
  }
  return buf.data();
}

// How the forward and backward loops walk a row of tensors with these strides: as C rows of
// unit stride (NCHW), as one row of W * C elements (channels_last: the weights repeated per
// channel), or pixel by pixel (any other strides, a broadcast gradient included).
enum class RowLayout { kPlanes, kChannelsLast, kStrided };
inline RowLayout row_layout(int64_t C, std::initializer_list<Strides4> strides) {
  bool planes = true, channels_last = true;
  for (const Strides4& s : strides) {
    planes = planes && s.w == 1;
    channels_last = channels_last && s.c == 1 && s.w == C;
  }
  return planes ? RowLayout::kPlanes : channels_last ? RowLayout::kChannelsLast : RowLayout::kStrided;
}

// The backward of a run (blend_pixel_grad): ga = alpha * g, gb = (1 - alpha) * g.
template <typename IO, typename acc_t = typename IO::acc_t, typename T = typename IO::scalar>
MEDMIX_CPU_CLONES void blend_grad_run(const acc_t* __restrict__ alpha, const T* __restrict__ g,
                                      T* __restrict__ ga, T* __restrict__ gb, int64_t n) {
  if constexpr (std::is_same_v<T, c10::Half>) {  // float blocks through F16C (half_f16c.h)
    if (for_half_blocks(g, nullptr, ga, gb, n, [&](const float* fg, const float*, float* fga, float* fgb,
                                                   int64_t k0, int64_t m) {
          blend_grad_run<PixelIO<float>>(alpha + k0, fg, fga, fgb, m);
        }))
      return;
  }
  for (int64_t k = 0; k < n; ++k) {
    acc_t da, db;
    blend_pixel_grad<acc_t>(alpha[k], IO::load(g[k]), &da, &db);
    ga[k] = IO::store(da);
    gb[k] = IO::store(db);
  }
}

template <typename scalar_t>
void blend_forward(const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask,
                   const at::Tensor& sigma, int64_t max_radius, at::Tensor& out,
                   at::Tensor& lam, at::Tensor* alpha_out, const int64_t* b_rows) {
  using IO = PixelIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  const int64_t B = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  const Strides4 sa = strides_of(a), sb = strides_of(b), so = strides_of(out);
  const scalar_t* pa = a.data_ptr<scalar_t>();
  const scalar_t* pb = b.data_ptr<scalar_t>();
  scalar_t* po = out.data_ptr<scalar_t>();
  acc_t* palpha = alpha_out ? alpha_out->data_ptr<acc_t>() : nullptr;
  // Row sums in double, reduced below in a fixed order: lam is identical for any thread count.
  std::vector<double> row_sums(B * H);
  const RowLayout layout = row_layout(C, {sa, sb, so});

  for_each_alpha_row<acc_t>(mask, sigma, max_radius, C, partner_chain_order(B, b_rows),
                            [&](int64_t bi, int64_t h, const acc_t* __restrict__ alpha) {
    row_sums[bi * H + h] = row_sum(alpha, W);
    if (palpha) std::copy(alpha, alpha + W, palpha + (bi * H + h) * W);
    const scalar_t* ra = pa + bi * sa.n + h * sa.h;
    const scalar_t* rb = pb + (b_rows ? b_rows[bi] : bi) * sb.n + h * sb.h;
    scalar_t* ro = po + bi * so.n + h * so.h;
    if (layout == RowLayout::kPlanes) {  // NCHW: channel-major, unit-stride inner loop
      // (the output never aliases the inputs, a fresh tensor: blend_run's restrict holds)
      for (int64_t c = 0; c < C; ++c)
        blend_run<IO>(alpha, ra + c * sa.c, rb + c * sb.c, ro + c * so.c, W);
    } else if (layout == RowLayout::kChannelsLast) {
      // channels_last: the row's weights repeated per channel, then one unit-stride blend over
      // its W * C elements. (The strided pixel-major loop below is scalar: a sigma = 0 blend
      // of channels_last images took 10x the time of NCHW ones.)
      blend_run<IO>(channels_last_weights(alpha, W, C), ra, rb, ro, W * C);
    } else {  // other strides: pixel-major
      for (int64_t w = 0; w < W; ++w) {
        for (int64_t c = 0; c < C; ++c) {
          ro[w * so.w + c * so.c] = IO::store(blend_io<IO>(
              alpha[w], IO::load(ra[w * sa.w + c * sa.c]), IO::load(rb[w * sb.w + c * sb.c])));
        }
      }
    }
  });

  acc_t* plam = lam.data_ptr<acc_t>();
  for (int64_t bi = 0; bi < B; ++bi) {
    double sum = 0;
    for (int64_t h = 0; h < H; ++h) sum += row_sums[bi * H + h];
    plam[bi] = static_cast<acc_t>(sum / static_cast<double>(H * W));
  }
}

template <typename scalar_t>
void blend_backward(const at::Tensor& grad_out, const at::Tensor& mask, const at::Tensor& sigma,
                    int64_t max_radius, at::Tensor& grad_a, at::Tensor& grad_b) {
  using IO = PixelIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  const int64_t C = grad_out.size(1), W = grad_out.size(3);
  const Strides4 sg = strides_of(grad_out), sa = strides_of(grad_a), sb = strides_of(grad_b);
  const scalar_t* pg = grad_out.data_ptr<scalar_t>();
  scalar_t* pa = grad_a.data_ptr<scalar_t>();
  scalar_t* pb = grad_b.data_ptr<scalar_t>();
  // the forward's row layouts: their unit-stride runs vectorise, where the strided loop was
  // scalar (grad_a / grad_b are empty_like(grad_out), dense even where grad_out is broadcast)
  const RowLayout layout = row_layout(C, {sg, sa, sb});
  for_each_alpha_row<acc_t>(mask, sigma, max_radius, C, partner_chain_order(grad_out.size(0), nullptr),
                            [&](int64_t bi, int64_t h, const acc_t* alpha) {
    const scalar_t* rg = pg + bi * sg.n + h * sg.h;
    scalar_t* ra = pa + bi * sa.n + h * sa.h;
    scalar_t* rb = pb + bi * sb.n + h * sb.h;
    if (layout == RowLayout::kPlanes) {
      for (int64_t c = 0; c < C; ++c) blend_grad_run<IO>(alpha, rg + c * sg.c, ra + c * sa.c, rb + c * sb.c, W);
    } else if (layout == RowLayout::kChannelsLast) {
      blend_grad_run<IO>(channels_last_weights(alpha, W, C), rg, ra, rb, W * C);
    } else {
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t w = 0; w < W; ++w) {
          acc_t ga, gb;
          blend_pixel_grad<acc_t>(alpha[w], IO::load(rg[c * sg.c + w * sg.w]), &ga, &gb);
          ra[c * sa.c + w * sa.w] = IO::store(ga);
          rb[c * sb.c + w * sb.w] = IO::store(gb);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> gaussian_blend_out_cpu(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask, const at::Tensor& sigma,
    int64_t max_radius, bool return_alpha, const c10::optional<at::Tensor>& b_index, at::Tensor& out) {
  check_gaussian_blend_args(a, b, mask, sigma, max_radius, b_index);
  check_gaussian_blend_out(a, b, out);
  at::Tensor rows;
  if (b_index.has_value()) {
    rows = b_index->contiguous();
    const int64_t* r = rows.data_ptr<int64_t>();
    for (int64_t i = 0; i < rows.numel(); ++i)
      TORCH_CHECK(r[i] >= 0 && r[i] < b.size(0), "medmix::gaussian_blend: b_index[", i, "] = ",
                  r[i], " is outside [0, ", b.size(0), ")");
  }
  TORCH_CHECK(a.device().is_cpu(), "medmix::gaussian_blend (CPU kernel) got a ", a.device(),
              " tensor");
  const auto acc = opmath_dtype(a.scalar_type());
  const int64_t B = a.size(0), H = a.size(2), W = a.size(3);
  auto lam = at::empty({B}, a.options().dtype(acc));
  auto alpha = return_alpha ? at::empty({B, 1, H, W}, a.options().dtype(acc))
                            : at::empty({0}, a.options().dtype(acc));
  if (a.numel() == 0) return {lam.zero_(), alpha};
  const auto sigma_c = sigma.contiguous();
  check_radii(sigma_c, max_radius);
  AT_DISPATCH_FLOATING_TYPES_AND3(
      at::kHalf, at::kBFloat16, at::kByte, a.scalar_type(), "gaussian_blend_cpu", [&] {
        const int64_t* b_rows = rows.defined() ? rows.data_ptr<int64_t>() : nullptr;
        at::Tensor* alpha_out = return_alpha ? &alpha : nullptr;
        if (!blend_forward_hard_planar<scalar_t>(a, b, mask, max_radius, out, lam, alpha_out, b_rows))
          blend_forward<scalar_t>(a, b, mask.contiguous(), sigma_c, max_radius, out, lam, alpha_out,
                                  b_rows);
      });
  return {lam, alpha};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_blend_cpu(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask, const at::Tensor& sigma,
    int64_t max_radius, bool return_alpha, const c10::optional<at::Tensor>& b_index) {
  return gaussian_blend_into_new(a, b, mask, sigma, max_radius, return_alpha, b_index,
                                 gaussian_blend_out_cpu);
}

std::tuple<at::Tensor, at::Tensor> gaussian_blend_backward_cpu(const at::Tensor& grad_out,
                                                               const at::Tensor& mask,
                                                               const at::Tensor& sigma,
                                                               int64_t max_radius) {
  check_gaussian_blend_backward_args(grad_out, mask, sigma, max_radius);
  auto grad_a = at::empty_like(grad_out);
  auto grad_b = at::empty_like(grad_out);
  if (grad_out.numel() == 0) return {grad_a, grad_b};
  const auto mask_c = mask.contiguous();
  const auto sigma_c = sigma.contiguous();
  check_radii(sigma_c, max_radius);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_out.scalar_type(), "gaussian_blend_backward_cpu", [&] {
        blend_backward<scalar_t>(grad_out, mask_c, sigma_c, max_radius, grad_a, grad_b);
      });
  return {grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(medmix, CPU, m) {
  m.impl("gaussian_blend", &gaussian_blend_cpu);
  m.impl("gaussian_blend_out", &gaussian_blend_out_cpu);
  m.impl("gaussian_blend_backward", &gaussian_blend_backward_cpu);
}

}  // namespace medmix
