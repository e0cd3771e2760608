// Host emulation of the layout kernels of the onnxruntime CUDA kernels (rpucuda/cuda/im2col.cu,
// nonfinite.cu): runs their per-element functions (rpucuda/cuda/im2col_kernels.h) for every
// element, as the CUDA grid-stride loops do, on arrays given as raw float32 files.
// tests/test_ort_cuda.py compares the results with aihw_deploy.nn.modules.conv.im2col and numpy.
//
// Usage:
//   im2col N C c0 Cg S0 S1 S2 K0 K1 K2 st0 st1 st2 p0 p1 p2 d0 d1 d2 L0 L1 L2 X.bin cols.bin
//   rows_to_channels N L Mg M m0 rows.bin bias.bin|- Y.bin   (Y.bin is read and rewritten)
//   nonfinite X.bin                                          (prints 0, 1 (NaN) or 2 (Inf))
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "im2col_kernels.h"

namespace {

std::vector<float> load(const char *path) {
  std::vector<float> v;
  FILE *f = std::fopen(path, "rb");
  if (!f) {
    std::fprintf(stderr, "cannot open %s\n", path);
    std::exit(2);
  }
  float buf[4096];
  size_t n;
  while ((n = std::fread(buf, sizeof(float), 4096, f)) > 0) v.insert(v.end(), buf, buf + n);
  std::fclose(f);
  return v;
}

void save(const char *path, const std::vector<float> &v) {
  FILE *f = std::fopen(path, "wb");
  if (!f || std::fwrite(v.data(), sizeof(float), v.size(), f) != v.size()) {
    std::fprintf(stderr, "cannot write %s\n", path);
    std::exit(2);
  }
  std::fclose(f);
}

int64_t arg(char **argv, int i) { return std::strtoll(argv[i], nullptr, 10); }

}  // namespace

int main(int argc, char **argv) {
  using namespace rpu::cuda;
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "im2col" && argc == 26) {
    const int64_t N = arg(argv, 2), C = arg(argv, 3), c0 = arg(argv, 4), Cg = arg(argv, 5);
    Im2colShape sh;
    for (int j = 0; j < 3; ++j) {
      sh.S[j] = arg(argv, 6 + j);
      sh.K[j] = arg(argv, 9 + j);
      sh.stride[j] = arg(argv, 12 + j);
      sh.pad[j] = arg(argv, 15 + j);
      sh.dil[j] = arg(argv, 18 + j);
      sh.L[j] = arg(argv, 21 + j);
    }
    const std::vector<float> X = load(argv[24]);
    const int64_t Lt = sh.L[0] * sh.L[1] * sh.L[2], Kg = Cg * sh.K[0] * sh.K[1] * sh.K[2];
    if ((int64_t)X.size() != N * C * sh.S[0] * sh.S[1] * sh.S[2]) {
      std::fprintf(stderr, "X has %zu values\n", X.size());
      return 2;
    }
    std::vector<float> cols((size_t)(N * Lt * Kg));
    for (int64_t i = 0; i < (int64_t)cols.size(); ++i)
      cols[i] = layout::im2col_element(X.data(), C, c0, sh, Lt, Kg, i);
    save(argv[25], cols);
    return 0;
  }
  if (mode == "rows_to_channels" && argc == 10) {
    const int64_t N = arg(argv, 2), L = arg(argv, 3), Mg = arg(argv, 4), M = arg(argv, 5), m0 = arg(argv, 6);
    const std::vector<float> rows = load(argv[7]);
    const bool has_bias = std::string(argv[8]) != "-";
    const std::vector<float> bias = has_bias ? load(argv[8]) : std::vector<float>();
    std::vector<float> Y = load(argv[9]);
    if ((int64_t)rows.size() != N * L * Mg || (int64_t)Y.size() != N * M * L ||
        (has_bias && (int64_t)bias.size() != M)) {
      std::fprintf(stderr, "sizes do not match\n");
      return 2;
    }
    for (int64_t i = 0; i < N * Mg * L; ++i) {
      int64_t y;
      const float *b = has_bias ? bias.data() : nullptr;
      const float v = layout::rows_to_channels_element(rows.data(), L, Mg, M, m0, b, i, &y);
      Y[(size_t)y] = v;
    }
    save(argv[9], Y);
    return 0;
  }
  if (mode == "nonfinite" && argc == 3) {
    const std::vector<float> x = load(argv[2]);
    int f = 0;
    for (float v : x) f |= layout::nonfinite_flag(v);
    std::printf("%d\n", (f & 1) ? 1 : (f & 2) ? 2 : 0);  // nonfinite_kind's combination
    return 0;
  }
  std::fprintf(stderr, "usage: see the head of %s\n", __FILE__);
  return 2;
}
