// Causal grouped-query attention over a paged KV cache. Each (token, head)
// runs detail::attend_row with one span per cache block, the same code
// cpu::attention runs over one contiguous span, so for the same keys in the
// same order the two give bitwise equal results. With a sliding window the
// spans start at the first visible key: keys before it are never read.
#include <algorithm>

#include "backend/cpu/attention_core.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/vec.h"
#include "core/parallel.h"

namespace kite::cpu {

void paged_attention(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& query_start,
                     const Tensor& context_lens, const Tensor& block_tables, float scale, int64_t sliding_window,
                     Tensor& out, SimdLevel level) {
  const VecOps& ops = vec_ops(level);
  const int64_t n_tokens = q.dim(0), n_heads = q.dim(1), hd = q.dim(2);
  const int64_t block_size = k_cache.dim(1), n_kv_heads = k_cache.dim(2);
  const int64_t group = n_heads / n_kv_heads;
  const int64_t n_seqs = context_lens.dim(0), max_blocks = block_tables.dim(1);
  const float* pq = q.data_as<const float>();                 // [n_tokens, n_heads, hd]
  const float* pk = k_cache.data_as<const float>();           // [num_blocks, block_size, n_kv_heads, hd]
  const float* pv = v_cache.data_as<const float>();           // [num_blocks, block_size, n_kv_heads, hd]
  const int32_t* qs = query_start.data_as<const int32_t>();   // [n_seqs + 1]
  const int32_t* cl = context_lens.data_as<const int32_t>();  // [n_seqs]
  const int32_t* bt = block_tables.data_as<const int32_t>();  // [n_seqs, max_blocks]
  float* po = out.data_as<float>();                           // [n_tokens, n_heads, hd]
  const int64_t kv_row = n_kv_heads * hd, block_stride = block_size * kv_row;
  int64_t max_len = 1;
  for (int64_t s = 0; s < n_seqs; ++s) max_len = std::max<int64_t>(max_len, cl[s]);
  // Work items are (token, head) pairs, token-major over the whole batch.
  parallel_for(n_tokens * n_heads, 1, [&](int64_t begin, int64_t end) {
    float* scores = detail::score_buffer(max_len);
    // The sequence of the first token: the last s with query_start[s] <= token
    // (sequences without queries are skipped); later tokens step forward.
    int64_t s = std::upper_bound(qs, qs + n_seqs + 1, int32_t(begin / n_heads)) - qs - 1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t t = item / n_heads, h = item % n_heads, g = h / group;
      while (qs[s + 1] <= t) ++s;
      const int64_t n_q = qs[s + 1] - qs[s], i = t - qs[s];
      const int64_t len = cl[s] - n_q + i + 1;  // the query sits at position len - 1
      // Visible keys: positions [first, len); the window keeps the last W.
      const int64_t first = sliding_window > 0 ? std::max<int64_t>(0, len - sliding_window) : 0;
      const int64_t b0 = first / block_size;  // the block of the first visible key
      const int32_t* table = bt + s * max_blocks;
      // Span j: the visible keys of block b0 + j.
      const auto span = [&](int64_t j) {
        const int64_t b = b0 + j, lo = std::max(first, b * block_size), hi = std::min(len, (b + 1) * block_size);
        const int64_t base = int64_t(table[b]) * block_stride + (lo - b * block_size) * kv_row + g * hd;
        return detail::KvSpan{pk + base, pv + base, hi - lo};
      };
      detail::attend_row(ops, pq + (t * n_heads + h) * hd, (len + block_size - 1) / block_size - b0, span, len - first,
                         kv_row, hd, scale, scores, po + (t * n_heads + h) * hd);
    }
  });
}

}  // namespace kite::cpu
