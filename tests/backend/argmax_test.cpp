// ops::argmax on the CPU: lowest index on ties, NaN never chosen.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/ops/ops.h"
#include "core/error.h"

namespace kite {
namespace {

// The reference: first index of the largest value.
int32_t first_max(const float* p, int64_t n) {
  int64_t best = 0;
  for (int64_t j = 1; j < n; ++j)
    if (p[j] > p[best]) best = j;
  return int32_t(best);
}

TEST(Argmax, MatchesAScanOnRandomRows) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (int64_t n : {1, 2, 7, 1000, 32000}) {
    const int64_t m = 5;
    std::vector<float> v(size_t(m * n));
    for (auto& x : v) x = nd(rng);
    Tensor x = Tensor::from_floats({m, n}, v), out = Tensor::empty({m}, DType::I32);
    ops::argmax(x, out);
    for (int64_t r = 0; r < m; ++r) EXPECT_EQ(out.data_as<int32_t>()[r], first_max(v.data() + r * n, n)) << n;
  }
}

TEST(Argmax, TiesTakeTheLowestIndexAndNanIsSkipped) {
  const float nan = std::nanf("");
  Tensor x = Tensor::from_floats({3, 4}, {1, 3, 3, 2, nan, -1, nan, -1, nan, nan, nan, nan});
  Tensor out = Tensor::empty({3}, DType::I32);
  ops::argmax(x, out);
  EXPECT_EQ(out.data_as<int32_t>()[0], 1);
  EXPECT_EQ(out.data_as<int32_t>()[1], 1);
  EXPECT_EQ(out.data_as<int32_t>()[2], 0);  // all NaN: 0
}

TEST(Argmax, BadArgumentsAreErrors) {
  Tensor x = Tensor::zeros({2, 3}, DType::F32);
  Tensor wrong = Tensor::empty({3}, DType::I32);
  EXPECT_THROW(ops::argmax(x, wrong), Error);
  Tensor f = Tensor::empty({2}, DType::F32);
  EXPECT_THROW(ops::argmax(x, f), Error);
  Tensor empty_rows = Tensor::zeros({2, 0}, DType::F32);
  Tensor out = Tensor::empty({2}, DType::I32);
  EXPECT_THROW(ops::argmax(empty_rows, out), Error);
}

}  // namespace
}  // namespace kite
