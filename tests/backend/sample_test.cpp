// ops::sample_rows on the CPU against a brute-force reference (a full sort of
// the row) on fresh random logits: greedy, each filter alone and combined,
// penalties, bans, forced tokens, logprobs / rank / top with ties, odd vocab
// sizes and many uniform values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "backend/ops/ops.h"
#include "core/error.h"

namespace kite {
namespace {

using ops::SampleBatch;
using ops::SampledToken;
using ops::SampleRow;

// The reference of one row: bans, penalties, then a full sort.
SampledToken reference(std::vector<float> row, const SampleRow& r, const SampleBatch& b) {
  const std::vector<float> raw = row;
  const int64_t vocab = int64_t(row.size());
  SampledToken t;
  if (r.forced_token >= 0) {
    t.token = r.forced_token;
  } else {
    for (int32_t i = r.banned_begin; i < r.banned_end; ++i)
      row[size_t(b.banned[size_t(i)])] = -std::numeric_limits<float>::infinity();
    for (int32_t i = r.penalty_begin; i < r.penalty_end; ++i) {
      float& l = row[size_t(b.penalty_tokens[size_t(i)])];
      if (r.params.repetition_penalty != 1.0f)
        l = l > 0 ? l / r.params.repetition_penalty : l * r.params.repetition_penalty;
    }
    for (int32_t i = r.penalty_begin; i < r.penalty_end; ++i) {
      const int32_t n = b.output_counts[size_t(i)];
      if (n > 0)
        row[size_t(b.penalty_tokens[size_t(i)])] -= r.params.presence_penalty + r.params.frequency_penalty * float(n);
    }
    if (r.params.temperature == 0) {
      int64_t best = 0;
      for (int64_t j = 1; j < vocab; ++j)
        if (row[size_t(j)] > row[size_t(best)]) best = j;
      t.token = int32_t(best);
    } else {
      std::vector<std::pair<float, int32_t>> c(static_cast<size_t>(vocab));
      for (int64_t j = 0; j < vocab; ++j) c[size_t(j)] = {row[size_t(j)] / r.params.temperature, int32_t(j)};
      std::sort(c.begin(), c.end(),
                [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
      if (r.params.top_k > 0 && r.params.top_k < vocab) c.resize(size_t(r.params.top_k));
      std::vector<double> p(c.size());
      double sum = 0;
      for (size_t i = 0; i < c.size(); ++i) sum += p[i] = std::exp(double(c[i].first) - double(c[0].first));
      for (double& q : p) q /= sum;
      size_t n = c.size();
      if (r.params.top_p < 1) {
        double acc = 0;
        for (size_t i = 0; i < n; ++i)
          if ((acc += p[i]) >= double(r.params.top_p)) {
            n = i + 1;
            break;
          }
      }
      if (r.params.min_p > 0) {
        size_t m = 1;
        while (m < n && p[m] >= double(r.params.min_p) * p[0]) ++m;
        n = m;
      }
      double total = 0;
      for (size_t i = 0; i < n; ++i) total += p[i];
      double acc = 0;
      t.token = c[n - 1].second;
      for (size_t i = 0; i < n; ++i)
        if (r.uniform < (acc += float(p[i] / total))) {
          t.token = c[i].second;
          break;
        }
    }
  }
  if (r.num_logprobs >= 0) {
    double mx = -INFINITY, s = 0;
    for (float v : raw) mx = std::max(mx, double(v));
    for (float v : raw) s += std::exp(double(v) - mx);
    const double lse = mx + std::log(s);
    t.logprob = float(double(raw[size_t(t.token)]) - lse);
    std::vector<int32_t> ids(static_cast<size_t>(vocab));
    for (int64_t j = 0; j < vocab; ++j) ids[size_t(j)] = int32_t(j);
    std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) {
      return raw[size_t(a)] > raw[size_t(b)] || (raw[size_t(a)] == raw[size_t(b)] && a < b);
    });
    t.rank = int32_t(std::find(ids.begin(), ids.end(), t.token) - ids.begin()) + 1;
    for (int32_t i = 0; i < std::min<int32_t>(r.num_logprobs, int32_t(vocab)); ++i)
      t.top.push_back({ids[size_t(i)], float(double(raw[size_t(ids[size_t(i)])]) - lse)});
  }
  return t;
}

std::vector<float> random_logits(int64_t m, int64_t vocab, std::mt19937& rng, bool ties) {
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> v(size_t(m * vocab));
  for (float& x : v) x = ties ? std::round(nd(rng) * 2.0f) / 2.0f : nd(rng);
  return v;
}

void check(const std::vector<float>& logits, int64_t vocab, const SampleBatch& b, const std::string& what) {
  const int64_t m = int64_t(b.rows.size());
  Tensor x = Tensor::from_floats({m, vocab}, logits);
  const std::vector<SampledToken> got = ops::sample_rows(x, b);
  ASSERT_EQ(int64_t(got.size()), m);
  for (int64_t r = 0; r < m; ++r) {
    const std::vector<float> row(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
    const SampledToken want = reference(row, b.rows[size_t(r)], b);
    const std::string where = what + " vocab " + std::to_string(vocab) + " row " + std::to_string(r);
    ASSERT_EQ(got[size_t(r)].token, want.token) << where;
    if (b.rows[size_t(r)].num_logprobs < 0) continue;
    EXPECT_NEAR(got[size_t(r)].logprob, want.logprob, 1e-6) << where;
    EXPECT_EQ(got[size_t(r)].rank, want.rank) << where;
    ASSERT_EQ(got[size_t(r)].top.size(), want.top.size()) << where;
    for (size_t i = 0; i < want.top.size(); ++i) {
      EXPECT_EQ(got[size_t(r)].top[i].first, want.top[i].first) << where << " top " << i;
      EXPECT_NEAR(got[size_t(r)].top[i].second, want.top[i].second, 1e-6) << where << " top " << i;
    }
  }
}

// Rows of one kind of settings, each with its own uniform.
SampleBatch batch_of(int64_t m, const SampleRow& proto, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  SampleBatch b;
  for (int64_t r = 0; r < m; ++r) {
    SampleRow row = proto;
    row.uniform = u(rng);
    b.rows.push_back(row);
  }
  return b;
}

const int64_t kVocabs[] = {1, 7, 1000, 32001, 128256};

int64_t rows_for(int64_t vocab) { return vocab > 10000 ? 3 : 24; }

TEST(SampleRows, GreedyIsTheFirstMaximum) {
  std::mt19937 rng(1);
  for (int64_t vocab : kVocabs)
    for (bool ties : {false, true}) {
      const int64_t m = rows_for(vocab);
      SampleRow greedy;
      check(random_logits(m, vocab, rng, ties), vocab, batch_of(m, greedy, rng), "greedy");
    }
}

TEST(SampleRows, EachFilterAloneAndCombined) {
  std::mt19937 rng(2);
  struct Case {
    const char* name;
    float temperature;
    int32_t top_k;
    float top_p, min_p;
  };
  const Case cases[] = {{"temperature", 0.7f, 0, 1, 0},       {"top_k", 1.0f, 5, 1, 0},
                        {"top_k 1", 1.3f, 1, 1, 0},           {"top_p", 1.0f, 0, 0.9f, 0},
                        {"small top_p", 0.8f, 0, 0.05f, 0},   {"min_p", 1.0f, 0, 1, 0.1f},
                        {"combined", 0.9f, 40, 0.95f, 0.02f}, {"hot", 2.5f, 100, 0.7f, 0}};
  for (const Case& c : cases)
    for (int64_t vocab : kVocabs) {
      const int64_t m = rows_for(vocab);
      SampleRow row;
      row.params.temperature = c.temperature;
      row.params.top_k = c.top_k;
      row.params.top_p = c.top_p;
      row.params.min_p = c.min_p;
      check(random_logits(m, vocab, rng, vocab < 10000), vocab, batch_of(m, row, rng), c.name);
    }
}

TEST(SampleRows, PenaltiesAndBans) {
  std::mt19937 rng(3);
  for (int64_t vocab : {int64_t(7), int64_t(1000), int64_t(32001)}) {
    const int64_t m = 12;
    SampleBatch b;
    std::uniform_int_distribution<int32_t> tok(0, int32_t(vocab) - 1);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int64_t r = 0; r < m; ++r) {
      SampleRow row;
      row.params.temperature = r % 3 == 0 ? 0.0f : 0.8f;
      row.params.top_p = r % 2 ? 0.9f : 1.0f;
      row.params.repetition_penalty = r % 4 == 1 ? 1.0f : 1.3f;
      row.params.presence_penalty = r % 5 == 2 ? 0.0f : 0.5f;
      row.params.frequency_penalty = r % 3 == 1 ? 0.0f : 0.25f;
      row.uniform = u(rng);
      row.penalty_begin = int32_t(b.penalty_tokens.size());
      std::vector<int32_t> ids;
      for (int i = 0; i < 20; ++i) ids.push_back(tok(rng));
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      for (int32_t t : ids) {
        b.penalty_tokens.push_back(t);
        b.output_counts.push_back(int32_t(rng() % 4));
      }
      row.penalty_end = int32_t(b.penalty_tokens.size());
      row.banned_begin = int32_t(b.banned.size());
      if (r % 2 == 0)
        for (int i = 0; i < 3; ++i) b.banned.push_back(tok(rng));
      row.banned_end = int32_t(b.banned.size());
      row.num_logprobs = r % 3 == 2 ? 4 : -1;
      b.rows.push_back(row);
    }
    check(random_logits(m, vocab, rng, false), vocab, b, "penalties");
  }
}

TEST(SampleRows, BansTheMaximum) {
  std::vector<float> v = {1, 5, 3, 5, 2};
  SampleBatch b;
  SampleRow row;
  row.banned_end = 2;
  b.banned = {1, 3};
  b.rows.push_back(row);
  Tensor x = Tensor::from_floats({1, 5}, v);
  EXPECT_EQ(ops::sample_rows(x, b)[0].token, 2);
}

TEST(SampleRows, ForcedTokensAndLogprobsWithTies) {
  std::mt19937 rng(4);
  for (int64_t vocab : kVocabs) {
    const int64_t m = rows_for(vocab);
    SampleBatch b;
    std::uniform_int_distribution<int32_t> tok(0, int32_t(vocab) - 1);
    std::uniform_real_distribution<double> u(0.0, 1.0);
    for (int64_t r = 0; r < m; ++r) {
      SampleRow row;
      if (r % 3 == 0) row.forced_token = tok(rng);
      row.params.temperature = r % 3 == 1 ? 0.0f : 1.0f;
      row.num_logprobs = int32_t(r % 21);
      row.uniform = u(rng);
      b.rows.push_back(row);
    }
    check(random_logits(m, vocab, rng, true), vocab, b, "logprobs");
  }
}

TEST(SampleRows, ManyUniformsOverOneRow) {
  std::mt19937 rng(5);
  const int64_t vocab = 50, m = 400;
  std::vector<float> one = random_logits(1, vocab, rng, false), all;
  for (int64_t r = 0; r < m; ++r) all.insert(all.end(), one.begin(), one.end());
  SampleRow row;
  row.params.temperature = 1.0f;
  row.params.top_p = 0.95f;
  SampleBatch b = batch_of(m, row, rng);
  for (int64_t r = 0; r < m; ++r) b.rows[size_t(r)].uniform = (double(r) + 0.5) / double(m);
  check(all, vocab, b, "uniforms");
}

TEST(SampleRows, BadMetadataIsAnError) {
  Tensor x = Tensor::zeros({2, 5}, DType::F32);
  SampleBatch b;
  b.rows.resize(1);
  EXPECT_THROW(ops::sample_rows(x, b), Error);  // one row for two
  b.rows.resize(2);
  b.rows[1].num_logprobs = 21;
  EXPECT_THROW(ops::sample_rows(x, b), Error);
  b.rows[1].num_logprobs = -1;
  b.rows[1].forced_token = 5;
  EXPECT_THROW(ops::sample_rows(x, b), Error);
  b.rows[1].forced_token = -1;
  b.rows[1].banned_end = 1;
  EXPECT_THROW(ops::sample_rows(x, b), Error);  // range past the list
  b.banned = {9};
  EXPECT_THROW(ops::sample_rows(x, b), Error);  // id outside the vocabulary
  b.banned = {4};
  b.rows[1].uniform = 1.0;
  EXPECT_THROW(ops::sample_rows(x, b), Error);
  b.rows[1].uniform = 0.5;
  EXPECT_NO_THROW(ops::sample_rows(x, b));
}

}  // namespace
}  // namespace kite
