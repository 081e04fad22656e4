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

// uint8 outputs round half to even (like torch.round) and saturate to [0, 255].
template <typename acc_t>
struct StoreAs<uint8_t, acc_t> {
  MEDMIX_HOST_DEVICE static uint8_t apply(acc_t v) {
    v = v < acc_t(0) ? acc_t(0) : (v > acc_t(255) ? acc_t(255) : v);
    return static_cast<uint8_t>(std::nearbyint(static_cast<double>(v)));
  }
};

template <typename scalar_t, typename acc_t>
MEDMIX_HOST_DEVICE inline scalar_t store_as(acc_t v) {
  return StoreAs<scalar_t, acc_t>::apply(v);
}

}  // namespace medmix
