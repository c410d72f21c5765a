#include "quant/gptq.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "core/error.h"
#include "quant/rtn.h"
#include "quant_test_util.h"

namespace kite::quant {
namespace {

using test::expect_error;
using test::normal;

// Correlated activations x = z M: [n, in] with z ~ N(0, 1) and a random
// M: [in, in], so H = 2/n x^T x is far from diagonal and ill-conditioned.
std::vector<float> correlated(int64_t n, int64_t in, const std::vector<float>& m, uint32_t seed) {
  const std::vector<float> z = normal(n * in, seed);
  std::vector<float> x(size_t(n * in), 0.0f);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t k = 0; k < in; ++k) {
      const float zk = z[size_t(t * in + k)];
      const float* mk = &m[size_t(k * in)];
      float* xt = &x[size_t(t * in)];
      for (int64_t j = 0; j < in; ++j) xt[j] += zk * mk[j];
    }
  return x;
}

struct Problem {
  int64_t out = 256, in = 512, n = 1024;
  Tensor w;  // [out, in]
  HessianAccumulator calib{512}, held_out{512};
};

const Problem& problem() {
  static const Problem* p = [] {
    auto* p = new Problem;
    const std::vector<float> m = normal(p->in * p->in, 100, 1.0f / std::sqrt(float(p->in)));
    p->calib.add(Tensor::from_floats({p->n, p->in}, correlated(p->n, p->in, m, 101)));
    p->held_out.add(Tensor::from_floats({p->n, p->in}, correlated(p->n, p->in, m, 102)));
    p->w = Tensor::from_floats({p->out, p->in}, normal(p->out * p->in, 103, 0.02f));
    return p;
  }();
  return *p;
}

// ||x D^T||_F with D = w - dq, from H = 2/N x^T x: sum_o d_o^T H d_o * N / 2.
double output_error(const HessianAccumulator& acc, const std::vector<float>& w, const std::vector<float>& dq) {
  const int64_t in = acc.in(), out = int64_t(w.size()) / in;
  const std::vector<double> h = acc.hessian_f64();
  double s = 0;
  std::vector<double> d(static_cast<size_t>(in));
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t j = 0; j < in; ++j) d[size_t(j)] = double(w[size_t(o * in + j)]) - dq[size_t(o * in + j)];
    for (int64_t i = 0; i < in; ++i) {
      double r = 0;
      for (int64_t j = 0; j < in; ++j) r += h[size_t(i * in + j)] * d[size_t(j)];
      s += d[size_t(i)] * r;
    }
  }
  return std::sqrt(std::max(0.0, s * double(acc.samples()) / 2));
}

double output_error(const HessianAccumulator& acc, const Tensor& w, const QuantWeight& q) {
  return output_error(acc, w.to_floats(), dequantize(q).to_floats());
}

TEST(Gptq, HessianIsTwoOverNXtX) {
  const int64_t n = 50, in = 12;
  const std::vector<float> x = normal(n * in, 1);
  HessianAccumulator acc(in);
  acc.add(Tensor::from_floats({30, in}, std::vector<float>(x.begin(), x.begin() + 30 * in)));
  acc.add(Tensor::from_floats({2, 10, in}, std::vector<float>(x.begin() + 30 * in, x.end())));  // [..., in]
  EXPECT_EQ(acc.samples(), n);
  const std::vector<double> h = acc.hessian_f64();
  const Tensor hf = acc.hessian();
  ASSERT_EQ(hf.shape(), (Shape{in, in}));
  for (int64_t i = 0; i < in; ++i)
    for (int64_t j = 0; j < in; ++j) {
      double want = 0;
      for (int64_t t = 0; t < n; ++t) want += double(x[t * in + i]) * x[t * in + j];
      want *= 2.0 / n;
      EXPECT_NEAR(h[i * in + j], want, 1e-12 * (1 + std::fabs(want)));
      EXPECT_FLOAT_EQ(hf.data_as<float>()[i * in + j], float(want));
    }
  expect_error([&] { acc.add(Tensor::zeros({3, in + 1}, DType::F32)); }, "x");
}

TEST(Gptq, InverseCholeskyUpper) {
  const int64_t n = 40;
  const std::vector<float> a = normal(n * n, 2);
  std::vector<double> h(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = i == j ? 0.1 : 0.0;
      for (int64_t k = 0; k < n; ++k) s += double(a[i * n + k]) * a[j * n + k];
      h[size_t(i * n + j)] = s;
    }
  const std::vector<double> u = inverse_cholesky_upper(h, n);
  ASSERT_EQ(int64_t(u.size()), n * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < i; ++j) EXPECT_EQ(u[size_t(i * n + j)], 0.0);
  // (U^T U) H = I
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t k = 0; k < n; ++k) {
        double uu = 0;  // (U^T U)[i][k]
        for (int64_t l = 0; l <= std::min(i, k); ++l) uu += u[size_t(l * n + i)] * u[size_t(l * n + k)];
        s += uu * h[size_t(k * n + j)];
      }
      EXPECT_NEAR(s, i == j ? 1.0 : 0.0, 1e-8) << i << "," << j;
    }
  std::vector<double> bad(size_t(4), 0.0);
  bad[0] = 1;
  bad[3] = -1;
  EXPECT_TRUE(inverse_cholesky_upper(bad, 2).empty());
}

// With a diagonal H nothing propagates: GPTQ is RTN, bit for bit.
TEST(Gptq, DiagonalHessianGivesRtn) {
  const int64_t out = 32, in = 256;
  const Tensor w = Tensor::from_floats({out, in}, normal(out * in, 3, 0.02f));
  std::vector<float> h(size_t(in * in), 0.0f);
  for (int64_t i = 0; i < in; ++i) h[size_t(i * in + i)] = 1.0f + float(i % 7);
  const Tensor hessian = Tensor::from_floats({in, in}, h);
  struct Case {
    GptqOptions g;
    QuantSpec r;
  };
  GptqOptions asym;
  asym.symmetric = false;
  asym.group = 64;
  GptqOptions eight;
  eight.bits = 8;
  eight.group = -1;
  for (const Case& c : {Case{GptqOptions{}, QuantSpec::int4(128)}, Case{asym, QuantSpec::int4(64, false)},
                        Case{eight, QuantSpec::int8(-1)}}) {
    const QuantWeight a = gptq_quantize(w, hessian, c.g);
    const QuantWeight b = quantize_rtn(w, c.r);
    ASSERT_EQ(a.scheme, b.scheme);
    ASSERT_EQ(a.group, b.group);
    EXPECT_FALSE(a.perm.defined());
    EXPECT_EQ(std::memcmp(a.qdata.data(), b.qdata.data(), a.qdata.nbytes()), 0);
    EXPECT_EQ(a.scales.to_floats(), b.scales.to_floats());
    if (b.zeros.defined()) {
      EXPECT_EQ(a.zeros.to_floats(), b.zeros.to_floats());
    }
  }
}

// A plain GPTQ straight from the paper, for comparison: double precision,
// one column at a time (no lazy batches), H^-1 by Gauss-Jordan and its upper
// Cholesky factor by the textbook algorithm. Returns the dequantized weight
// in processing order (columns order[p]).
std::vector<double> reference_gptq(const std::vector<float>& w, int64_t out, const std::vector<double>& h0, int64_t in,
                                   int64_t group, bool symmetric, const std::vector<int32_t>& order) {
  std::vector<double> h(size_t(in * in)), inv(size_t(in * in), 0.0);
  double mean = 0;
  for (int64_t i = 0; i < in; ++i) mean += h0[size_t(i * in + i)] / double(in);
  for (int64_t a = 0; a < in; ++a) {
    for (int64_t b = 0; b < in; ++b) h[size_t(a * in + b)] = h0[size_t(order[a] * in + order[b])];
    h[size_t(a * in + a)] += 0.01 * mean;
    inv[size_t(a * in + a)] = 1.0;
  }
  for (int64_t c = 0; c < in; ++c) {  // Gauss-Jordan (SPD: no pivoting needed)
    const double p = h[size_t(c * in + c)];
    for (int64_t j = 0; j < in; ++j) {
      h[size_t(c * in + j)] /= p;
      inv[size_t(c * in + j)] /= p;
    }
    for (int64_t r = 0; r < in; ++r) {
      if (r == c) continue;
      const double f = h[size_t(r * in + c)];
      for (int64_t j = 0; j < in; ++j) {
        h[size_t(r * in + j)] -= f * h[size_t(c * in + j)];
        inv[size_t(r * in + j)] -= f * inv[size_t(c * in + j)];
      }
    }
  }
  std::vector<double> u(size_t(in * in), 0.0);  // inv = U^T U, U upper: row by row
  for (int64_t i = 0; i < in; ++i) {
    double d = inv[size_t(i * in + i)];
    for (int64_t k = 0; k < i; ++k) d -= u[size_t(k * in + i)] * u[size_t(k * in + i)];
    u[size_t(i * in + i)] = std::sqrt(d);
    for (int64_t j = i + 1; j < in; ++j) {
      double s = inv[size_t(i * in + j)];
      for (int64_t k = 0; k < i; ++k) s -= u[size_t(k * in + i)] * u[size_t(k * in + j)];
      u[size_t(i * in + j)] = s / u[size_t(i * in + i)];
    }
  }
  std::vector<double> wd(size_t(out * in)), q(size_t(out * in));
  for (int64_t r = 0; r < out; ++r)
    for (int64_t p = 0; p < in; ++p) wd[size_t(r * in + p)] = w[size_t(r * in + order[p])];
  for (int64_t r = 0; r < out; ++r) {
    double* wr = &wd[size_t(r * in)];
    IntGrid grid;
    for (int64_t p = 0; p < in; ++p) {
      if (p % group == 0) {  // the group's grid from the weights as updated so far
        std::vector<float> seg(wr + p, wr + p + group);
        grid = int_grid(seg.data(), group, 4, symmetric);
      }
      q[size_t(r * in + p)] = grid.fake(float(wr[p]));
      const double e = (wr[p] - q[size_t(r * in + p)]) / u[size_t(p * in + p)];
      for (int64_t j = p + 1; j < in; ++j) wr[j] -= e * u[size_t(p * in + j)];
    }
  }
  return q;
}

TEST(Gptq, MatchesAPlainColumnByColumnReference) {
  const int64_t out = 32, in = 128, n = 512;
  const std::vector<float> m = normal(in * in, 20, 1.0f / std::sqrt(float(in)));
  HessianAccumulator acc(in);
  acc.add(Tensor::from_floats({n, in}, correlated(n, in, m, 21)));
  const std::vector<double> h = acc.hessian_f64();
  const std::vector<float> w = normal(out * in, 22, 0.02f);
  for (bool act_order : {false, true})
    for (bool symmetric : {true, false}) {
      GptqOptions o;
      o.group = 32;
      o.block = 48;  // groups straddle blocks
      o.act_order = act_order;
      o.symmetric = symmetric;
      const QuantWeight q = gptq_quantize(Tensor::from_floats({out, in}, w), acc, o);
      std::vector<int32_t> order(static_cast<size_t>(in));
      for (int64_t j = 0; j < in; ++j) order[size_t(j)] = act_order ? q.perm.data_as<int32_t>()[j] : int32_t(j);
      const std::vector<double> want = reference_gptq(w, out, h, in, 32, symmetric, order);
      const std::vector<float> got = dequantize(q).to_floats();  // input order
      int64_t same = 0;
      for (int64_t r = 0; r < out; ++r)
        for (int64_t p = 0; p < in; ++p)
          same += std::fabs(got[size_t(r * in + order[p])] - want[size_t(r * in + p)]) <=
                  1e-5 * std::fabs(want[size_t(r * in + p)]) + 1e-9;
      EXPECT_GT(double(same) / double(out * in), 0.99) << "act_order " << act_order << " symmetric " << symmetric;
    }
}

struct Variant {
  const char* name;
  GptqOptions opt;
  QuantSpec rtn;
};

std::vector<Variant> variants() {
  std::vector<Variant> v;
  GptqOptions o;
  v.push_back({"sym g128", o, QuantSpec::int4(128)});
  o.act_order = true;
  v.push_back({"sym g128 act_order", o, QuantSpec::int4(128)});
  o.static_groups = true;
  v.push_back({"sym g128 act_order static", o, QuantSpec::int4(128)});
  o = GptqOptions{};
  o.symmetric = false;
  v.push_back({"asym g128", o, QuantSpec::int4(128, false)});
  o.act_order = true;
  v.push_back({"asym g128 act_order", o, QuantSpec::int4(128, false)});
  o = GptqOptions{};
  o.group = -1;
  o.act_order = true;
  v.push_back({"sym per-channel act_order", o, QuantSpec::int4(-1)});
  return v;
}

TEST(Gptq, BeatsRtnOnCorrelatedActivations) {
  const Problem& p = problem();
  for (const Variant& v : variants()) {
    GptqStats stats;
    const QuantWeight q = gptq_quantize(p.w, p.calib, v.opt, &stats);
    q.validate("test");
    const QuantWeight r = quantize_rtn(p.w, v.rtn);
    const double eg = output_error(p.calib, p.w, q), er = output_error(p.calib, p.w, r);
    const double hg = output_error(p.held_out, p.w, q), hr = output_error(p.held_out, p.w, r);
    std::printf("  GPTQ/RTN output error, %-28s calibration %.3f  held-out %.3f\n", v.name, eg / er, hg / hr);
    EXPECT_LT(eg, 0.8 * er) << v.name;
    EXPECT_LT(hg, 0.9 * hr) << v.name;
    EXPECT_TRUE(std::isfinite(stats.loss) && stats.loss > 0) << v.name;
    EXPECT_EQ(stats.dead_columns, 0);
    EXPECT_EQ(q.perm.defined(), v.opt.act_order && !v.opt.static_groups) << v.name;
  }
}

TEST(Gptq, ActOrderPermIsAPermutationByDescendingDiagonal) {
  const Problem& p = problem();
  GptqOptions o;
  o.act_order = true;
  o.group = 64;
  const QuantWeight q = gptq_quantize(p.w, p.calib, o);
  ASSERT_TRUE(q.perm.defined());
  ASSERT_EQ(q.perm.dtype(), DType::I32);
  const int32_t* perm = q.perm.data_as<int32_t>();
  std::vector<int32_t> sorted(perm, perm + p.in);
  std::sort(sorted.begin(), sorted.end());
  for (int64_t j = 0; j < p.in; ++j) ASSERT_EQ(sorted[j], j);
  const std::vector<double> h = p.calib.hessian_f64();
  for (int64_t j = 1; j < p.in; ++j)
    EXPECT_GE(h[size_t(perm[j - 1]) * p.in + perm[j - 1]], h[size_t(perm[j]) * p.in + perm[j]]);
}

// Lazy batching is a reordering of the same arithmetic, also when groups
// straddle blocks: the block size must not change the result.
TEST(Gptq, BlockSizeDoesNotChangeTheResult) {
  const Problem& p = problem();
  GptqOptions o;
  o.group = 64;  // groups straddle blocks of 96
  std::vector<std::vector<float>> dq;
  for (int64_t block : {int64_t(1), int64_t(96), int64_t(128), int64_t(512)}) {
    o.block = block;
    dq.push_back(dequantize(gptq_quantize(p.w, p.calib, o)).to_floats());
  }
  o.group = 256;  // groups longer than blocks
  for (int64_t block : {int64_t(1), int64_t(96)}) {
    o.block = block;
    dq.push_back(dequantize(gptq_quantize(p.w, p.calib, o)).to_floats());
  }
  auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
    int64_t n = 0;
    for (size_t k = 0; k < a.size(); ++k) n += std::fabs(a[k] - b[k]) <= 1e-6f * std::fabs(a[k]) + 1e-9f;
    return double(n) / double(a.size());
  };
  for (size_t k = 1; k < 4; ++k) EXPECT_GT(same(dq[0], dq[k]), 0.995) << k;
  EXPECT_GT(same(dq[4], dq[5]), 0.995);
}

TEST(Gptq, EightBitsIsFarBetterThanFour) {
  const Problem& p = problem();
  GptqOptions o8;
  o8.bits = 8;
  GptqStats s4, s8;
  const QuantWeight q4 = gptq_quantize(p.w, p.calib, GptqOptions{}, &s4);
  const QuantWeight q8 = gptq_quantize(p.w, p.calib, o8, &s8);
  ASSERT_EQ(q8.scheme, QuantScheme::Int8);
  ASSERT_EQ(q8.group, 128);
  const double e4 = output_error(p.calib, p.w, q4), e8 = output_error(p.calib, p.w, q8);
  std::printf("  GPTQ 8-bit / 4-bit output error %.4f\n", e8 / e4);
  EXPECT_LT(e8, 0.1 * e4);
  EXPECT_LT(s8.loss, 0.01 * s4.loss);
}

TEST(Gptq, DegenerateInputsStayFinite) {
  const int64_t out = 16, in = 128, n = 256;
  std::vector<float> x = normal(n * in, 4);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j : {3, 4, 77, 127}) x[size_t(t * in + j)] = 0.0f;  // dead inputs
  HessianAccumulator acc(in);
  acc.add(Tensor::from_floats({n, in}, x));
  std::vector<float> w = normal(out * in, 5, 0.02f);
  for (int64_t j = 0; j < in; ++j) w[size_t(2 * in + j)] = 0.0f;    // a zero row
  for (int64_t o = 0; o < out; ++o) w[size_t(o * in + 10)] = 0.0f;  // a zero column
  const Tensor wt = Tensor::from_floats({out, in}, w);
  for (bool act_order : {false, true}) {
    GptqOptions o;
    o.group = 32;
    o.act_order = act_order;
    GptqStats stats;
    const QuantWeight q = gptq_quantize(wt, acc, o, &stats);
    EXPECT_EQ(stats.dead_columns, 4);
    EXPECT_TRUE(std::isfinite(stats.loss));
    const std::vector<float> dq = dequantize(q).to_floats();
    for (float v : dq) ASSERT_TRUE(std::isfinite(v));
    for (int64_t j = 0; j < in; ++j) EXPECT_EQ(dq[size_t(2 * in + j)], 0.0f);
  }
  // All-zero weights; an empty accumulator (every column dead) is RTN.
  const QuantWeight z = gptq_quantize(Tensor::zeros({out, in}, DType::F32), acc, GptqOptions{});
  for (float v : dequantize(z).to_floats()) ASSERT_EQ(v, 0.0f);
  const QuantWeight e = gptq_quantize(wt, HessianAccumulator(in), GptqOptions{});
  const QuantWeight r = quantize_rtn(wt, QuantSpec::int4(128));
  EXPECT_EQ(std::memcmp(e.qdata.data(), r.qdata.data(), e.qdata.nbytes()), 0);
  // A singular (rank-deficient) Hessian is fixed by the dampening.
  HessianAccumulator few(in);
  few.add(Tensor::from_floats({8, in}, normal(8 * in, 6)));
  for (float v : dequantize(gptq_quantize(wt, few, GptqOptions{})).to_floats()) ASSERT_TRUE(std::isfinite(v));
}

TEST(Gptq, BadOptionsNameTheField) {
  const int64_t in = 64;
  const Tensor w = Tensor::from_floats({8, in}, normal(8 * in, 7));
  HessianAccumulator acc(in);
  acc.add(Tensor::from_floats({32, in}, normal(32 * in, 8)));
  const Tensor h = acc.hessian();
  GptqOptions o;
  o.bits = 3;
  expect_error([&] { gptq_quantize(w, h, o); }, "bits");
  o = GptqOptions{};
  o.bits = 8;
  o.symmetric = false;
  expect_error([&] { gptq_quantize(w, h, o); }, "symmetric");
  o = GptqOptions{};
  o.group = 48;
  expect_error([&] { gptq_quantize(w, h, o); }, "group");
  o = GptqOptions{};
  o.group = 32;
  o.block = 0;
  expect_error([&] { gptq_quantize(w, h, o); }, "block");
  o.block = 128;
  o.damp = -1;
  expect_error([&] { gptq_quantize(w, h, o); }, "damp");
  o.damp = 0.01;
  expect_error([&] { gptq_quantize(w, Tensor::zeros({in, in + 2}, DType::F32), o); }, "hessian");
  expect_error([&] { gptq_quantize(w, HessianAccumulator(in + 2), o); }, "hessian");
  std::vector<float> hv = h.to_floats();
  hv[5] = NAN;
  expect_error([&] { gptq_quantize(w, Tensor::from_floats({in, in}, hv), o); }, "hessian");
  o.group = -1;
  expect_error(
      [&] {
        gptq_quantize(Tensor::from_floats({2, 3}, normal(6, 9)), Tensor::zeros({3, 3}, DType::F32), o);
      },
      "shape");
}

}  // namespace
}  // namespace kite::quant
