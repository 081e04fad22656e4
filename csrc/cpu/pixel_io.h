// Loading and storing image elements in the CPU kernels' loops, as code GCC vectorises.
//
// PixelIO<scalar_t>::load / store are the shared load_as / store_as (csrc/common/pixel.h)
// except for uint8, whose store_as rounds with std::nearbyint on a double: a libm call per
// pixel in the baseline build and, vectorised in the AVX2 clone, selects done at byte width.
// Here uint8 rounds with the float "magic number" addition, in two loops (store_run): the
// same bits, and the blend of uint8 images ~1.2-1.5x faster. (Own branch-free fp16 / bf16
// conversions were tried too: c10's vectorise as well or better, so they stay.)
#pragma once

#include <cstdint>
#include <type_traits>

#include "../common/pixel.h"

namespace medmix {

template <typename scalar_t>
struct PixelIO {
  using storage = scalar_t;
  using acc_t = acc_type_t<scalar_t>;
  static constexpr bool kFinite = false;  // may hold Inf / NaN
  static acc_t load(storage v) { return load_as<acc_t>(v); }
  static storage store(acc_t v) { return store_as<scalar_t>(v); }
};

template <>
struct PixelIO<uint8_t> {
  using storage = uint8_t;
  using acc_t = float;
  static constexpr bool kFinite = true;
  static float load(uint8_t v) { return static_cast<float>(v); }
  // Clamp to [0, 255] (a NaN to 0), then round half to even: adding 2^23 leaves no fraction
  // bits, so the float addition rounds (in the default rounding mode) and the subtraction is
  // exact. The same bits as store_as (std::nearbyint) on [0, 255]. Two steps, which loops run
  // apart (store_run): GCC then does the clamp's selects at float width and the narrowing
  // as packs, where one loop doing both did the selects at byte width.
  static float store_wide(float v) {
    v = v > 0.f ? v : 0.f;
    v = v < 255.f ? v : 255.f;
    return store_wide_in_range(v);
  }
  // store_wide for v known to be in [0, 255.5): a blend of uint8 pixels under weights in
  // [0, 1] (a float 1 - alpha may make the weights' sum 1 + 2^-24: 255.00002 still rounds to
  // 255). The clamp was a third of the loop.
  static float store_wide_in_range(float v) { return (v + 8388608.f) - 8388608.f; }
  static uint8_t narrow(float rounded) { return static_cast<uint8_t>(static_cast<int32_t>(rounded)); }
  static uint8_t store(float v) { return narrow(store_wide(v)); }
};

// o[k] = IO::store(value(k)) for k in [0, n). uint8 runs in blocks: rounded into a float
// buffer (store_wide), then narrowed (narrow), both loops vector code. always_inline, like the
// `value` lambdas given to it: called from an AVX2 clone, an out-of-line copy ran baseline
// SSE2 code.
// kInRange: every value is known to be in uint8 range (store_wide_in_range, no clamp).
template <typename IO, bool kInRange = false, typename F>
__attribute__((always_inline)) inline void store_run(F value, typename IO::storage* __restrict__ o, int64_t n) {
  if constexpr (std::is_same<typename IO::storage, uint8_t>::value) {
    constexpr int64_t kBlock = 256;
    alignas(32) float buf[kBlock];
    for (int64_t k0 = 0; k0 < n; k0 += kBlock) {
      const int64_t m = n - k0 < kBlock ? n - k0 : kBlock;
      for (int64_t k = 0; k < m; ++k)
        buf[k] = kInRange ? IO::store_wide_in_range(value(k0 + k)) : IO::store_wide(value(k0 + k));
      for (int64_t k = 0; k < m; ++k) o[k0 + k] = IO::narrow(buf[k]);
    }
  } else {
    for (int64_t k = 0; k < n; ++k) o[k] = IO::store(value(k));
  }
}

}  // namespace medmix
