// ops::add_rms_norm on the CPU: bitwise equal to add then rms_norm at every
// SIMD level, close to a float64 reference, and its argument checks.
#include "backend/ops/add_rms_norm.h"

#include <gtest/gtest.h>

#include "backend/cpu/cpu_ops.h"
#include "backend/ops/add.h"
#include "backend/ops/rms_norm.h"
#include "backend_test_util.h"

namespace kite::cpu {
// backend/cpu/add_rms_norm.cpp (the table entry runs it at simd_level()).
void add_rms_norm(const Tensor& x, Tensor& residual, const Tensor& weight, float eps, Tensor& out, SimdLevel level);
}  // namespace kite::cpu

namespace kite {
namespace {

struct RowsCase {
  int64_t n, d;
};
const std::vector<RowsCase> kCases = {{1, 1},    {1, 7},    {1, 384},   {3, 17},   {5, 64},
                                      {4, 1000}, {33, 129}, {200, 100}, {2, 4096}, {3, 14336}};

Tensor copy_of(const Tensor& t) { return t.to(kCpu); }

TEST(AddRmsNorm, BitwiseEqualToAddThenRmsNormAtEverySimdLevel) {
  uint32_t seed = 9000;
  for (DType wt : {DType::F32, DType::BF16, DType::F16})
    for (const RowsCase& c : kCases) {
      const Tensor x = test::random_tensor({c.n, c.d}, DType::F32, ++seed, -3.0f, 3.0f);
      const Tensor res = test::random_tensor({c.n, c.d}, DType::F32, ++seed, -30.0f, 30.0f);
      const Tensor w = test::random_tensor({c.d}, wt, ++seed, 0.5f, 2.0f);
      const float eps = 1e-5f;
      for (cpu::SimdLevel level : test::simd_levels()) {
        const std::string name = fmt::format("n={} d={} w={} simd={}", c.n, c.d, dtype_name(wt), cpu::simd_name(level));
        Tensor r_want = copy_of(res), want = test::nan_tensor({c.n, c.d});
        cpu::add(r_want, x, r_want, level);
        cpu::rms_norm(r_want, w, eps, want, level);

        Tensor r_got = copy_of(res), got = test::nan_tensor({c.n, c.d});
        cpu::add_rms_norm(x, r_got, w, eps, got, level);
        ASSERT_EQ(r_got.to_floats(), r_want.to_floats()) << name << ": residual";
        ASSERT_EQ(got.to_floats(), want.to_floats()) << name << ": out";

        // out over x.
        Tensor r2 = copy_of(res), x2 = copy_of(x);
        cpu::add_rms_norm(x2, r2, w, eps, x2, level);
        ASSERT_EQ(x2.to_floats(), want.to_floats()) << name << ": out = x";
      }
      // Through the dispatcher (the table's SIMD level).
      Tensor r_want = copy_of(res), want = test::nan_tensor({c.n, c.d});
      ops::add(r_want, x, r_want);
      ops::rms_norm(r_want, w, eps, want);
      Tensor r_got = copy_of(res), got = test::nan_tensor({c.n, c.d});
      ops::add_rms_norm(x, r_got, w, eps, got);
      ASSERT_EQ(r_got.to_floats(), r_want.to_floats()) << c.n << "x" << c.d << " via ops: residual";
      ASSERT_EQ(got.to_floats(), want.to_floats()) << c.n << "x" << c.d << " via ops: out";
    }
}

TEST(AddRmsNorm, MatchesFloat64Reference) {
  uint32_t seed = 9500;
  for (const RowsCase& c : kCases) {
    const Tensor x = test::random_tensor({c.n, c.d}, DType::F32, ++seed, -3.0f, 3.0f);
    const Tensor res = test::random_tensor({c.n, c.d}, DType::F32, ++seed, -30.0f, 30.0f);
    const Tensor w = test::random_tensor({c.d}, DType::BF16, ++seed, 0.5f, 2.0f);
    const double eps = 1e-5;
    // The residual is stored in F32, so the reference normalizes the F32 sums.
    const std::vector<double> xd = test::to_doubles(x), rd = test::to_doubles(res), wd = test::to_doubles(w);
    std::vector<double> sum(xd.size()), want(xd.size());
    for (size_t i = 0; i < xd.size(); ++i) sum[i] = double(float(xd[i] + rd[i]));
    for (int64_t i = 0; i < c.n; ++i) {
      double ss = 0;
      for (int64_t j = 0; j < c.d; ++j) ss += sum[size_t(i * c.d + j)] * sum[size_t(i * c.d + j)];
      const double inv = 1.0 / std::sqrt(ss / double(c.d) + eps);
      for (int64_t j = 0; j < c.d; ++j) want[size_t(i * c.d + j)] = sum[size_t(i * c.d + j)] * inv * wd[size_t(j)];
    }
    Tensor r = copy_of(res), out = test::nan_tensor({c.n, c.d});
    ops::add_rms_norm(x, r, w, float(eps), out);
    const std::string name = fmt::format("n={} d={}", c.n, c.d);
    // The sum is one correctly rounded F32 add: exact against float(x + r).
    test::expect_close(r.to_floats(), sum, 0, 0, name + " residual");
    // As the rms_norm test: F32 sums of squares and two products.
    test::expect_close(out.to_floats(), want, 2e-6, 1e-7, name + " out");
  }
}

TEST(AddRmsNorm, EpsDominatesAZeroRow) {
  Tensor x = Tensor::from_floats({1, 4}, {1, -2, 3, 0});
  Tensor r = Tensor::from_floats({1, 4}, {-1, 2, -3, 0});
  Tensor w = Tensor::from_floats({4}, {1, 1, 1, 1});
  Tensor out = test::nan_tensor({1, 4});
  ops::add_rms_norm(x, r, w, 1e-5f, out);
  for (float v : r.to_floats()) EXPECT_EQ(v, 0.0f);
  for (float v : out.to_floats()) EXPECT_EQ(v, 0.0f);
}

TEST(AddRmsNorm, BadArgumentsAreErrors) {
  using test::expect_op_error;
  auto f32 = [](const Shape& s) { return Tensor::zeros(s, DType::F32); };
  Tensor x = f32({2, 8}), res = f32({2, 8}), w = f32({8}), out = f32({2, 8});
  EXPECT_NO_THROW(ops::add_rms_norm(x, res, w, 1e-5f, out));
  EXPECT_NO_THROW(ops::add_rms_norm(x, res, w, 1e-5f, x));  // out over x
  expect_op_error("add_rms_norm", "x", [&] {
    ops::add_rms_norm(Tensor::zeros({2, 8}, DType::BF16), res, w, 1e-5f, out);  // BF16 is CUDA only
  });
  expect_op_error("add_rms_norm", "x", [&] { ops::add_rms_norm(f32({16}), res, w, 1e-5f, out); });
  expect_op_error("add_rms_norm", "residual", [&] {
    Tensor r = Tensor::zeros({2, 8}, DType::BF16);
    ops::add_rms_norm(x, r, w, 1e-5f, out);
  });
  expect_op_error("add_rms_norm", "residual", [&] {
    Tensor r = f32({2, 9});
    ops::add_rms_norm(x, r, w, 1e-5f, out);
  });
  expect_op_error("add_rms_norm", "residual", [&] {
    Tensor r = f32({3, 8});
    ops::add_rms_norm(x, r, w, 1e-5f, out);
  });
  expect_op_error("add_rms_norm", "weight", [&] { ops::add_rms_norm(x, res, f32({7}), 1e-5f, out); });
  expect_op_error("add_rms_norm", "weight",
                  [&] { ops::add_rms_norm(x, res, Tensor::zeros({8}, DType::I8), 1e-5f, out); });
  expect_op_error("add_rms_norm", "out", [&] {
    Tensor o = f32({2, 7});
    ops::add_rms_norm(x, res, w, 1e-5f, o);
  });
  expect_op_error("add_rms_norm", "out", [&] {
    Tensor o = Tensor::zeros({2, 8}, DType::BF16);
    ops::add_rms_norm(x, res, w, 1e-5f, o);
  });
  // out over the residual, x over the residual, a partial overlap of out and x.
  expect_op_error("add_rms_norm", "out", [&] { ops::add_rms_norm(x, res, w, 1e-5f, res); });
  expect_op_error("add_rms_norm", "residual", [&] { ops::add_rms_norm(x, x, w, 1e-5f, out); });
  Tensor big = f32({3, 8});
  Tensor lo = big.slice(0, 0, 2), hi = big.slice(0, 1, 3);
  expect_op_error("add_rms_norm", "out", [&] { ops::add_rms_norm(lo, res, w, 1e-5f, hi); });
  expect_op_error("add_rms_norm", "eps", [&] { ops::add_rms_norm(x, res, w, -1.0f, out); });
  expect_op_error("add_rms_norm", "eps", [&] { ops::add_rms_norm(x, res, w, std::nanf(""), out); });
}

}  // namespace
}  // namespace kite
