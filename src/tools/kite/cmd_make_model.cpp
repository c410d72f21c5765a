// kite make-model: writes a random-weight Llama-family checkpoint of a named
// shape (for speed benchmarks; values do not change speed).
#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/error.h"
#include "core/parallel.h"
#include "core/tensor.h"
#include "formats/hf_config.h"
#include "formats/safetensors.h"
#include "model/arch/arch.h"
#include "tools/kite/commands.h"
#include "tools/kite/model_files.h"

namespace kite::cli {

namespace {

namespace fs = std::filesystem;

struct Shape {
  const char* arch;  // the HF architecture ("LlamaForCausalLM", ...)
  int64_t hidden, layers, heads, kv_heads, head_dim, ffn, vocab, max_pos;
  double rope_theta;
  bool llama3_rope;
  bool tied;
  int64_t sliding_window = 0;  // Mistral v0.1's 4096
};

const std::map<std::string, Shape>& shapes() {
  static const std::map<std::string, Shape> s = {
      {"llama3-8b", {"LlamaForCausalLM", 4096, 32, 32, 8, 128, 14336, 128256, 8192, 500000.0, true, false}},
      {"llama3-70b", {"LlamaForCausalLM", 8192, 80, 64, 8, 128, 28672, 128256, 8192, 500000.0, true, false}},
      {"llama3.2-1b", {"LlamaForCausalLM", 2048, 16, 32, 8, 64, 8192, 128256, 8192, 500000.0, true, true}},
      {"llama2-7b", {"LlamaForCausalLM", 4096, 32, 32, 32, 128, 11008, 32000, 4096, 10000.0, false, false}},
      {"mistral-7b", {"MistralForCausalLM", 4096, 32, 32, 8, 128, 14336, 32000, 32768, 10000.0, false, false, 4096}},
      {"qwen3-8b", {"Qwen3ForCausalLM", 4096, 36, 32, 8, 128, 12288, 151936, 40960, 1000000.0, false, false}},
      {"tiny", {"LlamaForCausalLM", 256, 2, 4, 2, 64, 512, 1024, 2048, 10000.0, false, false}},
  };
  return s;
}

struct MakeArgs {
  std::string shape = "llama3-8b";
  bool random = false;
  std::string dtype = "bf16";
  int64_t layers = 0;  // override
  uint64_t seed = 0;
  std::string out;
  std::string tokenizer;  // a tokenizer.json / tokenizer.model (or a directory holding one) to copy in
  double shard_gb = 5.0;
};

// splitmix64 per element: fast, parallel, reproducible.
inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform values of standard deviation `std` (or the constant `fill` when std = 0).
Tensor random_tensor(const kite::Shape& shape, DType dt, float std, float fill, uint64_t seed) {
  Tensor t = Tensor::empty(shape, dt);
  const int64_t n = t.numel();
  const float a = std * 1.7320508f;  // uniform(-a, a) has std a / sqrt(3)
  parallel_for(n, 1 << 16, [&](int64_t lo, int64_t hi) {
    if (dt == DType::BF16) {
      uint16_t* p = t.data_as<uint16_t>();
      for (int64_t i = lo; i < hi; ++i) {
        float v = std == 0 ? fill : (float(mix(seed ^ uint64_t(i)) >> 40) * (1.0f / 16777216.0f) * 2 - 1) * a;
        p[i] = f32_to_bf16(v);
      }
    } else {
      float* p = t.data_as<float>();
      for (int64_t i = lo; i < hi; ++i)
        p[i] = std == 0 ? fill : (float(mix(seed ^ uint64_t(i)) >> 40) * (1.0f / 16777216.0f) * 2 - 1) * a;
    }
  });
  return t;
}

int run_make_model(const MakeArgs& a) {
  auto it = shapes().find(a.shape);
  if (it == shapes().end()) {
    std::string names;
    for (auto& [k, v] : shapes()) names += (names.empty() ? "" : ", ") + k;
    fail("--shape", "shape", "'{}' is unknown; use one of {}", a.shape, names);
  }
  if (!a.random) fail("kite make-model", "--random", "only random weights are made; pass --random");
  DType dt = a.dtype == "bf16" ? DType::BF16 : a.dtype == "f32" ? DType::F32 : DType::U8;
  if (dt == DType::U8) fail("--dtype", "dtype", "'{}' is not supported; use bf16 or f32", a.dtype);
  Shape s = it->second;
  if (a.layers > 0) s.layers = a.layers;
  if (fs::exists(a.out) && !fs::is_empty(a.out))
    fail(a.out, "OUT", "the directory exists and is not empty; choose a new one");
  // The tokenizer files to copy, checked before anything is written.
  std::vector<fs::path> tok_files;
  if (!a.tokenizer.empty()) {
    const fs::path t = a.tokenizer;
    const fs::path dir = fs::is_directory(t) ? t : t.parent_path();
    if (fs::is_directory(t)) {
      for (const char* f : {"tokenizer.json", "tokenizer.model"})
        if (fs::exists(dir / f)) tok_files.push_back(dir / f);
    } else if (fs::exists(t) && (t.filename() == "tokenizer.json" || t.filename() == "tokenizer.model")) {
      tok_files.push_back(t);
    }
    if (tok_files.empty())
      fail(a.tokenizer, "--tokenizer", "no tokenizer.json or tokenizer.model there; give one of them or its directory");
    for (const char* f : {"tokenizer_config.json", "special_tokens_map.json"})
      if (fs::exists(dir / f)) tok_files.push_back(dir / f);
    const int64_t tok_vocab = load_tokenizer_for(tok_files[0].string())->vocab_size();
    if (tok_vocab > s.vocab)
      fail(a.tokenizer, "--tokenizer", "{} tokens do not fit the {} shape's vocabulary of {}", tok_vocab, a.shape,
           s.vocab);
  }
  fs::create_directories(a.out);
  const int64_t hd = s.head_dim;
  auto t0 = std::chrono::steady_clock::now();

  nlohmann::ordered_json cfg = {{"architectures", {s.arch}},
                                {"hidden_size", s.hidden},
                                {"intermediate_size", s.ffn},
                                {"num_hidden_layers", s.layers},
                                {"num_attention_heads", s.heads},
                                {"num_key_value_heads", s.kv_heads},
                                {"head_dim", hd},
                                {"vocab_size", s.vocab},
                                {"max_position_embeddings", s.max_pos},
                                {"rms_norm_eps", 1e-5},
                                {"rope_theta", s.rope_theta},
                                {"hidden_act", "silu"},
                                {"tie_word_embeddings", s.tied},
                                {"attention_bias", false},
                                {"mlp_bias", false},
                                {"bos_token_id", 1},
                                {"eos_token_id", 2},
                                {"torch_dtype", a.dtype == "bf16" ? "bfloat16" : "float32"}};
  if (s.sliding_window > 0) cfg["sliding_window"] = s.sliding_window;
  if (std::string(s.arch) == "Qwen3ForCausalLM") {
    cfg["use_sliding_window"] = false;
    cfg["max_window_layers"] = s.layers;
  }
  if (s.llama3_rope)
    cfg["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", 8.0},
                           {"low_freq_factor", 1.0},
                           {"high_freq_factor", 4.0},
                           {"original_max_position_embeddings", 8192}};
  std::ofstream(fs::path(a.out) / "config.json") << cfg.dump(2) << "\n";
  std::ofstream(fs::path(a.out) / "generation_config.json")
      << nlohmann::json{{"bos_token_id", 1}, {"eos_token_id", 2}, {"do_sample", false}}.dump(2) << "\n";

  // Tensors in order, written shard by shard so memory stays bounded.
  struct Spec {
    std::string name;
    kite::Shape shape;
    bool norm;
  };
  // The tensors the architecture's definition reads (model/arch/).
  const ModelConfig mc = parse_model_config(cfg.dump(), (fs::path(a.out) / "config.json").string());
  const LayerSpec ls = architecture_for(mc, "kite make-model").layer_spec(mc, mc);
  std::vector<Spec> specs;
  specs.push_back({"model.embed_tokens.weight", {s.vocab, s.hidden}, false});
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    for (const TensorSlot& t : ls.tensors) specs.push_back({p + t.name, t.shape, true});
    for (const LinearSlot& slot : ls.linears)
      for (const LinearPart& part : slot.parts) {
        specs.push_back({p + part.module + ".weight", {part.out, part.in}, false});
        if (part.bias) specs.push_back({p + part.module + ".bias", {part.out}, false});
      }
  }
  specs.push_back({"model.norm.weight", {s.hidden}, true});
  if (!s.tied) specs.push_back({"lm_head.weight", {s.vocab, s.hidden}, false});

  const size_t shard_bytes = size_t(a.shard_gb * 1e9);
  std::vector<std::vector<size_t>> shards(1);
  size_t acc = 0, total = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    size_t bytes = dtype_size(dt);
    for (int64_t d : specs[i].shape) bytes *= size_t(d);
    if (acc > 0 && acc + bytes > shard_bytes) {
      shards.emplace_back();
      acc = 0;
    }
    shards.back().push_back(i);
    acc += bytes;
    total += bytes;
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", nlohmann::json::object()}};
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file = shards.size() == 1
                                 ? "model.safetensors"
                                 : fmt::format("model-{:05d}-of-{:05d}.safetensors", k + 1, shards.size());
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (size_t i : shards[k]) {
      const Spec& sp = specs[i];
      tensors.emplace_back(sp.name,
                           random_tensor(sp.shape, dt, sp.norm ? 0.0f : 0.02f, 1.0f, mix(a.seed * 1000003 + i)));
      index["weight_map"][sp.name] = file;
    }
    write_safetensors((fs::path(a.out) / file).string(), tensors, {{"format", "pt"}});
    std::fprintf(stderr, "\rkite make-model: %zu/%zu shards", k + 1, shards.size());
  }
  if (shards.size() > 1) std::ofstream(fs::path(a.out) / "model.safetensors.index.json") << index.dump(2) << "\n";
  for (const fs::path& f : tok_files) fs::copy_file(f, fs::path(a.out) / f.filename());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "\nkite make-model: %s (%s, %lld layers) %.2f GB in %.1f s -> %s\n", a.shape.c_str(),
               a.dtype.c_str(), (long long)s.layers, double(total) / 1e9, secs, a.out.c_str());
  return 0;
}

}  // namespace

Run add_make_model(CLI::App& app) {
  auto a = std::make_shared<MakeArgs>();
  CLI::App* c = app.add_subcommand("make-model", "Write a random-weight checkpoint of a named shape (for benchmarks)");
  c->add_option("--shape", a->shape,
                "llama3-8b, llama3-70b, llama3.2-1b, llama2-7b, mistral-7b, qwen3-8b or tiny (the shape names "
                "its architecture)")
      ->capture_default_str();
  c->add_flag("--random", a->random, "Random weights (uniform, std 0.02; norms 1)");
  c->add_option("--dtype", a->dtype, "bf16 or f32")->capture_default_str();
  c->add_option("--layers", a->layers, "Override the number of layers (0 = the shape's)");
  c->add_option("--seed", a->seed, "Seed")->capture_default_str();
  c->add_option("--tokenizer", a->tokenizer,
                "A tokenizer.json or tokenizer.model (or its directory) to copy in, with its tokenizer_config.json: "
                "its ids must be below the shape's vocabulary");
  c->add_option("--shard-gb", a->shard_gb, "Largest shard in GB")->capture_default_str();
  c->add_option("OUT", a->out, "Output directory (new or empty)")->required();
  return [a] { return run_make_model(*a); };
}

}  // namespace kite::cli
