#pragma once
// Token sampling of several logit rows in one op: bans, repetition /
// presence / frequency penalties, greedy or temperature + top-k + top-p +
// min-p sampling with a random draw given by the caller, and logprobs of the
// chosen token from the raw logits. The CPU kernel is the reference
// (backend/cpu/sample.cpp, the math of model/sampling.h); the CUDA kernel
// runs one block per row with radix selects (no sort of the vocabulary).
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace kite::ops {

// The most top logprobs a row may ask for.
constexpr int32_t kMaxSampleLogprobs = 20;

struct SampleRow {             // one logit row
  float temperature = 0;       // 0 = greedy
  int32_t top_k = 0;           // <= 0 off
  float top_p = 1, min_p = 0;  // 1 / 0 = off
  float repetition_penalty = 1, presence_penalty = 0, frequency_penalty = 0;
  double uniform = 0;         // the row's random draw in [0, 1) (from the request's seeded Rng)
  int32_t forced_token = -1;  // >= 0: do not sample; report this token (prompt logprobs)
  int32_t num_logprobs = -1;  // -1: none; 0..kMaxSampleLogprobs: logprob + rank of the token and the top ones
  int32_t penalty_begin = 0, penalty_end = 0;  // range in SampleBatch::penalty_tokens / output_counts
  int32_t banned_begin = 0, banned_end = 0;    // range in SampleBatch::banned

  bool greedy() const { return temperature == 0.0f; }
  bool has_penalties() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f;
  }
  // Greedy, no logprobs, nothing forced, banned or penalized: an argmax.
  bool plain_greedy() const {
    return greedy() && forced_token < 0 && num_logprobs < 0 && banned_begin == banned_end &&
           (penalty_begin == penalty_end || !has_penalties());
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
// results on the host. Throws kite::Error on inconsistent metadata.
std::vector<SampledToken> sample_rows(Tensor& logits, const SampleBatch& batch);

// The host math the CPU kernel runs, shared with model/sampling.h.
namespace sample_math {
// The distribution after temperature, top-k, top-p and min-p: (token,
// probability) pairs, highest first (ties: lower id), summing to 1.
std::vector<std::pair<int32_t, float>> distribution(std::span<const float> logits, float temperature, int32_t top_k,
                                                    float top_p, float min_p);
// The walk over a distribution: the first token whose cumulative
// probability exceeds u (the last one when rounding leaves u beyond all).
int32_t pick(const std::vector<std::pair<int32_t, float>>& dist, double u);
// argmax, the first maximum (as torch.argmax on numbers).
int32_t argmax(std::span<const float> logits);
// log(sum(exp(logits))) in double.
double log_sum_exp(std::span<const float> logits);
}  // namespace sample_math

}  // namespace kite::ops
