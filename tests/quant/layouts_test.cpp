#include "quant/layouts.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <numeric>
#include <random>

#include "core/error.h"
#include "quant/layouts_test_util.h"

namespace kite::quant {
namespace {

using namespace test_util;

// ---- act-order ------------------------------------------------------------------

TEST(Layouts, PermToGidxAndBack) {
  const std::vector<int32_t> perm = {3, 1, 6, 0, 2, 7, 5, 4};
  EXPECT_EQ(perm_to_g_idx(perm, 4), (std::vector<int32_t>{0, 0, 1, 0, 1, 1, 0, 1}));
  // back: columns stably sorted by group
  EXPECT_EQ(g_idx_to_perm({0, 0, 1, 0, 1, 1, 0, 1}, 4, "t", "g_idx"), (std::vector<int32_t>{0, 1, 3, 6, 2, 4, 5, 7}));
  EXPECT_TRUE(g_idx_to_perm({0, 0, 0, 0, 1, 1, 1, 1}, 4, "t", "g_idx").empty());  // identity
  std::mt19937 rng(1);
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<int32_t> p = random_perm(rng, 48, 16, true);
    std::vector<int32_t> back = g_idx_to_perm(perm_to_g_idx(p, 16), 16, "t", "g_idx");
    if (back.empty())
      back = [] {
        std::vector<int32_t> v(48);
        std::iota(v.begin(), v.end(), 0);
        return v;
      }();
    EXPECT_EQ(back, p);
  }
  expect_error([] { g_idx_to_perm({0, 0, 0, 1, 1, 1, 1, 1}, 4, "t", "g_idx"); }, "g_idx");  // unbalanced
  expect_error([] { g_idx_to_perm({0, 0, 0, 0, 1, 1, 1, 2}, 4, "t", "g_idx"); }, "g_idx");  // out of range
  expect_error([] { g_idx_to_perm({0, 0, 0, 0, 1, 1}, 4, "t", "g_idx"); }, "g_idx");        // 4 does not divide 6
}

// ---- GPTQ -------------------------------------------------------------------------

TEST(Layouts, GptqHandPackedInt4) {
  // 8 x 8, per channel; codes u[o][i] = (o + i) % 16, zeros: symmetric 8.
  QuantWeight w;
  w.scheme = QuantScheme::Int4;
  w.out = 8;
  w.in = 8;
  w.group = 8;
  w.qdata = Tensor::zeros({8, 4}, DType::U8);
  for (int o = 0; o < 8; ++o)
    for (int i = 0; i < 8; ++i) set_nibble(w.qdata.data_as<uint8_t>() + o * 4, i, uint8_t((o + i) % 16));
  w.scales = Tensor::from_floats({8, 1}, {1, 2, 3, 4, 5, 6, 7, 8});
  w.zeros = Tensor::from_floats({8, 1}, std::vector<float>(8, 8.0f));
  const TensorMap v1 = to_gptq(w, GptqFormat::V1);
  ASSERT_EQ(find(v1, "qweight").shape(), (Shape{1, 8}));
  // qweight[0][o]: input i at bits 4i, LSB first
  const std::vector<uint32_t> qw = words(find(v1, "qweight"));
  EXPECT_EQ(qw[0], 0x76543210u);
  EXPECT_EQ(qw[1], 0x87654321u);
  EXPECT_EQ(qw[7], 0xEDCBA987u);
  EXPECT_EQ(words(find(v1, "qzeros")), (std::vector<uint32_t>{0x77777777u}));  // v1: zero - 1
  EXPECT_EQ(words(to_gptq(w, GptqFormat::V2)[1].second), (std::vector<uint32_t>{0x88888888u}));
  EXPECT_EQ(find(v1, "scales").dtype(), DType::F16);
  EXPECT_EQ(find(v1, "scales").shape(), (Shape{1, 8}));
  EXPECT_EQ(find(v1, "g_idx").to_floats(), std::vector<float>(8, 0.0f));

  // asymmetric zeros z[o] = o + 1: v1 fields o, v2 fields o + 1 (output o at bits 4o)
  w.zeros = Tensor::from_floats({8, 1}, {1, 2, 3, 4, 5, 6, 7, 8});
  EXPECT_EQ(words(find(to_gptq(w, GptqFormat::V1), "qzeros"))[0], 0x76543210u);
  EXPECT_EQ(words(find(to_gptq(w, GptqFormat::V2), "qzeros"))[0], 0x87654321u);
  // zero 0 cannot be written as v1
  w.zeros.data_as<float>()[3] = 0;
  expect_error([&] { to_gptq(w, GptqFormat::V1); }, "zeros");
  EXPECT_EQ(words(find(to_gptq(w, GptqFormat::V2), "qzeros"))[0], 0x87650321u);
}

TEST(Layouts, GptqHandPackedInt8) {
  // 8-bit packs 4 per word: in = out = 4, q[o][i] = 10 o + i - 20.
  QuantWeight w;
  w.scheme = QuantScheme::Int8;
  w.out = 4;
  w.in = 4;
  w.group = 4;
  w.qdata = Tensor::empty({4, 4}, DType::I8);
  for (int o = 0; o < 4; ++o)
    for (int i = 0; i < 4; ++i) w.qdata.data_as<int8_t>()[o * 4 + i] = int8_t(10 * o + i - 20);
  w.scales = Tensor::from_floats({4, 1}, {0.5f, 0.25f, 1, 2});
  const TensorMap m = to_gptq(w);
  // u = q + 128: row 0 = 108, 109, 110, 111 -> 0x6F6E6D6C
  EXPECT_EQ(words(find(m, "qweight"))[0], 0x6F6E6D6Cu);
  EXPECT_EQ(words(find(m, "qzeros"))[0], 0x7F7F7F7Fu);  // v1: 128 - 1 per byte
  expect_same_weight(from_gptq(getter_of(m), 4, 4, 8, -1, true, GptqFormat::V1, "t"), w);
}

TEST(Layouts, GptqRoundTrips) {
  std::mt19937 rng(7);
  for (GptqFormat f : {GptqFormat::V1, GptqFormat::V2})
    for (int64_t group : {int64_t(32), int64_t(64)})
      for (bool sym : {true, false}) {
        QuantWeight w = int4_weight(rng, 16, 64, group, sym, f == GptqFormat::V1 ? 1 : 0, 15);
        const TensorMap m = to_gptq(w, f);
        const QuantWeight back = from_gptq(getter_of(m), 16, 64, 4, group == 64 ? -1 : group, sym, f, "t");
        expect_same_weight(back, w);
        expect_same_values(back, w);
      }
  // act-order: canonical perms round-trip exactly, any perm by value
  QuantWeight w = int4_weight(rng, 8, 64, 16, false, 1, 15);
  set_perm(w, random_perm(rng, 64, 16, true));
  QuantWeight back = from_gptq(getter_of(to_gptq(w)), 8, 64, 4, 16, false, GptqFormat::V1, "t");
  expect_same_weight(back, w);
  set_perm(w, random_perm(rng, 64, 16, false));
  back = from_gptq(getter_of(to_gptq(w)), 8, 64, 4, 16, false, GptqFormat::V1, "t");
  expect_same_values(back, w);
  // Int8, grouped and act-ordered
  QuantWeight w8 = int8_weight(rng, 8, 64, 32);
  set_perm(w8, random_perm(rng, 64, 32, true));
  for (GptqFormat f : {GptqFormat::V1, GptqFormat::V2})
    expect_same_weight(from_gptq(getter_of(to_gptq(w8, f)), 8, 64, 8, 32, true, f, "t"), w8);
}

TEST(Layouts, GptqArbitraryGidxMatchesReference) {
  // A checkpoint as AutoGPTQ would write it with desc_act: random g_idx
  // (balanced), v1 zeros; Kite's dequantization must equal AutoGPTQ's
  // formula W[o, i] = (u - (zfield + 1)) * s[g_idx[i], o].
  std::mt19937 rng(3);
  const int64_t out = 16, in = 32, group = 8, G = 4;
  std::vector<int32_t> g_idx(in);
  for (int64_t i = 0; i < in; ++i) g_idx[size_t(i)] = int32_t(i / group);
  std::shuffle(g_idx.begin(), g_idx.end(), rng);
  std::uniform_int_distribution<uint32_t> word;
  std::vector<uint32_t> qw(size_t(in / 8 * out)), qz(size_t(G * out / 8));
  for (auto& x : qw) x = word(rng);
  for (auto& x : qz) x = word(rng) & 0xEEEEEEEEu;  // fields < 15: no "+1" carries
  std::vector<float> s(size_t(G * out));
  for (auto& x : s) x = f16_round(std::uniform_real_distribution<float>(0.01f, 1)(rng));
  Tensor gt = Tensor::empty({in}, DType::I32);
  std::copy(g_idx.begin(), g_idx.end(), gt.data_as<int32_t>());
  const TensorMap m = {{"qweight", detail::int32_tensor({in / 8, out}, qw)},
                       {"qzeros", detail::int32_tensor({G, out / 8}, qz)},
                       {"scales", detail::float_tensor({G, out}, s, DType::F16)},
                       {"g_idx", gt}};
  const QuantWeight w = from_gptq(getter_of(m), out, in, 4, group, false, GptqFormat::V1, "t");
  ASSERT_TRUE(w.perm.defined());
  const std::vector<float> dq = dequantize(w).to_floats();
  for (int64_t o = 0; o < out; ++o)
    for (int64_t i = 0; i < in; ++i) {
      const int64_t g = g_idx[size_t(i)];
      const float u = float((qw[size_t((i / 8) * out + o)] >> (4 * (i % 8))) & 0xF);
      const float z = float(((qz[size_t(g * (out / 8) + o / 8)] >> (4 * (o % 8))) & 0xF) + 1);
      ASSERT_EQ(dq[size_t(o * in + i)], (u - z) * s[size_t(g * out + o)]) << o << "," << i;
    }
  // written back, the g_idx is the same grouping
  EXPECT_EQ(find(to_gptq(w), "g_idx").to_floats(), gt.to_floats());
  // v1 zero fields at 15 decode as GPTQModel does: word + 0x11111111, carries included
  TensorMap m2 =
      with(m, "qzeros", detail::int32_tensor({G, out / 8}, std::vector<uint32_t>(size_t(G * out / 8), 0x000000FFu)));
  const QuantWeight w2 = from_gptq(getter_of(m2), out, in, 4, group, false, GptqFormat::V1, "t");
  const std::vector<float> z2 = w2.zeros.to_floats();  // 0x000000FF + 0x11111111 = 0x11111210
  EXPECT_EQ(z2[0 * G], 0.0f);
  EXPECT_EQ(z2[1 * G], 1.0f);
  EXPECT_EQ(z2[2 * G], 2.0f);
  EXPECT_EQ(z2[3 * G], 1.0f);
}

TEST(Layouts, GptqMalformed) {
  std::mt19937 rng(5);
  const QuantWeight w = int4_weight(rng, 16, 32, 16, true);
  const TensorMap m = to_gptq(w);
  auto load = [&](const TensorMap& mm, bool sym = true) {
    return from_gptq(getter_of(mm), 16, 32, 4, 16, sym, GptqFormat::V1, "ckpt");
  };
  expect_error([&] { load(without(m, "qweight")); }, "qweight");
  expect_error([&] { load(with(m, "qweight", Tensor::zeros({4, 16}, DType::I64))); }, "qweight");
  expect_error([&] { load(with(m, "qweight", Tensor::zeros({3, 16}, DType::I32))); }, "qweight");
  expect_error([&] { load(with(m, "scales", Tensor::zeros({2, 15}, DType::F16))); }, "scales");
  expect_error([&] { load(with(m, "scales", Tensor::zeros({2, 16}, DType::I32))); }, "scales");
  expect_error([&] { load(without(m, "qzeros"), false); }, "qzeros");
  EXPECT_NO_THROW(load(without(m, "qzeros"), true));  // symmetric: zero 8
  Tensor bad = Tensor::zeros({32}, DType::I32);
  bad.data_as<int32_t>()[0] = 7;
  expect_error([&] { load(with(m, "g_idx", bad)); }, "g_idx");
  expect_error([&] { from_gptq(getter_of(m), 16, 32, 3, 16, true, GptqFormat::V1, "ckpt"); }, "bits");
  expect_error([&] { from_gptq(getter_of(m), 16, 32, 4, 12, true, GptqFormat::V1, "ckpt"); }, "group_size");
  expect_error([&] { from_gptq(getter_of(m), 12, 32, 4, 16, true, GptqFormat::V1, "ckpt"); }, "shape");
  // 8-bit with an asymmetric zero-point
  const TensorMap m8 = to_gptq(int8_weight(rng, 4, 8, 8));
  expect_error(
      [&] {
        from_gptq(getter_of(with(m8, "qzeros", detail::int32_tensor({1, 1}, {0x7F7F7F70u}))), 4, 8, 8, -1, false,
                  GptqFormat::V1, "ckpt");
      },
      "qzeros");
  // writer-side rejections
  QuantWeight nonint = w;
  nonint.zeros = Tensor::from_floats({16, 2}, std::vector<float>(32, 7.5f));
  expect_error([&] { to_gptq(nonint); }, "zeros");
  expect_error([&] { to_gptq(nf4_weight(rng, 8, 64, 64, nullptr)); }, "scheme");
  QuantWeight odd = int4_weight(rng, 12, 32, 16, true);
  expect_error([&] { to_gptq(odd); }, "shape");
}

// ---- AWQ ---------------------------------------------------------------------------

TEST(Layouts, AwqHandPacked) {
  // 8 x 8, one group; u[o][i] = o, zero[o] = 15 - o.
  QuantWeight w;
  w.scheme = QuantScheme::Int4;
  w.out = 8;
  w.in = 8;
  w.group = 8;
  w.qdata = Tensor::zeros({8, 4}, DType::U8);
  for (int o = 0; o < 8; ++o)
    for (int i = 0; i < 8; ++i) set_nibble(w.qdata.data_as<uint8_t>() + o * 4, i, uint8_t(o));
  w.scales = Tensor::from_floats({8, 1}, {1, 2, 3, 4, 5, 6, 7, 8});
  w.zeros = Tensor::from_floats({8, 1}, {15, 14, 13, 12, 11, 10, 9, 8});
  const TensorMap m = to_awq(w);
  ASSERT_EQ(find(m, "qweight").shape(), (Shape{8, 1}));
  // nibble k holds output [0, 2, 4, 6, 1, 3, 5, 7][k]
  for (uint32_t x : words(find(m, "qweight"))) EXPECT_EQ(x, 0x75316420u);
  EXPECT_EQ(words(find(m, "qzeros")), (std::vector<uint32_t>{0x8ACE9BDFu}));  // zeros, not zero - 1
  EXPECT_EQ(find(m, "scales").shape(), (Shape{1, 8}));
  expect_same_weight(from_awq(getter_of(m), 8, 8, -1, "t"), w);
}

TEST(Layouts, AwqRoundTripAndMalformed) {
  std::mt19937 rng(11);
  for (int64_t group : {int64_t(32), int64_t(128)}) {
    QuantWeight w = int4_weight(rng, 24, 128, group, false);
    const TensorMap m = to_awq(w);
    const QuantWeight back = from_awq(getter_of(m), 24, 128, group, "t");
    expect_same_weight(back, w);
    expect_same_values(back, w);
  }
  QuantWeight w = int4_weight(rng, 16, 64, 32, false);
  const TensorMap m = to_awq(w);
  expect_error([&] { from_awq(getter_of(without(m, "qzeros")), 16, 64, 32, "ckpt"); }, "qzeros");
  expect_error([&] { from_awq(getter_of(m), 16, 64, 16, "ckpt"); }, "qzeros");  // group mismatch -> shapes
  expect_error([&] { from_awq(getter_of(m), 12, 64, 32, "ckpt"); }, "shape");
  expect_error(
      [&] {
        from_awq(getter_of(with(m, "qweight", Tensor::zeros({16, 64}, DType::I32))), 16, 64, 32, "c");
      },
      "qweight");
  set_perm(w, random_perm(rng, 64, 32, true));
  expect_error([&] { to_awq(w); }, "perm");
  expect_error([&] { to_awq(int8_weight(rng, 8, 8, 8)); }, "scheme");
}

// ---- compressed-tensors ---------------------------------------------------------

TEST(Layouts, CtFp8RoundTrips) {
  std::mt19937 rng(13);
  for (bool per_tensor : {false, true})
    for (ActQuant act : {ActQuant::None, ActQuant::Fp8Token, ActQuant::Fp8Static}) {
      const QuantWeight w = fp8_weight(rng, 8, 16, per_tensor, act);
      const TensorMap m = to_ct_fp8(w);
      EXPECT_EQ(find(m, "weight").dtype(), DType::F8_E4M3);
      EXPECT_EQ(find(m, "weight_scale").shape(), per_tensor ? (Shape{1}) : (Shape{8, 1}));
      EXPECT_EQ(m.size(), act == ActQuant::Fp8Static ? 3u : 2u);
      const QuantWeight back = from_ct_fp8(getter_of(m), 8, 16, act, "t");
      expect_same_weight(back, w);
      expect_same_values(back, w);
    }
  const QuantWeight w = fp8_weight(rng, 8, 16, false, ActQuant::Fp8Static);
  const TensorMap m = to_ct_fp8(w, DType::BF16);
  EXPECT_EQ(find(m, "weight_scale").dtype(), DType::BF16);
  expect_same_values(from_ct_fp8(getter_of(m), 8, 16, ActQuant::Fp8Static, "t"),
                     from_ct_fp8(getter_of(m), 8, 16, ActQuant::Fp8Static, "t"));
  expect_error([&] { from_ct_fp8(getter_of(without(m, "input_scale")), 8, 16, ActQuant::Fp8Static, "c"); },
               "input_scale");
  // a scalar [] scale (older llm-compressor) is per tensor
  const QuantWeight s =
      from_ct_fp8(getter_of(with(m, "weight_scale", Tensor::from_floats({}, {0.25f}))), 8, 16, ActQuant::None, "c");
  EXPECT_EQ(s.scales.shape(), (Shape{1}));
}

TEST(Layouts, CtFp8Malformed) {
  std::mt19937 rng(17);
  const TensorMap m = to_ct_fp8(fp8_weight(rng, 8, 16, false, ActQuant::None));
  auto load = [&](const TensorMap& mm) { return from_ct_fp8(getter_of(mm), 8, 16, ActQuant::None, "c"); };
  expect_error([&] { load(with(m, "weight", Tensor::zeros({8, 16}, DType::I8))); }, "weight");
  expect_error([&] { load(with(m, "weight", Tensor::zeros({16, 8}, DType::F8_E4M3))); }, "weight");
  expect_error([&] { load(without(m, "weight_scale")); }, "weight_scale");
  expect_error([&] { load(with(m, "weight_scale", Tensor::zeros({1, 2}, DType::F32))); }, "weight_scale");  // block
  TensorMap zp = m;
  zp.emplace_back("weight_zero_point", Tensor::from_floats({8, 1}, {0, 0, 1, 0, 0, 0, 0, 0}));
  expect_error([&] { load(zp); }, "weight_zero_point");
  expect_error([&] { from_ct_fp8(getter_of(m), 8, 16, ActQuant::Int8Token, "c"); }, "input_activations");
}

TEST(Layouts, CtInt8RoundTrips) {
  std::mt19937 rng(19);
  for (int64_t group : {int64_t(32), int64_t(64)})
    for (ActQuant act : {ActQuant::None, ActQuant::Int8Token}) {
      QuantWeight w = int8_weight(rng, 8, 64, group);
      w.act = act;
      const TensorMap m = to_ct_int8(w);
      EXPECT_EQ(find(m, "weight").dtype(), DType::I8);
      EXPECT_EQ(find(m, "weight_scale").shape(), (Shape{8, 64 / group}));
      expect_same_weight(from_ct_int8(getter_of(m), 8, 64, group == 64 ? -1 : group, act, "t"), w);
    }
  QuantWeight w = int8_weight(rng, 8, 64, 16);
  set_perm(w, random_perm(rng, 64, 16, true));
  const TensorMap m = to_ct_int8(w);
  EXPECT_EQ(find(m, "weight_g_idx").dtype(), DType::I32);
  expect_same_weight(from_ct_int8(getter_of(m), 8, 64, 16, ActQuant::None, "t"), w);
  // per-tensor scale [1] broadcasts; all -1 g_idx (unset) is ignored; zero zero-points pass
  const TensorMap pt = {{"weight", find(m, "weight")},
                        {"weight_scale", Tensor::from_floats({1}, {0.5f})},
                        {"weight_g_idx", detail::float_tensor({64}, std::vector<float>(64, 0), DType::F32)}};
  expect_error([&] { from_ct_int8(getter_of(pt), 8, 64, -1, ActQuant::None, "c"); }, "weight_g_idx");
  Tensor unset = Tensor::empty({64}, DType::I32);
  std::fill_n(unset.data_as<int32_t>(), 64, -1);
  const TensorMap pt2 = {{"weight", find(m, "weight")},
                         {"weight_scale", Tensor::from_floats({1}, {0.5f})},
                         {"weight_g_idx", unset},
                         {"weight_zero_point", Tensor::zeros({1}, DType::I8)}};
  const QuantWeight b = from_ct_int8(getter_of(pt2), 8, 64, -1, ActQuant::Int8Token, "c");
  EXPECT_EQ(b.scales.to_floats(), std::vector<float>(8, 0.5f));
  EXPECT_FALSE(b.perm.defined());
  Tensor zp = Tensor::zeros({8, 1}, DType::I8);
  zp.data_as<int8_t>()[3] = 2;
  expect_error([&] { from_ct_int8(getter_of(with(pt2, "weight_zero_point", zp)), 8, 64, -1, ActQuant::None, "c"); },
               "weight_zero_point");
  expect_error([&] { from_ct_int8(getter_of(pt2), 8, 64, 16, ActQuant::None, "c"); }, "weight_scale");
  QuantWeight smooth = int8_weight(rng, 8, 64, 64);
  smooth.smooth = Tensor::from_floats({64}, std::vector<float>(64, 1));
  expect_error([&] { to_ct_int8(smooth); }, "smooth");
}

TEST(Layouts, CtPackedHandPacked) {
  // out = 9, in = 12 (padding on both packed axes), symmetric 4-bit:
  // stored field = q + 8 = Kite's u; row 0 u = 0..11.
  QuantWeight w;
  w.scheme = QuantScheme::Int4;
  w.out = 9;
  w.in = 12;
  w.group = 12;
  w.qdata = Tensor::zeros({9, 6}, DType::U8);
  for (int o = 0; o < 9; ++o)
    for (int i = 0; i < 12; ++i) set_nibble(w.qdata.data_as<uint8_t>() + o * 6, i, uint8_t((i + o) % 16));
  w.scales = Tensor::from_floats({9, 1}, std::vector<float>(9, 0.5f));
  w.zeros = Tensor::from_floats({9, 1}, std::vector<float>(9, 8.0f));
  const TensorMap m = to_ct_packed(w, true);
  ASSERT_EQ(find(m, "weight_packed").shape(), (Shape{9, 2}));
  const std::vector<uint32_t> pw = words(find(m, "weight_packed"));
  EXPECT_EQ(pw[0], 0x76543210u);
  EXPECT_EQ(pw[1], 0x0000BA98u);  // padding fields are 0
  EXPECT_EQ(find(m, "weight_shape").dtype(), DType::I64);
  EXPECT_EQ(detail::int_values(find(m, "weight_shape")), (std::vector<int64_t>{9, 12}));
  EXPECT_EQ(m.size(), 3u);  // no zero point when symmetric
  expect_same_weight(from_ct_packed(getter_of(m), 9, 12, 4, -1, true, "t"), w);
  // asymmetric: zero point packed along out, [ceil(9 / 8), 1]
  for (int o = 0; o < 9; ++o) w.zeros.data_as<float>()[o] = float(o);
  const TensorMap ma = to_ct_packed(w, false);
  EXPECT_EQ(words(find(ma, "weight_zero_point")), (std::vector<uint32_t>{0x76543210u, 0x00000008u}));
  expect_same_weight(from_ct_packed(getter_of(ma), 9, 12, 4, -1, false, "t"), w);
  expect_error([&] { to_ct_packed(w, true); }, "zeros");  // not all 8
}

TEST(Layouts, CtPackedRoundTrips) {
  std::mt19937 rng(23);
  for (bool sym : {true, false}) {
    QuantWeight w = int4_weight(rng, 10, 64, 32, sym);
    set_perm(w, random_perm(rng, 64, 32, true));
    const TensorMap m = to_ct_packed(w, sym);
    const QuantWeight back = from_ct_packed(getter_of(m), 10, 64, 4, 32, sym, "t");
    expect_same_weight(back, w);
    expect_same_values(back, w);
  }
  const QuantWeight w8 = int8_weight(rng, 6, 40, 8);
  const TensorMap m8 = to_ct_packed(w8, true);
  EXPECT_EQ(find(m8, "weight_packed").shape(), (Shape{6, 10}));
  // 8-bit field = q + 128
  const int8_t q0 = w8.qdata.data_as<int8_t>()[0];
  EXPECT_EQ(words(find(m8, "weight_packed"))[0] & 0xFF, uint32_t(q0 + 128));
  expect_same_weight(from_ct_packed(getter_of(m8), 6, 40, 8, 8, true, "t"), w8);
  expect_error([&] { to_ct_packed(w8, false); }, "symmetric");
  const TensorMap m = to_ct_packed(int4_weight(rng, 8, 32, 16, false), false);
  expect_error([&] { from_ct_packed(getter_of(without(m, "weight_zero_point")), 8, 32, 4, 16, false, "c"); },
               "weight_zero_point");
  Tensor shape = Tensor::empty({2}, DType::I64);
  shape.data_as<int64_t>()[0] = 8;
  shape.data_as<int64_t>()[1] = 30;
  expect_error([&] { from_ct_packed(getter_of(with(m, "weight_shape", shape)), 8, 32, 4, 16, false, "c"); },
               "weight_shape");
}

TEST(Layouts, CtKvScales) {
  const TensorMap m = to_ct_kv_scales(0.5f, 0.25f);
  EXPECT_EQ(from_ct_kv_scales(getter_of(m), "t"), (std::pair{0.5f, 0.25f}));
  const TensorMap legacy = {{"k_proj.output_scale", detail::float_tensor({}, {2.0f}, DType::BF16)},
                            {"v_proj.output_scale", detail::float_tensor({1}, {4.0f}, DType::F16)}};
  EXPECT_EQ(from_ct_kv_scales(getter_of(legacy), "t"), (std::pair{2.0f, 4.0f}));
  EXPECT_FALSE(from_ct_kv_scales(getter_of(TensorMap{}), "t").has_value());
  expect_error([&] { from_ct_kv_scales(getter_of(without(m, "v_scale")), "t"); }, "v_scale");
  expect_error([&] { from_ct_kv_scales(getter_of(with(m, "k_scale", Tensor::zeros({2}, DType::F32))), "t"); },
               "k_scale");
}

// ---- dispatch and a real file ---------------------------------------------------------

TEST(Layouts, DispatchThroughSafetensors) {
  std::mt19937 rng(47);
  const std::string path =
      (std::filesystem::temp_directory_path() / ("kite_layouts_" + std::to_string(::getpid()) + ".safetensors"))
          .string();
  struct Case {
    QuantLayout layout;
    QuantConfigOptions o;
    QuantWeight w;
  };
  std::vector<Case> cases;
  {
    QuantConfigOptions o;
    o.desc_act = true;
    o.group_size = 32;
    QuantWeight w = int4_weight(rng, 16, 64, 32, true);
    set_perm(w, random_perm(rng, 64, 32, true));
    cases.push_back({QuantLayout::Gptq, o, w});
    cases.push_back({QuantLayout::CompressedPacked, o, w});
  }
  {
    QuantConfigOptions o;
    o.sym = false;
    cases.push_back({QuantLayout::Awq, o, int4_weight(rng, 16, 256, 128, false)});
  }
  {
    QuantConfigOptions o;
    o.bits = 8;
    o.group_size = -1;
    o.act = ActQuant::Fp8Static;
    cases.push_back({QuantLayout::CompressedFp8, o, fp8_weight(rng, 8, 32, false, ActQuant::Fp8Static)});
    o.act = ActQuant::Int8Token;
    QuantWeight w = int8_weight(rng, 8, 32, 32);
    w.act = ActQuant::Int8Token;
    cases.push_back({QuantLayout::CompressedInt8, o, w});
  }
  {
    QuantConfigOptions o;
    std::vector<float> a(16, 0);
    for (float& x : a) x = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
    a = bnb_double_quant_roundtrip(a);
    cases.push_back({QuantLayout::BnbNf4, o, nf4_weight(rng, 8, 128, 64, &a)});
  }
  for (const Case& c : cases) {
    TensorMap named;
    for (const auto& [suffix, t] : to_layout(c.w, c.layout, c.o))
      named.emplace_back("model.layers.0.proj." + suffix, t);
    write_safetensors(path, named);
    const Checkpoint ck = Checkpoint::open(path);
    const ParsedQuantConfig p = parse_quantization_config(quantization_config_for(c.layout, c.o), "config.json");
    const QuantWeight back = from_layout(getter_of(ck, "model.layers.0.proj."), c.w.out, c.w.in, p, path);
    expect_same_weight(back, c.w);
    expect_same_values(back, c.w);
  }
  std::filesystem::remove(path);
  // the options must describe the weight
  QuantConfigOptions o;
  o.bits = 8;
  expect_error([&] { to_layout(cases[0].w, QuantLayout::Gptq, o); }, "bits");
  o = {};
  o.group_size = 32;
  expect_error([&] { to_layout(cases[0].w, QuantLayout::Gptq, o); }, "desc_act");
  o.desc_act = true;
  o.group_size = 64;
  expect_error([&] { to_layout(cases[0].w, QuantLayout::Gptq, o); }, "group_size");
}

// ---- malformed input never crashes -------------------------------------------------

TEST(Layouts, MutatedCheckpointsRaiseKiteErrors) {
  // Every tensor of every layout replaced by a wrong dtype, a wrong shape,
  // random bytes or nothing: the readers either load it or throw kite::Error.
  std::mt19937 rng(53);
  struct Case {
    std::string name;
    TensorMap m;
    std::function<QuantWeight(const TensorGetter&)> load;
  };
  std::vector<float> a(8);
  for (float& x : a) x = std::uniform_real_distribution<float>(0.01f, 0.1f)(rng);
  a = bnb_double_quant_roundtrip(a);
  QuantWeight act = int4_weight(rng, 16, 64, 16, false, 1, 15);
  set_perm(act, random_perm(rng, 64, 16, false));
  std::vector<Case> cases = {
      {"gptq", to_gptq(act),
       [](const TensorGetter& g) { return from_gptq(g, 16, 64, 4, 16, false, GptqFormat::V1, "c"); }},
      {"awq", to_awq(int4_weight(rng, 16, 64, 16, false)),
       [](const TensorGetter& g) { return from_awq(g, 16, 64, 16, "c"); }},
      {"fp8", to_ct_fp8(fp8_weight(rng, 16, 64, false, ActQuant::Fp8Static)),
       [](const TensorGetter& g) { return from_ct_fp8(g, 16, 64, ActQuant::Fp8Static, "c"); }},
      {"int8", to_ct_int8(int8_weight(rng, 16, 64, 16)),
       [](const TensorGetter& g) { return from_ct_int8(g, 16, 64, 16, ActQuant::None, "c"); }},
      {"packed", to_ct_packed(act, false),
       [](const TensorGetter& g) { return from_ct_packed(g, 16, 64, 4, 16, false, "c"); }},
      {"bnb", to_bnb_nf4(nf4_weight(rng, 8, 64, 64, &a), true),
       [](const TensorGetter& g) { return from_bnb_nf4(g, 8, 64, "c"); }},
  };
  const DType dtypes[] = {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3,
                          DType::I8,  DType::U8,  DType::I32,  DType::I64};
  int loads = 0, errors = 0;
  for (const Case& c : cases) {
    for (size_t k = 0; k < c.m.size(); ++k) {
      const auto& [name, t] = c.m[k];
      std::vector<TensorMap> variants;
      variants.push_back(without(c.m, name));
      for (DType d : dtypes)
        if (d != t.dtype()) variants.push_back(with(c.m, name, Tensor::zeros(t.shape(), d)));
      for (const Shape& sh : {Shape{}, Shape{1}, Shape{t.numel() + 1}, Shape{2, t.numel()}, Shape{t.numel(), 2, 1}})
        variants.push_back(with(c.m, name, Tensor::zeros(sh, t.dtype())));
      for (int r = 0; r < 20; ++r) {  // same dtype and shape, random bytes
        Tensor x = Tensor::empty(t.shape(), t.dtype());
        auto* p = static_cast<uint8_t*>(x.data());
        for (size_t b = 0; b < x.nbytes(); ++b) p[b] = uint8_t(rng());
        variants.push_back(with(c.m, name, x));
      }
      for (const TensorMap& v : variants) {
        try {
          c.load(getter_of(v));
          ++loads;
        } catch (const Error&) {
          ++errors;
        } catch (const std::exception& e) {
          ADD_FAILURE() << c.name << " / " << name << ": not a kite::Error: " << e.what();
        }
      }
    }
  }
  EXPECT_GT(errors, 100);
  EXPECT_GT(loads, 10);  // random codes / scales are still valid checkpoints
}

}  // namespace
}  // namespace kite::quant
