// Device arrays: the per-cross-point parameters of a pulsed tile, drawn once from
// construction_seed (device-to-device variation, SPEC §3).
#pragma once
#include <vector>

#include "device_step.h"
#include "parameters.h"

namespace rpu {

struct DeviceArray {
  DeviceParameters par;
  int M = 0, K = 0;
  std::vector<DeviceCell> cells;  // M*K, row-major (output row, input column)

  // Draws the device-to-device parameters of an M x K array.
  void build(const DeviceParameters &p, int M, int K);
  bool is_floating_point() const { return par.type == DeviceType::FloatingPoint; }
};

}  // namespace rpu
