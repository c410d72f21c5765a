// The architectures Kite runs: one line each.
#include <memory>

#include "core/error.h"
#include "model/arch/arch.h"

namespace kite {

// Each defined in model/arch/<name>.cpp.
std::unique_ptr<Architecture> make_llama(), make_qwen2(), make_qwen3();

namespace {
const std::vector<std::unique_ptr<Architecture>>& registry() {
  static const auto* archs = [] {
    auto* v = new std::vector<std::unique_ptr<Architecture>>();
    for (auto make : {make_llama, make_qwen2, make_qwen3}) v->push_back(make());
    return v;
  }();
  return *archs;
}
}  // namespace

void Architecture::check_config(const ModelConfig& c, const std::string& source) const {
  if (c.hidden_act != "silu")
    fail(source, "hidden_act", "\"{}\" is not supported by the {} definition (it runs silu)", c.hidden_act, name());
}

AttentionSpec Architecture::attention_spec(const ModelConfig&, const Layer&, int64_t) const { return {}; }

const Architecture& architecture_for(const ModelConfig& config, const std::string& source) {
  for (const auto& a : registry())
    if (a->runs(config)) {
      a->check_config(config, source);
      return *a;
    }
  fail(source, "architectures", "no model definition runs \"{}\" ({})", config.architecture, arch_name(config.arch));
}

std::vector<std::string> layer_linear_modules(const ModelConfig& config) {
  std::vector<std::string> out;
  const LayerSpec s = architecture_for(config, "model").layer_spec(config, config);
  for (const LinearSlot& slot : s.linears)
    for (const LinearPart& p : slot.parts) out.push_back(p.module);
  return out;
}

}  // namespace kite
