#pragma once
// Single-sequence generation and perplexity on top of Model (the batched,
// paged engine lives in src/engine).
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/model.h"
#include "model/sampling.h"

namespace kite {

struct GenerateOptions {
  int64_t max_tokens = 128;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  int64_t context = 0;            // KV capacity; 0 = the model's max_position_embeddings
};

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t generated = 0;
  double prompt_seconds = 0;  // time to first token (prefill + first sample)
  double decode_seconds = 0;  // the rest
};

// Streams each new token to on_token; stops at max_tokens, a stop id, the
// context limit, or when on_token returns false. Throws kite::Error when the
// prompt does not fit the context.
GenerateStats generate(Model& model, std::span<const int32_t> prompt, const GenerateOptions& options,
                       const std::function<bool(int32_t)>& on_token);

struct PerplexityResult {
  double nll_sum = 0;  // natural log
  int64_t tokens_scored = 0;
  double ppl() const;
};

// The shared/README method: consecutive non-overlapping windows of `ctx`
// tokens from token 0, each run on its own; every position after the first
// of a window is scored. progress(done_windows, total_windows) may be null.
PerplexityResult perplexity(Model& model, std::span<const int32_t> ids, int64_t ctx,
                            const std::function<void(int64_t, int64_t)>& progress = {});

// log(sum(exp(logits))) in double.
double log_sum_exp(std::span<const float> logits);

}  // namespace kite
