// gaussian_blend on CUDA. One block = one kTileW x kRows tile of one sample. Per output row the
// block blurs the mask vertically into shared memory (tile plus a radius-wide halo each side),
// then each thread blurs horizontally from shared memory and blends all C channels of its pixel.
// lam: one partial sum per block into a [B, tiles] buffer, summed by torch afterwards
// (deterministic, no atomics). The blurred mask is only written when return_alpha is set.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <tuple>

#include "../common/gaussian_blend.h"
#include "../common/gaussian_blend_args.h"
#include "../common/gaussian_taps.h"
#include "../common/pixel.h"
#include "../common/strides.h"
#include "block_reduce.cuh"

namespace medmix {
namespace {

constexpr int kTileW = 128;  // threads per block, one output column each
constexpr int kRows = 8;     // output rows per block: the taps are computed once per 8 rows

struct TileGrid {
  int64_t tiles_w, tiles_h;
  __host__ __device__ int64_t tiles() const { return tiles_w * tiles_h; }
};

// Walks the tile's rows; calls consume(bi, h, w, alpha) for each in-range pixel and returns
// this thread's sum of alpha. Shared memory: taps[2R+1], col[kTileW + 2R].
template <typename acc_t, typename Consume>
__device__ acc_t for_each_alpha_in_tile(const acc_t* __restrict__ mask,
                                        const float* __restrict__ sigma, int64_t H, int64_t W,
                                        int max_radius, TileGrid grid, int64_t& bi,
                                        acc_t* smem, const Consume& consume) {
  const int64_t tile = blockIdx.x % grid.tiles();
  bi = blockIdx.x / grid.tiles();
  const int64_t h0 = (tile / grid.tiles_w) * kRows;
  const int64_t w0 = (tile % grid.tiles_w) * kTileW;
  // Clamp keeps shared memory in bounds if a direct op call passes too small a max_radius.
  const int r = min(gaussian_radius(sigma[bi]), max_radius);
  acc_t* taps = smem;
  acc_t* col = smem + 2 * max_radius + 1;
  if (threadIdx.x == 0) gaussian_taps<acc_t>(sigma[bi], r, taps);
  __syncthreads();

  const acc_t* mb = mask + bi * H * W;
  const int64_t w = w0 + threadIdx.x;
  acc_t sum = 0;
  const int64_t h_end = min(h0 + kRows, H);
  for (int64_t h = h0; h < h_end; ++h) {
    for (int j = threadIdx.x; j < kTileW + 2 * r; j += kTileW) {
      const int64_t wc = reflect_index(w0 - r + j, W);
      acc_t v = 0;
      for (int dy = -r; dy <= r; ++dy) v += taps[dy + r] * mb[reflect_index(h + dy, H) * W + wc];
      col[j] = v;
    }
    __syncthreads();
    if (w < W) {
      acc_t alpha = 0;
      for (int dx = -r; dx <= r; ++dx) alpha += taps[dx + r] * col[threadIdx.x + r + dx];
      if (r > 0) alpha = at_most_one(alpha);  // (sigma = 0: the mask as given)
      consume(h, w, alpha);
      sum += alpha;
    }
    __syncthreads();
  }
  return sum;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileW)
    gaussian_blend_forward_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                  const acc_t* __restrict__ mask,
                                  const float* __restrict__ sigma, scalar_t* __restrict__ out,
                                  acc_t* __restrict__ alpha_out, acc_t* __restrict__ partial,
                                  const int64_t* __restrict__ b_rows, int64_t Bb,
                                  int64_t C, int64_t H, int64_t W, Strides4 sa, Strides4 sb,
                                  Strides4 so, int max_radius, TileGrid grid) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  int64_t bi = 0;
  const acc_t sum = for_each_alpha_in_tile<acc_t>(
      mask, sigma, H, W, max_radius, grid, bi, smem, [&](int64_t h, int64_t w, acc_t alpha) {
        const scalar_t* pa = a + bi * sa.n + h * sa.h + w * sa.w;
        // partner row: clamped, so a bad index can never read outside b
        const int64_t bj = b_rows ? min(max(b_rows[bi], int64_t(0)), Bb - 1) : bi;
        const scalar_t* pb = b + bj * sb.n + h * sb.h + w * sb.w;
        scalar_t* po = out + bi * so.n + h * so.h + w * so.w;
        // Under a weight of exactly 0 or 1 only the image taken is read (blend_pixel selects
        // there and never looks at the other): a warp inside or outside a box (CutMix,
        // SaliencyMix) issues half the loads.
        const bool need_a = alpha != acc_t(0), need_b = alpha != acc_t(1);
        for (int64_t c = 0; c < C; ++c) {
          const acc_t va = need_a ? load_as<acc_t>(pa[c * sa.c]) : acc_t(0);
          const acc_t vb = need_b ? load_as<acc_t>(pb[c * sb.c]) : acc_t(0);
          po[c * so.c] = store_as<scalar_t>(blend_pixel<acc_t>(alpha, va, vb));
        }
        if (alpha_out != nullptr) alpha_out[(bi * H + h) * W + w] = alpha;
      });
  const acc_t total = block_all_reduce(sum, SumOp{}, acc_t(0));
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kTileW)
    gaussian_blend_backward_kernel(const scalar_t* __restrict__ grad_out,
                                   const acc_t* __restrict__ mask,
                                   const float* __restrict__ sigma,
                                   scalar_t* __restrict__ grad_a, scalar_t* __restrict__ grad_b,
                                   int64_t C, int64_t H, int64_t W, Strides4 sg, Strides4 sa,
                                   Strides4 sb, int max_radius, TileGrid grid) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  int64_t bi = 0;
  for_each_alpha_in_tile<acc_t>(
      mask, sigma, H, W, max_radius, grid, bi, smem, [&](int64_t h, int64_t w, acc_t alpha) {
        for (int64_t c = 0; c < C; ++c) {
          acc_t ga, gb;
          blend_pixel_grad<acc_t>(
              alpha, load_as<acc_t>(grad_out[bi * sg.n + c * sg.c + h * sg.h + w * sg.w]), &ga,
              &gb);
          grad_a[bi * sa.n + c * sa.c + h * sa.h + w * sa.w] = store_as<scalar_t>(ga);
          grad_b[bi * sb.n + c * sb.c + h * sb.h + w * sb.w] = store_as<scalar_t>(gb);
        }
      });
}

TileGrid tile_grid(int64_t H, int64_t W) {
  return {(W + kTileW - 1) / kTileW, (H + kRows - 1) / kRows};
}

size_t shared_bytes(int64_t max_radius, size_t elem) {
  return (2 * max_radius + 1 + kTileW + 2 * max_radius) * elem;
}

void check_launch_size(int64_t blocks, size_t smem, const char* op) {
  TORCH_CHECK(blocks <= 0x7fffffffLL, op, ": too many tiles (", blocks, ") for one launch");
  // 48 KiB is available on every supported arch without opting in; it fits radii up to ~6000.
  TORCH_CHECK(smem <= 48 * 1024, op, ": sigma too large for the CUDA kernel (needs ", smem,
              " bytes of shared memory)");
}

std::tuple<at::Tensor, at::Tensor> gaussian_blend_out_cuda(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask, const at::Tensor& sigma,
    int64_t max_radius, bool return_alpha, const c10::optional<at::Tensor>& b_index, at::Tensor& out) {
  check_gaussian_blend_args(a, b, mask, sigma, max_radius, b_index);
  check_gaussian_blend_out(a, b, out);
  const at::Tensor rows = b_index.has_value() ? b_index->contiguous() : at::Tensor();
  TORCH_CHECK(a.is_cuda(), "medmix::gaussian_blend (CUDA kernel) got a ", a.device(), " tensor");
  const c10::cuda::CUDAGuard guard(a.device());
  const auto acc = opmath_dtype(a.scalar_type());
  const int64_t B = a.size(0), C = a.size(1), H = a.size(2), W = a.size(3);
  auto alpha = return_alpha ? at::empty({B, 1, H, W}, a.options().dtype(acc))
                            : at::empty({0}, a.options().dtype(acc));
  if (a.numel() == 0) return {at::zeros({B}, a.options().dtype(acc)), alpha};
  const auto mask_c = mask.contiguous();
  const auto sigma_c = sigma.contiguous();
  const TileGrid grid = tile_grid(H, W);
  const int64_t blocks = B * grid.tiles();
  auto partial = at::empty({B, grid.tiles()}, a.options().dtype(acc));
  const size_t smem = shared_bytes(max_radius, acc == at::kDouble ? 8 : 4);
  check_launch_size(blocks, smem, "medmix::gaussian_blend");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND3(
      at::kHalf, at::kBFloat16, at::kByte, a.scalar_type(), "gaussian_blend_cuda", [&] {
        using acc_t = acc_type_t<scalar_t>;
        gaussian_blend_forward_kernel<scalar_t, acc_t><<<blocks, kTileW, smem, stream>>>(
            a.const_data_ptr<scalar_t>(), b.const_data_ptr<scalar_t>(),
            mask_c.const_data_ptr<acc_t>(), sigma_c.const_data_ptr<float>(),
            out.mutable_data_ptr<scalar_t>(),
            return_alpha ? alpha.mutable_data_ptr<acc_t>() : nullptr,
            partial.mutable_data_ptr<acc_t>(),
            rows.defined() ? rows.const_data_ptr<int64_t>() : nullptr, b.size(0), C, H, W,
            strides_of(a), strides_of(b),
            strides_of(out), static_cast<int>(max_radius), grid);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  auto lam = partial.sum(1).div_(static_cast<double>(H * W));
  return {lam, alpha};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gaussian_blend_cuda(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& mask, const at::Tensor& sigma,
    int64_t max_radius, bool return_alpha, const c10::optional<at::Tensor>& b_index) {
  return gaussian_blend_into_new(a, b, mask, sigma, max_radius, return_alpha, b_index,
                                 gaussian_blend_out_cuda);
}

std::tuple<at::Tensor, at::Tensor> gaussian_blend_backward_cuda(const at::Tensor& grad_out,
                                                                const at::Tensor& mask,
                                                                const at::Tensor& sigma,
                                                                int64_t max_radius) {
  check_gaussian_blend_backward_args(grad_out, mask, sigma, max_radius);
  TORCH_CHECK(grad_out.is_cuda(), "medmix::gaussian_blend_backward (CUDA kernel) got a ",
              grad_out.device(), " tensor");
  const c10::cuda::CUDAGuard guard(grad_out.device());
  auto grad_a = at::empty_like(grad_out);
  auto grad_b = at::empty_like(grad_out);
  if (grad_out.numel() == 0) return {grad_a, grad_b};
  const int64_t B = grad_out.size(0), C = grad_out.size(1), H = grad_out.size(2),
                W = grad_out.size(3);
  const auto mask_c = mask.contiguous();
  const auto sigma_c = sigma.contiguous();
  const TileGrid grid = tile_grid(H, W);
  const int64_t blocks = B * grid.tiles();
  const bool dbl = grad_out.scalar_type() == at::kDouble;
  const size_t smem = shared_bytes(max_radius, dbl ? 8 : 4);
  check_launch_size(blocks, smem, "medmix::gaussian_blend_backward");
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_out.scalar_type(), "gaussian_blend_backward_cuda", [&] {
        using acc_t = acc_type_t<scalar_t>;
        gaussian_blend_backward_kernel<scalar_t, acc_t><<<blocks, kTileW, smem, stream>>>(
            grad_out.const_data_ptr<scalar_t>(), mask_c.const_data_ptr<acc_t>(),
            sigma_c.const_data_ptr<float>(), grad_a.mutable_data_ptr<scalar_t>(),
            grad_b.mutable_data_ptr<scalar_t>(), C, H, W, strides_of(grad_out),
            strides_of(grad_a), strides_of(grad_b), static_cast<int>(max_radius), grid);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(medmix, CUDA, m) {
  m.impl("gaussian_blend", &gaussian_blend_cuda);
  m.impl("gaussian_blend_out", &gaussian_blend_out_cuda);
  m.impl("gaussian_blend_backward", &gaussian_blend_backward_cuda);
}

}  // namespace medmix
