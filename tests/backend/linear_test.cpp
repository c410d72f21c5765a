// ops::linear and cpu::linear at every SIMD level against a float64 reference.
#include "backend/ops/linear.h"

#include <gtest/gtest.h>

#include "backend/cpu/cpu_ops.h"
#include "backend_test_util.h"
#include "core/error.h"

namespace kite {

// gtest names the parameter in failure messages.
void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }

namespace {

struct LinearCase {
  int64_t n, k, m;
};

// y = x @ w^T + b in float64 from the exact (dequantized) values, plus the
// error scale sum_i |x_i w_i| + |b| per output.
void reference_linear(const Tensor& x, const Tensor& w, const Tensor* bias, std::vector<double>& y,
                      std::vector<double>& scale) {
  const int64_t n = x.dim(0), k = x.dim(1), m = w.dim(0);
  std::vector<double> xd = test::to_doubles(x), wd = test::to_doubles(w), bd;
  if (bias) bd = test::to_doubles(*bias);
  y.assign(size_t(n * m), 0.0);
  scale.assign(size_t(n * m), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      double s = bias ? bd[size_t(j)] : 0.0, a = bias ? std::abs(bd[size_t(j)]) : 0.0;
      for (int64_t t = 0; t < k; ++t) {
        const double p = xd[size_t(i * k + t)] * wd[size_t(j * k + t)];
        s += p;
        a += std::abs(p);
      }
      y[size_t(i * m + j)] = s;
      scale[size_t(i * m + j)] = a;
    }
}

class LinearTest : public ::testing::TestWithParam<DType> {};

TEST_P(LinearTest, MatchesFloat64ReferenceAtEverySimdLevel) {
  const DType wt = GetParam();
  const std::vector<LinearCase> cases = {{1, 1, 1},     {1, 7, 5},     {1, 384, 1024}, {1, 1000, 37},
                                         {2, 16, 16},   {3, 33, 17},   {5, 100, 129},  {7, 384, 70},
                                         {17, 257, 40}, {64, 384, 96}, {130, 64, 33},  {9, 3, 250}};
  uint32_t seed = 1000;
  for (const LinearCase& c : cases) {
    for (bool with_bias : {false, true}) {
      Tensor x = test::random_tensor({c.n, c.k}, DType::F32, ++seed);
      Tensor w = test::random_tensor({c.m, c.k}, wt, ++seed);
      Tensor b = test::random_tensor({c.m}, wt, ++seed);
      const Tensor* bp = with_bias ? &b : nullptr;
      std::vector<double> want, scale;
      reference_linear(x, w, bp, want, scale);
      const std::string name = fmt::format("n={} k={} m={} w={} bias={}", c.n, c.k, c.m, dtype_name(wt), with_bias);
      for (cpu::SimdLevel level : test::simd_levels()) {
        Tensor y = test::nan_tensor({c.n, c.m});
        cpu::linear(x, w, bp, y, level);
        test::expect_close(y.to_floats(), want, scale, 2e-6, 1e-7, name + " simd=" + cpu::simd_name(level));
      }
      Tensor y = Tensor::empty({c.n, c.m}, DType::F32);
      ops::linear(x, w, bp, y);
      test::expect_close(y.to_floats(), want, scale, 2e-6, 1e-7, name + " via ops::linear");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(WeightDtypes, LinearTest, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(LinearTest, ZeroRowsIsANoOp) {
  Tensor x = Tensor::empty({0, 8}, DType::F32);
  Tensor w = test::random_tensor({4, 8}, DType::BF16, 1);
  Tensor y = Tensor::empty({0, 4}, DType::F32);
  EXPECT_NO_THROW(ops::linear(x, w, nullptr, y));
}

}  // namespace
}  // namespace kite
