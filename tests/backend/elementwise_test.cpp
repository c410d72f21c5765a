// rms_norm, add and silu_mul at every SIMD level against float64 references.
#include <gtest/gtest.h>

#include "backend/cpu/cpu_ops.h"
#include "backend/ops/add.h"
#include "backend/ops/rms_norm.h"
#include "backend/ops/silu_mul.h"
#include "backend_test_util.h"

namespace kite {
namespace {

struct RowsCase {
  int64_t n, d;
};
const std::vector<RowsCase> kRowCases = {{1, 1}, {1, 7}, {1, 384}, {3, 17}, {5, 64}, {4, 1000}, {33, 129}, {200, 100}};

std::vector<double> reference_rms_norm(const Tensor& x, const Tensor& w, double eps) {
  const int64_t n = x.dim(0), d = x.dim(1);
  std::vector<double> xd = test::to_doubles(x), wd = test::to_doubles(w), out(size_t(n * d));
  for (int64_t i = 0; i < n; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += xd[size_t(i * d + j)] * xd[size_t(i * d + j)];
    const double inv = 1.0 / std::sqrt(ss / double(d) + eps);
    for (int64_t j = 0; j < d; ++j) out[size_t(i * d + j)] = xd[size_t(i * d + j)] * inv * wd[size_t(j)];
  }
  return out;
}

TEST(RmsNorm, MatchesFloat64ReferenceAtEverySimdLevel) {
  uint32_t seed = 2000;
  for (DType wt : {DType::F32, DType::BF16, DType::F16}) {
    for (const RowsCase& c : kRowCases) {
      // Rows of very different magnitudes: the normalization must remove it.
      Tensor x = test::random_tensor({c.n, c.d}, DType::F32, ++seed, -30.0f, 30.0f);
      Tensor w = test::random_tensor({c.d}, wt, ++seed, 0.5f, 2.0f);
      const float eps = 1e-5f;
      const std::vector<double> want = reference_rms_norm(x, w, eps);
      const std::string name = fmt::format("n={} d={} w={}", c.n, c.d, dtype_name(wt));
      for (cpu::SimdLevel level : test::simd_levels()) {
        Tensor out = test::nan_tensor({c.n, c.d});
        cpu::rms_norm(x, w, eps, out, level);
        test::expect_close(out.to_floats(), want, 2e-6, 1e-7, name + " simd=" + cpu::simd_name(level));
      }
      // In place through the dispatcher.
      Tensor copy = Tensor::empty(x.shape(), DType::F32);
      copy.copy_from(x);
      ops::rms_norm(copy, w, eps, copy);
      test::expect_close(copy.to_floats(), want, 2e-6, 1e-7, name + " in place via ops");
    }
  }
}

TEST(RmsNorm, EpsDominatesAZeroRow) {
  Tensor x = Tensor::from_floats({1, 4}, {0, 0, 0, 0});
  Tensor w = Tensor::from_floats({4}, {1, 1, 1, 1});
  Tensor out = test::nan_tensor({1, 4});
  ops::rms_norm(x, w, 1e-5f, out);
  for (float v : out.to_floats()) EXPECT_EQ(v, 0.0f);
}

TEST(Add, MatchesReferenceAtEverySimdLevel) {
  uint32_t seed = 3000;
  for (const RowsCase& c : kRowCases) {
    Tensor a = test::random_tensor({c.n, c.d}, DType::F32, ++seed);
    Tensor b = test::random_tensor({c.n, c.d}, DType::F32, ++seed);
    std::vector<double> ad = test::to_doubles(a), bd = test::to_doubles(b), want(ad.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = ad[i] + bd[i];
    for (cpu::SimdLevel level : test::simd_levels()) {
      Tensor out = test::nan_tensor({c.n, c.d});
      cpu::add(a, b, out, level);
      // A float sum of two floats is correctly rounded: half an ulp.
      test::expect_close(out.to_floats(), want, 6e-8, 0,
                         fmt::format("n={} d={} simd={}", c.n, c.d, cpu::simd_name(level)));
    }
    ops::add(a, b, a);  // in place
    test::expect_close(a.to_floats(), want, 6e-8, 0, fmt::format("n={} d={} in place", c.n, c.d));
  }
}

TEST(SiluMul, MatchesFloat64ReferenceAtEverySimdLevel) {
  uint32_t seed = 4000;
  for (const RowsCase& c : kRowCases) {
    Tensor g = test::random_tensor({c.n, c.d}, DType::F32, ++seed, -20.0f, 20.0f);
    Tensor u = test::random_tensor({c.n, c.d}, DType::F32, ++seed, -3.0f, 3.0f);
    std::vector<double> gd = test::to_doubles(g), ud = test::to_doubles(u), want(gd.size());
    for (size_t i = 0; i < want.size(); ++i) want[i] = gd[i] / (1.0 + std::exp(-gd[i])) * ud[i];
    for (cpu::SimdLevel level : test::simd_levels()) {
      Tensor out = test::nan_tensor({c.n, c.d});
      cpu::silu_mul(g, u, out, level);
      test::expect_close(out.to_floats(), want, 1e-6, 1e-30,
                         fmt::format("n={} d={} simd={}", c.n, c.d, cpu::simd_name(level)));
    }
    ops::silu_mul(g, u, g);  // in place over gate
    test::expect_close(g.to_floats(), want, 1e-6, 1e-30, fmt::format("n={} d={} in place", c.n, c.d));
  }
}

// silu_mul_fused over a fused [n, 2f] gate/up output: each row's halves
// against the float64 reference, at every SIMD level and through the op.
TEST(SiluMulFused, MatchesFloat64ReferenceAtEverySimdLevel) {
  uint32_t seed = 4500;
  for (const RowsCase& c : kRowCases) {
    Tensor gu = test::random_tensor({c.n, 2 * c.d}, DType::F32, ++seed, -20.0f, 20.0f);
    const std::vector<double> gd = test::to_doubles(gu);
    std::vector<double> want(size_t(c.n * c.d));
    for (int64_t i = 0; i < c.n; ++i)
      for (int64_t j = 0; j < c.d; ++j) {
        const double g = gd[size_t(i * 2 * c.d + j)], u = gd[size_t(i * 2 * c.d + c.d + j)];
        want[size_t(i * c.d + j)] = g / (1.0 + std::exp(-g)) * u;
      }
    for (cpu::SimdLevel level : test::simd_levels()) {
      Tensor out = test::nan_tensor({c.n, c.d});
      cpu::silu_mul_fused(gu, out, level);
      test::expect_close(out.to_floats(), want, 1e-6, 1e-30,
                         fmt::format("n={} f={} simd={}", c.n, c.d, cpu::simd_name(level)));
    }
    Tensor out = test::nan_tensor({c.n, c.d});
    ops::silu_mul_fused(gu, out);
    test::expect_close(out.to_floats(), want, 1e-6, 1e-30, fmt::format("n={} f={} op", c.n, c.d));
  }
}

TEST(SiluMulFused, RejectsBadArguments) {
  const std::string op = "silu_mul_fused";
  Tensor gu = Tensor::zeros({3, 8}, DType::F32), out = Tensor::zeros({3, 4}, DType::F32);
  EXPECT_NO_THROW(ops::silu_mul_fused(gu, out));
  test::expect_op_error(op, "gate_up", [&] {
    Tensor odd = Tensor::zeros({3, 7}, DType::F32), o = Tensor::zeros({3, 3}, DType::F32);
    ops::silu_mul_fused(odd, o);
  });
  test::expect_op_error(op, "gate_up", [&] { ops::silu_mul_fused(Tensor::zeros({3, 8}, DType::BF16), out); });
  test::expect_op_error(op, "out", [&] {
    Tensor o = Tensor::zeros({3, 8}, DType::F32);
    ops::silu_mul_fused(gu, o);
  });
  test::expect_op_error(op, "out", [&] {
    Tensor o = Tensor::zeros({2, 4}, DType::F32);
    ops::silu_mul_fused(gu, o);
  });
  test::expect_op_error(op, "out", [&] {
    Tensor o = gu.slice(1, 0, 4);  // a view into gate_up (and not contiguous)
    ops::silu_mul_fused(gu, o);
  });
  test::expect_op_error(op, "out", [&] {
    Tensor o = gu.reshape({6, 4}).slice(0, 0, 3);  // overlaps gate_up
    ops::silu_mul_fused(gu, o);
  });
}

TEST(SiluMul, ExtremeGatesStayFinite) {
  Tensor g = Tensor::from_floats({1, 6}, {-200.0f, -88.0f, -10.0f, 10.0f, 88.0f, 200.0f});
  Tensor u = Tensor::from_floats({1, 6}, {1, 1, 1, 1, 1, 1});
  for (cpu::SimdLevel level : test::simd_levels()) {
    Tensor out = test::nan_tensor({1, 6});
    cpu::silu_mul(g, u, out, level);
    std::vector<float> o = out.to_floats();
    EXPECT_NEAR(o[0], 0.0f, 1e-30f) << cpu::simd_name(level);
    EXPECT_NEAR(o[1], 0.0f, 1e-30f) << cpu::simd_name(level);
    EXPECT_NEAR(o[2], -10.0 / (1.0 + std::exp(10.0)), 1e-9) << cpu::simd_name(level);
    EXPECT_NEAR(o[3], 10.0 / (1.0 + std::exp(-10.0)), 1e-5) << cpu::simd_name(level);
    EXPECT_EQ(o[4], 88.0f) << cpu::simd_name(level);
    EXPECT_EQ(o[5], 200.0f) << cpu::simd_name(level);
  }
}

}  // namespace
}  // namespace kite
