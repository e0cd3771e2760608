#include "pulsed_update.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "blas.h"
#include "rng.h"
#include "threading.h"

namespace rpu {

void exact_update(float *W, int M, int K, const float *X, const float *D, int N, float lr) {
  // W[M,K] += (-lr) * D^T[M,N] X[N,K]
  sgemm_parallel(true, false, M, K, N, -lr, D, M, X, K, 1.0f, W, K);
}

PulseScales pulse_scales(float x_max, float d_max, float lr, float dw_min, const UpdateParameters &up,
                         int bl_override) {
  PulseScales s;
  if (!(x_max > 0.0f) || !(d_max > 0.0f) || !(lr > 0.0f)) return s;
  const float ratio = lr * x_max * d_max / dw_min;  // expected pulses of the largest pair
  int bl = up.desired_bl;
  if (bl_override > 0) {
    bl = bl_override;
  } else if (up.update_bl_management) {
    bl = std::min(up.desired_bl, std::max(1, (int)std::ceil(ratio)));
  }
  float d_eff = d_max;
  if (ratio > (float)bl) d_eff = d_max * (float)bl / ratio;  // clip on the d side
  const float A = std::sqrt(lr / (dw_min * (float)bl));
  const float k = up.update_management ? std::sqrt(d_eff / x_max) : 1.0f;
  s.bl = bl;
  s.x_scale = A * k;
  s.d_scale = A / k;
  return s;
}

namespace {

inline int popcount64(uint64_t v) { return __builtin_popcountll(v); }

// A pulse train of `bl` slots firing with probability p each (16-bit resolution), as bits.
inline uint64_t pulse_train(float p, int bl, uint64_t seed, uint32_t tag, uint64_t call, uint64_t line) {
  if (p <= 0.0f) return 0;
  const int bits = bl > 64 ? 64 : bl;
  if (p >= 1.0f) return bits == 64 ? ~0ull : ((1ull << bits) - 1);
  const uint32_t thr = (uint32_t)(p * 65536.0f + 0.5f);
  uint64_t out = 0;
  for (int w = 0; w * 8 < bits; ++w) {
    Philox4 b = rng_block(seed, tag, 0, call, line * 8 + w);
    for (int t = 0; t < 8; ++t) {
      int slot = w * 8 + t;
      if (slot >= bits) break;
      uint32_t u = (t & 1) ? (b.v[t >> 1] >> 16) : (b.v[t >> 1] & 0xFFFFu);
      out |= (uint64_t)(u < thr) << slot;
    }
  }
  return out;
}

}  // namespace

void pulsed_update(float *W, int M, int K, const float *X, const float *D, int N, float lr,
                   const UpdateParameters &up, const DeviceArray &dev, uint64_t seed,
                   uint64_t call) {
  if (N <= 0 || lr == 0.0f) return;
  if (up.pulse_type == PulseType::None || dev.is_floating_point()) {
    exact_update(W, M, K, X, D, N, lr);
    return;
  }
  const DeviceParameters &par = dev.par;
  const float dw_min = par.dw_min;

  // Per-sample scales (SPEC §2).  With fixed_bl one BL serves the whole batch.
  std::vector<PulseScales> sc(N);
  std::vector<float> xmax(N), dmax(N);
  for (int n = 0; n < N; ++n) {
    float a = 0.0f, b = 0.0f;
    for (int i = 0; i < K; ++i) a = fmaxf(a, fabsf(X[(int64_t)n * K + i]));
    for (int j = 0; j < M; ++j) b = fmaxf(b, fabsf(D[(int64_t)n * M + j]));
    xmax[n] = a;
    dmax[n] = b;
    sc[n] = pulse_scales(a, b, lr, dw_min, up, 0);
  }
  if (up.fixed_bl && up.update_bl_management) {
    int bl = 0;
    for (int n = 0; n < N; ++n) bl = std::max(bl, sc[n].bl);
    for (int n = 0; n < N; ++n)
      if (sc[n].bl > 0) sc[n] = pulse_scales(xmax[n], dmax[n], lr, dw_min, up, bl);
  }

  const bool implicit = up.pulse_type == PulseType::DeterministicImplicit;
  const int max_bits = 64;

  // Pulse trains (or, for the implicit type, pulse counts) of every line.
  std::vector<uint64_t> xb((size_t)N * K), db((size_t)N * M);
  std::vector<float> xc, dc;
  if (implicit) {
    xc.resize((size_t)N * K);
    dc.resize((size_t)N * M);
  }
  parallel_for(N, 1, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) {
      const PulseScales &s = sc[n];
      for (int i = 0; i < K; ++i) {
        float p = fminf(1.0f, s.x_scale * fabsf(X[n * K + i]));
        if (implicit) xc[n * K + i] = s.bl > 0 ? std::round(p * s.bl) : 0.0f;
        else xb[n * K + i] = s.bl > 0 ? pulse_train(p, s.bl, seed, TAG_PULSE_X, call, (uint64_t)(n * K + i)) : 0;
      }
      for (int j = 0; j < M; ++j) {
        float q = fminf(1.0f, s.d_scale * fabsf(D[n * M + j]));
        if (implicit) dc[n * M + j] = s.bl > 0 ? std::round(q * s.bl) : 0.0f;
        else db[n * M + j] = s.bl > 0 ? pulse_train(q, s.bl, seed, TAG_PULSE_D, call, (uint64_t)(n * M + j)) : 0;
      }
    }
  });

  // Coincidences: every row j of W is independent, so rows are split over threads.
  parallel_for(M, 4, [&](int64_t jb, int64_t je) {
    std::vector<int> active;
    active.reserve(K);
    for (int n = 0; n < N; ++n) {
      const PulseScales &s = sc[n];
      if (s.bl <= 0) continue;
      const float *x = X + (int64_t)n * K;
      const float *d = D + (int64_t)n * M;
      active.clear();
      for (int i = 0; i < K; ++i)
        if (implicit ? xc[(int64_t)n * K + i] > 0.0f : xb[(int64_t)n * K + i] != 0) active.push_back(i);
      if (active.empty()) continue;
      for (int64_t j = jb; j < je; ++j) {
        const float dj = d[j];
        const uint64_t dbits = implicit ? 0 : db[(int64_t)n * M + j];
        const float dcount = implicit ? dc[(int64_t)n * M + j] : 0.0f;
        if (implicit ? dcount == 0.0f : dbits == 0) continue;
        float *wrow = W + j * (int64_t)K;
        const DeviceCell *crow = dev.cells.data() + j * (int64_t)K;
        for (int i : active) {
          int count;
          if (implicit) {
            float v = xc[(int64_t)n * K + i] * dcount / (float)s.bl;
            if (up.sto_round) {
              float u = uniform_at(seed, TAG_UPDATE_ROUND, 0, call, ((uint64_t)n * M + j) * K + i);
              count = (int)std::floor(v + u);
            } else {
              count = (int)std::floor(v + 0.5f);
            }
          } else {
            count = popcount64(xb[(int64_t)n * K + i] & dbits);
          }
          if (count == 0) continue;
          // Pulse direction: -sign(x_i d_j).
          const int dir = ((x[i] > 0.0f) == (dj > 0.0f)) ? -1 : 1;
          float w = wrow[i];
          const uint64_t pidx = (((uint64_t)n * M + j) * K + i) << 8;
          float z[4];
          for (int c = 0; c < count; ++c) {
            if ((c & 3) == 0) normal4(rng_block(seed, TAG_PULSE_C2C, 0, call, (pidx + c) >> 2), z);
            w = device_pulse(par, crow[i], w, dir, par.dw_min_std > 0.0f ? z[c & 3] : 0.0f);
          }
          wrow[i] = w;
        }
      }
    }
  });
}

}  // namespace rpu
