#include "core/tensor.h"

#include "core/error.h"

namespace kite {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_to_string(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

namespace {
Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t s = 1;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    st[i] = s;
    s *= shape[i];
  }
  return st;
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) KITE_CHECK(d >= 0, "negative dimension in {}", shape_to_string(shape));
  auto st = std::make_shared<Storage>();
  st->bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  st->device = device;
  DeviceMemory& mem = device_memory(device.kind);
  st->data = mem.allocate(st->bytes, device.index);
  void* p = st->data;
  int idx = device.index;
  DeviceMemory* mp = &mem;
  st->owner = std::shared_ptr<void>(p, [mp, idx](void* q) { mp->deallocate(q, idx); });
  Tensor t;
  t.storage_ = std::move(st);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  device_memory(device.kind).memset_zero(t.data(), device, t.nbytes());
  return t;
}

Tensor Tensor::wrap(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<void> owner) {
  auto st = std::make_shared<Storage>();
  st->data = data;
  st->bytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  st->device = device;
  st->owner = std::move(owner);
  Tensor t;
  t.storage_ = std::move(st);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::from_floats(const Shape& shape, const std::vector<float>& values) {
  KITE_CHECK(int64_t(values.size()) == shape_numel(shape), "{} values for shape {}", values.size(),
             shape_to_string(shape));
  Tensor t = empty(shape, DType::F32);
  std::copy(values.begin(), values.end(), t.data_as<float>());
  return t;
}

int64_t Tensor::numel() const { return shape_numel(shape_); }

bool Tensor::is_contiguous() const { return strides_ == contiguous_strides(shape_) || numel() <= 1; }

void* Tensor::data() const {
  if (!storage_) return nullptr;
  return static_cast<char*>(storage_->data) + offset_ * int64_t(dtype_size(dtype_));
}

Tensor Tensor::reshape(const Shape& shape) const {
  KITE_CHECK(is_contiguous(), "reshape of a non-contiguous tensor {}", shape_str());
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      KITE_CHECK(infer < 0, "two -1 dims in reshape");
      infer = int(i);
    } else {
      known *= s[i];
    }
  }
  if (infer >= 0) s[infer] = known ? numel() / known : 0;
  KITE_CHECK(shape_numel(s) == numel(), "reshape {} -> {}", shape_str(), shape_to_string(s));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::slice(int dim, int64_t begin, int64_t end) const {
  if (dim < 0) dim += ndim();
  KITE_CHECK(dim >= 0 && dim < ndim() && 0 <= begin && begin <= end && end <= shape_[dim], "slice {} [{}, {}) of {}",
             dim, begin, end, shape_str());
  Tensor t = *this;
  t.offset_ += begin * strides_[dim];
  t.shape_[dim] = end - begin;
  return t;
}

Tensor Tensor::select(int64_t index) const {
  KITE_CHECK(ndim() >= 1 && index >= 0 && index < shape_[0], "select {} of {}", index, shape_str());
  Tensor t = *this;
  t.offset_ += index * strides_[0];
  t.shape_.erase(t.shape_.begin());
  t.strides_.erase(t.strides_.begin());
  return t;
}

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return to(device());
}

Tensor Tensor::to(Device device) const {
  Tensor out = empty(shape_, dtype_, device);
  out.copy_from(*this);
  return out;
}

void Tensor::copy_from(const Tensor& src) {
  KITE_CHECK(src.shape_ == shape_ && src.dtype_ == dtype_, "copy_from {} {} -> {} {}", dtype_name(src.dtype_),
             src.shape_str(), dtype_name(dtype_), shape_str());
  if (is_contiguous() && src.is_contiguous()) {
    copy_bytes(data(), device(), src.data(), src.device(), nbytes());
    return;
  }
  // Row-strided 2-D views (a column block of a matrix, say): one 2-D copy,
  // on any device.
  if (ndim() == 2 && strides_[1] == 1 && src.strides_[1] == 1) {
    const size_t es = dtype_size(dtype_);
    copy_bytes_2d(data(), size_t(strides_[0]) * es, device(), src.data(), size_t(src.strides_[0]) * es, src.device(),
                  size_t(shape_[1]) * es, size_t(shape_[0]));
    return;
  }
  // Other strided copies: element by element, on the host.
  KITE_CHECK(device().is_cpu() && src.device().is_cpu(), "strided copy across devices");
  const size_t es = dtype_size(dtype_);
  const int nd = ndim();
  std::vector<int64_t> idx(nd, 0);
  const int64_t n = numel();
  for (int64_t i = 0; i < n; ++i) {
    int64_t so = 0, dof = 0;
    for (int d = 0; d < nd; ++d) {
      so += idx[d] * src.strides_[d];
      dof += idx[d] * strides_[d];
    }
    std::memcpy(static_cast<char*>(data()) + dof * es, static_cast<const char*>(src.data()) + so * es, es);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < shape_[d]) break;
      idx[d] = 0;
    }
  }
}

Tensor Tensor::to_dtype(DType dtype) const {
  KITE_CHECK(device().is_cpu(), "to_dtype on {}", device().str());
  if (dtype == dtype_) return contiguous();
  Tensor src = contiguous();
  Tensor out = empty(shape_, dtype);
  if (dtype == DType::F32) {
    convert_to_f32(src.data(), dtype_, out.data_as<float>(), size_t(numel()));
  } else {
    std::vector<float> tmp(static_cast<size_t>(numel()));
    convert_to_f32(src.data(), dtype_, tmp.data(), tmp.size());
    convert_from_f32(tmp.data(), out.data(), dtype, tmp.size());
  }
  return out;
}

std::vector<float> Tensor::to_floats() const {
  Tensor host = device().is_cpu() ? contiguous() : to(kCpu);
  std::vector<float> v(static_cast<size_t>(numel()));
  convert_to_f32(host.data(), dtype_, v.data(), v.size());
  return v;
}

std::string Tensor::shape_str() const { return shape_to_string(shape_); }

}  // namespace kite
