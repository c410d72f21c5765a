#pragma once
// Shared by the layouts_*_test.cpp files: random quantized weights in each of
// Kite's schemes, comparisons and tensor-map edits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "quant/layouts.h"

namespace kite::quant::test_util {

inline float f16_round(float x) { return f16_to_f32(f32_to_f16(x)); }

// Random act-order permutation; `sorted` sorts it within each group, which
// is the canonical form g_idx_to_perm returns (so weights round-trip field
// for field, not only in value).
inline std::vector<int32_t> random_perm(std::mt19937& rng, int64_t in, int64_t group, bool sorted) {
  std::vector<int32_t> p(static_cast<size_t>(in));
  std::iota(p.begin(), p.end(), 0);
  std::shuffle(p.begin(), p.end(), rng);
  if (sorted)
    for (int64_t g = 0; g < in / group; ++g) std::sort(p.begin() + g * group, p.begin() + (g + 1) * group);
  return p;
}

inline void set_perm(QuantWeight& w, const std::vector<int32_t>& p) {
  w.perm = Tensor::empty({w.in}, DType::I32);
  std::copy(p.begin(), p.end(), w.perm.data_as<int32_t>());
}

// Int4 with F16-representable scales and integer zeros in [zlo, zhi] (sym: 8).
inline QuantWeight int4_weight(std::mt19937& rng, int64_t out, int64_t in, int64_t group, bool sym, int zlo = 0,
                               int zhi = 15) {
  QuantWeight w;
  w.scheme = QuantScheme::Int4;
  w.out = out;
  w.in = in;
  w.group = group;
  w.qdata = Tensor::empty({out, in / 2}, DType::U8);
  std::uniform_int_distribution<int> byte(0, 255), zero(zlo, zhi);
  std::uniform_real_distribution<float> scale(1e-3f, 0.1f);
  for (int64_t k = 0; k < out * in / 2; ++k) w.qdata.data_as<uint8_t>()[k] = uint8_t(byte(rng));
  std::vector<float> s(size_t(out * (in / group))), z(s.size());
  for (size_t k = 0; k < s.size(); ++k) {
    s[k] = f16_round(scale(rng));
    z[k] = sym ? 8.0f : float(zero(rng));
  }
  w.scales = Tensor::from_floats({out, in / group}, s);
  w.zeros = Tensor::from_floats({out, in / group}, z);
  return w;
}

inline QuantWeight int8_weight(std::mt19937& rng, int64_t out, int64_t in, int64_t group) {
  QuantWeight w;
  w.scheme = QuantScheme::Int8;
  w.out = out;
  w.in = in;
  w.group = group;
  w.qdata = Tensor::empty({out, in}, DType::I8);
  std::uniform_int_distribution<int> code(-128, 127);
  std::uniform_real_distribution<float> scale(1e-4f, 0.05f);
  for (int64_t k = 0; k < out * in; ++k) w.qdata.data_as<int8_t>()[k] = int8_t(code(rng));
  std::vector<float> s(size_t(out * (in / group)));
  for (float& x : s) x = f16_round(scale(rng));
  w.scales = Tensor::from_floats({out, in / group}, s);
  return w;
}

inline QuantWeight fp8_weight(std::mt19937& rng, int64_t out, int64_t in, bool per_tensor, ActQuant act) {
  QuantWeight w;
  w.scheme = QuantScheme::Fp8;
  w.out = out;
  w.in = in;
  w.act = act;
  w.qdata = Tensor::empty({out, in}, DType::F8_E4M3);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int64_t k = 0; k < out * in; ++k) {
    int b = byte(rng);
    if ((b & 0x7F) == 0x7F) b ^= 1;  // not NaN
    w.qdata.data_as<uint8_t>()[k] = uint8_t(b);
  }
  std::uniform_real_distribution<float> scale(1e-5f, 1e-2f);
  std::vector<float> s(per_tensor ? 1 : size_t(out));
  for (float& x : s) x = scale(rng);
  w.scales = Tensor::from_floats({int64_t(s.size())}, s);
  if (act == ActQuant::Fp8Static) w.input_scale = 0.0123f;
  return w;
}

inline QuantWeight nf4_weight(std::mt19937& rng, int64_t out, int64_t in, int64_t block,
                              const std::vector<float>* absmax) {
  QuantWeight w;
  w.scheme = QuantScheme::Nf4;
  w.out = out;
  w.in = in;
  w.group = block;
  w.qdata = Tensor::empty({out, in / 2}, DType::U8);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int64_t k = 0; k < out * in / 2; ++k) w.qdata.data_as<uint8_t>()[k] = uint8_t(byte(rng));
  std::vector<float> a(size_t(out * in / block));
  std::lognormal_distribution<float> dist(-3.0f, 0.5f);
  for (float& x : a) x = dist(rng);
  w.scales = Tensor::from_floats({int64_t(a.size())}, absmax ? *absmax : a);
  return w;
}

inline std::vector<uint8_t> bytes_of(const Tensor& t) {
  if (!t.defined()) return {};
  Tensor c = t.to(kCpu);
  const uint8_t* p = static_cast<const uint8_t*>(c.data());
  return {p, p + c.nbytes()};
}

inline void expect_same_weight(const QuantWeight& a, const QuantWeight& b) {
  EXPECT_EQ(a.scheme, b.scheme);
  EXPECT_EQ(a.out, b.out);
  EXPECT_EQ(a.in, b.in);
  EXPECT_EQ(a.group, b.group);
  EXPECT_EQ(a.act, b.act);
  EXPECT_EQ(a.input_scale, b.input_scale);
  for (auto [x, y, name] : {std::tuple{&a.qdata, &b.qdata, "qdata"},
                            {&a.scales, &b.scales, "scales"},
                            {&a.zeros, &b.zeros, "zeros"},
                            {&a.perm, &b.perm, "perm"}}) {
    EXPECT_EQ(x->defined(), y->defined()) << name;
    if (x->defined() && y->defined()) {
      EXPECT_EQ(x->shape(), y->shape()) << name;
      EXPECT_EQ(x->dtype(), y->dtype()) << name;
      EXPECT_EQ(bytes_of(*x), bytes_of(*y)) << name;
    }
  }
}

inline void expect_same_values(const QuantWeight& a, const QuantWeight& b) {
  EXPECT_EQ(dequantize(a).to_floats(), dequantize(b).to_floats());
}

inline const Tensor& find(const TensorMap& m, const std::string& name) {
  for (const auto& [n, t] : m)
    if (n == name) return t;
  throw std::runtime_error("no tensor " + name);
}

inline std::vector<uint32_t> words(const Tensor& t) {
  std::vector<uint32_t> v(size_t(t.numel()));
  std::memcpy(v.data(), t.data(), v.size() * 4);
  return v;
}

// Runs f expecting kite::Error whose field contains `field`.
template <typename F>
inline void expect_error(F&& f, const std::string& field) {
  try {
    f();
    ADD_FAILURE() << "no kite::Error (expected field " << field << ")";
  } catch (const Error& e) {
    EXPECT_NE(e.field().find(field), std::string::npos) << "field '" << e.field() << "': " << e.what();
  }
}

inline TensorMap with(TensorMap m, const std::string& name, const Tensor& t) {
  for (auto& [n, x] : m)
    if (n == name) x = t;
  return m;
}
inline TensorMap without(TensorMap m, const std::string& name) {
  std::erase_if(m, [&](const auto& e) { return e.first == name; });
  return m;
}

}  // namespace kite::quant::test_util
