#pragma once
// The backend layer: one interface over devices. The CPU backend is always
// built; the CUDA backend registers itself when it was compiled in and a
// device is present. Ops (backend/ops/*.h) dispatch on their tensors' device.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/device.h"

namespace kite {

// Registers every compiled-in backend (idempotent). Call once at start-up;
// ops also call it lazily.
void init_backends();

bool cuda_available();
// Waits for all work queued on `device` to finish (no-op on CPU).
void synchronize(Device device);
// A short description: "cpu (avx512, 2 threads)", "cuda:0 (NVIDIA H100 80GB HBM3)".
std::string device_description(Device device);

// ---- device memory (for planning: weights + peak activations, then the KV
// pool gets the rest) ---------------------------------------------------------
//
// CUDA tensors come from a caching pool: freed blocks are kept for reuse and
// only a miss asks the driver for memory. The CPU allocates directly and
// reports zero statistics. Functions on an absent CUDA device throw kite::Error.
struct MemoryStats {
  size_t bytes_reserved = 0;        // held from the driver (cudaMalloc'd segments, cached or in use)
  size_t bytes_in_use = 0;          // handed out to live tensors (sizes rounded to the pool's bins)
  size_t peak_bytes_in_use = 0;     // highest bytes_in_use since start or reset_peak_memory
  size_t bytes_requested = 0;       // what live tensors asked for (<= bytes_in_use)
  uint64_t num_allocs = 0;          // allocations served (hits and misses)
  uint64_t num_device_mallocs = 0;  // misses: cudaMalloc calls
  uint64_t num_device_frees = 0;    // cudaFree calls (empty_cache, retries after out-of-memory)
};

MemoryStats memory_stats(Device device);
// Sets the peak to what is in use now.
void reset_peak_memory(Device device);
// Returns cached blocks no tensor uses to the driver (waits for the device first).
void empty_cache(Device device);
// The device's memory size, and what the driver can still hand out (not
// counting blocks the pool caches: bytes_reserved - bytes_in_use of those is
// reusable too). CPU: physical and available RAM.
size_t device_total_memory(Device device);
size_t device_free_memory(Device device);
// Energy the device has used since its driver loaded, in joules (NVML's
// counter); nullopt on the CPU or where the counter is unavailable.
std::optional<double> device_energy_joules(Device device);

// ---- graphs: record a sequence of launches once, replay it with one ------
//
// begin_capture(dev) starts recording the work Kite queues on `dev` from
// this thread (nothing runs); end_capture returns it as a DeviceGraph. The
// recorded code must keep backend/cuda/cuda_kernels.h's rules: no host
// copies, no allocation, no synchronization (ops under ops::TrustedIndices).
// Replays reuse the same memory: inputs are updated in place beforehand.
// On the CPU both throw kite::Error.
class DeviceGraph {
 public:
  DeviceGraph() = default;
  DeviceGraph(std::shared_ptr<void> exec, Device device) : exec_(std::move(exec)), device_(device) {}
  bool empty() const { return !exec_; }
  // Queues the recorded work on the device (asynchronous).
  void replay() const;

 private:
  std::shared_ptr<void> exec_;  // the instantiated graph, destroyed with the last copy
  Device device_;
};
void begin_capture(Device device);
DeviceGraph end_capture(Device device);

}  // namespace kite
