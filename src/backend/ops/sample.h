#pragma once
// Token sampling of several logit rows in one op: bans, repetition /
// presence / frequency penalties, greedy or temperature + top-k + top-p +
// min-p sampling with a random draw given by the caller, and logprobs of the
// chosen token from the raw logits. Each row carries the request's
// SamplingParams (sampling_params.h, which also says what adding a parameter
// takes). The CPU kernel is the reference (backend/cpu/sample.cpp over
// sample_math.cpp); the CUDA kernel runs one block per row with radix
// selects (no sort of the vocabulary).
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "backend/ops/sampling_params.h"
#include "core/tensor.h"

namespace kite::ops {

// The most top logprobs a row may ask for.
constexpr int32_t kMaxSampleLogprobs = 20;

struct SampleRow {                         // one logit row
  SampleRow() { params.temperature = 0; }  // greedy unless given the request's parameters

  SamplingParams params;      // the request's distribution (its seed is not read here)
  double uniform = 0;         // the row's random draw in [0, 1) (from the request's seeded Rng)
  int32_t forced_token = -1;  // >= 0: do not sample; report this token (prompt logprobs)
  int32_t num_logprobs = -1;  // -1: none; 0..kMaxSampleLogprobs: logprob + rank of the token and the top ones
  int32_t penalty_begin = 0, penalty_end = 0;  // range in SampleBatch::penalty_tokens / output_counts
  int32_t banned_begin = 0, banned_end = 0;    // range in SampleBatch::banned

  // Greedy, no logprobs, nothing forced, banned or penalized: an argmax.
  bool plain_greedy() const {
    return params.greedy() && forced_token < 0 && num_logprobs < 0 && banned_begin == banned_end &&
           (penalty_begin == penalty_end || !params.has_penalties());
  }
};

struct SampleBatch {
  std::vector<SampleRow> rows;          // [m], one per logits row
  std::vector<int32_t> penalty_tokens;  // distinct ids of prompt ∪ output (the repetition penalty applies once each)
  std::vector<int32_t> output_counts;   // same length: occurrences in the output (presence / frequency)
  std::vector<int32_t> banned;          // ids set to -inf before sampling (min_tokens masks EOS / stop ids)

  bool plain_greedy() const {
    for (const SampleRow& r : rows)
      if (!r.plain_greedy()) return false;
    return true;
  }
};

struct SampledToken {
  int32_t token = 0;
  float logprob = 0;                           // of token under the raw logits (num_logprobs >= 0)
  int32_t rank = 0;                            // 1 + #(better raw value, or equal and lower id) (num_logprobs >= 0)
  std::vector<std::pair<int32_t, float>> top;  // the num_logprobs best (id, logprob), value desc then id asc
};

// Samples one token per row. logits: [m, vocab] F32 on any device, rows as
// batch.rows; it may be modified in place (bans, penalties). Returns m
// results on the host. Throws kite::Error on inconsistent metadata or
// out-of-range parameters (SamplingParams::validate).
std::vector<SampledToken> sample_rows(Tensor& logits, const SampleBatch& batch);

// Gives `row` (not yet in batch.rows) its penalty tokens when
// row.params.has_penalties(): the distinct ids of prompt and output inside
// [0, vocab), ascending, each with its count in output, appended to
// batch.penalty_tokens / output_counts; sets row.penalty_begin / end.
void add_penalty_tokens(SampleBatch& batch, SampleRow& row, std::span<const int32_t> prompt,
                        std::span<const int32_t> output, int64_t vocab);

// The reference math the CPU kernel runs (backend/cpu/sample_math.cpp).
namespace sample_math {
// The penalties on one row [vocab], in place: the repetition penalty on each
// of `tokens` (distinct ids), then presence + frequency * count on those with
// counts[i] > 0 (their occurrences in the output).
void penalize(std::span<float> row, const SamplingParams& p, std::span<const int32_t> tokens,
              std::span<const int32_t> counts);
// The distribution after temperature, top-k, top-p and min-p: (token,
// probability) pairs, highest first (ties: lower id), summing to 1.
std::vector<std::pair<int32_t, float>> distribution(std::span<const float> logits, const SamplingParams& p);
// The walk over a distribution: the first token whose cumulative
// probability exceeds u (the last one when rounding leaves u beyond all).
int32_t pick(const std::vector<std::pair<int32_t, float>>& dist, double u);
// argmax, the first maximum (as torch.argmax on numbers).
int32_t argmax(std::span<const float> logits);
// log(sum(exp(logits))) in double.
double log_sum_exp(std::span<const float> logits);
}  // namespace sample_math

}  // namespace kite::ops
