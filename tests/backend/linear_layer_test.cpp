// Linear (backend/linear.h): kernel choice per device, the load-time error
// for a weight no kernel runs, fusing and sharding of every scheme's logical
// weight (exact: compared bitwise through dequantize()), and Linear::forward
// against a float64 reference on fresh random data (outputs poisoned first).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "backend/backend.h"
#include "backend/linear.h"
#include "core/error.h"
#include "core/quant_weight.h"

namespace kite {
namespace {

// A random weight straight in Kite's packed layout (core/quant_weight.h).
QuantWeight random_weight(QuantScheme scheme, int64_t out, int64_t in, int64_t group, bool zeros, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), s(0.01f, 0.05f);
  auto floats = [&](const Shape& shape, auto gen) {
    Tensor t = Tensor::empty(shape, DType::F32);
    for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = gen();
    return t;
  };
  QuantWeight w;
  w.scheme = scheme;
  w.out = out;
  w.in = in;
  switch (scheme) {
    case QuantScheme::Dense: w.dense = floats({out, in}, [&] { return u(rng); }); break;
    case QuantScheme::Int8: {
      w.group = group;
      w.qdata = Tensor::empty({out, in}, DType::I8);
      for (int64_t i = 0; i < out * in; ++i) w.qdata.data_as<int8_t>()[i] = int8_t(int(rng() % 255) - 127);
      w.scales = floats({out, in / group}, [&] { return s(rng); });
      break;
    }
    case QuantScheme::Int4:
    case QuantScheme::Nf4: {
      w.group = group;
      w.qdata = Tensor::empty({out, in / 2}, DType::U8);
      for (int64_t i = 0; i < out * in / 2; ++i) w.qdata.data_as<uint8_t>()[i] = uint8_t(rng() & 0xff);
      if (scheme == QuantScheme::Int4) {
        w.scales = floats({out, in / group}, [&] { return s(rng); });
        w.zeros = floats({out, in / group}, [&] { return zeros ? float(rng() % 16) : 8.0f; });
      } else {
        w.scales = floats({out * in / group}, [&] { return s(rng); });
      }
      break;
    }
    case QuantScheme::Fp8: {
      w.qdata = Tensor::empty({out, in}, DType::F8_E4M3);
      for (int64_t i = 0; i < out * in; ++i) {
        uint8_t b = uint8_t(rng() & 0xff);
        if ((b & 0x7f) == 0x7f) b &= 0xfe;  // no NaN codes
        w.qdata.data_as<uint8_t>()[i] = b;
      }
      w.scales = floats({1}, [&] { return s(rng); });
      break;
    }
  }
  w.validate("test");
  return w;
}

Tensor random_x(int64_t n, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Tensor x = Tensor::empty({n, in}, DType::F32);
  for (int64_t i = 0; i < n * in; ++i) x.data_as<float>()[i] = u(rng);
  return x;
}

void expect_same(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  const std::vector<float> va = a.to_floats(), vb = b.to_floats();
  for (size_t i = 0; i < va.size(); ++i) ASSERT_EQ(va[i], vb[i]) << what << " at " << i;
}

struct Case {
  QuantScheme scheme;
  int64_t group;
  bool zeros;
};
const Case kCases[] = {{QuantScheme::Dense, 0, false}, {QuantScheme::Int8, 32, false}, {QuantScheme::Int8, 64, false},
                       {QuantScheme::Int4, 32, true},  {QuantScheme::Int4, 64, false}, {QuantScheme::Nf4, 64, false},
                       {QuantScheme::Fp8, 0, false}};

TEST(LinearLayer, FuseRowsIsExactForEveryScheme) {
  uint32_t seed = 1;
  for (const Case& c : kCases) {
    SCOPED_TRACE(std::string(quant_scheme_name(c.scheme)));
    const int64_t in = 128;
    std::vector<QuantWeight> parts = {random_weight(c.scheme, 48, in, c.group, c.zeros, seed++),
                                      random_weight(c.scheme, 16, in, c.group, c.zeros, seed++),
                                      random_weight(c.scheme, 16, in, c.group, c.zeros, seed++)};
    ASSERT_TRUE(can_fuse_rows(parts));
    const QuantWeight f = fuse_rows(parts, "qkv");
    EXPECT_EQ(f.out, 80);
    const Tensor df = dequantize(f);
    int64_t at = 0;
    for (const QuantWeight& p : parts) {
      expect_same(df.slice(0, at, at + p.out).contiguous(), dequantize(p), "part rows");
      at += p.out;
    }
  }
}

TEST(LinearLayer, FuseRowsRefusesMixedLayouts) {
  std::vector<QuantWeight> parts = {random_weight(QuantScheme::Int4, 16, 64, 32, true, 3),
                                    random_weight(QuantScheme::Int8, 16, 64, 32, false, 4)};
  EXPECT_FALSE(can_fuse_rows(parts));
  try {
    fuse_rows(parts, "model.layers.0.qkv");
    FAIL() << "mixed schemes fused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.qkv"), std::string::npos) << e.what();
  }
}

TEST(LinearLayer, ShardRowsAndColumnsAreExact) {
  uint32_t seed = 10;
  for (const Case& c : kCases) {
    SCOPED_TRACE(std::string(quant_scheme_name(c.scheme)));
    const int64_t out = 64, in = 256;
    const QuantWeight w = random_weight(c.scheme, out, in, c.group, c.zeros, seed++);
    const Tensor dw = dequantize(w);
    expect_same(dequantize(shard_rows(w, 16, 48, "w")), dw.slice(0, 16, 48).contiguous(), "rows");
    expect_same(dequantize(shard_cols(w, 128, 256, "w")), dw.slice(1, 128, 256).contiguous(), "columns");
  }
}

TEST(LinearLayer, ShardColumnsRefusesSplitGroupsAndActOrder) {
  const QuantWeight w = random_weight(QuantScheme::Int4, 16, 128, 64, true, 20);
  try {
    shard_cols(w, 0, 32, "down_proj");
    FAIL() << "a split group was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("group_size"), std::string::npos) << e.what();
  }
  QuantWeight p = w;
  p.perm = Tensor::empty({128}, DType::I32);
  for (int32_t i = 0; i < 128; ++i) p.perm.data_as<int32_t>()[i] = 127 - i;
  try {
    shard_cols(p, 0, 64, "down_proj");
    FAIL() << "act-order columns were split";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("g_idx"), std::string::npos) << e.what();
  }
  // Rows of an act-order weight split fine: the permutation is per column.
  expect_same(dequantize(shard_rows(p, 0, 8, "q")), dequantize(p).slice(0, 0, 8).contiguous(), "act-order rows");
}

// y = x @ W^T + b in float64 from the dequantized weight, and per output
// the sum of |terms| (the scale of F32 rounding error).
std::vector<double> reference(const Tensor& x, const QuantWeight& w, const std::vector<float>& bias,
                              std::vector<double>& magnitude) {
  const int64_t n = x.dim(0), in = w.in, out = w.out;
  const std::vector<float> dw = dequantize(w).to_floats(), xv = x.to_floats();
  std::vector<double> y(size_t(n * out));
  magnitude.assign(y.size(), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double acc = bias.empty() ? 0.0 : bias[size_t(o)], mag = bias.empty() ? 0.0 : std::fabs(bias[size_t(o)]);
      for (int64_t k = 0; k < in; ++k) {
        const double t = double(xv[size_t(i * in + k)]) * dw[size_t(o * in + k)];
        acc += t;
        mag += std::fabs(t);
      }
      y[size_t(i * out + o)] = acc;
      magnitude[size_t(i * out + o)] = mag;
    }
  return y;
}

TEST(LinearLayer, ForwardMatchesFloat64OnTheCpu) {
  uint32_t seed = 30;
  for (const Case& c : kCases) {
    SCOPED_TRACE(std::string(quant_scheme_name(c.scheme)));
    const int64_t out = 40, in = 192;
    const QuantWeight w = random_weight(c.scheme, out, in, c.group, c.zeros, seed++);
    std::vector<float> b(static_cast<size_t>(out));
    for (int64_t o = 0; o < out; ++o) b[size_t(o)] = 0.1f * float(o % 7) - 0.3f;
    const Linear lin("layer.x_proj", w, Tensor::from_floats({out}, b), kCpu, DType::F32);
    EXPECT_EQ(lin.kernel_name(), c.scheme == QuantScheme::Dense ? "cpu_dense" : "cpu_quant");
    for (int64_t n : {1, 3, 17}) {
      const Tensor x = random_x(n, in, seed++);
      Tensor y = Tensor::empty({n, out}, DType::F32);
      for (int64_t i = 0; i < n * out; ++i) y.data_as<float>()[i] = std::numeric_limits<float>::quiet_NaN();
      lin.forward(x, y);
      std::vector<double> mag;
      const std::vector<double> want = reference(x, w, b, mag);
      // F32 accumulation of 192 terms in partial sums: 2e-6 of sum |terms|
      // (the dense and quantized kernels' own tests bound theirs below that).
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(y.data_as<float>()[i], want[i], 2e-6 * mag[i] + 1e-7) << "n " << n << " at " << i;
    }
  }
}

TEST(LinearLayer, StackedPartsEqualEachPartAlone) {
  const QuantWeight a = random_weight(QuantScheme::Int4, 24, 64, 32, true, 40);
  const QuantWeight b = random_weight(QuantScheme::Int8, 8, 64, 32, false, 41);
  std::vector<Linear> parts;
  parts.emplace_back("q_proj", a, Tensor(), kCpu, DType::F32);
  parts.emplace_back("v_proj", b, Tensor(), kCpu, DType::F32);
  const Linear one("q_proj", a, Tensor(), kCpu, DType::F32), two("v_proj", b, Tensor(), kCpu, DType::F32);
  const Linear s = Linear::stacked("qv", std::move(parts));
  EXPECT_EQ(s.out(), 32);
  const Tensor x = random_x(5, 64, 42);
  Tensor y = Tensor::empty({5, 32}, DType::F32), ya = Tensor::empty({5, 24}, DType::F32),
         yb = Tensor::empty({5, 8}, DType::F32);
  for (Tensor* t : {&y, &ya, &yb})
    for (int64_t i = 0; i < t->numel(); ++i) t->data_as<float>()[i] = std::numeric_limits<float>::quiet_NaN();
  s.forward(x, y);
  one.forward(x, ya);
  two.forward(x, yb);
  expect_same(y.slice(1, 0, 24).contiguous(), ya, "first part");
  expect_same(y.slice(1, 24, 32).contiguous(), yb, "second part");
  EXPECT_EQ(s.kernel_name(), "stacked");
}

TEST(LinearLayer, AWeightNoKernelRunsIsALoadErrorNamingItAndTheDevice) {
  QuantWeight w = random_weight(QuantScheme::Int4, 16, 64, 32, true, 50);
  w.act = ActQuant::Int8Token;  // int8 activations need int8 weights: no CPU kernel runs this
  try {
    Linear lin("model.layers.2.mlp.down_proj", w, Tensor(), kCpu, DType::F32);
    FAIL() << "a kernel was chosen";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("model.layers.2.mlp.down_proj"), std::string::npos) << m;
    EXPECT_NE(m.find("int4"), std::string::npos) << m;
    EXPECT_NE(m.find("cpu"), std::string::npos) << m;
  }
}

TEST(LinearLayer, CudaRunsDenseAndNamesWhatItCannotRun) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device";
  const Device gpu{DeviceKind::CUDA, 0};
  const QuantWeight dense = random_weight(QuantScheme::Dense, 32, 64, 0, false, 60);
  const Linear lin("w", dense, Tensor(), gpu, DType::BF16);
  EXPECT_EQ(lin.kernel_name(), "cuda_bf16_cublaslt");
  try {
    Linear q("model.layers.0.self_attn.qkv", random_weight(QuantScheme::Nf4, 32, 64, 64, false, 61), Tensor(), gpu,
             DType::BF16);
    FAIL() << "nf4 ran on CUDA before any kernel for it exists";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("model.layers.0.self_attn.qkv"), std::string::npos) << m;
    EXPECT_NE(m.find("nf4"), std::string::npos) << m;
    EXPECT_NE(m.find("cuda:0"), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace kite
