#pragma once
// An n-dimensional array on one device. Row-major throughout Kite: the last
// dimension is contiguous, and shape comments list dimensions outermost
// first, e.g. // [n_tokens, n_heads, head_dim].
//
// A Tensor is a view: shape, strides (in elements) and an offset over a
// shared Storage. Copying a Tensor copies the view, not the data.
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"

namespace kite {

using Shape = std::vector<int64_t>;

// A block of device memory, or of someone else's memory (an mmap'd file)
// kept alive by `owner`.
struct Storage {
  void* data = nullptr;
  size_t bytes = 0;
  Device device;
  std::shared_ptr<void> owner;  // releases `data` when the last view goes
};

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype, Device device = kCpu);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = kCpu);
  // A view over memory owned elsewhere (e.g. a mapped checkpoint); `owner`
  // is held as long as any view of the tensor lives.
  static Tensor wrap(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<void> owner);
  // Float32 CPU tensor with the given values (tests and small tables).
  static Tensor from_floats(const Shape& shape, const std::vector<float>& values);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device : kCpu; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int ndim() const { return int(shape_.size()); }
  int64_t dim(int i) const { return shape_[i < 0 ? i + ndim() : i]; }
  int64_t numel() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;

  void* data() const;
  template <typename T>
  T* data_as() const {
    return static_cast<T*>(data());
  }

  // Views.
  Tensor reshape(const Shape& shape) const;                 // contiguous only; one dim may be -1
  Tensor slice(int dim, int64_t begin, int64_t end) const;  // [begin, end) along dim
  Tensor select(int64_t index) const;                       // drops dim 0

  // Copies.
  Tensor to(Device device) const;      // contiguous copy on `device`
  Tensor to_dtype(DType dtype) const;  // CPU only; float conversions
  Tensor contiguous() const;
  void copy_from(const Tensor& src);     // same shape and dtype, any devices
  std::vector<float> to_floats() const;  // any float dtype, any device

  std::string shape_str() const;  // "[2, 3]"

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_;
  Shape strides_;
  int64_t offset_ = 0;  // in elements
  DType dtype_ = DType::F32;
};

std::string shape_to_string(const Shape& shape);
int64_t shape_numel(const Shape& shape);

}  // namespace kite
