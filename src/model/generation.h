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

struct PerplexityOptions {
  int64_t ctx = 512;  // window size in tokens
  // 0: consecutive non-overlapping windows from token 0, each run on its
  // own, every position after the first of a window scored (the
  // shared/README method). > 0: HF's sliding window: windows of ctx tokens
  // starting every `stride` tokens, each scoring only the tokens no earlier
  // window scored.
  int64_t stride = 0;
  // llama-perplexity's method: whole windows of ctx tokens (a shorter tail
  // is dropped), the first token of each replaced by BOS, only the second
  // half of each window scored.
  bool score_second_half = false;
  int32_t bos_id = 1;  // for score_second_half
  // When set: KL divergence KL(base || model) of the next-token
  // distributions and top-token agreement, at every scored position.
  Model* kl_base = nullptr;
  std::function<void(int64_t, int64_t)> progress;  // (windows done, windows); may be empty
};

struct PerplexityResult {
  double nll_sum = 0;  // natural log
  int64_t tokens_scored = 0;
  double ppl() const;
  // With kl_base:
  double base_nll_sum = 0;
  double base_ppl() const;
  std::vector<float> kl;  // per scored position, nats
  int64_t same_top = 0;   // positions where both models' argmax agree
  double mean_kl() const;
  double kl_quantile(double q) const;  // e.g. 0.99
  double same_top_rate() const { return tokens_scored ? double(same_top) / double(tokens_scored) : 0.0; }
};

// Scores `ids` (the whole text tokenized once, BOS first) as `options` says.
PerplexityResult perplexity(Model& model, std::span<const int32_t> ids, const PerplexityOptions& options);

// The shared/README method with windows of `ctx` tokens. progress(done_windows,
// total_windows) may be null.
PerplexityResult perplexity(Model& model, std::span<const int32_t> ids, int64_t ctx,
                            const std::function<void(int64_t, int64_t)>& progress = {});

// log(sum(exp(logits))) in double.
double log_sum_exp(std::span<const float> logits);

}  // namespace kite
