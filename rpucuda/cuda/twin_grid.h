// The grid model shared by the CUDA twins and their host emulation.
//
// A kernel of the twins is a plain struct of RPU_HD functions, run as `nblk` thread blocks of T
// threads each:
//
//   struct SomeKernel {
//     using Red = RedMax;                      // what the threads of one block combine
//     static constexpr bool kReduce = true;    // false: finish() is never called
//     static constexpr const char *kName = "...";
//     RPU_HD Red partial(int64_t blk, int64_t nblk, int t, int T) const;          // every thread
//     RPU_HD void finish(int64_t blk, int64_t nblk, int t, int T, const Red &all) const;
//   };
//
// partial() runs on every thread of block blk; then (block barrier) the partials of the block
// are combined with Red::combine (in any order: every combine used here is order-independent
// or only needs to be close, see RedSum) and finish() runs on every thread with the result.
// The CUDA exec (exec_cuda.cuh) launches one CUDA block per blk; the host emulation
// (tests/cpp/test_cuda_emulation.cpp) plays the blocks in a shuffled order with a few threads
// each.  Both run the same RPU_HD code, so the host emulation checks the index layouts, random
// number indices and the logic; only the thin launch code is CUDA-specific.
//
// An Exec provides:
//   template <class T> struct Buf { Buf(Exec &, size_t n); T *get() const; };  scratch memory
//   void launch(const K &kernel, int64_t nblk, int threads);
//   void gemm(bool transposed, int m, int n, int k, const float *X, int ldx, const float *Wt,
//             int ldw, float *C, int ldc);   // C = X A^T with A as in analog_gemm.h
//   void memset0(void *p, size_t bytes);
//   void copy_to_host(void *dst, const void *src, size_t bytes);    // waits for the data
//   void copy_to_device(void *dst, const void *src, size_t bytes);  // host src may be reused
#pragma once
#include <cstdint>

#include "rng.h"

namespace rpu {
namespace twin {

constexpr int kMaxThreads = 256;  // the largest thread block the CUDA exec launches

// ---- block reductions ---------------------------------------------------------------------------
struct RedNone {
  int unused;
  RPU_HD static RedNone combine(const RedNone &a, const RedNone &) { return a; }
};

// max|x| and max x with NaNs skipped, and whether a NaN was seen (the noise-management scan).
struct RedScan {
  float amax, mx;
  int nan;
  RPU_HD static RedScan combine(const RedScan &a, const RedScan &b) {
    RedScan r;
    r.amax = b.amax > a.amax ? b.amax : a.amax;
    r.mx = b.mx > a.mx ? b.mx : a.mx;
    r.nan = a.nan | b.nan;
    return r;
  }
};

struct RedMax {  // NaN-free values (NaNs are skipped before)
  float v;
  RPU_HD static RedMax combine(const RedMax &a, const RedMax &b) {
    RedMax r;
    r.v = b.v > a.v ? b.v : a.v;
    return r;
  }
};

struct RedFlag {
  int v;
  RPU_HD static RedFlag combine(const RedFlag &a, const RedFlag &b) {
    RedFlag r;
    r.v = a.v | b.v;
    return r;
  }
};

// A sum in double: the order of a tree differs from a serial loop, so only where the CPU's
// serial double sum need not be matched bit for bit (it agrees to double rounding).
struct RedSum {
  double v;
  RPU_HD static RedSum combine(const RedSum &a, const RedSum &b) {
    RedSum r;
    r.v = a.v + b.v;
    return r;
  }
};

// ---- small helpers --------------------------------------------------------------------------------
RPU_HD int imin(int a, int b) { return a < b ? a : b; }

// Appends: an atomic increment on the GPU; the host emulation plays one thread at a time.
RPU_HD int atomic_inc(int *p) {
#if defined(__CUDA_ARCH__)
  return atomicAdd(p, 1);
#else
  return (*p)++;
#endif
}

// Blocks of T threads for a grid-stride loop over n items (at least 1, at most 2^21).
inline int64_t grid_for(int64_t n, int T) {
  int64_t b = (n + T - 1) / T;
  if (b < 1) b = 1;
  if (b > (int64_t)1 << 21) b = (int64_t)1 << 21;
  return b;
}

// Threads for one block working on n items: a power of two in [32, kMaxThreads].
inline int threads_for(int64_t n) {
  int T = 32;
  while (T < n && T < kMaxThreads) T <<= 1;
  return T;
}

}  // namespace twin
}  // namespace rpu
