#include "formats/hf_config.h"

#include <sys/stat.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/mapped_file.h"

namespace kite {

namespace {

using json = nlohmann::json;

struct ArchEntry {
  const char* architecture;
  const char* model_type;
  Arch arch;
};
constexpr ArchEntry kArchs[] = {
    {"LlamaForCausalLM", "llama", Arch::Llama},
    {"MistralForCausalLM", "mistral", Arch::Mistral},
    {"Qwen2ForCausalLM", "qwen2", Arch::Qwen2},
    {"Qwen3ForCausalLM", "qwen3", Arch::Qwen3},
};

std::string supported_architectures() {
  std::string s;
  for (const ArchEntry& e : kArchs) {
    if (!s.empty()) s += ", ";
    s += e.architecture;
  }
  return s;
}

const char* type_name(const json& j) {
  switch (j.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "object";
    case json::value_t::array: return "array";
    case json::value_t::string: return "string";
    case json::value_t::boolean: return "boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "integer";
    case json::value_t::number_float: return "number";
    default: return "value";
  }
}

// Typed access to one JSON object; `prefix` qualifies keys in errors
// ("rope_scaling.factor").
class Reader {
 public:
  Reader(const json& obj, const std::string& source, std::string prefix = "")
      : obj_(obj), source_(source), prefix_(std::move(prefix)) {}

  // nullptr when absent or null.
  const json* find(const std::string& key) const {
    auto it = obj_.find(key);
    if (it == obj_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool has(const std::string& key) const { return find(key) != nullptr; }
  std::string field(const std::string& key) const { return prefix_ + key; }

  std::optional<int64_t> opt_int(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    return as_int(*v, key);
  }
  int64_t req_int(const std::string& key) const {
    auto v = opt_int(key);
    if (!v) fail(source_, field(key), "missing (expected an integer)");
    return *v;
  }
  int64_t int_or(const std::string& key, int64_t def) const { return opt_int(key).value_or(def); }

  std::optional<double> opt_double(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) fail(source_, field(key), "expected a number, found {} {}", type_name(*v), v->dump());
    double d = v->get<double>();
    if (!std::isfinite(d)) fail(source_, field(key), "expected a finite number, found {}", v->dump());
    return d;
  }
  double double_or(const std::string& key, double def) const { return opt_double(key).value_or(def); }

  std::optional<bool> opt_bool(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_boolean()) fail(source_, field(key), "expected true or false, found {} {}", type_name(*v), v->dump());
    return v->get<bool>();
  }
  bool bool_or(const std::string& key, bool def) const { return opt_bool(key).value_or(def); }

  std::optional<std::string> opt_string(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_string()) fail(source_, field(key), "expected a string, found {} {}", type_name(*v), v->dump());
    return v->get<std::string>();
  }

  // A token id, or a list of them (eos_token_id).
  std::vector<int32_t> token_ids(const std::string& key) const {
    const json* v = find(key);
    std::vector<int32_t> out;
    if (!v) return out;
    if (v->is_array()) {
      for (const json& e : *v) out.push_back(token_id(e, key));
    } else {
      out.push_back(token_id(*v, key));
    }
    return out;
  }
  std::optional<int32_t> opt_token_id(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (v->is_array()) {
      // Some configs list one BOS id in an array.
      if (v->size() != 1) fail(source_, field(key), "expected one token id, found {}", v->dump());
      return token_id((*v)[0], key);
    }
    return token_id(*v, key);
  }

 private:
  int64_t as_int(const json& v, const std::string& key) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_unsigned()) {
      uint64_t u = v.get<uint64_t>();
      if (u > uint64_t(std::numeric_limits<int64_t>::max())) fail(source_, field(key), "{} is out of range", u);
      return int64_t(u);
    }
    if (v.is_number_float()) {
      double d = v.get<double>();
      if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e15) return int64_t(d);
    }
    fail(source_, field(key), "expected an integer, found {} {}", type_name(v), v.dump());
  }
  int32_t token_id(const json& v, const std::string& key) const {
    int64_t id = as_int(v, key);
    if (id < 0 || id > std::numeric_limits<int32_t>::max())
      fail(source_, field(key), "token id {} is out of range", id);
    return int32_t(id);
  }

  const json& obj_;
  const std::string& source_;
  std::string prefix_;
};

json parse_json_object(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(source, "", "not valid JSON: {}", e.what());
  }
  if (!j.is_object()) fail(source, "", "expected a JSON object, found {}", type_name(j));
  return j;
}

DType parse_torch_dtype(const std::string& s, const std::string& source, const std::string& key) {
  std::string_view v = s;
  if (v.substr(0, 6) == "torch.") v = v.substr(6);
  if (v == "bfloat16") return DType::BF16;
  if (v == "float16" || v == "half") return DType::F16;
  if (v == "float32" || v == "float") return DType::F32;
  fail(source, key, "unsupported dtype \"{}\" (expected bfloat16, float16 or float32)", s);
}

// Reads the RoPE fields of `obj` (the legacy rope_scaling object or the
// transformers 5 rope_parameters object, which also carries rope_theta).
void read_rope(const json& obj, const std::string& source, const std::string& key, ModelConfig& c) {
  if (!obj.is_object()) fail(source, key, "expected an object, found {}", type_name(obj));
  Reader r(obj, source, key + ".");
  if (auto theta = r.opt_double("rope_theta")) c.rope_theta = *theta;
  if (auto prf = r.opt_double("partial_rotary_factor")) c.partial_rotary_factor = *prf;
  std::optional<std::string> type = r.opt_string("rope_type");
  std::string type_key = "rope_type";
  if (!type) {
    type = r.opt_string("type");
    type_key = "type";
  }
  RopeScaling& rs = c.rope_scaling;
  rs.type = type.value_or("default");
  if (rs.type != "default" && rs.type != "linear" && rs.type != "llama3" && rs.type != "dynamic" && rs.type != "yarn")
    fail(source, key + "." + type_key,
         "rope type \"{}\" is not supported (supported: default, linear, llama3, dynamic, yarn)", rs.type);
  rs.factor = r.double_or("factor", 1.0);
  rs.low_freq_factor = r.double_or("low_freq_factor", 1.0);
  rs.high_freq_factor = r.double_or("high_freq_factor", 4.0);
  rs.original_max_position_embeddings = r.int_or("original_max_position_embeddings", 0);
  rs.attention_factor = r.double_or("attention_factor", 0.0);
  rs.beta_fast = r.double_or("beta_fast", 32.0);
  rs.beta_slow = r.double_or("beta_slow", 1.0);
  if (rs.type != "default") {
    if (!r.has("factor")) fail(source, key + ".factor", "missing (required for rope type {})", rs.type);
    if (rs.factor < 1.0 && rs.type != "linear")
      fail(source, key + ".factor", "{} must be >= 1 for rope type {}", rs.factor, rs.type);
    if (rs.factor <= 0) fail(source, key + ".factor", "{} must be positive", rs.factor);
  }
  if (rs.type == "llama3") {
    for (const char* k : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
      if (!r.has(k)) fail(source, key + "." + k, "missing (required for rope type llama3)");
    if (rs.low_freq_factor <= 0 || rs.high_freq_factor <= rs.low_freq_factor)
      fail(source, key + ".high_freq_factor", "expected 0 < low_freq_factor ({}) < high_freq_factor ({})",
           rs.low_freq_factor, rs.high_freq_factor);
  }
  if (rs.original_max_position_embeddings < 0)
    fail(source, key + ".original_max_position_embeddings", "{} must not be negative",
         rs.original_max_position_embeddings);
}

}  // namespace

std::string_view arch_name(Arch a) {
  for (const ArchEntry& e : kArchs)
    if (e.arch == a) return e.model_type;
  return "unknown";
}

void validate_model_config(const ModelConfig& c, const std::string& source) {
  auto positive = [&](int64_t v, const char* key) {
    if (v <= 0) fail(source, key, "{} must be positive", v);
  };
  positive(c.vocab_size, "vocab_size");
  positive(c.hidden_size, "hidden_size");
  positive(c.intermediate_size, "intermediate_size");
  positive(c.num_layers, "num_hidden_layers");
  positive(c.num_heads, "num_attention_heads");
  positive(c.num_kv_heads, "num_key_value_heads");
  positive(c.head_dim, "head_dim");
  positive(c.max_position_embeddings, "max_position_embeddings");
  constexpr int64_t kHuge = int64_t(1) << 24;  // far beyond any real model; keeps products in range
  auto bounded = [&](int64_t v, const char* key) {
    if (v > kHuge) fail(source, key, "{} is implausibly large (limit {})", v, kHuge);
  };
  bounded(c.vocab_size, "vocab_size");
  bounded(c.hidden_size, "hidden_size");
  bounded(c.intermediate_size, "intermediate_size");
  bounded(c.num_layers, "num_hidden_layers");
  bounded(c.num_heads, "num_attention_heads");
  bounded(c.num_kv_heads, "num_key_value_heads");
  bounded(c.head_dim, "head_dim");
  if (c.num_heads % c.num_kv_heads != 0)
    fail(source, "num_key_value_heads", "{} does not divide num_attention_heads {}", c.num_kv_heads, c.num_heads);
  if (c.head_dim % 2 != 0) fail(source, "head_dim", "{} must be even for rotary embeddings", c.head_dim);
  if (!(c.rms_norm_eps > 0)) fail(source, "rms_norm_eps", "{} must be positive", c.rms_norm_eps);
  if (!(c.rope_theta > 0)) fail(source, "rope_theta", "{} must be positive", c.rope_theta);
  if (!(c.partial_rotary_factor > 0 && c.partial_rotary_factor <= 1))
    fail(source, "partial_rotary_factor", "{} must be in (0, 1]", c.partial_rotary_factor);
  double rot = c.partial_rotary_factor * double(c.head_dim);
  if (std::fabs(rot - std::round(rot)) > 1e-6 || int64_t(std::round(rot)) % 2 != 0)
    fail(source, "partial_rotary_factor", "{} x head_dim {} is not an even number of rotary dimensions",
         c.partial_rotary_factor, c.head_dim);
  if (c.sliding_window < 0) fail(source, "sliding_window", "{} must not be negative", c.sliding_window);
}

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  json j = parse_json_object(json_text, source);
  Reader r(j, source);
  ModelConfig c;

  // Architecture: "architectures": ["LlamaForCausalLM"], else model_type.
  c.model_type = r.opt_string("model_type").value_or("");
  if (const json* a = r.find("architectures")) {
    if (!a->is_array() || a->empty() || !(*a)[0].is_string())
      fail(source, "architectures", "expected a non-empty array of strings, found {}", a->dump());
    c.architecture = (*a)[0].get<std::string>();
    bool found = false;
    for (const ArchEntry& e : kArchs)
      if (c.architecture == e.architecture) {
        c.arch = e.arch;
        found = true;
      }
    if (!found)
      fail(source, "architectures", "{} is not supported; supported: {}", c.architecture, supported_architectures());
  } else if (!c.model_type.empty()) {
    bool found = false;
    for (const ArchEntry& e : kArchs)
      if (c.model_type == e.model_type) {
        c.arch = e.arch;
        c.architecture = e.architecture;
        found = true;
      }
    if (!found)
      fail(source, "model_type",
           "\"{}\" is not supported and no architectures key names a supported one; "
           "supported: {}",
           c.model_type, supported_architectures());
  } else {
    fail(source, "architectures", "missing (and no model_type); supported: {}", supported_architectures());
  }
  if (c.model_type.empty()) c.model_type = std::string(arch_name(c.arch));

  c.vocab_size = r.req_int("vocab_size");
  c.hidden_size = r.req_int("hidden_size");
  c.intermediate_size = r.req_int("intermediate_size");
  c.num_layers = r.req_int("num_hidden_layers");
  c.num_heads = r.req_int("num_attention_heads");
  if (c.num_heads <= 0) fail(source, "num_attention_heads", "{} must be positive", c.num_heads);
  c.num_kv_heads = r.int_or("num_key_value_heads", c.num_heads);
  if (auto hd = r.opt_int("head_dim")) {
    c.head_dim = *hd;
  } else {
    if (c.hidden_size % c.num_heads != 0)
      fail(source, "hidden_size", "{} is not divisible by num_attention_heads {} (and no head_dim is given)",
           c.hidden_size, c.num_heads);
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.rms_norm_eps = r.double_or("rms_norm_eps", 1e-6);
  c.max_position_embeddings = r.int_or("max_position_embeddings", 2048);
  c.tie_word_embeddings = r.bool_or("tie_word_embeddings", false);
  c.partial_rotary_factor = r.double_or("partial_rotary_factor", 1.0);

  c.rope_theta = r.double_or("rope_theta", 10000.0);
  if (const json* rp = r.find("rope_parameters")) {
    read_rope(*rp, source, "rope_parameters", c);
  } else if (const json* rs = r.find("rope_scaling")) {
    read_rope(*rs, source, "rope_scaling", c);
    c.rope_theta = r.double_or("rope_theta", 10000.0);  // the legacy object carries no theta
  }

  switch (c.arch) {
    case Arch::Llama:
    case Arch::Mistral:
      c.attention_bias = r.bool_or("attention_bias", false);
      c.mlp_bias = r.bool_or("mlp_bias", false);
      break;
    case Arch::Qwen2:
      // Qwen2 always has q/k/v biases (no config key in transformers).
      c.attention_bias = r.bool_or("attention_bias", true);
      break;
    case Arch::Qwen3:
      c.attention_bias = r.bool_or("attention_bias", false);
      c.qk_norm = true;
      break;
  }

  if (c.arch == Arch::Mistral) {
    c.sliding_window = r.int_or("sliding_window", 0);
  } else if (c.arch == Arch::Qwen2 || c.arch == Arch::Qwen3) {
    // Qwen configs carry sliding_window even when it is off.
    if (r.bool_or("use_sliding_window", false)) {
      c.sliding_window = r.int_or("sliding_window", 0);
      c.max_window_layers = r.int_or("max_window_layers", 28);  // transformers' Qwen2Config default
    }
  }
  // Keys of other families that change the math; Kite's definitions do not
  // implement them, so a config setting them is refused rather than run wrong.
  // Each key's neutral value (the math of the definitions), NaN: none.
  const std::pair<const char*, double> kRefused[] = {
      {"attn_logit_softcapping", 0}, {"final_logit_softcapping", 0}, {"logit_scale", 1},
      {"logits_scaling", 1},         {"embedding_multiplier", 1},    {"residual_multiplier", 1},
      {"attention_multiplier", 1},   {"query_pre_attn_scalar", NAN}, {"num_experts", 0},
      {"num_local_experts", 0},      {"moe_intermediate_size", 0}};
  for (const auto& [key, neutral] : kRefused) {
    const json* v = r.find(key);
    if (v && !v->is_null() && !(v->is_number() && v->get<double>() == neutral))
      fail(source, key, "is set ({}) but no Kite model definition implements it; this checkpoint cannot run here",
           v->dump());
  }

  c.bos_token_id = r.opt_token_id("bos_token_id");
  c.eos_token_ids = r.token_ids("eos_token_id");

  if (auto dt = r.opt_string("dtype")) {
    c.dtype = parse_torch_dtype(*dt, source, "dtype");
  } else if (auto tdt = r.opt_string("torch_dtype")) {
    c.dtype = parse_torch_dtype(*tdt, source, "torch_dtype");
  }

  c.hidden_act = r.opt_string("hidden_act").value_or("silu");
  if (c.hidden_act == "swish") c.hidden_act = "silu";
  if (c.hidden_act != "silu")
    fail(source, "hidden_act", "\"{}\" is not supported (Llama-family models use silu)", c.hidden_act);

  validate_model_config(c, source);
  return c;
}

ModelConfig load_model_config(const std::string& model_dir_or_config_path) {
  std::string path = model_dir_or_config_path;
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    path = (path.empty() || path.back() == '/') ? path + "config.json" : path + "/config.json";
  return parse_model_config(read_text_file(path), path);
}

GenerationDefaults parse_generation_config(const std::string& json_text, const std::string& source) {
  json j = parse_json_object(json_text, source);
  Reader r(j, source);
  GenerationDefaults g;
  g.bos_token_id = r.opt_token_id("bos_token_id");
  g.eos_token_ids = r.token_ids("eos_token_id");
  g.do_sample = r.bool_or("do_sample", false);
  g.temperature = r.double_or("temperature", 1.0);
  g.top_p = r.double_or("top_p", 1.0);
  g.min_p = r.double_or("min_p", 0.0);
  g.repetition_penalty = r.double_or("repetition_penalty", 1.0);
  g.top_k = r.int_or("top_k", 0);
  g.max_length = r.int_or("max_length", 0);
  g.max_new_tokens = r.opt_int("max_new_tokens");
  if (g.temperature < 0) fail(source, "temperature", "{} must not be negative", g.temperature);
  if (!(g.top_p > 0 && g.top_p <= 1)) fail(source, "top_p", "{} must be in (0, 1]", g.top_p);
  if (g.min_p < 0 || g.min_p > 1) fail(source, "min_p", "{} must be in [0, 1]", g.min_p);
  if (!(g.repetition_penalty > 0)) fail(source, "repetition_penalty", "{} must be positive", g.repetition_penalty);
  if (g.top_k < 0) fail(source, "top_k", "{} must not be negative", g.top_k);
  if (g.max_length < 0) fail(source, "max_length", "{} must not be negative", g.max_length);
  if (g.max_new_tokens && *g.max_new_tokens < 0)
    fail(source, "max_new_tokens", "{} must not be negative", *g.max_new_tokens);
  return g;
}

GenerationDefaults load_generation_config(const std::string& model_dir) {
  std::string path = (model_dir.empty() || model_dir.back() == '/') ? model_dir + "generation_config.json"
                                                                    : model_dir + "/generation_config.json";
  if (!file_exists(path)) return GenerationDefaults{};
  return parse_generation_config(read_text_file(path), path);
}

}  // namespace kite
