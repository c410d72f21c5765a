#pragma once
// Token sampling: greedy, temperature, top-k, top-p, min-p and the
// repetition/presence/frequency penalties (kite::SamplingParams:
// backend/ops/sampling_params.h). One RNG stream per request, so a seeded
// request samples the same tokens whatever runs beside it.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "backend/ops/sampling_params.h"

namespace kite {

// xoshiro256** seeded through splitmix64: small, fast, reproducible.
class Rng {
 public:
  explicit Rng(uint64_t seed);
  uint64_t next();
  double uniform();  // [0, 1)

 private:
  uint64_t s_[4];
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  const SamplingParams& params() const { return params_; }

  // Picks the next token from logits [vocab] (modified in place by
  // penalties and temperature). prompt: the prompt ids; output: ids
  // generated so far (both feed the penalties).
  int32_t sample(std::span<float> logits, std::span<const int32_t> prompt, std::span<const int32_t> output);

 private:
  SamplingParams params_;
  Rng rng_;
};

// Applies the penalties in place (exposed for tests).
void apply_penalties(std::span<float> logits, const SamplingParams& p, std::span<const int32_t> prompt,
                     std::span<const int32_t> output);
// The probability distribution after temperature, top-k, top-p and min-p:
// (token, probability) pairs, probabilities summing to 1, highest first.
std::vector<std::pair<int32_t, float>> sampling_distribution(std::span<const float> logits, const SamplingParams& p);
// argmax, lowest id on ties (as torch.argmax).
int32_t argmax(std::span<const float> logits);

}  // namespace kite
