// The CUDA twin of rpu::io_mvm (rpucuda/io_pipeline.cpp): the kernels and their sequence live in
// io_pipeline_kernels.h (shared with the host emulation test); this file only launches them.
#include "exec_cuda.cuh"
#include "io_pipeline_kernels.h"

namespace rpu {
namespace cuda {

void io_mvm(const float *W, int M, int K, bool transposed, const float *X, int N, float *Y, const IOParameters &io,
            const MappingParameter &map, bool bound_management, const float *alpha, int n_alpha, const MVMCall &rng,
            Stream s) {
  CudaExec ex(as_stream(s));
  twin::io_mvm_run(ex, W, M, K, transposed, X, N, Y, io, map, bound_management, alpha, n_alpha, rng);
}

}  // namespace cuda
}  // namespace rpu
