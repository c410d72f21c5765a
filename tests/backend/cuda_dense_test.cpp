// The CUDA dense kernels against the CPU ops (F32) on the same BF16-rounded
// inputs, the CUDA memory pool, and the dispatchers' checks on CUDA tensors.
// Skipped (not passed) without a CUDA device; scripts/device/run.sh runs them
// (ctest -R Cuda).
//
// Tolerances, per element; `ref` is the CPU op's F32 result on the same inputs,
// u = 2^-24 the F32 unit roundoff:
//  - A BF16 output is the GPU's F32 value rounded once to nearest even: off by
//    at most half a bf16 ulp, 2^-8 |value| (bf16 keeps an 8-bit significand).
//    Every BF16 bound below is that plus the F32 difference between the GPU's
//    and the CPU's formulas:
//  - add, embedding: none; bitwise tests.
//  - rope: the same F32 operations in the same order (no FMA contraction) and
//    cos/sin in F64 rounded to F32 on both sides, so bitwise equal but for a
//    rare F64 last-bit difference at an F32 rounding tie: >= 99.9% of elements
//    bitwise, all within 2 F32 ulps of (|x1| + |x2|) * factor.
//  - silu_mul: expf (<= 2 ulp) against the CPU's polynomial exp (~1 ulp), then
//    a division and a product on each side: 4e-6 |ref|, plus 1e-30 for gates
//    below -87 where the CPU clamps exp's argument (both results are ~1e-36).
//  - rms_norm, add_rms_norm: the sum of squares of d terms in a different order
//    (a tree of per-thread sums here, 16-lane or F64 sums there): each within
//    (d/16 + 32) u relative (positive terms), the inverse root halves that, and
//    (x * inv) * w adds 2 u: (d/16 + 64) u |ref| covers both sides.
//  - linear: both sides accumulate k products (exact in F32) in F32 in
//    different orders; rounding errors of such sums grow like sqrt(k) u times
//    the result's rms scale S = ||x_i|| ||w_j|| / sqrt(k). Bound:
//    32 sqrt(k) u S = 32 u ||x_i|| ||w_j||; the 32 covers tensor-core
//    accumulation that truncates instead of rounding, and the CPU's own error.
//    A wrong tile, layout or rounding shows up as errors of order S itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "backend/ops/ops.h"
#include "backend_test_util.h"
#include "core/error.h"
#include "core/parallel.h"

namespace kite {
namespace {

constexpr double kU = 1.0 / 16777216.0;  // 2^-24, F32 unit roundoff
constexpr double kBf16 = 1.0 / 256.0;    // 2^-8, bf16 round-to-nearest relative bound
const Device kGpu{DeviceKind::CUDA, 0};

#define SKIP_WITHOUT_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform values in [lo, hi) in `dtype` (F32 or BF16: rounded, so the tensor
// holds them exactly), fresh per seed and deterministic per (seed, index);
// filled in parallel (the Llama lm_head weight has 525M elements).
Tensor random_tensor(const Shape& shape, DType dtype, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  Tensor t = Tensor::empty(shape, dtype);
  const int64_t n = t.numel();
  void* data = t.data();
  const uint64_t base = splitmix(seed * 0x2545f4914f6cdd1dull);
  parallel_for(n, 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float f = lo + (hi - lo) * float(double(splitmix(base + uint64_t(i)) >> 40) / double(1 << 24));
      if (dtype == DType::BF16)
        static_cast<uint16_t*>(data)[i] = f32_to_bf16(f);
      else
        static_cast<float*>(data)[i] = f;
    }
  });
  return t;
}

// An F32 copy on the CPU (never a view of t: ops below run in place on it).
Tensor to_f32(const Tensor& t) { return t.dtype() == DType::F32 ? t.to(kCpu) : t.to_dtype(DType::F32); }

Tensor ids_tensor(const std::vector<int32_t>& v) { return test::i32_tensor({int64_t(v.size())}, v); }

// The raw 16-bit patterns of a BF16 tensor (any device).
std::vector<uint16_t> bf16_bits(const Tensor& t) {
  Tensor h = t.to(kCpu);
  const uint16_t* p = h.data_as<const uint16_t>();
  return std::vector<uint16_t>(p, p + h.numel());
}

// |got[i] - ref[i]| <= tol(i) for every i; reports the first failures and
// returns the largest err / tol (printed by callers to show the margin).
template <typename TolFn>
double expect_within(const std::vector<float>& got, const std::vector<float>& ref, TolFn tol, const std::string& what) {
  EXPECT_EQ(got.size(), ref.size()) << what;
  if (got.size() != ref.size()) return INFINITY;
  size_t bad = 0;
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(double(got[i]) - double(ref[i])), t = tol(i);
    if (!(err <= t)) {
      if (bad++ < 5)
        ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << ref[i] << " (err " << err
                      << " > tol " << t << ")";
    }
    if (t > 0) worst = std::max(worst, err / t);
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements out of tolerance";
  return worst;
}

// ---- linear ----------------------------------------------------------------

// Runs y = x w^T (+ b) on the GPU and as the CPU op on the same values, and
// checks the bound from the file comment. x_host: [n, k] BF16; w_host: [m, k]
// BF16 with w_dev its device copy; bias: [m] host BF16/F32 or undefined.
double check_linear(const Tensor& x_host, const Tensor& w_host, const Tensor& w_dev, const std::vector<double>& w_norm,
                    const Tensor& bias_host, DType y_dtype, const std::string& name) {
  const int64_t n = x_host.dim(0), k = x_host.dim(1), m = w_host.dim(0);
  const bool has_bias = bias_host.defined();
  Tensor x_dev = x_host.to(kGpu);
  Tensor b_dev = has_bias ? bias_host.to(kGpu) : Tensor();
  Tensor y_dev = Tensor::empty({n, m}, y_dtype, kGpu);
  ops::linear(x_dev, w_dev, has_bias ? &b_dev : nullptr, y_dev);
  const std::vector<float> got = y_dev.to_floats();

  Tensor y_ref = Tensor::empty({n, m}, DType::F32);
  ops::linear(to_f32(x_host), w_host, has_bias ? &bias_host : nullptr, y_ref);
  const std::vector<float> ref = y_ref.to_floats();

  std::vector<double> x_norm(size_t(n), 0.0);
  const std::vector<float> xf = x_host.to_floats();
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int64_t t = 0; t < k; ++t) s += double(xf[size_t(i * k + t)]) * xf[size_t(i * k + t)];
    x_norm[size_t(i)] = std::sqrt(s);
  }
  const std::vector<float> bf = has_bias ? bias_host.to_floats() : std::vector<float>();
  const double out_round = y_dtype == DType::BF16 ? kBf16 : 0.0;
  const double worst = expect_within(
      got, ref,
      [&](size_t idx) {
        const size_t i = idx / size_t(m), j = idx % size_t(m);
        const double b = has_bias ? std::abs(double(bf[j])) : 0.0;
        return out_round * std::abs(double(ref[idx])) + 32 * kU * x_norm[i] * w_norm[j] + 2 * kU * b;
      },
      name);
  std::printf("  [linear] %-60s max err/tol %.3f\n", name.c_str(), worst);
  return worst;
}

std::vector<double> row_norms(const Tensor& w) {
  const int64_t m = w.dim(0), k = w.dim(1);
  std::vector<double> out(static_cast<size_t>(m));
  const uint16_t* p = w.data_as<const uint16_t>();
  parallel_for(m, 64, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      double s = 0;
      for (int64_t t = 0; t < k; ++t) {
        const double v = bf16_to_f32(p[j * k + t]);
        s += v * v;
      }
      out[size_t(j)] = std::sqrt(s);
    }
  });
  return out;
}

TEST(CudaLinear, SmallAndOddShapesWithAndWithoutBias) {
  SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t n, k, m;
  };
  const std::vector<Case> cases = {{1, 8, 8}, {1, 64, 1},    {3, 16, 24},   {7, 64, 40},   {64, 384, 1000}, {5, 17, 9},
                                   {2, 1, 5}, {33, 130, 70}, {129, 256, 3}, {1, 1000, 37}, {300, 96, 200}};
  uint64_t seed = 100;
  for (const Case& c : cases) {
    Tensor w = random_tensor({c.m, c.k}, DType::BF16, ++seed);
    Tensor w_dev = w.to(kGpu);
    const std::vector<double> wn = row_norms(w);
    Tensor x = random_tensor({c.n, c.k}, DType::BF16, ++seed);
    for (DType yt : {DType::BF16, DType::F32}) {
      const std::string base = fmt::format("n={} k={} m={} y={}", c.n, c.k, c.m, dtype_name(yt));
      check_linear(x, w, w_dev, wn, Tensor(), yt, base);
      check_linear(x, w, w_dev, wn, random_tensor({c.m}, DType::BF16, ++seed), yt, base + " bias=BF16");
      if (yt == DType::F32)
        check_linear(x, w, w_dev, wn, random_tensor({c.m}, DType::F32, ++seed), yt, base + " bias=F32");
    }
  }
}

// Fused qkv projections with a bias (Qwen2-0.5B and Qwen2-7B shapes).
TEST(CudaLinear, Qwen2BiasShapes) {
  SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t k, m;
  };
  uint64_t seed = 300;
  for (const Case& c : {Case{896, 1152}, Case{3584, 4608}, Case{256, 64}}) {
    Tensor w = random_tensor({c.m, c.k}, DType::BF16, ++seed);
    Tensor w_dev = w.to(kGpu);
    const std::vector<double> wn = row_norms(w);
    Tensor b = random_tensor({c.m}, DType::BF16, ++seed);
    for (int64_t n : {1, 7, 129, 300}) {
      Tensor x = random_tensor({n, c.k}, DType::BF16, ++seed);
      check_linear(x, w, w_dev, wn, b, DType::BF16, fmt::format("qkv+bias n={} k={} m={}", n, c.k, c.m));
    }
  }
}

TEST(CudaLinear, Llama3_8BShapes) {
  SKIP_WITHOUT_CUDA();
  struct Shape2 {
    const char* name;
    int64_t k, m;
    DType y;
  };
  // qkv fused, o, gate_up fused, down (BF16 activations) and the lm_head
  // (F32 logits).
  const std::vector<Shape2> shapes = {{"qkv", 4096, 6144, DType::BF16},
                                      {"o", 4096, 4096, DType::BF16},
                                      {"gate_up", 4096, 28672, DType::BF16},
                                      {"down", 14336, 4096, DType::BF16},
                                      {"lm_head", 4096, 128256, DType::F32}};
  uint64_t seed = 500;
  for (const Shape2& s : shapes) {
    Tensor w = random_tensor({s.m, s.k}, DType::BF16, ++seed);
    Tensor w_dev = w.to(kGpu);
    const std::vector<double> wn = row_norms(w);
    for (int64_t n : {1, 7, 64, 256, 512}) {
      Tensor x = random_tensor({n, s.k}, DType::BF16, ++seed);
      check_linear(x, w, w_dev, wn, Tensor(), s.y, fmt::format("{} n={} k={} m={}", s.name, n, s.k, s.m));
    }
  }
}

TEST(CudaLinear, EmptyInnerDimensionGivesTheBias) {
  SKIP_WITHOUT_CUDA();
  Tensor x = Tensor::empty({3, 0}, DType::BF16, kGpu), w = Tensor::empty({5, 0}, DType::BF16, kGpu);
  Tensor b = random_tensor({5}, DType::BF16, 7);
  Tensor bd = b.to(kGpu);
  for (DType yt : {DType::BF16, DType::F32}) {
    Tensor y = Tensor::empty({3, 5}, yt, kGpu);
    ops::linear(x, w, &bd, y);
    const std::vector<float> got = y.to_floats(), bf = b.to_floats();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], bf[i % 5]) << dtype_name(yt) << " " << i;
    ops::linear(x, w, nullptr, y);
    for (float v : y.to_floats()) ASSERT_EQ(v, 0.0f) << dtype_name(yt);
  }
}

TEST(CudaLinear, RepeatedCallsAreDeterministicAndAllocateNothing) {
  SKIP_WITHOUT_CUDA();
  Tensor x = random_tensor({37, 512}, DType::BF16, 1).to(kGpu);
  Tensor w = random_tensor({384, 512}, DType::BF16, 2).to(kGpu);
  Tensor y = Tensor::empty({37, 384}, DType::BF16, kGpu);
  ops::linear(x, w, nullptr, y);  // warm-up: handle, workspace, plan
  const std::vector<uint16_t> first = bf16_bits(y);
  const MemoryStats s0 = memory_stats(kGpu);
  for (int r = 0; r < 20; ++r) ops::linear(x, w, nullptr, y);
  const MemoryStats s1 = memory_stats(kGpu);
  EXPECT_EQ(bf16_bits(y), first);
  EXPECT_EQ(s1.num_allocs, s0.num_allocs);
  EXPECT_EQ(s1.num_device_mallocs, s0.num_device_mallocs);
}

// ---- elementwise -------------------------------------------------------------

const std::vector<std::pair<int64_t, int64_t>> kRows = {{1, 1},    {1, 7},     {3, 17},     {2, 8},      {5, 4096},
                                                        {4, 5000}, {7, 14336}, {256, 4096}, {256, 14336}};

TEST(CudaAdd, Bf16IsTheRoundedF32SumBitwise) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 1000;
  for (auto [n, d] : kRows) {
    Tensor a = random_tensor({n, d}, DType::BF16, ++seed, -4, 4), b = random_tensor({n, d}, DType::BF16, ++seed, -4, 4);
    Tensor sum = Tensor::empty({n, d}, DType::F32);
    ops::add(to_f32(a), to_f32(b), sum);  // the CPU op
    const std::vector<uint16_t> want = bf16_bits(sum.to_dtype(DType::BF16));
    Tensor ad = a.to(kGpu), bd = b.to(kGpu), out = Tensor::empty({n, d}, DType::BF16, kGpu);
    ops::add(ad, bd, out);
    ASSERT_EQ(bf16_bits(out), want) << n << "x" << d;
    ops::add(ad, bd, ad);  // in place
    ASSERT_EQ(bf16_bits(ad), want) << n << "x" << d << " in place";
    if (n * d > 1) {  // views off 16-byte alignment take the scalar path
      const int64_t len = n * d - 1;
      Tensor av = a.to(kGpu).reshape({n * d}).slice(0, 1, n * d), bv = b.to(kGpu).reshape({n * d}).slice(0, 1, n * d);
      Tensor ov = Tensor::empty({len}, DType::BF16, kGpu);
      ops::add(av, bv, ov);
      const std::vector<uint16_t> got = bf16_bits(ov);
      ASSERT_TRUE(std::equal(got.begin(), got.end(), want.begin() + 1)) << n << "x" << d << " unaligned";
    }
  }
}

TEST(CudaSiluMul, MatchesTheCpuOp) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 2000;
  for (auto [n, d] : kRows) {
    for (DType dt : {DType::BF16, DType::F32}) {
      Tensor g = random_tensor({n, d}, dt, ++seed, -20, 20), u = random_tensor({n, d}, dt, ++seed, -3, 3);
      Tensor ref = Tensor::empty({n, d}, DType::F32);
      ops::silu_mul(to_f32(g), to_f32(u), ref);
      const std::vector<float> rf = ref.to_floats();
      const double round = dt == DType::BF16 ? kBf16 : 0.0;
      auto tol = [&](size_t i) { return (round + 4e-6) * std::abs(double(rf[i])) + 1e-30; };
      Tensor gd = g.to(kGpu), ud = u.to(kGpu), out = Tensor::empty({n, d}, dt, kGpu);
      const std::string name = fmt::format("{}x{} {}", n, d, dtype_name(dt));
      ops::silu_mul(gd, ud, out);
      expect_within(out.to_floats(), rf, tol, name);
      ops::silu_mul(gd, ud, gd);  // in place over gate
      expect_within(gd.to_floats(), rf, tol, name + " in place");
    }
  }
}

// silu_mul_fused on a [n, 2f] gate/up tensor: the CPU op's values, within the
// silu_mul tolerance; odd f takes the scalar path, f % 8 == 0 the packed one.
TEST(CudaSiluMulFused, MatchesTheCpuOp) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 2500;
  const std::pair<int64_t, int64_t> rows[] = {{1, 1}, {1, 8}, {3, 17}, {5, 64}, {7, 1000}, {33, 129}, {256, 14336}};
  for (auto [n, f] : rows) {
    for (DType dt : {DType::BF16, DType::F32}) {
      Tensor gu = random_tensor({n, 2 * f}, dt, ++seed, -20, 20);
      Tensor ref = Tensor::empty({n, f}, DType::F32);
      ops::silu_mul_fused(to_f32(gu), ref);
      const std::vector<float> rf = ref.to_floats();
      const double round = dt == DType::BF16 ? kBf16 : 0.0;
      auto tol = [&](size_t i) { return (round + 4e-6) * std::abs(double(rf[i])) + 1e-30; };
      Tensor out = Tensor::empty({n, f}, dt, kGpu);
      ops::silu_mul_fused(gu.to(kGpu), out);
      expect_within(out.to_floats(), rf, tol, fmt::format("{}x{} {}", n, f, dtype_name(dt)));
    }
  }
}

TEST(CudaSiluMul, ExtremeGatesStayFinite) {
  SKIP_WITHOUT_CUDA();
  Tensor g = Tensor::from_floats({1, 6}, {-200.0f, -88.0f, -10.0f, 10.0f, 88.0f, 200.0f}).to_dtype(DType::BF16);
  Tensor u = Tensor::from_floats({1, 6}, {1, 1, 1, 1, 1, 1}).to_dtype(DType::BF16);
  Tensor out = Tensor::empty({1, 6}, DType::BF16, kGpu);
  ops::silu_mul(g.to(kGpu), u.to(kGpu), out);
  const std::vector<float> o = out.to_floats();
  EXPECT_EQ(o[0], 0.0f);
  EXPECT_NEAR(o[1], 0.0f, 1e-30f);
  const double v2 = -10.0 / (1.0 + std::exp(10.0)), v3 = 10.0 / (1.0 + std::exp(-10.0));
  EXPECT_NEAR(o[2], v2, (kBf16 + 4e-6) * std::abs(v2));
  EXPECT_NEAR(o[3], v3, (kBf16 + 4e-6) * std::abs(v3));
  EXPECT_EQ(o[4], 88.0f);
  EXPECT_EQ(o[5], 200.0f);
}

// ---- rms_norm and add_rms_norm ---------------------------------------------------

double norm_rtol(int64_t d) { return double(d / 16 + 64) * kU; }

TEST(CudaRmsNorm, MatchesTheCpuOp) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 3000;
  for (auto [n, d] : kRows)
    for (DType dt : {DType::BF16, DType::F32})
      for (DType wt : {DType::BF16, DType::F32}) {
        Tensor x = random_tensor({n, d}, dt, ++seed, -30, 30), w = random_tensor({d}, wt, ++seed, 0.5f, 2.0f);
        const float eps = 1e-5f;
        Tensor ref = Tensor::empty({n, d}, DType::F32);
        ops::rms_norm(to_f32(x), w, eps, ref);
        const std::vector<float> rf = ref.to_floats();
        const double rtol = (dt == DType::BF16 ? kBf16 : 0.0) + norm_rtol(d);
        auto tol = [&](size_t i) { return rtol * std::abs(double(rf[i])); };
        const std::string name = fmt::format("{}x{} x={} w={}", n, d, dtype_name(dt), dtype_name(wt));
        Tensor xd = x.to(kGpu), wd = w.to(kGpu), out = Tensor::empty({n, d}, dt, kGpu);
        ops::rms_norm(xd, wd, eps, out);
        const double worst = expect_within(out.to_floats(), rf, tol, name);
        ops::rms_norm(xd, wd, eps, xd);  // in place
        expect_within(xd.to_floats(), rf, tol, name + " in place");
        if (n * d >= 256 * 4096) std::printf("  [rms_norm] %-40s max err/tol %.3f\n", name.c_str(), worst);
      }
}

TEST(CudaRmsNorm, UnalignedRowsTakeTheScalarPath) {
  SKIP_WITHOUT_CUDA();
  // Rows of 4095 BF16 elements: every other row starts off 16-byte alignment.
  Tensor x = random_tensor({6, 4095}, DType::BF16, 31, -5, 5), w = random_tensor({4095}, DType::BF16, 32, 0.5f, 2.0f);
  Tensor ref = Tensor::empty({6, 4095}, DType::F32);
  ops::rms_norm(to_f32(x), w, 1e-6f, ref);
  const std::vector<float> rf = ref.to_floats();
  Tensor out = Tensor::empty({6, 4095}, DType::BF16, kGpu);
  ops::rms_norm(x.to(kGpu), w.to(kGpu), 1e-6f, out);
  expect_within(
      out.to_floats(), rf, [&](size_t i) { return (kBf16 + norm_rtol(4095)) * std::abs(double(rf[i])); },
      "6x4095 BF16");
}

TEST(CudaAddRmsNorm, EqualsAddThenRmsNorm) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 4000;
  for (auto [n, d] : kRows)
    for (DType dt : {DType::BF16, DType::F32})
      for (DType wt : {DType::BF16, DType::F32}) {
        Tensor x = random_tensor({n, d}, dt, ++seed, -3, 3), res = random_tensor({n, d}, dt, ++seed, -30, 30);
        Tensor w = random_tensor({d}, wt, ++seed, 0.5f, 2.0f);
        const float eps = 1e-5f;
        // The reference: the CPU add, rounded to the residual's dtype as the
        // GPU stores it, then the CPU rms_norm of that.
        Tensor sum = Tensor::empty({n, d}, DType::F32);
        ops::add(to_f32(res), to_f32(x), sum);
        Tensor res_want = sum.to_dtype(dt);
        Tensor ref = Tensor::empty({n, d}, DType::F32);
        ops::rms_norm(to_f32(res_want), w, eps, ref);
        const std::vector<float> rf = ref.to_floats();
        const double rtol = (dt == DType::BF16 ? kBf16 : 0.0) + norm_rtol(d);
        auto tol = [&](size_t i) { return rtol * std::abs(double(rf[i])); };
        const std::string name = fmt::format("{}x{} x={} w={}", n, d, dtype_name(dt), dtype_name(wt));

        Tensor xd = x.to(kGpu), rd = res.to(kGpu), wd = w.to(kGpu), out = Tensor::empty({n, d}, dt, kGpu);
        ops::add_rms_norm(xd, rd, wd, eps, out);
        EXPECT_EQ(rd.to_floats(), res_want.to_floats()) << name << ": residual";
        expect_within(out.to_floats(), rf, tol, name);
        // out over x, a fresh residual.
        Tensor rd2 = res.to(kGpu);
        ops::add_rms_norm(xd, rd2, wd, eps, xd);
        EXPECT_EQ(rd2.to_floats(), res_want.to_floats()) << name << ": residual (out = x)";
        expect_within(xd.to_floats(), rf, tol, name + " out = x");
      }
}

// ---- rope ------------------------------------------------------------------------

TEST(CudaRope, MatchesTheCpuOp) {
  SKIP_WITHOUT_CUDA();
  struct Case {
    int64_t n, heads, hd, r;
    float factor;
  };
  // Llama 3 q (32 heads) and k (8 heads) at head_dim 128, partial rotary, an
  // attention factor != 1, odd sizes.
  const std::vector<Case> cases = {{1, 32, 128, 64, 1.0f}, {7, 8, 128, 64, 1.0f}, {256, 32, 128, 64, 1.0f},
                                   {5, 2, 10, 5, 1.0f},    {4, 3, 16, 4, 1.0f},   {6, 1, 8, 4, 1.2f},
                                   {33, 4, 64, 16, 0.75f}};
  uint64_t seed = 5000;
  std::mt19937 rng(9);
  for (const Case& c : cases)
    for (DType dt : {DType::BF16, DType::F32}) {
      Tensor x = random_tensor({c.n, c.heads, c.hd}, dt, ++seed, -2, 2);
      std::vector<float> freq(size_t(c.r));
      for (int64_t j = 0; j < c.r; ++j) freq[size_t(j)] = float(std::pow(500000.0, -2.0 * double(j) / double(2 * c.r)));
      std::vector<int32_t> pos(size_t(c.n));
      for (auto& p : pos) p = int32_t(rng() % 131072);
      if (c.n > 1) pos[1] = 0;
      Tensor inv_freq = Tensor::from_floats({c.r}, freq), positions = ids_tensor(pos);
      Tensor ref = to_f32(x);
      ops::rope(ref, positions, inv_freq, c.factor);
      const std::vector<float> rf = ref.to_floats(), xf = x.to_floats();
      Tensor xd = x.to(kGpu);
      ops::rope(xd, positions.to(kGpu), inv_freq.to(kGpu), c.factor);
      const std::vector<float> got = xd.to_floats();
      // Bitwise (after rounding the CPU's F32 to the dtype) for almost all elements.
      size_t exact = 0;
      for (size_t i = 0; i < got.size(); ++i)
        exact += got[i] == (dt == DType::BF16 ? bf16_to_f32(f32_to_bf16(rf[i])) : rf[i]);
      const std::string name =
          fmt::format("n={} heads={} hd={} r={} factor={} {}", c.n, c.heads, c.hd, c.r, c.factor, dtype_name(dt));
      EXPECT_GE(double(exact), 0.999 * double(got.size())) << name << ": " << exact << " of " << got.size();
      const double round = dt == DType::BF16 ? kBf16 : 0.0;
      expect_within(
          got, rf,
          [&](size_t idx) {
            const size_t j = idx % size_t(c.hd), row = idx - j;
            if (int64_t(j) >= 2 * c.r) return 0.0;  // untouched dims stay exact
            const size_t j1 = int64_t(j) < c.r ? j : j - size_t(c.r);
            const double scale =
                (std::abs(double(xf[row + j1])) + std::abs(double(xf[row + j1 + size_t(c.r)]))) * double(c.factor);
            return round * std::abs(double(rf[idx])) + 4 * kU * scale;
          },
          name);
    }
}

// A 2-D inv_freq [n, r] (per-token frequencies, dynamic NTK): bitwise the
// GPU op on each token with its row as a 1-D inv_freq, and the CPU's 2-D op
// (rounded to the dtype) on at least 99.9% of the elements, as above.
TEST(CudaRope, PerTokenInvFreqEqualsOneCallPerToken) {
  SKIP_WITHOUT_CUDA();
  const int64_t n = 37, heads = 8, hd = 128, r = 48;  // partial rotary
  const float factor = 0.9f;
  std::mt19937 rng(77);
  std::vector<float> freq(size_t(n * r));
  for (int64_t i = 0; i < n; ++i) {
    const double base = 500000.0 * (1.0 + double(rng() % 64));
    for (int64_t j = 0; j < r; ++j) freq[size_t(i * r + j)] = float(std::pow(base, -2.0 * double(j) / double(hd)));
  }
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (auto& p : pos) p = int32_t(rng() % 131072);
  const Tensor inv_freq = Tensor::from_floats({n, r}, freq), positions = ids_tensor(pos);
  const Tensor gfreq = inv_freq.to(kGpu), gpos = positions.to(kGpu);
  for (DType dt : {DType::BF16, DType::F32}) {
    const Tensor x = random_tensor({n, heads, hd}, dt, 5100, -2, 2);
    Tensor got = x.to(kGpu), want = x.to(kGpu);
    ops::rope(got, gpos, gfreq, factor);
    for (int64_t i = 0; i < n; ++i) {
      Tensor xi = want.slice(0, i, i + 1);
      ops::rope(xi, gpos.slice(0, i, i + 1), gfreq.select(i), factor);
    }
    const std::string name = fmt::format("per-token inv_freq {}", dtype_name(dt));
    EXPECT_EQ(got.to_floats(), want.to_floats()) << name;
    Tensor ref = to_f32(x);
    ops::rope(ref, positions, inv_freq, factor);
    const std::vector<float> rf = ref.to_floats(), g = got.to_floats();
    size_t exact = 0;
    for (size_t i = 0; i < g.size(); ++i)
      exact += g[i] == (dt == DType::BF16 ? bf16_to_f32(f32_to_bf16(rf[i])) : rf[i]);
    EXPECT_GE(double(exact), 0.999 * double(g.size())) << name << ": " << exact << " of " << g.size();
  }
  // inv_freq rows must match the tokens.
  Tensor xg = random_tensor({n, heads, hd}, DType::BF16, 5101).to(kGpu);
  test::expect_op_error("rope", "inv_freq", [&] { ops::rope(xg, gpos, gfreq.slice(0, 0, n - 1), factor); });
}

// ---- embedding ------------------------------------------------------------

TEST(CudaEmbedding, CopiesAndConvertsRows) {
  SKIP_WITHOUT_CUDA();
  const std::vector<int32_t> id_list = {0, 999, 3, 3, 17, 0, 998, 500};
  Tensor ids = ids_tensor(id_list).to(kGpu);
  for (int64_t d : {1, 7, 8, 4096})
    for (DType tt : {DType::BF16, DType::F32})
      for (DType ot : {DType::BF16, DType::F32}) {
        Tensor table = random_tensor({1000, d}, tt, uint64_t(6000 + d));
        Tensor out = Tensor::empty({int64_t(id_list.size()), d}, ot, kGpu);
        ops::embedding(table.to(kGpu), ids, out);
        // Row copies, rounded to nearest even when F32 goes to BF16.
        Tensor want = Tensor::empty({int64_t(id_list.size()), d}, DType::F32);
        ops::embedding(table, ids.to(kCpu), want);
        const std::vector<float> wf = want.to_floats();
        std::vector<float> expect = wf;
        if (ot == DType::BF16)
          for (float& v : expect) v = bf16_to_f32(f32_to_bf16(v));
        ASSERT_EQ(out.to_floats(), expect) << "d=" << d << " " << dtype_name(tt) << "->" << dtype_name(ot);
      }
}

// ---- memory pool ----------------------------------------------------------

TEST(CudaMemoryPool, ReusesBlocksWithoutNewDeviceAllocations) {
  SKIP_WITHOUT_CUDA();
  const std::vector<int64_t> sizes = {1,       100,           512,     513,     4096,     (1 << 20) - 7,
                                      1 << 20, (1 << 20) + 1, 3 << 20, 9 << 20, 11 << 20, 64 << 20};
  auto pattern = [&] {
    std::vector<Tensor> live;
    for (int64_t s : sizes) live.push_back(Tensor::empty({s}, DType::U8, kGpu));
    for (size_t i = 0; i < live.size(); i += 2) live[i] = Tensor();  // free every other one early
    for (int64_t s : sizes) live.push_back(Tensor::empty({s / 2 + 1}, DType::U8, kGpu));
  };
  for (int r = 0; r < 3; ++r) pattern();  // warm-up: the segments this pattern needs
  const MemoryStats s0 = memory_stats(kGpu);
  for (int r = 0; r < 20; ++r) pattern();
  const MemoryStats s1 = memory_stats(kGpu);
  EXPECT_EQ(s1.num_device_mallocs, s0.num_device_mallocs);
  EXPECT_EQ(s1.bytes_reserved, s0.bytes_reserved);
  EXPECT_EQ(s1.bytes_in_use, s0.bytes_in_use);
  EXPECT_EQ(s1.bytes_requested, s0.bytes_requested);
  EXPECT_EQ(s1.num_allocs, s0.num_allocs + 20 * 2 * sizes.size());
}

TEST(CudaMemoryPool, StatsAreConsistent) {
  SKIP_WITHOUT_CUDA();
  const MemoryStats s0 = memory_stats(kGpu);
  EXPECT_GE(s0.bytes_reserved, s0.bytes_in_use);
  EXPECT_GE(s0.bytes_in_use, s0.bytes_requested);
  {
    Tensor t = Tensor::empty({1000}, DType::U8, kGpu);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data()) % 512, 0u);
    const MemoryStats s1 = memory_stats(kGpu);
    EXPECT_EQ(s1.bytes_in_use - s0.bytes_in_use, 1024u);  // rounded to 512-byte bins
    EXPECT_EQ(s1.bytes_requested - s0.bytes_requested, 1000u);
    EXPECT_EQ(s1.num_allocs, s0.num_allocs + 1);
    EXPECT_GE(s1.bytes_reserved, s1.bytes_in_use);
    EXPECT_GE(s1.peak_bytes_in_use, s1.bytes_in_use);
    Tensor z = Tensor::zeros({0}, DType::F32, kGpu);  // empty tensors get a minimal block
    EXPECT_EQ(memory_stats(kGpu).bytes_in_use - s1.bytes_in_use, 512u);
  }
  EXPECT_EQ(memory_stats(kGpu).bytes_in_use, s0.bytes_in_use);

  reset_peak_memory(kGpu);
  EXPECT_EQ(memory_stats(kGpu).peak_bytes_in_use, s0.bytes_in_use);
  const size_t big = size_t(200) << 20;
  const size_t free_before = device_free_memory(kGpu);
  {
    Tensor t = Tensor::empty({int64_t(big)}, DType::U8, kGpu);
    const MemoryStats s2 = memory_stats(kGpu);
    EXPECT_EQ(s2.bytes_in_use, s0.bytes_in_use + big);
    EXPECT_EQ(s2.peak_bytes_in_use, s2.bytes_in_use);
  }
  const MemoryStats s3 = memory_stats(kGpu);
  EXPECT_EQ(s3.bytes_in_use, s0.bytes_in_use);
  EXPECT_EQ(s3.peak_bytes_in_use, s0.bytes_in_use + big);  // the peak remembers
  EXPECT_GE(s3.bytes_reserved, s3.bytes_in_use + big);     // the block stays cached
  empty_cache(kGpu);
  const MemoryStats s4 = memory_stats(kGpu);
  EXPECT_LE(s4.bytes_reserved + big, s3.bytes_reserved);
  EXPECT_GT(s4.num_device_frees, s3.num_device_frees);
  EXPECT_EQ(s4.bytes_in_use, s0.bytes_in_use);
  EXPECT_GE(device_free_memory(kGpu) + (size_t(16) << 20), free_before);
  EXPECT_GT(device_total_memory(kGpu), size_t(1) << 30);
  EXPECT_LE(device_free_memory(kGpu), device_total_memory(kGpu));
}

TEST(CudaMemoryPool, ConcurrentAllocationsNeverOverlap) {
  SKIP_WITHOUT_CUDA();
  const MemoryStats s0 = memory_stats(kGpu);
  constexpr int kThreads = 8, kSteps = 400;
  std::mutex mu;
  std::vector<std::pair<uintptr_t, size_t>> ranges;  // live at the end, all threads
  std::vector<std::vector<Tensor>> kept(kThreads);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      try {
        std::mt19937 rng(uint32_t(100 + t));
        std::vector<Tensor>& live = kept[size_t(t)];
        for (int s = 0; s < kSteps; ++s) {
          const int64_t size = rng() % 8 == 0 ? int64_t(rng() % (12 << 20)) : int64_t(rng() % 70000);
          live.push_back(rng() % 4 == 0 ? Tensor::zeros({size}, DType::U8, kGpu)
                                        : Tensor::empty({size}, DType::U8, kGpu));
          if (live.size() > 24 || rng() % 2) live.erase(live.begin() + std::ptrdiff_t(rng() % live.size()));
        }
        std::lock_guard<std::mutex> lock(mu);
        for (const Tensor& x : live) ranges.emplace_back(reinterpret_cast<uintptr_t>(x.data()), x.nbytes());
      } catch (...) {
        ++errors;
      }
    });
  for (auto& th : threads) th.join();
  ASSERT_EQ(errors.load(), 0);
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    EXPECT_LE(ranges[i - 1].first + std::max<size_t>(ranges[i - 1].second, 1), ranges[i].first) << i;
  size_t live_bytes = 0;
  for (auto& r : ranges) live_bytes += r.second;
  EXPECT_GE(memory_stats(kGpu).bytes_requested, s0.bytes_requested + live_bytes);
  kept.clear();
  synchronize(kGpu);
  const MemoryStats s1 = memory_stats(kGpu);
  EXPECT_EQ(s1.bytes_in_use, s0.bytes_in_use);
  EXPECT_EQ(s1.bytes_requested, s0.bytes_requested);
  EXPECT_EQ(s1.num_allocs, s0.num_allocs + uint64_t(kThreads * kSteps));
}

TEST(CudaMemoryPool, UnknownDeviceIsAnError) {
  SKIP_WITHOUT_CUDA();
  EXPECT_THROW(memory_stats(Device{DeviceKind::CUDA, 99}), Error);
  EXPECT_THROW(Tensor::empty({4}, DType::F32, Device{DeviceKind::CUDA, 99}), Error);
}

// ---- bad input ----------------------------------------------------------------

TEST(CudaOpChecks, DtypeMixesAndShapeMismatchesAreErrors) {
  SKIP_WITHOUT_CUDA();
  using test::expect_op_error;
  auto bf = [](const Shape& s) { return Tensor::zeros(s, DType::BF16, kGpu); };
  auto f32 = [](const Shape& s) { return Tensor::zeros(s, DType::F32, kGpu); };
  Tensor x = bf({2, 8}), w = bf({4, 8}), y = bf({2, 4});
  EXPECT_NO_THROW(ops::linear(x, w, nullptr, y));
  expect_op_error("linear", "x", [&] { ops::linear(f32({2, 8}), w, nullptr, y); });
  expect_op_error("linear", "w", [&] { ops::linear(x, f32({4, 8}), nullptr, y); });
  expect_op_error("linear", "w", [&] { ops::linear(x, bf({4, 7}), nullptr, y); });
  expect_op_error("linear", "w", [&] { ops::linear(x, Tensor::zeros({4, 8}, DType::BF16), nullptr, y); });  // on cpu
  expect_op_error("linear", "y", [&] {
    Tensor y2 = Tensor::zeros({2, 4}, DType::F16, kGpu);
    ops::linear(x, w, nullptr, y2);
  });
  expect_op_error("linear", "y", [&] {
    Tensor y2 = bf({3, 4});
    ops::linear(x, w, nullptr, y2);
  });
  Tensor fb = f32({4});
  expect_op_error("linear", "bias", [&] { ops::linear(x, w, &fb, y); });  // F32 bias, BF16 y
  Tensor b5 = bf({5});
  expect_op_error("linear", "bias", [&] { ops::linear(x, w, &b5, y); });

  Tensor wn = bf({8}), out = bf({2, 8});
  expect_op_error("rms_norm", "out", [&] {
    Tensor o = f32({2, 8});
    ops::rms_norm(x, wn, 1e-5f, o);
  });
  expect_op_error("rms_norm", "weight", [&] { ops::rms_norm(x, Tensor::zeros({8}, DType::F16, kGpu), 1e-5f, out); });
  expect_op_error("rms_norm", "weight", [&] { ops::rms_norm(x, bf({7}), 1e-5f, out); });

  Tensor res = bf({2, 8});
  EXPECT_NO_THROW(ops::add_rms_norm(x, res, wn, 1e-5f, out));
  expect_op_error("add_rms_norm", "residual", [&] {
    Tensor r = f32({2, 8});
    ops::add_rms_norm(x, r, wn, 1e-5f, out);
  });
  expect_op_error("add_rms_norm", "residual", [&] {
    Tensor r = bf({3, 8});
    ops::add_rms_norm(x, r, wn, 1e-5f, out);
  });
  expect_op_error("add_rms_norm", "out", [&] { ops::add_rms_norm(x, res, wn, 1e-5f, res); });
  expect_op_error("add_rms_norm", "residual", [&] { ops::add_rms_norm(x, x, wn, 1e-5f, out); });
  expect_op_error("add_rms_norm", "eps", [&] { ops::add_rms_norm(x, res, wn, -1.0f, out); });

  expect_op_error("silu_mul", "up", [&] { ops::silu_mul(x, f32({2, 8}), out); });
  expect_op_error("silu_mul", "out", [&] {
    Tensor o = bf({2, 9});
    ops::silu_mul(x, x, o);
  });
  expect_op_error("add", "a", [&] { ops::add(Tensor::zeros({2, 8}, DType::F16, kGpu), x, out); });
  expect_op_error("add", "out", [&] {
    Tensor o = f32({2, 8});
    ops::add(x, x, o);
  });
  expect_op_error("add", "b", [&] { ops::add(x, Tensor::zeros({2, 8}, DType::BF16), out); });  // b on the cpu

  Tensor q = bf({3, 2, 8}), freq = f32({4});
  Tensor pos = ids_tensor({0, 1, 2}).to(kGpu);
  EXPECT_NO_THROW(ops::rope(q, pos, freq, 1.0f));
  expect_op_error("rope", "x", [&] {
    Tensor q16 = Tensor::zeros({3, 2, 8}, DType::F16, kGpu);
    ops::rope(q16, pos, freq, 1.0f);
  });
  expect_op_error("rope", "inv_freq", [&] { ops::rope(q, pos, bf({4}), 1.0f); });

  Tensor table = bf({10, 8}), ids = ids_tensor({1, 10}).to(kGpu), eo = bf({2, 8});
  expect_op_error("embedding", "ids", [&] { ops::embedding(table, ids, eo); });
  expect_op_error("embedding", "out", [&] {
    Tensor o = Tensor::zeros({2, 8}, DType::F16, kGpu);
    ops::embedding(table, ids_tensor({1, 2}).to(kGpu), o);
  });
}

}  // namespace
}  // namespace kite
