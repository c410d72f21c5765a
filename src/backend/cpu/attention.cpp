// Causal grouped-query attention, two passes per (query, head): scores and
// their max, then exp/sum and the weighted sum of V, all in F32.
#include <algorithm>
#include <limits>
#include <vector>

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
    std::vector<float> scores(size_t(q_start + n_q));
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / n_heads, h = item % n_heads, g = h / group;
      const int64_t len = q_start + i + 1;  // keys [0, len)
      const float* qrow = pq + (i * n_heads + h) * hd;
      const float* kbase = pk + g * hd;
      const float* vbase = pv + g * hd;
      ops.dot_rows(qrow, kbase, kv_row, len, hd, scores.data());
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < len; ++j) mx = std::max(mx, scores[size_t(j)] *= scale);
      const float sum = ops.exp_sub_sum(scores.data(), mx, len);
      float* orow = po + (i * n_heads + h) * hd;
      ops.weighted_rows(scores.data(), vbase, kv_row, len, hd, orow);
      ops.scale(orow, 1.0f / sum, hd);
    }
  });
}

}  // namespace kite::cpu
