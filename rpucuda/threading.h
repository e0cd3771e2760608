// One small thread pool for all of rpucuda.  BLAS runs single-threaded inside it (each worker
// multiplies its own slice), so there is never a second pool competing for the cores.
#pragma once
#include <cstdint>
#include <functional>

namespace rpu {

// Number of threads used by rpucuda (>= 1).  Also sets the BLAS library to one thread.
void set_num_threads(int n);
int get_num_threads();

// Runs fn(begin, end) on disjoint chunks covering [0, n), one per thread.  Chunks are at least
// `grain` long.  Safe to call from several threads at once: a caller that finds the pool busy
// runs its whole range itself.  Results must not depend on the chunking (rpucuda's random
// numbers are indexed by element, not by thread).
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)> &fn);

// The same with more (smaller) chunks than threads, taken one at a time: a thread that gets
// less of its core (another process, torch's OpenMP threads still spinning after an operator)
// takes fewer chunks instead of delaying the call.  For work whose values cannot depend on the
// chunking at all (the IO pipeline, im2col).
void parallel_for_dynamic(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)> &fn);

// Jobs of at most this much work (multiply-adds, or the like) run on the calling thread alone:
// handing part of one to a worker costs about 15 us (a 32 x 128 -> 128 IO product: 13 us on one
// thread, 28 us on two).
constexpr int64_t kSerialWork = (int64_t)1 << 19;
inline bool serial_work(int64_t work) { return work <= kSerialWork; }
// The grain to pass for n items of `work` in all: `grain`, or n (one chunk) for serial work.
inline int64_t grain_for(int64_t n, int64_t grain, int64_t work) {
  return serial_work(work) ? (n > 1 ? n : 1) : grain;
}

}  // namespace rpu
