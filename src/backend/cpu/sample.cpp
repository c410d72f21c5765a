// ops::sample_rows on the CPU: the reference sampling math (model/sampling.h
// forwards its distribution here, so the engine's seeded outputs are those of
// the former host sampler).
#include "backend/ops/sample.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/parallel.h"
#include "core/tensor.h"

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

namespace kite::cpu {

namespace {

// Logprob, rank and the top k of `token` under the raw row [vocab].
void fill_logprobs(std::span<const float> row, int32_t k, ops::SampledToken& t) {
  const double lse = ops::sample_math::log_sum_exp(row);
  const int32_t token = t.token;
  const int64_t vocab = int64_t(row.size());
  t.logprob = float(double(row[size_t(token)]) - lse);
  t.rank = 1;
  for (int64_t j = 0; j < vocab; ++j)
    if (row[size_t(j)] > row[size_t(token)] || (row[size_t(j)] == row[size_t(token)] && j < token)) ++t.rank;
  if (k > 0) {
    std::vector<int32_t> ids(static_cast<size_t>(vocab));
    for (int64_t j = 0; j < vocab; ++j) ids[size_t(j)] = int32_t(j);
    const size_t top = std::min<size_t>(size_t(k), ids.size());
    std::partial_sort(ids.begin(), ids.begin() + ptrdiff_t(top), ids.end(), [&](int32_t a, int32_t b) {
      return row[size_t(a)] > row[size_t(b)] || (row[size_t(a)] == row[size_t(b)] && a < b);
    });
    for (size_t i = 0; i < top; ++i) t.top.push_back({ids[i], float(double(row[size_t(ids[i])]) - lse)});
  }
}

}  // namespace

std::vector<ops::SampledToken> sample_rows(Tensor& logits, const ops::SampleBatch& b) {
  const int64_t m = logits.dim(0), vocab = logits.dim(1);
  float* base = logits.data_as<float>();
  std::vector<ops::SampledToken> out(static_cast<size_t>(m));
  parallel_for(m, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const ops::SampleRow& sr = b.rows[size_t(r)];
      std::span<float> row(base + r * vocab, size_t(vocab));  // [vocab]
      ops::SampledToken& t = out[size_t(r)];
      std::vector<float> raw;  // the row before bans and penalties, for logprobs
      if (sr.num_logprobs >= 0 && sr.forced_token < 0) raw.assign(row.begin(), row.end());
      if (sr.forced_token >= 0) {
        t.token = sr.forced_token;
      } else {
        for (int32_t i = sr.banned_begin; i < sr.banned_end; ++i)
          row[size_t(b.banned[size_t(i)])] = -std::numeric_limits<float>::infinity();
        if (sr.repetition_penalty != 1.0f)
          for (int32_t i = sr.penalty_begin; i < sr.penalty_end; ++i) {
            float& l = row[size_t(b.penalty_tokens[size_t(i)])];
            l = l > 0 ? l / sr.repetition_penalty : l * sr.repetition_penalty;
          }
        if (sr.presence_penalty != 0.0f || sr.frequency_penalty != 0.0f)
          for (int32_t i = sr.penalty_begin; i < sr.penalty_end; ++i) {
            const int32_t n = b.output_counts[size_t(i)];
            if (n > 0)
              row[size_t(b.penalty_tokens[size_t(i)])] -= sr.presence_penalty + sr.frequency_penalty * float(n);
          }
        if (sr.greedy()) {
          t.token = ops::sample_math::argmax(row);
        } else {
          auto dist = ops::sample_math::distribution(row, sr.temperature, sr.top_k, sr.top_p, sr.min_p);
          t.token = ops::sample_math::pick(dist, sr.uniform);
        }
      }
      if (sr.num_logprobs >= 0) fill_logprobs(raw.empty() ? std::span<const float>(row) : raw, sr.num_logprobs, t);
    }
  });
  return out;
}

}  // namespace kite::cpu
