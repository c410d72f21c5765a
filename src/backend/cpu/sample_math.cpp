// The reference sampling math (ops::sample_math) over a row's
// SamplingParams: the penalties and the distribution. The CPU kernel
// (sample.cpp) runs it for the engine and generate(); the CUDA kernel
// (cuda/sample.cu) is tested against it. A new sampling parameter's math
// goes here. No tensors or threads.
#include <algorithm>
#include <cmath>
#include <limits>

#include "backend/ops/sample.h"

namespace kite::ops::sample_math {

void penalize(std::span<float> row, const SamplingParams& p, std::span<const int32_t> tokens,
              std::span<const int32_t> counts) {
  if (p.repetition_penalty != 1.0f)
    for (int32_t t : tokens) {
      float& l = row[size_t(t)];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f)
    for (size_t i = 0; i < tokens.size(); ++i)
      if (counts[i] > 0) row[size_t(tokens[i])] -= p.presence_penalty + p.frequency_penalty * float(counts[i]);
}

std::vector<std::pair<int32_t, float>> distribution(std::span<const float> logits, const SamplingParams& p) {
  const float temp = p.temperature > 0 ? p.temperature : 1.0f;
  const int32_t top_k = p.top_k;
  const float top_p = p.top_p, min_p = p.min_p;
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
