#pragma once
// The Llama definition (model/arch/llama.cpp), which definitions of the
// same layer shape (Qwen2, Qwen3) extend by overriding what differs.
#include "model/arch/arch.h"

namespace kite {

class Llama : public Architecture {
 public:
  std::string_view name() const override { return "llama"; }
  bool runs(const ModelConfig& config) const override;
  LayerSpec layer_spec(const ModelConfig& global, const ModelConfig& local) const override;
  AttentionSpec attention_spec(const ModelConfig& config, const Layer& w, int64_t l) const override;
  void forward_layer(const Layer& w, Step& step) const override;

 protected:
  // Tensor slots (Llama's; a subclass appends its own after them).
  enum TensorIx { kAttnNorm, kMlpNorm, kNumLlamaTensors };
  // Whether q/k/v, and o, carry biases.
  virtual bool qkv_bias(const ModelConfig& c) const { return c.attention_bias; }
  virtual bool o_bias(const ModelConfig& c) const { return c.attention_bias; }
  // The sliding window of layer l (0: none).
  virtual int64_t layer_window(const ModelConfig& c, int64_t l) const;
};

// Qwen's windowed layers: those from max_window_layers on, when a window is set.
inline int64_t qwen_layer_window(const ModelConfig& c, int64_t l) {
  return c.sliding_window > 0 && l >= c.max_window_layers ? c.sliding_window : 0;
}

}  // namespace kite
