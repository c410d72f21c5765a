#include "quant/rtn.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "core/parallel.h"
#include "quant_test_util.h"

namespace kite::quant {
namespace {

using test::expect_error;
using test::normal;

// [out, in] N(0, sigma) with a sprinkling of 8x outliers.
std::vector<float> random_values(int64_t out, int64_t in, uint32_t seed, float sigma = 0.02f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sigma);
  std::vector<float> v(static_cast<size_t>(out * in));
  for (float& x : v) x = nd(rng);
  for (int64_t k = 0; k < out * in / 500; ++k) v[rng() % v.size()] *= 8.0f;
  return v;
}

Tensor random_weight(int64_t out, int64_t in, uint32_t seed) {
  return Tensor::from_floats({out, in}, random_values(out, in, seed));
}

int code_at(const QuantWeight& q, int64_t r, int64_t i) {
  if (q.scheme == QuantScheme::Int8) return q.qdata.data_as<const int8_t>()[r * q.in + i];
  if (q.scheme == QuantScheme::Fp8) return q.qdata.data_as<const uint8_t>()[r * q.in + i];
  return get_nibble(q.qdata.data_as<const uint8_t>() + r * (q.in / 2), i);
}

// |w - dq| <= s / 2 for every element of an int-scheme weight; codes in range.
void check_int_bound(const Tensor& w, const QuantWeight& q) {
  q.validate("test");
  const std::vector<float> wf = w.to_floats(), dq = dequantize(q).to_floats();
  const int64_t ng = q.in / q.group;
  const float* sc = q.scales.data_as<const float>();
  for (int64_t r = 0; r < q.out; ++r)
    for (int64_t i = 0; i < q.in; ++i) {
      const int64_t g = r * ng + i / q.group;
      const double err = std::fabs(double(wf[r * q.in + i]) - dq[r * q.in + i]);
      ASSERT_LE(err, sc[g] * 0.5 * (1 + 1e-5) + 1e-12) << r << "," << i;
      const int c = code_at(q, r, i);
      if (q.scheme == QuantScheme::Int8) {
        ASSERT_GE(c, -127);
        ASSERT_LE(c, 127);
      } else {
        ASSERT_GE(c, 0);
        ASSERT_LE(c, 15);
      }
    }
}

TEST(Rtn, Int8PerChannelAndGrouped) {
  const Tensor w = random_weight(64, 256, 1);
  const std::vector<float> wf = w.to_floats();
  for (int64_t group : {int64_t(-1), int64_t(64)}) {
    const QuantWeight q = quantize_rtn(w, QuantSpec::int8(group));
    ASSERT_EQ(q.scheme, QuantScheme::Int8);
    ASSERT_EQ(q.group, group == -1 ? 256 : group);
    check_int_bound(w, q);
    // scale = absmax / 127 and the absmax element gets code +-127.
    const int64_t ng = q.in / q.group;
    for (int64_t r = 0; r < q.out; ++r)
      for (int64_t g = 0; g < ng; ++g) {
        float m = 0;
        int64_t at = 0;
        for (int64_t i = g * q.group; i < (g + 1) * q.group; ++i)
          if (std::fabs(wf[r * 256 + i]) > m) {
            m = std::fabs(wf[r * 256 + i]);
            at = i;
          }
        EXPECT_FLOAT_EQ(q.scales.data_as<float>()[r * ng + g], m / 127.0f);
        EXPECT_EQ(std::abs(code_at(q, r, at)), 127);
      }
  }
}

TEST(Rtn, Int8RoundsHalfToEven) {
  const float s = 1.0f / 64;  // absmax 127 s -> scale s exactly
  const Tensor w =
      Tensor::from_floats({1, 8}, {127 * s, 2.5f * s, 3.5f * s, -2.5f * s, -3.5f * s, 0.5f * s, 1.5f * s, -126.5f * s});
  const QuantWeight q = quantize_rtn(w, QuantSpec::int8(-1));
  const std::vector<int> want = {127, 2, 4, -2, -4, 0, 2, -126};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(code_at(q, 0, i), want[i]) << i;
}

TEST(Rtn, Int4Symmetric) {
  const Tensor w = random_weight(64, 256, 2);
  const std::vector<float> wf = w.to_floats();
  const QuantWeight q = quantize_rtn(w, QuantSpec::int4(128, true));
  check_int_bound(w, q);
  for (int64_t k = 0; k < q.zeros.numel(); ++k) EXPECT_EQ(q.zeros.data_as<float>()[k], 8.0f);
  // scale = absmax / 7: codes 1..15, the grid is sign-symmetric.
  for (int64_t r = 0; r < q.out; ++r)
    for (int64_t g = 0; g < 2; ++g) {
      float m = 0;
      for (int64_t i = g * 128; i < (g + 1) * 128; ++i) m = std::max(m, std::fabs(wf[r * 256 + i]));
      EXPECT_FLOAT_EQ(q.scales.data_as<float>()[r * 2 + g], m / 7.0f);
      for (int64_t i = g * 128; i < (g + 1) * 128; ++i) EXPECT_GE(code_at(q, r, i), 1);
    }
  // quantize(-w) = -quantize(w)
  std::vector<float> neg = wf;
  for (float& v : neg) v = -v;
  const std::vector<float> a = dequantize(q).to_floats();
  const std::vector<float> b =
      dequantize(quantize_rtn(Tensor::from_floats({64, 256}, neg), QuantSpec::int4(128))).to_floats();
  for (size_t k = 0; k < a.size(); ++k) ASSERT_EQ(a[k], -b[k]);
}

TEST(Rtn, Int4AsymmetricZerosAreIntegers) {
  std::vector<float> v = random_values(32, 256, 3);
  for (int64_t i = 0; i < 256; ++i) {
    v[i] = std::fabs(v[i]) + 0.01f;         // row 0: all positive
    v[256 + i] = -std::fabs(v[256 + i]);    // row 1: all non-positive
    v[512 + i] = 0.0f;                      // row 2: zeros
    v[768 + i] = 0.5f + 0.001f * float(i);  // row 3: far from 0, narrow
  }
  const Tensor w = Tensor::from_floats({32, 256}, v);
  const QuantWeight q = quantize_rtn(w, QuantSpec::int4(64, false));
  check_int_bound(w, q);
  for (int64_t k = 0; k < q.zeros.numel(); ++k) {
    const float z = q.zeros.data_as<float>()[k];
    EXPECT_EQ(z, std::round(z));
    EXPECT_GE(z, 0.0f);
    EXPECT_LE(z, 15.0f);
  }
  const std::vector<float> dq = dequantize(q).to_floats();
  for (int64_t i = 0; i < 256; ++i) EXPECT_EQ(dq[512 + i], 0.0f);
  // Asymmetric beats symmetric on average (one more level, no wasted range).
  EXPECT_LT(quant_error(w, q).mean_sq, quant_error(w, quantize_rtn(w, QuantSpec::int4(64, true))).mean_sq);
}

TEST(Rtn, Nf4NearestLevelAndBound) {
  const Tensor w = random_weight(32, 256, 4);
  const std::vector<float> wf = w.to_floats();
  const QuantWeight q = quantize_rtn(w, QuantSpec::nf4());
  q.validate("test");
  ASSERT_EQ(q.group, 64);
  ASSERT_EQ(q.scales.numel(), 32 * 256 / 64);
  double gap = 0;
  for (int k = 0; k < 15; ++k) gap = std::max(gap, double(kNf4Table[k + 1]) - kNf4Table[k]);
  const std::vector<float> dq = dequantize(q).to_floats();
  for (int64_t r = 0; r < 32; ++r)
    for (int64_t i = 0; i < 256; ++i) {
      const int64_t k = r * 256 + i;
      const float absmax = q.scales.data_as<float>()[k / 64];
      const float x = wf[k] / absmax;
      const int c = code_at(q, r, i);
      for (int j = 0; j < 16; ++j) ASSERT_LE(std::fabs(x - kNf4Table[c]), std::fabs(x - kNf4Table[j]) + 1e-6f);
      ASSERT_LE(std::fabs(wf[k] - dq[k]), gap / 2 * absmax * (1 + 1e-5));
    }
  // absmax per block of 64 consecutive elements.
  for (int64_t b = 0; b < 32 * 4; ++b) {
    float m = 0;
    for (int64_t k = b * 64; k < (b + 1) * 64; ++k) m = std::max(m, std::fabs(wf[k]));
    EXPECT_EQ(q.scales.data_as<float>()[b], m);
  }
}

TEST(Rtn, Nf4MidpointGoesToTheLowerLevel) {
  std::vector<float> v(16, 0.0f);
  v[0] = 1.0f;  // absmax 1: x = w
  for (int k = 0; k < 15; ++k) v[k + 1] = float((double(kNf4Table[k]) + double(kNf4Table[k + 1])) / 2);
  const QuantWeight q = quantize_rtn(Tensor::from_floats({1, 16}, v), QuantSpec::nf4(16));
  EXPECT_EQ(code_at(q, 0, 0), 15);
  for (int k = 0; k < 15; ++k) EXPECT_EQ(code_at(q, 0, k + 1), k) << "midpoint " << k;
  for (int k = 0; k < 15; ++k) {  // just above a midpoint: the upper level
    const float m = v[k + 1];
    EXPECT_EQ(nf4_code(std::nextafter(m, 2.0f)), k + 1);
  }
}

TEST(Rtn, Fp8EncodeMatchesReference) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> e(-14.0f, 9.5f);
  for (int i = 0; i < 50000; ++i) {
    const float f = (rng() & 1 ? -1.0f : 1.0f) * std::exp2(e(rng));
    ASSERT_EQ(fp8_e4m3_encode(f), f32_to_fp8_e4m3(f)) << f;
  }
  // Exact ties between neighbouring codes, the saturation edge, zeros, NaN.
  for (int c = 0; c < 0x7e; ++c) {
    const float mid = (fp8_e4m3_to_f32(uint8_t(c)) + fp8_e4m3_to_f32(uint8_t(c + 1))) / 2;
    ASSERT_EQ(fp8_e4m3_encode(mid), f32_to_fp8_e4m3(mid)) << c;
    ASSERT_EQ(fp8_e4m3_encode(-mid), f32_to_fp8_e4m3(-mid)) << c;
  }
  for (float f : {0.0f, -0.0f, 448.0f, 447.9f, 464.0f, 1e30f, -1e30f, 1e-30f})
    EXPECT_EQ(fp8_e4m3_encode(f), f32_to_fp8_e4m3(f)) << f;
  EXPECT_EQ(fp8_e4m3_encode(NAN) & 0x7f, 0x7f);
}

TEST(Rtn, Fp8PerChannelAndPerTensor) {
  std::vector<float> v = random_values(16, 256, 6);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> e(-16.0f, 0.0f);
  for (int64_t i = 0; i < 256; ++i) v[i] = (i % 2 ? -1.0f : 1.0f) * std::exp2(e(rng));  // row 0: 2^-16 .. 1
  const Tensor w = Tensor::from_floats({16, 256}, v);
  for (bool per_channel : {true, false}) {
    const QuantWeight q = quantize_rtn(w, QuantSpec::fp8(per_channel));
    q.validate("test");
    ASSERT_EQ(q.scales.numel(), per_channel ? 16 : 1);
    const std::vector<float> dq = dequantize(q).to_floats();
    float tensor_max = 0;
    for (float x : v) tensor_max = std::max(tensor_max, std::fabs(x));
    for (int64_t r = 0; r < 16; ++r) {
      const float s = q.scales.data_as<float>()[per_channel ? r : 0];
      float m = per_channel ? 0.0f : tensor_max;
      if (per_channel)
        for (int64_t i = 0; i < 256; ++i) m = std::max(m, std::fabs(v[r * 256 + i]));
      EXPECT_FLOAT_EQ(s, m / 448.0f);
      for (int64_t i = 0; i < 256; ++i) {
        const float x = v[r * 256 + i];
        ASSERT_EQ(code_at(q, r, i), f32_to_fp8_e4m3(x / s));
        const double err = std::fabs(double(x) - dq[r * 256 + i]);
        if (std::fabs(x / s) >= std::ldexp(1.0f, -6))  // normal E4M3: 3 mantissa bits
          ASSERT_LE(err, std::ldexp(1.0, -4) * std::fabs(x) * (1 + 1e-5)) << x;
        else  // subnormal spacing 2^-9
          ASSERT_LE(err, std::ldexp(1.0, -10) * s * (1 + 1e-5)) << x;
      }
    }
  }
}

TEST(Rtn, ExactRoundTripOnTheGrid) {
  std::mt19937 rng(8);
  const int64_t out = 8, in = 128;
  auto check = [&](const QuantSpec& spec, const std::vector<float>& v) {
    const Tensor w = Tensor::from_floats({out, in}, v);
    const QuantWeight q = quantize_rtn(w, spec);
    const std::vector<float> dq = dequantize(q).to_floats();
    for (size_t k = 0; k < v.size(); ++k) ASSERT_EQ(dq[k], v[k]) << quant_scheme_name(spec.scheme) << " " << k;
    const QuantWeight q2 = quantize_rtn(Tensor::from_floats({out, in}, dq), spec);
    EXPECT_EQ(std::memcmp(q.qdata.data(), q2.qdata.data(), q.qdata.nbytes()), 0);
  };
  std::vector<float> v(static_cast<size_t>(out * in));
  // Int8 per group of 32: codes -127..127 with +-127 present, scale 2^-k.
  for (int64_t k = 0; k < out * in; ++k) {
    const float s = std::ldexp(1.0f, -int(5 + (k / 32) % 4));
    const int c = k % 32 == 0 ? (k % 64 ? -127 : 127) : int(rng() % 255) - 127;
    v[k] = float(c) * s;
  }
  check(QuantSpec::int8(32), v);
  // Int4 symmetric: codes -7..7 with +-7 present.
  for (int64_t k = 0; k < out * in; ++k) {
    const float s = std::ldexp(1.0f, -int(3 + (k / 64) % 3));
    const int c = k % 64 == 0 ? (k % 128 ? -7 : 7) : int(rng() % 15) - 7;
    v[k] = float(c) * s;
  }
  check(QuantSpec::int4(64, true), v);
  // Int4 asymmetric: u - z for an integer z, with u = 0 and u = 15 present.
  for (int64_t k = 0; k < out * in; ++k) {
    const int64_t g = k / 64;
    const int z = int(g * 5 % 16);
    const float s = std::ldexp(1.0f, -int(2 + g % 3));
    const int u = k % 64 == 0 ? 0 : k % 64 == 1 ? 15 : int(rng() % 16);
    v[k] = float(u - z) * s;
  }
  check(QuantSpec::int4(64, false), v);
  // NF4: levels times a power-of-two absmax, +-1 present per block.
  for (int64_t k = 0; k < out * in; ++k) {
    const float a = std::ldexp(1.0f, -int(1 + (k / 32) % 5));
    const int c = k % 32 == 0 ? ((k / 32) % 2 ? 0 : 15) : int(rng() % 16);
    v[k] = kNf4Table[c] * a;
  }
  check(QuantSpec::nf4(32), v);
  // FP8: E4M3 values times 2^-8 per row, 448 present.
  for (int64_t k = 0; k < out * in; ++k) {
    const uint8_t c = k % in == 0 ? 0x7e : uint8_t(rng() % 0x7f) | (rng() & 0x80);
    v[k] = fp8_e4m3_to_f32(c) * std::ldexp(1.0f, -8);
  }
  check(QuantSpec::fp8(true), v);
}

TEST(Rtn, ZeroWeightsAndOtherDtypes) {
  const Tensor zero = Tensor::zeros({4, 64}, DType::F32);
  for (const QuantSpec& spec :
       {QuantSpec::int8(), QuantSpec::int4(32), QuantSpec::int4(32, false), QuantSpec::nf4(), QuantSpec::fp8(false)}) {
    const QuantWeight q = quantize_rtn(zero, spec);
    for (float x : dequantize(q).to_floats()) ASSERT_EQ(x, 0.0f) << quant_scheme_name(spec.scheme);
    for (float s : q.scales.to_floats()) ASSERT_TRUE(std::isfinite(s));
  }
  // BF16 input: same as its float values.
  const Tensor w = random_weight(16, 128, 9);
  const Tensor wb = w.to_dtype(DType::BF16);
  const Tensor wf = Tensor::from_floats({16, 128}, wb.to_floats());
  for (const QuantSpec& spec : {QuantSpec::int4(64), QuantSpec::nf4(), QuantSpec::fp8()}) {
    const QuantWeight a = quantize_rtn(wb, spec), b = quantize_rtn(wf, spec);
    EXPECT_EQ(std::memcmp(a.qdata.data(), b.qdata.data(), a.qdata.nbytes()), 0);
    EXPECT_EQ(a.scales.to_floats(), b.scales.to_floats());
  }
}

TEST(Rtn, ThreadCountDoesNotChangeTheResult) {
  const Tensor w = random_weight(64, 256, 10);
  const int saved = num_threads();
  set_num_threads(1);
  const QuantWeight a = quantize_rtn(w, QuantSpec::int4(32, false));
  set_num_threads(4);
  const QuantWeight b = quantize_rtn(w, QuantSpec::int4(32, false));
  set_num_threads(saved);
  EXPECT_EQ(std::memcmp(a.qdata.data(), b.qdata.data(), a.qdata.nbytes()), 0);
  EXPECT_EQ(a.scales.to_floats(), b.scales.to_floats());
  EXPECT_EQ(a.zeros.to_floats(), b.zeros.to_floats());
}

TEST(Rtn, QuantErrorMetrics) {
  const Tensor w = random_weight(32, 256, 11);
  EXPECT_EQ(quant_error(w, QuantWeight::from_dense(w)).max_abs, 0.0);
  const QuantWeight q = quantize_rtn(w, QuantSpec::int4(128));
  const QuantError e = quant_error(w, q);
  const std::vector<float> a = w.to_floats(), b = dequantize(q).to_floats();
  double mx = 0, sq = 0, ref = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    const double d = double(a[k]) - b[k];
    mx = std::max(mx, std::fabs(d));
    sq += d * d;
    ref += double(a[k]) * a[k];
  }
  EXPECT_DOUBLE_EQ(e.max_abs, mx);
  EXPECT_NEAR(e.mean_sq, sq / double(a.size()), 1e-12);
  EXPECT_NEAR(e.rel_fro, std::sqrt(sq / ref), 1e-9);
  // More bits, less error.
  const double e8 = quant_error(w, quantize_rtn(w, QuantSpec::int8(128))).rel_fro;
  const double e_fp8 = quant_error(w, quantize_rtn(w, QuantSpec::fp8())).rel_fro;
  const double e_nf4 = quant_error(w, quantize_rtn(w, QuantSpec::nf4())).rel_fro;
  EXPECT_LT(e8, e.rel_fro / 8);
  EXPECT_LT(e_fp8, e.rel_fro / 2);
  EXPECT_LT(e_nf4, 0.2);
  expect_error([&] { quant_error(Tensor::zeros({2, 2}, DType::F32), q); }, "weight");
}

TEST(Rtn, BadSpecsNameTheField) {
  const Tensor w = random_weight(4, 256, 12);
  expect_error([&] { quantize_rtn(w, QuantSpec::int4(100)); }, "group");
  expect_error([&] { quantize_rtn(w, QuantSpec::nf4(48)); }, "group");
  expect_error([&] { quantize_rtn(w, QuantSpec::int8(0)); }, "group");
  QuantSpec s = QuantSpec::int4();
  s.bits = 5;
  expect_error([&] { quantize_rtn(w, s); }, "bits");
  s.bits = 8;
  expect_error([&] { quantize_rtn(w, s); }, "bits");  // int4 scheme with 8 bits
  QuantSpec i8;
  i8.scheme = QuantScheme::Int8;  // bits left at 4
  expect_error([&] { quantize_rtn(w, i8); }, "bits");
  QuantSpec asym8 = QuantSpec::int8();
  asym8.symmetric = false;
  expect_error([&] { quantize_rtn(w, asym8); }, "symmetric");
  QuantSpec dense;
  dense.scheme = QuantScheme::Dense;
  expect_error([&] { quantize_rtn(w, dense); }, "scheme");
  expect_error([&] { quantize_rtn(random_weight(4, 255, 13), QuantSpec::int4(-1)); }, "shape");
  expect_error([&] { quantize_rtn(random_weight(4, 255, 13), QuantSpec::nf4(255)); }, "shape");
  std::vector<float> v = w.to_floats();
  v[5] = NAN;
  expect_error([&] { quantize_rtn(Tensor::from_floats({4, 256}, v), QuantSpec::int8()); }, "weight");
  expect_error([&] { quantize_rtn(Tensor::zeros({256}, DType::F32), QuantSpec::int8()); }, "weight");
  // Odd in is fine for the 8-bit layouts.
  EXPECT_NO_THROW(quantize_rtn(random_weight(4, 255, 13), QuantSpec::int8()));
  EXPECT_NO_THROW(quantize_rtn(random_weight(4, 255, 13), QuantSpec::fp8()));
}

}  // namespace
}  // namespace kite::quant
