#include "backend/ops/sample.h"

#include <algorithm>

#include "backend/ops/check.h"

namespace kite::ops {

std::vector<SampledToken> sample_rows(Tensor& logits, const SampleBatch& batch) {
  const detail::OpCheck c("sample_rows");
  c.tensor("logits", logits, 2, "[m, vocab]", {DType::F32});
  const int64_t m = logits.dim(0), vocab = logits.dim(1);
  if (vocab < 1) c.fail_arg("logits", "rows must have at least one value");
  if (int64_t(batch.rows.size()) != m)
    c.fail_arg("batch.rows", fmt::format("{} rows for {} logit rows", batch.rows.size(), m));
  if (batch.penalty_tokens.size() != batch.output_counts.size())
    c.fail_arg("batch.output_counts",
               fmt::format("{} counts for {} penalty tokens", batch.output_counts.size(), batch.penalty_tokens.size()));
  for (int32_t t : batch.penalty_tokens)
    if (t < 0 || t >= vocab) c.fail_arg("batch.penalty_tokens", fmt::format("id {} outside [0, {})", t, vocab));
  for (int32_t t : batch.banned)
    if (t < 0 || t >= vocab) c.fail_arg("batch.banned", fmt::format("id {} outside [0, {})", t, vocab));
  const int64_t n_pen = int64_t(batch.penalty_tokens.size()), n_ban = int64_t(batch.banned.size());
  for (int64_t i = 0; i < m; ++i) {
    const SampleRow& r = batch.rows[size_t(i)];
    const std::string arg = fmt::format("batch.rows[{}]", i);
    r.params.validate(fmt::format("op sample_rows: {}.params", arg));
    if (!(r.uniform >= 0.0 && r.uniform < 1.0)) c.fail_arg(arg, fmt::format("uniform {} outside [0, 1)", r.uniform));
    if (r.forced_token >= vocab) c.fail_arg(arg, fmt::format("forced_token {} outside [0, {})", r.forced_token, vocab));
    if (r.num_logprobs < -1 || r.num_logprobs > kMaxSampleLogprobs)
      c.fail_arg(arg, fmt::format("num_logprobs {} is invalid; expected -1 to {}", r.num_logprobs, kMaxSampleLogprobs));
    if (r.penalty_begin < 0 || r.penalty_begin > r.penalty_end || r.penalty_end > n_pen)
      c.fail_arg(arg, fmt::format("penalty range [{}, {}) outside the {} penalty tokens", r.penalty_begin,
                                  r.penalty_end, n_pen));
    if (r.banned_begin < 0 || r.banned_begin > r.banned_end || r.banned_end > n_ban)
      c.fail_arg(arg,
                 fmt::format("banned range [{}, {}) outside the {} banned ids", r.banned_begin, r.banned_end, n_ban));
  }
  if (m == 0) return {};
  return c.kernel(logits.device(), &Kernels::sample_rows)(logits, batch);
}

void add_penalty_tokens(SampleBatch& batch, SampleRow& row, std::span<const int32_t> prompt,
                        std::span<const int32_t> output, int64_t vocab) {
  if (!row.params.has_penalties()) return;
  row.penalty_begin = int32_t(batch.penalty_tokens.size());
  std::vector<int32_t> ids(prompt.begin(), prompt.end());
  ids.insert(ids.end(), output.begin(), output.end());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  std::vector<int32_t> out_ids(output.begin(), output.end());
  std::sort(out_ids.begin(), out_ids.end());
  for (int32_t t : ids) {
    if (t < 0 || t >= vocab) continue;
    const auto [lo, hi] = std::equal_range(out_ids.begin(), out_ids.end(), t);
    batch.penalty_tokens.push_back(t);
    batch.output_counts.push_back(int32_t(hi - lo));
  }
  row.penalty_end = int32_t(batch.penalty_tokens.size());
}

}  // namespace kite::ops
