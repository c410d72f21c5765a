// Causal grouped-query attention over one sequence's contiguous KV: each
// (query, head) runs detail::attend_row over one span of keys, so the result
// is bitwise the one cpu::paged_attention gives for the same keys.
#include "backend/cpu/attention_core.h"
#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/vec.h"
#include "core/parallel.h"

namespace kite::cpu {

void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_start, float scale, Tensor& out,
               SimdLevel level) {
  const VecOps& ops = vec_ops(level);
  const int64_t n_q = q.dim(0), n_heads = q.dim(1), hd = q.dim(2);
  const int64_t n_kv_heads = k.dim(1);
  const int64_t group = n_heads / n_kv_heads;
  const float* pq = q.data_as<const float>();  // [n_q, n_heads, hd]
  const float* pk = k.data_as<const float>();  // [n_kv, n_kv_heads, hd]
  const float* pv = v.data_as<const float>();  // [n_kv, n_kv_heads, hd]
  float* po = out.data_as<float>();            // [n_q, n_heads, hd]
  const int64_t kv_row = n_kv_heads * hd;
  // Work items are (query, head) pairs, query-major; later queries see more keys.
  parallel_for(n_q * n_heads, 1, [&](int64_t begin, int64_t end) {
    float* scores = detail::score_buffer(q_start + n_q);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / n_heads, h = item % n_heads, g = h / group;
      const int64_t len = q_start + i + 1;  // keys [0, len)
      const detail::KvSpan all{pk + g * hd, pv + g * hd, len};
      detail::attend_row(
          ops, pq + (i * n_heads + h) * hd, 1, [&](int64_t) { return all; }, len, kv_row, hd, scale, scores,
          po + (i * n_heads + h) * hd);
    }
  });
}

}  // namespace kite::cpu
