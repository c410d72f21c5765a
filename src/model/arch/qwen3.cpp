// Qwen3: Llama's layer with a per-head RMSNorm of q and k (weights
// [head_dim]) before RoPE, q/k/v/o biases only with attention_bias, and
// Qwen's sliding-window layers.
#include <memory>

#include "model/arch/llama.h"

namespace kite {

namespace {

class Qwen3 final : public Llama {
 public:
  std::string_view name() const override { return "qwen3"; }
  bool runs(const ModelConfig& c) const override { return c.arch == Arch::Qwen3; }
  LayerSpec layer_spec(const ModelConfig& global, const ModelConfig& local) const override {
    LayerSpec s = Llama::layer_spec(global, local);
    s.tensors.push_back({"self_attn.q_norm.weight", {global.head_dim}});  // kQNorm
    s.tensors.push_back({"self_attn.k_norm.weight", {global.head_dim}});  // kKNorm
    return s;
  }
  AttentionSpec attention_spec(const ModelConfig& c, const Layer& w, int64_t l) const override {
    AttentionSpec a = Llama::attention_spec(c, w, l);
    a.q_norm = &w.tensors[kQNorm];
    a.k_norm = &w.tensors[kKNorm];
    return a;
  }

 protected:
  enum { kQNorm = kNumLlamaTensors, kKNorm };
  int64_t layer_window(const ModelConfig& c, int64_t l) const override { return qwen_layer_window(c, l); }
};

}  // namespace

std::unique_ptr<Architecture> make_qwen3() { return std::make_unique<Qwen3>(); }

}  // namespace kite
