// Standalone C++ check of the CPU kernels through the dispatcher, with no Python: built and run
// by `make cmake`. Expected values come from the definition, computed here independently.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <vector>

namespace {

int failures = 0;

void expect_near(double got, double want, double tol, const char* what) {
  if (!(std::fabs(got - want) <= tol)) {
    std::printf("FAIL %s: got %.9g, want %.9g\n", what, got, want);
    ++failures;
  }
}

// F.pad(mode="reflect") index, periodic beyond one reflection.
int64_t reflect(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t p = 2 * (n - 1);
  i = ((i % p) + p) % p;
  return i < n ? i : p - i;
}

// The blurred mask by the definition, in double: 2-D sum of separable taps.
std::vector<double> blur(const std::vector<double>& m, int64_t H, int64_t W, double sigma) {
  const int r = static_cast<int>(std::ceil(3.0 * sigma));
  std::vector<double> w(2 * r + 1);
  double norm = 0;
  for (int t = -r; t <= r; ++t) norm += w[t + r] = sigma > 0 ? std::exp(-t * t / (2 * sigma * sigma)) : 1.0;
  for (auto& v : w) v /= norm;
  std::vector<double> out(H * W, 0.0);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t x = 0; x < W; ++x)
      for (int dy = -r; dy <= r; ++dy)
        for (int dx = -r; dx <= r; ++dx)
          out[h * W + x] += w[dy + r] * w[dx + r] * m[reflect(h + dy, H) * W + reflect(x + dx, W)];
  return out;
}

}  // namespace

int main() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("medmix::gaussian_blend", "")
                .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                    int64_t, bool, const std::optional<at::Tensor>&)>();
  const int64_t B = 2, C = 3, H = 7, W = 5;  // H, W smaller than the radius of sigma = 2.5
  const float sigma = 2.5f;
  torch::manual_seed(0);
  auto a = torch::rand({B, C, H, W});
  auto b = torch::rand({B, C, H, W});
  auto mask = (torch::rand({B, 1, H, W}) > 0.5).to(torch::kFloat);
  auto sig = torch::full({B}, sigma);
  auto [out, lam, alpha] = op.call(a, b, mask, sig, 8, true, std::nullopt);

  for (int64_t n = 0; n < B; ++n) {
    std::vector<double> m(H * W);
    for (int64_t i = 0; i < H * W; ++i) m[i] = mask[n][0].flatten()[i].item<double>();
    const auto want = blur(m, H, W, sigma);
    double mean = 0;
    for (int64_t i = 0; i < H * W; ++i) {
      const double al = want[i];
      mean += al / (H * W);
      expect_near(alpha[n][0].flatten()[i].item<double>(), al, 1e-5, "alpha");
      for (int64_t c = 0; c < C; ++c) {
        const double x = al * a[n][c].flatten()[i].item<double>() +
                         (1 - al) * b[n][c].flatten()[i].item<double>();
        expect_near(out[n][c].flatten()[i].item<double>(), x, 1e-5, "out");
      }
    }
    expect_near(lam[n].item<double>(), mean, 1e-6, "lam");
  }
  // sigma = 0 copies pixels exactly.
  auto [hard, hard_lam, unused] = op.call(a, b, mask, torch::zeros({B}), 0, false, std::nullopt);
  if (!torch::equal(hard, torch::where(mask.to(torch::kBool), a, b))) {
    std::printf("FAIL sigma=0 is not an exact copy\n");
    ++failures;
  }
  // b_index: partner rows gathered inside the kernel equal gathering first.
  const auto rows = torch::tensor({1, 0}, torch::kLong);
  auto [gathered, g_lam, g_alpha] = op.call(a, b, mask, sig, 8, false, rows);
  auto [direct, d_lam, d_alpha] = op.call(a, b.index_select(0, rows), mask, sig, 8, false, std::nullopt);
  if (!torch::equal(gathered, direct)) {
    std::printf("FAIL b_index differs from gathering the rows first\n");
    ++failures;
  }
  std::printf("%s: medmix::gaussian_blend CPU kernel, %d failure(s)\n",
              failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
