// Every medmix operator schema, and nothing else. Implementations register per backend in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fake kernels and autograd in medmix_ops/ops/<op>.py.
#include <torch/library.h>

TORCH_LIBRARY(medmix, m) {
  // gaussian_blend: alpha = GaussianBlur(mask, sigma[b]); out = alpha * a + (1 - alpha) * b;
  // lam[b] = mean(alpha). max_radius >= ceil(3 * max(sigma)) sizes the kernels' scratch.
  // alpha is returned as [B, 1, H, W] when return_alpha, else as an empty tensor.
  m.def(
      "gaussian_blend(Tensor a, Tensor b, Tensor mask, Tensor sigma, int max_radius, "
      "bool return_alpha) -> (Tensor out, Tensor lam, Tensor alpha)");
  m.def(
      "gaussian_blend_backward(Tensor grad_out, Tensor mask, Tensor sigma, int max_radius) "
      "-> (Tensor grad_a, Tensor grad_b)");
}
