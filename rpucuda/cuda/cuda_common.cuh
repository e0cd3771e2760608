// Internal helpers of the CUDA twins (not part of the public API): error checks, launch sizes,
// stream-ordered scratch memory.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "rpucuda_cuda.h"

namespace rpu {
namespace cuda {

inline cudaStream_t as_stream(Stream s) { return reinterpret_cast<cudaStream_t>(s); }

[[noreturn]] inline void throw_cuda(cudaError_t e, const char *what, const char *file, int line) {
  throw std::runtime_error(std::string("rpucuda CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
                           "): " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

#define RPU_CUDA_CHECK(expr)                                                   \
  do {                                                                         \
    cudaError_t _rpu_e = (expr);                                               \
    if (_rpu_e != cudaSuccess) ::rpu::cuda::throw_cuda(_rpu_e, #expr, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: reports launch errors (bad configuration, no device) at once.
#define RPU_CUDA_LAUNCH_CHECK(name)                                            \
  do {                                                                         \
    cudaError_t _rpu_e = cudaGetLastError();                                   \
    if (_rpu_e != cudaSuccess) ::rpu::cuda::throw_cuda(_rpu_e, name, __FILE__, __LINE__); \
  } while (0)

constexpr int kThreads = 256;

// Blocks for n elements with kThreads threads each (grid-stride loops cover the rest).
inline int blocks_for(int64_t n, int threads = kThreads) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535LL * 32) b = 65535LL * 32;
  return (int)b;
}

// Scratch memory from the stream-ordered allocator: freed on the stream when it goes out of
// scope, so no synchronization is needed.
template <typename T>
class Scratch {
 public:
  Scratch(size_t n, cudaStream_t s) : s_(s) {
    if (n) RPU_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void **>(&p_), n * sizeof(T), s_));
  }
  ~Scratch() {
    if (p_) cudaFreeAsync(p_, s_);
  }
  Scratch(const Scratch &) = delete;
  Scratch &operator=(const Scratch &) = delete;
  T *get() const { return p_; }
  operator T *() const { return p_; }

 private:
  T *p_ = nullptr;
  cudaStream_t s_;
};

}  // namespace cuda
}  // namespace rpu
