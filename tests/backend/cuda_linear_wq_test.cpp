// CUDA's weight-only quantized linear (backend/cuda/linear_wq_kernel.cpp,
// "cuda_wq_a16": Int4 and Int8 weights, BF16 activations) through Linear,
// against a float64 reference y = x @ dequantize(W)^T + b on fresh random
// data (codes, scales, zeros, permutations, bias, x), outputs poisoned with
// NaN before every run. Skipped (not passed) without a CUDA device;
// scripts/device/run.sh runs them (ctest -R Cuda).
//
// Inputs: x is BF16 (random values rounded to BF16, so the device and the
// reference see the same x); W = dequantize(w) is exact in F32 (codes times
// F32 scales, minus F32 zeros); bias F32. The reference sums in float64.
//
// Tolerance per output element (m, o), u = 2^-24, K = in:
//  - n <= 16 (the GEMV path): the kernel computes W bitwise as dequantize()
//    does and each product x * w exactly inside an F32 FMA, so its only
//    errors are (a) F32 accumulation over K terms in some order, bounded as in
//    cuda_dense_test.cpp by 32 sqrt(K) u ||x_m|| ||w_o|| (rounding errors of
//    such sums grow like sqrt(K) u times the rms scale ||x|| ||w|| / sqrt(K);
//    32 covers the order and our own reference), plus 2 u |b| for the F32 bias
//    add, and (b) one rounding to BF16: <= 2^-9 |y|, allowed as 2^-8 |ref|.
//    This is tight enough that one wrong group of 32 scales, zeros or
//    permuted columns fails it.
//  - n > 16 (dequantize to BF16, then cuBLASLt, then the bias): W rounded to
//    BF16 (each |dw| <= 2^-9 |w|, so <= 2^-9 sum_j |x_j w_j|), the product
//    rounded to BF16 (<= 2^-9 |x w| <= 2^-9 sum |x w|) and the bias added and
//    rounded again (<= 2^-9 (sum |x w| + |b|)). We allow
//    2^-8 (sum_j |x_j w_j| + |b|) plus the accumulation term above: the
//    worst case of the three is 1.5 times that, but the W term is a sum of K
//    independent signed errors (about sqrt(K) below its bound) and |x w| is
//    about sqrt(K) below sum |x w|, so real errors stay far inside.
//  F32 outputs (logits) skip the last rounding; the same bounds hold.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/linear.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/quant_weight.h"

namespace kite {
namespace {

constexpr double kU = 1.0 / 16777216.0;  // 2^-24, F32 unit roundoff
constexpr double kBf16 = 1.0 / 256.0;    // 2^-8
// linear_wq_kernel.cpp's kGemvMaxN: the GEMV runs n <= this (tighter bound).
constexpr int64_t kGemvMaxN = 16;
constexpr std::string_view kKernel = "cuda_wq_a16";
const Device kGpu{DeviceKind::CUDA, 0};

#define SKIP_WITHOUT_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device"

struct Config {
  QuantScheme scheme;
  int64_t out, in, group;  // group == in: per channel
  bool asym;               // Int4: random fractional zeros (else all 8)
  bool act_order;          // a random permutation
  bool bias;
};

std::string describe(const Config& c) {
  std::string s = std::string(quant_scheme_name(c.scheme)) + " [" + std::to_string(c.out) + " x " +
                  std::to_string(c.in) + "] " + (c.group == c.in ? "per-channel" : "g" + std::to_string(c.group));
  if (c.asym) s += " asym";
  if (c.act_order) s += " act-order";
  if (c.bias) s += " bias";
  return s;
}

// A random weight in Kite's layout (core/quant_weight.h). Bytes filled in
// parallel (the gate_up weight has 58M of them), deterministic per seed.
QuantWeight random_weight(const Config& c, uint64_t seed) {
  QuantWeight w;
  w.scheme = c.scheme;
  w.out = c.out;
  w.in = c.in;
  w.group = c.group;
  const int64_t ngroups = c.in / c.group;
  if (c.scheme == QuantScheme::Int4) {
    w.qdata = Tensor::empty({c.out, c.in / 2}, DType::U8);
  } else {
    w.qdata = Tensor::empty({c.out, c.in}, DType::I8);
  }
  const int64_t nbytes = int64_t(w.qdata.nbytes());
  auto* q = static_cast<uint8_t*>(w.qdata.data());
  const bool int8 = c.scheme == QuantScheme::Int8;
  parallel_for(nbytes, 1 << 16, [&](int64_t b, int64_t e) {
    std::mt19937_64 rng(seed * 1000003u + uint64_t(b));
    for (int64_t i = b; i < e; ++i) q[i] = int8 ? uint8_t(int8_t(int(rng() % 255) - 127)) : uint8_t(rng() & 0xFF);
  });
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f), zero(0.0f, 15.0f);
  w.scales = Tensor::empty({c.out, ngroups}, DType::F32);
  for (int64_t i = 0; i < c.out * ngroups; ++i) w.scales.data_as<float>()[i] = scale(rng);
  if (c.scheme == QuantScheme::Int4) {
    w.zeros = Tensor::empty({c.out, ngroups}, DType::F32);
    for (int64_t i = 0; i < c.out * ngroups; ++i) w.zeros.data_as<float>()[i] = c.asym ? zero(rng) : 8.0f;
  }
  if (c.act_order) {
    std::vector<int32_t> p(size_t(c.in));
    std::iota(p.begin(), p.end(), 0);
    std::shuffle(p.begin(), p.end(), rng);
    w.perm = Tensor::empty({c.in}, DType::I32);
    std::copy(p.begin(), p.end(), w.perm.data_as<int32_t>());
  }
  w.validate("test");
  return w;
}

// [n, in] uniform [-1, 1) values rounded to BF16 (exact in the tensor).
Tensor random_x(int64_t n, int64_t in, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(size_t(n * in));
  for (float& f : v) f = u(rng);
  return Tensor::from_floats({n, in}, v).to_dtype(DType::BF16);
}

Tensor random_bias(int64_t out, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(out));
  for (float& f : v) f = u(rng);
  return Tensor::from_floats({out}, v);
}

// A weight, its reference W and a Linear made from it on the GPU.
struct Layer {
  Config c;
  QuantWeight w;
  std::vector<float> wd;      // dequantize(w): [out, in], logical columns
  std::vector<double> wnorm;  // ||W[o, :]||
  std::vector<float> bias;    // [out] or empty
  Linear lin;
};

Layer make_layer(const Config& c, uint64_t seed) {
  Layer l;
  l.c = c;
  l.w = random_weight(c, seed);
  l.wd = dequantize(l.w).to_floats();
  l.wnorm.assign(size_t(c.out), 0.0);
  parallel_for(c.out, 64, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      double s = 0;
      for (int64_t j = 0; j < c.in; ++j) s += double(l.wd[size_t(o * c.in + j)]) * l.wd[size_t(o * c.in + j)];
      l.wnorm[size_t(o)] = std::sqrt(s);
    }
  });
  Tensor b;
  if (c.bias) {
    b = random_bias(c.out, seed + 77);
    l.bias = b.to_floats();
  }
  l.lin = Linear("model.layers.0.test", l.w, b, kGpu, DType::BF16);
  return l;
}

// The file comment's bound for every element of y = x W^T + b; returns the
// worst err / tol. got: [n, out] from the device; x_host: [n, in] BF16.
double check_output(const Layer& l, const Tensor& x_host, const std::vector<float>& got, DType y_dtype,
                    const std::string& what) {
  const int64_t n = x_host.dim(0), in = l.c.in, out = l.c.out;
  const std::vector<float> xf = x_host.to_floats();
  std::vector<double> xnorm(size_t(n), 0.0);
  for (int64_t m = 0; m < n; ++m) {
    double s = 0;
    for (int64_t j = 0; j < in; ++j) s += double(xf[size_t(m * in + j)]) * xf[size_t(m * in + j)];
    xnorm[size_t(m)] = std::sqrt(s);
  }
  std::vector<double> ref(size_t(n * out)), abs_sum(size_t(n * out));
  parallel_for(out, 16, [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      const float* wr = l.wd.data() + o * in;
      for (int64_t m = 0; m < n; ++m) {
        const float* xr = xf.data() + m * in;
        double s = 0, a = 0;
        for (int64_t j = 0; j < in; ++j) {
          const double p = double(xr[j]) * double(wr[j]);
          s += p;
          a += std::abs(p);
        }
        if (!l.bias.empty()) s += l.bias[size_t(o)];
        ref[size_t(m * out + o)] = s;
        abs_sum[size_t(m * out + o)] = a;
      }
    }
  });
  const bool gemv = n <= kGemvMaxN;
  EXPECT_EQ(got.size(), ref.size()) << what;
  if (got.size() != ref.size()) return INFINITY;
  size_t bad = 0;
  double worst = 0;
  for (int64_t m = 0; m < n; ++m)
    for (int64_t o = 0; o < out; ++o) {
      const size_t i = size_t(m * out + o);
      const double b = l.bias.empty() ? 0.0 : std::abs(double(l.bias[size_t(o)]));
      const double acc = 32 * std::sqrt(double(in)) * kU * xnorm[size_t(m)] * l.wnorm[size_t(o)] + 2 * kU * b;
      const double tol = gemv ? kBf16 * std::abs(ref[i]) + acc : kBf16 * (abs_sum[i] + b) + acc;
      const double err = std::abs(double(got[i]) - ref[i]);
      if (!(err <= tol) && bad++ < 5)
        ADD_FAILURE() << what << ": y[" << m << ", " << o << "] = " << got[i] << ", want " << ref[i] << " (err " << err
                      << " > tol " << tol << ")";
      if (tol > 0) worst = std::max(worst, err / tol);
    }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " outputs out of tolerance ("
                     << dtype_name(y_dtype) << ")";
  return worst;
}

// y = lin(x) on the GPU with y poisoned first; checked against the reference.
double run_and_check(const Layer& l, int64_t n, DType y_dtype, uint64_t seed) {
  const std::string what = describe(l.c) + " n=" + std::to_string(n) + " y " + std::string(dtype_name(y_dtype));
  const Tensor x_host = random_x(n, l.c.in, seed);
  const Tensor x = x_host.to(kGpu);
  Tensor poison = Tensor::from_floats({n, l.c.out}, std::vector<float>(size_t(n * l.c.out), std::nanf("")));
  Tensor y = (y_dtype == DType::F32 ? poison : poison.to_dtype(DType::BF16)).to(kGpu);
  l.lin.forward(x, y);
  return check_output(l, x_host, y.to_floats(), y_dtype, what);
}

const int64_t kAllN[] = {1, 2, 3, 7, 16, 33, 64, 65, 128, 255, 256, 511, 1024};

// Small and odd shapes, every group size, sym/asym, act-order, Int8 per
// channel and grouped, rows not multiples of 32 (the x gather path), every n.
TEST(CudaLinearWq, SmallShapesEverySchemeEveryN) {
  SKIP_WITHOUT_CUDA();
  using enum QuantScheme;
  const Config configs[] = {
      {Int4, 40, 96, 32, false, false, false},   {Int4, 40, 96, 32, true, false, true},
      {Int4, 40, 96, 32, true, true, false},     {Int4, 1, 128, 128, true, true, true},
      {Int4, 1, 128, 128, false, false, false},  {Int4, 72, 256, 64, false, true, true},
      {Int4, 130, 384, 128, true, false, false}, {Int4, 24, 40, 40, true, false, true},  // per channel, in % 32 != 0
      {Int4, 33, 64, 64, false, true, false},    {Int4, 256, 1024, 128, true, true, true},
      {Int8, 40, 72, 72, false, false, true},    {Int8, 3, 7, 7, false, false, false},  // per channel, odd in
      {Int8, 40, 96, 32, false, false, false},   {Int8, 65, 256, 64, false, true, true},
      {Int8, 128, 512, 128, false, false, true}, {Int8, 256, 1024, 1024, false, true, false},
  };
  uint64_t seed = 1;
  for (const Config& c : configs) {
    SCOPED_TRACE(describe(c));
    const Layer l = make_layer(c, seed++);
    ASSERT_EQ(l.lin.kernel_name(), kKernel);
    double worst = 0;
    for (int64_t n : kAllN) {
      worst = std::max(worst, run_and_check(l, n, DType::BF16, seed++));
      if (n == 1 || n == 33) worst = std::max(worst, run_and_check(l, n, DType::F32, seed++));
    }
    std::printf("  %-48s worst err/tol %.3f\n", describe(c).c_str(), worst);
  }
}

// Llama-3-8B's projections (out x in), a few n each (the reference is
// float64 over out * in * n products).
TEST(CudaLinearWq, Llama3Shapes) {
  SKIP_WITHOUT_CUDA();
  using enum QuantScheme;
  struct Shape {
    Config c;
    std::vector<int64_t> ns;
  };
  const Shape shapes[] = {
      {{Int4, 6144, 4096, 128, false, false, true}, {1, 16, 64}},      // fused qkv (with a bias, as Qwen's)
      {{Int4, 4096, 4096, 128, true, true, false}, {1, 7, 65}},        // o, GPTQ act-order
      {{Int4, 28672, 4096, 64, true, false, false}, {1, 16, 33}},      // fused gate_up
      {{Int4, 4096, 14336, 128, true, true, false}, {2, 128}},         // down, act-order
      {{Int4, 4096, 14336, 32, false, false, false}, {3}},             // down, g32
      {{Int8, 4096, 14336, 14336, false, false, false}, {1, 16, 64}},  // down, per channel
      {{Int8, 6144, 4096, 128, false, false, true}, {4, 33}},          // qkv, g128
  };
  uint64_t seed = 1000;
  for (const Shape& s : shapes) {
    SCOPED_TRACE(describe(s.c));
    const Layer l = make_layer(s.c, seed++);
    ASSERT_EQ(l.lin.kernel_name(), kKernel);
    double worst = 0;
    for (int64_t n : s.ns) worst = std::max(worst, run_and_check(l, n, DType::BF16, seed++));
    std::printf("  %-48s worst err/tol %.3f\n", describe(s.c).c_str(), worst);
  }
}

// Both paths recorded in a graph after one eager run (which is what the
// runner does): run() must neither allocate nor synchronize. The replay reads
// x updated in place and writes over a poisoned y.
TEST(CudaLinearWq, RunsInsideGraphs) {
  SKIP_WITHOUT_CUDA();
  const Config configs[] = {{QuantScheme::Int4, 96, 256, 64, true, true, true},
                            {QuantScheme::Int4, 64, 128, 32, false, false, false},
                            {QuantScheme::Int8, 80, 96, 96, false, false, true}};
  uint64_t seed = 5000;
  for (const Config& c : configs)
    for (int64_t n : {int64_t(4), int64_t(40)}) {
      SCOPED_TRACE(describe(c) + " n=" + std::to_string(n));
      const Layer l = make_layer(c, seed++);
      Tensor x = random_x(n, c.in, seed++).to(kGpu);
      Tensor y = Tensor::empty({n, c.out}, DType::BF16, kGpu);
      l.lin.forward(x, y);  // eager: cuBLASLt plan, kernel attributes
      synchronize(kGpu);
      begin_capture(kGpu);
      l.lin.forward(x, y);
      const DeviceGraph g = end_capture(kGpu);
      const Tensor x_host = random_x(n, c.in, seed++);
      x.copy_from(x_host);
      y.copy_from(
          Tensor::from_floats({n, c.out}, std::vector<float>(size_t(n * c.out), std::nanf(""))).to_dtype(DType::BF16));
      g.replay();
      synchronize(kGpu);
      check_output(l, x_host, y.to_floats(), DType::BF16, describe(c) + " replayed");
    }
}

// The registry picks this kernel for Int4/Int8 on CUDA and keeps the dense one.
TEST(CudaLinearWq, LinearPicksItForInt4AndInt8) {
  SKIP_WITHOUT_CUDA();
  const Layer a = make_layer({QuantScheme::Int4, 64, 128, 128, true, false, false}, 7);
  EXPECT_EQ(a.lin.kernel_name(), kKernel);
  EXPECT_GT(a.lin.bytes(), size_t(64 * 64));
  const Layer b = make_layer({QuantScheme::Int8, 64, 128, 32, false, true, true}, 8);
  EXPECT_EQ(b.lin.kernel_name(), kKernel);
  const Linear d("dense", QuantWeight::from_dense(Tensor::from_floats({4, 8}, std::vector<float>(32, 0.5f))), Tensor(),
                 kGpu, DType::BF16);
  EXPECT_EQ(d.kernel_name(), "cuda_bf16_cublaslt");
}

// can_run refuses what the kernel does not run, so that Linear's load error
// still names those schemes.
TEST(CudaLinearWq, RefusesWhatItDoesNotRun) {
  SKIP_WITHOUT_CUDA();
  const LinearKernel* k = nullptr;
  for (const LinearKernel* c : linear_kernels(DeviceKind::CUDA))
    if (c->name() == kKernel) k = c;
  ASSERT_NE(k, nullptr) << "no " << kKernel << " registered for CUDA";
  auto spec = [](QuantScheme s, DType wd, int64_t group) {
    LinearSpec p;
    p.scheme = s;
    p.weight_dtype = wd;
    p.out = 64;
    p.in = 256;
    p.group = group;
    p.act_dtype = DType::BF16;
    p.device = kGpu;
    return p;
  };
  EXPECT_TRUE(k->can_run(spec(QuantScheme::Int4, DType::U8, 128)));
  EXPECT_TRUE(k->can_run(spec(QuantScheme::Int4, DType::U8, 256)));
  EXPECT_TRUE(k->can_run(spec(QuantScheme::Int8, DType::I8, 256)));
  EXPECT_TRUE(k->can_run(spec(QuantScheme::Int8, DType::I8, 32)));
  LinearSpec s = spec(QuantScheme::Int8, DType::I8, 256);
  s.smooth = true;
  EXPECT_FALSE(k->can_run(s)) << "smoothquant";
  for (ActQuant a : {ActQuant::Int8Token, ActQuant::Fp8Token, ActQuant::Fp8Static}) {
    s = spec(QuantScheme::Int8, DType::I8, 256);
    s.act = a;
    EXPECT_FALSE(k->can_run(s)) << "act quant " << int(a);
  }
  EXPECT_FALSE(k->can_run(spec(QuantScheme::Nf4, DType::U8, 64)));
  EXPECT_FALSE(k->can_run(spec(QuantScheme::Fp8, DType::F8_E4M3, 0)));
  EXPECT_FALSE(k->can_run(spec(QuantScheme::Dense, DType::BF16, 0)));
  EXPECT_FALSE(k->can_run(spec(QuantScheme::Int4, DType::U8, 16))) << "groups of 16";
  s = spec(QuantScheme::Int4, DType::U8, 128);
  s.act_dtype = DType::F32;
  EXPECT_FALSE(k->can_run(s)) << "F32 activations";
  s.act_dtype = DType::BF16;
  s.device = kCpu;
  EXPECT_FALSE(k->can_run(s)) << "on the CPU";

  // Through Linear: a SmoothQuant W8A8 weight still fails at load, naming it.
  QuantWeight w = random_weight({QuantScheme::Int8, 16, 64, 64, false, false, false}, 9);
  w.act = ActQuant::Int8Token;
  w.smooth = Tensor::from_floats({64}, std::vector<float>(64, 1.0f));
  try {
    Linear lin("model.layers.1.mlp.down_proj", w, Tensor(), kGpu, DType::BF16);
    FAIL() << "a kernel was chosen: " << lin.kernel_name();
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("model.layers.1.mlp.down_proj"), std::string::npos) << m;
    EXPECT_NE(m.find("smoothquant"), std::string::npos) << m;
    EXPECT_NE(m.find("cuda:0"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace kite
