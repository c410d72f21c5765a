#pragma once
// Hugging Face model configuration: config.json and generation_config.json
// of the Llama family (Llama 2/3/3.1/3.2, Mistral, Qwen2/2.5, Qwen3).
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"

namespace kite {

enum class Arch { Llama, Mistral, Qwen2, Qwen3 };
std::string_view arch_name(Arch a);  // "llama", "mistral", "qwen2", "qwen3"

struct RopeScaling {
  std::string type = "default";  // default|linear|llama3|dynamic|yarn
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position_embeddings = 0;
  double attention_factor = 0.0;  // yarn; 0 = unset
  double beta_fast = 32, beta_slow = 1;
};

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string architecture;  // e.g. "LlamaForCausalLM"
  std::string model_type;
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, num_layers = 0, num_heads = 0, num_kv_heads = 0,
          head_dim = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  double partial_rotary_factor = 1.0;
  int64_t max_position_embeddings = 2048;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // Qwen2: true (q, k, v bias)
  bool mlp_bias = false;
  bool qk_norm = false;           // Qwen3
  int64_t sliding_window = 0;     // 0: none; else W (keys (p - W, p] are seen)
  int64_t max_window_layers = 0;  // Qwen2/3: layers from this one on use the window
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  DType dtype = DType::BF16;  // torch_dtype or dtype key
  std::string hidden_act = "silu";
};

// Parses config.json text; `source` (the path) names the file in errors.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
// Accepts a model directory (reads <dir>/config.json) or the path of a config file.
ModelConfig load_model_config(const std::string& model_dir_or_config_path);
// Checks sizes and divisibility of a config built elsewhere (e.g. from GGUF
// metadata); throws Error(source, key, ...) naming the offending key.
void validate_model_config(const ModelConfig& c, const std::string& source);

struct GenerationDefaults {
  std::optional<int32_t> bos_token_id;
  std::vector<int32_t> eos_token_ids;
  bool do_sample = false;
  double temperature = 1.0, top_p = 1.0, min_p = 0.0, repetition_penalty = 1.0;
  int64_t top_k = 0;
  int64_t max_length = 0;
  std::optional<int64_t> max_new_tokens;
};

GenerationDefaults parse_generation_config(const std::string& json_text, const std::string& source);
// Reads <model_dir>/generation_config.json; defaults when the file is absent.
GenerationDefaults load_generation_config(const std::string& model_dir);

}  // namespace kite
