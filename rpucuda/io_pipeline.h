// The analog matrix-vector product with its periphery (SPEC §1): noise management, bound
// management, DAC/ADC quantization, input/output/weight-read noise, tile splitting.
// This is the one implementation used by the training tiles, the inference tiles, the
// torch.library op and the onnxruntime kernel.
#pragma once
#include <cstdint>

#include "parameters.h"

namespace rpu {

struct MVMCall {
  uint64_t seed = 0;  // generator key
  uint64_t call = 0;  // call index: every call with the same (seed, call) draws the same noise
};

// Y[N, out] = pipeline(A x) for each of the N rows of X[N, in], where A = W (M x K, row-major,
// out = M, in = K) or, for transposed = true (the backward pass), A = W^T (out = K, in = M).
// The weight matrix is split into tiles of at most map.max_output_size rows by
// map.max_input_size columns; each tile has its own periphery and partial sums are added
// digitally.  `alpha` (nullptr, or n_alpha = 1 or n_alpha = out values) multiplies the output
// (drift compensation).  Bound management is used only when `bound_management` is true.
// Y is overwritten.
void io_mvm(const float *W, int M, int K, bool transposed, const float *X, int N, float *Y,
            const IOParameters &io, const MappingParameter &map, bool bound_management,
            const float *alpha, int n_alpha, const MVMCall &rng);

}  // namespace rpu
