// Embedding lookup: rows of the table (or of a vocabulary shard) converted to F32.
#include <algorithm>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/vec.h"
#include "core/parallel.h"

namespace kite::cpu {

void embedding_shard(const Tensor& table, const Tensor& ids, int64_t first_id, Tensor& out) {
  const int64_t n = ids.dim(0), d = table.dim(1), rows = table.dim(0);
  const size_t row_bytes = size_t(d) * dtype_size(table.dtype());
  const char* base = static_cast<const char*>(table.data());
  const int32_t* pid = ids.data_as<const int32_t>();
  float* po = out.data_as<float>();  // [n, d]
  const VecOps& v = vec_ops(simd_level());
  parallel_for(n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = int64_t(pid[i]) - first_id;
      if (r >= 0 && r < rows)
        v.to_f32(base + size_t(r) * row_bytes, table.dtype(), po + i * d, d);
      else
        std::fill(po + i * d, po + (i + 1) * d, 0.0f);
    }
  });
}

// The whole table: a shard starting at id 0 (ops::embedding checked the ids).
void embedding(const Tensor& table, const Tensor& ids, Tensor& out) { embedding_shard(table, ids, 0, out); }

}  // namespace kite::cpu
