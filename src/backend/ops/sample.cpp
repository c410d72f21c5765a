#include "backend/ops/sample.h"

#include <cmath>

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
    if (!(r.temperature >= 0.0f) || !std::isfinite(r.temperature))
      c.fail_arg(arg, fmt::format("temperature {} is invalid; expected >= 0", r.temperature));
    if (!(r.top_p > 0.0f && r.top_p <= 1.0f)) c.fail_arg(arg, fmt::format("top_p {} outside (0, 1]", r.top_p));
    if (!(r.min_p >= 0.0f && r.min_p <= 1.0f)) c.fail_arg(arg, fmt::format("min_p {} outside [0, 1]", r.min_p));
    if (!(r.repetition_penalty > 0.0f) || !std::isfinite(r.repetition_penalty))
      c.fail_arg(arg, fmt::format("repetition_penalty {} is invalid; expected > 0", r.repetition_penalty));
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

}  // namespace kite::ops
