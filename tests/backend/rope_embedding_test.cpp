// rope against the direct formula; embedding against the table rows.
#include <gtest/gtest.h>

#include "backend/ops/embedding.h"
#include "backend/ops/rope.h"
#include "backend_test_util.h"

namespace kite {
namespace {

TEST(Rope, MatchesDirectFormulaWithNonContiguousPositions) {
  struct Case {
    int64_t n, heads, hd, r;
    float factor;
  };
  // Full rotary, partial rotary (r < hd/2) and an attention factor != 1.
  const std::vector<Case> cases = {
      {6, 6, 64, 32, 1.0f}, {5, 2, 10, 5, 1.0f}, {4, 3, 16, 4, 1.0f}, {6, 1, 8, 4, 1.2f}, {1, 6, 64, 32, 1.0f}};
  const std::vector<int32_t> all_pos = {0, 5, 3, 1000, 7, 42};
  uint32_t seed = 6000;
  for (const Case& c : cases) {
    Tensor x = test::random_tensor({c.n, c.heads, c.hd}, DType::F32, ++seed);
    std::vector<float> freq(size_t(c.r));
    for (int64_t j = 0; j < c.r; ++j) freq[size_t(j)] = float(std::pow(10000.0, -2.0 * double(j) / double(2 * c.r)));
    Tensor inv_freq = Tensor::from_floats({c.r}, freq);
    Tensor pos = Tensor::empty({c.n}, DType::I32);
    for (int64_t i = 0; i < c.n; ++i) pos.data_as<int32_t>()[i] = all_pos[size_t(i)];
    std::vector<double> xd = test::to_doubles(x), want = xd, scale(xd.size());
    for (int64_t i = 0; i < c.n; ++i)
      for (int64_t h = 0; h < c.heads; ++h) {
        const size_t base = size_t((i * c.heads + h) * c.hd);
        for (int64_t j = 0; j < c.hd; ++j) scale[base + size_t(j)] = std::abs(xd[base + size_t(j)]);
        for (int64_t j = 0; j < c.r; ++j) {
          // The angle is formed in float32 (position * inv_freq), as in the
          // float32 Hugging Face reference; the rest in float64.
          const double a = double(float(all_pos[size_t(i)]) * freq[size_t(j)]);
          const double x1 = xd[base + size_t(j)], x2 = xd[base + size_t(j + c.r)];
          want[base + size_t(j)] = (x1 * std::cos(a) - x2 * std::sin(a)) * c.factor;
          want[base + size_t(j + c.r)] = (x2 * std::cos(a) + x1 * std::sin(a)) * c.factor;
          scale[base + size_t(j)] = scale[base + size_t(j + c.r)] = (std::abs(x1) + std::abs(x2)) * c.factor;
        }
      }
    ops::rope(x, pos, inv_freq, c.factor);
    test::expect_close(x.to_floats(), want, scale, 4e-7, 0,
                       fmt::format("n={} heads={} hd={} r={} factor={}", c.n, c.heads, c.hd, c.r, c.factor));
  }
}

// A 2-D inv_freq [n, r]: row i rotates token i. Bitwise what rope on each
// token with its row as a 1-D inv_freq gives, and the direct formula in
// float64 (tolerance as above).
TEST(Rope, PerTokenInvFreqEqualsOneCallPerTokenBitwise) {
  const int64_t n = 7, heads = 3, hd = 24, r = 10;  // partial rotary
  const float factor = 0.9f;
  Tensor x = test::random_tensor({n, heads, hd}, DType::F32, 6100);
  std::mt19937 rng(6101);
  std::vector<float> freq(size_t(n * r));
  for (int64_t i = 0; i < n; ++i) {
    const double base = 10000.0 * (1.0 + double(rng() % 100));  // per-token NTK-like bases
    for (int64_t j = 0; j < r; ++j) freq[size_t(i * r + j)] = float(std::pow(base, -2.0 * double(j) / double(hd)));
  }
  const std::vector<int32_t> all_pos = {0, 5, 3, 1000, 7, 42, 30000};
  const Tensor inv_freq = Tensor::from_floats({n, r}, freq), pos = test::i32_tensor({n}, all_pos);
  Tensor want = x.to(kCpu);
  for (int64_t i = 0; i < n; ++i) {
    Tensor xi = want.slice(0, i, i + 1);
    ops::rope(xi, pos.slice(0, i, i + 1), inv_freq.select(i), factor);
  }
  std::vector<double> xd = test::to_doubles(x), ref = xd, scale(xd.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < heads; ++h) {
      const size_t base = size_t((i * heads + h) * hd);
      for (int64_t j = 0; j < hd; ++j) scale[base + size_t(j)] = std::abs(xd[base + size_t(j)]);
      for (int64_t j = 0; j < r; ++j) {
        const double a = double(float(all_pos[size_t(i)]) * freq[size_t(i * r + j)]);
        const double x1 = xd[base + size_t(j)], x2 = xd[base + size_t(j + r)];
        ref[base + size_t(j)] = (x1 * std::cos(a) - x2 * std::sin(a)) * factor;
        ref[base + size_t(j + r)] = (x2 * std::cos(a) + x1 * std::sin(a)) * factor;
        scale[base + size_t(j)] = scale[base + size_t(j + r)] = (std::abs(x1) + std::abs(x2)) * factor;
      }
    }
  ops::rope(x, pos, inv_freq, factor);
  EXPECT_EQ(x.to_floats(), want.to_floats());
  test::expect_close(x.to_floats(), ref, scale, 4e-7, 0, "per-token inv_freq");
}

TEST(Rope, PositionZeroIsIdentity) {
  Tensor x = test::random_tensor({1, 2, 8}, DType::F32, 3);
  std::vector<float> before = x.to_floats();
  Tensor pos = Tensor::empty({1}, DType::I32);
  pos.data_as<int32_t>()[0] = 0;
  ops::rope(x, pos, Tensor::from_floats({4}, {1.0f, 0.1f, 0.01f, 0.001f}), 1.0f);
  EXPECT_EQ(x.to_floats(), before);
}

TEST(Embedding, CopiesRowsForEveryTableDtype) {
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    for (int64_t d : {1, 7, 64, 384}) {
      const int64_t vocab = 50;
      Tensor table = test::random_tensor({vocab, d}, dt, uint32_t(7000 + d));
      const std::vector<int32_t> id_list = {0, 49, 3, 3, 17, 0, 48};
      Tensor ids = Tensor::empty({int64_t(id_list.size())}, DType::I32);
      std::copy(id_list.begin(), id_list.end(), ids.data_as<int32_t>());
      Tensor out = test::nan_tensor({int64_t(id_list.size()), d});
      ops::embedding(table, ids, out);
      std::vector<float> tf = table.to_floats(), of = out.to_floats();
      for (size_t i = 0; i < id_list.size(); ++i)
        for (int64_t j = 0; j < d; ++j)
          ASSERT_EQ(of[i * size_t(d) + size_t(j)], tf[size_t(id_list[i]) * size_t(d) + size_t(j)])
              << dtype_name(dt) << " d=" << d << " row " << i;
    }
  }
}

}  // namespace
}  // namespace kite
