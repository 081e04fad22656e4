// float16 <-> float32 through the F16C instructions (vcvtph2ps / vcvtps2ph), for the CPU
// kernels' fp16 runs. c10::Half's portable conversions are bit arithmetic: an fp16 Mixup blend
// took 3.3x the time of a bf16 one at 32 x 3 x 224^2 on the 2-core VM, compute bound on them.
// The hardware conversions give the same bits for every non-NaN value (half to float is exact;
// float to half rounds to nearest even, as c10 does, subnormals and overflow to inf included);
// a NaN stays a NaN (its payload may differ from c10's canonical 0x7E00).
//
// Used through for_half_blocks: a run of n fp16 elements is converted in blocks into float
// buffers, the float32 instantiation of the kernel runs on them (the very arithmetic the fp16
// instantiation does after its exact loads), and the result is rounded back. Only where the
// CPU has F16C and AVX (checked once); elsewhere, and off x86-64 GCC builds, the callers keep
// their c10 loops. MEDMIX_DISABLE_F16C=1 in the environment (read once) keeps them too: the
// tests compare the two paths' bits that way.
#pragma once

#include <c10/util/Half.h>

#include <cstdint>

#include "env_flags.h"

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define MEDMIX_HAVE_F16C_PATH 1
#else
#define MEDMIX_HAVE_F16C_PATH 0
#endif

namespace medmix {

constexpr int64_t kHalfBlock = 512;  // elements per conversion block (3 float buffers: 6 KB)

#if MEDMIX_HAVE_F16C_PATH

inline bool cpu_has_f16c() {
  static const bool has = [] {
    if (env_flag_on("MEDMIX_DISABLE_F16C")) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  }();
  return has;
}

__attribute__((target("avx,f16c"))) inline void half_to_float(const c10::Half* __restrict__ src,
                                                              float* __restrict__ dst, int64_t n) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm256_storeu_ps(dst + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k))));
  for (; k < n; ++k) dst[k] = _cvtsh_ss(s[k]);
}

__attribute__((target("avx,f16c"))) inline void float_to_half(const float* __restrict__ src,
                                                              c10::Half* __restrict__ dst, int64_t n) {
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + k),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + k), _MM_FROUND_TO_NEAREST_INT));
  for (; k < n; ++k) d[k] = _cvtss_sh(src[k], _MM_FROUND_TO_NEAREST_INT);
}

#else

inline bool cpu_has_f16c() { return false; }
inline void half_to_float(const c10::Half*, float*, int64_t) {}
inline void float_to_half(const float*, c10::Half*, int64_t) {}

#endif

// A fp16 elementwise run of n elements with two fp16 inputs and two fp16 outputs (either may
// be null), through float blocks: kernel(in0, in1, out0, out1, offset, m) runs the float32
// version on elements [offset, offset + m) of the run, given float buffers. Returns false
// (nothing done) where the CPU lacks F16C.
template <typename Kernel>
bool for_half_blocks(const c10::Half* in0, const c10::Half* in1, c10::Half* out0, c10::Half* out1,
                     int64_t n, const Kernel& kernel) {
  if (!cpu_has_f16c()) return false;
  alignas(32) float f_in0[kHalfBlock], f_in1[kHalfBlock], f_out0[kHalfBlock], f_out1[kHalfBlock];
  for (int64_t k0 = 0; k0 < n; k0 += kHalfBlock) {
    const int64_t m = n - k0 < kHalfBlock ? n - k0 : kHalfBlock;
    if (in0) half_to_float(in0 + k0, f_in0, m);
    if (in1) half_to_float(in1 + k0, f_in1, m);
    kernel(f_in0, f_in1, f_out0, f_out1, k0, m);
    if (out0) float_to_half(f_out0, out0 + k0, m);
    if (out1) float_to_half(f_out1, out1 + k0, m);
  }
  return true;
}

}  // namespace medmix
