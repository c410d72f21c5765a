#include "model/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <span>

#include "backend/ops/sample.h"
#include "core/error.h"

namespace kite {
namespace {

std::vector<float> logits5() { return {1.0f, 3.0f, 2.0f, 0.5f, 3.0f}; }

// One token as generate() and the engine pick it: ops::sample_rows (the CPU
// op) on one row with the request's parameters, a uniform from the request's
// Rng when not greedy, the distinct prompt and output ids as penalty tokens.
int32_t sample_one(const std::vector<float>& logits, const SamplingParams& p, Rng& rng,
                   std::span<const int32_t> prompt = {}, std::span<const int32_t> output = {}) {
  ops::SampleBatch b;
  ops::SampleRow row;
  row.params = p;
  if (!p.greedy()) row.uniform = rng.uniform();
  ops::add_penalty_tokens(b, row, prompt, output, int64_t(logits.size()));
  b.rows.push_back(row);
  Tensor x = Tensor::from_floats({1, int64_t(logits.size())}, logits);  // [1, vocab]
  return ops::sample_rows(x, b)[0].token;
}

TEST(Sampling, GreedyIsArgmaxLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  Rng rng(1);
  EXPECT_EQ(sample_one(logits5(), p, rng), 1);
  EXPECT_EQ(argmax(logits5()), 1);
}

TEST(Sampling, TopKOneIsGreedy) {
  SamplingParams p;
  p.temperature = 1.5f;
  p.top_k = 1;
  Rng rng(3);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sample_one({0.1f, 0.2f, 5.0f, 0.3f}, p, rng), 2);
}

TEST(Sampling, DistributionIsSoftmaxOfScaledLogits) {
  SamplingParams p;
  p.temperature = 2.0f;
  auto l = logits5();
  auto d = ops::sample_math::distribution(l, p);
  ASSERT_EQ(d.size(), 5u);
  double z = 0;
  for (float x : l) z += std::exp(x / 2.0);
  for (auto [tok, prob] : d) EXPECT_NEAR(prob, std::exp(l[size_t(tok)] / 2.0) / z, 1e-6);
  EXPECT_EQ(d[0].first, 1);  // tie 1 vs 4 broken by lower id
  EXPECT_EQ(d[1].first, 4);
}

TEST(Sampling, TopKKeepsTheKMostLikely) {
  SamplingParams p;
  p.top_k = 2;
  auto d = ops::sample_math::distribution(logits5(), p);
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].first, 1);
  EXPECT_EQ(d[1].first, 4);
  EXPECT_NEAR(d[0].second, 0.5, 1e-6);
}

TEST(Sampling, TopPKeepsSmallestPrefixReachingMass) {
  SamplingParams p;
  p.top_p = 0.5f;
  std::vector<float> l = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  auto d = ops::sample_math::distribution(l, p);
  ASSERT_EQ(d.size(), 2u);  // 0.4 < 0.5 <= 0.7
  EXPECT_NEAR(d[0].second, 0.4 / 0.7, 1e-6);
  EXPECT_NEAR(d[1].second, 0.3 / 0.7, 1e-6);
}

TEST(Sampling, MinPDropsUnlikelyTokens) {
  SamplingParams p;
  p.min_p = 0.6f;
  std::vector<float> l = {std::log(0.4f), std::log(0.3f), std::log(0.2f), std::log(0.1f)};
  auto d = ops::sample_math::distribution(l, p);
  ASSERT_EQ(d.size(), 2u);  // 0.3 >= 0.24, 0.2 < 0.24
  EXPECT_EQ(d[1].first, 1);
}

TEST(Sampling, PenaltiesFollowHfAndOpenAiDefinitions) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  p.presence_penalty = 0.5f;
  p.frequency_penalty = 0.25f;
  const std::vector<int32_t> prompt = {0, 1, 1, 9};  // 9: outside the vocabulary, ignored
  const std::vector<int32_t> out = {2, 2};

  // The penalty tokens: distinct ids of prompt and output with their output counts.
  ops::SampleBatch b;
  ops::SampleRow row;
  row.params = p;
  ops::add_penalty_tokens(b, row, prompt, out, 4);
  EXPECT_EQ(b.penalty_tokens, (std::vector<int32_t>{0, 1, 2}));
  EXPECT_EQ(b.output_counts, (std::vector<int32_t>{0, 0, 2}));
  EXPECT_EQ(row.penalty_begin, 0);
  EXPECT_EQ(row.penalty_end, 3);

  std::vector<float> l = {4.0f, -4.0f, 1.0f, 1.0f};
  ops::sample_math::penalize(l, p, b.penalty_tokens, b.output_counts);
  EXPECT_FLOAT_EQ(l[0], 2.0f);                     // positive: divided
  EXPECT_FLOAT_EQ(l[1], -8.0f);                    // negative: multiplied
  EXPECT_FLOAT_EQ(l[2], 0.5f - 0.5f - 0.25f * 2);  // repetition then presence + 2 * frequency
  EXPECT_FLOAT_EQ(l[3], 1.0f);                     // unseen

  // Through the op: 2 wins without penalties, 3 (unseen) with them.
  Rng rng(1);
  const std::vector<float> logits = {1.5f, -4.0f, 2.5f, 1.0f};
  SamplingParams greedy;
  greedy.temperature = 0;
  EXPECT_EQ(sample_one(logits, greedy, rng, prompt, out), 2);
  EXPECT_EQ(sample_one(logits, p, rng, prompt, out), 3);  // 0.75, -8, 0.25, 1

  // No penalty on: no penalty tokens.
  ops::SampleBatch none;
  ops::SampleRow plain;
  ops::add_penalty_tokens(none, plain, prompt, out, 4);
  EXPECT_TRUE(none.penalty_tokens.empty());
  EXPECT_EQ(plain.penalty_end, plain.penalty_begin);
}

TEST(Sampling, SeededSamplingIsReproducibleAndFollowsTheDistribution) {
  SamplingParams p;
  p.temperature = 1.0f;
  const std::vector<float> base = {0.0f, 1.0f, 2.0f, -1.0f};
  Rng a(1234), b(1234);
  std::map<int32_t, int> counts;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const int32_t x = sample_one(base, p, a);
    EXPECT_EQ(x, sample_one(base, p, b));
    ++counts[x];
  }
  double z = 0;
  for (float x : base) z += std::exp(x);
  for (int t = 0; t < 4; ++t) {
    double expect = std::exp(base[size_t(t)]) / z;
    EXPECT_NEAR(double(counts[t]) / n, expect, 0.015) << "token " << t;
  }
  Rng a2(1234), c(99);
  int differ = 0;
  for (int i = 0; i < 200; ++i) differ += sample_one(base, p, a2) != sample_one(base, p, c);
  EXPECT_GT(differ, 20);
}

// Seeded streams are those of the former host Sampler (model/sampling.h
// before sampling went through ops::sample_rows only): the tokens below were
// recorded from it (seed 77, prompt {3, 5, 5, 17, 250}, logits uniform in
// [-4, 4) from an Rng of seed 2024, 40 steps).
TEST(Sampling, SeededStreamsMatchTheFormerHostSampler) {
  struct Case {
    float temperature;
    int32_t top_k;
    float top_p, min_p, rep, presence, frequency;
    std::vector<int32_t> want;
  };
  const Case cases[] = {
      {0, 0, 1, 0, 1, 0, 0, {214, 70,  116, 279, 157, 216, 135, 115, 256, 162, 258, 92,  157, 204,
                             89,  153, 134, 168, 137, 56,  237, 119, 242, 23,  98,  172, 196, 255,
                             216, 102, 72,  68,  30,  101, 105, 179, 196, 201, 297, 84}},
      {1, 0, 1, 0, 1, 0, 0, {245, 103, 151, 19,  76,  116, 180, 45,  159, 196, 292, 19, 183, 32,
                             45,  81,  54,  233, 225, 114, 225, 280, 77,  232, 292, 26, 276, 293,
                             69,  261, 71,  135, 269, 49,  182, 290, 46,  277, 288, 83}},
      {0.7f, 20, 0.9f, 0, 1, 0, 0, {124, 0,   278, 272, 224, 21,  135, 225, 187, 220, 209, 270, 214, 204,
                                    205, 185, 248, 274, 184, 132, 272, 295, 45,  225, 220, 123, 286, 42,
                                    258, 262, 150, 55,  30,  284, 105, 245, 89,  84,  43,  42}},
      {1.2f, 0, 1, 0.05f, 1.3f, 0, 0, {206, 254, 97, 203, 222, 41,  64, 111, 204, 51,  117, 182, 127, 269,
                                       112, 193, 54, 224, 94,  1,   86, 281, 90,  287, 273, 57,  161, 1,
                                       217, 260, 92, 73,  12,  181, 23, 158, 243, 252, 256, 83}},
      {0.9f, 0, 0.8f, 0, 1, 0.4f, 0.2f, {132, 131, 215, 295, 195, 238, 164, 68,  236, 16,  299, 29,  130, 56,
                                         128, 205, 198, 137, 22,  265, 144, 30,  157, 75,  229, 253, 183, 265,
                                         71,  39,  35,  238, 298, 127, 105, 191, 285, 189, 286, 213}},
      {0, 0, 1, 0, 1.5f, 0.5f, 0, {214, 70,  116, 279, 157, 216, 135, 115, 256, 162, 258, 92,  237, 204,
                                   89,  153, 134, 168, 137, 56,  36,  119, 242, 23,  98,  172, 196, 255,
                                   197, 102, 72,  68,  30,  101, 105, 179, 186, 201, 297, 84}},
      {1.5f, 5, 1, 0, 1, -0.5f, 0.3f, {282, 202, 296, 294, 75,  216, 135, 5,   292, 91,  225, 92,  237, 204,
                                       173, 66,  134, 168, 170, 199, 36,  119, 142, 270, 225, 119, 215, 247,
                                       146, 151, 282, 243, 30,  215, 105, 50,  186, 250, 44,  75}},
  };
  const int64_t vocab = 300;
  for (const Case& c : cases) {
    SamplingParams p;
    p.temperature = c.temperature;
    p.top_k = c.top_k;
    p.top_p = c.top_p;
    p.min_p = c.min_p;
    p.repetition_penalty = c.rep;
    p.presence_penalty = c.presence;
    p.frequency_penalty = c.frequency;
    Rng rng(77), logit_rng(2024);
    const std::vector<int32_t> prompt = {3, 5, 5, 17, 250};
    std::vector<int32_t> out;
    for (size_t step = 0; step < c.want.size(); ++step) {
      std::vector<float> l(static_cast<size_t>(vocab));
      for (float& x : l) x = float(logit_rng.uniform() * 8.0 - 4.0);
      out.push_back(sample_one(l, p, rng, prompt, out));
    }
    EXPECT_EQ(out, c.want) << "case temperature " << c.temperature << " top_k " << c.top_k;
  }
}

TEST(Sampling, InvalidParamsAreRejectedWithField) {
  SamplingParams p;
  p.top_p = 0.0f;
  try {
    p.validate("request");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "top_p");
    EXPECT_EQ(std::string(e.what()), "request: top_p: 0 is invalid; expected a value in (0, 1]");
  }
  p = {};
  p.temperature = -1;
  EXPECT_THROW(p.validate("request"), Error);
  p = {};
  p.min_p = 1.5f;
  EXPECT_THROW(p.validate("request"), Error);
  p = {};
  p.top_k = -2;
  EXPECT_THROW(p.validate("request"), Error);
  p = {};
  p.presence_penalty = 2.5f;
  EXPECT_THROW(p.validate("request"), Error);

  // The op checks its rows with the same validate(), naming the row.
  ops::SampleBatch b;
  ops::SampleRow row;
  row.params.repetition_penalty = 0;
  b.rows.push_back(row);
  Tensor x = Tensor::from_floats({1, 5}, logits5());
  try {
    ops::sample_rows(x, b);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.field(), "repetition_penalty");
    EXPECT_EQ(e.source(), "op sample_rows: batch.rows[0].params");
  }
}

}  // namespace
}  // namespace kite
