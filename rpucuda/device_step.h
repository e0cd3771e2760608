// One device pulse (SPEC §3), shared by the CPU update and its CUDA twin.
#pragma once
#include <cmath>

#include "parameters.h"
#include "rng.h"

namespace rpu {

// Per-cross-point constants drawn at construction.
struct DeviceCell {
  float dw_up, dw_down;  // step sizes for an up (w increases) and a down pulse
  float w_max, w_min;    // per-device bounds
  float g_up, g_down;    // LinearStep slopes, or PowStep exponents
};

// Weight after one pulse in direction dir (+1 up, -1 down) with cycle-to-cycle factor
// (1 + dw_min_std * xi).  Global (tile-wise) parameters come from `p`.
RPU_HD float device_pulse(const DeviceParameters &p, const DeviceCell &c, float w, int dir,
                          float xi) {
  float step;
  switch (p.type) {
    case DeviceType::LinearStep:
    case DeviceType::SoftBounds:
      // Step shrinks linearly toward the bound it moves to (slope 1 for SoftBounds).
      // (a zero bound gives a zero step in that direction)
      step = dir > 0 ? (c.w_max != 0.0f ? c.dw_up * (1.0f - c.g_up * w / c.w_max) : 0.0f)
                     : (c.w_min != 0.0f ? c.dw_down * (1.0f - c.g_down * w / c.w_min) : 0.0f);
      break;
    case DeviceType::ExpStep: {
      float z = 2.0f * p.a * w / (c.w_max - c.w_min) + p.b;
      float y = dir > 0 ? 1.0f - p.A_up * expf(p.gamma_up * z)
                        : 1.0f - p.A_down * expf(-p.gamma_down * z);
      step = (y > 0.0f ? y : 0.0f) * (dir > 0 ? c.dw_up : c.dw_down);
      break;
    }
    case DeviceType::PowStep: {
      float omega = (c.w_max - w) / (c.w_max - c.w_min);
      omega = omega < 0.0f ? 0.0f : (omega > 1.0f ? 1.0f : omega);
      step = dir > 0 ? c.dw_up * powf(omega, c.g_up) : c.dw_down * powf(1.0f - omega, c.g_down);
      break;
    }
    case DeviceType::ConstantStep:
    case DeviceType::FloatingPoint:
    default:
      step = dir > 0 ? c.dw_up : c.dw_down;
  }
  // (plain comparisons: fmaxf/fminf are library calls here)
  step = (step > 0.0f ? step : 0.0f) * (1.0f + p.dw_min_std * xi);
  w += dir > 0 ? step : -step;
  w = w < c.w_min ? c.w_min : w;
  return w > c.w_max ? c.w_max : w;
}

}  // namespace rpu
