#include "quant/smoothquant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "core/error.h"
#include "quant/rtn.h"
#include "quant_test_util.h"

namespace kite::quant {
namespace {

using test::expect_error;
using test::normal;

std::vector<float> with_outliers(int64_t n, int64_t in, uint32_t seed) {
  std::vector<float> x = normal(n * in, seed);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j : {1, 17, 90})
      if (j < in) x[size_t(t * in + j)] *= 40.0f;
  return x;
}

std::vector<float> col_absmax(const std::vector<float>& m, int64_t in) {
  std::vector<float> a(size_t(in), 0.0f);
  for (size_t k = 0; k < m.size(); ++k) a[k % size_t(in)] = std::max(a[k % size_t(in)], std::fabs(m[k]));
  return a;
}

TEST(SmoothQuant, AbsMaxAccumulator) {
  const int64_t in = 32;
  const std::vector<float> a = normal(10 * in, 1), b = with_outliers(6, in, 2);
  ActAbsMaxAccumulator acc(in);
  acc.add(Tensor::from_floats({10, in}, a));
  acc.add(Tensor::from_floats({2, 3, in}, b));  // [..., in]
  EXPECT_EQ(acc.samples(), 16);
  std::vector<float> all = a;
  all.insert(all.end(), b.begin(), b.end());
  EXPECT_EQ(acc.absmax().to_floats(), col_absmax(all, in));
  expect_error([&] { acc.add(Tensor::zeros({2, in + 1}, DType::F32)); }, "x");
}

TEST(SmoothQuant, FactorsFollowTheFormula) {
  const int64_t in = 64;
  const std::vector<float> act = col_absmax(with_outliers(50, in, 3), in);
  std::vector<float> w1 = normal(16 * in, 4, 0.02f), w2 = normal(8 * in, 5, 0.1f);
  const Tensor t1 = Tensor::from_floats({16, in}, w1), t2 = Tensor::from_floats({8, in}, w2);
  std::vector<float> a = act;
  a[7] = 0.0f;  // a dead channel
  const Tensor at = Tensor::from_floats({in}, a);
  for (double alpha : {0.0, 0.5, 0.8, 1.0}) {
    const std::vector<float> s = smooth_factors(at, {&t1, &t2}, alpha).to_floats();
    for (int64_t j = 0; j < in; ++j) {
      double wmax = 0;
      for (int64_t o = 0; o < 16; ++o) wmax = std::max(wmax, double(std::fabs(w1[o * in + j])));
      for (int64_t o = 0; o < 8; ++o) wmax = std::max(wmax, double(std::fabs(w2[o * in + j])));
      const double want = j == 7 ? 1.0 : std::max(1e-5, std::pow(double(a[j]), alpha) / std::pow(wmax, 1 - alpha));
      EXPECT_NEAR(s[j], want, 1e-6 * want) << alpha << " " << j;
    }
  }
}

TEST(SmoothQuant, MigrationBalancesTheRanges) {
  const int64_t n = 128, in = 128, out = 64;
  const std::vector<float> xv = with_outliers(n, in, 6);
  const Tensor x = Tensor::from_floats({n, in}, xv);
  const Tensor w = Tensor::from_floats({out, in}, normal(out * in, 7, 0.05f));
  ActAbsMaxAccumulator acc(in);
  acc.add(x);
  const Tensor s = smooth_factors(acc.absmax(), {&w}, 0.5);
  const std::vector<float> xa = col_absmax(div_columns(x, s).to_floats(), in);
  const std::vector<float> wa = col_absmax(mul_columns(w, s).to_floats(), in);
  // alpha = 0.5: each channel's activation and weight ranges meet at sqrt(max|X| max|W|).
  for (int64_t j = 0; j < in; ++j) EXPECT_NEAR(xa[j], wa[j], 1e-5 * wa[j]) << j;
  auto spread = [](const std::vector<float>& v) {
    return *std::max_element(v.begin(), v.end()) / *std::min_element(v.begin(), v.end());
  };
  const std::vector<float> before = col_absmax(xv, in);
  EXPECT_LT(spread(xa), spread(before) / 4);
  EXPECT_LT(*std::max_element(xa.begin(), xa.end()), *std::max_element(before.begin(), before.end()) / 4);
  // The product is unchanged: (x / s) (W s)^T = x W^T.
  const std::vector<float> xs = div_columns(x, s).to_floats(), ws = mul_columns(w, s).to_floats(), wv = w.to_floats();
  for (int64_t t = 0; t < 4; ++t)
    for (int64_t o = 0; o < 4; ++o) {
      double y0 = 0, y1 = 0;
      for (int64_t j = 0; j < in; ++j) {
        y0 += double(xv[t * in + j]) * wv[o * in + j];
        y1 += double(xs[t * in + j]) * ws[o * in + j];
      }
      EXPECT_NEAR(y0, y1, 1e-4 * (1 + std::fabs(y0)));
    }
}

// W8A8 (int8 weights per channel, int8 activations per token): smoothing
// makes the outlier activations quantizable.
TEST(SmoothQuant, W8A8ErrorDropsWithSmoothing) {
  const int64_t n = 64, in = 256, out = 64;
  const std::vector<float> xv = with_outliers(n, in, 8);
  const Tensor x = Tensor::from_floats({n, in}, xv);
  const Tensor w = Tensor::from_floats({out, in}, normal(out * in, 9, 0.05f));
  auto fake_quant_tokens = [&](std::vector<float> v) {  // per-token int8, absmax / 127
    for (int64_t t = 0; t < n; ++t) {
      float m = 0;
      for (int64_t j = 0; j < in; ++j) m = std::max(m, std::fabs(v[t * in + j]));
      const float sc = m / 127;
      for (int64_t j = 0; j < in; ++j) v[t * in + j] = std::nearbyint(v[t * in + j] / sc) * sc;
    }
    return v;
  };
  auto w8a8_error = [&](const QuantWeight& q, const std::vector<float>& xin) {
    const std::vector<float> xq = fake_quant_tokens(xin), dq = dequantize(q).to_floats(), wv = w.to_floats();
    double e = 0, r = 0;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t o = 0; o < out; ++o) {
        double y = 0, yq = 0;
        for (int64_t j = 0; j < in; ++j) {
          y += double(xv[t * in + j]) * wv[o * in + j];
          yq += double(xq[t * in + j]) * dq[o * in + j];
        }
        e += (y - yq) * (y - yq);
        r += y * y;
      }
    return std::sqrt(e / r);
  };
  ActAbsMaxAccumulator acc(in);
  acc.add(x);
  const Tensor s = smooth_factors(acc.absmax(), {&w}, 0.5);
  const QuantWeight q = smoothquant_quantize(w, s);
  q.validate("test");
  EXPECT_EQ(q.scheme, QuantScheme::Int8);
  EXPECT_EQ(q.group, in);
  EXPECT_EQ(q.act, ActQuant::Int8Token);
  EXPECT_EQ(q.smooth.to_floats(), s.to_floats());
  const double plain = w8a8_error(quantize_rtn(w, QuantSpec::int8(-1)), xv);
  const double smooth = w8a8_error(q, div_columns(x, s).to_floats());
  std::printf("  W8A8 relative output error: plain %.4f, smoothed %.4f\n", plain, smooth);
  EXPECT_LT(smooth, 0.5 * plain);
}

TEST(SmoothQuant, BadInputsNameTheField) {
  const int64_t in = 16;
  const Tensor a = Tensor::from_floats({in}, normal(in, 10));
  const Tensor w = Tensor::from_floats({4, in}, normal(4 * in, 11));
  const Tensor w_other = Tensor::from_floats({4, in + 1}, normal(4 * (in + 1), 11));
  expect_error([&] { smooth_factors(a, {&w}, 1.5); }, "alpha");
  expect_error([&] { smooth_factors(a, {}, 0.5); }, "weights");
  expect_error([&] { smooth_factors(a, {&w_other}, 0.5); }, "weight");
  expect_error([&] { smooth_factors(Tensor::zeros({in, 1}, DType::F32), {&w}, 0.5); }, "act_absmax");
  expect_error([&] { mul_columns(w, Tensor::zeros({in}, DType::F32)); }, "s");
  expect_error([&] { div_columns(w, Tensor::from_floats({3}, {1, 2, 3})); }, "s");
}

}  // namespace
}  // namespace kite::quant
