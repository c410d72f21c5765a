#include "model/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

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

}  // namespace
}  // namespace kite
