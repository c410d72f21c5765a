// load_model: Hugging Face directories (safetensors) and GGUF files.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "model/arch/arch.h"
#include "model/decoder.h"
#include "model/quantize_at_load.h"
#include "model/quantized_checkpoint.h"

namespace kite {

namespace {

using WeightLookup = std::function<Tensor(const std::string& name, const Shape& expected)>;
using WeightExists = std::function<bool(const std::string& name)>;

// Every weight the architecture declares, read through get / get_linear
// (dense or quantized linears) on the host.
std::shared_ptr<ModelWeights> read_weights(const ModelConfig& c, const std::string& source, const WeightLookup& get,
                                           const WeightExists& has, const LinearLookup& get_linear_opt) {
  const LinearLookup get_linear = get_linear_opt ? get_linear_opt : [&](const std::string& m, int64_t out, int64_t in) {
    return QuantWeight::from_dense(get(m + ".weight", {out, in}));
  };
  const Architecture& arch = architecture_for(c, source);
  const LayerSpec spec = arch.layer_spec(c, c);
  auto w = std::make_shared<ModelWeights>();
  const int64_t d = c.hidden_size;
  w->tensors["model.embed_tokens.weight"] = get("model.embed_tokens.weight", {c.vocab_size, d});
  w->tensors["model.norm.weight"] = get("model.norm.weight", {d});
  if (!(c.tie_word_embeddings && !has("lm_head.weight")))
    w->linears["lm_head"] = get_linear("lm_head", c.vocab_size, d);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const TensorSlot& t : spec.tensors) w->tensors[p + t.name] = get(p + t.name, t.shape);
    for (const LinearSlot& slot : spec.linears)
      for (const LinearPart& part : slot.parts) {
        w->linears[p + part.module] = get_linear(p + part.module, part.out, part.in);
        if (part.bias) w->tensors[p + part.module + ".bias"] = get(p + part.module + ".bias", {part.out});
      }
  }
  return w;
}

void check_shape(const Tensor& t, const Shape& expected, const std::string& file, const std::string& name,
                 const std::string& config_source) {
  if (t.shape() != expected)
    fail(file, name, "shape {} but {} implies {}", t.shape_str(), config_source, shape_to_string(expected));
  if (!dtype_is_float(t.dtype()) || t.dtype() == DType::F8_E4M3)
    fail(file, name, "dtype {} is not a supported weight dtype here (F32, F16, BF16)", dtype_name(t.dtype()));
}

LoadedCheckpoint load_hf(const std::string& dir) {
  ModelConfig config = load_model_config(dir);
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  Checkpoint ckpt = Checkpoint::open(dir);
  auto get = [&](const std::string& name, const Shape& expected) {
    Tensor t = ckpt.get(name);
    check_shape(t, expected, ckpt.file_of(name), name, config_path);
    return t;
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
  if (!quant_config.empty()) get_linear = quantized_linear_lookup(ckpt, config_path, quant_config);
  std::shared_ptr<ModelWeights> w = read_weights(config, config_path, get, has, get_linear);
  for (const auto& f : ckpt.files()) w->keep.push_back(std::const_pointer_cast<SafetensorsFile>(f));
  return {std::move(config), dir, std::move(w)};
}

// GGUF stores llama/mistral Q and K rows permuted for interleaved (GPT-J
// style) rotary; Kite uses the rotate-half layout of HF, so undo it:
// rows [n_head, hd/2, 2] -> [n_head, 2, hd/2]. Row r of the result is row
// src[r] of the file's.
std::vector<int64_t> unpermute_qk_rows(int64_t rows, int64_t n_head) {
  const int64_t hd = rows / n_head;
  std::vector<int64_t> src(static_cast<size_t>(rows));
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t two = 0; two < 2; ++two) src[size_t(h * hd + two * (hd / 2) + i)] = h * hd + i * 2 + two;
  return src;
}

// Rows src[0], src[1], ... of a contiguous CPU tensor [rows, ...], copied.
Tensor gather_rows(const Tensor& t, const std::vector<int64_t>& src) {
  KITE_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dim(0) == int64_t(src.size()), "gather_rows: {}",
             t.shape_str());
  Tensor out = Tensor::empty(t.shape(), t.dtype());
  const size_t row = t.nbytes() / src.size();
  const auto* from = static_cast<const uint8_t*>(t.data());
  auto* to = static_cast<uint8_t*>(out.data());
  for (size_t r = 0; r < src.size(); ++r) std::memcpy(to + r * row, from + size_t(src[r]) * row, row);
  return out;
}

Tensor unpermute_qk(const Tensor& t, int64_t n_head) { return gather_rows(t, unpermute_qk_rows(t.dim(0), n_head)); }

// The same on an Int8/Int4 weight: each row moves with its codes, scales and
// zeros, so the dequantized result is the dense un-permutation exactly.
QuantWeight unpermute_qk(QuantWeight w, int64_t n_head) {
  KITE_CHECK(w.scheme == QuantScheme::Int8 || w.scheme == QuantScheme::Int4, "unpermute_qk: {} weight",
             quant_scheme_name(w.scheme));
  const std::vector<int64_t> src = unpermute_qk_rows(w.out, n_head);
  for (Tensor* t : {&w.qdata, &w.scales, &w.zeros})
    if (t->defined()) *t = gather_rows(*t, src);
  return w;
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
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
      {"self_attn.o_proj.bias", "attn_output.bias"},
      {"mlp.gate_proj.bias", "ffn_gate.bias"},
      {"mlp.up_proj.bias", "ffn_up.bias"},
      {"mlp.down_proj.bias", "ffn_down.bias"},
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

LoadedCheckpoint load_gguf(const std::string& path) {
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
    return t;
  };
  auto has = [&](const std::string& hf) { return file->find_tensor(gguf_name(hf)) != nullptr; };
  // Q8_0 / Q4_0 linears stay quantized (Int8 / Int4, exact); others go dense.
  auto get_linear = [&](const std::string& module, int64_t out, int64_t in) {
    const std::string hf = module + ".weight", name = gguf_name(hf);
    std::optional<QuantWeight> q = has(hf) ? gguf_quant_weight(*file, name) : std::nullopt;
    if (!q) return QuantWeight::from_dense(get(hf, {out, in}));
    if (q->out != out || q->in != in)
      fail(path, name, "shape [{}, {}] but the GGUF metadata implies [{}, {}]", q->out, q->in, out, in);
    if (permuted && (hf.ends_with("q_proj.weight") || hf.ends_with("k_proj.weight")))
      *q = unpermute_qk(std::move(*q), hf.ends_with("q_proj.weight") ? config.num_heads : config.num_kv_heads);
    return std::move(*q);
  };
  if (!has("lm_head.weight")) config.tie_word_embeddings = true;
  std::shared_ptr<ModelWeights> w = read_weights(config, path, get, has, get_linear);
  // Llama 3.x GGUFs carry their RoPE scaling as per-frequency divisors.
  if (file->find_tensor("rope_freqs.weight")) w->rope_freq_factors = file->dequantize("rope_freqs.weight").to_floats();
  return {std::move(config), path, std::move(w)};
}

}  // namespace

namespace {
LoadedCheckpoint load_stored(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) fail(path, "model", "no such file or directory (expected a model directory or a .gguf)");
  if (fs::is_directory(path, ec)) return load_hf(path);
  if (path.ends_with(".gguf")) return load_gguf(path);
  if (path.ends_with("config.json")) return load_hf(fs::path(path).parent_path().string());
  fail(path, "model", "expected a Hugging Face model directory (config.json + *.safetensors) or a .gguf file");
}
}  // namespace

LoadedCheckpoint load_checkpoint(const std::string& path, const std::string& quantization) {
  if (!quantization.empty()) quantization_spec(quantization);  // a bad name fails before the weights are read
  LoadedCheckpoint c = load_stored(path);
  if (!quantization.empty())
    std::fprintf(stderr, "kite: %s\n", quantize_linears_at_load(*c.weights, quantization, path).c_str());
  return c;
}

std::unique_ptr<Model> load_model(const std::string& path, const LoadOptions& options) {
  LoadedCheckpoint c = load_checkpoint(path, options.quantization);
  return std::make_unique<DecoderModel>(std::move(c.config), std::move(c.path), std::move(c.weights), options.device);
}

}  // namespace kite
