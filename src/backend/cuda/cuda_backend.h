#pragma once
// CUDA backend entry points, called only from backend/registry.cpp (plain
// C++: no CUDA headers here).
#include <cstddef>
#include <memory>
#include <optional>
#include <string>

#include "backend/backend.h"
#include "backend/kernels.h"
#include "backend/linear.h"

namespace kite::cuda {

// Registers CUDA device memory (a caching pool per device), creates one
// stream per device and fills the CUDA kernel table. Returns false
// (registering nothing) when no CUDA device is usable.
bool register_backend(Kernels& table);
// Linear kernels (backend/linear.h), one file each.
std::unique_ptr<LinearKernel> make_bf16_linear_kernel();  // linear_bf16_kernel.cpp
std::unique_ptr<LinearKernel> make_wq_linear_kernel();    // linear_wq_kernel.cpp (W4A16, W8A16)
// Waits for the device's stream (every kernel and copy Kite queues runs on it).
void synchronize(int device_index);
std::string description(int device_index);
// Makes `device_index` the calling thread's current device.
void bind_thread(int device_index);

// The pool's statistics and controls (backend.h's memory functions).
MemoryStats memory_stats(int device_index);
void reset_peak_memory(int device_index);
void empty_cache(int device_index);
size_t device_total_memory(int device_index);
size_t device_free_memory(int device_index);
// NVML's total energy counter in joules (energy.cpp); nullopt when NVML or
// the counter is unavailable.
std::optional<double> device_energy_joules(int device_index);

// Graph capture on the device's stream (backend.h's DeviceGraph).
void begin_capture(int device_index);
std::shared_ptr<void> end_capture(int device_index);  // the instantiated cudaGraphExec_t
void replay(const std::shared_ptr<void>& exec, int device_index);

}  // namespace kite::cuda
