#pragma once
// A checkpoint's weights by name, as the architecture declared them
// (model/arch/arch.h), in logical form on the host: tensors (embeddings,
// norms, biases) by their Hugging Face names, and linears (dense or in one
// of Kite's quantized layouts, core/quant_weight.h) by module name
// ("model.layers.3.mlp.up_proj", "lm_head"). Runners build their
// device-side Linears from these; the quantization pipeline edits them.
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/quant_weight.h"
#include "core/tensor.h"

namespace kite {

// Loads the linear `module` ("model.layers.3.mlp.up_proj", "lm_head") of
// logical shape [out, in], dense or quantized (model/quantized_checkpoint.h).
using LinearLookup = std::function<QuantWeight(const std::string& module, int64_t out, int64_t in)>;

struct ModelWeights {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, QuantWeight> linears;
  // Llama 3 RoPE scaling stored as per-frequency divisors of inv_freq (GGUF
  // rope_freqs.weight); empty when the config's rope type says it all.
  std::vector<float> rope_freq_factors;
  std::vector<std::shared_ptr<void>> keep;  // mapped files backing the tensors

  bool has_tensor(const std::string& name) const { return tensors.count(name) > 0; }
  // kite::Error naming the tensor when absent.
  const Tensor& tensor(const std::string& name) const;
  Tensor& tensor(const std::string& name);
  const QuantWeight& linear(const std::string& module) const;
  QuantWeight& linear(const std::string& module);
  // Whether the lm_head is the embedding itself (tied, never replaced).
  bool lm_head_tied() const;
};

}  // namespace kite
