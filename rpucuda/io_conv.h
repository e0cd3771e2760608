// The analog forward of a convolution (one group): im2col, the IO pipeline's analog product
// (io_pipeline.h) and the layout change to [N, M, *out], in one pass without the unfolded
// input in memory.
#pragma once
#include <cstdint>

#include "im2col.h"
#include "io_pipeline.h"

namespace rpu {

// Where output o of position l (of L = s.out_volume()) of image n goes:
// Y[n * image + o * channel + l * position].
struct ConvOutputLayout {
  int64_t image, channel, position;
  // [N, M_total, L] (torch's layout of a convolution's output)
  static ConvOutputLayout channels(int64_t M_total, int64_t L) { return {M_total * L, L, 1}; }
  // [N * L, M_total] (the rows of io_mvm)
  static ConvOutputLayout rows(int64_t M_total, int64_t L) { return {L * M_total, 1, M_total}; }
};

// Output o of position l of image n = row n * L + l, output o of
//   io_mvm(W, M, K, false, cols, s.rows(), rows, io, map, bound_management, alpha, n_alpha, rng)
// with cols = im2col(X, s, ones_column) (K = s.cols() + ones_column), plus bias[o] (a digital
// bias; nullptr: none), written to Y in the given layout: the same values bit for bit, noise
// included.  Blocks of output positions go through the pipeline in the transposed ("columns")
// layout: each unfolded block is built in cache (never the whole unfolded input) and every
// element step runs over 16 positions at once.  Configurations the columns path does not cover
// (several tiles along the input, stochastic rounding, average noise management) take
// im2col + io_mvm.
// nonfinite (if not null) is set to whether any input element of the group is NaN or Inf (found
// in the pass that computes the noise-management maps, so the check costs no extra pass).
void io_conv(const float *W, int M, int K, const float *X, const ConvShape &s, bool ones_column, float *Y,
             const ConvOutputLayout &y_layout, const IOParameters &io, const MappingParameter &map,
             bool bound_management, const float *alpha, int n_alpha, const float *bias, const MVMCall &rng,
             bool *nonfinite = nullptr);

}  // namespace rpu
