// ops::sample_rows on the CPU over the reference sampling math
// (sample_math.cpp): bans, penalties, the pick, logprobs.
#include "backend/ops/sample.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/parallel.h"
#include "core/tensor.h"

namespace kite::cpu {

namespace {

// Logprob, rank and the top k of `token` under the raw row [vocab].
void fill_logprobs(std::span<const float> row, int32_t k, ops::SampledToken& t) {
  const double lse = ops::sample_math::log_sum_exp(row);
  const int32_t token = t.token;
  const int64_t vocab = int64_t(row.size());
  t.logprob = float(double(row[size_t(token)]) - lse);
  t.rank = 1;
  for (int64_t j = 0; j < vocab; ++j)
    if (row[size_t(j)] > row[size_t(token)] || (row[size_t(j)] == row[size_t(token)] && j < token)) ++t.rank;
  if (k > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(vocab));
    for (int64_t j = 0; j < vocab; ++j) ids[size_t(j)] = int32_t(j);
    const size_t top = std::min<size_t>(size_t(k), ids.size());
    std::partial_sort(ids.begin(), ids.begin() + ptrdiff_t(top), ids.end(), [&](int32_t a, int32_t b) {
      return row[size_t(a)] > row[size_t(b)] || (row[size_t(a)] == row[size_t(b)] && a < b);
    });
    for (size_t i = 0; i < top; ++i) t.top.push_back({ids[i], float(double(row[size_t(ids[i])]) - lse)});
  }
}

}  // namespace

std::vector<ops::SampledToken> sample_rows(Tensor& logits, const ops::SampleBatch& b) {
  const int64_t m = logits.dim(0), vocab = logits.dim(1);
  float* base = logits.data_as<float>();
  std::vector<ops::SampledToken> out(static_cast<size_t>(m));
  parallel_for(m, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const ops::SampleRow& sr = b.rows[size_t(r)];
      std::span<float> row(base + r * vocab, size_t(vocab));  // [vocab]
      ops::SampledToken& t = out[size_t(r)];
      std::vector<float> raw;  // the row before bans and penalties, for logprobs
      if (sr.num_logprobs >= 0 && sr.forced_token < 0) raw.assign(row.begin(), row.end());
      if (sr.forced_token >= 0) {
        t.token = sr.forced_token;
      } else {
        for (int32_t i = sr.banned_begin; i < sr.banned_end; ++i)
          row[size_t(b.banned[size_t(i)])] = -std::numeric_limits<float>::infinity();
        if (sr.params.has_penalties() && sr.penalty_end > sr.penalty_begin) {
          const size_t first = size_t(sr.penalty_begin), n = size_t(sr.penalty_end - sr.penalty_begin);
          ops::sample_math::penalize(row, sr.params, std::span(b.penalty_tokens).subspan(first, n),
                                     std::span(b.output_counts).subspan(first, n));
        }
        if (sr.params.greedy()) {
          t.token = ops::sample_math::argmax(row);
        } else {
          auto dist = ops::sample_math::distribution(row, sr.params);
          t.token = ops::sample_math::pick(dist, sr.uniform);
        }
      }
      if (sr.num_logprobs >= 0) fill_logprobs(raw.empty() ? std::span<const float>(row) : raw, sr.num_logprobs, t);
    }
  });
  return out;
}

}  // namespace kite::cpu
