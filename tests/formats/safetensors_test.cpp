#include "formats/safetensors.h"

#include <cmath>
#include <cstring>
#include <random>

#include "formats/test_util.h"

namespace kite {
namespace {

using test::expect_error;
using test::ScratchDir;
using test::write_file;

// A safetensors file from a header string and data bytes.
std::string make_st(const std::string& header, const std::string& data = "") {
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[i] = char(uint8_t(n >> (8 * i)));
  return out + header + data;
}

Tensor random_tensor(const Shape& shape, DType dtype, uint32_t seed) {
  Tensor t = Tensor::empty(shape, dtype);
  std::mt19937 rng(seed);
  auto* p = static_cast<uint8_t*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(rng());
  return t;
}

std::string bytes_of(const Tensor& t) {
  Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data()), c.nbytes());
}

TEST(Safetensors, WriterRoundTripIsBitExactForEveryDtype) {
  ScratchDir dir;
  std::vector<std::pair<std::string, Tensor>> tensors;
  uint32_t seed = 1;
  for (DType dt : {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3, DType::I8, DType::U8, DType::I32, DType::I64})
    tensors.emplace_back(std::string("t.") + std::string(dtype_name(dt)), random_tensor({3, 5}, dt, seed++));
  tensors.emplace_back("scalar", random_tensor({}, DType::F32, 99));
  tensors.emplace_back("empty", Tensor::empty({0, 4}, DType::BF16));
  // Written in the given order (not sorted): "zzz" first in the data region.
  tensors.insert(tensors.begin(), {"zzz", random_tensor({7}, DType::U8, 42)});
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "quote \" and \\ and é"}};
  std::string path = dir.file("m.safetensors");
  write_safetensors(path, tensors, meta);

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->metadata(), meta);
  EXPECT_EQ(f->data_offset() % 8, 0u);
  ASSERT_EQ(f->tensors().size(), tensors.size());
  EXPECT_EQ(f->tensors()[0].name, "zzz");
  EXPECT_EQ(f->tensors()[0].offset, 0u);
  for (const auto& [name, t] : tensors) {
    const TensorInfo* info = f->find(name);
    ASSERT_NE(info, nullptr) << name;
    EXPECT_EQ(info->dtype, t.dtype()) << name;
    EXPECT_EQ(info->shape, t.shape()) << name;
    EXPECT_EQ(info->nbytes, t.nbytes()) << name;
    Tensor r = f->tensor(name);
    EXPECT_EQ(r.shape(), t.shape());
    EXPECT_EQ(bytes_of(r), bytes_of(t)) << name;
  }
  // The header is the file's first bytes after the length and is space padded.
  std::string raw = test::read_file(path);
  std::string header = raw.substr(8, f->data_offset() - 8);
  size_t close = header.rfind('}');
  ASSERT_NE(close, std::string::npos);
  EXPECT_EQ(header.substr(close + 1), std::string(header.size() - close - 1, ' '));
  EXPECT_LT(header.size() - close - 1, 8u);
}

TEST(Safetensors, WriterMakesNonContiguousTensorsContiguous) {
  ScratchDir dir;
  Tensor base = Tensor::from_floats({3, 4}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
  Tensor cols = base.slice(1, 1, 3);  // [3, 2] non-contiguous
  ASSERT_FALSE(cols.is_contiguous());
  std::string path = dir.file("nc.safetensors");
  write_safetensors(path, {{"cols", cols}});
  auto f = SafetensorsFile::open(path);
  Tensor r = f->tensor("cols");
  EXPECT_EQ(r.shape(), (Shape{3, 2}));
  EXPECT_EQ(r.to_floats(), (std::vector<float>{1, 2, 5, 6, 9, 10}));
}

TEST(Safetensors, WriterRejectsBadNames) {
  ScratchDir dir;
  Tensor t = Tensor::from_floats({1}, {1});
  expect_error(
      [&] {
        write_safetensors(dir.file("a.safetensors"), {{"x", t}, {"x", t}});
      },
      {"a.safetensors", "x", "duplicate"});
  expect_error(
      [&] {
        write_safetensors(dir.file("a.safetensors"), {{"__metadata__", t}});
      },
      {"__metadata__", "reserved"});
  expect_error([&] { write_safetensors(dir.file("a.safetensors"), {{"", t}}); }, {"empty tensor name"});
}

TEST(Safetensors, TensorsAreZeroCopyViewsThatKeepTheFileAlive) {
  ScratchDir dir;
  std::string path = dir.file("z.safetensors");
  write_safetensors(path, {{"a", Tensor::from_floats({2}, {1.5f, -2.0f})}});
  auto f = SafetensorsFile::open(path);
  Tensor a1 = f->tensor("a"), a2 = f->tensor("a");
  EXPECT_EQ(a1.data(), a2.data());  // both views of the same mapped bytes
  f.reset();                        // the view owns the mapping now
  EXPECT_EQ(a1.to_floats(), (std::vector<float>{1.5f, -2.0f}));
}

TEST(Safetensors, FromMemoryParsesBytes) {
  std::string data(8, '\0');
  float v[2] = {3.25f, -1.0f};
  std::memcpy(data.data(), v, 8);
  std::string bytes =
      make_st(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"a":"b"}})", data);
  auto owner = std::make_shared<std::string>(bytes);
  auto f = SafetensorsFile::from_memory(reinterpret_cast<const uint8_t*>(owner->data()), owner->size(), "mem", owner);
  EXPECT_EQ(f->path(), "mem");
  EXPECT_EQ(f->metadata().at("a"), "b");
  EXPECT_EQ(f->tensor("w").to_floats(), (std::vector<float>{3.25f, -1.0f}));
  expect_error([&] { f->tensor("nope"); }, {"mem", "nope", "not in file"});
}

TEST(Safetensors, MisalignedDataIsCopiedNotViewed) {
  // A 3-byte-padded header leaves the data region at an odd address.
  std::string header = R"({"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})";
  header += "  ";  // length not a multiple of 2
  if ((8 + header.size()) % 2 == 0) header += " ";
  std::string data = {char(0x80), char(0x3f), char(0x00), char(0x40)};  // bf16 1.0, 2.0
  auto owner = std::make_shared<std::string>(make_st(header, data));
  auto f = SafetensorsFile::from_memory(reinterpret_cast<const uint8_t*>(owner->data()), owner->size(), "odd", owner);
  Tensor w = f->tensor("w");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.data()) % 2, 0u);
  EXPECT_EQ(w.to_floats(), (std::vector<float>{1.0f, 2.0f}));
}

// ---- bad input ------------------------------------------------------------------

class SafetensorsBad : public ::testing::Test {
 protected:
  void expect_bad(const std::string& bytes, const std::vector<std::string>& parts) {
    std::string path = dir_.file("bad.safetensors");
    write_file(path, bytes);
    std::vector<std::string> all = {path};
    all.insert(all.end(), parts.begin(), parts.end());
    expect_error([&] { SafetensorsFile::open(path); }, all);
  }
  ScratchDir dir_;
};

TEST_F(SafetensorsBad, MissingFile) {
  std::string path = dir_.file("absent.safetensors");
  expect_error([&] { SafetensorsFile::open(path); }, {path, "cannot open"});
}

TEST_F(SafetensorsBad, TruncatedLength) { expect_bad("abc", {"header", "too short"}); }

TEST_F(SafetensorsBad, EmptyFile) { expect_bad("", {"header", "0 bytes"}); }

TEST_F(SafetensorsBad, HeaderLengthPastEndOfFile) {
  std::string b = make_st("{}");
  b[0] = char(0x0f);
  b[1] = char(0x27);  // 9999
  expect_bad(b, {"header", "length 9999 runs past end of file (file is 10 bytes)"});
}

TEST_F(SafetensorsBad, HugeHeaderLength) {
  std::string b(16, '\0');
  for (int i = 0; i < 8; ++i) b[i] = char(0xff);
  expect_bad(b, {"header", "runs past end of file"});
}

TEST_F(SafetensorsBad, HeaderNotJson) { expect_bad(make_st("{\"a\": [1, 2"), {"header", "not valid JSON"}); }

TEST_F(SafetensorsBad, HeaderNotObject) { expect_bad(make_st("[1, 2, 3]"), {"header", "expected a JSON object"}); }

TEST_F(SafetensorsBad, UnknownDtype) {
  expect_bad(make_st(R"({"layer.w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", std::string(8, '\0')),
             {"layer.w.dtype", "unknown dtype \"F64\"", "BF16"});
}

TEST_F(SafetensorsBad, MissingFields) {
  expect_bad(make_st(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')), {"w.dtype", "missing"});
  expect_bad(make_st(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", std::string(4, '\0')), {"w.shape", "missing"});
  expect_bad(make_st(R"({"w":{"dtype":"F32","shape":[1]}})", std::string(4, '\0')), {"w.data_offsets", "missing"});
  expect_bad(make_st(R"({"w":[1,2]})"), {"w", "expected a tensor entry object"});
}

TEST_F(SafetensorsBad, WrongFieldTypes) {
  expect_bad(make_st(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
             {"w.dtype", "expected a string"});
  expect_bad(make_st(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, '\0')),
             {"w.shape", "non-negative integers"});
  expect_bad(make_st(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", std::string(4, '\0')),
             {"w.shape", "non-negative integers"});
  expect_bad(make_st(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", std::string(4, '\0')),
             {"w.data_offsets", "[begin, end]"});
  expect_bad(make_st(R"({"__metadata__":{"a":1}})"), {"__metadata__.a", "expected a string"});
  expect_bad(make_st(R"({"__metadata__":[]})"), {"__metadata__", "expected an object"});
}

TEST_F(SafetensorsBad, DuplicateTensorName) {
  expect_bad(make_st(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                     R"("w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                     std::string(2, '\0')),
             {"w", "appears twice"});
}

TEST_F(SafetensorsBad, OffsetsOutOfRange) {
  expect_bad(make_st(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(8, '\0')),
             {"w.data_offsets", "runs past the end of the data region (8 bytes)"});
  expect_bad(make_st(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", std::string(8, '\0')),
             {"w.data_offsets", "begin 8 is after end 4"});
}

TEST_F(SafetensorsBad, OffsetsInconsistentWithShape) {
  expect_bad(make_st(R"({"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,8]}})", std::string(16, '\0')),
             {"w.data_offsets", "holds 8 bytes but shape [2, 3] of BF16 needs 12"});
}

TEST_F(SafetensorsBad, OverlappingTensors) {
  expect_bad(make_st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                     std::string(12, '\0')),
             {"b.data_offsets", "overlaps tensor a"});
}

TEST_F(SafetensorsBad, ShapeProductOverflow) {
  expect_bad(
      make_st(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,4]}})", std::string(4, '\0')),
      {"w.shape", "overflows"});
  expect_bad(
      make_st(R"({"w":{"dtype":"I64","shape":[2305843009213693952],"data_offsets":[0,4]}})", std::string(4, '\0')),
      {"w.shape", "overflows"});
  // Zero elements, but the other dims would overflow any element-count product.
  expect_bad(make_st(R"({"w":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})"),
             {"w.shape", "overflows"});
}

// ---- checkpoints --------------------------------------------------------------------

TEST(Checkpoint, OpensTheShardedReferenceModel) {
  std::string dir = test::shared_dir() + "/models/kite-ref";
  Checkpoint ck = Checkpoint::open(dir);
  EXPECT_EQ(ck.files().size(), 3u);
  std::vector<std::string> names = ck.names();
  // embed + 8 layers x (2 norms + q,k,v,o + gate,up,down) + final norm; the tied lm_head is absent.
  EXPECT_EQ(names.size(), 1u + 8u * 9u + 1u);
  EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
  EXPECT_FALSE(ck.has("lm_head.weight"));
  EXPECT_TRUE(ck.has("model.norm.weight"));
  EXPECT_TRUE(ck.has("model.layers.7.mlp.down_proj.weight"));

  const TensorInfo& emb = ck.info("model.embed_tokens.weight");
  EXPECT_EQ(emb.dtype, DType::BF16);
  EXPECT_EQ(emb.shape, (Shape{8192, 384}));
  EXPECT_EQ(ck.info("model.layers.0.self_attn.k_proj.weight").shape, (Shape{128, 384}));
  EXPECT_EQ(ck.info("model.layers.0.mlp.gate_proj.weight").shape, (Shape{1024, 384}));
  EXPECT_EQ(ck.info("model.layers.3.input_layernorm.weight").shape, (Shape{384}));
  EXPECT_EQ(ck.file_of("model.embed_tokens.weight"), dir + "/model-00001-of-00003.safetensors");
  EXPECT_EQ(ck.metadata().at("total_parameters"), "15735168");

  int64_t total = 0;
  for (const std::string& n : names) total += shape_numel(ck.info(n).shape);
  EXPECT_EQ(total, 15735168);

  // A value read through the view equals the bytes read from the shard with plain file I/O.
  Tensor t = ck.get("model.embed_tokens.weight");
  EXPECT_EQ(t.dtype(), DType::BF16);
  std::string raw = test::read_file(ck.file_of("model.embed_tokens.weight"));
  uint64_t hlen = 0;
  std::memcpy(&hlen, raw.data(), 8);
  size_t at = 8 + hlen + emb.offset + (5 * 384 + 7) * 2;
  uint16_t bits = 0;
  std::memcpy(&bits, raw.data() + at, 2);
  EXPECT_EQ(t.data_as<uint16_t>()[5 * 384 + 7], bits);
  std::vector<float> row = t.select(5).to_floats();
  EXPECT_EQ(row[7], bf16_to_f32(bits));
  double norm = 0;
  for (float v : row) {
    EXPECT_TRUE(std::isfinite(v));
    norm += double(v) * v;
  }
  EXPECT_GT(norm, 0.0);  // trained weights, not zeros
  // Norm weights of a trained model sit around 1.
  std::vector<float> g = ck.get("model.norm.weight").to_floats();
  double mean = 0;
  for (float v : g) mean += v;
  mean /= double(g.size());
  EXPECT_GT(mean, 0.05);
  EXPECT_LT(mean, 20.0);

  expect_error([&] { ck.get("lm_head.weight"); }, {dir, "lm_head.weight", "tensor missing from checkpoint"});
  expect_error([&] { ck.info("nope"); }, {"nope", "tensor missing from checkpoint"});
}

TEST(Checkpoint, OpensTheIndexFileDirectly) {
  std::string idx = test::shared_dir() + "/models/kite-ref/model.safetensors.index.json";
  Checkpoint ck = Checkpoint::open(idx);
  EXPECT_EQ(ck.names().size(), 74u);
}

TEST(Checkpoint, SingleFileAndDirectoryWithModelSafetensors) {
  ScratchDir dir;
  Tensor a = Tensor::from_floats({2, 2}, {1, 2, 3, 4});
  write_safetensors(dir.file("model.safetensors"), {{"b", a}, {"a", a}}, {{"format", "pt"}});
  for (const std::string& p : {dir.path(), dir.file("model.safetensors")}) {
    Checkpoint ck = Checkpoint::open(p);
    EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b"}));
    EXPECT_EQ(ck.get("b").to_floats(), (std::vector<float>{1, 2, 3, 4}));
    EXPECT_EQ(ck.file_of("a"), dir.file("model.safetensors"));
    EXPECT_EQ(ck.metadata().at("format"), "pt");
  }
}

TEST(Checkpoint, ShardedWriteAndRead) {
  ScratchDir dir;
  Tensor a = Tensor::from_floats({2}, {1, 2});
  Tensor b = Tensor::from_floats({3}, {3, 4, 5});
  write_safetensors(dir.file("s1.safetensors"), {{"a", a}});
  write_safetensors(dir.file("s2.safetensors"), {{"b", b}, {"unlisted", b}});
  write_file(dir.file("model.safetensors.index.json"),
             R"({"metadata":{"total_size":20},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}})");
  Checkpoint ck = Checkpoint::open(dir.path());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b"}));  // the weight map is authoritative
  EXPECT_EQ(ck.get("b").to_floats(), (std::vector<float>{3, 4, 5}));
  EXPECT_EQ(ck.file_of("b"), dir.file("s2.safetensors"));
  EXPECT_EQ(ck.metadata().at("total_size"), "20");
}

TEST(Checkpoint, BadDirectoriesAndIndexes) {
  ScratchDir dir;
  expect_error([&] { Checkpoint::open(dir.path()); }, {dir.path(), "model.safetensors"});
  expect_error([&] { Checkpoint::open(dir.file("nothing-here")); }, {"nothing-here", "no such file"});

  std::string idx = dir.file("model.safetensors.index.json");
  write_file(idx, "{not json");
  expect_error([&] { Checkpoint::open(dir.path()); }, {idx, "not valid JSON"});
  write_file(idx, R"({"metadata":{}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, {idx, "weight_map", "missing"});
  write_file(idx, R"({"weight_map":{"a":"../evil.safetensors"}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, {idx, "weight_map.a", "relative"});
  write_file(idx, R"({"weight_map":{"a":3}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, {idx, "weight_map.a", "shard file name"});
  write_file(idx, R"({"weight_map":{"a":"missing.safetensors"}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, {"missing.safetensors", "cannot open"});
  write_safetensors(dir.file("s.safetensors"), {{"x", Tensor::from_floats({1}, {1})}});
  write_file(idx, R"({"weight_map":{"a":"s.safetensors"}})");
  expect_error([&] { Checkpoint::open(dir.path()); }, {idx, "weight_map.a", "does not contain it"});
}

}  // namespace
}  // namespace kite
