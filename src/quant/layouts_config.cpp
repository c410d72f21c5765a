// The "quantization_config" object of config.json, written in each tool's
// own convention and read back from any of them:
//   gptq                AutoGPTQ / GPTQModel / transformers' GPTQConfig
//   awq                 AutoAWQ's to_transformers_dict (version "gemm")
//   compressed-tensors  QuantizationConfig: config_groups / format / ignore /
//                       kv_cache_scheme, QuantizationArgs per weights / inputs
//   bitsandbytes        transformers' BitsAndBytesConfig.to_dict (4-bit NF4)
#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "quant/layouts.h"

namespace kite::quant {

using detail::show;
using nlohmann::json;

std::string_view quant_layout_name(QuantLayout layout) {
  switch (layout) {
    case QuantLayout::Gptq: return "gptq";
    case QuantLayout::Awq: return "awq";
    case QuantLayout::CompressedFp8: return "ct-fp8";
    case QuantLayout::CompressedInt8: return "ct-int8";
    case QuantLayout::CompressedPacked: return "ct-packed";
    case QuantLayout::BnbNf4: return "bnb-nf4";
  }
  return "?";
}

namespace {

const std::string kEmit = "quantization_config";

bool has(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// compressed-tensors QuantizationArgs with every field spelled out (the
// pydantic model forbids unknown keys, so nothing else goes in).
json ct_args(int bits, const char* type, bool symmetric, const char* strategy, std::optional<int64_t> group,
             bool dynamic, bool actorder) {
  return json{{"num_bits", bits},
              {"type", type},
              {"symmetric", symmetric},
              {"group_size", group ? json(*group) : json(nullptr)},
              {"strategy", strategy},
              {"block_structure", nullptr},
              {"dynamic", dynamic},
              {"actorder", actorder ? json("group") : json(nullptr)},
              {"observer", dynamic ? json(nullptr) : json("minmax")},
              {"observer_kwargs", json::object()}};
}

json emit_ct(QuantLayout layout, const QuantConfigOptions& o) {
  json weights, input = nullptr;
  const char* format = "";
  const bool group = o.group_size > 0;
  if (o.group_size == 0 || o.group_size < -1) fail(kEmit, "group_size", "{} is neither -1 nor positive", o.group_size);
  switch (layout) {
    case QuantLayout::CompressedFp8:
      format = "float-quantized";
      weights = ct_args(8, "float", true, o.weight_per_tensor ? "tensor" : "channel", std::nullopt, false, false);
      if (o.act == ActQuant::Fp8Token)
        input = ct_args(8, "float", true, "token", std::nullopt, true, false);
      else if (o.act == ActQuant::Fp8Static)
        input = ct_args(8, "float", true, "tensor", std::nullopt, false, false);
      else if (o.act != ActQuant::None)
        fail(kEmit, "act", "FP8 weights take FP8 activations (dynamic per token or static) or none");
      break;
    case QuantLayout::CompressedInt8:
      format = "int-quantized";
      if (o.bits != 8) fail(kEmit, "bits", "int-quantized weights are 8-bit here, not {}", o.bits);
      if (!o.sym) fail(kEmit, "sym", "Kite's int8 weights are symmetric");
      if (o.weight_per_tensor) fail(kEmit, "weight_per_tensor", "Kite writes int8 weight scales per channel or group");
      weights = ct_args(8, "int", true, group ? "group" : "channel", group ? std::optional(o.group_size) : std::nullopt,
                        false, o.desc_act && group);
      if (o.act == ActQuant::Int8Token)
        input = ct_args(8, "int", true, "token", std::nullopt, true, false);
      else if (o.act != ActQuant::None)
        fail(kEmit, "act", "int8 weights take dynamic per-token int8 activations or none");
      break;
    case QuantLayout::CompressedPacked:
      format = "pack-quantized";
      if (o.bits != 4 && o.bits != 8) fail(kEmit, "bits", "pack-quantized weights are 4- or 8-bit, not {}", o.bits);
      if (o.bits == 8 && !o.sym) fail(kEmit, "sym", "Kite's 8-bit weights are symmetric");
      if (o.act != ActQuant::None) fail(kEmit, "act", "pack-quantized weights are weight-only here (W4A16 / W8A16)");
      weights = ct_args(o.bits, "int", o.sym, group ? "group" : "channel",
                        group ? std::optional(o.group_size) : std::nullopt, false, o.desc_act && group);
      break;
    default: KITE_CHECK(false, "not a compressed-tensors layout");
  }
  json kv = nullptr;
  if (o.kv_cache_fp8) kv = ct_args(8, "float", true, "tensor", std::nullopt, false, false);
  return json{{"quant_method", "compressed-tensors"},
              {"format", format},
              {"quantization_status", "compressed"},
              {"global_compression_ratio", nullptr},
              {"config_groups",
               {{"group_0",
                 {{"targets", {"Linear"}},
                  {"weights", weights},
                  {"input_activations", input},
                  {"output_activations", nullptr}}}}},
              {"ignore", o.ignore},
              {"kv_cache_scheme", kv}};
}

}  // namespace

json quantization_config_for(QuantLayout layout, const QuantConfigOptions& o) {
  switch (layout) {
    case QuantLayout::Gptq: {
      if (o.bits != 4 && o.bits != 8) fail(kEmit, "bits", "Kite writes 4- or 8-bit GPTQ, not {}", o.bits);
      if (o.group_size == 0 || o.group_size < -1)
        fail(kEmit, "group_size", "{} is neither -1 nor positive", o.group_size);
      if (o.bits == 8 && !o.sym) fail(kEmit, "sym", "Kite's 8-bit weights are symmetric");
      for (const std::string& m : o.ignore)
        if (m != "lm_head") fail(kEmit, "ignore", "GPTQ configs can only leave lm_head unquantized, not '{}'", m);
      const char* fmt = o.gptq_format == GptqFormat::V1 ? "gptq" : "gptq_v2";
      return json{{"quant_method", "gptq"},  {"bits", o.bits},        {"group_size", o.group_size},
                  {"desc_act", o.desc_act},  {"sym", o.sym},          {"static_groups", false},
                  {"true_sequential", true}, {"damp_percent", 0.01},  {"checkpoint_format", fmt},
                  {"format", fmt},           {"pack_dtype", "int32"}, {"lm_head", !has(o.ignore, "lm_head")}};
    }
    case QuantLayout::Awq:
      if (o.bits != 4) fail(kEmit, "bits", "AWQ GEMM checkpoints are 4-bit, not {}", o.bits);
      if (o.group_size < 1) fail(kEmit, "group_size", "AWQ needs a positive group size, not {}", o.group_size);
      if (o.desc_act) fail(kEmit, "desc_act", "AWQ has no act-order");
      return json{{"quant_method", "awq"}, {"bits", 4},         {"group_size", o.group_size},
                  {"zero_point", true},    {"version", "gemm"}, {"modules_to_not_convert", o.ignore}};
    case QuantLayout::CompressedFp8:
    case QuantLayout::CompressedInt8:
    case QuantLayout::CompressedPacked: return emit_ct(layout, o);
    case QuantLayout::BnbNf4:
      if (o.compute_dtype != "bfloat16" && o.compute_dtype != "float16" && o.compute_dtype != "float32")
        fail(kEmit, "compute_dtype", "'{}' is not bfloat16, float16 or float32", o.compute_dtype);
      return json{{"quant_method", "bitsandbytes"},
                  {"_load_in_4bit", true},
                  {"_load_in_8bit", false},
                  {"load_in_4bit", true},
                  {"load_in_8bit", false},
                  {"bnb_4bit_quant_type", "nf4"},
                  {"bnb_4bit_use_double_quant", o.double_quant},
                  {"bnb_4bit_compute_dtype", o.compute_dtype},
                  {"bnb_4bit_quant_storage", "uint8"},
                  {"llm_int8_enable_fp32_cpu_offload", false},
                  {"llm_int8_has_fp16_weight", false},
                  {"llm_int8_skip_modules", o.ignore},
                  {"llm_int8_threshold", 6.0}};
  }
  KITE_CHECK(false, "layout {}", int(layout));
}

// ---- parsing ---------------------------------------------------------------------

namespace {

// Typed access to one JSON object, naming "<prefix>.<key>" in errors.
class Fields {
 public:
  Fields(const json& j, std::string source, std::string prefix)
      : j_(j), source_(std::move(source)), prefix_(std::move(prefix)) {
    if (!j_.is_object()) fail(source_, prefix_, "expected a JSON object, got {}", show(j_));
  }
  std::string name(const std::string& key) const { return prefix_ + "." + key; }
  const json* find(const std::string& key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  bool boolean(const std::string& key, bool dflt) const {
    const json* v = find(key);
    if (!v) return dflt;
    if (!v->is_boolean()) fail(source_, name(key), "expected true or false, got {}", show(*v));
    return v->get<bool>();
  }
  int64_t integer(const std::string& key, int64_t dflt) const {
    const json* v = find(key);
    if (!v) return dflt;
    if (!v->is_number_integer()) fail(source_, name(key), "expected an integer, got {}", show(*v));
    return v->get<int64_t>();
  }
  std::string string(const std::string& key, const std::string& dflt) const {
    const json* v = find(key);
    if (!v) return dflt;
    if (!v->is_string()) fail(source_, name(key), "expected a string, got {}", show(*v));
    return v->get<std::string>();
  }
  std::optional<std::vector<std::string>> strings(const std::string& key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    std::vector<std::string> out;
    if (!v->is_array()) fail(source_, name(key), "expected a list of module names, got {}", show(*v));
    for (const json& e : *v) {
      if (!e.is_string()) fail(source_, name(key), "expected module names (strings), got {}", show(e));
      out.push_back(e.get<std::string>());
    }
    return out;
  }
  [[noreturn]] void bad(const std::string& key, const std::string& msg) const { fail(source_, name(key), "{}", msg); }

 private:
  const json& j_;
  std::string source_, prefix_;
};

int64_t group_of(const Fields& f, const char* key, int64_t value) {
  if (value == 0 || value < -1)
    f.bad(key, fmt::format("{} is neither -1 (per channel) nor a positive group size", value));
  return value;
}

ParsedQuantConfig parse_gptq(const Fields& f) {
  ParsedQuantConfig p;
  p.layout = QuantLayout::Gptq;
  QuantConfigOptions& o = p.options;
  const char* bits_key = f.find("bits") || !f.find("w_bit") ? "bits" : "w_bit";
  o.bits = int(f.integer(bits_key, 4));
  if (o.bits != 4 && o.bits != 8)
    f.bad(bits_key, fmt::format("{}-bit GPTQ is not supported (Kite reads 4 and 8 bits)", o.bits));
  const char* group_key = f.find("group_size") || !f.find("q_group_size") ? "group_size" : "q_group_size";
  o.group_size = group_of(f, group_key, f.integer(group_key, -1));
  o.desc_act = f.boolean("desc_act", false);
  o.sym = f.boolean("sym", true);
  if (f.boolean("is_marlin_format", false))
    f.bad("is_marlin_format", "Marlin-repacked GPTQ checkpoints are not supported");
  std::string format;
  for (const char* key : {"checkpoint_format", "format"}) {
    const std::string v = lower(f.string(key, ""));
    if (v.empty()) continue;
    if (v != "gptq" && v != "gptq_v2")
      f.bad(key, fmt::format("'{}' is not supported; Kite reads \"gptq\" (v1) and \"gptq_v2\"", v));
    if (!format.empty() && v != format)
      f.bad(key, fmt::format("'{}' contradicts the other format field '{}'", v, format));
    format = v;
  }
  o.gptq_format = format == "gptq_v2" ? GptqFormat::V2 : GptqFormat::V1;
  // GPTQModel's per-module overrides ("dynamic": regex -> {bits,
  // group_size}, "-:" = left unquantized) are honoured by the loader from
  // each module's tensors (shapes give bits and group; a dense "weight"
  // means unquantized); here only their form is checked.
  if (const json* d = f.find("dynamic"); d && !d->is_object())
    f.bad("dynamic", fmt::format("{} is not supported (an object of module patterns)", show(*d)));
  o.ignore = f.boolean("lm_head", false) ? std::vector<std::string>{} : std::vector<std::string>{"lm_head"};
  return p;
}

ParsedQuantConfig parse_awq(const Fields& f) {
  ParsedQuantConfig p;
  p.layout = QuantLayout::Awq;
  QuantConfigOptions& o = p.options;
  const char* bits_key = f.find("bits") || !f.find("w_bit") ? "bits" : "w_bit";
  o.bits = int(f.integer(bits_key, 4));
  if (o.bits != 4) f.bad(bits_key, fmt::format("{}-bit AWQ is not supported (4 only)", o.bits));
  const char* group_key = f.find("group_size") || !f.find("q_group_size") ? "group_size" : "q_group_size";
  o.group_size = group_of(f, group_key, f.integer(group_key, 128));
  if (!f.boolean("zero_point", true)) f.bad("zero_point", "AWQ without zero points is not supported");
  const std::string version = lower(f.string("version", "gemm"));
  if (version != "gemm")
    f.bad("version", fmt::format("AWQ '{}' packing is not supported; Kite reads \"gemm\"", version));
  o.sym = false;
  o.ignore = f.strings("modules_to_not_convert").value_or(std::vector<std::string>{"lm_head"});
  return p;
}

// One compressed-tensors QuantizationArgs.
struct CtArgs {
  int bits = 8;
  std::string type = "int", strategy;
  bool symmetric = true, dynamic = false, actorder = false;
  int64_t group = -1;
};

CtArgs ct_args_of(const json& j, const std::string& source, const std::string& prefix) {
  Fields f(j, source, prefix);
  CtArgs a;
  a.bits = int(f.integer("num_bits", 8));
  a.type = lower(f.string("type", "int"));
  if (a.type != "int" && a.type != "float") f.bad("type", fmt::format("'{}' is not \"int\" or \"float\"", a.type));
  a.symmetric = f.boolean("symmetric", true);
  const json* gs = f.find("group_size");
  if (gs && !gs->is_number_integer()) f.bad("group_size", "expected an integer or null");
  a.strategy = lower(f.string("strategy", ""));
  if (a.strategy.empty()) a.strategy = !gs ? "tensor" : gs->get<int64_t>() == -1 ? "channel" : "group";
  if (a.strategy == "group") {
    if (!gs || gs->get<int64_t>() < 1) f.bad("group_size", "strategy \"group\" needs a positive group_size");
    a.group = gs->get<int64_t>();
  } else if (a.strategy != "tensor" && a.strategy != "channel" && a.strategy != "token") {
    f.bad("strategy", fmt::format("\"{}\" is not supported (tensor, channel, group, token)", a.strategy));
  }
  if (f.find("block_structure")) f.bad("block_structure", "block-wise quantization is not supported");
  if (const json* d = f.find("dynamic")) {
    if (!d->is_boolean()) f.bad("dynamic", fmt::format("{} is not supported (true or false)", show(*d)));
    a.dynamic = d->get<bool>();
  }
  if (const json* ao = f.find("actorder")) {
    if (ao->is_boolean()) {
      a.actorder = ao->get<bool>();
    } else if (ao->is_string()) {
      const std::string v = lower(ao->get<std::string>());
      if (v != "group" && v != "dynamic" && v != "weight" && v != "static")
        f.bad("actorder", fmt::format("\"{}\" is not group, weight, dynamic or static", v));
      a.actorder = v == "group" || v == "dynamic";  // "weight": weights only, no g_idx
    } else {
      f.bad("actorder", "expected a string, a boolean or null");
    }
  }
  return a;
}

ParsedQuantConfig parse_ct(const Fields& f, const std::string& source) {
  ParsedQuantConfig p;
  QuantConfigOptions& o = p.options;
  const json* groups = f.find("config_groups");
  if (!groups || !groups->is_object() || groups->empty())
    f.bad("config_groups", "expected an object with one quantization scheme");
  const json& first = groups->begin().value();
  for (auto it = groups->begin(); it != groups->end(); ++it) {
    Fields g(it.value(), source, f.name("config_groups." + it.key()));
    if (!g.find("weights")) g.bad("weights", "a scheme without weight quantization is not supported");
    if (g.find("output_activations")) g.bad("output_activations", "output activation quantization is not supported");
    if (it.value().value("weights", json()) != first.value("weights", json()) ||
        it.value().value("input_activations", json()) != first.value("input_activations", json()))
      g.bad("weights", "schemes differ between config groups; Kite supports one scheme per model");
  }
  const std::string gname = f.name("config_groups." + groups->begin().key());
  const CtArgs w = ct_args_of(first.at("weights"), source, gname + ".weights");
  std::optional<CtArgs> in;
  if (first.contains("input_activations") && !first["input_activations"].is_null())
    in = ct_args_of(first["input_activations"], source, gname + ".input_activations");
  if (w.dynamic) f.bad("config_groups", "dynamic weight quantization is not supported");

  const std::string format = lower(f.string("format", ""));
  if (format == "dense" || format == "marlin-24" || format == "mixed-precision" || format == "nvfp4-pack-quantized" ||
      format.find("sparse") != std::string::npos)
    f.bad("format", fmt::format("\"{}\" is not supported (float-quantized, int-quantized, pack-quantized)", format));
  if (w.type == "float") {
    if (w.bits != 8) f.bad("config_groups", fmt::format("{}-bit float weights are not supported (FP8 only)", w.bits));
    if (!format.empty() && format != "float-quantized" && format != "naive-quantized")
      f.bad("format", fmt::format("\"{}\" does not hold FP8 weights", format));
    if (w.strategy != "tensor" && w.strategy != "channel")
      f.bad("config_groups",
            fmt::format("FP8 weight strategy \"{}\" is not supported (tensor or channel)", w.strategy));
    p.layout = QuantLayout::CompressedFp8;
  } else if (format == "pack-quantized" || (format.empty() && !in)) {
    if (w.bits != 4 && w.bits != 8)
      f.bad("config_groups", fmt::format("{}-bit packed weights are not supported", w.bits));
    if (w.strategy != "channel" && w.strategy != "group")
      f.bad("config_groups", fmt::format("packed weights need strategy channel or group, not \"{}\"", w.strategy));
    if (w.bits == 8 && !w.symmetric) f.bad("config_groups", "asymmetric 8-bit weights are not supported");
    p.layout = QuantLayout::CompressedPacked;
  } else if (format.empty() || format == "int-quantized" || format == "naive-quantized") {
    if (w.bits != 8) f.bad("config_groups", fmt::format("{}-bit int-quantized weights are not supported", w.bits));
    if (!w.symmetric) f.bad("config_groups", "asymmetric int8 weights are not supported");
    p.layout = QuantLayout::CompressedInt8;
  } else {
    f.bad("format", fmt::format("\"{}\" is not supported (float-quantized, int-quantized, pack-quantized)", format));
  }
  o.bits = w.bits;
  o.sym = w.symmetric;
  o.group_size = w.strategy == "group" ? w.group : -1;
  o.weight_per_tensor = w.strategy == "tensor";
  o.desc_act = w.actorder && w.strategy == "group";
  if (p.layout == QuantLayout::CompressedFp8) o.group_size = -1;

  if (in) {
    const std::string what = gname + ".input_activations";
    if (in->bits != 8) fail(source, what, "{}-bit activations are not supported", in->bits);
    if (!in->symmetric) fail(source, what, "asymmetric activation quantization is not supported");
    if (in->type == "float" && p.layout == QuantLayout::CompressedFp8) {
      // dynamic per-tensor is run per token (a finer scale, never a coarser one)
      o.act = in->dynamic ? ActQuant::Fp8Token : ActQuant::Fp8Static;
      if (!in->dynamic && in->strategy != "tensor")
        fail(source, what, "static FP8 activations must be per tensor, not \"{}\"", in->strategy);
    } else if (in->type == "int" && p.layout == QuantLayout::CompressedInt8) {
      if (!in->dynamic) fail(source, what, "static int8 activation scales are not supported (dynamic per token only)");
      o.act = ActQuant::Int8Token;
    } else {
      fail(source, what, "{} activations with {} weights are not supported", in->type, quant_layout_name(p.layout));
    }
  }
  if (const json* kv = f.find("kv_cache_scheme")) {
    const CtArgs k = ct_args_of(*kv, source, f.name("kv_cache_scheme"));
    if (k.type != "float" || k.bits != 8) f.bad("kv_cache_scheme", "only an FP8 (E4M3) KV cache is supported");
    o.kv_cache_fp8 = true;
  }
  o.ignore = f.strings("ignore").value_or(std::vector<std::string>{});
  return p;
}

ParsedQuantConfig parse_bnb(const Fields& f) {
  ParsedQuantConfig p;
  p.layout = QuantLayout::BnbNf4;
  QuantConfigOptions& o = p.options;
  if (f.boolean("load_in_8bit", f.boolean("_load_in_8bit", false)))
    f.bad("load_in_8bit", "bitsandbytes LLM.int8() checkpoints are not supported (4-bit NF4 only)");
  if (!f.boolean("load_in_4bit", f.boolean("_load_in_4bit", false)))
    f.bad("load_in_4bit", "expected a 4-bit bitsandbytes config");
  const std::string type = lower(f.string("bnb_4bit_quant_type", "fp4"));  // transformers' default
  if (type != "nf4") f.bad("bnb_4bit_quant_type", fmt::format("\"{}\" is not supported (nf4 only)", type));
  const std::string storage = lower(f.string("bnb_4bit_quant_storage", "uint8"));
  if (storage != "uint8") f.bad("bnb_4bit_quant_storage", fmt::format("\"{}\" is not supported (uint8 only)", storage));
  o.double_quant = f.boolean("bnb_4bit_use_double_quant", false);
  o.compute_dtype = lower(f.string("bnb_4bit_compute_dtype", "float32"));
  if (o.compute_dtype.rfind("torch.", 0) == 0) o.compute_dtype = o.compute_dtype.substr(6);
  o.group_size = 64;  // transformers' blocksize; each tensor's quant state has its own
  o.ignore = f.strings("llm_int8_skip_modules").value_or(std::vector<std::string>{"lm_head"});
  return p;
}

}  // namespace

ParsedQuantConfig parse_quantization_config(const json& config, const std::string& source) {
  const Fields f(config, source, "quantization_config");
  std::string method = lower(f.string("quant_method", ""));
  if (method.empty()) {  // AutoGPTQ's quantize_config.json / AutoAWQ's quant_config.json
    if (lower(f.string("version", "")) == "gemm" || f.find("w_bit") || f.find("zero_point"))
      method = "awq";
    else if (f.find("bits"))
      method = "gptq";
    else
      f.bad("quant_method", "missing, and the other fields are not a GPTQ or AWQ config");
  }
  if (method == "gptq") return parse_gptq(f);
  if (method == "awq") return parse_awq(f);
  if (method == "compressed-tensors") return parse_ct(f, source);
  if (method == "bitsandbytes") return parse_bnb(f);
  f.bad("quant_method", fmt::format("\"{}\" is not supported; Kite reads gptq, awq, compressed-tensors and "
                                    "bitsandbytes (nf4)",
                                    method));
}

}  // namespace kite::quant
