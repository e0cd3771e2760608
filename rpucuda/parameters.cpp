#include "parameters.h"

#include <cmath>

namespace rpu {

namespace {
bool finite(float v) { return std::isfinite(v); }
}  // namespace

std::string validate(const IOParameters &p) {
  if (!finite(p.inp_bound) || p.inp_bound <= 0.0f) return "inp_bound must be a positive finite number";
  if (!finite(p.out_bound) || p.out_bound < 0.0f) return "out_bound must be >= 0 (0 = no output bound)";
  if (!finite(p.inp_res)) return "inp_res must be finite";
  if (!finite(p.out_res)) return "out_res must be finite";
  if (!finite(p.inp_noise) || p.inp_noise < 0.0f) return "inp_noise must be >= 0";
  if (!finite(p.out_noise) || p.out_noise < 0.0f) return "out_noise must be >= 0";
  if (!finite(p.w_noise) || p.w_noise < 0.0f) return "w_noise must be >= 0";
  if (!finite(p.out_scale)) return "out_scale must be finite";
  if (!finite(p.nm_thres) || p.nm_thres < 0.0f) return "nm_thres must be >= 0";
  if (!finite(p.max_bm_factor) || p.max_bm_factor < 1.0f) return "max_bm_factor must be >= 1";
  if (!finite(p.max_bm_res) || p.max_bm_res <= 0.0f) return "max_bm_res must be > 0";
  if ((int)p.noise_management < 0 || (int)p.noise_management > 4) return "noise_management: unknown value";
  if ((int)p.bound_management < 0 || (int)p.bound_management > 2) return "bound_management: unknown value";
  if ((int)p.w_noise_type < 0 || (int)p.w_noise_type > 2) return "w_noise_type: unknown value";
  return "";
}

std::string validate(const UpdateParameters &p) {
  if (p.desired_bl < 1 || p.desired_bl > 64) return "desired_bl must be in [1, 64]";
  if ((int)p.pulse_type < 0 || (int)p.pulse_type > 3) return "pulse_type: unknown value";
  return "";
}

std::string validate(const MappingParameter &p) {
  if (p.max_input_size < 1 || p.max_input_size >= (1 << 20)) return "max_input_size must be in [1, 2^20)";
  if (p.max_output_size < 1 || p.max_output_size >= (1 << 20)) return "max_output_size must be in [1, 2^20)";
  return "";
}

std::string validate(const DeviceParameters &p) {
  if ((int)p.type < 0 || (int)p.type > 5) return "device type: unknown value";
  const float vals[] = {p.dw_min, p.dw_min_dtod, p.dw_min_std, p.w_max, p.w_max_dtod, p.w_min,
                        p.w_min_dtod, p.up_down, p.up_down_dtod, p.gamma_up, p.gamma_down,
                        p.gamma_up_dtod, p.gamma_down_dtod, p.A_up, p.A_down, p.a, p.b,
                        p.pow_gamma, p.pow_gamma_dtod, p.pow_up_down, p.pow_up_down_dtod};
  for (float v : vals)
    if (!finite(v)) return "device parameters must be finite";
  if (p.dw_min <= 0.0f) return "dw_min must be > 0";
  if (p.dw_min_dtod < 0.0f) return "dw_min_dtod must be >= 0";
  if (p.dw_min_std < 0.0f) return "dw_min_std must be >= 0";
  if (p.w_max_dtod < 0.0f || p.w_min_dtod < 0.0f || p.up_down_dtod < 0.0f) return "*_dtod must be >= 0";
  if (p.type != DeviceType::FloatingPoint && p.w_min > p.w_max) return "w_min must be <= w_max";
  if (p.type != DeviceType::FloatingPoint && p.w_min == p.w_max) return "w_min must differ from w_max";
  if (p.pow_gamma < 0.0f) return "pow_gamma must be >= 0";
  return "";
}

DeviceParameters default_device_parameters(DeviceType type) {
  DeviceParameters p;
  p.type = type;
  if (type == DeviceType::ExpStep) {
    p.gamma_up = 12.44625f;
    p.gamma_down = 12.78785f;
  }
  return p;
}

}  // namespace rpu
