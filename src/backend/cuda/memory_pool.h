#pragma once
// A caching allocator for one CUDA device, in the manner of PyTorch's.
//
// Requests are rounded up to 512 bytes. Small ones (<= 1 MiB) are cut from
// 2 MiB segments; medium ones (<= 10 MiB) from 20 MiB segments; larger ones
// get a segment of their own, rounded up to 2 MiB. A freed block goes back to
// its pool's free set (merged with free neighbours of the same segment) and the
// next request takes the best fit, splitting it when the rest is worth
// keeping (>= 512 B in the small pool, > 1 MiB in the large one). Only a miss
// calls cudaMalloc; empty_cache() returns whole free segments to the driver.
//
// Blocks are reused in stream order: every kernel and copy Kite queues runs on
// the device's one stream (cuda_kernels.h, current_stream), so a block freed
// by the host while kernels using it are still queued is only touched again by
// work queued after them.
//
// CUDA graphs: allocating while the device's stream is capturing throws
// kite::Error (a block handed out during capture could be handed out again
// after it while the graph still replays into it). Allocate every tensor a
// graph uses before capture and keep them alive while it may replay.
//
// Thread-safe (one mutex per device).
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <set>
#include <unordered_map>

#include "backend/backend.h"

namespace kite::cuda {

class MemoryPool {
 public:
  explicit MemoryPool(int device);
  MemoryPool(const MemoryPool&) = delete;
  MemoryPool& operator=(const MemoryPool&) = delete;
  ~MemoryPool();

  // At least `bytes` (0 is fine), 512-byte aligned. Throws kite::Error when
  // the device is out of memory even after releasing the cache.
  void* allocate(size_t bytes);
  // A pointer allocate() returned; unknown pointers are reported on stderr.
  void deallocate(void* p);
  // Synchronizes the device's stream, then cudaFree's every segment with no
  // block in use.
  void empty_cache();

  MemoryStats stats() const;
  void reset_peak();

  // Rounding and pool choice (exposed for tests).
  static constexpr size_t kAlignment = 512;
  static constexpr size_t kSmallRequest = size_t(1) << 20;    // <= this: small pool
  static constexpr size_t kSmallSegment = size_t(2) << 20;    // small pool segments
  static constexpr size_t kMediumRequest = size_t(10) << 20;  // <= this: 20 MiB segments
  static constexpr size_t kMediumSegment = size_t(20) << 20;
  static constexpr size_t kLargeRounding = size_t(2) << 20;  // own segments round to this
  static size_t round_size(size_t bytes);
  static size_t segment_size(size_t rounded);

 private:
  struct Block {
    char* ptr = nullptr;
    size_t size = 0;
    size_t requested = 0;
    bool allocated = false;
    bool small = false;     // which free set it belongs to
    Block* prev = nullptr;  // neighbours inside the same segment
    Block* next = nullptr;
  };
  struct BySize {
    bool operator()(const Block* a, const Block* b) const {
      return a->size != b->size ? a->size < b->size : a->ptr < b->ptr;
    }
  };
  using FreeSet = std::set<Block*, BySize>;

  FreeSet& free_set(bool small) { return small ? small_free_ : large_free_; }
  Block* take_free_block(bool small, size_t size);                     // best fit or null
  Block* new_segment(bool small, size_t seg_bytes, size_t min_bytes);  // may free the cache and retry
  void release_free_segments();                                        // caller holds mu_, stream synced
  bool capturing() const;

  int device_;
  mutable std::mutex mu_;
  FreeSet small_free_, large_free_;
  std::unordered_map<void*, Block*> live_;  // allocated blocks by pointer
  MemoryStats stats_;
};

// The pool of a registered device (cuda_backend.cpp); throws kite::Error for
// an index the backend did not register.
MemoryPool& memory_pool(int device);

}  // namespace kite::cuda
