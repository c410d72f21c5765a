#pragma once
// One definition per model architecture: the weights it expects, how its
// config maps to its hyperparameters (and which keys it refuses), and its
// layer forward, written once over backend ops, Linear and the Step the
// runner hands it. The runner (model/decoder.h) runs it on any device: the
// CPU with F32 activations, CUDA with BF16 ones, eagerly or as recorded
// graphs, on one rank or as a tensor-parallel shard. An architecture never
// asks which device it runs on.
//
// Adding an architecture: one file under model/arch/ defining a subclass of
// Architecture, and one line in model/arch/registry.cpp.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "backend/linear.h"
#include "core/tensor.h"
#include "formats/hf_config.h"

namespace kite {

// How a linear's weight splits over tensor-parallel ranks (Megatron-style).
enum class Split : uint8_t {
  Heads,    // output rows by query heads (column-parallel)
  KvHeads,  // output rows by KV heads; replicated when the ranks outnumber them
  Rows,     // output rows evenly (column-parallel MLP)
  Cols,     // input columns evenly (row-parallel; the ranks' outputs are summed)
};

// A tensor of a layer read as is (norm weights), by its name after
// "model.layers.<i>.", e.g. "input_layernorm.weight".
struct TensorSlot {
  std::string name;
  Shape shape;
};

// One module of a linear slot: "self_attn.q_proj" of logical [out, in].
struct LinearPart {
  std::string module;
  int64_t out = 0, in = 0;
  bool bias = false;  // "<module>.bias" [out] is read too
  Split split = Split::Rows;
};

// A linear the layer forward calls: one module, or several sharing one
// input stacked by output rows (Q/K/V, gate/up), fused into one Linear.
struct LinearSlot {
  std::string name;  // e.g. "qkv"
  std::vector<LinearPart> parts;
};

// What a layer holds, by slot: the architecture's own enum indexes these.
struct LayerSpec {
  std::vector<TensorSlot> tensors;
  std::vector<LinearSlot> linears;
  std::vector<int64_t> buffers;  // columns of each scratch buffer [n, cols] a layer forward uses (this rank's)
};

// One layer's weights on the runner's device, by slot.
struct Layer {
  std::vector<Tensor> tensors;  // norm weights (activation dtype on the device)
  std::vector<Linear> linears;  // this rank's shard, fused as the slot says
};

// Attention options an architecture sets per layer.
struct AttentionSpec {
  const Tensor* q_norm = nullptr;  // [head_dim] per-head RMSNorm of q and k before RoPE (Qwen3)
  const Tensor* k_norm = nullptr;
  int64_t sliding_window = 0;  // 0: full causal attention; W: keys (p - W, p]
};

// What a layer forward sees of the runner's step. Buffers are views of the
// runner's preallocated work ([n, ...]); every op here is graph-safe.
class Step {
 public:
  virtual ~Step() = default;
  const ModelConfig& config() const { return *config_; }  // this rank's heads, KV heads and MLP width
  int64_t tokens() const { return n_; }
  int64_t layer() const { return layer_; }
  Tensor& residual() { return residual_; }  // [n, d] the residual stream
  Tensor& h() { return h_; }                // [n, d] a block's normed input
  Tensor& y() { return y_; }                // [n, d] a block's output
  Tensor& buffer(size_t i) { return buffers_.at(i); }

  // h = rms_norm(residual += y), or h = rms_norm(residual) in a layer's
  // first block of the first layer.
  virtual void add_norm(const Tensor& weight) = 0;
  // y = x @ W^T (+ bias) (column-parallel: this rank's output rows).
  virtual void linear(const Linear& w, const Tensor& x, Tensor& y) = 0;
  // y = x @ W^T summed over the tensor-parallel ranks (row-parallel).
  virtual void linear_reduce(const Linear& w, const Tensor& x, Tensor& y) = 0;
  // Self-attention over the paged cache from a fused QKV output
  // qkv [n, n_heads + 2 n_kv_heads, head_dim]: optional q/k norms, RoPE,
  // this layer's K/V written to the cache, causal (or windowed) attention;
  // out: [n, n_heads * head_dim].
  virtual void attention(const Tensor& qkv, const AttentionSpec& spec, Tensor& out) = 0;

 protected:
  const ModelConfig* config_ = nullptr;
  int64_t n_ = 0, layer_ = 0;
  Tensor residual_, h_, y_;
  std::vector<Tensor> buffers_;
};

class Architecture {
 public:
  virtual ~Architecture() = default;
  virtual std::string_view name() const = 0;
  // Whether this definition runs `config` (by config.arch).
  virtual bool runs(const ModelConfig& config) const = 0;
  // Throws kite::Error(source, key, ...) for a config key that changes the
  // math in a way this definition does not implement.
  virtual void check_config(const ModelConfig& config, const std::string& source) const;
  // The layer's weights and buffers. `global`: the whole model's shapes
  // (weights are declared unsplit); `local`: this rank's (buffers).
  virtual LayerSpec layer_spec(const ModelConfig& global, const ModelConfig& local) const = 0;
  // Attention options of layer `l` (norm weights from `w`).
  virtual AttentionSpec attention_spec(const ModelConfig& config, const Layer& w, int64_t l) const;
  // One decoder layer: reads step.residual() (and step.y(), the previous
  // layer's output not yet added), leaves its output in step.y().
  virtual void forward_layer(const Layer& w, Step& step) const = 0;
};

// The definition that runs `config`; kite::Error naming `source` and the
// architecture when none does.
const Architecture& architecture_for(const ModelConfig& config, const std::string& source);

// Every linear module of a layer ("self_attn.q_proj", ...) in declaration
// order, and the whole model's ("model.layers.<i>.<module>", then "lm_head").
std::vector<std::string> layer_linear_modules(const ModelConfig& config);

}  // namespace kite
