#include "quantize/checkpoint_writer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/mapped_file.h"
#include "formats/safetensors.h"
#include "model/arch/arch.h"
#include "quant/layouts.h"

namespace kite {

namespace fs = std::filesystem;

namespace {

quant::QuantLayout layout_enum(QuantMethod method) {
  switch (method) {
    case QuantMethod::Gptq: return quant::QuantLayout::Gptq;
    case QuantMethod::Awq: return quant::QuantLayout::Awq;
    case QuantMethod::Nf4: return quant::QuantLayout::BnbNf4;
    case QuantMethod::Fp8: return quant::QuantLayout::CompressedFp8;
    case QuantMethod::W8A8: return quant::QuantLayout::CompressedInt8;
    case QuantMethod::Int8:
    case QuantMethod::Int4: return quant::QuantLayout::CompressedPacked;
  }
  return quant::QuantLayout::Gptq;
}

// Which layout family a method writes (overrides may not mix families).
int family(QuantMethod m) {
  switch (m) {
    case QuantMethod::Gptq: return 0;
    case QuantMethod::Awq: return 1;
    case QuantMethod::Nf4: return 2;
    case QuantMethod::Fp8: return 3;
    case QuantMethod::W8A8: return 4;
    case QuantMethod::Int8:
    case QuantMethod::Int4: return 5;
  }
  return -1;
}

void write_json(const fs::path& p, const nlohmann::json& j) {
  std::ofstream f(p);
  f << j.dump(2) << "\n";
  if (!f) fail(p.string(), "write", "could not write the file (disk full or no permission?)");
}

nlohmann::json report_json(const QuantizeOptions& o, const QuantizeReport& r, const std::string& layout) {
  nlohmann::json linears = nlohmann::json::array();
  for (const LinearReport& l : r.linears)
    linears.push_back({{"name", l.name},
                       {"method", quant_method_name(l.quant.method)},
                       {"bits", l.quant.bits},
                       {"group_size", l.quant.group},
                       {"symmetric", l.quant.symmetric},
                       {"bits_per_weight", l.bits_per_weight},
                       {"weight_rel_error", l.weight_rel_error},
                       {"weight_max_error", l.weight_max_error},
                       {"scale", {{"min", l.scale_min}, {"max", l.scale_max}, {"mean", l.scale_mean}}},
                       {"zero", {{"min", l.zero_min}, {"max", l.zero_max}}},
                       {"gptq_loss", l.gptq_loss}});
  nlohmann::json j = {{"method", quant_method_name(o.method)},
                      {"layout", layout},
                      {"calibration_tokens", r.calib_tokens},
                      {"seconds", r.seconds},
                      {"linears", linears}};
  if (!r.k_scales.empty()) j["kv_cache_scales"] = {{"k", r.k_scales}, {"v", r.v_scales}};
  return j;
}

}  // namespace

std::string_view layout_for_method(QuantMethod m) { return quant::quant_layout_name(layout_enum(m)); }

void save_quantized_checkpoint(const DecoderModel& model, const std::string& src_dir, const std::string& out_dir,
                               const QuantizeOptions& o, const QuantizeReport& report) {
  const ModelConfig& c = model.config();
  const ModelWeights& w = model.weights();
  const std::vector<std::string> modules = layer_linear_modules(c);
  // Settings every quantized linear shares (the config records one set).
  std::optional<ModuleQuant> first;
  std::vector<std::string> ignore;
  bool any_asym = false;
  auto note = [&](const std::string& name, const QuantWeight& q) {
    if (!q.quantized()) {
      ignore.push_back(name);
      return;
    }
    ModuleQuant m = o.module(name);
    if (family(m.method) != family(o.method))
      fail("--overrides", name,
           "{} would need another checkpoint layout than --method {}; overrides may change "
           "bits and group size or skip a module, not switch layouts",
           quant_method_name(m.method), quant_method_name(o.method));
    any_asym |= !m.symmetric;
    if (!first) first = m;
  };
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (const std::string& n : modules) {
      const std::string name = "model.layers." + std::to_string(l) + "." + n;
      note(name, w.linear(name));
    }
  const bool head_quantized = !w.lm_head_tied() && w.linear("lm_head").quantized();
  if (head_quantized) note("lm_head", w.linear("lm_head"));
  if (!first) fail("kite quantize", "overrides", "every linear was skipped; nothing to quantize");

  quant::QuantConfigOptions qo;
  qo.bits = first->bits;
  qo.group_size = first->group;
  qo.sym = !any_asym;
  qo.desc_act = o.act_order && o.method == QuantMethod::Gptq;
  qo.gptq_format = any_asym ? quant::GptqFormat::V2 : quant::GptqFormat::V1;
  qo.act = o.method == QuantMethod::W8A8  ? ActQuant::Int8Token
           : o.method == QuantMethod::Fp8 ? (o.fp8_static_act ? ActQuant::Fp8Static : ActQuant::Fp8Token)
                                          : ActQuant::None;
  qo.weight_per_tensor = o.method == QuantMethod::Fp8 && o.fp8_per_tensor;
  qo.kv_cache_fp8 = o.kv_cache_fp8;
  qo.double_quant = o.nf4_double_quant;
  std::sort(ignore.begin(), ignore.end());
  qo.ignore = ignore;
  if (!head_quantized && std::find(qo.ignore.begin(), qo.ignore.end(), "lm_head") == qo.ignore.end())
    qo.ignore.push_back("lm_head");
  const quant::QuantLayout layout = layout_enum(o.method);
  // GPTQ configs record skipped modules and per-module bits / group size
  // as GPTQModel does: "dynamic", regex keys, "-:" = left unquantized.
  nlohmann::json dynamic = nlohmann::json::object();
  if (layout == quant::QuantLayout::Gptq) {
    auto regex_of = [](const std::string& name) {
      std::string r = "^";
      for (char ch : name) {
        if (ch == '.') r += '\\';
        r += ch;
      }
      return r + "$";
    };
    for (const std::string& name : qo.ignore)
      if (name != "lm_head") dynamic["-:" + regex_of(name)] = nlohmann::json::object();
    for (int64_t l = 0; l < c.num_layers; ++l)
      for (const std::string& n : modules) {
        const std::string name = "model.layers." + std::to_string(l) + "." + n;
        const ModuleQuant m = o.module(name);
        if (!m.skip && (m.bits != first->bits || m.group != first->group))
          dynamic["+:" + regex_of(name)] = {{"bits", m.bits}, {"group_size", m.group}};
      }
    qo.ignore = {"lm_head"};
  }
  nlohmann::json qcfg = quant::quantization_config_for(layout, qo);
  if (!dynamic.empty()) qcfg["dynamic"] = dynamic;

  // Tensors: the source checkpoint's, with linears replaced by their layout.
  Checkpoint src = Checkpoint::open(src_dir);
  std::map<std::string, const QuantWeight*> linears;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    for (const std::string& n : modules) linears[p + n] = &w.linear(p + n);
  }
  if (head_quantized) linears["lm_head"] = &w.linear("lm_head");
  std::vector<std::pair<std::string, Tensor>> out;
  std::set<std::string> written;
  auto add_linear = [&](const std::string& module, const QuantWeight& q, DType dense_dtype) {
    if (!q.quantized()) {
      out.push_back({module + ".weight", q.dense.to(kCpu).to_dtype(dense_dtype)});
      return;
    }
    quant::QuantConfigOptions mo = qo;  // this module's bits / group
    const ModuleQuant m = o.module(module);
    mo.bits = m.bits;
    mo.group_size = m.group;
    for (auto& [suffix, t] : quant::to_layout(q, layout, mo)) out.push_back({module + "." + suffix, t});
  };
  for (const std::string& name : src.names()) {
    const std::string module = name.ends_with(".weight") ? name.substr(0, name.size() - 7) : "";
    if (auto it = linears.find(module); it != linears.end()) {
      add_linear(module, *it->second, src.info(name).dtype);
      written.insert(module);
    } else if (name.ends_with("layernorm.weight") && w.has_tensor(name)) {  // AWQ / SmoothQuant may have rescaled it
      const Tensor& t = w.tensor(name);
      out.push_back({name, t.to(kCpu).to_dtype(src.info(name).dtype)});
    } else {
      out.push_back({name, src.get(name)});
    }
  }
  if (head_quantized && !written.count("lm_head")) add_linear("lm_head", w.linear("lm_head"), DType::BF16);
  for (size_t l = 0; l < report.k_scales.size(); ++l)
    for (auto& [suffix, t] : quant::to_ct_kv_scales(report.k_scales[l], report.v_scales[l]))
      out.push_back({"model.layers." + std::to_string(l) + ".self_attn." + suffix, t});

  // Shards of up to ~4 GiB, with an index when there is more than one.
  const size_t kShard = size_t(4) << 30;
  std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
  size_t bytes = 0, total = 0;
  for (auto& t : out) {
    if (bytes > 0 && bytes + t.second.nbytes() > kShard) {
      shards.emplace_back();
      bytes = 0;
    }
    bytes += t.second.nbytes();
    total += t.second.nbytes();
    shards.back().push_back(std::move(t));
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}};
  if (shards.size() == 1) {
    write_safetensors((fs::path(out_dir) / "model.safetensors").string(), shards[0], meta);
  } else {
    nlohmann::json index = {{"metadata", {{"total_size", total}}}, {"weight_map", nlohmann::json::object()}};
    for (size_t i = 0; i < shards.size(); ++i) {
      const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
      write_safetensors((fs::path(out_dir) / file).string(), shards[i], meta);
      for (const auto& [n, t] : shards[i]) index["weight_map"][n] = file;
    }
    write_json(fs::path(out_dir) / "model.safetensors.index.json", index);
  }

  // config.json with the quantization_config; the other small files copied.
  nlohmann::json cfg = nlohmann::json::parse(read_text_file((fs::path(src_dir) / "config.json").string()));
  cfg["quantization_config"] = qcfg;
  if (head_quantized) cfg["tie_word_embeddings"] = false;
  write_json(fs::path(out_dir) / "config.json", cfg);
  for (const char* f :
       {"tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
        "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja", "chat_template.json"}) {
    std::error_code ec;
    const fs::path from = fs::path(src_dir) / f, to = fs::path(out_dir) / f;
    if (!fs::exists(from, ec)) continue;
    fs::copy_file(from, to);
    fs::permissions(to, fs::perms::owner_write, fs::perm_options::add, ec);
  }
  write_json(fs::path(out_dir) / "quantization_report.json",
             report_json(o, report, std::string(quant::quant_layout_name(layout))));
}

}  // namespace kite
