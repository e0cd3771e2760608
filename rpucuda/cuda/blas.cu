// The CUDA twin of blas.cpp: dense products on the GPU, plus the small runtime helpers of the
// public API (device selection, memory, copies).
//
// cuBLAS is loaded at run time (dlopen) instead of linked: the extension then imports on
// machines without a CUDA toolkit or GPU (the CUDA runtime itself is linked statically), and
// inside PyTorch it reuses the libcublas that torch has already loaded.  When no libcublas can
// be found, products use rpucuda's own tiled kernel below (slower, same results up to float
// rounding).
#include <dlfcn.h>

#include <mutex>
#include <string>
#include <unordered_map>

#include "cuda_common.cuh"

namespace rpu {
namespace cuda {

// ---- runtime helpers -------------------------------------------------------------------------------
int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device / no driver" error
    return 0;
  }
  return n;
}

void set_device(int device) { RPU_CUDA_CHECK(cudaSetDevice(device)); }

int current_device() {
  int d = 0;
  RPU_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

int pointer_device(const void *p) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) ? a.device : -1;
}

void stream_synchronize(Stream s) { RPU_CUDA_CHECK(cudaStreamSynchronize(as_stream(s))); }

void *device_malloc(size_t bytes) {
  void *p = nullptr;
  if (bytes) RPU_CUDA_CHECK(cudaMalloc(&p, bytes));
  return p;
}

void device_free(void *p) {
  if (p) cudaFree(p);
}

void copy_to_device(void *dst, const void *host_src, size_t bytes, Stream s) {
  if (!bytes) return;
  RPU_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, as_stream(s)));
  RPU_CUDA_CHECK(cudaStreamSynchronize(as_stream(s)));
}

void copy_to_host(void *host_dst, const void *src, size_t bytes, Stream s) {
  if (!bytes) return;
  RPU_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(s)));
  RPU_CUDA_CHECK(cudaStreamSynchronize(as_stream(s)));
}

void copy_device(void *dst, const void *src, size_t bytes, Stream s) {
  if (!bytes) return;
  RPU_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, as_stream(s)));
}

// ---- cuBLAS, loaded at run time ----------------------------------------------------------------------
namespace {

using cublasHandle = void *;
using FnCreate = int (*)(cublasHandle *);
using FnSetStream = int (*)(cublasHandle, cudaStream_t);
using FnSgemm = int (*)(cublasHandle, int, int, int, int, int, const float *, const float *, int, const float *,
                        int, const float *, float *, int);

struct Cublas {
  void *lib = nullptr;
  std::string name;
  FnCreate create = nullptr;
  FnSetStream set_stream = nullptr;
  FnSgemm sgemm = nullptr;
};

const Cublas &cublas() {
  static Cublas c;
  static std::once_flag once;
  std::call_once(once, [] {
    if (const char *off = getenv("RPU_CUDA_NO_CUBLAS")) {
      if (off[0] && off[0] != '0') return;
    }
    const char *names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"};
    // First a copy that is already loaded (torch's), then the loader's search path.
    for (int pass = 0; pass < 2 && !c.lib; ++pass)
      for (const char *n : names) {
        void *h = dlopen(n, RTLD_NOW | RTLD_LOCAL | (pass == 0 ? RTLD_NOLOAD : 0));
        if (!h) continue;
        Cublas t;
        t.lib = h;
        t.name = n;
        t.create = reinterpret_cast<FnCreate>(dlsym(h, "cublasCreate_v2"));
        t.set_stream = reinterpret_cast<FnSetStream>(dlsym(h, "cublasSetStream_v2"));
        t.sgemm = reinterpret_cast<FnSgemm>(dlsym(h, "cublasSgemm_v2"));
        if (t.create && t.set_stream && t.sgemm) {
          c = t;
          break;
        }
        dlclose(h);
      }
  });
  return c;
}

// One handle per (thread, device): cuBLAS handles are not thread-safe.
cublasHandle handle_for_current_device() {
  thread_local std::unordered_map<int, cublasHandle> handles;
  int dev = current_device();
  auto it = handles.find(dev);
  if (it != handles.end()) return it->second;
  cublasHandle h = nullptr;
  int st = cublas().create(&h);
  if (st != 0) throw std::runtime_error("rpucuda: cublasCreate failed with status " + std::to_string(st));
  handles[dev] = h;
  return h;
}

// Fallback product: 16x16 tiles in shared memory, row-major operands with optional transposes.
constexpr int kT = 16;

__device__ __forceinline__ float load_op(const float *A, int ld, bool trans, int r, int c, int rows, int cols) {
  // element (r, c) of op(A), op(A) is rows x cols
  if (r >= rows || c >= cols) return 0.0f;
  return trans ? A[(int64_t)c * ld + r] : A[(int64_t)r * ld + c];
}

__global__ void sgemm_tiled(bool ta, bool tb, int m, int n, int k, float alpha, const float *A, int lda,
                            const float *B, int ldb, float beta, float *C, int ldc) {
  __shared__ float As[kT][kT + 1];
  __shared__ float Bs[kT][kT + 1];
  const int row = blockIdx.y * kT + threadIdx.y, col = blockIdx.x * kT + threadIdx.x;
  float acc = 0.0f;
  for (int k0 = 0; k0 < k; k0 += kT) {
    As[threadIdx.y][threadIdx.x] = load_op(A, lda, ta, row, k0 + threadIdx.x, m, k);
    Bs[threadIdx.y][threadIdx.x] = load_op(B, ldb, tb, k0 + threadIdx.y, col, k, n);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kT; ++t) acc += As[threadIdx.y][t] * Bs[t][threadIdx.x];
    __syncthreads();
  }
  if (row < m && col < n) {
    float *c = C + (int64_t)row * ldc + col;
    *c = beta == 0.0f ? alpha * acc : alpha * acc + beta * *c;
  }
}

}  // namespace

const char *blas_backend() {
  static std::string s;
  const Cublas &c = cublas();
  s = c.lib ? "cublas (" + c.name + ")" : std::string("rpucuda kernel");
  return s.c_str();
}

void sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *A, int lda, const float *B,
           int ldb, float beta, float *C, int ldc, Stream s) {
  if (m <= 0 || n <= 0) return;
  cudaStream_t st = as_stream(s);
  const Cublas &cb = cublas();
  if (cb.lib && k > 0) {
    cublasHandle h = handle_for_current_device();
    int rc = cb.set_stream(h, st);
    if (rc == 0) {
      // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
      rc = cb.sgemm(h, trans_b ? 1 : 0, trans_a ? 1 : 0, n, m, k, &alpha, B, ldb, A, lda, &beta, C, ldc);
    }
    if (rc != 0) throw std::runtime_error("rpucuda: cublasSgemm failed with status " + std::to_string(rc));
    return;
  }
  dim3 block(kT, kT), grid((n + kT - 1) / kT, (m + kT - 1) / kT);
  sgemm_tiled<<<grid, block, 0, st>>>(trans_a, trans_b, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  RPU_CUDA_LAUNCH_CHECK("sgemm");
}

}  // namespace cuda
}  // namespace rpu
