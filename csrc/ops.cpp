// Every medmix operator schema, and nothing else. Implementations register per backend in
// csrc/cpu/<op>.cpp and csrc/cuda/<op>.cu; fake kernels and autograd in medmix_ops/ops/<op>.py.
// These are the building blocks; the public, validated API is medmix_ops.ops.
#include <torch/library.h>

TORCH_LIBRARY(medmix, m) {
  // ---- gaussian_blend (DESIGN.md op 4) ----
  // alpha = GaussianBlur(mask, sigma[i]); out[i] = alpha * a[i] + (1 - alpha) * b[j] with
  // j = b_index[i] when b_index (int64 [B], values in [0, b.size(0))) is given, else j = i: the
  // partner rows are gathered inside the kernel. lam[i] = mean(alpha). max_radius >=
  // ceil(3 * max(sigma)) sizes the kernels' scratch. alpha is returned as [B, 1, H, W] when
  // return_alpha, else as an empty tensor.
  m.def(
      "gaussian_blend(Tensor a, Tensor b, Tensor mask, Tensor sigma, int max_radius, "
      "bool return_alpha, Tensor? b_index=None) -> (Tensor out, Tensor lam, Tensor alpha)");
  // The same, written into a caller's out: a's shape, dtype and device, any strides, sharing
  // no memory with a or b (the CPU path's recycled large outputs, medmix_ops/ops/_recycle.py).
  m.def(
      "gaussian_blend_out(Tensor a, Tensor b, Tensor mask, Tensor sigma, int max_radius, "
      "bool return_alpha, Tensor? b_index, Tensor(a!) out) -> (Tensor lam, Tensor alpha)");
  m.def(
      "gaussian_blend_backward(Tensor grad_out, Tensor mask, Tensor sigma, int max_radius) "
      "-> (Tensor grad_a, Tensor grad_b)");

  // ---- saliency (DESIGN.md op 1) ----
  // Per sample: v = source(src) at every pixel of its h x w grid (src_mode: 0 sum_c w[b,c] x,
  // 1 relu(sum_c w[b,c] x), 2 max_c |x|, 3 sum_c |x|, 4 |complex| of src [B, h, w, 2]);
  // separable filter with taps [T] (reflect border); squared if square; bilinear resize to
  // (out_h, out_w); min-max normalised if normalize (a flat map, range <= 1e-5 of its
  // magnitude, gives 0); samples with gate[b] false (when gate is non-empty) are all zeros.
  // quantize rounds (half to even) the source values and, without normalize, the output:
  // OpenCV's 8-bit intermediates for uint8 images. Returns float32 out [B, 1, out_h, out_w] and
  // bool flat [B]: whether the map was flat before normalisation.
  m.def(
      "saliency_map(Tensor src, int src_mode, Tensor weights, Tensor taps, bool square, "
      "int out_h, int out_w, bool normalize, bool quantize, Tensor gate) "
      "-> (Tensor out, Tensor flat)");
  // Spectral residual of a float32 [B, h, w, 2] spectrum: log amplitude minus its 3x3 box mean
  // (reflect border), exponentiated, with the original phase.
  m.def("spectral_residual_filter(Tensor spec) -> Tensor");
  // Fine-grained saliency of the smoothed grey map [B, 1, H, W], from its float64 integral image
  // (each backend builds its own: one argument that cannot disagree with grey): centre-surround
  // on / off contrast summed over the window half-sizes in scales, on / max(on) + off / max(off),
  // min-max normalised. float32 [B, 1, H, W]; samples with gate[b] false (when gate is
  // non-empty) are all zeros (a flat grey map: its contrast is rounding noise).
  m.def("fine_grained_saliency(Tensor grey, int[] scales, Tensor gate) -> Tensor");

  // ---- patch_ratio_pool (DESIGN.md op 2) ----
  // Average of both [B, 1, H, W] maps per patch (edge patches partial when pad):
  // pooled [B, 2, gh, gw] and per cell-row (min_a, max_a, min_b, max_b) partials [B, gh, 4].
  m.def("patch_pool(Tensor s_a, Tensor s_b, int patch, bool pad) -> (Tensor pooled, Tensor minmax)");
  // ratios [B, gh, gw] = min(alpha, max(level_a, level_b)), level = normalised / 2 + 0.5;
  // mean [B].
  m.def("patch_ratio(Tensor pooled, Tensor minmax, float alpha) -> (Tensor ratios, Tensor mean)");

  // ---- absolute difference map (DESIGN.md op 3) ----
  // Per (sample, 4096-pixel chunk) min and max of |x_hat - x| over channels: [B, chunks, 2].
  m.def("adm_minmax(Tensor x, Tensor x_hat) -> Tensor");
  // A = mean_c((|x_hat - x| - m) / (M - m)), with an empty mask where M - m is flat (<= 1e-5 M);
  // out [B, 1, H, W] float32 is
  // A >= thr[b] as 0/1 (or A itself when emit_score); count [B, chunks] int32 of mask pixels.
  m.def(
      "adm_apply(Tensor x, Tensor x_hat, Tensor minmax, Tensor thr, bool emit_score) "
      "-> (Tensor out, Tensor count)");
  // int32 [B, 256] histogram of A over [0, 1] (for Otsu thresholds).
  m.def("adm_histogram(Tensor x, Tensor x_hat, Tensor minmax) -> Tensor");
  // VariMix bidirectional mix with K = A >= lam[b]: x_src = K x + (1 - K) x[perm],
  // the range (m, M) of each sample's A computed inside (no minmax argument that could
  // disagree with x / x_hat; the CPU kernel takes a sample's range and mix while it is cached),
  // x_ref = K x[perm] + (1 - K) x, written into one [2B, C, H, W] tensor `mixed` (rows [0, B)
  // x_src, rows [B, 2B) x_ref: VariMix's output batch, with no concatenation copy) in x's
  // memory format; count [B, chunks] int32 of K pixels; mask = K as float32 [B, 1, H, W] when
  // write_mask, else an empty tensor.
  m.def(
      "adm_mix(Tensor x, Tensor x_hat, Tensor perm, Tensor lam, bool write_mask) "
      "-> (Tensor mixed, Tensor count, Tensor mask)");
  // adm_mix into a caller's [2B, C, H, W] tensor (any strides, no memory shared with x or
  // x_hat): reusing one output buffer saves the page faults of a fresh one on every batch.
  m.def(
      "adm_mix_out(Tensor x, Tensor x_hat, Tensor perm, Tensor lam, bool write_mask, "
      "Tensor(a!) mixed) -> (Tensor count, Tensor mask)");
}
