#include "formats/gguf.h"

#include <cmath>
#include <cstring>
#include <random>

#include "formats/gguf_builder.h"
#include "formats/test_util.h"

namespace kite {
namespace {

using test::expect_error;
using test::GgufBuilder;
using test::ScratchDir;
using test::write_file;

std::shared_ptr<GgufFile> parse(const std::string& bytes, const std::string& name = "mem.gguf") {
  auto owner = std::make_shared<std::string>(bytes);
  return GgufFile::from_memory(reinterpret_cast<const uint8_t*>(owner->data()), owner->size(), name, owner);
}

// ---- metadata ----------------------------------------------------------------------

TEST(Gguf, MetadataOfEveryType) {
  GgufBuilder b;
  b.kv<uint8_t>("u8", GgufValueType::U8, 200);
  b.kv<int8_t>("i8", GgufValueType::I8, -100);
  b.kv<uint16_t>("u16", GgufValueType::U16, 60000);
  b.kv<int16_t>("i16", GgufValueType::I16, -30000);
  b.kv<uint32_t>("u32", GgufValueType::U32, 4000000000u);
  b.kv<int32_t>("i32", GgufValueType::I32, -2000000000);
  b.kv<uint64_t>("u64", GgufValueType::U64, 1ull << 40);
  b.kv<int64_t>("i64", GgufValueType::I64, -(1ll << 50));
  b.kv<float>("f32", GgufValueType::F32, 0.25f);
  b.kv<double>("f64", GgufValueType::F64, -1e100);
  b.kv<uint8_t>("yes", GgufValueType::Bool, 1);
  b.kv<uint8_t>("no", GgufValueType::Bool, 0);
  b.kv_string("s", "héllo\0x");
  b.kv_strings("strs", {"a", "", "ccc", "▁t"});
  b.kv_array<float>("floats", GgufValueType::F32, {1.5f, -2.0f, 1e-9f});
  b.kv_array<int32_t>("ints", GgufValueType::I32, {1, -2, 3});
  b.kv_array<uint8_t>("bytes", GgufValueType::U8, {7, 255});
  b.kv_array<int64_t>("big", GgufValueType::I64, {1ll << 40});
  auto f = parse(b.build());

  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->get_int("u8"), 200);
  EXPECT_EQ(f->get_int("i8"), -100);
  EXPECT_EQ(f->get_int("u16"), 60000);
  EXPECT_EQ(f->get_int("i16"), -30000);
  EXPECT_EQ(f->get_int("u32"), 4000000000ll);
  EXPECT_EQ(f->get_int("i32"), -2000000000);
  EXPECT_EQ(f->get_int("u64"), 1ll << 40);
  EXPECT_EQ(f->get_int("i64"), -(1ll << 50));
  EXPECT_DOUBLE_EQ(f->get_float("f32"), 0.25);
  EXPECT_DOUBLE_EQ(f->get_float("f64"), -1e100);
  EXPECT_DOUBLE_EQ(f->get_float("i32"), -2e9);  // integers read as numbers
  EXPECT_EQ(f->find_bool("yes"), true);
  EXPECT_EQ(f->find_bool("no"), false);
  EXPECT_EQ(f->get_bool("yes"), true);
  EXPECT_EQ(f->get_string("s"), "héllo");  // the builder's literal stops at \0
  EXPECT_EQ(f->get_string_array("strs"), (std::vector<std::string>{"a", "", "ccc", "▁t"}));
  EXPECT_EQ(f->get_float_array("floats"), (std::vector<float>{1.5f, -2.0f, 1e-9f}));
  EXPECT_EQ(f->get_int_array("ints"), (std::vector<int32_t>{1, -2, 3}));
  EXPECT_EQ(f->get_int_array("bytes"), (std::vector<int32_t>{7, 255}));
  EXPECT_EQ(f->get_float_array("ints"), (std::vector<float>{1, -2, 3}));
  EXPECT_EQ(f->get_int64_array("big"), (std::vector<int64_t>{1ll << 40}));
  EXPECT_EQ(f->array_size("strs"), 4u);
  EXPECT_EQ(f->array_type("floats"), GgufValueType::F32);
  EXPECT_FALSE(f->array_type("s").has_value());
  EXPECT_EQ(f->keys().size(), 18u);
  EXPECT_TRUE(f->has("f64"));
  EXPECT_FALSE(f->has("nope"));
  EXPECT_FALSE(f->find_int("nope").has_value());
  EXPECT_FALSE(f->find_string("nope").has_value());
  EXPECT_TRUE(f->tensors().empty());
}

TEST(Gguf, TypedGettersNameKeyAndTypes) {
  GgufBuilder b;
  b.kv_string("name", "x");
  b.kv<float>("f", GgufValueType::F32, 1.0f);
  b.kv_array<int32_t>("ints", GgufValueType::I32, {1 << 30, -1});
  b.kv_array<int64_t>("wide", GgufValueType::I64, {1ll << 40});
  auto f = parse(b.build(), "t.gguf");
  expect_error([&] { f->get_int("name"); }, {"t.gguf", "name", "expected integer, found string"});
  expect_error([&] { f->get_string("f"); }, {"t.gguf", "f", "expected string, found float32"});
  expect_error([&] { f->find_bool("f"); }, {"f", "expected bool, found float32"});
  expect_error([&] { f->get_string("absent"); }, {"t.gguf", "absent", "missing"});
  expect_error([&] { f->get_string_array("ints"); }, {"ints", "expected array of string, found array of int32"});
  expect_error([&] { f->get_float_array("name"); }, {"name", "expected array of numbers, found string"});
  expect_error([&] { f->get_int_array("wide"); }, {"wide", "does not fit in int32"});
  expect_error([&] { f->array_size("f"); }, {"f", "expected array"});
}

TEST(Gguf, Version2IsAccepted) {
  GgufBuilder b(2);
  b.kv_string("general.architecture", "llama");
  auto f = parse(b.build());
  EXPECT_EQ(f->version(), 2u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
}

// ---- tensors -----------------------------------------------------------------------

std::string f32_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

TEST(Gguf, TensorInfosShapesAndPlainData) {
  GgufBuilder b;
  std::vector<float> w(2 * 3);
  for (size_t i = 0; i < w.size(); ++i) w[i] = float(i) * 0.5f;
  b.tensor("w", GgmlType::F32, {3, 2}, f32_bytes(w));  // ggml ne [3, 2] = Kite [2, 3]
  std::string h;
  for (float v : {1.0f, -2.0f, 0.5f, 65504.0f}) {
    uint16_t x = f32_to_f16(v);
    h.append(reinterpret_cast<const char*>(&x), 2);
  }
  b.tensor("h", GgmlType::F16, {4}, h);
  std::string bf;
  for (float v : {3.0f, -0.125f}) {
    uint16_t x = f32_to_bf16(v);
    bf.append(reinterpret_cast<const char*>(&x), 2);
  }
  b.tensor("bf", GgmlType::BF16, {2, 1, 1}, bf);
  std::string bytes = b.build();
  auto f = parse(bytes);
  ASSERT_EQ(f->tensors().size(), 3u);
  const GgufTensorInfo* wi = f->find_tensor("w");
  ASSERT_NE(wi, nullptr);
  EXPECT_EQ(wi->shape, (Shape{2, 3}));
  EXPECT_EQ(wi->type, GgmlType::F32);
  EXPECT_EQ(wi->nbytes, 24u);
  EXPECT_EQ(wi->offset % 32, 0u);
  EXPECT_EQ(wi->offset, f->data_offset());
  EXPECT_EQ(std::memcmp(bytes.data() + wi->offset, w.data(), 24), 0);  // absolute file offset
  EXPECT_EQ(f->find_tensor("bf")->shape, (Shape{1, 1, 2}));
  EXPECT_EQ(f->find_tensor("nope"), nullptr);

  EXPECT_EQ(f->dequantize("w").to_floats(), w);
  EXPECT_EQ(f->dequantize("w").shape(), (Shape{2, 3}));
  EXPECT_EQ(f->dequantize("h").to_floats(), (std::vector<float>{1.0f, -2.0f, 0.5f, 65504.0f}));
  EXPECT_EQ(f->dequantize("bf").to_floats(), (std::vector<float>{3.0f, -0.125f}));
  Tensor view = f->tensor("h");
  EXPECT_EQ(view.dtype(), DType::F16);
  EXPECT_EQ(view.to_floats(), (std::vector<float>{1.0f, -2.0f, 0.5f, 65504.0f}));
  expect_error([&] { f->dequantize("nope"); }, {"mem.gguf", "nope", "not in file"});
}

TEST(Gguf, CustomAlignment) {
  GgufBuilder b;
  b.set_alignment(64);
  b.tensor("a", GgmlType::F32, {1}, f32_bytes({1.0f}));
  b.tensor("b", GgmlType::F32, {2}, f32_bytes({2.0f, 3.0f}));
  auto f = parse(b.build());
  EXPECT_EQ(f->alignment(), 64u);
  EXPECT_EQ(f->data_offset() % 64, 0u);
  EXPECT_EQ(f->find_tensor("b")->offset - f->find_tensor("a")->offset, 64u);
  EXPECT_EQ(f->dequantize("b").to_floats(), (std::vector<float>{2.0f, 3.0f}));
}

TEST(Gguf, OpenFromDisk) {
  ScratchDir dir;
  GgufBuilder b;
  b.kv_string("general.architecture", "llama");
  b.tensor("t", GgmlType::F32, {2}, f32_bytes({4.0f, 5.0f}));
  write_file(dir.file("x.gguf"), b.build());
  auto f = GgufFile::open(dir.file("x.gguf"));
  EXPECT_EQ(f->path(), dir.file("x.gguf"));
  Tensor t = f->tensor("t");
  f.reset();  // the view keeps the mapping alive
  EXPECT_EQ(t.to_floats(), (std::vector<float>{4.0f, 5.0f}));
  expect_error([&] { GgufFile::open(dir.file("absent.gguf")); }, {"absent.gguf", "cannot open"});
}

// ---- bad input -------------------------------------------------------------------------

void expect_bad(const std::string& bytes, const std::vector<std::string>& parts) {
  std::vector<std::string> all = {"bad.gguf"};
  all.insert(all.end(), parts.begin(), parts.end());
  expect_error([&] { parse(bytes, "bad.gguf"); }, all);
}

std::string header(uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
  std::string s = "GGUF";
  GgufBuilder::put<uint32_t>(s, version);
  GgufBuilder::put<uint64_t>(s, n_tensors);
  GgufBuilder::put<uint64_t>(s, n_kv);
  return s;
}

TEST(GgufBad, Magic) {
  expect_bad("GGML\3\0\0\0", {"magic", "expected \"GGUF\", found \"GGML\""});
  expect_bad("", {"magic"});
  expect_bad("GG", {"magic"});
}

TEST(GgufBad, Version) {
  expect_bad(header(1, 0, 0), {"version", "GGUF version 1 is not supported"});
  expect_bad(header(4, 0, 0), {"version", "GGUF version 4"});
  expect_bad(std::string("GGUF\3\0", 6), {"version", "file ends"});
}

TEST(GgufBad, AbsurdCountsFailFast) {
  expect_bad(header(3, 1ull << 60, 0), {"tensor_count", "1152921504606846976 tensors cannot fit"});
  expect_bad(header(3, 0, 1ull << 60), {"kv_count", "cannot fit"});
  expect_bad(header(3, 0, ~0ull), {"kv_count", "cannot fit"});
  // An array claiming 2^61 float elements.
  std::string s = header(3, 0, 1);
  GgufBuilder::put_str(s, "arr");
  GgufBuilder::put<uint32_t>(s, uint32_t(GgufValueType::Array));
  GgufBuilder::put<uint32_t>(s, uint32_t(GgufValueType::F32));
  GgufBuilder::put<uint64_t>(s, 1ull << 61);
  s += std::string(16, '\0');
  expect_bad(s, {"arr", "runs past end of file"});
  // ... and 2^61 strings.
  std::string t = header(3, 0, 1);
  GgufBuilder::put_str(t, "arr");
  GgufBuilder::put<uint32_t>(t, uint32_t(GgufValueType::Array));
  GgufBuilder::put<uint32_t>(t, uint32_t(GgufValueType::String));
  GgufBuilder::put<uint64_t>(t, 1ull << 61);
  t += std::string(16, '\0');
  expect_bad(t, {"arr", "runs past end of file"});
}

TEST(GgufBad, TruncatedStrings) {
  std::string s = header(3, 0, 1);
  GgufBuilder::put<uint64_t>(s, 1000);  // key length past the end
  s += std::string(40, 'k');
  expect_bad(s, {"metadata[0]", "key length 1000", "runs past end of file"});

  GgufBuilder b;
  b.kv_string("k", "a long string value");
  std::string full = b.build();
  expect_bad(full.substr(0, full.size() - 5), {"k", "string value length 19", "runs past end of file"});

  GgufBuilder c;
  c.kv_strings("toks", {"one", "two", "three"});
  std::string arr = c.build();
  expect_bad(arr.substr(0, arr.size() - 2), {"toks", "string element 2 length 5 runs past end of file"});
  expect_bad(arr.substr(0, arr.size() - 9), {"toks"});
}

TEST(GgufBad, ValueTypesAndKeys) {
  GgufBuilder b;
  b.kv_raw("weird", 13, "");
  expect_bad(b.build(), {"weird", "unknown value type 13"});
  GgufBuilder d;
  d.kv_string("k", "a");
  d.kv_string("k", "b");
  expect_bad(d.build(), {"k", "duplicate metadata key"});
  GgufBuilder e;
  e.kv<uint32_t>("general.alignment", GgufValueType::U32, 48);
  expect_bad(e.build(), {"general.alignment", "48 is not a positive power of two"});
  GgufBuilder g;
  g.kv<uint32_t>("general.alignment", GgufValueType::U32, 0);
  expect_bad(g.build(), {"general.alignment", "0 is not"});
}

TEST(GgufBad, TensorInfos) {
  {
    GgufBuilder b;
    b.tensor("t", GgmlType::F32, {1, 1, 1, 1, 1}, f32_bytes({1.0f}));
    expect_bad(b.build(), {"t", "n_dims 5 exceeds the maximum of 4"});
  }
  {
    GgufBuilder b;
    b.tensor("t", GgmlType(99), {4}, std::string(16, '\0'));
    expect_bad(b.build(), {"t", "ggml type type 99 is not supported"});
  }
  {
    GgufBuilder b;
    b.tensor("t", GgmlType::Q8_0, {40}, std::string(34 * 2, '\0'));
    expect_bad(b.build(), {"t", "row length 40 is not a multiple of the Q8_0 block size 32"});
  }
  {
    GgufBuilder b;
    b.tensor("t", GgmlType::F32, {1000}, f32_bytes({1.0f}));  // claims 4000 bytes, has 4
    expect_bad(b.build(), {"t", "runs past end of file"});
  }
  {
    GgufBuilder b;
    b.tensor("t", GgmlType::F32, {1ull << 40, 1ull << 40}, "");
    expect_bad(b.build(), {"t", "overflow"});
  }
  {
    GgufBuilder b;
    b.tensor("t", GgmlType::F32, {0, 1ull << 40, 1ull << 40}, "");
    expect_bad(b.build(), {"t", "overflow"});
  }
  {
    GgufBuilder b;
    b.tensor("t", GgmlType::F32, {1}, f32_bytes({1.0f}));
    b.tensor("t", GgmlType::F32, {1}, f32_bytes({1.0f}));
    expect_bad(b.build(), {"t", "duplicate tensor name"});
  }
  {
    // Offset not a multiple of the alignment.
    std::string s = header(3, 1, 0);
    GgufBuilder::put_str(s, "t");
    GgufBuilder::put<uint32_t>(s, 1);
    GgufBuilder::put<uint64_t>(s, 1);
    GgufBuilder::put<uint32_t>(s, uint32_t(GgmlType::F32));
    GgufBuilder::put<uint64_t>(s, 4);
    s.resize(128, '\0');
    expect_bad(s, {"t", "offset 4 is not a multiple of the alignment 32"});
  }
}

TEST(GgufBad, EveryTruncationOfAValidFileFailsCleanly) {
  GgufBuilder b;
  b.kv_string("general.architecture", "llama");
  b.kv_strings("toks", {"a", "bb"});
  b.kv_array<float>("scores", GgufValueType::F32, {1, 2});
  b.tensor("t", GgmlType::Q8_0, {32, 2}, std::string(68, '\1'));
  std::string full = b.build();
  EXPECT_NO_THROW(parse(full));
  for (size_t n = 0; n < full.size(); ++n) {
    try {
      parse(full.substr(0, n), "cut.gguf");
      ADD_FAILURE() << "truncation to " << n << " bytes was accepted";
    } catch (const Error& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr("cut.gguf"));
    }
  }
}

// ---- dequantization ----------------------------------------------------------------------
//
// Each test packs blocks from integer codes and scales following the ggml
// layout, element by element (the inverse direction of the dequantizer),
// and checks dequantization reproduces value = f(code, scale) exactly.

uint16_t h16(float v) { return f32_to_f16(v); }
float r16(float v) { return f16_to_f32(f32_to_f16(v)); }

template <typename T>
void put_at(std::string& s, size_t at, T v) {
  std::memcpy(s.data() + at, &v, sizeof(T));
}

std::vector<float> dq(GgmlType t, const std::string& blocks, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  dequantize_ggml(t, blocks.data(), out.data(), n);
  return out;
}

TEST(GgmlDequant, Q4_0) {
  std::mt19937 rng(1);
  std::string blk(18, '\0');
  float d = 0.037f;
  put_at(blk, 0, h16(d));
  std::vector<int> q(32);
  for (int i = 0; i < 32; ++i) {
    q[i] = int(rng() % 16);
    uint8_t& byte = reinterpret_cast<uint8_t&>(blk[2 + i % 16]);
    byte |= uint8_t(i < 16 ? q[i] : q[i] << 4);
  }
  std::vector<float> y = dq(GgmlType::Q4_0, blk, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], float(q[i] - 8) * r16(d)) << i;
}

TEST(GgmlDequant, Q4_1) {
  std::mt19937 rng(2);
  std::string blk(20, '\0');
  float d = 0.5f, m = -3.25f;
  put_at(blk, 0, h16(d));
  put_at(blk, 2, h16(m));
  std::vector<int> q(32);
  for (int i = 0; i < 32; ++i) {
    q[i] = int(rng() % 16);
    reinterpret_cast<uint8_t&>(blk[4 + i % 16]) |= uint8_t(i < 16 ? q[i] : q[i] << 4);
  }
  std::vector<float> y = dq(GgmlType::Q4_1, blk, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y[i], float(q[i]) * d + m) << i;
}

std::string pack_q5(const std::vector<int>& q, size_t qh_at) {
  std::string s(qh_at + 4 + 16, '\0');
  uint32_t qh = 0;
  for (int i = 0; i < 32; ++i) {
    if (q[i] & 16) qh |= 1u << i;  // bit i is the fifth bit of element i
    reinterpret_cast<uint8_t&>(s[qh_at + 4 + i % 16]) |= uint8_t(i < 16 ? (q[i] & 15) : (q[i] & 15) << 4);
  }
  put_at(s, qh_at, qh);
  return s;
}

TEST(GgmlDequant, Q5_0AndQ5_1) {
  std::mt19937 rng(3);
  std::vector<int> q(32);
  for (int& v : q) v = int(rng() % 32);
  q[0] = 31;
  q[31] = 16;
  q[16] = 0;
  std::string b0 = pack_q5(q, 2);
  put_at(b0, 0, h16(0.125f));
  std::vector<float> y0 = dq(GgmlType::Q5_0, b0, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y0[i], float(q[i] - 16) * 0.125f) << i;

  std::string b1 = pack_q5(q, 4);
  put_at(b1, 0, h16(0.25f));
  put_at(b1, 2, h16(-1.5f));
  std::vector<float> y1 = dq(GgmlType::Q5_1, b1, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y1[i], float(q[i]) * 0.25f - 1.5f) << i;
}

TEST(GgmlDequant, Q8_0AndQ8_1AndQ8_K) {
  std::mt19937 rng(4);
  std::string b(34 * 2, '\0');
  std::vector<int> q(64);
  for (int blk = 0; blk < 2; ++blk) {
    put_at(b, 34 * blk, h16(blk ? 0.01f : -2.0f));
    for (int i = 0; i < 32; ++i) {
      q[32 * blk + i] = int(rng() % 256) - 128;
      b[34 * blk + 2 + i] = char(int8_t(q[32 * blk + i]));
    }
  }
  std::vector<float> y = dq(GgmlType::Q8_0, b, 64);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(y[i], float(q[i]) * (i < 32 ? -2.0f : r16(0.01f))) << i;

  std::string b1(36, '\0');
  put_at(b1, 0, h16(0.5f));
  put_at(b1, 2, h16(123.0f));  // s is not used to dequantize
  for (int i = 0; i < 32; ++i) b1[4 + i] = char(int8_t(q[i]));
  std::vector<float> y1 = dq(GgmlType::Q8_1, b1, 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(y1[i], float(q[i]) * 0.5f) << i;

  std::string bk(292, '\0');
  float dk = 0.0123f;
  put_at(bk, 0, dk);
  std::vector<int> qk(256);
  for (int i = 0; i < 256; ++i) {
    qk[i] = int(rng() % 256) - 128;
    bk[4 + i] = char(int8_t(qk[i]));
  }
  std::vector<float> yk = dq(GgmlType::Q8_K, bk, 256);
  for (int i = 0; i < 256; ++i) EXPECT_EQ(yk[i], dk * float(qk[i])) << i;
}

// Packs 8 six-bit (scale, min) pairs into the 12-byte K-quant scale array.
void pack_k_scales(uint8_t* out, const int* sc, const int* mn) {
  for (int j = 0; j < 4; ++j) {
    out[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
    out[j + 4] = uint8_t((mn[j] & 63) | ((mn[j + 4] >> 4) << 6));
    out[j + 8] = uint8_t((sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4));
  }
}

TEST(GgmlDequant, Q4_K) {
  std::mt19937 rng(5);
  std::string b(144, '\0');
  float d = 0.0625f, dmin = 0.03125f;
  put_at(b, 0, h16(d));
  put_at(b, 2, h16(dmin));
  int sc[8], mn[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = int(rng() % 64);
    mn[j] = int(rng() % 64);
  }
  sc[7] = 63;
  mn[5] = 63;
  pack_k_scales(reinterpret_cast<uint8_t*>(&b[4]), sc, mn);
  std::vector<int> q(256);
  for (int e = 0; e < 256; ++e) {
    q[e] = int(rng() % 16);
    int sub = e / 32, chunk = e / 64, l = e % 32;
    uint8_t& byte = reinterpret_cast<uint8_t&>(b[16 + 32 * chunk + l]);
    byte |= uint8_t(sub % 2 == 0 ? q[e] : q[e] << 4);  // even sub-block: low nibbles
  }
  std::vector<float> y = dq(GgmlType::Q4_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    int sub = e / 32;
    EXPECT_EQ(y[e], d * float(sc[sub]) * float(q[e]) - dmin * float(mn[sub])) << e;
  }
}

TEST(GgmlDequant, Q5_K) {
  std::mt19937 rng(6);
  std::string b(176, '\0');
  float d = 0.125f, dmin = 0.25f;
  put_at(b, 0, h16(d));
  put_at(b, 2, h16(dmin));
  int sc[8], mn[8];
  for (int j = 0; j < 8; ++j) {
    sc[j] = int(rng() % 64);
    mn[j] = int(rng() % 64);
  }
  pack_k_scales(reinterpret_cast<uint8_t*>(&b[4]), sc, mn);
  std::vector<int> q(256);
  for (int e = 0; e < 256; ++e) {
    q[e] = int(rng() % 32);
    int sub = e / 32, chunk = e / 64, l = e % 32;
    reinterpret_cast<uint8_t&>(b[48 + 32 * chunk + l]) |= uint8_t(sub % 2 == 0 ? (q[e] & 15) : (q[e] & 15) << 4);
    if (q[e] & 16) reinterpret_cast<uint8_t&>(b[16 + l]) |= uint8_t(1u << sub);  // bit `sub` of qh[l]
  }
  std::vector<float> y = dq(GgmlType::Q5_K, b, 256);
  for (int e = 0; e < 256; ++e) {
    int sub = e / 32;
    EXPECT_EQ(y[e], d * float(sc[sub]) * float(q[e]) - dmin * float(mn[sub])) << e;
  }
}

TEST(GgmlDequant, Q6_K) {
  std::mt19937 rng(7);
  std::string b(210, '\0');
  float d = 0.015625f;
  put_at(b, 208, h16(d));
  int sc[16];
  for (int j = 0; j < 16; ++j) {
    sc[j] = int(rng() % 256) - 128;
    b[192 + j] = char(int8_t(sc[j]));
  }
  std::vector<int> q(256);
  for (int e = 0; e < 256; ++e) {
    q[e] = int(rng() % 64);
    int half = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
    // quarters 0,1 use low nibbles of ql[l], ql[l+32]; quarters 2,3 the high nibbles.
    size_t ql_at = size_t(64 * half + l + (quarter % 2) * 32);
    reinterpret_cast<uint8_t&>(b[ql_at]) |= uint8_t(quarter < 2 ? (q[e] & 15) : (q[e] & 15) << 4);
    reinterpret_cast<uint8_t&>(b[128 + 32 * half + l]) |= uint8_t((q[e] >> 4) << (2 * quarter));
  }
  std::vector<float> y = dq(GgmlType::Q6_K, b, 256);
  for (int e = 0; e < 256; ++e) EXPECT_EQ(y[e], d * float(sc[e / 16]) * float(q[e] - 32)) << e;
}

TEST(GgmlDequant, Q2_K) {
  std::mt19937 rng(8);
  std::string b(84, '\0');
  float d = 0.5f, dmin = 0.25f;
  put_at(b, 80, h16(d));
  put_at(b, 82, h16(dmin));
  int sc[16], mn[16];
  for (int j = 0; j < 16; ++j) {
    sc[j] = int(rng() % 16);
    mn[j] = int(rng() % 16);
    b[j] = char(uint8_t(sc[j] | (mn[j] << 4)));
  }
  std::vector<int> q(256);
  for (int e = 0; e < 256; ++e) {
    q[e] = int(rng() % 4);
    int half = e / 128, r = e % 128, shift = 2 * (r / 32), l = r % 32;
    reinterpret_cast<uint8_t&>(b[16 + 32 * half + l]) |= uint8_t(q[e] << shift);
  }
  std::vector<float> y = dq(GgmlType::Q2_K, b, 256);
  for (int e = 0; e < 256; ++e) EXPECT_EQ(y[e], d * float(sc[e / 16]) * float(q[e]) - dmin * float(mn[e / 16])) << e;
}

// Round trip: quantize random values by hand the way ggml's reference
// quantizers do, and bound the dequantization error by half a step.
TEST(GgmlDequant, RoundTripErrorBounds) {
  std::mt19937 rng(9);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int n_blocks = 8;
  std::vector<float> x(32 * n_blocks);
  for (float& v : x) v = nd(rng);

  std::string q8(34 * n_blocks, '\0'), q4(18 * n_blocks, '\0'), q5(22 * n_blocks, '\0');
  std::vector<float> step8(n_blocks), step4(n_blocks), step5(n_blocks);
  for (int blk = 0; blk < n_blocks; ++blk) {
    const float* v = &x[32 * blk];
    float amax = 0, max = 0;
    for (int i = 0; i < 32; ++i)
      if (std::fabs(v[i]) > amax) {
        amax = std::fabs(v[i]);
        max = v[i];
      }
    float d8 = r16(amax / 127);
    put_at(q8, 34 * blk, h16(d8));
    for (int i = 0; i < 32; ++i) q8[34 * blk + 2 + i] = char(int8_t(std::lround(std::clamp(v[i] / d8, -127.f, 127.f))));
    step8[blk] = d8;

    float d4 = r16(max / -8);
    put_at(q4, 18 * blk, h16(d4));
    for (int i = 0; i < 32; ++i) {
      int c = std::clamp(int(std::lround(v[i] / d4)) + 8, 0, 15);
      reinterpret_cast<uint8_t&>(q4[18 * blk + 2 + i % 16]) |= uint8_t(i < 16 ? c : c << 4);
    }
    step4[blk] = std::fabs(d4);

    float d5 = r16(max / -16);
    put_at(q5, 22 * blk, h16(d5));
    uint32_t qh = 0;
    for (int i = 0; i < 32; ++i) {
      int c = std::clamp(int(std::lround(v[i] / d5)) + 16, 0, 31);
      if (c & 16) qh |= 1u << i;
      reinterpret_cast<uint8_t&>(q5[22 * blk + 6 + i % 16]) |= uint8_t(i < 16 ? (c & 15) : (c & 15) << 4);
    }
    put_at(q5, 22 * blk + 2, qh);
    step5[blk] = std::fabs(d5);
  }
  std::vector<float> y8 = dq(GgmlType::Q8_0, q8, 32 * n_blocks);
  std::vector<float> y4 = dq(GgmlType::Q4_0, q4, 32 * n_blocks);
  std::vector<float> y5 = dq(GgmlType::Q5_0, q5, 32 * n_blocks);
  for (int i = 0; i < 32 * n_blocks; ++i) {
    int blk = i / 32;
    // Half a step, plus the clamp at the top of the range (the extreme value
    // maps to code -8/-16 exactly, its mirror may lose up to one more step).
    EXPECT_LE(std::fabs(y8[i] - x[i]), 0.5f * step8[blk] * 1.01f + 1e-6f) << i;
    EXPECT_LE(std::fabs(y4[i] - x[i]), 1.0f * step4[blk] * 1.01f + 1e-6f) << i;
    EXPECT_LE(std::fabs(y5[i] - x[i]), 1.0f * step5[blk] * 1.01f + 1e-6f) << i;
  }
  // Most values are within half a step for the 4/5-bit types too.
  int within = 0;
  for (int i = 0; i < 32 * n_blocks; ++i) within += std::fabs(y4[i] - x[i]) <= 0.5f * step4[i / 32] * 1.01f;
  EXPECT_GT(within, 32 * n_blocks * 9 / 10);
}

TEST(GgmlDequant, ThroughAGgufFileIn2D) {
  // Two rows of 512 (2 Q4_K blocks each): dequantize() through the file
  // equals block-wise dequantization, shape reversed to [2, 512].
  std::mt19937 rng(10);
  std::string data(4 * 144, '\0');
  for (char& c : data) c = char(rng());
  for (int blk = 0; blk < 4; ++blk) {
    put_at(data, 144 * blk, h16(0.01f * float(blk + 1)));
    put_at(data, 144 * blk + 2, h16(0.002f));
  }
  GgufBuilder b;
  b.tensor("q", GgmlType::Q4_K, {512, 2}, data);
  b.tensor("q6", GgmlType::Q6_K, {256}, std::string(210, '\0'));
  b.tensor("iq", GgmlType::IQ4_XS, {256}, std::string(136, '\0'));
  auto f = parse(b.build());
  Tensor t = f->dequantize("q");
  EXPECT_EQ(t.shape(), (Shape{2, 512}));
  EXPECT_EQ(t.dtype(), DType::F32);
  EXPECT_EQ(t.to_floats(), dq(GgmlType::Q4_K, data, 1024));
  EXPECT_EQ(f->dequantize("q6").to_floats(), std::vector<float>(256, 0.0f));
  expect_error([&] { f->dequantize("iq"); }, {"iq", "cannot dequantize ggml type IQ4_XS"});
  expect_error([&] { f->tensor("q"); }, {"q", "Q4_K", "use dequantize"});
}

// ---- real files and model configs ----------------------------------------------------------

std::string vocab(const std::string& name) {
  return test::shared_dir() + "/tokenizers/llama.cpp-vocab/ggml-vocab-" + name + ".gguf";
}

TEST(GgufReal, LlamaSpmVocabulary) {
  auto f = GgufFile::open(vocab("llama-spm"));
  EXPECT_EQ(f->version(), 3u);
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_EQ(f->keys().size(), 22u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f->get_string("tokenizer.ggml.pre"), "default");
  std::vector<std::string> toks = f->get_string_array("tokenizer.ggml.tokens");
  std::vector<float> scores = f->get_float_array("tokenizer.ggml.scores");
  std::vector<int32_t> types = f->get_int_array("tokenizer.ggml.token_type");
  ASSERT_EQ(toks.size(), 32000u);
  ASSERT_EQ(scores.size(), 32000u);
  ASSERT_EQ(types.size(), 32000u);
  EXPECT_EQ(toks[0], "<unk>");
  EXPECT_EQ(toks[1], "<s>");
  EXPECT_EQ(toks[2], "</s>");
  EXPECT_EQ(toks[3], "<0x00>");
  EXPECT_EQ(toks[259], "▁▁");
  EXPECT_EQ(toks[1000], "ied");
  EXPECT_EQ(toks[31999], "给");
  EXPECT_EQ(scores[260], -1.0f);
  EXPECT_EQ(scores[1000], -741.0f);
  EXPECT_EQ(scores[31999], -31740.0f);
  EXPECT_EQ(types[0], 2);  // unknown
  EXPECT_EQ(types[1], 3);  // control
  EXPECT_EQ(types[3], 6);  // byte
  EXPECT_EQ(types[1000], 1);
  EXPECT_EQ(f->get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(f->get_int("tokenizer.ggml.eos_token_id"), 2);
  EXPECT_EQ(f->find_bool("tokenizer.ggml.add_bos_token"), true);
  EXPECT_EQ(f->find_bool("tokenizer.ggml.add_eos_token"), false);
  EXPECT_NEAR(f->get_float("llama.attention.layer_norm_rms_epsilon"), 1e-5, 1e-12);

  ModelConfig c = gguf_model_config(*f);
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.num_layers, 32);
  EXPECT_EQ(c.hidden_size, 4096);
  EXPECT_EQ(c.intermediate_size, 11008);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 32);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c.partial_rotary_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2}));
}

TEST(GgufReal, Gpt2VocabularyWithMerges) {
  auto f = GgufFile::open(vocab("gpt-2"));
  EXPECT_EQ(f->get_string("tokenizer.ggml.model"), "gpt2");
  std::vector<std::string> merges = f->get_string_array("tokenizer.ggml.merges");
  ASSERT_EQ(merges.size(), 50000u);
  EXPECT_EQ(merges[0], "Ġ t");
  EXPECT_EQ(merges[49999], "Ġg azed");
  std::vector<std::string> toks = f->get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(toks.size(), 50257u);
  EXPECT_EQ(toks[50256], "<|endoftext|>");
  EXPECT_EQ(toks[256], "Ġt");
  EXPECT_FALSE(f->has("tokenizer.ggml.scores"));
  expect_error([&] { gguf_model_config(*f); },
               {"ggml-vocab-gpt-2.gguf", "general.architecture", "gpt2 is not supported"});
}

TEST(GgufReal, EveryVocabularyFileParses) {
  for (const char* name : {"gpt-2", "gpt-neox", "llama-spm", "phi-3", "starcoder"}) {
    auto f = GgufFile::open(vocab(name));
    EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), f->array_size("tokenizer.ggml.tokens")) << name;
    EXPECT_EQ(f->get_int_array("tokenizer.ggml.token_type").size(), f->array_size("tokenizer.ggml.tokens")) << name;
  }
}

TEST(GgufConfig, QwenAndErrors) {
  auto make = [](const std::string& arch, bool with_bias, bool tied) {
    GgufBuilder b;
    b.kv_string("general.architecture", arch);
    const std::string p = arch + ".";
    b.kv<uint32_t>(p + "block_count", GgufValueType::U32, 2);
    b.kv<uint32_t>(p + "embedding_length", GgufValueType::U32, 64);
    b.kv<uint32_t>(p + "feed_forward_length", GgufValueType::U32, 128);
    b.kv<uint32_t>(p + "attention.head_count", GgufValueType::U32, 4);
    b.kv<uint32_t>(p + "attention.head_count_kv", GgufValueType::U32, 2);
    b.kv<uint32_t>(p + "attention.key_length", GgufValueType::U32, 32);
    b.kv<uint32_t>(p + "attention.value_length", GgufValueType::U32, 32);
    b.kv<float>(p + "attention.layer_norm_rms_epsilon", GgufValueType::F32, 1e-6f);
    b.kv<float>(p + "rope.freq_base", GgufValueType::F32, 1000000.0f);
    b.kv<uint32_t>(p + "context_length", GgufValueType::U32, 40960);
    b.kv_strings("tokenizer.ggml.tokens", {"a", "b", "c"});
    b.kv<uint32_t>("tokenizer.ggml.eos_token_id", GgufValueType::U32, 2);
    b.tensor("token_embd.weight", GgmlType::F16, {64, 3}, std::string(64 * 3 * 2, '\0'));
    if (!tied) b.tensor("output.weight", GgmlType::Q8_0, {64, 3}, std::string(34 * 2 * 3, '\0'));
    if (with_bias) b.tensor("blk.0.attn_q.bias", GgmlType::F32, {128}, std::string(512, '\0'));
    return b.build();
  };
  auto q3 = parse(make("qwen3", false, false));
  ModelConfig c3 = gguf_model_config(*q3);
  EXPECT_EQ(c3.arch, Arch::Qwen3);
  EXPECT_TRUE(c3.qk_norm);
  EXPECT_FALSE(c3.attention_bias);
  EXPECT_FALSE(c3.tie_word_embeddings);
  EXPECT_EQ(c3.head_dim, 32);  // key_length, not hidden / heads
  EXPECT_EQ(c3.num_kv_heads, 2);
  EXPECT_EQ(c3.vocab_size, 3);  // tokenizer array length
  EXPECT_DOUBLE_EQ(c3.rope_theta, 1e6);
  EXPECT_EQ(c3.max_position_embeddings, 40960);
  EXPECT_EQ(c3.dtype, DType::F16);
  EXPECT_EQ(c3.eos_token_ids, (std::vector<int32_t>{2}));

  ModelConfig c2 = gguf_model_config(*parse(make("qwen2", true, true)));
  EXPECT_EQ(c2.arch, Arch::Qwen2);
  EXPECT_TRUE(c2.attention_bias);
  EXPECT_TRUE(c2.tie_word_embeddings);

  GgufBuilder bad;
  bad.kv_string("general.architecture", "llama");
  bad.kv<uint32_t>("llama.block_count", GgufValueType::U32, 2);
  expect_error([&] { gguf_model_config(*parse(bad.build(), "m.gguf")); },
               {"m.gguf", "llama.embedding_length", "missing"});
  GgufBuilder bad2;
  bad2.kv<uint32_t>("general.architecture", GgufValueType::U32, 7);
  expect_error([&] { gguf_model_config(*parse(bad2.build(), "m.gguf")); },
               {"m.gguf", "general.architecture", "expected string, found uint32"});
}

}  // namespace
}  // namespace kite
