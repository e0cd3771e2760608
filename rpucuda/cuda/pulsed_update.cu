// The CUDA twin of pulsed_update.cpp: exact_update (cuBLAS) and pulsed_update.
//
// The kernels are the bodies of pulsed_update_kernels.h (its header comment describes the data
// flow, the train layout and the random-number streams); this file only launches them: each body
// runs as one generic kernel whose executor maps ex.each() to the calling thread and ex.sync() to
// __syncthreads().  The same bodies run on the host in tests/cpp/test_cuda_update_emulation.cpp.
//
// Agreement with the CPU (rpu::pulsed_update):
//  * pulse trains, implicit counts, coincidence counts: identical (same Philox values);
//  * ConstantStep where the batch-aggregated step applies: identical (same normals, same float
//    operations; built with --fmad=false);
//  * pulse by pulse (other devices, ConstantStep cross-points near a bound): identical sequences
//    of device_pulse() calls when dw_min_std = 0; the cycle-to-cycle normals come from a
//    per-cross-point stream here (per-row on the CPU), so with dw_min_std > 0 they agree in
//    distribution.  ExpStep and PowStep call expf/powf, whose CUDA versions may differ from the
//    host's libm in the last bit, so those agree to float rounding per pulse.
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_common.cuh"
#include "exec_cuda.cuh"  // retain_scratch_pool()
#include "pulsed_update_kernels.h"

namespace rpu {
namespace cuda {
namespace {

template <class State, class Shared>
struct DeviceExec {
  Shared &s;
  State st;
  __device__ __forceinline__ explicit DeviceExec(Shared &sh) : s(sh) {}
  __device__ __forceinline__ Shared &sh() { return s; }
  template <class F>
  __device__ __forceinline__ void each(F &&f) {
    f((int)threadIdx.x, st);
  }
  __device__ __forceinline__ void sync() { __syncthreads(); }
  template <class P>
  __device__ __forceinline__ bool sync_or(P &&p) {
    return __syncthreads_or(p((int)threadIdx.x, st) ? 1 : 0) != 0;
  }
};

template <class Body>
__global__ void __launch_bounds__(pu::kBlock) body_kernel(const Body body) {
  __shared__ typename Body::Shared sh;
  DeviceExec<typename Body::State, typename Body::Shared> ex(sh);
  body.block(ex, (int)blockIdx.x, (int)blockIdx.y, (int)blockIdx.z);
}

// Scratch from the stream-ordered allocator, released (in stream order) with the backend.
struct CudaBackend {
  cudaStream_t s;
  std::vector<std::unique_ptr<Scratch<unsigned char>>> bufs;

  template <class T>
  T *alloc(size_t n) {
    bufs.emplace_back(new Scratch<unsigned char>(n * sizeof(T), s));
    return reinterpret_cast<T *>(bufs.back()->get());
  }
  void zero(void *p, size_t bytes) {
    if (bytes) RPU_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, s));
  }
  int sm_count() {
    int dev = 0, n = 0;
    RPU_CUDA_CHECK(cudaGetDevice(&dev));
    RPU_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    return n;
  }
  template <class Body>
  void launch(int gx, int gy, int gz, const Body &body, const char *name) {
    if (gx <= 0 || gy <= 0 || gz <= 0) return;
    body_kernel<Body><<<dim3((unsigned)gx, (unsigned)gy, (unsigned)gz), pu::kBlock, 0, s>>>(body);
    RPU_CUDA_LAUNCH_CHECK(name);
  }
  void exact_update(float *W, int M, int K, const float *X, const float *D, int N, float lr) {
    cuda::exact_update(W, M, K, X, D, N, lr, s);
  }
};

}  // namespace

void exact_update(float *W, int M, int K, const float *X, const float *D, int N, float lr, Stream s) {
  if (M <= 0 || K <= 0 || N <= 0) return;
  // W[M,K] += (-lr) * D^T[M,N] X[N,K], as rpu::exact_update
  sgemm(true, false, M, K, N, -lr, D, M, X, K, 1.0f, W, K, s);
}

void pulsed_update(float *W, int M, int K, const float *X, const float *D, int N, float lr, const UpdateParameters &up,
                   const DeviceParameters &dev, const DeviceCell *cells, uint64_t seed, uint64_t call, Stream s) {
  std::string e = validate(up);
  if (e.empty()) e = validate(dev);
  if (!e.empty()) throw std::invalid_argument("rpu::cuda::pulsed_update: " + e);
  retain_scratch_pool();  // (the scratch of a large layer is hundreds of MB: keep it mapped)
  CudaBackend be{as_stream(s), {}};
  pu::run_pulsed_update(be, W, M, K, X, D, N, lr, up, dev, cells, seed, call);
}

}  // namespace cuda
}  // namespace rpu
