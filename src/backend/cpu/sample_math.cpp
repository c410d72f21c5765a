// The reference sampling math (ops::sample_math): the CPU kernel runs it and
// model/sampling.h forwards its distribution here, so the engine's seeded
// outputs are those of the former host sampler. No tensors or threads: the
// request-parser fuzzer links this file alone.
#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/ops/sample.h"

namespace kite::ops::sample_math {

std::vector<std::pair<int32_t, float>> distribution(std::span<const float> logits, float temperature, int32_t top_k,
                                                    float top_p, float min_p) {
  const float temp = temperature > 0 ? temperature : 1.0f;
  std::vector<std::pair<int32_t, float>> cand(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) cand[i] = {int32_t(i), logits[i] / temp};
  // Highest first; ties by lower id so results never depend on sort stability.
  auto by_logit = [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  };
  size_t keep = cand.size();
  if (top_k > 0 && size_t(top_k) < keep) {
    keep = size_t(top_k);
    std::partial_sort(cand.begin(), cand.begin() + ptrdiff_t(keep), cand.end(), by_logit);
    cand.resize(keep);
  } else {
    std::sort(cand.begin(), cand.end(), by_logit);
  }
  // Softmax over the survivors in double.
  const double mx = cand.front().second;
  double sum = 0;
  std::vector<double> prob(cand.size());
  for (size_t i = 0; i < cand.size(); ++i) sum += prob[i] = std::exp(double(cand[i].second) - mx);
  for (double& q : prob) q /= sum;
  size_t n = cand.size();
  if (top_p < 1.0f) {  // smallest prefix whose mass reaches top_p
    double acc = 0;
    for (size_t i = 0; i < n; ++i) {
      acc += prob[i];
      if (acc >= double(top_p)) {
        n = i + 1;
        break;
      }
    }
  }
  if (min_p > 0.0f) {
    const double cut = double(min_p) * prob[0];
    size_t m = 1;
    while (m < n && prob[m] >= cut) ++m;
    n = m;
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += prob[i];
  std::vector<std::pair<int32_t, float>> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = {cand[i].first, float(prob[i] / total)};
  return out;
}

int32_t pick(const std::vector<std::pair<int32_t, float>>& dist, double u) {
  double acc = 0;
  for (const auto& [tok, prob] : dist) {
    acc += prob;
    if (u < acc) return tok;
  }
  return dist.back().first;
}

int32_t argmax(std::span<const float> logits) {
  return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

double log_sum_exp(std::span<const float> logits) {
  double mx = *std::max_element(logits.begin(), logits.end());
  double s = 0;
  for (float l : logits) s += std::exp(double(l) - mx);
  return mx + std::log(s);
}

}  // namespace kite::ops::sample_math
