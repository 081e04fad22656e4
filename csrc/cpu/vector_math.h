// exp and log that GCC vectorises: branch-free float code (selects, integer bit moves, a
// polynomial) that becomes SSE2 / AVX2 lanes when inlined into a loop. The build has no
// libmvec and no -ffast-math, so std::exp / std::log stay one scalar call per element; in the
// spectral residual filter those calls were most of its time. Polynomials and the two-part
// ln 2 are Cephes' (expf.c, logf.c, S. L. Moshier): within 2 ulp of the correctly rounded value
// on their finite range, against glibc's 1 ulp, far under the saliency maps' 3e-5 tolerance.
// Every step is IEEE single precision with no FMA, so every CPU gives the same bits.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace medmix {

inline float bits_to_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

inline int32_t float_to_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

// e^x. Overflow (x above ln 2^127.5, where 2^n below would leave the exponent range) gives
// +inf and x < ln of the smallest normal gives 0 (std::exp gives subnormals there); NaN stays NaN.
inline float vector_exp(float x) {
  constexpr float kHi = 88.37626266f, kLo = -87.33654475f;
  // clamped so that the int conversion below is defined (NaN goes to kLo, and is put back last)
  const float xc = x >= kLo ? (x > kHi ? kHi : x) : kLo;
  // n = round(x / ln 2) by the 1.5 * 2^23 trick (no SSE4.1 round instruction in the baseline);
  // GCC keeps (t + c) - c as written without -ffast-math
  constexpr float kRound = 12582912.f;
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;  // x - n ln 2, ln 2 in two parts
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = (p * (r * r) + r) + 1.f;
  const float scaled = y * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
  const float inf = std::numeric_limits<float>::infinity();
  return x != x ? x : (x > kHi ? inf : (x < kLo ? 0.f : scaled));
}

// ln x for x > 0 normal (callers floor their argument at a positive normal value); +inf stays
// +inf. Subnormals, zero, negatives and NaN are outside its contract.
inline float vector_log(float x) {
  const int32_t bits = float_to_bits(x);
  float e = static_cast<float>((bits >> 23) - 126);              // x = m 2^e, m in [0.5, 1)
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);
  const bool low = m < 0.707106781186547524f;                     // keep m - 1 in [-0.29, 0.41]
  e = low ? e - 1.f : e;
  m = low ? (m + m) - 1.f : m - 1.f;
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = (p * m) * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  const float l = (m + y) + e * 0.693359375f;
  return x == std::numeric_limits<float>::infinity() ? x : l;
}

}  // namespace medmix
