// AVX2 clones of the CPU kernels' hot loops, chosen once at load time by the dynamic linker
// (GCC target_clones, an ifunc). The extension is built for baseline x86-64 (SSE2), where every
// loop runs 4 floats wide on machines that do 8; a division-heavy loop (adm's score) ran at half
// the speed of torch.compile's AVX2 code. No FMA: a clone computes exactly what the baseline
// does (IEEE per lane, the same explicit lane order in reductions), so results never depend on
// the CPU. Elsewhere (clang, other architectures) the macro is empty.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define MEDMIX_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MEDMIX_CPU_CLONES
#endif

namespace medmix {

// dst[k] = (((0 + taps[0] * rows[0][k]) + taps[1] * rows[1][k]) + ...) for k in [0, n): one
// pass of a separable blur, taps summed in order per element (same bits as a zeroed row
// accumulated tap by tap, as before), in blocks whose sums stay in registers across the taps:
// the tap-by-tap passes loaded and stored the row once per tap (load/store bound, an ifunc
// call per tap and row).
template <typename T>
MEDMIX_CPU_CLONES void weighted_rows(const T* __restrict__ taps, const T* const* rows, int64_t ntaps,
                                     T* __restrict__ dst, int64_t n) {
  typedef T Vec __attribute__((vector_size(32)));
  constexpr int64_t kLanes = 32 / sizeof(T), kVecs = 8, kBlock = kLanes * kVecs;
  int64_t k0 = 0;
  for (; k0 + kBlock <= n; k0 += kBlock) {
    Vec acc[kVecs];
#pragma GCC unroll 8
    for (int64_t v = 0; v < kVecs; ++v) acc[v] = Vec{} + T(0);
    for (int64_t t = 0; t < ntaps; ++t) {
      const T tap = taps[t];
      const T* src = rows[t] + k0;
#pragma GCC unroll 8
      for (int64_t v = 0; v < kVecs; ++v) {
        Vec x;
        std::memcpy(&x, src + v * kLanes, sizeof(Vec));
        acc[v] += tap * x;
      }
    }
#pragma GCC unroll 8
    for (int64_t v = 0; v < kVecs; ++v) std::memcpy(dst + k0 + v * kLanes, &acc[v], sizeof(Vec));
  }
  for (; k0 + kLanes <= n; k0 += kLanes) {
    Vec acc = Vec{} + T(0);
    for (int64_t t = 0; t < ntaps; ++t) {
      Vec x;
      std::memcpy(&x, rows[t] + k0, sizeof(Vec));
      acc += taps[t] * x;
    }
    std::memcpy(dst + k0, &acc, sizeof(Vec));
  }
  for (; k0 < n; ++k0) {
    T acc = T(0);
    for (int64_t t = 0; t < ntaps; ++t) acc += taps[t] * rows[t][k0];
    dst[k0] = acc;
  }
}

}  // namespace medmix
