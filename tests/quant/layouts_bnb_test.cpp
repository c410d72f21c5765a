#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "quant/layouts.h"
#include "quant/layouts_test_util.h"

namespace kite::quant {
namespace {

using namespace test_util;

// ---- bitsandbytes -----------------------------------------------------------------

std::string blob_text(const TensorMap& m) {
  const Tensor& b = find(m, "weight.quant_state.bitsandbytes__nf4");
  return std::string(b.data_as<const char>(), size_t(b.numel()));
}

Tensor u8_text(const std::string& s) {
  Tensor t = Tensor::empty({int64_t(s.size())}, DType::U8);
  std::memcpy(t.data(), s.data(), s.size());
  return t;
}

TEST(Layouts, BnbHandPacked) {
  // 1 x 64, one block: codes c_i = i % 16; bnb puts element 2k in the high nibble.
  QuantWeight w;
  w.scheme = QuantScheme::Nf4;
  w.out = 1;
  w.in = 64;
  w.group = 64;
  w.qdata = Tensor::zeros({1, 32}, DType::U8);
  for (int i = 0; i < 64; ++i) set_nibble(w.qdata.data_as<uint8_t>(), i, uint8_t(i % 16));
  w.scales = Tensor::from_floats({1}, {0.75f});
  const TensorMap m = to_bnb_nf4(w, false);
  const Tensor& packed = find(m, "weight");
  ASSERT_EQ(packed.shape(), (Shape{32, 1}));
  ASSERT_EQ(packed.dtype(), DType::U8);
  EXPECT_EQ(packed.data_as<uint8_t>()[0], 0x01);
  EXPECT_EQ(packed.data_as<uint8_t>()[1], 0x23);
  EXPECT_EQ(packed.data_as<uint8_t>()[7], 0xEF);
  EXPECT_EQ(find(m, "weight.absmax").to_floats(), std::vector<float>{0.75f});
  EXPECT_EQ(find(m, "weight.quant_map").to_floats(), std::vector<float>(kNf4Table.begin(), kNf4Table.end()));
  // the JSON bnb's pack_dict_to_tensor writes (json.dumps spacing and key order)
  EXPECT_EQ(blob_text(m), R"({"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [1, 64]})");
  expect_same_weight(from_bnb_nf4(getter_of(m), 1, 64, "t"), w);
  EXPECT_EQ(m.size(), 4u);
}

TEST(Layouts, BnbRoundTripPlain) {
  std::mt19937 rng(29);
  for (int64_t block : {int64_t(64), int64_t(128), int64_t(32)}) {
    const QuantWeight w = nf4_weight(rng, 6, 256, block, nullptr);
    const TensorMap m = to_bnb_nf4(w, false, "float16");
    const QuantWeight back = from_bnb_nf4(getter_of(m), 6, 256, "t");
    expect_same_weight(back, w);
    expect_same_values(back, w);
  }
}

TEST(Layouts, BnbDoubleQuantRoundTrip) {
  std::mt19937 rng(31);
  const int64_t out = 40, in = 1024, nb = out * in / 64;  // 640 absmax: nested blocks of 256, 256, 128
  std::vector<float> a(static_cast<size_t>(nb));
  std::lognormal_distribution<float> dist(-3.5f, 0.4f);
  for (float& x : a) x = dist(rng);
  const std::vector<float> v = bnb_double_quant_roundtrip(a);
  ASSERT_EQ(v.size(), a.size());
  const QuantWeight w = nf4_weight(rng, out, in, 64, &v);
  const TensorMap m = to_bnb_nf4(w, true);
  EXPECT_EQ(find(m, "weight.absmax").dtype(), DType::U8);
  EXPECT_EQ(find(m, "weight.absmax").shape(), (Shape{nb}));
  EXPECT_EQ(find(m, "weight.nested_absmax").shape(), (Shape{3}));
  EXPECT_EQ(find(m, "weight.nested_quant_map").to_floats(),
            std::vector<float>(bnb_dynamic_map().begin(), bnb_dynamic_map().end()));
  const nlohmann::json st = nlohmann::json::parse(blob_text(m));
  EXPECT_EQ(st["nested_blocksize"], 256);
  EXPECT_EQ(st["nested_dtype"], "float32");
  EXPECT_TRUE(st["nested_offset"].is_number_float());
  // key order as bnb's as_dict
  std::vector<std::string> names;
  for (const auto& e : m) names.push_back(e.first);
  EXPECT_EQ(names, (std::vector<std::string>{"weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax",
                                             "weight.nested_quant_map", "weight.quant_state.bitsandbytes__nf4"}));
  const QuantWeight back = from_bnb_nf4(getter_of(m), out, in, "t");
  expect_same_weight(back, w);
  expect_same_values(back, w);
  // raw absmax values are not what an 8-bit file can hold
  EXPECT_FALSE(bnb_double_quant_exact(a));
  EXPECT_TRUE(bnb_double_quant_exact(v));
  const QuantWeight raw = nf4_weight(rng, out, in, 64, &a);
  expect_error([&] { to_bnb_nf4(raw, true); }, "absmax");
}

// create_dynamic_map(signed=True) in float64, written from its definition.
std::vector<double> dynamic_map_f64() {
  std::vector<double> d;
  for (int i = 0; i < 7; ++i) {
    const int n = (1 << i) + 1;
    for (int k = 0; k + 1 < n; ++k) {
      const double b0 = 0.1 + 0.9 * k / (n - 1), b1 = 0.1 + 0.9 * (k + 1) / (n - 1);
      d.push_back(std::pow(10.0, i - 6) * (b0 + b1) / 2);
      d.push_back(-std::pow(10.0, i - 6) * (b0 + b1) / 2);
    }
  }
  d.push_back(0);
  d.push_back(1);
  std::sort(d.begin(), d.end());
  return d;
}

TEST(Layouts, BnbDynamicMap) {
  const auto& m = bnb_dynamic_map();
  const std::vector<double> ref = dynamic_map_f64();
  ASSERT_EQ(ref.size(), 256u);
  for (size_t k = 0; k < 256; ++k) {
    // float32 arithmetic as torch does it: within 2 ulps of the exact value
    EXPECT_NEAR(m[k], ref[k], 2.4e-7 * std::fabs(ref[k])) << k;
    if (k) {
      EXPECT_LT(m[k - 1], m[k]);
    }
  }
  EXPECT_EQ(m[127], 0.0f);
  EXPECT_EQ(m[255], 1.0f);
  EXPECT_NEAR(m[0], -0.99296875, 1e-7);
  EXPECT_NEAR(m[128], 0.55e-6, 1e-12);
}

double ceil9_f64(double v) {
  if (v == 0) return 0;
  int e;
  std::frexp(v, &e);
  const double step = std::ldexp(1.0, e - 9);
  return std::ceil(v / step) * step;
}

TEST(Layouts, BnbDoubleQuantMatchesFloat64Reference) {
  // Kite's double quantization against a float64 reimplementation of bnb's:
  // x = absmax - offset, blocks of 256 scaled by their (9-bit rounded-up)
  // absmax, nearest value of the dynamic map; a reader sees map[q] * a2 + offset.
  std::mt19937 rng(37);
  const std::vector<double> map = dynamic_map_f64();
  for (int trial = 0; trial < 6; ++trial) {
    const size_t n = std::vector<size_t>{1, 255, 256, 257, 1000, 4096}[size_t(trial)];
    std::vector<float> a(n);
    std::lognormal_distribution<float> dist(-3.0f, 0.2f + 0.3f * float(trial));
    for (float& x : a) x = dist(rng);
    const std::vector<float> v = bnb_double_quant_roundtrip(a);
    // the offset and block scales Kite stores
    const QuantWeight w = nf4_weight(rng, 1, int64_t(n) * 64, 64, &v);
    const TensorMap m = to_bnb_nf4(w, true);
    const double off = nlohmann::json::parse(blob_text(m))["nested_offset"].get<double>();
    const std::vector<float> a2 = find(m, "weight.nested_absmax").to_floats();
    const std::vector<int64_t> codes = detail::int_values(find(m, "weight.absmax"));
    double mean = 0, mx = 0;
    for (float x : a) {
      mean += x;
      mx = std::max(mx, double(std::fabs(x)));
    }
    mean /= double(n);
    // the offset: the mean on a grid of 2^(e-9) for |mean| in [2^(e-1), 2^e)
    // (or, as a fallback, 2^(e-8) for max |absmax| in [2^(e-1), 2^e))
    auto on_grid = [&](double of, int bits) {
      int e;
      std::frexp(of, &e);
      const double step = std::ldexp(1.0, e - bits);
      return std::fabs(off - mean) <= step / 2 * (1 + 1e-6) && off / step == std::nearbyint(off / step);
    };
    EXPECT_TRUE(on_grid(std::fabs(mean), 9) || on_grid(mx, 8)) << "offset " << off << ", mean " << mean;
    int mismatches = 0;
    for (size_t b = 0; b * 256 < n; ++b) {
      double amax = 0;
      for (size_t i = b * 256; i < std::min(n, b * 256 + 256); ++i) amax = std::max(amax, std::fabs(a[i] - off));
      EXPECT_NEAR(a2[b], ceil9_f64(amax), ceil9_f64(amax) / 256) << "block scale";
      for (size_t i = b * 256; i < std::min(n, b * 256 + 256); ++i) {
        const double s = a2[b] > 0 ? (a[i] - off) / a2[b] : 0;
        size_t q = 0;
        for (size_t k = 1; k < 256; ++k)
          if (std::fabs(map[k] - s) < std::fabs(map[q] - s)) q = k;
        const double ref = map[q] * a2[b] + off;
        EXPECT_NEAR(v[i], ref, 1e-6 * (a2[b] + std::fabs(off))) << i;
        if (codes[i] != int64_t(q)) ++mismatches;  // only on (near-)ties
      }
    }
    EXPECT_LE(mismatches, 1) << "n = " << n;
  }
}

TEST(Layouts, BnbDoubleQuantExactOnHardInputs) {
  std::mt19937 rng(41);
  std::vector<std::vector<float>> cases;
  cases.push_back(std::vector<float>(300, 0.0f));     // all zero
  cases.push_back(std::vector<float>(300, 0.0371f));  // constant
  cases.push_back({1e-30f, 5.0f, 0.001f});            // tiny, huge
  std::vector<float> near(700);
  for (float& x : near) x = 0.05f * (1 + 1e-6f * std::uniform_real_distribution<float>(-1, 1)(rng));
  cases.push_back(near);  // spread far below the offset's precision
  std::vector<float> outlier(2000);
  for (float& x : outlier) x = std::uniform_real_distribution<float>(0.01f, 0.02f)(rng);
  outlier[777] = 40.0f;
  cases.push_back(outlier);
  std::vector<float> wide(3000);
  for (float& x : wide) x = std::lognormal_distribution<float>(-4.0f, 2.0f)(rng);
  cases.push_back(wide);
  std::vector<float> bf16(1024);  // absmax of bf16 weights: bf16 values
  for (float& x : bf16) x = bf16_to_f32(f32_to_bf16(std::uniform_real_distribution<float>(0.02f, 0.03f)(rng)));
  cases.push_back(bf16);
  for (size_t c = 0; c < cases.size(); ++c) {
    const std::vector<float> v = bnb_double_quant_roundtrip(cases[c]);
    EXPECT_TRUE(bnb_double_quant_exact(v)) << "case " << c;
    const int64_t nb = int64_t(v.size());
    const QuantWeight w = nf4_weight(rng, nb, 64, 64, &v);
    expect_same_weight(from_bnb_nf4(getter_of(to_bnb_nf4(w, true)), nb, 64, "t"), w);
  }
  EXPECT_TRUE(bnb_double_quant_roundtrip({}).empty());
  expect_error([] { bnb_double_quant_roundtrip({1.0f, NAN}); }, "absmax");
}

TEST(Layouts, BnbReadsHandWrittenDoubleQuant) {
  // What a bnb reader computes: map[q] * nested_absmax + offset, in float32.
  const auto& map = bnb_dynamic_map();
  Tensor codes = Tensor::empty({3}, DType::U8);
  codes.data_as<uint8_t>()[0] = 0;
  codes.data_as<uint8_t>()[1] = 127;
  codes.data_as<uint8_t>()[2] = 255;
  const TensorMap m = {{"weight", Tensor::zeros({96, 1}, DType::U8)},
                       {"weight.absmax", codes},
                       {"weight.quant_map", Tensor::from_floats({16}, {kNf4Table.begin(), kNf4Table.end()})},
                       {"weight.nested_absmax", Tensor::from_floats({1}, {2.0f})},
                       {"weight.nested_quant_map", Tensor::from_floats({256}, {map.begin(), map.end()})},
                       {"weight.quant_state.bitsandbytes__nf4",
                        u8_text(R"({"quant_type": "nf4", "blocksize": 64, "dtype": "float16", "shape": [3, 64], )"
                                R"("nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.5})")}};
  const QuantWeight w = from_bnb_nf4(getter_of(m), 3, 64, "t");
  EXPECT_EQ(w.scales.to_floats(), (std::vector<float>{map[0] * 2.0f + 0.5f, 0.5f, 2.5f}));
  EXPECT_EQ(w.group, 64);
}

TEST(Layouts, BnbMalformed) {
  std::mt19937 rng(43);
  const QuantWeight w = nf4_weight(rng, 4, 128, 64, nullptr);
  const TensorMap m = to_bnb_nf4(w, false);
  auto load = [&](const TensorMap& mm) { return from_bnb_nf4(getter_of(mm), 4, 128, "ckpt"); };
  const std::string st = "weight.quant_state.bitsandbytes__nf4";
  expect_error([&] { load(without(m, st)); }, st);
  TensorMap fp4 = without(m, st);
  fp4.emplace_back("weight.quant_state.bitsandbytes__fp4", find(m, st));
  expect_error([&] { load(fp4); }, "bitsandbytes__fp4");
  expect_error([&] { load(with(m, st, u8_text("{not json"))); }, st);
  expect_error([&] { load(with(m, st, u8_text(R"({"quant_type": "fp4", "blocksize": 64, "shape": [4, 128]})"))); }, st);
  expect_error([&] { load(with(m, st, u8_text(R"({"quant_type": "nf4", "blocksize": 64, "shape": [4, 64]})"))); }, st);
  expect_error([&] { load(with(m, st, u8_text(R"({"quant_type": "nf4", "blocksize": 100, "shape": [4, 128]})"))); },
               st);
  expect_error([&] { load(with(m, st, u8_text(R"({"quant_type": "nf4", "shape": [4, 128]})"))); }, st);
  expect_error([&] { load(with(m, st, u8_text("[1, 2]"))); }, st);
  expect_error([&] { load(with(m, "weight", Tensor::zeros({255, 1}, DType::U8))); }, "weight");
  expect_error([&] { load(with(m, "weight", Tensor::zeros({256, 1}, DType::BF16))); }, "weight");
  expect_error([&] { load(with(m, "weight.quant_map", Tensor::from_floats({16}, std::vector<float>(16, 0.5f)))); },
               "weight.quant_map");
  expect_error([&] { load(with(m, "weight.absmax", Tensor::zeros({8}, DType::U8))); }, "weight.absmax");
  expect_error([&] { load(with(m, "weight.absmax", Tensor::zeros({7}, DType::F32))); }, "weight.absmax");
  // double quant with a part missing
  const std::vector<float> a = bnb_double_quant_roundtrip(std::vector<float>(8, 0.1f));
  const TensorMap dq = to_bnb_nf4(nf4_weight(rng, 4, 128, 64, &a), true);
  expect_error([&] { load(without(dq, "weight.nested_quant_map")); }, "weight.nested_quant_map");
  expect_error([&] { load(without(dq, "weight.nested_absmax")); }, "weight.nested_absmax");
  // writer side
  expect_error([&] { to_bnb_nf4(nf4_weight(rng, 4, 96, 48, nullptr), false); }, "group");
  expect_error([&] { to_bnb_nf4(w, false, "int8"); }, "dtype");
  expect_error([&] { to_bnb_nf4(int4_weight(rng, 8, 64, 64, true), false); }, "scheme");
}

TEST(Layouts, BnbMutatedQuantStateRaisesKiteErrors) {
  std::mt19937 rng(59);
  const std::vector<float> a = bnb_double_quant_roundtrip(std::vector<float>(4, 0.2f));
  const TensorMap m = to_bnb_nf4(nf4_weight(rng, 4, 64, 64, &a), true);
  const nlohmann::json st = nlohmann::json::parse(blob_text(m));
  const std::vector<nlohmann::json> values = {
      nullptr,         true, -1, 0, 1e300, 2.5, "nf4", "fp4", nlohmann::json::array({4, 64}), nlohmann::json::object(),
      int64_t(1) << 40};
  int ok = 0, errors = 0;
  auto run = [&](const std::string& text) {
    try {
      from_bnb_nf4(getter_of(with(m, "weight.quant_state.bitsandbytes__nf4", u8_text(text))), 4, 64, "c");
      ++ok;
    } catch (const Error&) {
      ++errors;
    } catch (const std::exception& e) {
      ADD_FAILURE() << text << ": not a kite::Error: " << e.what();
    }
  };
  for (auto it = st.begin(); it != st.end(); ++it) {
    for (const nlohmann::json& v : values) {
      nlohmann::json x = st;
      x[it.key()] = v;
      run(x.dump());
    }
    nlohmann::json x = st;
    x.erase(it.key());
    run(x.dump());
  }
  const std::string text = st.dump();
  for (int r = 0; r < 300; ++r) {  // byte-level damage
    std::string t = text;
    t[rng() % t.size()] = char(rng());
    if (r % 3 == 0) t.resize(rng() % t.size());
    run(t);
  }
  EXPECT_GT(errors, 50);
  EXPECT_GT(ok, 0);
}

}  // namespace
}  // namespace kite::quant
