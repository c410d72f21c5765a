// ops::linear_q and cpu::linear_q at every SIMD level against a float64
// reference: x' @ dequantize(w)^T, where x' is x / smooth rounded as the
// activation mode says, computed here independently of the kernels (f32
// division as specified, then core's exact f32_to_fp8_e4m3 or nearbyint).
//
// Tolerances, relative to sum_k |x'_k w_k| * act_scale + |bias| per output
// (the references are exact: dequantize()'s weights, the same activation
// values, so a wrong code, scale, zero, group, permutation or rounding is off
// by a whole quantization step, orders of magnitude above these):
//  - F32 activations (ActQuant::None, Fp8Token, Fp8Static): the kernels
//    accumulate in F32 over at most 1280 terms in 8 to 64 partial sums, as
//    the dense linear does (its test: 2e-6). Largest seen: 1.6e-7.
//  - Int4 with F32 activations: 4e-6. AVX2 folds the zero point in as
//    s * (sum x'u - z * sum x'), whose terms reach (15 + z) / |u - z| times
//    the reference's (~4x on average). Largest seen: 3.3e-7.
//  - Int8Token: the group products are exact int32; only sum_g dot_g * s_g
//    (at most 12 groups here), the row scale and the bias round in F32, so
//    (groups + 3) * 2^-24 < 1e-6 bounds it. Largest seen: 5.6e-8.
#include "backend/ops/linear_q.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/linear_q_kernels.h"
#include "backend/ops/linear.h"
#include "backend_test_util.h"
#include "core/error.h"
#include "core/quant_weight.h"

namespace kite {
namespace {

struct Variant {
  const char* name;
  QuantScheme scheme;
  bool perm = false;         // Int8/Int4 act-order
  bool asym = false;         // Int4 zeros random (else 8)
  bool per_channel = false;  // Fp8 scales [out] (else [1]); Int8 group = in
};

struct Shape3 {
  int64_t out, in, group;
};

// Random weights straight in the packed layout: codes, scales, zeros, perms.
QuantWeight random_weight(const Variant& v, const Shape3& s, uint32_t seed) {
  std::mt19937 rng(seed);
  QuantWeight w;
  w.scheme = v.scheme;
  w.out = s.out;
  w.in = s.in;
  w.group = v.scheme == QuantScheme::Fp8 ? 0 : (v.per_channel ? s.in : s.group);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  auto fill_f32 = [&](const Shape& shape, auto gen) {
    Tensor t = Tensor::empty(shape, DType::F32);
    for (int64_t i = 0; i < t.numel(); ++i) t.data_as<float>()[i] = gen();
    return t;
  };
  auto fill_bytes = [&](const Shape& shape, DType dt, auto gen) {
    Tensor t = Tensor::empty(shape, dt);
    for (int64_t i = 0; i < t.numel(); ++i) t.data_as<uint8_t>()[i] = uint8_t(gen());
    return t;
  };
  std::uniform_int_distribution<int> byte(0, 255);
  switch (v.scheme) {
    case QuantScheme::Int8:
      w.qdata = fill_bytes({s.out, s.in}, DType::I8, [&] { return byte(rng); });  // -128..127
      w.scales = fill_f32({s.out, s.in / w.group}, [&] { return scale(rng); });
      break;
    case QuantScheme::Int4:
      w.qdata = fill_bytes({s.out, s.in / 2}, DType::U8, [&] { return byte(rng); });
      w.scales = fill_f32({s.out, s.in / w.group}, [&] { return scale(rng); });
      w.zeros = fill_f32({s.out, s.in / w.group},
                         [&] { return v.asym ? std::uniform_real_distribution<float>(0.0f, 15.0f)(rng) : 8.0f; });
      break;
    case QuantScheme::Nf4:
      w.qdata = fill_bytes({s.out, s.in / 2}, DType::U8, [&] { return byte(rng); });
      w.scales = fill_f32({s.out * s.in / w.group}, [&] { return scale(rng) * 4.0f; });
      break;
    case QuantScheme::Fp8:
      w.qdata = fill_bytes({s.out, s.in}, DType::F8_E4M3, [&] {
        int c = byte(rng);
        return (c & 0x7f) == 0x7f ? c - 1 : c;  // no NaN codes
      });
      w.scales = fill_f32({v.per_channel ? s.out : 1}, [&] { return scale(rng) * 0.1f; });
      break;
    case QuantScheme::Dense: break;
  }
  if (v.perm) {
    std::vector<int32_t> p(static_cast<size_t>(s.in));
    std::iota(p.begin(), p.end(), 0);
    std::shuffle(p.begin(), p.end(), rng);
    w.perm = test::i32_tensor({s.in}, p);
  }
  w.validate("test");
  return w;
}

// x with a spread of magnitudes (some tiny values reach the fp8 subnormals)
// and, for n >= 3, an all-zero row (activation scale 0).
Tensor random_x(int64_t n, int64_t in, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), p(0.0f, 1.0f);
  Tensor x = Tensor::empty({n, in}, DType::F32);
  float* d = x.data_as<float>();
  for (int64_t i = 0; i < n * in; ++i) d[i] = u(rng) * (p(rng) < 0.1f ? 1e-4f : 1.0f);
  if (n >= 3) std::fill(d + in, d + 2 * in, 0.0f);
  return x;
}

// x' (logical column order) and the factor of each row, as specified in
// core/quant_weight.h.
void reference_act(const Tensor& x, const QuantWeight& w, std::vector<double>& xa, std::vector<double>& row_scale) {
  const int64_t n = x.dim(0), in = x.dim(1);
  const float* xd = x.data_as<const float>();
  xa.assign(size_t(n * in), 0.0);
  row_scale.assign(size_t(n), 1.0);
  for (int64_t i = 0; i < n; ++i) {
    std::vector<float> t(static_cast<size_t>(in));
    float amax = 0.0f;
    for (int64_t c = 0; c < in; ++c) {
      t[size_t(c)] = w.smooth.defined() ? xd[i * in + c] / w.smooth.data_as<const float>()[c] : xd[i * in + c];
      amax = std::max(amax, std::abs(t[size_t(c)]));
    }
    float s = 1.0f;
    if (w.act == ActQuant::Int8Token) s = amax / 127.0f;
    if (w.act == ActQuant::Fp8Token) s = amax / 448.0f;
    if (w.act == ActQuant::Fp8Static) s = w.input_scale;
    row_scale[size_t(i)] = s;
    for (int64_t c = 0; c < in; ++c) {
      double v = t[size_t(c)];
      if (w.act == ActQuant::Int8Token)
        v = s > 0 ? std::clamp(std::nearbyint(double(t[size_t(c)] / s)), -127.0, 127.0) : 0.0;
      else if (w.act != ActQuant::None)
        v = s > 0 ? fp8_e4m3_to_f32(f32_to_fp8_e4m3(t[size_t(c)] / s)) : 0.0;
      xa[size_t(i * in + c)] = v;
    }
  }
}

void reference(const Tensor& x, const QuantWeight& w, const Tensor* bias, std::vector<double>& y,
               std::vector<double>& mag) {
  const int64_t n = x.dim(0), in = w.in, out = w.out;
  std::vector<double> xa, rs, wd = test::to_doubles(dequantize(w)), bd;
  reference_act(x, w, xa, rs);
  if (bias) bd = test::to_doubles(*bias);
  y.assign(size_t(n * out), 0.0);
  mag.assign(size_t(n * out), 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t o = 0; o < out; ++o) {
      double s = 0, a = 0;
      for (int64_t c = 0; c < in; ++c) {
        const double p = xa[size_t(i * in + c)] * wd[size_t(o * in + c)];
        s += p;
        a += std::abs(p);
      }
      const double b = bias ? bd[size_t(o)] : 0.0;
      y[size_t(i * out + o)] = s * rs[size_t(i)] + b;
      mag[size_t(i * out + o)] = a * std::abs(rs[size_t(i)]) + std::abs(b);
    }
}

const Variant kVariants[] = {
    {"int8", QuantScheme::Int8},
    {"int8_perm", QuantScheme::Int8, true},
    {"int8_channel", QuantScheme::Int8, false, false, true},
    {"int4_sym", QuantScheme::Int4},
    {"int4_asym_perm", QuantScheme::Int4, true, true},
    {"int4_asym_channel", QuantScheme::Int4, false, true, true},
    {"nf4", QuantScheme::Nf4},
    {"fp8_tensor", QuantScheme::Fp8},
    {"fp8_channel", QuantScheme::Fp8, false, false, true},
};

const char* act_name(ActQuant a) {
  switch (a) {
    case ActQuant::None: return "none";
    case ActQuant::Int8Token: return "int8_token";
    case ActQuant::Fp8Token: return "fp8_token";
    case ActQuant::Fp8Static: return "fp8_static";
  }
  return "?";
}

struct Param {
  Variant v;
  ActQuant act;
};

std::vector<Param> all_params() {
  std::vector<Param> out;
  for (const Variant& v : kVariants)
    for (ActQuant a : {ActQuant::None, ActQuant::Int8Token, ActQuant::Fp8Token, ActQuant::Fp8Static})
      if (a != ActQuant::Int8Token || v.scheme == QuantScheme::Int8) out.push_back({v, a});
  return out;
}

// Shapes: out not a multiple of 4/8/16; groups 32/64/128, groups that are not
// multiples of 32 (4-bit block tails) and per-channel.
std::vector<Shape3> shapes_for(QuantScheme s) {
  if (s == QuantScheme::Fp8) return {{37, 96, 0}, {70, 160, 0}, {29, 384, 0}, {13, 50, 0}, {1, 2, 0}};
  std::vector<Shape3> v = {{37, 96, 32},  {70, 160, 32}, {29, 384, 128}, {45, 128, 64},
                           {21, 384, 64}, {11, 100, 50}, {9, 96, 48}};
  if (s == QuantScheme::Int8) v.push_back({13, 75, 25});  // odd groups
  return v;
}

void PrintTo(const Param& p, std::ostream* os) { *os << p.v.name << "/" << act_name(p.act); }

double tolerance(const Param& p) {
  if (p.act == ActQuant::Int8Token) return 1e-6;
  return p.v.scheme == QuantScheme::Int4 ? 4e-6 : 2e-6;
}

class LinearQTest : public ::testing::TestWithParam<Param> {};

TEST_P(LinearQTest, MatchesFloat64ReferenceAtEverySimdLevel) {
  const Param& p = GetParam();
  const double rtol = tolerance(p);
  uint32_t seed = 77;
  for (const Shape3& sh : shapes_for(p.v.scheme)) {
    QuantWeight w = random_weight(p.v, sh, ++seed);
    w.act = p.act;
    w.input_scale = 0.7f / 448.0f;  // Fp8Static: rows reaching |x| > 0.7 saturate
    if (seed % 2) w.smooth = test::random_tensor({sh.in}, DType::F32, ++seed, 0.5f, 2.0f);
    Tensor bias = test::random_tensor({sh.out}, DType::BF16, ++seed);
    for (int64_t n : {1, 2, 3, 4, 7, 33}) {
      Tensor x = random_x(n, sh.in, ++seed);
      const Tensor* bp = n % 2 ? &bias : nullptr;
      std::vector<double> want, mag;
      reference(x, w, bp, want, mag);
      const std::string name =
          fmt::format("{} act={} out={} in={} group={} n={} smooth={} bias={}", p.v.name, act_name(p.act), sh.out,
                      sh.in, w.group, n, w.smooth.defined(), bp != nullptr);
      std::vector<float> first;
      for (cpu::SimdLevel level : test::simd_levels()) {
        Tensor y = test::nan_tensor({n, sh.out});
        cpu::linear_q(x, w, bp, y, level);
        std::vector<float> got = y.to_floats();
        test::expect_close(got, want, mag, rtol, 1e-9, name + " simd=" + cpu::simd_name(level));
        // Integer dot products are exact: every level gives the same bits.
        if (p.act == ActQuant::Int8Token) {
          if (first.empty())
            first = got;
          else
            EXPECT_EQ(0, std::memcmp(first.data(), got.data(), got.size() * 4)) << name << " " << cpu::simd_name(level);
        }
      }
      Tensor y = test::nan_tensor({n, sh.out});
      ops::linear_q(x, w, bp, y);
      test::expect_close(y.to_floats(), want, mag, rtol, 1e-9, name + " via ops::linear_q");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Schemes, LinearQTest, ::testing::ValuesIn(all_params()), [](const auto& info) {
  return std::string(info.param.v.name) + "_" + act_name(info.param.act);
});

// Prefill tiles span two column chunks (1024 + 256) and several 16-row tiles.
TEST(LinearQ, LargeLayerAllLevels) {
  for (const Variant& v : {kVariants[1], kVariants[4], kVariants[6], kVariants[8]}) {
    QuantWeight w = random_weight(v, {50, 1280, 128}, 5);
    for (int64_t n : {1, 9}) {
      Tensor x = random_x(n, 1280, 6);
      std::vector<double> want, mag;
      reference(x, w, nullptr, want, mag);
      for (cpu::SimdLevel level : test::simd_levels()) {
        Tensor y = test::nan_tensor({n, 50});
        cpu::linear_q(x, w, nullptr, y, level);
        test::expect_close(y.to_floats(), want, mag, tolerance({v, ActQuant::None}), 1e-9,
                           fmt::format("{} n={} simd={}", v.name, n, cpu::simd_name(level)));
      }
    }
  }
}

TEST(LinearQ, Fp8RoundingMatchesCore) {
  std::mt19937 rng(3);
  std::vector<float> probe;
  for (int c = 0; c < 0x7f; ++c) {  // every value, the midpoints to the next one, and their neighbours
    const float a = fp8_e4m3_to_f32(uint8_t(c)), b = fp8_e4m3_to_f32(uint8_t(c + 1));
    const float mid = c < 0x7e ? (a + b) / 2 : 456.0f;
    for (float f : {a, mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) probe.push_back(f);
  }
  for (float f : {464.0f, 465.0f, 1e6f, 1e-30f, 1e-45f, 0.0f}) probe.push_back(f);
  std::uniform_real_distribution<float> e(-12.0f, 9.5f);
  for (int i = 0; i < 20000; ++i) probe.push_back(std::exp2(e(rng)));
  for (float f : probe)
    for (float s : {f, -f}) {
      const float want = fp8_e4m3_to_f32(f32_to_fp8_e4m3(s));
      const float got = cpu::fp8_e4m3_round(s);
      ASSERT_EQ(want, got) << s;
      ASSERT_EQ(std::signbit(want), std::signbit(got)) << s;
    }
  EXPECT_TRUE(std::isnan(cpu::fp8_e4m3_round(std::nanf(""))));
}

TEST(LinearQ, DenseForwardsToLinear) {
  Tensor wd = test::random_tensor({19, 40}, DType::BF16, 4);
  QuantWeight w = QuantWeight::from_dense(wd);
  Tensor x = test::random_tensor({5, 40}, DType::F32, 5), b = test::random_tensor({19}, DType::F32, 6);
  Tensor y1 = test::nan_tensor({5, 19}), y2 = test::nan_tensor({5, 19});
  ops::linear_q(x, w, &b, y1);
  ops::linear(x, wd, &b, y2);
  EXPECT_EQ(y1.to_floats(), y2.to_floats());
}

TEST(LinearQ, ZeroRowsIsANoOp) {
  QuantWeight w = random_weight(kVariants[3], {8, 64, 32}, 1);
  Tensor x = Tensor::empty({0, 64}, DType::F32), y = Tensor::empty({0, 8}, DType::F32);
  EXPECT_NO_THROW(ops::linear_q(x, w, nullptr, y));
}

TEST(LinearQ, BadArguments) {
  using test::expect_op_error;
  auto f32 = [](const Shape& s) { return Tensor::zeros(s, DType::F32); };
  const QuantWeight good = random_weight(kVariants[4], {8, 64, 32}, 2);  // int4, perm
  Tensor x = f32({2, 64}), y = f32({2, 8});
  expect_op_error("linear_q", "x", [&] { ops::linear_q(Tensor::zeros({2, 64}, DType::BF16), good, nullptr, y); });
  expect_op_error("linear_q", "x", [&] { ops::linear_q(f32({2, 63}), good, nullptr, y); });
  expect_op_error("linear_q", "x", [&] { ops::linear_q(f32({2, 2, 64}), good, nullptr, y); });
  expect_op_error("linear_q", "y", [&] {
    Tensor y2 = f32({2, 9});
    ops::linear_q(x, good, nullptr, y2);
  });
  expect_op_error("linear_q", "y", [&] {
    Tensor y2 = f32({3, 8});
    ops::linear_q(x, good, nullptr, y2);
  });
  expect_op_error("linear_q", "y", [&] {
    Tensor y2 = Tensor::zeros({2, 8}, DType::BF16);
    ops::linear_q(x, good, nullptr, y2);
  });
  Tensor bad_bias = f32({9});
  expect_op_error("linear_q", "bias", [&] { ops::linear_q(x, good, &bad_bias, y); });
  expect_op_error("linear_q", "y", [&] {
    Tensor y2 = f32({2, 16}).slice(1, 0, 8);  // non-contiguous
    ops::linear_q(x, good, nullptr, y2);
  });
  // Inconsistent QuantWeights (validate()'s messages name the field, not
  // always with "expected"): wrong shapes, dtypes, groups, modes.
  auto bad = [&](const char* field, auto edit) {
    QuantWeight w = good;
    edit(w);
    try {
      ops::linear_q(x, w, nullptr, y);
      ADD_FAILURE() << "expected an error about " << field;
    } catch (const Error& e) {
      EXPECT_EQ(e.source(), "op linear_q") << e.what();
      EXPECT_EQ(e.field(), field) << e.what();
    }
  };
  bad("scales", [&](QuantWeight& w) { w.scales = f32({8, 3}); });
  bad("zeros", [&](QuantWeight& w) { w.zeros = Tensor(); });
  bad("qdata", [&](QuantWeight& w) { w.qdata = Tensor::zeros({8, 32}, DType::I8); });
  bad("qdata", [&](QuantWeight& w) { w.qdata = Tensor::zeros({8, 64}, DType::U8); });
  bad("group_size", [&](QuantWeight& w) { w.group = 48; });
  bad("perm", [&](QuantWeight& w) { w.perm = test::i32_tensor({2}, {0, 1}); });
  bad("perm", [&](QuantWeight& w) {  // out of range values are caught before any read
    std::vector<int32_t> p(64, 0);
    p[5] = 64;
    w.perm = test::i32_tensor({64}, p);
  });
  bad("act", [&](QuantWeight& w) { w.act = ActQuant::Int8Token; });  // int4 weights
  bad("input_scale", [&](QuantWeight& w) { w.act = ActQuant::Fp8Static; });
  bad("input_scale", [&](QuantWeight& w) {
    w.act = ActQuant::Fp8Static;
    w.input_scale = std::nanf("");
  });
  bad("smooth", [&](QuantWeight& w) { w.smooth = f32({63}); });
  bad("smooth", [&](QuantWeight& w) { w.smooth = Tensor::zeros({64}, DType::BF16); });
  bad("shape", [&](QuantWeight& w) { w.out = 0; });
  QuantWeight dense = QuantWeight::from_dense(f32({8, 64}));
  dense.act = ActQuant::Fp8Token;
  expect_op_error("linear_q", "act", [&] { ops::linear_q(x, dense, nullptr, y); });
  // y over x's memory.
  expect_op_error("linear_q", "y", [&] {
    QuantWeight w = random_weight(kVariants[0], {64, 64, 32}, 3);
    Tensor xy = f32({2, 64});
    ops::linear_q(xy, w, nullptr, xy);
  });
}

}  // namespace
}  // namespace kite
