#pragma once
// Devices and the memory each one allocates. Core knows only the CPU; the
// backend layer registers other device kinds (CUDA) at start-up.
#include <cstddef>
#include <cstdint>
#include <string>

namespace kite {

enum class DeviceKind : uint8_t { CPU = 0, CUDA = 1 };
constexpr int kNumDeviceKinds = 2;

struct Device {
  DeviceKind kind = DeviceKind::CPU;
  int index = 0;
  bool operator==(const Device&) const = default;
  bool is_cpu() const { return kind == DeviceKind::CPU; }
  std::string str() const;  // "cpu", "cuda:0"
};

inline constexpr Device kCpu{DeviceKind::CPU, 0};

// Memory of one device kind. Copies take both ends' devices; a kind's
// implementation handles every copy that touches it.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  virtual void* allocate(size_t bytes, int device_index) = 0;
  virtual void deallocate(void* p, int device_index) = 0;
  virtual void copy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) = 0;
  virtual void memset_zero(void* dst, Device dev, size_t bytes) = 0;
  // `height` rows of `width` bytes, rows `spitch` / `dpitch` bytes apart.
  // The default copies row by row; devices override it with one call.
  virtual void copy_2d(void* dst, size_t dpitch, Device dst_dev, const void* src, size_t spitch, Device src_dev,
                       size_t width, size_t height) {
    for (size_t r = 0; r < height; ++r)
      copy(static_cast<char*>(dst) + r * dpitch, dst_dev, static_cast<const char*>(src) + r * spitch, src_dev, width);
  }
};

// Registered by the backend layer; CPU is always present. Throws kite::Error
// when a kind was not compiled in or has no device.
DeviceMemory& device_memory(DeviceKind kind);
bool device_available(DeviceKind kind);
void register_device_memory(DeviceKind kind, DeviceMemory* memory);

// Copies bytes between any two devices.
void copy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);
// Copies `height` rows of `width` bytes between any two devices.
void copy_bytes_2d(void* dst, size_t dpitch, Device dst_dev, const void* src, size_t spitch, Device src_dev,
                   size_t width, size_t height);

}  // namespace kite
