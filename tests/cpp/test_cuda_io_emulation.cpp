// Host emulation of the CUDA twins of the IO pipeline and of the PCM inference model.
//
// The twins' kernels are RPU_HD structs and their sequence is a driver templated on an "exec"
// (rpucuda/cuda/twin_grid.h).  Here a host exec plays the grid: the blocks in a shuffled order,
// each with a few emulated threads (partials, then the combined reduction, then finish), scratch
// memory filled with NaN/-1 garbage, and the analog product of rpucuda/analog_gemm.h instead of
// cuBLAS.  With the same product the twin must reproduce the CPU functions bit for bit: every
// random-number index, tile layout, quantization and bound-management decision is checked.
// (On a GPU the product is cuBLAS, whose summation order differs: tests/test_cuda_io.py.)
//
// Usage: test_cuda_io_emulation [io|pcm|all]; prints one line per check, exit status 1 if any
// check failed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "analog_gemm.h"
#include "inference_kernels.h"
#include "inference_noise.h"
#include "io_pipeline.h"
#include "io_pipeline_kernels.h"
#include "threading.h"

// threading.cpp sets the BLAS to one thread; this program links no BLAS.
namespace rpu {
void blas_set_single_threaded() {}
}  // namespace rpu

namespace {

using namespace rpu;

struct HostExec {
  int T;  // emulated threads per block
  std::mt19937_64 order_rng;
  std::map<std::string, int> launches;  // kernel name -> number of launches
  int gemms = 0;
  explicit HostExec(int threads, uint64_t seed = 1) : T(threads), order_rng(seed) {}

  template <typename U>
  struct Buf {
    std::vector<U> v;
    Buf(HostExec &, size_t n) : v(n) {
      if (n) std::memset(static_cast<void *>(v.data()), 0xFF, n * sizeof(U));  // garbage: NaN / -1
    }
    U *get() const { return v.empty() ? nullptr : const_cast<U *>(v.data()); }
  };

  template <class K>
  void launch(const K &k, int64_t nblk, int /*threads*/) {
    launches[K::kName]++;
    std::vector<int64_t> order(nblk);
    for (int64_t b = 0; b < nblk; ++b) order[b] = b;
    std::shuffle(order.begin(), order.end(), order_rng);
    std::vector<typename K::Red> part(T);
    for (int64_t blk : order) {
      for (int t = 0; t < T; ++t) part[t] = k.partial(blk, nblk, t, T);
      if constexpr (K::kReduce) {
        // combine in a shuffled order too (the GPU uses a tree)
        std::vector<int> ts(T);
        for (int t = 0; t < T; ++t) ts[t] = t;
        std::shuffle(ts.begin(), ts.end(), order_rng);
        typename K::Red all = part[ts[0]];
        for (int t = 1; t < T; ++t) all = K::Red::combine(all, part[ts[t]]);
        for (int t = 0; t < T; ++t) k.finish(blk, nblk, t, T, all);
      }
    }
  }
  void gemm(bool transposed, int m, int n, int k, const float *X, int ldx, const float *Wt, int ldw, float *C,
            int ldc) {
    ++gemms;
    analog_gemm(transposed, m, n, k, X, ldx, Wt, ldw, C, ldc);
  }
  void memset0(void *p, size_t bytes) {
    if (bytes) std::memset(p, 0, bytes);
  }
  void copy_to_host(void *dst, const void *src, size_t bytes) {
    if (bytes) std::memcpy(dst, src, bytes);
  }
  void copy_to_device(void *dst, const void *src, size_t bytes) {
    if (bytes) std::memcpy(dst, src, bytes);
  }
};

int g_failed = 0, g_checks = 0;

uint32_t bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

// Bitwise comparison (NaN payloads aside); prints the first differences.
bool same_bits(const char *what, const float *a, const float *b, size_t n) {
  size_t bad = 0, first = n;
  for (size_t i = 0; i < n; ++i) {
    const bool eq = (a[i] != a[i] && b[i] != b[i]) || bits(a[i]) == bits(b[i]);
    if (!eq) {
      if (first == n) first = i;
      ++bad;
    }
  }
  if (bad) {
    std::printf("  %s: %zu of %zu differ; first at %zu: cpu %.9g twin %.9g\n", what, bad, n, first, a[first],
                b[first]);
  }
  return bad == 0;
}

void report(const std::string &name, bool ok, const std::string &note = "") {
  ++g_checks;
  if (!ok) ++g_failed;
  std::printf("%s %s%s%s\n", ok ? "OK  " : "FAIL", name.c_str(), note.empty() ? "" : "  ", note.c_str());
  std::fflush(stdout);
}

// ---- IO pipeline --------------------------------------------------------------------------------------

struct IOCase {
  std::string name;
  int M, K, N;
  bool transposed = false;
  IOParameters io;
  MappingParameter map;
  bool bm = true;
  int alpha = 0;  // 0 none, 1 scalar, 2 per output
  size_t slab_bytes = twin::kIOSlabBytes;
  int threads = 3;
  float x_scale = 1.0f, w_scale = 1.0f;
  bool zero_rows = true, nan_row = false;
  bool one_hot_int = false;   // integer weights, one-hot inputs: outputs exactly at out_bound
  bool expect_redo = false;   // bound management must redo some rows
  bool expect_slabs = false;  // several slabs of rows
};

void run_io_case(const IOCase &c, uint64_t seed) {
  const int out = c.transposed ? c.K : c.M, in = c.transposed ? c.M : c.K;
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> W((size_t)c.M * c.K), X((size_t)c.N * in), alpha(c.alpha == 2 ? out : 1);
  for (float &w : W) w = c.w_scale * nd(g);
  for (float &x : X) x = c.x_scale * nd(g);
  if (c.zero_rows && c.N > 2) std::fill(X.begin() + (size_t)1 * in, X.begin() + (size_t)2 * in, 0.0f);
  if (c.zero_rows && c.N > 4 && in > 3)  // a row that is zero only in its first input chunk
    std::fill(X.begin() + (size_t)3 * in, X.begin() + (size_t)3 * in + std::min(in, c.map.max_input_size), 0.0f);
  if (c.nan_row && c.N > 5) X[(size_t)5 * in + in / 2] = NAN;
  if (c.one_hot_int) {
    for (float &w : W) w = (float)((int)(g() % 7) - 3);
    std::fill(X.begin(), X.end(), 0.0f);
    for (int n = 0; n < c.N; ++n) X[(size_t)n * in + n % in] = 1.0f;
  }
  for (float &a : alpha) a = 0.5f + std::fabs(nd(g));
  const float *ap = c.alpha ? alpha.data() : nullptr;
  const int na = c.alpha == 2 ? out : (c.alpha ? 1 : 0);
  const MVMCall call{seed * 7 + 3, seed % 5};

  std::vector<float> y_cpu((size_t)c.N * out, -7.0f), y_twin((size_t)c.N * out, -7.0f);
  io_mvm(W.data(), c.M, c.K, c.transposed, X.data(), c.N, y_cpu.data(), c.io, c.map, c.bm, ap, na, call);
  HostExec ex(c.threads, seed);
  twin::io_mvm_run(ex, W.data(), c.M, c.K, c.transposed, X.data(), c.N, y_twin.data(), c.io, c.map, c.bm, ap, na,
                   call, c.slab_bytes);

  bool ok = same_bits("Y", y_cpu.data(), y_twin.data(), y_cpu.size());
  const int redo = ex.launches["io_mvm: bound-management DAC"];
  const int slabs = ex.launches["io_mvm: noise management and DAC"];
  char note[160];
  std::snprintf(note, sizeof note, "(redo iterations %d, slabs %d, gemms %d)", redo, slabs, ex.gemms);
  if (c.expect_redo && redo == 0) {
    std::printf("  expected bound management to redo some rows\n");
    ok = false;
  }
  if (c.expect_slabs && slabs < 2) {
    std::printf("  expected several slabs\n");
    ok = false;
  }
  // The outputs must not be trivially zero (a broken case would compare equal too).
  size_t nonzero = 0;
  for (float v : y_cpu) nonzero += v != 0.0f;
  if (nonzero < y_cpu.size() / 4) {
    std::printf("  only %zu of %zu outputs are non-zero: the case tests little\n", nonzero, y_cpu.size());
    ok = false;
  }
  report("io " + c.name + " seed " + std::to_string(seed), ok, note);
}

std::vector<IOCase> io_cases() {
  std::vector<IOCase> cs;
  auto base = [](const std::string &name) {
    IOCase c;
    c.name = name;
    c.M = 37;
    c.K = 45;
    c.N = 11;
    c.map.max_input_size = 16;
    c.map.max_output_size = 12;
    return c;
  };
  {  // the SPEC defaults, several tiles, outputs that saturate
    IOCase c = base("defaults_tiled_bm");
    c.io.out_bound = 3.0f;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("transposed_bm");
    c.transposed = true;
    c.io.out_bound = 3.0f;
    c.alpha = 2;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("worst_case_bm");
    c.io.bound_management = BoundManagementType::IterativeWorstCase;
    c.io.out_bound = 3.0f;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("worst_case_bm_transposed_no_inp_res");
    c.transposed = true;
    c.io.bound_management = BoundManagementType::IterativeWorstCase;
    c.io.inp_res = 0.0f;
    c.io.max_bm_factor = 64.0f;
    c.io.out_bound = 2.0f;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {  // per-tile DAC noise: input noise and stochastic rounding of both converters
    IOCase c = base("sto_round_inp_noise_bm");
    c.io.inp_sto_round = true;
    c.io.out_sto_round = true;
    c.io.inp_noise = 0.05f;
    c.io.out_bound = 3.0f;
    c.alpha = 1;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("sto_round_transposed");
    c.transposed = true;
    c.io.inp_sto_round = true;
    c.io.out_sto_round = true;
    c.io.inp_noise = 0.02f;
    cs.push_back(c);
  }
  {
    IOCase c = base("w_noise_additive");
    c.io.w_noise = 0.1f;
    c.io.w_noise_type = WeightNoiseType::AdditiveConstant;
    c.io.out_bound = 4.0f;
    cs.push_back(c);
  }
  {
    IOCase c = base("w_noise_pcm_worst_case");
    c.io.w_noise = 0.05f;
    c.io.w_noise_type = WeightNoiseType::PCMRead;
    c.io.bound_management = BoundManagementType::IterativeWorstCase;
    c.io.out_bound = 3.0f;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("nm_max");
    c.io.noise_management = NoiseManagementType::Max;
    c.io.out_bound = 4.0f;
    cs.push_back(c);
  }
  {
    IOCase c = base("nm_average_abs_max_thres");
    c.io.noise_management = NoiseManagementType::AverageAbsMax;
    c.io.nm_thres = 2.0f;
    c.x_scale = 1.5f;
    c.io.out_bound = 4.0f;
    cs.push_back(c);
  }
  {
    IOCase c = base("nm_average_abs_max_slabs");
    c.io.noise_management = NoiseManagementType::AverageAbsMax;
    c.io.out_bound = 3.0f;
    c.N = 23;
    c.slab_bytes = 4000;  // a few rows per slab
    c.expect_slabs = true;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("nm_constant");
    c.io.noise_management = NoiseManagementType::Constant;
    c.io.nm_thres = 3.0f;
    c.x_scale = 2.0f;
    c.io.out_bound = 3.0f;
    cs.push_back(c);
  }
  {
    IOCase c = base("nm_none_abs_max_thres");
    c.io.noise_management = NoiseManagementType::None;
    c.x_scale = 0.5f;
    cs.push_back(c);
  }
  {
    IOCase c = base("abs_max_nm_thres");
    c.io.nm_thres = 0.7f;
    c.io.out_bound = 3.0f;
    cs.push_back(c);
  }
  {  // HWA preset: 8-bit converters, constant NM, no BM, PCM read noise, out_scale and alpha
    IOCase c = base("hwa_preset");
    c.io.inp_res = 1.0f / 254;
    c.io.out_res = 1.0f / 254;
    c.io.out_bound = 10.0f;
    c.io.out_noise = 0.04f;
    c.io.w_noise = 0.0175f;
    c.io.w_noise_type = WeightNoiseType::PCMRead;
    c.io.noise_management = NoiseManagementType::Constant;
    c.io.bound_management = BoundManagementType::None;
    c.io.out_scale = 1.75f;
    c.alpha = 2;
    c.w_scale = 0.3f;
    cs.push_back(c);
  }
  {
    IOCase c = base("no_bm_flag");  // bound_management=false at the call
    c.io.out_bound = 3.0f;
    c.bm = false;
    cs.push_back(c);
  }
  {
    IOCase c = base("unbounded_unquantized_noise_free");
    c.io.out_bound = 0.0f;
    c.io.out_noise = 0.0f;
    c.io.inp_res = 0.0f;
    c.io.out_res = -1.0f;
    cs.push_back(c);
  }
  {
    IOCase c = base("res_as_steps");
    c.io.inp_res = 30.0f;
    c.io.out_res = 100.0f;
    c.io.out_bound = 3.0f;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("single_tile_bm");  // one input chunk: shares written straight to Y
    c.map.max_input_size = 512;
    c.map.max_output_size = 512;
    c.io.out_bound = 6.0f;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("single_tile_slabs_out_scale");
    c.map.max_input_size = 64;
    c.map.max_output_size = 20;
    c.N = 30;
    c.io.out_bound = 6.0f;
    c.io.out_scale = -0.5f;
    c.slab_bytes = 2000;
    c.expect_slabs = true;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("nan_row");
    c.nan_row = true;
    c.io.out_bound = 3.0f;
    cs.push_back(c);
  }
  {
    IOCase c = base("tile_size_one_column");
    c.M = 9;
    c.K = 7;
    c.map.max_input_size = 1;
    c.map.max_output_size = 4;
    c.io.out_bound = 1.5f;
    c.zero_rows = false;
    cs.push_back(c);
  }
  {  // saturation is |y| >= out_bound: outputs exactly at the bound are redone
    IOCase c = base("outputs_exactly_at_bound");
    c.one_hot_int = true;
    c.zero_rows = false;
    c.M = 6;
    c.K = 8;
    c.N = 8;
    c.map.max_output_size = 1;
    c.map.max_input_size = 3;
    c.io.out_noise = 0.0f;
    c.io.out_bound = 2.0f;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("single_row");
    c.N = 1;
    c.M = 5;
    c.K = 3;
    c.zero_rows = false;
    c.io.out_bound = 1.0f;
    cs.push_back(c);
  }
  {
    IOCase c = base("many_rows_slabs_transposed_bm");
    c.transposed = true;
    c.N = 300;
    c.M = 20;
    c.K = 30;
    c.map.max_input_size = 8;
    c.map.max_output_size = 8;
    c.io.out_bound = 2.0f;
    c.io.inp_noise = 0.01f;
    c.slab_bytes = 20000;
    c.expect_slabs = true;
    c.expect_redo = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("perfect");
    c.io.is_perfect = true;
    c.io.out_scale = 2.5f;
    c.alpha = 2;
    cs.push_back(c);
  }
  {
    IOCase c = base("perfect_transposed");
    c.io.is_perfect = true;
    c.transposed = true;
    cs.push_back(c);
  }
  {
    IOCase c = base("one_thread_per_block");
    c.threads = 1;
    c.io.out_bound = 3.0f;
    c.io.inp_noise = 0.01f;
    cs.push_back(c);
  }
  {
    IOCase c = base("many_threads_per_block");
    c.threads = 64;
    c.io.out_bound = 3.0f;
    c.io.out_sto_round = true;
    cs.push_back(c);
  }
  return cs;
}

// ---- PCM ----------------------------------------------------------------------------------------------

struct DevChip {  // the twin's chip in "device" memory (here: host vectors)
  std::vector<float> gp, gm, np, nm;
  cuda::ProgrammedView view;
  DevChip(int M, int K) : gp((size_t)M * K), gm(gp.size()), np(gp.size()), nm(gp.size()) {
    view.M = M;
    view.K = K;
    view.g_plus = gp.data();
    view.g_minus = gm.data();
    view.nu_plus = np.data();
    view.nu_minus = nm.data();
  }
};

void run_pcm(uint64_t seed) {
  const int M = 19, K = 27;
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> W((size_t)M * K);
  for (float &w : W) w = 0.3f * nd(g);
  W[5] = 0.0f;  // unused devices at g_min on both sides
  const std::string sfx = " seed " + std::to_string(seed);

  std::vector<PCMNoiseParameters> params(3);
  params[1].g_min = 0.5f;
  params[1].g_max = 20.0f;
  params[1].drift_scale = 0.5f;
  params[2].read_noise_scale = 0.0f;
  params[2].prog_noise_scale = 2.0f;

  for (size_t pi = 0; pi < params.size(); ++pi) {
    const PCMNoiseParameters &p = params[pi];
    const std::string tag = " params " + std::to_string(pi) + sfx;
    ProgrammedWeights cpu;
    pcm_program(W.data(), M, K, p, seed, cpu);
    HostExec ex(3, seed);
    DevChip chip(M, K);
    const float scale = twin::pcm_program_run(ex, W.data(), M, K, p, seed, chip.view);
    bool ok = bits(scale) == bits(cpu.scale) && bits(chip.view.scale) == bits(cpu.scale);
    ok &= same_bits("g_plus", cpu.g_plus.data(), chip.gp.data(), chip.gp.size());
    ok &= same_bits("g_minus", cpu.g_minus.data(), chip.gm.data(), chip.gm.size());
    ok &= same_bits("nu_plus", cpu.nu_plus.data(), chip.np.data(), chip.np.size());
    ok &= same_bits("nu_minus", cpu.nu_minus.data(), chip.nm.data(), chip.nm.size());
    report("pcm_program" + tag, ok);

    std::vector<float> w_cpu((size_t)M * K), w_twin((size_t)M * K);
    pcm_programmed_weights(cpu, w_cpu.data());
    twin::pcm_programmed_weights_run(ex, chip.view, w_twin.data());
    report("pcm_programmed_weights" + tag, same_bits("W", w_cpu.data(), w_twin.data(), w_cpu.size()));

    for (double t : {0.0, 1.0, 3600.0, 31536000.0})
      for (uint64_t call : {0ull, 1ull, 7ull}) {
        pcm_weights_at(cpu, p, t, seed + 11, call, w_cpu.data());
        twin::pcm_weights_at_run(ex, chip.view, p, t, seed + 11, call, w_twin.data());
        char nm[96];
        std::snprintf(nm, sizeof nm, "pcm_weights_at t=%g call=%llu", t, (unsigned long long)call);
        report(nm + tag, same_bits("W", w_cpu.data(), w_twin.data(), w_cpu.size()));
      }

    // Drift compensation read-out and the chip conventions, with a tiled, noisy periphery.
    IOParameters io;
    io.out_bound = 4.0f;
    MappingParameter map;
    map.max_input_size = 10;
    map.max_output_size = 8;
    for (DriftCompensationType type : {DriftCompensationType::Global, DriftCompensationType::PerColumn}) {
      const bool per_col = type == DriftCompensationType::PerColumn;
      const std::string tt = per_col ? " per_column" : " global";
      const int nref = per_col ? M : 1;
      std::vector<float> r_cpu(nref, -1.0f), r_twin(nref, -2.0f);
      pcm_programmed_weights(cpu, w_cpu.data());
      drift_readout(w_cpu.data(), M, K, io, map, type, MVMCall{seed, 3}, r_cpu.data());
      twin::drift_readout_run(ex, w_cpu.data(), M, K, io, map, type, MVMCall{seed, 3}, r_twin.data(), 3000);
      // Global: the CPU sums all |y| serially in double, the twin per column then over columns;
      // the float results agree to double rounding (in practice bit for bit).
      auto close = [&](const char *what) {
        bool good = true;
        for (int i = 0; i < nref; ++i)
          if (per_col ? bits(r_cpu[i]) != bits(r_twin[i]) : std::fabs(r_cpu[i] - r_twin[i]) > 1e-6f * r_cpu[i]) {
            std::printf("  %s[%d]: cpu %.9g twin %.9g\n", what, i, r_cpu[i], r_twin[i]);
            good = false;
          }
        return good;
      };
      report("drift_readout" + tt + tag, close("ref"));

      chip_reference(cpu, p, seed + 11, io, map, type, seed + 5, r_cpu.data());
      twin::chip_reference_run(ex, chip.view, p, seed + 11, io, map, type, seed + 5, r_twin.data(), 3000);
      report("chip_reference" + tt + tag, close("ref"));

      std::vector<float> a_cpu(nref), a_twin(nref);
      chip_at(cpu, p, 86400.0, seed + 11, io, map, type, seed + 5, r_cpu.data(), w_cpu.data(), a_cpu.data());
      twin::chip_at_run(ex, chip.view, p, 86400.0, seed + 11, io, map, type, seed + 5, r_cpu.data(), w_twin.data(),
                        a_twin.data(), 3000);
      bool ok2 = same_bits("W", w_cpu.data(), w_twin.data(), w_cpu.size());
      for (int i = 0; i < nref; ++i)
        if (per_col ? bits(a_cpu[i]) != bits(a_twin[i]) : std::fabs(a_cpu[i] - a_twin[i]) > 1e-6f * a_cpu[i]) {
          std::printf("  alpha[%d]: cpu %.9g twin %.9g\n", i, a_cpu[i], a_twin[i]);
          ok2 = false;
        }
      report("chip_at" + tt + tag, ok2);
    }
  }

  // A zero matrix programs to scale 1 with every device at g_min.
  {
    std::vector<float> Z((size_t)M * K, 0.0f);
    ProgrammedWeights cpu;
    PCMNoiseParameters p;
    pcm_program(Z.data(), M, K, p, seed, cpu);
    HostExec ex(2, seed);
    DevChip chip(M, K);
    const float scale = twin::pcm_program_run(ex, Z.data(), M, K, p, seed, chip.view);
    bool ok = scale == 1.0f && cpu.scale == 1.0f;
    ok &= same_bits("g_plus", cpu.g_plus.data(), chip.gp.data(), chip.gp.size());
    ok &= same_bits("nu_minus", cpu.nu_minus.data(), chip.nm.data(), chip.nm.size());
    report("pcm_program zero matrix" + sfx, ok);
  }
}

}  // namespace

int main(int argc, char **argv) {
  const std::string what = argc > 1 ? argv[1] : "all";
  if (what == "io" || what == "all")
    for (const IOCase &c : io_cases())
      for (uint64_t seed : {1ull, 2ull}) run_io_case(c, seed);
  if (what == "pcm" || what == "all")
    for (uint64_t seed : {1ull, 2ull}) run_pcm(seed);
  std::printf("%d of %d checks failed\n", g_failed, g_checks);
  return g_failed ? 1 : 0;
}
