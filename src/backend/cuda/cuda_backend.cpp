#include "backend/cuda/cuda_backend.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "backend/cuda/attention_kernels.h"
#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/memory_pool.h"
#include "backend/cuda/sampling_kernels.h"
#include "core/error.h"

namespace kite::cuda {

namespace {

struct DeviceState {
  cudaStream_t stream = nullptr;
  MemoryPool* pool = nullptr;
};

// Filled once by register_backend and never freed: tensors released during
// static destruction still find their pool.
std::vector<DeviceState>* g_devices = nullptr;

const DeviceState& device_state(int device) {
  if (!g_devices || device < 0 || device >= int(g_devices->size()))
    fail("device", fmt::format("cuda:{}", device), "no such CUDA device: this machine has {} (cuda:0 to cuda:{})",
         g_devices ? g_devices->size() : 0, g_devices ? int(g_devices->size()) - 1 : -1);
  return (*g_devices)[size_t(device)];
}

// Page-locked (cudaHostAlloc'd or registered) host memory.
bool is_pinned(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return a.type == cudaMemoryTypeHost;
}

// Device memory through the caching pool; copies and memsets on the device's
// stream (cuda_kernels.h: synchronized where the host needs the data).
class CudaMemory final : public DeviceMemory {
 public:
  void* allocate(size_t bytes, int device_index) override { return memory_pool(device_index).allocate(bytes); }
  void deallocate(void* p, int device_index) override {
    if (g_devices && device_index >= 0 && device_index < int(g_devices->size()))
      (*g_devices)[size_t(device_index)].pool->deallocate(p);
  }
  void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) override {
    if (!bytes) return;
    if (dst_dev.is_cpu() && src_dev.is_cpu()) {
      std::memmove(dst, src, bytes);
    } else if (dst_dev.is_cpu()) {  // device -> host: the host reads dst next
      set_device(src_dev.index);
      cudaStream_t s = current_stream(src_dev.index);
      check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync (device to host)");
      check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize (after a device to host copy)");
    } else if (src_dev.is_cpu()) {  // host -> device: a pageable source may be freed once we return
      set_device(dst_dev.index);
      cudaStream_t s = current_stream(dst_dev.index);
      check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (host to device)");
      if (!is_pinned(src)) check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize (after a host to device copy)");
    } else if (dst_dev.index == src_dev.index) {
      set_device(dst_dev.index);
      check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, current_stream(dst_dev.index)),
                 "cudaMemcpyAsync (device to device)");
    } else {  // across devices: the source's queued work first
      set_device(src_dev.index);
      check_cuda(cudaStreamSynchronize(current_stream(src_dev.index)), "cudaStreamSynchronize (peer copy source)");
      set_device(dst_dev.index);
      check_cuda(cudaMemcpyPeerAsync(dst, dst_dev.index, src, src_dev.index, bytes, current_stream(dst_dev.index)),
                 "cudaMemcpyPeerAsync");
    }
  }
  void copy_2d(void* dst, size_t dpitch, Device dst_dev, const void* src, size_t spitch, Device src_dev, size_t width,
               size_t height) override {
    if (!width || !height) return;
    // Host to host, or across two devices: row by row (the base class).
    const bool both_cuda = !dst_dev.is_cpu() && !src_dev.is_cpu();
    if ((dst_dev.is_cpu() && src_dev.is_cpu()) || (both_cuda && dst_dev.index != src_dev.index)) {
      DeviceMemory::copy_2d(dst, dpitch, dst_dev, src, spitch, src_dev, width, height);
      return;
    }
    const Device d = dst_dev.is_cpu() ? src_dev : dst_dev;
    set_device(d.index);
    cudaStream_t s = current_stream(d.index);
    const cudaMemcpyKind kind = dst_dev.is_cpu()   ? cudaMemcpyDeviceToHost
                                : src_dev.is_cpu() ? cudaMemcpyHostToDevice
                                                   : cudaMemcpyDeviceToDevice;
    check_cuda(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, kind, s), "cudaMemcpy2DAsync");
    if (kind != cudaMemcpyDeviceToDevice) check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize (2-D copy)");
  }
  void memset_zero(void* dst, Device dev, size_t bytes) override {
    if (!bytes) return;
    set_device(dev.index);
    check_cuda(cudaMemsetAsync(dst, 0, bytes, current_stream(dev.index)), "cudaMemsetAsync");
  }
};

CudaMemory g_memory;

}  // namespace

cudaStream_t current_stream(int device) { return device_state(device).stream; }

MemoryPool& memory_pool(int device) { return *device_state(device).pool; }

bool register_backend(Kernels& table) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    cudaGetLastError();
    return false;
  }
  auto* devices = new std::vector<DeviceState>(size_t(n));
  for (int i = 0; i < n; ++i) {
    DeviceState& d = (*devices)[size_t(i)];
    cudaError_t e = cudaSetDevice(i);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&d.stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      cudaGetLastError();
      std::fprintf(stderr, "kite: cuda:%d is not usable (%s); the CUDA backend is off\n", i, cudaGetErrorString(e));
      return false;
    }
    d.pool = new MemoryPool(i);
  }
  cudaSetDevice(0);
  g_devices = devices;
  register_dense_kernels(table);
  register_attention_kernels(table);
  register_sampling_kernels(table);
  // Linear kernels, one line each (backend/linear.h), fastest first by rank.
  register_linear_kernel(DeviceKind::CUDA, make_bf16_linear_kernel());
  register_linear_kernel(DeviceKind::CUDA, make_wq_linear_kernel());
  register_device_memory(DeviceKind::CUDA, &g_memory);
  return true;
}

void synchronize(int device_index) {
  cudaStream_t s = current_stream(device_index);
  set_device(device_index);
  check_cuda(cudaStreamSynchronize(s), "cudaStreamSynchronize");
}

void bind_thread(int device_index) {
  device_state(device_index);
  set_device(device_index);
}

std::string description(int device_index) {
  cudaDeviceProp p{};
  check_cuda(cudaGetDeviceProperties(&p, device_index), "cudaGetDeviceProperties");
  return fmt::format("cuda:{} ({}, {:.0f} GiB, sm_{}{})", device_index, p.name, double(p.totalGlobalMem) / (1 << 30),
                     p.major, p.minor);
}

MemoryStats memory_stats(int device_index) { return memory_pool(device_index).stats(); }

void reset_peak_memory(int device_index) { memory_pool(device_index).reset_peak(); }

void empty_cache(int device_index) { memory_pool(device_index).empty_cache(); }

size_t device_total_memory(int device_index) {
  device_state(device_index);
  set_device(device_index);
  size_t free_b = 0, total_b = 0;
  check_cuda(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  return total_b;
}

size_t device_free_memory(int device_index) {
  device_state(device_index);
  set_device(device_index);
  size_t free_b = 0, total_b = 0;
  check_cuda(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  return free_b;
}

void begin_capture(int device_index) {
  set_device(device_index);
  check_cuda(cudaStreamBeginCapture(current_stream(device_index), cudaStreamCaptureModeThreadLocal),
             "cudaStreamBeginCapture");
}

std::shared_ptr<void> end_capture(int device_index) {
  set_device(device_index);
  cudaGraph_t graph = nullptr;
  check_cuda(cudaStreamEndCapture(current_stream(device_index), &graph), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  cudaError_t e = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check_cuda(e, "cudaGraphInstantiate");
  return std::shared_ptr<void>(exec, [](void* p) { cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(p)); });
}

void replay(const std::shared_ptr<void>& exec, int device_index) {
  set_device(device_index);
  check_cuda(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec.get()), current_stream(device_index)),
             "cudaGraphLaunch");
}

}  // namespace kite::cuda
