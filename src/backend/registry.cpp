// The one place that knows which backends were compiled in.
#include <unistd.h>

#include <mutex>

#include "backend/backend.h"
#include "backend/communicator.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/kernels.h"
#include "core/error.h"
#include "core/parallel.h"

#ifdef KITE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif
#ifdef KITE_HAVE_NCCL
namespace kite::cuda {
NcclFactory nccl_factory();  // backend/cuda/nccl_communicator.cpp
}
#endif

namespace kite {

namespace {
Kernels g_kernels[kNumDeviceKinds];
bool g_cuda = false;
std::once_flag g_once;

// Throws the same error as kernels(CUDA) when no CUDA device is usable.
void require_cuda(Device device) {
  init_backends();
  if (!g_cuda)
    throw Error("device", device.str(), "no CUDA backend in this build or no CUDA device present; use --device cpu");
}

size_t sysconf_bytes(int pages_name) {
  const long pages = sysconf(pages_name), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? size_t(pages) * size_t(page) : 0;
}
}  // namespace

void init_backends() {
  std::call_once(g_once, [] {
    cpu::register_kernels(g_kernels[int(DeviceKind::CPU)]);
#ifdef KITE_HAVE_CUDA
    g_cuda = cuda::register_backend(g_kernels[int(DeviceKind::CUDA)]);
#endif
#ifdef KITE_HAVE_NCCL
    if (g_cuda) register_nccl_factory(cuda::nccl_factory());
#endif
  });
}

bool cuda_available() {
  init_backends();
  return g_cuda;
}

Kernels& mutable_kernels(DeviceKind kind) { return g_kernels[int(kind)]; }

Kernels& kernels(DeviceKind kind) {
  init_backends();
  if (kind == DeviceKind::CUDA && !g_cuda)
    throw Error("device", "cuda", "no CUDA backend in this build or no CUDA device present; use --device cpu");
  return g_kernels[int(kind)];
}

void synchronize(Device device) {
  if (device.kind == DeviceKind::CUDA) {
#ifdef KITE_HAVE_CUDA
    cuda::synchronize(device.index);
#endif
  }
}

void bind_thread(Device device) {
  if (device.is_cpu()) return;
  require_cuda(device);
#ifdef KITE_HAVE_CUDA
  cuda::bind_thread(device.index);
#endif
}

std::string device_description(Device device) {
  init_backends();
  if (device.is_cpu()) return cpu::description();
#ifdef KITE_HAVE_CUDA
  if (g_cuda) return cuda::description(device.index);
#endif
  return device.str() + " (unavailable)";
}

MemoryStats memory_stats(Device device) {
  if (device.is_cpu()) return {};
  require_cuda(device);
#ifdef KITE_HAVE_CUDA
  return cuda::memory_stats(device.index);
#else
  return {};
#endif
}

void reset_peak_memory(Device device) {
  if (device.is_cpu()) return;
  require_cuda(device);
#ifdef KITE_HAVE_CUDA
  cuda::reset_peak_memory(device.index);
#endif
}

void empty_cache(Device device) {
  if (device.is_cpu()) return;
  require_cuda(device);
#ifdef KITE_HAVE_CUDA
  cuda::empty_cache(device.index);
#endif
}

size_t device_total_memory(Device device) {
  if (device.is_cpu()) return sysconf_bytes(_SC_PHYS_PAGES);
  require_cuda(device);
#ifdef KITE_HAVE_CUDA
  return cuda::device_total_memory(device.index);
#else
  return 0;
#endif
}

std::optional<double> device_energy_joules(Device device) {
  if (device.is_cpu()) return std::nullopt;
  require_cuda(device);
#ifdef KITE_HAVE_CUDA
  return cuda::device_energy_joules(device.index);
#else
  return std::nullopt;
#endif
}

size_t device_free_memory(Device device) {
  if (device.is_cpu()) return sysconf_bytes(_SC_AVPHYS_PAGES);
  require_cuda(device);
#ifdef KITE_HAVE_CUDA
  return cuda::device_free_memory(device.index);
#else
  return 0;
#endif
}

void begin_capture(Device device) {
  if (device.is_cpu()) throw Error("device", "cpu", "graphs are recorded on CUDA devices only");
  require_cuda(device);
#ifdef KITE_HAVE_CUDA
  cuda::begin_capture(device.index);
#endif
}

DeviceGraph end_capture(Device device) {
  if (device.is_cpu()) throw Error("device", "cpu", "graphs are recorded on CUDA devices only");
  require_cuda(device);
#ifdef KITE_HAVE_CUDA
  return DeviceGraph(cuda::end_capture(device.index), device);
#else
  return {};
#endif
}

void DeviceGraph::replay() const {
  if (!exec_) throw Error("device", "graph", "replay of an empty graph");
#ifdef KITE_HAVE_CUDA
  cuda::replay(exec_, device_.index);
#endif
}

}  // namespace kite
