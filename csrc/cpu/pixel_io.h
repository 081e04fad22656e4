// Loading and storing image elements in the CPU kernels' loops, as code GCC vectorises.
//
// PixelIO<scalar_t>::load / store are the shared load_as / store_as (csrc/common/pixel.h).
// uint8 adds store_run's two loops: round_u8 into a float buffer, then the narrowing; in one
// loop GCC did the clamp's selects at byte width (~1.2-1.5x slower). (Own branch-free fp16 /
// bf16 conversions were tried too: c10's vectorise as well or better, so they stay.)
#pragma once

#include <cstdint>
#include <type_traits>

#include "../common/pixel.h"

namespace medmix {

template <typename scalar_t>
struct PixelIO {
  using scalar = scalar_t;
  using acc_t = acc_type_t<scalar_t>;
  static constexpr bool kFinite = false;  // may hold Inf / NaN
  static acc_t load(scalar_t v) { return load_as<acc_t>(v); }
  static scalar_t store(acc_t v) { return store_as<scalar_t>(v); }
};

template <>
struct PixelIO<uint8_t> {
  using scalar = uint8_t;
  using acc_t = float;
  static constexpr bool kFinite = true;
  static float load(uint8_t v) { return static_cast<float>(v); }
  static uint8_t narrow(float rounded) { return static_cast<uint8_t>(static_cast<int32_t>(rounded)); }
  static uint8_t store(float v) { return store_as<uint8_t>(v); }
};

// o[k] = IO::store(value(k)) for k in [0, n). uint8 runs in blocks: rounded into a float
// buffer (round_u8), then narrowed, both loops vector code. kInRange: every value is known
// to lie in [0, 255.5) (round_u8_in_range, no clamp: the clamp was a third of the loop), e.g.
// a blend under weights in [0, 1] (a float 1 - alpha may make their sum 1 + 2^-24: 255.00002
// still rounds to 255). always_inline, like the `value` lambdas given to it: called from an
// AVX2 clone, an out-of-line copy ran baseline SSE2 code.
template <typename IO, bool kInRange = false, typename F>
__attribute__((always_inline)) inline void store_run(F value, typename IO::scalar* __restrict__ o, int64_t n) {
  if constexpr (std::is_same<typename IO::scalar, uint8_t>::value) {
    constexpr int64_t kBlock = 256;
    alignas(32) float buf[kBlock];
    for (int64_t k0 = 0; k0 < n; k0 += kBlock) {
      const int64_t m = n - k0 < kBlock ? n - k0 : kBlock;
      for (int64_t k = 0; k < m; ++k)
        buf[k] = kInRange ? round_u8_in_range(value(k0 + k)) : round_u8(value(k0 + k));
      for (int64_t k = 0; k < m; ++k) o[k0 + k] = IO::narrow(buf[k]);
    }
  } else {
    for (int64_t k = 0; k < n; ++k) o[k] = IO::store(value(k));
  }
}

}  // namespace medmix
