// AVX2 clones of the CPU kernels' hot loops, chosen once at load time by the dynamic linker
// (GCC target_clones, an ifunc). The extension is built for baseline x86-64 (SSE2), where every
// loop runs 4 floats wide on machines that do 8; a division-heavy loop (adm's score) ran at half
// the speed of torch.compile's AVX2 code. No FMA: a clone computes exactly what the baseline
// does (IEEE per lane, the same explicit lane order in reductions), so results never depend on
// the CPU. Elsewhere (clang, other architectures) the macro is empty.
#pragma once

#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__)
#define MEDMIX_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MEDMIX_CPU_CLONES
#endif

namespace medmix {

// dst[k] += tap * src[k]: one tap of a separable blur pass over a row.
template <typename T>
MEDMIX_CPU_CLONES void axpy_row(T tap, const T* __restrict__ src, T* __restrict__ dst, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] += tap * src[k];
}

}  // namespace medmix
