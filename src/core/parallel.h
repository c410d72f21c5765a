#pragma once
// CPU parallelism: parallel_for over an index range on Kite's own thread
// pool (parallel.cpp says why not OpenMP). Kernels split work with it;
// nothing else starts threads.
#include <cstdint>
#include <functional>

namespace kite {

// Number of threads used by parallel_for, the caller included (default:
// hardware threads, or KITE_NUM_THREADS / OMP_NUM_THREADS when set).
int num_threads();
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint chunks covering [0, n). Chunks hold at
// least `grain` indices, so tiny loops stay on one thread.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace kite
