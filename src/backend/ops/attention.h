#pragma once
#include "core/tensor.h"

namespace kite::ops {
// Causal grouped-query attention over one sequence's contiguous KV.
// Query row i sits at position q_start + i and attends to KV rows
// [0, q_start + i]; query head h reads KV head h / (n_heads / n_kv_heads).
// Softmax in F32 (or wider) with the max subtracted.
// q: [n_q, n_heads, head_dim] F32; k, v: [n_kv, n_kv_heads, head_dim] F32 with
// n_kv >= q_start + n_q; out: [n_q, n_heads, head_dim] F32.
void attention(const Tensor& q, const Tensor& k, const Tensor& v, int64_t q_start, float scale, Tensor& out);
}  // namespace kite::ops
