// Plain parameter structs of the simulator.  Names and defaults follow SPEC.md (aihwkit
// conventions); the Python dataclasses in aihw_deploy/simulator/parameters mirror them field by
// field and a test checks that both sides have the same defaults.
#pragma once
#include <cstdint>
#include <string>

namespace rpu {

enum class NoiseManagementType : int { None = 0, AbsMax = 1, Max = 2, AverageAbsMax = 3, Constant = 4 };
enum class BoundManagementType : int { None = 0, Iterative = 1, IterativeWorstCase = 2 };
enum class WeightNoiseType : int { None = 0, AdditiveConstant = 1, PCMRead = 2 };
enum class PulseType : int {
  None = 0,
  Stochastic = 1,
  StochasticCompressed = 2,
  DeterministicImplicit = 3
};
enum class DeviceType : int {
  FloatingPoint = 0,
  ConstantStep = 1,
  LinearStep = 2,
  SoftBounds = 3,
  ExpStep = 4,
  PowStep = 5
};

// SPEC §1. Resolutions: a value in (0,1] is a fraction of the full range, > 1 a number of
// steps, <= 0 no quantization.
struct IOParameters {
  bool is_perfect = false;
  float inp_bound = 1.0f;
  float inp_res = 1.0f / (128 - 2);
  bool inp_sto_round = false;
  float inp_noise = 0.0f;
  float out_bound = 12.0f;
  float out_res = 1.0f / (512 - 2);
  bool out_sto_round = false;
  float out_noise = 0.06f;
  float out_scale = 1.0f;
  float w_noise = 0.0f;
  WeightNoiseType w_noise_type = WeightNoiseType::None;
  NoiseManagementType noise_management = NoiseManagementType::AbsMax;
  BoundManagementType bound_management = BoundManagementType::Iterative;
  float nm_thres = 0.0f;
  float max_bm_factor = 1000.0f;
  float max_bm_res = 0.25f;
};

// SPEC §2.
struct UpdateParameters {
  int desired_bl = 31;
  PulseType pulse_type = PulseType::StochasticCompressed;
  bool update_management = true;
  bool update_bl_management = true;
  bool fixed_bl = true;
  bool sto_round = false;
};

// SPEC §1, tile mapping.
struct MappingParameter {
  int max_input_size = 512;
  int max_output_size = 512;
  bool digital_bias = true;
};

// SPEC §3. One flat struct for every device type: the fields a type does not use are ignored.
struct DeviceParameters {
  DeviceType type = DeviceType::ConstantStep;
  float dw_min = 0.001f;
  float dw_min_dtod = 0.3f;
  float dw_min_std = 0.3f;
  float w_max = 0.6f;
  float w_max_dtod = 0.3f;
  float w_min = -0.6f;
  float w_min_dtod = 0.3f;
  float up_down = 0.0f;
  float up_down_dtod = 0.01f;
  uint64_t construction_seed = 0;
  bool enforce_consistency = true;
  // LinearStep (slopes) and ExpStep (exponents); defaults depend on the type, see
  // default_device_parameters().
  float gamma_up = 0.0f;
  float gamma_down = 0.0f;
  float gamma_up_dtod = 0.05f;
  float gamma_down_dtod = 0.05f;
  // ExpStep
  float A_up = 0.00081f;
  float A_down = 0.36833f;
  float a = 0.244f;
  float b = 0.2425f;
  // PowStep
  float pow_gamma = 1.0f;
  float pow_gamma_dtod = 0.1f;
  float pow_up_down = 0.0f;
  float pow_up_down_dtod = 0.0f;
};

// The SPEC defaults of one device type (ExpStep has its own gamma_up/gamma_down; SoftBounds
// and FloatingPoint have no bounds variation of their own).
DeviceParameters default_device_parameters(DeviceType type);

// Returns an empty string when valid, else a message naming the offending field.
std::string validate(const IOParameters &p);
std::string validate(const UpdateParameters &p);
std::string validate(const MappingParameter &p);
std::string validate(const DeviceParameters &p);

// Effective quantization step for a resolution value and a bound (SPEC §1.4): 0 = none.
inline float quant_step(float res, float bound) {
  if (res <= 0.0f) return 0.0f;
  if (res > 1.0f) res = 1.0f / res;
  return res * 2.0f * bound;
}

}  // namespace rpu
