// The pulsed (stochastic pulse-train) weight update of SPEC §2.
#pragma once
#include <cstdint>
#include <functional>

#include "devices.h"
#include "parameters.h"

namespace rpu {

// W[M, K] <- W - lr * sum_n d_n (x) x_n, done with pulses on the devices of `dev`.
// X is [N, K], D is [N, M] (row-major).  Samples are applied one after the other.
// Random draws are Philox numbers indexed by (seed, call, sample, line, slot) for the pulse
// trains and by (seed, call, row of W, position) for the cycle-to-cycle noise, so the result
// does not depend on the thread count (the layout is described in pulsed_update.cpp).
// ConstantStep devices sum the pulses of each cross-point over the batch where no bound can be
// reached (exact in distribution); other devices apply every pulse with device_pulse().
void pulsed_update(float *W, int M, int K, const float *X, const float *D, int N, float lr,
                   const UpdateParameters &up, const DeviceArray &dev, uint64_t seed,
                   uint64_t call);

// The same, with the rows of X made on demand (e.g. a convolution's unfolded input, which then
// never exists whole): rows(n0, count, out) writes rows n0 .. n0+count-1 (count <= kRowBlock) to
// out [count, K]; it is called from several threads at once.  The same result as with X.
constexpr int kRowBlock = 64;
using RowBlockFn = std::function<void(int64_t n0, int count, float *out)>;
void pulsed_update(float *W, int M, int K, const RowBlockFn &rows, const float *D, int N, float lr,
                   const UpdateParameters &up, const DeviceArray &dev, uint64_t seed, uint64_t call);

// Exact update W -= lr * D^T X (floating-point devices and pulse_type NONE).
void exact_update(float *W, int M, int K, const float *X, const float *D, int N, float lr);

// The pulse-train length and the probability scales of SPEC §2 for one sample.
struct PulseScales {
  int bl = 0;            // pulse slots (0 = nothing to do)
  float x_scale = 0.0f;  // p_i = min(1, x_scale * |x_i|)
  float d_scale = 0.0f;  // q_j = min(1, d_scale * |d_j|)
};
PulseScales pulse_scales(float x_max, float d_max, float lr, float dw_min, const UpdateParameters &up,
                         int bl_override);

}  // namespace rpu
