// Loading and storing one image element in its storage dtype, with math in acc_t.
#pragma once

#include <cmath>
#include <cstdint>

#include "macros.h"

namespace medmix {

// The compute dtype of every kernel: double for double images, float for float/half/bf16/uint8.
template <typename scalar_t>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename scalar_t>
using acc_type_t = typename AccType<scalar_t>::type;

template <typename acc_t, typename scalar_t>
MEDMIX_HOST_DEVICE inline acc_t load_as(scalar_t v) {
  return static_cast<acc_t>(v);
}

// Floating outputs are a plain cast (round to nearest in the cast).
template <typename scalar_t, typename acc_t>
struct StoreAs {
  MEDMIX_HOST_DEVICE static scalar_t apply(acc_t v) { return static_cast<scalar_t>(v); }
};

// uint8 rounding of a float known to lie in [0, 255.5): half to even, by adding 2^23 (which
// leaves no fraction bits, so the addition rounds in the default rounding mode) and
// subtracting it again (exact). The same bits as std::nearbyint there, and plain adds (the
// CPU loops vectorise them; nearbyint on a double was a libm call per pixel).
MEDMIX_HOST_DEVICE inline float round_u8_in_range(float v) { return (v + 8388608.f) - 8388608.f; }

// uint8 outputs saturate to [0, 255] (a NaN to 0) and round half to even (like torch.round).
MEDMIX_HOST_DEVICE inline float round_u8(float v) {
  v = v > 0.f ? v : 0.f;
  v = v < 255.f ? v : 255.f;
  return round_u8_in_range(v);
}

template <typename acc_t>
struct StoreAs<uint8_t, acc_t> {
  static_assert(sizeof(acc_t) == sizeof(float), "uint8 images compute in float");
  MEDMIX_HOST_DEVICE static uint8_t apply(acc_t v) {
    return static_cast<uint8_t>(static_cast<int32_t>(round_u8(v)));
  }
};

template <typename scalar_t, typename acc_t>
MEDMIX_HOST_DEVICE inline scalar_t store_as(acc_t v) {
  return StoreAs<scalar_t, acc_t>::apply(v);
}

}  // namespace medmix
