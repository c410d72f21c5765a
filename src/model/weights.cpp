#include "model/weights.h"

#include "core/error.h"

namespace kite {

const Tensor& ModelWeights::tensor(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) fail("model weights", name, "no such tensor was loaded");
  return it->second;
}

Tensor& ModelWeights::tensor(const std::string& name) {
  return const_cast<Tensor&>(static_cast<const ModelWeights*>(this)->tensor(name));
}

const QuantWeight& ModelWeights::linear(const std::string& module) const {
  auto it = linears.find(module);
  if (it == linears.end()) fail("model weights", module, "no such linear was loaded");
  return it->second;
}

QuantWeight& ModelWeights::linear(const std::string& module) {
  return const_cast<QuantWeight&>(static_cast<const ModelWeights*>(this)->linear(module));
}

bool ModelWeights::lm_head_tied() const { return linears.count("lm_head") == 0; }

}  // namespace kite
