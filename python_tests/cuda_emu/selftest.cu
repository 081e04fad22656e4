// Kernels with known bugs (and their fixed twins) that the CUDA emulation must catch:
// test_cuda_emulation.py runs them through torch.ops.medmix_cuda_emu_selftest.run(case, x).
// Rewritten and compiled like csrc/cuda/*.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <string>

namespace {

// out[b, i] = x[b, n - 1 - i] through shared memory. Without the barrier a thread reads a
// slot another thread has not written yet (a poisoned NaN, or a stale value).
__global__ void reverse_kernel(const float* x, float* out, int n, bool barrier) {
  __shared__ float tile[256];
  const int i = threadIdx.x;
  tile[i] = x[blockIdx.x * n + i];
  if (barrier) __syncthreads();
  out[blockIdx.x * n + i] = tile[n - 1 - i];
}

// Two reversals through one tile: without the middle barrier a fast thread overwrites its
// slot before a slow one has read it (write after read).
__global__ void reverse_twice_kernel(const float* x, float* out, int n, bool middle_barrier) {
  __shared__ float tile[256];
  const int i = threadIdx.x;
  tile[i] = x[blockIdx.x * n + i];
  __syncthreads();
  const float first = tile[n - 1 - i];
  if (middle_barrier) __syncthreads();
  tile[i] = 2.f * first;
  __syncthreads();
  out[blockIdx.x * n + i] = tile[n - 1 - i];
}

// Reads shared memory nobody wrote.
__global__ void uninitialised_kernel(float* out, int n) {
  __shared__ float tile[256];
  out[blockIdx.x * n + threadIdx.x] = tile[threadIdx.x];
}

// Half of the block waits at one barrier, half at another.
__global__ void divergent_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

// A full-mask shuffle in a block of 48 threads: the second warp has 16 lanes.
__global__ void partial_warp_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

// Sums each warp with shuffles: a correct use, so the check above is not always on.
__global__ void warp_sum_kernel(const float* x, float* out) {
  float v = x[blockIdx.x * blockDim.x + threadIdx.x];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// Writes one element past its dynamic shared memory.
__global__ void overflow_kernel(float* out, int n) {
  extern __shared__ float smem[];
  smem[threadIdx.x + 1] = 1.f;
  __syncthreads();
  out[threadIdx.x] = smem[threadIdx.x];
}

__global__ void count_kernel(int* count) { atomicAdd(count, 1); }

// Compiled for blocks of at most 64 threads.
__global__ void __launch_bounds__(64)
    bounded_kernel(float* out) {
  out[threadIdx.x] = 1.f;
}

// Block b adds 1 to what block b - 1 wrote: a race between blocks (a GPU runs them in any
// order, or at once), invisible when the blocks run in order.
__global__ void chain_kernel(float* out) {
  const int b = blockIdx.x;
  if (threadIdx.x == 0) out[b] = (b == 0 ? 0.f : out[b - 1]) + 1.f;
}

// Reads one element past the end of x (global memory): only AddressSanitizer sees it
// (`make test-cuda-asan`; test_cuda_emulation.py runs it in a child process).
__global__ void out_of_bounds_kernel(const float* x, float* out, int n) {
  const int64_t i = blockIdx.x * n + threadIdx.x;
  out[i] = x[i + 1];
}

at::Tensor run(const std::string& which, const at::Tensor& x_in) {
  const at::Tensor x = x_in.contiguous();
  auto out = at::zeros_like(x);
  const int blocks = static_cast<int>(x.size(0)), n = static_cast<int>(x.size(1));
  const float* px = x.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  const auto stream = c10::cuda::getCurrentCUDAStream();
  if (which == "reverse" || which == "reverse_no_barrier") {
    reverse_kernel<<<blocks, n, 0, stream>>>(px, po, n, which == "reverse");
  } else if (which == "reverse_twice" || which == "reverse_twice_no_middle_barrier") {
    reverse_twice_kernel<<<blocks, n, 0, stream>>>(px, po, n, which == "reverse_twice");
  } else if (which == "uninitialised") {
    uninitialised_kernel<<<blocks, n, 0, stream>>>(po, n);
  } else if (which == "divergent") {
    divergent_kernel<<<1, 32, 0, stream>>>(po);
  } else if (which == "partial_warp") {
    partial_warp_kernel<<<1, 48, 0, stream>>>(po);
  } else if (which == "warp_sum") {
    warp_sum_kernel<<<blocks, n, 0, stream>>>(px, po);
  } else if (which == "overflow") {
    overflow_kernel<<<1, n, n * sizeof(float), stream>>>(po, n);
  } else if (which == "fits") {
    overflow_kernel<<<1, n, (n + 1) * sizeof(float), stream>>>(po, n);
  } else if (which == "empty_grid") {
    reverse_kernel<<<0, n, 0, stream>>>(px, po, n, true);
  } else if (which == "too_many_threads") {
    reverse_kernel<<<1, 2048, 0, stream>>>(px, po, n, true);
  } else if (which == "too_much_shared") {
    overflow_kernel<<<1, n, 64 * 1024, stream>>>(po, n);
  } else if (which == "chain") {
    chain_kernel<<<blocks, 32, 0, stream>>>(po);
  } else if (which == "within_launch_bounds") {
    bounded_kernel<<<1, 64, 0, stream>>>(po);
  } else if (which == "over_launch_bounds") {
    bounded_kernel<<<1, 128, 0, stream>>>(po);
  } else if (which == "out_of_bounds") {
    out_of_bounds_kernel<<<blocks, n, 0, stream>>>(px, po, n);
  } else if (which == "count") {
    auto count = at::zeros({1}, x.options().dtype(at::kInt));
    count_kernel<<<blocks, n, 0, stream>>>(count.mutable_data_ptr<int>());
    return count.to(at::kFloat);
  } else {
    TORCH_CHECK(false, "unknown self-test case ", which);
  }
  return out;
}

}  // namespace

// Sets the emulator's launch order (cuda_emu.h, Runtime::launch_order); returns the previous.
int64_t set_launch_order(int64_t order) {
  TORCH_CHECK(order >= 0 && order <= 2, "launch order must be 0, 1 or 2, got ", order);
  const int64_t before = ::medmix_emu::rt.launch_order;
  ::medmix_emu::rt.launch_order = static_cast<int>(order);
  return before;
}

TORCH_LIBRARY(medmix_cuda_emu_selftest, m) {
  m.def("run(str which, Tensor x) -> Tensor", &run);
  m.def("set_launch_order(int order) -> int", &set_launch_order);
}
