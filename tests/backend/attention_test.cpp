// Causal GQA attention at every SIMD level against a float64 reference.
#include "backend/ops/attention.h"

#include <gtest/gtest.h>

#include <limits>

#include "backend/cpu/cpu_ops.h"
#include "backend_test_util.h"

namespace kite {
namespace {

struct AttnCase {
  int64_t n_q, q_start, n_kv, n_heads, n_kv_heads, hd;
};

// KV rows at or past q_start + n_q are set to NaN: reading them is a bug.
Tensor poison_tail(Tensor t, int64_t from) {
  std::vector<float> f = t.to_floats();
  const int64_t row = t.dim(1) * t.dim(2);
  for (size_t i = size_t(from * row); i < f.size(); ++i) f[i] = std::nanf("");
  return Tensor::from_floats(t.shape(), f);
}

TEST(Attention, MatchesFloat64ReferenceAtEverySimdLevel) {
  const std::vector<AttnCase> cases = {{1, 0, 1, 6, 2, 64},  {1, 37, 38, 6, 2, 64},    {1, 200, 260, 6, 2, 64},
                                       {5, 0, 5, 6, 2, 64},  {7, 10, 20, 6, 2, 17},    {33, 0, 33, 4, 4, 8},
                                       {3, 2, 5, 2, 1, 1},   {20, 100, 120, 6, 2, 64}, {9, 4, 13, 6, 3, 33},
                                       {64, 0, 64, 6, 2, 64}};
  uint32_t seed = 5000;
  for (const AttnCase& c : cases) {
    Tensor q = test::random_tensor({c.n_q, c.n_heads, c.hd}, DType::F32, ++seed, -2.0f, 2.0f);
    Tensor k = poison_tail(test::random_tensor({c.n_kv, c.n_kv_heads, c.hd}, DType::F32, ++seed, -2.0f, 2.0f),
                           c.q_start + c.n_q);
    Tensor v = poison_tail(test::random_tensor({c.n_kv, c.n_kv_heads, c.hd}, DType::F32, ++seed), c.q_start + c.n_q);
    const float scale = 1.0f / std::sqrt(float(c.hd));
    std::vector<double> want, err_scale;
    test::reference_attention(q, k, v, c.q_start, scale, want, err_scale);
    const std::string name = fmt::format("n_q={} q_start={} n_kv={} heads={}/{} hd={}", c.n_q, c.q_start, c.n_kv,
                                         c.n_heads, c.n_kv_heads, c.hd);
    for (cpu::SimdLevel level : test::simd_levels()) {
      Tensor out = test::nan_tensor({c.n_q, c.n_heads, c.hd});
      cpu::attention(q, k, v, c.q_start, scale, out, level);
      test::expect_close(out.to_floats(), want, err_scale, 2e-5, 1e-7, name + " simd=" + cpu::simd_name(level));
    }
    Tensor out = Tensor::empty({c.n_q, c.n_heads, c.hd}, DType::F32);
    ops::attention(q, k, v, c.q_start, scale, out);
    test::expect_close(out.to_floats(), want, err_scale, 2e-5, 1e-7, name + " via ops");
  }
}

TEST(Attention, CausalMaskIgnoresLaterKeys) {
  // Changing the K/V row at position p must leave every query before p
  // bit-identical and change the queries at or after p.
  const int64_t n = 12, nh = 6, nkv = 2, hd = 16, p = 7;
  Tensor q = test::random_tensor({n, nh, hd}, DType::F32, 1);
  Tensor k = test::random_tensor({n, nkv, hd}, DType::F32, 2);
  Tensor v = test::random_tensor({n, nkv, hd}, DType::F32, 3);
  Tensor out1 = Tensor::empty({n, nh, hd}, DType::F32), out2 = Tensor::empty({n, nh, hd}, DType::F32);
  ops::attention(q, k, v, 0, 0.25f, out1);
  std::vector<float> kf = k.to_floats(), vf = v.to_floats();
  for (int64_t t = 0; t < nkv * hd; ++t) {
    kf[size_t(p * nkv * hd + t)] += 3.0f;
    vf[size_t(p * nkv * hd + t)] -= 5.0f;
  }
  ops::attention(q, Tensor::from_floats(k.shape(), kf), Tensor::from_floats(v.shape(), vf), 0, 0.25f, out2);
  std::vector<float> a = out1.to_floats(), b = out2.to_floats();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t h = 0; h < nh; ++h) {
      bool same = true;
      for (int64_t t = 0; t < hd; ++t)
        same = same && a[size_t((i * nh + h) * hd + t)] == b[size_t((i * nh + h) * hd + t)];
      EXPECT_EQ(same, i < p) << "query " << i << " head " << h;
    }
}

TEST(Attention, DecodeStepEqualsLastRowOfPrefill) {
  // Query i of a prefill equals a one-query call with q_start = i.
  const int64_t n = 9, nh = 6, nkv = 2, hd = 64;
  Tensor q = test::random_tensor({n, nh, hd}, DType::F32, 11);
  Tensor k = test::random_tensor({n, nkv, hd}, DType::F32, 12);
  Tensor v = test::random_tensor({n, nkv, hd}, DType::F32, 13);
  Tensor full = Tensor::empty({n, nh, hd}, DType::F32);
  ops::attention(q, k, v, 0, 0.125f, full);
  for (int64_t i = 0; i < n; ++i) {
    Tensor qi = q.slice(0, i, i + 1);
    Tensor one = Tensor::empty({1, nh, hd}, DType::F32);
    ops::attention(qi, k.slice(0, 0, i + 1), v.slice(0, 0, i + 1), i, 0.125f, one);
    EXPECT_EQ(one.to_floats(), full.slice(0, i, i + 1).to_floats()) << "query " << i;
  }
}

}  // namespace
}  // namespace kite
