#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "core/error.h"
#include "quant/layouts.h"
#include "quant/layouts_test_util.h"

namespace kite::quant {
namespace {

using namespace test_util;

// ---- quantization_config ------------------------------------------------------------

TEST(Layouts, ConfigEmitThenParse) {
  std::vector<std::pair<QuantLayout, QuantConfigOptions>> cases;
  auto add = [&](QuantLayout l, auto&& edit) {
    QuantConfigOptions o;
    edit(o);
    cases.emplace_back(l, o);
  };
  add(QuantLayout::Gptq, [](QuantConfigOptions&) {});
  add(QuantLayout::Gptq, [](QuantConfigOptions& o) {
    o.bits = 8;
    o.group_size = -1;
    o.desc_act = true;
    o.gptq_format = GptqFormat::V2;
    o.ignore = {};
  });
  add(QuantLayout::Gptq, [](QuantConfigOptions& o) {
    o.sym = false;
    o.group_size = 32;
  });
  add(QuantLayout::Awq, [](QuantConfigOptions& o) { o.sym = false; });
  add(QuantLayout::Awq, [](QuantConfigOptions& o) {
    o.sym = false;
    o.group_size = 64;
    o.ignore = {"lm_head", "model.layers.0.mlp.gate"};
  });
  add(QuantLayout::CompressedFp8, [](QuantConfigOptions& o) {
    o.bits = 8;
    o.group_size = -1;
    o.act = ActQuant::Fp8Token;
  });
  add(QuantLayout::CompressedFp8, [](QuantConfigOptions& o) {
    o.bits = 8;
    o.group_size = -1;
    o.act = ActQuant::Fp8Static;
    o.weight_per_tensor = true;
    o.kv_cache_fp8 = true;
  });
  add(QuantLayout::CompressedFp8, [](QuantConfigOptions& o) {
    o.bits = 8;
    o.group_size = -1;
  });
  add(QuantLayout::CompressedInt8, [](QuantConfigOptions& o) {
    o.bits = 8;
    o.group_size = -1;
    o.act = ActQuant::Int8Token;
  });
  add(QuantLayout::CompressedInt8, [](QuantConfigOptions& o) {
    o.bits = 8;
    o.group_size = 64;
    o.desc_act = true;
  });
  add(QuantLayout::CompressedPacked, [](QuantConfigOptions& o) { o.desc_act = true; });
  add(QuantLayout::CompressedPacked, [](QuantConfigOptions& o) {
    o.sym = false;
    o.group_size = 32;
    o.kv_cache_fp8 = true;
  });
  add(QuantLayout::CompressedPacked, [](QuantConfigOptions& o) {
    o.bits = 8;
    o.group_size = -1;
  });
  add(QuantLayout::BnbNf4, [](QuantConfigOptions& o) { o.group_size = 64; });
  add(QuantLayout::BnbNf4, [](QuantConfigOptions& o) {
    o.group_size = 64;
    o.double_quant = false;
    o.compute_dtype = "float16";
    o.ignore = {"lm_head", "model.embed_tokens"};
  });
  for (const auto& [layout, o] : cases) {
    const nlohmann::json j = quantization_config_for(layout, o);
    const ParsedQuantConfig p = parse_quantization_config(j, "config.json");
    EXPECT_EQ(p.layout, layout) << j.dump();
    EXPECT_TRUE(p.options == o) << j.dump();
    // and the JSON survives a text round trip unchanged
    EXPECT_EQ(nlohmann::json::parse(j.dump()), j);
  }
  // spot checks of each tool's keys
  QuantConfigOptions g;
  g.desc_act = true;
  const nlohmann::json gj = quantization_config_for(QuantLayout::Gptq, g);
  EXPECT_EQ(gj["quant_method"], "gptq");
  EXPECT_EQ(gj["checkpoint_format"], "gptq");
  EXPECT_EQ(gj["desc_act"], true);
  EXPECT_EQ(gj["lm_head"], false);
  const nlohmann::json aj = quantization_config_for(QuantLayout::Awq, QuantConfigOptions{});
  EXPECT_EQ(aj["version"], "gemm");
  EXPECT_EQ(aj["zero_point"], true);
  QuantConfigOptions f;
  f.act = ActQuant::Fp8Token;
  f.kv_cache_fp8 = true;
  const nlohmann::json fj = quantization_config_for(QuantLayout::CompressedFp8, f);
  EXPECT_EQ(fj["format"], "float-quantized");
  EXPECT_EQ(fj["ignore"], nlohmann::json::array({"lm_head"}));
  EXPECT_EQ(fj["config_groups"]["group_0"]["weights"]["strategy"], "channel");
  EXPECT_EQ(fj["config_groups"]["group_0"]["input_activations"]["strategy"], "token");
  EXPECT_EQ(fj["config_groups"]["group_0"]["input_activations"]["dynamic"], true);
  EXPECT_EQ(fj["kv_cache_scheme"]["type"], "float");
  const nlohmann::json bj = quantization_config_for(QuantLayout::BnbNf4, QuantConfigOptions{});
  EXPECT_EQ(bj["quant_method"], "bitsandbytes");
  EXPECT_EQ(bj["bnb_4bit_quant_type"], "nf4");
  EXPECT_EQ(bj["bnb_4bit_use_double_quant"], true);
  EXPECT_EQ(bj["load_in_4bit"], true);
}

TEST(Layouts, ConfigParsesToolOutputs) {
  // as AutoGPTQ writes quantize_config.json (no quant_method)
  auto p = parse_quantization_config(nlohmann::json::parse(R"({"bits": 4, "group_size": 128, "damp_percent": 0.01,
      "desc_act": true, "static_groups": false, "sym": true, "true_sequential": true, "model_name_or_path": null,
      "model_file_base_name": "model"})"),
                                     "q");
  EXPECT_EQ(p.layout, QuantLayout::Gptq);
  EXPECT_TRUE(p.options.desc_act);
  EXPECT_EQ(p.options.group_size, 128);
  // GPTQModel v2
  p = parse_quantization_config(nlohmann::json::parse(R"({"bits": 4, "group_size": 128, "desc_act": false,
      "sym": false, "lm_head": false, "quant_method": "gptq", "checkpoint_format": "gptq_v2", "format": "gptq_v2",
      "pack_dtype": "int32", "meta": {"quantizer": ["gptqmodel:2.0"]}, "dynamic": {}})"),
                                "q");
  EXPECT_EQ(p.options.gptq_format, GptqFormat::V2);
  EXPECT_FALSE(p.options.sym);
  // AutoAWQ (transformers dict) and its own quant_config.json
  p = parse_quantization_config(nlohmann::json::parse(R"({"quant_method": "awq", "zero_point": true,
      "group_size": 128, "bits": 4, "version": "gemm", "modules_to_not_convert": null})"),
                                "q");
  EXPECT_EQ(p.layout, QuantLayout::Awq);
  EXPECT_EQ(p.options.ignore, std::vector<std::string>{"lm_head"});
  p = parse_quantization_config(
      nlohmann::json::parse(R"({"zero_point": true, "q_group_size": 64, "w_bit": 4, "version": "GEMM"})"), "q");
  EXPECT_EQ(p.layout, QuantLayout::Awq);
  EXPECT_EQ(p.options.group_size, 64);
  // llm-compressor FP8_DYNAMIC
  p = parse_quantization_config(nlohmann::json::parse(R"({"quant_method": "compressed-tensors",
      "format": "float-quantized", "quantization_status": "compressed", "global_compression_ratio": 1.2,
      "config_groups": {"group_0": {"targets": ["Linear"], "output_activations": null,
        "weights": {"num_bits": 8, "type": "float", "symmetric": true, "strategy": "channel", "dynamic": false,
                    "group_size": null, "actorder": null, "block_structure": null, "observer": "minmax",
                    "observer_kwargs": {}},
        "input_activations": {"num_bits": 8, "type": "float", "symmetric": true, "strategy": "token",
                              "dynamic": true, "observer": null}}},
      "ignore": ["lm_head"], "kv_cache_scheme": null, "sparsity_config": {}, "version": "0.9.1"})"),
                                "q");
  EXPECT_EQ(p.layout, QuantLayout::CompressedFp8);
  EXPECT_EQ(p.options.act, ActQuant::Fp8Token);
  // W4A16 (group strategy inferred from group_size) and W8A8 int8
  p = parse_quantization_config(nlohmann::json::parse(R"({"quant_method": "compressed-tensors",
      "format": "pack-quantized", "config_groups": {"group_0": {"targets": ["Linear"],
        "weights": {"num_bits": 4, "type": "int", "symmetric": true, "group_size": 128, "actorder": "weight"}}},
      "ignore": ["lm_head"]})"),
                                "q");
  EXPECT_EQ(p.layout, QuantLayout::CompressedPacked);
  EXPECT_EQ(p.options.group_size, 128);
  EXPECT_FALSE(p.options.desc_act);
  p = parse_quantization_config(nlohmann::json::parse(R"({"quant_method": "compressed-tensors",
      "format": "int-quantized", "config_groups": {"group_0": {"targets": ["Linear"],
        "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel"},
        "input_activations": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "token",
                              "dynamic": true}}}})"),
                                "q");
  EXPECT_EQ(p.layout, QuantLayout::CompressedInt8);
  EXPECT_EQ(p.options.act, ActQuant::Int8Token);
  // transformers BitsAndBytesConfig
  p = parse_quantization_config(nlohmann::json::parse(R"({"_load_in_4bit": true, "_load_in_8bit": false,
      "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4",
      "bnb_4bit_use_double_quant": true, "llm_int8_enable_fp32_cpu_offload": false,
      "llm_int8_has_fp16_weight": false, "llm_int8_skip_modules": null, "llm_int8_threshold": 6.0,
      "load_in_4bit": true, "load_in_8bit": false, "quant_method": "bitsandbytes"})"),
                                "q");
  EXPECT_EQ(p.layout, QuantLayout::BnbNf4);
  EXPECT_TRUE(p.options.double_quant);
  EXPECT_EQ(p.options.compute_dtype, "bfloat16");
}

TEST(Layouts, ConfigErrors) {
  auto bad = [](const char* text, const std::string& field) {
    expect_error([&] { parse_quantization_config(nlohmann::json::parse(text), "config.json"); }, field);
  };
  bad(R"({"quant_method": "hqq"})", "quant_method");
  bad(R"({"foo": 1})", "quant_method");
  bad(R"([1, 2])", "quantization_config");
  bad(R"({"quant_method": "gptq", "bits": 3})", "bits");
  bad(R"({"quant_method": "gptq", "bits": "4"})", "bits");
  bad(R"({"quant_method": "gptq", "bits": 4, "group_size": 0})", "group_size");
  bad(R"({"quant_method": "gptq", "bits": 4, "checkpoint_format": "marlin"})", "checkpoint_format");
  bad(R"({"quant_method": "gptq", "bits": 4, "checkpoint_format": "gptq", "format": "gptq_v2"})", "format");
  bad(R"({"quant_method": "gptq", "bits": 4, "is_marlin_format": true})", "is_marlin_format");
  bad(R"({"quant_method": "gptq", "bits": 4, "desc_act": "yes"})", "desc_act");
  bad(R"({"quant_method": "gptq", "bits": 4, "dynamic": ["-:.*mlp.*"]})", "dynamic");
  bad(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "version": "gemv"})", "version");
  bad(R"({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": false})", "zero_point");
  bad(R"({"quant_method": "awq", "bits": 4, "modules_to_not_convert": [1]})", "modules_to_not_convert");
  bad(R"({"quant_method": "compressed-tensors", "format": "float-quantized"})", "config_groups");
  bad(R"({"quant_method": "compressed-tensors", "format": "dense", "config_groups": {"g": {"targets": ["Linear"],
      "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}}})",
      "format");
  bad(R"({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {"targets":
      ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "block", "block_structure": [128, 128]}}}})",
      "strategy");
  bad(R"({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {"targets":
      ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel", "block_structure": [1, 1]}}}})",
      "block_structure");
  bad(R"({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {"targets":
      ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
      "output_activations": {"num_bits": 8, "type": "float"}}}})",
      "output_activations");
  bad(R"({"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {"g": {"targets":
      ["Linear"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
      "input_activations": {"num_bits": 8, "type": "int", "strategy": "tensor", "dynamic": false}}}})",
      "input_activations");
  bad(R"({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {"g": {"targets":
      ["Linear"], "weights": {"num_bits": 4, "type": "float", "group_size": 16, "strategy": "tensor_group"}}}})",
      "strategy");
  bad(R"({"quant_method": "compressed-tensors", "format": "pack-quantized", "config_groups": {
      "a": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "group_size": 128}},
      "b": {"targets": ["re:.*down_proj"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"}}}})",
      "weights");
  bad(R"({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {"g": {"targets":
      ["Linear"], "weights": {"num_bits": 8, "type": "float", "strategy": "channel"}}},
      "kv_cache_scheme": {"num_bits": 8, "type": "int"}})",
      "kv_cache_scheme");
  bad(R"({"quant_method": "bitsandbytes", "load_in_8bit": true})", "load_in_8bit");
  bad(R"({"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "fp4"})", "bnb_4bit_quant_type");
  bad(R"({"quant_method": "bitsandbytes", "load_in_4bit": true})", "bnb_4bit_quant_type");  // fp4 by default
  bad(R"({"quant_method": "bitsandbytes", "load_in_4bit": true, "bnb_4bit_quant_type": "nf4",
      "bnb_4bit_quant_storage": "bfloat16"})",
      "bnb_4bit_quant_storage");
  // emission
  QuantConfigOptions o;
  o.ignore = {"lm_head", "model.layers.0.mlp"};
  expect_error([&] { quantization_config_for(QuantLayout::Gptq, o); }, "ignore");
  o = {};
  o.bits = 8;
  expect_error([&] { quantization_config_for(QuantLayout::Awq, o); }, "bits");
  o = {};
  o.act = ActQuant::Fp8Token;
  expect_error([&] { quantization_config_for(QuantLayout::CompressedInt8, o); }, "bits");
  o.bits = 8;
  expect_error([&] { quantization_config_for(QuantLayout::CompressedInt8, o); }, "act");
  o = {};
  o.compute_dtype = "int4";
  expect_error([&] { quantization_config_for(QuantLayout::BnbNf4, o); }, "compute_dtype");
}

// Every node of a config replaced by every JSON type, or deleted: the parser
// either accepts it or throws kite::Error, nothing else.
void pointers(const nlohmann::json& j, const nlohmann::json::json_pointer& at,
              std::vector<nlohmann::json::json_pointer>& out) {
  out.push_back(at);
  if (j.is_object())
    for (auto it = j.begin(); it != j.end(); ++it) pointers(it.value(), at / it.key(), out);
  else if (j.is_array())
    for (size_t k = 0; k < j.size(); ++k) pointers(j[k], at / k, out);
}

TEST(Layouts, MutatedConfigsRaiseKiteErrors) {
  QuantConfigOptions g, f, p, b;
  g.desc_act = true;
  f.act = ActQuant::Fp8Static;
  f.kv_cache_fp8 = true;
  p.sym = false;
  const std::vector<nlohmann::json> base = {
      quantization_config_for(QuantLayout::Gptq, g), quantization_config_for(QuantLayout::Awq, p),
      quantization_config_for(QuantLayout::CompressedFp8, f), quantization_config_for(QuantLayout::CompressedPacked, p),
      quantization_config_for(QuantLayout::BnbNf4, b)};
  const std::vector<nlohmann::json> values = {nullptr,
                                              true,
                                              false,
                                              7,
                                              -1,
                                              0,
                                              3.5,
                                              "x",
                                              "GPTQ_V2",
                                              "nf4",
                                              nlohmann::json::array(),
                                              nlohmann::json::object(),
                                              nlohmann::json::array({1, "a"}),
                                              nlohmann::json{{"a", 1}},
                                              int64_t(1) << 62};
  int ok = 0, errors = 0;
  for (const nlohmann::json& cfg : base) {
    std::vector<nlohmann::json::json_pointer> ptrs;
    pointers(cfg, nlohmann::json::json_pointer(), ptrs);
    for (const auto& ptr : ptrs) {
      std::vector<nlohmann::json> variants;
      for (const nlohmann::json& v : values) {
        nlohmann::json m = cfg;
        m[ptr] = v;
        variants.push_back(m);
      }
      if (!ptr.empty()) {
        nlohmann::json m = cfg;
        nlohmann::json& parent = m[ptr.parent_pointer()];
        if (parent.is_array())
          parent.erase(std::stoul(ptr.back()));
        else
          parent.erase(ptr.back());
        variants.push_back(m);
      }
      for (const nlohmann::json& m : variants) {
        try {
          parse_quantization_config(m, "config.json");
          ++ok;
        } catch (const Error& e) {
          ++errors;
          EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
        } catch (const std::exception& e) {
          ADD_FAILURE() << ptr.to_string() << " -> " << m.dump() << ": not a kite::Error: " << e.what();
        }
      }
    }
  }
  EXPECT_GT(errors, 200);
  EXPECT_GT(ok, 50);
}

}  // namespace
}  // namespace kite::quant
