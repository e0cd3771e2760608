// The analog matrix-vector product with its periphery (SPEC §1): noise management, bound
// management, DAC/ADC quantization, input/output/weight-read noise, tile splitting.
// This is the one implementation used by the training tiles, the inference tiles, the
// torch.library op and the onnxruntime kernel.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "io_math.h"
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

// Y[r, o] += bias[o] for r < rows, o < M (a layer's digital bias after io_mvm; the CUDA twin is
// cuda::add_bias).  On rpucuda's threads: a torch add would wake torch's OpenMP threads, which
// then spin beside rpucuda's threads into the next call.
void add_bias(float *Y, int64_t rows, int64_t M, const float *bias);

// Steps of the pipeline that the convolution pipeline (io_conv.h) shares with io_mvm.

// The random numbers of a call: element i (input or output index within the tile) of row n on
// tile `block` (tiles numbered output chunk major, n_blocks in all) is number
// noise_base(n, n_blocks, block) + i of each stream (tag, iteration).
constexpr int kNoiseLocalBits = 20;  // tile sizes are below 2^20, see validate()
inline uint64_t noise_base(int64_t n, int n_blocks, int block) {
  return ((uint64_t)n * (uint64_t)n_blocks + (uint64_t)block) << kNoiseLocalBits;
}

// The weights one call reads (SPEC §1.5): W itself, or with weight read noise a noisy copy of
// the M x K weights in `buffer` (normal number i of the call for weight i).
const float *read_weights(const float *W, int M, int K, const IOParameters &io, const MVMCall &rng,
                          std::vector<float> &buffer);

// Noise management (SPEC §1.3): the scale s of one input vector from its max |x| (amax, NaN if
// the vector has a NaN) and its max x; 0 for a zero vector (whose output is 0).
inline float noise_scale(const IOParameters &io, float amax, float mx) {
  return noise_scale_of(io.noise_management, amax, mx, io.nm_thres);
}

// Bound management (SPEC §1.8) of a vector whose output saturated at iteration `it` with scale s
// and factor r: the next factor, or 0 if the output is accepted as it is.  x: the Li inputs of
// the tile; tile_wmax: the largest |weight| of the tile (asked only for the worst case).
float bound_management_factor(const IOParameters &io, int it, float s, float r, const float *x, int Li,
                              const std::function<float()> &tile_wmax);

// The largest factor bound management may reach for these parameters.
float bound_management_limit(const IOParameters &io);

}  // namespace rpu
