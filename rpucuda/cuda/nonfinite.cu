// Whether a device array holds NaN or Inf: the input check of the onnxruntime CUDA kernels
// (ort_ops/analog_ops.cpp), which reject such inputs with the same message as the CPU kernels.
#include "cuda_common.cuh"
#include "im2col_kernels.h"

namespace rpu {
namespace cuda {
namespace {

// flags |= 1 for a NaN, 2 for an Inf.
__global__ void nonfinite_kernel(const float *__restrict__ x, int64_t n, int *flags) {
  int f = 0;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    f |= layout::nonfinite_flag(x[i]);
  if (f) atomicOr(flags, f);
}

}  // namespace

int nonfinite_kind(const float *x, int64_t n, Stream s) {
  if (n <= 0) return 0;
  const cudaStream_t st = as_stream(s);
  Scratch<int> flags(1, st);
  RPU_CUDA_CHECK(cudaMemsetAsync(flags.get(), 0, sizeof(int), st));
  // Enough blocks to fill the GPU; each thread strides over the rest.
  const int blocks = blocks_for(n) < 1024 ? blocks_for(n) : 1024;
  nonfinite_kernel<<<blocks, kThreads, 0, st>>>(x, n, flags.get());
  RPU_CUDA_LAUNCH_CHECK("rpu::cuda::nonfinite_kind");
  int f = 0;
  RPU_CUDA_CHECK(cudaMemcpyAsync(&f, flags.get(), sizeof(int), cudaMemcpyDeviceToHost, st));
  RPU_CUDA_CHECK(cudaStreamSynchronize(st));
  return (f & 1) ? 1 : (f & 2) ? 2 : 0;
}

}  // namespace cuda
}  // namespace rpu
