// Layout steps around io_mvm in the onnxruntime CUDA kernels (ort_ops/analog_ops.cpp): im2col,
// the scatter of the analog product's rows back to [N, M, L] with the digital bias, and the bias
// of AnalogMatMul.  Data movement and one float add per output (im2col_kernels.h), so the
// results are bit-identical to the CPU adapter's loops.
#include "cuda_common.cuh"
#include "im2col_kernels.h"

namespace rpu {
namespace cuda {
namespace {

__global__ void im2col_kernel(const float *__restrict__ X, int64_t C, int64_t c0, Im2colShape sh, int64_t Lt,
                              int64_t Kg, int64_t total, float *__restrict__ cols) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    cols[i] = layout::im2col_element(X, C, c0, sh, Lt, Kg, i);
}

// One thread per output element (coalesced writes; the reads stride by Mg).
__global__ void rows_to_channels_kernel(const float *__restrict__ rows, int64_t L, int64_t Mg, int64_t M, int64_t m0,
                                        const float *__restrict__ bias, int64_t total, float *__restrict__ Y) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t y;
    const float v = layout::rows_to_channels_element(rows, L, Mg, M, m0, bias, i, &y);
    Y[y] = v;
  }
}

__global__ void add_bias_kernel(float *__restrict__ Y, int64_t M, const float *__restrict__ bias, int64_t total) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
    Y[i] += bias[i % M];
}

}  // namespace

void im2col(const float *X, int64_t N, int64_t C, int64_t c0, int64_t Cg, const Im2colShape &shape, float *cols,
            Stream s) {
  const int64_t Lt = shape.L[0] * shape.L[1] * shape.L[2];
  const int64_t Kg = Cg * shape.K[0] * shape.K[1] * shape.K[2];
  const int64_t total = N * Lt * Kg;
  if (total <= 0) return;
  im2col_kernel<<<blocks_for(total), kThreads, 0, as_stream(s)>>>(X, C, c0, shape, Lt, Kg, total, cols);
  RPU_CUDA_LAUNCH_CHECK("rpu::cuda::im2col");
}

void rows_to_channels(const float *rows, int64_t N, int64_t L, int64_t Mg, int64_t M, int64_t m0, const float *bias,
                      float *Y, Stream s) {
  const int64_t total = N * Mg * L;
  if (total <= 0) return;
  rows_to_channels_kernel<<<blocks_for(total), kThreads, 0, as_stream(s)>>>(rows, L, Mg, M, m0, bias, total, Y);
  RPU_CUDA_LAUNCH_CHECK("rpu::cuda::rows_to_channels");
}

void add_bias(float *Y, int64_t rows, int64_t M, const float *bias, Stream s) {
  const int64_t total = rows * M;
  if (total <= 0 || bias == nullptr) return;
  add_bias_kernel<<<blocks_for(total), kThreads, 0, as_stream(s)>>>(Y, M, bias, total);
  RPU_CUDA_LAUNCH_CHECK("rpu::cuda::add_bias");
}

}  // namespace cuda
}  // namespace rpu
