// The analog forward of a convolution (one group): im2col, the IO pipeline's analog product
// (io_pipeline.h) and the layout change to [N, M, *out], in one pass without the unfolded
// input in memory.
#pragma once
#include <cstdint>

#include "im2col.h"
#include "io_pipeline.h"

namespace rpu {

// Y[n * y_image_stride + o * L + l] (L = s.out_volume()) = row n * L + l, output o of
//   io_mvm(W, M, K, false, cols, s.rows(), rows, io, map, bound_management, alpha, n_alpha, rng)
// with cols = im2col(X, s, ones_column) (K = s.cols() + ones_column), plus bias[o] (a digital
// bias; nullptr: none): the same values bit for bit, noise included.  Blocks of output
// positions go through the pipeline in the transposed ("columns") layout: each unfolded block
// is built in cache, every element step runs over 16 positions at once and the outputs are
// stored straight into [N, M, L].  Configurations the columns path does not cover (several
// tiles along the input, stochastic rounding, average noise management) take im2col + io_mvm.
void io_conv(const float *W, int M, int K, const float *X, const ConvShape &s, bool ones_column, float *Y,
             int64_t y_image_stride, const IOParameters &io, const MappingParameter &map, bool bound_management,
             const float *alpha, int n_alpha, const float *bias, const MVMCall &rng);

}  // namespace rpu
