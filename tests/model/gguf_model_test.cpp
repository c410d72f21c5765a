// Loading a model from GGUF: the tiny Llama fixture written as GGUF the way
// llama.cpp's converter lays it out (Q/K rows permuted for interleaved
// rotary, F32/F16 tensors) must give the same logits as its safetensors;
// Q8_0/Q4_0 linears stay quantized and match their F32 dequantization.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/gguf_builder.h"
#include "formats/safetensors.h"
#include "model/decoder.h"
#include "model/generation.h"
#include "model/rope.h"

namespace kite {
namespace {

const std::string kLlama = std::string(KITE_FIXTURES_DIR) + "/models/llama";

// rows [n_head, 2, hd/2] -> [n_head, hd/2, 2], as llama.cpp's converter does.
std::vector<float> permute_qk(const std::vector<float>& w, int64_t rows, int64_t cols, int64_t n_head) {
  std::vector<float> out(w.size());
  const int64_t hd = rows / n_head;
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t two = 0; two < 2; ++two)
      for (int64_t i = 0; i < hd / 2; ++i)
        std::copy_n(w.data() + (h * hd + two * hd / 2 + i) * cols, cols, out.data() + (h * hd + i * 2 + two) * cols);
  return out;
}

const std::string kLlama3 = std::string(KITE_FIXTURES_DIR) + "/models/llama3_rope";

// Q8_0 / Q4_0 blocks of row-major values (rows whole blocks), rounded to
// nearest as llama.cpp's reference quantizers do.
std::string quantize_ggml(GgmlType type, const std::vector<float>& v) {
  std::string s;
  auto put_half = [&](float d) {
    const uint16_t h = f32_to_f16(d);
    s.append(reinterpret_cast<const char*>(&h), 2);
  };
  for (size_t b = 0; b < v.size(); b += 32) {
    const float* x = v.data() + b;
    float amax = 0, max = 0;  // max: the value of largest magnitude, signed
    for (int i = 0; i < 32; ++i)
      if (std::fabs(x[i]) > amax) {
        amax = std::fabs(x[i]);
        max = x[i];
      }
    if (type == GgmlType::Q8_0) {
      const float d = amax / 127, id = d != 0 ? 1 / d : 0;
      put_half(d);
      for (int i = 0; i < 32; ++i) s += char(int8_t(std::lround(std::clamp(x[i] * id, -127.0f, 127.0f))));
    } else {
      const float d = max / -8, id = d != 0 ? 1 / d : 0;
      put_half(d);
      for (int j = 0; j < 16; ++j) {
        const int lo = std::min(15, int(x[j] * id + 8.5f)), hi = std::min(15, int(x[j + 16] * id + 8.5f));
        s += char(uint8_t(lo | hi << 4));
      }
    }
  }
  return s;
}

// The ggml type of a linear weight in a file whose linears are `weight_type`
// (Q8_0 or Q4_0; F32 for others): attn_v and ffn_down take the other one, as
// llama.cpp's mixes bump them, so the fused qkv slot mixes both schemes.
GgmlType linear_type(GgmlType weight_type, const std::string& gg) {
  if (weight_type != GgmlType::Q8_0 && weight_type != GgmlType::Q4_0) return GgmlType::F32;
  const GgmlType other = weight_type == GgmlType::Q8_0 ? GgmlType::Q4_0 : GgmlType::Q8_0;
  return gg.ends_with("attn_v.weight") || gg.ends_with("ffn_down.weight") ? other : weight_type;
}

// Writes the HF fixture in `dir` as a GGUF. Llama 3 RoPE scaling goes into a
// rope_freqs.weight tensor of inv_freq divisors, as llama.cpp's converter does.
// weight_type Q8_0 / Q4_0 quantizes the linears (linear_type); `dequantized`
// then stores them as F32 from ggml's dequantization of those blocks.
std::string write_llama_gguf(GgmlType weight_type, const std::string& dir = kLlama, bool dequantized = false) {
  Checkpoint ck = Checkpoint::open(dir);
  ModelConfig c = load_model_config(dir);
  test::GgufBuilder b;
  b.kv_string("general.architecture", "llama");
  b.kv<uint32_t>("llama.block_count", GgufValueType::U32, uint32_t(c.num_layers));
  b.kv<uint32_t>("llama.embedding_length", GgufValueType::U32, uint32_t(c.hidden_size));
  b.kv<uint32_t>("llama.feed_forward_length", GgufValueType::U32, uint32_t(c.intermediate_size));
  b.kv<uint32_t>("llama.attention.head_count", GgufValueType::U32, uint32_t(c.num_heads));
  b.kv<uint32_t>("llama.attention.head_count_kv", GgufValueType::U32, uint32_t(c.num_kv_heads));
  b.kv<float>("llama.attention.layer_norm_rms_epsilon", GgufValueType::F32, float(c.rms_norm_eps));
  b.kv<float>("llama.rope.freq_base", GgufValueType::F32, float(c.rope_theta));
  b.kv<uint32_t>("llama.context_length", GgufValueType::U32, uint32_t(c.max_position_embeddings));
  b.kv<uint32_t>("llama.vocab_size", GgufValueType::U32, uint32_t(c.vocab_size));
  auto add = [&](const std::string& hf, const std::string& gg, int64_t permute_heads) {
    Tensor t = ck.get(hf);
    std::vector<float> v = t.to_floats();
    if (permute_heads) v = permute_qk(v, t.dim(0), t.dim(1), permute_heads);
    std::vector<uint64_t> ne(t.shape().rbegin(), t.shape().rend());  // ggml order
    if (const GgmlType q = t.ndim() == 2 && gg != "token_embd.weight" ? linear_type(weight_type, gg) : GgmlType::F32;
        q != GgmlType::F32) {
      const std::string blocks = quantize_ggml(q, v);
      if (!dequantized) {
        b.tensor(gg, q, ne, blocks);
        return;
      }
      dequantize_ggml(q, blocks.data(), v.data(), int64_t(v.size()));
    }
    const bool half = t.ndim() == 2 && weight_type == GgmlType::F16;
    std::string bytes;
    for (float x : v) {
      if (half) {
        uint16_t h = f32_to_f16(x);
        bytes.append(reinterpret_cast<const char*>(&h), 2);
      } else {
        bytes.append(reinterpret_cast<const char*>(&x), 4);
      }
    }
    b.tensor(gg, half ? GgmlType::F16 : GgmlType::F32, ne, bytes);
  };
  add("model.embed_tokens.weight", "token_embd.weight", 0);
  add("model.norm.weight", "output_norm.weight", 0);
  if (ck.has("lm_head.weight")) add("lm_head.weight", "output.weight", 0);
  if (c.rope_scaling.type == "llama3") {
    ModelConfig plain = c;
    plain.rope_scaling = RopeScaling{};
    auto base = rope_frequencies(plain, 0).inv_freq, scaled = rope_frequencies(c, 0).inv_freq;
    std::string bytes;
    for (size_t i = 0; i < base.size(); ++i) {
      float factor = base[i] / scaled[i];
      bytes.append(reinterpret_cast<const char*>(&factor), 4);
    }
    b.tensor("rope_freqs.weight", GgmlType::F32, {uint64_t(base.size())}, bytes);
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".", g = "blk." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", g + "attn_norm.weight", 0);
    add(p + "post_attention_layernorm.weight", g + "ffn_norm.weight", 0);
    add(p + "self_attn.q_proj.weight", g + "attn_q.weight", c.num_heads);
    add(p + "self_attn.k_proj.weight", g + "attn_k.weight", c.num_kv_heads);
    add(p + "self_attn.v_proj.weight", g + "attn_v.weight", 0);
    add(p + "self_attn.o_proj.weight", g + "attn_output.weight", 0);
    add(p + "mlp.gate_proj.weight", g + "ffn_gate.weight", 0);
    add(p + "mlp.up_proj.weight", g + "ffn_up.weight", 0);
    add(p + "mlp.down_proj.weight", g + "ffn_down.weight", 0);
  }
  std::string path = (std::filesystem::temp_directory_path() /
                      ("kite_llama_" + std::to_string(::getpid()) + "_" + std::to_string(int(weight_type)) +
                       (dequantized ? "_f32" : "") + ".gguf"))
                         .string();
  std::ofstream(path, std::ios::binary) << b.build();
  return path;
}

std::vector<float> last_logits(Model& m, const std::vector<int32_t>& ids) {
  KvCache cache(m.config(), int64_t(ids.size()));
  return m.forward(ids, cache, false).to_floats();
}

TEST(GgufModel, F32GgufMatchesSafetensors) {
  std::string path = write_llama_gguf(GgmlType::F32);
  auto from_st = load_model(kLlama);
  auto from_gguf = load_model(path);
  std::filesystem::remove(path);
  EXPECT_EQ(from_gguf->config().num_layers, from_st->config().num_layers);
  std::vector<int32_t> ids = {1, 17, 42, 99, 5, 200, 31, 64};
  auto a = last_logits(*from_st, ids), b = last_logits(*from_gguf, ids);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-5f * (1 + std::fabs(a[i]))) << i;
}

TEST(GgufModel, Llama3RopeFreqsTensorMatchesSafetensors) {
  std::string path = write_llama_gguf(GgmlType::F32, kLlama3);
  auto from_st = load_model(kLlama3);
  auto from_gguf = load_model(path);
  std::filesystem::remove(path);
  ASSERT_EQ(from_gguf->config().rope_scaling.type, "default");  // the scaling lives in the tensor
  // Positions past original_max_position_embeddings (32), where llama3 scaling matters.
  std::vector<int32_t> ids;
  for (int i = 0; i < 60; ++i) ids.push_back(int32_t(3 + (i * 37) % 250));
  auto a = last_logits(*from_st, ids), b = last_logits(*from_gguf, ids);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-4f * (1 + std::fabs(a[i]))) << i;
}

TEST(GgufModel, F16GgufIsCloseToSafetensors) {
  std::string path = write_llama_gguf(GgmlType::F16);
  auto from_st = load_model(kLlama);
  auto from_gguf = load_model(path);
  std::filesystem::remove(path);
  std::vector<int32_t> ids = {1, 17, 42, 99, 5, 200, 31, 64};
  auto a = last_logits(*from_st, ids), b = last_logits(*from_gguf, ids);
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_err = std::max(max_err, double(std::fabs(a[i] - b[i])));
    max_ref = std::max(max_ref, double(std::fabs(a[i])));
  }
  // F16 weights: ~2^-11 relative rounding per weight.
  EXPECT_LT(max_err / max_ref, 5e-3);
  EXPECT_GT(max_err, 0.0);  // really ran on the F16 copies
}

// The linears of a Q8_0 / Q4_0 GGUF load as Int8 / Int4 whose dequantization
// is bit for bit the F32 file's (q/k rows un-permuted with their codes and
// scales); the logits differ only by the kernels' F32 rounding (~1e-6).
TEST(GgufModel, Q8_0AndQ4_0LinearsStayQuantizedAndMatchTheirF32Dequantization) {
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_0}) {
    SCOPED_TRACE(ggml_type_name(type));
    const std::string qpath = write_llama_gguf(type), fpath = write_llama_gguf(type, kLlama, true);
    auto quant = load_model(qpath), dense = load_model(fpath);
    std::filesystem::remove(qpath);
    std::filesystem::remove(fpath);
    const auto& qw = dynamic_cast<DecoderModel&>(*quant).weights();
    const auto& fw = dynamic_cast<DecoderModel&>(*dense).weights();
    auto scheme_of = [](GgmlType t) { return t == GgmlType::Q8_0 ? QuantScheme::Int8 : QuantScheme::Int4; };
    auto check = [&](const std::string& module, const std::string& gg) {
      SCOPED_TRACE(module);
      const QuantWeight& a = qw.linear(module);
      const QuantWeight& b = fw.linear(module);
      EXPECT_EQ(a.scheme, scheme_of(linear_type(type, gg)));
      EXPECT_EQ(a.group, 32);
      ASSERT_EQ(b.scheme, QuantScheme::Dense);
      const Tensor x = dequantize(a), y = dequantize(b);
      ASSERT_EQ(x.shape(), y.shape());
      ASSERT_EQ(std::memcmp(x.data(), y.data(), x.nbytes()), 0);
    };
    check("lm_head", "output.weight");
    const std::pair<const char*, const char*> modules[] = {
        {"self_attn.q_proj", "attn_q.weight"}, {"self_attn.k_proj", "attn_k.weight"},
        {"self_attn.v_proj", "attn_v.weight"}, {"self_attn.o_proj", "attn_output.weight"},
        {"mlp.gate_proj", "ffn_gate.weight"},  {"mlp.up_proj", "ffn_up.weight"},
        {"mlp.down_proj", "ffn_down.weight"},
    };
    for (int64_t l = 0; l < quant->config().num_layers; ++l)
      for (auto [module, gg] : modules) check("model.layers." + std::to_string(l) + "." + module, gg);
    std::vector<int32_t> ids = {1, 17, 42, 99, 5, 200, 31, 64};
    auto a = last_logits(*dense, ids), b = last_logits(*quant, ids);
    ASSERT_EQ(a.size(), b.size());
    double max_err = 0, max_ref = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      max_err = std::max(max_err, double(std::fabs(a[i] - b[i])));
      max_ref = std::max(max_ref, double(std::fabs(a[i])));
    }
    EXPECT_LT(max_err / max_ref, 1e-5) << max_err << " of " << max_ref;
  }
}

TEST(ModelLoading, ShapeThatDisagreesWithConfigNamesFileAndTensor) {
  auto dir = std::filesystem::temp_directory_path() / ("kite_badshape_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(kLlama + "/model.safetensors", dir / "model.safetensors");
  std::string cfg = read_text_file(kLlama + "/config.json");
  auto pos = cfg.find("\"intermediate_size\": 128");
  ASSERT_NE(pos, std::string::npos) << cfg;
  cfg.replace(pos, std::strlen("\"intermediate_size\": 128"), "\"intermediate_size\": 96");
  std::ofstream(dir / "config.json") << cfg;
  try {
    load_model(dir.string());
    FAIL() << "mis-shaped checkpoint loaded";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("mlp.gate_proj.weight"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[96, 64]"), std::string::npos) << msg;
  }
  std::filesystem::remove_all(dir);
}

TEST(ModelLoading, MissingPathAndWrongFileAreErrors) {
  EXPECT_THROW(load_model("/nonexistent/model"), Error);
  EXPECT_THROW(load_model(kLlama + "/reference.json"), Error);
}

}  // namespace
}  // namespace kite
