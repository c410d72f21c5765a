// parallel_for on a persistent pool whose caller takes part in the work.
//
// Chunks are claimed from one atomic word, so a worker that is not running
// (another process holds its core) simply claims nothing: the caller and the
// running workers finish the job and nobody waits for a descheduled thread
// at a barrier, as a fork-join OpenMP region would. On a loaded 2-core
// machine that turns decode from ~10 tok/s into the single-thread speed or
// better.
#include "core/parallel.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace kite {

namespace {

int initial_threads() {
  for (const char* var : {"KITE_NUM_THREADS", "OMP_NUM_THREADS"})
    if (const char* e = std::getenv(var)) {
      int n = std::atoi(e);
      if (n > 0) return n;
    }
  return std::max(1u, std::thread::hardware_concurrency());
}

// state = epoch (16 bits) | total chunks (24 bits) | next chunk (24 bits).
constexpr int kIndexBits = 24;
constexpr uint64_t kIndexMask = (uint64_t(1) << kIndexBits) - 1;
constexpr int64_t kMaxChunks = int64_t(kIndexMask);
// Two chunks per thread: room for running threads to take over a stalled
// one's share, few enough claims to keep each thread on contiguous rows.
constexpr int64_t kChunksPerThread = 2;

uint64_t pack(uint64_t epoch, uint64_t total, uint64_t next) {
  return (epoch & 0xffff) << (2 * kIndexBits) | (total & kIndexMask) << kIndexBits | (next & kIndexMask);
}
uint64_t epoch_of(uint64_t s) { return s >> (2 * kIndexBits); }
uint64_t total_of(uint64_t s) { return (s >> kIndexBits) & kIndexMask; }
uint64_t next_of(uint64_t s) { return s & kIndexMask; }

class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { worker(); });
  }
  ~Pool() {
    stop_.store(true);
    uint64_t s = state_.load();
    state_.store(pack(epoch_of(s) + 1, 0, 0));
    state_.notify_all();
    for (auto& t : threads_) t.join();
  }
  int workers() const { return int(threads_.size()); }

  void run(int64_t n, int64_t chunks, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> lock(run_mutex_);  // one job at a time
    fn_ = &fn;
    n_ = n;
    done_.store(0, std::memory_order_relaxed);
    const uint64_t epoch = epoch_of(state_.load(std::memory_order_relaxed)) + 1;
    state_.store(pack(epoch, uint64_t(chunks), 0), std::memory_order_release);
    if (sleepers_.load(std::memory_order_acquire) > 0) state_.notify_all();
    drain(epoch);
    // Wait for chunks other threads claimed and are still running.
    for (int spin = 0; done_.load(std::memory_order_acquire) < chunks; ++spin) {
      if (spin < 4096)
        _mm_pause();
      else
        std::this_thread::yield();
    }
  }

 private:
  // Claims and runs chunks of job `epoch` until none are left.
  void drain(uint64_t epoch) {
    uint64_t s = state_.load(std::memory_order_acquire);
    while (epoch_of(s) == (epoch & 0xffff) && next_of(s) < total_of(s)) {
      if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      const int64_t total = int64_t(total_of(s)), idx = int64_t(next_of(s));
      const int64_t begin = n_ * idx / total, end = n_ * (idx + 1) / total;
      if (begin < end) (*fn_)(begin, end);
      done_.fetch_add(1, std::memory_order_acq_rel);
      s = state_.load(std::memory_order_acquire);
    }
  }

  void worker() {
    uint64_t seen = epoch_of(state_.load());
    while (!stop_.load(std::memory_order_relaxed)) {
      uint64_t s = state_.load(std::memory_order_acquire);
      // Spin briefly for the next job (decode issues one every few
      // microseconds), then sleep until one is published.
      for (int spin = 0; epoch_of(s) == seen && spin < 20000; ++spin) {
        _mm_pause();
        s = state_.load(std::memory_order_acquire);
      }
      if (epoch_of(s) == seen) {
        sleepers_.fetch_add(1, std::memory_order_acq_rel);
        s = state_.load(std::memory_order_acquire);
        while (epoch_of(s) == seen && !stop_.load()) {
          state_.wait(s, std::memory_order_acquire);
          s = state_.load(std::memory_order_acquire);
        }
        sleepers_.fetch_sub(1, std::memory_order_acq_rel);
      }
      seen = epoch_of(s);
      if (stop_.load()) break;
      drain(seen);
    }
  }

  std::vector<std::thread> threads_;
  std::mutex run_mutex_;
  std::atomic<uint64_t> state_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
};

int g_threads = initial_threads();
std::mutex g_pool_mutex;
std::unique_ptr<Pool> g_pool;
thread_local bool t_inside = false;  // nested parallel_for runs inline

Pool& pool() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (!g_pool || g_pool->workers() != g_threads - 1) {
    g_pool.reset();
    g_pool = std::make_unique<Pool>(g_threads - 1);
  }
  return *g_pool;
}

}  // namespace

int num_threads() { return g_threads; }
void set_num_threads(int n) { g_threads = std::max(1, n); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t max_chunks = (n + grain - 1) / grain;
  if (g_threads <= 1 || max_chunks <= 1 || t_inside) {
    fn(0, n);
    return;
  }
  const int64_t chunks = std::min({max_chunks, int64_t(g_threads) * kChunksPerThread, kMaxChunks});
  t_inside = true;
  struct Reset {
    ~Reset() { t_inside = false; }
  } reset;
  pool().run(n, chunks, [&fn](int64_t b, int64_t e) {
    t_inside = true;
    fn(b, e);
  });
}

}  // namespace kite
