// Host emulation of the CUDA pulsed update (rpucuda/cuda/pulsed_update_kernels.h): the kernels'
// block bodies are played on the CPU, thread by thread between barriers, and the result is
// compared with the CPU implementation rpu::pulsed_update.
//
//   g++ -O2 -std=c++17 -Irpucuda -Irpucuda/cuda tests/cpp/test_cuda_update_emulation.cpp
//       <rpucuda CPU sources or library> -o emu && ./emu [filter]
//
// What it checks (tests/test_cuda_emulation_update.py runs it):
//  * exact agreement (bit for bit) with dw_min_std = 0 for every device type and pulse type, with
//    and without update / BL management, fixed_bl, per-sample BL, slot strides 1 .. 64, several
//    chunks, tiles cut by the matrix edge, cross-points near a bound (ConstantStep fix-up);
//  * exact agreement of the ConstantStep batch-aggregated path with dw_min_std > 0;
//  * with dw_min_std > 0 on the pulse-by-pulse paths (per-cross-point stream here, per-row stream
//    on the CPU): the cycle-to-cycle part of the change has the same mean and variance (tolerances
//    from the number of cross-points);
//  * races: every case is played twice, threads and blocks once in order and once shuffled, and
//    both results must be identical; scratch memory starts as garbage (no kernel may depend on
//    zeroed scratch);
//  * pulse_type NONE and FloatingPoint devices: the exact update, to float rounding.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "devices.h"
#include "pulsed_update.h"
#include "pulsed_update_kernels.h"

using namespace rpu;

namespace {

// ---- the host executor and backend ---------------------------------------------------------------
struct Order {
  bool shuffle = false;
  uint64_t state = 0x9E3779B97F4A7C15ull;
  uint32_t next() {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(state >> 33);
  }
  void permute(std::vector<int> &v) {
    for (size_t i = 0; i < v.size(); ++i) v[i] = (int)i;
    if (!shuffle) return;
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[next() % i]);
  }
};

template <class State, class Shared>
struct HostExec {
  Shared *s;
  std::vector<State> st;
  Order *order;
  std::vector<int> perm;
  HostExec(Shared *sh, Order *o) : s(sh), st(pu::kBlock), order(o), perm(pu::kBlock) {}
  Shared &sh() { return *s; }
  template <class F>
  void each(F &&f) {
    order->permute(perm);
    for (int t : perm) f(t, st[t]);
  }
  void sync() {}
  template <class P>
  bool sync_or(P &&p) {
    bool any = false;
    for (int t = 0; t < pu::kBlock; ++t) any |= p(t, st[t]);
    return any;
  }
};

// What a run did (to check that a case exercises what its name says).
struct RunLog {
  pu::BatchInfo info{};
  int generations = 0;  // train generator launches per side (chunks, plus the fix-up's regeneration)
  int max_splits = 0;   // count blocks per tile
  std::vector<uint8_t> unsafe;
};

struct HostBackend {
  Order order;
  std::vector<std::unique_ptr<unsigned char[]>> bufs;
  pu::BatchInfo *info = nullptr;
  uint8_t *unsafe = nullptr;  // ConstantStep: the cross-points left to the pulse-by-pulse fix-up
  RunLog log;
  template <class T>
  T *alloc(size_t n) {
    const size_t bytes = n * sizeof(T) + 64;
    bufs.emplace_back(new unsigned char[bytes]);
    unsigned char *p = bufs.back().get();
    for (size_t k = 0; k < bytes; ++k) p[k] = (unsigned char)(0xA5 ^ (k * 131));  // garbage
    p += (64 - ((uintptr_t)p & 63)) & 63;
    if constexpr (std::is_same<T, pu::BatchInfo>::value) info = reinterpret_cast<T *>(p);
    if constexpr (std::is_same<T, uint8_t>::value) unsafe = reinterpret_cast<T *>(p);
    return reinterpret_cast<T *>(p);
  }
  int sms = 3;  // small: tiles split their steps over several blocks (atomics)
  int sm_count() { return sms; }
  void zero(void *p, size_t bytes) { std::memset(p, 0, bytes); }
  template <class Body>
  void launch(int gx, int gy, int gz, const Body &body, const char *name) {
    if (std::strstr(name, " x")) ++log.generations;
    if (std::strstr(name, "counts")) log.max_splits = std::max(log.max_splits, gz);
    auto sh = std::make_unique<typename Body::Shared>();
    std::memset((void *)sh.get(), 0x5A, sizeof(typename Body::Shared));
    HostExec<typename Body::State, typename Body::Shared> ex(sh.get(), &order);
    std::vector<int> blocks((size_t)gx * gy * gz);
    order.permute(blocks);
    for (int b : blocks) body.block(ex, b % gx, (b / gx) % gy, b / (gx * gy));
  }
  void exact_update(float *W, int M, int K, const float *X, const float *D, int N, float lr) {
    for (int j = 0; j < M; ++j)
      for (int i = 0; i < K; ++i) {
        double s = 0.0;
        for (int n = 0; n < N; ++n) s += (double)D[(size_t)n * M + j] * X[(size_t)n * K + i];
        W[(size_t)j * K + i] = (float)((double)W[(size_t)j * K + i] - (double)lr * s);
      }
  }
};

// ---- cases -------------------------------------------------------------------------------------------
struct Case {
  std::string name;
  int M = 70, K = 150, N = 45;
  float lr = 0.01f;
  float xscale = 1.0f, dscale = 1.0f;  // inputs: uniform in [-scale, scale] with a few exact zeros
  UpdateParameters up;
  DeviceParameters dev;
  float w_init = 0.0f;       // W uniform in [-w_init, w_init] (then clipped to the cell bounds)
  bool same_rows = false;    // statistical cases: every cross-point sees the same x_i, d_j
  bool narrow_block = false; // bounds +-0.05 only in rows 64..127 x columns 128..255 (one count tile)
  pu::RunOptions opt;
  enum Check { Exact, ExactTol, Stat, Classify } check = Exact;
  uint64_t seed = 11, call = 3;
};

DeviceParameters device(DeviceType t, float dw_min_std, float w_bound = 0.6f) {
  DeviceParameters p = default_device_parameters(t);
  p.dw_min = 0.001f;
  p.dw_min_std = dw_min_std;
  p.w_max = w_bound;
  p.w_min = -w_bound;
  p.construction_seed = 5;
  return p;
}

struct Inputs {
  std::vector<float> X, D, W;
};

Inputs make_inputs(const Case &c, const DeviceArray &arr) {
  std::mt19937_64 g(1234 + c.N * 7 + c.M);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Inputs in;
  in.X.resize((size_t)c.N * c.K);
  in.D.resize((size_t)c.N * c.M);
  if (c.same_rows) {
    // x_i and d_j the same in every sample (each cross-point sees a fixed pair), sign patterns mixed
    std::vector<float> x(c.K), d(c.M);
    for (auto &v : x) v = c.xscale * (0.3f + 0.7f * std::fabs(u(g))) * (u(g) > 0 ? 1.0f : -1.0f);
    for (auto &v : d) v = c.dscale * (0.3f + 0.7f * std::fabs(u(g))) * (u(g) > 0 ? 1.0f : -1.0f);
    for (int n = 0; n < c.N; ++n) {
      std::copy(x.begin(), x.end(), in.X.begin() + (size_t)n * c.K);
      std::copy(d.begin(), d.end(), in.D.begin() + (size_t)n * c.M);
    }
  } else {
    for (auto &v : in.X) v = c.xscale * u(g);
    for (auto &v : in.D) v = c.dscale * u(g);
    // zeros, negative zeros, an all-zero x sample, an all-zero d sample, a single large entry
    for (size_t k = 0; k < in.X.size(); k += 17) in.X[k] = (k / 17) % 2 ? 0.0f : -0.0f;
    for (size_t k = 5; k < in.D.size(); k += 23) in.D[k] = 0.0f;
    if (c.N > 3) {
      std::fill(in.X.begin() + (size_t)2 * c.K, in.X.begin() + (size_t)3 * c.K, 0.0f);
      std::fill(in.D.begin() + (size_t)3 * c.M, in.D.begin() + (size_t)4 * c.M, 0.0f);
    }
    if (c.N > 5) in.X[(size_t)5 * c.K + 1] = 4.0f * c.xscale;
  }
  in.W.resize((size_t)c.M * c.K);
  for (size_t k = 0; k < in.W.size(); ++k) {
    const float w = c.w_init * u(g);
    const DeviceCell &cell = arr.cells[k];
    in.W[k] = std::min(std::max(w, cell.w_min), cell.w_max);
  }
  return in;
}

// shuffle: threads and blocks in a random order, and sms = 3 (tiles split over several blocks);
// else in order with sms = 0 (one block per tile).
std::vector<float> run_emulated(const Case &c, const DeviceArray &arr, const Inputs &in, bool shuffle,
                                RunLog *log = nullptr) {
  HostBackend be;
  be.order.shuffle = shuffle;
  be.sms = shuffle ? 3 : 0;
  std::vector<float> W = in.W;
  pu::run_pulsed_update(be, W.data(), c.M, c.K, in.X.data(), in.D.data(), c.N, c.lr, c.up, arr.par, arr.cells.data(),
                        c.seed, c.call, c.opt);
  if (log) {
    *log = be.log;
    if (be.info) log->info = *be.info;
    if (be.unsafe && be.info && be.info->max_bl > 0) log->unsafe.assign(be.unsafe, be.unsafe + (size_t)c.M * c.K);
  }
  return W;
}

std::vector<float> run_cpu(const Case &c, const DeviceArray &arr, const Inputs &in) {
  std::vector<float> W = in.W;
  pulsed_update(W.data(), c.M, c.K, in.X.data(), in.D.data(), c.N, c.lr, c.up, arr, c.seed, c.call);
  return W;
}

int g_failures = 0, g_cases = 0;
std::string g_run;  // what the emulated run did (max BL, slot stride, count blocks per tile, chunks)

void report(const Case &c, bool ok, const std::string &msg) {
  ++g_cases;
  if (!ok) ++g_failures;
  std::printf("%s %-52s %-30s %s\n", ok ? "PASS" : "FAIL", c.name.c_str(), g_run.c_str(), msg.c_str());
  std::fflush(stdout);
}

// Exact (bitwise) comparison; `changed` counts the cross-points the update moved.
void check_exact(const Case &c, const std::vector<float> &ref, const std::vector<float> &got, const Inputs &in) {
  size_t bad = 0, changed = 0, first = (size_t)-1;
  for (size_t k = 0; k < ref.size(); ++k) {
    if (std::memcmp(&ref[k], &got[k], sizeof(float)) != 0) {
      if (first == (size_t)-1) first = k;
      ++bad;
    }
    changed += ref[k] != in.W[k];
  }
  char buf[256];
  if (bad)
    std::snprintf(buf, sizeof buf, "%zu/%zu differ; first (%zu,%zu): cpu %.9g emu %.9g (w0 %.9g)", bad, ref.size(),
                  first / c.K, first % c.K, ref[first], got[first], in.W[first]);
  else
    std::snprintf(buf, sizeof buf, "identical (%zu of %zu cross-points changed)", changed, ref.size());
  report(c, bad == 0 && changed > 0, buf);
}

void check_tol(const Case &c, const std::vector<float> &ref, const std::vector<float> &got, const Inputs &in) {
  // float32 BLAS vs double reference: |error| <= lr * sum |d||x| * N * eps (generous)
  double worst = 0.0;
  for (int j = 0; j < c.M; ++j)
    for (int i = 0; i < c.K; ++i) {
      double s = 0.0;
      for (int n = 0; n < c.N; ++n) s += std::fabs((double)in.D[(size_t)n * c.M + j] * in.X[(size_t)n * c.K + i]);
      const double tol = c.lr * s * c.N * 1.2e-7 + std::fabs(ref[(size_t)j * c.K + i]) * 1.2e-7 + 1e-30;
      worst = std::max(worst, std::fabs((double)ref[(size_t)j * c.K + i] - got[(size_t)j * c.K + i]) / tol);
    }
  char buf[128];
  std::snprintf(buf, sizeof buf, "max |cpu - emu| / tolerance = %.3f", worst);
  report(c, worst <= 1.0, buf);
}

// ConstantStep with dw_min_std > 0: the no-bound check classifies as the CPU's does.  The
// aggregated cross-points (the CPU's normals) must be identical, the pulse-by-pulse ones (other
// streams) must differ unless clipped; and both kinds must occur.
bool classification_ok(const DeviceArray &arr, const Inputs &in, const std::vector<float> &ref,
                       const std::vector<float> &got, const RunLog &log, size_t *n_unsafe, size_t *wrong_safe,
                       size_t *wrong_unsafe) {
  const size_t n = ref.size();
  *n_unsafe = *wrong_safe = *wrong_unsafe = 0;
  for (size_t k = 0; k < n; ++k) {
    const DeviceCell &c = arr.cells[k];
    const bool at_bound = got[k] >= c.w_max || got[k] <= c.w_min || ref[k] >= c.w_max || ref[k] <= c.w_min;
    const bool same = std::memcmp(&ref[k], &got[k], sizeof(float)) == 0;
    const bool uns = !log.unsafe.empty() && log.unsafe[k];
    *n_unsafe += uns;
    *wrong_safe += !uns && !same;
    *wrong_unsafe += uns && same && !at_bound && ref[k] != in.W[k];
  }
  return *n_unsafe > n / 20 && *n_unsafe < n - n / 20 && *wrong_safe == 0 && *wrong_unsafe == 0;
}

// Cycle-to-cycle noise: r = W(noisy) - W(noise-free, same trains) has the same distribution on
// both sides.  Mean: 5 standard errors; variance ratio: 5 standard errors of a ratio of sample
// variances (sqrt(2/n) each, n cross-points).
void check_stat(const Case &c, const DeviceArray &arr, const Inputs &in, const std::vector<float> &ref,
                const std::vector<float> &got, const RunLog &log) {
  Case q = c;
  DeviceArray quiet = arr;
  quiet.par.dw_min_std = 0.0f;
  const std::vector<float> base = run_cpu(q, quiet, in);
  const std::vector<float> base_emu = run_emulated(q, quiet, in, false);
  bool base_same = std::memcmp(base.data(), base_emu.data(), base.size() * sizeof(float)) == 0;
  const size_t n = ref.size();
  double mc = 0, me = 0, vc = 0, ve = 0, corr = 0;
  for (size_t k = 0; k < n; ++k) {
    mc += ref[k] - base[k];
    me += got[k] - base[k];
  }
  mc /= n;
  me /= n;
  for (size_t k = 0; k < n; ++k) {
    const double a = ref[k] - base[k] - mc, b = got[k] - base[k] - me;
    vc += a * a;
    ve += b * b;
    corr += a * b;
  }
  vc /= (n - 1);
  ve /= (n - 1);
  corr /= (n - 1) * std::sqrt(vc * ve);
  const double se_mean = std::sqrt((vc + ve) / n);
  const double ratio = ve / vc, se_ratio = 2.0 * std::sqrt(2.0 / n);
  size_t pinned = 0;
  for (size_t k = 0; k < n; ++k) pinned += base[k] >= arr.cells[k].w_max || base[k] <= arr.cells[k].w_min;
  // (independent streams: no correlation, except ConstantStep, whose aggregated cross-points use
  // the same normals on both sides)
  const bool corr_ok = arr.par.type == DeviceType::ConstantStep || std::fabs(corr) <= 5.0 / std::sqrt((double)n);
  size_t n_unsafe = 0, wrong_safe = 0, wrong_unsafe = 0;
  const bool class_ok = arr.par.type != DeviceType::ConstantStep ||
                        classification_ok(arr, in, ref, got, log, &n_unsafe, &wrong_safe, &wrong_unsafe);
  const bool ok = base_same && vc > 0 && pinned * 10 < n && std::fabs(mc - me) <= 5 * se_mean &&
                  std::fabs(ratio - 1.0) <= 5 * se_ratio && corr_ok && class_ok;
  char buf[384];
  std::snprintf(buf, sizeof buf,
                "noise-free identical=%d, %zu at a bound; c2c mean cpu %.3g emu %.3g (se %.2g); var ratio %.3f "
                "(se %.3f); corr %.3f",
                (int)base_same, pinned, mc, me, se_mean, ratio, se_ratio, corr);
  std::string msg = buf;
  if (arr.par.type == DeviceType::ConstantStep)
    msg += "; pulse by pulse " + std::to_string(n_unsafe) + ", misclassified " + std::to_string(wrong_safe) + "+" +
           std::to_string(wrong_unsafe);
  report(c, ok, msg);
}

void run_case(const Case &c, const char *filter) {
  if (filter && c.name.find(filter) == std::string::npos) return;
  DeviceArray arr;
  arr.build(c.dev, c.M, c.K);
  if (c.narrow_block)
    for (int j = 64; j < std::min(c.M, 128); ++j)
      for (int i = 128; i < std::min(c.K, 256); ++i) {
        arr.cells[(size_t)j * c.K + i].w_max = 0.05f;
        arr.cells[(size_t)j * c.K + i].w_min = -0.05f;
      }
  const Inputs in = make_inputs(c, arr);
  const std::vector<float> ref = run_cpu(c, arr, in);
  RunLog log, log2;
  const std::vector<float> got = run_emulated(c, arr, in, false, &log);
  const std::vector<float> got2 = run_emulated(c, arr, in, true, &log2);
  if (std::memcmp(got.data(), got2.data(), got.size() * sizeof(float)) != 0) {
    report(c, false, "result depends on the order of threads/blocks or on the split of the counts (a race?)");
    return;
  }
  g_run = "[BL " + std::to_string(log.info.max_bl) + " S " + std::to_string(log.info.S) + " splits " +
          std::to_string(log2.max_splits) + " gens " + std::to_string(log.generations) + "]";
  // the case exercises what its name says
  std::string why;
  const size_t sp = c.name.find("(S=");
  if (sp != std::string::npos && log.info.S != std::atoi(c.name.c_str() + sp + 3))
    why = "slot stride " + std::to_string(log.info.S);
  if (c.name.find("chunks") != std::string::npos && log.generations < 2) why = "one chunk only";
  if (c.name.find("chunks") == std::string::npos && log.generations > 1) why = "several chunks";
  if (c.name.find("packed") != std::string::npos && log.info.S >= 32)
    why = "not packed: S = " + std::to_string(log.info.S);
  if (c.dev.type == DeviceType::ConstantStep && c.check != Case::ExactTol && log2.max_splits < 2)
    why = "counts not split";
  if (!why.empty()) {
    report(c, false, "case does not test what it should: " + why);
    return;
  }
  switch (c.check) {
    case Case::Exact: {
      size_t nu = 0;
      for (uint8_t u : log.unsafe) nu += u;
      if (!log.unsafe.empty()) g_run += " pbp " + std::to_string(nu);
      return check_exact(c, ref, got, in);
    }
    case Case::ExactTol: return check_tol(c, ref, got, in);
    case Case::Stat: return check_stat(c, arr, in, ref, got, log);
    case Case::Classify: {
      size_t nu, ws, wu;
      const bool ok = classification_ok(arr, in, ref, got, log, &nu, &ws, &wu);
      return report(c, ok, "pulse by pulse " + std::to_string(nu) + " of " + std::to_string(ref.size()) +
                               ", misclassified " + std::to_string(ws) + "+" + std::to_string(wu));
    }
  }
}

const char *dev_name(DeviceType t) {
  switch (t) {
    case DeviceType::ConstantStep: return "ConstantStep";
    case DeviceType::LinearStep: return "LinearStep";
    case DeviceType::SoftBounds: return "SoftBounds";
    case DeviceType::ExpStep: return "ExpStep";
    case DeviceType::PowStep: return "PowStep";
    case DeviceType::FloatingPoint: return "FloatingPoint";
  }
  return "?";
}

}  // namespace

int main(int argc, char **argv) {
  const char *filter = argc > 1 ? argv[1] : nullptr;
  const DeviceType pulsed[] = {DeviceType::ConstantStep, DeviceType::LinearStep, DeviceType::SoftBounds,
                               DeviceType::ExpStep, DeviceType::PowStep};

  // -- exact agreement, dw_min_std = 0 --------------------------------------------------------------
  struct Variant {
    const char *name;
    PulseType type;
    int desired_bl;
    bool um, ublm, fixed_bl, sto_round;
    float lr, xscale, dscale;
    int max_chunk_steps;
    int N;
  };
  constexpr PulseType SC = PulseType::StochasticCompressed, ST = PulseType::Stochastic,
                      DI = PulseType::DeterministicImplicit;
  const Variant variants[] = {
      // lr*max|x|*max|d|/dw_min = 40 (BL 31, one sample per word)
      {"compressed bl31 (S=32)", SC, 31, true, true, true, false, 0.01f, 1.0f, 4.0f, 0, 45},
      {"stochastic bl31 noUM noBLM (S=32)", ST, 31, false, false, true, false, 0.01f, 1.0f, 4.0f, 0, 45},
      {"compressed bl31 UM noBLM (S=32)", SC, 31, true, false, true, false, 0.01f, 2.0f, 0.5f, 0, 45},
      {"compressed per-sample BL", SC, 31, true, true, false, false, 0.01f, 1.0f, 2.0f, 0, 45},
      {"compressed bl64 (S=64)", SC, 64, true, true, true, false, 0.02f, 1.0f, 4.0f, 0, 45},
      // small ratios: packed words (max|x| is 4 in sample 5)
      {"compressed BL<=8 (S=8)", SC, 31, true, true, true, false, 0.0006f, 1.0f, 3.0f, 0, 45},
      {"compressed BL<=4 (S=4)", SC, 31, true, true, true, false, 0.0003f, 1.0f, 3.0f, 0, 45},
      {"compressed BL 2 (S=2)", SC, 31, true, true, true, false, 0.0003f, 1.0f, 1.5f, 0, 45},
      {"compressed desired_bl 1 (S=1)", SC, 1, true, true, true, false, 0.01f, 1.0f, 1.0f, 0, 600},
      {"compressed desired_bl 8 noBLM (S=8)", SC, 8, true, false, true, false, 0.01f, 1.0f, 1.0f, 0, 150},
      {"compressed per-sample BL packed", SC, 31, true, true, false, false, 0.0006f, 1.0f, 3.0f, 0, 45},
      // several chunks (of 32 steps: two count blocks per tile)
      {"compressed bl31 (S=32) chunks", SC, 31, true, true, true, false, 0.01f, 1.0f, 4.0f, 32, 45},
      {"compressed (S=4) chunks", SC, 31, true, true, true, false, 0.0003f, 1.0f, 3.0f, 32, 300},
      {"compressed bl64 (S=64) chunks", SC, 64, true, true, true, false, 0.02f, 1.0f, 4.0f, 32, 45},
      // deterministic implicit
      {"implicit", DI, 31, true, true, true, false, 0.01f, 1.0f, 4.0f, 0, 45},
      {"implicit sto_round", DI, 31, true, true, true, true, 0.01f, 1.0f, 4.0f, 0, 45},
      {"implicit sto_round noUM noBLM", DI, 20, false, false, true, true, 0.01f, 1.0f, 4.0f, 0, 45},
      {"implicit chunks", DI, 31, true, true, true, true, 0.01f, 1.0f, 4.0f, 32, 45},
  };
  for (DeviceType t : pulsed)
    for (const Variant &v : variants) {
      Case c;
      c.name = std::string(dev_name(t)) + " " + v.name;
      c.dev = device(t, 0.0f);
      c.up.pulse_type = v.type;
      c.up.desired_bl = v.desired_bl;
      c.up.update_management = v.um;
      c.up.update_bl_management = v.ublm;
      c.up.fixed_bl = v.fixed_bl;
      c.up.sto_round = v.sto_round;
      c.lr = v.lr;
      c.xscale = v.xscale;
      c.dscale = v.dscale;
      c.opt.max_chunk_steps = v.max_chunk_steps;
      c.N = v.N;
      c.w_init = 0.3f;
      run_case(c, filter);
    }

  // -- ConstantStep near its bounds: the fix-up path (one chunk, several chunks), with and
  //    without cycle-to-cycle noise on the aggregated cross-points --------------------------------
  for (int chunks = 0; chunks < 2; ++chunks)
    for (PulseType pt : {PulseType::StochasticCompressed, PulseType::DeterministicImplicit})
      for (float lr : {0.01f, 0.0004f}) {
        Case c;
        const bool di = pt == PulseType::DeterministicImplicit;
        c.name = std::string("ConstantStep near bounds ") + (di ? "implicit" : "sto") +
                 (lr < 0.005f ? (di ? " small lr" : " packed") : "") +
                 (chunks ? " chunks" : "");
        c.dev = device(DeviceType::ConstantStep, 0.0f, 0.05f);
        c.up.pulse_type = pt;
        c.lr = lr;
        c.dscale = 4.0f;
        c.w_init = 0.05f;
        c.opt.max_chunk_steps = chunks ? 32 : 0;
        c.N = chunks && lr < 0.005f ? 300 : 45;
        run_case(c, filter);
      }
  for (int chunks = 0; chunks < 2; ++chunks) {
    // only one count tile has cross-points near a bound: the fix-up finds its tile
    Case c;
    c.name = std::string("ConstantStep near bounds in one tile") + (chunks ? " chunks" : "");
    c.dev = device(DeviceType::ConstantStep, 0.0f, 0.6f);
    c.dev.w_max_dtod = c.dev.w_min_dtod = 0.0f;
    c.M = 150;
    c.K = 300;
    c.lr = 0.0004f;
    c.dscale = 4.0f;
    c.w_init = 0.05f;
    c.narrow_block = true;
    c.opt.max_chunk_steps = chunks ? 32 : 0;
    run_case(c, filter);
  }
  for (int chunks = 0; chunks < 2; ++chunks)
    for (PulseType pt : {PulseType::StochasticCompressed, PulseType::DeterministicImplicit}) {
      // few pulses, fixed bounds far away: every cross-point takes the aggregated path, noise
      // included -> identical
      Case c;
      c.name = std::string("ConstantStep noisy aggregated ") +
               (pt == PulseType::DeterministicImplicit ? "implicit" : "sto") + (chunks ? " chunks" : "");
      c.dev = device(DeviceType::ConstantStep, 0.3f, 2.0f);
      c.dev.w_max_dtod = c.dev.w_min_dtod = 0.0f;
      c.up.pulse_type = pt;
      const bool sto_chunks = chunks && pt != PulseType::DeterministicImplicit;
      c.lr = sto_chunks ? 0.0001f : 0.0003f;  // BL 1 (32 samples per word) or 2
      c.dscale = 4.0f;
      c.w_init = 0.1f;
      c.N = sto_chunks ? 1200 : chunks ? 600 : 200;
      c.opt.max_chunk_steps = chunks ? 32 : 0;
      run_case(c, filter);
    }

  for (PulseType pt : {PulseType::StochasticCompressed, PulseType::DeterministicImplicit}) {
    // noisy, near the bounds, pulses in both directions: the reach check of the CPU
    Case c;
    c.name = std::string("ConstantStep noisy near bounds classify ") +
             (pt == PulseType::DeterministicImplicit ? "implicit" : "sto");
    c.dev = device(DeviceType::ConstantStep, 0.3f, 0.12f);
    c.up.pulse_type = pt;
    c.lr = 0.0004f;
    c.dscale = 4.0f;
    c.w_init = 0.06f;
    c.check = Case::Classify;
    run_case(c, filter);
  }

  // -- exact update ---------------------------------------------------------------------------------
  {
    Case c;
    c.name = "pulse_type NONE -> exact update";
    c.dev = device(DeviceType::ConstantStep, 0.3f);
    c.up.pulse_type = PulseType::None;
    c.check = Case::ExactTol;
    c.w_init = 0.3f;
    run_case(c, filter);
    c.name = "FloatingPoint device -> exact update";
    c.dev = default_device_parameters(DeviceType::FloatingPoint);
    c.up.pulse_type = PulseType::StochasticCompressed;
    run_case(c, filter);
  }

  // -- cycle-to-cycle noise of the pulse-by-pulse paths (statistical) ------------------------------
  for (DeviceType t : pulsed)
    for (PulseType pt : {PulseType::StochasticCompressed, PulseType::DeterministicImplicit}) {
      Case c;
      c.name = std::string(dev_name(t)) + " noisy c2c stats " +
               (pt == PulseType::DeterministicImplicit ? "implicit" : "sto") +
               (t == DeviceType::ConstantStep ? " (near bounds)" : "");
      const bool cs = t == DeviceType::ConstantStep;
      c.dev = device(t, 0.3f, cs ? 0.12f : 0.6f);
      c.dev.dw_min_dtod = 0.0f;
      c.dev.w_max_dtod = c.dev.w_min_dtod = 0.0f;
      c.dev.up_down_dtod = 0.0f;
      c.up.pulse_type = pt;
      c.M = 64;
      c.K = 128;
      c.N = cs ? 30 : 60;  // ConstantStep: past the reach check, short of the bound
      c.lr = cs ? 0.001f : 0.003f;
      c.dscale = 2.0f;
      c.same_rows = true;
      c.w_init = 0.0f;
      c.check = Case::Stat;
      run_case(c, filter);
    }

  std::printf("%d cases, %d failures\n", g_cases, g_failures);
  return g_failures ? 1 : 0;
}
