// Block-wide reductions for the CUDA kernels (warp shuffles, then one warp over the warps).
#pragma once

#include <cuda_runtime.h>

namespace medmix {

struct SumOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
struct MinOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return b < a ? b : a; }
};
struct MaxOp {
  template <typename T>
  __device__ T operator()(T a, T b) const { return b > a ? b : a; }
};

template <typename T, typename Op>
__device__ T warp_reduce(T v, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Every thread of the block gets the reduction of its v. All threads must call it.
template <typename T, typename Op>
__device__ T block_all_reduce(T v, Op op, T identity) {
  __shared__ T partial[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_reduce(v, op);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int warps = (blockDim.x + 31) >> 5;
    T r = lane < warps ? partial[lane] : identity;
    r = warp_reduce(r, op);
    if (lane == 0) partial[0] = r;
  }
  __syncthreads();
  const T r = partial[0];
  __syncthreads();  // partial[] may be reused by the next call
  return r;
}

}  // namespace medmix
