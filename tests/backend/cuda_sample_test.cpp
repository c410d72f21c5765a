// ops::sample_rows on CUDA against the CPU op on the same random logits, over
// batch sizes 1..256 and vocabularies up to Llama 3's 128256. Greedy rows,
// forced tokens and logprobs / rank / top must match (logprobs within 1e-4:
// the log-sum-exp is summed in another order). A sampled token may differ only
// where the CPU's walk sits at a boundary: u within 1e-6 of a cumulative mass,
// or a top-p / min-p cut decided by ~1e-6 of mass (the GPU sums fixed-point
// masses, the CPU doubles); such rows are counted and must be rare, and the
// GPU's token must then be the CPU's neighbour in the sorted distribution.
// Skipped without a CUDA device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "backend/backend.h"
#include "backend/ops/ops.h"

namespace kite {
namespace {

const Device kGpu{DeviceKind::CUDA, 0};
#define SKIP_WITHOUT_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

using ops::SampleBatch;
using ops::SampledToken;
using ops::SampleRow;

// A batch mixing every kind of row.
SampleBatch mixed_batch(int64_t m, int64_t vocab, std::mt19937& rng, int kind) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::uniform_int_distribution<int32_t> tok(0, int32_t(vocab) - 1);
  SampleBatch b;
  for (int64_t r = 0; r < m; ++r) {
    SampleRow row;
    const int k = int((r + kind) % 8);
    row.uniform = u(rng);
    row.params.temperature = k == 0 ? 0.0f : 0.6f + 0.2f * float(k);
    if (k == 2 || k == 5) row.params.top_k = 1 + int32_t(rng() % 64);
    if (k == 3 || k == 5 || k == 7) row.params.top_p = 0.5f + 0.45f * float(u(rng));
    if (k == 4 || k == 7) row.params.min_p = 0.05f;
    if (k == 6) {
      row.params.repetition_penalty = 1.2f;
      row.params.presence_penalty = 0.3f;
      row.params.frequency_penalty = 0.1f;
      row.penalty_begin = int32_t(b.penalty_tokens.size());
      std::vector<int32_t> ids;
      for (int i = 0; i < 30; ++i) ids.push_back(tok(rng));
      std::sort(ids.begin(), ids.end());
      ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
      for (int32_t t : ids) {
        b.penalty_tokens.push_back(t);
        b.output_counts.push_back(int32_t(rng() % 3));
      }
      row.penalty_end = int32_t(b.penalty_tokens.size());
      row.banned_begin = int32_t(b.banned.size());
      b.banned.push_back(tok(rng));
      b.banned.push_back(tok(rng));
      row.banned_end = int32_t(b.banned.size());
    }
    if (r % 5 == 1) row.forced_token = tok(rng);
    if (r % 3 == 1) row.num_logprobs = int32_t(rng() % 21);
    b.rows.push_back(row);
  }
  return b;
}

struct Stats {
  int64_t sampled = 0, boundary = 0;
};

// The CPU distribution after bans and penalties (as the op sees it).
std::vector<std::pair<int32_t, float>> cpu_distribution(std::vector<float> row, const SampleRow& r,
                                                        const SampleBatch& b) {
  for (int32_t i = r.banned_begin; i < r.banned_end; ++i) row[size_t(b.banned[size_t(i)])] = -INFINITY;
  for (int32_t i = r.penalty_begin; i < r.penalty_end; ++i) {
    float& l = row[size_t(b.penalty_tokens[size_t(i)])];
    if (r.params.repetition_penalty != 1.0f)
      l = l > 0 ? l / r.params.repetition_penalty : l * r.params.repetition_penalty;
    if (b.output_counts[size_t(i)] > 0)
      l -= r.params.presence_penalty + r.params.frequency_penalty * float(b.output_counts[size_t(i)]);
  }
  return ops::sample_math::distribution(row, r.params);
}

void compare(const std::vector<float>& logits, int64_t m, int64_t vocab, const SampleBatch& b, Stats& st) {
  Tensor cpu_x = Tensor::from_floats({m, vocab}, logits);
  Tensor gpu_x = cpu_x.to(kGpu);
  const std::vector<SampledToken> want = ops::sample_rows(cpu_x, b);
  const std::vector<SampledToken> got = ops::sample_rows(gpu_x, b);
  ASSERT_EQ(got.size(), want.size());
  for (int64_t r = 0; r < m; ++r) {
    const SampleRow& row = b.rows[size_t(r)];
    const SampledToken &g = got[size_t(r)], &w = want[size_t(r)];
    const std::string where =
        "m " + std::to_string(m) + " vocab " + std::to_string(vocab) + " row " + std::to_string(r);
    if (row.forced_token < 0 && row.params.temperature > 0) {
      ++st.sampled;
      if (g.token != w.token) {
        ++st.boundary;
        const std::vector<float> x(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
        const auto dist = cpu_distribution(x, row, b);
        auto pos = [&](int32_t t) {
          for (size_t i = 0; i < dist.size(); ++i)
            if (dist[i].first == t) return int64_t(i);
          return int64_t(dist.size());
        };
        const int64_t pg = pos(g.token), pw = pos(w.token);
        double acc = 0;
        for (int64_t i = 0; i < std::min(pg, pw); ++i) acc += dist[size_t(i)].second;
        const double next = acc + dist[size_t(std::min(pg, pw))].second;
        const bool at_walk = std::abs(next - row.uniform) < 1e-6;
        const bool at_cut = std::max(pg, pw) >= int64_t(dist.size()) - 1;  // the last kept token vs the first cut
        EXPECT_TRUE(std::abs(pg - pw) == 1 && (at_walk || at_cut))
            << where << ": gpu " << g.token << " (pos " << pg << ") cpu " << w.token << " (pos " << pw << ") u "
            << row.uniform << " cum " << next;
      }
    } else {
      ASSERT_EQ(g.token, w.token) << where;
    }
    if (row.num_logprobs < 0) continue;
    if (g.token != w.token) continue;
    if (!(std::isinf(w.logprob) && g.logprob == w.logprob)) {
      EXPECT_NEAR(g.logprob, w.logprob, 1e-4) << where;
    }
    EXPECT_EQ(g.rank, w.rank) << where;
    ASSERT_EQ(g.top.size(), w.top.size()) << where;
    for (size_t i = 0; i < w.top.size(); ++i) {
      EXPECT_EQ(g.top[i].first, w.top[i].first) << where << " top " << i;
      if (!(std::isinf(w.top[i].second) && g.top[i].second == w.top[i].second)) {
        EXPECT_NEAR(g.top[i].second, w.top[i].second, 1e-4) << where << " top " << i;
      }
    }
  }
}

std::vector<float> random_logits(int64_t m, int64_t vocab, std::mt19937& rng, int style) {
  std::normal_distribution<float> nd(0.0f, 3.0f);
  std::vector<float> v(size_t(m * vocab));
  for (float& x : v) {
    x = nd(rng);
    if (style == 1) x = std::round(x * 4.0f) / 4.0f;  // many ties
    if (style == 2 && rng() % 16 == 0) x = -INFINITY;
  }
  return v;
}

TEST(CudaSampleRows, MatchesTheCpuOpOverASweep) {
  SKIP_WITHOUT_CUDA();
  std::mt19937 rng(11);
  Stats st;
  const int64_t sizes[][2] = {{1, 1},      {3, 7},      {17, 1000},  {64, 4097},   {5, 32001},
                              {1, 128256}, {8, 128256}, {256, 2000}, {256, 128256}};
  int kind = 0;
  for (const auto& s : sizes)
    for (int style = 0; style < 3; ++style) {
      const int64_t m = s[0], vocab = s[1];
      if (vocab * m > 4'000'000 && style > 0) continue;  // keep the CPU reference quick
      compare(random_logits(m, vocab, rng, style), m, vocab, mixed_batch(m, vocab, rng, kind++), st);
    }
  std::printf("sampled rows %lld, boundary differences %lld\n", (long long)st.sampled, (long long)st.boundary);
  EXPECT_LE(st.boundary * 100, st.sampled);  // rare: at most 1%
}

TEST(CudaSampleRows, GreedyBatchesAndRepeatsAreDeterministic) {
  SKIP_WITHOUT_CUDA();
  std::mt19937 rng(12);
  const int64_t m = 32, vocab = 128256;
  const std::vector<float> v = random_logits(m, vocab, rng, 0);
  Tensor x = Tensor::from_floats({m, vocab}, v).to(kGpu);
  SampleBatch greedy;
  greedy.rows.resize(size_t(m));
  Tensor c = Tensor::from_floats({m, vocab}, v);
  const auto a = ops::sample_rows(x, greedy), w = ops::sample_rows(c, greedy);
  for (int64_t r = 0; r < m; ++r) EXPECT_EQ(a[size_t(r)].token, w[size_t(r)].token);
  SampleBatch b = mixed_batch(m, vocab, rng, 1);
  const auto first = ops::sample_rows(x, b);
  for (int rep = 0; rep < 3; ++rep) {
    const auto again = ops::sample_rows(x, b);  // rows with logprobs restore their logits; others are re-penalized
    for (int64_t r = 0; r < m; ++r) {
      if (b.rows[size_t(r)].penalty_begin == b.rows[size_t(r)].penalty_end || b.rows[size_t(r)].num_logprobs >= 0) {
        EXPECT_EQ(again[size_t(r)].token, first[size_t(r)].token) << r;
      }
    }
  }
}

}  // namespace
}  // namespace kite
