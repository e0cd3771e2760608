#include "threading.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "blas.h"

namespace rpu {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Waiting for work.  Waking a sleeping thread costs a futex call plus the scheduler's latency
// (tens of microseconds on a virtual machine with idle cores), which is the whole cost of a small
// job; so a waiting thread first polls for up to spin_us (default 50 us, RPU_SPIN_US overrides,
// 0 = never), then sleeps on a condition variable.  An idle pool sleeps after that long.
//  * Polling: pure pause loops for the first kPureSpinUs, then sched_yield between polls, so that
//    other runnable threads (the OpenMP threads of torch between two of our calls) get the core.
//  * A worker polls for the whole spin_us only while jobs arrive in quick succession (the
//    average gap between the end of its last job and the next post is below spin_us); when
//    rpucuda calls alternate with long stretches of other work, it only polls briefly.
constexpr int kPureSpinUs = 5;
constexpr int kChunksPerThread = 16;

int spin_us_from_env() {
  const char *env = std::getenv("RPU_SPIN_US");
  if (env != nullptr && *env != '\0') {
    char *end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && v >= 0) return (int)std::min<long>(v, 100000);
  }
  return 50;
}

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Polls until pred() holds or `us` microseconds passed; returns pred().
template <typename Pred>
bool spin_until(Pred pred, int us) {
  if (pred()) return true;
  if (us <= 0) return false;
  const int64_t t0 = now_ns(), t_yield = t0 + 1000 * (int64_t)std::min(us, kPureSpinUs),
                t_end = t0 + 1000 * (int64_t)us;
  for (;;) {
    for (int i = 0; i < 32; ++i) {
      cpu_relax();
      if (pred()) return true;
    }
    const int64_t t = now_ns();
    if (t >= t_end) return pred();
    if (t >= t_yield) std::this_thread::yield();
  }
}

class Pool {
 public:
  Pool() : spin_us_(spin_us_from_env()) {}
  ~Pool() { resize(0); }

  void resize(int n_workers) {
    std::lock_guard<std::mutex> busy(busy_);
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_.store(true, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto &t : workers_) t.join();
    workers_.clear();
    stop_.store(false, std::memory_order_relaxed);
    // Each worker starts from the generation current now: reading it inside the new thread
    // could miss a job posted before the thread first ran (and deadlock the caller).
    const uint64_t gen0 = generation_.load(std::memory_order_relaxed);
    for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this, i, gen0] { loop(i, gen0); });
  }

  int size() const { return (int)workers_.size(); }

  // Returns false if the pool is busy with another caller.
  bool try_run(int64_t n, int64_t grain, bool dynamic, const std::function<void(int64_t, int64_t)> &fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    int parts = (int)std::min<int64_t>((int64_t)workers_.size() + 1, (n + grain - 1) / grain);
    if (parts <= 1) {
      fn(0, n);
      return true;
    }
    // Dynamic: the range is cut into more chunks than threads, taken one at a time, so a thread
    // that gets less of its core (torch's OpenMP threads still spinning after an operator, other
    // processes) takes fewer chunks instead of delaying the whole call.  Static: one chunk per
    // thread.
    const int64_t chunks =
        dynamic ? std::min<int64_t>((n + grain - 1) / grain, (int64_t)parts * kChunksPerThread) : parts;
    // Spinning workers watch generation_ without the mutex; the job itself is read under it.
    bool wake;
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      parts_ = parts;
      chunks_.store(chunks, std::memory_order_relaxed);
      done_.store(0, std::memory_order_relaxed);
      job_ = job_ + 1;
      claim_.store((uint64_t)job_ << 32, std::memory_order_release);  // (publishes the fields above)
      post_ns_.store(now_ns(), std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) cv_.notify_all();
    // The call is over when every chunk is done, whoever did it: a worker that has not taken a
    // chunk yet is not waited for (one that is runnable but has no core, e.g. behind the
    // OpenMP threads torch leaves spinning, would otherwise hold the caller for a whole
    // scheduler tick).
    run_chunks(job_);
    auto all_done = [this, chunks] { return done_.load(std::memory_order_acquire) == chunks; };
    if (!spin_until(all_done, spin_us_)) {
      std::unique_lock<std::mutex> lk(m_);
      done_cv_.wait(lk, all_done);
    }
    fn_ = nullptr;
    return true;
  }

 private:
  // Takes chunks of job `job` until none is left (any thread may take any chunk).  A chunk is
  // claimed by a compare-and-swap on claim_ = (job << 32 | next chunk), so a thread that comes
  // late (the job done, or the next one posted) claims nothing and reads none of the job's
  // fields after the caller may have changed them.
  void run_chunks(uint32_t job) {
    for (;;) {
      uint64_t v = claim_.load(std::memory_order_acquire);
      int64_t c;
      for (;;) {
        if ((uint32_t)(v >> 32) != job) return;
        c = (int64_t)(uint32_t)v;
        if (c >= chunks_.load(std::memory_order_relaxed)) return;  // (this job's: a new one fails the exchange)
        if (claim_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) break;
      }
      const int64_t nc = chunks_.load(std::memory_order_relaxed);  // (the job cannot end before this chunk)
      const int64_t b = n_ * c / nc, e = n_ * (c + 1) / nc;
      if (e > b) (*fn_)(b, e);
      if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == nc) {
        // The caller may be about to sleep: notify under the mutex (it checks under it).
        std::lock_guard<std::mutex> lk_done(m_);
        done_cv_.notify_one();
      }
    }
  }

  void loop(int idx, uint64_t seen) {
    int64_t last_end = 0, avg_gap = 0;  // ns; avg_gap: running average of the idle gaps
    for (;;) {
      auto fresh = [&] { return generation_.load(std::memory_order_acquire) != seen; };
      const bool busy = avg_gap < 1000 * (int64_t)spin_us_;
      const bool spun = spin_until(fresh, busy ? spin_us_ : std::min(spin_us_, kPureSpinUs));
      std::unique_lock<std::mutex> lk(m_);
      if (!spun) {
        ++sleepers_;
        cv_.wait(lk, fresh);
        --sleepers_;
      }
      if (stop_.load(std::memory_order_relaxed)) return;
      // The generation and its job, read together under the mutex.
      seen = generation_.load(std::memory_order_relaxed);
      const uint32_t job = job_;
      if (last_end > 0) {
        const int64_t gap = std::max<int64_t>(0, post_ns_.load(std::memory_order_relaxed) - last_end);
        avg_gap = (3 * avg_gap + std::min<int64_t>(gap, 1000000000)) / 4;
      }
      const int part = idx + 1;
      if (part >= parts_) {
        last_end = now_ns();
        continue;
      }
      lk.unlock();
      run_chunks(job);
      last_end = now_ns();
    }
  }

  const int spin_us_;
  std::mutex busy_, m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)> *fn_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 0;
  std::atomic<int64_t> chunks_{0};
  uint32_t job_ = 0;                  // the current job's number (written by the caller under m_)
  std::atomic<uint64_t> claim_{0};     // job << 32 | next chunk
  std::atomic<int64_t> done_{0};       // finished chunks of the current job
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> post_ns_{0};  // when the current job was posted
  std::atomic<bool> stop_{false};
  int sleepers_ = 0;  // guarded by m_
};

Pool &pool() {
  static Pool p;
  return p;
}

std::atomic<int> g_threads{0};
thread_local bool t_in_parallel = false;

}  // namespace

void set_num_threads(int n) {
  if (n < 1) n = 1;
  blas_set_single_threaded();
  if (g_threads.load() == n) return;
  g_threads.store(n);
  pool().resize(n - 1);
}

int get_num_threads() {
  int n = g_threads.load();
  if (n == 0) {
    unsigned hc = std::thread::hardware_concurrency();
    set_num_threads(hc == 0 ? 1 : (int)hc);
    n = g_threads.load();
  }
  return n;
}

namespace {
void run_parallel(int64_t n, int64_t grain, bool dynamic, const std::function<void(int64_t, int64_t)> &fn) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (t_in_parallel || get_num_threads() <= 1 || n <= grain) {
    fn(0, n);
    return;
  }
  // Nested calls from inside a chunk run inline (the pool is not re-entrant).
  auto guarded = [&fn](int64_t b, int64_t e) {
    bool prev = t_in_parallel;
    t_in_parallel = true;
    fn(b, e);
    t_in_parallel = prev;
  };
  if (!pool().try_run(n, grain, dynamic, guarded)) fn(0, n);
}
}  // namespace

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)> &fn) {
  run_parallel(n, grain, false, fn);
}

void parallel_for_dynamic(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)> &fn) {
  run_parallel(n, grain, true, fn);
}

}  // namespace rpu
