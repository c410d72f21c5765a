// Qwen2 / Qwen2.5: Llama's layer with q/k/v biases (always present: Qwen2
// configs have no key for them) and no o_proj bias, and, when
// use_sliding_window is set, a sliding window on the layers from
// max_window_layers on (transformers' Qwen2 layer_types).
#include <memory>

#include "model/arch/llama.h"

namespace kite {

namespace {

class Qwen2 final : public Llama {
 public:
  std::string_view name() const override { return "qwen2"; }
  bool runs(const ModelConfig& c) const override { return c.arch == Arch::Qwen2; }

 protected:
  bool qkv_bias(const ModelConfig&) const override { return true; }
  bool o_bias(const ModelConfig&) const override { return false; }
  int64_t layer_window(const ModelConfig& c, int64_t l) const override { return qwen_layer_window(c, l); }
};

}  // namespace

std::unique_ptr<Architecture> make_qwen2() { return std::make_unique<Qwen2>(); }

}  // namespace kite
