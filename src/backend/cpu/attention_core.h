#pragma once
// The per-(query, head) core shared by cpu::attention (one contiguous span of
// keys) and cpu::paged_attention (one span per cache block). Both make the
// same VecOps calls on the same values, and dot_rows / weighted_rows_acc give
// results that do not depend on how the keys are split into spans, so the two
// ops agree bitwise for the same keys in the same order.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "backend/cpu/vec.h"

namespace kite::cpu::detail {

// A run of consecutive key rows and their value rows; row r of the run is at
// k + r * stride and v + r * stride.
struct KvSpan {
  const float* k;
  const float* v;
  int64_t rows;
};

// This thread's score buffer, at least n floats; it only grows, so steady
// state attention allocates nothing.
inline float* score_buffer(int64_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < size_t(n)) buf.resize(size_t(n));
  return buf.data();
}

// orow = softmax_j(scale * q . k_j) weighted sum of v_j over the `len` keys
// of spans span(0), ..., span(n_spans - 1) (their rows add up to len), in two
// passes: scores and their max, then exp/sum and the weighted sum of V, all
// in F32. scores has room for len floats.
// qrow: [head_dim]; orow: [head_dim].
template <typename SpanFn>
inline void attend_row(const VecOps& ops, const float* qrow, int64_t n_spans, const SpanFn& span, int64_t len,
                       int64_t stride, int64_t head_dim, float scale, float* scores, float* orow) {
  int64_t pos = 0;
  for (int64_t b = 0; b < n_spans; ++b) {
    const KvSpan s = span(b);
    ops.dot_rows(qrow, s.k, stride, s.rows, head_dim, scores + pos);
    pos += s.rows;
  }
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < len; ++j) mx = std::max(mx, scores[j] *= scale);
  const float sum = ops.exp_sub_sum(scores, mx, len);
  std::fill(orow, orow + head_dim, 0.0f);
  pos = 0;
  for (int64_t b = 0; b < n_spans; ++b) {
    const KvSpan s = span(b);
    ops.weighted_rows_acc(scores + pos, s.v, stride, s.rows, head_dim, orow);
    pos += s.rows;
  }
  ops.scale(orow, 1.0f / sum, head_dim);
}

}  // namespace kite::cpu::detail
