#include "quant/awq.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "core/error.h"
#include "quant/rtn.h"
#include "quant/smoothquant.h"
#include "quant_test_util.h"

namespace kite::quant {
namespace {

using test::expect_error;
using test::normal;

// Activations [n, in] ~ N(0, 1) whose channels in `outliers` are 20-50x larger.
std::vector<float> activations(int64_t n, int64_t in, const std::vector<int64_t>& outliers, uint32_t seed) {
  std::vector<float> x = normal(n * in, seed);
  std::mt19937 rng(seed + 1);
  std::uniform_real_distribution<float> u(20.0f, 50.0f);
  for (int64_t j : outliers) {
    const float f = u(rng);
    for (int64_t t = 0; t < n; ++t) x[size_t(t * in + j)] *= f;
  }
  return x;
}

// ||x (w - w_hat)^T||_F^2 for x: [n, in], w, w_hat: [out, in].
double output_sq_error(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>& w_hat,
                       int64_t in) {
  const int64_t n = int64_t(x.size()) / in, out = int64_t(w.size()) / in;
  std::vector<float> d(w.size());
  for (size_t k = 0; k < w.size(); ++k) d[k] = w[k] - w_hat[k];
  double s = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t o = 0; o < out; ++o) {
      double y = 0;
      for (int64_t j = 0; j < in; ++j) y += double(x[size_t(t * in + j)]) * d[size_t(o * in + j)];
      s += y * y;
    }
  return s;
}

const std::vector<int64_t> kOutliers = {5, 77, 130, 131, 300, 411, 480, 509};

TEST(Awq, BeatsRtnWithOutlierChannels) {
  const int64_t n = 512, in = 512, out = 256;
  const std::vector<float> xv = activations(n, in, kOutliers, 1);
  const Tensor x = Tensor::from_floats({n, in}, xv);
  const Tensor w1 = Tensor::from_floats({out, in}, normal(out * in, 2, 0.02f));
  const Tensor w2 = Tensor::from_floats({out / 2, in}, normal(out / 2 * in, 3, 0.05f));
  AwqOptions opt;
  AwqStats stats;
  const Tensor s = awq_search_scales({&w1, &w2}, x, opt, &stats);
  ASSERT_EQ(s.shape(), (Shape{in}));
  const std::vector<float> sv = s.to_floats();

  // The scales favour the outlier channels, and are normalized: max * min = 1.
  double s_out = 0, s_rest = 0, smax = 0, smin = 1e30;
  for (int64_t j = 0; j < in; ++j) {
    const bool o = std::find(kOutliers.begin(), kOutliers.end(), j) != kOutliers.end();
    (o ? s_out : s_rest) += sv[j];
    smax = std::max(smax, double(sv[j]));
    smin = std::min(smin, double(sv[j]));
  }
  s_out /= double(kOutliers.size());
  s_rest /= double(in - int64_t(kOutliers.size()));
  EXPECT_GT(s_out, 3 * s_rest);
  EXPECT_NEAR(smax * smin, 1.0, 1e-4);
  EXPECT_GT(stats.alpha, 0.0);
  EXPECT_LT(stats.loss, stats.base_loss);

  const Tensor xs = div_columns(x, s);
  double rtn = 0, awq = 0, awq_noclip = 0;
  AwqOptions noclip = opt;
  noclip.clip = false;
  for (const Tensor* w : {&w1, &w2}) {
    const std::vector<float> wv = w->to_floats();
    const std::vector<float> r = dequantize(quantize_rtn(*w, QuantSpec::int4(128, false))).to_floats();
    rtn += output_sq_error(xv, wv, r, in);
    const Tensor ws = mul_columns(*w, s);
    for (bool clip : {true, false}) {
      const QuantWeight q = awq_quantize(ws, clip ? xs : Tensor(), clip ? opt : noclip);
      q.validate("test");
      ASSERT_EQ(q.scheme, QuantScheme::Int4);
      ASSERT_EQ(q.group, 128);
      std::vector<float> eff = dequantize(q).to_floats();  // W' / s: the weight x sees
      for (size_t k = 0; k < eff.size(); ++k) eff[k] /= sv[k % size_t(in)];
      (clip ? awq : awq_noclip) += output_sq_error(xv, wv, eff, in);
    }
  }
  // At alpha = 0, s = 1: the base loss is plain RTN's.
  EXPECT_NEAR(stats.base_loss, rtn, 1e-3 * rtn);
  std::printf("  AWQ/RTN output error: scales+clip %.3f, scales only %.3f (alpha %.2f)\n", std::sqrt(awq / rtn),
              std::sqrt(awq_noclip / rtn), stats.alpha);
  EXPECT_LT(std::sqrt(awq_noclip / rtn), 0.8);
  EXPECT_LT(std::sqrt(awq / rtn), 0.8);
  EXPECT_LE(awq, awq_noclip * 1.001);
}

TEST(Awq, ClipNeverIncreasesAGroupsError) {
  const int64_t n = 256, in = 256, out = 64, group = 64;
  const std::vector<float> xv = activations(n, in, {3, 100}, 4);
  const Tensor x = Tensor::from_floats({n, in}, xv);
  std::vector<float> wv = normal(out * in, 5, 0.02f);
  for (int64_t k = 0; k < out * in; k += 37) wv[size_t(k)] *= 6.0f;  // outlier weights worth clipping
  AwqOptions opt;
  opt.group = group;
  Tensor clipped = Tensor::from_floats({out, in}, wv);
  awq_clip(clipped, x, opt);
  const std::vector<float> cv = clipped.to_floats();
  const std::vector<float> q0 =
      dequantize(quantize_rtn(Tensor::from_floats({out, in}, wv), QuantSpec::int4(group, false))).to_floats();
  const std::vector<float> q1 = dequantize(quantize_rtn(clipped, QuantSpec::int4(group, false))).to_floats();
  int64_t changed = 0;
  double total0 = 0, total1 = 0;
  for (int64_t o = 0; o < out; ++o)
    for (int64_t g = 0; g < in / group; ++g) {
      double e0 = 0, e1 = 0;  // the group's squared output error against the original weights
      bool differs = false;
      for (int64_t t = 0; t < n; ++t) {
        double y0 = 0, y1 = 0;
        for (int64_t j = g * group; j < (g + 1) * group; ++j) {
          const double xj = xv[size_t(t * in + j)], wj = wv[size_t(o * in + j)];
          y0 += xj * (wj - q0[size_t(o * in + j)]);
          y1 += xj * (wj - q1[size_t(o * in + j)]);
        }
        e0 += y0 * y0;
        e1 += y1 * y1;
      }
      for (int64_t j = g * group; j < (g + 1) * group; ++j) differs |= cv[size_t(o * in + j)] != wv[size_t(o * in + j)];
      changed += differs;
      EXPECT_LE(e1, e0 * (1 + 1e-4) + 1e-12) << o << "," << g;
      total0 += e0;
      total1 += e1;
    }
  std::printf("  AWQ clip: %lld of %lld groups clipped, group output error %.3f of unclipped\n", (long long)changed,
              (long long)(out * in / group), total1 / total0);
  EXPECT_GT(changed, 0);
  EXPECT_LT(total1, total0);
  EXPECT_LE(output_sq_error(xv, wv, q1, in), output_sq_error(xv, wv, q0, in));
  // No shrink allowed: nothing changes.
  opt.max_shrink = 0.0;
  Tensor same = Tensor::from_floats({out, in}, wv);
  awq_clip(same, x, opt);
  EXPECT_EQ(same.to_floats(), wv);
}

TEST(Awq, SubsamplesTokens) {
  const int64_t n = 2048, in = 128, out = 32;
  const Tensor x = Tensor::from_floats({4, n / 4, in}, activations(n, in, {9}, 6));  // [..., in]
  const Tensor w = Tensor::from_floats({out, in}, normal(out * in, 7, 0.02f));
  AwqOptions opt;
  opt.group = 64;
  opt.max_samples = 100;
  const std::vector<float> s = awq_search_scales({&w}, x, opt).to_floats();
  for (float v : s) ASSERT_TRUE(std::isfinite(v) && v > 0);
  const QuantWeight q =
      awq_quantize(mul_columns(w, Tensor::from_floats({in}, s)), div_columns(x, Tensor::from_floats({in}, s)), opt);
  q.validate("test");
  for (float z : q.zeros.to_floats()) EXPECT_EQ(z, std::round(z));
}

TEST(Awq, BadInputsNameTheField) {
  const int64_t in = 128;
  const Tensor x = Tensor::from_floats({16, in}, normal(16 * in, 8));
  const Tensor w = Tensor::from_floats({8, in}, normal(8 * in, 9));
  const Tensor w_other = Tensor::from_floats({8, in + 2}, normal(8 * (in + 2), 9));
  AwqOptions opt;
  expect_error([&] { awq_search_scales({}, x, opt); }, "weights");
  expect_error([&] { awq_search_scales({&w_other}, x, opt); }, "weight");
  expect_error([&] { awq_quantize(w, Tensor(), opt); }, "x");
  Tensor bf = w.to_dtype(DType::BF16);
  expect_error([&] { awq_clip(bf, x, opt); }, "weight");
  opt.group = 100;
  expect_error([&] { awq_search_scales({&w}, x, opt); }, "group");
  opt.group = 64;
  opt.max_shrink = 1.0;
  expect_error([&] { awq_quantize(w, x, opt); }, "max_shrink");
  opt.max_shrink = 0.5;
  opt.grid = 0;
  expect_error([&] { awq_search_scales({&w}, x, opt); }, "grid");
}

}  // namespace
}  // namespace kite::quant
