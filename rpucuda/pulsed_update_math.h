// Math of the pulsed update shared by the CPU (pulsed_update.cpp) and its CUDA twin
// (cuda/pulsed_update.cu): plain float code compiled for both (RPU_HD), so that both sides
// round identically (the .cu files are built with --fmad=false).
#pragma once
#include <cmath>

#include "parameters.h"
#include "pulsed_update.h"
#include "rng.h"

namespace rpu {

// The pulse-train length and the probability scales of SPEC §2 for one sample (see
// pulse_scales() in pulsed_update.h; bl_override > 0 fixes BL, as fixed_bl does).
RPU_HD PulseScales pulse_scales_hd(float x_max, float d_max, float lr, float dw_min, const UpdateParameters &up,
                                   int bl_override) {
  PulseScales s;
  if (!(x_max > 0.0f) || !(d_max > 0.0f) || !(lr > 0.0f)) return s;
  const float ratio = lr * x_max * d_max / dw_min;  // expected pulses of the largest pair
  int bl = up.desired_bl;
  if (bl_override > 0) {
    bl = bl_override;
  } else if (up.update_bl_management) {
    // min(desired_bl, max(1, ceil(ratio))); the comparison first keeps the conversion to int
    // defined for any ratio (a huge or NaN ratio gives desired_bl)
    const int need = ratio < (float)up.desired_bl ? (int)ceilf(ratio) : up.desired_bl;
    bl = need > 1 ? need : 1;
  }
  float d_eff = d_max;
  if (ratio > (float)bl) d_eff = d_max * (float)bl / ratio;  // clip on the d side
  const float A = sqrtf(lr / (dw_min * (float)bl));
  const float k = up.update_management ? sqrtf(d_eff / x_max) : 1.0f;
  s.bl = bl;
  s.x_scale = A * k;
  s.d_scale = A / k;
  return s;
}

}  // namespace rpu
