// Tiles: a cross-bar array of weights W [out_size x in_size] with forward (y = W x),
// backward (z = W^T d) and update (W -= lr d x^T), batched over N rows.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "devices.h"
#include "pulsed_update.h"
#include "io_pipeline.h"
#include "parameters.h"

namespace rpu {

// Exact floating-point tile (no periphery, exact SGD update).
class FloatingPointTile {
 public:
  FloatingPointTile(int out_size, int in_size);
  int out_size() const { return M_; }
  int in_size() const { return K_; }
  float learning_rate = 0.01f;

  void forward(const float *X, int N, float *Y) const;   // X [N, in] -> Y [N, out]
  void backward(const float *D, int N, float *Z) const;  // D [N, out] -> Z [N, in]
  void update(const float *X, const float *D, int N);    // W -= lr * D^T X
  std::vector<float> &weights() { return w_; }
  const std::vector<float> &weights() const { return w_; }

 private:
  int M_, K_;
  std::vector<float> w_;
};

// Analog tile: IO-managed forward/backward (SPEC §1) and pulsed update on devices (SPEC §2-3).
class AnalogTile {
 public:
  AnalogTile(int out_size, int in_size, const DeviceParameters &device, const IOParameters &forward_io,
             const IOParameters &backward_io, const UpdateParameters &update,
             const MappingParameter &mapping, uint64_t seed);
  int out_size() const { return M_; }
  int in_size() const { return K_; }
  float learning_rate = 0.01f;
  IOParameters forward_io, backward_io;
  UpdateParameters update_par;
  MappingParameter mapping;

  // alpha: nullptr, or 1 or out_size factors multiplying the output (drift compensation).
  void forward(const float *X, int N, float *Y, const float *alpha = nullptr, int n_alpha = 0,
               const float *W_override = nullptr);
  void backward(const float *D, int N, float *Z, const float *W_override = nullptr);
  void update(const float *X, const float *D, int N);
  // The same with the rows of X made on demand (pulsed_update.h).
  void update(const RowBlockFn &rows, const float *D, int N);

  // Sets the weights, clipped to each device's bounds.
  void set_weights(const float *W);
  std::vector<float> &weights() { return w_; }
  const DeviceArray &devices() const { return dev_; }
  DeviceArray &devices() { return dev_; }

  // Generator position: seed and the index of the next call.
  uint64_t seed() const { return seed_; }
  uint64_t call_index() const { return call_; }
  void set_generator(uint64_t seed, uint64_t call) {
    seed_ = seed;
    call_ = call;
  }

 private:
  int M_, K_;
  std::vector<float> w_;
  DeviceArray dev_;
  uint64_t seed_, call_ = 0;
};

}  // namespace rpu
