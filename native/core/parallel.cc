#include "parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

namespace mvq {
namespace {

int default_threads() {
  if (const char* env = std::getenv("MERGEVQ_NUM_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && v >= 1 && v <= 1024) return static_cast<int>(v);
  }
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int c = CPU_COUNT(&set);
    if (c >= 1) return c;
  }
#endif
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

// A job is published to the workers by bumping `generation`; each worker claims tasks from the
// shared atomic counter until none are left, then reports done.
class Pool {
 public:
  Pool() : target_(default_threads()) {}
  ~Pool() { shutdown(); }

  int threads() const { return target_.load(); }
  void set_threads(int n) { target_.store(std::max(1, n)); }

  void run(int64_t ntasks, const std::function<void(int64_t, int)>& fn) {
    if (ntasks <= 0) return;
    int want = static_cast<int>(std::min<int64_t>(ntasks, target_.load()));
    std::unique_lock<std::mutex> busy(run_mutex_, std::try_to_lock);
    if (want <= 1 || !busy.owns_lock() || in_worker_) {
      // Inline: pool busy, single thread, or nested call from inside a task.
      for (int64_t t = 0; t < ntasks; ++t) fn(t, 0);
      return;
    }
    ensure_workers(want - 1);
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      ntasks_ = ntasks;
      next_.store(0);
      active_ = want - 1;
      pending_ = want - 1;
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lk(m_);
    done_cv_.wait(lk, [&] { return pending_ == 0; });
    fn_ = nullptr;
    std::exception_ptr err = error_;
    error_ = nullptr;
    lk.unlock();
    if (err) std::rethrow_exception(err);
  }

 private:
  void work(int tid) {
    for (;;) {
      int64_t t = next_.fetch_add(1);
      if (t >= ntasks_) break;
      try {
        (*fn_)(t, tid);
      } catch (...) {
        std::lock_guard<std::mutex> lk(m_);
        if (!error_) error_ = std::current_exception();
        next_.store(ntasks_);
      }
    }
  }

  void ensure_workers(int n) {
    while (static_cast<int>(workers_.size()) < n) {
      int tid = static_cast<int>(workers_.size()) + 1;
      uint64_t gen;
      {
        std::lock_guard<std::mutex> lk(m_);
        gen = generation_;
      }
      // The worker starts from the generation current now, so a job published before it first
      // takes the lock is still seen as new.
      workers_.emplace_back([this, tid, gen] { loop(tid, gen); });
    }
  }

  void loop(int tid, uint64_t seen) {
    in_worker_ = true;
    for (;;) {
      std::unique_lock<std::mutex> lk(m_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (tid > active_) continue;  // this job uses fewer threads
      lk.unlock();
      work(tid);
      lk.lock();
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.detach();  // process exit: do not join threads during static teardown
  }

  std::atomic<int> target_;
  std::mutex run_mutex_;
  std::mutex m_;
  std::condition_variable cv_, done_cv_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t, int)>* fn_ = nullptr;
  int64_t ntasks_ = 0;
  std::atomic<int64_t> next_{0};
  int active_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
  static thread_local bool in_worker_;
};

thread_local bool Pool::in_worker_ = false;

Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose: never destroyed while workers may run
  return *p;
}

}  // namespace

int num_threads() { return pool().threads(); }
void set_num_threads(int n) { pool().set_threads(n); }

void parallel_tasks(int64_t ntasks, const std::function<void(int64_t, int)>& fn) { pool().run(ntasks, fn); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t nt = std::min<int64_t>(num_threads(), (n + grain - 1) / grain);
  if (nt <= 1) {
    fn(0, n);
    return;
  }
  int64_t chunk = (n + nt - 1) / nt;
  parallel_tasks(nt, [&](int64_t t, int) {
    int64_t b = t * chunk, e = std::min(n, b + chunk);
    if (b < e) fn(b, e);
  });
}

}  // namespace mvq
