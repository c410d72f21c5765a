#include "model/sampling.h"

#include <algorithm>
#include <random>
#include <unordered_map>

#include "backend/ops/sample.h"

namespace kite {

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

Rng::Rng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t Rng::next() {
  const uint64_t result = rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

double Rng::uniform() { return double(next() >> 11) * 0x1.0p-53; }

int32_t argmax(std::span<const float> logits) { return ops::sample_math::argmax(logits); }

void apply_penalties(std::span<float> logits, const SamplingParams& p, std::span<const int32_t> prompt,
                     std::span<const int32_t> output) {
  const int64_t vocab = int64_t(logits.size());
  if (p.repetition_penalty != 1.0f) {
    std::vector<bool> seen(size_t(vocab), false);
    for (auto ids : {prompt, output})
      for (int32_t t : ids)
        if (t >= 0 && t < vocab) seen[size_t(t)] = true;
    for (int64_t t = 0; t < vocab; ++t)
      if (seen[size_t(t)]) {
        float& l = logits[size_t(t)];
        l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
      }
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    std::unordered_map<int32_t, int> counts;
    for (int32_t t : output)
      if (t >= 0 && t < vocab) ++counts[t];
    for (auto [t, n] : counts) logits[size_t(t)] -= p.presence_penalty + p.frequency_penalty * float(n);
  }
}

// One implementation for the host sampler and the CPU op (backend/cpu/sample.cpp).
std::vector<std::pair<int32_t, float>> sampling_distribution(std::span<const float> logits, const SamplingParams& p) {
  return ops::sample_math::distribution(logits, p);
}

Sampler::Sampler(const SamplingParams& params)
    : params_(params),
      rng_(params.seed ? *params.seed : std::random_device{}() * 0x100000001ull ^ std::random_device{}()) {}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> prompt, std::span<const int32_t> output) {
  apply_penalties(logits, params_, prompt, output);
  if (params_.greedy()) return argmax(logits);
  return ops::sample_math::pick(sampling_distribution(logits, params_), rng_.uniform());
}

}  // namespace kite
