// The one place that knows which backends were compiled in.
#include <mutex>

#include "backend/backend.h"
#include "backend/cpu/cpu_backend.h"
#include "backend/kernels.h"
#include "core/error.h"
#include "core/parallel.h"

#ifdef KITE_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace kite {

namespace {
Kernels g_kernels[kNumDeviceKinds];
bool g_cuda = false;
std::once_flag g_once;
}  // namespace

void init_backends() {
  std::call_once(g_once, [] {
    cpu::register_kernels(g_kernels[int(DeviceKind::CPU)]);
#ifdef KITE_HAVE_CUDA
    g_cuda = cuda::register_backend(g_kernels[int(DeviceKind::CUDA)]);
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

std::string device_description(Device device) {
  init_backends();
  if (device.is_cpu()) return cpu::description();
#ifdef KITE_HAVE_CUDA
  if (g_cuda) return cuda::description(device.index);
#endif
  return device.str() + " (unavailable)";
}

}  // namespace kite
