// A CPU emulation of the parts of the CUDA execution model that csrc/cuda uses, so that the
// CUDA kernels' own code (indexing, tiling, reductions, barriers, shuffles, launch sizes) runs
// and is tested on a machine without a GPU. Test-only: python_tests/cuda_emu/build.py rewrites
// csrc/cuda/*.cu into plain C++ that includes this header, and registers the result as the
// CPU kernels of the torch.ops.medmix_cuda_emu namespace.
//
// Model: the blocks of a launch run one after another (in order, reversed or strided: see
// Runtime::launch_order); the threads of a block run as cooperative fibers switched at
// __syncthreads and __shfl_xor_sync only, in one of three orders (see Schedule), so a run is
// deterministic. What a GPU would reject or leave
// undefined is an error here instead of a silent pass:
//   - a launch with 0 blocks or threads, more than 1024 threads, more threads than the
//     kernel's __launch_bounds__, or more than 48 KiB of shared memory (no opt-in);
//   - __syncthreads reached from different call sites by the threads of one block (divergent
//     barriers), or a barrier that can never complete;
//   - __shfl_xor_sync with a full mask in a warp that is not fully populated, or from
//     different call sites within a warp;
//   - writes beyond either end of a shared-memory array (guard bytes checked after each block).
// Shared memory starts each block filled with 0xFF bytes (a NaN in every float, -1 in every
// integer), so a read of shared memory that no thread wrote shows up in the results.
// Global memory is the CPU tensors' memory: built with -fsanitize=address (`make
// test-cuda-asan`), AddressSanitizer checks every access the kernels make, like
// compute-sanitizer's memcheck.
// Not modelled: true concurrency (a race shows only where one of the schedules exposes it),
// warp-synchronous code without shuffles, streams, the CUDA compiler, speed.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)  // `make test-cuda-asan`: global memory checked by ASan
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define MEDMIX_EMU_ASAN 1
#endif

#include <c10/core/Device.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

namespace medmix_emu {

constexpr size_t kGuard = 64;                 // guard bytes on each side of a shared array
constexpr unsigned char kPoison = 0xFF;       // fresh shared memory
constexpr unsigned char kGuardByte = 0xA5;
constexpr size_t kStackBytes = 256 * 1024;    // per fiber (the kernels' frames are small)
constexpr size_t kMaxSharedBytes = 48 * 1024;  // without cudaFuncSetAttribute opt-in
constexpr unsigned kMaxThreads = 1024;

// Switching between fibers. On x86-64 a six-register switch (the callee-saved registers, the
// SSE and x87 control words), as in Boost.Context: glibc's swapcontext also saves the signal
// mask with a system call on every switch, which made the emulation twice as slow. Other
// machines use ucontext.
#if defined(__x86_64__)
extern "C" void medmix_emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .weak medmix_emu_switch
  .type medmix_emu_switch, @function
medmix_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  fnstcw (%rsp)
  stmxcsr 8(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size medmix_emu_switch, .-medmix_emu_switch
)");

struct Context {
  void* sp = nullptr;
};

inline void switch_context(Context& from, const Context& to) { medmix_emu_switch(&from.sp, to.sp); }

// A fresh context whose first switch "returns" into entry, which must never return.
inline void make_context(Context& c, void* stack, size_t size, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(static_cast<char*>(stack) + size) & ~uintptr_t(15);
  auto* slot = reinterpret_cast<uint64_t*>(top);
  *--slot = 0;                                    // entry's own return address: none
  *--slot = reinterpret_cast<uint64_t>(entry);    // popped by ret
  for (int r = 0; r < 6; ++r) *--slot = 0;        // rbp rbx r12 r13 r14 r15
  slot -= 2;
  uint16_t fpu_cw;
  asm volatile("fnstcw %0" : "=m"(fpu_cw));
  std::memcpy(slot, &fpu_cw, sizeof(fpu_cw));
  const uint32_t mxcsr = __builtin_ia32_stmxcsr();  // the caller's modes (e.g. flush-to-zero)
  std::memcpy(reinterpret_cast<char*>(slot) + 8, &mxcsr, sizeof(mxcsr));
  c.sp = slot;
}
#else
struct Context {
  ucontext_t uc;
};

inline void switch_context(Context& from, const Context& to) { swapcontext(&from.uc, &to.uc); }

inline void make_context(Context& c, void* stack, size_t size, void (*entry)()) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
#endif

struct Barrier {
  int64_t arrived = 0;
  uint64_t generation = 0;
  const char* file = nullptr;
  int line = 0;
};

struct SharedArray {
  uint64_t block_serial = 0;
  std::vector<unsigned char> bytes;  // guard | array | guard
  size_t size = 0;
};

struct Fiber {
  Context ctx;
  bool done = false;
  const Barrier* waiting_on = nullptr;  // runnable again once its generation moves on
  uint64_t waiting_generation = 0;
};

// Which waiting thread runs next. Each order hides some missing barriers and shows others
// (round robin lets every thread read before a fast one overwrites; lowest / highest first
// let one end of the block run ahead), so the blocks of a launch take turns: block k runs
// under kSchedules[k % 3].
enum class Schedule { kRoundRobin, kLowestFirst, kHighestFirst };
constexpr Schedule kSchedules[] = {Schedule::kRoundRobin, Schedule::kLowestFirst,
                                   Schedule::kHighestFirst};

struct Runtime {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
  uint64_t block_serial = 0;  // distinct for every block ever run
  std::vector<Fiber> fibers;
  std::vector<void*> stacks;
  Context scheduler;
  const void* scheduler_stack = nullptr;  // (for AddressSanitizer)
  size_t scheduler_stack_size = 0;
  int current = -1;
  int64_t live = 0;
  Barrier block_barrier;
  std::vector<Barrier> warp_barrier;
  std::vector<int64_t> warp_live, warp_size;
  std::vector<uint64_t> shuffle_slot;
  SharedArray dynamic_shared;
  std::unordered_map<const void*, SharedArray> static_shared;
  const std::function<void()>* body = nullptr;
  std::exception_ptr error;
  // Which order the blocks of a launch run in, and which schedule each gets (run_grid): 0 in
  // order, 1 reversed, 2 strided. A kernel whose blocks race on global memory (one reading
  // what another writes) or whose result depends on thread order gives different bits under
  // different orders; a GPU promises neither order.
  int launch_order = 0;
};

inline Runtime rt;

// The switches between the scheduler and a fiber, announced to AddressSanitizer when it is
// on (it must know which stack is current to handle exceptions thrown inside a fiber).
inline void resume_fiber(int t) {
#ifdef MEDMIX_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, static_cast<char*>(rt.stacks[t]) + 4096, kStackBytes);
#endif
  switch_context(rt.scheduler, rt.fibers[t].ctx);
#ifdef MEDMIX_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

inline void fiber_started() {
#ifdef MEDMIX_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &rt.scheduler_stack, &rt.scheduler_stack_size);
#endif
}

// From the running fiber back to the scheduler; a finished fiber is never resumed.
inline void suspend_fiber(bool finished) {
  Fiber& self = rt.fibers[rt.current];
#ifdef MEDMIX_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(finished ? nullptr : &fake, rt.scheduler_stack, rt.scheduler_stack_size);
#endif
  switch_context(self.ctx, rt.scheduler);
#ifdef MEDMIX_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &rt.scheduler_stack, &rt.scheduler_stack_size);
#endif
  (void)finished;
}

[[noreturn]] inline void fail(const std::string& what) {
  throw std::runtime_error("CUDA emulation: " + what);
}

inline std::string where(const char* file, int line) {
  const char* slash = file ? std::strrchr(file, '/') : nullptr;
  return std::string(slash ? slash + 1 : (file ? file : "?")) + ":" + std::to_string(line);
}

inline void release_if_complete(Barrier& b, int64_t participants) {
  if (b.arrived > 0 && b.arrived >= participants) {
    b.arrived = 0;
    ++b.generation;
  }
}

// Inside a fiber: wait at b with the other participants (the threads still running).
inline void arrive_and_wait(Barrier& b, int64_t participants, const char* what, const char* file,
                            int line) {
  if (b.arrived == 0) {
    b.file = file;
    b.line = line;
  } else if (b.line != line || (b.file != file && std::strcmp(b.file, file) != 0)) {
    fail(std::string("divergent ") + what + ": thread " + std::to_string(rt.thread_idx.x) +
         " of block " + std::to_string(rt.block_idx.x) + " waits at " + where(file, line) +
         " while others wait at " + where(b.file, b.line));
  }
  Fiber& self = rt.fibers[rt.current];
  self.waiting_on = &b;
  self.waiting_generation = b.generation;
  ++b.arrived;
  release_if_complete(b, participants);
  // Always hand control back, even when this arrival completed the barrier: the schedule
  // decides who runs next.
  suspend_fiber(false);
  self.waiting_on = nullptr;
}

inline bool runnable(const Fiber& f) {
  return !f.done && (f.waiting_on == nullptr || f.waiting_on->generation != f.waiting_generation);
}

inline int next_thread(Schedule schedule, int last) {
  const int n = static_cast<int>(rt.fibers.size());
  switch (schedule) {
    case Schedule::kRoundRobin:
      for (int k = 1; k <= n; ++k)
        if (runnable(rt.fibers[(last + k) % n])) return (last + k) % n;
      return -1;
    case Schedule::kLowestFirst:
      for (int t = 0; t < n; ++t)
        if (runnable(rt.fibers[t])) return t;
      return -1;
    case Schedule::kHighestFirst:
      for (int t = n - 1; t >= 0; --t)
        if (runnable(rt.fibers[t])) return t;
      return -1;
  }
  return -1;
}

inline void fill_array(SharedArray& a, size_t size) {
  a.size = size;
  a.bytes.assign(size + 2 * kGuard, kGuardByte);
  std::memset(a.bytes.data() + kGuard, kPoison, size);
}

inline void check_guards(const SharedArray& a, const char* what) {
  if (a.bytes.empty()) return;
  for (size_t k = 0; k < kGuard; ++k) {
    if (a.bytes[k] != kGuardByte || a.bytes[kGuard + a.size + k] != kGuardByte)
      fail(std::string("block ") + std::to_string(rt.block_idx.x) + " wrote outside its " + what +
           " shared memory (" + std::to_string(a.size) + " bytes)");
  }
}

[[noreturn]] inline void fiber_entry() {
  fiber_started();
  try {
    (*rt.body)();
  } catch (...) {
    if (!rt.error) rt.error = std::current_exception();
  }
  // This thread exits: barriers wait for the threads that are still running (sm_70 and later).
  Fiber& self = rt.fibers[rt.current];
  self.done = true;
  --rt.live;
  const int64_t w = rt.thread_idx.x / 32;
  --rt.warp_live[w];
  release_if_complete(rt.block_barrier, rt.live);
  release_if_complete(rt.warp_barrier[w], rt.warp_live[w]);
  suspend_fiber(true);  // never resumed
  __builtin_trap();
}

inline void ensure_stacks(size_t n) {
  while (rt.stacks.size() < n) {
    // A guard page below each stack: an overflow faults instead of corrupting a neighbour.
    void* p = mmap(nullptr, kStackBytes + 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) fail("cannot map a fiber stack");
    mprotect(p, 4096, PROT_NONE);
    rt.stacks.push_back(p);
  }
}

inline void run_block(unsigned threads, Schedule schedule) {
  ++rt.block_serial;
  rt.fibers.assign(threads, Fiber{});
  ensure_stacks(threads);
  rt.live = threads;
  rt.block_barrier = Barrier{};
  const unsigned warps = (threads + 31) / 32;
  rt.warp_barrier.assign(warps, Barrier{});
  rt.warp_live.assign(warps, 0);
  rt.warp_size.assign(warps, 0);
  for (unsigned t = 0; t < threads; ++t) ++rt.warp_size[t / 32], ++rt.warp_live[t / 32];
  rt.shuffle_slot.assign(warps * 32, 0);
  if (rt.dynamic_shared.size > 0) fill_array(rt.dynamic_shared, rt.dynamic_shared.size);
  for (unsigned t = 0; t < threads; ++t) {
    char* stack = static_cast<char*>(rt.stacks[t]) + 4096;
#ifdef MEDMIX_EMU_ASAN
    // A finished fiber never returns from fiber_entry: its frames' redzones stay poisoned.
    ASAN_UNPOISON_MEMORY_REGION(stack, kStackBytes);
#endif
    make_context(rt.fibers[t].ctx, stack, kStackBytes, fiber_entry);
  }
  int t = static_cast<int>(threads) - 1;  // round robin starts at thread 0
  while (rt.live > 0) {
    t = next_thread(schedule, t);
    if (t < 0) {
      const Barrier& b = rt.block_barrier;
      fail("block " + std::to_string(rt.block_idx.x) + ": " + std::to_string(rt.live) +
           " threads wait at a barrier that can never complete (__syncthreads last reached at " +
           where(b.file, b.line) + ")");
    }
    rt.current = t;
    rt.thread_idx.x = static_cast<unsigned>(t);
    resume_fiber(t);
    if (rt.error) std::rethrow_exception(rt.error);
  }
  check_guards(rt.dynamic_shared, "dynamic");
  for (const auto& kv : rt.static_shared)
    if (kv.second.block_serial == rt.block_serial) check_guards(kv.second, "static");
}

inline void run_grid(int64_t grid, int64_t block, int64_t smem, const std::function<void()>& body) {
  // CUDA takes dim3 (unsigned) sizes: a 64-bit count is truncated exactly as nvcc would.
  const unsigned g = static_cast<unsigned>(grid), t = static_cast<unsigned>(block);
  if (grid <= 0 || g == 0 || g > 0x7fffffffu)
    fail("invalid configuration argument: grid of " + std::to_string(grid) + " blocks");
  if (block <= 0 || t > kMaxThreads)
    fail("invalid configuration argument: block of " + std::to_string(block) + " threads");
  if (smem < 0 || static_cast<size_t>(smem) > kMaxSharedBytes)
    fail("too much dynamic shared memory: " + std::to_string(smem) + " bytes");
  rt.grid_dim = dim3{g, 1, 1};
  rt.block_dim = dim3{t, 1, 1};
  rt.dynamic_shared = SharedArray{};
  rt.dynamic_shared.size = static_cast<size_t>(smem);
  rt.body = &body;
  rt.error = nullptr;
  // order 2: block (k * stride) mod g, with stride coprime to g, so every block runs once
  unsigned stride = g / 2 + 1;
  while (std::gcd(stride, g) != 1) ++stride;
  for (unsigned k = 0; k < g; ++k) {
    const unsigned bx = rt.launch_order == 1   ? g - 1 - k
                        : rt.launch_order == 2 ? static_cast<unsigned>((uint64_t(k) * stride) % g)
                                               : k;
    rt.block_idx.x = bx;
    run_block(t, kSchedules[(bx + static_cast<unsigned>(rt.launch_order)) % 3]);
  }
}

// `kernel<<<grid, block, smem, stream>>>(args...)` becomes `launch(grid, block, smem, stream,
// kernel)(args...)`: the arguments are copied once, as CUDA copies kernel parameters.
template <typename Kernel>
struct Launch {
  int64_t grid, block, smem;
  Kernel* kernel;
  template <typename... Args>
  void operator()(Args... args) const {
    const std::function<void()> body = [&] { kernel(args...); };
    try {
      run_grid(grid, block, smem, body);
    } catch (const std::exception& e) {
      TORCH_CHECK(false, e.what());
    }
  }
};

template <typename G, typename B, typename S, typename Stream, typename Kernel>
Launch<Kernel> launch(G grid, B block, S smem, const Stream&, Kernel* kernel) {
  return Launch<Kernel>{static_cast<int64_t>(grid), static_cast<int64_t>(block),
                        static_cast<int64_t>(smem), kernel};
}

// First statement of every kernel declared with __launch_bounds__(max_threads, ...) (build.py):
// a block larger than the bound is a launch a GPU refuses (the kernel's registers were
// allotted for max_threads; "too many resources requested for launch").
inline void check_launch_bounds(int64_t max_threads, int64_t /*min_blocks*/ = 0,
                                int64_t /*max_cluster*/ = 0) {
  const int64_t t = int64_t(rt.block_dim.x) * rt.block_dim.y * rt.block_dim.z;
  if (t > max_threads)
    fail("too many resources requested for launch: a block of " + std::to_string(t) +
         " threads, over the kernel's __launch_bounds__(" + std::to_string(max_threads) + ")");
}

inline unsigned char* dynamic_shared() {
  return rt.dynamic_shared.bytes.data() + kGuard;
}

// `__shared__ T name[N];` becomes a reference to a per-block array keyed by a static tag.
template <typename Array>
Array& static_shared(const void* key) {
  SharedArray& a = rt.static_shared[key];
  if (a.block_serial != rt.block_serial) {  // first use in this block
    fill_array(a, sizeof(Array));
    a.block_serial = rt.block_serial;
  }
  return *reinterpret_cast<Array*>(a.bytes.data() + kGuard);
}

}  // namespace medmix_emu

#define threadIdx (::medmix_emu::rt.thread_idx)
#define blockIdx (::medmix_emu::rt.block_idx)
#define blockDim (::medmix_emu::rt.block_dim)
#define gridDim (::medmix_emu::rt.grid_dim)

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace medmix_emu;
  arrive_and_wait(rt.block_barrier, rt.live, "__syncthreads", file, line);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  using namespace medmix_emu;
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>);
  const unsigned tid = rt.thread_idx.x, w = tid / 32, lane = tid % 32;
  if (width != 32 || lane_mask < 0 || lane_mask > 31) fail("unsupported __shfl_xor_sync width / lane mask");
  if (mask == 0xffffffffu && (rt.warp_size[w] != 32 || rt.warp_live[w] != 32))
    fail("__shfl_xor_sync with a full mask in warp " + std::to_string(w) + " of block " +
         std::to_string(rt.block_idx.x) + ", which has " + std::to_string(rt.warp_live[w]) +
         " running threads (undefined on a GPU)");
  if (mask != 0xffffffffu) fail("only full-mask shuffles are emulated");
  std::memcpy(&rt.shuffle_slot[tid], &v, sizeof(T));
  arrive_and_wait(rt.warp_barrier[w], rt.warp_live[w], "__shfl_xor_sync", file, line);
  T r;
  std::memcpy(&r, &rt.shuffle_slot[w * 32 + (lane ^ static_cast<unsigned>(lane_mask))], sizeof(T));
  arrive_and_wait(rt.warp_barrier[w], rt.warp_live[w], "__shfl_xor_sync", file, line);
  return r;
}

// Fibers only switch at barriers, so a read-modify-write is atomic here.
template <typename T>
T atomicAdd(T* address, T v) {
  const T old = *address;
  *address = old + v;
  return old;
}

// CUDA's device min / max overloads (mixed integer widths promote).
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  using T = std::common_type_t<A, B>;
  return static_cast<T>(b) < static_cast<T>(a) ? static_cast<T>(b) : static_cast<T>(a);
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  using T = std::common_type_t<A, B>;
  return static_cast<T>(b) > static_cast<T>(a) ? static_cast<T>(b) : static_cast<T>(a);
}

// Host-side stand-ins for c10/cuda (the emulated kernels run on CPU tensors).
namespace c10::cuda {
struct CUDAGuard {
  explicit CUDAGuard(c10::Device) {}
};
struct CUDAStream {};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex = -1) { return {}; }
}  // namespace c10::cuda
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)
