// The PCM inference model's CUDA twin (rpucuda/cuda/inference_noise.cu) as grid kernels
// (twin_grid.h) and host-side drivers, played on the host by tests/cpp/test_cuda_emulation.cpp
// against rpucuda/inference_noise.cpp.  The per-device math is inference_noise.h's RPU_HD
// functions and the random numbers are the ones documented there: weight idx = row*K + col uses
// normal samples 2*idx (g+) and 2*idx+1 (g-), i.e. Philox block idx/2, so one thread handles the
// pair of weights (2j, 2j+1) with one block per stream.
//
// Agreement with the CPU: exact in the host emulation; on the GPU the device's logf/expf/powf
// (drift exponents, drift, read-noise Q_s) may differ from the host's in the last bit, so
// conductances agree to ~1e-6 relative.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "inference_noise.h"
#include "io_pipeline_kernels.h"
#include "rpucuda_cuda.h"
#include "twin_grid.h"

namespace rpu {
namespace twin {

// max|W| (NaNs skipped, as std::max(amax, |w|) on the CPU): block blk -> part[blk].
struct AbsMaxKernel {
  using Red = RedMax;
  static constexpr bool kReduce = true;
  static constexpr const char *kName = "pcm_program: max|W|";
  const float *W;
  int64_t n;
  float *part;
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    float m = 0.0f;
    for (int64_t i = blk * T + t; i < n; i += nblk * T) {
      const float a = fabsf(W[i]);
      m = a > m ? a : m;
    }
    Red r;
    r.v = m;
    return r;
  }
  RPU_HD void finish(int64_t blk, int64_t, int t, int, const Red &all) const {
    if (t == 0) part[blk] = all.v;
  }
};

// Programming (SPEC §4.1-4.2): target pair, programming noise and drift exponents of weights
// 2j and 2j+1.  mu0/sig0: the drift parameters of a device at g_min (computed on the host, as
// the CPU does).
struct ProgramKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "pcm_program";
  const float *W;
  int64_t n;
  PCMNoiseParameters p;
  float scale, mu0, sig0;
  uint64_t seed;
  float *gp, *gm, *nup, *num;
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    for (int64_t j = blk * T + t; 2 * j < n; j += nblk * T) {
      float zp[4], zn[4];
      normal4(rng_block(seed, TAG_PROG_NOISE, 0, 0, (uint64_t)j), zp);
      normal4(rng_block(seed, TAG_DRIFT_NU, 0, 0, (uint64_t)j), zn);
      for (int e = 0; e < 2 && 2 * j + e < n; ++e) {
        const int64_t idx = 2 * j + e;
        float gtp, gtm;
        pcm_target_pair(W[idx], scale, p.g_max, p.g_min, gtp, gtm);
        gp[idx] = pcm_program_device(gtp, p.prog_coeff, p.g_max, p.prog_noise_scale, zp[2 * e]);
        gm[idx] = pcm_program_device(gtm, p.prog_coeff, p.g_max, p.prog_noise_scale, zp[2 * e + 1]);
        float mup = mu0, sgp = sig0, mum = mu0, sgm = sig0;
        if (gtp != p.g_min) pcm_drift_mu_sigma(gtp, p.g_max, mup, sgp);
        if (gtm != p.g_min) pcm_drift_mu_sigma(gtm, p.g_max, mum, sgm);
        nup[idx] = pcm_drift_nu_from(mup, sgp, p.drift_scale, zn[2 * e]);
        num[idx] = pcm_drift_nu_from(mum, sgm, p.drift_scale, zn[2 * e + 1]);
      }
    }
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// Weights at inference time (drift and read noise, SPEC §4.2) of weights 2j and 2j+1.
struct WeightsAtKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "pcm_weights_at";
  const float *gp, *gm, *nup, *num;
  int64_t n;
  float log_t, sqrt_log_read, g_max, read_noise_scale, inv_scale;
  bool read_noise;
  uint64_t seed, call;
  float *W_out;
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    for (int64_t j = blk * T + t; 2 * j < n; j += nblk * T) {
      float z[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      if (read_noise) normal4(rng_block(seed, TAG_READ_NOISE, 0, call, (uint64_t)j), z);
      for (int e = 0; e < 2 && 2 * j + e < n; ++e) {
        const int64_t idx = 2 * j + e;
        const float a = pcm_read_device(gp[idx], nup[idx], log_t, sqrt_log_read, g_max, read_noise_scale, z[2 * e]);
        const float b =
            pcm_read_device(gm[idx], num[idx], log_t, sqrt_log_read, g_max, read_noise_scale, z[2 * e + 1]);
        W_out[idx] = (a - b) * inv_scale;
      }
    }
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// W = (g+ - g-) / scale.
struct ProgrammedWeightsKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "pcm_programmed_weights";
  const float *gp, *gm;
  int64_t n;
  float inv_scale;
  float *W_out;
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    for (int64_t i = blk * T + t; i < n; i += nblk * T) W_out[i] = (gp[i] - gm[i]) * inv_scale;
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// The K x K identity (the one-hot read-out inputs).
struct IdentityKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "drift_readout: identity";
  int K;
  float *X;
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    for (int64_t e = blk * T + t; e < (int64_t)K * K; e += nblk * T) X[e] = (e / K == e % K) ? 1.0f : 0.0f;
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// Per output column m of the read-out Y [rows, M]: the serial double sum of |y| over the rows
// (the CPU's order for PerColumn) -> colsum[m]; PerColumn also writes ref[m] = max(mean, 1e-4).
struct ColumnAbsSumKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "drift_readout: column sums";
  const float *Y;
  int rows, M;
  double *colsum;
  float *ref;  // nullptr: Global
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    for (int64_t m = blk * T + t; m < M; m += nblk * T) {
      double s = 0.0;
      for (int k = 0; k < rows; ++k) s += fabs((double)Y[(int64_t)k * M + m]);
      colsum[m] = s;
      if (ref != nullptr) {
        const float v = (float)(s / rows);
        ref[m] = v < 1e-4f ? 1e-4f : v;  // std::max(v, 1e-4f)
      }
    }
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// Global: ref[0] = max(sum of the column sums / count, 1e-4) (one block).  The CPU sums all |y|
// serially; this order agrees with it to double rounding.
struct GlobalRefKernel {
  using Red = RedSum;
  static constexpr bool kReduce = true;
  static constexpr const char *kName = "drift_readout: global mean";
  const double *colsum;
  int M;
  double count;
  float *ref;
  RPU_HD Red partial(int64_t, int64_t, int t, int T) const {
    Red r;
    r.v = 0.0;
    for (int m = t; m < M; m += T) r.v += colsum[m];
    return r;
  }
  RPU_HD void finish(int64_t, int64_t, int t, int, const Red &all) const {
    if (t != 0) return;
    const float v = (float)(all.v / count);
    ref[0] = v < 1e-4f ? 1e-4f : v;
  }
};

struct FillKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "fill";
  float *p;
  int64_t n;
  float v;
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    for (int64_t i = blk * T + t; i < n; i += nblk * T) p[i] = v;
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// alpha = ref / now.
struct AlphaKernel {
  using Red = RedNone;
  static constexpr bool kReduce = false;
  static constexpr const char *kName = "chip_at: alpha";
  const float *ref, *now;
  int n;
  float *alpha;
  RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const {
    for (int64_t i = blk * T + t; i < n; i += nblk * T) alpha[i] = ref[i] / now[i];
    return Red();
  }
  RPU_HD void finish(int64_t, int64_t, int, int, const Red &) const {}
};

// ---- drivers (the twins of inference_noise.cpp's array functions) -----------------------------------

template <class Exec>
float pcm_program_run(Exec &ex, const float *W, int M, int K, const PCMNoiseParameters &p, uint64_t seed,
                      cuda::ProgrammedView &out) {
  const int64_t n = (int64_t)std::max(M, 0) * std::max(K, 0);
  out.M = M;
  out.K = K;
  // max|W|: per-block maxima, combined on the host (the one wait of this function).
  float amax = 0.0f;
  if (n > 0) {
    const int64_t nb = std::min<int64_t>(grid_for(n, kMaxThreads), 1024);
    typename Exec::template Buf<float> part(ex, nb);
    ex.launch(AbsMaxKernel{W, n, part.get()}, nb, kMaxThreads);
    std::vector<float> h(nb);
    ex.copy_to_host(h.data(), part.get(), sizeof(float) * nb);
    for (float v : h) amax = std::max(amax, v);
  }
  const float range = p.g_max - p.g_min;
  out.scale = (amax > 0.0f && std::isfinite(amax)) ? range / amax : 1.0f;
  if (n == 0) return out.scale;
  float mu0, sig0;
  pcm_drift_mu_sigma(p.g_min, p.g_max, mu0, sig0);
  ProgramKernel k{W, n, p, out.scale, mu0, sig0, seed, out.g_plus, out.g_minus, out.nu_plus, out.nu_minus};
  ex.launch(k, grid_for((n + 1) / 2, kMaxThreads), kMaxThreads);
  return out.scale;
}

template <class Exec>
void pcm_weights_at_run(Exec &ex, const cuda::ProgrammedView &pw, const PCMNoiseParameters &p, double t_inference,
                        uint64_t seed, uint64_t call, float *W_out) {
  const int64_t n = (int64_t)std::max(pw.M, 0) * std::max(pw.K, 0);
  if (n == 0) return;
  // Time-dependent factors in double precision on the host, exactly as pcm_weights_at.
  const double t0 = p.t_0, tr = p.t_read;
  const double T = t_inference + t0;
  const float log_t = (T > t0) ? (float)std::log(T / t0) : 0.0f;
  const double arg = (T + tr) / (2.0 * tr);
  const float sqrt_log_read = (arg > 1.0) ? (float)std::sqrt(std::log(arg)) : 0.0f;
  WeightsAtKernel k{pw.g_plus, pw.g_minus, pw.nu_plus, pw.nu_minus, n, log_t, sqrt_log_read, p.g_max,
                    p.read_noise_scale, 1.0f / pw.scale, sqrt_log_read > 0.0f && p.read_noise_scale > 0.0f,
                    seed, call, W_out};
  ex.launch(k, grid_for((n + 1) / 2, kMaxThreads), kMaxThreads);
}

template <class Exec>
void pcm_programmed_weights_run(Exec &ex, const cuda::ProgrammedView &pw, float *W_out) {
  const int64_t n = (int64_t)std::max(pw.M, 0) * std::max(pw.K, 0);
  if (n == 0) return;
  ex.launch(ProgrammedWeightsKernel{pw.g_plus, pw.g_minus, n, 1.0f / pw.scale, W_out}, grid_for(n, kMaxThreads),
            kMaxThreads);
}

template <class Exec>
void drift_readout_run(Exec &ex, const float *W, int M, int K, const IOParameters &io, const MappingParameter &map,
                       DriftCompensationType type, const MVMCall &rng, float *ref_out,
                       size_t slab_bytes = kIOSlabBytes) {
  if (type == DriftCompensationType::None) return;
  if (M <= 0 || K <= 0) {
    const int nref = type == DriftCompensationType::PerColumn ? std::max(M, 0) : 1;
    if (nref > 0) ex.launch(FillKernel{ref_out, nref, 1e-4f}, grid_for(nref, kMaxThreads), kMaxThreads);
    return;
  }
  typename Exec::template Buf<float> X(ex, (size_t)K * K), Y(ex, (size_t)K * M);
  ex.launch(IdentityKernel{K, X.get()}, grid_for((int64_t)K * K, kMaxThreads), kMaxThreads);
  io_mvm_run(ex, W, M, K, false, X.get(), K, Y.get(), io, map, true, nullptr, 0, rng, slab_bytes);
  typename Exec::template Buf<double> colsum(ex, M);
  const bool per_col = type == DriftCompensationType::PerColumn;
  ex.launch(ColumnAbsSumKernel{Y.get(), K, M, colsum.get(), per_col ? ref_out : nullptr}, grid_for(M, kMaxThreads),
            kMaxThreads);
  if (!per_col) ex.launch(GlobalRefKernel{colsum.get(), M, (double)K * M, ref_out}, 1, kMaxThreads);
}

template <class Exec>
void chip_reference_run(Exec &ex, const cuda::ProgrammedView &pw, const PCMNoiseParameters &p, uint64_t program_seed,
                        const IOParameters &io, const MappingParameter &map, DriftCompensationType type,
                        uint64_t tile_seed, float *ref_out, size_t slab_bytes = kIOSlabBytes) {
  if (type == DriftCompensationType::None) return;
  typename Exec::template Buf<float> w0(ex, (size_t)std::max(pw.M, 0) * std::max(pw.K, 0));
  pcm_weights_at_run(ex, pw, p, 0.0, program_seed, 0, w0.get());
  drift_readout_run(ex, w0.get(), pw.M, pw.K, io, map, type, MVMCall{tile_seed ^ kChipReadoutSeedXor, 0}, ref_out,
                    slab_bytes);
}

template <class Exec>
void chip_at_run(Exec &ex, const cuda::ProgrammedView &pw, const PCMNoiseParameters &p, double t_inference,
                 uint64_t program_seed, const IOParameters &io, const MappingParameter &map,
                 DriftCompensationType type, uint64_t tile_seed, const float *ref, float *W_out, float *alpha_out,
                 size_t slab_bytes = kIOSlabBytes) {
  pcm_weights_at_run(ex, pw, p, t_inference, program_seed, 1, W_out);
  if (type == DriftCompensationType::None) return;
  const int n = type == DriftCompensationType::PerColumn ? pw.M : 1;
  typename Exec::template Buf<float> now(ex, n);
  drift_readout_run(ex, W_out, pw.M, pw.K, io, map, type, MVMCall{tile_seed ^ kChipReadoutSeedXor, 0}, now.get(),
                    slab_bytes);
  ex.launch(AlphaKernel{ref, now.get(), n, alpha_out}, grid_for(n, kMaxThreads), kMaxThreads);
}

}  // namespace twin
}  // namespace rpu
