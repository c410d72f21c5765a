#pragma once
// The host-side sum both CPU communicators use (communicator.cpp,
// tcp_communicator.cpp): ranks' buffers added in rank order into F32, then
// rounded once into the tensor's dtype, so every rank gets the same bits.
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"

namespace kite::detail {

// acc[i] += src[i] for n values of dtype (F32 or BF16).
inline void accumulate(std::vector<float>& acc, const void* src, DType dtype, int64_t n) {
  if (dtype == DType::F32) {
    const float* s = static_cast<const float*>(src);
    for (int64_t i = 0; i < n; ++i) acc[size_t(i)] += s[i];
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) acc[size_t(i)] += bf16_to_f32(s[i]);
  }
}

// x = acc, rounded to x's dtype (F32 or BF16; x contiguous on the CPU).
inline void store(const std::vector<float>& acc, Tensor& x) {
  if (x.dtype() == DType::F32) {
    std::memcpy(x.data(), acc.data(), acc.size() * sizeof(float));
  } else {
    uint16_t* d = x.data_as<uint16_t>();
    for (size_t i = 0; i < acc.size(); ++i) d[i] = f32_to_bf16(acc[i]);
  }
}

}  // namespace kite::detail
