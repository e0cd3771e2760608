#include "threading.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "blas.h"

namespace rpu {
namespace {

class Pool {
 public:
  ~Pool() { resize(0); }

  void resize(int n_workers) {
    std::lock_guard<std::mutex> busy(busy_);
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto &t : workers_) t.join();
    workers_.clear();
    stop_ = false;
    // Each worker starts from the generation current now: reading it inside the new thread
    // could miss a job posted before the thread first ran (and deadlock the caller).
    const uint64_t gen0 = generation_;
    for (int i = 0; i < n_workers; ++i) workers_.emplace_back([this, i, gen0] { loop(i, gen0); });
  }

  int size() const { return (int)workers_.size(); }

  // Returns false if the pool is busy with another caller.
  bool try_run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)> &fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    int parts = (int)std::min<int64_t>((int64_t)workers_.size() + 1, (n + grain - 1) / grain);
    if (parts <= 1) {
      fn(0, n);
      return true;
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      parts_ = parts;
      pending_ = parts - 1;
      ++generation_;
    }
    cv_.notify_all();
    run_part(0);
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    fn_ = nullptr;
    return true;
  }

 private:
  void run_part(int p) {
    int64_t b = n_ * p / parts_, e = n_ * (p + 1) / parts_;
    if (e > b) (*fn_)(b, e);
  }

  void loop(int idx, uint64_t seen) {
    for (;;) {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      int part = idx + 1;
      if (part >= parts_) continue;
      lk.unlock();
      run_part(part);
      lk.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  std::mutex busy_, m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int64_t)> *fn_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
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

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)> &fn) {
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
  if (!pool().try_run(n, grain, guarded)) fn(0, n);
}

}  // namespace rpu
