#include "formats/hf_config.h"

#include "formats/test_util.h"

namespace kite {
namespace {

using test::expect_error;
using test::ScratchDir;
using test::write_file;

// Shaped like the released configs of each model (trimmed of keys Kite ignores).
const char* kLlama2_7B = R"({
  "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
  "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000})";

const char* kLlama31_8B = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

const char* kLlama32_1B = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu",
  "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072,
  "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
  "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";

const char* kMistral7B = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
  "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000})";

const char* kQwen25_7B = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
  "intermediate_size": 18944, "max_position_embeddings": 32768, "max_window_layers": 28, "model_type": "qwen2",
  "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1", "use_cache": true, "use_sliding_window": false, "vocab_size": 152064})";

const char* kQwen3_8B = R"({
  "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 12288, "max_position_embeddings": 40960, "max_window_layers": 36,
  "model_type": "qwen3", "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936})";

TEST(HfConfig, KiteReferenceModel) {
  std::string dir = test::shared_dir() + "/models/kite-ref";
  ModelConfig c = load_model_config(dir);
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(arch_name(c.arch), "llama");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 8192);
  EXPECT_EQ(c.hidden_size, 384);
  EXPECT_EQ(c.intermediate_size, 1024);
  EXPECT_EQ(c.num_layers, 8);
  EXPECT_EQ(c.num_heads, 6);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);  // from rope_parameters
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2}));
  EXPECT_EQ(c.dtype, DType::BF16);
  EXPECT_EQ(c.hidden_act, "silu");
  // The config file path works as well as the directory.
  EXPECT_EQ(load_model_config(dir + "/config.json").hidden_size, 384);
}

TEST(HfConfig, Llama2_7B) {
  ModelConfig c = parse_model_config(kLlama2_7B, "llama2/config.json");
  EXPECT_EQ(c.arch, Arch::Llama);
  EXPECT_EQ(c.head_dim, 128);  // hidden / heads
  EXPECT_EQ(c.num_kv_heads, 32);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, "default");
  EXPECT_EQ(c.max_position_embeddings, 4096);
  EXPECT_EQ(c.dtype, DType::F16);  // torch_dtype
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{2}));
}

TEST(HfConfig, Llama31_8B) {
  ModelConfig c = parse_model_config(kLlama31_8B, "llama31/config.json");
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.dtype, DType::BF16);
}

TEST(HfConfig, Llama32_1B_Tied) {
  ModelConfig c = parse_model_config(kLlama32_1B, "llama32/config.json");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_layers, 16);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
}

TEST(HfConfig, Mistral7B) {
  ModelConfig c = parse_model_config(kMistral7B, "mistral/config.json");
  EXPECT_EQ(c.arch, Arch::Mistral);
  EXPECT_EQ(arch_name(c.arch), "mistral");
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.intermediate_size, 14336);
  EXPECT_FALSE(c.attention_bias);
}

TEST(HfConfig, Qwen25_7B) {
  ModelConfig c = parse_model_config(kQwen25_7B, "qwen25/config.json");
  EXPECT_EQ(c.arch, Arch::Qwen2);
  EXPECT_TRUE(c.attention_bias);  // q/k/v biases are implied by the architecture
  EXPECT_FALSE(c.qk_norm);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window is false
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{151645}));
  EXPECT_FALSE(c.tie_word_embeddings);
}

TEST(HfConfig, Qwen3_8B) {
  ModelConfig c = parse_model_config(kQwen3_8B, "qwen3/config.json");
  EXPECT_EQ(c.arch, Arch::Qwen3);
  EXPECT_TRUE(c.qk_norm);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.num_layers, 36);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);  // integer in the JSON
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.bos_token_id, 151643);
}

TEST(HfConfig, Qwen3HonoursAttentionBiasAndQwen2SlidingWindow) {
  std::string q3 = kQwen3_8B;
  q3.replace(q3.find("\"attention_bias\": false"), 23, "\"attention_bias\": true");
  EXPECT_TRUE(parse_model_config(q3, "q3").attention_bias);
  std::string q2 = kQwen25_7B;
  q2.replace(q2.find("\"use_sliding_window\": false"), 27, "\"use_sliding_window\": true");
  EXPECT_EQ(parse_model_config(q2, "q2").sliding_window, 131072);
  EXPECT_EQ(parse_model_config(q2, "q2").max_window_layers, 28);  // the windowed layers start there
}

TEST(HfConfig, RopeParametersOfTransformers5) {
  std::string j = R"({"architectures":["LlamaForCausalLM"],"vocab_size":128256,"hidden_size":2048,
    "intermediate_size":8192,"num_hidden_layers":16,"num_attention_heads":32,"num_key_value_heads":8,
    "rope_parameters":{"rope_theta":500000.0,"rope_type":"llama3","factor":32.0,"low_freq_factor":1.0,
    "high_freq_factor":4.0,"original_max_position_embeddings":8192},"dtype":"float32"})";
  ModelConfig c = parse_model_config(j, "t5");
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 32.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.dtype, DType::F32);
  EXPECT_EQ(c.num_kv_heads, 8);
}

TEST(HfConfig, LegacyRopeScalingTypeKeyAndYarn) {
  std::string base = R"({"architectures":["LlamaForCausalLM"],"vocab_size":100,"hidden_size":64,
    "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"rope_theta":20000,)";
  ModelConfig lin = parse_model_config(base + R"("rope_scaling":{"type":"linear","factor":2.0}})", "lin");
  EXPECT_EQ(lin.rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(lin.rope_scaling.factor, 2.0);
  EXPECT_DOUBLE_EQ(lin.rope_theta, 20000.0);
  EXPECT_EQ(lin.num_kv_heads, 4);  // defaults to the head count
  ModelConfig y = parse_model_config(
      base + R"("rope_scaling":{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768,
      "beta_fast":16,"attention_factor":1.2}})",
      "yarn");
  EXPECT_EQ(y.rope_scaling.type, "yarn");
  EXPECT_DOUBLE_EQ(y.rope_scaling.factor, 4.0);
  EXPECT_EQ(y.rope_scaling.original_max_position_embeddings, 32768);
  EXPECT_DOUBLE_EQ(y.rope_scaling.beta_fast, 16.0);
  EXPECT_DOUBLE_EQ(y.rope_scaling.beta_slow, 1.0);
  EXPECT_DOUBLE_EQ(y.rope_scaling.attention_factor, 1.2);
}

// A minimal valid config with `extra` JSON members appended (later keys win).
std::string with(const std::string& extra) {
  std::string j = R"({"architectures":["LlamaForCausalLM"],"vocab_size":100,"hidden_size":64,
    "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2)";
  if (!extra.empty()) j += "," + extra;
  return j + "}";
}

TEST(HfConfig, Errors) {
  auto bad = [](const std::string& json, const std::vector<std::string>& parts) {
    std::vector<std::string> all = {"cfg.json"};
    all.insert(all.end(), parts.begin(), parts.end());
    expect_error([&] { parse_model_config(json, "cfg.json"); }, all);
  };
  EXPECT_NO_THROW(parse_model_config(with(""), "cfg.json"));
  bad(R"({"architectures":["LlamaXYZ"]})",
      {"architectures",
       "LlamaXYZ is not supported; supported: LlamaForCausalLM, MistralForCausalLM, "
       "Qwen2ForCausalLM, Qwen3ForCausalLM"});
  bad(R"({"architectures":"LlamaForCausalLM"})", {"architectures", "non-empty array"});
  bad(R"({"vocab_size":3})", {"architectures", "missing"});
  bad("[1]", {"expected a JSON object"});
  bad("{", {"not valid JSON"});
  std::string no_hidden = with("");
  no_hidden.replace(no_hidden.find("\"hidden_size\":64,"), 17, "");
  bad(no_hidden, {"hidden_size", "missing"});
  bad(with(R"("hidden_size":"big")"), {"hidden_size", "expected an integer, found string"});
  bad(with(R"("hidden_size":62)"), {"hidden_size", "not divisible by num_attention_heads 4"});
  bad(with(R"("num_hidden_layers":0)"), {"num_hidden_layers", "must be positive"});
  bad(with(R"("intermediate_size":-5)"), {"intermediate_size", "must be positive"});
  bad(with(R"("num_key_value_heads":3)"), {"num_key_value_heads", "does not divide num_attention_heads 4"});
  bad(with(R"("head_dim":15)"), {"head_dim", "even"});
  bad(with(R"("vocab_size":1e30)"), {"vocab_size"});
  bad(with(R"("rms_norm_eps":"small")"), {"rms_norm_eps", "expected a number"});
  bad(with(R"("rms_norm_eps":0)"), {"rms_norm_eps", "must be positive"});
  bad(with(R"("tie_word_embeddings":1)"), {"tie_word_embeddings", "expected true or false"});
  bad(with(R"("rope_scaling":{"rope_type":"longrope","factor":2})"), {"rope_scaling.rope_type", "longrope"});
  bad(with(R"("rope_scaling":{"rope_type":"llama3","factor":8})"), {"rope_scaling.low_freq_factor", "missing"});
  bad(with(R"("rope_scaling":{"type":"linear"})"), {"rope_scaling.factor", "missing"});
  bad(with(R"("rope_scaling":[1])"), {"rope_scaling", "expected an object"});
  bad(with(R"("rope_parameters":{"rope_theta":"x"})"), {"rope_parameters.rope_theta", "expected a number"});
  bad(with(R"("eos_token_id":[1,"two"])"), {"eos_token_id", "expected an integer"});
  bad(with(R"("eos_token_id":-3)"), {"eos_token_id", "out of range"});
  bad(with(R"("torch_dtype":"int4")"), {"torch_dtype", "int4"});
  bad(with(R"("hidden_act":"gelu")"), {"hidden_act", "gelu"});
  bad(with(R"("partial_rotary_factor":1.5)"), {"partial_rotary_factor"});
  bad(R"({"model_type":"gpt2"})", {"model_type", "gpt2"});
  // Keys of other families that change the math are refused, never ignored.
  bad(with(R"("final_logit_softcapping":30.0)"), {"final_logit_softcapping", "no Kite model definition"});
  bad(with(R"("attn_logit_softcapping":50.0)"), {"attn_logit_softcapping"});
  bad(with(R"("residual_multiplier":0.22)"), {"residual_multiplier"});
  bad(with(R"("num_local_experts":8)"), {"num_local_experts"});
  bad(with(R"("logit_scale":0.0625)"), {"logit_scale"});
  // ...unless they leave the math as it is.
  EXPECT_NO_THROW(parse_model_config(with(R"("final_logit_softcapping":null)"), "cfg.json"));
  EXPECT_NO_THROW(parse_model_config(with(R"("residual_multiplier":1.0)"), "cfg.json"));
  EXPECT_NO_THROW(parse_model_config(with(R"("num_experts":0)"), "cfg.json"));
  EXPECT_NO_THROW(parse_model_config(with(R"("logit_scale":1.0)"), "cfg.json"));
}

TEST(HfConfig, ModelTypeStandsInForArchitectures) {
  std::string j = with("");
  j.replace(j.find(R"("architectures":["LlamaForCausalLM"],)"), 37, R"("model_type":"qwen3",)");
  ModelConfig c = parse_model_config(j, "cfg");
  EXPECT_EQ(c.arch, Arch::Qwen3);
  EXPECT_EQ(c.architecture, "Qwen3ForCausalLM");
}

TEST(HfConfig, MissingConfigFileNamesThePath) {
  ScratchDir dir;
  expect_error([&] { load_model_config(dir.path()); }, {dir.path() + "/config.json", "cannot open"});
}

TEST(GenerationConfig, KiteReferenceModel) {
  GenerationDefaults g = load_generation_config(test::shared_dir() + "/models/kite-ref");
  EXPECT_EQ(g.bos_token_id, 1);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{2}));
  EXPECT_FALSE(g.do_sample);
  EXPECT_EQ(g.max_length, 2048);
  EXPECT_FALSE(g.max_new_tokens.has_value());
  EXPECT_DOUBLE_EQ(g.temperature, 1.0);
}

TEST(GenerationConfig, DefaultsWhenAbsentAndFullParse) {
  ScratchDir dir;
  GenerationDefaults d = load_generation_config(dir.path());
  EXPECT_FALSE(d.bos_token_id.has_value());
  EXPECT_TRUE(d.eos_token_ids.empty());
  EXPECT_DOUBLE_EQ(d.top_p, 1.0);
  EXPECT_EQ(d.top_k, 0);

  write_file(dir.file("generation_config.json"),
             R"({"bos_token_id":128000,"do_sample":true,"eos_token_id":[128001,128008,128009],
                 "temperature":0.6,"top_p":0.9,"top_k":20,"min_p":0.05,"repetition_penalty":1.05,
                 "max_new_tokens":512,"transformers_version":"4.45.0"})");
  GenerationDefaults g = load_generation_config(dir.path());
  EXPECT_EQ(g.bos_token_id, 128000);
  EXPECT_EQ(g.eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_TRUE(g.do_sample);
  EXPECT_DOUBLE_EQ(g.temperature, 0.6);
  EXPECT_DOUBLE_EQ(g.top_p, 0.9);
  EXPECT_EQ(g.top_k, 20);
  EXPECT_DOUBLE_EQ(g.min_p, 0.05);
  EXPECT_DOUBLE_EQ(g.repetition_penalty, 1.05);
  EXPECT_EQ(g.max_new_tokens, 512);

  write_file(dir.file("generation_config.json"), R"({"temperature":"hot"})");
  expect_error([&] { load_generation_config(dir.path()); }, {"generation_config.json", "temperature", "number"});
  write_file(dir.file("generation_config.json"), R"({"top_p":0})");
  expect_error([&] { load_generation_config(dir.path()); }, {"generation_config.json", "top_p"});
  write_file(dir.file("generation_config.json"), R"({"top_k":null,"temperature":null})");
  EXPECT_EQ(load_generation_config(dir.path()).top_k, 0);  // null means unset
}

}  // namespace
}  // namespace kite
