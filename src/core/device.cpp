#include "core/device.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

namespace kite {

std::string Device::str() const { return kind == DeviceKind::CPU ? std::string("cpu") : fmt::format("cuda:{}", index); }

namespace {

class CpuMemory final : public DeviceMemory {
 public:
  void* allocate(size_t bytes, int) override {
    // 64-byte alignment for AVX-512 loads; round size up as aligned_alloc needs.
    size_t n = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, n == 0 ? 64 : n);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void deallocate(void* p, int) override { std::free(p); }
  void copy(void* dst, Device, const void* src, Device, size_t bytes) override {
    if (bytes) std::memmove(dst, src, bytes);
  }
  void memset_zero(void* dst, Device, size_t bytes) override { std::memset(dst, 0, bytes); }
};

CpuMemory g_cpu_memory;
DeviceMemory* g_memory[kNumDeviceKinds] = {&g_cpu_memory, nullptr};

}  // namespace

DeviceMemory& device_memory(DeviceKind kind) {
  auto* m = g_memory[int(kind)];
  if (!m) throw Error("device", "cuda", "this build of kite has no CUDA backend or no CUDA device is present");
  return *m;
}

bool device_available(DeviceKind kind) { return g_memory[int(kind)] != nullptr; }

void register_device_memory(DeviceKind kind, DeviceMemory* memory) { g_memory[int(kind)] = memory; }

void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  DeviceKind k = dst_dev.is_cpu() ? src_dev.kind : dst_dev.kind;
  device_memory(k).copy(dst, dst_dev, src, src_dev, bytes);
}

void copy_bytes_2d(void* dst, size_t dpitch, Device dst_dev, const void* src, size_t spitch, Device src_dev,
                   size_t width, size_t height) {
  DeviceKind k = dst_dev.is_cpu() ? src_dev.kind : dst_dev.kind;
  device_memory(k).copy_2d(dst, dpitch, dst_dev, src, spitch, src_dev, width, height);
}

}  // namespace kite
