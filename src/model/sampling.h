#pragma once
// Sampling above the backend: the request's parameters (kite::SamplingParams,
// defined once in backend/ops/sampling_params.h with their validation) and
// its random stream. The tokens themselves are picked by ops::sample_rows
// (backend/ops/sample.h), for the engine and for generate(). One RNG stream
// per request, so a seeded request samples the same tokens whatever runs
// beside it.
#include <cstdint>
#include <span>

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

// argmax, lowest id on ties (as torch.argmax).
int32_t argmax(std::span<const float> logits);

}  // namespace kite
