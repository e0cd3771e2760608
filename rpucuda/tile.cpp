#include "tile.h"

#include <algorithm>
#include <cmath>

#include "blas.h"
#include "pulsed_update.h"

namespace rpu {

FloatingPointTile::FloatingPointTile(int out_size, int in_size)
    : M_(out_size), K_(in_size), w_((size_t)out_size * in_size, 0.0f) {}

void FloatingPointTile::forward(const float *X, int N, float *Y) const {
  sgemm_parallel(false, true, N, M_, K_, 1.0f, X, K_, w_.data(), K_, 0.0f, Y, M_);
}

void FloatingPointTile::backward(const float *D, int N, float *Z) const {
  sgemm_parallel(false, false, N, K_, M_, 1.0f, D, M_, w_.data(), K_, 0.0f, Z, K_);
}

void FloatingPointTile::update(const float *X, const float *D, int N) {
  exact_update(w_.data(), M_, K_, X, D, N, learning_rate);
}

AnalogTile::AnalogTile(int out_size, int in_size, const DeviceParameters &device,
                       const IOParameters &fwd, const IOParameters &bwd, const UpdateParameters &up,
                       const MappingParameter &map, uint64_t seed)
    : forward_io(fwd), backward_io(bwd), update_par(up), mapping(map), M_(out_size), K_(in_size),
      w_((size_t)out_size * in_size, 0.0f), seed_(seed) {
  dev_.build(device, out_size, in_size);
}

void AnalogTile::forward(const float *X, int N, float *Y, const float *alpha, int n_alpha,
                         const float *W_override) {
  MVMCall c{seed_, call_++};
  io_mvm(W_override ? W_override : w_.data(), M_, K_, false, X, N, Y, forward_io, mapping, true,
         alpha, n_alpha, c);
}

void AnalogTile::backward(const float *D, int N, float *Z, const float *W_override) {
  MVMCall c{seed_, call_++};
  io_mvm(W_override ? W_override : w_.data(), M_, K_, true, D, N, Z, backward_io, mapping, false,
         nullptr, 0, c);
}

void AnalogTile::update(const float *X, const float *D, int N) {
  pulsed_update(w_.data(), M_, K_, X, D, N, learning_rate, update_par, dev_, seed_, call_++);
}

void AnalogTile::update(const RowBlockFn &rows, const float *D, int N) {
  pulsed_update(w_.data(), M_, K_, rows, D, N, learning_rate, update_par, dev_, seed_, call_++);
}

void AnalogTile::set_weights(const float *W) {
  const size_t n = w_.size();
  for (size_t i = 0; i < n; ++i) {
    const DeviceCell &c = dev_.cells[i];
    w_[i] = std::min(std::max(W[i], c.w_min), c.w_max);
  }
}

}  // namespace rpu
