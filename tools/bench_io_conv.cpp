// rpucuda's analog convolution alone, in C++ (no Python, no torch): the Conv2d case of
// tools/bench_layers.py (AnalogConv2d(16, 32, 3, padding=1), input 32x16x32x32, the default
// InferenceRPUConfig forward IO: 7-bit DAC, 9-bit ADC, output noise 0.06, noise management
// ABS_MAX, bound management ITERATIVE), for profiling (perf record) and A/B comparisons of
// io_conv builds.  Built and run by tools/bench_io_conv.sh.
//
//   bench_io_conv [calls=400] [threads=2] [batch=32]
//
// Prints the median and the fastest call (ms).  Inputs are uniform in [0, 1), weights uniform
// in [-0.1, 0.1) (fixed seed).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "io_conv.h"
#include "threading.h"

int main(int argc, char **argv) {
  const int calls = argc > 1 ? std::atoi(argv[1]) : 400;
  const int threads = argc > 2 ? std::atoi(argv[2]) : 2;
  const int batch = argc > 3 ? std::atoi(argv[3]) : 32;
  if (calls < 1 || threads < 1 || batch < 1) {
    std::fprintf(stderr, "usage: bench_io_conv [calls >= 1] [threads >= 1] [batch >= 1]\n");
    return 2;
  }
  const int C = 16, M = 32, H = 32, Wd = 32, K = C * 9;
  rpu::ConvShape s;
  const int64_t in[2] = {H, Wd}, kernel[2] = {3, 3}, stride[2] = {1, 1}, pad[2] = {1, 1}, dil[2] = {1, 1};
  const std::string err = rpu::conv_shape(2, batch, C, in, kernel, stride, pad, dil, &s);
  if (!err.empty()) {
    std::fprintf(stderr, "%s\n", err.c_str());
    return 2;
  }
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> ux(0.0f, 1.0f), uw(-0.1f, 0.1f);
  std::vector<float> W((size_t)M * K), X((size_t)batch * C * H * Wd), Y((size_t)batch * M * s.out_volume());
  for (float &w : W) w = uw(gen);
  for (float &x : X) x = ux(gen);
  rpu::IOParameters io;  // (the defaults are InferenceRPUConfig's forward)
  rpu::MappingParameter map;
  rpu::set_num_threads(threads);
  std::vector<double> ms;
  for (int it = 0; it < calls; ++it) {
    const rpu::MVMCall rng{1, (uint64_t)it};
    const auto t0 = std::chrono::steady_clock::now();
    bool nonfinite = false;
    rpu::io_conv(W.data(), M, K, X.data(), s, false, Y.data(), rpu::ConvOutputLayout::channels(M, s.out_volume()), io,
                 map, true, nullptr, 0, nullptr, rng, &nonfinite);
    ms.push_back(1e3 * std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  std::printf("io_conv %dx%dx%dx%d -> %d channels, %d threads: median %.3f ms, fastest %.3f ms (%d calls)\n", batch, C,
              H, Wd, M, threads, ms[ms.size() / 2], ms[0], calls);
  return 0;
}
