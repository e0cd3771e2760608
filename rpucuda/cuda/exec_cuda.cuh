// The CUDA exec of the twins' grid kernels (twin_grid.h): one CUDA block of T threads per grid
// block, a shared-memory tree for the block reduction, cuBLAS (blas.cu) for the products, and
// stream-ordered scratch memory.  Everything is queued on one stream.
#pragma once
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_common.cuh"
#include "twin_grid.h"

namespace rpu {
namespace cuda {

template <class K>
__global__ void __launch_bounds__(twin::kMaxThreads) twin_grid_kernel(K k, int64_t nblk) {
  using Red = typename K::Red;
  const int t = threadIdx.x, T = blockDim.x;
  const int64_t blk = blockIdx.x;
  const Red part = k.partial(blk, nblk, t, T);
  if constexpr (K::kReduce) {
    __shared__ Red sh[twin::kMaxThreads];
    sh[t] = part;
    __syncthreads();
    for (int w = T / 2; w > 0; w >>= 1) {  // T is a power of two
      if (t < w) sh[t] = Red::combine(sh[t], sh[t + w]);
      __syncthreads();
    }
    const Red all = sh[0];
    k.finish(blk, nblk, t, T, all);
  }
}

// Scratch memory comes from the device's default memory pool (cudaMallocAsync).  With the
// pool's default release threshold (0) the memory goes back to the driver at every
// synchronization, so every call would map its scratch (hundreds of MB for a large layer) anew;
// keep up to 1 GiB cached instead (raised once per device, never lowered).
inline void retain_scratch_pool() {
  static std::mutex mu;
  static std::vector<char> done;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  std::lock_guard<std::mutex> lock(mu);
  if ((int)done.size() <= dev) done.resize(dev + 1, 0);
  if (done[dev]) return;
  done[dev] = 1;
  cudaMemPool_t pool;
  uint64_t cur = 0, want = uint64_t(1) << 30;
  cudaError_t e = cudaDeviceGetDefaultMemPool(&pool, dev);
  if (e == cudaSuccess) e = cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &cur);
  if (e == cudaSuccess && cur < want) e = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &want);
  if (e != cudaSuccess) cudaGetLastError();  // (a device without memory pools keeps its default)
}

struct CudaExec {
  cudaStream_t s;
  explicit CudaExec(cudaStream_t st) : s(st) { retain_scratch_pool(); }

  template <typename T>
  struct Buf : Scratch<T> {
    Buf(CudaExec &e, size_t n) : Scratch<T>(n, e.s) {}
  };

  template <class K>
  void launch(const K &k, int64_t nblk, int threads) {
    if (nblk <= 0) return;
    if (nblk > INT32_MAX) throw std::runtime_error(std::string("rpucuda: grid too large in ") + K::kName);
    const int T = twin::threads_for(threads);
    twin_grid_kernel<K><<<(unsigned)nblk, T, 0, s>>>(k, nblk);
    RPU_CUDA_LAUNCH_CHECK(K::kName);
  }

  // C = X A^T (analog_gemm.h's convention for A) through the row-major sgemm.
  void gemm(bool transposed, int m, int n, int k, const float *X, int ldx, const float *Wt, int ldw, float *C,
            int ldc) {
    sgemm(false, !transposed, m, n, k, 1.0f, X, ldx, Wt, ldw, 0.0f, C, ldc, s);
  }

  void memset0(void *p, size_t bytes) {
    if (bytes) RPU_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, s));
  }
  void copy_to_host(void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    RPU_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
    RPU_CUDA_CHECK(cudaStreamSynchronize(s));
  }
  // From pageable host memory: the data is staged before the call returns.
  void copy_to_device(void *dst, const void *src, size_t bytes) {
    if (bytes) RPU_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
  }
};

}  // namespace cuda
}  // namespace rpu
