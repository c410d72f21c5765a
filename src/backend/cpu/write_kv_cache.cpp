// Scatters new K/V rows into their paged-cache slots (plain row copies).
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "core/parallel.h"

namespace kite::cpu {

void write_kv_cache(const Tensor& k, const Tensor& v, const Tensor& slot_mapping, Tensor& k_cache, Tensor& v_cache) {
  const int64_t n_tokens = k.dim(0), row = k.dim(1) * k.dim(2);
  const float* pk = k.data_as<const float>();                    // [n_tokens, n_kv_heads, hd]
  const float* pv = v.data_as<const float>();                    // [n_tokens, n_kv_heads, hd]
  const int32_t* slots = slot_mapping.data_as<const int32_t>();  // [n_tokens]
  float* kc = k_cache.data_as<float>();                          // [num_blocks * block_size, n_kv_heads, hd]
  float* vc = v_cache.data_as<float>();                          // [num_blocks * block_size, n_kv_heads, hd]
  const size_t row_bytes = size_t(row) * sizeof(float);
  parallel_for(n_tokens, 16, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (slots[t] < 0) continue;  // padding
      std::memcpy(kc + int64_t(slots[t]) * row, pk + t * row, row_bytes);
      std::memcpy(vc + int64_t(slots[t]) * row, pv + t * row, row_bytes);
    }
  });
}

}  // namespace kite::cpu
