// (sample, chunk) launch grids: block blockIdx.x takes pixels [k0, k1) of sample bi, so a batch of
// few large images still fills the GPU. Per-sample results (min / max) are reduced from per-chunk
// partials by the next launch, so every result is deterministic (no float atomics).
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "block_reduce.cuh"

namespace medmix {

struct Chunk {
  int64_t bi, task, k0, k1;  // sample, block (= partial index), pixel range
};

// This block's chunk of a grid of T chunks of `size` pixels per sample, over n pixels a sample.
__device__ inline Chunk chunk_of(int64_t size, int64_t T, int64_t n) {
  const int64_t task = blockIdx.x, bi = task / T, k0 = (task % T) * size;
  return {bi, task, k0, min(k0 + size, n)};
}

__host__ __device__ inline int64_t chunk_count(int64_t n, int64_t size) { return (n + size - 1) / size; }

// Blocks of a B x T grid, refused (not truncated) past CUDA's grid limit.
inline int64_t chunk_grid(int64_t B, int64_t T, const char* op) {
  TORCH_CHECK(B * T <= 0x7fffffffLL, op, ": too many chunks for one launch (", B, " x ", T, ")");
  return B * T;
}

// Both halves of sample bi's T pair partials pairs[(bi * T + t) * 2 + {0, 1}] reduced with op0 /
// op1, in every thread of the block (all threads must call it).
template <typename V, typename Op0, typename Op1>
__device__ void reduce_sample_pairs(const V* pairs, int64_t T, int64_t bi, Op0 op0, V id0, Op1 op1,
                                    V id1, V* r0, V* r1) {
  V a = id0, b = id1;
  for (int64_t t = threadIdx.x; t < T; t += blockDim.x) {
    a = op0(a, pairs[(bi * T + t) * 2]);
    b = op1(b, pairs[(bi * T + t) * 2 + 1]);
  }
  *r0 = block_all_reduce(a, op0, id0);
  *r1 = block_all_reduce(b, op1, id1);
}

// A chunk's (min, max) from each thread's share -> minmax[task * 2 + {0, 1}] (all threads must
// call it).
__device__ inline void store_chunk_minmax(float* minmax, int64_t task, float lo, float hi) {
  lo = block_all_reduce(lo, MinOp{}, FLT_MAX);
  hi = block_all_reduce(hi, MaxOp{}, -FLT_MAX);
  if (threadIdx.x == 0) {
    minmax[task * 2] = lo;
    minmax[task * 2 + 1] = hi;
  }
}

}  // namespace medmix
