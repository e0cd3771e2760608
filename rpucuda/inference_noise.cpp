#include "inference_noise.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "threading.h"

namespace rpu {

std::string validate(const PCMNoiseParameters &p) {
  for (int i = 0; i < 3; ++i)
    if (!std::isfinite(p.prog_coeff[i])) return "prog_coeff must be finite";
  if (!std::isfinite(p.g_max)) return "g_max must be finite";
  if (!std::isfinite(p.g_min) || p.g_min < 0.0f) return "g_min must be a finite number >= 0";
  if (!(p.g_max > p.g_min)) return "g_max must be larger than g_min";
  if (!std::isfinite(p.t_0) || p.t_0 <= 0.0f) return "t_0 must be a positive finite number";
  if (!std::isfinite(p.t_read) || p.t_read <= 0.0f)
    return "t_read must be a positive finite number";
  if (!std::isfinite(p.prog_noise_scale) || p.prog_noise_scale < 0.0f)
    return "prog_noise_scale must be a finite number >= 0";
  if (!std::isfinite(p.read_noise_scale) || p.read_noise_scale < 0.0f)
    return "read_noise_scale must be a finite number >= 0";
  if (!std::isfinite(p.drift_scale) || p.drift_scale < 0.0f)
    return "drift_scale must be a finite number >= 0";
  return "";
}

namespace {
// Weights per parallel chunk.  A chunk draws its random numbers in bulk (fill_normal_bulk is the
// vectorized twin of normal_at); kChunk is even so each chunk starts on a Philox block.
constexpr int64_t kChunk = 2048;
}  // namespace

void pcm_program(const float *W, int M, int K, const PCMNoiseParameters &p, uint64_t seed,
                 ProgrammedWeights &out) {
  const int64_t n = (int64_t)std::max(M, 0) * std::max(K, 0);
  out.M = M;
  out.K = K;
  out.g_plus.resize(n);
  out.g_minus.resize(n);
  out.nu_plus.resize(n);
  out.nu_minus.resize(n);

  float amax = 0.0f;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(W[i]));
  const float range = p.g_max - p.g_min;
  out.scale = (amax > 0.0f && std::isfinite(amax)) ? range / amax : 1.0f;
  if (n == 0) return;

  const float scale = out.scale;
  // The device of a pair that is not used has target g_min: its drift parameters are shared.
  float mu0, sig0;
  pcm_drift_mu_sigma(p.g_min, p.g_max, mu0, sig0);
  float *gp_out = out.g_plus.data(), *gm_out = out.g_minus.data();
  float *np_out = out.nu_plus.data(), *nm_out = out.nu_minus.data();
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  parallel_for(n_chunks, 1, [&](int64_t cb, int64_t ce) {
    std::vector<float> zp(2 * kChunk), zn(2 * kChunk);
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t i0 = c * kChunk, L = std::min(kChunk, n - i0);
      // Sample 2*idx is for g+, 2*idx+1 for g- (idx = row*K + col).
      fill_normal_bulk(zp.data(), 2 * L, seed, TAG_PROG_NOISE, 0, 0, 2 * (uint64_t)i0);
      fill_normal_bulk(zn.data(), 2 * L, seed, TAG_DRIFT_NU, 0, 0, 2 * (uint64_t)i0);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t idx = i0 + t;
        float gtp, gtm;
        pcm_target_pair(W[idx], scale, p.g_max, p.g_min, gtp, gtm);
        gp_out[idx] = pcm_program_device(gtp, p.prog_coeff, p.g_max, p.prog_noise_scale, zp[2 * t]);
        gm_out[idx] =
            pcm_program_device(gtm, p.prog_coeff, p.g_max, p.prog_noise_scale, zp[2 * t + 1]);
        float mup = mu0, sgp = sig0, mum = mu0, sgm = sig0;
        if (gtp != p.g_min) pcm_drift_mu_sigma(gtp, p.g_max, mup, sgp);
        if (gtm != p.g_min) pcm_drift_mu_sigma(gtm, p.g_max, mum, sgm);
        np_out[idx] = pcm_drift_nu_from(mup, sgp, p.drift_scale, zn[2 * t]);
        nm_out[idx] = pcm_drift_nu_from(mum, sgm, p.drift_scale, zn[2 * t + 1]);
      }
    }
  });
}

void pcm_weights_at(const ProgrammedWeights &pw, const PCMNoiseParameters &p, double t_inference,
                    uint64_t seed, uint64_t call, float *W_out) {
  const int64_t n = (int64_t)std::max(pw.M, 0) * std::max(pw.K, 0);
  if (n == 0) return;
  // Time-dependent factors, once for the whole matrix (double precision on the host).
  const double t0 = p.t_0, tr = p.t_read;
  const double T = t_inference + t0;
  const float log_t = (T > t0) ? (float)std::log(T / t0) : 0.0f;  // no drift for T <= t_0
  const double arg = (T + tr) / (2.0 * tr);
  const float sqrt_log_read = (arg > 1.0) ? (float)std::sqrt(std::log(arg)) : 0.0f;
  const float inv_scale = 1.0f / pw.scale;
  const float *gp = pw.g_plus.data(), *gm = pw.g_minus.data();
  const float *np = pw.nu_plus.data(), *nm = pw.nu_minus.data();
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  parallel_for(n_chunks, 1, [&](int64_t cb, int64_t ce) {
    std::vector<float> z(2 * kChunk);
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t i0 = c * kChunk, L = std::min(kChunk, n - i0);
      if (sqrt_log_read > 0.0f && p.read_noise_scale > 0.0f)
        fill_normal_bulk(z.data(), 2 * L, seed, TAG_READ_NOISE, 0, call, 2 * (uint64_t)i0);
      else
        std::fill(z.begin(), z.end(), 0.0f);
      for (int64_t t = 0; t < L; ++t) {
        const int64_t idx = i0 + t;
        const float a = pcm_read_device(gp[idx], np[idx], log_t, sqrt_log_read, p.g_max,
                                        p.read_noise_scale, z[2 * t]);
        const float b = pcm_read_device(gm[idx], nm[idx], log_t, sqrt_log_read, p.g_max,
                                        p.read_noise_scale, z[2 * t + 1]);
        W_out[idx] = (a - b) * inv_scale;
      }
    }
  });
}

void pcm_programmed_weights(const ProgrammedWeights &pw, float *W_out) {
  const int64_t n = (int64_t)std::max(pw.M, 0) * std::max(pw.K, 0);
  const float inv_scale = 1.0f / pw.scale;
  const float *gp = pw.g_plus.data(), *gm = pw.g_minus.data();
  parallel_for(n, 16384, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) W_out[i] = (gp[i] - gm[i]) * inv_scale;
  });
}

void drift_readout(const float *W, int M, int K, const IOParameters &io,
                   const MappingParameter &map, DriftCompensationType type, const MVMCall &rng,
                   float *ref_out) {
  if (type == DriftCompensationType::None) return;
  if (M <= 0 || K <= 0) {
    const int nref = type == DriftCompensationType::PerColumn ? std::max(M, 0) : 1;
    for (int m = 0; m < nref; ++m) ref_out[m] = 1e-4f;
    return;
  }
  // Identity input: row k is the one-hot vector e_k (N = K rows of K inputs).
  std::vector<float> X((size_t)K * K, 0.0f);
  for (int k = 0; k < K; ++k) X[(size_t)k * K + k] = 1.0f;
  std::vector<float> Y((size_t)K * M);
  io_mvm(W, M, K, false, X.data(), K, Y.data(), io, map, true, nullptr, 0, rng);

  if (type == DriftCompensationType::Global) {
    double sum = 0.0;
    for (size_t i = 0; i < Y.size(); ++i) sum += std::fabs((double)Y[i]);
    ref_out[0] = std::max((float)(sum / (double)Y.size()), 1e-4f);
  } else {  // PerColumn: mean over the K readouts of output m.
    std::vector<double> sum(M, 0.0);
    for (int k = 0; k < K; ++k) {
      const float *y = Y.data() + (size_t)k * M;
      for (int m = 0; m < M; ++m) sum[m] += std::fabs((double)y[m]);
    }
    for (int m = 0; m < M; ++m) ref_out[m] = std::max((float)(sum[m] / K), 1e-4f);
  }
}

void chip_reference(const ProgrammedWeights &pw, const PCMNoiseParameters &p, uint64_t program_seed,
                    const IOParameters &io, const MappingParameter &map, DriftCompensationType type,
                    uint64_t tile_seed, float *ref_out) {
  if (type == DriftCompensationType::None) return;
  std::vector<float> w0((size_t)pw.M * pw.K);
  pcm_weights_at(pw, p, 0.0, program_seed, 0, w0.data());
  drift_readout(w0.data(), pw.M, pw.K, io, map, type, MVMCall{tile_seed ^ kChipReadoutSeedXor, 0}, ref_out);
}

void chip_at(const ProgrammedWeights &pw, const PCMNoiseParameters &p, double t_inference, uint64_t program_seed,
             const IOParameters &io, const MappingParameter &map, DriftCompensationType type, uint64_t tile_seed,
             const float *ref, float *W_out, float *alpha_out) {
  pcm_weights_at(pw, p, t_inference, program_seed, 1, W_out);
  if (type == DriftCompensationType::None) return;
  const size_t n = type == DriftCompensationType::PerColumn ? (size_t)pw.M : 1;
  std::vector<float> now(n);
  drift_readout(W_out, pw.M, pw.K, io, map, type, MVMCall{tile_seed ^ kChipReadoutSeedXor, 0}, now.data());
  for (size_t i = 0; i < n; ++i) alpha_out[i] = ref[i] / now[i];
}

}  // namespace rpu
