// load_model: Hugging Face directories (safetensors) and GGUF files.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/decoder.h"
#include "model/quantized_checkpoint.h"

namespace kite {

namespace {

// What each supported family adds to the shared decoder.
ArchTraits arch_traits(const ModelConfig& c) {
  switch (c.arch) {
    case Arch::Llama:
    case Arch::Mistral: return ArchTraits{.qkv_bias = c.attention_bias, .qk_norm = false};
    case Arch::Qwen2: return ArchTraits{.qkv_bias = true, .qk_norm = false};
    case Arch::Qwen3: return ArchTraits{.qkv_bias = c.attention_bias, .qk_norm = true};
  }
  return {};
}

void check_shape(const Tensor& t, const Shape& expected, const std::string& file, const std::string& name,
                 const std::string& config_source) {
  if (t.shape() != expected)
    fail(file, name, "shape {} but {} implies {}", t.shape_str(), config_source, shape_to_string(expected));
  if (!dtype_is_float(t.dtype()) || t.dtype() == DType::F8_E4M3)
    fail(file, name, "dtype {} is not a supported weight dtype here (F32, F16, BF16)", dtype_name(t.dtype()));
}

std::unique_ptr<Model> load_hf(const std::string& dir, const LoadOptions& options) {
  ModelConfig config = load_model_config(dir);
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  Checkpoint ckpt = Checkpoint::open(dir);
  auto get = [&](const std::string& name, const Shape& expected) {
    Tensor t = ckpt.get(name);
    check_shape(t, expected, ckpt.file_of(name), name, config_path);
    return options.device.is_cpu() ? t : t.to(options.device);
  };
  auto has = [&](const std::string& name) { return ckpt.has(name); };
  // A quantized checkpoint (Kite's, AutoGPTQ, AutoAWQ, compressed-tensors,
  // bitsandbytes) says so in config.json (or AutoGPTQ's quantize_config.json).
  LinearLookup get_linear;
  std::string quant_config;
  {
    const nlohmann::json cfg = nlohmann::json::parse(read_text_file(config_path), nullptr, false);
    const auto qc_file = std::filesystem::path(dir) / "quantize_config.json";
    if (cfg.is_object() && cfg.contains("quantization_config"))
      quant_config = cfg["quantization_config"].dump();
    else if (std::filesystem::exists(qc_file))
      quant_config = read_text_file(qc_file.string());
  }
  if (!quant_config.empty()) get_linear = quantized_linear_lookup(ckpt, config_path, quant_config, options.device);
  DecoderWeights w = load_decoder_weights(config, arch_traits(config), get, has, get_linear);
  std::vector<std::shared_ptr<void>> keep;
  for (const auto& f : ckpt.files()) keep.push_back(std::const_pointer_cast<SafetensorsFile>(f));
  return std::make_unique<DecoderModel>(std::move(config), dir, std::move(w), std::move(keep));
}

// GGUF stores llama/mistral Q and K rows permuted for interleaved (GPT-J
// style) rotary; Kite uses the rotate-half layout of HF, so undo it:
// rows [n_head, hd/2, 2] -> [n_head, 2, hd/2].
Tensor unpermute_qk(const Tensor& t, int64_t n_head) {
  const int64_t rows = t.dim(0), cols = t.dim(1), hd = rows / n_head;
  Tensor out = Tensor::empty(t.shape(), DType::F32);
  const float* src = t.data_as<const float>();
  float* dst = out.data_as<float>();
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t two = 0; two < 2; ++two) {
        const int64_t src_row = h * hd + i * 2 + two, dst_row = h * hd + two * (hd / 2) + i;
        std::copy_n(src + src_row * cols, cols, dst + dst_row * cols);
      }
  return out;
}

std::string gguf_name(const std::string& hf) {
  static const std::pair<const char*, const char*> kTop[] = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"},
  };
  for (auto [a, b] : kTop)
    if (hf == a) return b;
  static const std::pair<const char*, const char*> kLayer[] = {
      {"input_layernorm.weight", "attn_norm.weight"},    {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},          {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},          {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"}, {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},           {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  const std::string prefix = "model.layers.";
  if (hf.rfind(prefix, 0) == 0) {
    size_t dot = hf.find('.', prefix.size());
    std::string idx = hf.substr(prefix.size(), dot - prefix.size()), rest = hf.substr(dot + 1);
    for (auto [a, b] : kLayer)
      if (rest == a) return "blk." + idx + "." + b;
  }
  return hf;
}

std::unique_ptr<Model> load_gguf(const std::string& path, const LoadOptions& options) {
  auto file = GgufFile::open(path);
  ModelConfig config = gguf_model_config(*file);
  const bool permuted = config.arch == Arch::Llama || config.arch == Arch::Mistral;
  auto get = [&](const std::string& hf, const Shape& expected) {
    const std::string name = gguf_name(hf);
    if (!file->find_tensor(name)) fail(path, name, "tensor missing from GGUF file");
    // The CPU reference path runs GGUF weights dequantized to F32.
    Tensor t = file->dequantize(name);
    check_shape(t, expected, path, name, "the GGUF metadata");
    if (permuted && (hf.ends_with("q_proj.weight") || hf.ends_with("k_proj.weight")))
      t = unpermute_qk(t, hf.ends_with("q_proj.weight") ? config.num_heads : config.num_kv_heads);
    return options.device.is_cpu() ? t : t.to(options.device);
  };
  auto has = [&](const std::string& hf) { return file->find_tensor(gguf_name(hf)) != nullptr; };
  if (!has("lm_head.weight")) config.tie_word_embeddings = true;
  DecoderWeights w = load_decoder_weights(config, arch_traits(config), get, has);
  // Llama 3.x GGUFs carry their RoPE scaling as per-frequency divisors.
  std::vector<float> rope_factors;
  if (file->find_tensor("rope_freqs.weight")) rope_factors = file->dequantize("rope_freqs.weight").to_floats();
  return std::make_unique<DecoderModel>(std::move(config), path, std::move(w), std::vector<std::shared_ptr<void>>{},
                                        std::move(rope_factors));
}

}  // namespace

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, "model", "no such file or directory (expected a model directory or a .gguf)");
  if (fs::is_directory(path, ec)) return load_hf(path, options);
  if (path.ends_with(".gguf")) return load_gguf(path, options);
  if (path.ends_with("config.json")) return load_hf(fs::path(path).parent_path().string(), options);
  fail(path, "model", "expected a Hugging Face model directory (config.json + *.safetensors) or a .gguf file");
}

std::unique_ptr<DecoderModel> load_decoder_model(const std::string& path, const std::string& purpose) {
  std::unique_ptr<Model> m = load_model(path);
  auto* dec = dynamic_cast<DecoderModel*>(m.get());
  if (!dec) fail(path, "model", "this model kind does not run {}", purpose);
  m.release();
  return std::unique_ptr<DecoderModel>(dec);
}

}  // namespace kite
