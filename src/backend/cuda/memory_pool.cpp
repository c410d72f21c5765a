#include "backend/cuda/memory_pool.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_kernels.h"

namespace kite::cuda {

namespace {

// Makes `device` current for the scope and restores the caller's device.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    check_cuda(cudaGetDevice(&saved_), "cudaGetDevice");
    if (saved_ != device) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceScope() {
    int now = -1;
    if (cudaGetDevice(&now) == cudaSuccess && now != saved_) cudaSetDevice(saved_);
  }

 private:
  int saved_ = 0;
};

double mib(size_t bytes) { return double(bytes) / double(1 << 20); }

}  // namespace

MemoryPool::MemoryPool(int device) : device_(device) {}

MemoryPool::~MemoryPool() {
  // Pools live for the whole process (see cuda_backend.cpp); this runs only
  // for pools made by hand. Whole free segments go back, nothing else.
  std::lock_guard<std::mutex> lock(mu_);
  release_free_segments();
}

size_t MemoryPool::round_size(size_t bytes) {
  if (bytes < kAlignment) return kAlignment;
  return (bytes + kAlignment - 1) / kAlignment * kAlignment;
}

size_t MemoryPool::segment_size(size_t rounded) {
  if (rounded <= kSmallRequest) return kSmallSegment;
  if (rounded <= kMediumRequest) return kMediumSegment;
  return (rounded + kLargeRounding - 1) / kLargeRounding * kLargeRounding;
}

bool MemoryPool::capturing() const {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  check_cuda(cudaStreamIsCapturing(current_stream(device_), &status), "cudaStreamIsCapturing");
  return status != cudaStreamCaptureStatusNone;
}

MemoryPool::Block* MemoryPool::take_free_block(bool small, size_t size) {
  FreeSet& set = free_set(small);
  Block key;
  key.size = size;
  key.ptr = nullptr;
  auto it = set.lower_bound(&key);  // smallest block >= size (lowest address among equals)
  if (it == set.end()) return nullptr;
  Block* b = *it;
  set.erase(it);
  return b;
}

MemoryPool::Block* MemoryPool::new_segment(bool small, size_t seg_bytes, size_t min_bytes) {
  DeviceScope scope(device_);
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, seg_bytes);
  if (e == cudaErrorMemoryAllocation) {
    // Give the cache back and try once more, then with just what was asked
    // for (a 20 MiB segment for a 3 MiB request may not fit where 4 MiB do).
    cudaGetLastError();
    check_cuda(cudaStreamSynchronize(current_stream(device_)), "cudaStreamSynchronize");
    release_free_segments();
    e = cudaMalloc(&p, seg_bytes);
    const size_t exact = (min_bytes + kLargeRounding - 1) / kLargeRounding * kLargeRounding;
    if (e == cudaErrorMemoryAllocation && exact < seg_bytes) {
      cudaGetLastError();
      seg_bytes = exact;
      e = cudaMalloc(&p, seg_bytes);
    }
  }
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaGetLastError();
    fail(fmt::format("cuda:{}", device_), "memory",
         "cudaMalloc of {:.1f} MiB failed ({}): {:.1f} MiB in use by tensors, {:.1f} MiB held by Kite's pool, "
         "{:.1f} MiB of {:.1f} MiB free on the device; lower the batch size or the KV-cache share of the device",
         mib(seg_bytes), cudaGetErrorString(e), mib(stats_.bytes_in_use), mib(stats_.bytes_reserved), mib(free_b),
         mib(total_b));
  }
  stats_.bytes_reserved += seg_bytes;
  ++stats_.num_device_mallocs;
  Block* b = new Block;
  b->ptr = static_cast<char*>(p);
  b->size = seg_bytes;
  b->small = small;
  return b;
}

void* MemoryPool::allocate(size_t bytes) {
  const size_t size = round_size(bytes);
  const bool small = size <= kSmallRequest;
  std::lock_guard<std::mutex> lock(mu_);
  if (capturing())
    fail(fmt::format("cuda:{}", device_), "memory",
         "allocation of {} bytes while a CUDA graph is being captured on the device's stream; allocate every "
         "tensor the graph uses before capture and keep it alive while the graph can replay",
         bytes);
  Block* b = take_free_block(small, size);
  if (!b) b = new_segment(small, segment_size(size), size);
  const size_t rest = b->size - size;
  if (small ? rest >= kAlignment : rest > kSmallRequest) {
    Block* r = new Block;
    r->ptr = b->ptr + size;
    r->size = rest;
    r->small = small;
    r->prev = b;
    r->next = b->next;
    if (b->next) b->next->prev = r;
    b->next = r;
    b->size = size;
    free_set(small).insert(r);
  }
  b->allocated = true;
  b->requested = bytes;
  live_.emplace(b->ptr, b);
  stats_.bytes_in_use += b->size;
  stats_.bytes_requested += bytes;
  stats_.peak_bytes_in_use = std::max(stats_.peak_bytes_in_use, stats_.bytes_in_use);
  ++stats_.num_allocs;
  return b->ptr;
}

void MemoryPool::deallocate(void* p) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(p);
  if (it == live_.end()) {
    // Called from tensor destructors: report, never throw.
    std::fprintf(stderr, "kite: cuda:%d memory pool: free of unknown pointer %p ignored\n", device_, p);
    return;
  }
  Block* b = it->second;
  live_.erase(it);
  stats_.bytes_in_use -= b->size;
  stats_.bytes_requested -= b->requested;
  b->allocated = false;
  b->requested = 0;
  FreeSet& set = free_set(b->small);
  if (Block* n = b->next; n && !n->allocated) {
    set.erase(n);
    b->size += n->size;
    b->next = n->next;
    if (n->next) n->next->prev = b;
    delete n;
  }
  if (Block* q = b->prev; q && !q->allocated) {
    set.erase(q);
    q->size += b->size;
    q->next = b->next;
    if (b->next) b->next->prev = q;
    delete b;
    b = q;
  }
  set.insert(b);
}

void MemoryPool::release_free_segments() {
  for (FreeSet* set : {&small_free_, &large_free_}) {
    std::vector<Block*> whole;
    for (Block* b : *set)
      if (!b->prev && !b->next) whole.push_back(b);
    for (Block* b : whole) {
      set->erase(b);
      const cudaError_t e = cudaFree(b->ptr);
      if (e != cudaSuccess) {
        cudaGetLastError();
        std::fprintf(stderr, "kite: cuda:%d memory pool: cudaFree failed: %s\n", device_, cudaGetErrorString(e));
      }
      stats_.bytes_reserved -= b->size;
      ++stats_.num_device_frees;
      delete b;
    }
  }
}

void MemoryPool::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  if (capturing())
    fail(fmt::format("cuda:{}", device_), "memory", "empty_cache while a CUDA graph is being captured; call it after");
  DeviceScope scope(device_);
  check_cuda(cudaStreamSynchronize(current_stream(device_)), "cudaStreamSynchronize");
  release_free_segments();
}

MemoryStats MemoryPool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void MemoryPool::reset_peak() {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.peak_bytes_in_use = stats_.bytes_in_use;
}

}  // namespace kite::cuda
