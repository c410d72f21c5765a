// gguf_quant_weight: Q8_0 / Q4_0 tensors mapped onto Kite's Int8 / Int4
// layouts must dequantize to exactly what ggml's dequantization gives.
#include <cstring>
#include <random>

#include "core/dtype.h"
#include "formats/gguf.h"
#include "formats/gguf_builder.h"
#include "formats/test_util.h"

namespace kite {
namespace {

using test::expect_error;
using test::GgufBuilder;

std::shared_ptr<GgufFile> parse(const std::string& bytes, const std::string& name = "q.gguf") {
  auto owner = std::make_shared<std::string>(bytes);
  return GgufFile::from_memory(reinterpret_cast<const uint8_t*>(owner->data()), owner->size(), name, owner);
}

// `blocks` random blocks of `type` (Q8_0 or Q4_0): finite f16 scales of both
// signs, codes over their whole range (Q8_0 -128 included).
std::string random_blocks(GgmlType type, int64_t blocks, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
  const GgmlBlockLayout layout = *ggml_block_layout(type);
  std::string s(size_t(blocks) * layout.block_bytes, '\0');
  for (int64_t b = 0; b < blocks; ++b) {
    char* blk = s.data() + b * layout.block_bytes;
    const uint16_t d = f32_to_f16(scale(rng));
    std::memcpy(blk, &d, 2);
    for (size_t i = 2; i < layout.block_bytes; ++i) blk[i] = char(rng() & 0xff);
  }
  return s;
}

// ne in ggml order: {in, out}.
std::shared_ptr<GgufFile> one_tensor(GgmlType type, int64_t out, int64_t in, const std::string& bytes) {
  GgufBuilder b;
  b.tensor("blk.0.attn_q.weight", type, {uint64_t(in), uint64_t(out)}, bytes);
  return parse(b.build());
}

void expect_bitwise_equal(const Tensor& a, const std::vector<float>& b) {
  ASSERT_EQ(size_t(a.numel()), b.size());
  const float* p = a.data_as<const float>();
  for (size_t i = 0; i < b.size(); ++i) {
    uint32_t x, y;
    std::memcpy(&x, p + i, 4);
    std::memcpy(&y, &b[i], 4);
    ASSERT_EQ(x, y) << "element " << i << ": " << p[i] << " vs " << b[i];
  }
}

TEST(GgufQuantWeight, Q8_0AndQ4_0DequantizeExactlyAsGgml) {
  const std::pair<int64_t, int64_t> shapes[] = {{1, 32}, {3, 64}, {16, 96}, {7, 256}, {64, 128}};
  uint32_t seed = 1;
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_0})
    for (auto [out, in] : shapes) {
      SCOPED_TRACE(ggml_type_name(type) + " [" + std::to_string(out) + ", " + std::to_string(in) + "]");
      const std::string bytes = random_blocks(type, out * in / 32, seed++);
      auto f = one_tensor(type, out, in, bytes);
      std::optional<QuantWeight> w = gguf_quant_weight(*f, "blk.0.attn_q.weight");
      ASSERT_TRUE(w.has_value());
      EXPECT_EQ(w->scheme, type == GgmlType::Q8_0 ? QuantScheme::Int8 : QuantScheme::Int4);
      EXPECT_EQ(w->out, out);
      EXPECT_EQ(w->in, in);
      EXPECT_EQ(w->group, 32);
      EXPECT_FALSE(w->perm.defined());
      if (type == GgmlType::Q4_0) {  // symmetric: every zero is 8
        const std::vector<float> z = w->zeros.to_floats();
        for (float v : z) ASSERT_EQ(v, 8.0f);
      }
      std::vector<float> ref(size_t(out * in));
      dequantize_ggml(type, bytes.data(), ref.data(), out * in);
      expect_bitwise_equal(dequantize(*w), ref);
      expect_bitwise_equal(f->dequantize("blk.0.attn_q.weight"), ref);
    }
}

TEST(GgufQuantWeight, Q4_0NibblesRepackedToKiteOrder) {
  // One block, d = 1: element j is code j % 16, so ggml byte j holds
  // (j, j + 16) = (j, j) and Kite byte k holds (2k % 16, (2k + 1) % 16).
  std::string blk(18, '\0');
  const uint16_t one = f32_to_f16(1.0f);
  std::memcpy(blk.data(), &one, 2);
  for (int j = 0; j < 16; ++j) blk[2 + j] = char(j | j << 4);
  auto f = one_tensor(GgmlType::Q4_0, 1, 32, blk);
  QuantWeight w = *gguf_quant_weight(*f, "blk.0.attn_q.weight");
  const uint8_t* row = w.qdata.data_as<const uint8_t>();
  for (int64_t i = 0; i < 32; ++i) EXPECT_EQ(get_nibble(row, i), uint8_t(i % 16)) << i;
  EXPECT_EQ(w.scales.to_floats(), std::vector<float>{1.0f});
}

TEST(GgufQuantWeight, OtherTypesAreLeftToTheDensePath) {
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::Q4_1, GgmlType::Q5_0}) {
    const GgmlBlockLayout layout = *ggml_block_layout(type);
    const int64_t out = 2, in = 64;
    auto f = one_tensor(type, out, in, std::string(size_t(out * in / layout.block_elems) * layout.block_bytes, '\0'));
    EXPECT_FALSE(gguf_quant_weight(*f, "blk.0.attn_q.weight").has_value()) << ggml_type_name(type);
  }
}

TEST(GgufQuantWeight, ErrorsNameFileTensorAndType) {
  {
    auto f = one_tensor(GgmlType::Q8_0, 2, 32, random_blocks(GgmlType::Q8_0, 2, 7));
    expect_error([&] { gguf_quant_weight(*f, "absent.weight"); }, {"q.gguf", "absent.weight", "not in file"});
  }
  {
    GgufBuilder b;  // a Q4_0 "linear" with three dimensions
    b.tensor("blk.0.ffn_up.weight", GgmlType::Q4_0, {32, 2, 2}, random_blocks(GgmlType::Q4_0, 4, 8));
    auto f = parse(b.build());
    expect_error([&] { gguf_quant_weight(*f, "blk.0.ffn_up.weight"); },
                 {"q.gguf", "blk.0.ffn_up.weight", "Q4_0 linear weight must be 2-D [out, in], got [2, 2, 32]"});
  }
  // Rows that are not whole 32-element blocks never get past opening the file.
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_0}) {
    GgufBuilder b;
    b.tensor("blk.0.attn_k.weight", type, {48, 2}, random_blocks(type, 3, 9));
    expect_error([&] { parse(b.build()); },
                 {"q.gguf", "blk.0.attn_k.weight",
                  "row length 48 is not a multiple of the " + ggml_type_name(type) + " block size 32"});
  }
}

}  // namespace
}  // namespace kite
