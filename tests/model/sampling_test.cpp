#include "model/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "backend/ops/sample.h"
#include "core/error.h"

namespace kite {
namespace {

std::vector<float> logits5() { return {1.0f, 3.0f, 2.0f, 0.5f, 3.0f}; }

TEST(Sampling, GreedyIsArgmaxLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p);
  auto l = logits5();
  EXPECT_EQ(s.sample(l, {}, {}), 1);
}

TEST(Sampling, TopKOneIsGreedy) {
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 1;
  p.seed = 3;
  Sampler s(p);
  for (int i = 0; i < 50; ++i) {
    auto l = std::vector<float>{0.1f, 0.2f, 5.0f, 0.3f};
    EXPECT_EQ(s.sample(l, {}, {}), 2);
  }
}

TEST(Sampling, DistributionIsSoftmaxOfScaledLogits) {
  SamplingParams p;
  p.temperature = 2.0f;
  auto l = logits5();
  auto d = sampling_distribution(l, p);
  ASSERT_EQ(d.size(), 5u);
  double z = 0;
  for (float x : l) z += std::exp(x / 2.0);
  for (auto [tok, prob] : d) EXPECT_NEAR(prob, std::exp(l[size_t(tok)] / 2.0) / z, 1e-6);
  EXPECT_EQ(d[0].first, 1);  // tie 1 vs 4 broken by lower id
  EXPECT_EQ(d[1].first, 4);
}

TEST(Sampling, TopPKeepsSmallestPrefixReachingMass) {
  SamplingParams p;
  p.top_p = 0.5f;
  std::vector<float> l = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  auto d = sampling_distribution(l, p);
  ASSERT_EQ(d.size(), 2u);  // 0.4 < 0.5 <= 0.7
  EXPECT_NEAR(d[0].second, 0.4 / 0.7, 1e-6);
  EXPECT_NEAR(d[1].second, 0.3 / 0.7, 1e-6);
}

TEST(Sampling, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.min_p = 0.6f;
  std::vector<float> l = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  auto d = sampling_distribution(l, p);
  ASSERT_EQ(d.size(), 2u);  // 0.3 >= 0.24, 0.2 < 0.24
  EXPECT_EQ(d[1].first, 1);
}

TEST(Sampling, PenaltiesFollowHfAndOpenAiDefinitions) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  std::vector<float> l = {4.0f, -4.0f, 1.0f, 1.0f};
  std::vector<int32_t> prompt = {0, 1};
  std::vector<int32_t> out = {2, 2};
  apply_penalties(l, p, prompt, out);
  EXPECT_FLOAT_EQ(l[0], 2.0f);                     // positive: divided
  EXPECT_FLOAT_EQ(l[1], -8.0f);                    // negative: multiplied
  EXPECT_FLOAT_EQ(l[2], 0.5f - 0.5f - 0.25f * 2);  // repetition then presence + 2 * frequency
  EXPECT_FLOAT_EQ(l[3], 1.0f);                     // unseen
}

TEST(Sampling, SeededSamplingIsReproducibleAndFollowsTheDistribution) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 1234;
  std::vector<float> base = {0.0f, 1.0f, 2.0f, -1.0f};
  Sampler a(p), b(p);
  std::map<int32_t, int> counts;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    auto l1 = base, l2 = base;
    int32_t x = a.sample(l1, {}, {});
    EXPECT_EQ(x, b.sample(l2, {}, {}));
    ++counts[x];
  }
  double z = 0;
  for (float x : base) z += std::exp(x);
  for (int t = 0; t < 4; ++t) {
    double expect = std::exp(base[size_t(t)]) / z;
    EXPECT_NEAR(double(counts[t]) / n, expect, 0.015) << "token " << t;
  }
  SamplingParams q = p;
  q.seed = 99;
  Sampler c(q);
  int differ = 0;
  Sampler a2(p);
  for (int i = 0; i < 200; ++i) {
    auto l1 = base, l2 = base;
    differ += a2.sample(l1, {}, {}) != c.sample(l2, {}, {});
  }
  EXPECT_GT(differ, 20);
}

TEST(Sampling, InvalidParamsAreRejectedWithField) {
  SamplingParams p;
  p.top_p = 0.0f;
  try {
    p.validate("request");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "top_p");
  }
  p = {};
  p.temperature = -1;
  EXPECT_THROW(p.validate("request"), Error);
  p = {};
  p.min_p = 1.5f;
  EXPECT_THROW(p.validate("request"), Error);
}

// The host Sampler and ops::sample_rows on the CPU (the engine's path) pick
// the same tokens: same seed, the op's uniforms drawn from an Rng of that seed
// only for sampled tokens, penalties as distinct ids with output counts.
TEST(Sampling, SamplerAndTheSampleRowsOpAgree) {
  std::mt19937 gen(21);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  const int64_t vocab = 300;
  struct Case {
    float temperature;
    int32_t top_k;
    float top_p, min_p, rep, presence, frequency;
  };
  const Case cases[] = {{0, 0, 1, 0, 1, 0, 0},
                        {1, 0, 1, 0, 1, 0, 0},
                        {0.7f, 20, 0.9f, 0, 1, 0, 0},
                        {1.2f, 0, 1, 0.05f, 1.3f, 0, 0},
                        {0.9f, 0, 0.8f, 0, 1, 0.4f, 0.2f},
                        {0, 0, 1, 0, 1.5f, 0.5f, 0}};
  for (const Case& c : cases) {
    SamplingParams p;
    p.temperature = c.temperature;
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    p.min_p = c.min_p;
    p.repetition_penalty = c.rep;
    p.presence_penalty = c.presence;
    p.frequency_penalty = c.frequency;
    p.seed = 77;
    Sampler sampler(p);
    Rng rng(77);
    std::vector<int32_t> prompt = {3, 5, 5, 17, 250};
    std::vector<int32_t> out_a, out_b;
    for (int step = 0; step < 40; ++step) {
      std::vector<float> l(static_cast<size_t>(vocab));
      for (float& x : l) x = nd(gen);
      std::vector<float> host = l;
      out_a.push_back(sampler.sample(host, prompt, out_b));
      ops::SampleBatch b;
      ops::SampleRow row;
      row.params = p;
      if (!p.greedy()) row.uniform = rng.uniform();
      std::vector<int32_t> ids = prompt;
      ids.insert(ids.end(), out_b.begin(), out_b.end());
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      for (int32_t t : ids) {
        b.penalty_tokens.push_back(t);
        b.output_counts.push_back(int32_t(std::count(out_b.begin(), out_b.end(), t)));
      }
      row.penalty_end = int32_t(ids.size());
      b.rows.push_back(row);
      Tensor x = Tensor::from_floats({1, vocab}, l);
      out_b.push_back(ops::sample_rows(x, b)[0].token);
      ASSERT_EQ(out_a, out_b) << "case temperature " << c.temperature << " step " << step;
    }
  }
}

}  // namespace
}  // namespace kite
