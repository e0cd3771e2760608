// Inference physics (SPEC §4): weight -> conductance pair, PCM-like programming noise, drift
// exponents, conductance drift and accumulated read (1/f) noise, and the drift-compensation
// readout.  The per-device math lives in the RPU_HD functions below so that a CUDA twin can
// share it; the array functions are the CPU implementation.
//
// Random numbers (rng.h), all from the Philox stream keyed by `seed`, sub = 0:
//   programming noise  TAG_PROG_NOISE, call 0,      sample 2*idx (g+) and 2*idx+1 (g-)
//   drift exponent     TAG_DRIFT_NU,   call 0,      sample 2*idx (g+) and 2*idx+1 (g-)
//   read noise         TAG_READ_NOISE, call `call`, sample 2*idx (g+) and 2*idx+1 (g-)
// with idx = row*K + col, so results do not depend on the thread count.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "io_pipeline.h"
#include "parameters.h"
#include "rng.h"

namespace rpu {

struct PCMNoiseParameters {  // SPEC §4.1-4.2 defaults
  float prog_coeff[3] = {0.26348f, 1.9650f, -1.1731f};
  float g_max = 25.0f;     // µS
  float g_min = 0.0f;      // µS
  float t_0 = 20.0f;       // s
  float t_read = 250e-9f;  // s
  float prog_noise_scale = 1.0f, read_noise_scale = 1.0f, drift_scale = 1.0f;
};

// "" if valid, else a message naming the offending field.
std::string validate(const PCMNoiseParameters &p);

// One programmed chip instance of an M x K weight matrix (row-major).
struct ProgrammedWeights {
  int M = 0, K = 0;
  float scale = 1.0f;                    // µS per weight unit: (g_max - g_min)/max|W| (1 if W == 0)
  std::vector<float> g_plus, g_minus;    // programmed conductances g_prog (µS), M*K each
  std::vector<float> nu_plus, nu_minus;  // drift exponents per device
};

// SPEC §4.1 + programming noise + drift exponent draw of §4.2.  Same seed -> same chip.
void pcm_program(const float *W, int M, int K, const PCMNoiseParameters &p, uint64_t seed,
                 ProgrammedWeights &out);

// Effective weights t_inference seconds after programming (SPEC §4.2: drift for T > t_0 with
// T = t_inference + t_0, then read noise), W = (g+ - g-)/scale.  `call` selects the read-noise
// sample (a different call gives fresh read noise).  W_out holds M*K values.
void pcm_weights_at(const ProgrammedWeights &pw, const PCMNoiseParameters &p, double t_inference,
                    uint64_t seed, uint64_t call, float *W_out);

// Weights right after programming, without drift and read noise: (g+_prog - g-_prog)/scale.
void pcm_programmed_weights(const ProgrammedWeights &pw, float *W_out);

enum class DriftCompensationType : int { None = 0, Global = 1, PerColumn = 2 };

// SPEC §4.3 readout: the identity (K one-hot input rows) through
// io_mvm(W, M, K, false, ...) with bound management on and no alpha; writes
// max(mean|y|, 1e-4) over all outputs (Global: ref_out[0]) or per output column m
// (PerColumn: ref_out[0..M)).  None: does nothing (ref_out is not touched).
void drift_readout(const float *W, int M, int K, const IOParameters &io,
                   const MappingParameter &map, DriftCompensationType type, const MVMCall &rng,
                   float *ref_out);

// The chip conventions shared by every host (the PyTorch inference tile and the onnxruntime
// kernel), so both see the same chip for the same seeds:
//  - the compensation reference is the read-out (drift_readout with generator
//    (tile_seed ^ kChipReadoutSeedXor, 0)) of the chip at t = 0 with read-noise sample 0;
//  - the chip at time t is pcm_weights_at(..., t, program_seed, call = 1), and
//    alpha = reference / read-out of that chip.
constexpr uint64_t kChipReadoutSeedXor = 0x5DEECE66DULL;

// Writes the reference (1 value for Global, M for PerColumn; nothing for None).
void chip_reference(const ProgrammedWeights &pw, const PCMNoiseParameters &p, uint64_t program_seed,
                    const IOParameters &io, const MappingParameter &map, DriftCompensationType type,
                    uint64_t tile_seed, float *ref_out);

// Chip weights W_out [M, K] at t_inference seconds and, unless type is None, alpha_out
// (1 or M values) = ref / read-out of W_out.
void chip_at(const ProgrammedWeights &pw, const PCMNoiseParameters &p, double t_inference, uint64_t program_seed,
             const IOParameters &io, const MappingParameter &map, DriftCompensationType type, uint64_t tile_seed,
             const float *ref, float *W_out, float *alpha_out);

// ---------------------------------------------------------------------------------------------
// Per-device math (SPEC §4.1-4.2), shared with the CUDA twin.

// Target conductances of one weight (SPEC §4.1).
RPU_HD void pcm_target_pair(float w, float scale, float g_max, float g_min, float &gp, float &gm) {
  const float sw = scale * w;
  gp = fminf(fmaxf(sw, 0.0f), g_max) + g_min;
  gm = fminf(fmaxf(-sw, 0.0f), g_max) + g_min;
}

// Programming noise std of a target conductance, already scaled by g_max/25.
RPU_HD float pcm_prog_sigma(float g_t, const float c[3], float g_max) {
  const float x = g_t / g_max;
  return (c[0] + x * (c[1] + x * c[2])) * (g_max * (1.0f / 25.0f));
}

// g_prog = max(0, g_T + prog_noise_scale * sigma_prog * xi).
RPU_HD float pcm_program_device(float g_t, const float c[3], float g_max, float prog_noise_scale,
                                float xi) {
  return fmaxf(0.0f, g_t + prog_noise_scale * pcm_prog_sigma(g_t, c, g_max) * xi);
}

// Mean and spread of the drift exponent of a device with target conductance g_t
// (g_rel = max(|g_T/g_max|, 1e-7), mu and sigma clipped as in SPEC §4.2).
RPU_HD void pcm_drift_mu_sigma(float g_t, float g_max, float &mu, float &sig) {
  const float g_rel = fmaxf(fabsf(g_t / g_max), 1e-7f);
  const float lg = logf(g_rel);
  mu = fminf(fmaxf(-0.0155f * lg + 0.0244f, 0.049f), 0.1f);
  sig = fminf(fmaxf(-0.0125f * lg - 0.0059f, 0.008f), 0.045f);
}

// Drift exponent nu = max(0, |mu + sigma*xi|) * drift_scale.
RPU_HD float pcm_drift_nu_from(float mu, float sig, float drift_scale, float xi) {
  return fmaxf(0.0f, fabsf(mu + sig * xi)) * drift_scale;
}

RPU_HD float pcm_drift_nu(float g_t, float g_max, float drift_scale, float xi) {
  float mu, sig;
  pcm_drift_mu_sigma(g_t, g_max, mu, sig);
  return pcm_drift_nu_from(mu, sig, drift_scale, xi);
}

// Q_s of the read noise for a programmed conductance.
RPU_HD float pcm_read_qs(float g_prog, float g_max) {
  const float r = fabsf(g_prog) / g_max;
  return fminf(0.0088f / fmaxf(powf(r, 0.65f), 1e-3f), 0.2f);
}

// Conductance at inference time.  log_t = ln(T/t_0) (0: no drift), sqrt_log_read =
// sqrt(ln((T + t_read)/(2 t_read))) (0: no read noise).
RPU_HD float pcm_read_device(float g_prog, float nu, float log_t, float sqrt_log_read,
                             float g_max, float read_noise_scale, float xi) {
  const float g_drift = (nu > 0.0f && log_t > 0.0f) ? g_prog * expf(-nu * log_t) : g_prog;
  if (g_drift == 0.0f || sqrt_log_read == 0.0f) return fmaxf(0.0f, g_drift);
  const float sig = pcm_read_qs(g_prog, g_max) * sqrt_log_read;
  return fmaxf(0.0f, g_drift + fabsf(g_drift) * read_noise_scale * sig * xi);
}

}  // namespace rpu
